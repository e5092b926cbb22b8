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


def test_out_of_range_index_is_refused():
    r = CSRRows(_csr())
    with pytest.raises(IndexError):
        r[torch.tensor([0, 50])]
    with pytest.raises(IndexError):
        r[torch.tensor([-1])]
