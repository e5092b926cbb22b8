"""Global settings: random seed, CPU threads and the C allocator.

Threads: PyTorch's default is one thread per core, and its OpenMP workers spin while
waiting.  On a small shared machine two such processes slow each other 10-15x.  scprob
therefore sets PyTorch's CPU threads whenever it trains or runs inference, by this rule
(first match wins):

1. ``scprob.settings.num_threads = k`` or the environment variable ``SCPROB_NUM_THREADS``:
   ``k`` threads.
2. The user called ``torch.set_num_threads(k)`` (PyTorch's count differs both from its
   count when scprob was imported and from the last count scprob set): left alone.
3. Otherwise: the number of CPU cores this process may use, capped at 8 (past that, the
   small dense layers of these models stop scaling).

Allocator: PyTorch's CPU tensors come from ``malloc``.  glibc serves blocks above its
mmap threshold (128 KiB at start) with fresh ``mmap`` pages and unmaps them on free, so
every minibatch-sized intermediate (128 cells x 1,000 genes is 512 KiB) is page-faulted
anew, many times per step: measured, the fused ZINB likelihood ran 3x slower and a whole
scVI step ~15% slower.  On glibc scprob therefore raises the mmap threshold to 8 MiB and
the trim threshold to 64 MiB (``mallopt``) once, when it first trains or predicts; freed
blocks are then reused.  Skipped when ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``
are set (the user's choice), when ``SCPROB_TUNE_MALLOC=0``, or with
``scprob.settings.tune_malloc = False`` before the first call.
"""

from __future__ import annotations

import os

import torch

# PyTorch's thread count when scprob was imported: a different count at train time that
# scprob did not set itself means the user called torch.set_num_threads.
_TORCH_THREADS_AT_IMPORT = torch.get_num_threads()


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
_malloc_tuned = False


def _tune_malloc(mmap_threshold: int = 8 << 20, trim_threshold: int = 64 << 20) -> bool:
    """Raise glibc's mmap and trim thresholds once per process (see the module doc);
    True when they were set now."""
    global _malloc_tuned
    if _malloc_tuned:
        return False
    _malloc_tuned = True
    if os.environ.get("SCPROB_TUNE_MALLOC", "1") == "0" or any(
        k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
    ):
        return False
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt  # glibc only; absent on macOS / Windows / musl
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))


def _env_threads() -> int | None:
    env = os.environ.get("SCPROB_NUM_THREADS")
    if not env:
        return None
    try:
        value = int(env)
    except ValueError:
        raise ValueError(f"SCPROB_NUM_THREADS must be a positive integer, got {env!r}") from None
    return max(1, value)


def _default_threads() -> int:
    env = _env_threads()
    if env is not None:
        return env
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


class Settings:
    """``seed`` (default random seed), ``num_threads`` (CPU threads) and ``tune_malloc``
    (glibc allocator thresholds); see the module doc."""

    def __init__(self):
        self.seed: int = 0
        self.tune_malloc: bool = True
        self._num_threads: int | None = None
        self._threads_set_by_scprob: int | None = None

    @property
    def num_threads(self) -> int:
        """The thread count scprob uses: the explicit setting, else ``SCPROB_NUM_THREADS``,
        else the user's ``torch.set_num_threads`` value, else the number of usable cores (at most 8)."""
        if self._num_threads is not None:
            return self._num_threads
        env = _env_threads()
        if env is not None:
            return env
        if self._user_set_torch_threads():
            return torch.get_num_threads()
        return _default_threads()

    def _user_set_torch_threads(self) -> bool:
        current = torch.get_num_threads()
        return current != _TORCH_THREADS_AT_IMPORT and current != self._threads_set_by_scprob

    @num_threads.setter
    def num_threads(self, value: int | None) -> None:
        if value is not None and int(value) < 1:
            raise ValueError("num_threads must be >= 1")
        self._num_threads = None if value is None else int(value)

    def apply_threads(self) -> None:
        """Set PyTorch's CPU threads by the rule of the module doc (called on every train/predict);
        the first call also tunes the allocator (module doc) unless ``tune_malloc`` is False."""
        if self.tune_malloc:
            _tune_malloc()
        explicit = self._num_threads is not None or _env_threads() is not None
        if not explicit and self._user_set_torch_threads():
            return  # the user's torch.set_num_threads(k) is respected
        n = self.num_threads
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
        self._threads_set_by_scprob = n


settings = Settings()
