"""scprob.nn.fc.Dropout: the uniform-drawn CPU mask has F.dropout's distribution."""

import torch

from scprob.nn.fc import Dropout


def test_dropout_rate_scale_gradient_and_eval():
    torch.manual_seed(0)
    d = Dropout(0.3).train()
    x = torch.full((400, 500), 2.0, requires_grad=True)
    y = d(x)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - 0.3) < 0.005  # 200,000 draws: sd ~0.001
    kept = y[y != 0]
    torch.testing.assert_close(kept, torch.full_like(kept, 2.0 / 0.7))
    y.sum().backward()
    torch.testing.assert_close(x.grad, (y.detach() != 0).float() / 0.7)  # d y / d x = mask / (1 - p)
    assert torch.equal(d.eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)
    assert isinstance(d, torch.nn.Dropout)  # code that looks for nn.Dropout (query mapping) still finds it
