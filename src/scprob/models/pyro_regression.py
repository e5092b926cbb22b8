"""PyroRegression: per-gene Bayesian regression of log expression on a continuous
covariate, fitted by SVI with an automatic guide (math in
:mod:`scprob.modules.pyro_regression`)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ..data import DataError
from ..data.registry import check_same_genes, setup_anndata
from ..data.validate import get_matrix, iter_row_chunks
from ..modules.pyro_regression import PyroRegressionModule
from ..train import PyroTrainingPlan
from .base import BaseModel


def _column_moments(X, n_obs: int) -> tuple[np.ndarray, np.ndarray, str | None]:
    """Per-gene mean and sd of a (dense, sparse or backed) matrix in row chunks, and the
    first non-finite entry as 'cell index, gene index' (None if all finite)."""
    s = s2 = None
    for start, block in iter_row_chunks(X):
        b = np.asarray(block.toarray() if hasattr(block, "toarray") else block, dtype=np.float64)
        bad = np.argwhere(~np.isfinite(b))
        if bad.size:
            return np.empty(0), np.empty(0), (start + int(bad[0, 0]), int(bad[0, 1]))
        s = b.sum(0) if s is None else s + b.sum(0)
        s2 = (b * b).sum(0) if s2 is None else s2 + (b * b).sum(0)
    mean = s / n_obs
    return mean, np.sqrt(np.maximum(s2 / n_obs - mean * mean, 0.0)), None


class PyroRegression(BaseModel):
    """Bayesian regression of each gene's log expression on one continuous covariate.

    >>> adata.layers["log"] = np.log1p(1e4 * X / X.sum(1))        # any log expression
    >>> PyroRegression.setup_anndata(adata, covariate_key="time", layer="log")
    >>> model = PyroRegression(adata)                             # guide="AutoNormal"
    >>> model.train()
    >>> model.get_coefficients(credible_level=0.9)               # one row per gene

    The response is the registered matrix as it is (no transformation).  Training
    defaults differ from the autoencoders': Adam with lr 1e-2, eps 1e-8 and no weight
    decay (weight decay would shrink the guide's scales, i.e. the credible intervals).
    """

    _plan_cls = PyroTrainingPlan

    def __init__(
        self,
        adata,
        guide: str = "AutoNormal",
        intercept_prior_scale: float = 10.0,
        slope_prior_scale: float = 1.0,
        noise_prior_scale: float = 1.0,
    ):
        super().__init__(adata)
        reg = self.registry
        args = reg["setup_args"]
        if len(args["continuous_covariate_keys"]) != 1:
            raise DataError("PyroRegression needs exactly one covariate: PyroRegression.setup_anndata(adata, covariate_key=...)")
        key = args["continuous_covariate_keys"][0]
        t = adata.obs[key].to_numpy(dtype=np.float64)
        mean, sd, bad = _column_moments(get_matrix(adata, args["layer"]), adata.n_obs)
        if bad is not None:
            where = f"adata.layers[{args['layer']!r}]" if args["layer"] else "adata.X"
            raise DataError(f"{where} has a non-finite value at cell {adata.obs_names[bad[0]]!r}, gene {adata.var_names[bad[1]]!r}")
        self.init_params = dict(guide=guide, intercept_prior_scale=intercept_prior_scale,
                                slope_prior_scale=slope_prior_scale, noise_prior_scale=noise_prior_scale)
        self.module = PyroRegressionModule(
            n_genes=reg["n_vars"], n_obs=reg["n_obs"], covariate_mean=float(t.mean()), covariate_sd=float(t.std()),
            y_mean=torch.as_tensor(mean), y_sd=torch.as_tensor(sd), **self.init_params,
        )
        self._plan_defaults = dict(lr=1e-2, eps=1e-8, weight_decay=0.0)

    @classmethod
    def setup_anndata(cls, adata, covariate_key: str, layer: str | None = None) -> None:
        """Register the response (``layer`` or X: log expression, any real values) and the
        covariate ``adata.obs[covariate_key]`` (numeric, no NaN)."""
        if not covariate_key:
            raise DataError("covariate_key is required: the adata.obs column to regress on")
        setup_anndata(adata, layer=layer, continuous_covariate_keys=[covariate_key], model_name=cls.__name__, count_data=False)

    @classmethod
    def _setup_loaded(cls, adata, registry: dict) -> None:
        check_same_genes(adata, registry)
        args = registry["setup_args"]
        cls.setup_anndata(adata, args["continuous_covariate_keys"][0], layer=args["layer"])

    def get_latent_representation(self, *args, **kwargs):
        raise TypeError("PyroRegression has no latent representation: use get_coefficients()")

    @torch.no_grad()
    def get_coefficients(self, credible_level: float = 0.9, n_samples: int = 2000, seed: int = 0) -> pd.DataFrame:
        """Posterior summaries per gene from ``n_samples`` draws of the guide: for
        ``slope`` (per unit of the covariate), ``intercept`` (log expression at the mean
        covariate) and ``sigma`` (residual sd), the mean, sd and the central
        ``credible_level`` interval (``*_lower``, ``*_upper``); plus ``prob_slope_positive``."""
        self._check_trained()
        if not 0 < credible_level < 1:
            raise ValueError(f"credible_level must be in (0, 1), got {credible_level}")
        if n_samples < 2:
            raise ValueError("n_samples must be >= 2")
        torch.manual_seed(seed)
        self.module.eval()
        draws = {k: v.cpu().double() for k, v in self.module.sample_posterior(int(n_samples)).items()}
        lo, hi = (1 - credible_level) / 2, (1 + credible_level) / 2
        cols = {}
        for site in ("slope", "intercept", "sigma"):
            d = draws[site]
            q = torch.quantile(d, torch.tensor([lo, hi], dtype=d.dtype), dim=0)
            cols |= {f"{site}_mean": d.mean(0), f"{site}_sd": d.std(0), f"{site}_lower": q[0], f"{site}_upper": q[1]}
        cols["prob_slope_positive"] = (draws["slope"] > 0).double().mean(0)
        df = pd.DataFrame({k: v.numpy() for k, v in cols.items()}, index=pd.Index(self.registry["var_names"], name="gene"))
        df.attrs["credible_level"] = credible_level
        return df
