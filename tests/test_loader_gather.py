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
def test_int32_offsets_are_used_in_place(path):
    X = _csr()
    X.indptr = X.indptr.astype(np.int32)
    r = CSRRows(X)
    assert r.indptr.dtype == torch.int32 and r.indptr.data_ptr() == X.indptr.ctypes.data  # no per-cell copy
    if path == "tensor":
        r._gather = None
    idx = torch.tensor([3, 7, 0, 49, 3])
    np.testing.assert_array_equal(r[idx].numpy(), X[idx.numpy()].toarray())


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
    dense, nz = r.gather(idx, with_nz=True)
    rows, cols = nz[Keys.X_NZ_ROWS], nz[Keys.X_NZ_COLS]
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


def test_fixed_width_gather_equals_exact_one():
    """The GPU's gather (every row read as max_row_nnz slots, no host wait) gives the same
    rows as the exact-size gather: repeated, empty and longest rows, stored zeros."""
    X = _csr()
    X.data[::5] = 0.0
    r = CSRRows(X)
    assert r.max_row_nnz == int(np.diff(X.indptr).max())
    for idx in (torch.tensor([3, 7, 7, 0, 49]), torch.arange(50), torch.tensor([7])):
        starts = r.indptr[idx]
        out = torch.zeros(idx.shape[0], X.shape[1])
        padded = r._gather_padded(starts, r.indptr[idx + 1] - starts, out)
        np.testing.assert_array_equal(padded.numpy(), X[idx.numpy()].toarray())
    empty = CSRRows(sp.csr_matrix((4, 3), dtype=np.float32))
    assert empty.max_row_nnz == 0
    assert torch.equal(empty._gather_padded(empty.indptr[:2], torch.zeros(2, dtype=torch.int64), torch.zeros(2, 3)),
                       torch.zeros(2, 3))


def test_gpu_style_step_equals_the_cpu_one():
    """The GPU's path run on the CPU (fixed-width gather, no non-zero coordinates, dense
    likelihood) gives the loss and gradients of the default path."""
    import scprob
    from scprob.data.keys import Keys
    from scprob.distributions import _fused
    from scprob.models import SCVI

    from .conftest import make_counts

    scprob.settings.seed = 0
    a = make_counts(n_cells=40, n_genes=12)
    SCVI.setup_anndata(a, batch_key="batch")
    m = SCVI(a, n_hidden=8, n_latent=2)
    m.module.eval()
    idx = torch.tensor([0, 3, 3, 17, 39])
    out = {}
    for style in ("cpu", "gpu"):
        store = m._store()
        if style == "gpu":
            store.x._gather, store.x._fixed_width = None, True
            _fused.set_backend("dense")
        try:
            batch = store[idx]
            assert (Keys.X_NZ_ROWS in batch) is False
            m.module.zero_grad()
            torch.manual_seed(1)
            loss = m.module(batch)[2].loss
            loss.backward()
            out[style] = (loss.detach(), [p.grad.clone() for p in m.module.parameters() if p.grad is not None])
        finally:
            _fused.set_backend(None)
    torch.testing.assert_close(out["gpu"][0], out["cpu"][0], rtol=1e-5, atol=1e-4)
    for g_gpu, g_cpu in zip(out["gpu"][1], out["cpu"][1]):
        torch.testing.assert_close(g_gpu, g_cpu, rtol=1e-4, atol=1e-4)


def test_numba_gather_writes_log1p_and_totals():
    """The kernel's log1p(X) equals torch.log1p of the dense rows (exactly for integer
    counts, which take the table built with torch; to rounding for other values), and its
    totals equal the dense row sums."""
    from scprob.data.keys import Keys

    X = _csr()
    X.data[:6] = [4095.0, 4096.0, 70000.0, 0.5, 2.25, 1e-7]  # table edge, beyond it, non-integers
    r = CSRRows(X)
    if r._gather is None:
        pytest.skip("numba not installed")
    idx = torch.tensor([0, 7, 7, 3, 49, 0])
    dense, extra = r.gather(idx, with_log1p=True)
    assert torch.equal(dense, r[idx])
    ref = torch.log1p(dense)
    got = extra[Keys.X_LOG1P]
    counts = dense == dense.round()
    assert torch.equal(got[counts], ref[counts])
    torch.testing.assert_close(got, ref, rtol=2e-7, atol=0)
    torch.testing.assert_close(extra[Keys.X_TOTAL], dense.sum(1, keepdim=True), rtol=1e-6, atol=0)
    assert extra[Keys.X_TOTAL].shape == (6, 1)
    assert r.gather(idx)[1] == {}  # not asked for: nothing extra


@pytest.mark.parametrize("normalize", [False, True])
def test_scvi_store_gives_log1p_and_the_loss_is_unchanged(normalize):
    """SCVI's store hands the encoder log1p(X) and the totals from the gather when the
    encoder reads log1p(x) as is (not with normalize_encoder_input); the loss is the same
    to the bit as computing them from x."""
    import scprob
    from scprob.data.keys import Keys
    from scprob.models import SCVI

    from .conftest import make_counts

    scprob.settings.seed = 0
    a = make_counts(n_cells=40, n_genes=12)
    SCVI.setup_anndata(a)
    m = SCVI(a, n_hidden=8, n_latent=2, normalize_encoder_input=normalize)
    store = m._store()
    if store.x._gather is None:
        pytest.skip("numba not installed")
    batch = store[torch.arange(16)]
    assert (Keys.X_LOG1P in batch) is (not normalize)
    plain = {k: v for k, v in batch.items() if k not in (Keys.X_LOG1P, Keys.X_TOTAL)}
    m.module.eval()
    torch.manual_seed(1)
    with_extra = m.module(batch)[2]
    torch.manual_seed(1)
    without = m.module(plain)[2]
    assert torch.equal(with_extra.loss, without.loss)
    assert torch.equal(with_extra.reconstruction_loss, without.reconstruction_loss)
