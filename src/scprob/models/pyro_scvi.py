"""PyroSCVI: scVI written in Pyro (see :mod:`scprob.modules.pyro_scvi` for the math),
with the scvi-tools calling convention of :class:`~scprob.models.SCVI`."""

from __future__ import annotations

from typing import Literal

import pandas as pd
import torch

from ..data.validate import check_counts_for_likelihood
from ..modules.pyro_scvi import PyroVAE
from ..train import PyroTrainingPlan
from .base import BaseModel
from .scvi import SCVI


class PyroSCVI(BaseModel):
    """scVI (NB likelihood, observed library, batch in the decoder) as a Pyro model and
    guide, trained by stochastic variational inference.

    >>> PyroSCVI.setup_anndata(adata, batch_key="batch")
    >>> model = PyroSCVI(adata)                      # global_guide="AutoNormal": theta ~ prior
    >>> model.train()                                # same arguments as SCVI.train
    >>> adata.obsm["X_pyroscvi"] = model.get_latent_representation()

    ``train(plan_kwargs=...)`` reaches :class:`~scprob.train.PyroTrainingPlan`: ``loss_fn``
    chooses the ELBO (``"TraceMeanField_ELBO"``, ``pyro.infer.TraceGraph_ELBO()``, ...;
    ``Trace_ELBO`` by default), plus lr, weight decay, KL warm-up (400 epochs by default,
    as for SCVI).  The model's Pyro parameters live in its own param store
    (:meth:`~scprob.modules.PyroBaseModule.param_scope`): several PyroSCVI (or other Pyro)
    models coexist in one process.
    """

    _plan_cls = PyroTrainingPlan

    def __init__(
        self,
        adata,
        n_hidden: int = 128,
        n_latent: int = 10,
        n_layers: int = 1,
        dropout_rate: float = 0.1,
        global_guide: Literal["AutoNormal", "AutoDelta"] | None = None,
        dispersion_prior: tuple[float, float] = (0.0, 3.0),
    ):
        super().__init__(adata)
        reg = self.registry
        check_counts_for_likelihood(reg, "nb", True)
        self.init_params = dict(
            n_hidden=n_hidden, n_latent=n_latent, n_layers=n_layers, dropout_rate=dropout_rate,
            global_guide=global_guide, dispersion_prior=tuple(dispersion_prior),
        )
        self.module = PyroVAE(
            n_input=reg["n_vars"], n_batch=len(reg["batch_categories"]), n_obs=reg["n_obs"], **self.init_params
        )
        self._plan_defaults = dict(n_epochs_kl_warmup=400)

    @classmethod
    def setup_anndata(cls, adata, layer: str | None = None, batch_key: str | None = None, labels_key: str | None = None) -> None:
        """Register raw counts (``layer`` or X) and the batch (``batch_key``, modelled in the
        decoder); ``labels_key`` is recorded only (PyroSCVI is unsupervised)."""
        super().setup_anndata(adata, layer=layer, batch_key=batch_key, labels_key=labels_key)

    # SCVI's decoding API needs only the module's inference/generative contract
    # (``px_scale`` and the log ``library``), which PyroVAE keeps.
    get_normalized_expression = SCVI.get_normalized_expression
    _batch_codes = SCVI._batch_codes
    _gene_mask = SCVI._gene_mask

    @torch.inference_mode()
    def get_dispersion(self) -> pd.Series:
        """theta per gene: the fitted point value, or the posterior median of the global
        guide when theta is a latent (``global_guide``)."""
        self._check_trained()
        return pd.Series(self.module.dispersion().cpu().numpy(), index=self.registry["var_names"], name="theta")
