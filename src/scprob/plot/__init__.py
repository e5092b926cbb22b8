"""Figures (matplotlib, Agg backend): training curves and 2-D embeddings of a latent space;
cytometry annotation figures (marker heatmap, population sizes, confusion matrix)."""

from .cytometry import plot_confusion, plot_marker_heatmap, plot_population_sizes
from .figures import embed_2d, plot_embedding, plot_training_curves

__all__ = [
    "embed_2d",
    "plot_confusion",
    "plot_embedding",
    "plot_marker_heatmap",
    "plot_population_sizes",
    "plot_training_curves",
]
