"""User-facing models."""

from .base import BaseModel
from .glue import GLUE
from .scvi import LDVAE, SCVI
from .scyan import Scyan

__all__ = ["BaseModel", "GLUE", "LDVAE", "SCVI", "Scyan"]
