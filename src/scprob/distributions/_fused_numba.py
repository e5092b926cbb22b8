"""numba kernels for the fused NB / ZINB per-cell log-likelihood (CPU).

Imported lazily by :mod:`scprob.distributions._fused` (importing numba costs a few hundred
milliseconds, compiling a kernel a few seconds the first time; ``cache=True`` keeps the
machine code on disk).  Math in :mod:`scprob.distributions._fused`.

* ``rows_f32_*`` (float32, the training default): each row in one kernel, in two loops.
  The dense zero-case loop (:func:`_dense_row`: softplus, sigmoid, logaddexp and their
  gradients on every entry) writes the gradients and a few row-long scratch arrays; it
  vectorises because its ``exp`` / ``log1p`` are written out here (:func:`_exp_neg`,
  :func:`_log1p_unit`: range reduction and polynomials, no libm call; this build of numba
  has no vectorised math library, and its scalar libm loops are ~5x slower than PyTorch's
  vectorised kernels).  The non-zero loop (:func:`_nz_row`) then reads the scratch.  No
  cells x genes intermediate but the gradients is written: in PyTorch ops the dense part
  is ~15 kernels, each reading and writing the whole matrix.
* ``nz_rows_*`` (float64, or float32 with ``_fused.F32_KERNEL`` off): the dense part stays
  in PyTorch (libm accuracy for float64); the kernel does the ``x > 0`` part only.

The ``x > 0`` part, which PyTorch runs as a ``nonzero``, a dozen gathers and scatters and
scalar ``lgamma``/``digamma`` kernels, is one loop over each row's non-zero columns (found
by :func:`_positive_columns`): it adds the non-zero terms to the row sums and overwrites
the gradients at the non-zeros, with no coordinates needed.

Two pieces of hand-emitted LLVM make these loops fit AVX-512 CPUs, and leave other CPUs as
before: the dense loop's function asks for 512-bit vectors (:func:`_wide_vectors`; LLVM
picks 256 by default), and the column scan packs 16 indices at a time with AVX-512
compresses (:func:`_compress_positive`).  Both keep the results bit for bit.

Per non-zero the kernel avoids transcendental calls where exact identities allow:

* ``softplus(-l) = softplus(l) - l`` and ``sigmoid(-l) = 1 - sigmoid(l)`` from the dense
  part's arrays (below logit :data:`_DERIVE_BELOW`, where the subtraction cannot cancel);
* integer counts ``x <= 8`` (:data:`_SMALL_COUNT`, most counts in single-cell data):
  with ``P(t) = prod_{k<x} (t + k)``, ``log Gamma(x+t) - log Gamma(t) = log P`` and
  ``psi(x+t) - psi(t) = P'(t) / P(t)``: one ``log`` and one division;
* larger arguments: Stirling's series for ``log Gamma`` and the asymptotic series of
  ``psi`` share one ``log`` from 10 on; ``log x!`` from a table up to 4096.

The non-zero arithmetic is in float64 whatever the input dtype (the float32 dense loop in
float32, as PyTorch's float32 kernels); outputs keep the input dtype.
Division follows IEEE (``error_model="numpy"``): a dispersion that underflowed to 0 gives
inf / NaN, which the training plan's non-finite check reports, never a ZeroDivisionError.  Rows
are independent: ``nz_rows_parallel`` splits them over numba's threads (``prange``),
``nz_rows_serial`` runs on the calling thread.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import binding as llvm_binding
from llvmlite import ir as llvm_ir
from numba import njit, prange
from numba import types as numba_types
from numba.core import cgutils
from numba.extending import intrinsic

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


# AVX-512 compresses for the column scan where the compiled-for CPU has them (the 8-lane
# form for float64 rows needs AVX-512VL); elsewhere the scalar scan
_COMPRESS = numba.config.CPU_NAME is None and {"+avx512f", "+avx512vl"} <= set(
    llvm_binding.get_host_cpu_features().flatten().split(","))


@intrinsic
def _compress_positive(typingctx, row, start, cols, n_nz):
    """One 512-bit block of a row's column scan: writes the indices ``start .. start + W - 1``
    (``W`` = 16 float32 or 8 float64 entries) whose value is ``> 0`` to ``cols[n_nz:]`` in
    order and returns ``n_nz`` plus their count.  C-contiguous float rows and int32 ``cols``
    only.  The indices are compressed in a register (``vpcompressd``) and stored as a whole
    vector: the ``W`` slots from ``cols[n_nz]`` lie inside ``cols[:start + W]`` because
    ``n_nz <= start``, and those past the count are overwritten by the next block or never
    read.  The compress-store form (``llvm.masked.compressstore``) is microcoded on AMD Zen 4,
    where it made the kernel 20% slower than the scalar scan."""
    if not (isinstance(row, numba_types.Array) and row.layout == "C" and row.dtype in (numba_types.float32,
            numba_types.float64) and isinstance(cols, numba_types.Array) and cols.dtype == numba_types.int32):
        return None
    width = 512 // row.dtype.bitwidth

    def codegen(context, builder, signature, args):
        row_v, start_v, cols_v, nnz_v = args
        data = context.make_array(signature.args[0])(context, builder, row_v).data
        out = context.make_array(signature.args[2])(context, builder, cols_v).data
        i32 = llvm_ir.IntType(32)
        vals = builder.load(builder.bitcast(builder.gep(data, [start_v]), llvm_ir.VectorType(data.type.pointee, width)
                                            .as_pointer()), align=4)
        mask = builder.fcmp_ordered(">", vals, llvm_ir.Constant(vals.type, None))  # NaN: not > 0
        ivty = llvm_ir.VectorType(i32, width)
        first = builder.insert_element(llvm_ir.Constant(ivty, llvm_ir.Undefined), builder.trunc(start_v, i32),
                                       llvm_ir.Constant(i32, 0))
        idx = builder.add(llvm_ir.Constant(ivty, list(range(width))),
                          builder.shuffle_vector(first, llvm_ir.Constant(ivty, llvm_ir.Undefined),
                                                 llvm_ir.Constant(ivty, [0] * width)))
        compress = cgutils.get_or_insert_function(
            builder.module, llvm_ir.FunctionType(ivty, [ivty, ivty, mask.type]), f"llvm.x86.avx512.mask.compress.v{width}i32")
        packed = builder.call(compress, [idx, llvm_ir.Constant(ivty, None), mask])
        builder.store(packed, builder.bitcast(builder.gep(out, [nnz_v]), ivty.as_pointer()), align=4)
        bits = llvm_ir.IntType(width)
        popcount = cgutils.get_or_insert_function(builder.module, llvm_ir.FunctionType(bits, [bits]),
                                                  f"llvm.ctpop.i{width}")
        return builder.add(nnz_v, builder.zext(builder.call(popcount, [builder.bitcast(mask, bits)]), nnz_v.type))

    return numba_types.intp(row, numba_types.intp, cols, numba_types.intp), codegen


@njit(cache=True, inline="always", error_model="numpy")
def _positive_columns(x, cols) -> int:
    """Fills ``cols`` with the columns of ``x > 0`` in ascending order; returns their count.
    AVX-512 compresses where available (~4x faster), else a branch-free scalar pass."""
    n = x.shape[0]
    n_nz = 0
    g = 0
    if _COMPRESS:
        width = 64 // x.itemsize
        while g + width <= n:
            n_nz = _compress_positive(x, g, cols, n_nz)
            g += width
    for h in range(g, n):
        cols[n_nz] = h
        n_nz += x[h] > 0.0
    return n_nz


@njit(cache=True, inline="always", error_model="numpy")
def _nz_row(x, logits, theta, lg_theta, dg_theta, th_pre, sig, sp, a, z, sig_pi, zinb, want_grad,
            g_mu, g_theta, g_pi) -> float:
    """The ``x > 0`` part of one row (every argument but the flags a 1-D row: the row's
    counts, logits, theta, the dense part's ``sig``/``sp``/``a``/``z``/``sigmoid(pi)``, the
    gradient rows): returns sum_{g: x>0} [N (+ A - z for ZINB)] and, with ``want_grad``,
    overwrites the gradients at the non-zeros with the NB derivatives (weight 1 on A,
    -sigmoid(pi) for the dropout logit).  ``th_pre`` says lgamma/digamma of theta are
    precomputed per gene in ``lg_theta``/``dg_theta``."""
    acc = 0.0
    # the row's non-zero columns first, then the loop over them: a branch on ``x > 0`` per
    # column mispredicts at every non-zero
    cols = np.empty(x.shape[0], dtype=np.int32)
    n_nz = _positive_columns(x, cols)
    for j in range(n_nz):
        g = cols[j]
        xv = np.float64(x[g])
        t = np.float64(theta[g])
        lv = np.float64(logits[g])
        if lv <= _DERIVE_BELOW:
            # softplus(-l) = softplus(l) - l and sigmoid(-l) = 1 - sigmoid(l), from the
            # dense part's arrays (``sig`` only with gradients): no exp / log1p here;
            # above the cutoff the subtraction would cancel, so it is computed afresh
            spm = np.float64(sp[g]) - lv
            s = np.float64(sig[g]) if want_grad else 0.0
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
                lgt = np.float64(lg_theta[g])
                dgt = np.float64(dg_theta[g])
            else:
                lgt, dgt = _lgamma_digamma(t, want_grad)
            lgx, dgx = _lgamma_digamma(xt, want_grad)
            lg_diff = lgx - lgt
            dg_diff = dgx - dgt
            log_fact = _LOG_FACTORIAL[xi] if xi == xv and xi <= _TABLE_COUNT else math.lgamma(xv + 1.0)
        corr = lg_diff - log_fact - xv * spm
        if zinb:
            corr += np.float64(a[g]) - np.float64(z[g])
        acc += corr
        if want_grad:
            g_mu[g] = xv * sm - t * s
            g_theta[g] = t * (s - np.float64(sp[g]) + dg_diff) - xv * sm
            if zinb:
                g_pi[g] = -sig_pi[g]
    return acc


@njit(cache=True, inline="always", error_model="numpy")
def _nz_row_at(n, x, logits, theta, th_rs, lg_theta, dg_theta, th_pre, sig, sp, a, z, sig_pi, pi_rs, zinb, want_grad,
               g_mu, g_theta, g_pi) -> float:
    """:func:`_nz_row` of row ``n`` of the (cells, genes) arrays; ``th_rs``/``pi_rs`` are 0
    for per-gene (1, G) parameters, 1 for (N, G)."""
    n = np.int64(n)  # prange's index can be unsigned: keep the row arithmetic in int64
    tr = n * th_rs
    gr = n if want_grad else 0
    return _nz_row(x[n], logits[n], theta[tr], lg_theta[tr if th_pre else 0], dg_theta[tr if th_pre else 0], th_pre,
                   sig[n if want_grad else 0], sp[n], a[n if zinb else 0], z[n if zinb else 0],
                   sig_pi[n * pi_rs if zinb and want_grad else 0], zinb, want_grad,
                   g_mu[gr], g_theta[gr], g_pi[gr if zinb else 0])


@njit(cache=True, error_model="numpy")
def nz_rows_serial(x, logits, theta, th_rs, lg_theta, dg_theta, th_pre, sig, sp, a, z, sig_pi, pi_rs, zinb, want_grad,
                   out, g_mu, g_theta, g_pi) -> None:
    """Add the non-zero part of each row to ``out`` (and fix the gradients) row after row."""
    for n in range(x.shape[0]):
        out[n] += _nz_row_at(n, x, logits, theta, th_rs, lg_theta, dg_theta, th_pre, sig, sp, a, z, sig_pi, pi_rs, zinb,
                             want_grad, g_mu, g_theta, g_pi)


@njit(cache=True, parallel=True, error_model="numpy")
def nz_rows_parallel(x, logits, theta, th_rs, lg_theta, dg_theta, th_pre, sig, sp, a, z, sig_pi, pi_rs, zinb,
                     want_grad, out, g_mu, g_theta, g_pi) -> None:
    """:func:`nz_rows_serial` with the rows split over numba's threads."""
    for n in prange(x.shape[0]):
        out[n] += _nz_row_at(n, x, logits, theta, th_rs, lg_theta, dg_theta, th_pre, sig, sp, a, z, sig_pi, pi_rs, zinb,
                             want_grad, g_mu, g_theta, g_pi)


# ---------------------------------------------------------------- float32: one kernel
# Flags for the vectorised dense loop: reassociation (the row sum), contraction (FMA) and
# reciprocal division, but IEEE NaN / inf semantics (a non-finite input must stay
# non-finite for the training plan's check).
_FAST = {"reassoc", "contract", "arcp"}
_F0, _F1, _F2 = np.float32(0.0), np.float32(1.0), np.float32(2.0)


@intrinsic
def _pow2(typingctx, k):
    """``2^k`` as a float32 for an int32 ``k`` in [-126, 127]: ``k + 127`` written into the
    exponent field (one shift and one add; a table lookup vectorises into gathers, ~5% of
    the dense loop).  Other ``k`` (NaN's conversion) give some float, which the caller's
    NaN factor absorbs."""
    def codegen(context, builder, signature, args):
        i32 = llvm_ir.IntType(32)
        bits = builder.shl(builder.add(args[0], llvm_ir.Constant(i32, 127)), llvm_ir.Constant(i32, 23))
        return builder.bitcast(bits, llvm_ir.FloatType())

    return numba_types.float32(numba_types.int32), codegen


@intrinsic
def _wide_vectors(typingctx):
    """Mark the calling function ``"prefer-vector-width"="512"`` and ``noinline``: on CPUs
    with AVX-512, LLVM then vectorises that function's loops with 512-bit registers (it
    prefers 256 by default), and only that function's (numba's process-wide
    ``NUMBA_CPU_FEATURES`` would recompile every numba library).  The dense loop: 550 ->
    460 us per 128 x 1,000 batch, bit-identical (element-wise; the row sum stays outside).
    ``noinline`` keeps the loop out of callers that lack the attribute.  Elsewhere the
    attribute is ignored.  llvmlite validates attribute names against a fixed list that
    has no string attributes, hence ``set.add``."""
    def codegen(context, builder, signature, args):
        attrs = builder.function.attributes
        try:
            set.add(attrs, '"prefer-vector-width"="512"')
            set.add(attrs, "noinline")
        except TypeError:  # an llvmlite whose attribute set is no set: only a speed hint is lost
            pass
        return context.get_dummy_value()

    return numba_types.none(), codegen


@njit(cache=True, error_model="numpy", fastmath=_FAST)
def _exp_neg(v):
    """``exp(v)`` for ``v <= 0`` in float32 without a libm call (so that loops over it
    vectorise): ``v = k ln 2 + r``, ``|r| <= ln 2 / 2``, Cephes' ``expf`` polynomial for
    ``e^r`` (relative error ~1e-7) times ``2^k`` (:func:`_pow2`).  ``v`` below -87 gives
    ``exp(-87)`` (~1.6e-38, i.e. 0 for every use here); NaN stays NaN."""
    v = np.float32(-87.0) if v < np.float32(-87.0) else v
    k = np.float32(math.floor(v * np.float32(1.4426950408889634) + np.float32(0.5)))
    ki = np.int32(k)
    r = v - k * np.float32(0.693359375) + k * np.float32(2.12194440e-4)
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    p = p * r * r + r + _F1
    return p * _pow2(ki)


@njit(cache=True, error_model="numpy", fastmath=_FAST)
def _log1p_unit(e):
    """``log(1 + e)`` for ``0 <= e <= 1`` in float32 without a libm call:
    ``2 atanh(s)`` with ``s = e / (2 + e)`` (``e <= sqrt 2 - 1``) or ``ln 2 + 2 atanh(s)``
    with ``s = (e - 1) / (e + 3)`` (above), so ``|s| <= 0.172`` and the odd series to
    ``s^9`` is accurate to ~1e-9 relative; tiny ``e`` keep their relative accuracy."""
    hi = e > np.float32(0.41421356)
    s = (e - _F1) / (e + np.float32(3.0)) if hi else e / (_F2 + e)
    s2 = s * s
    q = np.float32(2.0 / 9.0)
    q = q * s2 + np.float32(2.0 / 7.0)
    q = q * s2 + np.float32(2.0 / 5.0)
    q = q * s2 + np.float32(2.0 / 3.0)
    q = q * s2 + _F2
    return q * s + (np.float32(0.6931471805599453) if hi else _F0)


@njit(cache=True, error_model="numpy", fastmath=_FAST)
def _dense_row(log_mu, log_theta, theta, pi, zinb, want_grad, logits, sp, sig, a, z, sig_pi, g_mu, g_theta, g_pi, terms):
    """The zero-case terms of one row (float32, every argument a 1-D row; ``pi`` unused
    without ``zinb``), as :func:`scprob.distributions._fused._dense` computes them: fills
    the row's ``logits``, ``softplus(l)``, ``sigmoid(l)``, ``A``, ``z``, ``sigmoid(pi)`` for
    the non-zero part, the zero-case gradients and each entry's zero-case term in
    ``terms`` (summed by :func:`_row_sum`, the same for every variant of this loop, so that
    the value does not depend on ``want_grad``).
    softplus / sigmoid / logaddexp share one exponential each:
    ``softplus(v) = max(v, 0) + log1p(e)``, ``sigmoid(v) = 1/(1+e)`` or ``e/(1+e)`` with
    ``e = exp(-|v|)``, ``logaddexp(pi, A) = max + log1p(exp(-|pi - A|))`` and
    ``e^(A - z)`` is the sigmoid of ``A - pi``."""
    _wide_vectors()
    for g in range(log_mu.shape[0]):
        lv = log_mu[g] - log_theta[g]
        t = theta[g]
        e = _exp_neg(-abs(lv))
        spv = (lv if lv > _F0 else _F0) + _log1p_unit(e)
        inv = _F1 / (_F1 + e)
        s = inv if lv >= _F0 else e * inv
        av = -t * spv
        logits[g] = lv
        sp[g] = spv
        sig[g] = s
        a[g] = av
        if zinb:
            p = pi[g]
            e2 = _exp_neg(-abs(p))
            sp_pi = (p if p > _F0 else _F0) + _log1p_unit(e2)
            e3 = _exp_neg(-abs(p - av))
            zv = (p if p > av else av) + _log1p_unit(e3)
            z[g] = zv
            terms[g] = zv - sp_pi
            if want_grad:
                inv2 = _F1 / (_F1 + e2)
                spi = inv2 if p >= _F0 else e2 * inv2
                inv3 = _F1 / (_F1 + e3)
                w_a = inv3 if av >= p else e3 * inv3  # e^(A - z) = dz/dA
                sig_pi[g] = spi
                g_mu[g] = -t * s * w_a
                g_theta[g] = (av + t * s) * w_a
                g_pi[g] = _F1 - w_a - spi  # dz/dpi - sigmoid(pi), dz/dpi = 1 - e^(A - z)
        else:
            terms[g] = av
            if want_grad:
                g_mu[g] = -t * s
                g_theta[g] = av + t * s


@njit(cache=True, error_model="numpy", fastmath=_FAST)
def _row_sum(terms) -> float:
    acc = _F0
    for g in range(terms.shape[0]):
        acc += terms[g]
    return acc


@njit(cache=True, error_model="numpy", fastmath=_FAST)
def _scale_rows(g_mu, g_theta, g_pi, zinb, c) -> None:
    for g in range(g_mu.shape[0]):
        g_mu[g] *= c
        g_theta[g] *= c
    if zinb:
        for g in range(g_pi.shape[0]):
            g_pi[g] *= c


@njit(cache=True, inline="always", error_model="numpy")
def _row_f32(n, x, log_mu, log_theta, theta, th_rs, lg_theta, dg_theta, th_pre, pi, pi_rs, zinb, want_grad,
             gscale, out, g_mu, g_theta, g_pi) -> None:
    """Row ``n`` whole: the dense zero-case loop (:func:`_dense_row`) into row scratch, then
    the non-zero loop (:func:`_nz_row`) reading it; nothing cells x genes but the
    gradients is written.  The gradient rows are multiplied by ``gscale`` (float32) while
    still in cache."""
    n = np.int64(n)
    n_genes = x.shape[1]
    tr = n * th_rs
    pr = n * pi_rs
    scratch = np.empty((7, n_genes), dtype=np.float32)  # logits, sp, sig, a, z, sigmoid(pi), terms
    gr = n if want_grad else 0
    gp = gr if zinb else 0
    lm, lt, th, p = log_mu[n], log_theta[tr], theta[tr], pi[pr]
    s0, s1, s2, s3, s4, s5 = scratch[0], scratch[1], scratch[2], scratch[3], scratch[4], scratch[5]
    gm, gt, gpi = g_mu[gr], g_theta[gr], g_pi[gp]
    # literal flags, so that each variant of the loop compiles branch-free (and vectorises)
    if zinb and want_grad:
        _dense_row(lm, lt, th, p, True, True, s0, s1, s2, s3, s4, s5, gm, gt, gpi, scratch[6])
    elif zinb:
        _dense_row(lm, lt, th, p, True, False, s0, s1, s2, s3, s4, s5, gm, gt, gpi, scratch[6])
    elif want_grad:
        _dense_row(lm, lt, th, p, False, True, s0, s1, s2, s3, s4, s5, gm, gt, gpi, scratch[6])
    else:
        _dense_row(lm, lt, th, p, False, False, s0, s1, s2, s3, s4, s5, gm, gt, gpi, scratch[6])
    nz = _nz_row(x[n], s0, th, lg_theta[tr if th_pre else 0], dg_theta[tr if th_pre else 0], th_pre,
                 s2, s1, s3, s4, s5, zinb, want_grad, gm, gt, gpi)
    out[n] = np.float64(_row_sum(scratch[6])) + nz
    if want_grad and gscale != _F1:
        _scale_rows(gm, gt, gpi, zinb, gscale)


@njit(cache=True, error_model="numpy")
def rows_f32_serial(x, log_mu, log_theta, theta, th_rs, lg_theta, dg_theta, th_pre, pi, pi_rs, zinb, want_grad,
                    gscale, out, g_mu, g_theta, g_pi) -> None:
    """Per-cell NB / ZINB sums (``out``) and gradients of float32 inputs in one pass per row
    (dense zero-case and non-zero parts), row after row.  ``th_rs``/``pi_rs``: 0 for
    per-gene (1, G) parameters, 1 for (N, G); gradients unused without ``want_grad``, and
    written times ``gscale`` (a float32)."""
    for n in range(x.shape[0]):
        _row_f32(n, x, log_mu, log_theta, theta, th_rs, lg_theta, dg_theta, th_pre, pi, pi_rs, zinb, want_grad,
                 gscale, out, g_mu, g_theta, g_pi)


@njit(cache=True, parallel=True, error_model="numpy")
def rows_f32_parallel(x, log_mu, log_theta, theta, th_rs, lg_theta, dg_theta, th_pre, pi, pi_rs, zinb, want_grad,
                      gscale, out, g_mu, g_theta, g_pi) -> None:
    """:func:`rows_f32_serial` with the rows split over numba's threads."""
    for n in prange(x.shape[0]):
        _row_f32(n, x, log_mu, log_theta, theta, th_rs, lg_theta, dg_theta, th_pre, pi, pi_rs, zinb, want_grad,
                 gscale, out, g_mu, g_theta, g_pi)


def set_threads(n: int) -> int:
    """Use ``n`` numba threads (capped at numba's pool size); returns the count used."""
    n = max(1, min(int(n), numba.config.NUMBA_NUM_THREADS))
    if numba.get_num_threads() != n:
        numba.set_num_threads(n)
    return n
