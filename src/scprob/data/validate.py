"""Input checks that run before any training: each error names the key, cell or gene."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import pandas as pd
import scipy.sparse as sp


class DataError(ValueError):
    """Raised for invalid user data; the message names what is wrong and where."""


class MissingKeyError(DataError, KeyError):
    """A registered key (obs column, layer, obsm entry) is absent: a ``DataError`` that is
    also a ``KeyError``, as scvi-tools raises for it."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


log = logging.getLogger("scprob")

# below these, a count likelihood's data are suspicious (see check_counts_for_likelihood)
LOG_MAX_VALUE = 10.0  # integer data whose largest value is at most this look log-transformed (or rounded after it)
LOG_MAX_VALUE_FLOAT = 20.0  # non-integer data up to this (log1p of 1e8 is 18.4) look log-transformed
NORMALIZED_SPREAD = 0.01  # every cell's total within 1% of the median: normalized to a common total
MIN_CELLS_PROFILE = 20  # fewer cells than this say too little to judge


def get_matrix(adata, layer: str | None):
    if layer is None:
        if adata.X is None:
            raise DataError("adata.X is empty (None); pass `layer=` naming the layer that holds the counts.")
        return adata.X
    if layer not in adata.layers:
        raise DataError(f"layer {layer!r} not found in adata.layers (available: {list(adata.layers.keys())})")
    return adata.layers[layer]


CHUNK_ELEMENTS = 1 << 23  # cells x features per block of iter_row_chunks (32 MiB dense float32)


def iter_row_chunks(X, chunk_size: int | None = None) -> Iterator[tuple[int, np.ndarray | sp.csr_matrix]]:
    """Yield ``(start, block)`` row blocks of any matrix: dense, scipy sparse, or a backed
    h5py-based dataset; blocks are numpy arrays or CSR matrices.  ``chunk_size`` rows per
    block, by default as many as hold :data:`CHUNK_ELEMENTS` cells x features (at most
    20,000): the per-block temporaries of a scan then stay small, and fewer of them
    stay in the heap (backed, 1M cells x 2,000 genes: the count scan keeps ~30 MB less)."""
    n = X.shape[0]
    if chunk_size is None:
        chunk_size = max(1, min(20_000, CHUNK_ELEMENTS // max(int(X.shape[1]), 1)))
    for start in range(0, n, chunk_size):
        block = X[start : min(start + chunk_size, n)]
        if sp.issparse(block):
            block = sp.csr_matrix(block)
        elif not isinstance(block, np.ndarray):
            block = block.to_memory() if hasattr(block, "to_memory") else np.asarray(block)
            block = sp.csr_matrix(block) if sp.issparse(block) else np.asarray(block)
        yield start, block


def row_totals(X) -> np.ndarray:
    """Per-cell sums of any matrix (dense, sparse or backed), read in row chunks."""
    return np.concatenate([np.asarray(b.sum(axis=1)).ravel() for _, b in iter_row_chunks(X)])


def _first_bad(block, mask_fn) -> tuple[int, int] | None:
    """(row, col) of the first stored entry of ``block`` for which ``mask_fn`` is true."""
    if sp.issparse(block):
        bad = np.flatnonzero(mask_fn(block.data))
        if bad.size == 0:
            return None
        k = bad[0]
        row = int(np.searchsorted(block.indptr, k, side="right") - 1)
        return row, int(block.indices[k])
    bad = np.argwhere(mask_fn(block))
    if bad.size == 0:
        return None
    return int(bad[0, 0]), int(bad[0, 1])


def scan_matrix(adata, layer: str | None) -> dict:
    """One pass over the data: check NaN/Inf/negative values (error), note whether all
    values are integers (and the first that is not), and return per-cell totals."""
    X = get_matrix(adata, layer)
    where = f"adata.layers[{layer!r}]" if layer else "adata.X"
    totals = np.zeros(adata.n_obs, dtype=np.float64)
    first_non_integer = None
    max_value = 0.0
    for start, block in iter_row_chunks(X):
        for test, what in (
            (lambda v: ~np.isfinite(v), "a non-finite value (NaN or Inf)"),
            (lambda v: v < 0, "a negative value"),
        ):
            hit = _first_bad(block, test)
            if hit is not None:
                r, c = hit
                val = block[r, c]
                raise DataError(
                    f"{where} has {what} ({val}) at cell {adata.obs_names[start + r]!r}, "
                    f"gene {adata.var_names[c]!r}."
                )
        if first_non_integer is None:
            hit = _first_bad(block, lambda v: np.abs(v - np.round(v)) > 1e-6)
            if hit is not None:
                r, c = hit
                first_non_integer = (str(adata.obs_names[start + r]), str(adata.var_names[c]), float(block[r, c]))
        totals[start : start + block.shape[0]] = np.asarray(block.sum(axis=1)).ravel()
        values = block.data if sp.issparse(block) else block
        if values.size:
            max_value = max(max_value, float(values.max()))
    return dict(totals=totals, first_non_integer=first_non_integer, where=where, max_value=max_value)


def count_profile(scan: dict) -> dict:
    """What :func:`check_counts_for_likelihood` needs to tell raw counts from transformed
    data (kept in the registry): the largest value and the spread of the cell totals."""
    totals = scan["totals"]
    if totals.size == 0:
        return dict(max_value=scan["max_value"], n_cells=0)
    return dict(max_value=scan["max_value"], n_cells=int(totals.size), total_min=float(totals.min()),
                total_max=float(totals.max()), total_median=float(np.median(totals)))


def _looks(profile: dict | None, integer: bool) -> str | None:
    """Why the data look transformed rather than raw counts, or None."""
    if not profile or profile.get("n_cells", 0) < MIN_CELLS_PROFILE:
        return None
    med = profile["total_median"]
    if med > 0 and profile["total_max"] - profile["total_min"] <= NORMALIZED_SPREAD * med:
        return (f"every cell's total is {med:.6g} (within {NORMALIZED_SPREAD:.0%}): the data look already normalized "
                "to a common total (e.g. normalize_total)")
    top = profile["max_value"]
    if (1.0 < top <= LOG_MAX_VALUE) if integer else (0 < top <= LOG_MAX_VALUE_FLOAT):
        return f"the largest value is {top:.4g}: the data look log-transformed" + (" and rounded" if integer else "")
    return None


def check_obs_column(adata, key: str, what: str, categorical: bool) -> pd.Series:
    if key not in adata.obs.columns:
        raise MissingKeyError(
            f"{what} {key!r} is not a column of adata.obs (columns: {list(adata.obs.columns)})"
        )
    col = adata.obs[key]
    missing = col.isna().to_numpy()
    if missing.any():
        first = adata.obs_names[np.flatnonzero(missing)[0]]
        raise DataError(
            f"{what} adata.obs[{key!r}] has {int(missing.sum())} missing value(s) (NaN); first at cell {first!r}."
        )
    if not categorical:
        vals = pd.to_numeric(col, errors="coerce").to_numpy(dtype=float)
        bad = ~np.isfinite(vals)
        if bad.any():
            first = adata.obs_names[np.flatnonzero(bad)[0]]
            raise DataError(f"{what} adata.obs[{key!r}] has a non-numeric or infinite value at cell {first!r}.")
    return col


def check_counts_for_likelihood(registry: dict, gene_likelihood: str, is_count: bool) -> None:
    """Non-integer data under a count likelihood: DataError.  Integer data that look
    log-transformed (largest value at most 10) or normalized (every cell's total the same)
    under a count likelihood: one warning on the ``scprob`` logger."""
    if not is_count:
        return
    bad = registry.get("first_non_integer")
    why = _looks(registry.get("count_profile"), integer=bad is None)
    if bad is not None:
        cell, gene, val = bad
        raise DataError(
            f"gene_likelihood={gene_likelihood!r} models counts, but {registry['data_location']} holds "
            f"non-integer values: first at cell {cell!r}, gene {gene!r} (value {val})"
            + (f"; {why}" if why else "") + ". "
            "Pass raw counts (e.g. `layer='counts'`) or use gene_likelihood='normal'."
        )
    if why:
        log.warning(
            "%s holds integers, but %s; gene_likelihood=%r models raw counts, so the model will fit the wrong "
            "scale. Pass raw counts (e.g. layer='counts'); ignore this if these are raw counts.",
            registry.get("data_location", "the data"), why, gene_likelihood,
        )


def drop_empty_cells(adata, layer: str | None = None):
    """Return ``adata`` without cells whose total count is zero (logs how many were dropped)."""
    totals = row_totals(get_matrix(adata, layer))
    keep = totals > 0
    n_drop = int((~keep).sum())
    if n_drop:
        log.warning("Dropped %d cell(s) with zero total counts.", n_drop)
        return adata[keep].copy()
    return adata
