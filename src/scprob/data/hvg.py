"""Highly variable genes on raw counts (Seurat v3 / Stuart et al. 2019 flavour).

Per batch: fit the trend log10 var = f(log10 mean) by local quadratic regression (loess,
span 0.3, tricube weights; evaluated on a grid and interpolated), standardize counts
with the fitted sd, clip at sqrt(n_cells), and score each gene by the variance of the
standardized values.  Genes are ranked by how many batches call them variable, then by
their median rank.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .validate import get_matrix


def _loess(x: np.ndarray, y: np.ndarray, span: float = 0.3, n_grid: int = 200) -> np.ndarray:
    order = np.argsort(x)
    xs, ys = x[order], y[order]
    k = max(int(np.ceil(span * xs.size)), 3)
    grid = np.linspace(xs[0], xs[-1], n_grid)
    fit = np.empty(n_grid)
    for i, x0 in enumerate(grid):
        d = np.abs(xs - x0)
        nn = np.argpartition(d, k - 1)[:k]
        h = d[nn].max() or 1.0
        w = (1 - (d[nn] / h) ** 3) ** 3
        A = np.stack([np.ones(k), xs[nn] - x0, (xs[nn] - x0) ** 2], axis=1)
        sw = np.sqrt(w)
        coef, *_ = np.linalg.lstsq(A * sw[:, None], ys[nn] * sw, rcond=None)
        fit[i] = coef[0]
    return np.interp(x, grid, fit)


def _standardized_variance(X) -> np.ndarray:
    n = X.shape[0]
    X = sp.csr_matrix(X, dtype=np.float64) if sp.issparse(X) else np.asarray(X, dtype=np.float64)
    mean = np.asarray(X.mean(axis=0)).ravel()
    sq = X.multiply(X) if sp.issparse(X) else X * X
    var = (np.asarray(sq.mean(axis=0)).ravel() - mean**2) * n / max(n - 1, 1)
    ok = var > 0
    est = np.zeros_like(var)
    est[ok] = 10 ** _loess(np.log10(mean[ok]), np.log10(var[ok]))
    sd = np.sqrt(est)
    clip = mean + sd * np.sqrt(n)
    score = np.zeros_like(var)
    if sp.issparse(X):
        Xc = X.tocsc()
        for j in np.flatnonzero(ok):
            v = np.minimum(Xc.data[Xc.indptr[j] : Xc.indptr[j + 1]], clip[j])
            # zeros contribute mean^2 each; stored values (v - mean)^2
            s = np.sum((v - mean[j]) ** 2) + (n - v.size) * mean[j] ** 2
            score[j] = s / ((n - 1) * est[j])
    else:
        Xc = np.minimum(X, clip)
        score[ok] = ((Xc[:, ok] - mean[ok]) ** 2).sum(0) / ((n - 1) * est[ok])
    return score


def highly_variable_genes(adata, n_top_genes: int = 2000, batch_key: str | None = None, layer: str | None = None) -> np.ndarray:
    """Boolean mask of the ``n_top_genes`` most variable genes (also written to
    ``adata.var["highly_variable"]``)."""
    X = get_matrix(adata, layer)
    batches = adata.obs[batch_key].astype(str).to_numpy() if batch_key else np.zeros(adata.n_obs, dtype=str)
    ranks, hits = [], []
    for b in np.unique(batches):
        score = _standardized_variance(X[np.flatnonzero(batches == b)])
        rank = np.empty(score.size)
        rank[np.argsort(-score, kind="stable")] = np.arange(score.size)
        ranks.append(rank)
        hits.append(rank < n_top_genes)
    n_hits = np.sum(hits, axis=0)
    median_rank = np.median(ranks, axis=0)
    order = np.lexsort((median_rank, -n_hits))
    mask = np.zeros(adata.n_vars, dtype=bool)
    mask[order[: min(n_top_genes, adata.n_vars)]] = True
    adata.var["highly_variable"] = mask
    return mask
