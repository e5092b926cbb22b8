"""Running a plan with a Lightning ``Trainer``.

Lightning is what lets a user move from one CPU to many GPUs or nodes: ``accelerator``,
``devices``, ``strategy`` (e.g. ``"ddp"``) and any other ``Trainer`` option pass through.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import warnings

import lightning.pytorch as pl
import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback, Checkpoint, EarlyStopping
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only

from .steps import StepGroups, group_size


class HistoryLogger(Logger):
    """The Trainer's logger: keeps every logged metric in memory as ``(epoch, value)`` rows
    (the layout of a plan's ``history``), so callbacks that need a logger
    (``LearningRateMonitor``, ...) work and what they log joins ``model.history``.
    Writes nothing to disk."""

    def __init__(self):
        super().__init__()
        self.history: dict[str, list[tuple[int, float]]] = {}
        self.trainer: pl.Trainer | None = None  # set by run_training: gives each row its epoch

    @property
    def name(self) -> str:
        return "scprob"

    @property
    def version(self) -> int:
        return 0

    @rank_zero_only
    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        epoch = self.trainer.current_epoch if self.trainer is not None else (step or 0)
        for key, value in metrics.items():
            if key == "epoch":
                continue
            try:
                value = float(value)
            except (TypeError, ValueError):
                continue
            self.history.setdefault(key, []).append((int(epoch), value))


class WarmupEarlyStopping(EarlyStopping):
    """Lightning's ``EarlyStopping`` that starts monitoring after ``warmup_epochs`` epochs
    (scvi-tools' ``early_stopping_warmup_epochs``)."""

    def __init__(self, *args, warmup_epochs: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        if warmup_epochs < 0:
            raise ValueError(f"early_stopping_warmup_epochs must be >= 0, got {warmup_epochs}")
        self.warmup_epochs = int(warmup_epochs)

    def _run_early_stopping_check(self, trainer) -> None:
        if trainer.current_epoch < self.warmup_epochs:
            return
        super()._run_early_stopping_check(trainer)


class EpochProgressBar(Callback):
    """One tqdm bar over epochs (per-step bars cost time and say little)."""

    def __init__(self, max_epochs: int):
        self.max_epochs = max_epochs
        self.bar = None

    def on_train_start(self, trainer, pl_module):
        if trainer.is_global_zero:
            import sys

            from tqdm.auto import tqdm

            # redraw often on a terminal, rarely into logs/pipes
            interval = 0.2 if sys.stderr.isatty() else 15.0
            self.bar = tqdm(total=self.max_epochs, desc="Training", unit="epoch", dynamic_ncols=True, mininterval=interval)

    def on_train_epoch_end(self, trainer, pl_module):
        if self.bar is not None:
            hist = pl_module.history
            post = {k: f"{hist[k][-1][1]:.4g}" for k in ("train_loss", "elbo_validation") if hist.get(k)}
            self.bar.set_postfix(post, refresh=False)
            self.bar.update(1)

    def on_train_end(self, trainer, pl_module):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class RelativeEarlyStopping(EarlyStopping):
    """Early stopping that does not depend on the loss's units.

    An epoch *improves* when ``monitor`` falls below the best value so far by more than
    ``min_delta_rel * (first - best)``: a fraction of the progress made since the first
    epoch, so the same setting works for a loss near 0, near 1e4 or negative (a density
    in many dimensions).  Training stops after ``patience`` epochs without improvement
    (never before ``min_epochs``).  (A Lightning ``EarlyStopping`` subclass only so that
    Lightning runs it after the plan has logged the epoch's metrics.)
    """

    def __init__(self, monitor: str, patience: int = 4, min_delta_rel: float = 0.01, min_epochs: int = 0):
        super().__init__(monitor=monitor, patience=patience, mode="min", check_on_train_epoch_end=True)
        self.monitor, self.patience, self.min_delta_rel, self.min_epochs = monitor, patience, min_delta_rel, min_epochs
        self.first = self.best = None
        self.wait = 0
        self.stopped_epoch: int | None = None

    def _check(self, trainer, may_stop: bool = True) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            return
        value = float(value)
        if self.first is None:
            self.first = self.best = value
            return
        if self.best - value > self.min_delta_rel * max(self.first - self.best, 0.0):
            self.best, self.wait = value, 0
        else:
            self.best = min(self.best, value)
            self.wait += 1
        if self.wait >= self.patience and trainer.current_epoch + 1 >= self.min_epochs and may_stop:
            self.stopped_epoch = trainer.current_epoch
            trainer.should_stop = True

    def on_train_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            # a plan whose epochs alternate objectives (Scyan's temperature) says where it may stop
            self._check(trainer, bool(getattr(pl_module, "may_stop_after_epoch", lambda: True)()))

    def on_validation_end(self, trainer, pl_module):
        pass

    def state_dict(self) -> dict:
        return dict(first=self.first, best=self.best, wait=self.wait)

    def load_state_dict(self, state: dict) -> None:
        self.first, self.best, self.wait = state["first"], state["best"], state["wait"]


def history_frames(history: dict[str, list[tuple[int, float]]]) -> dict[str, pd.DataFrame]:
    """scvi-tools layout: one DataFrame per metric, indexed by epoch, one column."""
    out = {}
    for key, rows in history.items():
        df = pd.DataFrame(rows, columns=["epoch", key]).drop_duplicates("epoch", keep="last").set_index("epoch")
        out[key] = df
    return out


# Lightning's warnings that say nothing to a scprob user (scprob builds the Trainer, the
# loaders and the epoch metrics itself): ignored while a plan trains, and only then.
_IGNORED_WARNINGS = (
    ".*does not have many workers.*",  # scprob's loaders run in-process by design
    ".*Total length of.*",
    ".*GPU available but not used.*",  # scprob says it once itself (_note_unused_gpu)
    ".*TPU available but not used.*",
    ".*sync_dist=True.*",  # epoch metrics are already summed across ranks by the plan
    ".*LeafSpec.*",  # a torch deprecation inside Lightning's own code
    ".*validation_step.*",  # a plan with a validation step, trained without validation data
    ".*log_every_n_steps.*",  # plans log once per epoch, never per step
)
# Lightning's INFO lines: accelerator banners ("GPU available: False, used: False"),
# advertisements for its cloud services ("Tip: ... litlogger"), "`Trainer.fit` stopped".
_LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero",
                      "lightning.fabric.utilities.rank_zero")
_said: set[str] = set()
log = logging.getLogger("scprob")


@contextlib.contextmanager
def quiet_lightning():
    """Build and run a Trainer without Lightning's INFO lines and irrelevant warnings;
    its errors and other warnings still show.  Logger levels and warning filters are
    restored on exit.  A Lightning logger set to DEBUG by the user is left alone."""
    saved = {}
    for name in _LIGHTNING_LOGGERS:
        lg = logging.getLogger(name)
        if logging.DEBUG < lg.getEffectiveLevel() < logging.WARNING:
            saved[name] = lg.level
            lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            for pattern in _IGNORED_WARNINGS:
                warnings.filterwarnings("ignore", message=pattern)
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def _note_unused_gpu(trainer: pl.Trainer) -> None:
    """Say once per process, on the scprob logger, that a GPU is present but training runs on the CPU."""
    from lightning.pytorch.accelerators import CPUAccelerator

    if "gpu" in _said or not isinstance(trainer.accelerator, CPUAccelerator) or not trainer.is_global_zero:
        return
    kind = "CUDA" if torch.cuda.is_available() else "MPS" if torch.backends.mps.is_available() else None
    if kind:
        _said.add("gpu")
        log.warning("a %s GPU is available but training runs on the CPU; pass accelerator='gpu' to train on it.", kind)


def run_training(
    plan: pl.LightningModule,
    train_loader,
    val_loader=None,
    max_epochs: int = 400,
    accelerator: str = "auto",
    devices: int | str = "auto",
    strategy: str = "auto",
    early_stopping: bool = False,
    early_stopping_monitor: str = "elbo_validation",
    early_stopping_patience: int = 45,
    early_stopping_min_delta: float = 0.0,
    early_stopping_warmup_epochs: int = 0,
    early_stopping_mode: str = "min",
    enable_progress_bar: bool = True,
    callbacks: list | None = None,
    ckpt_path: str | None = None,
    learning_rate_monitor: bool = False,
    **trainer_kwargs,
) -> pl.Trainer:
    """Fit ``plan`` on ``train_loader`` (validating on ``val_loader`` if given);
    ``ckpt_path`` resumes from a checkpoint of :mod:`scprob.train.checkpoint`.

    Early stopping (scvi-tools' arguments): ``early_stopping_monitor``, ``_patience``,
    ``_min_delta``, ``_mode`` (``"min"``/``"max"``) and ``_warmup_epochs`` (epochs before
    monitoring starts).  The Trainer's logger is a :class:`HistoryLogger` unless
    ``logger=`` is given (``trainer.logger.history`` then holds what callbacks logged);
    ``learning_rate_monitor=True`` adds Lightning's ``LearningRateMonitor``.
    ``gradient_clip_val`` / ``gradient_clip_algorithm`` go to a manually optimizing plan
    (every scprob plan), which clips in its own step."""
    callbacks = list(callbacks or [])
    if not plan.automatic_optimization and trainer_kwargs.get("gradient_clip_val"):
        # Lightning clips only under automatic optimization: a manual plan clips itself
        plan.gradient_clip_val = trainer_kwargs.pop("gradient_clip_val")
        plan.gradient_clip_algorithm = trainer_kwargs.pop("gradient_clip_algorithm", None) or "norm"
    has_val = val_loader is not None and len(val_loader) > 0
    if early_stopping:
        if early_stopping_mode not in ("min", "max"):
            raise ValueError(f"early_stopping_mode must be 'min' or 'max', got {early_stopping_mode!r}")
        if not has_val and early_stopping_monitor.endswith("validation"):
            raise ValueError("early_stopping monitors a validation metric: use train_size < 1.")
        callbacks.append(
            WarmupEarlyStopping(monitor=early_stopping_monitor, patience=early_stopping_patience,
                                min_delta=early_stopping_min_delta, mode=early_stopping_mode,
                                # a training metric exists only once the training epoch has ended
                                check_on_train_epoch_end=not (has_val and early_stopping_monitor.endswith("validation")),
                                warmup_epochs=early_stopping_warmup_epochs)
        )
    if learning_rate_monitor:
        from lightning.pytorch.callbacks import LearningRateMonitor

        callbacks.append(LearningRateMonitor(logging_interval="epoch"))
    if enable_progress_bar:
        callbacks.append(EpochProgressBar(max_epochs))
    kwargs = dict(
        max_epochs=max_epochs, accelerator=accelerator, devices=devices, strategy=strategy,
        logger=HistoryLogger(), enable_checkpointing=any(isinstance(cb, Checkpoint) for cb in callbacks),
        enable_model_summary=False,
        enable_progress_bar=False, num_sanity_val_steps=0, callbacks=callbacks,
        use_distributed_sampler=False,
    )
    kwargs.update(trainer_kwargs)
    if not has_val:
        kwargs["limit_val_batches"] = 0
    with quiet_lightning():
        trainer = pl.Trainer(**kwargs)
        for lg in trainer.loggers:
            if isinstance(lg, HistoryLogger):
                lg.trainer = trainer
        _note_unused_gpu(trainer)
        group = group_size(plan, train_loader, trainer, trainer_kwargs)
        if group > 1:
            train_loader = StepGroups(train_loader, group)
        with _frozen_heap():
            trainer.fit(plan, train_dataloaders=train_loader, val_dataloaders=val_loader if has_val else None,
                        ckpt_path=ckpt_path, weights_only=True if ckpt_path else None)
    return trainer


@contextlib.contextmanager
def _frozen_heap():
    """Python's cyclic collector ignores the objects alive when training starts (``gc.freeze``)
    until it ends.  Its full collections otherwise rescan all of them (the data, torch,
    Lightning: ~0.5M objects, ~0.2 s each) every few hundred steps, for nothing: training
    creates few long-lived objects.  Left alone when the caller froze the heap already."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
