"""Command line: ``scprob demo``, ``scprob fit``, ``scprob annotate`` and ``scprob integrate``."""

from .main import main

__all__ = ["main"]
