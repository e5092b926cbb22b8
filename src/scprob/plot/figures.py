from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


TRAINING_PANELS = [("elbo", "ELBO (negative, per cell)"), ("reconstruction_loss", "reconstruction loss"), ("kl_local", "local KL")]


def _stage_spans(stages) -> list[list]:
    """[name, first epoch, last epoch] of each run of equal stage names."""
    spans: list[list] = []
    if stages is not None and len(stages):
        for epoch, name in zip(stages.index, stages.iloc[:, 0]):
            if spans and spans[-1][0] == name:
                spans[-1][2] = epoch
            else:
                spans.append([name, epoch, epoch])
    return spans


def plot_training_curves(history: dict, path: str | Path, panels: list[tuple[str, str]] | None = None,
                         stage_key: str | None = None) -> Path:
    """One panel per ``(metric, title)`` (default: ELBO, reconstruction loss and local KL)
    per epoch, train (solid) vs validation (dashed).  With ``stage_key``,
    ``history[stage_key]`` (epoch -> stage name) marks training stages: a dotted line
    where each stage starts, its name on top, every other stage shaded."""
    plt = _plt()
    panels = TRAINING_PANELS if panels is None else panels
    spans = _stage_spans(history.get(stage_key)) if stage_key else []
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        for split, style in (("train", "-"), ("validation", "--")):
            df = history.get(f"{key}_{split}")
            if df is not None and len(df):
                ax.plot(df.index, df.iloc[:, 0], style, label=split)
        for i, (name, lo, hi) in enumerate(spans):
            if i % 2:
                ax.axvspan(lo - 0.5, hi + 0.5, color="0.92", zorder=0)
            if i:
                ax.axvline(lo - 0.5, color="0.4", ls=":", lw=1)
            ax.text((lo + hi) / 2, 1.0, str(name), transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=7)
        ax.set_title(title, pad=14 if spans else 6)
        ax.set_xlabel("epoch")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def embed_2d(latent: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str]:
    """t-SNE of the latent for up to 20,000 cells, PCA beyond (t-SNE cost grows fast)."""
    if latent.shape[0] <= 20_000 and latent.shape[0] > 5:
        from sklearn.manifold import TSNE

        perplexity = float(min(30, max(2, (latent.shape[0] - 1) // 3)))
        return TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(latent), "t-SNE"
    from sklearn.decomposition import PCA

    return PCA(n_components=2, random_state=seed).fit_transform(latent), "PCA"


def plot_embedding(coords: np.ndarray, colors: dict[str, np.ndarray], path: str | Path, method: str = "t-SNE") -> Path:
    """One scatter panel per colouring (e.g. batch, label)."""
    plt = _plt()
    n_cats = max(len(np.unique(np.asarray(v).astype(str))) for v in colors.values())
    outside = n_cats > 6  # a long legend goes beside the panel, not over the cells
    fig, axes = plt.subplots(1, len(colors), figsize=((7.6 if outside else 5.2) * len(colors), 4.4), squeeze=False)
    for ax, (name, values) in zip(axes[0], colors.items()):
        values = np.asarray(values).astype(str)
        cats = np.unique(values)
        cmap = plt.get_cmap("tab10" if len(cats) <= 10 else "tab20")
        for i, c in enumerate(cats):
            sel = values == c
            ax.scatter(coords[sel, 0], coords[sel, 1], s=6, color=cmap(i % cmap.N), label=c, linewidths=0)
        ax.set_title(f"latent ({method}) by {name}")
        ax.set_xticks([])
        ax.set_yticks([])
        if len(cats) <= 20:
            where = dict(loc="center left", bbox_to_anchor=(1.0, 0.5)) if outside else dict(loc="best")
            ax.legend(markerscale=2.5, fontsize=7, frameon=False, **where)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
