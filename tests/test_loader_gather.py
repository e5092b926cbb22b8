"""CSR minibatch densification: the numba kernel equals the tensor path."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from scprob.data.loader import CSRRows


def _csr(seed=0):
    rng = np.random.default_rng(seed)
    X = sp.random(50, 30, density=0.2, format="csr", random_state=seed, dtype=np.float32)
    X.data = rng.integers(1, 20, X.nnz).astype(np.float32)
    X[7] = 0  # an empty row
    X.eliminate_zeros()
    return X


def test_numba_gather_equals_tensor_path():
    X = _csr()
    fast, slow = CSRRows(X), CSRRows(X)
    slow._gather = None
    if fast._gather is None:
        pytest.skip("numba not installed")
    for idx in (torch.tensor([3, 7, 7, 0, 49]), torch.arange(50), torch.tensor([], dtype=torch.int64)):
        a, b = fast[idx], slow[idx]
        assert a.dtype == torch.float32 and torch.equal(a, b)
        np.testing.assert_array_equal(a.numpy(), X[idx.numpy()].toarray())


@pytest.mark.parametrize("path", ["numba", "tensor"])
def test_out_of_range_index_is_refused(path):
    r = CSRRows(_csr())
    if path == "tensor":
        r._gather = None
    with pytest.raises(IndexError):
        r[torch.tensor([0, 50])]
    with pytest.raises(IndexError):
        r[torch.tensor([-1])]


def test_tensor_gather_gives_the_nonzero_coordinates_and_the_loss_uses_them():
    import scprob
    from scprob.data.keys import Keys
    from scprob.distributions import _fused
    from scprob.models import SCVI

    from .conftest import make_counts

    X = _csr()
    X.data[::7] = 0.0  # explicitly stored zeros are not non-zeros
    r = CSRRows(X)
    r._gather = None  # the tensor path (a GPU's)
    idx = torch.tensor([5, 7, 1, 1, 30])
    dense, (rows, cols) = r.gather(idx, with_nz=True)
    ref_rows, ref_cols = (dense > 0).nonzero(as_tuple=True)
    assert sorted(zip(rows.tolist(), cols.tolist())) == sorted(zip(ref_rows.tolist(), ref_cols.tolist()))

    scprob.settings.seed = 0
    a = make_counts(n_cells=40, n_genes=12)
    SCVI.setup_anndata(a)
    m = SCVI(a, n_hidden=8, n_latent=2)
    store = m._store()
    store.x._gather = None
    batch = store[torch.arange(16)]
    assert Keys.X_NZ_ROWS in batch
    plain = {k: v for k, v in batch.items() if k not in (Keys.X_NZ_ROWS, Keys.X_NZ_COLS)}
    m.module.eval()
    _fused.set_backend("torch")
    try:
        torch.manual_seed(1)
        with_nz = m.module(batch)[2].reconstruction_loss
        torch.manual_seed(1)
        without = m.module(plain)[2].reconstruction_loss
    finally:
        _fused.set_backend(None)
    torch.testing.assert_close(with_nz, without)
