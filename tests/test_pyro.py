"""The Pyro backend: module contract, per-model param stores, PyroSCVI, PyroRegression."""

import anndata as ad
import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from scprob.data import Keys
from scprob.models import BaseModel, PyroRegression, PyroSCVI
from scprob.modules import NegativeBinomialRows, PyroBaseModule, PyroVAE
from scprob.train import PyroTrainingPlan

from .conftest import make_counts

FAST = dict(batch_size=32, enable_progress_bar=False)


@pytest.fixture
def counts():
    a = make_counts(n_cells=120, n_genes=30)
    PyroSCVI.setup_anndata(a, batch_key="batch")
    return a


# ------------------------------------------------------------------ contract
class _Tutorial(PyroBaseModule):
    """The seed tutorial's mistake: the guide takes ``log_library``, the model ``library``."""

    @staticmethod
    def _get_fn_args_from_batch(tensors):
        x = tensors[Keys.X]
        return (x, x.sum(1, keepdim=True)), {}

    def model(self, x, library):
        pass

    def guide(self, x, log_library):
        pass


class _Swapped(_Tutorial):
    def guide(self, library, x):
        pass


def test_signature_mismatch_is_named_when_the_module_is_built():
    with pytest.raises(TypeError, match=r"only the model takes \['library'\]; only the guide takes \['log_library'\]"):
        _Tutorial()
    with pytest.raises(TypeError, match="argument 1 is 'x'.*'library' in the guide"):
        _Swapped()


class _StrayParam(PyroBaseModule):
    """Keeps a parameter in Pyro's store only (``pyro.param``), not on the module."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    @staticmethod
    def _get_fn_args_from_batch(tensors):
        return (tensors[Keys.X],), {}

    def model(self, x):
        loc = pyro.param("loc", torch.zeros(()))
        with pyro.plate("cells", x.shape[0]):
            pyro.sample("x", dist.Normal(loc + self.w, 1.0).expand([x.shape[0], x.shape[1]]).to_event(1), obs=x)

    def guide(self, x):
        pass


def test_store_only_param_is_refused(counts):
    model = BaseModel(counts)
    model.module, model._plan_cls = _StrayParam(), PyroTrainingPlan
    with pytest.raises(RuntimeError, match=r"pyro.param site\(s\) \['loc'\] that are not module parameters"):
        model.train(max_epochs=1, **FAST)


def test_elbo_choice(counts):
    with pytest.raises(ValueError, match="not an ELBO in pyro.infer; choose one of"):
        PyroTrainingPlan(PyroVAE(30), loss_fn="Trace_ELBOO")
    with pytest.raises(TypeError, match="loss_fn must be a pyro.infer ELBO"):
        PyroTrainingPlan(PyroVAE(30), loss_fn=torch.nn.MSELoss())
    with pytest.raises(ValueError, match="JitTrace_ELBO cannot train PyroVAE: it holds PyroModule"):
        PyroTrainingPlan(PyroVAE(30, global_guide="AutoNormal"), loss_fn="JitTrace_ELBO")
    with pytest.raises(ValueError, match="global_guide must be None or one of"):
        PyroVAE(30, global_guide="AutoLaplace")
    with pytest.raises(ValueError, match="_StrayParam.model takes no kl_weight"):
        PyroTrainingPlan(_StrayParam(), n_epochs_kl_warmup=10)
    assert type(PyroTrainingPlan(PyroVAE(30)).loss_fn).__name__ == "Trace_ELBO"
    # a loss_and_grads-only ELBO (manual optimization) trains too
    m = PyroSCVI(counts, n_latent=3)
    m.train(max_epochs=12, plan_kwargs=dict(loss_fn=pyro.infer.TraceGraph_ELBO(), n_epochs_kl_warmup=None), **FAST)
    elbo = m.history["elbo_train"].iloc[:, 0].to_numpy()
    assert elbo[-3:].mean() < elbo[:3].mean()


# --------------------------------------------------------------- PyroSCVI
def test_manual_elbo_clips_gradients(counts):
    """A loss_and_grads-only ELBO steps manually: train(gradient_clip_val=...) clips there too."""
    from lightning.pytorch.callbacks import Callback

    norms = []

    class Norms(Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            norms.append(float(torch.nn.utils.get_total_norm(grads)))

    m = PyroSCVI(counts, n_latent=3)
    m.train(max_epochs=2, gradient_clip_val=1e-3, callbacks=[Norms()],
            plan_kwargs=dict(loss_fn=pyro.infer.TraceGraph_ELBO(), n_epochs_kl_warmup=None), **FAST)
    assert norms and max(norms) <= 1e-3 * (1 + 1e-4)


def test_nb_rows_matches_pyro_negative_binomial():
    g = torch.Generator().manual_seed(0)
    x = torch.poisson(torch.rand(6, 9, generator=g) * 3)
    log_mu, theta = torch.randn(6, 9, generator=g), torch.rand(9, generator=g) + 0.2
    ref = dist.NegativeBinomial(total_count=theta, logits=log_mu - theta.log()).to_event(1).log_prob(x)
    torch.testing.assert_close(NegativeBinomialRows(log_mu, theta).log_prob(x), ref, rtol=1e-5, atol=1e-4)
    assert NegativeBinomialRows(log_mu, theta).sample((2,)).shape == (2, 6, 9)


def test_plate_scales_minibatch_to_the_data():
    module = PyroVAE(12, n_batch=2, n_obs=500, n_latent=3).eval()
    x = torch.poisson(torch.full((20, 12), 4.0))
    args = (x, x.sum(1, keepdim=True), torch.zeros(20, 1, dtype=torch.long), torch.arange(100, 120))
    tr = poutine.trace(poutine.replay(module.model, trace=poutine.trace(module.guide).get_trace(*args))).get_trace(*args)
    assert tr.nodes["x"]["scale"] == pytest.approx(500 / 20) and tr.nodes["z"]["scale"] == pytest.approx(500 / 20)
    half = poutine.trace(module.model).get_trace(*args, kl_weight=0.5)
    assert half.nodes["z"]["scale"] == pytest.approx(0.5 * 500 / 20) and half.nodes["x"]["scale"] == pytest.approx(500 / 20)


@pytest.mark.parametrize("global_guide", [None, "AutoNormal"])
def test_elbo_decreases(counts, global_guide):
    m = PyroSCVI(counts, n_latent=4, global_guide=global_guide)
    m.train(max_epochs=25, plan_kwargs=dict(n_epochs_kl_warmup=None), **FAST)
    for key in ("elbo_train", "elbo_validation"):
        elbo = m.history[key].iloc[:, 0].to_numpy()
        assert np.isfinite(elbo).all() and elbo[-3:].mean() < 0.95 * elbo[:3].mean(), key
    expr = m.get_normalized_expression(transform_batch="b0")
    assert expr.shape == (120, 30)
    np.testing.assert_allclose(expr.sum(1), 1.0, rtol=1e-4)
    theta = m.get_dispersion()
    assert theta.shape == (30,) and (theta > 0).all()


def test_two_models_keep_their_own_parameters():
    pyro.clear_param_store()
    pyro.param("user_param", torch.tensor(3.0))  # the user's own global store
    data = []
    for seed in (0, 1):
        a = make_counts(n_cells=120, n_genes=30, seed=seed)
        PyroSCVI.setup_anndata(a, batch_key="batch")
        data.append(a)
    m1 = PyroSCVI(data[0], n_latent=3, global_guide="AutoNormal")
    m1.train(max_epochs=15, **FAST)
    state1 = {k: v.clone() for k, v in m1.module.state_dict().items()}
    z1, theta1 = m1.get_latent_representation(), m1.get_dispersion()

    m2 = PyroSCVI(data[1], n_latent=3, global_guide="AutoNormal")  # same parameter names
    m2.train(max_epochs=15, **FAST)

    for k, v in m1.module.state_dict().items():
        torch.testing.assert_close(v, state1[k], rtol=0, atol=0)
    np.testing.assert_array_equal(m1.get_latent_representation(), z1)
    pd.testing.assert_series_equal(m1.get_dispersion(), theta1)
    assert np.abs(np.log(m2.get_dispersion().to_numpy() / theta1.to_numpy())).max() > 0.05
    s1, s2 = m1.module._pyro_param_state["params"], m2.module._pyro_param_state["params"]
    assert set(s1) == set(s2) == {"AutoNormal.locs.theta", "AutoNormal.scales.theta"}
    assert all(s1[k] is not s2[k] for k in s1)
    assert list(pyro.get_param_store().keys()) == ["user_param"] and pyro.param("user_param").item() == 3.0


def test_save_load_latent_identity(counts, tmp_path):
    m = PyroSCVI(counts, n_latent=3, global_guide="AutoNormal")
    m.train(max_epochs=8, **FAST)
    z, theta = m.get_latent_representation(), m.get_dispersion()
    m.save(tmp_path / "m")
    fresh = make_counts(n_cells=120, n_genes=30)
    again = PyroSCVI.load(tmp_path / "m", fresh)
    np.testing.assert_array_equal(again.get_latent_representation(), z)
    pd.testing.assert_series_equal(again.get_dispersion(), theta)
    assert again.init_params == m.init_params and again.is_trained
    assert again.history["elbo_validation"].equals(m.history["elbo_validation"])


def test_pyro_scvi_bad_input(counts):
    counts.X = counts.X * 0.5
    PyroSCVI.setup_anndata(counts, batch_key="batch")
    with pytest.raises(Exception, match="non-integer values"):
        PyroSCVI(counts)


# ---------------------------------------------------------- PyroRegression
def _regression_data(n_cells=300, n_genes=80, seed=0):
    rng = np.random.default_rng(seed)
    t = rng.uniform(0.0, 10.0, n_cells)
    intercept, slope, sigma = rng.normal(2.0, 1.0, n_genes), rng.normal(0.0, 0.2, n_genes), rng.uniform(0.3, 1.0, n_genes)
    y = intercept + slope * t[:, None] + rng.normal(size=(n_cells, n_genes)) * sigma
    adata = ad.AnnData(
        X=np.zeros((n_cells, n_genes), dtype=np.float32), layers={"log": y.astype(np.float32)},
        obs=pd.DataFrame({"time": t}, index=[f"c{i}" for i in range(n_cells)]),
        var=pd.DataFrame(index=[f"g{i}" for i in range(n_genes)]),
    )
    return adata, slope


def test_regression_recovers_planted_slopes(tmp_path):
    adata, slope = _regression_data()
    PyroRegression.setup_anndata(adata, covariate_key="time", layer="log")
    model = PyroRegression(adata)
    model.train(max_epochs=250, batch_size=100, enable_progress_bar=False)
    df = model.get_coefficients(credible_level=0.9)
    assert list(df.index[:2]) == ["g0", "g1"] and df.attrs["credible_level"] == 0.9
    covered = (df["slope_lower"] <= slope) & (slope <= df["slope_upper"])
    assert covered.mean() >= 0.85
    assert np.corrcoef(df["slope_mean"], slope)[0, 1] > 0.95
    # not covering by being vague: the posterior sd is close to least squares' standard error
    t, y = adata.obs["time"].to_numpy(), adata.layers["log"]
    tc = t - t.mean()
    resid = y - y.mean(0) - np.outer(tc, tc @ (y - y.mean(0)) / (tc @ tc))
    se = resid.std(0) / np.sqrt(tc @ tc)
    assert 0.7 < np.median(df["slope_sd"] / se) < 1.3
    assert (df["slope_lower"] < df["slope_mean"]).all() and (df["slope_mean"] < df["slope_upper"]).all()
    # saved and loaded: the same posterior
    model.save(tmp_path / "r")
    again = PyroRegression.load(tmp_path / "r", adata)
    pd.testing.assert_frame_equal(again.get_coefficients(), model.get_coefficients())


def test_regression_bad_input():
    adata, _ = _regression_data(n_cells=20, n_genes=5)
    with pytest.raises(Exception, match="'nope' is not a column"):
        PyroRegression.setup_anndata(adata, covariate_key="nope", layer="log")
    adata.obs["flat"] = 1.0
    PyroRegression.setup_anndata(adata, covariate_key="flat", layer="log")
    with pytest.raises(ValueError, match="covariate is constant"):
        PyroRegression(adata)
    adata.layers["log"][3, 2] = np.nan
    PyroRegression.setup_anndata(adata, covariate_key="time", layer="log")
    with pytest.raises(Exception, match="non-finite value at cell 'c3', gene 'g2'"):
        PyroRegression(adata)


def test_pyro_and_networkx_are_imported_on_first_use():
    """``import scprob`` leaves Pyro (and networkx, for GLUE's graphs) unimported; the Pyro
    models still come from ``scprob.models`` / ``scprob.modules`` by name."""
    import subprocess
    import sys

    code = (
        "import sys, scprob, scprob.models, scprob.modules\n"
        "assert 'pyro' not in sys.modules and 'networkx' not in sys.modules, sorted(m for m in sys.modules if m.startswith(('pyro', 'networkx')))[:3]\n"
        "from scprob.models import PyroSCVI, PyroRegression\n"
        "from scprob.modules import PyroVAE, PyroRegressionModule, NegativeBinomialRows\n"
        "assert PyroSCVI.__module__ == 'scprob.models.pyro_scvi' and 'pyro' in sys.modules\n"
        "try:\n    scprob.models.NoSuchModel\nexcept AttributeError as e:\n    assert 'NoSuchModel' in str(e)\nelse:\n    raise SystemExit('no AttributeError')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
