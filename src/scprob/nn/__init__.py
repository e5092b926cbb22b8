"""Neural-network building blocks shared by the modules."""

from .fc import CovariateLinear, DecoderSCVI, Encoder, FCLayers, LinearDecoderSCVI

__all__ = ["CovariateLinear", "DecoderSCVI", "Encoder", "FCLayers", "LinearDecoderSCVI"]
