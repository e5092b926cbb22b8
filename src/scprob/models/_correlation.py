"""Gene x gene correlation of denoised expression sampled from a trained scVI-family model
(scvi-tools' ``get_feature_correlation_matrix``).

Each cell gives ``n_samples`` rows: z ~ q(z | x), then a Gamma draw with mean
``rna_size_factor * px_scale`` and shape the model's dispersion theta (rate theta / mean),
i.e. the Gamma layer of the negative binomial's Gamma-Poisson mixture; likelihoods without
a dispersion give the mean itself.  The correlation is taken over all (cell, draw) rows.
"""

from __future__ import annotations

import numpy as np
import torch


@torch.inference_mode()
def sampled_expression_correlation(model, adata, indices, code: int | None, n_samples: int, batch_size: int,
                                   rna_size_factor: float, correlation_type: str) -> np.ndarray:
    """Genes x genes ``"spearman"`` or ``"pearson"`` correlation, with every cell decoded in
    batch ``code`` (``None``: its own)."""
    from scipy.stats import spearmanr

    module = model.module
    gamma = bool(module.likelihood["needs_dispersion"])
    rows = []
    for tensors in model._batches(adata, indices, batch_size):
        inf = module.inference(**module._get_inference_input(tensors), n_samples=n_samples)
        gen = module.generative(**module._get_generative_input(tensors, inf), transform_batch=code)
        mean = rna_size_factor * gen["px_scale"]
        if gamma:
            theta = gen["px_r"].exp().expand_as(mean)
            mean = torch.distributions.Gamma(theta, theta / mean.clamp_min(1e-12)).sample()
        rows.append(mean.reshape(-1, mean.shape[-1]).cpu())
    flat = torch.cat(rows).double().numpy()
    if correlation_type == "pearson":
        return np.corrcoef(flat, rowvar=False)
    rho = np.asarray(spearmanr(flat)[0])
    return rho if rho.ndim == 2 else np.array([[1.0, float(rho)], [float(rho), 1.0]])
