"""Modules: the math of each model (tensors in, LossOutput out)."""

from .base import BaseModule, LossOutput, PyroBaseModule
from .vae import VAE

__all__ = ["BaseModule", "LossOutput", "PyroBaseModule", "VAE"]
