"""Data registration: ``setup_anndata`` records how to read an AnnData.

The registry is a JSON-serialisable dict stored in ``adata.uns["_scprob_setup"]`` and
saved with every model.  It holds the setup arguments, category orders, the gene names,
and the per-batch mean/variance of log library size (the prior of a learned library).
"""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version

import numpy as np
import pandas as pd

from .validate import DataError, check_obs_column, count_profile, get_matrix, log, scan_matrix

MIN_CELLS_PER_BATCH = 10  # fewer cells in a batch: warn (its batch effect is barely identifiable)

UNS_KEY = "_scprob_setup"


def _version() -> str:
    try:
        return version("scprob")
    except PackageNotFoundError:
        return "unknown"


def _categories(col: pd.Series) -> list[str]:
    if isinstance(col.dtype, pd.CategoricalDtype):
        cats = [str(c) for c in col.cat.categories if (col == c).any()]
    else:
        cats = sorted({str(v) for v in col})
    return cats


def setup_anndata(
    adata,
    layer: str | None = None,
    batch_key: str | None = None,
    labels_key: str | None = None,
    size_factor_key: str | None = None,
    categorical_covariate_keys: list[str] | None = None,
    continuous_covariate_keys: list[str] | None = None,
    model_name: str = "SCVI",
    count_data: bool = True,
) -> dict:
    """Validate ``adata`` and store its registry in ``adata.uns``; returns the registry.

    Raises :class:`DataError` (before any training) for missing keys, NaN in a
    batch/label/covariate column, NaN/Inf/negative values, or cells with zero counts.
    ``count_data=False`` (continuous measurements such as cytometry) registers the obs
    fields only: no count checks, no library-size prior; the model checks its matrix.
    """
    get_matrix(adata, layer)  # checks the layer exists
    setup_args = dict(
        layer=layer,
        batch_key=batch_key,
        labels_key=labels_key,
        size_factor_key=size_factor_key,
        categorical_covariate_keys=list(categorical_covariate_keys or []),
        continuous_covariate_keys=list(continuous_covariate_keys or []),
    )
    batch_cats = _categories(check_obs_column(adata, batch_key, "batch_key", True)) if batch_key else ["0"]
    label_cats = _categories(check_obs_column(adata, labels_key, "labels_key", True)) if labels_key else ["0"]
    cat_cov = {k: _categories(check_obs_column(adata, k, "categorical covariate", True)) for k in setup_args["categorical_covariate_keys"]}
    for k in setup_args["continuous_covariate_keys"]:
        check_obs_column(adata, k, "continuous covariate", False)
    if size_factor_key:
        sf = check_obs_column(adata, size_factor_key, "size_factor_key", False).to_numpy(dtype=float)
        if (sf <= 0).any():
            cell = adata.obs_names[np.flatnonzero(sf <= 0)[0]]
            raise DataError(f"size factors in adata.obs[{size_factor_key!r}] must be > 0; first bad cell {cell!r}.")

    if not count_data:
        registry = dict(
            model_name=model_name, scprob_version=_version(), setup_args=setup_args, n_obs=int(adata.n_obs),
            n_vars=int(adata.n_vars), var_names=[str(v) for v in adata.var_names], batch_categories=batch_cats,
            label_categories=label_cats, categorical_covariate_categories=cat_cov,
            n_continuous_cov=len(setup_args["continuous_covariate_keys"]), count_data=False,
        )
        adata.uns[UNS_KEY] = json.dumps(registry)
        return registry
    scan = scan_matrix(adata, layer)
    totals = scan["totals"]
    empty = np.flatnonzero(totals <= 0)
    if empty.size:
        raise DataError(
            f"{empty.size} cell(s) have zero total counts in {scan['where']} (first: {adata.obs_names[empty[0]]!r}); "
            "remove them, e.g. with scprob.data.drop_empty_cells(adata)."
        )
    log_lib = np.log(totals)
    codes = _codes(adata.obs[batch_key], batch_cats) if batch_key else np.zeros(adata.n_obs, dtype=np.int64)
    means = [float(log_lib[codes == b].mean()) for b in range(len(batch_cats))]
    vars_ = [float(log_lib[codes == b].var()) if (codes == b).sum() > 1 else 1.0 for b in range(len(batch_cats))]

    registry = dict(
        model_name=model_name,
        scprob_version=_version(),
        setup_args=setup_args,
        n_obs=int(adata.n_obs),
        n_vars=int(adata.n_vars),
        var_names=[str(v) for v in adata.var_names],
        batch_categories=batch_cats,
        label_categories=label_cats,
        categorical_covariate_categories=cat_cov,
        n_continuous_cov=len(setup_args["continuous_covariate_keys"]),
        library_log_means=means,
        library_log_vars=[max(v, 1e-4) for v in vars_],
        first_non_integer=scan["first_non_integer"],
        count_profile=count_profile(scan),
        data_location=scan["where"],
    )
    if batch_key:
        _warn_small_batches(codes, batch_cats, batch_key)
    adata.uns[UNS_KEY] = json.dumps(registry)
    return registry


def _warn_small_batches(codes: np.ndarray, categories: list[str], batch_key: str) -> None:
    sizes = np.bincount(codes, minlength=len(categories))
    small = [(c, int(n)) for c, n in zip(categories, sizes) if n < MIN_CELLS_PER_BATCH]
    if small:
        listed = ", ".join(f"{c!r} ({n})" for c, n in small[:10]) + (f" and {len(small) - 10} more" if len(small) > 10 else "")
        log.warning(
            "batch_key %r: %d batch(es) have fewer than %d cells: %s. Their batch effects rest on very few cells; "
            "consider merging them with similar batches or removing them.",
            batch_key, len(small), MIN_CELLS_PER_BATCH, listed,
        )


def get_registry(adata) -> dict:
    if UNS_KEY not in adata.uns:
        raise DataError("adata has not been set up: call Model.setup_anndata(adata, ...) first.")
    return json.loads(adata.uns[UNS_KEY])


def _codes(col: pd.Series, categories: list[str], what: str = "", adata=None) -> np.ndarray:
    values = col.astype(str).to_numpy()
    lookup = {c: i for i, c in enumerate(categories)}
    codes = np.fromiter((lookup.get(v, -1) for v in values), dtype=np.int64, count=len(values))
    if (codes < 0).any():
        i = int(np.flatnonzero(codes < 0)[0])
        unknown = sorted(set(values[codes < 0]))
        cell = f" (first at cell {adata.obs_names[i]!r})" if adata is not None else ""
        raise DataError(
            f"{what} has categories not seen when the model was set up: {unknown[:10]}{cell}; "
            f"known: {categories[:20]}"
        )
    return codes


def obs_arrays(adata, registry: dict) -> dict[str, np.ndarray]:
    """Registered obs columns as arrays (category codes use the registry's order)."""
    from .keys import Keys

    args = registry["setup_args"]
    n = adata.n_obs
    out: dict[str, np.ndarray] = {}
    bk, lk = args["batch_key"], args["labels_key"]
    out[Keys.BATCH] = (
        _codes(adata.obs[bk], registry["batch_categories"], f"batch_key adata.obs[{bk!r}]", adata)
        if bk
        else np.zeros(n, dtype=np.int64)
    )[:, None]
    if lk and lk in adata.obs.columns:  # no labels: no column (all cells are label 0 to the modules)
        out[Keys.LABELS] = _codes(adata.obs[lk], registry["label_categories"], f"labels_key adata.obs[{lk!r}]", adata)[:, None]
    if args["categorical_covariate_keys"]:
        out[Keys.CAT_COVS] = np.stack(
            [
                _codes(adata.obs[k], registry["categorical_covariate_categories"][k], f"adata.obs[{k!r}]", adata)
                for k in args["categorical_covariate_keys"]
            ],
            axis=1,
        )
    if args["continuous_covariate_keys"]:
        out[Keys.CONT_COVS] = adata.obs[args["continuous_covariate_keys"]].to_numpy(dtype=np.float32)
    if args["size_factor_key"]:
        out[Keys.SIZE_FACTOR] = adata.obs[args["size_factor_key"]].to_numpy(dtype=np.float32)[:, None]
    return out


def check_same_genes(adata, registry: dict) -> None:
    """Loading/applying a model needs the genes it was trained on, in the same order."""
    names = [str(v) for v in adata.var_names]
    ref = registry["var_names"]
    if names == ref:
        return
    missing = [g for g in ref if g not in set(names)]
    extra = [g for g in names if g not in set(ref)]
    if not missing and not extra:
        raise DataError("adata has the model's genes in a different order; reorder with adata[:, model_var_names].")
    raise DataError(
        f"adata's genes differ from the model's ({len(ref)} genes): {len(missing)} missing "
        f"(e.g. {missing[:5]}), {len(extra)} extra (e.g. {extra[:5]})."
    )


def transfer_setup(adata, registry: dict) -> dict:
    """Set up a new ``adata`` with a trained model's registry (categories kept)."""
    check_same_genes(adata, registry)
    args = registry["setup_args"]
    get_matrix(adata, args["layer"])
    for key in [args["batch_key"], *args["categorical_covariate_keys"], *args["continuous_covariate_keys"], args["size_factor_key"]]:
        if key:
            check_obs_column(adata, key, "registered column", key not in args["continuous_covariate_keys"] and key != args["size_factor_key"])
    own = json.loads(adata.uns[UNS_KEY]) if UNS_KEY in adata.uns else {}
    scan = scan_matrix(adata, args["layer"])
    new = dict(registry)
    new["minified"] = bool(own.get("minified", False))
    new["minified_keys"] = own.get("minified_keys") if new["minified"] else None
    new["n_obs"] = int(adata.n_obs)
    new["first_non_integer"] = scan["first_non_integer"]
    new["count_profile"] = count_profile(scan)
    new["data_location"] = scan["where"]
    obs_arrays(adata, new)  # raises on unknown categories
    adata.uns[UNS_KEY] = json.dumps(new)
    return new
