"""Low-dimensional representations of a modality for GLUE's encoders (``use_rep``).

* PCA (expression-like counts): per cell ``log1p(1e4 x / total)``, each feature scaled to
  unit variance (clipped at 10), then the top components (randomized SVD).
* LSI (sparse, mostly-binary counts such as peaks): TF-IDF ``tf_ij = x_ij / sum_j x_ij``,
  ``idf_j = n_cells / sum_i x_ij``, ``log1p(1e4 tf idf)``, truncated SVD, components
  standardized.
* :func:`add_representation` picks one: none for at most 100 features (the encoder can
  read them directly), LSI when over 90% of the non-zero values are 1, PCA otherwise.
The encoder reads the representation, the decoder still models the counts.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .validate import get_matrix


def _used(adata, layer: str | None, features: list[str] | None):
    X = get_matrix(adata, layer)
    if features is not None:
        X = X[:, adata.var_names.get_indexer(features)]
    return sp.csr_matrix(X, dtype=np.float64) if sp.issparse(X) else sp.csr_matrix(np.asarray(X, dtype=np.float64))


def _n_comps(X, n_comps: int) -> int:
    return int(max(1, min(n_comps, X.shape[0] - 1, X.shape[1] - 1)))


def pca_rep(adata, n_comps: int = 100, layer: str | None = None, features: list[str] | None = None,
            key: str = "X_pca", seed: int = 0) -> str:
    from sklearn.decomposition import PCA

    X = _used(adata, layer, features)
    totals = np.asarray(X.sum(1)).ravel().clip(1e-12)
    Y = np.log1p((sp.diags(1e4 / totals) @ X).toarray())
    Y = np.clip((Y - Y.mean(0)) / Y.std(0).clip(1e-8), -10, 10)
    adata.obsm[key] = PCA(_n_comps(Y, n_comps), svd_solver="randomized", random_state=seed).fit_transform(Y).astype(np.float32)
    return key


def lsi_rep(adata, n_comps: int = 100, layer: str | None = None, features: list[str] | None = None,
            key: str = "X_lsi", seed: int = 0) -> str:
    from sklearn.decomposition import TruncatedSVD

    X = _used(adata, layer, features)
    idf = X.shape[0] / np.asarray(X.sum(0)).ravel().clip(1e-12)
    tf = sp.diags(1.0 / np.asarray(X.sum(1)).ravel().clip(1e-12)) @ X
    Y = (tf @ sp.diags(idf)).tocsr()
    Y.data = np.log1p(Y.data * 1e4)
    Z = TruncatedSVD(_n_comps(Y, n_comps), algorithm="randomized", n_iter=7, random_state=seed).fit_transform(Y)
    adata.obsm[key] = ((Z - Z.mean(0)) / Z.std(0).clip(1e-8)).astype(np.float32)
    return key


def add_representation(adata, layer: str | None = None, features: list[str] | None = None, n_comps: int = 100,
                       seed: int = 0) -> str | None:
    """Add the representation suited to the data (see the module docstring); returns its
    ``obsm`` key, or ``None`` when the features are few enough to read directly."""
    X = _used(adata, layer, features)
    if X.shape[1] <= 100:
        return None
    if X.nnz and float((X.data == 1).mean()) > 0.9:
        return lsi_rep(adata, n_comps, layer, features, seed=seed)
    return pca_rep(adata, n_comps, layer, features, seed=seed)
