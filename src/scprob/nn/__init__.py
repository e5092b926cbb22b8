"""Neural-network building blocks shared by the modules."""

from .fc import CovariateLinear, DecoderSCVI, Encoder, FCLayers, LinearDecoderSCVI
from .graph import GraphDecoder, GraphEncoder
from .prob_models import (
    DataDecoder,
    DataEncoder,
    LikelihoodDataDecoder,
    available_prob_models,
    get_prob_model,
    register_prob_model,
)

__all__ = [
    "DataDecoder",
    "DataEncoder",
    "GraphDecoder",
    "GraphEncoder",
    "LikelihoodDataDecoder",
    "available_prob_models",
    "get_prob_model",
    "register_prob_model",
   "CovariateLinear", "DecoderSCVI", "Encoder", "FCLayers", "LinearDecoderSCVI"]
