"""scprob.nn._fused_post: BatchNorm1d -> ReLU [-> Dropout] in one numba pass computes
what the modules compute (outputs, gradients, running statistics), and steps aside
wherever it does not apply."""

import pytest
import torch
from torch import nn

from scprob.nn import _fused_post as FP
from scprob.nn.fc import Dropout, FCLayers

pytestmark = pytest.mark.skipif(FP._bn_kernels() is None, reason="numba not installed")


def _pair(n_f: int, dtype=torch.float32, drop: float | None = None):
    torch.manual_seed(0)
    post = nn.Sequential(nn.BatchNorm1d(n_f, momentum=0.01, eps=1e-3), nn.ReLU(), *([Dropout(drop)] if drop else []))
    post = post.to(dtype).train()
    with torch.no_grad():
        post[0].weight.uniform_(0.5, 1.5)
        post[0].bias.uniform_(-0.5, 0.5)
        post[0].running_mean.uniform_(-1, 1)
    ref = nn.Sequential(nn.BatchNorm1d(n_f, momentum=0.01, eps=1e-3), nn.ReLU()).to(dtype).train()
    ref[0].load_state_dict(post[0].state_dict())
    return post, ref


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_matches_batchnorm_relu(dtype, tol):
    post, ref = _pair(24, dtype)
    h = (torch.randn(40, 24, dtype=dtype) * 3 + 1).requires_grad_()
    h2 = h.detach().clone().requires_grad_()
    w = torch.randn(40, 24, dtype=dtype)
    out = FP.fused_post(post, h)
    assert out is not None
    (out * w).sum().backward()
    expect = ref(h2)
    (expect * w).sum().backward()
    kw = dict(rtol=tol, atol=tol)
    torch.testing.assert_close(out, expect, **kw)
    torch.testing.assert_close(h.grad, h2.grad, **kw)
    torch.testing.assert_close(post[0].weight.grad, ref[0].weight.grad, **kw)
    torch.testing.assert_close(post[0].bias.grad, ref[0].bias.grad, **kw)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(post[0], name), getattr(ref[0], name), **kw)


def test_gradcheck_float64():
    post, _ = _pair(5, torch.float64)
    h = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, g, b: FP._BNReLUDropout.apply(x, g, b, post[0], 0, FP._bn_kernels()),
                                    (h, post[0].weight, post[0].bias))


def test_dropout_masks_the_batchnorm_relu_output():
    post, ref = _pair(64, drop=0.25)
    h = torch.randn(256, 64, requires_grad=True)
    torch.manual_seed(3)
    out = FP.fused_post(post, h)
    expect = ref(h.detach())
    scale = 65536 / (65536 - round(0.25 * 65536))
    alive = expect > 1e-3  # (near 0 the two float32 paths' rounding dominates the ratio)
    ratio = out[alive] / expect[alive]
    assert torch.all((ratio == 0) | torch.isclose(ratio, torch.tensor(scale), rtol=1e-4))
    assert abs((ratio == 0).float().mean().item() - 0.25) < 0.02
    assert torch.equal(out[expect == 0], torch.zeros_like(out[expect == 0]))
    out.sum().backward()  # d out / d(relu output) is the mask: zero where dropped
    kept = (out != 0)
    assert torch.all(h.grad.abs().sum(0) > 0)
    torch.manual_seed(3)
    again = FP.fused_post(post, h.detach())  # same torch seed, same mask
    assert torch.equal(again != 0, kept)


def test_other_configurations_use_the_modules():
    post, _ = _pair(8)
    h = torch.randn(6, 8)
    assert FP.fused_post(post.eval(), h) is None  # eval: running statistics, modules
    post.train()
    assert FP.fused_post(post, h[:1]) is None  # one row: BatchNorm's own error
    assert FP.fused_post(nn.Sequential(nn.BatchNorm1d(8), nn.LeakyReLU()).train(), h) is None
    assert FP.fused_post(nn.Sequential(nn.BatchNorm1d(8, momentum=None), nn.ReLU()).train(), h) is None
    assert FP.fused_post(nn.Sequential(nn.BatchNorm1d(8, affine=False), nn.ReLU()).train(), h) is None


def test_fclayers_train_step_equals_module_path():
    torch.manual_seed(0)
    layers = FCLayers(10, 6, n_cats=[3], n_layers=2, n_hidden=16, dropout_rate=0.0).train()
    x, c = torch.randn(20, 10), torch.randint(0, 3, (20, 1))
    out = layers(x, c)
    out.square().sum().backward()
    grads = {k: p.grad.clone() for k, p in layers.named_parameters()}
    layers.zero_grad()
    saved = FP._KERNELS[:]
    FP._KERNELS[:] = [None, True]
    try:
        torch.manual_seed(0)
        ref_layers = FCLayers(10, 6, n_cats=[3], n_layers=2, n_hidden=16, dropout_rate=0.0).train()
        ref = ref_layers(x, c)
        ref.square().sum().backward()
    finally:
        FP._KERNELS[:] = saved
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for k, p in ref_layers.named_parameters():
        torch.testing.assert_close(grads[k], p.grad, rtol=1e-4, atol=1e-5)
