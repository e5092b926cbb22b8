"""numba kernel: a dropout mask and the masked output in one pass (the CPU path of
:class:`scprob.nn.fc.Dropout`).

Each 64-bit output of SplitMix64 (Steele, Lea & Flood 2014; a counter ``seed + k * golden``
through a bijective 64-bit mix) gives four 16-bit draws ``u``; unit ``i`` is kept when its
draw is at least ``q`` and then scaled by ``scale = 2^16 / (2^16 - q)``.  The mask is
written with the scale folded in (0 or ``scale``), so the backward is one product.  The
seed comes from torch's generator, so ``torch.manual_seed`` (and a checkpoint's saved RNG
state) reproduces the masks.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


@njit(cache=True, inline="always")
def _mix(seed, k):
    """SplitMix64's k-th output from ``seed``: the counter ``seed + k * golden``, mixed."""
    z = seed + k * _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


@njit(cache=True, error_model="numpy")
def dropout_factors(mask, seed, q, scale) -> None:
    """``mask[i] = scale * (u_i >= q)`` for a 1-D array; ``u_i`` are the 16-bit lanes of
    SplitMix64 from ``seed``, four per output.  Written four units at a time without
    branches, so that the loop vectorises."""
    n = mask.shape[0]
    nb = n // 4
    base = np.uint64(seed)
    qq = np.uint64(q)
    s = mask.dtype.type(scale)
    zero = mask.dtype.type(0)
    low = np.uint64(0xFFFF)
    for b in range(nb):
        z = _mix(base, np.uint64(b + 1))
        i = 4 * b
        mask[i] = s if (z & low) >= qq else zero
        mask[i + 1] = s if ((z >> np.uint64(16)) & low) >= qq else zero
        mask[i + 2] = s if ((z >> np.uint64(32)) & low) >= qq else zero
        mask[i + 3] = s if (z >> np.uint64(48)) >= qq else zero
    if 4 * nb < n:
        z = _mix(base, np.uint64(nb + 1))
        for i in range(4 * nb, n):
            mask[i] = s if ((z >> np.uint64(16 * (i - 4 * nb))) & low) >= qq else zero


@njit(cache=True, error_model="numpy")
def dropout_forward(x, seed, q, scale, out, mask) -> None:
    """``mask`` as :func:`dropout_factors` writes it and ``out = x * mask`` (1-D arrays;
    ~5 us for 128 x 128)."""
    dropout_factors(mask, seed, q, scale)
    for i in range(x.shape[0]):
        out[i] = x[i] * mask[i]
