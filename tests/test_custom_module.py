"""The seed tutorial's simple scVI, written against the module API in examples/, trains
with scprob's trainer in both backends."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from scprob.metrics import knn_label_transfer

from .conftest import make_counts

spec = importlib.util.spec_from_file_location("simple_scvi", Path(__file__).parents[1] / "examples" / "simple_scvi.py")
simple = importlib.util.module_from_spec(spec)
spec.loader.exec_module(simple)


def test_example_is_short():
    src = Path(simple.__file__).read_text()
    body = src[src.index("class MyModule"):src.index("class MyPyroModule")]
    assert len(body.strip().splitlines()) <= 60


@pytest.mark.parametrize("backend", ["torch", "pyro"])
def test_custom_module_trains(backend, tmp_path):
    adata = make_counts(n_cells=150, n_genes=40)
    simple.MyModel.setup_anndata(adata, batch_key="batch")
    model = simple.MyModel(adata, n_latent=4, backend=backend)
    model.train(max_epochs=40, batch_size=32, enable_progress_bar=False)
    elbo = model.history["elbo_train"].iloc[:, 0].to_numpy()
    assert elbo[-1] < elbo[0]
    z = model.get_latent_representation()
    assert z.shape == (150, 4) and np.isfinite(z).all()
    assert knn_label_transfer(z, adata.obs["cell_type"], adata.obs["batch"]) > 0.6
    model.save(tmp_path / "m")
    again = simple.MyModel.load(tmp_path / "m", make_counts(n_cells=150, n_genes=40))
    np.testing.assert_allclose(again.get_latent_representation(), z, rtol=1e-5)
