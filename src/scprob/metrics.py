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
