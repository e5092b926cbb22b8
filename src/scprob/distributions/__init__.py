"""Likelihoods (NB, ZINB, Poisson, Normal, ZIN, ZILN, Bernoulli, Beta, NB mixture), latent
distributions and the likelihood registry."""

from ._count import (
    NegativeBinomial,
    Normal,
    Poisson,
    ZeroInflatedNegativeBinomial,
    log_nb,
    log_nb_logits,
    log_poisson,
    log_zinb_logits,
)
from ._latent import LATENT_DISTRIBUTIONS, LogisticNormal, kl_std_normal, kl_std_normal_rows, latent_transform
from ._more import BinarizedBernoulli, MeanBeta, NegativeBinomialMixture, ZeroInflatedLogNormal, ZeroInflatedNormal
from .registry import available_likelihoods, get_likelihood, register_likelihood

__all__ = [
    "BinarizedBernoulli",
    "MeanBeta",
    "NegativeBinomialMixture",
    "ZeroInflatedLogNormal",
    "ZeroInflatedNormal",
    "LATENT_DISTRIBUTIONS",
    "LogisticNormal",
    "NegativeBinomial",
    "Normal",
    "Poisson",
    "ZeroInflatedNegativeBinomial",
    "available_likelihoods",
    "get_likelihood",
    "kl_std_normal",
    "kl_std_normal_rows",
    "latent_transform",
    "log_nb",
    "log_nb_logits",
    "log_poisson",
    "log_zinb_logits",
    "register_likelihood",
]
