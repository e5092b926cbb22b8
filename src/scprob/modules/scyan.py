r"""Scyan: knowledge-guided annotation of cytometry cells with a normalizing flow
(Blampey et al. 2023), in scprob's module API.

Notation (the paper's): a cell has marker expressions ``x`` (M markers, transformed and
standardized), covariates ``c`` (one-hot batch, one-hot categorical covariates,
continuous covariates), and a population ``z`` among P.  The knowledge table
``rho`` (P x M) says for each population whether a marker is positive (+1), negative
(-1) or not informative (NaN).

Generative story::

    z ~ Categorical(pi),               pi = softmax(r * pi_logit)     (r = 100: faster learning of pi)
    u | z ~ prod_m p_{z,m}(u_m)        the prior of population z in the latent space
    x = f^{-1}(u; c)                   f: a RealNVP flow conditioned on c (scprob.nn.flow)

The per-marker prior is a target ``T_{z,m}`` blurred by cell-specific noise
``H ~ N(0, sigma^2)`` (``prior_std``): ``u_m = T_{z,m} + H_m``.

* ``rho = +-1`` (ordinary marker), or an intermediate level in (-1, 1) such as 0 for
  "mid": ``T`` is the point ``rho``, so ``p = N(u; rho, sigma^2)``.
* ``rho = NaN`` (not informative): ``T ~ Uniform(-1, 1)``, so
  ``p(u) = [Phi((u + 1) / sigma) - Phi((u - 1) / sigma)] / 2`` -- flat over the whole
  negative-to-positive range, Gaussian tails outside.
* continuum marker (``continuum_markers``, expressed as a gradient rather than on/off):
  a +-1 target is *softened*: ``T ~ Uniform`` between the midpoint 0 and ``rho``
  (``[0, 1]`` for +1, ``[-1, 0]`` for -1), so a cell may sit anywhere from mid to fully
  positive; ``p(u) = [Phi((u - a) / sigma) - Phi((u - b) / sigma)] / (b - a)``.

Each of these integrates to one, so ``log p(u | z) = sum_m log p_{z,m}(u_m)`` is a
normalized density and the data log-likelihood by change of variables is::

    log p(x | c) = logsumexp_z [ log p(f(x; c) | z) + log pi_z ] + log|det d f(x; c) / dx|

The loss is its negative mean over a minibatch (the seed's ``kl``).  Temperature: in
the epochs chosen by the plan, ``log pi`` is replaced by the detached
``log_softmax(-r * pi_logit / T)`` (``temperature`` T), which up-weights small populations
so that they are not absorbed by large ones early on; the exact ``-log p(x | c)`` is
always reported as ``reconstruction_loss``.

Computation: for all P populations at once, the Gaussian part is a quadratic form
written as matrix products, ``sum_m k_{zm} (u_m - rho_{zm})^2 = (u^2) K^T - 2 u (K rho)^T +
const`` (``K`` = indicator of point targets), and each distinct interval target
(``[-1, 1]``, ``[0, 1]``, ``[-1, 0]``) is one (B, M) log-density times an indicator
matrix: no (B, P, M) tensor is built.

Prediction: ``z* = argmax_z log p(u | z) + log pi_z``.  A cell is called *unknown*
(default rule, a likelihood ratio) when the table's "no population" hypothesis explains
it better than its best population: ``log p(u | z*) < log p_0(u)``, where ``p_0`` is the
prior of a population whose markers are all not informative, ``p_0(u) = prod_m
p_NaN(u_m)`` (each marker ``Uniform(-1, 1) + N(0, sigma^2)``, as a NaN table entry).  A
cell near its population's targets is far more likely under ``p(. | z*)`` (at a +-1
target ``p_NaN = 1/4`` per marker), so only cells that sit between the targets on several
markers -- matched by no row of the table -- are left unassigned; the rule has no
threshold to tune and is unchanged by the number of cells.  Alternative (``tail``
rule, a per-population test with false-unknown rate ``alpha`` under the model): unknown
when ``log p(u | z*)`` is below the ``alpha``-quantile of ``log p(U | z*)``,
``U ~ p(. | z*)``, estimated by Monte-Carlo (:meth:`ScyanModule.log_prob_quantiles`);
flow misfit inflates its rate on real data, hence not the default.

Names: ``rho`` (table), ``pi_logit`` / ``log_pi`` (population weights), ``u`` (latent
expressions), ``ldj`` (log |det J|), ``sigma`` = ``prior_std``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..data.keys import Keys
from ..nn.flow import RealNVP
from .base import BaseModule, LossOutput

Tensor = torch.Tensor

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def _log1mexp(d: Tensor) -> Tensor:
    """log(1 - exp(d)) for d <= 0, stable on both ends."""
    return torch.where(d > -math.log(2), torch.log(-torch.expm1(d)), torch.log1p(-torch.exp(d)))


def log_interval_density(u: Tensor, lo: float, hi: float, sigma: float) -> Tensor:
    """log of the density of ``Uniform(lo, hi) + N(0, sigma^2)`` at ``u``:
    ``log[Phi((u - lo) / sigma) - Phi((u - hi) / sigma)] - log(hi - lo)``, computed on the
    side of the interval's centre where both CDFs are small (no cancellation)."""
    mid = 0.5 * (lo + hi)
    v = torch.where(u > mid, 2 * mid - u, u)  # reflect: the density is symmetric about mid
    a, b = (v - lo) / sigma, (v - hi) / sigma  # a > b, both moderate or negative
    la, lb = torch.special.log_ndtr(a), torch.special.log_ndtr(b)
    return la + _log1mexp(lb - la) - math.log(hi - lo)


class ScyanPrior(nn.Module):
    """The population priors ``p(u | z)`` built from the knowledge table."""

    def __init__(self, rho: Tensor, is_continuum: Tensor, prior_std: float):
        super().__init__()
        rho = rho.float()
        is_continuum = is_continuum.bool()
        known = ~torch.isnan(rho)
        point = known & ~(is_continuum[None, :] & (rho.abs() == 1))
        self.register_buffer("rho", rho)
        self.register_buffer("is_continuum", is_continuum)
        self.register_buffer("K", point.float())  # (P, M): Gaussian point targets
        self.register_buffer("K_rho", torch.where(point, rho, 0.0))
        self.register_buffer("K_rho2", torch.where(point, rho**2, 0.0).sum(1))
        self.intervals: list[tuple[float, float]] = [(-1.0, 1.0), (0.0, 1.0), (-1.0, 0.0)]
        ind = torch.stack(
            [
                ~known,
                known & is_continuum[None, :] & (rho == 1),
                known & is_continuum[None, :] & (rho == -1),
            ]
        ).float()  # (3, P, M)
        self.register_buffer("interval_ind", ind)
        self.prior_std = float(prior_std)

    @property
    def n_pops(self) -> int:
        return self.rho.shape[0]

    def log_prob(self, u: Tensor, prior_std: float | None = None) -> Tensor:
        """``log p(u | z)`` for every population: (B, M) -> (B, P)."""
        s = self.prior_std if prior_std is None else float(prior_std)
        quad = (u * u) @ self.K.T - 2 * (u @ self.K_rho.T) + self.K_rho2
        out = -0.5 * quad / s**2 - self.K.sum(1) * (math.log(s) + _LOG_SQRT_2PI)
        for k, (lo, hi) in enumerate(self.intervals):
            ind = self.interval_ind[k]
            if bool(ind.any()):
                out = out + log_interval_density(u, lo, hi, s) @ ind.T
        return out

    def sample(self, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``u ~ p(u | z)`` for a tensor of population indices."""
        rho = self.rho[z]
        lo = torch.where(self.interval_ind[0][z] > 0, -1.0, rho)
        hi = torch.where(self.interval_ind[0][z] > 0, 1.0, rho)
        lo = torch.where(self.interval_ind[1][z] > 0, 0.0, lo)
        hi = torch.where(self.interval_ind[2][z] > 0, 0.0, hi)
        lo, hi = torch.minimum(lo, hi), torch.maximum(lo, hi)
        r = torch.rand(lo.shape, generator=generator, device=lo.device)
        e = torch.randn(lo.shape, generator=generator, device=lo.device)
        return lo + (hi - lo) * r + self.prior_std * e


class ScyanModule(BaseModule):
    """The flow, the table prior and the population weights (see module docstring).

    Parameters
    ----------
    rho
        Knowledge table, (P, M) with -1 / 1 / NaN.
    is_continuum
        (M,) booleans: markers expressed as a continuum.
    n_batch, n_cats_per_cov, n_continuous_cov
        Covariates: one-hot batch (when ``n_batch > 1``), one-hot categorical covariates,
        continuous covariates; concatenated into ``c``.
    hidden_size, n_hidden_layers, n_layers
        The coupling MLPs (width, depth) and the number of coupling layers.
    prior_std
        ``sigma``, the cell-specific spread around a population's target.
    temperature
        ``T`` of the small-population re-weighting.
    """

    pi_logit_ratio: float = 100.0

    def __init__(
        self,
        rho: Tensor,
        is_continuum: Tensor,
        n_batch: int = 1,
        n_cats_per_cov: list[int] | None = None,
        n_continuous_cov: int = 0,
        hidden_size: int = 16,
        n_hidden_layers: int = 6,
        n_layers: int = 7,
        prior_std: float = 0.3,
        temperature: float = 0.5,
    ):
        super().__init__()
        self.n_pops, self.n_markers = rho.shape
        self.n_batch = int(n_batch)
        self.n_cats_per_cov = list(n_cats_per_cov or [])
        self.n_continuous_cov = int(n_continuous_cov)
        self.n_covariates = (self.n_batch if self.n_batch > 1 else 0) + sum(self.n_cats_per_cov) + self.n_continuous_cov
        self.temperature = float(temperature)
        self.prior = ScyanPrior(rho, is_continuum, prior_std)
        self.pi_logit = nn.Parameter(torch.zeros(self.n_pops))
        self.flow = RealNVP(self.n_markers, self.n_covariates, hidden_size, n_hidden_layers, n_layers)

    # ------------------------------------------------------------ covariates
    def covariates(self, batch_index: Tensor | None, cat_covs: Tensor | None = None, cont_covs: Tensor | None = None) -> Tensor:
        """``c`` = [one-hot batch, one-hot categorical covariates, continuous covariates]."""
        parts = []
        n = batch_index.shape[0]
        if self.n_batch > 1:
            parts.append(nn.functional.one_hot(batch_index.reshape(-1), self.n_batch).float())
        for k, n_cat in enumerate(self.n_cats_per_cov):
            parts.append(nn.functional.one_hot(cat_covs[:, k].long(), n_cat).float())
        if self.n_continuous_cov:
            parts.append(cont_covs.float())
        if not parts:
            return torch.zeros(n, 0, device=batch_index.device)
        return torch.cat(parts, dim=1)

    # ---------------------------------------------------------------- weights
    @property
    def log_pi(self) -> Tensor:
        return torch.log_softmax(self.pi_logit_ratio * self.pi_logit, dim=0)

    def log_pi_temperature(self) -> Tensor:
        """Detached ``log_softmax(-r * pi_logit / T)``: small populations up-weighted."""
        return torch.log_softmax(-self.pi_logit_ratio * self.pi_logit / self.temperature, dim=0).detach()

    # ------------------------------------------------------------ module API
    def _get_inference_input(self, tensors: dict[str, Tensor], **kwargs) -> dict:
        return dict(
            x=tensors[Keys.X],
            cov=self.covariates(tensors[Keys.BATCH], tensors.get(Keys.CAT_COVS), tensors.get(Keys.CONT_COVS)),
        )

    def inference(self, x: Tensor, cov: Tensor) -> dict:
        u, ldj = self.flow(x, cov)
        return dict(u=u, ldj=ldj, cov=cov)

    def _get_generative_input(self, tensors: dict[str, Tensor], inference_outputs: dict, **kwargs) -> dict:
        return dict(u=inference_outputs["u"])

    def generative(self, u: Tensor, prior_std: float | None = None) -> dict:
        """``prior_std`` overrides sigma for this call (the plan's warm-up)."""
        return dict(log_prob_u=self.prior.log_prob(u, prior_std), log_pi=self.log_pi)

    def loss(self, tensors, inference_outputs, generative_outputs, use_temperature: bool = False, **kwargs) -> LossOutput:
        lp, ldj = generative_outputs["log_prob_u"], inference_outputs["ldj"]
        nll = -(torch.logsumexp(lp + generative_outputs["log_pi"], dim=1) + ldj)  # exact -log p(x | c)
        if use_temperature:
            obj = -(torch.logsumexp(lp + self.log_pi_temperature(), dim=1) + ldj)
        else:
            obj = nll
        return LossOutput(loss=obj.mean(), reconstruction_loss=nll.detach() if use_temperature else nll)

    # ------------------------------------------------------------- downstream
    def log_joint(self, x: Tensor, cov: Tensor) -> tuple[Tensor, Tensor]:
        """``log p(u | z)`` (B, P) and the latent ``u`` (B, M)."""
        u, _ = self.flow(x, cov)
        return self.prior.log_prob(u), u

    @torch.no_grad()
    def sample(
        self,
        n_samples: int,
        covariates: Tensor,
        z: int | Tensor | None = None,
        return_z: bool = False,
        generator: torch.Generator | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Draw cells: ``z ~ pi`` (or the given population(s)), ``u ~ p(u | z)``,
        ``x = f^{-1}(u; c)``.  ``covariates``: (n_samples, n_covariates) or one row."""
        device = self.pi_logit.device
        if z is None:
            z = torch.multinomial(self.log_pi.exp(), n_samples, replacement=True, generator=generator)
        elif isinstance(z, int):
            z = torch.full((n_samples,), z, dtype=torch.long, device=device)
        elif isinstance(z, Tensor):
            z = z.to(device=device, dtype=torch.long)
        else:
            raise TypeError(f"z must be None, an int or a tensor of population indices, got {type(z).__name__}")
        if z.numel() != n_samples:
            raise ValueError(f"z has {z.numel()} entries for n_samples={n_samples}")
        if z.numel() and (z.min() < 0 or z.max() >= self.n_pops):
            raise ValueError(f"population indices must be in [0, {self.n_pops})")
        covariates = covariates.to(device).float()
        if covariates.ndim == 1 or covariates.shape[0] == 1:
            covariates = covariates.reshape(1, -1).expand(n_samples, -1)
        u = self.prior.sample(z, generator=generator)
        x = self.flow.inverse(u, covariates)
        return (x, z) if return_z else x

    def log_background(self, u: Tensor) -> Tensor:
        """``log p_0(u)``: every marker not informative (the unknown rule's alternative)."""
        return log_interval_density(u, -1.0, 1.0, self.prior.prior_std).sum(1)

    @torch.no_grad()
    def log_prob_quantiles(self, alpha: float, n_draws: int = 20_000, seed: int = 0) -> Tensor:
        """Per population z, the ``alpha``-quantile of ``log p(U | z)`` with ``U ~ p(. | z)``
        (Monte-Carlo, ``n_draws`` per population): the calibrated unknown threshold."""
        g = torch.Generator(device=self.pi_logit.device).manual_seed(seed)
        out = torch.empty(self.n_pops, device=self.pi_logit.device)
        for z in range(self.n_pops):
            idx = torch.full((n_draws,), z, dtype=torch.long, device=self.pi_logit.device)
            u = self.prior.sample(idx, generator=g)
            out[z] = torch.quantile(self.prior.log_prob(u)[:, z], alpha)
        return out
