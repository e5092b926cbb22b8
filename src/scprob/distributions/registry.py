"""The likelihood registry: options are data, not subclasses.

A likelihood is registered under a name with a builder that maps the decoder's outputs
to a ``torch.distributions.Distribution``.  Builders take keyword arguments

    log_mu     log of the mean (library * normalized expression)
    theta      inverse dispersion (ignored where the family has none)
    zi_logits  dropout logits (ZINB only)
    scale      normalized expression (rows sum to 1 under a softmax decoder)

and return a distribution with ``log_prob``, ``sample``, ``mean`` and ``variance``.
Other models (GLUE data decoders) register their own families here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ._count import NegativeBinomial, Normal, Poisson, ZeroInflatedNegativeBinomial

_LIKELIHOODS: dict[str, dict] = {}


def register_likelihood(
    name: str, *, is_count: bool, needs_dispersion: bool, needs_dropout: bool = False
) -> Callable:
    """Decorator registering ``builder`` as likelihood ``name``.

    ``is_count`` says whether the data must be non-negative integers (checked at setup);
    ``needs_dispersion`` / ``needs_dropout`` say which decoder heads a model must build.
    """

    def deco(builder: Callable[..., torch.distributions.Distribution]):
        _LIKELIHOODS[name] = dict(
            builder=builder, is_count=is_count, needs_dispersion=needs_dispersion, needs_dropout=needs_dropout
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
def _nb(log_mu, theta, scale=None, **_):
    return NegativeBinomial(log_mu=log_mu, theta=theta, scale=scale)


@register_likelihood("zinb", is_count=True, needs_dispersion=True, needs_dropout=True)
def _zinb(log_mu, theta, zi_logits, scale=None, **_):
    return ZeroInflatedNegativeBinomial(log_mu=log_mu, theta=theta, zi_logits=zi_logits, scale=scale)


@register_likelihood("poisson", is_count=True, needs_dispersion=False)
def _poisson(log_mu, scale=None, **_):
    return Poisson(rate=log_mu.exp(), scale=scale)


@register_likelihood("normal", is_count=False, needs_dispersion=True)
def _normal(log_mu, theta, scale=None, **_):
    # theta plays the role of the per-gene variance here (as in scVI's "normal").
    return Normal(log_mu.exp(), theta.sqrt(), normal_mu=scale)
