"""Scyan: cytometry cell-type annotation from a knowledge table (the model's math is in
:mod:`scprob.modules.scyan`).

>>> adata, table = scprob.data.load_aml()
>>> model = Scyan(adata, table, seed=0)
>>> model.fit()
>>> model.predict()                      # adata.obs["scyan_pop"] (+ one column per hierarchy level)
>>> model.predict(new_adata)             # new data, same markers: same preprocessing applied
>>> model.batch_effect_correction()      # (with batch_key) every batch mapped onto batch_ref

Data: the markers are the table's columns, matched to ``adata.var_names`` by name (other
channels are ignored); values are expected asinh- or logicle-transformed and
standardized (:mod:`scprob.data.cytometry`); the preprocessing record in
``adata.uns["scprob_cytometry"]`` is saved with the model and re-applied to new raw data.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from .._settings import settings
from ..data import DataError, TensorStore
from ..data.cytometry import check_preprocessed
from ..data.keys import Keys
from ..data.registry import setup_anndata
from ..data.table import KnowledgeTable, read_table
from ..data.validate import get_matrix, iter_row_chunks
from ..modules.scyan import ScyanModule
from ..train import FlowTrainingPlan, RelativeEarlyStopping
from .base import BaseModel

log = logging.getLogger("scprob")
PREPROCESS_KEY = "scprob_cytometry"


def marker_matrix(adata, markers: Sequence[str], layer: str | None = None) -> np.ndarray:
    """The markers' columns of ``adata`` (dense float32), checked: missing markers and
    NaN/Inf values are errors naming the marker (and cell)."""
    pos = {str(v): i for i, v in enumerate(adata.var_names)}
    missing = [m for m in markers if m not in pos]
    if missing:
        raise DataError(
            f"{len(missing)} marker(s) of the knowledge table are not in adata.var_names: {missing}; "
            f"available: {list(map(str, adata.var_names))[:40]}"
        )
    cols = np.array([pos[m] for m in markers])
    X = get_matrix(adata, layer)
    blocks = []
    for start, b in iter_row_chunks(X):
        b = b[:, cols]
        b = np.asarray(b.todense() if hasattr(b, "todense") else b, dtype=np.float32)
        bad = ~np.isfinite(b)
        if bad.any():
            r, c = np.argwhere(bad)[0]
            raise DataError(
                f"marker {markers[c]!r} has a non-finite value ({b[r, c]}) at cell {adata.obs_names[start + r]!r}; "
                "remove or impute such events first."
            )
        blocks.append(b)
    return np.concatenate(blocks) if blocks else np.zeros((0, len(markers)), np.float32)


class Scyan(BaseModel):
    """Knowledge-guided cytometry annotation with a normalizing flow (Blampey et al. 2023).

    Parameters
    ----------
    adata
        Cells x channels; the table's markers must be among ``var_names``.
    table
        Knowledge table (CSV path or DataFrame): populations x markers, -1 / 1 / NaN,
        optional hierarchy-level columns (see :mod:`scprob.data.table`).
    continuum_markers
        Markers expressed as a continuum: their +-1 targets are softened.
    batch_key, batch_ref
        Batch column of ``adata.obs`` (a flow covariate) and the reference batch of
        :meth:`batch_effect_correction` (default: the largest batch).
    categorical_covariate_keys, continuous_covariate_keys
        Further covariates of the flow.
    hidden_size, n_hidden_layers, n_layers, prior_std, temperature
        Flow width/depth, number of coupling layers, sigma of the prior, temperature.
    seed
        Seeds the initialisation and the training (``None``: ``scprob.settings.seed``).
    layer
        Read the markers from ``adata.layers[layer]`` instead of ``X``.
    """

    _plan_cls = FlowTrainingPlan

    def __init__(
        self,
        adata,
        table,
        continuum_markers: Sequence[str] | None = None,
        batch_key: str | None = None,
        batch_ref: str | None = None,
        categorical_covariate_keys: Sequence[str] | None = None,
        continuous_covariate_keys: Sequence[str] | None = None,
        hidden_size: int = 16,
        n_hidden_layers: int = 6,
        n_layers: int = 7,
        prior_std: float = 0.3,
        temperature: float = 0.5,
        seed: int | None = None,
        layer: str | None = None,
    ):
        kt = read_table(table)
        self.table: KnowledgeTable = kt
        self.markers: list[str] = kt.markers
        self.populations: list[str] = kt.populations
        continuum_markers = list(continuum_markers or [])
        unknown = [m for m in continuum_markers if m not in self.markers]
        if unknown:
            raise DataError(f"continuum_markers {unknown} are not columns of the knowledge table")
        X = marker_matrix(adata, self.markers, layer)  # validates markers and values first
        setup_anndata(
            adata, layer=layer, batch_key=batch_key, categorical_covariate_keys=list(categorical_covariate_keys or []),
            continuous_covariate_keys=list(continuous_covariate_keys or []), model_name="Scyan", count_data=False,
        )
        super().__init__(adata)
        for msg in check_preprocessed(X, list(self.markers)):
            warnings.warn(msg, UserWarning, stacklevel=2)
        batches = self.registry["batch_categories"]
        if batch_key is not None:
            counts = pd.Series(adata.obs[batch_key].astype(str)).value_counts()
            batch_ref = str(counts.index[0]) if batch_ref is None else str(batch_ref)
            if batch_ref not in batches:
                raise DataError(f"batch_ref {batch_ref!r} is not a batch of adata.obs[{batch_key!r}]; batches: {batches}")
        elif batch_ref is not None:
            raise DataError("batch_ref needs batch_key")
        self.batch_ref = batch_ref
        self.seed = settings.seed if seed is None else int(seed)
        self.preprocessing = adata.uns.get(PREPROCESS_KEY)
        self.init_params = dict(
            table=kt.to_frame(), continuum_markers=continuum_markers, batch_key=batch_key, batch_ref=batch_ref,
            categorical_covariate_keys=list(categorical_covariate_keys or []),
            continuous_covariate_keys=list(continuous_covariate_keys or []), hidden_size=hidden_size,
            n_hidden_layers=n_hidden_layers, n_layers=n_layers, prior_std=prior_std, temperature=temperature,
            seed=self.seed, layer=layer,
        )
        args = self.registry["setup_args"]
        torch.manual_seed(self.seed)
        self.module = ScyanModule(
            rho=torch.tensor(kt.rho.to_numpy(), dtype=torch.float32),
            is_continuum=torch.tensor([m in continuum_markers for m in self.markers]),
            n_batch=len(batches) if batch_key else 1,
            n_cats_per_cov=[len(self.registry["categorical_covariate_categories"][k]) for k in args["categorical_covariate_keys"]],
            n_continuous_cov=self.registry["n_continuous_cov"],
            hidden_size=hidden_size, n_hidden_layers=n_hidden_layers, n_layers=n_layers,
            prior_std=prior_std, temperature=temperature,
        )
        self._X_train = X  # the training store is built from this once
        self._unknown_q: dict[float, np.ndarray] = {}

    # ------------------------------------------------------------------ data
    @classmethod
    def _setup_loaded(cls, adata, registry: dict) -> None:
        pass  # Scyan.__init__ registers adata itself

    def _validate_anndata(self, adata=None):
        if adata is None or adata is self.adata:
            return self.adata
        args = self.registry["setup_args"]
        for key in [args["batch_key"], *args["categorical_covariate_keys"], *args["continuous_covariate_keys"]]:
            if key and key not in adata.obs.columns:
                raise DataError(f"new data lacks adata.obs[{key!r}], a covariate of this model")
        return adata

    def _make_store(self, adata) -> TensorStore:
        """Covariates from the model's registry; X = the table's markers (preprocessed
        like the training data when ``adata`` is new raw data)."""
        store = TensorStore(adata, dict(self.registry, n_obs=int(adata.n_obs)), self._device, load_x=False)
        X = self._X_train if adata is self.adata and self._X_train is not None else self._prepared_matrix(adata)
        store.add(Keys.X, X)
        return store

    def _prepared_matrix(self, adata) -> np.ndarray:
        layer = self.registry["setup_args"]["layer"]
        record = self.preprocessing
        theirs = adata.uns.get(PREPROCESS_KEY) if hasattr(adata, "uns") else None
        if record and not theirs and (record.get("transform") or record.get("scale")):
            from ..data.cytometry import apply_preprocessing

            log.info("new data has no preprocessing record: applying the training data's (%s)", _describe(record))
            import anndata as ad

            # all channels and the file's spillover: compensation may involve non-table channels
            sub = ad.AnnData(np.array(get_matrix(adata, layer), dtype=np.float32), obs=pd.DataFrame(index=adata.obs_names.astype(str)),
                             var=adata.var.copy(), uns={"fcs": adata.uns["fcs"]} if "fcs" in adata.uns else {})
            apply_preprocessing(sub, record)
            return marker_matrix(sub, self.markers)
        if record and theirs and _describe(record.get("transform")) != _describe(theirs.get("transform")):
            warnings.warn(
                f"new data was transformed differently ({_describe(theirs.get('transform'))}) from the training data "
                f"({_describe(record.get('transform'))}); predictions may be off.", UserWarning, stacklevel=3,
            )
        return marker_matrix(adata, self.markers, layer)

    # --------------------------------------------------------------- training
    def fit(
        self,
        max_epochs: int = 100,
        batch_size: int | None = None,
        lr: float = 5e-4,
        patience: int = 4,
        min_delta_rel: float = 0.01,
        min_epochs: int = 8,
        samples_per_epoch: int | None = None,
        accelerator: str = "auto",
        devices: int | str = "auto",
        enable_progress_bar: bool = True,
        plan_kwargs: dict | None = None,
        **trainer_kwargs,
    ) -> Scyan:
        """Fit the flow and the population weights by maximum likelihood.

        An epoch visits ``samples_per_epoch`` cells (default: the data size, at least 64
        minibatches' worth and at most 200,000 cells), so the schedule is the same in
        optimizer steps on 300 cells or 10 million.  ``batch_size`` (default) is
        ``n / 16`` cells, at least 512 (or all cells) and at most 4,096: an epoch is then
        at most ~4 passes over small data, and a step costs no more than the data
        needs.  Early stopping is relative: stop
        after ``patience`` epochs whose exact negative log-likelihood improves by less
        than ``min_delta_rel`` of the progress so far (see
        :class:`~scprob.train.RelativeEarlyStopping`), after at least ``min_epochs``.
        ``plan_kwargs`` go to :class:`~scprob.train.FlowTrainingPlan` (``modulo_temp``,
        ``warm_up``, ``weight_decay``, ...).
        """
        n = self.adata.n_obs
        bs = int(min(batch_size or min(4096, max(n // 16, 512)), n))
        if samples_per_epoch is None:
            samples_per_epoch = min(max(n, 64 * bs), 200_000)
        self._train_loader_kwargs = {"n_samples_per_epoch": samples_per_epoch}
        self._plan_defaults = {"lr": lr}
        callbacks = list(trainer_kwargs.pop("callbacks", []) or [])
        callbacks.append(RelativeEarlyStopping("elbo_train", patience=patience, min_delta_rel=min_delta_rel, min_epochs=min_epochs))
        self.train(
            max_epochs=max_epochs, accelerator=accelerator, devices=devices, train_size=1.0, batch_size=bs,
            seed=self.seed, plan_kwargs=plan_kwargs, enable_progress_bar=enable_progress_bar, callbacks=callbacks,
            **trainer_kwargs,
        )
        self._unknown_q.clear()
        return self

    # -------------------------------------------------------------- inference
    def _log_probs(self, adata=None, batch_size: int = 65_536):
        """Yield ``(log p(u|z) (B, P), u (B, M))`` chunk by chunk."""
        self._check_trained()
        for t in self._batches(adata, None, batch_size):
            inf = self.module._get_inference_input(t)
            yield self.module.log_joint(inf["x"], inf["cov"])

    def unknown_thresholds(self, alpha: float) -> np.ndarray:
        """Per population, the ``alpha``-quantile of ``log p(U | z)`` under its own prior."""
        if alpha not in self._unknown_q:
            self._unknown_q[alpha] = self.module.log_prob_quantiles(alpha).cpu().numpy()
        return self._unknown_q[alpha]

    @torch.inference_mode()
    def predict(
        self,
        adata=None,
        key_added: str | None = "scyan_pop",
        add_levels: bool = True,
        unknown: str | float | None = "ratio",
        batch_size: int = 65_536,
    ) -> pd.Series:
        """Annotate cells: ``argmax_z log p(u | z) + log pi_z``.

        ``unknown`` decides which cells stay unassigned (NaN), see
        :mod:`scprob.modules.scyan`: ``"ratio"`` (default) when the "every marker not
        informative" prior explains the cell better than its best population (a
        likelihood ratio, no threshold); a float ``alpha`` when the cell's in-population
        log-density is below that population's own ``alpha``-quantile (tail test);
        ``None`` assigns every cell.

        Writes ``obs[key_added]`` (categorical), ``obs[f"{key_added}_{level}"]`` for each
        hierarchy level, and ``obs["scyan_log_prob"]`` (``max_z log p(u|z) + log pi_z``)
        on ``adata`` (default: the training data) unless ``key_added`` is None; returns
        the population Series.  Works on new data with the same markers, streaming in
        chunks of ``batch_size`` cells.
        """
        adata = self._validate_anndata(adata)
        if not (unknown is None or unknown == "ratio" or (isinstance(unknown, float) and 0 < unknown < 1)):
            raise ValueError(f"unknown must be 'ratio', a float alpha in (0, 1) or None, got {unknown!r}")
        log_pi = self.module.log_pi.cpu().numpy()
        thr = self.unknown_thresholds(unknown) if isinstance(unknown, float) else None
        codes, scores = [], []
        for lp, u in self._log_probs(adata, batch_size):
            best_bg = self.module.log_background(u).cpu().numpy() if unknown == "ratio" else None
            lp = lp.cpu().numpy()
            joint = lp + log_pi
            z = joint.argmax(1)
            best = lp[np.arange(len(z)), z]
            if thr is not None:
                z = np.where(best < thr[z], -1, z)
            elif best_bg is not None:
                z = np.where(best < best_bg, -1, z)
            codes.append(z)
            scores.append(joint.max(1))
        z = np.concatenate(codes) if codes else np.zeros(0, int)
        pops = pd.Categorical.from_codes(z, categories=self.populations)
        series = pd.Series(pops, index=adata.obs_names, name=key_added or "scyan_pop")
        if key_added is not None:
            adata.obs[key_added] = series.to_numpy()
            adata.obs[key_added] = adata.obs[key_added].astype(pd.CategoricalDtype(self.populations))
            adata.obs["scyan_log_prob"] = np.concatenate(scores) if scores else np.zeros(0)
            if add_levels:
                for level in self.table.levels.columns:
                    mapping = self.table.levels[level]
                    adata.obs[f"{key_added}_{_slug(level)}"] = pd.Categorical(series.map(mapping).astype(object))
        n_unknown = int((z < 0).sum())
        if n_unknown:
            log.info("%d of %d cells left unassigned (unknown rule: %s)", n_unknown, len(z), unknown)
        return series

    @torch.inference_mode()
    def predict_proba(self, adata=None, batch_size: int = 65_536) -> pd.DataFrame:
        """Posterior ``p(z | x)`` per cell (cells x populations)."""
        adata = self._validate_anndata(adata)
        log_pi = self.module.log_pi
        out = [torch.softmax(lp + log_pi, dim=1).cpu() for lp, _ in self._log_probs(adata, batch_size)]
        arr = torch.cat(out).numpy() if out else np.zeros((0, len(self.populations)), np.float32)
        return pd.DataFrame(arr, index=adata.obs_names, columns=self.populations)

    @torch.inference_mode()
    def get_latent_representation(self, adata=None, batch_size: int = 65_536) -> np.ndarray:
        """The latent expressions ``u = f(x; c)`` (cells x markers): where the table's
        targets live (+1 / -1 per population)."""
        return np.concatenate([u.cpu().numpy() for _, u in self._log_probs(adata, batch_size)])

    @torch.inference_mode()
    def batch_effect_correction(self, batch_ref: str | None = None, adata=None, batch_size: int = 65_536) -> np.ndarray:
        """Map every cell onto the reference batch: ``x' = f^{-1}(f(x; c_b); c_ref)``.
        Returns cells x markers and writes ``obsm["scyan_corrected"]`` (a DataFrame with
        the markers as columns)."""
        args = self.registry["setup_args"]
        if not args["batch_key"]:
            raise ValueError("batch_effect_correction needs a model built with batch_key")
        ref = str(batch_ref or self.batch_ref)
        cats = self.registry["batch_categories"]
        if ref not in cats:
            raise ValueError(f"batch_ref {ref!r} is not a batch of this model; batches: {cats}")
        self._check_trained()
        adata = self._validate_anndata(adata)
        code = cats.index(ref)
        out = []
        for t in self._batches(adata, None, batch_size):
            inf = self.module._get_inference_input(t)
            u, _ = self.module.flow(inf["x"], inf["cov"])
            t_ref = dict(t, **{Keys.BATCH: torch.full_like(t[Keys.BATCH], code)})
            cov_ref = self.module._get_inference_input(t_ref)["cov"]
            out.append(self.module.flow.inverse(u, cov_ref).cpu())
        arr = torch.cat(out).numpy()
        adata.obsm["scyan_corrected"] = pd.DataFrame(arr, index=adata.obs_names, columns=self.markers)
        return arr

    @torch.inference_mode()
    def sample(
        self, n_samples: int, batch: str | None = None, pop: str | int | Sequence | None = None, return_z: bool = False,
        seed: int | None = None,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Draw ``n_samples`` cells from the fitted model (in the markers' preprocessed
        units, the table's column order) for ``batch`` (default: ``batch_ref``) and the
        given population(s) (name, index, or one per sample; default: drawn from pi)."""
        self._check_trained()
        cov = self._covariate_row(batch)
        z = None
        if pop is not None:
            if isinstance(pop, (str, int, np.integer)):
                pop = [pop] * n_samples
            z = torch.tensor([self.populations.index(p) if isinstance(p, str) else int(p) for p in pop])
        g = torch.Generator(device=self._device).manual_seed(self.seed if seed is None else seed)
        x, zz = self.module.sample(n_samples, cov, z=z, return_z=True, generator=g)
        return (x.cpu().numpy(), zz.cpu().numpy()) if return_z else x.cpu().numpy()

    def _covariate_row(self, batch: str | None) -> torch.Tensor:
        args = self.registry["setup_args"]
        if args["categorical_covariate_keys"] or args["continuous_covariate_keys"]:
            raise ValueError("sampling a model with extra covariates needs their values: use module.sample directly")
        if not args["batch_key"]:
            return torch.zeros(1, 0)
        cats = self.registry["batch_categories"]
        b = str(batch or self.batch_ref)
        if b not in cats:
            raise ValueError(f"batch {b!r} is not a batch of this model; batches: {cats}")
        return torch.nn.functional.one_hot(torch.tensor([cats.index(b)]), len(cats)).float()

    # ------------------------------------------------------ population discovery
    def propose_table(self, adata=None, min_cells: int = 10, threshold: float = 0.5) -> pd.DataFrame:
        """Values for the table's NaN cells read from the latent space: for population z
        and a marker it leaves NaN, the median latent expression of the cells annotated
        z; ``>= threshold`` proposes +1, ``<= -threshold`` proposes -1.  Returns one row
        per proposal (population, marker, proposed, median_u, n_cells)."""
        adata = self._validate_anndata(adata)
        pops = self.predict(adata, key_added=None, unknown=None).cat.codes.to_numpy()
        u = self.get_latent_representation(adata)
        rho = self.table.rho.to_numpy()
        rows = []
        for p, name in enumerate(self.populations):
            sel = pops == p
            if sel.sum() < min_cells:
                continue
            med = np.median(u[sel], axis=0)
            for m in np.flatnonzero(np.isnan(rho[p])):
                if abs(med[m]) >= threshold:
                    rows.append((name, self.markers[m], float(np.sign(med[m])), float(med[m]), int(sel.sum())))
        return pd.DataFrame(rows, columns=["population", "marker", "proposed", "median_u", "n_cells"])

    def refine_fit(self, proposals: pd.DataFrame | None = None, **fit_kwargs) -> pd.DataFrame:
        """Fill NaN table cells with ``proposals`` (default :meth:`propose_table`), rebuild
        the prior on the completed table and continue fitting from the current flow.
        Returns the proposals applied; ``self.table`` (and what :meth:`save` writes) is
        the refined table."""
        self._check_trained()
        proposals = self.propose_table() if proposals is None else proposals
        rho = self.table.rho.copy()
        for _, r in proposals.iterrows():
            if r["population"] not in rho.index or r["marker"] not in rho.columns:
                raise DataError(f"proposal for unknown population/marker: {r['population']!r} / {r['marker']!r}")
            rho.loc[r["population"], r["marker"]] = float(r["proposed"])
        self.table = KnowledgeTable(rho=rho, levels=self.table.levels)
        self.init_params["table"] = self.table.to_frame()
        old = self.module.prior
        cont = old.is_continuum.cpu()
        from ..modules.scyan import ScyanPrior

        self.module.prior = ScyanPrior(torch.tensor(rho.to_numpy(), dtype=torch.float32), cont, old.prior_std).to(self._device)
        fit_kwargs.setdefault("plan_kwargs", {"warm_up": None})
        self.fit(**fit_kwargs)
        return proposals

    # ------------------------------------------------------------ save / load
    def _extra_state(self) -> dict:
        return {"preprocessing": self.preprocessing}

    def _load_extra_state(self, extra: dict) -> None:
        self.preprocessing = extra.get("preprocessing", self.preprocessing)

    def __repr__(self) -> str:
        r = self.registry
        return (
            f"Scyan({r['n_obs']} cells x {len(self.markers)} markers, {len(self.populations)} populations, "
            f"{len(r['batch_categories']) if r['setup_args']['batch_key'] else 1} batch(es), trained={self.is_trained_})"
        )


def _slug(level: str) -> str:
    return str(level).strip().replace(" ", "_")


def _describe(t) -> str:
    if not t:
        return "none"
    if isinstance(t, dict) and "transform" in t:
        t = t["transform"]
    if not t:
        return "none"
    kind = t.get("kind", "?")
    params = {k: v for k, v in t.items() if k not in ("kind", "markers")}
    return f"{kind} {params}" if params else kind

