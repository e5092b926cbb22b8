"""A small self-contained HTML report (figures referenced as PNG files beside it), and
the pieces that make the report of ``scprob fit`` / ``scprob demo`` readable:

* :func:`embed_latent`: a 2-D map of the latent space, UMAP (umap-learn) by default,
  t-SNE or PCA on request or when umap-learn is not installed;
* :func:`cluster_latent`: Leiden clusters of the latent's kNN graph (leidenalg, as
  scanpy's ``tl.leiden`` on ``pp.neighbors``), Louvain from networkx when leidenalg is
  not installed;
* :func:`plot_training_curves`: per-epoch curves whose y-axis is clipped to the late
  epochs, so the first epochs' large losses do not flatten the rest;
* :data:`METRIC_GUIDE`: a line per metric saying which direction is good.
"""

from __future__ import annotations

import html
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger("scprob")

#: how to read each metric of the report (shown beside its value)
METRIC_GUIDE: dict[str, str] = {
    "batch_silhouette": "silhouette of the batch labels in the latent space, in [-1, 1]: near 0 = batches mixed "
                        "(good integration); towards 1 = cells still grouped by batch.",
    "knn_label_transfer": "accuracy of a 15-nearest-neighbour classifier trained on one batch and predicting the "
                          "labels of the others, in [0, 1]: higher = cell types kept apart and aligned across batches.",
    "kmeans_ari": "adjusted Rand index of k-means (k = number of labels) against the labels: 1 = clusters are the "
                  "labels, 0 = no better than chance.",
    "elbo_train_final": "negative ELBO per cell on the training cells at the last epoch (lower = better fit); "
                        "compare runs on the same data only.",
    "elbo_validation_final": "negative ELBO per cell on held-out cells at the last epoch (lower = better); far above "
                             "the training value = overfitting.",
    "n_clusters": "number of Leiden clusters of the latent space (no labels given): groups to inspect, e.g. "
                  "with differential expression.",
}


def write_report(
    path: str | Path,
    title: str,
    summary: dict,
    metrics: dict,
    figures: list[tuple[str, str]],
    tables: list[tuple[str, pd.DataFrame]] | None = None,
    guide: dict[str, str] | None = None,
) -> Path:
    """``figures``: (caption, relative PNG path) pairs; ``tables``: (heading, DataFrame)
    pairs shown before the figures; ``guide``: metric -> how to read it (a third column;
    default :data:`METRIC_GUIDE`)."""
    guide = METRIC_GUIDE if guide is None else guide
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in summary.items())
    mrows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{_fmt(v)}</td><td>{html.escape(guide.get(k, ''))}</td></tr>"
        for k, v in metrics.items()
    )
    figs = "".join(
        f'<figure><img src="{html.escape(src)}" alt="{html.escape(cap)}"><figcaption>{html.escape(cap)}</figcaption></figure>'
        for cap, src in figures
    )
    tabs = "".join(
        f"<h2>{html.escape(cap)}</h2>{df.to_html(float_format=lambda v: f'{v:.2f}', na_rep='', border=0)}"
        for cap, df in tables or []
    )
    doc = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}th,td{{border:1px solid #ccc;padding:4px 10px;text-align:left}}
img{{max-width:100%}}figure{{margin:1.5em 0}}</style></head>
<body><h1>{html.escape(title)}</h1>
<h2>Run</h2><table>{rows}</table>
<h2>Metrics</h2><table>{'<tr><th>metric</th><th>value</th><th>how to read it</th></tr>' + mrows if mrows
                         else '<tr><td>no labels given: no label metrics</td></tr>'}</table>
{tabs}<h2>Figures</h2>{figs}
</body></html>
"""
    Path(path).write_text(doc)
    return Path(path)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return str(v)


# ------------------------------------------------------------------ figures' pieces
EMBEDDINGS = ("umap", "tsne", "pca")


def embed_latent(latent: np.ndarray, method: str = "umap", seed: int = 0) -> tuple[np.ndarray, str]:
    """(cells x 2 coordinates, name of the method used).  ``umap``: umap-learn (15
    neighbours, min_dist 0.5 as scanpy's default), falling back to t-SNE when umap-learn
    is not installed; ``tsne``: scikit-learn's t-SNE (PCA beyond 20,000 cells); ``pca``."""
    if method not in EMBEDDINGS:
        raise ValueError(f"embedding must be one of {EMBEDDINGS}, got {method!r}")
    latent = np.asarray(latent, dtype=np.float32)
    n = latent.shape[0]
    if method == "umap" and n > 15:
        try:
            import umap
        except ImportError:
            log.warning("umap-learn is not installed: the embedding is a t-SNE (pip install umap-learn for UMAP)")
            method = "tsne"
        else:
            import warnings

            with warnings.catch_warnings():  # "n_jobs overridden by random_state": wanted, for reproducibility
                warnings.simplefilter("ignore")
                reducer = umap.UMAP(n_neighbors=min(15, n - 1), min_dist=0.5, random_state=seed, n_jobs=1)
                return np.asarray(reducer.fit_transform(latent)), "UMAP"
    if method in ("tsne", "umap") and 5 < n <= 20_000:
        from sklearn.manifold import TSNE

        perplexity = float(min(30, max(2, (n - 1) // 3)))
        return TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(latent), "t-SNE"
    from sklearn.decomposition import PCA

    return PCA(n_components=2, random_state=seed).fit_transform(latent), "PCA"


def _knn_graph(latent: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Undirected edges (i < j) of the k-nearest-neighbour graph and their weights
    exp(-d / sigma_i) (sigma_i: distance to the k-th neighbour), summed over directions."""
    from sklearn.neighbors import NearestNeighbors

    k = min(k, latent.shape[0] - 1)
    dist, idx = NearestNeighbors(n_neighbors=k + 1).fit(latent).kneighbors(latent)
    dist, idx = dist[:, 1:], idx[:, 1:]
    sigma = np.maximum(dist[:, -1:], 1e-12)
    w = np.exp(-dist / sigma)
    rows = np.repeat(np.arange(latent.shape[0]), k)
    a, b = np.minimum(rows, idx.ravel()), np.maximum(rows, idx.ravel())
    edges = pd.DataFrame({"a": a, "b": b, "w": w.ravel()}).groupby(["a", "b"], sort=True)["w"].sum()
    return np.array(edges.index.tolist(), dtype=np.int64).reshape(-1, 2), edges.to_numpy()


def cluster_latent(latent: np.ndarray, resolution: float = 1.0, seed: int = 0, n_neighbors: int = 15) -> tuple[np.ndarray, str]:
    """(cluster name per cell, ``"leiden"`` or ``"louvain"``): Leiden (leidenalg,
    RB-configuration quality at ``resolution``, as scanpy's ``tl.leiden``) on the
    weighted kNN graph of the latent; networkx's Louvain when leidenalg/igraph are not
    installed.  Clusters are numbered by decreasing size ("0" is the largest)."""
    latent = np.asarray(latent, dtype=np.float64)
    n = latent.shape[0]
    if n < 3:
        return np.zeros(n, dtype=int).astype(str), "leiden"
    edges, weights = _knn_graph(latent, n_neighbors)
    try:
        import igraph
        import leidenalg
    except ImportError:
        import networkx as nx

        g = nx.Graph()
        g.add_nodes_from(range(n))
        g.add_weighted_edges_from((int(a), int(b), float(w)) for (a, b), w in zip(edges, weights))
        parts = nx.community.louvain_communities(g, weight="weight", resolution=resolution, seed=seed)
        raw = np.empty(n, dtype=np.int64)
        for c, members in enumerate(parts):
            raw[list(members)] = c
        method = "louvain"
    else:
        g = igraph.Graph(n=n, edges=edges.tolist(), directed=False)
        part = leidenalg.find_partition(g, leidenalg.RBConfigurationVertexPartition, weights=list(weights),
                                        resolution_parameter=resolution, seed=seed, n_iterations=-1)
        raw = np.asarray(part.membership, dtype=np.int64)
        method = "leiden"
    order = np.argsort(-np.bincount(raw), kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return rank[raw].astype(str), method


def curve_limits(values: list[np.ndarray], skip_fraction: float = 0.2, margin: float = 0.08) -> tuple[float, float] | None:
    """y-limits, with a margin: from the lowest value of any curve up to the highest
    value after its first ``skip_fraction`` of epochs (at least the first epoch left out
    when there are 3 or more): the large early losses are clipped at the top, nothing at
    the bottom.  ``None`` when there is nothing to show."""
    late, lows = [], []
    for v in values:
        v = np.asarray(v, dtype=float)
        v = v[np.isfinite(v)]
        if v.size == 0:
            continue
        start = max(1, int(np.ceil(skip_fraction * v.size))) if v.size >= 3 else 0
        late.append(v[start:])
        lows.append(v.min())
    if not late:
        return None
    lo, hi = float(min(lows)), float(max(x.max() for x in late))
    pad = (hi - lo) * margin or abs(hi) * 0.01 or 1.0
    return lo - pad, hi + pad


TRAINING_PANELS = [("elbo", "negative ELBO per cell"), ("reconstruction_loss", "reconstruction loss"),
                   ("kl_local", "local KL")]


def plot_training_curves(history: dict, path: str | Path, panels: list[tuple[str, str]] | None = None) -> Path:
    """One panel per metric, train (solid) and validation (dashed) per epoch, the y-axis
    clipped to the epochs after the first fifth (:func:`curve_limits`) so that the late
    epochs, where training settles, are readable; the clipped early part is noted."""
    from scprob.plot.figures import _plt

    plt = _plt()
    panels = TRAINING_PANELS if panels is None else panels
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        curves = []
        for split, style in (("train", "-"), ("validation", "--")):
            df = history.get(f"{key}_{split}")
            if df is not None and len(df):
                y = df.iloc[:, 0].to_numpy(dtype=float)
                ax.plot(df.index, y, style, label=split)
                curves.append(y)
        lim = curve_limits(curves)
        if lim is not None:
            clipped = any(np.nanmax(c) > lim[1] for c in curves if np.isfinite(c).any())
            ax.set_ylim(*lim)
            if clipped:
                ax.text(0.98, 0.97, "y clipped: early epochs above", transform=ax.transAxes, ha="right", va="top",
                        fontsize=7, color="0.35")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(frameon=False, fontsize=8, loc="center right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
