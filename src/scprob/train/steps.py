"""Several optimizer steps per Lightning batch.

Lightning's loop costs a fixed ~0.4 ms of hooks, progress tracking and batch handling
per batch it hands to ``training_step``: on a CPU that is ~8% of a scVI step of 128
cells x 1,000 genes.  When nothing observes individual batches, the runner hands the
plan groups of consecutive minibatches (:class:`StepGroups`), and the plan's
``training_step`` runs one full step per minibatch of the group (forward, backward,
optimizer step through Lightning's optimizer wrapper, so ``global_step``, the KL
warm-up, gradient clipping and the NaN guard are per minibatch as before).  The
minibatches, their order and every update are those of ungrouped training; only
Lightning's per-batch hooks (``on_train_batch_start`` / ``_end``) run once per group,
which is why grouping is off whenever a callback or the plan overrides them, or a
Trainer option counts batches (``limit_train_batches``, ``val_check_interval``), and
under DDP (its gradient reduction is prepared once per ``training_step`` call).
``max_steps`` is honoured inside a group.

Likewise, ``manual_backward`` walks four hooks (``on_before_backward``,
``on_after_backward``, for callbacks and the module) through the strategy and the
precision plugin around ``loss.backward()``.  With one device, 32-bit precision, no
profiler and none of those hooks overridden that is exactly ``loss.backward()``, which
:func:`direct_backward` says the plan may then call itself.  And ``LightningOptimizer.step``
goes through the strategy, the precision plugin, a closure, the callbacks' and the plan's
``on_before_optimizer_step`` and torch's per-class step wrapper (profiler record, step
hooks): ~0.14 ms a step on a CPU, 3% of a scVI step.  When none of that adds anything,
:func:`direct_optimizer_step` gives the plan a step that does what they amount to: count
the step in Lightning's progress (``global_step``), run the plan's gradient check, update.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch.optim import optimizer as torch_optimizer

from .optim import Adam, AdamW

#: minibatches per Lightning batch when grouping applies
GROUP_SIZE = 16
_BATCH_HOOKS = ("on_train_batch_start", "on_train_batch_end")
_BATCH_COUNTING = ("limit_train_batches", "val_check_interval")
_BACKWARD_HOOKS = ("on_before_backward", "on_after_backward")
_STEP_HOOKS = ("on_before_optimizer_step",)


class StepGroup:
    """Up to ``size`` consecutive minibatches of a loader, drawn one at a time as the plan
    steps through them: a group never holds its minibatches at once (16 dense batches of
    128 x 2,000 would be 16 MB)."""

    def __init__(self, batches: Iterator, size: int):
        self._batches = itertools.islice(batches, size)

    def __iter__(self) -> Iterator:
        return self._batches


class StepGroups:
    """``loader``'s minibatches in :class:`StepGroup` s of ``size`` (the last may be shorter).
    Groups share one pass over the loader, so each is iterated before the next (as a
    training loop does).  Attributes other than its own (``epoch``, ...) are the loader's."""

    def __init__(self, loader: Iterable, size: int):
        self.loader, self.size = loader, int(size)

    def __len__(self) -> int:
        return -(-len(self.loader) // self.size)

    def __iter__(self) -> Iterator[StepGroup]:
        batches = iter(self.loader)
        for _ in range(len(self)):
            yield StepGroup(batches, self.size)

    def __getattr__(self, name: str):
        return getattr(self.loader, name)


def _watched(hooks: tuple[str, ...], plan, plan_parent: type, callbacks: list) -> bool:
    """Whether the plan (beyond ``plan_parent``) or a callback overrides one of ``hooks``."""
    return any(is_overridden(h, plan, parent=plan_parent) for h in hooks) or any(
        is_overridden(h, cb, parent=Callback) for cb in callbacks for h in hooks)


def minibatches(batch) -> Iterable:
    """The minibatches a ``training_step`` received: a group's, or the batch itself."""
    return batch if isinstance(batch, StepGroup) else (batch,)


def group_size(plan, train_loader, trainer, trainer_kwargs: dict) -> int:
    """How many minibatches per Lightning batch ``plan`` may take in ``trainer`` (1: no
    grouping).  One device only: DDP prepares its gradient reduction per forward call."""
    from lightning.pytorch.strategies import SingleDeviceStrategy

    from .plan import TrainingPlan

    if (
        not isinstance(plan, TrainingPlan)
        or plan.automatic_optimization
        or type(plan).training_step is not TrainingPlan.training_step  # a plan with its own loop
        or type(trainer.strategy) is not SingleDeviceStrategy
        or any(trainer_kwargs.get(k) is not None for k in _BATCH_COUNTING)
        or _watched(_BATCH_HOOKS, plan, TrainingPlan, trainer.callbacks)
        or not hasattr(train_loader, "__len__")
    ):
        return 1
    return GROUP_SIZE


def _plain_trainer(trainer) -> bool:
    """One device, 32-bit precision, no profiler: the strategy and the precision plugin pass
    backward and optimizer steps through unchanged."""
    from lightning.pytorch.plugins.precision import Precision
    from lightning.pytorch.profilers import PassThroughProfiler
    from lightning.pytorch.strategies import SingleDeviceStrategy

    return (
        type(trainer.strategy) is SingleDeviceStrategy
        and type(trainer.precision_plugin) is Precision
        and isinstance(trainer.profiler, PassThroughProfiler)
    )


def direct_backward(plan) -> bool:
    """Whether ``plan.manual_backward(loss)`` amounts to ``loss.backward()`` in this fit."""
    import lightning.pytorch as pl

    trainer = plan.trainer
    return (
        _plain_trainer(trainer)
        and not is_overridden("backward", plan, parent=pl.LightningModule)
        and not _watched(_BACKWARD_HOOKS, plan, pl.LightningModule, trainer.callbacks)
    )


def _plain_optimizer(opt) -> bool:
    """scprob's Adam / AdamW with nothing around its step: no per-instance wrapper (an LR
    scheduler's step tracking, a user's patch), no torch step hooks, no torch profiler."""
    return (
        isinstance(opt, (Adam, AdamW))
        and "step" not in vars(opt)
        and not opt._optimizer_step_pre_hooks
        and not opt._optimizer_step_post_hooks
        and not torch_optimizer._global_optimizer_pre_hooks
        and not torch_optimizer._global_optimizer_post_hooks
        and not torch.autograd.profiler._is_profiler_enabled
    )


def direct_optimizer_step(plan) -> Callable | None:
    """A function ``step(lightning_optimizer)`` doing what ``lightning_optimizer.step()``
    amounts to in this fit of ``plan`` (manual optimization), or None when Lightning's path
    must run: its progress count (``global_step``), the plan's ``on_before_optimizer_step``
    (the gradient check), the optimizer's update.  An optimizer that is not plain
    (:func:`_plain_optimizer`, checked at every step) takes ``lightning_optimizer.step()``."""
    from .plan import TrainingPlan

    trainer = plan.trainer
    if (
        plan.automatic_optimization
        or not _plain_trainer(trainer)
        or _watched(_STEP_HOOKS, plan, TrainingPlan, trainer.callbacks)
    ):
        return None
    progress = trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress

    def step(lightning_optimizer) -> None:
        opt = lightning_optimizer.optimizer
        if not _plain_optimizer(opt):
            lightning_optimizer.step()
            return
        progress.increment_ready()
        plan.on_before_optimizer_step(opt)
        if not opt._direct(opt):  # a case the direct update does not cover: the full step
            type(opt).step(opt)
        progress.increment_completed()

    return step
