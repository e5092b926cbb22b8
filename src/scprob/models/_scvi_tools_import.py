"""Models trained and saved by scvi-tools (``SCVI`` and ``LinearSCVI``, 1.x) loaded into scprob.

scvi-tools' ``model.save`` writes ``model.pt``: a pickled dict with

* ``model_state_dict``: the ``VAE`` / ``LDVAE`` module's weights,
* ``var_names``: the genes, in order,
* ``attr_dict``: ``init_params_`` (``{"non_kwargs": {...}, "kwargs": {"kwargs": {...}}}``),
  ``registry_`` (``setup_args``, ``field_registries`` with the batch / label / covariate
  categories), ``history_``, ``is_trained_``, ``train_indices_``, ...

:func:`convert_scvi_tools_payload` turns that into the payload ``scprob`` writes itself
(``model_class``, ``state_dict``, ``init_params``, ``registry``, ``history``, ...), so
``SCVI.load(dir, adata)`` gives the same module, the same latent and the same normalized
expression.  The module math is the same in both; only the weight layout differs:

* a scvi-tools ``FCLayers`` layer is one ``nn.Linear`` over ``[h, onehot(c_1), ...]``
  (categories with one level dropped); scprob keeps the ``h`` part as ``nn.Linear`` and
  each covariate's columns as an ``nn.Embedding`` (a one-level covariate gets a zero row),
* ``fc_layers.Layer i.0`` / ``.1`` (linear / batch norm) are ``layers.i.linear`` /
  ``post.i.0``; ``px_scale_decoder.0`` is ``px_scale_decoder``; the batch embedding
  ``_embeddings_dict.batch`` is ``batch_embedding``,
* heads that the chosen likelihood never reads (the dropout head of NB/Poisson, the
  library encoder of an observed library, ``px_r`` of Poisson) are not kept,
* ``gene_likelihood="normal"``: scvi-tools' ``px_r`` is the log standard deviation, scprob's
  the log variance, so it is doubled.

Options that cannot be mapped (other model classes, minified models, custom
``extra_encoder_kwargs`` / ``extra_decoder_kwargs``, unknown module options) raise a
:class:`~scprob.data.DataError` that names them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np
import torch

from ..data import DataError

#: scvi-tools model class -> scprob model class
CLASS_MAP = {"SCVI": "SCVI", "LinearSCVI": "LDVAE"}

_NORM = ("encoder", "decoder", "none", "both")
# scvi-tools 1.4 VAE options and their defaults (model arguments included)
_VAE_DEFAULTS: dict = dict(
    n_hidden=128, n_latent=10, n_layers=1, dropout_rate=0.1, dispersion="gene", gene_likelihood="zinb",
    latent_distribution="normal", use_observed_lib_size=True, log_variational=True, encode_covariates=False,
    deeply_inject_covariates=True, batch_representation="one-hot", use_batch_norm="both", use_layer_norm="none",
    var_activation=None, extra_encoder_kwargs=None, extra_decoder_kwargs=None, batch_embedding_kwargs=None,
)
# scvi-tools 1.4 LinearSCVI / LDVAE options and their defaults
_LDVAE_DEFAULTS: dict = dict(
    n_hidden=128, n_latent=10, n_layers=1, dropout_rate=0.1, dispersion="gene", gene_likelihood="nb",
    latent_distribution="normal", use_observed_lib_size=False, log_variational=True, use_batch_norm=True, bias=False,
)
# accepted and without effect on the module's function
_IGNORED = {"extra_payload_autotune"}
_FC_KEY = re.compile(r"^(?P<prefix>.+)\.fc_layers\.Layer (?P<layer>\d+)\.(?P<part>\d+)\.(?P<param>[^.]+)$")


def is_scvi_tools_payload(payload) -> bool:
    """Whether a loaded ``model.pt`` is scvi-tools' (``attr_dict`` + ``model_state_dict``)."""
    return isinstance(payload, Mapping) and "attr_dict" in payload and "model_state_dict" in payload


def scvi_tools_class(strings: list[str]) -> str | None:
    """The scprob class of a scvi-tools ``model.pt`` from the strings of its pickle (no
    code run), or ``None`` when these are not scvi-tools' strings or name a class scprob
    does not load."""
    if "attr_dict" not in strings or "model_state_dict" not in strings or "model_name" not in strings[:-1]:
        return None
    name = strings[strings.index("model_name") + 1]
    return CLASS_MAP.get(name)


def _init_params(attr: Mapping, where: str) -> dict:
    """scvi-tools' ``init_params_`` flattened to one dict of keyword arguments."""
    ip = attr.get("init_params_")
    if not isinstance(ip, Mapping):
        raise DataError(f"{where}: scvi-tools model without init_params_ in attr_dict; re-save it with scvi-tools 1.x.")
    if "non_kwargs" not in ip and "kwargs" not in ip:  # layout of scvi-tools < 0.15
        return dict(ip)
    flat = dict(ip.get("non_kwargs") or {})
    for value in (ip.get("kwargs") or {}).values():  # {"kwargs": {...}} (SCVI) or {"model_kwargs": {...}} (LinearSCVI)
        if isinstance(value, Mapping):
            flat.update(value)
    return flat


def _categories(mapping) -> list[str]:
    return [str(c) for c in np.asarray(mapping).tolist()]


def _registry(attr: Mapping, var_names: list[str], scprob_class: str, state: Mapping, where: str) -> dict:
    """scprob's registry from scvi-tools' ``registry_``."""
    reg = attr["registry_"]
    if reg.get("setup_method_name", "setup_anndata") != "setup_anndata":
        raise DataError(f"{where}: the scvi-tools model was set up with {reg['setup_method_name']} (e.g. MuData); "
                        "scprob loads models set up with setup_anndata only.")
    fields = reg.get("field_registries") or {}
    minified = [k for k in fields if "minif" in str(k) or "latent_qz" in str(k) or "observed_lib_size" in str(k)]
    if minified or attr.get("minified_data_type"):
        raise DataError(f"{where}: a minified scvi-tools model (fields {minified}) cannot be loaded; save the model "
                        "from its full AnnData (before minify_adata) in scvi-tools.")
    args = dict(reg.get("setup_args") or {})
    setup_args = dict(
        layer=args.get("layer"), batch_key=args.get("batch_key"), labels_key=args.get("labels_key"),
        size_factor_key=args.get("size_factor_key"),
        categorical_covariate_keys=list(args.get("categorical_covariate_keys") or []),
        continuous_covariate_keys=list(args.get("continuous_covariate_keys") or []),
    )
    unknown = sorted(set(args) - set(setup_args))
    if unknown:
        raise DataError(f"{where}: scvi-tools setup_anndata argument(s) {unknown} have no scprob counterpart.")

    def state_of(key: str) -> Mapping:
        return (fields.get(key) or {}).get("state_registry") or {}

    batch = state_of("batch").get("categorical_mapping")
    labels = state_of("labels").get("categorical_mapping")
    batch_cats = _categories(batch) if setup_args["batch_key"] and batch is not None else ["0"]
    label_cats = _categories(labels) if setup_args["labels_key"] and labels is not None else ["0"]
    cat_state = state_of("extra_categorical_covs")
    mappings = cat_state.get("mappings") or {}
    cat_cov = {k: _categories(mappings[k]) for k in setup_args["categorical_covariate_keys"] if k in mappings}
    missing = [k for k in setup_args["categorical_covariate_keys"] if k not in cat_cov]
    if missing:
        raise DataError(f"{where}: the categories of categorical covariate(s) {missing} are not in the file.")
    means = state.get("library_log_means")
    vars_ = state.get("library_log_vars")
    n_b = len(batch_cats)
    return dict(
        model_name=scprob_class,
        scprob_version="unknown",
        scvi_tools_version=str(reg.get("scvi_version", "unknown")),
        setup_args=setup_args,
        n_obs=int(state_of("X").get("n_obs", 0)),
        n_vars=len(var_names),
        var_names=var_names,
        batch_categories=batch_cats,
        label_categories=label_cats,
        categorical_covariate_categories=cat_cov,
        n_continuous_cov=len(setup_args["continuous_covariate_keys"]),
        library_log_means=(means.reshape(-1).tolist() if isinstance(means, torch.Tensor) else [0.0] * n_b),
        library_log_vars=(vars_.reshape(-1).tolist() if isinstance(vars_, torch.Tensor) else [1.0] * n_b),
        first_non_integer=None,
        count_profile=None,
        data_location=None,
    )


def _check(where: str, name: str, value, allowed) -> None:
    if value not in allowed:
        raise DataError(f"{where}: scvi-tools option {name}={value!r} cannot be mapped onto scprob (supported: {list(allowed)}).")


def _module_options(params: dict, scvi_class: str, state: Mapping, where: str) -> tuple[dict, dict]:
    """(scprob init_params, the scvi-tools options with defaults filled in)."""
    defaults = _VAE_DEFAULTS if scvi_class == "SCVI" else _LDVAE_DEFAULTS
    unknown = sorted(set(params) - set(defaults) - _IGNORED)
    if unknown:
        raise DataError(f"{where}: scvi-tools {scvi_class} option(s) {unknown} cannot be mapped onto scprob's "
                        f"{CLASS_MAP[scvi_class]}; it maps {sorted(defaults)}.")
    o = {k: params.get(k, v) for k, v in defaults.items()}
    _check(where, "gene_likelihood", o["gene_likelihood"], ("zinb", "nb", "poisson", "normal"))
    _check(where, "dispersion", o["dispersion"], ("gene", "gene-batch", "gene-label", "gene-cell"))
    _check(where, "latent_distribution", o["latent_distribution"], ("normal", "ln"))
    for k in ("n_hidden", "n_latent", "n_layers"):
        if not isinstance(o[k], (int, np.integer)) or o[k] < 1:
            raise DataError(f"{where}: scvi-tools option {k}={o[k]!r} is not a positive integer.")
    common = dict(
        n_hidden=int(o["n_hidden"]), n_latent=int(o["n_latent"]), dropout_rate=float(o["dropout_rate"]),
        dispersion=o["dispersion"], gene_likelihood=o["gene_likelihood"], latent_distribution=o["latent_distribution"],
        use_observed_lib_size=bool(o["use_observed_lib_size"]), log_variational=bool(o["log_variational"]),
    )
    if scvi_class == "LinearSCVI":
        return common | dict(n_layers_encoder=int(o["n_layers"]), use_batch_norm=bool(o["use_batch_norm"]),
                             bias=bool(o["bias"])), o
    for k in ("use_batch_norm", "use_layer_norm"):
        _check(where, k, o[k], _NORM)
    _check(where, "batch_representation", o["batch_representation"], ("one-hot", "embedding"))
    for k in ("extra_encoder_kwargs", "extra_decoder_kwargs"):
        if o[k]:
            raise DataError(f"{where}: scvi-tools option {k}={o[k]!r} cannot be mapped onto scprob (only empty is).")
    out = common | dict(
        n_layers=int(o["n_layers"]), encode_covariates=bool(o["encode_covariates"]),
        deeply_inject_covariates=bool(o["deeply_inject_covariates"]), batch_representation=o["batch_representation"],
        use_batch_norm=o["use_batch_norm"], use_layer_norm=o["use_layer_norm"],
    )
    if o["var_activation"] is not None:
        if not callable(o["var_activation"]):
            raise DataError(f"{where}: scvi-tools option var_activation={o['var_activation']!r} is not callable.")
        out["var_activation"] = o["var_activation"]
    if o["batch_representation"] == "embedding":
        emb = state.get("_embeddings_dict.batch.weight")
        if emb is None:
            raise DataError(f"{where}: batch_representation='embedding' but no batch embedding among the weights.")
        out["batch_embedding_kwargs"] = dict(o["batch_embedding_kwargs"] or {}) | dict(embedding_dim=int(emb.shape[1]))
    return out, o


def _fc_layers_cats(opts: dict, scvi_class: str, n_batch: int, n_cats_per_cov: list[int]) -> dict[str, list[int]]:
    """Categories scprob's FCLayers take, per FCLayers prefix (scvi-tools drops those of size 1)."""
    one_hot = scvi_class == "LinearSCVI" or opts["batch_representation"] == "one-hot"
    cats = ([n_batch] if one_hot else []) + n_cats_per_cov
    if scvi_class == "LinearSCVI":
        return {"z_encoder.encoder": [], "l_encoder.encoder": [], "decoder.factor_regressor": cats,
                "decoder.px_dropout_decoder": cats}
    enc = cats if opts["encode_covariates"] else []
    return {"z_encoder.encoder": enc, "l_encoder.encoder": enc, "decoder.px_decoder": cats}


def _convert_state(state: Mapping, opts: dict, scvi_class: str, n_batch: int, n_cats_per_cov: list[int],
                   where: str) -> dict[str, torch.Tensor]:
    from ..distributions import get_likelihood

    spec = get_likelihood(opts["gene_likelihood"])
    fc_cats = _fc_layers_cats(opts, scvi_class, n_batch, n_cats_per_cov)
    inject_all = scvi_class == "SCVI" and bool(opts["deeply_inject_covariates"])
    observed = bool(opts["use_observed_lib_size"])
    keep_dropout = spec["needs_dropout"]
    keep_r = spec["needs_dispersion"]
    normal = opts["gene_likelihood"] == "normal"
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue  # pyro_param_store and the like
        value = value.detach().cpu()
        if key.startswith("l_encoder.") and observed:
            continue
        if key.startswith("decoder.px_dropout_decoder") and not keep_dropout:
            continue
        if key.startswith("decoder.px_r_decoder") and not (keep_r and opts["dispersion"] == "gene-cell"):
            continue
        if key == "px_r":
            if keep_r and opts["dispersion"] != "gene-cell":
                out[key] = value * 2 if normal else value
            continue
        if key in ("library_log_means", "library_log_vars"):
            if not observed:
                out[key] = value.reshape(1, -1)
            continue
        m = _FC_KEY.match(key)
        if m:
            prefix, layer, part, param = m["prefix"], int(m["layer"]), int(m["part"]), m["param"]
            if prefix not in fc_cats:
                unknown.append(key)
                continue
            if part == 0 and param == "weight":
                cats = fc_cats[prefix] if (layer == 0 or inject_all) else []
                n_cols = sum(n for n in cats if n > 1)
                d_in = value.shape[1] - n_cols
                if d_in < 1:
                    raise DataError(f"{where}: weight {key!r} of shape {tuple(value.shape)} does not fit the saved "
                                    f"covariates ({cats}); the file is inconsistent.")
                out[f"{prefix}.layers.{layer}.linear.weight"] = value[:, :d_in].clone()
                off = d_in
                for k, n in enumerate(cats):
                    if n > 1:
                        out[f"{prefix}.layers.{layer}.cat_weights.{k}.weight"] = value[:, off:off + n].T.contiguous()
                        off += n
                    else:  # one category: scvi-tools leaves it out, i.e. adds nothing
                        out[f"{prefix}.layers.{layer}.cat_weights.{k}.weight"] = value.new_zeros(n, value.shape[0])
            elif part == 0 and param == "bias":
                out[f"{prefix}.layers.{layer}.linear.bias"] = value
            elif part == 1:  # BatchNorm1d
                out[f"{prefix}.post.{layer}.0.{param}"] = value
            else:
                unknown.append(key)
            continue
        if key.startswith("decoder.px_scale_decoder.0."):
            out[key.replace("px_scale_decoder.0.", "px_scale_decoder.")] = value
        elif key.startswith("decoder.px_r_decoder."):
            out[key] = value * 2 if normal else value
        elif key.startswith("_embeddings_dict.batch."):
            out[key.replace("_embeddings_dict.batch.", "batch_embedding.")] = value
        elif re.match(r"^(z_encoder|l_encoder)\.(mean_encoder|var_encoder)\.(weight|bias)$", key) or \
                key.startswith("decoder.px_dropout_decoder."):
            out[key] = value
        else:
            unknown.append(key)
    if unknown:
        raise DataError(f"{where}: scvi-tools weights {unknown[:5]} have no place in scprob's module "
                        f"({len(unknown)} unmapped); the model uses a layout scprob cannot load.")
    return out


def convert_scvi_tools_payload(payload: Mapping, where: str) -> dict:
    """scprob's save payload (``model_class``, ``state_dict``, ``init_params``, ``registry``,
    ``history``, ``is_trained``, ``indices``, ``versions``) for a scvi-tools ``model.pt``
    payload.  DataError, naming the option, for what cannot be mapped."""
    attr = payload["attr_dict"]
    if not isinstance(attr, Mapping) or not isinstance(attr.get("registry_"), Mapping):
        raise DataError(f"{where}: scvi-tools model without registry_ in attr_dict; re-save it with scvi-tools 1.x.")
    scvi_class = str(attr["registry_"].get("model_name", "unknown"))
    if scvi_class not in CLASS_MAP:
        raise DataError(f"{where} holds a scvi-tools {scvi_class} model; scprob loads scvi-tools' "
                        f"{sorted(CLASS_MAP)} models only.")
    scprob_class = CLASS_MAP[scvi_class]
    state = payload["model_state_dict"]
    var_names = [str(v) for v in np.asarray(payload["var_names"]).tolist()]
    registry = _registry(attr, var_names, scprob_class, state, where)
    init_params, opts = _module_options(_init_params(attr, where), scvi_class, state, where)
    if registry["setup_args"]["size_factor_key"] and scvi_class == "SCVI":
        opts = opts | dict(use_observed_lib_size=True)  # scvi-tools: a size factor replaces the library
    n_cats = [len(registry["categorical_covariate_categories"][k]) for k in registry["setup_args"]["categorical_covariate_keys"]]
    state_dict = _convert_state(state, opts, scvi_class, len(registry["batch_categories"]), n_cats, where)
    indices = {}
    for split in ("train", "validation", "test"):
        value = attr.get(f"{split}_indices_")
        if value is not None:
            indices[split] = torch.as_tensor(np.asarray(value, dtype=np.int64))
    return dict(
        model_class=scprob_class,
        state_dict=state_dict,
        init_params=init_params,
        registry=registry,
        history=dict(attr.get("history_") or {}),
        is_trained=bool(attr.get("is_trained_", True)),
        versions={"scvi-tools": registry["scvi_tools_version"]},
        extra={},
        indices=indices,
    )
