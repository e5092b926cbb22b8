import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from scprob.data.hvg import highly_variable_genes


def test_hvg_finds_overdispersed_genes():
    rng = np.random.default_rng(0)
    n, g = 400, 200
    mean = rng.gamma(2.0, 1.0, g) + 0.5
    x = rng.poisson(np.broadcast_to(mean, (n, g))).astype(np.float32)  # Poisson: no extra variance
    hv = np.arange(10)
    x[:, hv] = rng.poisson(rng.gamma(0.3, mean[hv] / 0.3, (n, 10)))  # strongly over-dispersed
    obs = pd.DataFrame({"b": np.repeat(["x", "y"], n // 2)}, index=[f"c{i}" for i in range(n)])
    for X in (x, sp.csr_matrix(x)):
        a = ad.AnnData(X, obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(g)]))
        mask = highly_variable_genes(a, n_top_genes=10, batch_key="b")
        assert mask.sum() == 10 and set(np.flatnonzero(mask)) == set(hv)
        assert a.var["highly_variable"].sum() == 10
