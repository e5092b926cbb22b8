"""numba kernel for the non-zero part of the fused NB / ZINB per-cell log-likelihood (CPU).

Imported lazily by :mod:`scprob.distributions._fused` (importing numba costs a few hundred
milliseconds, compiling a kernel a few seconds the first time; ``cache=True`` keeps the
machine code on disk).  The dense zero-case terms (one ``exp``/``log1p`` per entry) stay in
PyTorch's vectorised kernels: this build of numba has no vectorised math library, so its
scalar ``exp``/``log1p`` loops are slower than them.  What numba fuses is the ``x > 0`` part
(math in :mod:`scprob.distributions._fused`), which PyTorch runs as a ``nonzero``, a dozen
gathers and scatters and scalar ``lgamma``/``digamma`` kernels: here one loop over each row
does the non-zero terms behind an ``x > 0`` branch, adds them to the row sums and
overwrites the gradients at the non-zeros, with no coordinates needed.

Per non-zero the kernel avoids transcendental calls where exact identities allow:

* ``softplus(-l) = softplus(l) - l`` and ``sigmoid(-l) = 1 - sigmoid(l)`` from the dense
  part's arrays (below logit :data:`_DERIVE_BELOW`, where the subtraction cannot cancel);
* integer counts ``x <= 8`` (:data:`_SMALL_COUNT`, most counts in single-cell data):
  with ``P(t) = prod_{k<x} (t + k)``, ``log Gamma(x+t) - log Gamma(t) = log P`` and
  ``psi(x+t) - psi(t) = P'(t) / P(t)``: one ``log`` and one division;
* larger arguments: Stirling's series for ``log Gamma`` and the asymptotic series of
  ``psi`` share one ``log`` from 10 on; ``log x!`` from a table up to 4096.

All arithmetic is in float64 whatever the input dtype; outputs keep the input dtype.
Division follows IEEE (``error_model="numpy"``): a dispersion that underflowed to 0 gives
inf / NaN, which the training plan's non-finite check reports, never a ZeroDivisionError.  Rows
are independent: ``nz_rows_parallel`` splits them over numba's threads (``prange``),
``nz_rows_serial`` runs on the calling thread.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange

# torch.nn.functional.softplus(x) returns x itself above this (its default threshold);
# the kernels do the same so that their values match the PyTorch path.
_SOFTPLUS_THRESHOLD = 20.0
# digamma(10), the value at which the recurrence of _digamma stops exactly.
_PSI_10 = 2.25175258906672110764
# Integer counts up to this take the exact finite recurrences (see _nz_row) instead of
# lgamma/digamma: log Gamma(x + t) - log Gamma(t) = sum_{k<x} log(t + k),
# psi(x + t) - psi(t) = sum_{k<x} 1 / (t + k), and log x! from a table.
_SMALL_COUNT = 8
# log x! for integer counts up to this come from a table (32 KiB).
_TABLE_COUNT = 4096
_LOG_FACTORIAL = np.array([math.lgamma(k + 1.0) for k in range(_TABLE_COUNT + 1)])
_HALF_LOG_2PI = 0.91893853320467274178
# Below this NB logit the kernel takes softplus(-l), sigmoid(-l) from the dense arrays.
_DERIVE_BELOW = 10.0


@njit(cache=True, inline="always", error_model="numpy")
def _psi_tail(z: float) -> float:
    """sum_k B_2k / (2k x^2k) of psi's asymptotic series, in ``z = 1/x^2`` (Cephes' coefficients)."""
    p = 8.33333333333333333333e-2
    p = p * z - 2.10927960927960927961e-2
    p = p * z + 7.57575757575757575758e-3
    p = p * z - 4.16666666666666666667e-3
    p = p * z + 3.96825396825396825397e-3
    p = p * z - 8.33333333333333333333e-3
    p = p * z + 8.33333333333333333333e-2
    return z * p


@njit(cache=True, inline="always", error_model="numpy")
def _lgamma_digamma(z: float, want_grad: bool) -> tuple[float, float]:
    """(log Gamma(z), psi(z)) for z > 0.  From z >= 10 both come from one shared log z:
    Stirling's series (z - 1/2) log z - z + log(2 pi)/2 + 1/(12z) - 1/(360z^3) +
    1/(1260z^5) - 1/(1680z^7) (truncation error below 1e-12 there) and the asymptotic
    series of psi; below, libm's lgamma and the recurrence of :func:`_digamma`."""
    if z < 10.0:
        return math.lgamma(z), (_digamma(z) if want_grad else 0.0)
    lz = math.log(z)
    r = 1.0 / z
    r2 = r * r
    lg = (z - 0.5) * lz - z + _HALF_LOG_2PI + r * (1.0 / 12.0 - r2 * (1.0 / 360.0 - r2 * (1.0 / 1260.0 - r2 / 1680.0)))
    if not want_grad:
        return lg, 0.0
    return lg, lz - 0.5 * r - _psi_tail(r2)


@njit(cache=True, inline="always", error_model="numpy")
def _digamma(x: float) -> float:
    """psi(x) for x > 0, the algorithm of PyTorch's CPU ``digamma`` (Cephes ``psi``):
    recurrence psi(x) = psi(x + 1) - 1/x up to x >= 10, then the asymptotic series
    log x - 1/(2x) - sum_k B_2k / (2k x^2k)."""
    if x == 0.0:
        return -math.inf
    result = 0.0
    while x < 10.0:
        result -= 1.0 / x
        x += 1.0
    if x == 10.0:
        return result + _PSI_10
    y = 0.0
    if x < 1.0e17:
        y = _psi_tail(1.0 / (x * x))
    return result + math.log(x) - 0.5 / x - y


@njit(cache=True, inline="always", error_model="numpy")
def _softplus_sigmoid(v: float) -> tuple[float, float, float, float]:
    """(softplus(v), softplus(-v), sigmoid(v), sigmoid(-v)) from one exp and one log1p,
    with torch's softplus threshold (softplus(v) = v for v > 20)."""
    e = math.exp(-abs(v))
    lg = math.log1p(e)
    r = 1.0 / (1.0 + e)
    if v >= 0.0:
        sp, spm, s, sm = v + lg, lg, r, e * r
    else:
        sp, spm, s, sm = lg, lg - v, e * r, r
    if v > _SOFTPLUS_THRESHOLD:
        sp = v
    if -v > _SOFTPLUS_THRESHOLD:
        spm = -v
    return sp, spm, s, sm


@njit(cache=True, inline="always", error_model="numpy")
def _nz_row(n, x, logits, theta, th_rs, lg_theta, dg_theta, th_pre, sig, sp, a, z, sig_pi, pi_rs, zinb, want_grad,
            g_mu, g_theta, g_pi) -> float:
    """The ``x > 0`` part of row ``n``: returns sum_{g: x>0} [N (+ A - z for ZINB)] and, with
    ``want_grad``, overwrites the row's gradients at the non-zeros with the NB derivatives
    (weight 1 on A, -sigmoid(pi) for the dropout logit).  ``th_rs``/``pi_rs`` are 0 for
    per-gene (1, G) parameters, 1 for (N, G); ``th_pre`` says lgamma/digamma of theta are
    precomputed per gene in ``lg_theta``/``dg_theta``."""
    tr = n * th_rs
    pr = n * pi_rs
    acc = 0.0
    for g in range(x.shape[1]):
        xv = np.float64(x[n, g])
        if xv > 0.0:
            t = np.float64(theta[tr, g])
            lv = np.float64(logits[n, g])
            if lv <= _DERIVE_BELOW:
                # softplus(-l) = softplus(l) - l and sigmoid(-l) = 1 - sigmoid(l), from the
                # dense part's arrays (``sig`` only with gradients): no exp / log1p here;
                # above the cutoff the subtraction would cancel, so it is computed afresh
                spm = np.float64(sp[n, g]) - lv
                s = np.float64(sig[n, g]) if want_grad else 0.0
                sm = 1.0 - s
            else:
                _, spm, s, sm = _softplus_sigmoid(lv)
            xt = xv + t
            xi = int(xv)
            if xi == xv and xi <= _SMALL_COUNT and t < 1e30:
                # exact recurrences through P(t) = prod_{k<x} (t + k): log Gamma(x + t) -
                # log Gamma(t) = log P and psi(x + t) - psi(t) = P'(t) / P(t): one log and
                # one division per non-zero, no lgamma / digamma
                prod = 1.0
                dprod = 0.0
                for k in range(xi):
                    tk = t + k
                    dprod = dprod * tk + prod
                    prod *= tk
                lg_diff = math.log(prod)
                dg_diff = dprod / prod
                log_fact = _LOG_FACTORIAL[xi]
            else:
                if th_pre:
                    lgt = np.float64(lg_theta[tr, g])
                    dgt = np.float64(dg_theta[tr, g])
                else:
                    lgt, dgt = _lgamma_digamma(t, want_grad)
                lgx, dgx = _lgamma_digamma(xt, want_grad)
                lg_diff = lgx - lgt
                dg_diff = dgx - dgt
                log_fact = _LOG_FACTORIAL[xi] if xi == xv and xi <= _TABLE_COUNT else math.lgamma(xv + 1.0)
            corr = lg_diff - log_fact - xv * spm
            if zinb:
                corr += np.float64(a[n, g]) - np.float64(z[n, g])
            acc += corr
            if want_grad:
                g_mu[n, g] = xv * sm - t * s
                g_theta[n, g] = t * (s - np.float64(sp[n, g]) + dg_diff) - xv * sm
                if zinb:
                    g_pi[n, g] = -sig_pi[pr, g]
    return acc


@njit(cache=True, error_model="numpy")
def nz_rows_serial(x, logits, theta, th_rs, lg_theta, dg_theta, th_pre, sig, sp, a, z, sig_pi, pi_rs, zinb, want_grad,
                   out, g_mu, g_theta, g_pi) -> None:
    """Add the non-zero part of each row to ``out`` (and fix the gradients) row after row."""
    for n in range(x.shape[0]):
        out[n] += _nz_row(n, x, logits, theta, th_rs, lg_theta, dg_theta, th_pre, sig, sp, a, z, sig_pi, pi_rs, zinb,
                          want_grad, g_mu, g_theta, g_pi)


@njit(cache=True, parallel=True, error_model="numpy")
def nz_rows_parallel(x, logits, theta, th_rs, lg_theta, dg_theta, th_pre, sig, sp, a, z, sig_pi, pi_rs, zinb,
                     want_grad, out, g_mu, g_theta, g_pi) -> None:
    """:func:`nz_rows_serial` with the rows split over numba's threads."""
    for n in prange(x.shape[0]):
        out[n] += _nz_row(n, x, logits, theta, th_rs, lg_theta, dg_theta, th_pre, sig, sp, a, z, sig_pi, pi_rs, zinb,
                          want_grad, g_mu, g_theta, g_pi)


def set_threads(n: int) -> int:
    """Use ``n`` numba threads (capped at numba's pool size); returns the count used."""
    n = max(1, min(int(n), numba.config.NUMBA_NUM_THREADS))
    if numba.get_num_threads() != n:
        numba.set_num_threads(n)
    return n
