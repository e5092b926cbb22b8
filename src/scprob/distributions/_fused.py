r"""Fused per-cell log-likelihood sums for NB, ZINB and Poisson counts.

Each likelihood of a (cells, genes) count matrix ``x`` is summed over the genes of a cell
by one ``torch.autograd.Function``.  Its forward computes the per-cell sums with the same
formulas as the element-wise path (:func:`scprob.distributions._count.log_nb_logits`,
``log_zinb_logits``, ``log_poisson``) and, while every intermediate is at hand, the
per-element derivatives; it saves only those (two or three cells x genes tensors instead of
the dozen intermediates autograd keeps).  The backward scales them by the incoming
per-cell gradient and sums the broadcast dimensions away: one pass, no graph of small ops.

Negative binomial
-----------------
With :math:`\ell = \log\mu - \log\theta` (the NB logits), :math:`s = \sigma(\ell)`,
:math:`\sigma(-\ell) = 1 - s` and

.. math::

    A &= \log \mathrm{NB}(0) = -\theta\,\mathrm{softplus}(\ell) \\
    N &= \log\Gamma(x+\theta) - \log\Gamma(\theta) - \log\Gamma(x+1) - x\,\mathrm{softplus}(-\ell)
         \qquad (N = 0 \text{ at } x = 0) \\
    \log \mathrm{NB}(x) &= A + N

(:math:`\theta\,\mathrm{softplus}(\ell) = \theta\log\frac{\theta+\mu}{\theta}`,
:math:`x\,\mathrm{softplus}(-\ell) = x\log\frac{\theta+\mu}{\mu}`).  Using
:math:`\partial\ell/\partial\log\mu = 1`, :math:`\partial\ell/\partial\log\theta = -1`,
:math:`\partial\theta/\partial\log\theta = \theta`, :math:`\mathrm{softplus}' = \sigma`:

.. math::

    \partial A/\partial\log\mu &= -\theta s, \qquad
    \partial A/\partial\log\theta = \theta\,(s - \mathrm{softplus}(\ell)) \\
    \partial N/\partial\log\mu &= x\,\sigma(-\ell), \qquad
    \partial N/\partial\log\theta = \theta\,[\psi(x+\theta) - \psi(\theta)] - x\,\sigma(-\ell)

so for one entry :math:`\partial/\partial\log\mu = x\,\sigma(-\ell) - \theta s = x - (x+\theta)s
= \theta(x-\mu)/(\theta+\mu)` and :math:`\partial/\partial\log\theta = \theta\,[\psi(x+\theta) -
\psi(\theta) - \mathrm{softplus}(\ell) + s] - x\,\sigma(-\ell)`.

Zero-inflated NB
----------------
With dropout logit :math:`\pi` (dropout probability :math:`\sigma(\pi)`) and
:math:`z = \mathrm{logaddexp}(\pi, A)`:

.. math::

    \log p(0) = z - \mathrm{softplus}(\pi), \qquad \log p(x>0) = A + N - \mathrm{softplus}(\pi).

:math:`\partial z/\partial\pi = e^{\pi - z} = \sigma(\pi - A)` and :math:`\partial z/\partial A =
e^{A - z} = \sigma(A - \pi)`, so at :math:`x = 0`: :math:`\partial/\partial\pi = e^{\pi-z} -
\sigma(\pi)`, and the NB derivatives of :math:`A` above times :math:`w_A = e^{A-z}`; at
:math:`x > 0`: :math:`\partial/\partial\pi = -\sigma(\pi)` and the NB derivatives unchanged.

Poisson
-------
:math:`\log p(x) = x\log r - r - \log\Gamma(x+1)`; from the log-rate :math:`\partial/\partial
\log r = x - r`; from the rate :math:`\partial/\partial r = x/r - 1` (``-1`` at :math:`x = 0`
even where :math:`r = 0`, where autograd through ``xlogy`` gives NaN).

Sparsity
--------
Every term of :math:`N` (and the ZINB correction :math:`A - z`) vanishes at :math:`x = 0`, so
``lgamma``/``digamma`` run on the non-zero counts only.  The PyTorch path takes their
coordinates ``nz = (rows, cols)`` (row-major, each non-zero once, as ``(x > 0).nonzero(
as_tuple=True)`` or a CSR batch's ``indptr``/``indices`` give them) or computes them; with a
per-gene :math:`\theta`, :math:`\log\Gamma(\theta)` and :math:`\psi(\theta)` are evaluated once per
gene.  The numba path (CPU, when numba imports) replaces everything at the non-zeros
(``nonzero``, gathers, scatters, ``lgamma``/``digamma``) by one numba loop over each row
(parallel over rows at more than one torch thread, with numba's thread count set to torch's)
that branches on ``x > 0``; it needs no coordinates.  For float32 (training) the dense
zero-case terms run in the same kernel, one vectorised loop per row before the non-zero loop
(:mod:`scprob.distributions._fused_numba`); for float64 they stay in PyTorch's kernels.

The dense path (GPU) evaluates the non-zero formulas on every entry and keeps them where
:math:`x > 0` (``torch.where``): more arithmetic, but fixed shapes and no ``nonzero``, so the
host never waits for the device (a ``nonzero`` must read the count of non-zeros back).

Backends
--------
``SCPROB_LIKELIHOOD_BACKEND`` (or :func:`set_backend`) picks the path:

* ``"auto"`` (default): numba on CPU tensors when numba imports, else the sparse PyTorch
  Function; the dense PyTorch Function on other devices (GPU);
* ``"numba"``: numba on CPU tensors (an error when numba is missing), as ``"auto"`` elsewhere;
* ``"torch"``: the fused Function with PyTorch ops at the non-zero coordinates, any device;
* ``"dense"``: the fused Function with PyTorch ops on every entry, any device;
* ``"autograd"``: no fused Function; the element-wise reference composed of autograd ops.

Inputs the fused Functions do not cover (``log_mu`` of another shape than ``x``, parameters
that do not broadcast to ``x`` within two dimensions, mixed or half-precision dtypes, an
``x`` that requires grad) take the reference path.  The Functions are differentiable once
(no double backward).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

BACKENDS = ("auto", "numba", "torch", "dense", "autograd")
_ENV = "SCPROB_LIKELIHOOD_BACKEND"
_backend_override: str | None = None
_numba_module: Any = None  # the kernels module once imported; False when numba is missing

NonZeros = tuple[torch.Tensor, torch.Tensor]
# numba path, float32: the dense part in the kernel too (False: in PyTorch ops, as for float64;
# kept for A/B measurements, benchmarks/step_ab.py's "numba_split")
F32_KERNEL = True


def set_backend(name: str | None) -> None:
    """Force a backend (one of :data:`BACKENDS`) for this process; ``None`` goes back to
    ``SCPROB_LIKELIHOOD_BACKEND`` / ``"auto"``."""
    if name is not None and name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    global _backend_override
    _backend_override = name


def get_backend() -> str:
    """The backend in force: :func:`set_backend`'s, else ``SCPROB_LIKELIHOOD_BACKEND``, else ``"auto"``."""
    if _backend_override is not None:
        return _backend_override
    name = os.environ.get(_ENV, "auto") or "auto"
    if name not in BACKENDS:
        raise ValueError(f"{_ENV} must be one of {BACKENDS}, got {name!r}")
    return name


def _numba_kernels() -> Any:
    """The numba kernels module, or None when numba cannot be imported."""
    global _numba_module
    if _numba_module is None:
        try:
            from . import _fused_numba
        except ImportError:
            _numba_module = False
        else:
            _numba_module = _fused_numba
    return _numba_module or None


def numba_available() -> bool:
    return _numba_kernels() is not None


def nonzero_coords(x: torch.Tensor) -> NonZeros:
    """Row-major coordinates ``(rows, cols)`` of the positive entries of ``x``."""
    rows, cols = (x > 0).nonzero(as_tuple=True)
    return rows, cols


# ----------------------------------------------------------------------------- helpers
def _row_broadcast(t: torch.Tensor | None, n_genes: int) -> bool:
    """True when ``t`` is a per-gene parameter: shape (G,) or (1, G)."""
    return t is not None and t.shape[-1] == n_genes and t.numel() == n_genes


def _supported(x: torch.Tensor, log_mu: torch.Tensor, *params: torch.Tensor | None) -> bool:
    if x.ndim != 2 or log_mu.shape != x.shape or x.requires_grad:
        return False
    if log_mu.dtype not in (torch.float32, torch.float64):
        return False
    for p in params:
        if p is None:
            continue
        if p.ndim > 2 or p.dtype != log_mu.dtype or p.device != log_mu.device:
            return False
        # broadcasts to x's (2-D) shape: each trailing dimension 1 or x's (no torch.broadcast_shapes,
        # which goes through Python reference code, ~50 us per training step)
        if any(d != 1 and d != xd for d, xd in zip(reversed(p.shape), reversed(x.shape))):
            return False
    return x.device == log_mu.device


def _scale_reduce(g: torch.Tensor, go: torch.Tensor | None, shape: torch.Size) -> torch.Tensor:
    """sum over cells of ``go[n] * g[n, :]`` reduced to ``shape`` (a parameter's shape);
    ``go`` None: ``g`` already carries the per-cell factor."""
    if shape == g.shape:
        return g if go is None else g * go.unsqueeze(1)
    if g.shape[-1] == shape[-1] and torch.Size(shape).numel() == g.shape[-1]:
        return (g.sum(0) if go is None else go.to(g.dtype) @ g).reshape(shape)
    return (g if go is None else g * go.unsqueeze(1)).sum_to_size(shape)


def _prescale(x: torch.Tensor, log_mu: torch.Tensor, mode: str) -> float:
    """The factor the float32 numba kernel multiplies the saved gradients by: ``-1 / cells``,
    the per-cell gradient a loss ``mean(-log p)`` sends back (scVI's), so that the backward
    finds them ready instead of scaling two cells x genes tensors; 1 elsewhere."""
    return -1.0 / x.shape[0] if mode == "numba" and _f32_kernel(log_mu) and x.shape[0] else 1.0


def _f32_kernel(log_mu: torch.Tensor) -> bool:
    return log_mu.dtype == torch.float32 and F32_KERNEL


# ------------------------------------------------------------------------- dense part
Result = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]


def _dense(log_mu: torch.Tensor, log_theta: torch.Tensor, zi_logits: torch.Tensor | None, want_grad: bool) -> dict:
    """The zero-case terms of every entry (vectorised PyTorch ops) and, with ``want_grad``,
    their gradients; the non-zero entries are fixed afterwards by :func:`_nz_torch` or the
    numba kernel.  Returns the intermediates these need."""
    theta = log_theta.exp()
    logits = log_mu - log_theta
    sp = F.softplus(logits)
    a = -theta * sp  # log NB(0)
    d: dict = dict(theta=theta, logits=logits, sp=sp, a=a, z=None, sig=None, sig_pi=None,
                   g_mu=None, g_theta=None, g_pi=None)
    if zi_logits is None:
        d["value"] = a.sum(-1)
    else:
        z = torch.logaddexp(zi_logits, a)
        d["z"] = z
        d["value"] = (z - F.softplus(zi_logits)).sum(-1)
    if want_grad:
        sig = torch.sigmoid(logits)
        d["sig"] = sig
        g_mu = sig * -theta  # dA/dlog mu = -theta sigmoid(l)
        g_theta = a - g_mu  # dA/dlog theta = theta (sigmoid(l) - softplus(l))
        if zi_logits is not None:
            sig_pi = torch.sigmoid(zi_logits)
            w_a = torch.exp(a - z)  # dz/dA
            g_mu.mul_(w_a)
            g_theta.mul_(w_a)
            # dz/dpi - sigmoid(pi), with dz/dpi = e^(pi - z) = 1 - e^(A - z) (z = logaddexp(pi, A)):
            # no second exp (where e^(A - z) ~ 1 the difference is off by at most an ulp of 1)
            d["g_pi"] = torch.rsub(w_a, 1.0).sub_(sig_pi)
            d["sig_pi"] = sig_pi
        d["g_mu"], d["g_theta"] = g_mu, g_theta
    return d


# ----------------------------------------------------------------------- PyTorch path
def _nb_torch(
    x: torch.Tensor, log_mu: torch.Tensor, log_theta: torch.Tensor, zi_logits: torch.Tensor | None,
    nz: NonZeros, want_grad: bool,
) -> Result:
    """Per-cell sums and (with ``want_grad``) the per-element gradients, PyTorch ops only.

    The value is computed as :func:`~scprob.distributions._count.nb_log_prob_rowsum_reference`
    does (the same operations on the same numbers)."""
    rows, cols = nz
    n_genes = x.shape[1]
    d = _dense(log_mu, log_theta, zi_logits, want_grad)
    theta, logits = d["theta"], d["logits"]
    flat = rows * n_genes + cols  # positions in the row-major (cells, genes) matrices
    xv = torch.take(x, flat)
    lv = torch.take(logits, flat)
    per_gene = _row_broadcast(theta, n_genes)
    if per_gene:  # lgamma/digamma of theta once per gene
        th_g = theta.reshape(-1)
        th = th_g[cols]
        lg_th = torch.lgamma(th_g)[cols]
    else:
        th = torch.take(theta.expand_as(logits), flat)
        lg_th = torch.lgamma(th)
    xt = xv + th
    nzv = torch.lgamma(xt) - lg_th - torch.lgamma(xv + 1.0) - xv * F.softplus(-lv)
    if zi_logits is not None:
        nzv = nzv + torch.take(d["a"], flat) - torch.take(d["z"], flat)
    value = d["value"].index_add(0, rows, nzv)
    if not want_grad:
        return value, None, None, None
    g_mu, g_theta, g_pi = d["g_mu"], d["g_theta"], d["g_pi"]
    dg_th = torch.digamma(th_g)[cols] if per_gene else torch.digamma(th)
    s_nz = torch.take(d["sig"], flat)
    sm_nz = torch.sigmoid(-lv)
    g_mu.put_(flat, xv * sm_nz - th * s_nz)
    g_theta.put_(flat, th * (s_nz - torch.take(d["sp"], flat) + torch.digamma(xt) - dg_th) - xv * sm_nz)
    if g_pi is not None:
        sig_pi = d["sig_pi"]
        pi_nz = sig_pi.reshape(-1)[cols] if _row_broadcast(sig_pi, n_genes) else torch.take(sig_pi.expand_as(logits), flat)
        g_pi.put_(flat, -pi_nz)
    return value, g_mu, g_theta, g_pi


def _nb_dense(
    x: torch.Tensor, log_mu: torch.Tensor, log_theta: torch.Tensor, zi_logits: torch.Tensor | None, want_grad: bool,
) -> Result:
    """As :func:`_nb_torch`, with the non-zero formulas evaluated on every entry and kept
    where ``x > 0`` (fixed shapes: no ``nonzero``, no gathers; per-gene ``theta``
    broadcasts)."""
    d = _dense(log_mu, log_theta, zi_logits, want_grad)
    theta, logits = d["theta"], d["logits"]
    pos = x > 0
    xt = x + theta
    sm = torch.sigmoid(-logits)
    nzv = torch.lgamma(xt) - torch.lgamma(theta) - torch.lgamma(x + 1.0) - x * F.softplus(-logits)
    if zi_logits is not None:
        nzv = nzv + d["a"] - d["z"]
    value = d["value"] + torch.where(pos, nzv, 0.0).sum(-1)
    if not want_grad:
        return value, None, None, None
    s = d["sig"]
    g_mu = torch.where(pos, x * sm - theta * s, d["g_mu"])
    g_theta = torch.where(pos, theta * (s - d["sp"] + torch.digamma(xt) - torch.digamma(theta)) - x * sm, d["g_theta"])
    g_pi = None if zi_logits is None else torch.where(pos, -d["sig_pi"], d["g_pi"])
    return value, g_mu, g_theta, g_pi


# ------------------------------------------------------------------------- numba path
def _as_2d(t: torch.Tensor, n_genes: int) -> tuple[torch.Tensor, int]:
    """(contiguous 2-D view, row stride 0 or 1) of a per-gene or full parameter."""
    if _row_broadcast(t, n_genes):
        return t.reshape(1, n_genes).contiguous(), 0
    return t.contiguous(), 1


def _numba_ok(x: torch.Tensor, log_theta: torch.Tensor, zi_logits: torch.Tensor | None) -> bool:
    n_genes = x.shape[1]
    for p in (log_theta, zi_logits):
        if p is not None and not (_row_broadcast(p, n_genes) or p.shape == x.shape):
            return False
    return x.device.type == "cpu"


def _rows_kernel(kern: Any, name: str, n_cells: int) -> Any:
    """``kern.<name>_parallel`` (numba's threads set to torch's count) when torch runs on more
    than one thread and there is more than one row, else ``kern.<name>_serial``."""
    threads = torch.get_num_threads()
    if threads > 1 and n_cells > 1:
        kern.set_threads(threads)
        return getattr(kern, f"{name}_parallel")
    return getattr(kern, f"{name}_serial")


def _nb_numba(
    x: torch.Tensor, log_mu: torch.Tensor, log_theta: torch.Tensor, zi_logits: torch.Tensor | None, want_grad: bool,
    gscale: float = 1.0,
) -> Result:
    """Per-cell sums and per-element gradients: the dense part in PyTorch, the non-zero part
    in one numba kernel (CPU, no ``nonzero``)."""
    kern = _numba_kernels()
    n_cells, n_genes = x.shape
    dtype = log_mu.dtype
    if _f32_kernel(log_mu):
        return _nb_numba_f32(kern, x, log_mu, log_theta, zi_logits, want_grad, gscale)
    d = _dense(log_mu, log_theta, zi_logits, want_grad)
    theta, th_rs = _as_2d(d["theta"], n_genes)
    th_pre = th_rs == 0
    dummy = torch.empty((1, 1), dtype=dtype)
    if th_pre:
        lg_theta = torch.lgamma(theta)
        dg_theta = torch.digamma(theta) if want_grad else dummy
    else:
        lg_theta = dg_theta = dummy
    zinb = zi_logits is not None
    sig_pi, pi_rs = _as_2d(d["sig_pi"], n_genes) if zinb and want_grad else (dummy, 0)
    value = d["value"].contiguous()
    g_mu, g_theta, g_pi = (d[k] if d[k] is not None else dummy for k in ("g_mu", "g_theta", "g_pi"))
    a, z = (d["a"], d["z"]) if zinb else (dummy, dummy)
    sig, sp = (d["sig"] if want_grad else dummy), d["sp"]
    arrs = [t.detach().contiguous().numpy() for t in (x.to(dtype), d["logits"], theta)]
    pre = [t.detach().numpy() for t in (lg_theta, dg_theta)]
    mid = [t.detach().contiguous().numpy() for t in (sig, sp, a, z, sig_pi)]
    fn = _rows_kernel(kern, "nz_rows", n_cells)
    fn(*arrs, th_rs, *pre, th_pre, *mid, pi_rs, zinb, want_grad,
       value.detach().numpy(), g_mu.detach().numpy(), g_theta.detach().numpy(), g_pi.detach().numpy())
    if not want_grad:
        return value, None, None, None
    return value, d["g_mu"], d["g_theta"], d["g_pi"]


def _nb_numba_f32(
    kern: Any, x: torch.Tensor, log_mu: torch.Tensor, log_theta: torch.Tensor, zi_logits: torch.Tensor | None,
    want_grad: bool, gscale: float = 1.0,
) -> Result:
    """:func:`_nb_numba` for float32: the dense part too in the numba kernel, one pass per
    row (``_fused_numba.rows_f32_*``); no cells x genes intermediate besides the gradients,
    which come multiplied by ``gscale``."""
    n_cells, n_genes = x.shape
    lt, th_rs = _as_2d(log_theta.detach(), n_genes)
    theta = lt.exp()
    th_pre = th_rs == 0
    dummy = torch.empty((1, 1), dtype=torch.float32)
    zinb = zi_logits is not None
    pi, pi_rs = _as_2d(zi_logits.detach(), n_genes) if zinb else (dummy, 0)
    value = torch.empty(n_cells, dtype=torch.float32)
    grads = [torch.empty((n_cells, n_genes), dtype=torch.float32) if want_grad else dummy for _ in range(2)]
    grads.append(torch.empty((n_cells, n_genes), dtype=torch.float32) if want_grad and zinb else dummy)
    pre = [torch.lgamma(theta), torch.digamma(theta) if want_grad else dummy] if th_pre else [dummy, dummy]
    fn = _rows_kernel(kern, "rows_f32", n_cells)
    fn(x.detach().contiguous().numpy(), log_mu.detach().contiguous().numpy(), lt.numpy(), theta.numpy(), th_rs,
       *(t.numpy() for t in pre), th_pre, pi.numpy(), pi_rs, zinb, want_grad, np.float32(gscale), value.numpy(),
       *(g.numpy() for g in grads))
    if not want_grad:
        return value, None, None, None
    return value, grads[0], grads[1], grads[2] if zinb else None


# ------------------------------------------------------------------------ Functions
class NBLogProbRowSum(torch.autograd.Function):
    r"""``sum_g log NB(x_ng | mu_ng, theta_ng)`` (ZINB with ``zi_logits``) per cell, fused.

    ``apply(x, log_mu, log_theta, zi_logits, rows, cols, mode)`` with ``mode`` one of
    ``"numba"``, ``"sparse"`` (at ``rows, cols``) or ``"dense"``; the gradients of
    ``log_theta`` and ``zi_logits`` have their input shapes (per-gene parameters are summed
    over cells).  Math in the module docstring."""

    @staticmethod
    def forward(ctx, x, log_mu, log_theta, zi_logits, rows, cols, mode):  # type: ignore[override]
        ctx.gscale = _prescale(x, log_mu, mode)
        value, g_mu, g_theta, g_pi = _nb_path(x, log_mu, log_theta, zi_logits, (rows, cols), mode, True, ctx.gscale)
        ctx.save_for_backward(g_mu, g_theta, g_pi)
        ctx.theta_shape = log_theta.shape
        ctx.pi_shape = None if zi_logits is None else zi_logits.shape
        return value

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        g_mu, g_theta, g_pi = ctx.saved_tensors
        need = ctx.needs_input_grad
        go, gs = grad_out, ctx.gscale
        if gs != 1.0:  # the saved gradients carry gs: as they are when that is what came back
            go = None if bool((grad_out == gs).all()) else grad_out / gs
        d_mu = (g_mu if go is None else g_mu * go.unsqueeze(1)) if need[1] else None
        d_theta = _scale_reduce(g_theta, go, ctx.theta_shape) if need[2] else None
        d_pi = _scale_reduce(g_pi, go, ctx.pi_shape) if need[3] and g_pi is not None else None
        return None, d_mu, d_theta, d_pi, None, None, None


class PoissonLogProbRowSum(torch.autograd.Function):
    r"""``sum_g [x log r - r - lgamma(x + 1)]`` per cell from the log-rate (``from_log``) or
    the rate; gradient ``x - r`` or ``x / r - 1``.  ``rows is None``: the dense path."""

    @staticmethod
    def forward(ctx, x, param, rows, cols, from_log):  # type: ignore[override]
        value, grad = _poisson_torch(x, param, None if rows is None else (rows, cols), from_log, True)
        ctx.save_for_backward(grad)
        return value

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return None, grad * grad_out.unsqueeze(1), None, None, None


def _poisson_torch(
    x: torch.Tensor, param: torch.Tensor, nz: NonZeros | None, from_log: bool, want_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-cell sums and gradient at the non-zero coordinates ``nz``, or on every entry
    (kept where ``x > 0``) when ``nz`` is None."""
    if nz is None:
        pos = x > 0
        rate = param.exp() if from_log else param
        x_log_r = x * param if from_log else torch.where(pos, x * torch.log(param), 0.0)
        value = (x_log_r - rate - torch.lgamma(x + 1.0)).sum(-1)
        if not want_grad:
            return value, None
        return value, (x - rate if from_log else torch.where(pos, x / param - 1.0, -1.0))
    rows, cols = nz
    xv = x[rows, cols]
    if from_log:
        rate = param.exp()
        log_r = param[rows, cols]
    else:
        rate = param
        log_r = torch.log(param[rows, cols])
    value = (-rate).sum(-1).index_add(0, rows, xv * log_r - torch.lgamma(xv + 1.0))
    if not want_grad:
        return value, None
    if from_log:
        grad = -rate
        grad = grad.index_put((rows, cols), xv - rate[rows, cols])
    else:
        grad = torch.full_like(param, -1.0)
        grad.index_put_((rows, cols), xv / param[rows, cols] - 1.0)
    return value, grad


# ------------------------------------------------------------------------ entry points
def _mode(x: torch.Tensor, backend: str, numba_fits: bool) -> str:
    """``"numba"``, ``"sparse"`` or ``"dense"`` for these inputs under ``backend``."""
    if backend == "dense" or (backend != "torch" and x.device.type != "cpu"):
        return "dense"
    if backend in ("auto", "numba") and numba_fits:
        if numba_available():
            return "numba"
        if backend == "numba":
            raise ImportError("SCPROB_LIKELIHOOD_BACKEND='numba' but numba cannot be imported")
    return "sparse"


def _nb_path(x, log_mu, log_theta, zi_logits, nz: tuple, mode: str, want_grad: bool, gscale: float = 1.0) -> Result:
    """Per-cell sums and gradients (those of the float32 numba kernel times ``gscale``)."""
    if mode == "numba":
        return _nb_numba(x, log_mu, log_theta, zi_logits, want_grad, gscale)
    if mode == "dense":
        return _nb_dense(x, log_mu, log_theta, zi_logits, want_grad)
    return _nb_torch(x, log_mu, log_theta, zi_logits, nz, want_grad)


def _grad_needed(*ts: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in ts)


def nb_rowsum(
    x: torch.Tensor, log_mu: torch.Tensor, log_theta: torch.Tensor, zi_logits: torch.Tensor | None = None,
    nz: NonZeros | None = None,
) -> torch.Tensor | None:
    """Fused NB/ZINB per-cell sums, or None where the inputs need the reference path."""
    backend = get_backend()
    if backend == "autograd" or not _supported(x, log_mu, log_theta, zi_logits):
        return None
    mode = _mode(x, backend, _numba_ok(x, log_theta, zi_logits))
    if x.dtype != log_mu.dtype:
        x = x.to(log_mu.dtype)
    if mode == "sparse" and nz is None:
        nz = nonzero_coords(x)
    rows, cols = nz if mode == "sparse" else (None, None)
    if not _grad_needed(log_mu, log_theta, zi_logits):
        return _nb_path(x, log_mu, log_theta, zi_logits, (rows, cols), mode, False)[0]
    return NBLogProbRowSum.apply(x, log_mu, log_theta, zi_logits, rows, cols, mode)


def poisson_rowsum(
    x: torch.Tensor, log_rate: torch.Tensor | None = None, nz: NonZeros | None = None, *,
    rate: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """Fused Poisson per-cell sums from ``log_rate`` or ``rate``, or None where the inputs
    need the reference path."""
    if (log_rate is None) == (rate is None):
        raise ValueError("Give exactly one of `log_rate` or `rate`.")
    param = log_rate if log_rate is not None else rate
    backend = get_backend()
    if backend == "autograd" or not _supported(x, param):
        return None
    if x.dtype != param.dtype:
        x = x.to(param.dtype)
    if _mode(x, backend, False) == "dense":
        rows = cols = None
    else:
        rows, cols = nz if nz is not None else nonzero_coords(x)
    from_log = log_rate is not None
    if not _grad_needed(param):
        return _poisson_torch(x, param, None if rows is None else (rows, cols), from_log, False)[0]
    return PoissonLogProbRowSum.apply(x, param, rows, cols, from_log)
