"""Count likelihoods for single-cell data.

All log-probabilities are written in forms that never evaluate ``log(0)``:

* Negative binomial with mean ``mu`` and inverse dispersion ``theta``::

      log NB(x | mu, theta) = lgamma(x + theta) - lgamma(theta) - lgamma(x + 1)
                              - theta * softplus(log mu - log theta)
                              - x     * softplus(log theta - log mu)

  which equals ``theta log(theta/(theta+mu)) + x log(mu/(theta+mu)) + ...``.
  ``logits = log mu - log theta`` is the log-odds of the NB (the "logits form").
* Zero-inflated NB with dropout logit ``pi`` (dropout probability ``sigmoid(pi)``)::

      log p(0)   = logaddexp(pi, log NB(0)) - softplus(pi)
      log p(x>0) = log NB(x) - softplus(pi)

* Poisson: ``x log(rate) - rate - lgamma(x + 1)`` (``xlogy`` handles rate 0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.distributions import Distribution, Gamma
from torch.distributions import Normal as _TorchNormal
from torch.distributions import Poisson as _TorchPoisson

from ._fused import nb_rowsum, poisson_rowsum

_MAX_POISSON_RATE = 1e8


def log_nb_logits(x: torch.Tensor, log_mu: torch.Tensor, log_theta: torch.Tensor) -> torch.Tensor:
    """Elementwise NB log-pmf from ``log mu`` and ``log theta``."""
    theta = log_theta.exp()
    nb_logits = log_mu - log_theta
    # x * softplus(-logits) is 0 * inf when mu == 0 and x == 0; the term is 0 then.
    x_term = torch.where(x > 0, x * F.softplus(-nb_logits), torch.zeros_like(nb_logits))
    return (
        torch.lgamma(x + theta)
        - torch.lgamma(theta)
        - torch.lgamma(x + 1.0)
        - theta * F.softplus(nb_logits)
        - x_term
    )


def log_nb(x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Elementwise NB log-pmf, mean/inverse-dispersion form."""
    return log_nb_logits(x, torch.log(mu), torch.log(theta))


def log_zinb_logits(
    x: torch.Tensor, log_mu: torch.Tensor, log_theta: torch.Tensor, zi_logits: torch.Tensor
) -> torch.Tensor:
    """Elementwise ZINB log-pmf; ``zi_logits`` is the logit of the dropout probability."""
    log_nb_x = log_nb_logits(x, log_mu, log_theta)
    zero = torch.logaddexp(zi_logits, log_nb_x)
    return torch.where(x < 0.5, zero, log_nb_x) - F.softplus(zi_logits)


def nb_log_prob_rowsum_reference(
    x: torch.Tensor, log_mu: torch.Tensor, log_theta: torch.Tensor, zi_logits: torch.Tensor | None = None
) -> torch.Tensor:
    """sum_g log NB(x_g) (or ZINB with ``zi_logits``) per row, exact, sparse-aware; composed of
    autograd ops (the reference the fused :func:`nb_log_prob_rowsum` is tested against).

    With l = log mu - log theta and A = -theta softplus(l) (= log NB(0)):

        NB:   sum_g A_g                                  + sum_{x>0} N_g
        ZINB: sum_g [logaddexp(pi_g, A_g) - softplus(pi_g)]
              + sum_{x>0} [A_g - logaddexp(pi_g, A_g) + N_g]

    where N = lgamma(x+theta) - lgamma(theta) - lgamma(x+1) - x softplus(-l) holds every
    term that is exactly 0 at x = 0.  Single-cell counts are mostly zeros, so the costly
    lgamma/digamma (and the x>0 corrections) run on the non-zero entries only.
    """
    theta = log_theta.exp()
    nb_logits = log_mu - log_theta
    a = -theta * F.softplus(nb_logits)
    rows, cols = (x > 0).nonzero(as_tuple=True)
    xv = x[rows, cols]
    th = theta.expand_as(nb_logits)[rows, cols]
    lv = nb_logits[rows, cols]
    nz = torch.lgamma(xv + th) - torch.lgamma(th) - torch.lgamma(xv + 1.0) - xv * F.softplus(-lv)
    if zi_logits is None:
        dense = a
    else:
        z = torch.logaddexp(zi_logits, a)
        dense = z - F.softplus(zi_logits)
        nz = nz + a[rows, cols] - z[rows, cols]
    return dense.sum(-1).index_add(0, rows, nz)


def nb_log_prob_rowsum(
    x: torch.Tensor,
    log_mu: torch.Tensor,
    log_theta: torch.Tensor,
    zi_logits: torch.Tensor | None = None,
    nz: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """sum_g log NB(x_g) (or ZINB with ``zi_logits``) per row of a (cells, genes) ``x``.

    The same values as :func:`nb_log_prob_rowsum_reference`, computed by one fused autograd
    Function whose backward writes the analytic gradients with respect to ``log_mu``,
    ``log_theta`` ((G,), (1, G) or (cells, G)) and ``zi_logits`` in one pass (math and
    backends: :mod:`scprob.distributions._fused`).  ``nz`` optionally gives the row-major
    coordinates ``(rows, cols)`` of the positive entries of ``x`` (e.g. from the CSR batch),
    sparing a ``nonzero`` per call; it must list exactly those entries.
    """
    out = nb_rowsum(x, log_mu, log_theta, zi_logits, nz)
    if out is not None:
        return out
    if x.ndim != 2 or log_mu.shape != x.shape:  # broadcast or Monte-Carlo log_mu: element-wise
        elem = log_nb_logits(x, log_mu, log_theta) if zi_logits is None else log_zinb_logits(x, log_mu, log_theta, zi_logits)
        return elem.sum(-1)
    return nb_log_prob_rowsum_reference(x, log_mu, log_theta, zi_logits)


def poisson_log_prob_rowsum(
    x: torch.Tensor,
    log_rate: torch.Tensor | None = None,
    nz: tuple[torch.Tensor, torch.Tensor] | None = None,
    *,
    rate: torch.Tensor | None = None,
) -> torch.Tensor:
    """sum_g log Poisson(x_g | rate_g) per row, fused (see :mod:`scprob.distributions._fused`),
    from ``log_rate`` (gradient x - rate) or ``rate`` (gradient x / rate - 1)."""
    out = poisson_rowsum(x, log_rate, nz, rate=rate)
    if out is None:
        r = rate if rate is not None else log_rate.exp()
        return log_poisson(x, r).sum(-1)
    return out


def log_poisson(x: torch.Tensor, rate: torch.Tensor) -> torch.Tensor:
    return torch.xlogy(x, rate) - rate - torch.lgamma(x + 1.0)


def _gamma_poisson_sample(mu: torch.Tensor, theta: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    with torch.no_grad():
        mu = mu.expand(shape)
        theta = theta.expand(shape)
        rate = Gamma(concentration=theta, rate=theta / mu.clamp_min(1e-30)).sample()
        rate = torch.where(mu > 0, rate, torch.zeros_like(rate))
        return torch.poisson(rate.clamp(max=_MAX_POISSON_RATE))


class NegativeBinomial(Distribution):
    """NB(mu, theta): mean ``mu``, inverse dispersion ``theta``; var = mu + mu^2 / theta.

    Build either from ``mu`` or from ``log_mu`` (preferred inside models: no log(0)).
    ``scale`` optionally carries the normalized expression (mu / library).
    """

    arg_constraints: dict = {}
    support = torch.distributions.constraints.nonnegative_integer

    def __init__(
        self,
        mu: torch.Tensor | None = None,
        theta: torch.Tensor | None = None,
        log_mu: torch.Tensor | None = None,
        scale: torch.Tensor | None = None,
        log_theta: torch.Tensor | None = None,
    ):
        if (mu is None) == (log_mu is None):
            raise ValueError("Give exactly one of `mu` or `log_mu`.")
        if (theta is None) == (log_theta is None):
            raise ValueError("Give exactly one of `theta` or `log_theta` (inverse dispersion).")
        self.log_mu = torch.log(mu) if log_mu is None else log_mu
        # the other form of the dispersion is computed when first read: the fused
        # likelihood takes log theta, so a model giving it pays no exp / log round trip
        self._theta, self._log_theta = theta, log_theta
        self.scale = scale
        shape_t = (theta if log_theta is None else log_theta).shape
        shape = self.log_mu.shape if shape_t == self.log_mu.shape else torch.broadcast_shapes(self.log_mu.shape, shape_t)
        super().__init__(batch_shape=shape, validate_args=False)

    @property
    def theta(self) -> torch.Tensor:
        if self._theta is None:
            self._theta = self._log_theta.exp()
        return self._theta

    @property
    def log_theta(self) -> torch.Tensor:
        if self._log_theta is None:
            self._log_theta = torch.log(self._theta)
        return self._log_theta

    @property
    def mu(self) -> torch.Tensor:
        return self.log_mu.exp()

    @property
    def logits(self) -> torch.Tensor:
        return self.log_mu - self.log_theta

    @property
    def mean(self) -> torch.Tensor:
        return self.mu

    @property
    def log_mean(self) -> torch.Tensor:
        """``log(mean)`` without the round trip through ``exp`` (which underflows)."""
        return self.log_mu

    @property
    def variance(self) -> torch.Tensor:
        mu = self.mu
        return mu + mu * mu / self.theta

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return log_nb_logits(value, self.log_mu, self.log_theta)

    def _zi(self):
        return None

    def log_prob_rowsum(self, value: torch.Tensor, nz: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """``log_prob(value).sum(-1)``; for (cells, genes) inputs the fused, sparse-aware
        :func:`nb_log_prob_rowsum` (``nz``: optional coordinates of the positive entries)."""
        if value.ndim != 2 or self.log_mu.ndim != 2:
            return self.log_prob(value).sum(-1)
        return nb_log_prob_rowsum(value, self.log_mu, self.log_theta, self._zi(), nz)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        return _gamma_poisson_sample(self.mu, self.theta, shape)


class ZeroInflatedNegativeBinomial(NegativeBinomial):
    """ZINB: with probability ``sigmoid(zi_logits)`` the count is 0, else NB(mu, theta)."""

    def __init__(
        self,
        mu: torch.Tensor | None = None,
        theta: torch.Tensor | None = None,
        zi_logits: torch.Tensor | None = None,
        log_mu: torch.Tensor | None = None,
        scale: torch.Tensor | None = None,
        log_theta: torch.Tensor | None = None,
    ):
        if zi_logits is None:
            raise ValueError("`zi_logits` is required for the zero-inflated NB.")
        super().__init__(mu=mu, theta=theta, log_mu=log_mu, scale=scale, log_theta=log_theta)
        self.zi_logits = zi_logits

    @property
    def zi_probs(self) -> torch.Tensor:
        return torch.sigmoid(self.zi_logits)

    @property
    def mean(self) -> torch.Tensor:
        return (1.0 - self.zi_probs) * self.mu

    @property
    def log_mean(self) -> torch.Tensor:
        return self.log_mu - torch.nn.functional.softplus(self.zi_logits)  # log(1 - sigmoid(z)) = -softplus(z)

    @property
    def variance(self) -> torch.Tensor:
        pi, mu = self.zi_probs, self.mu
        return (1.0 - pi) * (mu + mu * mu / self.theta) + pi * (1.0 - pi) * mu * mu

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return log_zinb_logits(value, self.log_mu, self.log_theta, self.zi_logits)

    def _zi(self):
        return self.zi_logits

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        counts = _gamma_poisson_sample(self.mu, self.theta, shape)
        with torch.no_grad():
            dropped = torch.rand(shape, device=counts.device) < self.zi_probs.expand(shape)
        return counts.masked_fill(dropped, 0.0)


class Poisson(_TorchPoisson):
    """Poisson(rate) with a ``log_prob`` that is exact at rate 0 and an optional ``scale``.

    Build from ``rate`` or from ``log_rate`` (then ``rate = exp(log_rate)`` and the fused
    per-cell sums differentiate with respect to the log-rate directly: gradient x - rate)."""

    def __init__(
        self, rate: torch.Tensor | None = None, scale: torch.Tensor | None = None, log_rate: torch.Tensor | None = None
    ):
        if (rate is None) == (log_rate is None):
            raise ValueError("Give exactly one of `rate` or `log_rate`.")
        super().__init__(rate=log_rate.exp() if rate is None else rate, validate_args=False)
        self.log_rate = log_rate
        self.scale = scale

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return log_poisson(value, self.rate)

    def log_prob_rowsum(self, value: torch.Tensor, nz: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """``log_prob(value).sum(-1)``; for (cells, genes) inputs the fused, sparse-aware
        :func:`poisson_log_prob_rowsum` (``nz``: optional coordinates of the positive entries)."""
        if value.ndim != 2 or self.rate.ndim != 2:
            return self.log_prob(value).sum(-1)
        log_rate = getattr(self, "log_rate", None)  # instances made by expand() lack it
        if log_rate is not None and log_rate.shape == self.rate.shape:
            return poisson_log_prob_rowsum(value, log_rate, nz)
        return poisson_log_prob_rowsum(value, nz=nz, rate=self.rate)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            rate = self.rate.expand(self._extended_shape(sample_shape))
            return torch.poisson(rate.clamp(max=_MAX_POISSON_RATE))


class Normal(_TorchNormal):
    """Gaussian likelihood (for continuous, e.g. normalized, data) with an optional ``scale``
    attribute holding the normalized mean; ``loc``/``scale`` keep torch's meaning, so the
    normalized mean is stored as ``normal_mu``."""

    def __init__(self, loc: torch.Tensor, std: torch.Tensor, normal_mu: torch.Tensor | None = None):
        super().__init__(loc, std, validate_args=False)
        self.normal_mu = normal_mu
