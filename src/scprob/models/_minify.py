"""Minified mode: keep q(z|x) and the observed library instead of the counts."""

from __future__ import annotations

import json

import numpy as np
import scipy.sparse as sp
import torch

from ..data.minified import LIB_KEY, QZM_KEY, QZV_KEY
from ..data.registry import UNS_KEY, get_registry
from ..data.validate import get_matrix, row_totals


def minify(model) -> None:
    module = model.module
    if not module.use_observed_lib_size or module.use_size_factor_key:
        raise ValueError("minified mode needs the observed library size (use_observed_lib_size=True, no size factor)")
    adata = model.adata
    reg = get_registry(adata)
    if reg.get("minified"):
        return
    qzm, qzv = [], []
    with torch.inference_mode():
        for t in model._batches(adata):
            qz = module.inference(**module._get_inference_input(t))["qz"]
            qzm.append(qz.loc.cpu())
            qzv.append(qz.scale.pow(2).cpu())
    layer = reg["setup_args"]["layer"]
    lib = row_totals(get_matrix(adata, layer))
    adata.obsm[QZM_KEY] = torch.cat(qzm).numpy()
    adata.obsm[QZV_KEY] = torch.cat(qzv).numpy()
    adata.obs[LIB_KEY] = lib.astype(np.float32)
    empty = sp.csr_matrix(adata.shape, dtype=np.float32)
    if layer is None:
        adata.X = empty
    else:
        adata.layers[layer] = empty
    reg["minified"] = True
    adata.uns[UNS_KEY] = json.dumps(reg)
    model.registry = reg
    model._stores.clear()
