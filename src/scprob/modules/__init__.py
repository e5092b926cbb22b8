"""Modules: the math of each model (tensors in, LossOutput out)."""

from .base import BaseModule, LossOutput, PyroBaseModule
from .glue import GLUEModule
from .pyro_regression import PyroRegressionModule
from .pyro_scvi import NegativeBinomialRows, PyroVAE
from .scyan import ScyanModule
from .vae import VAE

__all__ = ["GLUEModule", "BaseModule", "LossOutput", "NegativeBinomialRows", "PyroBaseModule", "PyroRegressionModule", "PyroVAE", "ScyanModule", "VAE"]
