"""Figures (matplotlib, Agg backend): training curves and 2-D embeddings of a latent space;
cytometry annotation figures (marker heatmap, population sizes, confusion matrix);
multi-omics figures (staged training curves, joint embedding of several modalities)."""

from .cytometry import plot_confusion, plot_marker_heatmap, plot_population_sizes
from .figures import embed_2d, plot_embedding, plot_training_curves
from .multiomics import embed_joint, plot_joint_embedding, plot_staged_curves

__all__ = [
    "embed_2d",
    "embed_joint",
    "plot_confusion",
    "plot_embedding",
    "plot_joint_embedding",
    "plot_marker_heatmap",
    "plot_population_sizes",
    "plot_staged_curves",
    "plot_training_curves",
]
