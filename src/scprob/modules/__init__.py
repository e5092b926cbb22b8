"""Modules: the math of each model (tensors in, LossOutput out)."""

from .base import BaseModule, LossOutput, PyroBaseModule
from .scyan import ScyanModule
from .vae import VAE

__all__ = ["BaseModule", "LossOutput", "PyroBaseModule", "ScyanModule", "VAE"]
