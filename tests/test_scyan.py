"""Scyan: the coupling flow (nn/flow.py), the table prior and loss (modules/scyan.py), the
knowledge-table parser (data/table.py) and the user-facing model (models/scyan.py).

Small flows and short fits (a few hundred optimizer steps in all) keep the file fast.
A corrupt or truncated FCS file is covered by tests/test_cytometry_io.py::test_fcs_bad_files.
"""

from __future__ import annotations

import math
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import special, stats

import scprob
from scprob.data import DataError, Keys
from scprob.data import cytometry as cy
from scprob.data.fcs import read_fcs, write_fcs
from scprob.data.table import read_table
from scprob.models.scyan import Scyan
from scprob.modules.scyan import ScyanModule, ScyanPrior, log_interval_density
from scprob.nn.flow import PairedMLP, RealNVP

SMALL = dict(hidden_size=8, n_hidden_layers=2, n_layers=4)
FIT = dict(max_epochs=2, enable_progress_bar=False, samples_per_epoch=1120, batch_size=128)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore:.*val_dataloader.*", "ignore:.*LeafSpec.*")


# --------------------------------------------------------------------------- helpers


def perturbed_flow(n_features=5, n_cov=3, seed=0, scale=0.3, dtype=torch.float32) -> RealNVP:
    """A RealNVP far from its near-identity initialisation, like after some training."""
    torch.manual_seed(seed)
    flow = RealNVP(n_features, n_cov, n_hidden=8, n_hidden_layers=2, n_layers=4)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(scale * torch.randn_like(p))
    return flow.to(dtype)


def fresh_copy(adata, var_order=None) -> ad.AnnData:
    """The same cells as a new AnnData (no uns, no registry), optionally other columns."""
    sub = adata if var_order is None else adata[:, var_order]
    return ad.AnnData(
        X=np.array(sub.X, dtype=np.float32, copy=True),
        obs=pd.DataFrame(index=list(map(str, adata.obs_names))),
        var=pd.DataFrame(index=list(map(str, sub.var_names))),
    )


def hand_log_prior(u: np.ndarray, rho: np.ndarray, is_cont: np.ndarray, s: float) -> np.ndarray:
    """log p(u | z) of the module docstring, marker by marker, in float64 with scipy."""
    u = u.astype(np.float64)
    out = np.zeros((u.shape[0], rho.shape[0]))
    for z in range(rho.shape[0]):
        for m in range(rho.shape[1]):
            r = rho[z, m]
            if np.isnan(r):
                lo, hi = -1.0, 1.0
            elif is_cont[m] and abs(r) == 1:
                lo, hi = (0.0, 1.0) if r == 1 else (-1.0, 0.0)
            else:
                out[:, z] += stats.norm.logpdf(u[:, m], r, s)
                continue
            v = np.minimum(u[:, m], lo + hi - u[:, m])  # symmetric about the centre: use the side where both CDFs are small
            la, lb = special.log_ndtr((v - lo) / s), special.log_ndtr((v - hi) / s)
            out[:, z] += la + np.log1p(-np.exp(lb - la)) - np.log(hi - lo)
    return out


@pytest.fixture(scope="module")
def aml():
    return scprob.data.load_aml()


@pytest.fixture(scope="module")
def trained(aml):
    adata, table = aml
    adata = adata.copy()
    model = Scyan(adata, table, seed=0, **SMALL)
    model.fit(**FIT)
    return model


# --------------------------------------------------------------------------- flow


def test_flow_inverts_with_covariates():
    flow = perturbed_flow()
    torch.manual_seed(1)
    x = torch.randn(64, 5)
    cov = torch.randn(64, 3)
    u, ldj = flow(x, cov)
    assert (u - x).abs().max() > 0.1  # not the identity
    assert ldj.abs().max() > 0.01
    np.testing.assert_allclose(flow.inverse(u, cov).detach().numpy(), x.numpy(), atol=1e-5, rtol=1e-5)
    # the covariates are read: other covariates give another map (and their own inverse)
    cov2 = torch.randn(64, 3)
    u2, _ = flow(x, cov2)
    assert (u2 - u).abs().max() > 1e-2
    np.testing.assert_allclose(flow.inverse(u2, cov2).detach().numpy(), x.numpy(), atol=1e-5, rtol=1e-5)
    # and no covariates, an even number of features
    flow0 = perturbed_flow(n_features=4, n_cov=0, seed=2)
    u0, _ = flow0(x[:, :4], torch.zeros(64, 0))
    assert (u0 - x[:, :4]).abs().max() > 0.1
    np.testing.assert_allclose(flow0.inverse(u0, torch.zeros(64, 0)).detach().numpy(), x[:, :4].numpy(), atol=1e-5, rtol=1e-5)


def test_flow_log_det_matches_autograd_jacobian():
    flow = perturbed_flow(n_features=5, n_cov=2, seed=3, scale=0.5, dtype=torch.float64)
    torch.manual_seed(4)
    x = torch.randn(6, 5, dtype=torch.float64)
    cov = torch.randn(6, 2, dtype=torch.float64)
    _, ldj = flow(x, cov)
    assert ldj.abs().max() > 0.05  # a non-trivial volume change
    for i in range(x.shape[0]):
        J = torch.autograd.functional.jacobian(lambda xi, i=i: flow(xi[None], cov[i : i + 1])[0][0], x[i])
        sign, logabsdet = torch.linalg.slogdet(J)
        assert sign > 0  # every coupling scales by exp(s) > 0
        assert float(logabsdet) == pytest.approx(float(ldj[i].detach()), abs=1e-10)


def test_paired_mlp_blocks_are_independent_networks():
    """The off-diagonal blocks are masked: changing them changes nothing, and the S half
    of the output does not depend on the T network's weights."""
    torch.manual_seed(0)
    net = PairedMLP(4, 6, 3, n_hidden_layers=3)
    h = torch.randn(10, 4)
    before = net(h).detach()
    with torch.no_grad():
        for lin in net.hidden:
            lin.weight.add_((1 - net.mask_hidden) * 5.0)
        net.last.weight.add_((1 - net.mask_last) * 5.0)
    np.testing.assert_allclose(net(h).detach().numpy(), before.numpy(), atol=1e-6)
    net.zero_grad()
    net(h)[:, :3].sum().backward()  # the first network's output
    assert net.last.weight.grad[3:].abs().max() == 0
    assert net.last.weight.grad[:3].abs().max() > 0


def test_flow_rejects_too_few_features():
    with pytest.raises(ValueError, match="at least 2"):
        RealNVP(1, 0, 8, 2, 2)


# --------------------------------------------------------------------------- prior

ONE_D = np.array([[1.0], [-1.0], [np.nan], [0.5]])  # point +1, point -1, NaN, intermediate


def _priors_1d(s):
    """(prior over plain markers, prior over continuum markers): populations = kinds."""
    plain = ScyanPrior(torch.tensor(ONE_D), torch.tensor([False]), s)
    cont = ScyanPrior(torch.tensor([[1.0], [-1.0], [0.5]]), torch.tensor([True]), s)
    return plain, cont


def test_prior_1d_densities_integrate_to_one():
    grid = torch.linspace(-6, 6, 24001)[:, None]
    for s in (0.3, 0.1):
        for prior in _priors_1d(s):
            dens = prior.log_prob(grid).exp().double().numpy()  # (G, P)
            mass = np.trapezoid(dens, grid[:, 0].double().numpy(), axis=0)
            np.testing.assert_allclose(mass, 1.0, atol=1e-4)


def test_prior_2d_density_integrates_to_one():
    rho = torch.tensor([[1.0, np.nan], [-1.0, 1.0], [0.5, -1.0], [np.nan, 0.0]])
    prior = ScyanPrior(rho, torch.tensor([False, True]), 0.3)  # marker 1 is a continuum
    g = torch.linspace(-5, 5, 801)
    uu = torch.cartesian_prod(g, g)
    dens = prior.log_prob(uu).exp().double().numpy().reshape(801, 801, -1)
    step = float(g[1] - g[0])
    mass = np.trapezoid(np.trapezoid(dens, dx=step, axis=0), dx=step, axis=0)
    np.testing.assert_allclose(mass, 1.0, atol=1e-3)
    # the density factorises over markers as documented
    lp = prior.log_prob(uu[:5]).numpy()
    hand = hand_log_prior(uu[:5].numpy(), rho.numpy(), np.array([False, True]), 0.3)
    np.testing.assert_allclose(lp, hand, rtol=1e-5, atol=1e-5)


def test_prior_shapes_as_documented():
    s = 0.1
    plain, cont = _priors_1d(s)
    u = torch.linspace(-3, 3, 601)[:, None]
    p = plain.log_prob(u).exp().numpy()
    q = cont.log_prob(u).exp().numpy()
    at = lambda v: int(round((v + 3) * 100))  # noqa: E731 - grid index of value v
    # point targets: Gaussian N(rho, s^2)
    for k, r in [(0, 1.0), (1, -1.0), (3, 0.5)]:
        np.testing.assert_allclose(p[:, k], stats.norm.pdf(u[:, 0].numpy(), r, s), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(q[:, 2], stats.norm.pdf(u[:, 0].numpy(), 0.5, s), rtol=1e-4, atol=1e-6)  # 0.5 stays a point
    # NaN: flat (1/2) across [-1, 1], half of that at the ends, nearly nothing beyond
    inner = [at(v) for v in np.linspace(-0.7, 0.7, 15)]
    np.testing.assert_allclose(p[inner, 2], 0.5, atol=1e-3)
    assert p[at(1.0), 2] == pytest.approx(0.25, abs=1e-3)
    assert p[at(-1.0), 2] == pytest.approx(0.25, abs=1e-3)
    assert p[at(1.5), 2] < 1e-4 and p[at(-1.5), 2] < 1e-4
    # continuum +1: flat (1) over [0, 1], lower outside; continuum -1: the mirror image
    inner_pos = [at(v) for v in np.linspace(0.3, 0.7, 5)]
    np.testing.assert_allclose(q[inner_pos, 0], 1.0, atol=2e-3)
    assert q[at(-0.5), 0] < 1e-3 and q[at(1.5), 0] < 1e-3
    assert q[at(-0.2), 0] < 0.5 * q[at(0.5), 0] and q[at(1.2), 0] < 0.5 * q[at(0.5), 0]
    np.testing.assert_allclose(q[:, 1], q[::-1, 0], rtol=1e-5, atol=1e-7)
    # a continuum +1 is wider than a point +1 but lower at +1
    assert q[at(0.3), 0] > 100 * p[at(0.3), 0] and q[at(1.0), 0] < p[at(1.0), 0]
    # the closed forms of the module docstring, at the default sigma
    plain3, cont3 = _priors_1d(0.3)
    uu = torch.linspace(-2.5, 2.5, 51)[:, None]
    np.testing.assert_allclose(plain3.log_prob(uu).numpy(), hand_log_prior(uu.numpy(), ONE_D, np.array([False]), 0.3), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        cont3.log_prob(uu).numpy(), hand_log_prior(uu.numpy(), np.array([[1.0], [-1.0], [0.5]]), np.array([True]), 0.3),
        rtol=1e-5, atol=1e-5,
    )


def test_log_interval_density_stable_in_tails():
    u = torch.tensor([-1e3, -50.0, -20.0, 0.0, 20.0, 50.0, 1e3], requires_grad=True)
    for lo, hi in [(-1.0, 1.0), (0.0, 1.0), (-1.0, 0.0)]:
        for s in (0.3, 0.05):
            out = log_interval_density(u, lo, hi, s)
            assert torch.isfinite(out).all(), (lo, hi, s, out)
            (g,) = torch.autograd.grad(out.sum(), u)
            assert torch.isfinite(g).all(), (lo, hi, s, g)
            # decreasing away from the interval on both sides
            assert out[0] < out[1] < out[2] < out[3] and out[3] > out[4] > out[5] > out[6]
            # the reference value in float64: log[Phi((u-lo)/s) - Phi((u-hi)/s)] - log(hi-lo), on the left side
            for v in (-50.0, 50.0):
                w = min(v, lo + hi - v)  # reflected onto the left side, where both CDFs are small
                la, lb = special.log_ndtr((w - lo) / s), special.log_ndtr((w - hi) / s)
                ref = la + np.log1p(-np.exp(lb - la)) - math.log(hi - lo)
                got = float(out[1 if v < 0 else 5].detach())
                assert got == pytest.approx(ref, rel=1e-4)
    # through the prior: NaN and continuum markers stay finite at u = +-50
    prior = ScyanPrior(torch.tensor([[np.nan, 1.0], [1.0, -1.0]]), torch.tensor([False, True]), 0.3)
    lp = prior.log_prob(torch.tensor([[50.0, -50.0], [-50.0, 50.0], [1e3, 1e3]]))
    assert torch.isfinite(lp).all()


def test_prior_sample_matches_log_prob():
    g = torch.Generator().manual_seed(0)
    n = 200_000
    edges = np.linspace(-3, 3, 61)
    fine = torch.linspace(-3, 3, 6001)[:, None]
    for s in (0.3, 0.1):
        for prior in _priors_1d(s):
            dens = prior.log_prob(fine).exp().double().numpy()
            for z in range(prior.n_pops):
                x = prior.sample(torch.full((n,), z, dtype=torch.long), generator=g)
                assert x.shape == (n, 1)
                hist, _ = np.histogram(x[:, 0].numpy(), bins=edges)
                hist = hist / (n * (edges[1] - edges[0]))
                # the density averaged over each bin (100 fine points per bin)
                binned = np.array([np.trapezoid(dens[100 * k : 100 * k + 101, z], dx=1e-3) / 0.1 for k in range(60)])
                np.testing.assert_allclose(hist, binned, atol=0.04)
                # moments of Uniform(lo, hi) + N(0, s^2)
                r = float(prior.rho[z, 0])
                lo, hi = (-1.0, 1.0) if math.isnan(r) else ((min(0.0, r), max(0.0, r)) if bool(prior.is_continuum[0]) and abs(r) == 1 else (r, r))
                assert float(x.mean()) == pytest.approx((lo + hi) / 2, abs=0.01)
                assert float(x.var()) == pytest.approx((hi - lo) ** 2 / 12 + s**2, rel=0.02)


def test_log_prob_quantiles_calibrated():
    rho = torch.tensor([[1.0, -1.0, np.nan], [-1.0, 1.0, 1.0], [0.5, np.nan, -1.0]])
    module = ScyanModule(rho, torch.tensor([False, False, True]), hidden_size=4, n_hidden_layers=1, n_layers=2)
    q = module.log_prob_quantiles(0.1, n_draws=20_000, seed=0)
    g = torch.Generator().manual_seed(123)
    for z in range(3):
        u = module.prior.sample(torch.full((20_000,), z, dtype=torch.long), generator=g)
        frac = float((module.prior.log_prob(u)[:, z] < q[z]).float().mean())
        assert frac == pytest.approx(0.1, abs=0.012)


# --------------------------------------------------------------------------- module


def _module_and_batch(seed=0):
    rho = torch.tensor([[1.0, -1.0, np.nan, 0.5], [-1.0, 1.0, 1.0, np.nan], [np.nan, 1.0, -1.0, -1.0]])
    torch.manual_seed(seed)
    module = ScyanModule(rho, torch.tensor([False, False, True, True]), n_batch=2, hidden_size=8, n_hidden_layers=2, n_layers=3)
    with torch.no_grad():
        for p in module.flow.parameters():
            p.add_(0.2 * torch.randn_like(p))
        module.pi_logit.copy_(0.02 * torch.randn(3))  # pi far from uniform (ratio r = 100)
    x = torch.randn(32, 4)
    b = torch.randint(0, 2, (32, 1))
    b[:2] = torch.tensor([[0], [1]])
    return module, rho, {Keys.X: x, Keys.BATCH: b}


def test_module_loss_is_documented_formula():
    module, rho, tensors = _module_and_batch()
    inf, gen, lo = module(tensors)
    cov = torch.nn.functional.one_hot(tensors[Keys.BATCH][:, 0], 2).float()
    np.testing.assert_array_equal(inf["cov"].numpy(), cov.numpy())
    u, ldj = module.flow(tensors[Keys.X], cov)
    lp = hand_log_prior(u.detach().numpy(), rho.numpy(), np.array([False, False, True, True]), 0.3)
    logits = 100.0 * module.pi_logit.detach().double().numpy()
    log_pi = logits - special.logsumexp(logits)
    assert np.exp(log_pi).max() > 0.5  # the weights matter
    nll = -(special.logsumexp(lp + log_pi, axis=1) + ldj.detach().double().numpy())
    np.testing.assert_allclose(lo.reconstruction_loss.detach().numpy(), nll, rtol=1e-4, atol=1e-4)
    assert float(lo.loss.detach()) == pytest.approx(nll.mean(), rel=1e-4)

    # temperature: log pi -> log_softmax(-r * pi_logit / T); reconstruction stays the exact nll
    lo_t = module.loss(tensors, inf, gen, use_temperature=True)
    logits_t = -100.0 * module.pi_logit.detach().double().numpy() / module.temperature
    log_pi_t = logits_t - special.logsumexp(logits_t)
    obj_t = -(special.logsumexp(lp + log_pi_t, axis=1) + ldj.detach().double().numpy())
    assert float(lo_t.loss.detach()) == pytest.approx(obj_t.mean(), rel=1e-4)
    assert abs(float(lo_t.loss.detach()) - float(lo.loss.detach())) > 1e-2
    np.testing.assert_allclose(lo_t.reconstruction_loss.numpy(), lo.reconstruction_loss.detach().numpy(), rtol=1e-6)
    # the temperature weights are detached: that objective does not train pi
    module.zero_grad()
    lo_t.loss.backward(retain_graph=True)
    assert module.pi_logit.grad is None or module.pi_logit.grad.abs().max() == 0
    module.zero_grad()
    lo.loss.backward()
    assert module.pi_logit.grad.abs().max() > 0


def test_module_sample_shapes_and_errors():
    module, rho, _ = _module_and_batch()
    cov = torch.tensor([[1.0, 0.0]])
    x = module.sample(7, cov)
    assert x.shape == (7, 4) and torch.isfinite(x).all()
    x, z = module.sample(50, cov, return_z=True)
    assert x.shape == (50, 4) and z.shape == (50,) and z.dtype == torch.long
    assert int(z.min()) >= 0 and int(z.max()) < 3
    x, z = module.sample(5, cov[0], z=2, return_z=True)  # a 1-D covariate row
    assert torch.equal(z, torch.full((5,), 2))
    zt = torch.tensor([0, 1, 2, 1])
    x, z = module.sample(4, cov.expand(4, 2).clone(), z=zt, return_z=True)
    assert torch.equal(z, zt) and x.shape == (4, 4)
    # reproducible with a generator
    a = module.sample(6, cov, generator=torch.Generator().manual_seed(3))
    b = module.sample(6, cov, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    # x = f^{-1}(u; c): mapping the draws back gives the prior's point targets
    x = module.sample(4000, cov, z=1, generator=torch.Generator().manual_seed(0))
    u = module.flow(x, cov.expand(4000, 2))[0].detach()
    np.testing.assert_allclose(u[:, :2].mean(0).numpy(), [-1.0, 1.0], atol=0.03)
    assert float(u[:, 2].mean()) == pytest.approx(0.5, abs=0.03)  # continuum +1: Uniform(0, 1) + noise
    with pytest.raises(ValueError, match="entries"):
        module.sample(5, cov, z=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        module.sample(5, cov, z=3)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        module.sample(2, cov, z=torch.tensor([0, -1]))
    with pytest.raises(TypeError, match="z must be"):
        module.sample(2, cov, z=1.5)
    with pytest.raises(TypeError, match="z must be"):
        module.sample(2, cov, z="Basophils")


# --------------------------------------------------------------------------- table


def test_read_table_levels_and_intermediate(tmp_path):
    t = pd.DataFrame({"CD3": [1, -1, -1], "CD19": [-1, 1, np.nan], "CD4": [0.5, np.nan, -1], "level 1": ["T", "B", "T"]},
                     index=["Tc", "Bc", "Mono"])
    t.index.name = "Populations"
    path = tmp_path / "t.csv"
    t.to_csv(path)
    for src in (t, path):
        kt = read_table(src)
        assert kt.markers == ["CD3", "CD19", "CD4"] and kt.populations == ["Tc", "Bc", "Mono"]
        assert kt.levels["level 1"].tolist() == ["T", "B", "T"]
        assert kt.rho.loc["Tc", "CD4"] == 0.5 and np.isnan(kt.rho.loc["Bc", "CD4"])
    # the MultiIndex form round-trips
    kt2 = read_table(kt.to_frame())
    pd.testing.assert_frame_equal(kt2.rho, kt.rho)
    assert kt2.levels["level 1"].tolist() == ["T", "B", "T"]
    # a "level..." column is a level even with numeric group names; an empty entry stays missing
    kt3 = read_table(t.assign(**{"level 2": [1, 2, 1], "level 1": ["T", None, "T"]}))
    assert kt3.markers == ["CD3", "CD19", "CD4"]
    assert kt3.levels["level 2"].tolist() == ["1", "2", "1"]
    assert kt3.levels["level 1"].isna().tolist() == [False, True, False]


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda t: t.set_axis(["Tc", "Tc", "Mono"], axis=0), "duplicate population.*Tc"),
        (lambda t: t.assign(CD19=[-1, 1, np.nan], CD3=[1, -1, np.nan], CD4=[0.5, np.nan, np.nan]), r"Mono.*all NaN"),
        (lambda t: t.assign(CD19=[-1, 2, np.nan]), r"'Bc'.*'CD19'.*2"),
        (lambda t: t.assign(CD19=[-1, "pos", np.nan]), r"'Bc'.*'CD19'.*pos"),
        (lambda t: t.assign(CD4=[-1.5, np.nan, -1]), r"'Tc'.*'CD4'.*-1.5"),
    ],
)
def test_read_table_errors(edit, match):
    t = pd.DataFrame({"CD3": [1, -1, -1], "CD19": [-1, 1, np.nan], "CD4": [0.5, np.nan, -1]}, index=["Tc", "Bc", "Mono"])
    with pytest.raises(DataError, match=match):
        read_table(edit(t))


def test_read_table_typo_in_csv_is_an_error(tmp_path):
    """A word in a marker column of a CSV is a typo, not a hierarchy level."""
    (tmp_path / "t.csv").write_text("pop,CD3,CD19,level\nTc,1,-1,T\nBc,-1,pos,B\nMono,-1,-1,M\n")
    with pytest.raises(DataError, match=r"'Bc'.*'CD19'.*pos"):
        read_table(tmp_path / "t.csv")


# --------------------------------------------------------------------------- model


def test_predict_and_proba(trained, aml):
    adata, table = trained.adata, aml[1]
    pops = trained.predict()
    col = adata.obs["scyan_pop"]
    assert isinstance(col.dtype, pd.CategoricalDtype)
    assert list(col.cat.categories) == list(table.index)
    assert pops.index.equals(adata.obs_names)
    assert np.isfinite(adata.obs["scyan_log_prob"]).all()
    full = trained.predict(unknown=None, key_added=None)
    assert full.notna().all()
    assert (full.astype(str) == adata.obs["cell_type"].astype(str)).mean() > 0.5  # it learned something
    proba = trained.predict_proba()
    assert list(proba.columns) == list(table.index) and proba.shape == (adata.n_obs, len(table))
    np.testing.assert_allclose(proba.sum(1).to_numpy(), 1.0, atol=1e-5)
    np.testing.assert_array_equal(proba.to_numpy().argmax(1), full.cat.codes.to_numpy())
    u = trained.get_latent_representation()
    assert u.shape == (adata.n_obs, table.shape[1])


def test_predict_new_data_equals_training(trained):
    adata = trained.adata
    ref = trained.predict(key_added=None)
    ref_p = trained.predict_proba()
    new = fresh_copy(adata)
    assert new is not adata
    got = trained.predict(new)
    pd.testing.assert_series_equal(got, ref, check_names=False)
    assert list(new.obs["scyan_pop"].astype(str)) == list(ref.astype(str))
    np.testing.assert_allclose(trained.predict_proba(new).to_numpy(), ref_p.to_numpy(), rtol=1e-5, atol=1e-6)
    # markers are matched by name: another column order, only the table's markers
    shuffled = fresh_copy(adata, var_order=list(reversed(trained.markers)))
    pd.testing.assert_series_equal(trained.predict(shuffled, key_added=None), ref, check_names=False)
    # a missing marker is named
    keep = [v for v in adata.var_names if v != "CD34"]
    with pytest.raises(DataError, match="CD34"):
        trained.predict(fresh_copy(adata, var_order=keep))


def test_unassigned_cells(trained):
    none = trained.predict(unknown=None, key_added=None)
    strict = trained.predict(unknown=0.5, key_added=None)
    default = trained.predict(key_added=None)
    assert none.isna().sum() == 0
    assert strict.isna().sum() > 0
    assert strict.isna().sum() >= default.isna().sum()
    kept = strict.notna()
    assert (strict[kept].astype(str) == none[kept].astype(str)).all()  # unknown only blanks, never relabels


def test_unknown_ratio_rule(trained):
    """Default rule: a cell whose latent point sits between the targets (u = 0 on every
    marker) is better explained by the all-not-informative prior -> unassigned; a cell at
    a population's targets is assigned to it; ``unknown=None`` assigns both."""
    module, markers = trained.module, trained.markers
    rho = torch.tensor(trained.table.rho.to_numpy(), dtype=torch.float32)
    u = torch.stack([torch.zeros(len(markers)), torch.nan_to_num(rho[3], nan=0.0)])
    with torch.no_grad():
        x = module.flow.inverse(u, torch.zeros(2, 0)).numpy()
    assert (module.log_background(u) > module.prior.log_prob(u).max(1).values)[0]
    new = ad.AnnData(np.zeros((2, trained.adata.n_vars), np.float32), var=pd.DataFrame(index=trained.adata.var_names))
    pos = [list(trained.adata.var_names).index(m) for m in markers]
    new.X[:, pos] = x
    pops = trained.predict(new, key_added=None)
    assert pd.isna(pops.iloc[0]) and pops.iloc[1] == trained.populations[3]
    assert trained.predict(new, key_added=None, unknown=None).notna().all()
    with pytest.raises(ValueError, match="unknown"):
        trained.predict(new, unknown="sometimes")


def test_save_load_same_predictions(trained, tmp_path):
    ref = trained.predict(unknown=None, key_added=None)
    ref_p = trained.predict_proba().to_numpy()
    trained.save(tmp_path / "m")
    with pytest.raises(FileExistsError):
        trained.save(tmp_path / "m")
    target = fresh_copy(trained.adata)
    loaded = Scyan.load(tmp_path / "m", target)
    assert loaded.is_trained
    pd.testing.assert_frame_equal(loaded.table.rho, trained.table.rho)
    assert loaded.populations == trained.populations and loaded.markers == trained.markers
    pd.testing.assert_series_equal(loaded.predict(unknown=None, key_added=None), ref)
    np.testing.assert_allclose(loaded.predict_proba().to_numpy(), ref_p, rtol=1e-5, atol=1e-6)
    pd.testing.assert_frame_equal(loaded.history["elbo_train"], trained.history["elbo_train"])


def test_seed_reproducible(trained, aml):
    adata, table = aml
    ref = trained.predict_proba().to_numpy()
    same = Scyan(adata.copy(), table, seed=0, **SMALL).fit(**FIT)
    pd.testing.assert_frame_equal(same.history["elbo_train"], trained.history["elbo_train"])
    np.testing.assert_allclose(same.predict_proba().to_numpy(), ref, rtol=1e-6, atol=1e-7)
    pd.testing.assert_series_equal(same.predict(unknown=None, key_added=None), trained.predict(unknown=None, key_added=None))
    other = Scyan(adata.copy(), table, seed=1, **SMALL).fit(**FIT)
    assert not np.allclose(other.history["elbo_train"].to_numpy(), trained.history["elbo_train"].to_numpy())
    assert np.abs(other.predict_proba().to_numpy() - ref).max() > 1e-3


LEVEL1 = {
    "Basophils": "Myeloid", "Monocytes": "Myeloid", "pDCs": "Myeloid",
    "CD4 T cells": "T cells", "CD8 T cells": "T cells", "CD16- NK cells": "NK cells", "CD16+ NK cells": "NK cells",
    "CD34+CD38+CD123- HSPCs": "HSPCs", "CD34+CD38+CD123+ HSPCs": "HSPCs", "CD34+CD38lo HSCs": "HSPCs",
    "Mature B cells": "B cells", "Plasma B cells": "B cells", "Pre B cells": "B cells", "Pro B cells": "B cells",
}


def test_hierarchy_levels(aml):
    adata, table = aml
    adata = adata.copy()
    t = table.copy()
    t["level 1"] = [LEVEL1[p] for p in t.index]
    model = Scyan(adata, t, seed=0, **SMALL).fit(**FIT)
    assert model.markers == list(table.columns)  # the level column is not a marker
    for unknown in (None, 0.5):
        pops = model.predict(unknown=unknown)
        lvl = adata.obs["scyan_pop_level_1"]
        expected = pops.astype(object).map(LEVEL1)
        assert (lvl.isna() == pops.isna()).all()
        assert (lvl[pops.notna()].astype(str) == expected[pops.notna()].astype(str)).all()
        assert set(lvl.dropna().astype(str)) <= set(LEVEL1.values())
    assert adata.obs["scyan_pop_level_1"].isna().any()  # unknown=0.5 left cells unassigned
    assert model.table.levels["level 1"].to_dict() == LEVEL1


def test_batch_effect_correction(aml):
    adata, table = aml
    adata = adata.copy()
    adata.obs["batch"] = np.where(np.arange(adata.n_obs) % 3 == 0, "b1", "b0")
    model = Scyan(adata, table, batch_key="batch", seed=0, **SMALL).fit(**FIT)
    assert model.batch_ref == "b0"  # the largest batch
    X = adata[:, model.markers].X
    out = model.batch_effect_correction()
    assert out.shape == (adata.n_obs, len(model.markers))
    assert list(adata.obsm["scyan_corrected"].columns) == model.markers
    ref = (adata.obs["batch"] == "b0").to_numpy()
    np.testing.assert_allclose(out[ref], X[ref], atol=1e-4)  # f^{-1}(f(x; c); c) = x
    assert np.abs(out[~ref] - X[~ref]).max() > 1e-3  # the other batch is moved
    out1 = model.batch_effect_correction(batch_ref="b1")
    np.testing.assert_allclose(out1[~ref], X[~ref], atol=1e-4)
    with pytest.raises(ValueError, match="b9"):
        model.batch_effect_correction(batch_ref="b9")
    # sampling per batch, and new data must carry the batch column
    x, z = model.sample(10, batch="b1", pop="Monocytes", return_z=True)
    assert x.shape == (10, len(model.markers)) and (z == model.populations.index("Monocytes")).all()
    with pytest.raises(DataError, match="batch"):
        model.predict(fresh_copy(adata))
    with pytest.raises(DataError, match="batch_ref"):
        Scyan(adata.copy(), table, batch_key="batch", batch_ref="b9", **SMALL)


def test_batch_effect_correction_needs_batch_key(trained):
    with pytest.raises(ValueError, match="batch_key"):
        trained.batch_effect_correction()


def test_propose_table_and_refine_fit(aml, tmp_path):
    adata, table = aml
    model = Scyan(adata.copy(), table, seed=0, **SMALL).fit(**FIT)
    rho0 = model.table.rho.copy()
    cols = ["population", "marker", "proposed", "median_u", "n_cells"]
    props = model.propose_table(min_cells=1, threshold=0.0)
    assert list(props.columns) == cols and len(props) > 0
    for _, r in props.iterrows():
        assert np.isnan(rho0.loc[r["population"], r["marker"]])  # proposals only for NaN cells
        assert r["proposed"] == np.sign(r["median_u"]) and r["proposed"] in (-1.0, 1.0)
        assert r["n_cells"] >= 1
    assert model.propose_table(threshold=100.0).columns.tolist() == cols
    assert len(model.propose_table(threshold=100.0)) == 0
    with pytest.raises(DataError, match="Nobody"):
        model.refine_fit(pd.DataFrame([("Nobody", "CD4", 1.0, 1.0, 5)], columns=cols), **FIT)

    chosen = props.head(3)
    applied = model.refine_fit(chosen, **FIT)
    pd.testing.assert_frame_equal(applied, chosen)
    rho1 = model.table.rho
    for _, r in chosen.iterrows():
        assert rho1.loc[r["population"], r["marker"]] == r["proposed"]
    assert int(rho1.isna().sum().sum()) == int(rho0.isna().sum().sum()) - len(chosen)
    prior_rho = model.module.prior.rho.numpy()
    np.testing.assert_array_equal(np.isnan(prior_rho), rho1.isna().to_numpy())
    model.save(tmp_path / "refined")
    loaded = Scyan.load(tmp_path / "refined", fresh_copy(model.adata))
    pd.testing.assert_frame_equal(loaded.table.rho, rho1)
    pd.testing.assert_series_equal(loaded.predict(unknown=None, key_added=None), model.predict(unknown=None, key_added=None))


def test_new_raw_data_gets_training_preprocessing(aml, tmp_path):
    adata, table = aml
    raw = np.maximum(5.0 * np.sinh(0.8 * adata.X + 3.0), 0.0).astype(np.float32)  # positive raw intensities
    assert raw.max() > 1000
    train = fresh_copy(adata)
    train.X = raw.copy()
    cy.asinh_transform(train, cofactor=5.0)
    cy.scale(train)
    assert "transform" in train.uns["scprob_cytometry"]
    model = Scyan(train, table, seed=0, **SMALL).fit(**FIT)
    ref = model.predict(unknown=None, key_added=None)
    ref_p = model.predict_proba().to_numpy()

    new_raw = fresh_copy(adata)
    new_raw.X = raw.copy()
    pd.testing.assert_series_equal(model.predict(new_raw, unknown=None), ref, check_names=False)
    np.testing.assert_allclose(model.predict_proba(new_raw).to_numpy(), ref_p, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(new_raw.X, raw)  # the user's data are left as they were

    # the same through an FCS file, and after save/load (the record travels with the model)
    from_fcs = read_fcs(write_fcs(new_raw, tmp_path / "raw.fcs"))
    pd.testing.assert_series_equal(model.predict(from_fcs, unknown=None, key_added=None), ref, check_names=False, check_index=False)
    model.save(tmp_path / "m")
    target = fresh_copy(adata)
    target.X = train.X.copy()
    target.uns["scprob_cytometry"] = train.uns["scprob_cytometry"]
    loaded = Scyan.load(tmp_path / "m", target)
    pd.testing.assert_series_equal(loaded.predict(fresh_copy(new_raw), unknown=None, key_added=None), ref, check_names=False)

    # new data transformed with other parameters: predicted, with a warning
    other = fresh_copy(adata)
    other.X = raw.copy()
    cy.asinh_transform(other, cofactor=150.0)
    cy.scale(other)
    with pytest.warns(UserWarning, match="transformed differently"):
        model.predict(other, unknown=None, key_added=None)


# --------------------------------------------------------------------------- bad input


def test_table_markers_missing_from_data(aml):
    adata, table = aml
    a = fresh_copy(adata, var_order=[v for v in adata.var_names if v not in ("CD34", "HLA-DR")])
    with pytest.raises(DataError, match=r"CD34.*HLA-DR|HLA-DR.*CD34"):
        Scyan(a, table, **SMALL)
    with pytest.raises(DataError, match="not-a-marker"):
        Scyan(adata.copy(), table, continuum_markers=["not-a-marker"], **SMALL)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda t: t.set_axis(["Monocytes", *t.index[1:]], axis=0), "duplicate population.*Monocytes"),
        (lambda t: t.where(np.broadcast_to((t.index != "Basophils")[:, None], t.shape)), "Basophils.*all NaN"),
        (lambda t: t.assign(CD19=[2.0, *t["CD19"][1:]]), r"'Basophils'.*'CD19'.*2"),
        (lambda t: t.assign(CD19=["pos", *t["CD19"][1:]]), r"'Basophils'.*'CD19'.*pos"),
    ],
)
def test_bad_table_is_a_data_error(aml, edit, match):
    adata, table = aml
    with pytest.raises(DataError, match=match):
        Scyan(adata.copy(), edit(table.copy()), **SMALL)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_data(aml, bad):
    adata, table = aml
    a = fresh_copy(adata)
    j = list(a.var_names).index("CD7")
    a.X[17, j] = bad
    with pytest.raises(DataError, match=rf"CD7.*{a.obs_names[17]}"):
        Scyan(a, table, **SMALL)
    a.X[17, j] = 0.0
    a.X[3, 0] = bad  # CD45RA is not in the table: ignored
    Scyan(a, table, **SMALL)


def test_untransformed_or_unscaled_data_warn(aml):
    adata, table = aml
    raw = fresh_copy(adata)
    raw.X = np.maximum(5.0 * np.sinh(0.8 * adata.X + 3.0), 0.0).astype(np.float32)  # counts in the thousands
    with pytest.warns(UserWarning, match=r"untransformed.*asinh_transform"):
        Scyan(raw, table, **SMALL)
    unscaled = fresh_copy(adata)
    unscaled.X = 3.0 * adata.X + 2.0
    with pytest.warns(UserWarning, match=r"unscaled.*scale\(adata\)"):
        Scyan(unscaled, table, **SMALL)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        Scyan(fresh_copy(adata), table, **SMALL)  # the shipped data are fine
