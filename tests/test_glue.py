"""GLUE: the prob-model registry (nn/prob_models.py), the likelihoods it draws on
(distributions/_more.py, registry.py), the guidance-graph encoder and edge sampler
(nn/graph.py, data/graph_sampler.py), the module (modules/glue.py) and the user-facing
model (models/glue.py): setup validation, a small two-modality fit, save/load.

Data are built here: a tiny paired RNA + ATAC generator (3 cell types with type-specific
gene programmes; each peak is linked to one gene and open when that gene's programme is
on; ATAC cells shuffled and renamed, the true pairing kept in ``atac.obs["match"]``).
Small networks and a few epochs keep the file fast.
"""

from __future__ import annotations

import json
from collections import Counter

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from lightning.pytorch.callbacks import Callback
from scipy import stats
from torch import nn

import scprob
from scprob.data import DataError
from scprob.data.graph_sampler import EdgeSampler
from scprob.data.multimodal import UNS_KEY
from scprob.distributions import get_likelihood
from scprob.metrics import foscttm, label_transfer
from scprob.models import GLUE
from scprob.models.glue import balancing_weights, default_max_epochs
from scprob.nn import prob_models as pm
from scprob.nn.graph import GraphEncoder

SMALL = dict(latent_dim=8, h_depth=1, h_dim=32, dropout=0.1, random_state=0)
FIT = dict(batch_size=64, enable_progress_bar=False, seed=0)

pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning", "ignore:.*val_dataloader.*", "ignore:.*train_dataloader.*", "ignore:.*LeafSpec.*",
    "ignore:.*does not have many workers.*", "ignore:.*log_every_n_steps.*", "ignore:Sparse.*:UserWarning",
)

SHIPPED = ["NB", "ZINB", "Poisson", "Normal", "ZIN", "ZILN", "Bernoulli", "Beta", "NBMixture"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread_module):
    """Tiny layers: one thread (see conftest.one_thread_module)."""


# --------------------------------------------------------------------------- helpers


def make_paired(n_cells=180, n_types=3, n_genes=48, n_peaks=72, seed=0):
    """Paired RNA (NB counts) + ATAC (0/1/2 counts) of the same cells, and the guidance
    graph as an edge table (gene <-> linked peak, both directions, weight 1, sign +1).

    Returns ``rna, atac, edges``; ``atac`` rows are a shuffled, renamed copy of the cells,
    ``atac.obs["match"]`` names each ATAC cell's RNA cell.
    """
    rng = np.random.default_rng(seed)
    types = np.resize(np.arange(n_types), n_cells)
    rng.shuffle(types)
    on = np.zeros((n_types, n_genes), bool)
    for t in range(n_types):
        on[t, t::n_types] = True
    on[:, :3] = True  # housekeeping genes
    base = rng.gamma(3.0, 0.5, n_genes)
    mu = base * np.where(on[types], 6.0, 0.3) * rng.lognormal(0, 0.25, (n_cells, 1))
    rna = rng.poisson(rng.gamma(5.0, mu / 5.0)).astype(np.float32)
    link = np.arange(n_peaks) % n_genes  # peak j is linked to gene link[j]
    p_open = np.where(on[types][:, link], 0.6, 0.04) * rng.uniform(0.7, 1.0, (n_cells, 1))
    atac = rng.binomial(2, p_open).astype(np.float32)
    for m in (rna, atac):
        m[m.sum(1) == 0, 0] = 1
    genes = [f"gene{i}" for i in range(n_genes)]
    peaks = [f"peak{j}" for j in range(n_peaks)]
    labels = np.array([f"type{t}" for t in types])
    rna_names = [f"rna{i}" for i in range(n_cells)]
    perm = rng.permutation(n_cells)
    rna_ad = ad.AnnData(
        sp.csr_matrix(rna), obs=pd.DataFrame({"cell_type": pd.Categorical(labels)}, index=rna_names),
        var=pd.DataFrame(index=genes),
    )
    atac_ad = ad.AnnData(
        sp.csr_matrix(atac[perm]),
        obs=pd.DataFrame({"cell_type": pd.Categorical(labels[perm]), "match": np.asarray(rna_names)[perm]},
                         index=[f"atac{i}" for i in range(n_cells)]),
        var=pd.DataFrame(index=peaks),
    )
    src = [genes[g] for g in link] + peaks
    tgt = peaks + [genes[g] for g in link]
    edges = pd.DataFrame(dict(source=src, target=tgt, weight=1.0, sign=1))
    return rna_ad, atac_ad, edges


def truth_order(rna, atac) -> np.ndarray:
    """Row of ``atac`` holding each RNA cell (in RNA order)."""
    order = pd.Index(atac.obs["match"]).get_indexer(rna.obs_names)
    assert (order >= 0).all()
    return order


def fresh(adata, X=None) -> ad.AnnData:
    """The same cells and features as a new AnnData (no uns, no registry)."""
    X = adata.X.copy() if X is None else X
    return ad.AnnData(X, obs=adata.obs.copy(), var=pd.DataFrame(index=list(adata.var_names)))


def configured(n_cells=90, seed=0, **kw):
    rna, atac, edges = make_paired(n_cells=n_cells, seed=seed, **kw)
    GLUE.configure_dataset(rna, "NB")
    GLUE.configure_dataset(atac, "NB")
    return rna, atac, edges


def scores(glue, rna, atac) -> tuple[float, float]:
    zr, za = glue.encode_data("rna", rna), glue.encode_data("atac", atac)
    fos = foscttm(zr, za[truth_order(rna, atac)])
    lt = label_transfer(zr, rna.obs["cell_type"], za, atac.obs["cell_type"])
    return fos, lt


def valid_data(name: str, n: int, p: int, rng: np.random.Generator) -> np.ndarray:
    """Data a prob model accepts: counts, reals (with exact zeros), non-negative values
    with zeros, binary, or fractions including exact 0 and 1."""
    if name in ("NB", "ZINB", "Poisson", "NBMixture"):
        x = rng.poisson(3.0, (n, p)).astype(np.float32)
        x[:, 0] += 1
        return x
    if name == "Normal":
        return rng.normal(size=(n, p)).astype(np.float32)
    if name == "ZIN":
        x = rng.normal(size=(n, p))
        return np.where(rng.random((n, p)) < 0.3, 0.0, x).astype(np.float32)
    if name == "ZILN":
        x = rng.lognormal(0.0, 1.0, (n, p))
        return np.where(rng.random((n, p)) < 0.3, 0.0, x).astype(np.float32)
    if name == "Bernoulli":
        return (rng.random((n, p)) < 0.3).astype(np.float32)
    if name == "Beta":
        x = rng.uniform(0.0, 1.0, (n, p))
        x[0, :3] = [0.0, 1.0, 0.0]
        x[1, :3] = [1.0, 1.0, 0.0]
        return x.astype(np.float32)
    raise AssertionError(name)


# ------------------------------------------------------------------ 1. prob-model registry


class SqrtEncoder(scprob.nn.DataEncoder):
    """A custom encoder: library = total count, input = sqrt of the proportions."""

    def compute_l(self, x):
        return x.sum(dim=1, keepdim=True)

    def normalize(self, x, l):
        return (x / l.clamp_min(1.0)).sqrt()


class MyPoissonDecoder(scprob.nn.LikelihoodDataDecoder):
    likelihood = "poisson"


class GaussDecoder(scprob.nn.DataDecoder):
    """A hand-written decoder returning a plain torch Normal (no likelihood registry)."""

    is_count = False
    value_range = None

    def __init__(self, out_features, n_batches=1):
        super().__init__(out_features, n_batches)
        self.bias = nn.Parameter(torch.zeros(n_batches, out_features))
        self.log_std = nn.Parameter(torch.zeros(n_batches, out_features))

    def forward(self, u, v, b, l):
        return torch.distributions.Normal(u @ v.t() + self.bias[b], self.log_std[b].exp())


@pytest.fixture
def custom_prob_models():
    # the public entry points (scprob.register_prob_model, scprob.nn.*)
    scprob.register_prob_model("TestPoisson", SqrtEncoder, MyPoissonDecoder)
    scprob.nn.register_prob_model("TestGauss", SqrtEncoder, GaussDecoder)
    yield
    for name in ("TestPoisson", "TestGauss"):
        pm._PROB_MODELS.pop(name, None)


def test_custom_prob_model_trains_and_encodes(custom_prob_models):
    assert {"TestPoisson", "TestGauss"} <= set(scprob.nn.available_prob_models())
    assert scprob.nn.get_prob_model("TestPoisson")["is_count"] is True  # from the poisson likelihood
    assert scprob.nn.get_prob_model("TestGauss")["is_count"] is False  # from the class attribute
    rna, atac, edges = make_paired(n_cells=90)
    GLUE.configure_dataset(rna, "TestPoisson")
    GLUE.configure_dataset(atac, "TestGauss")
    glue = GLUE({"rna": rna, "atac": atac}, edges, **SMALL)
    assert isinstance(glue.module.encoders["rna"], SqrtEncoder)
    assert isinstance(glue.module.decoders["rna"], MyPoissonDecoder)
    assert isinstance(glue.module.decoders["atac"], GaussDecoder)
    glue.train(max_epochs=2, **FIT)
    assert np.isfinite(glue.history["train_loss"].to_numpy()).all()
    for key, a in (("rna", rna), ("atac", atac)):
        z = glue.encode_data(key, a)
        assert z.shape == (a.n_obs, SMALL["latent_dim"]) and np.isfinite(z).all()
    # the custom count model's data checks come from its likelihood
    bad = fresh(rna, X=np.asarray(rna.X.todense()) + 0.5)
    with pytest.raises(DataError, match="non-integer"):
        GLUE.configure_dataset(bad, "TestPoisson")


def test_unknown_prob_model_lists_registered():
    rna, _, _ = make_paired(n_cells=30)
    with pytest.raises(ValueError, match="NotAModel") as err:
        GLUE.configure_dataset(rna, "NotAModel")
    for name in pm.available_prob_models():
        assert repr(name) in str(err.value)
    assert UNS_KEY not in rna.uns


def test_register_prob_model_rejects_non_subclasses():
    with pytest.raises(TypeError, match="encoder_cls"):
        pm.register_prob_model("Bad", nn.Linear, pm.NBDataDecoder)
    with pytest.raises(TypeError, match="encoder_cls"):
        pm.register_prob_model("Bad", pm.NBDataEncoder(5, 2), pm.NBDataDecoder)  # an instance, not a class
    with pytest.raises(TypeError, match="decoder_cls"):
        pm.register_prob_model("Bad", pm.NBDataEncoder, nn.Linear)
    with pytest.raises(TypeError, match="decoder_cls"):
        pm.register_prob_model("Bad", pm.NBDataEncoder, torch.distributions.Normal)
    assert "Bad" not in pm.available_prob_models()


# ---------------------------------------------------------- 2. every shipped prob model


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_prob_model_shapes_and_batch_rows(name):
    assert name in pm.available_prob_models()
    n, p, d = 20, 7, 4
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    spec = pm.get_prob_model(name)
    x = torch.as_tensor(valid_data(name, n, p, rng))
    enc = spec["encoder"](p, d, h_depth=1, h_dim=16, dropout=0.0)
    qu, l = enc(x)
    assert isinstance(qu, torch.distributions.Normal)
    assert qu.loc.shape == (n, d) and qu.scale.shape == (n, d) and (qu.scale > 0).all()
    assert l is None or l.shape == (n, 1)

    dec = spec["decoder"](p, n_batches=2)
    params = list(dec.parameters())
    assert params and all(t.shape == (2, p) for t in params)  # one row per batch
    with torch.no_grad():  # batch rows start equal; make them differ
        for t in params:
            t.normal_(0.0, 0.5)
    u, v = qu.loc.detach(), torch.randn(p, d)
    b = torch.tensor([0, 1] * (n // 2))
    lp = dec(u, v, b, l).log_prob(x)
    assert lp.shape == (n, p)
    assert torch.isfinite(lp).all()
    # each row uses its own batch's parameters
    lp0 = dec(u, v, torch.zeros(n, dtype=torch.long), l).log_prob(x)
    lp1 = dec(u, v, torch.ones(n, dtype=torch.long), l).log_prob(x)
    torch.testing.assert_close(lp, torch.where(b[:, None] == 0, lp0, lp1))
    assert not torch.allclose(lp0, lp1)
    # configure_dataset accepts the same data
    a = ad.AnnData(x.numpy(), obs=pd.DataFrame(index=[f"c{i}" for i in range(n)]),
                   var=pd.DataFrame(index=[f"f{j}" for j in range(p)]))
    GLUE.configure_dataset(a, name)
    assert json.loads(a.uns[UNS_KEY])["prob_model"] == name


# -------------------------------------------------------------- 3. likelihood registry


def _t(a):
    return torch.as_tensor(np.asarray(a, dtype=np.float64))


def test_zin_and_ziln_log_prob_against_scipy():
    loc, std, pi = np.array([0.3, -1.0, 2.0]), np.array([0.5, 1.5, 0.8]), np.array([-0.7, 0.4, 1.2])
    assert get_likelihood("zin")["params"] == ("loc", "std", "zi_logits")
    zin = get_likelihood("zin")["builder"](loc=_t(loc), std=_t(std), zi_logits=_t(pi))
    w = 1.0 / (1.0 + np.exp(-pi))  # dropout probability
    at0 = np.log(w + (1 - w) * stats.norm.pdf(0.0, loc, std))
    x = np.array([0.7, -2.0, 1.0])
    nonzero = np.log(1 - w) + stats.norm.logpdf(x, loc, std)
    np.testing.assert_allclose(zin.log_prob(_t(np.zeros(3))).numpy(), at0, rtol=1e-10)
    np.testing.assert_allclose(zin.log_prob(_t(x)).numpy(), nonzero, rtol=1e-10)

    ziln = get_likelihood("ziln")["builder"](loc=_t(loc), std=_t(std), zi_logits=_t(pi))
    xp = np.array([0.7, 2.0, 1.0])
    np.testing.assert_allclose(ziln.log_prob(_t(np.zeros(3))).numpy(), np.log(w), rtol=1e-10)
    np.testing.assert_allclose(ziln.log_prob(_t(xp)).numpy(),
                               np.log(1 - w) + stats.lognorm.logpdf(xp, s=std, scale=np.exp(loc)), rtol=1e-10)
    assert get_likelihood("ziln")["value_range"] == (0.0, float("inf"))


def test_beta_log_prob_against_scipy():
    eta, log_phi = np.array([0.2, -1.0, 1.5, 0.0]), np.array([1.0, 2.0, 0.5, 3.0])
    assert get_likelihood("beta")["params"] == ("loc", "log_phi")
    assert get_likelihood("beta")["value_range"] == (0.0, 1.0)
    dist = get_likelihood("beta")["builder"](loc=_t(eta), log_phi=_t(log_phi))
    m, phi = 1 / (1 + np.exp(-eta)), np.exp(log_phi)
    x = np.array([0.1, 0.5, 0.93, 0.3])
    np.testing.assert_allclose(dist.log_prob(_t(x)).numpy(), stats.beta.logpdf(x, m * phi, (1 - m) * phi), rtol=1e-8)
    # exact 0 and 1 (methylation fractions) are finite: scored at the clamp
    edge = np.array([0.0, 1.0, 0.0, 1.0])
    lp = dist.log_prob(_t(edge)).numpy()
    assert np.isfinite(lp).all()
    clamped = np.clip(edge, 1e-6, 1 - 1e-6)
    np.testing.assert_allclose(lp, stats.beta.logpdf(clamped, m * phi, (1 - m) * phi), rtol=1e-6)


def test_nb_mixture_log_prob_against_scipy():
    mu_fg, mu_bg = np.array([20.0, 5.0, 50.0]), np.array([2.0, 1.0, 3.0])
    theta, w = np.array([3.0, 10.0, 1.5]), np.array([0.5, -1.0, 2.0])
    spec = get_likelihood("nb_mixture")
    assert spec["is_count"] and set(spec["params"]) == {"log_mu", "theta", "log_mu_bg", "mix_logits"}
    dist = spec["builder"](log_mu=_t(np.log(mu_fg)), theta=_t(theta), log_mu_bg=_t(np.log(mu_bg)), mix_logits=_t(w))
    p_bg = 1 / (1 + np.exp(-w))
    for x in (np.array([0.0, 0.0, 0.0]), np.array([3.0, 7.0, 40.0]), np.array([25.0, 1.0, 0.0])):
        ref = np.logaddexp(np.log(p_bg) + stats.nbinom.logpmf(x, theta, theta / (theta + mu_bg)),
                           np.log(1 - p_bg) + stats.nbinom.logpmf(x, theta, theta / (theta + mu_fg)))
        np.testing.assert_allclose(dist.log_prob(_t(x)).numpy(), ref, rtol=1e-8)


def test_bernoulli_binarizes_counts():
    eta = np.array([0.3, -2.0, 1.0, 0.0])
    dist = get_likelihood("bernoulli")["builder"](loc=_t(eta))
    p = 1 / (1 + np.exp(-eta))
    counts = np.array([0.0, 3.0, 1.0, 7.0])
    ref = np.where(counts > 0, np.log(p), np.log(1 - p))
    np.testing.assert_allclose(dist.log_prob(_t(counts)).numpy(), ref, rtol=1e-10)
    np.testing.assert_allclose(dist.log_prob(_t(counts)).numpy(), dist.log_prob(_t((counts > 0) * 1.0)).numpy())


def test_scvi_rejects_family_its_decoder_cannot_make():
    with pytest.raises(ValueError, match="beta") as err:
        scprob.modules.VAE(10, gene_likelihood="beta")
    msg = str(err.value)
    for ok in ("nb", "zinb", "poisson"):
        assert repr(ok) in msg  # the families it takes
    for no in ("'zin'", "'nb_mixture'", "'bernoulli'"):
        assert no not in msg.split("takes", 1)[-1]
    scprob.modules.VAE(10, gene_likelihood="nb")  # a family it can make


# ------------------------------------------------------------------- 4. edge sampler


def _edge_set(eidx):
    return set(map(tuple, eidx.t().tolist()))


def test_edge_sampler_negatives_are_non_edges_and_copy_signs():
    gen = torch.Generator().manual_seed(0)
    n = 12
    rng = np.random.default_rng(0)
    pairs = {(int(i), int(j)) for i, j in rng.integers(0, n, (30, 2))}
    pairs |= {(i, i) for i in range(n)}
    pairs = sorted(pairs)
    eidx = torch.tensor(pairs, dtype=torch.long).t()
    esgn = torch.as_tensor(rng.choice([-1.0, 1.0], len(pairs)), dtype=torch.float32)
    ewt = torch.as_tensor(rng.uniform(0.2, 1.0, len(pairs)), dtype=torch.float32)
    sign_of = {e: s for e, s in zip(pairs, esgn.tolist())}
    edges = set(pairs)
    for neg in (1, 3):
        sampler = EdgeSampler(eidx, ewt, esgn, n, neg_samples=neg)
        n_neg = 0
        for _ in range(50):
            out = sampler.sample(40, generator=gen)
            e, s, t = out["eidx"], out["esgn"], out["target"]
            assert e.shape[0] == 2 and e.shape[1] == s.numel() == t.numel()
            pos, negm = t == 1, t == 0
            assert int(pos.sum()) == 40 and set(t.tolist()) <= {0.0, 1.0}
            pos_e = list(map(tuple, e[:, pos].t().tolist()))
            neg_e = list(map(tuple, e[:, negm].t().tolist()))
            assert set(pos_e) <= edges  # positives are real edges, with their own sign
            assert all(sign_of[x] == y for x, y in zip(pos_e, s[pos].tolist()))
            assert not (set(neg_e) & edges)  # never an existing edge as a negative
            # every negative copies source and sign of one of the positives (neg per positive)
            pos_keys = Counter((x[0], y) for x, y in zip(pos_e, s[pos].tolist()))
            neg_keys = Counter((x[0], y) for x, y in zip(neg_e, s[negm].tolist()))
            assert all(c <= neg * pos_keys[k] for k, c in neg_keys.items())
            n_neg += len(neg_e)
        assert n_neg > 0.8 * 50 * 40 * neg  # almost none dropped on a sparse graph


def test_edge_sampler_complete_graph_terminates_without_negatives():
    n = 5
    pairs = [(i, j) for i in range(n) for j in range(n)]  # complete, with self-loops
    eidx = torch.tensor(pairs, dtype=torch.long).t()
    sampler = EdgeSampler(eidx, torch.ones(len(pairs)), torch.ones(len(pairs)), n, neg_samples=2)
    out = sampler.sample(50, generator=torch.Generator().manual_seed(0))
    assert out["target"].numel() == 50 and (out["target"] == 1).all()
    assert _edge_set(out["eidx"]) <= set(pairs)


def test_edge_sampler_negative_targets_follow_degree():
    # hub 0 <-> 1..5 (degree 10); 6 <-> 7; 8 -> 9 (vertex 9 has degree 1)
    pairs = [(0, j) for j in range(1, 6)] + [(j, 0) for j in range(1, 6)] + [(6, 7), (7, 6), (8, 9)]
    eidx = torch.tensor(pairs, dtype=torch.long).t()
    sampler = EdgeSampler(eidx, torch.ones(len(pairs)), torch.ones(len(pairs)), 10, neg_samples=5)
    gen = torch.Generator().manual_seed(0)
    hub = leaf = 0
    for _ in range(100):
        out = sampler.sample(20, generator=gen)
        neg = out["eidx"][:, out["target"] == 0]
        from_67 = (neg[0] == 6) | (neg[0] == 7)  # sources for which both 0 and 9 are non-edges
        hub += int((neg[1][from_67] == 0).sum())
        leaf += int((neg[1][from_67] == 9).sum())
    assert hub > 3 * max(leaf, 1)  # expected ratio 10:1
    assert leaf > 0


# ------------------------------------------------------------------- 5. graph encoder


def test_graph_encoder_matches_dense_propagation():
    torch.manual_seed(0)
    n, d = 5, 3
    src = [0, 0, 1, 2, 2, 3, 4, 4, 0, 1, 2, 3, 4]
    tgt = [1, 2, 0, 3, 4, 2, 0, 3, 0, 1, 2, 3, 4]
    w = [0.5, 1.0, 0.25, 0.8, 0.3, 1.0, 0.6, 0.9, 1.0, 1.0, 1.0, 1.0, 1.0]
    s = [1, -1, 1, 1, -1, 1, -1, 1, 1, 1, 1, 1, 1]
    eidx = torch.tensor([src, tgt])
    enc = GraphEncoder(n, d, eidx, torch.tensor(w), torch.tensor(s, dtype=torch.float32))
    q = enc()
    assert isinstance(q, torch.distributions.Normal)
    assert q.loc.shape == (n, d) and q.scale.shape == (n, d) and (q.scale > 0).all()
    h = enc.vrepr.detach().double().numpy()
    W = np.zeros((n, n))
    S = np.zeros((n, n))
    for i, j, wij, sij in zip(src, tgt, w, s):
        W[i, j], S[i, j] = wij, sij
    d_out, d_in = W.sum(1), W.sum(0)
    dense = np.zeros((n, d))
    for j in range(n):
        for i in range(n):
            if W[i, j] > 0:
                dense[j] += S[i, j] * W[i, j] / np.sqrt(d_out[i] * d_in[j]) * h[i]
    np.testing.assert_allclose(enc.propagate().detach().double().numpy(), dense, rtol=1e-5, atol=1e-6)
    # gradients reach the vertex representations through the sparse propagation
    enc().loc.sum().backward()
    assert enc.vrepr.grad is not None and enc.vrepr.grad.abs().sum() > 0


# ------------------------------------------------------------------ 6. a small fit


@pytest.fixture(scope="module")
def fitted():
    rna, atac, edges = make_paired()
    GLUE.configure_dataset(rna, "NB")
    GLUE.configure_dataset(atac, "NB")
    glue = GLUE({"rna": rna, "atac": atac}, edges, **SMALL)
    before = scores(glue, rna, atac)  # untrained: the model as built
    # 40 + 40 epochs of 3 steps, no early stopping: aligned on each of 6 data/model seeds
    # tried (FOSCTTM 0.16-0.25, label transfer 0.67-1.0).  With max_epochs=30 and early
    # stopping (pretrain stopped at ~11-14 epochs) 2 of 5 seeds stayed unaligned.
    glue.train(max_epochs=40, early_stopping=False, **FIT)
    return glue, rna, atac, before


def test_fit_aligns_better_than_untrained(fitted):
    glue, rna, atac, (fos0, lt0) = fitted
    fos1, lt1 = scores(glue, rna, atac)
    assert glue.is_trained_
    assert fos1 < fos0 - 0.05, (fos0, fos1)  # untrained ~0.5 (random)
    assert lt1 > 1 / 3 + 0.1, lt1  # 3 balanced types: chance 1/3
    hist = glue.history
    assert {"train_loss", "validation_loss", "stage"} <= set(hist)
    assert set(hist["stage"]["stage"]) == {"pretrain", "fine-tune"}
    assert np.isfinite(hist["train_loss"].to_numpy()).all()
    w = glue.balancing_weights_
    assert set(w) == {"rna", "atac"}
    for k in w:
        assert len(w[k]) == glue.adatas[k].n_obs and np.isclose(w[k].mean(), 1.0)


def test_fit_graph_and_feature_embeddings(fitted):
    glue = fitted[0]
    n_v = 48 + 72
    assert glue.vertices[:48] == [f"gene{i}" for i in range(48)] and len(glue.vertices) == n_v
    loops = glue.edges[glue.edges["source"] == glue.edges["target"]]
    assert set(loops["source"]) == set(glue.vertices)  # self-loops added
    assert len(glue.edges) == 2 * 72 + n_v
    v = glue.encode_graph()
    assert v.shape == (n_v, SMALL["latent_dim"]) and np.isfinite(v).all()
    fe = glue.feature_embeddings()
    assert list(fe.index) == glue.vertices and np.array_equal(fe.to_numpy(), v)


def test_history_epochs_and_stages_line_up(fitted):
    hist = fitted[0].history
    n = len(hist["train_loss"])
    assert list(hist["train_loss"].index) == list(range(n)) == list(hist["stage"].index)
    stages = hist["stage"]["stage"].tolist()
    assert stages == sorted(stages, key=["pretrain", "fine-tune"].index)  # pretrain epochs first


def test_encode_data_matches_features_by_name(fitted):
    glue, rna, _, _ = fitted
    z = glue.encode_data("rna", rna)
    shuffled = fresh(rna)[:, list(rna.var_names[::-1])].copy()
    np.testing.assert_allclose(glue.encode_data("rna", shuffled), z, rtol=1e-5, atol=1e-6)
    with pytest.raises(KeyError, match="unknown modality"):
        glue.encode_data("protein", rna)
    with pytest.raises(DataError, match="lacks 1 of the modality's features"):
        glue.encode_data("rna", fresh(rna)[:, list(rna.var_names[1:])].copy())


def test_link_matrices_follow_cross_modality_edges():
    rna, atac, edges = configured()
    edges = edges.copy()
    edges.loc[0, ["weight", "sign"]] = [0.5, -1]  # gene0 -> peak0 (source gene, target peak)
    glue = GLUE({"rna": rna, "atac": atac}, edges, **SMALL)
    mod = glue.module
    assert sorted(mod.links) == [("atac", "rna"), ("rna", "atac")]
    a = mod.link_rna_atac.to_dense()  # atac's linked peaks x rna's genes
    assert mod.linkidx_rna_atac.tolist() == list(range(72))  # every peak is linked
    expected = np.zeros((72, 48))
    for j in range(72):
        expected[j, j % 48] = 1.0
    expected[0, 0] = -0.5
    np.testing.assert_array_equal(a.numpy(), expected)
    b = mod.link_atac_rna.to_dense()  # rna's genes x atac's peaks: the reverse edges
    assert b.shape == (48, 72) and b[0, 0] == 1.0 and b[0, 48] == 1.0 and b.sum() == 72


def test_link_loss_value_and_gradient_reach_only_the_encoder():
    rna, atac, edges = configured()
    glue = GLUE({"rna": rna, "atac": atac}, edges, **SMALL)
    mod = glue.module
    stores = glue._stores(glue.adatas, "cpu")
    batch = {k: stores[k][torch.arange(40)] for k in stores}
    mod.train()
    inf = mod.inference(x={k: b["X"] for k, b in batch.items()}, xrep={})
    v = mod.g2v().rsample()
    loss = mod.link_loss(mod._cross(batch, inf, v))

    def by_hand(k, m, vm):  # activity of m's linked features in k's cells vs m's decoder at u_k
        x = batch[k]["X"]
        enc = mod.encoders[k]
        act = (enc.normalize(x, enc.compute_l(x)) @ getattr(mod, f"link_{k}_{m}").to_dense().t()).detach().numpy()
        # the decoder's log mean up to a per-feature affine map and a per-cell constant,
        # which the per-feature standardization removes / the correlation ignores
        px = mod.decoders[m](inf["u"][k], vm, torch.zeros(40, dtype=torch.long), torch.ones(40, 1))
        idx = getattr(mod, f"linkidx_{k}_{m}").numpy()
        log_mu = px.log_mean.detach().numpy()[:, idx]
        lin = (inf["u"][k] @ vm.t()).detach().numpy()[:, idx]
        scale = torch.nn.functional.softplus(mod.decoders[m].scale_lin["log_mu"][0]).detach().numpy()[idx]
        bias = mod.decoders[m].bias["log_mu"][0].detach().numpy()[idx]
        per_cell = log_mu - (scale * lin + bias)
        np.testing.assert_allclose(per_cell, np.broadcast_to(per_cell[:, :1], per_cell.shape), rtol=1e-4, atol=1e-4)
        pred = lin
        za, zp = [(a - a.mean(0)) / a.std(0) for a in (act, pred)]
        return 1.0 - np.mean([np.corrcoef(za[i], zp[i])[0, 1] for i in range(40)])

    expected = (by_hand("rna", "atac", v[48:]) + by_hand("atac", "rna", v[:48])) / 2
    np.testing.assert_allclose(float(loss.detach()), expected, rtol=1e-4)
    mod.zero_grad()
    loss.backward()
    for k in ("rna", "atac"):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mod.encoders[k].parameters() if p.ndim == 2)
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in mod.decoders.parameters())
    assert mod.g2v.vrepr.grad is None or mod.g2v.vrepr.grad.abs().sum() == 0


def test_link_targets_use_whole_data_statistics_and_cache_to_the_same_values(monkeypatch):
    import scprob.modules.glue as glue_module

    rna, atac, edges = configured()
    glue = GLUE({"rna": rna, "atac": atac}, edges, **SMALL)
    mod = glue.module
    stores = glue._stores(glue.adatas, "cpu")
    cache = mod.fit_link_targets(stores, chunk=7)  # chunks that do not divide the cells
    assert sorted(cache) == [("atac", "rna"), ("rna", "atac")]
    idx = torch.arange(5, 45)
    batch = {k: stores[k][idx] for k in stores}
    for (k, m), table in cache.items():
        x = stores[k][torch.arange(stores[k].n_obs)]["X"]
        act = mod.link_activity(k, m, x, mod.encoders[k].compute_l(x)).double().numpy()
        mean, sd = mod._link_stats[(k, m)]
        np.testing.assert_allclose(mean.numpy(), act.mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(sd.numpy(), np.sqrt(act.var(0) + 1e-8), rtol=1e-5, atol=1e-6)
        z = (act - act.mean(0)) / np.sqrt(act.var(0) + 1e-8)
        r = z - z.mean(1, keepdims=True)
        np.testing.assert_allclose(table.numpy(), r / (np.linalg.norm(r, axis=1, keepdims=True) + 1e-8), rtol=1e-4, atol=1e-5)
        xb = batch[k]["X"]
        np.testing.assert_allclose(table[idx].numpy(), mod.link_targets(k, m, xb, mod.encoders[k].compute_l(xb)).numpy(),
                                   rtol=1e-5, atol=1e-6)
    # the link loss reads the cached rows when the batch carries them, to the same value
    mod.eval()
    inf = mod.inference(x={k: b["X"] for k, b in batch.items()}, xrep={})
    v = mod.g2v().loc
    computed = mod.link_loss(mod._cross(batch, inf, v, with_own=False))
    for (k, m), table in cache.items():
        batch[k][glue_module.link_target_key(m)] = table[idx]
    np.testing.assert_allclose(float(mod.link_loss(mod._cross(batch, inf, v, with_own=False))), float(computed), rtol=1e-6)
    # over the size limit: no table, the same statistics
    monkeypatch.setattr(glue_module, "LINK_CACHE_ELEMENTS", 10)
    stats = {key: tuple(t.clone() for t in val) for key, val in mod._link_stats.items()}
    assert all(t is None for t in mod.fit_link_targets(stores).values())
    for key, (mean, sd) in mod._link_stats.items():
        torch.testing.assert_close(mean, stats[key][0])
        torch.testing.assert_close(sd, stats[key][1])


def test_link_loss_off_is_the_original_objective():
    rna, atac, edges = configured()
    glue = GLUE({"rna": rna, "atac": atac}, edges, **SMALL)
    stores = glue._stores(glue.adatas, "cpu")
    batch = {k: stores[k][torch.arange(40)] for k in stores}
    glue.module.eval()
    torch.manual_seed(0)
    _, _, off = glue.module(batch, loss_kwargs=dict(lam_link=0.0, lam_match=0.0))
    torch.manual_seed(0)
    _, _, on = glue.module(batch, loss_kwargs=dict(lam_link=0.2, lam_match=0.05))
    assert "link_loss" not in off.extra_metrics and "link_loss" in on.extra_metrics
    assert "match_loss" not in off.extra_metrics and "match_loss" in on.extra_metrics
    link = float(on.extra_metrics["link_loss"]) / on.n_obs_minibatch
    match = float(on.extra_metrics["match_loss"]) / on.n_obs_minibatch
    assert match > 0
    np.testing.assert_allclose(float(on.loss.detach()), float(off.loss.detach()) + 0.2 * link + 0.05 * match, rtol=1e-5)


def test_untrained_model_encodes_and_is_deterministic():
    rna, atac, edges = configured()
    a = GLUE({"rna": rna, "atac": atac}, edges, **SMALL)
    b = GLUE({"rna": rna, "atac": atac}, edges, **SMALL)
    assert not a.is_trained_
    z = a.encode_data("rna", rna)
    assert z.shape == (rna.n_obs, SMALL["latent_dim"]) and np.isfinite(z).all()
    assert rna.obsm["X_glue"] is z
    np.testing.assert_array_equal(b.encode_data("rna", rna), z)  # same random_state, same model


def test_shared_feature_names_are_one_vertex():
    # two modalities over the same genes, the second in another order: one vertex per
    # gene, and the second modality's feature embeddings are gathered, not sliced
    rna, _, edges = make_paired(n_cells=60)
    other = fresh(rna)[:, list(rna.var_names[::-1])].copy()
    GLUE.configure_dataset(rna, "NB")
    GLUE.configure_dataset(other, "Poisson")
    gene_edges = edges[edges["source"].str.startswith("gene")].rename(columns={"source": "target", "target": "source"})
    glue = GLUE({"rna": rna, "rev": other}, pd.concat([edges, gene_edges]), **SMALL)
    assert glue.vertices == list(rna.var_names)
    v = torch.randn(len(glue.vertices), SMALL["latent_dim"])
    torch.testing.assert_close(glue.module.feature_embeddings(v, "rna"), v)
    torch.testing.assert_close(glue.module.feature_embeddings(v, "rev"), v.flip(0))
    glue.train(max_epochs=2, **FIT)
    assert np.isfinite(glue.history["train_loss"].to_numpy()).all()


def test_networkx_graph_equals_edge_table():
    import networkx as nx

    rna, atac, edges = configured(n_cells=30)
    half = edges.iloc[: len(edges) // 2]  # gene -> peak only
    g = nx.Graph()  # undirected: both directions, default weight and sign 1
    g.add_edges_from(zip(half["source"], half["target"]))
    from_nx = GLUE({"rna": rna, "atac": atac}, g, **SMALL)
    from_table = GLUE({"rna": rna, "atac": atac}, edges, **SMALL)
    assert from_nx.vertices == from_table.vertices
    key = ["source", "target"]
    a = from_nx.edges.sort_values(key).reset_index(drop=True)
    b = from_table.edges.sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a[key + ["weight"]], b[key + ["weight"]], check_dtype=False)
    assert (a["sign"].to_numpy() == b["sign"].to_numpy()).all()


def test_one_way_edge_table_is_made_undirected():
    """A link table that lists each link once (gene -> peak) gives the same graph as one with
    both directions, so both modalities' link terms (and the matching) exist."""
    rna, atac, edges = configured(n_cells=30)
    half = edges.iloc[: len(edges) // 2]  # gene -> peak only
    assert not half["source"].isin(atac.var_names).any()
    one_way = GLUE({"rna": rna, "atac": atac}, half, **SMALL)
    both = GLUE({"rna": rna, "atac": atac}, edges, **SMALL)
    key = ["source", "target"]
    a = one_way.edges.sort_values(key).reset_index(drop=True)
    b = both.edges.sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b, check_dtype=False)
    assert set(one_way.module.links) == {("rna", "atac"), ("atac", "rna")}
    # a reverse edge given explicitly keeps its own weight
    w = half.assign(weight=0.5).iloc[:1].rename(columns={"source": "target", "target": "source"})
    mixed = GLUE({"rna": rna, "atac": atac}, pd.concat([half.assign(weight=1.0), w]), **SMALL)
    e = mixed.edges.set_index(key)["weight"]
    assert e.loc[(w["source"].iat[0], w["target"].iat[0])] == 0.5
    assert e.loc[(w["target"].iat[0], w["source"].iat[0])] == 1.0


def test_single_modality_trains():
    rna, _, edges = configured(n_cells=60)
    glue = GLUE({"rna": rna}, edges, **SMALL)
    glue.train(max_epochs=2, **FIT)
    assert set(glue.history["stage"]["stage"]) == {"train"}
    assert glue.encode_data("rna", rna).shape == (60, SMALL["latent_dim"])


def test_use_rep_encoder_reads_representation():
    rna, atac, edges = make_paired(n_cells=90)
    x = np.log1p(np.asarray(atac.X.todense()))
    atac.obsm["X_lsi"] = (x - x.mean(0)) @ np.random.default_rng(0).normal(size=(x.shape[1], 6))
    GLUE.configure_dataset(rna, "NB")
    GLUE.configure_dataset(atac, "NB", use_rep="X_lsi")
    glue = GLUE({"rna": rna, "atac": atac}, edges, **SMALL)
    assert glue.module.encoders["atac"].net[0].in_features == 6
    glue.train(max_epochs=2, **FIT)
    z = glue.encode_data("atac", atac)
    assert z.shape == (atac.n_obs, SMALL["latent_dim"]) and np.isfinite(z).all()
    with pytest.raises(DataError, match="use_rep 'X_pca'"):
        GLUE.configure_dataset(fresh(atac), "NB", use_rep="X_pca")


def test_user_callbacks_see_every_stage():
    # BUG (src/scprob/models/glue.py, GLUE.train, ~line 225): ``callbacks = list(trainer_kwargs.pop("callbacks", []))``
    # runs inside the stage loop, so the callbacks a user passes to train() are popped by
    # the pretrain stage and the fine-tune trainer runs without them.  Expected: they
    # are called in both stages (here 3 + 2 epochs); observed: only the 3 pretrain epochs.
    import lightning.pytorch as pl

    class CountEpochs(pl.Callback):
        def __init__(self):
            self.n = 0

        def on_train_epoch_end(self, trainer, pl_module):
            self.n += 1

    rna, atac, edges = configured()
    glue = GLUE({"rna": rna, "atac": atac}, edges, **SMALL)
    cb = CountEpochs()
    glue.train(max_epochs=3, callbacks=[cb], **FIT)
    assert set(glue.history["stage"]["stage"]) == {"pretrain", "fine-tune"}
    assert cb.n == len(glue.history["train_loss"]) == 5


class _RecordLR:
    """Lightning callback recording the VAE optimizer's learning rate each epoch, by stage."""

    def __new__(cls):
        import lightning.pytorch as pl

        class Rec(pl.Callback):
            def __init__(self):
                self.rows = []

            def on_train_epoch_end(self, trainer, plm):
                self.rows.append((plm.lr_anneal is not None, trainer.optimizers[0].param_groups[0]["lr"]))

        return Rec()


def test_fine_tune_anneals_the_learning_rate_over_half_the_pretrain_length():
    from scprob.train.adversarial import AdversarialTrainingPlan

    rna, atac, edges = configured()
    glue = GLUE({"rna": rna, "atac": atac}, edges, **SMALL)
    rec = _RecordLR()
    glue.train(max_epochs=4, lr=1e-3, early_stopping=False, callbacks=[rec], **FIT)
    pre = [lr for ft, lr in rec.rows if not ft]
    ft = [lr for ft, lr in rec.rows if ft]
    assert pre == [1e-3] * 4 and len(ft) == 2  # fine-tune half as long as the pretrain by default
    assert np.allclose([ft[0], ft[-1]], [0.3e-3, 0.01e-3]) and all(a > b for a, b in zip(ft, ft[1:]))
    plan = AdversarialTrainingPlan(glue.module, lr_anneal=(0.3, 0.01))
    mid = plan.anneal_scale(2, 5)  # half way along the half cosine: the mean of the two ends
    assert np.isclose(mid, (0.3 + 0.01) / 2)

    rec = _RecordLR()
    glue2 = GLUE({"rna": rna, "atac": atac}, edges, **SMALL)
    glue2.train(max_epochs=3, fine_tune_epochs=2, fine_tune_lr=(1.0, 0.5), early_stopping=False, callbacks=[rec], **FIT)
    assert [lr for ft, lr in rec.rows if ft] == pytest.approx([2e-3, 1e-3])
    assert (glue2.history["stage"]["stage"] == "fine-tune").sum() == 2


@pytest.mark.parametrize("kw, msg", [(dict(fine_tune_epochs=0), "fine_tune_epochs"),
                                     (dict(fine_tune_lr=(0.3, 0.0)), "fine_tune_lr"),
                                     (dict(fine_tune_lr=(0.3,)), "fine_tune_lr")])
def test_fine_tune_schedule_bad_arguments(kw, msg):
    rna, atac, edges = configured()
    glue = GLUE({"rna": rna, "atac": atac}, edges, **SMALL)
    with pytest.raises(ValueError, match=msg):
        glue.train(max_epochs=2, **kw, **FIT)
    assert not glue.is_trained_ and not glue.history


# ---------------------------------------------------------------- 7. save / load


def test_save_load_identity(fitted, tmp_path):
    glue, rna, atac, _ = fitted
    z = {"rna": glue.encode_data("rna", rna), "atac": glue.encode_data("atac", atac)}
    glue.save(tmp_path / "glue")
    payload = torch.load(tmp_path / "glue" / "model.pt", map_location="cpu", weights_only=True)  # no pickled code
    assert payload["model_class"] == "GLUE"
    new = {"rna": fresh(rna), "atac": fresh(atac)}  # not configured: the saved registry is used
    loaded = GLUE.load(tmp_path / "glue", new)
    assert loaded.is_trained_ and loaded.vertices == glue.vertices
    for k in z:
        np.testing.assert_array_equal(loaded.encode_data(k, new[k]), z[k])
    np.testing.assert_array_equal(loaded.encode_graph(), glue.encode_graph())
    pd.testing.assert_frame_equal(loaded.history["train_loss"], glue.history["train_loss"])
    with pytest.raises(DataError, match="missing"):
        GLUE.load(tmp_path / "glue", {"rna": fresh(rna)})
    with pytest.raises(FileNotFoundError):
        GLUE.load(tmp_path / "nothing", new)


def test_load_with_an_extra_modality_is_a_clear_error(fitted, tmp_path):
    # BUG (src/scprob/models/glue.py, GLUE.load, ~line 324): GLUE.load indexes ``payload["registries"][k]``
    # for every key passed, so a modality the model does not have raises a bare
    # ``KeyError: 'extra'`` (after writing the saved registries into the other AnnDatas'
    # uns).  Expected: a DataError naming the unknown modality, as for a missing one.
    glue, rna, atac, _ = fitted
    glue.save(tmp_path / "glue")
    with pytest.raises(DataError, match="extra"):
        GLUE.load(tmp_path / "glue", {"rna": fresh(rna), "atac": fresh(atac), "extra": fresh(rna)})


def test_load_rejects_other_model_class(tmp_path, adata):
    from scprob.models import SCVI

    SCVI.setup_anndata(adata)
    SCVI(adata, n_hidden=8, n_latent=2).save(tmp_path / "scvi")
    with pytest.raises(DataError, match="SCVI model, not GLUE"):
        GLUE.load(tmp_path / "scvi", {"rna": adata})


# ------------------------------------------------------------------ 8. bad input


def test_graph_missing_features():
    rna, atac, edges = configured()
    drop = {"gene0", "gene1", "gene2"}
    partial = edges[~edges["source"].isin(drop) & ~edges["target"].isin(drop)]
    with pytest.raises(DataError, match="lacks 3 of modality 'rna'") as err:
        GLUE({"rna": rna, "atac": atac}, partial, **SMALL)
    assert "'gene0'" in str(err.value)


@pytest.mark.parametrize("column,value,fact", [
    ("weight", 1.5, r"weight outside \(0, 1\]"),
    ("weight", 0.0, r"weight outside \(0, 1\]"),
    ("weight", -0.2, r"weight outside \(0, 1\]"),
    ("sign", 2, r"sign not in"),
])
def test_bad_edge_attributes(column, value, fact):
    rna, atac, edges = configured()
    edges = edges.copy()
    edges[column] = edges[column].astype(float)
    edges.loc[5, column] = value
    with pytest.raises(DataError, match=fact) as err:
        GLUE({"rna": rna, "atac": atac}, edges, **SMALL)
    assert f"{edges.loc[5, 'source']}->{edges.loc[5, 'target']}" in str(err.value)  # names the edge


def test_modality_without_graph_features():
    rna, atac, edges = configured()
    other = fresh(atac)
    other.var_names = [f"region{j}" for j in range(other.n_vars)]
    GLUE.configure_dataset(other, "NB")
    with pytest.raises(DataError, match="modality 'atac': none of its 72 features"):
        GLUE({"rna": rna, "atac": other}, edges, **SMALL)


def test_non_integer_counts_under_nb():
    rna, _, _ = make_paired(n_cells=30)
    X = np.asarray(rna.X.todense())
    X[3, 5] = 2.5
    bad = fresh(rna, X=sp.csr_matrix(X))
    with pytest.raises(DataError, match="non-integer") as err:
        GLUE.configure_dataset(bad, "NB")
    assert "'rna3'" in str(err.value) and "'gene5'" in str(err.value)
    assert UNS_KEY not in bad.uns


@pytest.mark.parametrize("prob_model,value,rng_text", [
    ("Beta", 1.5, r"outside \[0.0, 1.0\]"),
    ("Beta", -0.1, r"outside \[0.0, 1.0\]"),
    ("ZILN", -0.5, r"outside \[0.0, inf\]"),
    ("Bernoulli", -1.0, r"outside \[0.0, inf\]"),
    ("NB", -1.0, r"outside \[0.0, inf\]"),
])
def test_value_out_of_family_range(prob_model, value, rng_text):
    rng = np.random.default_rng(0)
    X = rng.integers(1, 3, (20, 6)).astype(np.float32) if prob_model == "NB" else rng.uniform(0, 1, (20, 6)).astype(np.float32)
    X[4, 2] = value
    a = ad.AnnData(X, obs=pd.DataFrame(index=[f"c{i}" for i in range(20)]),
                   var=pd.DataFrame(index=[f"cpg{j}" for j in range(6)]))
    with pytest.raises(DataError, match=rng_text) as err:
        GLUE.configure_dataset(a, prob_model)
    msg = str(err.value)
    assert str(value) in msg and "'c4'" in msg and "'cpg2'" in msg and repr(prob_model) in msg
    assert UNS_KEY not in a.uns


def test_highly_variable_with_missing_values():
    # BUG (src/scprob/data/multimodal.py, configure_dataset):
    # ``adata.var["highly_variable"].to_numpy(dtype=bool)`` turns NaN into True, so a
    # highly_variable column with missing values (object dtype: True / NaN) selects every
    # feature, while scprob.data.guidance.check_graph (``astype("boolean").fillna(False)``)
    # reads the same column as "NaN = not highly variable".  Expected: the 24 features
    # marked True (as check_graph reads it), or a DataError; observed: all 48 used.
    rna, _, _ = make_paired(n_cells=30)
    rna.var["highly_variable"] = pd.Series([True, np.nan] * 24, index=rna.var_names, dtype=object)
    try:
        GLUE.configure_dataset(rna, "NB")
    except DataError:
        return
    features = json.loads(rna.uns[UNS_KEY])["features"]
    assert features == list(rna.var_names[::2])


def test_modality_not_configured():
    rna, atac, edges = configured()
    with pytest.raises(DataError, match="'atac' is not configured"):
        GLUE({"rna": rna, "atac": fresh(atac)}, edges, **SMALL)


def test_cell_without_counts():
    rna, _, _ = make_paired(n_cells=30)
    X = np.asarray(rna.X.todense())
    X[7] = 0
    bad = fresh(rna, X=sp.csr_matrix(X))
    with pytest.raises(DataError, match="1 cell\\(s\\) have no counts") as err:
        GLUE.configure_dataset(bad, "NB")
    assert "'rna7'" in str(err.value)


def test_unknown_prob_model_error_is_a_value_error():
    rna, _, _ = make_paired(n_cells=30)
    with pytest.raises(ValueError, match="Unknown prob_model 'nb'"):  # names are case-sensitive
        GLUE.configure_dataset(rna, "nb")


# ---------------------------------------------------- 9. cell-type supervision


def test_cell_type_supervision_with_unlabelled_cells():
    rna, atac, edges = make_paired(n_cells=90)
    labels = rna.obs["cell_type"].astype(object).to_numpy()
    labels[::4] = np.nan  # a quarter unlabelled
    rna.obs["cell_type"] = pd.Categorical(labels)
    GLUE.configure_dataset(rna, "NB", use_cell_type="cell_type")
    GLUE.configure_dataset(atac, "NB")
    glue = GLUE({"rna": rna, "atac": atac}, edges, **SMALL)
    assert glue.cell_types == ["type0", "type1", "type2"]
    assert glue.module.classifier is not None and glue.module.classifier.out_features == 3
    glue.train(max_epochs=3, **FIT)
    assert "sup_loss_train" in glue.history
    assert np.isfinite(glue.history["sup_loss_train"].to_numpy()).all()


# --------------------------------------------- 10. batches and balancing weights


def test_batch_specific_decoder_rows():
    rna, atac, edges = make_paired(n_cells=90)
    rna.obs["batch"] = pd.Categorical(np.where(np.arange(rna.n_obs) % 2 == 0, "b0", "b1"))
    GLUE.configure_dataset(rna, "NB", use_batch="batch")
    GLUE.configure_dataset(atac, "NB")
    glue = GLUE({"rna": rna, "atac": atac}, edges, **SMALL)
    dec = glue.module.decoders["rna"]
    assert dec.n_batches == 2
    for t in dec.parameters():
        assert t.shape == (2, rna.n_vars)
    for t in glue.module.decoders["atac"].parameters():
        assert t.shape == (1, atac.n_vars)
    assert glue.module.discriminator.n_batches == 2
    glue.train(max_epochs=3, **FIT)
    assert np.isfinite(glue.history["train_loss"].to_numpy()).all()
    theta = dec.per_feature["log_theta"].detach()
    assert not torch.equal(theta[0], theta[1])  # trained apart
    z = glue.encode_data("rna", rna)
    assert z.shape == (rna.n_obs, SMALL["latent_dim"]) and np.isfinite(z).all()


def test_balancing_weights_downweight_unmatched_cluster():
    rng = np.random.default_rng(0)

    def blob(center, n=30):
        return np.asarray(center, float) + 0.5 * rng.normal(size=(n, 3))

    A, B, C = (10, 0, 0), (0, 10, 0), (0, 0, 10)
    emb = {"m1": np.vstack([blob(A), blob(B), blob(C)]), "m2": np.vstack([blob(A), blob(B)])}
    w = balancing_weights(emb)
    assert set(w) == {"m1", "m2"}
    assert w["m1"].shape == (90,) and w["m2"].shape == (60,)
    for k in w:
        assert np.isclose(w[k].mean(), 1.0) and (w[k] >= 0).all()
    w1 = w["m1"]
    assert w1[60:].mean() < 0.2 * w1[:60].mean()  # C has no counterpart in m2
    assert (w["m2"] > 0).all()
    # nothing in common at all: uniform weights
    far = balancing_weights({"m1": blob(A, 40), "m2": blob(C, 40)})
    assert all(np.allclose(v, 1.0) for v in far.values())


def test_default_max_epochs():
    assert default_max_epochs(100) == 400  # one step per epoch: capped at 400
    assert default_max_epochs(128 * 20) == 200  # 4000 steps / 20 steps per epoch
    assert default_max_epochs(10**6) == 40  # floor


# ------------------------------------------------------------- faults: NaN, resume


class _Interrupt(Exception):
    pass


class _KillAt(Callback):
    """Raise at the start of the ``n``-th epoch counted over all stages (a crash)."""

    def __init__(self, n: int):
        self.n, self.seen = n, 0

    def on_train_epoch_start(self, trainer, pl_module):
        if self.seen == self.n:
            raise _Interrupt
        self.seen += 1


@pytest.mark.parametrize("crash_epoch", [3, 5, 7])  # mid-pretrain, at the stage boundary, mid-fine-tune
def test_resume_equals_uninterrupted_run(tmp_path, crash_epoch):
    rna, atac, edges = configured()
    fit = dict(FIT, max_epochs=5, early_stopping=False, batch_size=32)
    full = GLUE({"rna": rna, "atac": atac}, edges, **SMALL)
    full.train(**fit)
    crashed = GLUE({"rna": rna, "atac": atac}, edges, **SMALL)
    with pytest.raises(_Interrupt):
        crashed.train(checkpoint_dir=tmp_path / "ck", callbacks=[_KillAt(crash_epoch)], **fit)
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["last.ckpt"]
    resumed = GLUE({"rna": rna, "atac": atac}, edges, **SMALL)
    resumed.train(resume_from=tmp_path / "ck", **fit)
    for key in ("train_loss", "validation_loss"):
        np.testing.assert_allclose(resumed.history[key].to_numpy(), full.history[key].to_numpy(), rtol=1e-5)
    assert resumed.history["stage"]["stage"].tolist() == full.history["stage"]["stage"].tolist()
    np.testing.assert_allclose(resumed.encode_data("rna", rna), full.encode_data("rna", rna), rtol=1e-4, atol=1e-5)


def test_resume_refuses_other_data(tmp_path):
    rna, atac, edges = configured()
    glue = GLUE({"rna": rna, "atac": atac}, edges, **SMALL)
    glue.train(max_epochs=1, early_stopping=False, checkpoint_dir=tmp_path / "ck", **FIT)
    rna2, atac2, edges2 = configured(n_cells=80)
    other = GLUE({"rna": rna2, "atac": atac2}, edges2, **SMALL)
    with pytest.raises(DataError, match=r"modality 'rna': n_obs \(90 there, 80 here\)"):
        other.train(resume_from=tmp_path / "ck", **FIT)


def test_nan_guard_stops_glue_with_finite_weights():
    rna, atac, edges = configured()
    glue = GLUE({"rna": rna, "atac": atac}, edges, **SMALL)
    with pytest.raises(scprob.train.NonFiniteLossError, match=r"epoch \d+, step \d+"):
        glue.train(max_epochs=3, early_stopping=False, lr=1e8, **FIT)
    assert all(torch.isfinite(p).all() for p in glue.module.parameters())
    assert not glue.is_trained_


def test_sinkhorn_plan_has_uniform_marginals_and_follows_the_cost():
    from scprob.nn.pairing import sinkhorn

    g = torch.Generator().manual_seed(0)
    cost = torch.rand(30, 20, generator=g, dtype=torch.float64) + 0.5
    perm = torch.randperm(20, generator=g)
    cost[torch.arange(20), perm] = 0.0  # a cheap match for the first 20 rows
    plan = sinkhorn(cost, 0.05, 200)
    np.testing.assert_allclose(plan.sum(1).numpy(), np.full(30, 1 / 30), rtol=1e-6)
    np.testing.assert_allclose(plan.sum(0).numpy(), np.full(20, 1 / 20), rtol=1e-3)
    assert (plan[:20].argmax(1) == perm).all()


def test_match_loss_pulls_linked_lookalikes_together():
    """On paired cells whose linked features agree, the matching term's gradient moves
    each cell of one modality towards its own partner in the other, through both encoders."""
    rna, atac, edges = configured()
    glue = GLUE({"rna": rna, "atac": atac}, edges, **SMALL)
    mod = glue.module
    stores = glue._stores(glue.adatas, "cpu")
    batch = {"rna": stores["rna"][torch.arange(60)], "atac": stores["atac"][torch.as_tensor(truth_order(rna, atac)[:60])]}
    mod.train()
    inf = mod.inference(x={k: b["X"] for k, b in batch.items()}, xrep={})
    loss = mod.match_loss(inf, mod._cross(batch, inf, mod.g2v().rsample()))
    mod.zero_grad()
    loss.backward()
    for k in ("rna", "atac"):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in mod.encoders[k].parameters())
    with torch.no_grad():  # the plan puts more mass on true partners than uniform would
        cross = mod._cross(batch, inf, mod.g2v().loc)
        k, m = ("atac", "rna") if mod.keys.index("atac") < mod.keys.index("rna") else ("rna", "atac")
        from scprob.nn.pairing import corr_dist, sinkhorn

        plan = sinkhorn(corr_dist(cross[(k, m)]["act"], cross[(k, m)]["own"]), 0.05, 50)
    assert float(plan.diagonal().sum()) > 3.0 / 60


def test_gradient_clipping_reaches_both_glue_optimizers():
    # train(gradient_clip_val=...) goes to the manually optimizing plan (Lightning alone refuses it)
    import lightning.pytorch as pl

    norms = []

    class Norms(pl.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            norms.append(float(torch.nn.utils.get_total_norm(grads)))

    rna, atac, edges = configured()
    glue = GLUE({"rna": rna, "atac": atac}, edges, **SMALL)
    glue.train(max_epochs=2, gradient_clip_val=1e-3, callbacks=[Norms()], **FIT)
    assert len(norms) > 4 and max(norms) <= 1e-3 * (1 + 1e-4)


@pytest.mark.parametrize("n_peaks, one_to_one", [(48, True), (144, False)])
def test_matching_is_automatic_where_links_are_one_to_one(n_peaks, one_to_one):
    """lam_match=None turns the matching term on only for modality pairs whose links pair
    features nearly one to one (each peak <-> its own gene here, vs three peaks per gene);
    a number applies it to every linked pair."""
    rna, atac, edges = configured(n_peaks=n_peaks)
    glue = GLUE({"rna": rna, "atac": atac}, edges, **SMALL)
    first = min(("rna", "atac"), key=glue.module.keys.index)
    assert glue.module.one_to_one_pairs() == ([(first, "atac" if first == "rna" else "rna")] if one_to_one else [])
    glue.train(max_epochs=2, early_stopping=False, balance=False, **FIT)
    assert ("match_loss_train" in glue.history) is one_to_one
    forced = GLUE({"rna": rna, "atac": atac}, edges, **SMALL)
    forced.train(max_epochs=2, early_stopping=False, balance=False, lam_match=0.05, **FIT)
    assert "match_loss_train" in forced.history
    with pytest.raises(ValueError, match="lam_match"):
        forced.train(max_epochs=1, lam_match=-0.1, **FIT)


def test_linear_row_correlation_loss_equals_the_explicit_composition():
    """The link term computed through small matrix products equals the plain composition on
    the cells x features prediction (columns standardized, rows centred and normed), value
    and gradient, and passes gradcheck; a feature whose prediction is constant included."""
    from scprob.nn.pairing import linear_row_corr_loss, unit_rows

    gen = torch.Generator().manual_seed(0)
    u = torch.randn(12, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 9, generator=gen, dtype=torch.float64)
    w[:, 3] = 0.0  # constant column of u @ w
    t = unit_rows(torch.randn(12, 9, generator=gen, dtype=torch.float64))
    value = linear_row_corr_loss(u, w, t)
    reference = 1.0 - (unit_rows(u @ w) * t).sum(1).mean()
    torch.testing.assert_close(value, reference, rtol=1e-12, atol=1e-12)
    (g,) = torch.autograd.grad(value, u)
    (g_ref,) = torch.autograd.grad(reference, u)
    torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-12)
    assert torch.autograd.gradcheck(lambda q: linear_row_corr_loss(q, w, t), (u,))


def test_private_dimensions_stay_out_of_the_shared_embedding(tmp_path):
    """Each modality's private latent dimensions reach its own decoder (through loadings of
    its own) and nothing else: the embedding, the discriminator and encode_data see the
    shared dimensions only; private_dim=0 is GLUE's single shared space; models saved
    before the option existed load with none."""
    rna, atac, edges = configured()
    glue = GLUE({"rna": rna, "atac": atac}, edges, **SMALL)  # default: 4 private dimensions
    mod = glue.module
    d = SMALL["latent_dim"]
    assert mod.private_dim == 4 and mod.discriminator.net[0].in_features == d
    for k, a in (("rna", rna), ("atac", atac)):
        assert mod.encoders[k].loc.out_features == d + 4
        assert tuple(mod.private[k].shape) == (mod.n_features[k], 4)
        assert glue.encode_data(k, a).shape == (a.n_obs, d)
    stores = glue._stores(glue.adatas, "cpu")
    batch = {k: stores[k][torch.arange(30)] for k in stores}
    mod.train()
    inf, _, lo = mod(batch, loss_kwargs=dict(lam_link=0.2))
    assert all(inf["u"][k].shape == (30, d) and inf["up"][k].shape == (30, 4) for k in inf["u"])
    mod.zero_grad()
    lo.loss.backward()
    assert all(mod.private[k].grad is not None and mod.private[k].grad.abs().sum() > 0 for k in ("rna", "atac"))
    # the discriminator's loss does not depend on the private part of the sample
    mod.eval()  # no dropout: two calls comparable
    dsc = mod.discriminator_loss(batch, inf)
    moved = dict(inf, up={k: v + 5.0 for k, v in inf["up"].items()})
    torch.testing.assert_close(mod.discriminator_loss(batch, moved), dsc)

    shared_only = GLUE({"rna": rna, "atac": atac}, edges, **{**SMALL, "private_dim": 0})
    assert len(shared_only.module.private) == 0 and shared_only.module.encoders["rna"].loc.out_features == d
    with pytest.raises(ValueError, match="private_dim"):
        GLUE({"rna": rna, "atac": atac}, edges, **{**SMALL, "private_dim": -1})

    shared_only.save(tmp_path / "old")  # as written before the option: no private_dim saved
    payload = torch.load(tmp_path / "old" / "model.pt", map_location="cpu", weights_only=True)
    del payload["init_params"]["private_dim"]
    torch.save(payload, tmp_path / "old" / "model.pt")
    old = GLUE.load(tmp_path / "old", {"rna": fresh(rna), "atac": fresh(atac)})
    assert old.module.private_dim == 0


N_AB = 10


def _weakly_linked_pair(n_cells: int = 240, seed: int = 0):
    """RNA (60 genes) and antibodies (10) of the same cells from one 3-d latent state (6
    clusters); each
    antibody is linked to its own gene, which has fewer counts, while the
    other genes show the state well: the whole transcriptome predicts the antibodies better
    than their genes do.  Pairing: protein cell i is RNA cell i."""
    rng = np.random.default_rng(seed)
    z = 1.5 * rng.normal(size=(6, 3))[rng.integers(0, 6, n_cells)] + 0.5 * rng.normal(size=(n_cells, 3))
    load_g = rng.normal(size=(3, 60)) / np.sqrt(3)
    rna_mu = np.exp(0.8 * z @ load_g + 1.0)
    rna_mu[:, :N_AB] = np.exp(0.8 * z @ load_g[:, :N_AB])  # the linked genes: fewer counts
    prot_mu = np.exp(0.8 * z @ load_g[:, :N_AB] + 3.0)
    genes, abs_ = [f"g{j}" for j in range(60)], [f"ab{j}" for j in range(N_AB)]
    rna = ad.AnnData(sp.csr_matrix(rng.poisson(rna_mu).astype(np.float32)), var=pd.DataFrame(index=genes),
                     obs=pd.DataFrame(index=[f"c{i}" for i in range(n_cells)]))
    prot = ad.AnnData(sp.csr_matrix(rng.poisson(prot_mu).astype(np.float32)), var=pd.DataFrame(index=abs_),
                      obs=pd.DataFrame(index=[f"p{i}" for i in range(n_cells)]))
    links = pd.DataFrame({"source": abs_, "target": genes[:N_AB]})
    used = genes + abs_
    edges = pd.concat([links, pd.DataFrame({"source": used, "target": used})])
    GLUE.configure_dataset(rna, "NB", use_highly_variable=False)
    GLUE.configure_dataset(prot, "NB", use_highly_variable=False)
    return rna, prot, edges


def _cost_foscttm(a: torch.Tensor, y: torch.Tensor) -> float:
    """FOSCTTM of the cost ``1 - a y^T`` between row i of ``a`` and row i of ``y`` (unit rows)."""
    c = 1.0 - a.double() @ y.double().t()
    d = c.diagonal()
    return 0.5 * float((c < d[:, None]).double().mean() + (c < d[None]).double().mean())


def test_self_training_predicts_the_linked_features_better_than_the_links():
    """On weakly linked modalities the self-trained targets (pseudo-pairs -> ridge from all
    of a modality's features, refined over rounds) rank each cell's true partner better than
    the raw link targets; training uses them as link targets and in the matching cost."""
    from scprob.nn.pairing import centred_unit_norm_rows, standardize_within

    rna, prot, edges = _weakly_linked_pair()
    glue = GLUE({"rna": rna, "prot": prot}, edges, **SMALL)
    mod = glue.module
    assert mod.one_to_one_pairs() == [("rna", "prot")] or mod.one_to_one_pairs() == [("prot", "rna")]
    stores = glue._stores(glue.adatas, "cpu")
    glue._standardize_inputs(stores, {k: np.arange(s.n_obs) for k, s in stores.items()})
    raw = mod.fit_link_targets(stores)
    new = mod.self_train_link_targets(stores, mod.one_to_one_pairs(), rounds=4)
    assert set(new) == {("rna", "link_t_prot"), ("prot", "link_t_rna"), ("rna", "match_in_prot"),
                        ("prot", "match_in_rna")}
    assert mod._self_trained == {("rna", "prot")}
    t = stores["prot"][torch.arange(prot.n_obs)]
    own = mod.encoders["prot"].normalize(t["X"], mod.encoders["prot"].compute_l(t["X"]))
    y = centred_unit_norm_rows(standardize_within(own.double(), t["batch"] if "batch" in t else torch.zeros(len(own))))
    f_raw, f_new = _cost_foscttm(raw[("rna", "prot")], y), _cost_foscttm(new[("rna", "link_t_prot")], y)
    assert f_new < 0.85 * f_raw, (f_raw, f_new)  # 0.188 -> 0.130
    # the protein side's prediction of the RNA input ranks partners too
    f_in = _cost_foscttm(new[("rna", "match_in_prot")], new[("prot", "match_in_rna")])
    assert f_in < 0.85 * f_raw, (f_raw, f_in)  # 0.106
    for table in new.values():
        assert torch.allclose(table.norm(dim=1), torch.ones(len(table)), atol=1e-4)
    # input tables too large to keep: no self-training of the pair (the matching keeps the decoder terms)
    n_in = (rna.n_obs + prot.n_obs) * int(new[("rna", "match_in_prot")].shape[1])
    n_link = max(rna.n_obs * int(mod.linkidx_rna_prot.numel()), prot.n_obs * int(mod.linkidx_prot_rna.numel()))
    assert n_link < n_in
    import scprob.modules.glue as glue_module

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(glue_module, "LINK_CACHE_ELEMENTS", n_in - 1)
        assert mod.self_train_link_targets(stores, mod.one_to_one_pairs(), rounds=1) == {}
        assert mod._self_trained == set()
    # training: on by default where matching is on, off with 0 rounds
    glue.train(max_epochs=2, early_stopping=False, balance=False, **FIT)
    assert mod._self_trained == {("rna", "prot")}
    glue.train(max_epochs=1, early_stopping=False, balance=False, self_train_rounds=0, **FIT)
    assert mod._self_trained == set()
    with pytest.raises(ValueError, match="self_train_rounds"):
        glue.train(max_epochs=1, self_train_rounds=-1, **FIT)


def test_ridge_gcv_is_the_ridge_of_the_gcv_penalty():
    from scprob.nn.pairing import ridge_gcv

    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 6)) * np.array([5.0, 3.0, 1.0, 1.0, 0.3, 0.1])
    y = x[:, :2] @ rng.normal(size=(2, 3)) + 0.5 * rng.normal(size=(80, 3)) + 2.0
    w, b = ridge_gcv(torch.as_tensor(x), torch.as_tensor(y))
    xc, yc = x - x.mean(0), y - y.mean(0)
    s = np.linalg.svd(xc, compute_uv=False)
    best = None
    for lam in s.max() ** 2 * np.logspace(-6, 0, 25):  # brute force: the GCV score of each penalty
        w_l = np.linalg.solve(xc.T @ xc + lam * np.eye(6), xc.T @ yc)
        df = np.trace(xc @ np.linalg.solve(xc.T @ xc + lam * np.eye(6), xc.T))
        gcv = ((yc - xc @ w_l) ** 2).sum() / (80 - df) ** 2
        if best is None or gcv < best[0]:
            best = (gcv, w_l)
    np.testing.assert_allclose(w.numpy(), best[1], rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(b.numpy(), y.mean(0) - x.mean(0) @ best[1], rtol=1e-6, atol=1e-8)
    # pure noise: shrunk far below least squares
    noise = torch.as_tensor(rng.normal(size=(80, 3)))
    w0, _ = ridge_gcv(torch.as_tensor(x), noise)
    ols = np.linalg.lstsq(xc, noise.numpy() - noise.numpy().mean(0), rcond=None)[0]
    assert float(w0.norm()) < 0.5 * np.linalg.norm(ols)


def test_standardize_within_groups():
    from scprob.nn.pairing import standardize_within

    rng = np.random.default_rng(1)
    a = torch.as_tensor(rng.normal(size=(50, 4)) * 3 + 1)
    g = torch.as_tensor(rng.integers(0, 3, 50))
    a[g == 1] += 10.0
    out = standardize_within(a, g)
    for v in range(3):
        sel = out[g == v]
        torch.testing.assert_close(sel.mean(0), torch.zeros(4, dtype=sel.dtype), atol=1e-10, rtol=0)
        torch.testing.assert_close(sel.square().mean(0), torch.ones(4, dtype=sel.dtype), atol=1e-6, rtol=0)
