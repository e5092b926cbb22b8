"""The likelihood registry: options are data, not subclasses.

A likelihood is registered under a name with a builder that maps a decoder's outputs
to a ``torch.distributions.Distribution``, and the tuple ``params`` of the decoder
outputs it needs.  The parameter names are a shared vocabulary:

    log_mu      log of the mean (library * normalized expression; count families)
    theta       inverse dispersion (per gene, batch or cell)
    zi_logits   dropout logits (zero-inflated families)
    loc, std    location and scale of a continuous family (``loc`` is a logit for
                Bernoulli and for the Beta mean)
    log_phi     log precision (Beta)
    log_mu_bg, mix_logits   background mean and background probability (NB mixture)

Builders may also take ``scale`` (normalized expression, kept on the distribution).
Those taking ``theta`` also accept ``log_theta`` in its place (what scVI's decoder
makes: no exp / log round trip).
A decoder that can produce a family's ``params`` can use it: scVI's decoder makes
``log_mu``/``theta``/``zi_logits`` (so NB, ZINB, Poisson, Normal), GLUE's data decoders
make every name above, so a family registered once serves every model it fits.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ._count import NegativeBinomial, Normal, Poisson, ZeroInflatedNegativeBinomial
from ._more import BinarizedBernoulli, MeanBeta, NegativeBinomialMixture, ZeroInflatedLogNormal, ZeroInflatedNormal

_LIKELIHOODS: dict[str, dict] = {}


def register_likelihood(
    name: str, *, is_count: bool, needs_dispersion: bool = False, needs_dropout: bool = False,
    params: tuple[str, ...] | None = None, value_range: tuple[float, float] | None = None,
) -> Callable:
    """Decorator registering ``builder`` as likelihood ``name``.

    ``is_count`` says whether the data must be non-negative integers (checked at setup);
    ``params`` names the decoder outputs the builder takes (default: ``log_mu``, plus
    ``theta`` with ``needs_dispersion`` and ``zi_logits`` with ``needs_dropout``);
    ``value_range`` the closed interval data must lie in (checked at setup), if any.
    """
    if params is None:
        params = ("log_mu",) + (("theta",) if needs_dispersion else ()) + (("zi_logits",) if needs_dropout else ())

    def deco(builder: Callable[..., torch.distributions.Distribution]):
        _LIKELIHOODS[name] = dict(
            builder=builder, is_count=is_count, params=tuple(params), value_range=value_range,
            needs_dispersion="theta" in params or "std" in params, needs_dropout="zi_logits" in params,
        )
        return builder

    return deco


def get_likelihood(name: str) -> dict:
    if name not in _LIKELIHOODS:
        raise ValueError(f"Unknown likelihood {name!r}; registered: {sorted(_LIKELIHOODS)}")
    return _LIKELIHOODS[name]


def available_likelihoods() -> list[str]:
    return sorted(_LIKELIHOODS)


@register_likelihood("nb", is_count=True, needs_dispersion=True)
def _nb(log_mu, theta=None, scale=None, log_theta=None, **_):
    return NegativeBinomial(log_mu=log_mu, theta=theta, scale=scale, log_theta=log_theta)


@register_likelihood("zinb", is_count=True, needs_dispersion=True, needs_dropout=True)
def _zinb(log_mu, theta=None, zi_logits=None, scale=None, log_theta=None, **_):
    return ZeroInflatedNegativeBinomial(log_mu=log_mu, theta=theta, zi_logits=zi_logits, scale=scale, log_theta=log_theta)


@register_likelihood("poisson", is_count=True, needs_dispersion=False)
def _poisson(log_mu, scale=None, **_):
    return Poisson(log_rate=log_mu, scale=scale)


@register_likelihood("normal", is_count=False, needs_dispersion=True)
def _normal(log_mu, theta=None, scale=None, log_theta=None, **_):
    # theta plays the role of the per-gene variance here (as in scVI's "normal").
    std = theta.sqrt() if log_theta is None else (0.5 * log_theta).exp()
    return Normal(log_mu.exp(), std, normal_mu=scale)


@register_likelihood("zin", is_count=False, params=("loc", "std", "zi_logits"))
def _zin(loc, std, zi_logits, **_):
    return ZeroInflatedNormal(loc, std, zi_logits)


@register_likelihood("ziln", is_count=False, params=("loc", "std", "zi_logits"), value_range=(0.0, float("inf")))
def _ziln(loc, std, zi_logits, **_):
    return ZeroInflatedLogNormal(loc, std, zi_logits)


@register_likelihood("gaussian", is_count=False, params=("loc", "std"))
def _gaussian(loc, std, **_):
    return Normal(loc, std)


@register_likelihood("bernoulli", is_count=False, params=("loc",), value_range=(0.0, float("inf")))
def _bernoulli(loc, **_):
    return BinarizedBernoulli(loc)


@register_likelihood("beta", is_count=False, params=("loc", "log_phi"), value_range=(0.0, 1.0))
def _beta(loc, log_phi, **_):
    return MeanBeta(loc, log_phi)


@register_likelihood("nb_mixture", is_count=True, params=("log_mu", "theta", "log_mu_bg", "mix_logits"))
def _nb_mixture(log_mu, theta, log_mu_bg, mix_logits, **_):
    return NegativeBinomialMixture(log_mu, log_mu_bg, theta, mix_logits)
