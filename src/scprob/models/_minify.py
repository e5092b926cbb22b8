"""Minified mode: keep q(z|x) and the observed library instead of the counts.

The model minifies its *own* AnnData: by default a new object that shares obs/var/obsm
with the user's but has an empty X and no layers, so the user's counts are never
touched; ``inplace=True`` drops the counts of the model's AnnData object itself.
"""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import scipy.sparse as sp

from ..data.minified import LIB_KEY, MINIFIED_TYPE
from ..data.registry import UNS_KEY, get_registry
from ..data.validate import get_matrix, row_totals


def minify(model, minified_data_type: str, qzm_key: str, qzv_key: str, inplace: bool) -> None:
    if minified_data_type != MINIFIED_TYPE:
        raise ValueError(f"minified_data_type must be {MINIFIED_TYPE!r}, got {minified_data_type!r}")
    module = model.module
    if not module.use_observed_lib_size or module.use_size_factor_key:
        raise ValueError("minified mode needs the observed library size (use_observed_lib_size=True, no size factor)")
    src = model.adata
    reg = get_registry(src)
    if reg.get("minified"):
        return
    # scvi-tools reads the posterior the user stored under these keys; compute it if absent
    if qzm_key in src.obsm and qzv_key in src.obsm:
        qzm, qzv = np.asarray(src.obsm[qzm_key]), np.asarray(src.obsm[qzv_key])
        if qzm.shape != (src.n_obs, module.n_latent) or qzv.shape != qzm.shape:
            raise ValueError(
                f"adata.obsm[{qzm_key!r}] / [{qzv_key!r}] must be ({src.n_obs}, {module.n_latent}) arrays of the "
                "posterior mean / variance (model.get_latent_representation(return_dist=True))"
            )
    else:
        qzm, qzv = model.get_latent_representation(return_dist=True)
    layer = reg["setup_args"]["layer"]
    lib = row_totals(get_matrix(src, layer)).astype(np.float32)
    empty = sp.csr_matrix(src.shape, dtype=np.float32)
    if inplace:
        dst = src
        if layer is None:
            dst.X = empty
        else:
            dst.layers[layer] = empty
    else:
        dst = ad.AnnData(
            X=empty, obs=src.obs.copy(), var=src.var.copy(), uns=dict(src.uns),
            obsm={k: v for k, v in src.obsm.items()}, obsp=dict(src.obsp),
        )
        if layer is not None:
            dst.layers[layer] = empty
    dst.obsm[qzm_key], dst.obsm[qzv_key] = qzm, qzv
    dst.obs[LIB_KEY] = lib
    reg = dict(reg, minified=True, minified_type=minified_data_type,
               minified_keys={"qzm": qzm_key, "qzv": qzv_key, "lib": LIB_KEY})
    dst.uns[UNS_KEY] = json.dumps(reg)
    model._adata = dst  # not the validating setter: dst is registered just above
    model.registry = reg
    model._stores.clear()
