"""Plain-text descriptions of a model's data registry (``view_anndata_setup``,
``view_setup_args``) and scvi-tools' ``summary_stats``."""

from __future__ import annotations


def _describe_setup_args(reg: dict, model_name: str) -> str:
    lines = [f"Setup arguments of {model_name}.setup_anndata:"]
    lines += [f"  {k}: {v!r}" for k, v in reg["setup_args"].items()]
    return "\n".join(lines)


def _summary_stats(reg: dict) -> dict[str, int]:
    """scvi-tools' ``summary_stats`` from a registry."""
    args = reg["setup_args"]
    return dict(n_cells=int(reg["n_obs"]), n_vars=int(reg["n_vars"]), n_batch=len(reg["batch_categories"]),
                n_labels=len(reg["label_categories"]),
                n_extra_categorical_covs=len(args.get("categorical_covariate_keys") or []),
                n_extra_continuous_covs=len(args.get("continuous_covariate_keys") or []))


def _describe_registry(reg: dict, model_name: str, hide_state_registries: bool = False) -> str:
    args = reg["setup_args"]
    where = reg.get("data_location") or (f"adata.layers[{args['layer']!r}]" if args.get("layer") else "adata.X")
    stats = _summary_stats(reg)
    lines = [_describe_setup_args(reg, model_name), "Summary:", f"  n_cells: {stats.pop('n_cells')}",
             f"  n_vars: {stats.pop('n_vars')}", f"  counts: {where}", *(f"  {k}: {v}" for k, v in stats.items())]
    if reg.get("minified"):
        lines.append(f"  minified: {reg.get('minified_type', 'latent_posterior_parameters')} "
                     f"(obsm keys {reg.get('minified_keys')})")
    if not hide_state_registries:
        lines.append("Categories (model order = codes 0, 1, ...):")
        if args.get("batch_key"):
            lines.append(f"  batch ({args['batch_key']}): {reg['batch_categories']}")
        if args.get("labels_key"):
            lines.append(f"  labels ({args['labels_key']}): {reg['label_categories']}")
        for k, cats in (reg.get("categorical_covariate_categories") or {}).items():
            lines.append(f"  {k}: {cats}")
    return "\n".join(lines)
