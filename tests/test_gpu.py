"""On a CUDA device (skipped elsewhere): every model trains there, and a training step
never makes the host wait for the device (issue 9: syncs do not grow with the steps)."""

import warnings

import numpy as np
import pytest
import torch

import scprob
from scprob.models import SCVI

from .conftest import make_counts

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _syncs_while(fn) -> int:
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fn()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


@pytest.mark.parametrize("likelihood", ["zinb", "nb", "poisson"])
def test_scvi_step_does_not_wait_for_the_device(likelihood):
    scprob.settings.seed = 0
    counts = {}
    for n_cells in (64, 256):  # 2 vs 8 steps per epoch
        a = make_counts(n_cells=n_cells, n_genes=20)
        SCVI.setup_anndata(a, batch_key="batch")
        m = SCVI(a, n_hidden=16, n_latent=4, gene_likelihood=likelihood)
        counts[n_cells] = _syncs_while(lambda m=m: m.train(max_epochs=2, batch_size=32, accelerator="gpu",
                                                             train_size=1.0, enable_progress_bar=False))
        assert next(m.module.parameters()).device.type == "cuda"
    # 12 more steps may add no waits (per-epoch reads are the same in both runs)
    assert counts[256] - counts[64] < 2, counts


def test_scvi_on_gpu_matches_cpu_values():
    scprob.settings.seed = 0
    a = make_counts(n_cells=60, n_genes=15)
    SCVI.setup_anndata(a)
    m = SCVI(a, n_hidden=8, n_latent=3)
    m.train(max_epochs=3, batch_size=20, accelerator="gpu", enable_progress_bar=False)
    z_gpu = m.get_latent_representation()
    m.to_device("cpu")
    np.testing.assert_allclose(m.get_latent_representation(), z_gpu, rtol=1e-4, atol=1e-4)


def test_glue_step_does_not_wait_for_the_device():
    from scprob.models import GLUE

    from .test_glue import SMALL, configured

    counts = {}
    for n_cells in (64, 256):  # 1 vs 4 steps per epoch at batch 64
        rna, atac, edges = configured(n_cells=n_cells)
        glue = GLUE({"rna": rna, "atac": atac}, edges, **SMALL)
        counts[n_cells] = _syncs_while(lambda g=glue: g.train(max_epochs=3, balance=False, early_stopping=False, batch_size=64,
                                                             train_size=1.0, accelerator="gpu", enable_progress_bar=False, seed=0))
        z = glue.encode_data("rna", rna)
        assert np.isfinite(z).all() and next(glue.module.parameters()).device.type == "cuda"
    assert counts[256] - counts[64] < 3, counts  # 9 more steps, fewer than one wait per three
