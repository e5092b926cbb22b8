"""scprob.train.optim: the direct fused Adam / AdamW step gives PyTorch's results."""

import copy

import pytest
import torch

from scprob.train.optim import Adam, AdamW

PAIRS = [(Adam, torch.optim.Adam), (AdamW, torch.optim.AdamW)]


def _params(seed: int = 0) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(*s, generator=g)) for s in [(7, 5), (5,), (3, 7), (1,)]]


def _grads(step: int, n: int) -> list[torch.Tensor | None]:
    g = torch.Generator().manual_seed(100 + step)
    out = [torch.randn(*s, generator=g) for s in [(7, 5), (5,), (3, 7), (1,)]][:n]
    if step in (2, 3):  # a parameter without a gradient skips its update (and its step count)
        out[1] = None
    return out


def _run(cls, steps: int = 6, fused: bool = True, **kw) -> tuple[list[torch.Tensor], torch.optim.Optimizer]:
    ps = _params()
    opt = cls(ps, lr=1e-2, eps=1e-3, weight_decay=1e-2, fused=fused, **kw)
    for t in range(steps):
        for p, g in zip(ps, _grads(t, len(ps))):
            p.grad = None if g is None else g.clone()
        opt.step()
    return [p.detach().clone() for p in ps], opt


@pytest.mark.parametrize("ours, theirs", PAIRS)
def test_direct_step_equals_torch(ours, theirs):
    a, opt_a = _run(ours)
    b, opt_b = _run(theirs)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    sa, sb = opt_a.state_dict()["state"], opt_b.state_dict()["state"]
    assert [float(sa[i]["step"]) for i in sorted(sa)] == [float(sb[i]["step"]) for i in sorted(sb)] == [6, 4, 6, 6]
    for i in sa:
        assert torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"])


@pytest.mark.parametrize("ours, theirs", PAIRS)
def test_state_dict_moves_both_ways(ours, theirs):
    _, opt_ref = _run(theirs, steps=8)
    ref = [p.detach().clone() for p in opt_ref.param_groups[0]["params"]]
    for first, second in [(ours, theirs), (theirs, ours)]:
        ps, opt = _run(first, steps=4)
        params = [torch.nn.Parameter(p.clone()) for p in ps]
        opt2 = second(params, lr=1e-2, eps=1e-3, weight_decay=1e-2, fused=True)
        opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
        for t in range(4, 8):
            for p, g in zip(params, _grads(t, len(params))):
                p.grad = None if g is None else g.clone()
            opt2.step()
        for x, y in zip(params, ref):
            assert torch.equal(x.detach(), y)


def test_unfused_and_amsgrad_take_the_parent_step():
    for kw in [dict(fused=False), dict(amsgrad=True)]:
        a, _ = _run(Adam, **kw)
        b, _ = _run(torch.optim.Adam, **kw)
        for x, y in zip(a, b):
            assert torch.equal(x, y)


def test_closure_is_evaluated():
    p = torch.nn.Parameter(torch.ones(3))
    opt = Adam([p], lr=0.1, fused=True)

    def closure():
        opt.zero_grad()
        loss = (p**2).sum()
        loss.backward()
        return loss

    assert float(opt.step(closure).detach()) == 3.0
    assert (p < 1).all()


@pytest.mark.parametrize("ours, theirs", PAIRS)
def test_column_major_parameter_gives_the_same_update(ours, theirs):
    """A column-major weight is updated through its contiguous transposed view: PyTorch's
    update of a row-major copy (to rounding: the kernel's vector body and scalar tail
    meet other elements in the other order)."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(6, 9, generator=g)
    col = torch.nn.Parameter(w.t().contiguous().t())
    row = torch.nn.Parameter(w.clone())
    assert not col.is_contiguous()
    opt_c = ours([col], lr=1e-2, eps=1e-3, weight_decay=1e-2, fused=True)
    opt_r = theirs([row], lr=1e-2, eps=1e-3, weight_decay=1e-2, fused=True)
    for _ in range(4):
        grad = torch.randn(6, 9, generator=g)
        col.grad, row.grad = grad.t().contiguous().t(), grad.clone()
        opt_c.step()
        opt_r.step()
    assert col.stride() == (1, 6)
    torch.testing.assert_close(col.detach(), row.detach(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(opt_c.state[col]["exp_avg_sq"], opt_r.state[row]["exp_avg_sq"], rtol=1e-6, atol=1e-9)


def test_direct_step_runs_under_lightning(monkeypatch):
    """Lightning hands the optimizer a closure on every step: the direct path still runs."""
    from scprob.models import SCVI
    from scprob.train import optim

    from .conftest import make_counts

    calls = []
    real = optim._DirectStep.__call__

    def counting(self, opt):
        done = real(self, opt)
        calls.append(done)
        return done

    monkeypatch.setattr(optim._DirectStep, "__call__", counting)
    adata = make_counts(60, 20)
    SCVI.setup_anndata(adata)
    SCVI(adata, n_hidden=8, n_latent=2).train(max_epochs=1, batch_size=30, train_size=1.0)
    assert calls and all(calls)


@pytest.mark.parametrize("cls", [Adam, AdamW])
def test_zero_grad(cls):
    ps = _params()
    opt = cls(ps, lr=0.1, fused=True)
    for p in ps:
        p.grad = torch.ones_like(p)
    opt.zero_grad(set_to_none=False)
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in ps)
    opt.zero_grad()
    assert all(p.grad is None for p in ps)
