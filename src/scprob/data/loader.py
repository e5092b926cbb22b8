"""Tensors built once, minibatches gathered by index.

:class:`TensorStore` converts the registered data to tensors a single time (dense X as
one tensor; sparse X kept as CSR arrays and only the rows of a minibatch densified).
:class:`BatchLoader` yields minibatch dicts from a store: a shuffled permutation per
epoch, sharded across ranks under ``torch.distributed`` so DDP sees equal shares.
"""

from __future__ import annotations

import functools

import numpy as np
import scipy.sparse as sp
import torch

from .keys import Keys
from .minified import cached_posterior
from .registry import obs_arrays
from .validate import get_matrix


def _as_tensor(a: np.ndarray, dtype) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).to(dtype)


_PADDED_MAX = 1 << 26  # slots of the fixed-width GPU gather above which the exact-size one runs
_NONE_1D, _NONE_2D = np.empty(0, dtype=np.float32), np.empty((0, 1), dtype=np.float32)  # unused kernel outputs


@functools.cache
def _log1p_table(size: int = 4096) -> np.ndarray:
    """``torch.log1p(k)`` for the counts ``k < size``, float32: the gather kernel's ``log1p``
    of integer counts, equal to what ``torch.log1p`` gives on a dense batch."""
    return torch.log1p(torch.arange(size, dtype=torch.float32)).numpy()


def _numba_gather():
    """The numba CSR row-gather kernel, or None when numba is missing."""
    try:
        from ._csr_numba import gather_rows
    except ImportError:
        return None
    return gather_rows


class CSRRows:
    """Row gather from a CSR matrix held as three tensors; returns dense float32 rows.
    On the CPU a numba loop writes the rows' entries straight into a zeroed buffer (when
    numba imports); on a GPU (or without numba) tensor index arithmetic does it."""

    def __init__(self, X: sp.spmatrix, device: str | torch.device = "cpu"):
        X = X if sp.isspmatrix_csr(X) or isinstance(X, sp.csr_array) else sp.csr_matrix(X)
        self.shape = X.shape
        # the AnnData's own arrays where their dtypes serve (no per-cell copy): int32 or int64
        # offsets index fine, both in the numba kernel and in the tensor gather
        indptr = X.indptr if X.indptr.dtype in (np.int32, np.int64) else X.indptr.astype(np.int64)
        self.indptr = torch.from_numpy(np.ascontiguousarray(indptr)).to(device)
        self.indices = torch.from_numpy(X.indices).to(device)
        self.data = torch.from_numpy(X.data.astype(np.float32, copy=False)).to(device)
        self._gather = _numba_gather() if self.data.device.type == "cpu" else None
        # longest row: the fixed width of the GPU gather (known here, so no step waits for it)
        self.max_row_nnz = int(np.diff(X.indptr).max()) if X.shape[0] else 0
        self._fixed_width = self.data.device.type != "cpu"

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        return self.gather(idx)[0]

    def gather_into(self, batch: dict, idx: torch.Tensor, with_nz: bool = False, with_log1p: bool = False) -> None:
        """:meth:`gather` into a minibatch: the rows under ``Keys.X``, and its extras."""
        batch[Keys.X], extra = self.gather(idx, with_nz=with_nz, with_log1p=with_log1p)
        batch.update(extra)

    def gather(self, idx: torch.Tensor, with_nz: bool = False, with_log1p: bool = False) -> tuple[torch.Tensor, dict]:
        """Dense rows ``idx`` and a dict of what the gather gives for free: with ``with_nz``
        on the tensor path, the coordinates of their positive entries
        (``Keys.X_NZ_ROWS``/``X_NZ_COLS``); with ``with_log1p`` on the numba path,
        ``log1p`` of the rows and their totals (``Keys.X_LOG1P``, ``Keys.X_TOTAL``)."""
        n = idx.shape[0]
        if self._gather is not None:  # the kernel checks the indices itself
            out = np.empty((n, self.shape[1]), dtype=np.float32)
            log1p, totals = (np.empty_like(out), np.empty((n, 1), dtype=np.float32)) if with_log1p else (_NONE_2D, _NONE_2D)
            bad = self._gather(self.indptr.numpy(), self.indices.numpy(), self.data.numpy(), idx.numpy(), out,
                               with_log1p, log1p, totals[:, 0], _log1p_table() if with_log1p else _NONE_1D)
            if bad >= 0:
                raise IndexError(f"cell index {int(idx[bad])} out of range for {self.shape[0]} cells")
            extra = {Keys.X_LOG1P: torch.from_numpy(log1p), Keys.X_TOTAL: torch.from_numpy(totals)} if with_log1p else {}
            return torch.from_numpy(out), extra
        # on a GPU the loader's own indices are trusted (no sync)
        if idx.device.type == "cpu" and idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.shape[0]):
            raise IndexError(f"cell index out of range for {self.shape[0]} cells")
        starts = self.indptr[idx]
        lens = self.indptr[idx + 1] - starts
        out = torch.zeros(n, self.shape[1], dtype=torch.float32, device=self.data.device)
        if self._fixed_width and n * self.max_row_nnz <= _PADDED_MAX:
            return self._gather_padded(starts, lens, out), {}
        total = int(lens.sum())
        if total == 0:
            empty = torch.zeros(0, dtype=torch.int64, device=out.device)
            return out, ({Keys.X_NZ_ROWS: empty, Keys.X_NZ_COLS: empty} if with_nz else {})
        rows = torch.repeat_interleave(torch.arange(n, device=idx.device), lens)
        seg_start = torch.repeat_interleave(starts - (torch.cumsum(lens, 0) - lens), lens)
        pos = torch.arange(total, device=idx.device) + seg_start
        cols, vals = self.indices[pos], self.data[pos]
        out[rows, cols] = vals
        if not with_nz:
            return out, {}
        keep = vals > 0  # explicitly stored zeros are not non-zeros
        return out, {Keys.X_NZ_ROWS: rows[keep], Keys.X_NZ_COLS: cols[keep].long()}

    def _gather_padded(self, starts: torch.Tensor, lens: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Every row read as ``max_row_nnz`` slots, the slots past its length adding 0: fixed
        shapes, so the host never waits for the device (the exact-size gather needs the
        batch's total non-zero count on the host)."""
        if self.max_row_nnz == 0:
            return out
        k = torch.arange(self.max_row_nnz, device=out.device)
        valid = k < lens.unsqueeze(1)
        pos = torch.where(valid, starts.unsqueeze(1) + k, 0)
        vals = torch.where(valid, self.data[pos], 0.0)
        return out.scatter_add_(1, self.indices[pos].long(), vals)


class TensorStore:
    """All registered tensors of one AnnData, indexable by a tensor of cell indices."""

    # batches carry log1p(X) and its row totals where the gather has them (a class default:
    # stores that build themselves without this __init__, such as GLUE's, never ask)
    x_log1p = False

    def __init__(self, adata, registry: dict, device: str | torch.device = "cpu", load_x: bool = True,
                 x_log1p: bool = False):
        self.n_obs = adata.n_obs
        self.x_log1p = x_log1p
        self.device = torch.device(device)
        self.index_device = self.device  # where the loader's cell indices go (stores reading on the host: cpu)
        self.tensors: dict[str, torch.Tensor] = {}
        for key, arr in obs_arrays(adata, registry).items():
            dtype = torch.int64 if arr.dtype.kind in "iu" else torch.float32
            self.tensors[key] = _as_tensor(arr, dtype).to(self.device)
        self.x = None
        if registry.get("minified"):  # cached posterior instead of counts
            for key, arr in cached_posterior(adata, registry).items():
                self.add(key, arr)
            load_x = False
        if load_x:
            X = get_matrix(adata, registry["setup_args"]["layer"])
            if sp.issparse(X):
                self.x = CSRRows(X, self.device)
            elif isinstance(X, np.ndarray):
                self.x = _as_tensor(X.astype(np.float32, copy=False), torch.float32).to(self.device)
            else:  # backed dataset or other array-like: read in chunks, keep sparse
                from .validate import iter_row_chunks

                blocks = [sp.csr_matrix(b) for _, b in iter_row_chunks(X)]
                self.x = CSRRows(sp.vstack(blocks, format="csr"), self.device)

    def add(self, key: str, value: np.ndarray | torch.Tensor) -> None:
        t = value if isinstance(value, torch.Tensor) else _as_tensor(value, torch.float32)
        self.tensors[key] = t.to(self.device)

    def __getitem__(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        idx = idx.to(self.device)
        batch = {k: v[idx] for k, v in self.tensors.items()}
        if isinstance(self.x, CSRRows):
            # the exact-size tensor gather (no numba on the CPU) yields the non-zero coordinates
            # for free, the numba gather log1p(X) and the totals when the module asks for them
            self.x.gather_into(batch, idx, with_nz=True, with_log1p=self.x_log1p)
        elif self.x is not None:
            batch[Keys.X] = self.x[idx]
        batch[Keys.INDICES] = idx
        return batch


def n_batches(n: int, batch_size: int, drop_last_below: int = 0) -> int:
    """Minibatches for ``n`` cells: full ones, plus the remainder unless smaller than
    ``drop_last_below``."""
    full, rest = divmod(n, batch_size)
    return full + int(rest > 0 and rest >= max(drop_last_below, 1))


class BatchLoader:
    """Iterable of minibatch dicts.

    Parameters
    ----------
    store
        The :class:`TensorStore` to read from.
    indices
        Cells this loader covers (e.g. the training split).
    shuffle
        New permutation each epoch, from ``seed + epoch`` (reproducible).
    drop_last_below
        Skip a final minibatch smaller than this (BatchNorm cannot train on 1 cell).
    shard
        Under ``torch.distributed``, give each rank an equal share (training and
        validation); inference loaders keep every cell.
    n_samples_per_epoch
        With ``shuffle``, the cells one epoch visits: a prefix of the permutation when
        smaller than the data (large data: epochs of bounded length), back-to-back
        permutations when larger (small data: enough steps per epoch for a meaningful
        epoch-level loss and early stopping).  ``None``: every cell once.
    """

    def __init__(
        self,
        store: TensorStore,
        indices: np.ndarray | None = None,
        batch_size: int = 128,
        shuffle: bool = False,
        seed: int = 0,
        drop_last_below: int = 0,
        shard: bool = False,
        n_samples_per_epoch: int | None = None,
    ):
        self.store = store
        self.n_samples_per_epoch = int(n_samples_per_epoch) if n_samples_per_epoch and shuffle else None
        self.indices = torch.as_tensor(np.arange(store.n_obs) if indices is None else np.asarray(indices), dtype=torch.int64)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last_below = drop_last_below
        self.shard = shard
        self.epoch = 0

    def _distributed(self) -> bool:
        return self.shard and torch.distributed.is_available() and torch.distributed.is_initialized()

    def _rank_indices(self) -> torch.Tensor:
        idx = self.indices
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            n, want = idx.shape[0], self.n_samples_per_epoch or idx.shape[0]
            reps = -(-want // n)
            perms = [idx[torch.randperm(n, generator=g)] for _ in range(reps)]
            idx = (perms[0] if reps == 1 else torch.cat(perms))[:want]  # one epoch: no copy of the order
        if self._distributed():
            world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
            per_rank = -(-idx.shape[0] // world)
            idx = torch.cat([idx, idx[: per_rank * world - idx.shape[0]]])  # pad: equal shares
            idx = idx[rank::world]
        return idx

    def _n_batches(self, n: int) -> int:
        return n_batches(n, self.batch_size, self.drop_last_below)

    def __len__(self) -> int:
        n = self.n_samples_per_epoch or self.indices.shape[0]
        if self._distributed():
            n = -(-n // torch.distributed.get_world_size())
        return self._n_batches(n)

    def __iter__(self):
        # one host-to-device copy per epoch; the minibatches are slices of it
        idx = self._rank_indices().to(getattr(self.store, "index_device", "cpu"))
        self.epoch += 1
        for b in range(self._n_batches(idx.shape[0])):
            yield self.store[idx[b * self.batch_size : (b + 1) * self.batch_size]]


def split_indices(n_obs: int, train_size: float = 0.9, validation_size: float | None = None, seed: int = 0):
    """Random train/validation split (scvi-tools semantics: validation = rest if not given)."""
    if not 0 < train_size <= 1:
        raise ValueError(f"train_size must be in (0, 1], got {train_size}")
    validation_size = 1.0 - train_size if validation_size is None else validation_size
    if train_size + validation_size > 1 + 1e-9:
        raise ValueError("train_size + validation_size must be <= 1")
    n_train = int(np.ceil(train_size * n_obs))
    n_val = min(int(np.floor(validation_size * n_obs)), n_obs - n_train)
    perm = np.random.default_rng(seed).permutation(n_obs)
    return perm[:n_train], perm[n_train : n_train + n_val]
