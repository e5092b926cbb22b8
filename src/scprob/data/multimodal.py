"""Several modalities: per-modality registration (GLUE's ``configure_dataset``), one
tensor store per modality, and a loader that yields one minibatch of every modality
(plus an edge minibatch of the guidance graph) per step.

The registry of a modality is JSON in ``adata.uns["_scprob_glue"]``: the prob model,
the features used (names, in order), the layer / representation / batch / cell-type
keys and their categories.  It is saved with the model.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from .graph_sampler import EdgeSampler
from .keys import Keys
from .loader import CSRRows, TensorStore, _as_tensor, n_batches
from .registry import _categories, _codes, _version
from .validate import DataError, _first_bad, check_obs_column, get_matrix

UNS_KEY = "_scprob_glue"
XREP, DSC_BATCH, DSC_WEIGHT, GRAPH = "xrep", "dsc_batch", "dsc_weight", "_graph"
log = logging.getLogger("scprob")


def configure_dataset(adata, prob_model: str, use_highly_variable: bool = True, use_layer: str | None = None,
                      use_rep: str | None = None, use_batch: str | None = None, use_cell_type: str | None = None,
                      use_obs_names: bool = False) -> dict:
    """Validate one modality and record how GLUE reads it (see ``GLUE.configure_dataset``)."""
    from ..nn.prob_models import get_prob_model

    spec = get_prob_model(prob_model)
    if use_highly_variable and "highly_variable" in adata.var.columns:
        col = adata.var["highly_variable"]
        if col.isna().any():
            raise DataError(f"adata.var['highly_variable'] has {int(col.isna().sum())} missing value(s) "
                            f"(first: feature {adata.var_names[np.flatnonzero(col.isna().to_numpy())[0]]!r}).")
        hv = col.to_numpy(dtype=bool)
        if not hv.any():
            raise DataError("use_highly_variable=True but adata.var['highly_variable'] marks no feature.")
        features = [str(f) for f in adata.var_names[hv]]
    else:
        if use_highly_variable:
            log.debug("adata.var has no 'highly_variable' column: GLUE uses all %d features.", adata.n_vars)
        features = [str(f) for f in adata.var_names]
    if len(set(features)) != len(features):
        dup = pd.Index(features)[pd.Index(features).duplicated()][:5].tolist()
        raise DataError(f"feature names must be unique (duplicated: {dup}); call adata.var_names_make_unique().")
    check_values(adata, use_layer, features, prob_model, spec)
    batches = _categories(check_obs_column(adata, use_batch, "use_batch", True)) if use_batch else []
    cell_types: list[str] = []
    if use_cell_type:
        if use_cell_type not in adata.obs.columns:
            raise DataError(f"use_cell_type {use_cell_type!r} is not a column of adata.obs (columns: {list(adata.obs.columns)})")
        cell_types = _categories(adata.obs[use_cell_type].dropna())  # NaN: unlabelled cells
    if use_rep == "auto":  # after every check: no PCA/LSI is computed for data that will be refused
        from .._settings import settings
        from .reduce import add_representation

        use_rep = (add_representation(adata, use_layer, features, seed=settings.seed)
                   if spec["is_count"] or prob_model == "Bernoulli" else None)
        if use_rep is not None:
            log.info("encoder reads adata.obsm[%r] (%d components)", use_rep, adata.obsm[use_rep].shape[1])
    rep_dim = None
    if use_rep is not None:
        if use_rep not in adata.obsm:
            raise DataError(f"use_rep {use_rep!r} is not in adata.obsm (keys: {list(adata.obsm.keys())})")
        rep = np.asarray(adata.obsm[use_rep], dtype=np.float64)
        if rep.ndim != 2 or not np.isfinite(rep).all():
            raise DataError(f"adata.obsm[{use_rep!r}] must be a finite 2-D array.")
        rep_dim = int(rep.shape[1])
    reg = dict(
        model_name="GLUE", scprob_version=_version(), prob_model=prob_model, use_highly_variable=bool(use_highly_variable),
        use_layer=use_layer, use_rep=use_rep, rep_dim=rep_dim, use_batch=use_batch, batch_categories=batches,
        use_cell_type=use_cell_type, cell_types=cell_types, use_obs_names=bool(use_obs_names), features=features,
    )
    adata.uns[UNS_KEY] = json.dumps(reg)
    return reg


def check_values(adata, layer: str | None, features: list[str], prob_model: str, spec: dict) -> None:
    """The used features' values fit the prob model: finite; non-negative integers for a
    count model (and no cell without counts); inside the family's value range."""
    X = get_matrix(adata, layer)
    where = f"adata.layers[{layer!r}]" if layer else "adata.X"
    idx = adata.var_names.get_indexer(features)
    lo, hi = spec["value_range"] or (-np.inf, np.inf)
    if spec["is_count"]:
        lo = max(lo, 0.0)
    checks = [
        (lambda v: ~np.isfinite(v), "a non-finite value (NaN or Inf)"),
        (lambda v: (v < lo) | (v > hi), f"a value outside [{lo}, {hi}] (prob_model {prob_model!r})"),
    ]
    if spec["is_count"]:
        checks.append((lambda v: np.abs(v - np.round(v)) > 1e-6,
                       f"a non-integer value, but prob_model {prob_model!r} models counts (pass raw counts, e.g. use_layer='counts')"))
    for start in range(0, adata.n_obs, 20_000):
        block = X[start : start + 20_000]
        block = sp.csr_matrix(block)[:, idx] if sp.issparse(block) else np.asarray(block)[:, idx]
        for test, what in checks:
            hit = _first_bad(block, test)
            if hit is not None:
                r, c = hit
                raise DataError(f"{where} has {what}: {block[r, c]} at cell {adata.obs_names[start + r]!r}, "
                                f"feature {features[c]!r}.")
        if spec["is_count"]:
            empty = np.flatnonzero(np.asarray(block.sum(axis=1)).ravel() <= 0)
            if empty.size:
                raise DataError(f"{empty.size} cell(s) have no counts in the {len(features)} features used "
                                f"(first: {adata.obs_names[start + empty[0]]!r}); remove them before configuring.")


def get_glue_registry(adata, key: str = "") -> dict:
    if UNS_KEY not in adata.uns:
        name = f" {key!r}" if key else ""
        raise DataError(f"modality{name} is not configured: call GLUE.configure_dataset(adata, prob_model, ...) first.")
    return json.loads(adata.uns[UNS_KEY])


class ModalityStore(TensorStore):
    """Tensors of one modality, built once: the used features (CSR rows or dense), the
    batch codes (decoder rows), discriminator batch codes, cell-type codes (-1 for
    unlabelled), the representation (``use_rep``) and the balancing weights."""

    def __init__(self, adata, reg: dict, dsc_batches: list[str] | None = None, cell_types: list[str] | None = None,
                 device: str | torch.device = "cpu"):
        self.n_obs, self.device = adata.n_obs, torch.device(device)
        idx = adata.var_names.get_indexer(reg["features"])
        if (idx < 0).any():
            missing = [f for f, i in zip(reg["features"], idx) if i < 0]
            raise DataError(f"adata lacks {len(missing)} of the modality's features (e.g. {missing[:5]}).")
        X = get_matrix(adata, reg["use_layer"])
        if sp.issparse(X):
            self.x = CSRRows(sp.csr_matrix(X)[:, idx], self.device)
        else:
            self.x = _as_tensor(np.asarray(X)[:, idx].astype(np.float32), torch.float32).to(self.device)
        n = adata.n_obs
        b = _codes(adata.obs[reg["use_batch"]], reg["batch_categories"], f"use_batch adata.obs[{reg['use_batch']!r}]", adata) \
            if reg["use_batch"] else np.zeros(n, dtype=np.int64)
        if reg["use_batch"] and dsc_batches:  # this modality's batch codes -> the union's
            db = np.asarray([dsc_batches.index(c) for c in reg["batch_categories"]], dtype=np.int64)[b]
        else:
            db = np.zeros(n, dtype=np.int64)
        types = cell_types or []
        if reg["use_cell_type"] and reg["use_cell_type"] in adata.obs.columns and types:
            col = adata.obs[reg["use_cell_type"]]
            lab = np.where(col.notna().to_numpy(), pd.Index(types).get_indexer(col.astype(str)), -1).astype(np.int64)
        else:
            lab = np.full(n, -1, dtype=np.int64)
        self.tensors = {Keys.BATCH: torch.from_numpy(b).to(self.device), DSC_BATCH: torch.from_numpy(db).to(self.device),
                        Keys.LABELS: torch.from_numpy(lab).to(self.device),
                        DSC_WEIGHT: torch.ones(n, device=self.device)}
        if reg["use_rep"]:
            self.add(XREP, np.asarray(adata.obsm[reg["use_rep"]], dtype=np.float32))


class MultiModalLoader:
    """One step = one minibatch of every modality (+ an edge minibatch).

    An epoch has as many steps as the largest modality needs to visit each of its cells
    once; smaller modalities start a new permutation whenever they run out.  With an
    :class:`EdgeSampler`, each step adds ``ceil(n_edges / steps)`` positive edges and
    their negatives under the key ``"_graph"``.  ``shuffle=False`` (validation,
    inference) walks the cells in order and draws edges from a fixed seed, so every
    validation epoch scores the same edges.
    """

    def __init__(self, stores: dict[str, TensorStore], indices: dict[str, np.ndarray], batch_size: int = 128,
                 shuffle: bool = True, seed: int = 0, sampler: EdgeSampler | None = None, drop_last_below: int = 3):
        self.stores, self.batch_size, self.shuffle, self.seed = stores, int(batch_size), shuffle, seed
        self.indices = {k: torch.as_tensor(np.asarray(v), dtype=torch.int64) for k, v in indices.items()}
        self.edge_sampler, self.drop_last_below, self.epoch = sampler, drop_last_below, 0
        self.n_steps = max(n_batches(len(v), self.batch_size, drop_last_below) for v in self.indices.values())
        self.edges_per_step = -(-sampler.eidx.shape[1] // max(self.n_steps, 1)) if sampler is not None else 0

    def __len__(self) -> int:
        return self.n_steps

    def _stream(self, idx: torch.Tensor, g: torch.Generator):
        while True:
            order = idx[torch.randperm(idx.numel(), generator=g).to(idx.device)] if self.shuffle else idx
            for s in range(0, order.numel(), self.batch_size):
                chunk = order[s : s + self.batch_size]
                if chunk.numel() >= min(self.drop_last_below, order.numel()):
                    yield chunk

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + (self.epoch if self.shuffle else 0))
        self.epoch += 1
        # indices on each store's device: one copy per epoch, minibatches are slices of it
        streams = {k: self._stream(v.to(self.stores[k].device), g) for k, v in self.indices.items()}
        dev = next(iter(self.stores.values())).device
        for _ in range(self.n_steps):
            batch = {k: self.stores[k][next(s)] for k, s in streams.items()}
            if self.edge_sampler is not None:
                edges = self.edge_sampler.sample(self.edges_per_step, g)
                if dev.type == "cuda":  # page-locked, asynchronous copy: the host does not wait for the GPU
                    batch[GRAPH] = {k: v.pin_memory().to(dev, non_blocking=True) for k, v in edges.items()}
                else:
                    batch[GRAPH] = {k: v.to(dev) for k, v in edges.items()}
            yield batch
