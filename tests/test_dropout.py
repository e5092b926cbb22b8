"""scprob.nn.fc.Dropout: the CPU mask drawn from 16-bit random integers has F.dropout's
distribution (p rounded to a multiple of 2^-16) and an exactly unbiased scale."""

import pytest
import torch

from scprob.nn.fc import Dropout


def test_dropout_rate_scale_gradient_and_eval():
    torch.manual_seed(0)
    d = Dropout(0.3).train()
    x = torch.full((400, 500), 2.0, requires_grad=True)
    y = d(x)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - 0.3) < 0.005  # 200,000 draws: sd ~0.001
    keep = 1.0 - round(0.3 * 65536) / 65536  # p on the 2^-16 grid
    kept = y[y != 0]
    torch.testing.assert_close(kept, torch.full_like(kept, 2.0 / keep))
    y.sum().backward()
    torch.testing.assert_close(x.grad, (y.detach() != 0).float() / keep)  # d y / d x = mask / (1 - p)
    assert torch.equal(d.eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)
    assert isinstance(d, torch.nn.Dropout)  # code that looks for nn.Dropout (query mapping) still finds it


def test_dropout_every_lane_of_a_draw_has_the_rate():
    """One 64-bit draw serves four consecutive units: each of the four positions drops at
    rate p (a draw whose top bit were always 0 would bias one of them), also for sizes
    that are not a multiple of four, and the mean is preserved."""
    torch.manual_seed(1)
    d = Dropout(0.2).train()
    x = torch.ones(100_003)
    y = d(x)
    assert y.shape == x.shape
    lanes = (y[:100_000] == 0).float().view(-1, 4).mean(0)
    assert ((lanes - 0.2).abs() < 0.008).all(), lanes  # 25,000 draws per lane: sd ~0.0025
    assert abs(y.mean().item() - 1.0) < 0.01


def test_numba_mask_equals_the_torch_ops():
    """The one-pass numba mask gives the output and gradient of the compare / convert /
    multiply route to the bit, from the same random draws."""
    import scprob.nn.fc as fc

    kernel = fc._mask_kernel()
    if kernel is None:
        pytest.skip("numba not installed")
    d = Dropout(0.1).train()
    x = torch.randn(37, 129, requires_grad=True)  # odd sizes: the draw's last int64 is partly used
    outs = []
    for use in (kernel, None):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(fc, "_mask_kernel", lambda use=use: use)
            torch.manual_seed(3)
            y = d(x)
            (g,) = torch.autograd.grad((y * y).sum(), x)
        outs.append((y, g))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
