"""Modules: the math of each model (tensors in, LossOutput out).

The Pyro-backed modules are imported on first use (``scprob.modules.PyroVAE``), so that
``import scprob`` does not import Pyro (~0.1 s, ~6 MB) for the PyTorch models."""

from importlib import import_module

from .base import BaseModule, LossOutput, PyroBaseModule
from .glue import GLUEModule
from .scyan import ScyanModule
from .vae import VAE

_LAZY = {"PyroRegressionModule": ".pyro_regression", "NegativeBinomialRows": ".pyro_scvi", "PyroVAE": ".pyro_scvi"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["GLUEModule", "BaseModule", "LossOutput", "NegativeBinomialRows", "PyroBaseModule", "PyroRegressionModule", "PyroVAE", "ScyanModule", "VAE"]
