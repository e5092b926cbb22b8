"""Multi-omics figures: training curves with the training stages marked (GLUE's pretrain /
fine-tune) and a joint 2-D embedding of several modalities' cells."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .figures import embed_2d, plot_embedding, plot_training_curves


def plot_staged_curves(history: Mapping, path: str | Path, panels: list[tuple[str, str]], stage_key: str = "stage") -> Path:
    """Training curves with the stages in ``history[stage_key]`` marked (see
    :func:`~scprob.plot.figures.plot_training_curves`)."""
    return plot_training_curves(dict(history), path, panels, stage_key=stage_key)


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
