"""Reference mapping by architecture surgery (scArches; Lotfollahi et al. 2022).

The query's genes are aligned to the reference by name (missing genes are zero-filled,
extra genes dropped), its new batches extend the batch categories, the reference weights
are copied into a module built for the extended categories, and unless ``unfrozen``
(scprob's ``freeze=False``) only what new batches need is trained: the rows/columns of
batch-indexed parameters that belong to new batches (gradients of the reference entries
are zeroed; no weight decay), plus what scvi-tools' ``freeze_*`` options release (its
defaults: the library encoder and the decoder's batch-norm weights are trained; encoder
batch-norm statistics stay the reference's).
"""

from __future__ import annotations

import json
import logging

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from ..data import DataError
from ..data.registry import _categories, transfer_setup
from ..data.validate import check_obs_column, get_matrix, iter_row_chunks, row_totals

log = logging.getLogger("scprob")


def align_genes(query, var_names: list[str], layer: str | None, min_gene_overlap: float) -> ad.AnnData:
    """Query AnnData re-indexed to ``var_names`` (zeros for missing genes)."""
    pos = {g: i for i, g in enumerate(map(str, query.var_names))}
    src = np.array([pos.get(g, -1) for g in var_names])
    shared = src >= 0
    frac = shared.mean() if len(var_names) else 0.0
    if frac < min_gene_overlap:
        raise DataError(
            f"query shares {int(shared.sum())} of the reference's {len(var_names)} genes ({frac:.0%}); "
            f"at least {min_gene_overlap:.0%} are needed (check gene identifiers: e.g. reference {var_names[:3]}, "
            f"query {list(query.var_names[:3])})."
        )
    X = get_matrix(query, layer)
    blocks = []
    for _, b in iter_row_chunks(X):
        b = sp.csr_matrix(b)[:, src[shared]]
        coo = b.tocoo()
        cols = np.flatnonzero(shared)[coo.col]
        blocks.append(sp.csr_matrix((coo.data.astype(np.float32), (coo.row, cols)), shape=(b.shape[0], len(var_names))))
    aligned = sp.vstack(blocks, format="csr") if blocks else sp.csr_matrix((0, len(var_names)), dtype=np.float32)
    missing = [g for g, s in zip(var_names, shared) if not s]
    n_extra = query.n_vars - int(shared.sum())
    if missing or n_extra:
        log.warning(
            "query genes aligned to the reference: %d of %d reference genes missing, filled with zeros (e.g. %s); "
            "%d extra query genes dropped.", len(missing), len(var_names), missing[:5], n_extra,
        )
    out = ad.AnnData(obs=query.obs.copy(), var=pd.DataFrame(index=pd.Index(var_names)))
    if layer is None:
        out.X = aligned
    else:
        out.layers[layer] = aligned
    out.uns["scprob_query_alignment"] = {"n_missing_genes": len(missing), "n_extra_genes_dropped": int(n_extra)}
    return out


def extend_registry(reg: dict, query) -> dict:
    """Reference registry with the query's new batch / label / covariate categories."""
    new = json.loads(json.dumps(reg))
    args = new["setup_args"]
    bk = args["batch_key"]
    if bk:
        cats = _categories(check_obs_column(query, bk, "batch_key", True))
        added = [c for c in cats if c not in new["batch_categories"]]
        if added:
            lib = row_totals(get_matrix(query, args["layer"]))
            codes = query.obs[bk].astype(str).to_numpy()
            for c in added:
                ll = np.log(np.maximum(lib[codes == c], 1.0))
                new["library_log_means"].append(float(ll.mean()))
                new["library_log_vars"].append(float(max(ll.var(), 1e-4)))
        new["batch_categories"] += added
    lk = args["labels_key"]
    if lk and lk in query.obs.columns:
        new["label_categories"] += [c for c in _categories(check_obs_column(query, lk, "labels_key", True)) if c not in new["label_categories"]]
    for k in args["categorical_covariate_keys"]:
        old = new["categorical_covariate_categories"][k]
        old += [c for c in _categories(check_obs_column(query, k, "categorical covariate", True)) if c not in old]
    return new


_FREEZE_DEFAULTS = dict(
    freeze_dropout=False, freeze_expression=True, freeze_decoder_first_layer=True,
    freeze_batchnorm_encoder=True, freeze_batchnorm_decoder=False, freeze_classifier=True,
)


def _released(name: str, opts: dict) -> bool:
    """Whether a non-grown reference parameter is trained under scvi-tools' ``freeze_*`` options."""
    top = name.split(".")[0]
    encoder = top in ("z_encoder", "l_encoder")
    first_linear = ".layers.0.linear." in name
    batchnorm = ".post." in name  # post-activation blocks: BatchNorm1d (+ LayerNorm without weights)
    if top == "l_encoder":
        return True  # scvi-tools trains the library encoder of a query in full
    if encoder and first_linear and not opts["freeze_expression"]:
        return True
    if top == "decoder" and first_linear and not opts["freeze_decoder_first_layer"]:
        return True
    if batchnorm and encoder and not opts["freeze_batchnorm_encoder"]:
        return True
    if batchnorm and top == "decoder" and not opts["freeze_batchnorm_decoder"]:
        return True
    return False


def transplant(ref_state: dict[str, torch.Tensor], module: torch.nn.Module, freeze: bool,
               options: dict | None = None) -> list[str]:
    """Copy reference weights into ``module``; parameters that grew (new categories) keep
    their reference entries and, with ``freeze``, only their new entries are trained
    (the reference entries' gradients zeroed), together with the parameters that
    ``options`` (scvi-tools' ``freeze_*`` flags, :data:`_FREEZE_DEFAULTS`) release.
    Returns the names of trainable parameters; ``module.query_masked_`` lists the grown ones."""
    opts = _FREEZE_DEFAULTS | (options or {})
    state = module.state_dict()
    grown: dict[str, tuple[slice, ...]] = {}
    for name, new in state.items():
        old = ref_state.get(name)
        if old is None:
            raise DataError(f"reference weights lack {name!r}: was the reference built with other options?")
        if old.shape == new.shape:
            new.copy_(old)
        elif old.ndim == new.ndim and all(o <= n for o, n in zip(old.shape, new.shape)):
            sl = tuple(slice(0, o) for o in old.shape)
            new[sl] = old
            grown[name] = sl
        else:
            raise DataError(f"cannot map reference weight {name!r} {tuple(old.shape)} onto {tuple(new.shape)}")
    module.load_state_dict(state)
    params = dict(module.named_parameters())
    if opts["freeze_dropout"]:
        for m in module.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
    module.query_masked_ = []
    if not freeze:
        return list(params)
    trainable = []
    for name, p in params.items():
        if _released(name, opts):
            trainable.append(name)
        elif name in grown:
            mask = torch.ones_like(p)
            mask[grown[name]] = 0.0
            p.register_hook(lambda g, m=mask: g * m.to(g.device))
            trainable.append(name)
            module.query_masked_.append(name)
        else:
            p.requires_grad_(False)
    for mname, m in module.named_modules():
        top = mname.split(".")[0]
        frozen_bn = (top in ("z_encoder", "l_encoder") and opts["freeze_batchnorm_encoder"]) or (
            top == "decoder" and opts["freeze_batchnorm_decoder"])
        if isinstance(m, torch.nn.BatchNorm1d) and frozen_bn:
            m.momentum = 0.0  # running statistics stay those of the reference
    return trainable


def _reference_payload(cls, reference) -> dict:
    from .base import BaseModel

    if isinstance(reference, BaseModel):
        if reference.module is None:
            raise ValueError("the reference model has no module yet (built with adata=None and never given data)")
        return dict(registry=reference.registry, init_params=reference.init_params,
                    state_dict={k: v.detach().cpu() for k, v in reference.module.state_dict().items()},
                    model_class=type(reference).__name__)
    from ._files import read_model_file

    return read_model_file(reference, cls.__name__, required=("registry", "init_params", "state_dict"))


def subset_query_vars_inplace(query, var_names: list[str]) -> None:
    """scvi-tools' ``inplace_subset_query_vars``: reorder/subset the query's own genes to
    the reference's (all of them must be present)."""
    have = set(map(str, query.var_names))
    missing = [g for g in var_names if g not in have]
    if missing:
        raise DataError(
            f"inplace_subset_query_vars=True: the query lacks {len(missing)} of the reference's {len(var_names)} "
            f"genes (e.g. {missing[:5]}); use SCVI.prepare_query_anndata(adata, reference) to zero-fill them, "
            "or leave inplace_subset_query_vars=False (scprob then aligns a copy)."
        )
    if [str(v) for v in query.var_names] != list(var_names):
        query._inplace_subset_var(pd.Index(var_names))


def pad_and_sort_query(adata, var_names: list[str], inplace: bool, min_ratio: float = 0.8):
    """scvi-tools' ``prepare_query_anndata``: the query with the reference's genes in the
    reference's order (zeros in X and every layer for missing genes, extra genes dropped);
    other fields kept.  ``inplace``: the user's object is changed and ``None`` returned."""
    ref = pd.Index(var_names)
    have = pd.Index(map(str, adata.var_names))
    shared = ref.isin(have)
    if not shared.any():
        raise DataError(
            f"the query shares none of the reference's {len(ref)} genes (e.g. reference {list(ref[:3])}, "
            f"query {list(have[:3])}): check the gene identifiers."
        )
    if shared.mean() < min_ratio:
        log.warning("the query holds %.0f%% of the reference's genes (below %.0f%%): the mapping may be poor.",
                    100 * shared.mean(), 100 * min_ratio)
    missing = ref[~shared]
    out = adata
    if len(missing):
        zeros = sp.csr_matrix((adata.n_obs, len(missing)), dtype=np.float32)
        pad = ad.AnnData(X=zeros, obs=pd.DataFrame(index=adata.obs_names), var=pd.DataFrame(index=missing),
                         layers={k: zeros.copy() for k in adata.layers})
        base = adata.copy()
        base.var_names = have
        out = ad.concat([base, pad], axis=1, join="outer", merge="unique", uns_merge="first", index_unique=None)
        out.obs = adata.obs.copy()
        out.obsm, out.uns = dict(adata.obsm), dict(adata.uns)
    if list(out.var_names) != list(ref):
        out = out[:, ref].copy()
    if not inplace:
        return out if out is not adata else adata.copy()
    if out is not adata:
        adata._init_as_actual(out)
    return None


def prepare_query_anndata(cls, adata, reference_model, return_reference_var_names: bool = False,
                          inplace: bool = True):
    names = _reference_payload(cls, reference_model)["registry"]["var_names"]
    if return_reference_var_names:
        return pd.Index(names)
    return pad_and_sort_query(adata, names, inplace)


def load_query_data(cls, query_adata, reference, freeze: bool = True, min_gene_overlap: float = 0.5,
                    inplace_subset_query_vars: bool = False, accelerator: str = "auto", device: int | str = "auto",
                    options: dict | None = None):
    payload = _reference_payload(cls, reference)
    if payload["model_class"] != cls.__name__:
        raise DataError(f"reference is a {payload['model_class']} model, not {cls.__name__}")
    reg = payload["registry"]
    args = reg["setup_args"]
    if inplace_subset_query_vars:
        subset_query_vars_inplace(query_adata, reg["var_names"])
        aligned = query_adata  # scvi-tools: the model reads the user's (subset) object
    elif not query_adata.is_view and list(map(str, query_adata.var_names)) == list(reg["var_names"]):
        # genes already the reference's (e.g. after prepare_query_anndata): the model is built on
        # the user's object, registered as scvi-tools does, so SCVI(query_adata) works afterwards
        aligned = query_adata
    else:
        aligned = align_genes(query_adata, reg["var_names"], args["layer"], min_gene_overlap)
    new_reg = extend_registry(reg, aligned)
    transfer_setup(aligned, new_reg)
    model = cls(aligned, **payload["init_params"])
    trainable = transplant(payload["state_dict"], model.module, freeze, options)
    n_new = len(new_reg["batch_categories"]) - len(reg["batch_categories"])
    log.info("query mapping: %d new batch(es); training %d parameter tensor(s)%s", n_new, len(trainable),
             " (reference frozen)" if freeze else "")
    model.is_trained_ = True  # usable as is (reference encoder); train() adapts to new batches
    model._plan_defaults = dict(weight_decay=0.0) if freeze else {}
    model.query_trainable_ = trainable
    model.query_masked_ = list(model.module.query_masked_)
    if isinstance(device, str) and device.startswith("cuda"):
        model.to_device(device)
    elif accelerator in ("gpu", "cuda") and torch.cuda.is_available():
        model.to_device("cuda" if device == "auto" else f"cuda:{device}")
    return model
