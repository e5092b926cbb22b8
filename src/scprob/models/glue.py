"""GLUE: unpaired multi-omics integration through a guidance graph (the model users touch).

    GLUE.configure_dataset(rna, "NB", use_layer="counts", use_batch="batch")
    GLUE.configure_dataset(atac, "NB")
    glue = GLUE({"rna": rna, "atac": atac}, graph)      # networkx graph or edge table
    glue.train()                                         # pretrain -> balance -> fine-tune
    rna.obsm["X_glue"] = glue.encode_data("rna", rna)
    feature_embeddings = glue.encode_graph()              # vertices x latent_dim

The math is in :mod:`scprob.modules.glue`.  Training runs in two stages on scprob's
trainer: *pretrain* (adversarial alignment after a burn-in), then per-cell balancing
weights from the similarity of each modality's clusters to the other modalities'
(:func:`balancing_weights`), then *fine-tune* with those weights.  Each stage stops by a
relative criterion on the validation loss (no fixed epoch count: the same rule for a
loss in any unit and data of any size), within an epoch budget that shrinks as data grow.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .._settings import settings
from ..data.graph_sampler import EdgeSampler
from ..data.guidance import as_edge_table
from ..data.multimodal import (
    DSC_WEIGHT,
    ModalityStore,
    MultiModalLoader,
    configure_dataset,
    get_glue_registry,
)
from ..data.validate import DataError
from ..modules.glue import GLUEModule, link_target_key
from ..train import AdversarialTrainingPlan, NonFiniteLossError, RelativeEarlyStopping, history_frames, run_training
from ..train.checkpoint import (
    CKPT,
    EpochCheckpoint,
    data_fingerprint,
    keeps_global_rng,
    loader_epochs,
    read_checkpoint,
    rng_state,
    set_loader_epochs,
    set_rng_state,
    write_atomic,
)
from ._files import _versions, write_dir_atomic

log = logging.getLogger("scprob")
_FILE = "model.pt"
AUTO_LAM_MATCH = 0.03  # lam_match on one-to-one linked pairs when left automatic (PBMC CITE-seq: 0.03-0.1 alike)


def default_max_epochs(n_cells: int, batch_size: int = 128) -> int:
    """Epoch budget of one stage: ~4,000 optimizer steps, within [40, 400] epochs
    (an epoch visits every cell of the largest modality once)."""
    steps = max(1, -(-n_cells // batch_size))
    return int(np.clip(round(4000 / steps), 40, 400))


def balancing_weights(embeddings: Mapping[str, np.ndarray], cutoff: float = 0.5, power: float = 4.0,
                      seed: int = 0) -> dict[str, np.ndarray]:
    """Per-cell weights of the discriminator loss (mean 1 within each modality).

    Each modality's cells are clustered (k-means, ``k = clip(sqrt(n)/2, 2, 50)``).  For a
    cluster ``c`` with centroid ``m_c``, its counterpart score is
    ``s_c = sum over other modalities' clusters c' of max(cos(m_c, m_c') - 0, 0)^power``
    counting only ``cos >= cutoff``; each cell of ``c`` gets ``s_c / |c|``.  Clusters
    with no counterpart (cell types one modality lacks) are then not pushed onto the
    others, and large clusters do not dominate the alignment.
    """
    from sklearn.cluster import KMeans

    clusters, centroids = {}, {}
    for k, x in embeddings.items():
        n_clusters = int(np.clip(round(np.sqrt(len(x)) / 2), 2, 50))
        km = KMeans(n_clusters=min(n_clusters, len(x)), n_init=3, random_state=seed).fit(x)
        clusters[k] = km.labels_
        c = km.cluster_centers_
        centroids[k] = c / np.linalg.norm(c, axis=1, keepdims=True).clip(1e-12)
    out = {}
    for k in embeddings:
        score = np.zeros(len(centroids[k]))
        for m in embeddings:
            if m != k:
                cos = centroids[k] @ centroids[m].T
                score += np.where(cos >= cutoff, np.clip(cos, 0, None) ** power, 0.0).sum(axis=1)
        if score.sum() <= 0:
            out[k] = np.ones(len(clusters[k]))
            continue
        sizes = np.bincount(clusters[k], minlength=len(score))
        w = score[clusters[k]] / sizes[clusters[k]]
        out[k] = w / w.mean()
    return out


class GLUE:
    """Graph-linked unified embedding of several modalities.

    Parameters
    ----------
    adatas
        Modality key -> AnnData, each set up with :meth:`configure_dataset`.
    graph
        Guidance graph over the features: a networkx graph (edge attributes ``weight``
        in (0, 1] and ``sign`` ±1; defaults 1) or an edge table with columns ``source,
        target[, weight, sign]``.  Its vertices must cover every feature used.  The graph is
        undirected: an edge given in one direction only is added in the other (same weight
        and sign), and self-loops are added where missing; features of two modalities with
        the same name are the same vertex (one embedding).
    latent_dim, h_depth, h_dim, dropout
        Embedding width and the encoders' / discriminator's MLPs.
    private_dim
        Latent dimensions of each modality's own, outside the shared embedding: its
        decoder reads them through loadings of its own (not tied by the graph), the
        discriminator and :meth:`encode_data` never see them.  Variation only one modality
        has (depth effects, a program only RNA shows) then has somewhere to go other than a
        shared axis where the adversary would make the other modality mirror it unpaired
        (synthetic multiome benchmark: FOSCTTM 0.0030 -> 0.0013 over 6 seeds with 4).  0:
        GLUE's original single shared space.
    """

    def __init__(self, adatas: Mapping[str, object], graph, latent_dim: int = 50, h_depth: int = 2, h_dim: int = 256,
                 dropout: float = 0.2, private_dim: int = 4, random_state: int | None = None):
        if len(adatas) < 1:
            raise ValueError("GLUE needs at least one modality")
        if int(private_dim) != private_dim or private_dim < 0:
            raise ValueError(f"private_dim must be a non-negative integer, got {private_dim!r}")
        self.adatas = dict(adatas)
        self.registries = {k: get_glue_registry(a, k) for k, a in self.adatas.items()}
        self.init_params = dict(latent_dim=latent_dim, h_depth=h_depth, h_dim=h_dim, dropout=dropout, private_dim=int(private_dim))
        self.edges, self.vertices = _graph_for(self.registries, graph)
        self._build(random_state)
        self.history_: dict[str, pd.DataFrame] = {}
        self.is_trained_ = False
        self.train_indices_: dict[str, np.ndarray] = {}
        self.balancing_weights_: dict[str, np.ndarray] = {}

    def _build(self, random_state: int | None) -> None:
        torch.manual_seed(settings.seed if random_state is None else random_state)
        vid = {v: i for i, v in enumerate(self.vertices)}
        self.batch_union = sorted({b for r in self.registries.values() for b in r["batch_categories"]})
        self.cell_types = sorted({c for r in self.registries.values() for c in r["cell_types"]})
        mods = {
            k: dict(prob_model=r["prob_model"], n_features=len(r["features"]), vertices=[vid[f] for f in r["features"]],
                    n_batches=len(r["batch_categories"]), rep_dim=r["rep_dim"])
            for k, r in self.registries.items()
        }
        e = self.edges
        self._edge_tensors = (  # edge index (2 x E), weights, signs: the graph encoder's and the sampler's
            torch.as_tensor(np.stack([e["source"].map(vid).to_numpy(), e["target"].map(vid).to_numpy()]), dtype=torch.long),
            torch.as_tensor(e["weight"].to_numpy(), dtype=torch.float32), torch.as_tensor(e["sign"].to_numpy(), dtype=torch.float32),
        )
        self.module = GLUEModule(
            mods, len(self.vertices), *self._edge_tensors,
            n_labels=len(self.cell_types), n_dsc_batches=len(self.batch_union) if len(self.batch_union) > 1 else 0,
            **self.init_params,
        )
        self.module.eval()

    # ------------------------------------------------------------------ setup
    @staticmethod
    def configure_dataset(adata, prob_model: str, use_highly_variable: bool = True, use_layer: str | None = None,
                          use_rep: str | None = None, use_batch: str | None = None, use_cell_type: str | None = None,
                          use_obs_names: bool = False) -> None:
        """Register how GLUE reads one modality (scglue's arguments).

        ``prob_model``: a registered prob model (``NB``, ``ZINB``, ``Normal``, ``ZIN``,
        ``ZILN``, ``Bernoulli``, ``Beta``, ``NBMixture``, ``Poisson``, or your own: see
        :func:`scprob.register_prob_model`).  Features: ``var["highly_variable"]`` when
        ``use_highly_variable`` and the column exists, else all.  ``use_layer``: where the
        data are (default X).  ``use_rep``: an ``obsm`` key the encoder reads instead of
        the data (e.g. PCA / LSI); the decoder still models the data; ``"auto"``
        computes one for count (and Bernoulli) modalities with
        :func:`scprob.data.reduce.add_representation` (PCA, or LSI for mostly-binary
        counts; none for at most 100 features), after the data are validated.  ``use_batch``: obs
        column of batches (batch-specific decoder parameters).  ``use_cell_type``: obs
        column of cell types for optional supervision (NaN = unlabelled).
        ``use_obs_names``: cells with the same obs name in two modalities are the same
        cell (used for FOSCTTM in reports).
        """
        configure_dataset(adata, prob_model, use_highly_variable, use_layer, use_rep, use_batch, use_cell_type, use_obs_names)

    # --------------------------------------------------------------- training
    def _stores(self, adatas: Mapping[str, object], device) -> dict[str, ModalityStore]:
        return {k: ModalityStore(a, self.registries[k], self.batch_union, self.cell_types, device) for k, a in adatas.items()}

    @keeps_global_rng
    def train(self, max_epochs: int | None = None, batch_size: int = 128, train_size: float = 0.9, lr: float = 2e-3,
              lam_data: float = 1.0, lam_kl: float = 1.0, lam_graph: float = 0.02, lam_align: float = 0.05,
              lam_sup: float = 0.02, lam_link: float = 0.2, lam_match: float | None = None, self_train_rounds: int = 8, modality_weight: Mapping[str, float] | None = None, neg_samples: int = 1,
              align_burnin: int | None = None, burnin_noise: float = 1.5, optimizer: str = "RMSprop", balance: bool = True,
              fine_tune_epochs: int | None = None, fine_tune_lr: tuple[float, float] = (0.3, 0.01),
              early_stopping: bool = True, patience: int | None = None, seed: int | None = None, accelerator: str = "auto", devices: int | str = 1,
              enable_progress_bar: bool = True, checkpoint_dir: str | os.PathLike | None = None,
              checkpoint_every_n_epochs: int = 1, resume_from: str | os.PathLike | None = None, **trainer_kwargs) -> None:
        """Pretrain, balance, fine-tune.

        ``max_epochs`` caps each stage (default :func:`default_max_epochs`); early
        stopping ends the pretrain (or the single stage when ``balance=False``) when the
        validation loss has not improved by 1% of the progress made so far for
        ``patience`` epochs (default: a tenth of the budget, at least 8), and not before
        twice the burn-in plus one patience: the loss plateaus while the alignment, which
        it does not measure, still improves (synthetic benchmark, 6 seeds: pretrains that
        stopped at 52-60 epochs ended at FOSCTTM 0.0038-0.0054, those past 68 at
        0.0022-0.0031).  The fine-tune
        then runs ``fine_tune_epochs`` (default: half as many as the pretrain took, so
        the data's own convergence sets its length; as long again gave the same result on
        the synthetic benchmark) with the learning rate annealed along a half cosine from
        ``fine_tune_lr[0] * lr`` to ``fine_tune_lr[1] * lr``: at a fixed rate the
        adversarial game keeps oscillating around the alignment (FOSCTTM on the synthetic
        benchmark swung between 0.0035 and 0.03 from one epoch to the next) and where
        training stopped decided the result; annealed, it settles.
        ``align_burnin``: epochs over which the discriminator's input noise
        (``burnin_noise`` standard deviations at the start) fades to none (default a tenth
        of the budget).  ``optimizer``: "RMSprop" (default) or "Adam", both networks.
        ``lam_*`` weigh the terms of the objective (see :mod:`scprob.modules.glue`):
        ``lam_link`` the linked-feature consistency across modalities (0 gives GLUE's
        original objective); ``lam_match`` the optimal-transport matching of cells whose
        linked features agree.  It helps where the links pair two measurements of one
        molecule (CITE-seq antibodies and their genes: FOSCTTM on PBMC 0.27-0.31 without,
        0.16-0.17 with 0.03) and hurts where the linked evidence per cell is weak (sparse
        peaks summed onto genes: 0.003 -> 0.010 on the synthetic multiome set).  Default
        ``None``: 0.03 on the modality pairs whose links are nearly one to one
        (:meth:`~scprob.modules.glue.GLUEModule.one_to_one_pairs`), off elsewhere; a number
        applies to every linked pair (0: off).  ``self_train_rounds``: where the matching
        is on, the rounds of self-training that first teach linear predictors between the
        paired modalities from all of each one's features (pseudo-pairs from an optimal
        transport plan, refined round by round; :mod:`scprob.modules.glue`): of each
        modality's linked features, which become the link targets, and of the first
        modality's input, which the matching cost compares (PBMC CITE-seq: FOSCTTM 0.14 ->
        0.094; 0: off).  ``modality_weight`` the modalities' data terms.

        ``checkpoint_dir``: keep ``checkpoint_dir/last.ckpt`` up to date every
        ``checkpoint_every_n_epochs`` epochs and at the end of each stage (atomic writes);
        ``resume_from``: continue that run (same data and arguments) to the same result.
        A non-finite loss or gradient stops training with
        :class:`~scprob.train.NonFiniteLossError`; the model keeps its last finite weights.
        """
        import lightning.pytorch as pl

        if lam_match is not None and not float(lam_match) >= 0:
            raise ValueError(f"lam_match must be >= 0 (or None: automatic), got {lam_match!r}")
        if int(self_train_rounds) < 0:
            raise ValueError(f"self_train_rounds must be >= 0, got {self_train_rounds!r}")
        if fine_tune_epochs is not None and int(fine_tune_epochs) < 1:
            raise ValueError(f"fine_tune_epochs must be at least 1, got {fine_tune_epochs}")
        if len(fine_tune_lr) != 2 or not all(0 < float(f) for f in fine_tune_lr):
            raise ValueError(f"fine_tune_lr must be two positive factors of lr (start, end), got {fine_tune_lr!r}")
        settings.apply_threads()
        fingerprint = {k: data_fingerprint(a.obs_names, a.var_names) for k, a in self.adatas.items()}
        resumed = ckpt = None
        if resume_from is not None:  # checked before any work
            ckpt_path, resumed, ckpt = read_checkpoint(resume_from, fingerprint, "GLUE")
            seed = int(resumed["seed"])
            checkpoint_dir = resume_from if checkpoint_dir is None else checkpoint_dir
        seed = settings.seed if seed is None else int(seed)
        pl.seed_everything(seed, verbose=False)
        device = "cuda" if torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda") else "cpu"
        self.module.to(device)
        stores = self._stores(self.adatas, device)
        rng = np.random.default_rng(seed)
        train_idx, val_idx = {}, {}
        for k, a in self.adatas.items():
            perm = rng.permutation(a.n_obs)
            n_train = int(np.ceil(train_size * a.n_obs)) if train_size < 1 else a.n_obs
            train_idx[k], val_idx[k] = np.sort(perm[:n_train]), np.sort(perm[n_train:])
        if resumed is not None:
            train_idx = {k: v.numpy() for k, v in resumed["train_indices"].items()}
            val_idx = {k: v.numpy() for k, v in resumed["validation_indices"].items()}
        self.train_indices_, self.validation_indices_ = train_idx, val_idx
        sampler = EdgeSampler(*self._edge_tensors, len(self.vertices), neg_samples=neg_samples)
        train_loader = MultiModalLoader(stores, train_idx, batch_size, shuffle=True, seed=seed, sampler=sampler)
        has_val = all(len(v) > 0 for v in val_idx.values())
        val_loader = MultiModalLoader(stores, val_idx, batch_size, shuffle=False, seed=seed + 1, sampler=sampler,
                                      drop_last_below=1) if has_val else None
        n_max = max(len(v) for v in train_idx.values())
        budget = default_max_epochs(n_max, batch_size) if max_epochs is None else int(max_epochs)
        if resumed is not None:
            budget = int(resumed["budget"])
        patience = max(8, budget // 10) if patience is None else int(patience)
        burnin = max(1, budget // 10) if align_burnin is None else int(align_burnin)
        match_pairs = None
        if lam_match is None:  # automatic: on where the links pair two measurements of one molecule
            match_pairs = self.module.one_to_one_pairs()
            lam_match = AUTO_LAM_MATCH if match_pairs else 0.0
        loss_kwargs = dict(lam_data=lam_data, lam_kl=lam_kl, lam_graph=lam_graph, lam_sup=lam_sup, lam_link=lam_link,
                           lam_match=float(lam_match), match_pairs=match_pairs, modality_weight=dict(modality_weight or {}))
        history: dict[str, list] = {}
        offset = 0
        stages = [("pretrain", burnin), ("fine-tune", 0)] if balance and len(self.adatas) > 1 else [("train", burnin)]
        if not self.is_trained_:
            self._standardize_inputs(stores, train_idx)
        if lam_link > 0 or lam_match > 0:  # the link term's targets depend on the data alone: once, not per step
            tables = {(k, link_target_key(m)): t for (k, m), t in self.module.fit_link_targets(stores).items()
                      if t is not None}
            if lam_match > 0 and self_train_rounds > 0:
                pairs = match_pairs if match_pairs is not None else self.module.links
                tables.update(self.module.self_train_link_targets(stores, pairs, rounds=int(self_train_rounds), seed=seed))
            for (k, key), table in tables.items():
                stores[k].add(key, table)
        user_callbacks = list(trainer_kwargs.pop("callbacks", []))
        loaders = [train_loader, val_loader]
        extra = dict(model_class="GLUE", data=fingerprint, seed=seed, budget=budget,
                     train_indices={k: torch.as_tensor(v) for k, v in train_idx.items()},
                     validation_indices={k: torch.as_tensor(v) for k, v in val_idx.items()})
        first_stage, resume_stage = 0, None
        if resumed is not None:
            history = {k: [tuple(r) for r in rows] for k, rows in resumed["history_before"].items()}
            offset = int(resumed["offset"])
            self.balancing_weights_ = {k: v.numpy() for k, v in resumed.get("balancing_weights", {}).items()}
            if resumed["kind"] == "stage_end":  # the stage is complete: restore and go on with the next
                self.module.load_state_dict(ckpt["module"])
                set_loader_epochs(loaders, resumed["loader_epochs"])
                set_rng_state(resumed["rng"])
                first_stage = int(resumed["stage_index"]) + 1
            else:
                first_stage = resume_stage = int(resumed["stage_index"])
        self.module.train()
        for i, (stage, stage_burnin) in enumerate(stages):
            if i < first_stage:
                continue
            if stage == "fine-tune":
                if i != resume_stage:
                    emb = {k: self._encode_key(stores[k], k) for k in stores}
                    self.balancing_weights_ = balancing_weights(emb, seed=seed)
                for k, w in self.balancing_weights_.items():
                    stores[k].tensors[DSC_WEIGHT] = torch.as_tensor(w, dtype=torch.float32, device=device)
                self.module.train()
            annealed = stage == "fine-tune"
            stage_epochs = budget
            if annealed:  # half the pretrain's length (offset): the data's time scale
                stage_epochs = int(fine_tune_epochs) if fine_tune_epochs is not None else min(max(-(-offset // 2), 1), budget)
            plan = AdversarialTrainingPlan(self.module, lr=lr, lam_align=lam_align, align_burnin=stage_burnin,
                                           burnin_noise=burnin_noise, optimizer=optimizer, loss_kwargs=loss_kwargs,
                                           lr_anneal=tuple(fine_tune_lr) if annealed else None)
            callbacks = list(user_callbacks)
            if early_stopping and has_val and not annealed:
                callbacks.append(RelativeEarlyStopping("validation_loss", patience=patience, min_delta_rel=0.01,
                                                       min_epochs=2 * stage_burnin + patience))
            stage_extra = dict(extra, stage_index=i, offset=offset, history_before=history,
                               balancing_weights={k: torch.as_tensor(w) for k, w in self.balancing_weights_.items()})
            if checkpoint_dir is not None:
                callbacks.append(EpochCheckpoint(checkpoint_dir, checkpoint_every_n_epochs, stage_extra, loaders))
            log.info("GLUE %s: %s %d epochs", stage, "" if annealed else "up to", stage_epochs)
            try:
                trainer = run_training(plan, train_loader, val_loader, max_epochs=stage_epochs, accelerator=accelerator,
                                       devices=devices, enable_progress_bar=enable_progress_bar, callbacks=callbacks,
                                       ckpt_path=str(ckpt_path) if i == resume_stage else None, **trainer_kwargs)
            except NonFiniteLossError:
                self.history_ = history_frames(_merge(history, plan.history, offset))
                self.module.eval()
                raise
            history = _merge(history, plan.history, offset)
            history.setdefault("stage", []).extend((offset + e, stage) for e in range(trainer.current_epoch))
            offset += trainer.current_epoch
            if checkpoint_dir is not None:  # a stage boundary: the next run starts the next stage
                own = dict(stage_extra, kind="stage_end", history_before=history, offset=offset, rng=rng_state(),
                           loader_epochs=loader_epochs(loaders))
                state = {k: v.cpu() for k, v in self.module.state_dict().items()}
                write_atomic(Path(checkpoint_dir) / CKPT, lambda tmp, own=own, state=state: torch.save(
                    {"scprob": own, "module": state}, tmp))
        self.history_ = history_frames(history)
        self.module.eval()
        self.is_trained_ = True

    def _standardize_inputs(self, stores: dict[str, ModalityStore], train_idx: dict[str, np.ndarray]) -> None:
        rng = np.random.default_rng(0)
        for k, store in stores.items():
            idx = train_idx[k] if len(train_idx[k]) <= 20_000 else rng.choice(train_idx[k], 20_000, replace=False)
            t = store[torch.as_tensor(idx)]
            h, _ = self.module.encoders[k].inputs(t["X"], t.get("xrep"))
            self.module.encoders[k].standardize_inputs(h)

    # -------------------------------------------------------------- inference
    @property
    def history(self) -> dict[str, pd.DataFrame]:
        return self.history_

    def encode_data(self, key: str, adata=None, batch_size: int = 1024) -> np.ndarray:
        """Cell embeddings (posterior means of ``u``) of modality ``key``'s cells, also
        written to ``adata.obsm["X_glue"]``.  ``adata`` (default: the training one) must
        hold the modality's features (any order; matched by name)."""
        if key not in self.registries:
            raise KeyError(f"unknown modality {key!r}; the model has {list(self.registries)}")
        adata = self.adatas[key] if adata is None else adata
        settings.apply_threads()
        device = next(self.module.parameters()).device
        store = ModalityStore(adata, self.registries[key], self.batch_union, self.cell_types, device)
        z = self._encode_key(store, key, batch_size)
        adata.obsm["X_glue"] = z
        return z

    @torch.inference_mode()
    def _encode_key(self, store: ModalityStore, key: str, batch_size: int = 1024) -> np.ndarray:
        self.module.eval()
        out = []
        for s in range(0, store.n_obs, batch_size):
            t = store[torch.arange(s, min(s + batch_size, store.n_obs))]
            qu, _ = self.module.encoders[key](t["X"], t.get("xrep"))
            out.append(qu.loc[:, : self.module.latent_dim].cpu())
        return torch.cat(out).numpy()

    @torch.inference_mode()
    def encode_graph(self) -> np.ndarray:
        """Feature embeddings: posterior means of ``v`` (rows in :attr:`vertices` order)."""
        self.module.eval()
        return self.module.g2v().loc.cpu().numpy()

    def feature_embeddings(self) -> pd.DataFrame:
        """:meth:`encode_graph` as a DataFrame indexed by vertex (feature) name."""
        v = self.encode_graph()
        return pd.DataFrame(v, index=pd.Index(self.vertices, name="feature"), columns=[f"dim{i}" for i in range(v.shape[1])])

    # ------------------------------------------------------------ save / load
    def save(self, dir_path: str | os.PathLike, overwrite: bool = False) -> None:
        """Weights, per-modality registries, graph and history in ``dir_path/model.pt``:
        plain tensors, strings and numbers only (loaded with ``weights_only=True``; no
        pickled code).  Written to a temporary folder and renamed: never half-written."""
        def write(tmp: Path) -> None:
            payload = dict(
                model_class="GLUE", versions=_versions(), init_params=self.init_params, registries=self.registries,
                edges={c: self.edges[c].tolist() for c in ("source", "target", "weight", "sign")},
                vertices=list(self.vertices), state_dict={k: v.cpu() for k, v in self.module.state_dict().items()},
                history={k: [list(map(_plain, r)) for r in df.reset_index().itertuples(index=False)] for k, df in self.history_.items()},
                is_trained=self.is_trained_,
            )
            torch.save(payload, tmp / _FILE)

        write_dir_atomic(dir_path, write, overwrite)

    @classmethod
    def load(cls, dir_path: str | os.PathLike, adatas: Mapping[str, object]) -> GLUE:
        """Rebuild a saved model on ``adatas`` (modality key -> AnnData holding its
        features); modalities not yet configured get the saved registry."""
        from ._files import load_weights, read_model_file

        path = Path(dir_path) / _FILE
        payload = read_model_file(dir_path, "GLUE", weights_only=True, required=(
            "registries", "edges", "vertices", "state_dict", "init_params", "history", "is_trained"))
        missing, extra = set(payload["registries"]) - set(adatas), set(adatas) - set(payload["registries"])
        if missing or extra:
            raise DataError(f"the model has modalities {sorted(payload['registries'])}; "
                            f"missing {sorted(missing)}, unknown {sorted(extra)}")
        import json

        from ..data.multimodal import UNS_KEY

        for k, a in adatas.items():
            a.uns[UNS_KEY] = json.dumps(payload["registries"][k])
        # models saved before private dimensions existed had none
        model = cls(adatas, pd.DataFrame(payload["edges"]), **{"private_dim": 0, **payload["init_params"]})
        if model.vertices != payload["vertices"]:
            raise DataError(f"{path}: the saved graph's vertices do not rebuild in the same order")
        load_weights(model.module, payload["state_dict"], dir_path)
        model.history_ = {k: pd.DataFrame(rows, columns=["epoch", k]).set_index("epoch") for k, rows in payload["history"].items()}
        model.is_trained_ = payload["is_trained"]
        model.module.eval()
        return model

    def __repr__(self) -> str:
        mods = ", ".join(f"{k}: {len(r['features'])} features ({r['prob_model']})" for k, r in self.registries.items())
        return f"GLUE({mods}; {len(self.vertices)} vertices, {len(self.edges)} edges, trained={self.is_trained_})"


def _merge(history: dict[str, list], stage_history: dict[str, list], offset: int) -> dict[str, list]:
    """``history`` with a stage's rows appended, its epochs shifted by ``offset``."""
    out = {k: list(v) for k, v in history.items()}
    for key, rows in stage_history.items():
        out.setdefault(key, []).extend((offset + epoch, value) for epoch, value in rows)
    return out


def _plain(x):
    return x.item() if hasattr(x, "item") else x


def _graph_for(registries: dict[str, dict], graph) -> tuple[pd.DataFrame, list[str]]:
    """The edge table restricted to the used features (+ self-loops), and the vertex
    order: every modality's features in order (shared names once)."""
    edges = as_edge_table(graph)
    nodes = set(edges["source"]).union(edges["target"])
    for k, r in registries.items():
        missing = [f for f in r["features"] if f not in nodes]
        if len(missing) == len(r["features"]):
            raise DataError(f"modality {k!r}: none of its {len(r['features'])} features is a vertex of the graph "
                            f"(features e.g. {r['features'][:3]}; graph vertices e.g. {sorted(nodes)[:3]}).")
        if missing:
            raise DataError(f"the graph lacks {len(missing)} of modality {k!r}'s {len(r['features'])} features "
                            f"(e.g. {missing[:5]}); every feature used must be a vertex: add a row `feature,feature` "
                            "(a self-loop) for features without links, or use fewer features "
                            "(var['highly_variable'] with use_highly_variable=True).")
    vertices = list(dict.fromkeys(f for r in registries.values() for f in r["features"]))
    keep = set(vertices)
    edges = edges[edges["source"].isin(keep) & edges["target"].isin(keep)]
    edges = edges.groupby(["source", "target"], as_index=False, sort=False).agg(weight=("weight", "max"), sign=("sign", "first"))
    # the guidance graph is undirected (scglue's builders write both directions): a link
    # given one way only also runs the other way, with its weight and sign, so that both
    # modalities' link terms and the matching see it
    pairs = set(zip(edges["source"], edges["target"]))
    one_way = edges[[(t, s_) not in pairs for s_, t in zip(edges["source"], edges["target"])]]
    if len(one_way):
        rev = one_way.rename(columns={"source": "target", "target": "source"})[["source", "target", "weight", "sign"]]
        edges = pd.concat([edges, rev], ignore_index=True)
    has_loop = set(edges.loc[edges["source"] == edges["target"], "source"])
    loops = [v for v in vertices if v not in has_loop]
    if loops:
        edges = pd.concat([edges, pd.DataFrame(dict(source=loops, target=loops, weight=1.0, sign=1))], ignore_index=True)
    return edges.reset_index(drop=True), vertices
