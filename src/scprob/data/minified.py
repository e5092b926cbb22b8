"""Minified AnnData: the cached posterior q(z|x) and observed library replace the counts."""

from __future__ import annotations

import numpy as np

QZM_KEY, QZV_KEY, LIB_KEY = "_scprob_qzm", "_scprob_qzv", "_scprob_observed_lib_size"


def cached_posterior(adata) -> dict[str, np.ndarray]:
    from ..data.keys import Keys

    for key in (QZM_KEY, QZV_KEY):
        if key not in adata.obsm:
            raise ValueError(f"minified AnnData lacks adata.obsm[{key!r}]")
    return {
        Keys.QZM: np.asarray(adata.obsm[QZM_KEY], dtype=np.float32),
        Keys.QZV: np.asarray(adata.obsm[QZV_KEY], dtype=np.float32),
        Keys.OBSERVED_LIB_SIZE: adata.obs[LIB_KEY].to_numpy(dtype=np.float32)[:, None],
    }
