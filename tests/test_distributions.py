import numpy as np
import pytest
import scipy.stats as st
import torch

from scprob.distributions import (
    LogisticNormal,
    NegativeBinomial,
    Normal,
    Poisson,
    ZeroInflatedNegativeBinomial,
    available_likelihoods,
    get_likelihood,
)

rng = np.random.default_rng(0)
X = np.array([0, 1, 2, 5, 17, 120, 3000], dtype=float)
MUS = np.array([0.0, 1e-6, 0.3, 4.0, 55.0, 2e3, 1e5])
THETAS = np.array([1e-4, 0.05, 1.0, 12.0, 1e3, 1e6])


def _grid():
    x, mu, th = np.meshgrid(X, MUS, THETAS, indexing="ij")
    extra_mu = rng.lognormal(0, 3, 200)
    extra_th = rng.lognormal(0, 3, 200)
    extra_x = rng.poisson(extra_mu).astype(float)
    return (np.concatenate([x.ravel(), extra_x]), np.concatenate([mu.ravel(), extra_mu]),
            np.concatenate([th.ravel(), extra_th]))


def _t(a):
    return torch.tensor(a, dtype=torch.float64)


def _close(ours, ref):
    ours, ref = np.asarray(ours), np.asarray(ref)
    both_inf = np.isneginf(ours) & np.isneginf(ref)
    np.testing.assert_array_equal(np.isneginf(ours), np.isneginf(ref))
    ok = ~both_inf
    np.testing.assert_allclose(ours[ok], ref[ok], rtol=1e-5, atol=1e-5)


def test_nb_logprob_matches_scipy_including_extremes():
    x, mu, th = _grid()
    ref = st.nbinom.logpmf(x, th, th / (th + mu))
    _close(NegativeBinomial(mu=_t(mu), theta=_t(th)).log_prob(_t(x)).numpy(), ref)
    # logits form gives the same numbers
    with np.errstate(divide="ignore"):
        log_mu = np.log(mu)
    _close(NegativeBinomial(log_mu=_t(log_mu), theta=_t(th)).log_prob(_t(x)).numpy(), ref)


@pytest.mark.parametrize("pi_logit", [-8.0, -1.0, 0.0, 2.5, 10.0])
def test_zinb_logprob_matches_scipy(pi_logit):
    x, mu, th = _grid()
    pi = 1 / (1 + np.exp(-pi_logit))
    with np.errstate(divide="ignore"):
        ref = np.log(pi * (x == 0) + (1 - pi) * st.nbinom.pmf(x, th, th / (th + mu)))
        # pmf underflows for far-tail values; use the log form there
        tail = (x > 0)
        ref[tail] = np.log1p(-pi) + st.nbinom.logpmf(x[tail], th[tail], th[tail] / (th[tail] + mu[tail]))
    d = ZeroInflatedNegativeBinomial(mu=_t(mu), theta=_t(th), zi_logits=_t(np.full_like(mu, pi_logit)))
    _close(d.log_prob(_t(x)).numpy(), ref)


def test_poisson_and_normal_match_scipy():
    x, mu, _ = _grid()
    _close(Poisson(_t(mu)).log_prob(_t(x)).numpy(), st.poisson.logpmf(x, mu))
    loc, sd = rng.normal(size=50), rng.lognormal(size=50)
    v = rng.normal(size=50) * 3
    _close(Normal(_t(loc), _t(sd)).log_prob(_t(v)).numpy(), st.norm.logpdf(v, loc, sd))


def test_logprob_finite_gradients_at_extremes():
    log_mu = torch.tensor([-30.0, 0.0, 12.0], requires_grad=True)
    log_theta = torch.tensor([-9.0, 0.0, 14.0], requires_grad=True)
    d = ZeroInflatedNegativeBinomial(log_mu=log_mu, theta=log_theta.exp(), zi_logits=torch.zeros(3))
    d.log_prob(torch.tensor([0.0, 3.0, 1e5])).sum().backward()
    assert torch.isfinite(log_mu.grad).all() and torch.isfinite(log_theta.grad).all()


def test_sampling_moments():
    torch.manual_seed(0)
    mu, th = torch.tensor([0.0, 3.0, 40.0]), torch.tensor([2.0, 2.0, 0.5])
    nb = NegativeBinomial(mu=mu, theta=th)
    s = nb.sample((40000,))
    np.testing.assert_allclose(s.mean(0), nb.mean, rtol=0.05, atol=0.02)
    np.testing.assert_allclose(s.var(0), nb.variance, rtol=0.1, atol=0.05)
    zi = ZeroInflatedNegativeBinomial(mu=mu, theta=th, zi_logits=torch.full((3,), 0.5))
    s = zi.sample((40000,))
    np.testing.assert_allclose(s.mean(0), zi.mean, rtol=0.05, atol=0.02)
    np.testing.assert_allclose(s.var(0), zi.variance, rtol=0.1, atol=0.05)
    p = Poisson(torch.tensor([0.0, 7.0]))
    np.testing.assert_allclose(p.sample((20000,)).mean(0), [0, 7], atol=0.1)


def test_logistic_normal_on_simplex():
    ln = LogisticNormal(torch.zeros(4, 5), torch.ones(4, 5))
    z = ln.rsample()
    assert torch.allclose(z.sum(-1), torch.ones(4)) and (z > 0).all()


def test_registry_lists_and_rejects():
    assert {"nb", "zinb", "poisson", "normal"} <= set(available_likelihoods())
    assert get_likelihood("zinb")["needs_dropout"] and not get_likelihood("normal")["is_count"]
    with pytest.raises(ValueError, match="Unknown likelihood 'gauss'"):
        get_likelihood("gauss")


@pytest.mark.parametrize("zi", [False, True])
@pytest.mark.parametrize("theta_shape", ["gene", "cell"])
def test_sparse_aware_rowsum_equals_dense(zi, theta_shape):
    g = torch.Generator().manual_seed(0)
    x = torch.poisson(torch.rand(9, 13, generator=g) * 2.0) * (torch.rand(9, 13, generator=g) > 0.5)
    x[3] = 0  # an all-zero row
    log_mu = torch.randn(9, 13, generator=g, dtype=torch.float64).requires_grad_()
    log_theta = torch.randn(*((13,) if theta_shape == "gene" else (9, 13)), generator=g, dtype=torch.float64).requires_grad_()
    pi = torch.randn(9, 13, generator=g, dtype=torch.float64).requires_grad_()
    x = x.double()
    cls = ZeroInflatedNegativeBinomial if zi else NegativeBinomial
    kw = dict(zi_logits=pi) if zi else {}
    d = cls(log_mu=log_mu, theta=log_theta.exp(), **kw)
    dense = d.log_prob(x).sum(-1)
    fast = d.log_prob_rowsum(x)
    torch.testing.assert_close(fast, dense)
    g_dense = torch.autograd.grad(dense.sum(), [log_mu, log_theta] + ([pi] if zi else []), retain_graph=True)
    g_fast = torch.autograd.grad(fast.sum(), [log_mu, log_theta] + ([pi] if zi else []))
    for a, b in zip(g_fast, g_dense):
        torch.testing.assert_close(a, b)


def test_log_mean_is_log_of_mean_without_underflow():
    log_mu = torch.tensor([[-80.0, -3.0, 0.0, 5.0]])
    theta = torch.tensor([[0.5, 2.0, 10.0, 1e4]])
    zi = torch.tensor([[-2.0, 0.0, 3.0, -20.0]])
    nb = NegativeBinomial(log_mu=log_mu, theta=theta)
    zinb = ZeroInflatedNegativeBinomial(log_mu=log_mu, theta=theta, zi_logits=zi)
    for d in (nb, zinb):
        finite = d.mean > 0
        assert torch.allclose(d.log_mean[finite], d.mean[finite].log(), atol=1e-5)
    assert torch.isfinite(zinb.log_mean).all() and zinb.log_mean[0, 0] < -80  # exp would underflow to 0
