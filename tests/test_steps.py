"""scprob.train.steps and the plan's per-step bookkeeping: grouping minibatches into one
Lightning batch, the direct backward and the deferred epoch sums change no result."""

import math

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from scprob.models import SCVI
from scprob.modules.base import LossOutput
from scprob.train import NonFiniteLossError, steps
from scprob.train._sums import EpochSums
from tests.conftest import make_counts


class Seen(Callback):
    """Records Lightning's view of the run (epoch hooks only: grouping stays on)."""

    def __init__(self):
        self.n_batches, self.global_step, self.direct, self.direct_step = [], None, None, None

    def on_train_epoch_end(self, trainer, pl_module):
        self.n_batches.append(trainer.num_training_batches)
        self.global_step, self.direct = trainer.global_step, pl_module._direct_backward
        self.direct_step = pl_module._direct_step is not None


class CountBatches(Callback):
    def __init__(self):
        self.batches = self.backwards = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.batches += 1

    def on_before_backward(self, trainer, pl_module, loss):
        self.backwards += 1


def _fit(callbacks, **kw):
    adata = make_counts(n_cells=300, n_genes=30)
    SCVI.setup_anndata(adata, batch_key="batch")
    torch.manual_seed(0)
    model = SCVI(adata, n_hidden=16, n_latent=4)
    model.train(max_epochs=3, batch_size=32, train_size=0.9, enable_progress_bar=False, seed=0, callbacks=callbacks,
                **kw)
    return model


def test_grouped_steps_train_exactly_as_ungrouped():
    seen, counter = Seen(), CountBatches()
    grouped = _fit([seen])
    plain = _fit([counter])  # a per-batch hook turns grouping off
    n_steps = math.ceil(270 / 32)  # 9 minibatches an epoch
    assert seen.n_batches == [math.ceil(n_steps / steps.GROUP_SIZE)] * 3
    assert seen.global_step == 3 * n_steps
    assert counter.batches == 3 * n_steps and counter.backwards == 3 * n_steps
    for k, v in grouped.module.state_dict().items():
        assert torch.equal(v, plain.module.state_dict()[k]), k
    for col in ("elbo_train", "elbo_validation", "reconstruction_loss_train", "kl_local_train"):
        assert grouped.history[col].iloc[:, 0].tolist() == pytest.approx(plain.history[col].iloc[:, 0].tolist(), rel=1e-6)


def test_max_steps_is_honoured_inside_a_group():
    seen = Seen()
    _fit([seen], max_steps=5)
    assert seen.global_step == 5


def test_backward_goes_through_lightning_when_a_hook_watches():
    seen, counter = Seen(), CountBatches()
    _fit([seen])
    assert seen.direct is True
    _fit([seen, counter])
    assert seen.direct is False and counter.backwards > 0


class BeforeStep(Callback):
    def __init__(self):
        self.calls = 0

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.calls += 1


def test_direct_optimizer_step_trains_exactly_as_lightnings():
    """The direct step (progress count, gradient check, update) against Lightning's
    ``LightningOptimizer.step``, which a callback's ``on_before_optimizer_step`` brings back."""
    seen, watcher = Seen(), BeforeStep()
    direct = _fit([seen])
    lightning = _fit([watcher])
    assert seen.direct_step
    assert watcher.calls == 3 * math.ceil(270 / 32)  # Lightning's path: the hook ran every step
    for k, v in direct.module.state_dict().items():
        assert torch.equal(v, lightning.module.state_dict()[k]), k
    assert direct.history["elbo_validation"].iloc[:, 0].tolist() == lightning.history["elbo_validation"].iloc[:, 0].tolist()


def test_direct_optimizer_step_keeps_step_hooks_lr_schedulers_and_the_gradient_check():
    """Torch step hooks and an LR scheduler's step tracking send each step through the
    optimizer's own ``step``; a non-finite gradient still stops training by name."""
    calls = []

    class HookOnStart(Callback):
        def on_train_start(self, trainer, pl_module):
            trainer.optimizers[0].register_step_post_hook(lambda opt, args, kwargs: calls.append(1))

    seen = Seen()
    model = _fit([seen, HookOnStart()])
    assert seen.direct_step and len(calls) == seen.global_step == 3 * math.ceil(270 / 32)
    model = _fit([], plan_kwargs=dict(reduce_lr_on_plateau=True, lr_patience=1))
    assert len(model.history["lr"]) == 3

    direct = []

    class NaNGradient(Callback):  # a finite loss whose gradient is not: only the gradient check sees it
        def on_train_start(self, trainer, pl_module):
            def poison(g):
                direct.append(pl_module._direct_step is not None)
                return g * float("nan")

            next(pl_module.module.parameters()).register_hook(poison)

    with pytest.raises(NonFiniteLossError, match="gradient is not finite"):
        _fit([NaNGradient()])
    assert direct == [True]  # stopped at the first step, taken on the direct path


def test_epoch_sums_fold_every_k_steps():
    g = torch.Generator().manual_seed(0)
    outs = []
    for i in range(11):
        n = 5 if i < 10 else 3
        rec, kz, kl = (torch.rand(n, generator=g) for _ in range(3))
        outs.append(LossOutput(loss=rec.mean(), reconstruction_loss={"a": rec, "b": 2 * rec},
                               kl_local=dict(z=kz, l=kl), kl_global=torch.tensor(0.5) if i % 2 else 0.25,
                               extra_metrics={"m": rec.sum()}))
    sums = EpochSums(fold_every=4)
    for lo in outs:
        sums.add(lo)
    rec, kl_local, kl_global, loss, n_steps, n_obs = sums.core().tolist()
    assert rec == pytest.approx(sum(3 * float(lo.reconstruction_loss["a"].sum()) for lo in outs), rel=1e-6)
    assert kl_local == pytest.approx(sum(float(lo.kl_local["z"].sum() + lo.kl_local["l"].sum()) for lo in outs), rel=1e-6)
    assert kl_global == pytest.approx(sum(float(lo.kl_global) * lo.n_obs_minibatch for lo in outs), rel=1e-6)
    assert loss == pytest.approx(sum(float(lo.loss) for lo in outs), rel=1e-6)
    assert (n_steps, n_obs) == (11, 53)
    assert float(sums.extras()["m"]) == pytest.approx(sum(float(lo.extra_metrics["m"]) for lo in outs), rel=1e-6)


def test_plan_plain_attribute_fast_path_keeps_module_semantics():
    from scprob.train import TrainingPlan

    plan = TrainingPlan(torch.nn.Linear(2, 2))
    plan.note = 1
    plan.note = "two"
    assert plan.note == "two" and "note" not in plan._modules
    plan.head = torch.nn.Linear(2, 1)  # a module still registers
    assert "head" in plan._modules
    with pytest.raises(TypeError):
        plan.head = 3  # as nn.Module: a child module cannot become a number
    plan.w = torch.nn.Parameter(torch.zeros(1))
    assert "w" in plan._parameters


def test_training_freezes_the_heap_only_while_it_runs():
    import gc

    seen = []

    class FreezeCount(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            seen.append(gc.get_freeze_count())

    _fit([FreezeCount()])
    assert seen and all(c > 0 for c in seen)  # the objects alive at the start are frozen
    assert gc.get_freeze_count() == 0  # and thawed afterwards
    gc.freeze()  # a caller's own freeze is left as it is
    try:
        before = gc.get_freeze_count()
        _fit([])
        assert before > 0 and gc.get_freeze_count() > before // 2  # not thawed by training
    finally:
        gc.unfreeze()


def test_kl_rows_function_matches_torch():
    from torch.distributions import Normal, kl_divergence

    from scprob.distributions import kl_std_normal_rows

    m = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    s = (torch.rand(6, 4, dtype=torch.float64) + 0.1).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: kl_std_normal_rows(Normal(a, b)), (m, s))
    ref = kl_divergence(Normal(m, s), Normal(torch.zeros_like(m), torch.ones_like(s))).sum(-1)
    torch.testing.assert_close(kl_std_normal_rows(Normal(m, s)), ref)
