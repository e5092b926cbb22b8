"""Building blocks for pairing the cells of two modalities: row standardization, the
correlation cost, entropic optimal transport and a ridge regression with its penalty
chosen by generalized cross-validation (used by :mod:`scprob.modules.glue`'s link, matching
and self-training terms)."""

from __future__ import annotations

import math

import torch


def unit_norm_rows(S: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit norm."""
    return S / (S.norm(dim=1, keepdim=True) + 1e-8)


def centred_unit_norm_rows(S: torch.Tensor) -> torch.Tensor:
    """Rows centred and scaled to unit norm."""
    return unit_norm_rows(S - S.mean(1, keepdim=True))


def standardize_columns(a: torch.Tensor) -> torch.Tensor:
    """Columns centred and scaled to unit variance over the rows (a constant column -> 0)."""
    d = a - a.mean(0)
    return d / (d.square().mean(0) + 1e-8).sqrt()


def unit_rows(a: torch.Tensor) -> torch.Tensor:
    """Columns standardized (:func:`standardize_columns`), then rows centred and scaled to
    unit norm."""
    return centred_unit_norm_rows(standardize_columns(a))


def standardized_unit_rows(a: torch.Tensor, mean: torch.Tensor, sd: torch.Tensor) -> torch.Tensor:
    """Columns standardized with the given statistics, then rows centred and scaled to unit
    norm (:func:`unit_rows` with the column statistics fixed in advance)."""
    return centred_unit_norm_rows((a - mean) / sd)


def linear_row_corr_loss(u: torch.Tensor, w: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    r"""``mean_i (1 - <unit_rows(u @ w)_i, t_i>)`` for constant ``w`` (latent x features) and
    ``t`` (unit rows), without forming the cells x features prediction.  With ``u_c = u -
    colmean(u)``, ``Sigma = u_c^T u_c / n``, column scales ``s_j = (w_j^T Sigma w_j +
    1e-8)^(1/2)`` and ``M = w / s - rowmean(w / s)`` (latent x features), the prediction's
    standardized, row-centred rows are ``r = u_c M``, so::

        <r_i, t_i> = u_c,i . (t M^T)_i,     |r_i| = (u_c,i (M M^T) u_c,i^T)^(1/2)

    three small matrix products instead of ~20 passes over cells x features (and autograd
    handles the backward, ``s`` depending on ``u`` included)."""
    uc = u - u.mean(0)
    cov = uc.t() @ uc / u.shape[0]
    ws = w / ((w * (cov @ w)).sum(0) + 1e-8).sqrt()
    m = ws - ws.mean(1, keepdim=True)
    rho = ((uc @ (m @ m.t())) * uc).sum(1).clamp_min(1e-30).sqrt()
    dot = ((t @ m.t()) * uc).sum(1)
    return 1.0 - (dot / (rho + 1e-8)).mean()


def corr_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 - correlation of every row of ``a`` with every row of ``b`` (columns standardized
    within each matrix first): a rows(a) x rows(b) cost in [0, 2]."""
    return 1.0 - unit_rows(a) @ unit_rows(b).t()


def sinkhorn(cost: torch.Tensor, eps: float | torch.Tensor, n_iter: int) -> torch.Tensor:
    """Entropic optimal transport plan between uniform marginals (log-domain Sinkhorn):
    ``argmin_P <P, C> - eps H(P)`` with rows summing to 1/n and columns to 1/m."""
    n, m = cost.shape
    logk = -cost / eps
    f = cost.new_zeros(n)
    g = cost.new_zeros(m)
    for _ in range(n_iter):
        f = -torch.logsumexp(logk + g, dim=1) - math.log(n)
        g = -torch.logsumexp(logk + f[:, None], dim=0) - math.log(m)
    return (logk + f[:, None] + g).exp()


def standardize_within(a: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """:func:`standardize_columns` within each group of rows (``groups``: one code per row)."""
    out, groups = torch.empty_like(a), groups.reshape(-1)
    for g in torch.unique(groups):
        sel = groups == g
        out[sel] = standardize_columns(a[sel])
    return out


def ridge_gcv(x: torch.Tensor, y: torch.Tensor, n_grid: int = 25) -> tuple[torch.Tensor, torch.Tensor]:
    """Ridge regression ``y ~ x W + b`` (intercept unpenalized) with the penalty chosen by
    generalized cross-validation over ``lam = s_max^2 * 10^[-6, 0]``: with ``x_c = U S V^T``
    and shrinkage ``f = s^2 / (s^2 + lam)``, ``GCV = |y_c - U diag(f) U^T y_c|^2 / (n - sum f)^2``.
    Returns ``(W, b)``."""
    xm, ym = x.mean(0), y.mean(0)
    u, s, vt = torch.linalg.svd(x - xm, full_matrices=False)
    yc = y - ym
    uty = u.t() @ yc
    n, best = x.shape[0], None
    for lam in (s.max().square() * torch.logspace(-6, 0, n_grid, dtype=x.dtype, device=x.device)).tolist():
        f = s.square() / (s.square() + lam)
        gcv = float((yc - u @ (f[:, None] * uty)).square().sum() / (n - f.sum()).clamp_min(1.0).square())
        if best is None or gcv < best[0]:
            best = (gcv, lam)
    w = vt.t() @ ((s / (s.square() + best[1]))[:, None] * uty)
    return w, ym - xm @ w
