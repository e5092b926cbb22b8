"""numba kernel: dense float32 rows gathered from a CSR matrix (the CPU minibatch path
of :class:`scprob.data.loader.CSRRows`).  One pass over the rows' stored entries, written
straight into a zeroed output: ~10x faster than the PyTorch index arithmetic
(``repeat_interleave`` + ``index_put``) on a 128 x 2,000 batch at 38% density."""

from __future__ import annotations

from numba import njit


@njit(cache=True)
def gather_rows(indptr, indices, data, rows, out) -> None:
    """``out[i, :] = X[rows[i], :]`` for a CSR ``X`` given by its three arrays; ``out``
    must be zero on entry (only stored entries are written)."""
    for i in range(rows.shape[0]):
        r = rows[i]
        for p in range(indptr[r], indptr[r + 1]):
            out[i, indices[p]] = data[p]


@njit(cache=True)
def gather_rows_nz(indptr, indices, data, rows, out, nz_rows, nz_cols) -> int:
    """:func:`gather_rows`, also listing the positive entries' coordinates (row-sorted,
    in stored order within a row) in ``nz_rows`` / ``nz_cols`` (sized for every stored
    entry); returns how many were listed."""
    k = 0
    for i in range(rows.shape[0]):
        r = rows[i]
        for p in range(indptr[r], indptr[r + 1]):
            v = data[p]
            out[i, indices[p]] = v
            if v > 0:
                nz_rows[k] = i
                nz_cols[k] = indices[p]
                k += 1
    return k
