"""User-facing models.

The Pyro-backed models are imported on first use (``scprob.models.PyroSCVI``), so that
``import scprob`` does not import Pyro for the PyTorch models."""

from importlib import import_module

from .base import BaseModel
from .glue import GLUE
from .ldvae import LDVAE
from .scvi import SCVI
from .scyan import Scyan

_LAZY = {"PyroRegression": ".pyro_regression", "PyroSCVI": ".pyro_scvi"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["BaseModel", "GLUE", "LDVAE", "PyroRegression", "PyroSCVI", "SCVI", "Scyan"]
