"""The tiny data and option sets of the scvi-tools fixtures (shared by the generator,
run in the peer environment, and by tests/test_scvi_tools_load.py)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd

# name -> (scvi-tools model class, setup_anndata kwargs, model kwargs, save_anndata)
FIXTURES: dict[str, tuple[str, dict, dict, bool]] = {
    "scvi_covs": (
        "SCVI",
        dict(batch_key="batch", categorical_covariate_keys=["donor"], continuous_covariate_keys=["cont"]),
        dict(n_hidden=8, n_latent=3, n_layers=2, dispersion="gene-batch", use_observed_lib_size=False,
             encode_covariates=True),
        True,
    ),
    "linear_nb": ("LinearSCVI", dict(batch_key="batch"), dict(n_hidden=8, n_latent=2), False),
}


def fixture_adata() -> ad.AnnData:
    """40 cells x 12 genes of Poisson-gamma counts; obs ``batch`` (a, b), ``donor`` (x, y,
    z) and ``cont`` (normal)."""
    rng = np.random.default_rng(0)
    n, g = 40, 12
    mu = rng.gamma(2.0, 2.0, g) * rng.lognormal(0, 0.3, (n, 1))
    counts = rng.poisson(rng.gamma(4.0, mu / 4.0)).astype(np.float32)
    counts[counts.sum(1) == 0, 0] = 1
    obs = pd.DataFrame(
        {
            "batch": np.array(["a", "b"])[rng.integers(0, 2, n)],
            "donor": np.array(["x", "y", "z"])[rng.integers(0, 3, n)],
            "cont": rng.normal(size=n),
        },
        index=[f"cell{i}" for i in range(n)],
    )
    return ad.AnnData(X=counts, obs=obs, var=pd.DataFrame(index=[f"gene{i}" for i in range(g)]))
