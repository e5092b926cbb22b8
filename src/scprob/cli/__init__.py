"""Command line: ``scprob demo`` and ``scprob fit``."""

from .main import main

__all__ = ["main"]
