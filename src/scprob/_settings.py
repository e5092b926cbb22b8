"""Global settings: random seed and CPU threads.

Threads: PyTorch's default is one thread per core, and its OpenMP workers spin while
waiting.  On a small shared machine two such processes slow each other 10-15x.  scprob
therefore sets ``torch.set_num_threads(settings.num_threads)`` whenever it trains or
runs inference.  The default is the number of CPU cores this process may use, capped
at 8 (past that, the small dense layers of these models stop scaling); set
``scprob.settings.num_threads = k`` (or the environment variable ``SCPROB_NUM_THREADS``)
to choose, e.g. 1 per process when running several jobs side by side.
"""

from __future__ import annotations

import os


def _default_threads() -> int:
    env = os.environ.get("SCPROB_NUM_THREADS")
    if env:
        return max(1, int(env))
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


class Settings:
    def __init__(self):
        self.seed: int = 0
        self._num_threads: int | None = None

    @property
    def num_threads(self) -> int:
        return self._num_threads if self._num_threads is not None else _default_threads()

    @num_threads.setter
    def num_threads(self, value: int | None) -> None:
        if value is not None and int(value) < 1:
            raise ValueError("num_threads must be >= 1")
        self._num_threads = None if value is None else int(value)

    def apply_threads(self) -> None:
        import torch

        if torch.get_num_threads() != self.num_threads:
            torch.set_num_threads(self.num_threads)


settings = Settings()
