"""scprob: deep probabilistic models of single-cell omics under one module API."""

from importlib.metadata import PackageNotFoundError, version

from . import data, distributions, models, modules, nn, train
from ._settings import settings
from .data.fcs import read_fcs, write_fcs
from .nn.prob_models import register_prob_model

try:
    __version__ = version("scprob")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0"

__all__ = ["data", "distributions", "models", "modules", "nn", "read_fcs", "register_prob_model", "settings", "train", "write_fcs", "__version__"]
