"""Normalizing-flow blocks: affine coupling layers (RealNVP, Dinh et al. 2017).

One coupling layer with binary mask ``m`` (1 = kept) and covariates ``c``::

    h      = [x * m, c]
    s, t   = tanh(S(h)) * (1 - m),  T(h) * (1 - m)
    y      = x * exp(s) + t                    (kept coordinates pass unchanged)
    log|det dy/dx| = sum_j s_j
    x      = (y - t) * exp(-s)                 (inverse: s, t only read y * m = x * m)

``S`` and ``T`` are two MLPs with the same shape.  They run as *one* MLP whose weight
matrices are block-diagonal (the two blocks are the two networks, the off-diagonal
blocks are masked to zero), so a coupling layer costs one matrix product per depth
instead of two: the same functions, half the kernel launches on small hidden sizes.
"""

from __future__ import annotations

import torch
from torch import nn

Tensor = torch.Tensor


class PairedMLP(nn.Module):
    """Two MLPs ``n_in -> hidden x n_hidden_layers -> n_out`` evaluated together; returns
    their outputs side by side, shape (batch, 2 * n_out)."""

    def __init__(self, n_in: int, n_hidden: int, n_out: int, n_hidden_layers: int):
        super().__init__()
        if n_hidden_layers < 1:
            raise ValueError("n_hidden_layers must be >= 1")
        self.first = nn.Linear(n_in, 2 * n_hidden)  # both networks read the same input
        self.hidden = nn.ModuleList(nn.Linear(2 * n_hidden, 2 * n_hidden) for _ in range(n_hidden_layers - 1))
        self.last = nn.Linear(2 * n_hidden, 2 * n_out)
        self.act = nn.LeakyReLU(0.1)
        self.register_buffer("mask_hidden", torch.block_diag(torch.ones(n_hidden, n_hidden), torch.ones(n_hidden, n_hidden)))
        self.register_buffer("mask_last", torch.block_diag(torch.ones(n_out, n_hidden), torch.ones(n_out, n_hidden)))
        with torch.no_grad():  # start each network like an independent nn.Linear stack ...
            for lin in self.hidden:
                lin.weight.mul_(self.mask_hidden * 2**0.5)
            # ... whose output layer starts small: the flow starts near the identity
            self.last.weight.mul_(self.mask_last * 0.1)
            self.last.bias.zero_()

    def forward(self, h: Tensor) -> Tensor:
        h = self.act(self.first(h))
        for lin in self.hidden:
            h = self.act(nn.functional.linear(h, lin.weight * self.mask_hidden, lin.bias))
        return nn.functional.linear(h, self.last.weight * self.mask_last, self.last.bias)


class AffineCoupling(nn.Module):
    """One RealNVP coupling layer conditioned on covariates (see module docstring)."""

    def __init__(self, mask: Tensor, n_covariates: int, n_hidden: int, n_hidden_layers: int):
        super().__init__()
        n = mask.numel()
        self.register_buffer("mask", mask.float())
        self.net = PairedMLP(n + n_covariates, n_hidden, n, n_hidden_layers)

    def _st(self, x_kept: Tensor, cov: Tensor) -> tuple[Tensor, Tensor]:
        h = torch.cat([x_kept, cov], dim=1) if cov.shape[1] else x_kept
        out = self.net(h)
        n = self.mask.numel()
        free = 1.0 - self.mask
        return torch.tanh(out[:, :n]) * free, out[:, n:] * free

    def forward(self, x: Tensor, cov: Tensor) -> tuple[Tensor, Tensor]:
        s, t = self._st(x * self.mask, cov)
        return x * torch.exp(s) + t, s.sum(1)

    def inverse(self, y: Tensor, cov: Tensor) -> Tensor:
        s, t = self._st(y * self.mask, cov)
        return (y - t) * torch.exp(-s)


class RealNVP(nn.Module):
    """A stack of ``n_layers`` couplings with alternating masks (even / odd coordinates).

    ``forward(x, cov) -> (u, log|det J|)`` maps data to the latent space;
    ``inverse(u, cov) -> x`` maps back.
    """

    def __init__(self, n_features: int, n_covariates: int, n_hidden: int, n_hidden_layers: int, n_layers: int):
        super().__init__()
        if n_features < 2:
            raise ValueError("a coupling flow needs at least 2 features")
        even = torch.arange(n_features) % 2 == 0
        self.layers = nn.ModuleList(
            AffineCoupling(even if k % 2 == 0 else ~even, n_covariates, n_hidden, n_hidden_layers) for k in range(n_layers)
        )

    def forward(self, x: Tensor, cov: Tensor) -> tuple[Tensor, Tensor]:
        ldj = x.new_zeros(x.shape[0])
        for layer in self.layers:
            x, l = layer(x, cov)
            ldj = ldj + l
        return x, ldj

    def inverse(self, u: Tensor, cov: Tensor) -> Tensor:
        for layer in reversed(self.layers):
            u = layer.inverse(u, cov)
        return u
