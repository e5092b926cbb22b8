import numpy as np
import pandas as pd
import pytest
import torch

import scprob
from scprob.data import DataError
from scprob.models import LDVAE, SCVI

from .conftest import make_counts


def _trained(adata, **kw):
    SCVI.setup_anndata(adata, batch_key="batch", labels_key="cell_type")
    m = SCVI(adata, n_hidden=32, n_latent=4, **kw)
    m.train(max_epochs=5, batch_size=32, enable_progress_bar=False)
    return m


def test_history_keys_like_scvi_tools(adata):
    m = _trained(adata)
    for k in ["elbo_train", "elbo_validation", "reconstruction_loss_train", "reconstruction_loss_validation",
              "kl_local_train", "kl_local_validation", "train_loss"]:
        assert k in m.history, k
        df = m.history[k]
        assert isinstance(df, pd.DataFrame) and list(df.columns) == [k] and len(df) == 5
    assert np.isfinite(m.history["elbo_train"].to_numpy()).all()
    kl = m.history["kl_weight"].iloc[:, 0].to_numpy()
    assert kl[0] == 0 and np.all(np.diff(kl) > 0)  # warm-up over epochs


def test_training_lowers_elbo(adata):
    SCVI.setup_anndata(adata, batch_key="batch")
    m = SCVI(adata, n_hidden=32, n_latent=4)
    m.train(max_epochs=40, batch_size=32, enable_progress_bar=False, plan_kwargs=dict(n_epochs_kl_warmup=None))
    e = m.history["elbo_train"].iloc[:, 0].to_numpy()
    assert e[-1] < e[0] - 1.0


def test_determinism_same_seed_same_latent():
    zs = []
    for _ in range(2):
        a = make_counts()
        scprob.settings.seed = 7
        zs.append(_trained(a).get_latent_representation())
    np.testing.assert_array_equal(zs[0], zs[1])
    a = make_counts()
    scprob.settings.seed = 8
    assert not np.allclose(_trained(a).get_latent_representation(), zs[0])


def test_save_load_roundtrip(adata, tmp_path):
    m = _trained(adata, gene_likelihood="nb")
    z = m.get_latent_representation()
    m.save(tmp_path / "m")
    assert m.is_trained
    mean, var = m.get_latent_representation(return_dist=True)
    np.testing.assert_array_equal(mean, z)
    assert (var > 0).all() and var.shape == z.shape
    with pytest.raises(FileExistsError):
        m.save(tmp_path / "m")
    m.save(tmp_path / "m", overwrite=True, save_anndata=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temp leftovers
    fresh = make_counts()
    m2 = SCVI.load(tmp_path / "m", fresh)
    np.testing.assert_array_equal(m2.get_latent_representation(), z)
    assert m2.init_params["gene_likelihood"] == "nb" and "elbo_train" in m2.history
    m3 = SCVI.load(tmp_path / "m")  # with the saved AnnData
    np.testing.assert_array_equal(m3.get_latent_representation(), z)
    with pytest.raises(DataError, match="holds a SCVI model"):
        LDVAE.load(tmp_path / "m", make_counts())


def test_load_onto_other_genes_is_clear_error(adata, tmp_path):
    m = _trained(adata)
    m.save(tmp_path / "m")
    other = make_counts(n_genes=41)
    with pytest.raises(DataError, match=r"1 extra .*gene40"):
        SCVI.load(tmp_path / "m", other)
    reordered = make_counts()[:, ::-1].copy()
    with pytest.raises(DataError, match="different order"):
        SCVI.load(tmp_path / "m", reordered)


def test_latent_on_new_data_and_unknown_batch(adata):
    m = _trained(adata)
    new = make_counts(seed=3)
    assert m.get_latent_representation(new).shape == (new.n_obs, 4)
    bad = make_counts(seed=4)
    bad.obs["batch"] = pd.Categorical(["b9"] * bad.n_obs)
    with pytest.raises(DataError, match="b9"):
        m.get_latent_representation(bad)


def test_normalized_expression_options(adata):
    m = _trained(adata)
    e = m.get_normalized_expression(library_size=1e4, gene_list=["gene1", "gene3"])
    assert list(e.columns) == ["gene1", "gene3"]
    full = m.get_normalized_expression()
    np.testing.assert_allclose(full.sum(1), 1.0, rtol=1e-4)
    torch.manual_seed(1)
    b0 = m.get_normalized_expression(transform_batch="b0")
    torch.manual_seed(1)
    both = m.get_normalized_expression(transform_batch=["b0", "b1"])
    torch.manual_seed(1)
    b1 = m.get_normalized_expression(transform_batch="b1")
    np.testing.assert_allclose(both.to_numpy(), (b0.to_numpy() + b1.to_numpy()) / 2, rtol=1e-4)
    samples = m.get_normalized_expression(n_samples=3, return_mean=False)
    assert samples.shape == (3, adata.n_obs, adata.n_vars)
    with pytest.raises(ValueError, match="not a batch"):
        m.get_normalized_expression(transform_batch="nope")


def test_untrained_model_refuses_inference(adata):
    SCVI.setup_anndata(adata)
    with pytest.raises(RuntimeError, match="not trained"):
        SCVI(adata).get_latent_representation()


def test_dense_and_sparse_give_same_latent():
    zs = []
    for sparse in (True, False):
        scprob.settings.seed = 0
        zs.append(_trained(make_counts(sparse=sparse)).get_latent_representation())
    np.testing.assert_allclose(zs[0], zs[1], rtol=1e-5, atol=1e-5)


def test_csc_and_layer_input(adata):
    adata.layers["counts"] = adata.X.tocsc()
    adata.X = None
    SCVI.setup_anndata(adata, layer="counts", batch_key="batch")
    m = SCVI(adata, n_hidden=16, n_latent=3)
    m.train(max_epochs=2, enable_progress_bar=False)
    assert m.get_latent_representation().shape == (adata.n_obs, 3)


def test_early_stopping_and_plateau(adata):
    SCVI.setup_anndata(adata, batch_key="batch")
    m = SCVI(adata, n_hidden=16, n_latent=3)
    m.train(max_epochs=300, early_stopping=True, early_stopping_patience=3, enable_progress_bar=False,
            plan_kwargs=dict(reduce_lr_on_plateau=True, lr_patience=1, lr_factor=0.5, n_epochs_kl_warmup=None, lr=5e-2),
            check_val_every_n_epoch=1)
    assert len(m.history["elbo_train"]) < 300
    assert m.history["lr"].iloc[:, 0].min() < 5e-2


def test_kl_warmup_by_steps(adata):
    SCVI.setup_anndata(adata)
    m = SCVI(adata, n_hidden=16, n_latent=3)
    # 72 training cells / 32 per batch = 3 steps per epoch: weight reaches 1 after 2 epochs
    m.train(max_epochs=4, batch_size=32, enable_progress_bar=False, plan_kwargs=dict(n_steps_kl_warmup=6))
    kl = m.history["kl_weight"].iloc[:, 0].to_numpy()
    assert kl[0] == pytest.approx(0.5) and kl[-1] == 1.0
