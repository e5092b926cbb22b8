"""The GLUE pipeline behind ``scprob integrate``.

Reads two or more modalities (``.h5ad`` files, modality key = file stem, or one ``.h5mu``),
builds or reads the guidance graph, checks everything, trains GLUE and writes
``out/{<modality>.h5ad (obsm["X_glue"]), feature_embeddings.csv, model/, metrics.json,
report.html, figures/}``.  Everything goes into a temporary folder beside ``out`` that is
renamed into place at the end, so a failed run leaves nothing behind.

Metrics: FOSCTTM for each pair of modalities sharing obs names (the shared names are taken
as the same cells), and the accuracy of a 5-nearest-neighbour label transfer from the
first modality to each other one when ``labels_key`` is in both.  The labels are never
given to the model.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd

from scprob.data import DataError, read_input

from .pipeline import prepare_out, staged_output

log = logging.getLogger("scprob")

K_TRANSFER = 5
MAX_EMBED = 5000  # cells in the joint t-SNE


def read_modalities(paths: list[str | Path]) -> dict:
    """Modality key -> AnnData from two or more ``.h5ad`` files (key: the file's stem) or
    one ``.h5mu`` file (key: the MuData ``mod`` key), in input order.  Files are read by
    :func:`scprob.data.read_input` (a DataError names a truncated or foreign file)."""
    paths = [Path(p) for p in paths]
    for p in paths:
        if not p.is_file():
            raise DataError(f"input file {p} does not exist")
    kinds = {p.suffix.lower() for p in paths}
    if not kinds <= {".h5ad", ".h5mu"}:
        bad = next(p for p in paths if p.suffix.lower() not in (".h5ad", ".h5mu"))
        raise DataError(f"inputs must be .h5ad files (one per modality) or one .h5mu file, got {bad.name!r}")
    if ".h5mu" in kinds:
        if len(paths) != 1:
            raise DataError("give one .h5mu file (all modalities) or two or more .h5ad files, not both or several .h5mu")
        mdata = read_input(paths[0], kinds=("h5mu",))
        adatas = {str(k): mdata.mod[k] for k in mdata.mod}
    else:
        keys = [p.stem for p in paths]
        dup = sorted({k for k in keys if keys.count(k) > 1})
        if dup:
            raise DataError(f"the modality key is the file name without .h5ad, and {dup} names more than one input: "
                            "rename the files so that their stems differ")
        adatas = {k: read_input(p, kinds=("h5ad",)) for k, p in zip(keys, paths)}
    if len(adatas) < 2:
        raise DataError(f"integration needs two or more modalities; {paths[0].name} has {list(adatas)}")
    return adatas


def parse_prob_models(spec: str, keys: list[str]) -> dict[str, str]:
    """One registered prob model name per modality (comma-separated, in input order)."""
    from scprob.nn.prob_models import available_prob_models

    names = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in available_prob_models()]
    if unknown:
        raise DataError(f"unknown prob model(s) {unknown} in --prob-models; registered: {', '.join(available_prob_models())}")
    if len(names) != len(keys):
        raise DataError(f"--prob-models gives {len(names)} name(s) ({','.join(names)}) for {len(keys)} modalities "
                        f"({', '.join(keys)}): give one per modality, in input order")
    return dict(zip(keys, names))


def read_edges(path: str | Path) -> pd.DataFrame:
    """An edge table CSV with columns source, target[, weight, sign] (values are checked by the model)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"graph file {path} does not exist")
    try:
        df = pd.read_csv(path, dtype={"source": str, "target": str})
    except ValueError as e:
        raise DataError(f"cannot read the edge table {path}: {e}") from None
    missing = [c for c in ("source", "target") if c not in df.columns]
    if missing:
        raise DataError(f"edge table {path} lacks column(s) {missing}; it needs source,target[,weight,sign] "
                        f"(columns: {list(df.columns)[:10]})")
    return df


def gtf_graph(adatas: dict, gtf: str | Path):
    """Guidance graph from a GTF: the first modality's genes linked to the other modalities'
    peaks (names like ``chr1:100-600``) overlapping the gene body or its 2 kb promoter."""
    from scprob.data.guidance import get_gene_annotation, rna_anchored_guidance_graph

    rna, *others = adatas.values()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        get_gene_annotation(rna, gtf=gtf)
        graph = rna_anchored_guidance_graph(rna, *others)
    for w in caught:  # e.g. "12 of 2000 genes have no coordinates": into the log
        log.warning("%s", w.message)
    return graph


def _key_for(adatas: dict, key: str | None, flag: str, where: str = "obs") -> dict[str, str | None]:
    """``key`` for the modalities whose ``obs`` columns (or ``layers``) hold it; an error if none does."""
    if not key:
        return dict.fromkeys(adatas)
    has = {k: key if key in (a.obs.columns if where == "obs" else a.layers) else None for k, a in adatas.items()}
    if not any(has.values()):
        raise DataError(f"{flag} {key!r} is not in the {where} of any modality ({', '.join(adatas)})")
    lacking = [k for k, v in has.items() if v is None]
    if lacking:
        log.info("%s %r: not in modality %s, used for %s", flag, key, ", ".join(lacking), ", ".join(k for k, v in has.items() if v))
    return has


def pair_metrics(adatas: dict, latents: dict, labels: dict) -> dict:
    """FOSCTTM of every pair sharing obs names, and 5-NN label transfer from the first
    modality to each other one with labels."""
    from scprob.metrics import foscttm, label_transfer

    out: dict = {"foscttm": {}, "n_paired": {}, "label_transfer": {}}
    for a, b in combinations(adatas, 2):
        na, nb = adatas[a].obs_names, adatas[b].obs_names
        shared = na[na.isin(nb)]
        if len(shared) < 2:
            continue
        if not (na.is_unique and nb.is_unique):
            log.warning("%s and %s share obs names but some are duplicated: no FOSCTTM", a, b)
            continue
        if len(shared) < 0.1 * min(len(na), len(nb)):
            log.warning("only %d cells share obs names between %s and %s: FOSCTTM takes them as the same cells", len(shared), a, b)
        out["foscttm"][f"{a}/{b}"] = foscttm(latents[a][na.get_indexer(shared)], latents[b][nb.get_indexer(shared)])
        out["n_paired"][f"{a}/{b}"] = int(len(shared))
    ref, *queries = adatas
    if labels.get(ref) is not None:
        r = pd.Series(labels[ref])
        for q in queries:
            if labels.get(q) is None:
                continue
            lq = pd.Series(labels[q])
            if r.notna().any() and lq.notna().any():
                out["label_transfer"][f"{ref}->{q}"] = label_transfer(
                    latents[ref][r.notna().to_numpy()], r.dropna().to_numpy(), latents[q][lq.notna().to_numpy()],
                    lq.dropna().to_numpy(), k=K_TRANSFER)
    return out


def run_integrate(adatas: dict, prob_models: str, out: str | Path, graph_csv: str | Path | None = None, rep: str = "auto",
                  gtf: str | Path | None = None, batch_key: str | None = None, labels_key: str | None = None,
                  layer: str | None = None, max_epochs: int | None = None, seed: int = 0, overwrite: bool = False,
                  quiet: bool = False, source: str = "") -> dict:
    """Check, train GLUE, evaluate and write the outputs (see the module docstring).
    Returns the metrics dict."""
    import scprob
    from scprob.models import GLUE

    out = prepare_out(out, overwrite)
    if (graph_csv is None) == (gtf is None):
        raise DataError("give exactly one of --graph EDGES.csv or --gtf GENES.gtf")
    keys = list(adatas)
    models = parse_prob_models(prob_models, keys)
    log.info("[1/5] checking %s", ", ".join(f"{k} ({a.n_obs} cells x {a.n_vars} features, {models[k]})" for k, a in adatas.items()))
    batches = _key_for(adatas, batch_key, "--batch-key")
    label_keys = _key_for(adatas, labels_key, "--labels-key")
    layers = _key_for(adatas, layer, "--layer", where="layers")
    graph = read_edges(graph_csv) if graph_csv is not None else gtf_graph(adatas, gtf)
    scprob.settings.seed = seed  # also seeds the PCA / LSI of use_rep="auto"
    for k, a in adatas.items():
        log.info("%s: configuring", k)
        GLUE.configure_dataset(a, models[k], use_layer=layers[k], use_batch=batches[k],  # labels: never
                               use_rep="auto" if rep == "auto" else None)
    model = GLUE(adatas, graph, random_state=seed)  # raises if the graph misses features
    log.info("guidance graph: %d vertices, %d edges (with self-loops)", len(model.vertices), len(model.edges))

    with staged_output(out) as tmp:
        log.info("[2/5] training GLUE")
        t0 = time.time()
        model.train(max_epochs=max_epochs, seed=seed, enable_progress_bar=not quiet)
        fit_s = time.time() - t0
        hist = model.history
        stages = hist["stage"].iloc[:, 0]
        epochs = {str(s): int((stages == s).sum()) for s in dict.fromkeys(stages)}
        for s, n in epochs.items():
            last = hist["validation_loss"].loc[stages.index[stages == s]].iloc[-1, 0] if "validation_loss" in hist else float("nan")
            log.info("GLUE %s: %d epochs, validation loss %.4g", s, n, last)

        log.info("[3/5] embeddings and metrics")
        latents = {k: model.encode_data(k, a) for k, a in adatas.items()}  # also obsm["X_glue"]
        labels = {k: a.obs[label_keys[k]].to_numpy() if label_keys[k] else None for k, a in adatas.items()}
        metrics = pair_metrics(adatas, latents, labels)
        if metrics["label_transfer"]:
            metrics["label_transfer_k"] = K_TRANSFER
        metrics.update(
            fit_seconds=round(fit_s, 2), epochs=epochs, n_cells={k: int(a.n_obs) for k, a in adatas.items()},
            n_features={k: len(model.registries[k]["features"]) for k, a in adatas.items()},
        )
        for what in ("foscttm", "label_transfer"):
            for name, v in metrics[what].items():
                log.info("%s %s: %.4f", "FOSCTTM" if what == "foscttm" else "label transfer", name, v)

        log.info("[4/5] figures and report")
        figures = _figures(tmp, model, latents, labels, seed)
        shown = {f"FOSCTTM {p} ({metrics['n_paired'][p]} paired cells; lower is better)": v for p, v in metrics["foscttm"].items()}
        shown.update({f"label transfer {p} ({K_TRANSFER}-NN accuracy)": v for p, v in metrics["label_transfer"].items()})
        shown.update({f"epochs ({s})": n for s, n in epochs.items()})
        shown["fit seconds"] = metrics["fit_seconds"]
        table = pd.DataFrame({
            "prob model": models, "cells": metrics["n_cells"], "features": {k: a.n_vars for k, a in adatas.items()},
            "features used": metrics["n_features"], "layer": layers, "batch key": batches, "labels key": label_keys,
        }).rename_axis("modality").fillna("").astype(str)
        graph_desc = (f"{Path(graph_csv).name} (edge table)" if graph_csv is not None
                      else f"from {Path(gtf).name}: {keys[0]} genes linked to overlapping peaks (gene body + 2 kb promoter)")
        summary = dict(
            input=source, modalities=", ".join(keys), guidance_graph=f"{graph_desc}; {len(model.vertices)} vertices, "
            f"{len(model.edges)} edges", latent_dim=model.init_params["latent_dim"], batch_key=batch_key,
            labels_key=f"{labels_key} (evaluation only, not given to the model)" if labels_key else None,
            epochs=", ".join(f"{s}: {n}" for s, n in epochs.items()), training_seconds=round(fit_s, 1), seed=seed,
            scprob_version=scprob.__version__,
        )
        from scprob.report import write_report

        write_report(tmp / "report.html", f"scprob integrate: GLUE on {', '.join(keys)}", summary, shown, figures,
                     tables=[("Modalities", table)])

        log.info("[5/5] writing outputs")
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
        model.feature_embeddings().to_csv(tmp / "feature_embeddings.csv")
        model.save(tmp / "model")
        for k, a in adatas.items():
            a.write_h5ad(tmp / f"{k}.h5ad", compression="gzip")
    log.info("done: %s", out)
    return metrics


def _figures(tmp: Path, model, latents: dict, labels: dict, seed: int) -> list[tuple[str, str]]:
    from scprob.plot import embed_joint, plot_joint_embedding, plot_staged_curves

    figdir = tmp / "figures"
    figdir.mkdir()
    panels = [("loss", "total loss"), *[(f"x_{k}_nll", f"{k}: negative log-likelihood") for k in latents],
              ("dsc_loss", "discriminator loss")]
    hist = {**model.history, **{f"loss_{s}": model.history[f"{s}_loss"] for s in ("train", "validation")
                                if f"{s}_loss" in model.history}}
    panels = [p for p in panels if f"{p[0]}_train" in hist]
    plot_staged_curves(hist, figdir / "training_curves.png", panels)
    coords, modality, picks, method = embed_joint(latents, MAX_EMBED, seed)
    lab = None
    if any(v is not None for v in labels.values()):
        lab = np.concatenate([labels[k][i] if labels[k] is not None else np.full(len(i), None, dtype=object)
                              for k, i in picks.items()]).astype(object)
    plot_joint_embedding(coords, modality, figdir / "embedding.png", labels=lab, method=method)
    n_all = sum(len(z) for z in latents.values())
    drawn = "" if len(coords) == n_all else f", {len(coords)} of {n_all} cells drawn at random"
    return [
        ("Training curves per epoch (train solid, validation dashed); the stages (pretrain, fine-tune) are marked "
         "by a dotted line and shading", "figures/training_curves.png"),
        (f"{method} (scikit-learn) of the joint GLUE embedding of all modalities{drawn}, "
         f"coloured by modality{' and by label' if lab is not None else ''}", "figures/embedding.png"),
    ]
