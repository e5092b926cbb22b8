"""Lightning training plans.  A plan trains any module through the LossOutput protocol.

:class:`TrainingPlan` minimizes the negative ELBO with a KL warm-up weight

    beta(t) = min_kl + (max_kl - min_kl) * min(1, t / T)

over epochs (``n_epochs_kl_warmup``) or steps (``n_steps_kl_warmup``, which wins when
set), using Adam(lr, eps, weight decay) and optionally ReduceLROnPlateau.  Per-step
work is one forward/backward; sums for the epoch metrics stay on the device and are
reduced across ranks once per epoch into ``history``.

Plans step their optimizers themselves (Lightning's manual optimization): the same
zero-grad / backward / step as automatic optimization, without its per-step closure
and hook machinery (~0.2 ms a step on a CPU).  Gradient clipping is the plan's
(``gradient_clip_val`` / ``gradient_clip_algorithm``; ``train(gradient_clip_val=...)``
passes them on), and ReduceLROnPlateau is stepped at the end of each training epoch on
``lr_scheduler_metric``.
"""

from __future__ import annotations

import contextlib
import math
from collections import defaultdict

import lightning.pytorch as pl
import torch

from ..data.keys import Keys
from ..modules.base import LossOutput
from ._sums import EpochSums
from .optim import Adam, AdamW
from .steps import direct_backward, direct_optimizer_step, minibatches


class NonFiniteLossError(FloatingPointError):
    """Training met a non-finite loss or gradient (raised by every plan; the model keeps
    its last finite weights and the history of the completed epochs)."""


def _non_finite_terms(lo: LossOutput | None) -> list[str]:
    if lo is None:
        return []
    bad = []
    for name in ("reconstruction_loss", "kl_local", "kl_global", "extra_metrics"):
        value = getattr(lo, name)
        items = value.items() if isinstance(value, dict) else [(name, value)]
        for key, v in items:
            if v is not None and not bool(torch.isfinite(torch.as_tensor(v).detach()).all()):
                bad.append(key)
    if not bad and not bool(torch.isfinite(lo.loss.detach()).all()):
        bad.append("loss")
    return bad


_ONE: dict[torch.device, torch.Tensor] = {}  # the unit scale, per device (not rebuilt every step)


def _all_finite(grads: list[torch.Tensor], on_host: bool = False) -> torch.Tensor | bool:
    """Whether every gradient entry is finite: a 0-d bool tensor (no wait for the device),
    or with ``on_host`` a bool.  One fused kernel over all gradients (the check GradScaler
    runs, with a unit scale: nothing is modified), where the total-norm route costs a norm
    per tensor, a stack and a norm (~3x the time)."""
    g0 = grads[0]
    if g0.dtype in (torch.float32, torch.float64) and all(g.dtype is g0.dtype for g in grads) \
            and len({g.get_device() for g in grads}) == 1:
        found = torch.zeros(1, device=g0.device, dtype=torch.float32)
        one = _ONE.get(g0.device)
        if one is None:
            one = _ONE[g0.device] = torch.ones(1, device=g0.device, dtype=torch.float32)
        torch._amp_foreach_non_finite_check_and_unscale_(grads, found, one)
        return found.item() == 0 if on_host else found[0] == 0
    finite = torch.isfinite(torch.nn.utils.get_total_norm(grads, error_if_nonfinite=False))
    return bool(finite) if on_host else finite


def _can_fuse(params: list[torch.Tensor]) -> bool:
    devices = {p.device.type for p in params}
    return len(devices) == 1 and devices <= {"cpu", "cuda"} and all(p.dtype in (torch.float32, torch.float64) for p in params)


class TrainingPlan(pl.LightningModule):
    def __init__(
        self,
        module: torch.nn.Module,
        lr: float = 1e-3,
        weight_decay: float = 1e-6,
        eps: float = 0.01,
        optimizer: str = "Adam",
        n_steps_kl_warmup: int | None = None,
        n_epochs_kl_warmup: int | None = 400,
        max_kl_weight: float = 1.0,
        min_kl_weight: float = 0.0,
        reduce_lr_on_plateau: bool = False,
        lr_factor: float = 0.6,
        lr_patience: int = 30,
        lr_threshold: float = 0.0,
        lr_min: float = 0.0,
        lr_scheduler_metric: str = "elbo_validation",
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str = "norm",
    ):
        super().__init__()
        self.automatic_optimization = False
        self.gradient_clip_val, self.gradient_clip_algorithm = gradient_clip_val, gradient_clip_algorithm
        self.module = module
        self.lr, self.weight_decay, self.eps, self.optimizer_name = lr, weight_decay, eps, optimizer
        self.n_steps_kl_warmup, self.n_epochs_kl_warmup = n_steps_kl_warmup, n_epochs_kl_warmup
        self.max_kl_weight, self.min_kl_weight = max_kl_weight, min_kl_weight
        self.reduce_lr_on_plateau = reduce_lr_on_plateau
        self.lr_factor, self.lr_patience, self.lr_threshold, self.lr_min = lr_factor, lr_patience, lr_threshold, lr_min
        self.lr_scheduler_metric = lr_scheduler_metric
        self.history: dict[str, list[tuple[int, float]]] = defaultdict(list)
        self._acc: dict = {}
        self._direct_backward = False
        self._direct_step = None

    def __setattr__(self, name: str, value) -> None:
        # Lightning rewrites plain attributes (``_current_fx_name``, ...) around every hook,
        # ~30 times a step; nn.Module.__setattr__'s registry checks cost ~3 us each.  A name
        # already in __dict__ is no parameter, buffer or submodule, so a plain value can be
        # stored directly (what nn.Module would end up doing).
        if name in self.__dict__ and not isinstance(value, (torch.Tensor, torch.nn.Module)):
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    # ------------------------------------------------------------ KL warm-up
    @property
    def kl_weight(self) -> float:
        span = self.max_kl_weight - self.min_kl_weight
        if self.n_steps_kl_warmup:
            frac = self.global_step / self.n_steps_kl_warmup
        elif self.n_epochs_kl_warmup:
            frac = self.current_epoch / self.n_epochs_kl_warmup
        else:
            return self.max_kl_weight
        return self.min_kl_weight + span * min(1.0, frac)

    # ------------------------------------------------------------ NaN guard
    # Every optimizer step is preceded by a check of the gradients (and the training loss
    # is checked when it is computed): on the CPU the first non-finite value stops
    # training before the weights change.  On a GPU the check stays on the device (no
    # per-step synchronisation) and is read once per epoch; the weights then go back to
    # the snapshot taken at the start of that epoch.
    def _raise_non_finite(self, what: str, step: int | None = None) -> None:
        bad = _non_finite_terms(getattr(self, "_last_lo", None))
        where = f"epoch {self.current_epoch}, step {self.global_step if step is None else step}"
        terms = f"non-finite terms: {', '.join(bad)}" if bad else "the loss terms were finite; the gradient overflowed"
        raise NonFiniteLossError(
            f"Training stopped at {where}: the {what} is not finite ({terms}). The model keeps its last finite "
            f"weights and the history of the completed epochs. Likely fixes: a lower learning rate "
            f"(plan_kwargs={{'lr': ...}}; it is {getattr(self, 'lr', '?')}); check the input's scale (count "
            "likelihoods expect raw counts; very large values or a wrong layer overflow the likelihood)."
        )

    def _on_device_check(self) -> bool:
        return self.device.type != "cpu"

    def on_train_start(self) -> None:
        self._direct_backward = direct_backward(self)
        self._direct_step = direct_optimizer_step(self)

    def on_train_epoch_start(self) -> None:
        self._bad_step = None
        if self._on_device_check():
            self._snapshot = {k: v.detach().clone() for k, v in self.module.state_dict().items()}

    def on_before_optimizer_step(self, optimizer) -> None:
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if not grads:
            return
        if not self._on_device_check():
            if not _all_finite(grads, on_host=True):
                self._raise_non_finite("gradient")
            return
        finite = _all_finite(grads)
        flag = torch.where(finite, torch.full_like(finite, 0, dtype=torch.long), self.global_step + 1)
        self._bad_step = flag if self._bad_step is None else torch.where(self._bad_step > 0, self._bad_step, flag)

    def _check_epoch(self) -> None:
        """GPU path: read the device-side flag once per epoch."""
        if self._on_device_check() and getattr(self, "_bad_step", None) is not None:
            step = int(self._bad_step)
            if step > 0:
                self.module.load_state_dict(self._snapshot)
                self._acc.pop("train", None)
                self._raise_non_finite("gradient", step=step - 1)

    # ------------------------------------------------------------- metrics
    def _accumulate(self, split: str, lo: LossOutput) -> None:
        if split == "train":
            self._last_lo = lo
            if not self._on_device_check() and not math.isfinite(lo.loss.item()):
                self._raise_non_finite("training loss")
        acc = self._acc.get(split)
        if acc is None:
            acc = self._acc[split] = EpochSums()
        acc.add(lo)

    def _flush(self, split: str) -> None:
        acc = self._acc.pop(split, None)
        if acc is None or self.trainer.sanity_checking:
            return
        core = self.trainer.strategy.reduce(acc.core(), reduce_op="sum")
        rec, kl_local, kl_global, loss_sum, n_steps, n_obs = core.tolist()
        metrics = {
            f"elbo_{split}": (rec + kl_local + kl_global) / n_obs,
            f"reconstruction_loss_{split}": rec / n_obs,
            f"kl_local_{split}": kl_local / n_obs,
            f"kl_global_{split}": kl_global / n_obs,
        }
        for k, v in acc.extras().items():
            metrics[f"{k}_{split}"] = float(self.trainer.strategy.reduce(v, reduce_op="sum")) / n_obs
        self._record_epoch(split, metrics, loss_sum / n_steps)

    def _record_epoch(self, split: str, metrics: dict, mean_loss: float) -> None:
        """Add the loss (and, for training, the KL weight and lr) to the epoch's metrics,
        append them to ``history`` and publish them once: into ``trainer.callback_metrics``
        (what EarlyStopping, ModelCheckpoint and the LR scheduler read) and to each of the
        Trainer's loggers.  Not through ``self.log``: Lightning's result collection moves
        every stored metric on each call, ~0.5 ms per key per epoch, a third of an epoch
        on small data.  The values are already reduced across processes (``_flush``)."""
        if split == "train":
            metrics.update(train_loss=mean_loss, kl_weight=self.kl_weight, lr=self.trainer.optimizers[0].param_groups[0]["lr"])
        else:
            metrics["validation_loss"] = mean_loss
        values = {k: float(v) for k, v in metrics.items()}
        for k, v in values.items():
            self.history[k].append((self.current_epoch, v))
        self.trainer.callback_metrics.update({k: torch.tensor(v) for k, v in values.items()})
        for lg in self.trainer.loggers:
            lg.log_metrics(values | {"epoch": self.current_epoch}, step=self.trainer.global_step)

    # ---------------------------------------------------------------- steps
    def _optimize(self, loss: torch.Tensor, optimizer=None) -> None:
        """One optimizer step on ``loss``: zero the gradients, backward, clip (when set),
        step (Lightning's ``on_before_optimizer_step`` runs the gradient check)."""
        opt = self.optimizers() if optimizer is None else optimizer
        opt.zero_grad(set_to_none=True)
        if self._direct_backward:
            loss.backward()
        else:
            self.manual_backward(loss)
        self._clip(opt)
        self._step(opt)

    def _step(self, opt) -> None:
        """``opt.step()``, or the direct step that amounts to it in this fit (:mod:`.steps`)."""
        if self._direct_step is not None:
            self._direct_step(opt)
        else:
            opt.step()

    def _clip(self, opt) -> None:
        """Clip ``opt``'s gradients when ``gradient_clip_val`` is set (manual optimization:
        Lightning leaves clipping to the plan)."""
        if self.gradient_clip_val:
            self.clip_gradients(opt, gradient_clip_val=self.gradient_clip_val,
                                gradient_clip_algorithm=self.gradient_clip_algorithm)

    def training_step(self, batch, batch_idx):
        """One step per minibatch: ``batch`` is one, or a group of them (:mod:`.steps`)."""
        max_steps = self.trainer.max_steps
        for b in minibatches(batch):
            if 0 <= max_steps <= self.global_step:
                break
            self.train_batch(b)

    def train_batch(self, batch) -> None:
        """Forward, epoch sums, and one optimizer step on one minibatch (what plans override)."""
        _, _, lo = self.module(batch, loss_kwargs={"kl_weight": self.kl_weight})
        self._accumulate("train", lo)
        self._optimize(lo.loss)

    def validation_step(self, batch, batch_idx):
        _, _, lo = self.module(batch, loss_kwargs={"kl_weight": self.kl_weight})
        self._accumulate("validation", lo)

    def on_train_epoch_end(self):
        self._check_epoch()
        self._flush("train")
        if not self.automatic_optimization and self.reduce_lr_on_plateau:
            value = self.trainer.callback_metrics.get(self.lr_scheduler_metric)
            if value is not None:
                self.lr_schedulers().step(float(value))

    def on_validation_epoch_end(self):
        self._flush("validation")

    def configure_optimizers(self):
        params = [p for p in self.module.parameters() if p.requires_grad]
        # the fused kernel runs the same Adam update in one pass over all parameters
        # (the default CPU path loops over tensors in Python)
        kw = dict(lr=self.lr, eps=self.eps, weight_decay=self.weight_decay, fused=_can_fuse(params))
        if self.optimizer_name == "Adam":
            opt = Adam(params, **kw)
        elif self.optimizer_name == "AdamW":
            opt = AdamW(params, **kw)
        else:
            raise ValueError(f"optimizer must be 'Adam' or 'AdamW', got {self.optimizer_name!r}")
        if not self.reduce_lr_on_plateau:
            return opt
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="min", factor=self.lr_factor, patience=self.lr_patience,
            threshold=self.lr_threshold, min_lr=self.lr_min,
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": self.lr_scheduler_metric}}


def _elbo_classes() -> dict[str, type]:
    import pyro.infer

    return {
        n: c for n in dir(pyro.infer)
        if isinstance(c := getattr(pyro.infer, n), type) and issubclass(c, pyro.infer.ELBO) and c is not pyro.infer.ELBO
    }


def resolve_elbo(loss_fn=None):
    """A Pyro ELBO instance from ``None`` (``Trace_ELBO()``), a class name in
    ``pyro.infer`` (``"TraceMeanField_ELBO"``), an ELBO class, or an instance."""
    import pyro.infer

    if loss_fn is None:
        return pyro.infer.Trace_ELBO()
    if isinstance(loss_fn, pyro.infer.ELBO):
        return loss_fn
    classes = _elbo_classes()
    if isinstance(loss_fn, str):
        if loss_fn not in classes:
            raise ValueError(f"loss_fn={loss_fn!r} is not an ELBO in pyro.infer; choose one of {sorted(classes)} or pass an instance")
        return classes[loss_fn]()
    if isinstance(loss_fn, type) and issubclass(loss_fn, pyro.infer.ELBO):
        return loss_fn()
    raise TypeError(f"loss_fn must be a pyro.infer ELBO (instance, class or name), got {type(loss_fn).__name__}")


class PyroTrainingPlan(TrainingPlan):
    r"""Stochastic variational inference for :class:`~scprob.modules.PyroBaseModule`.

    Each step estimates the ELBO of (model, guide) on the minibatch with ``loss_fn``
    (``Trace_ELBO()`` by default; any ``pyro.infer`` ELBO, given as an instance, a class
    or its name) and minimizes the per-cell negative ELBO

    .. math::

        \mathcal L = -\widehat{\mathrm{ELBO}} / n,\qquad n = \texttt{module.n\_obs}
        \ \text{(plate scaled to the data)}\ \text{or the minibatch size}

    with the torch optimizer of :class:`TrainingPlan` over ``module.parameters()`` (Adam,
    lr, eps, weight decay, optional ReduceLROnPlateau).  ELBOs with a
    ``differentiable_loss`` (``Trace_ELBO``, ``TraceMeanField_ELBO``, ``TraceEnum_ELBO``,
    ``Trace_MMD``, ...) train with Lightning's automatic optimization; those that only
    offer ``loss_and_grads`` (``TraceGraph_ELBO``, ``RenyiELBO``,
    ``ReweightedWakeSleep``) and the JIT-compiled ones (for modules without
    ``PyroModule`` parts) see the module's parameters through ``pyro.module`` and step
    manually.  Parameters are the module's own: a ``pyro.param`` site that is not a
    module parameter is refused after the first step.  KL warm-up: ``kl_weight`` (the schedule
    of :class:`TrainingPlan`, off by default) is passed to modules whose model takes it;
    validation always uses 1.  Every step runs inside the module's
    :meth:`~scprob.modules.PyroBaseModule.param_scope`.  Pyro's validation (shape and
    support checks, NaN hooks on the gradients: about 5% of a step) runs on the first
    training step, where a model error shows up, and then only with
    ``validate_every_step=True``.

    History per epoch: ``elbo_train`` (the minimized objective: with a KL weight below
    1 that is the annealed bound), ``elbo_validation`` (negative ELBO per cell, KL weight
    1), ``train_loss``, ``validation_loss``, ``kl_weight``, ``lr``.
    """

    def __init__(self, module, loss_fn=None, n_epochs_kl_warmup: int | None = None, validate_every_step: bool = False,
                 **kwargs):
        from ..modules.base import PyroBaseModule

        if not isinstance(module, PyroBaseModule):
            raise TypeError(f"PyroTrainingPlan trains a PyroBaseModule, got {type(module).__name__}")
        super().__init__(module, n_epochs_kl_warmup=n_epochs_kl_warmup, **kwargs)
        self.loss_fn = resolve_elbo(loss_fn)
        self._pass_kl = module.uses_kl_weight
        if (self.n_epochs_kl_warmup or self.n_steps_kl_warmup) and not self._pass_kl:
            raise ValueError(
                f"KL warm-up requested, but {type(module).__name__}.model takes no kl_weight argument to apply it to; "
                "pass n_epochs_kl_warmup=None or add kl_weight to model and guide"
            )
        self._jit = type(self.loss_fn).__name__.startswith("Jit")
        if self._jit:
            from pyro.nn import PyroModule

            if any(isinstance(m, PyroModule) for m in module.modules()):
                raise ValueError(
                    f"{type(self.loss_fn).__name__} cannot train {type(module).__name__}: it holds PyroModule parameters "
                    "(e.g. an automatic guide), which the JIT compiler would find twice (as module and as param-store "
                    f"parameters); use {type(self.loss_fn).__name__[3:]} instead"
                )
        if self._jit and self._pass_kl and (self.n_epochs_kl_warmup or self.n_steps_kl_warmup):
            raise ValueError(
                f"{type(self.loss_fn).__name__} recompiles for every new kl_weight: turn the KL warm-up off "
                "(n_epochs_kl_warmup=None, n_steps_kl_warmup=None) or use a non-JIT ELBO"
            )
        # automatic optimization needs a differentiable loss; JIT ELBOs find parameters only
        # in the param store, so they go through pyro.module like loss_and_grads-only ELBOs
        self.automatic_optimization = hasattr(self.loss_fn, "differentiable_loss") and not self._jit
        if self.automatic_optimization:
            self._model, self._guide = module.model, module.guide
        else:
            self._model, self._guide = _registering(module.model, module), _registering(module.guide, module)
        self._store_checked = False
        self.validate_every_step = validate_every_step

    # --------------------------------------------------------------- steps
    def _args(self, batch, kl_weight: float) -> tuple[tuple, dict, int]:
        args, kwargs = self.module._get_fn_args_from_batch(batch)
        if self._pass_kl:
            kwargs = {**kwargs, "kl_weight": kl_weight}
        idx = batch.get(Keys.INDICES)
        n_batch = int(idx.shape[0]) if idx is not None else int(next(iter(batch.values())).shape[0])
        return args, kwargs, n_batch

    def _per_cell(self, value, n_batch: int):
        return value / float(self.module.n_obs or n_batch)

    def _record(self, split: str, per_cell: torch.Tensor, n_batch: int) -> None:
        vals = torch.stack([per_cell.detach() * n_batch, torch.full_like(per_cell, n_batch), per_cell.detach(), torch.ones_like(per_cell)])
        acc = self._acc.get(split)
        self._acc[split] = {"core": vals if acc is None else acc["core"] + vals}

    def _validation(self):
        """Pyro's checks (shapes, supports, NaN hooks on gradients) as configured for the
        first training step; off afterwards unless ``validate_every_step``."""
        if self.validate_every_step or not self._store_checked:
            return contextlib.nullcontext()
        import pyro

        return pyro.validation_enabled(False)

    def _check_store(self) -> None:
        """After the first step: every tensor the module put in its param store must be one
        of its parameters (else the optimizer would not train it and save would lose it)."""
        owned = {id(p) for p in self.module.parameters()}
        stray = sorted(k for k, v in self.module._pyro_param_state["params"].items() if id(v) not in owned)
        if stray:
            raise RuntimeError(
                f"{type(self.module).__name__} created pyro.param site(s) {stray} that are not module parameters: "
                "declare them as nn.Parameter (or PyroParam of a PyroModule) so that they are trained and saved"
            )
        self._store_checked = True

    def training_step(self, batch, batch_idx):
        args, kwargs, n_batch = self._args(batch, self.kl_weight)
        if self.automatic_optimization:
            with self.module.param_scope(), self._validation():
                loss = self._per_cell(self.loss_fn.differentiable_loss(self._model, self._guide, *args, **kwargs), n_batch)
            if not self._store_checked:
                self._check_store()
            self._record("train", loss, n_batch)
            return loss
        opt = self.optimizers()
        opt.zero_grad()
        with self.module.param_scope(), self._validation():
            value = self.loss_fn.loss_and_grads(self._model, self._guide, *args, **kwargs)
        if not self._store_checked:
            self._check_store()
        scale = 1.0 / float(self.module.n_obs or n_batch)
        for group in opt.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.mul_(scale)
        self._clip(opt)
        self._step(opt)
        self._record("train", torch.as_tensor(_first(value) * scale, device=self.device, dtype=torch.float32), n_batch)
        return None

    def validation_step(self, batch, batch_idx):
        args, kwargs, n_batch = self._args(batch, 1.0)
        with self.module.param_scope(), self._validation():
            if self.automatic_optimization:
                value = self.loss_fn.differentiable_loss(self._model, self._guide, *args, **kwargs)
            else:
                value = torch.as_tensor(_first(self.loss_fn.loss(self._model, self._guide, *args, **kwargs)), device=self.device)
        self._record("validation", self._per_cell(value.float(), n_batch), n_batch)

    def _flush(self, split: str) -> None:
        acc = self._acc.pop(split, None)
        if acc is None or self.trainer.sanity_checking:
            return
        weighted, n_cells, loss_sum, n_steps = self.trainer.strategy.reduce(acc["core"], reduce_op="sum").tolist()
        self._record_epoch(split, {f"elbo_{split}": weighted / n_cells}, loss_sum / n_steps)

    def configure_optimizers(self):
        from pyro.infer.autoguide import AutoGuide

        lazy = [name or type(m).__name__ for name, m in self.module.named_modules()
                if isinstance(m, AutoGuide) and getattr(m, "prototype_trace", None) is None]
        if lazy:
            raise RuntimeError(
                f"{type(self.module).__name__}: automatic guide(s) {lazy} have no parameters yet; call "
                "self._init_guide(<example args>) at the end of the module's __init__ so the optimizer sees them"
            )
        return super().configure_optimizers()


def _first(value) -> float:
    """The loss of ``loss``/``loss_and_grads`` (ReweightedWakeSleep returns (model, guide) losses)."""
    return float(value[0] if isinstance(value, tuple) else value)


def _registering(fn, module):
    """``fn`` preceded by ``pyro.module``: the module's parameters appear as param sites
    (in the module's own param store, see ``param_scope``)."""
    import pyro

    def wrapped(*args, **kwargs):
        pyro.module("scprob", module)
        return fn(*args, **kwargs)

    return wrapped


class FlowTrainingPlan(TrainingPlan):
    """Maximum likelihood for a normalizing-flow module with a mixture prior (Scyan).

    Per epoch ``e``: the module's loss is called with ``use_temperature = (e % modulo_temp
    > 0)`` (temperature epochs up-weight small populations; every ``modulo_temp``-th
    epoch fits the population weights), and the generative step with
    ``prior_std = warm_up[0]`` for the first ``warm_up[1]`` epochs (a wider prior while
    the flow is far from the table) and the module's own ``prior_std`` after.  Adam, no
    KL warm-up; the logged ``elbo_*`` is the exact per-cell negative log-likelihood.
    """

    def __init__(self, module, lr: float = 1e-3, weight_decay: float = 0.0, eps: float = 1e-8, modulo_temp: int = 3,
                 warm_up: tuple[float, int] | None = (0.35, 4), **kwargs):
        kwargs.setdefault("n_epochs_kl_warmup", None)
        super().__init__(module, lr=lr, weight_decay=weight_decay, eps=eps, **kwargs)
        self.modulo_temp = int(modulo_temp)
        self.warm_up = warm_up

    def _prior_std(self) -> float | None:
        if self.warm_up is not None and self.current_epoch < self.warm_up[1]:
            return float(self.warm_up[0])
        return None

    def _use_temperature(self) -> bool:
        return self.modulo_temp > 1 and self.current_epoch % self.modulo_temp > 0

    def may_stop_after_epoch(self) -> bool:
        """Early stopping waits for an epoch of the exact objective: the fitted model is
        never the one a temperature-weighted epoch left."""
        return not self._use_temperature()

    def train_batch(self, batch) -> None:
        _, _, lo = self.module(
            batch, generative_kwargs={"prior_std": self._prior_std()},
            loss_kwargs={"use_temperature": self._use_temperature()},
        )
        self._accumulate("train", lo)
        self._optimize(lo.loss)

    def validation_step(self, batch, batch_idx):
        _, _, lo = self.module(batch)
        self._accumulate("validation", lo)
