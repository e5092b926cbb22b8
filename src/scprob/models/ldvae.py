"""LDVAE: scVI with a linear decoder (scvi-tools' ``LinearSCVI`` calling convention)."""

from __future__ import annotations

from typing import Literal

import pandas as pd

from ..modules import VAE
from .base import BaseModel
from .scvi import SCVI


class LDVAE(SCVI):
    """Linearly decoded VAE (Svensson et al. 2020): scVI with a linear decoder whose
    weights (``get_loadings``) tie each latent factor to genes.  It is the VAE module
    built with ``decoder_type="linear"``."""

    def __init__(
        self,
        adata=None,
        n_hidden: int = 128,
        n_latent: int = 10,
        n_layers_encoder: int = 1,
        dropout_rate: float = 0.1,
        dispersion: Literal["gene", "gene-batch", "gene-label", "gene-cell"] = "gene",
        gene_likelihood: str = "nb",
        use_batch_norm: bool = True,
        bias: bool = False,
        latent_distribution: Literal["normal", "ln"] = "normal",
        use_observed_lib_size: bool = False,
        **module_kwargs,
    ):
        BaseModel.__init__(self, adata)
        self.init_params = dict(
            n_hidden=n_hidden, n_latent=n_latent, n_layers_encoder=n_layers_encoder, dropout_rate=dropout_rate,
            dispersion=dispersion, gene_likelihood=gene_likelihood, use_batch_norm=use_batch_norm, bias=bias,
            latent_distribution=latent_distribution, use_observed_lib_size=use_observed_lib_size, **module_kwargs,
        )
        self.module = self._build_from_registry() if adata is not None else None

    def _build_from_registry(self) -> VAE:
        p = dict(self.init_params)
        p.setdefault("use_layer_norm", "none")
        n_layers, use_bn, bias = p.pop("n_layers_encoder"), p.pop("use_batch_norm"), p.pop("bias")
        self.module = self._build_module(
            n_layers=n_layers, use_batch_norm="both" if use_bn else "encoder", decoder_type="linear",
            linear_decoder_bias=bias, **p,
        )
        return self.module

    def get_loadings(self) -> pd.DataFrame:
        """Genes x latent loadings of the linear decoder (batch-norm folded in)."""
        w = self.module.get_loadings()
        return pd.DataFrame(w, index=self.registry["var_names"], columns=[f"Z_{i}" for i in range(w.shape[1])])
