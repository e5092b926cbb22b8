"""Issue 11 items 2-3: differential expression, ELBO and reconstruction error with
scvi-tools' semantics (test_mode, pseudocounts, columns, order, idx1/idx2, batch
handling, per-cell values, signs)."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import scprob
from scprob.models import SCVI
from scprob.models._de import bayes_factors, estimate_delta, estimate_pseudocounts, fdr_de_prediction

N_DE, N_ZERO, N_GENES = 12, 3, 40
UP = [f"g{i}" for i in range(N_DE // 2)]
PLANTED = [f"g{i}" for i in range(N_DE)]
NULL = [f"g{i}" for i in range(N_DE, N_GENES - N_ZERO)]
ZERO = [f"g{i}" for i in range(N_GENES - N_ZERO, N_GENES)]

CHANGE_COLS = [
    "proba_de", "proba_not_de", "bayes_factor", "scale1", "scale2", "pseudocounts", "delta", "lfc_mean",
    "lfc_median", "lfc_std", "lfc_min", "lfc_max", "raw_mean1", "raw_mean2", "non_zeros_proportion1",
    "non_zeros_proportion2", "raw_normalized_mean1", "raw_normalized_mean2", "is_de_fdr_0.05", "comparison",
    "group1", "group2",
]
VANILLA_COLS = [
    "proba_m1", "proba_m2", "bayes_factor", "scale1", "scale2", "raw_mean1", "raw_mean2", "non_zeros_proportion1",
    "non_zeros_proportion2", "raw_normalized_mean1", "raw_normalized_mean2", "comparison", "group1", "group2",
]


def _planted(seed=0, n_per=150):
    """Groups A/B in two batches; genes 0-5 4x up in A, 6-11 4x down, the last 3 never expressed."""
    rng = np.random.default_rng(seed)
    base = rng.gamma(2.0, 1.0, N_GENES) + 0.5
    fold = np.ones(N_GENES)
    fold[: N_DE // 2], fold[N_DE // 2 : N_DE] = 4.0, 0.25
    groups = np.repeat(["A", "B"], n_per)
    batch = np.tile(["b0", "b1"], n_per)
    mu = np.where((groups == "A")[:, None], base * fold, base) * rng.lognormal(0.5, 0.2, (2 * n_per, 1))
    mu = mu * np.where((batch == "b1")[:, None], rng.lognormal(0, 0.3, N_GENES), 1.0)
    mu[:, N_GENES - N_ZERO :] = 0.0
    x = rng.poisson(rng.gamma(10.0, mu / 10.0)).astype(np.float32)
    obs = pd.DataFrame({"group": pd.Categorical(groups), "batch": pd.Categorical(batch)},
                       index=[f"c{i}" for i in range(2 * n_per)])
    return ad.AnnData(sp.csr_matrix(x), obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(N_GENES)]))


@pytest.fixture(scope="module")
def model(one_thread_module):
    scprob.settings.seed = 0
    a = _planted()
    SCVI.setup_anndata(a, batch_key="batch")
    m = SCVI(a, n_hidden=32, n_latent=4)
    m.train(max_epochs=150, batch_size=64, enable_progress_bar=False)
    return m


def _de(m, **kw):
    kw = dict(groupby="group", group1="A", group2="B", mode="change", n_samples=2000) | kw
    return m.differential_expression(**kw)


# ------------------------------------------------------------ pure statistics
def test_test_mode_three_vs_two_on_known_lfc_samples():
    n = 1000
    s2 = np.full((n, 3), 0.01)
    s1 = s2.copy()
    s1[: n // 2, 0] *= 2.0  # gene 0: LFC = +1 half the time, -1 the other half
    s1[n // 2 :, 0] /= 2.0
    s1[:, 1] *= 2.0  # gene 1: always +1
    three = bayes_factors(s1, s2, "change", delta=0.5, pseudocounts=0.0, test_mode="three")
    two = bayes_factors(s1, s2, "change", delta=0.5, pseudocounts=0.0, test_mode="two")
    np.testing.assert_allclose(three["proba_de"], [0.5, 1.0, 0.0])
    np.testing.assert_allclose(two["proba_de"], [1.0, 1.0, 0.0])
    np.testing.assert_allclose(three["bayes_factor"], np.log(three["proba_de"] + 1e-8) - np.log(1 - three["proba_de"] + 1e-8))
    np.testing.assert_allclose(three["lfc_mean"], [0.0, 1.0, 0.0], atol=1e-3)
    assert three["delta"] == 0.5 and three["pseudocounts"] == 0.0
    # boundary: LFC >= delta is up, LFC < -delta is down (scvi-tools' convention)
    edge = bayes_factors(s1[:, [1]], s2[:, [1]], "change", delta=1.0, pseudocounts=0.0)
    assert edge["proba_de"][0] == 1.0
    edge = bayes_factors(s2[:, [1]], s1[:, [1]], "change", delta=1.0, pseudocounts=0.0)
    assert edge["proba_de"][0] == 0.0
    van = bayes_factors(s1, s2, "vanilla")
    np.testing.assert_allclose(van["proba_m1"], [0.5, 1.0, 0.0])
    ci = bayes_factors(s1, s2, "change", pseudocounts=0.0, cred_interval_lvls=[0.9])
    assert (ci["lfc_confidence_interval_0.9_min"] <= ci["lfc_confidence_interval_0.9_max"]).all()
    with pytest.raises(ValueError, match="test_mode"):
        bayes_factors(s1, s2, "change", test_mode="one")


def test_pseudocounts_shrink_lfc_of_unexpressed_genes():
    rng = np.random.default_rng(0)
    s1 = rng.uniform(0.1, 0.2, (500, 4))
    s2 = s1.copy()
    s1[:, 3] = rng.uniform(5e-5, 1e-4, 500)  # gene 3: decoder noise on an unexpressed gene
    s2[:, 3] = rng.uniform(1e-6, 5e-6, 500)
    zero = np.array([False, False, False, True])
    c = estimate_pseudocounts(s1, s2, zero, zero)
    assert c == pytest.approx(s1[:, 3].max())  # 0.9-quantile over the (one) unexpressed gene
    assert estimate_pseudocounts(s1, s2, ~np.ones(4, bool), ~np.ones(4, bool)) == 1e-5  # floor
    raw = bayes_factors(s1, s2, "change", delta=1.0, pseudocounts=0.0)
    shrunk = bayes_factors(s1, s2, "change", delta=1.0, pseudocounts=c)
    assert raw["proba_de"][3] == 1.0 and shrunk["proba_de"][3] == 0.0  # LFC <= log2(2c / c) = 1
    np.testing.assert_allclose(raw["proba_de"][:3], shrunk["proba_de"][:3])


def test_fdr_and_delta_estimate():
    p = np.array([0.99, 0.2, 0.97, 0.9, 0.5])
    # cumulative mean of 1-p by decreasing p: .01, .02, .047, .16, .35
    np.testing.assert_array_equal(fdr_de_prediction(p, 0.05), [True, False, True, True, False])
    lfc = np.concatenate([np.zeros(80), np.full(10, 2.0), np.full(10, -2.0)]) + np.random.default_rng(0).normal(0, .05, 100)
    assert estimate_delta(lfc) == pytest.approx(1.2, abs=0.05)


# --------------------------------------------------------------- on a model
def test_change_columns_order_and_planted_genes(model):
    de = _de(model)
    assert list(de.columns) == CHANGE_COLS
    assert (np.diff(de["proba_de"].to_numpy()) <= 0).all()  # sorted by proba_de
    assert (de["comparison"] == "A vs B").all() and (de["group1"] == "A").all() and (de["group2"] == "B").all()
    assert de["pseudocounts"].nunique() == 1 and de["pseudocounts"].iloc[0] >= 1e-5
    assert (de["delta"] == 0.25).all()
    called = set(de.index[de["is_de_fdr_0.05"]])
    assert len(called & set(PLANTED)) >= 10, de.head(15)
    assert len(called - set(PLANTED)) <= 2, sorted(called - set(PLANTED))
    assert (de.loc[UP, "lfc_mean"] > 1).all() and (de.loc[PLANTED[N_DE // 2 :], "lfc_mean"] < -1).all()


def test_test_mode_three_is_default_and_stricter(model):
    three = _de(model)
    two = _de(model, test_mode="two")
    default = _de(model)
    pd.testing.assert_series_equal(three["proba_de"], default["proba_de"])
    t, w = three["proba_de"], two["proba_de"].loc[three.index]
    assert (w >= t - 1e-12).all() and (w > t + 0.02).any()  # two = P(up) + P(down) >= max
    # null genes: scvi-tools' default does not push every gene above 1/2
    assert three.loc[NULL, "proba_de"].mean() < two.loc[NULL, "proba_de"].mean()
    assert three["is_de_fdr_0.05"].sum() <= two["is_de_fdr_0.05"].sum()


def test_pseudocounts_argument_on_model(model):
    est = _de(model)
    zero = _de(model, pseudocounts=0.0)
    assert (zero["pseudocounts"] == 0.0).all()
    # never-expressed genes: their decoder noise no longer reads as fold change
    assert est.loc[ZERO, "proba_de"].mean() < zero.loc[ZERO, "proba_de"].mean()
    huge = _de(model, pseudocounts=1.0)
    assert (huge["proba_de"] < 0.05).all() and not huge["is_de_fdr_0.05"].any()
    with pytest.raises(ValueError, match="pseudocounts"):
        _de(model, pseudocounts=-1.0)


def test_vanilla_rest_and_all_groups(model):
    van = model.differential_expression(groupby="group", group1="A", n_samples=500)
    assert list(van.columns) == VANILLA_COLS
    assert (np.diff(van["bayes_factor"].to_numpy()) <= 0).all()  # signed, descending
    assert (van["group2"] == "Rest").all() and (van["comparison"] == "A vs Rest").all()
    assert van.index[0] in UP  # most positive: up in A
    allvs = model.differential_expression(groupby="group", n_samples=300, silent=True)
    assert list(pd.unique(allvs["comparison"])) == ["A vs Rest", "B vs Rest"] and len(allvs) == 2 * N_GENES
    two = model.differential_expression(groupby="group", group1=["A", "B"], group2="B", n_samples=300)
    assert list(pd.unique(two["comparison"])) == ["A vs B", "B vs B"]  # one comparison per group1 entry
    lean = model.differential_expression(groupby="group", group1="A", n_samples=300, all_stats=False)
    assert "raw_mean1" not in lean.columns and "proba_m1" in lean.columns


def test_idx1_idx2_equal_groupby(model):
    a = model.adata
    by_group = _de(model, n_samples=800)
    mask_a, mask_b = (a.obs["group"] == "A").to_numpy(), (a.obs["group"] == "B").to_numpy()
    by_mask = _de(model, groupby=None, group1=None, group2=None, idx1=mask_a, idx2=mask_b, n_samples=800)
    by_pos = _de(model, groupby=None, group1=None, group2=None, idx1=np.flatnonzero(mask_a),
                 idx2=list(np.flatnonzero(mask_b)), n_samples=800)
    by_query = _de(model, groupby=None, group1=None, group2=None, idx1="group == 'A'", idx2="group == 'B'",
                   n_samples=800)
    num = [c for c in CHANGE_COLS if c not in ("comparison", "group1", "group2")]
    for other in (by_mask, by_pos, by_query):
        pd.testing.assert_frame_equal(other[num], by_group[num])
    assert (by_mask["comparison"] == "idx1 vs idx2").all()
    rest = _de(model, groupby=None, group1=None, group2=None, idx1=mask_a, n_samples=800)
    vs_rest = _de(model, group2=None, n_samples=800)
    pd.testing.assert_frame_equal(rest[num], vs_rest[num])
    with pytest.raises(ValueError, match="length"):
        _de(model, groupby=None, idx1=mask_a[:10])
    with pytest.raises(ValueError, match="idx2 needs idx1"):
        _de(model, groupby=None, idx2=mask_b)


def test_batch_correction_batchids_weights_outliers(model):
    bc = _de(model, batch_correction=True, n_samples=600)
    assert np.isfinite(bc["lfc_mean"]).all() and len(bc) == N_GENES
    one = _de(model, batch_correction=True, batchid1=["b0"], batchid2=["b0"], n_samples=600)
    assert len(set(one.index[one["is_de_fdr_0.05"]]) & set(PLANTED)) >= 8
    with pytest.warns(UserWarning, match="overlap"):
        _de(model, batch_correction=True, batchid1=["b0", "b1"], batchid2=["b0"], n_samples=200)
    with pytest.raises(ValueError, match="batch_correction=True"):
        _de(model, batchid1=["b0"])
    with pytest.raises(ValueError, match=r"\['b9'\] are not batches"):
        _de(model, batch_correction=True, batchid1=["b9"])
    iw = _de(model, weights="importance", n_samples=400,
             importance_weighting_kwargs=dict(max_cells=32, n_mc_samples=20, n_mc_samples_per_pass=20, truncation=True))
    assert np.isfinite(iw["proba_de"]).all() and (iw.loc[UP, "lfc_mean"] > 0.5).all()
    filt = _de(model, filter_outlier_cells=True, n_samples=400)
    assert (filt.loc[UP, "lfc_mean"] > 0.5).all()
    with pytest.raises(ValueError, match="weights"):
        _de(model, weights="bogus")


def test_de_errors_name_the_problem(model):
    with pytest.raises(ValueError, match=r"\['C'\] not found in adata.obs\['group'\]"):
        _de(model, group1="C")
    with pytest.raises(ValueError, match="'nope' is not a column"):
        _de(model, groupby="nope")
    with pytest.raises(ValueError, match="groupby .* or idx1"):
        _de(model, groupby=None)
    with pytest.raises(ValueError, match="mode"):
        _de(model, mode="fancy")
    with pytest.raises(ValueError, match="test_mode"):
        _de(model, test_mode="four")


def test_de_seeded_and_delta_estimated(model):
    a, b = _de(model, n_samples=300, seed=3), _de(model, n_samples=300, seed=3)
    pd.testing.assert_frame_equal(a, b)
    est = _de(model, n_samples=500, delta=None)
    assert est["delta"].nunique() == 1 and est["delta"].iloc[0] >= 0.1


# ------------------------------------------------------ ELBO / reconstruction
def test_elbo_and_reconstruction_per_cell_and_signs(model):
    torch.manual_seed(0)
    elbo = model.get_elbo()
    torch.manual_seed(0)
    per_cell = model.get_elbo(return_mean=False)
    assert isinstance(elbo, float) and per_cell.shape == (model.adata.n_obs,)
    assert per_cell.mean() == pytest.approx(elbo, rel=1e-6)
    torch.manual_seed(0)
    rec = model.get_reconstruction_error()
    torch.manual_seed(0)
    rec_cells = model.get_reconstruction_error(return_mean=False)
    assert set(rec) == {"reconstruction_loss"} and isinstance(rec["reconstruction_loss"], float)
    r = rec_cells["reconstruction_loss"]
    assert r.shape == (model.adata.n_obs,) and (r > 0).all()
    assert r.mean() == pytest.approx(rec["reconstruction_loss"], rel=1e-6)
    # positive NLL, on the scale of the training history; ELBO = -(NLL + KL) < -NLL
    hist = float(model.history["reconstruction_loss_validation"].iloc[-1, 0])
    assert rec["reconstruction_loss"] == pytest.approx(hist, rel=0.15)
    assert (per_cell < -r).all()
    sub = model.get_reconstruction_error(indices=np.arange(10), return_mean=False)["reconstruction_loss"]
    assert sub.shape == (10,)
    ll = model.get_marginal_ll(n_mc_samples=20, n_mc_samples_per_pass=10, return_mean=False, indices=np.arange(30))
    assert isinstance(ll, np.ndarray) and ll.shape == (30,)
    assert isinstance(model.get_marginal_ll(n_mc_samples=10, indices=np.arange(30)), float)
