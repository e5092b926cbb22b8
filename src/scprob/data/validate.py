"""Input checks that run before any training: each error names the key, cell or gene."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
import scipy.sparse as sp


class DataError(ValueError):
    """Raised for invalid user data; the message names what is wrong and where."""


def get_matrix(adata, layer: str | None):
    if layer is None:
        if adata.X is None:
            raise DataError("adata.X is empty (None); pass `layer=` naming the layer that holds the counts.")
        return adata.X
    if layer not in adata.layers:
        raise DataError(f"layer {layer!r} not found in adata.layers (available: {list(adata.layers.keys())})")
    return adata.layers[layer]


def iter_row_chunks(X, chunk_size: int = 20_000) -> Iterator[tuple[int, np.ndarray | sp.csr_matrix]]:
    """Yield ``(start, block)`` row blocks of any matrix: dense, scipy sparse, or a backed
    h5py-based dataset; blocks are numpy arrays or CSR matrices."""
    n = X.shape[0]
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
    return dict(totals=totals, first_non_integer=first_non_integer, where=where)


def check_obs_column(adata, key: str, what: str, categorical: bool) -> pd.Series:
    if key not in adata.obs.columns:
        raise DataError(
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
    bad = registry.get("first_non_integer")
    if is_count and bad is not None:
        cell, gene, val = bad
        raise DataError(
            f"gene_likelihood={gene_likelihood!r} models counts, but {registry['data_location']} holds "
            f"non-integer values: first at cell {cell!r}, gene {gene!r} (value {val}). "
            "Pass raw counts (e.g. `layer='counts'`) or use gene_likelihood='normal'."
        )


def drop_empty_cells(adata, layer: str | None = None):
    """Return ``adata`` without cells whose total count is zero (logs how many were dropped)."""
    import logging

    totals = row_totals(get_matrix(adata, layer))
    keep = totals > 0
    n_drop = int((~keep).sum())
    if n_drop:
        logging.getLogger("scprob").warning("Dropped %d cell(s) with zero total counts.", n_drop)
        return adata[keep].copy()
    return adata
