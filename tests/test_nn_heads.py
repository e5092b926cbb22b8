"""Decoder heads (scprob.nn.fc._head): both CPU formulations give F.linear's values and
gradients, so the per-CPU choice between them changes speed only."""

import pytest
import torch
from torch import nn

from scprob.nn import fc


@pytest.mark.parametrize("bias_after", [True, False])
def test_head_matches_linear_values_and_gradients(monkeypatch, bias_after):
    monkeypatch.setattr(fc, "_bias_after_product", lambda *a: bias_after)
    torch.manual_seed(0)
    layer = nn.Linear(128, 300)
    h = torch.randn(64, 128, requires_grad=True)
    out = fc._head(layer, h)
    ref = layer(h)
    assert torch.equal(out, ref)
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, (h, layer.weight, layer.bias), g)
    want = torch.autograd.grad(ref, (h, layer.weight, layer.bias), g)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def test_head_choice_is_timed_once_per_shape():
    fc._bias_after_product.cache_clear()
    first = fc._bias_after_product(32, 16, 50, torch.float32, 1)
    assert isinstance(first, bool)
    assert fc._bias_after_product(32, 16, 50, torch.float32, 1) is first
    assert fc._bias_after_product.cache_info().hits == 1


def test_wide_head_is_f_linear_whatever_the_timing(monkeypatch):
    """Above the inner size where both formulations round alike, the head is F.linear, so
    results never depend on a timing."""
    monkeypatch.setattr(fc, "_bias_after_product", lambda *a: pytest.fail("timed a wide head"))
    torch.manual_seed(1)
    layer = nn.Linear(fc._SAME_VALUES_MAX_IN + 1, 40)
    h = torch.randn(16, fc._SAME_VALUES_MAX_IN + 1)
    assert torch.equal(fc._head(layer, h), layer(h))


def test_head_without_bias_or_batched_input_is_the_layer():
    layer = nn.Linear(8, 5, bias=False)
    h = torch.randn(4, 8)
    assert torch.equal(fc._head(layer, h), layer(h))
    layer = nn.Linear(8, 5)
    h3 = torch.randn(2, 4, 8)
    assert torch.equal(fc._head(layer, h3), layer(h3))
