"""Latent distributions.

``normal``: z ~ N(mu, sigma^2).  ``ln`` (logistic normal): z = softmax(z~), z~ ~ N(mu, sigma^2);
the KL term is taken on the untransformed z~ against N(0, I), as in scVI.
"""

from __future__ import annotations

import torch
from torch.distributions import Normal

LATENT_DISTRIBUTIONS = ("normal", "ln")


def _kl_std_normal(loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return 0.5 * (scale.square() + loc.square() - 1.0) - scale.log()


def kl_std_normal(q: Normal) -> torch.Tensor:
    """Elementwise KL(N(m, s^2) || N(0, 1)) = (s^2 + m^2 - 1) / 2 - log s: the KL term of a
    standard-normal prior in fewer kernels than ``kl_divergence`` against an explicit
    N(0, 1) (no division by or subtraction of the prior's parameters)."""
    return _kl_std_normal(q.loc, q.scale)


class _KLStdNormalRows(torch.autograd.Function):
    """Row sums of :func:`kl_std_normal` with the analytic gradient: d/dm = m, d/ds = s - 1/s
    (times the incoming per-row gradient).  One graph node instead of eight."""

    @staticmethod
    def forward(ctx, loc, scale):  # type: ignore[override]
        ctx.save_for_backward(loc, scale)
        return _kl_std_normal(loc, scale).sum(-1)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        loc, scale = ctx.saved_tensors
        g = grad.unsqueeze(-1)
        return loc * g, (scale - scale.reciprocal()) * g


def kl_std_normal_rows(q: Normal) -> torch.Tensor:
    """``kl_std_normal(q).sum(-1)``: the KL of a whole latent vector per cell."""
    loc, scale = torch.broadcast_tensors(q.loc, q.scale) if q.loc.shape != q.scale.shape else (q.loc, q.scale)
    return _KLStdNormalRows.apply(loc, scale)


class LogisticNormal:
    """Logistic-normal: a Normal in R^d pushed through softmax onto the simplex."""

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor):
        self.base = Normal(loc, scale, validate_args=False)

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        return torch.softmax(self.base.rsample(sample_shape), dim=-1)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    @property
    def mean(self) -> torch.Tensor:
        """Softmax of the base mean (the mode-like point estimate used for embeddings)."""
        return torch.softmax(self.base.loc, dim=-1)


def latent_transform(name: str):
    """Return the map from the untransformed latent to z for ``name``."""
    if name == "normal":
        return lambda z: z
    if name == "ln":
        return lambda z: torch.softmax(z, dim=-1)
    raise ValueError(f"latent_distribution must be one of {LATENT_DISTRIBUTIONS}, got {name!r}")
