import anndata as ad
import numpy as np

import scprob
from scprob.data import get_registry
from scprob.data.backed import BackedStore, ChunkedLoader
from scprob.models import SCVI

from .conftest import make_counts


def test_chunked_loader_covers_each_cell_once(tmp_path):
    a = make_counts(n_cells=300, n_genes=20)
    a.write_h5ad(tmp_path / "a.h5ad")
    b = ad.read_h5ad(tmp_path / "a.h5ad", backed="r")
    SCVI.setup_anndata(b, batch_key="batch")
    store = BackedStore(b, get_registry(b))
    idx = np.arange(0, 300, 2)
    loader = ChunkedLoader(store, idx, batch_size=16, shuffle=True, seed=1, chunk_size=64)
    seen = []
    dense = a.X.toarray()
    for batch in loader:
        rows = batch["ind_x"].numpy()
        np.testing.assert_array_equal(batch["X"].numpy(), dense[rows])
        seen.extend(rows)
    assert sorted(seen) == list(idx) and len(list(loader)) == len(loader)
    # random access
    got = store[__import__("torch").tensor([5, 2, 5])]
    np.testing.assert_array_equal(got["X"].numpy(), dense[[5, 2, 5]])


def test_backed_training_matches_in_memory(tmp_path):
    a = make_counts(n_cells=400, n_genes=30)
    a.write_h5ad(tmp_path / "a.h5ad")
    results = {}
    for mode in ("memory", "backed"):
        scprob.settings.seed = 0
        data = ad.read_h5ad(tmp_path / "a.h5ad", backed="r" if mode == "backed" else None)
        SCVI.setup_anndata(data, batch_key="batch")
        m = SCVI(data, n_hidden=32, n_latent=4)
        m.train(max_epochs=40, batch_size=32, enable_progress_bar=False)
        results[mode] = (m.history["elbo_validation"].iloc[-1, 0], m.get_latent_representation(),
                         m.get_elbo())
    em, eb = results["memory"][0], results["backed"][0]
    assert abs(em - eb) / abs(em) < 0.03, (em, eb)
    assert abs(results["memory"][2] - results["backed"][2]) / abs(results["memory"][2]) < 0.03
    from scprob.metrics import knn_label_transfer

    lab, bat = a.obs["cell_type"], a.obs["batch"]
    accs = [knn_label_transfer(results[k][1], lab, bat) for k in ("memory", "backed")]
    assert min(accs) > 0.8 and abs(accs[0] - accs[1]) < 0.1
