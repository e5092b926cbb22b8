"""User-facing models."""

from .base import BaseModel
from .scvi import LDVAE, SCVI
from .scyan import Scyan

__all__ = ["BaseModel", "LDVAE", "SCVI", "Scyan"]
