"""Per-cell loss terms of a trained model over a dataset, for ``get_elbo`` and
``get_reconstruction_error``: one forward pass with one z ~ q(z | x) per cell and the KL
weight at 1, as scvi-tools evaluates them."""

from __future__ import annotations

import numpy as np
import torch


@torch.inference_mode()
def loss_sums(model, adata, indices, batch_size, dataloader=None) -> tuple[dict[str, np.ndarray], np.ndarray, float]:
    """The per-cell reconstruction loss -log p(x | z) per term (``{"reconstruction_loss": ...}``
    for a single term), the per-cell local KL, and the global KL (a scalar, not attributable
    to cells)."""
    rec: dict[str, list[np.ndarray]] = {}
    kl_local: list[np.ndarray] = []
    kl_global = 0.0
    for t in model._batches(adata, indices, batch_size, dataloader):
        _, _, lo = model.module(t, loss_kwargs=dict(kl_weight=1.0))
        terms = lo.reconstruction_loss if isinstance(lo.reconstruction_loss, dict) else \
            {"reconstruction_loss": lo.reconstruction_loss}
        for k, v in terms.items():
            rec.setdefault(k, []).append(v.reshape(-1).double().cpu().numpy())
        kl = lo.kl_local if isinstance(lo.kl_local, dict) else {"kl": lo.kl_local}
        kl_cells = sum((v.reshape(-1).double() for v in kl.values() if v is not None),
                       torch.zeros(lo.n_obs_minibatch, dtype=torch.float64, device=lo.loss.device))
        kl_local.append(kl_cells.cpu().numpy())
        kl_global = float(lo.kl_global_sum)
    return {k: np.concatenate(v) for k, v in rec.items()}, np.concatenate(kl_local), kl_global
