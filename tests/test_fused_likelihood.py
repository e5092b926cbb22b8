"""Fused per-cell NB / ZINB / Poisson log-likelihoods (scprob.distributions._fused) against
the element-wise autograd reference: values, gradients, gradcheck, nz, numba vs PyTorch."""

from __future__ import annotations

import pytest
import torch

from scprob.distributions import NegativeBinomial, Poisson, ZeroInflatedNegativeBinomial, _fused, log_nb_logits, log_poisson
from scprob.distributions._count import (
    nb_log_prob_rowsum,
    nb_log_prob_rowsum_reference,
    poisson_log_prob_rowsum,
)

BACKENDS = ["torch", "dense"] + (["numba"] if _fused.numba_available() else [])


@pytest.fixture(autouse=True)
def _one_thread_default_backend():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    _fused.set_backend(None)


def _counts(n: int, g: int, dtype: torch.dtype, density: float = 0.3, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.poisson(torch.rand(n, g, generator=gen, dtype=torch.float64) * 4, generator=gen)
    x = x * (torch.rand(n, g, generator=gen, dtype=torch.float64) < density)
    x[1] = 0.0  # an all-zero row
    x[2, : g // 2] = 0.0  # a sparse row
    x[3, 0] = 30.0  # a large count
    return x.to(dtype)


def _params(n, g, dtype, full_theta, zinb, seed=1, lt_value=None, lm_value=None, pi_scale=2.0):
    gen = torch.Generator().manual_seed(seed)
    lm = torch.randn(n, g, generator=gen, dtype=torch.float64) + 0.5
    lt = torch.randn(*((n, g) if full_theta else (g,)), generator=gen, dtype=torch.float64)
    pi = torch.randn(n, g, generator=gen, dtype=torch.float64) * pi_scale if zinb else None
    if lm_value is not None:
        lm[:, : g // 2] = lm_value
    if lt_value is not None:
        lt.fill_(lt_value)
    out = [t.to(dtype).requires_grad_() for t in (lm, lt)]
    out.append(None if pi is None else pi.to(dtype).requires_grad_())
    return out


def _value_and_grads(fn, x, lm, lt, pi, w):
    v = fn(x, lm, lt, pi)
    inputs = [t for t in (lm, lt, pi) if t is not None]
    return v.detach(), torch.autograd.grad((v * w).sum(), inputs)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("zinb", [False, True])
@pytest.mark.parametrize("full_theta", [False, True])
def test_value_and_grads_match_reference(backend, dtype, zinb, full_theta):
    _fused.set_backend(backend)
    n, g = 12, 25
    x = _counts(n, g, dtype)
    lm, lt, pi = _params(n, g, dtype, full_theta, zinb)
    w = torch.linspace(-1.0, 2.0, n, dtype=dtype)
    v_ref, g_ref = _value_and_grads(nb_log_prob_rowsum_reference, x, lm, lt, pi, w)
    v, grads = _value_and_grads(nb_log_prob_rowsum, x, lm, lt, pi, w)
    # the element-wise log_prob agrees too
    if zinb:
        ref_elem = ZeroInflatedNegativeBinomial(log_mu=lm, theta=lt.exp(), zi_logits=pi).log_prob(x).sum(-1)
    else:
        ref_elem = log_nb_logits(x, lm, lt).sum(-1)
    tol = dict(rtol=1e-5, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(v, v_ref, **tol)
    torch.testing.assert_close(v, ref_elem.detach(), **tol)
    for a, b, t in zip(grads, g_ref, (lm, lt, pi)):
        assert a.shape == t.shape
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("zinb", [False, True])
@pytest.mark.parametrize("full_theta", [False, True])
def test_mean_loss_gradients_match_reference(backend, zinb, full_theta):
    """A loss mean(-log p) sends back -1/cells per cell: the float32 kernel's pre-scaled
    gradients are then used as they are (other weights: the test above)."""
    _fused.set_backend(backend)
    n, g = 12, 25
    x = _counts(n, g, torch.float32)
    lm, lt, pi = _params(n, g, torch.float32, full_theta, zinb)
    inputs = [t for t in (lm, lt, pi) if t is not None]
    g_ref = torch.autograd.grad((-nb_log_prob_rowsum_reference(x, lm, lt, pi)).mean(), inputs)
    grads = torch.autograd.grad((-nb_log_prob_rowsum(x, lm, lt, pi)).mean(), inputs)
    for a, b in zip(grads, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("zinb", [False, True])
def test_fractional_and_large_counts_match_reference(backend, zinb):
    """The numba kernel's small-integer recurrences and its lgamma path meet at the
    boundary: fractional counts, counts around the switch (8, 9) and large ones."""
    _fused.set_backend(backend)
    x = torch.tensor([[0.5, 1.0, 7.0, 8.0, 9.0, 2.5, 0.0, 300.0], [3.0, 0.0, 8.0, 1.0, 1e4, 0.0, 12.0, 1.0]],
                     dtype=torch.float64)
    lm, lt, pi = _params(2, 8, torch.float64, False, zinb)
    w = torch.tensor([0.7, -1.3], dtype=torch.float64)
    v_ref, g_ref = _value_and_grads(nb_log_prob_rowsum_reference, x, lm, lt, pi, w)
    v, grads = _value_and_grads(nb_log_prob_rowsum, x, lm, lt, pi, w)
    torch.testing.assert_close(v, v_ref, rtol=1e-10, atol=1e-9)
    for a, b in zip(grads, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "case",
    [
        dict(),
        dict(lt_value=torch.log(torch.tensor(1e-4)).item()),
        dict(lt_value=torch.log(torch.tensor(1e6)).item()),
        dict(lm_value=-30.0),
        dict(full_theta=True),
        dict(zinb=True),
        dict(zinb=True, full_theta=True, lm_value=-30.0),
        dict(zinb=True, pi_scale=20.0),
    ],
    ids=["per_gene", "theta_1e-4", "theta_1e6", "mu_to_0", "full_theta", "zinb", "zinb_full_mu0", "zinb_logits_20"],
)
def test_gradcheck(backend, case):
    _fused.set_backend(backend)
    n, g = 5, 6
    case = dict(case)
    full_theta, zinb = case.pop("full_theta", False), case.pop("zinb", False)
    x = _counts(n, g, torch.float64, density=0.5)
    x[3, 0] = 7.0
    lm, lt, pi = _params(n, g, torch.float64, full_theta, zinb, **case)
    if case.get("pi_scale") == 20.0:
        # +-20.5, not 20: torch's softplus switches to the identity at exactly 20, a kink
        # (of 2e-9) that central differences across 20 would see
        pi.data = torch.where(pi.data > 0, 20.5, -20.5).to(torch.float64)
    inputs = (lm, lt) if pi is None else (lm, lt, pi)

    def f(*args):
        return nb_log_prob_rowsum(x, *args)

    # theta = 1e6: lgamma(x + theta) - lgamma(theta) is a difference of numbers ~1e7, so the
    # finite differences need a wider step
    eps = 1e-3 if case.get("lt_value", 0.0) > 10 else 1e-6
    assert torch.autograd.gradcheck(f, inputs, eps=eps, atol=1e-5, rtol=1e-3)
    if pi is None:  # theta alone, a (1, G) row as GLUE's decoders give it
        lt_row = lt.detach().reshape(1, -1).requires_grad_() if not full_theta else lt
        assert torch.autograd.gradcheck(lambda t: nb_log_prob_rowsum(x, lm.detach(), t), (lt_row,), eps=eps, rtol=1e-3)


@pytest.mark.parametrize("zinb", [False, True])
def test_precomputed_nz_equals_computed(zinb):
    _fused.set_backend("torch")
    x = _counts(10, 20, torch.float32)
    lm, lt, pi = _params(10, 20, torch.float32, False, zinb)
    nz = (x > 0).nonzero(as_tuple=True)
    w = torch.randn(10)
    v0, g0 = _value_and_grads(nb_log_prob_rowsum, x, lm, lt, pi, w)
    v1, g1 = _value_and_grads(lambda *a: nb_log_prob_rowsum(*a, nz=nz), x, lm, lt, pi, w)
    torch.testing.assert_close(v0, v1, rtol=0, atol=0)
    for a, b in zip(g0, g1):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # the distributions pass nz through
    d = ZeroInflatedNegativeBinomial(log_mu=lm, theta=lt.exp(), zi_logits=pi) if zinb else NegativeBinomial(log_mu=lm, theta=lt.exp())
    torch.testing.assert_close(d.log_prob_rowsum(x, nz=nz).detach(), v0, rtol=0, atol=0)


@pytest.mark.skipif(not _fused.numba_available(), reason="numba not installed")
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("zinb", [False, True])
def test_numba_equals_torch(threads, dtype, zinb):
    torch.set_num_threads(threads)
    x = _counts(9, 17, dtype)
    out = {}
    for full_theta in (False, True):
        lm, lt, pi = _params(9, 17, dtype, full_theta, zinb)
        w = torch.randn(9, dtype=dtype)
        for backend in ("torch", "numba"):
            _fused.set_backend(backend)
            out[backend] = _value_and_grads(nb_log_prob_rowsum, x, lm, lt, pi, w)
            with torch.no_grad():  # the no-grad path gives the same value
                torch.testing.assert_close(nb_log_prob_rowsum(x, lm, lt, pi), out[backend][0], rtol=0, atol=0)
        tol = dict(rtol=1e-5, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-11)
        torch.testing.assert_close(out["numba"][0], out["torch"][0], **tol)
        for a, b in zip(out["numba"][1], out["torch"][1]):
            torch.testing.assert_close(a, b, **tol)


def test_reference_backend_and_fallbacks():
    x = _counts(6, 8, torch.float32)
    lm, lt, pi = _params(6, 8, torch.float32, False, True)
    _fused.set_backend("autograd")
    v = nb_log_prob_rowsum(x, lm, lt, pi)
    assert "NBLogProbRowSum" not in type(v.grad_fn).__name__
    _fused.set_backend(None)
    v2 = nb_log_prob_rowsum(x, lm, lt, pi)
    assert "NBLogProbRowSum" in type(v2.grad_fn).__name__
    torch.testing.assert_close(v, v2, rtol=1e-5, atol=1e-4)
    # Monte-Carlo samples (3-D) and broadcast log_mu take the element-wise path
    lm3 = lm.detach().expand(2, 6, 8)
    d = NegativeBinomial(log_mu=lm3, theta=lt.detach().exp())
    torch.testing.assert_close(d.log_prob_rowsum(x), log_nb_logits(x, lm3, lt.detach()).sum(-1))
    row = lm.detach()[:1]
    torch.testing.assert_close(nb_log_prob_rowsum(x, row, lt.detach()), log_nb_logits(x, row, lt.detach()).sum(-1))
    with pytest.raises(ValueError):
        _fused.set_backend("nope")


@pytest.mark.parametrize("backend", ["torch", "dense"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_poisson_matches_reference(backend, dtype):
    _fused.set_backend(backend)
    x = _counts(8, 10, dtype)
    gen = torch.Generator().manual_seed(3)
    lr = (torch.randn(8, 10, generator=gen, dtype=torch.float64) + 0.5).to(dtype).requires_grad_()
    w = torch.randn(8, dtype=dtype)
    ref = log_poisson(x, lr.exp()).sum(-1)
    (g_ref,) = torch.autograd.grad((ref * w).sum(), lr)
    tol = dict(rtol=1e-5, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    for make in (lambda: Poisson(log_rate=lr), lambda: Poisson(rate=lr.exp())):
        d = make()
        v = d.log_prob_rowsum(x)
        assert "PoissonLogProbRowSum" in type(v.grad_fn).__name__
        (g,) = torch.autograd.grad((v * w).sum(), lr)
        torch.testing.assert_close(v.detach(), ref.detach(), **tol)
        torch.testing.assert_close(g, g_ref, **tol)
    nz = (x > 0).nonzero(as_tuple=True)
    torch.testing.assert_close(poisson_log_prob_rowsum(x, lr, nz), poisson_log_prob_rowsum(x, lr), rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["torch", "dense"])
def test_poisson_gradcheck_and_zero_rate(backend):
    _fused.set_backend(backend)
    x = _counts(5, 6, torch.float64, density=0.5)
    lr = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: poisson_log_prob_rowsum(x, t), (lr,))
    rate = lr.detach().exp().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: poisson_log_prob_rowsum(x, rate=t), (rate,))
    # rate exactly 0 where x = 0: finite value, gradient -1 (autograd through xlogy gives NaN)
    rate0 = torch.where(x > 0, rate.detach(), 0.0).requires_grad_()
    v = poisson_log_prob_rowsum(x, rate=rate0)
    (g,) = torch.autograd.grad(v.sum(), rate0)
    assert torch.isfinite(v).all()
    assert torch.equal(g[x == 0], torch.full_like(g[x == 0], -1.0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("zinb", [False, True])
def test_cuda_matches_cpu(zinb):
    x = _counts(12, 25, torch.float32)
    lm, lt, pi = _params(12, 25, torch.float32, False, zinb)
    w = torch.randn(12)
    v_cpu, g_cpu = _value_and_grads(nb_log_prob_rowsum, x, lm, lt, pi, w)
    dev = [None if t is None else t.detach().cuda().requires_grad_() for t in (lm, lt, pi)]
    v, g = _value_and_grads(nb_log_prob_rowsum, x.cuda(), *dev, w.cuda())
    assert "NBLogProbRowSum" in type(nb_log_prob_rowsum(x.cuda(), *dev).grad_fn).__name__
    torch.testing.assert_close(v.cpu(), v_cpu, rtol=1e-5, atol=1e-4)
    for a, b in zip(g, g_cpu):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-5, atol=1e-4)


@pytest.mark.skipif(not _fused.numba_available(), reason="numba not installed")
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    "case",
    [dict(lt_value=torch.log(torch.tensor(1e-4)).item()), dict(lt_value=torch.log(torch.tensor(1e6)).item()),
     dict(lm_value=-30.0), dict(lm_value=30.0), dict(full_theta=True, pi_scale=60.0), dict(pi_scale=20.0)],
    ids=["theta_1e-4", "theta_1e6", "mu_to_0", "mu_large", "full_theta_logits_60", "logits_20"],
)
@pytest.mark.parametrize("zinb", [False, True])
def test_float32_kernel_extremes_as_accurate_as_torch_float32(threads, case, zinb):
    """The float32 numba kernel (its own exp / log1p, dense and non-zero parts in one pass)
    against the float64 reference, at the extremes, within what PyTorch's own float32 path
    gets (plus a float32 ulp-scale allowance)."""
    torch.set_num_threads(threads)
    case = dict(case)
    full_theta = case.pop("full_theta", False)
    n, g = 7, 40
    x64 = _counts(n, g, torch.float64, density=0.5)
    lm, lt, pi = _params(n, g, torch.float64, full_theta, zinb, **case)
    w = torch.linspace(-1.0, 2.0, n, dtype=torch.float64)
    v_ref, g_ref = _value_and_grads(nb_log_prob_rowsum_reference, x64, lm, lt, pi, w)
    errs = {}
    for backend in ("torch", "numba"):
        _fused.set_backend(backend)
        p32 = [None if t is None else t.detach().float().requires_grad_() for t in (lm, lt, pi)]
        v, grads = _value_and_grads(nb_log_prob_rowsum, x64.float(), *p32, w.float())
        errs[backend] = [((a.double() - b).abs() / (b.abs() + 1.0)).max().item() for a, b in zip((v, *grads), (v_ref, *g_ref))]
    for e_numba, e_torch in zip(errs["numba"], errs["torch"]):
        assert e_numba <= 2 * e_torch + 2e-6, errs


@pytest.mark.skipif(not _fused.numba_available(), reason="numba not installed")
def test_float32_kernel_propagates_non_finite_inputs():
    _fused.set_backend("numba")
    x = _counts(4, 10, torch.float32)
    lm, lt, pi = _params(4, 10, torch.float32, False, True)
    lm = lm.detach().clone()
    lm[0, 3] = float("nan")
    lm[2, 5] = float("inf")
    v = nb_log_prob_rowsum(x, lm, lt.detach(), pi.detach())
    assert torch.isnan(v[0]) and not torch.isfinite(v[2])
    assert torch.isfinite(v[[1, 3]]).all()


@pytest.mark.skipif(not _fused.numba_available(), reason="numba not installed")
def test_float32_kernel_exponential_over_its_whole_range():
    """The kernel's own exp (2^k written into the exponent field) against float64 exp on
    [-87, 0], clamped below -87, NaN kept."""
    import numpy as np
    from numba import njit

    from scprob.distributions._fused_numba import _exp_neg

    @njit
    def apply(v, out):
        for i in range(v.shape[0]):
            out[i] = _exp_neg(v[i])

    v = np.concatenate([np.linspace(-87.0, 0.0, 200_001), [-0.0, -1e-30, -87.5, -1e4, -np.inf, np.nan]]).astype(np.float32)
    out = np.empty_like(v)
    apply(v, out)
    ref = np.exp(v[:-4].astype(np.float64))
    assert np.max(np.abs(out[:-4] - ref) / ref) < 3e-7
    assert np.all(out[-4:-1] == out[0]) and np.isnan(out[-1])  # below -87: exp(-87)


@pytest.mark.skipif(not _fused.numba_available(), reason="numba not installed")
def test_dense_loop_function_asks_for_wide_vectors_only_itself():
    """The dense zero-case loop is compiled as its own function marked
    ``"prefer-vector-width"="512"`` (so 512-bit registers where the CPU has them); a
    numba function that does not call the marker keeps LLVM's default."""
    import numpy as np
    from numba import njit

    from scprob.distributions._fused_numba import _FAST, _dense_row, _row_sum

    dense = njit(error_model="numpy", fastmath=_FAST)(_dense_row.py_func)
    total = njit(error_model="numpy", fastmath=_FAST)(_row_sum.py_func)
    rows = [np.full(8, v, dtype=np.float32) for v in (0.5, 0.1, 2.0, -1.0)]
    outs = [np.empty(8, dtype=np.float32) for _ in range(10)]
    dense(rows[0], rows[1], rows[2], rows[3], True, True, *outs)
    assert total(outs[-1]) == pytest.approx(8 * float(outs[-1][0]))
    ir_dense = next(iter(dense.inspect_llvm().values()))
    assert '"prefer-vector-width"="512"' in ir_dense
    assert "prefer-vector-width" not in next(iter(total.inspect_llvm().values()))


@pytest.mark.skipif(not _fused.numba_available(), reason="numba not installed")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_positive_column_scan(dtype):
    """The kernels' column scan (AVX-512 compresses where the CPU has them) finds the
    columns of x > 0 in order: NaN, zeros and negatives excluded, any row length; it
    writes nothing past the row's length (its whole-vector stores stay inside)."""
    import numpy as np
    from numba import njit

    from scprob.distributions._fused_numba import _positive_columns

    @njit
    def scan(x, cols):
        return _positive_columns(x, cols)

    rng = np.random.default_rng(0)
    for n in (0, 1, 7, 8, 15, 16, 17, 33, 1000):
        x = rng.standard_normal(n).astype(dtype)
        x[::5] = np.nan
        x[1::6] = 0.0
        buf = np.full(n + 32, -1, dtype=np.int32)
        k = scan(x, buf[:n])
        ref = np.flatnonzero(x > 0)
        assert k == ref.size and np.array_equal(buf[:k], ref)
        assert (buf[n:] == -1).all()
