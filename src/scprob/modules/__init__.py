"""Modules: the math of each model (tensors in, LossOutput out)."""

from .base import BaseModule, LossOutput, PyroBaseModule
from .glue import GLUEModule
from .scyan import ScyanModule
from .vae import VAE

__all__ = ["GLUEModule", "BaseModule", "LossOutput", "PyroBaseModule", "ScyanModule", "VAE"]
