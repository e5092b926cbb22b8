r"""Bayesian linear regression of every gene's log expression on one continuous
covariate (a time, a spatial coordinate) -- a Pyro module with no encoder, to show the
backend beyond autoencoders.

Model, for cell n with covariate :math:`t_n` and gene g (:math:`y_{ng}`: log
expression as given, e.g. ``log1p`` of normalized counts):

.. math::

    \tilde t_n &= (t_n - m) / s \qquad (m, s: \text{mean and sd of } t \text{ on the training data}) \\
    \alpha_g &\sim \mathcal N(0, \sigma_\alpha^2), \qquad
    \beta_g \sim \mathcal N(0, \sigma_\beta^2), \qquad
    \sigma_g \sim \mathrm{HalfNormal}(\sigma_\sigma) \\
    y_{ng} &\sim \mathcal N(\alpha_g + \beta_g \tilde t_n,\ \sigma_g^2)

so :math:`\alpha_g` is the expected log expression at the mean covariate and
:math:`b_g = \beta_g / s` the slope per unit of the covariate.  Centring makes the
posteriors of :math:`\alpha_g` and :math:`\beta_g` nearly independent, which is what a
mean-field guide assumes.

Guide: an automatic guide over all global sites (``AutoNormal``: independent Normals in
the unconstrained space, i.e. log-normal for :math:`\sigma_g`; ``AutoDelta``: MAP;
``AutoLowRankMultivariateNormal``: correlated).  Cells are a subsampled plate of size
``n_obs``, so each minibatch gives an unbiased estimate of the full-data ELBO.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import autoguide

from ..data.keys import Keys
from .base import PyroBaseModule

GUIDES = ("AutoNormal", "AutoDelta", "AutoLowRankMultivariateNormal")
SITES = ("intercept", "slope", "sigma")


class PyroRegressionModule(PyroBaseModule):
    """Per-gene Bayesian regression on a covariate (module docstring has the math).

    Parameters
    ----------
    n_genes, n_obs
        Genes, and cells of the training data (the ``cells`` plate size).
    covariate_mean, covariate_sd
        m and s of the covariate on the training data (kept as buffers: saved with the
        model).
    y_mean, y_sd
        Per-gene mean and sd of the response; the guide starts at ``alpha = y_mean``,
        ``beta = 0``, ``sigma = y_sd`` (faster convergence, not part of the model).
    guide
        Name of the ``pyro.infer.autoguide`` class (one of ``GUIDES``).
    intercept_prior_scale, slope_prior_scale, noise_prior_scale
        :math:`\\sigma_\\alpha`, :math:`\\sigma_\\beta` (per sd of the covariate),
        :math:`\\sigma_\\sigma`.
    """

    def __init__(
        self,
        n_genes: int,
        n_obs: int,
        covariate_mean: float,
        covariate_sd: float,
        y_mean: torch.Tensor,
        y_sd: torch.Tensor,
        guide: str = "AutoNormal",
        intercept_prior_scale: float = 10.0,
        slope_prior_scale: float = 1.0,
        noise_prior_scale: float = 1.0,
    ):
        super().__init__()
        if guide not in GUIDES:
            raise ValueError(f"guide must be one of {list(GUIDES)}, got {guide!r}")
        if not covariate_sd > 0:
            raise ValueError("the covariate is constant: a slope cannot be estimated")
        for name, v in (("intercept_prior_scale", intercept_prior_scale), ("slope_prior_scale", slope_prior_scale),
                        ("noise_prior_scale", noise_prior_scale)):
            if not v > 0:
                raise ValueError(f"{name} must be > 0, got {v}")
        self.n_genes, self.n_obs = int(n_genes), int(n_obs)
        self.register_buffer("covariate_mean", torch.tensor(float(covariate_mean)))
        self.register_buffer("covariate_sd", torch.tensor(float(covariate_sd)))
        self.register_buffer("_zero", torch.zeros(()))
        self.register_buffer("_prior_scales", torch.tensor([intercept_prior_scale, slope_prior_scale, noise_prior_scale]))
        init = dict(intercept=y_mean.float(), slope=torch.zeros(n_genes), sigma=y_sd.float().clamp_min(1e-3))
        self.autoguide = getattr(autoguide, guide)(self.model, init_loc_fn=autoguide.init_to_value(values=init))
        self._init_guide(torch.zeros(2, n_genes), torch.zeros(2, 1), torch.arange(2))

    @staticmethod
    def _get_fn_args_from_batch(tensors: dict[str, torch.Tensor]) -> tuple[tuple, dict]:
        return (tensors[Keys.X], tensors[Keys.CONT_COVS], tensors[Keys.INDICES]), {}

    def model(self, y: torch.Tensor, covariate: torch.Tensor, cell_index: torch.Tensor) -> None:
        """p(alpha, beta, sigma) p(y | t, alpha, beta, sigma); ``covariate`` is (cells, 1)."""
        s_a, s_b, s_s = self._prior_scales
        with pyro.plate("genes", self.n_genes, dim=-1):
            alpha = pyro.sample("intercept", dist.Normal(self._zero, s_a))
            beta = pyro.sample("slope", dist.Normal(self._zero, s_b))
            sigma = pyro.sample("sigma", dist.HalfNormal(s_s))
            with pyro.plate("cells", self.n_obs, subsample=cell_index, dim=-2):
                t = (covariate - self.covariate_mean) / self.covariate_sd
                pyro.sample("y", dist.Normal(alpha + beta * t, sigma), obs=y)

    def guide(self, *args, **kwargs):
        """The automatic guide over (alpha, beta, sigma)."""
        return self.autoguide(*args, **kwargs)

    @torch.no_grad()
    def sample_posterior(self, n_samples: int) -> dict[str, torch.Tensor]:
        """``n_samples`` joint draws from the guide: {site: (n_samples, genes)}, with the
        slope per unit of the covariate (beta / s)."""
        with self.param_scope(), pyro.plate("draws", n_samples, dim=-3):
            draws = self.autoguide()
        out = {k: draws[k].reshape(n_samples, self.n_genes) for k in SITES}
        out["slope"] = out["slope"] / self.covariate_sd
        return out
