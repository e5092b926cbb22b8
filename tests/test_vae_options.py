"""Every VAE option that changes a code path, through a forward/backward pass and a
short training run via the model class."""

import numpy as np
import pytest
import torch

from scprob.data import Keys
from scprob.models import LDVAE, SCVI
from scprob.modules import VAE

OPTION_SETS = [
    dict(),
    dict(gene_likelihood="nb"),
    dict(gene_likelihood="poisson"),
    dict(dispersion="gene-batch"),
    dict(dispersion="gene-label"),
    dict(dispersion="gene-cell"),
    dict(latent_distribution="ln"),
    dict(encode_covariates=True),
    dict(encode_covariates=True, batch_representation="embedding"),
    dict(batch_representation="embedding"),
    dict(n_layers=2, deeply_inject_covariates=False),
    dict(n_layers=2, deeply_inject_covariates=True, encode_covariates=True),
    dict(use_batch_norm="none", use_layer_norm="both"),
    dict(use_batch_norm="encoder", use_layer_norm="decoder"),
    dict(use_batch_norm="decoder"),
    dict(use_observed_lib_size=False),
    dict(use_observed_lib_size=False, encode_covariates=True),
    dict(log_variational=False),
    dict(normalize_encoder_input=True),
    dict(var_activation=torch.nn.functional.softplus),
    dict(decoder_type="linear"),
    dict(decoder_type="linear", linear_decoder_bias=True, use_batch_norm="none"),
]


def _tensors(n=16, g=12, n_batch=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.poisson(torch.rand(n, g, generator=gen) * 5)
    x[:, 0] += 1
    return {
        Keys.X: x,
        Keys.BATCH: torch.randint(0, n_batch, (n, 1), generator=gen),
        Keys.LABELS: torch.randint(0, 3, (n, 1), generator=gen),
        Keys.CONT_COVS: torch.randn(n, 2, generator=gen),
        Keys.CAT_COVS: torch.randint(0, 3, (n, 1), generator=gen),
        Keys.SIZE_FACTOR: torch.rand(n, 1, generator=gen) + 0.5,
    }


@pytest.mark.parametrize("opts", OPTION_SETS, ids=lambda o: ",".join(f"{k}={getattr(v, '__name__', v)}" for k, v in o.items()) or "default")
def test_module_forward_backward(opts):
    t = _tensors()
    m = VAE(12, n_batch=2, n_labels=3, n_hidden=16, n_latent=4, n_continuous_cov=2, n_cats_per_cov=[3],
            library_log_means=np.array([2.0, 2.5]), library_log_vars=np.array([0.5, 0.4]), **opts)
    inf, gen, lo = m(t)
    assert lo.loss.ndim == 0 and torch.isfinite(lo.loss)
    assert lo.reconstruction_loss.shape == (16,)
    lo.loss.backward()
    grads = [p.grad for p in m.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    # posterior predictive and several MC samples
    m.eval()
    draws = m.sample(t, n_samples=3)
    assert draws.shape == (16, 12, 3) and (draws >= 0).all()
    ll = m.marginal_ll(t, n_mc_samples=6, n_mc_samples_per_pass=4)
    assert ll.shape == (16,) and torch.isfinite(ll).all()
    if opts.get("latent_distribution") == "ln":
        assert torch.allclose(inf["z"].sum(-1), torch.ones(16), atol=1e-5)


def test_size_factor_option():
    t = _tensors()
    m = VAE(12, n_batch=2, use_size_factor_key=True, n_hidden=16, n_latent=4)
    _, gen, lo = m(t)
    assert torch.allclose(gen["library"], t[Keys.SIZE_FACTOR].log())
    lo.loss.backward()


def test_normal_likelihood_on_continuous_data():
    t = _tensors()
    t[Keys.X] = torch.log1p(t[Keys.X]) + 0.1
    m = VAE(12, n_batch=2, gene_likelihood="normal", n_hidden=16, n_latent=4)
    _, _, lo = m(t)
    assert torch.isfinite(lo.loss)


@pytest.mark.parametrize(
    "model_kwargs,setup",
    [
        (dict(), dict(batch_key="batch")),
        (dict(dispersion="gene-label", gene_likelihood="nb"), dict(batch_key="batch", labels_key="cell_type")),
        (dict(dispersion="gene-label"), dict(batch_key="batch")),  # no labels_key: one label, no labels column
        (dict(encode_covariates=True, n_layers=2), dict(batch_key="batch", categorical_covariate_keys=["cat1"], continuous_covariate_keys=["cont1"])),
        (dict(use_observed_lib_size=False), dict(batch_key="batch")),
        (dict(), dict(size_factor_key="sf")),
        (dict(batch_representation="embedding", latent_distribution="ln"), dict(batch_key="batch")),
    ],
)
def test_model_trains_with_options(adata, model_kwargs, setup):
    SCVI.setup_anndata(adata, **setup)
    model = SCVI(adata, n_hidden=16, n_latent=3, **model_kwargs)
    model.train(max_epochs=3, batch_size=32, enable_progress_bar=False)
    z = model.get_latent_representation()
    assert z.shape == (adata.n_obs, 3) and np.isfinite(z).all()
    expr = model.get_normalized_expression(n_samples=2)
    assert expr.shape == (adata.n_obs, adata.n_vars) and np.isfinite(expr.to_numpy()).all()


def test_ldvae_loadings(adata):
    LDVAE.setup_anndata(adata, batch_key="batch")
    model = LDVAE(adata, n_latent=4, n_hidden=16)
    model.train(max_epochs=3, enable_progress_bar=False)
    load = model.get_loadings()
    assert load.shape == (adata.n_vars, 4) and list(load.index) == list(adata.var_names)
    assert model.module.decoder_type == "linear"
    with pytest.raises(ValueError, match="linear decoder"):
        SCVI(adata).module.get_loadings()
