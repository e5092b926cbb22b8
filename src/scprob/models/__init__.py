"""User-facing models."""

from .base import BaseModel
from .scvi import LDVAE, SCVI

__all__ = ["BaseModel", "LDVAE", "SCVI"]
