"""Likelihoods beyond the count families: zero-inflated continuous, binary, fractions,
and the background/foreground mixture for antibody counts.

* ZIN (zero-inflated Normal), dropout logit ``pi``::

      log p(0)   = logaddexp(pi, log N(0 | loc, std)) - softplus(pi)
      log p(x≠0) = log N(x | loc, std) - softplus(pi)

* ZILN (zero-inflated log-Normal): a log-Normal has no mass at 0, so::

      log p(0)   = pi - softplus(pi)                     (= log sigmoid(pi))
      log p(x>0) = log LogNormal(x | loc, std) - softplus(pi)

* Bernoulli on ``x > 0`` (binarized accessibility), logits ``eta``.
* Beta with mean ``m = sigmoid(eta)`` and precision ``phi``: Beta(m phi, (1 - m) phi);
  values are clamped to [1e-6, 1 - 1e-6] (methylation fractions of exactly 0 or 1).
* NB mixture (antibody counts): with background probability ``sigmoid(w)``::

      log p(x) = logaddexp(logsigmoid(w) + log NB(x | mu_bg, theta),
                           logsigmoid(-w) + log NB(x | mu_fg, theta))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.distributions import Beta as _TorchBeta
from torch.distributions import Distribution
from torch.distributions import Normal as _TorchNormal

from ._count import _gamma_poisson_sample, log_nb_logits

_BETA_EPS = 1e-6


class ZeroInflatedNormal(Distribution):
    """Normal(loc, std) with an extra point mass at exactly 0 (probability sigmoid(zi_logits))."""

    arg_constraints: dict = {}

    def __init__(self, loc: torch.Tensor, std: torch.Tensor, zi_logits: torch.Tensor):
        self.base = _TorchNormal(loc, std, validate_args=False)
        self.zi_logits = zi_logits
        super().__init__(batch_shape=torch.broadcast_shapes(loc.shape, zi_logits.shape), validate_args=False)

    @property
    def mean(self) -> torch.Tensor:
        return (1.0 - torch.sigmoid(self.zi_logits)) * self.base.loc

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        lp = self.base.log_prob(value)
        zero = torch.logaddexp(self.zi_logits, lp)
        return torch.where(value == 0, zero, lp) - F.softplus(self.zi_logits)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            x = self.base.sample(sample_shape)
            drop = torch.rand_like(x) < torch.sigmoid(self.zi_logits).expand_as(x)
            return x.masked_fill(drop, 0.0)


class ZeroInflatedLogNormal(ZeroInflatedNormal):
    """LogNormal(loc, std) (``log x ~ Normal(loc, std)``) with a point mass at 0."""

    @property
    def mean(self) -> torch.Tensor:
        return (1.0 - torch.sigmoid(self.zi_logits)) * (self.base.loc + self.base.scale.pow(2) / 2).exp()

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        pos = value > 0
        safe = torch.where(pos, value, torch.ones_like(value)).log()
        lp = self.base.log_prob(safe) - safe
        return torch.where(pos, lp, self.zi_logits) - F.softplus(self.zi_logits)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            x = self.base.sample(sample_shape).exp()
            drop = torch.rand_like(x) < torch.sigmoid(self.zi_logits).expand_as(x)
            return x.masked_fill(drop, 0.0)


class BinarizedBernoulli(torch.distributions.Bernoulli):
    """Bernoulli(logits) scoring ``value > 0`` (counts are binarized, as for accessibility)."""

    def __init__(self, logits: torch.Tensor):
        super().__init__(logits=logits, validate_args=False)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return -F.binary_cross_entropy_with_logits(self.logits, (value > 0).to(self.logits.dtype), reduction="none")


class MeanBeta(_TorchBeta):
    """Beta parameterized by its mean logit ``eta`` and log precision ``log_phi``."""

    def __init__(self, eta: torch.Tensor, log_phi: torch.Tensor):
        m, phi = torch.sigmoid(eta), log_phi.exp()
        super().__init__(m * phi, (1.0 - m) * phi, validate_args=False)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return super().log_prob(value.clamp(_BETA_EPS, 1.0 - _BETA_EPS))


class NegativeBinomialMixture(Distribution):
    """Two NBs sharing ``theta``: background mean ``exp(log_mu_bg)`` with probability
    ``sigmoid(mix_logits)``, foreground mean ``exp(log_mu)`` otherwise."""

    arg_constraints: dict = {}

    def __init__(self, log_mu: torch.Tensor, log_mu_bg: torch.Tensor, theta: torch.Tensor, mix_logits: torch.Tensor):
        self.log_mu, self.log_mu_bg, self.theta, self.mix_logits = log_mu, log_mu_bg, theta, mix_logits
        shape = torch.broadcast_shapes(log_mu.shape, log_mu_bg.shape, theta.shape, mix_logits.shape)
        super().__init__(batch_shape=shape, validate_args=False)

    @property
    def mean(self) -> torch.Tensor:
        p = torch.sigmoid(self.mix_logits)
        return p * self.log_mu_bg.exp() + (1 - p) * self.log_mu.exp()

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        log_theta = self.theta.log()
        bg = log_nb_logits(value, self.log_mu_bg, log_theta) + F.logsigmoid(self.mix_logits)
        fg = log_nb_logits(value, self.log_mu, log_theta) + F.logsigmoid(-self.mix_logits)
        return torch.logaddexp(bg, fg)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            is_bg = torch.rand(shape, device=self.log_mu.device) < torch.sigmoid(self.mix_logits).expand(shape)
            mu = torch.where(is_bg, self.log_mu_bg.expand(shape), self.log_mu.expand(shape)).exp()
        return _gamma_poisson_sample(mu, self.theta, shape)
