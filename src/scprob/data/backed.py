"""Training from a backed ``.h5ad`` (``anndata.read_h5ad(path, backed="r")``).

Counts stay on disk.  :class:`ChunkedLoader` streams contiguous row ranges: each epoch
it shuffles the order of chunks of ``chunk_size`` cells, reads one chunk (a contiguous,
fast read), shuffles cells within it and yields minibatches, while a background thread
reads the next chunk.  Memory is bounded by two chunks, whatever the number of cells.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import scipy.sparse as sp
import torch

from .keys import Keys
from .loader import CSRRows, TensorStore, n_batches
from .validate import get_matrix


class BackedStore(TensorStore):
    """Obs tensors in memory; X read from disk by row ranges."""

    def __init__(self, adata, registry: dict, device: str | torch.device = "cpu", x_log1p: bool = False):
        super().__init__(adata, registry, device=device, load_x=False, x_log1p=x_log1p)
        self.index_device = torch.device("cpu")  # rows are read from disk on the host
        self.X = get_matrix(adata, registry["setup_args"]["layer"])

    def read_rows(self, rows: np.ndarray) -> CSRRows:
        """Rows (sorted) as a :class:`CSRRows` block, read as one contiguous range."""
        lo, hi = int(rows[0]), int(rows[-1]) + 1
        if hi - lo > 4 * rows.size:  # scattered rows (random access): read just those
            block = self.X[rows]
            block = sp.csr_matrix(block) if not sp.issparse(block) else block.tocsr()
            return CSRRows(block, self.device)
        block = self.X[lo:hi]
        block = sp.csr_matrix(block) if not sp.issparse(block) else block.tocsr()
        return CSRRows(block[rows - lo], self.device)

    def __getitem__(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        idx_np = idx.cpu().numpy()
        uniq, inverse = np.unique(idx_np, return_inverse=True)
        block = self.read_rows(uniq)
        batch = {k: v[idx.to(self.device)] for k, v in self.tensors.items()}
        block.gather_into(batch, torch.as_tensor(inverse, device=self.device), with_log1p=self.x_log1p)
        batch[Keys.INDICES] = idx.to(self.device)
        return batch


class ChunkedLoader:
    """Minibatches streamed chunk by chunk from a :class:`BackedStore` (see module doc)."""

    def __init__(self, store: BackedStore, indices=None, batch_size: int = 128, shuffle: bool = False,
                 seed: int = 0, drop_last_below: int = 0, chunk_size: int = 16_384, shard: bool = False):
        if shard and torch.distributed.is_available() and torch.distributed.is_initialized():
            raise ValueError("training from a backed AnnData with DDP is not supported; load it into memory")
        self.store = store
        self.indices = np.sort(np.arange(store.n_obs) if indices is None else np.asarray(indices))
        self.batch_size, self.shuffle, self.seed = int(batch_size), shuffle, seed
        self.drop_last_below = drop_last_below
        self.chunk_size = max(int(chunk_size) // self.batch_size, 1) * self.batch_size
        self.epoch = 0

    def _chunks(self) -> list[np.ndarray]:
        return [self.indices[i : i + self.chunk_size] for i in range(0, self.indices.size, self.chunk_size)]

    def _n_batches(self, n: int) -> int:
        return n_batches(n, self.batch_size, self.drop_last_below)

    def __len__(self) -> int:
        return sum(self._n_batches(c.size) for c in self._chunks())

    def __iter__(self):
        rng = np.random.default_rng(self.seed + self.epoch)
        self.epoch += 1
        chunks = self._chunks()
        order = rng.permutation(len(chunks)) if self.shuffle else np.arange(len(chunks))
        if not len(chunks):
            return
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(self.store.read_rows, chunks[order[0]])
            for k, c in enumerate(order):
                block = pending.result()
                if k + 1 < len(order):
                    pending = pool.submit(self.store.read_rows, chunks[order[k + 1]])
                rows = chunks[c]
                local = rng.permutation(rows.size) if self.shuffle else np.arange(rows.size)
                for b in range(self._n_batches(rows.size)):
                    pos = torch.as_tensor(local[b * self.batch_size : (b + 1) * self.batch_size])
                    glob = torch.as_tensor(rows[pos.numpy()])
                    batch = {key: v[glob.to(self.store.device)] for key, v in self.store.tensors.items()}
                    block.gather_into(batch, pos.to(self.store.device), with_log1p=self.store.x_log1p)
                    batch[Keys.INDICES] = glob
                    yield batch
