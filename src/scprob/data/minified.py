"""Minified AnnData: the cached posterior q(z|x) and observed library replace the counts.

The registry of a minified AnnData records where the cache lives (scvi-tools' names by
default): ``obsm[use_latent_qzm_key]`` / ``obsm[use_latent_qzv_key]`` hold the mean and
variance of q(z|x), ``obs["observed_lib_size"]`` the per-cell library.
"""

from __future__ import annotations

import numpy as np

MINIFIED_TYPE = "latent_posterior_parameters"
QZM_KEY, QZV_KEY, LIB_KEY = "X_latent_qzm", "X_latent_qzv", "observed_lib_size"


def minified_keys(registry: dict) -> dict[str, str]:
    return registry.get("minified_keys") or {"qzm": QZM_KEY, "qzv": QZV_KEY, "lib": LIB_KEY}


def cached_posterior(adata, registry: dict) -> dict[str, np.ndarray]:
    from ..data.keys import Keys

    keys = minified_keys(registry)
    for key in (keys["qzm"], keys["qzv"]):
        if key not in adata.obsm:
            raise ValueError(f"minified AnnData lacks adata.obsm[{key!r}]")
    if keys["lib"] not in adata.obs:
        raise ValueError(f"minified AnnData lacks adata.obs[{keys['lib']!r}]")
    return {
        Keys.QZM: np.asarray(adata.obsm[keys["qzm"]], dtype=np.float32),
        Keys.QZV: np.asarray(adata.obsm[keys["qzv"]], dtype=np.float32),
        Keys.OBSERVED_LIB_SIZE: adata.obs[keys["lib"]].to_numpy(dtype=np.float32)[:, None],
    }
