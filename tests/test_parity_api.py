"""scvi-tools API parity (issue 11: threads, repeated training, indices, logger callbacks,
the missing methods and arguments).  Small synthetic data, a few epochs each."""

import numpy as np
import pandas as pd
import pytest
import torch

import scprob
from scprob import _settings
from scprob.data import DataError
from scprob.models import LDVAE, SCVI

from .conftest import make_counts

TRAIN = dict(enable_progress_bar=False)


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread_module):
    yield


@pytest.fixture(scope="module")
def trained():
    scprob.settings.seed = 0
    a = make_counts(n_cells=90, n_genes=25)
    SCVI.setup_anndata(a, batch_key="batch")
    m = SCVI(a, n_hidden=16, n_latent=3)
    m.train(max_epochs=4, train_size=0.6, validation_size=0.2, **TRAIN)
    return m


# ------------------------------------------------------------------ threads (item 4)
def test_user_torch_threads_respected(monkeypatch):
    old_torch, old_setting = torch.get_num_threads(), scprob.settings._num_threads
    monkeypatch.delenv("SCPROB_NUM_THREADS", raising=False)
    scprob.settings.num_threads = None
    try:
        # nobody set threads (torch has its count from import time): scprob's default is applied
        torch.set_num_threads(2)
        monkeypatch.setattr(_settings, "_TORCH_THREADS_AT_IMPORT", 2)
        monkeypatch.setattr(_settings, "_default_threads", lambda: 3)
        scprob.settings.apply_threads()
        assert torch.get_num_threads() == 3
        # the user sets torch's threads: left alone, and reported by settings.num_threads
        torch.set_num_threads(1)
        scprob.settings.apply_threads()
        assert torch.get_num_threads() == 1 and scprob.settings.num_threads == 1
        # an explicit scprob setting wins
        scprob.settings.num_threads = 2
        scprob.settings.apply_threads()
        assert torch.get_num_threads() == 2
        # so does the environment variable
        scprob.settings.num_threads = None
        torch.set_num_threads(1)
        monkeypatch.setenv("SCPROB_NUM_THREADS", "2")
        scprob.settings.apply_threads()
        assert torch.get_num_threads() == 2
    finally:
        scprob.settings._num_threads = old_setting
        torch.set_num_threads(old_torch)


# ------------------------------------------------------- history and indices (item 5)
def test_indices_kept_and_saved(trained, tmp_path):
    m = trained
    tr, va, te = m.train_indices, m.validation_indices, m.test_indices
    assert len(tr) == 54 and len(va) == 18 and len(te) == 18
    assert sorted(np.concatenate([tr, va, te]).tolist()) == list(range(90))
    m.save(tmp_path / "m")
    m2 = SCVI.load(tmp_path / "m", m.adata)
    for split in ("train", "validation", "test"):
        np.testing.assert_array_equal(getattr(m2, f"{split}_indices"), getattr(m, f"{split}_indices"))


def test_second_train_appends_history():
    a = make_counts(n_cells=60, n_genes=15)
    SCVI.setup_anndata(a, batch_key="batch")
    m = SCVI(a, n_hidden=8, n_latent=2)
    m.train(max_epochs=3, **TRAIN)
    first = m.history["elbo_train"].copy()
    m.train(max_epochs=2, **TRAIN)
    h = m.history["elbo_train"]
    assert list(h.index) == [0, 1, 2, 3, 4] and h.index.name == "epoch"
    pd.testing.assert_frame_equal(h.iloc[:3], first)
    assert list(m.history["elbo_validation"].index) == [0, 1, 2, 3, 4]


def test_logger_callbacks_feed_history():
    from lightning.pytorch.callbacks import LearningRateMonitor

    a = make_counts(n_cells=60, n_genes=15)
    SCVI.setup_anndata(a, batch_key="batch")
    m = SCVI(a, n_hidden=8, n_latent=2)
    m.train(max_epochs=3, callbacks=[LearningRateMonitor(logging_interval="epoch")], **TRAIN)
    lr = m.history["lr-Adam"]
    assert list(lr.index) == [0, 1, 2] and np.allclose(lr["lr-Adam"], 1e-3)
    m.train(max_epochs=2, learning_rate_monitor=True, plan_kwargs=dict(lr=5e-4), **TRAIN)
    assert list(m.history["lr-Adam"].index) == [0, 1, 2, 3, 4]
    assert np.allclose(m.history["lr-Adam"]["lr-Adam"].iloc[3:], 5e-4)


def test_early_stopping_warmup_and_mode():
    a = make_counts(n_cells=60, n_genes=15)
    SCVI.setup_anndata(a, batch_key="batch")
    kw = dict(max_epochs=30, early_stopping=True, early_stopping_monitor="elbo_train", early_stopping_patience=1,
              early_stopping_mode="max", plan_kwargs=dict(n_epochs_kl_warmup=None, lr=1e-2), **TRAIN)
    # "max" on a falling loss: no epoch improves, so training stops once patience runs out
    m = SCVI(a, n_hidden=8, n_latent=2)
    m.train(**kw)
    assert len(m.history["elbo_train"]) == 2
    m = SCVI(a, n_hidden=8, n_latent=2)
    m.train(early_stopping_warmup_epochs=5, **kw)
    assert len(m.history["elbo_train"]) == 7
    with pytest.raises(ValueError, match="early_stopping_mode"):
        SCVI(a, n_hidden=8, n_latent=2).train(**(kw | dict(early_stopping_mode="up")))


# ------------------------------------------------------------------ missing API
def test_view_setup(trained, tmp_path, capsys):
    trained.view_anndata_setup()
    out = capsys.readouterr().out
    assert "batch_key: 'batch'" in out and "['b0', 'b1']" in out
    trained.save(tmp_path / "v", prefix="x_")
    SCVI.view_setup_args(tmp_path / "v", prefix="x_")
    assert "batch_key: 'batch'" in capsys.readouterr().out


def test_latent_library_size():
    a = make_counts(n_cells=60, n_genes=15)
    SCVI.setup_anndata(a, batch_key="batch")
    m = SCVI(a, n_hidden=8, n_latent=2, use_observed_lib_size=False)
    m.train(max_epochs=2, **TRAIN)
    lib = m.get_latent_library_size()
    assert lib.shape == (60, 1) and (lib > 0).all()
    m2 = SCVI(a, n_hidden=8, n_latent=2)
    m2.train(max_epochs=1, **TRAIN)
    np.testing.assert_allclose(m2.get_latent_library_size(give_mean=False)[:, 0], np.asarray(a.X.sum(1)).ravel(),
                               rtol=1e-5)
    with pytest.raises(RuntimeError, match="give_mean=False"):
        m2.get_latent_library_size()


def test_feature_correlation_matrix(trained):
    c = trained.get_feature_correlation_matrix(n_samples=3)
    assert c.shape == (25, 25) and list(c.index) == list(trained.adata.var_names)
    np.testing.assert_allclose(np.diag(c), 1.0)
    np.testing.assert_allclose(c.to_numpy(), c.to_numpy().T, atol=1e-12)
    p = trained.get_feature_correlation_matrix(n_samples=2, correlation_type="pearson", transform_batch=["b0", "b1"])
    assert np.isfinite(p.to_numpy()).all() and (np.abs(p.to_numpy()) <= 1 + 1e-9).all()
    with pytest.raises(ValueError, match="correlation_type"):
        trained.get_feature_correlation_matrix(correlation_type="kendall")


def test_batch_representation(trained):
    a = make_counts(n_cells=60, n_genes=15)
    SCVI.setup_anndata(a, batch_key="batch")
    m = SCVI(a, n_hidden=8, n_latent=2, batch_representation="embedding")
    m.train(max_epochs=1, **TRAIN)
    e = m.get_batch_representation()
    assert e.shape == (60, 10)
    b = a.obs["batch"].astype(str).to_numpy()
    assert np.allclose(e[b == "b0"], e[b == "b0"][0]) and not np.allclose(e[b == "b0"][0], e[b == "b1"][0])
    with pytest.raises(ValueError, match="batch_representation='embedding'"):
        trained.get_batch_representation()


def test_posterior_predictive_transform_batch_and_samples_overall(trained):
    x = trained.posterior_predictive_sample(transform_batch="b1")
    assert x.shape == (90, 25) and np.allclose(x.data, np.round(x.data))
    x3 = trained.posterior_predictive_sample(transform_batch=["b0", "b1"], n_samples=3, gene_list=["gene0", "gene3"])
    assert x3.shape == (90, 2, 3)
    with pytest.raises(ValueError, match="not a batch"):
        trained.posterior_predictive_sample(transform_batch="b7")
    e = trained.get_normalized_expression(n_samples_overall=250)
    assert isinstance(e, np.ndarray) and e.shape == (250, 25)
    np.testing.assert_allclose(e.sum(1), 1.0, rtol=1e-4)


def test_numeric_batch_categories():
    a = make_counts(n_cells=60, n_genes=15)
    a.obs["plate"] = np.where(a.obs["batch"] == "b0", 3, 7)  # integer column
    SCVI.setup_anndata(a, batch_key="plate")
    m = SCVI(a, n_hidden=8, n_latent=2)
    m.train(max_epochs=1, **TRAIN)
    assert m._batch_codes(7) == m._batch_codes("7") == m._batch_codes(np.int64(7)) == m._batch_codes(7.0) == [1]
    assert m._batch_codes([3, None]) == [0, None]
    torch.manual_seed(0)
    e_num = m.get_normalized_expression(transform_batch=7)
    torch.manual_seed(0)
    e_str = m.get_normalized_expression(transform_batch="7")
    pd.testing.assert_frame_equal(e_num, e_str)
    with pytest.raises(ValueError, match="not a batch"):
        m.get_normalized_expression(transform_batch=1)  # a category, not a position


def test_save_load_prefix(trained, tmp_path):
    trained.save(tmp_path / "p", prefix="ref_", save_anndata=True)
    assert (tmp_path / "p" / "ref_model.pt").exists() and (tmp_path / "p" / "ref_adata.h5ad").exists()
    m2 = SCVI.load(tmp_path / "p", prefix="ref_")
    np.testing.assert_allclose(m2.get_latent_representation(), trained.get_latent_representation(), atol=1e-5)
    with pytest.raises(FileNotFoundError):
        SCVI.load(tmp_path / "p", trained.adata)
    (tmp_path / "p" / "bad_model.pt").write_bytes(b"not a model")
    with pytest.raises(DataError, match="bad_model.pt"):
        SCVI.load(tmp_path / "p", trained.adata, prefix="bad_")


def test_adata_setter_revalidates(trained):
    m = trained
    own = m.adata
    other = make_counts(n_cells=40, n_genes=25, seed=3)
    try:
        m.adata = other
        assert m.adata is other and m.get_latent_representation().shape == (40, 3)
        with pytest.raises(DataError, match="genes differ"):
            m.adata = make_counts(n_cells=40, n_genes=20)
        bad = make_counts(n_cells=40, n_genes=25, n_batches=3)
        with pytest.raises(DataError, match="b2"):
            m.adata = bad
        assert m.adata is other  # a failed assignment keeps the previous data
    finally:
        m.adata = own


def test_model_without_adata(tmp_path):
    m = SCVI(n_hidden=8, n_latent=2)
    assert m.module is None and "no AnnData" in repr(m)
    with pytest.raises(ValueError, match="no AnnData"):
        m.train(max_epochs=1)
    a = make_counts(n_cells=60, n_genes=15)
    SCVI.setup_anndata(a, batch_key="batch")
    m.adata = a
    m.train(max_epochs=1, **TRAIN)
    assert m.get_latent_representation().shape == (60, 2)
    ld = LDVAE(n_latent=2)
    ld.adata = a
    assert ld.module.decoder_type == "linear"
    from scprob.models import PyroSCVI

    with pytest.raises(TypeError, match="needs its AnnData at construction"):
        PyroSCVI(None)  # models without a deferred build say so at once


def test_prepare_query_anndata(trained):
    ref_genes = list(trained.adata.var_names)
    q = make_counts(n_cells=30, n_genes=25, seed=5)
    q = q[:, q.var_names[::-1][:22]].copy()  # reversed order, 3 reference genes missing
    q.layers["counts"] = q.X.copy()
    names = SCVI.prepare_query_anndata(q, trained, return_reference_var_names=True)
    assert list(names) == ref_genes
    out = SCVI.prepare_query_anndata(q, trained, inplace=False)
    assert list(out.var_names) == ref_genes and q.n_vars == 22
    assert out[:, ["gene0", "gene1", "gene2"]].X.nnz == 0 and out.layers["counts"].shape == (30, 25)
    np.testing.assert_array_equal(out[:, "gene5"].X.toarray(), q[:, "gene5"].X.toarray())
    assert SCVI.prepare_query_anndata(q, trained) is None
    assert list(q.var_names) == ref_genes and "counts" in q.layers


def test_load_query_data_scvi_arguments(trained, tmp_path):
    trained.save(tmp_path / "ref")
    q = make_counts(n_cells=40, n_genes=25, seed=7)
    q.obs["batch"] = pd.Categorical(["q" + str(b) for b in q.obs["batch"]])
    q = q[:, list(q.var_names[::-1])].copy()
    qm = SCVI.load_query_data(q, tmp_path / "ref", inplace_subset_query_vars=True)
    assert qm.adata is q and list(q.var_names) == list(trained.adata.var_names)
    grads = {n for n, p in qm.module.named_parameters() if p.requires_grad}
    # scvi-tools' defaults: decoder batch-norm weights trained, encoder batch-norm and
    # expression weights frozen, new-batch entries of the covariate weights trained
    assert "decoder.px_decoder.post.0.0.weight" in grads
    assert "z_encoder.encoder.post.0.0.weight" not in grads
    assert "z_encoder.encoder.layers.0.linear.weight" not in grads and "px_r" not in grads
    assert "decoder.px_decoder.layers.0.cat_weights.0.weight" in qm.query_masked_
    qm = SCVI.load_query_data(q, trained, freeze_expression=False, freeze_batchnorm_decoder=True,
                              freeze_batchnorm_encoder=False, freeze_dropout=True)
    grads = {n for n, p in qm.module.named_parameters() if p.requires_grad}
    assert "z_encoder.encoder.layers.0.linear.weight" in grads and "z_encoder.encoder.post.0.0.weight" in grads
    assert "decoder.px_decoder.post.0.0.weight" not in grads
    assert all(m.p == 0 for m in qm.module.modules() if isinstance(m, torch.nn.Dropout))
    everything = {n for n, _ in qm.module.named_parameters()}
    qm = SCVI.load_query_data(q, trained, unfrozen=True)
    assert {n for n, p in qm.module.named_parameters() if p.requires_grad} == everything
    qm = SCVI.load_query_data(query_adata=q, reference=trained, freeze=False)  # scprob's older names
    assert {n for n, p in qm.module.named_parameters() if p.requires_grad} == everything
    missing = make_counts(n_cells=20, n_genes=20, seed=8)
    with pytest.raises(DataError, match="lacks 5"):
        SCVI.load_query_data(missing, trained, inplace_subset_query_vars=True)


def test_differential_abundance(trained):
    m = trained
    da = m.differential_abundance(sample_key="cell_type")
    assert da.shape == (90, 3) and set(da.columns) == {"t0", "t1", "t2"}
    assert m.adata.obsm["da_log_probs"] is da
    # the aggregated posterior of a sample: the equal mixture of its cells' q(z|x)
    from scipy.special import logsumexp
    from scipy.stats import norm

    loc, var = m.get_latent_representation(return_dist=True)
    members = np.flatnonzero(m.adata.obs["cell_type"].astype(str).to_numpy() == "t1")
    for cell in (0, 45, 89):
        lp = norm.logpdf(loc[cell], loc[members], np.sqrt(var[members])).sum(1)
        assert da["t1"].iloc[cell] == pytest.approx(logsumexp(lp) - np.log(len(members)), rel=1e-4)
    da_t = m.differential_abundance(sample_key="cell_type", dof=3.0, num_cells_posterior=10)
    assert np.isfinite(da_t.to_numpy()).all()
    with pytest.raises(KeyError, match="donor"):
        m.differential_abundance(sample_key="donor")
    sub = m.adata[:10].copy()
    sub.obs["cell_type"] = pd.Categorical(["t9"] * 10)
    with pytest.raises(ValueError, match=r"samples \['t9'\] of adata_sub have no cells in adata"):
        m.differential_abundance(adata_sub=sub, sample_key="cell_type")


# ------------------------------------------- calls from scvi-tools' own SCVI tests
def test_scalar_results_have_ndim_zero(trained):
    assert trained.get_elbo().ndim == 0
    assert trained.get_reconstruction_error()["reconstruction_loss"].ndim == 0
    assert isinstance(trained.get_elbo(), float)


def test_untrained_likelihood_queries_warn_not_raise():
    a = make_counts(n_cells=40, n_genes=10)
    SCVI.setup_anndata(a, batch_key="batch")
    m = SCVI(a, n_hidden=8, n_latent=2)
    with pytest.warns(UserWarning, match="not trained"):
        assert np.isfinite(m.get_elbo())
    with pytest.warns(UserWarning, match="not trained"):
        m.get_likelihood_parameters()
    with pytest.raises(RuntimeError, match="not trained"):
        m.get_latent_representation()


def test_view_anndata_setup_of_unregistered_data_raises(trained):
    other = make_counts(n_cells=20, n_genes=25)
    with pytest.raises(ValueError, match="not set up"):
        trained.view_anndata_setup(other)
    assert "_scprob" not in "".join(other.uns)


def test_missing_registered_column_is_a_key_error(trained):
    other = trained.adata.copy()
    del other.obs["batch"]
    with pytest.raises(KeyError, match="batch"):
        trained.adata = other
    with pytest.raises(DataError):
        trained.adata = other


def test_train_leaves_the_global_random_streams_alone():
    a = make_counts(n_cells=40, n_genes=10)
    SCVI.setup_anndata(a, batch_key="batch")
    m = SCVI(a, n_hidden=8, n_latent=2)
    np.random.seed(123)
    torch.manual_seed(123)
    expected = (np.random.rand(), float(torch.rand(1)))
    np.random.seed(123)
    torch.manual_seed(123)
    m.train(max_epochs=1, **TRAIN)
    assert (np.random.rand(), float(torch.rand(1))) == expected


def test_load_query_data_registers_the_users_object_when_genes_match(trained):
    q = make_counts(n_cells=40, n_genes=25, seed=9)
    q.obs["batch"] = pd.Categorical(["q" + str(b) for b in q.obs["batch"]])
    X_before = q.X.copy()
    qm = SCVI.load_query_data(q, trained)
    assert qm.adata is q and (q.X != X_before).nnz == 0  # registered, counts untouched
    again = SCVI(q, n_hidden=16, n_latent=3)  # scvi-tools users build a model on it afterwards
    assert again.summary_stats["n_batch"] == 4
    shuffled = q[:, list(q.var_names[::-1])].copy()
    assert SCVI.load_query_data(shuffled, trained).adata is not shuffled  # aligned copy otherwise


def test_last_minibatch_of_one_cell():
    a = make_counts(n_cells=41, n_genes=12, seed=3)
    SCVI.setup_anndata(a)
    m = SCVI(a, n_hidden=8, n_latent=2)
    with pytest.raises(ValueError, match="last training minibatch would hold 1 cell"):
        m.train(1, train_size=1.0, batch_size=20, **TRAIN)
    with pytest.warns(UserWarning, match="holds 2 cells"):
        m.train(1, train_size=1.0, batch_size=13, **TRAIN)
    m.train(1, train_size=1.0, batch_size=20, datasplitter_kwargs={"drop_last": True}, **TRAIN)
    assert len(m.train_indices) == 41
    # default train_size: ceil(0.9 * 41) = 37 = 2 * 18 + 1, so one cell moves to validation
    m.train(1, batch_size=18, **TRAIN)
    assert len(m.train_indices) == 36 and len(m.validation_indices) == 5
    with pytest.raises(TypeError, match="unknown datasplitter_kwargs"):
        m.train(1, datasplitter_kwargs={"shuffle_set_split": False}, **TRAIN)


def test_custom_dataloader(trained):
    dl = trained._make_data_loader(trained.adata, indices=np.arange(30), batch_size=7)
    z = trained.get_latent_representation(dataloader=dl)
    np.testing.assert_allclose(z, trained.get_latent_representation(indices=np.arange(30)), atol=1e-6)
    assert trained.get_elbo(dataloader=dl, return_mean=False).shape == (30,)
    assert trained.get_reconstruction_error(dataloader=dl)["reconstruction_loss"] > 0
    assert np.isfinite(trained.get_marginal_ll(dataloader=dl, n_mc_samples=5))
    with pytest.raises(ValueError, match="either dataloader or adata"):
        trained.get_latent_representation(trained.adata, dataloader=dl)


def test_normalized_expression_importance_weights(trained):
    cells = np.arange(20)
    iw = trained.get_normalized_expression(indices=cells, weights="importance", n_samples_overall=400,
                                           library_size=1e4)
    assert iw.shape == (400, 25) and np.all(iw >= 0)
    np.testing.assert_allclose(iw.sum(1), 1e4, rtol=1e-4)  # draws of px_scale (sums to one over genes)
    uni = trained.get_normalized_expression(indices=cells, n_samples=10, return_mean=False, library_size=1e4)
    # the resampled population mean is a reweighting of posterior draws of the same cells
    assert np.corrcoef(iw.mean(0), uni.mean((0, 1)))[0, 1] > 0.85
    two = trained.get_normalized_expression(indices=cells, weights="importance", n_samples_overall=7,
                                            transform_batch=["b0", "b1"], gene_list=["gene3", "gene4"],
                                            importance_weighting_kwargs={"n_mc_samples": 20, "truncation": True})
    assert two.shape == (7, 2)
    with pytest.raises(ValueError, match="library_size must be a number"):
        trained.get_normalized_expression(weights="importance", library_size="latent")
    with pytest.raises(ValueError, match="weights must be"):
        trained.get_normalized_expression(weights="uniformly")


def test_gradient_clipping_under_manual_optimization():
    from lightning.pytorch.callbacks import Callback

    norms = []

    class Norms(Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            norms.append(float(torch.nn.utils.get_total_norm(grads)))

    a = make_counts(n_cells=60, n_genes=15)
    SCVI.setup_anndata(a)
    m = SCVI(a, n_hidden=8, n_latent=2)
    m.train(max_epochs=2, gradient_clip_val=1e-3, callbacks=[Norms()], **TRAIN)  # Lightning alone refuses this
    assert norms and max(norms) <= 1e-3 * (1 + 1e-4)


def test_user_loggers_and_monitoring_callbacks_see_epoch_metrics(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    a = make_counts(n_cells=60, n_genes=15)
    SCVI.setup_anndata(a)
    m = SCVI(a, n_hidden=8, n_latent=2)
    ck = ModelCheckpoint(dirpath=tmp_path / "ck", monitor="elbo_validation", save_top_k=1, mode="min")
    m.train(max_epochs=3, logger=CSVLogger(tmp_path / "logs", name="run"), callbacks=[ck], enable_checkpointing=True,
            **TRAIN)
    rows = pd.read_csv(next((tmp_path / "logs").rglob("metrics.csv")))
    assert {"elbo_train", "elbo_validation", "kl_weight", "epoch"} <= set(rows.columns)
    best = m.history["elbo_validation"]["elbo_validation"].min()
    assert ck.best_model_path and np.isclose(float(ck.best_model_score), best)
