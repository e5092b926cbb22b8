r"""numba kernels: training-mode batch norm, ReLU and dropout of a hidden layer as one
forward and one backward pass (the CPU path of :class:`scprob.nn.fc.FCLayers`).

Forward, for a (cells ``B``, features ``F``) input ``h``, per feature ``f``:

.. math::

    m_f = \tfrac1B \textstyle\sum_b h_{bf}, \quad v_f = \tfrac1B \sum_b (h_{bf} - m_f)^2, \quad
    \hat x_{bf} = (h_{bf} - m_f) / \sqrt{v_f + \epsilon}, \quad
    y_{bf} = \gamma_f \hat x_{bf} + \beta_f, \quad
    o_{bf} = \max(y_{bf}, 0)\, d_{bf}

with the dropout factor :math:`d_{bf} \in \{0, 1/(1-p)\}` (1 without dropout; the draws as
in :mod:`._dropout_numba`), and the running statistics moved by ``momentum`` towards
:math:`m_f` and the unbiased :math:`v_f B / (B - 1)` (``nn.BatchNorm1d``'s update).
The kernel keeps :math:`\hat x` and :math:`k_{bf} = d_{bf}\,[y_{bf} > 0]`.  Backward, with
:math:`g_{bf} = k_{bf}\, \partial L/\partial o_{bf}`, :math:`S_f = \sum_b g_{bf}`,
:math:`T_f = \sum_b g_{bf} \hat x_{bf}`:

.. math::

    \partial L/\partial\beta_f = S_f, \quad \partial L/\partial\gamma_f = T_f, \quad
    \partial L/\partial h_{bf} = \frac{\gamma_f}{\sqrt{v_f+\epsilon}}
        \Big(g_{bf} - \frac{S_f}{B} - \hat x_{bf} \frac{T_f}{B}\Big).

Sums are accumulated in float64 (as ATen's CPU batch norm does for float32).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._dropout_numba import dropout_factors


@njit(cache=True, error_model="numpy")
def bn_relu_dropout_forward(h, gamma, beta, eps, momentum, running_mean, running_var, seed, q, scale,
                            out, xhat, keep, inv_std) -> None:
    """Forward pass (module doc); ``q == 0``: no dropout.  Writes ``out``, ``xhat``,
    ``keep`` (B, F), ``inv_std`` (F,) and updates the running statistics in place."""
    n_b, n_f = h.shape
    mean = np.zeros(n_f)
    var = np.zeros(n_f)
    for b in range(n_b):
        for f in range(n_f):
            mean[f] += h[b, f]
    for f in range(n_f):
        mean[f] /= n_b
    for b in range(n_b):
        for f in range(n_f):
            d = h[b, f] - mean[f]
            var[f] += d * d
    for f in range(n_f):
        var[f] /= n_b
        inv_std[f] = 1.0 / np.sqrt(var[f] + eps)
        running_mean[f] = (1.0 - momentum) * running_mean[f] + momentum * mean[f]
        running_var[f] = (1.0 - momentum) * running_var[f] + momentum * var[f] * n_b / (n_b - 1)
    zero = h.dtype.type(0)
    flat = keep.reshape(-1)
    if q > 0:  # dropout factors first (vectorised), in row-major order of the units
        dropout_factors(flat, seed, q, scale)
    else:
        flat[:] = 1
    for b in range(n_b):
        for f in range(n_f):
            xh = h.dtype.type((h[b, f] - mean[f]) * inv_std[f])
            y = gamma[f] * xh + beta[f]
            m = keep[b, f] if y > zero else zero
            xhat[b, f] = xh
            keep[b, f] = m
            out[b, f] = y * m


@njit(cache=True, error_model="numpy")
def bn_relu_dropout_backward(grad, xhat, keep, gamma, inv_std, dh, dgamma, dbeta) -> None:
    """Backward pass (module doc): ``dh`` (B, F), ``dgamma`` and ``dbeta`` (F,)."""
    n_b, n_f = grad.shape
    s1 = np.zeros(n_f)
    s2 = np.zeros(n_f)
    for b in range(n_b):
        for f in range(n_f):
            g = grad[b, f] * keep[b, f]
            s1[f] += g
            s2[f] += g * xhat[b, f]
    for f in range(n_f):
        dbeta[f] = s1[f]
        dgamma[f] = s2[f]
        s1[f] /= n_b
        s2[f] /= n_b
    for b in range(n_b):
        for f in range(n_f):
            g = grad[b, f] * keep[b, f]
            dh[b, f] = gamma[f] * inv_std[f] * (g - s1[f] - xhat[b, f] * s2[f])
