"""Models saved by scvi-tools load in scprob with the same latent and normalized expression.

Two kinds of check, neither needing scvi-tools at test time:

* fixtures in tests/data/scvi_tools_*/ written by scvi-tools 1.4.2 itself (see
  tests/data/make_scvi_tools_fixtures.py) with scvi-tools' own outputs in expected.npz;
* ``model.pt`` files built here by hand in scvi-tools' layout (state-dict key names and
  ``attr_dict`` as scvi-tools writes them), checked against a NumPy computation of
  scvi-tools' forward pass (one Linear over ``[h, one-hot covariates]``, one-level
  covariates left out), and refused with a named option where scprob cannot map them.
"""

from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

from scprob.data import DataError
from scprob.models import LDVAE, SCVI

from .data.scvi_tools_fixture_data import fixture_adata

DATA = Path(__file__).parent / "data"


@pytest.fixture(autouse=True)
def _one_thread(one_thread_module):
    yield


def _decode_at_mean(model, adata) -> tuple[np.ndarray, np.ndarray]:
    """(posterior mean of z, px_scale decoded there) for every cell."""
    m = model.module
    with torch.inference_mode():
        tensors = next(iter(model._loader(adata, batch_size=adata.n_obs)))
        inf = m.inference(**m._get_inference_input(tensors))
        gen_in = m._get_generative_input(tensors, inf)
        gen_in["z"] = m.z_encoder.z_transform(inf["qz"].loc)
        return inf["qz"].loc.numpy(), m.generative(**gen_in)["px_scale"].numpy()


# ------------------------------------------------------------- scvi-tools' own files
def test_scvi_tools_fixture_same_latent_and_expression():
    d = DATA / "scvi_tools_scvi_covs"
    exp = np.load(d / "expected.npz")
    model = SCVI.load(d)  # the AnnData scvi-tools saved beside the model
    np.testing.assert_allclose(model.get_latent_representation(), exp["latent"], atol=1e-5, rtol=0)
    _, var = model.get_latent_representation(return_dist=True)
    np.testing.assert_allclose(var, exp["qzv"], atol=1e-5, rtol=1e-5)
    _, scale = _decode_at_mean(model, model.adata)
    np.testing.assert_allclose(scale, exp["scale"], atol=1e-6, rtol=1e-4)
    # the same on the user's own AnnData (no scvi-tools columns in it)
    adata = fixture_adata()
    model2 = SCVI.load(d, adata)
    np.testing.assert_allclose(model2.get_latent_representation(), exp["latent"], atol=1e-5, rtol=0)
    # what scvi-tools recorded comes along
    assert model2.is_trained and len(model2.history["elbo_train"]) == 3
    assert model2.registry["batch_categories"] == ["a", "b"]
    assert model2.registry["categorical_covariate_categories"] == {"donor": ["x", "y", "z"]}
    assert model2.init_params["dispersion"] == "gene-batch" and model2.init_params["use_observed_lib_size"] is False
    idx = np.sort(np.concatenate([model2.train_indices_, model2.validation_indices_]))
    assert np.array_equal(idx, np.arange(adata.n_obs))
    # the normalized expression API runs on it, rows on the simplex
    ne = model2.get_normalized_expression(n_samples=3)
    assert ne.shape == (40, 12) and np.allclose(ne.sum(1), 1, atol=1e-4)


def test_scvi_tools_linear_fixture_same_latent_and_loadings():
    d = DATA / "scvi_tools_linear_nb"
    exp = np.load(d / "expected.npz")
    adata = fixture_adata()
    model = LDVAE.load(d, adata)
    np.testing.assert_allclose(model.get_latent_representation(), exp["latent"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(model.get_loadings().to_numpy(), exp["loadings"], atol=1e-5, rtol=1e-5)
    _, scale = _decode_at_mean(model, adata)
    np.testing.assert_allclose(scale, exp["scale"], atol=1e-6, rtol=1e-4)
    with pytest.raises(DataError, match="LDVAE.load"):  # a LinearSCVI is not an SCVI
        SCVI.load(d, fixture_adata())
    with pytest.raises(DataError, match="saved without its AnnData"):
        LDVAE.load(d)


def test_scvi_tools_fixture_wrong_genes_named():
    adata = fixture_adata()[:, 1:].copy()
    with pytest.raises(DataError, match="1 missing"):
        SCVI.load(DATA / "scvi_tools_scvi_covs", adata)


# ------------------------------------------------------------- hand-built files
G, H, L = 7, 5, 2


def _fc(rng, prefix: str, dims: list[int], cat_cols: int, inject_all: bool, bias: bool = True) -> dict:
    """scvi-tools FCLayers weights: ``{prefix}.fc_layers.Layer i.0`` Linear over
    ``[h, one-hot]`` and ``.1`` BatchNorm1d with non-trivial running statistics."""
    sd = {}
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        cols = d_in + (cat_cols if (i == 0 or inject_all) else 0)
        sd[f"{prefix}.fc_layers.Layer {i}.0.weight"] = torch.randn(d_out, cols, generator=rng) * 0.5
        if bias:
            sd[f"{prefix}.fc_layers.Layer {i}.0.bias"] = torch.randn(d_out, generator=rng) * 0.1
        bn = f"{prefix}.fc_layers.Layer {i}.1"
        sd[f"{bn}.weight"] = 1 + 0.1 * torch.randn(d_out, generator=rng)
        sd[f"{bn}.bias"] = 0.1 * torch.randn(d_out, generator=rng)
        sd[f"{bn}.running_mean"] = 0.2 * torch.randn(d_out, generator=rng)
        sd[f"{bn}.running_var"] = 0.5 + torch.rand(d_out, generator=rng)
        sd[f"{bn}.num_batches_tracked"] = torch.tensor(7)
    return sd


def _np_fc(sd: dict, prefix: str, h: np.ndarray, onehot: np.ndarray, inject_all: bool, relu: bool = True) -> np.ndarray:
    """scvi-tools' FCLayers forward in eval mode, in NumPy."""
    i = 0
    while f"{prefix}.fc_layers.Layer {i}.0.weight" in sd:
        w = sd[f"{prefix}.fc_layers.Layer {i}.0.weight"].numpy()
        inp = np.concatenate([h, onehot], 1) if (i == 0 or inject_all) and onehot.size else h
        out = inp @ w.T + sd.get(f"{prefix}.fc_layers.Layer {i}.0.bias", torch.zeros(w.shape[0])).numpy()
        bn = {k: sd[f"{prefix}.fc_layers.Layer {i}.1.{k}"].numpy() for k in ("weight", "bias", "running_mean", "running_var")}
        out = (out - bn["running_mean"]) / np.sqrt(bn["running_var"] + 1e-3) * bn["weight"] + bn["bias"]
        h = np.maximum(out, 0) if relu else out
        i += 1
    return h


def _state_registry(mapping, key):
    return {"data_registry": {"attr_key": f"_scvi_{key}", "attr_name": "obs"},
            "state_registry": {"categorical_mapping": np.asarray(mapping, dtype=object), "original_key": key},
            "summary_stats": {f"n_{key}": len(mapping)}}


def _scvi_tools_payload(sd: dict, model_name: str = "SCVI", batch_key=None, batches=("0",), donor=True,
                        non_kwargs: dict | None = None, kwargs: dict | None = None) -> dict:
    """A ``model.pt`` payload laid out as scvi-tools 1.4.2 writes it."""
    fields = defaultdict(dict)
    fields["X"] = {"data_registry": {"attr_key": None, "attr_name": "X"},
                   "state_registry": {"column_names": np.array([f"gene{i}" for i in range(G)], dtype=object),
                                      "n_obs": 40, "n_vars": G},
                   "summary_stats": {"n_cells": 40, "n_vars": G}}
    fields["batch"] = _state_registry(list(batches) if batch_key else [0], "batch")
    fields["labels"] = _state_registry([0], "labels")
    if donor:
        fields["extra_categorical_covs"] = {
            "data_registry": {"attr_key": "_scvi_extra_categorical_covs", "attr_name": "obsm"},
            "state_registry": {"field_keys": ["donor"], "mappings": {"donor": np.array(["x", "y", "z"], dtype=object)},
                               "n_cats_per_key": [3]},
            "summary_stats": {"n_extra_categorical_covs": 1}}
    fields["size_factor"] = {"data_registry": {}, "state_registry": {}, "summary_stats": {}}
    registry = {"_scvi_uuid": "0", "field_registries": fields, "model_name": model_name, "scvi_version": "1.4.2",
                "setup_args": {"batch_key": batch_key, "categorical_covariate_keys": ["donor"] if donor else None,
                               "continuous_covariate_keys": None, "labels_key": None, "layer": None,
                               "size_factor_key": None},
                "setup_method_name": "setup_anndata"}
    nk = dict(n_hidden=H, n_latent=L, n_layers=2, dropout_rate=0.1, dispersion="gene", gene_likelihood="nb",
              use_observed_lib_size=True, latent_distribution="normal") | (non_kwargs or {})
    sd = dict(sd, pyro_param_store={"params": {}, "constraints": {}})
    return {"model_state_dict": sd, "var_names": np.array([f"gene{i}" for i in range(G)], dtype=object),
            "attr_dict": {"init_params_": {"kwargs": {"kwargs": kwargs or {}}, "non_kwargs": nk},
                          "registry_": registry, "history_": {}, "is_trained_": True,
                          "train_indices_": np.arange(30), "validation_indices_": np.arange(30, 40),
                          "test_indices_": np.array([], dtype=np.int64)}}


def _hand_scvi_state(seed: int = 0) -> dict:
    """SCVI weights: no batch key (one batch: no one-hot column), a 3-level covariate
    injected into both layers of encoder and decoder, NB, observed library."""
    rng = torch.Generator().manual_seed(seed)
    sd = {"px_r": torch.randn(G, generator=rng)}
    for enc, n_out in (("z_encoder", L), ("l_encoder", 1)):
        sd |= _fc(rng, f"{enc}.encoder", [G, H] if enc == "l_encoder" else [G, H, H], 3, True)
        for head in ("mean_encoder", "var_encoder"):
            sd[f"{enc}.{head}.weight"] = torch.randn(n_out, H, generator=rng) * 0.3
            sd[f"{enc}.{head}.bias"] = torch.randn(n_out, generator=rng) * 0.1
    sd |= _fc(rng, "decoder.px_decoder", [L, H, H], 3, True)
    for head, prefix in (("px_scale_decoder.0", ""), ("px_r_decoder", ""), ("px_dropout_decoder", "")):
        sd[f"decoder.{prefix}{head}.weight"] = torch.randn(G, H, generator=rng) * 0.3
        sd[f"decoder.{prefix}{head}.bias"] = torch.randn(G, generator=rng) * 0.1
    return sd


def test_hand_built_scvi_tools_file_matches_numpy_forward(tmp_path):
    sd = _hand_scvi_state()
    torch.save(_scvi_tools_payload(sd, kwargs=dict(encode_covariates=True)), tmp_path / "model.pt")
    adata = fixture_adata()
    adata = adata[:, :G].copy()
    model = SCVI.load(tmp_path, adata)
    # scvi-tools' forward pass by hand: donor one-hot into every layer, no batch column
    x = np.log1p(np.asarray(adata.X))
    donor = np.eye(3)[adata.obs["donor"].map({"x": 0, "y": 1, "z": 2}).to_numpy()]
    h = _np_fc(sd, "z_encoder.encoder", x, donor, True)
    qzm = h @ sd["z_encoder.mean_encoder.weight"].numpy().T + sd["z_encoder.mean_encoder.bias"].numpy()
    np.testing.assert_allclose(model.get_latent_representation(), qzm, atol=1e-5, rtol=0)
    hd = _np_fc(sd, "decoder.px_decoder", qzm, donor, True)
    raw = hd @ sd["decoder.px_scale_decoder.0.weight"].numpy().T + sd["decoder.px_scale_decoder.0.bias"].numpy()
    scale = np.exp(raw - raw.max(1, keepdims=True))
    scale /= scale.sum(1, keepdims=True)
    _, ours = _decode_at_mean(model, adata)
    np.testing.assert_allclose(ours, scale, atol=1e-6, rtol=1e-4)
    # NB: the unused heads (dropout, gene-cell dispersion, library encoder) are not kept
    assert model.module.decoder.px_dropout_decoder is None and not hasattr(model.module, "l_encoder")
    assert torch.equal(model.module.px_r.detach(), sd["px_r"])


def test_hand_built_two_batches_not_deeply_injected(tmp_path):
    """Two batches and a 3-level covariate, injected into the first layer only: the
    one-hot columns go to the right categories (a batch/covariate swap would fail)."""
    rng = torch.Generator().manual_seed(1)
    sd = _hand_scvi_state(1)
    for prefix in ("z_encoder.encoder", "l_encoder.encoder", "decoder.px_decoder"):  # 2 batch + 3 donor columns
        sd = {k: v for k, v in sd.items() if not k.startswith(prefix)}
        dims = {"z_encoder.encoder": [G, H, H], "l_encoder.encoder": [G, H], "decoder.px_decoder": [L, H, H]}[prefix]
        sd |= _fc(rng, prefix, dims, 5, False)
    payload = _scvi_tools_payload(sd, batch_key="batch", batches=("a", "b"),
                                  kwargs=dict(encode_covariates=True, deeply_inject_covariates=False))
    torch.save(payload, tmp_path / "model.pt")
    adata = fixture_adata()[:, :G].copy()
    model = SCVI.load(tmp_path, adata)
    x = np.log1p(np.asarray(adata.X))
    onehot = np.concatenate([np.eye(2)[(adata.obs["batch"] == "b").to_numpy().astype(int)],
                             np.eye(3)[adata.obs["donor"].map({"x": 0, "y": 1, "z": 2}).to_numpy()]], 1)
    h = _np_fc(sd, "z_encoder.encoder", x, onehot, False)
    qzm = h @ sd["z_encoder.mean_encoder.weight"].numpy().T + sd["z_encoder.mean_encoder.bias"].numpy()
    np.testing.assert_allclose(model.get_latent_representation(), qzm, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(model_name="TOTALVI"), "TOTALVI"),
        (dict(kwargs=dict(extra_encoder_kwargs={"activation_fn": "x"})), "extra_encoder_kwargs"),
        (dict(kwargs=dict(use_batch_norm="sometimes")), "use_batch_norm='sometimes'"),
        (dict(kwargs=dict(n_labels_embedding=3)), "n_labels_embedding"),
        (dict(non_kwargs=dict(gene_likelihood="nbmixture")), "gene_likelihood='nbmixture'"),
        (dict(non_kwargs=dict(dispersion="gene-protein")), "dispersion='gene-protein'"),
    ],
)
def test_unmappable_scvi_tools_options_are_named(tmp_path, change, message):
    torch.save(_scvi_tools_payload(_hand_scvi_state(), **change), tmp_path / "model.pt")
    with pytest.raises(DataError, match=message):
        SCVI.load(tmp_path, fixture_adata()[:, :G].copy())


def test_scvi_tools_file_with_foreign_weights_refused(tmp_path):
    sd = _hand_scvi_state() | {"decoder.px_decoder.fc_layers.Layer 0.7.weight": torch.zeros(3)}
    torch.save(_scvi_tools_payload(sd), tmp_path / "model.pt")
    with pytest.raises(DataError, match="Layer 0.7"):
        SCVI.load(tmp_path, fixture_adata()[:, :G].copy())
    payload = _scvi_tools_payload(_hand_scvi_state())
    payload["attr_dict"]["registry_"]["setup_method_name"] = "setup_mudata"
    torch.save(payload, tmp_path / "model.pt")
    with pytest.raises(DataError, match="setup_mudata"):
        SCVI.load(tmp_path, fixture_adata()[:, :G].copy())
