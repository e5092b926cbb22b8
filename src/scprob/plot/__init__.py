"""Figures (matplotlib, Agg backend): training curves and 2-D embeddings of a latent space."""

from .figures import embed_2d, plot_embedding, plot_training_curves

__all__ = ["embed_2d", "plot_embedding", "plot_training_curves"]
