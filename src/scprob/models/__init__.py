"""User-facing models."""

from .base import BaseModel
from .glue import GLUE
from .ldvae import LDVAE
from .pyro_regression import PyroRegression
from .pyro_scvi import PyroSCVI
from .scvi import SCVI
from .scyan import Scyan

__all__ = ["BaseModel", "GLUE", "LDVAE", "PyroRegression", "PyroSCVI", "SCVI", "Scyan"]
