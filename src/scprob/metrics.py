"""Integration metrics on a latent space (definitions as in scvi-tools' benchmarks).

* kNN label transfer: a 15-nearest-neighbour classifier fitted on the cells of one batch
  scores the cells of all other batches; the accuracy is averaged over batches.
* ARI of k-means (k = number of labels, n_init=10) against the labels.
* Batch silhouette: silhouette of the batch labels on the latent (Euclidean), in [-1, 1];
  0 means batches are mixed.
"""

from __future__ import annotations

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, silhouette_score
from sklearn.neighbors import KNeighborsClassifier


def knn_label_transfer(latent: np.ndarray, labels, batches, k: int = 15) -> float:
    labels, batches = np.asarray(labels).astype(str), np.asarray(batches).astype(str)
    scores = []
    for b in np.unique(batches):
        ref, query = batches == b, batches != b
        if query.sum() == 0 or ref.sum() == 0:
            continue
        clf = KNeighborsClassifier(n_neighbors=min(k, int(ref.sum()))).fit(latent[ref], labels[ref])
        scores.append(float((clf.predict(latent[query]) == labels[query]).mean()))
    return float(np.mean(scores)) if scores else float("nan")


def kmeans_ari(latent: np.ndarray, labels, seed: int = 0) -> float:
    labels = np.asarray(labels).astype(str)
    k = len(np.unique(labels))
    pred = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(latent)
    return float(adjusted_rand_score(labels, pred))


def batch_silhouette(latent: np.ndarray, batches) -> float:
    batches = np.asarray(batches).astype(str)
    if len(np.unique(batches)) < 2:
        return float("nan")
    return float(silhouette_score(latent, batches, metric="euclidean"))


def integration_metrics(latent: np.ndarray, batches, labels=None) -> dict[str, float]:
    out = {"batch_silhouette": batch_silhouette(latent, batches)}
    if labels is not None:
        out["knn_label_transfer"] = knn_label_transfer(latent, labels, batches)
        out["kmeans_ari"] = kmeans_ari(latent, labels)
    return out


# ---------------------------------------------------------------- multi-omics metrics
def foscttm(x: np.ndarray, y: np.ndarray, chunk: int = 2048) -> float:
    """Fraction Of Samples Closer Than the True Match (Liu et al., 2019), lower is better.

    Row ``i`` of ``x`` and row ``i`` of ``y`` are the same cell measured in two
    modalities.  For each cell, the fraction of the other modality's cells that are
    closer (Euclidean) than its true match, averaged over cells and both directions.
    Computed in row chunks (memory ``chunk x n``).
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"foscttm needs paired rows: shapes {x.shape} and {y.shape}")
    n = x.shape[0]
    true = np.sqrt(((x - y) ** 2).sum(1))
    y2, x2 = (y**2).sum(1), (x**2).sum(1)
    closer_x = np.empty(n)  # for x_i: how many y_j are closer than y_i
    closer_y = np.zeros(n)  # for y_j: how many x_i are closer than x_j
    for s in range(0, n, chunk):
        d = np.sqrt(np.clip(x2[s : s + chunk, None] + y2[None, :] - 2 * x[s : s + chunk] @ y.T, 0, None))
        rows = np.arange(s, min(s + chunk, n))
        d[rows - s, rows] = np.inf  # the true match itself (rounding must not count it)
        closer_x[s : s + chunk] = (d < true[s : s + chunk, None]).sum(1)
        closer_y += (d < true[None, :]).sum(0)
    return float((closer_x.mean() + closer_y.mean()) / 2 / n)


def label_transfer(ref: np.ndarray, ref_labels, query: np.ndarray, query_labels, k: int = 5) -> float:
    """Accuracy of a ``k``-nearest-neighbour classifier fitted on ``ref`` cells (e.g. RNA)
    predicting the labels of ``query`` cells (e.g. ATAC) in a shared embedding."""
    clf = KNeighborsClassifier(n_neighbors=min(k, len(ref))).fit(ref, np.asarray(ref_labels).astype(str))
    return float((clf.predict(query) == np.asarray(query_labels).astype(str)).mean())
