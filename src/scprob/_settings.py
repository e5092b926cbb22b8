"""Global settings: random seed and CPU threads.

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
"""

from __future__ import annotations

import os

import torch

# PyTorch's thread count when scprob was imported: a different count at train time that
# scprob did not set itself means the user called torch.set_num_threads.
_TORCH_THREADS_AT_IMPORT = torch.get_num_threads()


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
    """``seed`` (default random seed) and ``num_threads`` (CPU threads; see the module doc)."""

    def __init__(self):
        self.seed: int = 0
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
        """Set PyTorch's CPU threads by the rule of the module doc (called on every train/predict)."""
        explicit = self._num_threads is not None or _env_threads() is not None
        if not explicit and self._user_set_torch_threads():
            return  # the user's torch.set_num_threads(k) is respected
        n = self.num_threads
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
        self._threads_set_by_scprob = n


settings = Settings()
