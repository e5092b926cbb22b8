"""Checkpoints that survive a killed process, and resuming from them.

:class:`EpochCheckpoint` writes ``DIR/last.ckpt`` every ``every_n_epochs`` epochs, after
the epoch's validation and metrics: Lightning's full training state (weights, optimizer
and scheduler state, loop position — hence the KL warm-up position —, callback state
such as early stopping) plus scprob's own part under ``"scprob"``: the plan's history,
the RNG states (torch, CUDA, numpy, python), the data split and a fingerprint of the
data.  The file is written under a temporary name in ``DIR`` and renamed into place, so
``DIR`` never holds a half-written checkpoint: a process killed at any moment loses at
most the epochs since the last one.

Resuming (``fit(ckpt_path=...)``) restores Lightning's state; the plan then restores the
history and the RNG states and sets each loader's epoch counter, so the continued run
draws the same minibatches and dropout masks as an uninterrupted one.
"""

from __future__ import annotations

import functools
import hashlib
import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.callbacks import Checkpoint

from ..data.validate import DataError

CKPT = "last.ckpt"


def data_fingerprint(obs_names, var_names) -> dict:
    """What a checkpoint must match: cell and feature counts and hashes of their names."""
    def digest(names) -> str:
        return hashlib.sha1("\x00".join(map(str, names)).encode()).hexdigest()

    return dict(n_obs=len(obs_names), n_vars=len(var_names), obs=digest(obs_names), var=digest(var_names))


def rng_state() -> dict:
    np_state = np.random.get_state()
    return dict(
        torch=torch.get_rng_state(),
        cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        numpy=[np_state[0], torch.as_tensor(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
        python=random.getstate(),
    )


def keeps_global_rng(fn):
    """Decorator: ``fn`` (a ``train``) may seed the global generators for its own
    reproducibility, but the caller's torch / numpy / random states are restored after it,
    so training never resets the user's random streams (scvi-tools seeds only when asked)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        saved = rng_state()
        try:
            return fn(*args, **kwargs)
        finally:
            set_rng_state(saved)

    return wrapper


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    random.setstate(state["python"])


class EpochCheckpoint(Checkpoint):
    """Write ``dirpath/last.ckpt`` atomically every ``every_n_epochs`` epochs.

    ``extra`` (plain values and tensors) is stored under ``checkpoint["scprob"]`` with the
    RNG states; ``loaders`` get their epoch counter set to the resumed epoch.  A
    :class:`~lightning.pytorch.callbacks.Checkpoint` so that Lightning calls it after the
    plan has logged the epoch's metrics.
    """

    def __init__(self, dirpath: str | os.PathLike | None, every_n_epochs: int = 1, extra: dict | None = None,
                 loaders: list | None = None):
        if every_n_epochs < 1:
            raise ValueError(f"checkpoint_every_n_epochs must be >= 1, got {every_n_epochs}")
        self.dirpath = None if dirpath is None else Path(dirpath)
        self.every_n_epochs = int(every_n_epochs)
        self.extra = dict(extra or {})
        self.loaders = [ld for ld in (loaders or []) if ld is not None]
        self._resumed: dict | None = None

    @property
    def state_key(self) -> str:
        return "EpochCheckpoint"

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint["scprob"] = dict(self.extra, kind="epoch", rng=rng_state(), loader_epochs=loader_epochs(self.loaders),
                                    history={k: list(v) for k, v in pl_module.history.items()})

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        own = checkpoint.get("scprob", {})
        for k, rows in own.get("history", {}).items():
            pl_module.history[k] = [tuple(r) for r in rows]
        self._resumed = own

    def on_train_start(self, trainer, pl_module) -> None:
        own = getattr(self, "_resumed", None)
        if own is not None:  # the loaders draw epoch e's permutation from seed + e
            set_loader_epochs(self.loaders, own.get("loader_epochs"))
            set_rng_state(own["rng"])
            self._resumed = None

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.dirpath is None or trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        if not trainer.is_global_zero:
            return
        write_atomic(self.dirpath / CKPT, lambda tmp: trainer.save_checkpoint(tmp, weights_only=False))


def loader_epochs(loaders: list) -> list[int]:
    return [int(getattr(ld, "epoch", 0)) for ld in loaders]


def set_loader_epochs(loaders: list, epochs: list[int] | None) -> None:
    for ld, e in zip(loaders, epochs or []):
        if hasattr(ld, "epoch"):
            ld.epoch = int(e)


def write_atomic(path: Path, write) -> None:
    """``write(tmp)`` to a temporary file beside ``path``, synced, then renamed onto it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:  # on disk before the rename makes it the checkpoint
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_checkpoint(dir_path: str | os.PathLike, fingerprint: dict | None = None,
                    model_class: str | None = None) -> tuple[Path, dict, dict]:
    """The checkpoint in ``dir_path``: ``(path, its scprob part, the whole checkpoint)``,
    checked: readable, written by ``model_class``, taken on the same data (``fingerprint``)."""
    path = Path(dir_path) / CKPT
    if not path.exists():
        raise DataError(f"no checkpoint to resume from: {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure to read means a damaged file
        raise DataError(f"checkpoint {path} is truncated or corrupt ({type(err).__name__}: {str(err)[:120]})") from None
    own = ckpt.get("scprob") if isinstance(ckpt, dict) else None
    if not own:
        raise DataError(f"{path} is not a scprob checkpoint")
    if model_class and own.get("model_class") != model_class:
        raise DataError(f"checkpoint {path} was written by {own.get('model_class')}, not {model_class}")
    saved = own.get("data", {})
    if fingerprint is not None and saved != fingerprint:
        raise DataError(f"checkpoint {path} was taken on other data: " + "; ".join(_mismatch(saved, fingerprint)))
    return path, own, ckpt


def _mismatch(saved: dict, here: dict, prefix: str = "") -> list[str]:
    """What differs between two fingerprints (or dicts of them, one per modality)."""
    if here and all(isinstance(v, dict) for v in here.values()):
        if set(saved) != set(here):
            return [f"modalities {sorted(saved)} there, {sorted(here)} here"]
        return [w for k in here for w in _mismatch(saved[k], here[k], f"modality {k!r}: ")]
    names = {"obs": "cell names", "var": "gene names"}
    return [prefix + (f"{k} ({saved.get(k)} there, {here[k]} here)" if k.startswith("n_") else names[k])
            for k in ("n_obs", "n_vars", "obs", "var") if saved.get(k) != here[k]]
