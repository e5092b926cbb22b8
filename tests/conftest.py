import os

os.environ.setdefault("SCPROB_NUM_THREADS", "2")

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import scprob


def make_counts(n_cells=80, n_genes=40, n_batches=2, n_labels=3, seed=0, sparse=True, de_genes=0):
    """NB counts with label-specific programmes and a batch-specific gene scaling."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_labels, n_cells)
    batches = rng.integers(0, n_batches, n_cells)
    base = rng.gamma(2.0, 0.5, n_genes)
    prog = rng.gamma(1.0, 1.0, (n_labels, n_genes))
    batch_eff = rng.lognormal(0, 0.3, (n_batches, n_genes))
    mu = base * prog[labels] * batch_eff[batches] * rng.lognormal(1.5, 0.3, (n_cells, 1))
    theta = 5.0
    counts = rng.poisson(rng.gamma(theta, mu / theta)).astype(np.float32)
    counts[counts.sum(1) == 0, 0] = 1
    obs = pd.DataFrame(
        {
            "batch": pd.Categorical([f"b{b}" for b in batches]),
            "cell_type": pd.Categorical([f"t{l}" for l in labels]),
            "cont1": rng.normal(size=n_cells),
            "cat1": pd.Categorical(rng.choice(["x", "y", "z"], n_cells)),
            "sf": counts.sum(1) / counts.sum(1).mean(),
        },
        index=[f"cell{i}" for i in range(n_cells)],
    )
    var = pd.DataFrame(index=[f"gene{i}" for i in range(n_genes)])
    X = sp.csr_matrix(counts) if sparse else counts
    return ad.AnnData(X=X, obs=obs, var=var)


@pytest.fixture(scope="module")
def one_thread_module():
    """scprob on one thread for a test module, restored after it.  The tiny layers of the
    tests gain nothing from a second thread, and with 2 OpenMP threads on 2 cores shared
    with another job every op waits on a busy core (measured: ~45 s vs ~2.5 s for a small
    GLUE fit, identical results)."""
    old = scprob.settings._num_threads
    scprob.settings.num_threads = 1
    yield
    scprob.settings.num_threads = old


@pytest.fixture
def adata():
    return make_counts()


@pytest.fixture(autouse=True)
def _seed():
    scprob.settings.seed = 0
    yield
