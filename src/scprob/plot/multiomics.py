"""Multi-omics figures: training curves with the training stages marked (GLUE's pretrain /
fine-tune) and a joint 2-D embedding of several modalities' cells."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .figures import _plt, embed_2d, plot_embedding


def plot_staged_curves(history: Mapping, path: str | Path, panels: list[tuple[str, str]], stage_key: str = "stage") -> Path:
    """One panel per ``(metric, title)``: ``<metric>_train`` (solid) and
    ``<metric>_validation`` (dashed) per epoch.  ``history[stage_key]`` (epoch -> stage
    name) marks the stages: a dotted line where each stage starts, its name on top and
    every other stage shaded."""
    plt = _plt()
    stages = history.get(stage_key)
    spans = []  # (name, first epoch, last epoch)
    if stages is not None and len(stages):
        for epoch, name in zip(stages.index, stages.iloc[:, 0]):
            if spans and spans[-1][0] == name:
                spans[-1][2] = epoch
            else:
                spans.append([name, epoch, epoch])
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


def embed_joint(latents: Mapping[str, np.ndarray], max_cells: int = 5000, seed: int = 0
                ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], str]:
    """2-D embedding (:func:`embed_2d`: t-SNE here) of the cells of several modalities in
    one shared latent space.  Beyond ``max_cells`` cells in all, the same fraction of each
    modality's cells is drawn at random.  Returns the coordinates, the modality of each
    row, the rows drawn from each modality (indices into its latent) and the method."""
    total = sum(len(z) for z in latents.values())
    rng = np.random.default_rng(seed)
    picks = {}
    for k, z in latents.items():
        n = len(z) if total <= max_cells else max(1, round(len(z) * max_cells / total))
        picks[k] = np.arange(len(z)) if n >= len(z) else np.sort(rng.choice(len(z), n, replace=False))
    x = np.concatenate([np.asarray(latents[k])[i] for k, i in picks.items()])
    modality = np.concatenate([np.full(len(i), k, dtype=object) for k, i in picks.items()])
    coords, method = embed_2d(x, seed=seed)
    return coords, modality, picks, method


def plot_joint_embedding(coords: np.ndarray, modality, path: str | Path, labels=None, method: str = "t-SNE") -> Path:
    """The joint embedding coloured by modality and, when ``labels`` are given (missing
    ones shown as ``"unlabelled"``), by label."""
    colors = {"modality": np.asarray(modality)}
    if labels is not None:
        import pandas as pd

        lab = pd.Series(np.asarray(labels, dtype=object))
        colors["label"] = lab.astype(str).where(lab.notna(), "unlabelled").to_numpy()
    return plot_embedding(coords, colors, path, method)
