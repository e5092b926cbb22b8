"""The Scyan pipeline behind ``scprob annotate`` and ``scprob demo scyan``.

Writes ``out/{annotated.h5ad, populations.csv, metrics.json, model/, report.html,
figures/}`` (+ ``annotated.fcs`` / ``annotated.csv`` for FCS / CSV input: the input's
values with the prediction added).  Everything goes into a temporary folder beside
``out`` that is renamed into place at the end, so a failed run leaves nothing behind.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from scprob.data import DataError

from .cytometry_input import match_markers, preprocess
from .pipeline import prepare_out, staged_output

log = logging.getLogger("scprob")

POP_KEY = "scyan_pop"
UNASSIGNED = "unassigned"
MAX_EMBED = 5000  # cells shown in the 2-D embedding (t-SNE cost grows fast)


def population_counts(pops: pd.Series, order: list[str], batches: pd.Series | None = None) -> pd.DataFrame:
    """Cells and percentages per population (table order, then ``"unassigned"``), overall
    and per batch (``count_<batch>``, ``percent_<batch>``: % of that batch)."""
    labels = pd.Series(np.asarray(pops.astype(object).fillna(UNASSIGNED)).astype(str))
    rows = list(order) + [UNASSIGNED]
    df = pd.DataFrame(index=pd.Index(rows, name="population"))
    df["count"] = labels.value_counts().reindex(rows, fill_value=0).astype(int)
    df["percent"] = (100 * df["count"] / max(len(labels), 1)).round(2)
    if batches is not None:
        b = pd.Series(np.asarray(batches).astype(str))
        for name in sorted(b.unique()):
            c = labels[(b == name).to_numpy()].value_counts().reindex(rows, fill_value=0).astype(int)
            df[f"count_{name}"] = c
            df[f"percent_{name}"] = (100 * c / max(int(c.sum()), 1)).round(2)
    return df


def label_metrics(truth, pops: pd.Series) -> dict:
    """Accuracy (unassigned counts as wrong), accuracy on assigned cells and macro-F1 over
    the manual labels; cells without a label are left out."""
    from sklearn.metrics import f1_score

    t = pd.Series(np.asarray(truth, dtype=object))
    p = pd.Series(np.asarray(pops.astype(object).fillna(UNASSIGNED), dtype=object)).astype(str)
    keep = t.notna().to_numpy()
    t, p = t[keep].astype(str).to_numpy(), p[keep].to_numpy()
    if not len(t):
        raise DataError("the labels column has no labelled cell")
    classes = sorted(set(t))
    if not set(classes) & set(p):
        log.warning("no manual label is a population name of the table: accuracy is 0 by construction")
    assigned = p != UNASSIGNED
    return {
        "accuracy": float(np.mean(t == p)),
        "macro_f1": float(f1_score(t, p, labels=classes, average="macro", zero_division=0)),
        "accuracy_assigned": float(np.mean(t[assigned] == p[assigned])) if assigned.any() else float("nan"),
        "n_labelled_cells": int(len(t)),
    }


def run_annotate(
    adata,
    table,
    out: str | Path,
    input_kind: str = "h5ad",
    source: str = "",
    transform: str | float = "auto",
    scale: bool = True,
    compensate: bool = True,
    batch_key: str | None = None,
    labels_key: str | None = None,
    max_epochs: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
    quiet: bool = False,
    title: str | None = None,
) -> dict:
    """Preprocess, fit Scyan, annotate and write the outputs (see the module docstring).
    ``labels_key``: manual labels used only for evaluation (removed before the model
    sees the data).  Returns the metrics dict."""
    import scprob
    from scprob.data.table import read_table
    from scprob.models.scyan import Scyan, marker_matrix

    out = prepare_out(out, overwrite)
    kt = read_table(table)
    if adata.X is None:
        raise DataError("the data have no X matrix (events x channels)")
    log.info("[1/6] checking %d cells x %d channels against the table (%d populations x %d markers)",
             adata.n_obs, adata.n_vars, len(kt.populations), len(kt.markers))
    obs_cols = [str(c) for c in adata.obs.columns]
    var0 = adata.var.copy()
    match_markers(adata, kt.markers)
    for key, what in ((batch_key, "--batch-key"), (labels_key, "--labels-key")):
        if key and key not in adata.obs.columns:
            raise DataError(f"{what} {key!r} is not a column of the data's obs (columns: {obs_cols[:30]})")
    labels = adata.obs.pop(labels_key).to_numpy() if labels_key else None
    raw = adata.X.copy()
    log.info("[2/6] preprocessing")
    prep = preprocess(adata, kt.markers, transform=transform, scale=scale, compensate=compensate)
    if prep.changed:
        adata.layers["raw"] = raw  # the input's values
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        model = Scyan(adata, kt, batch_key=batch_key, seed=seed)
    for w in caught:  # e.g. "the data look untransformed": into the log, not a Python warning
        log.warning("%s", w.message)

    with staged_output(out) as tmp:
        log.info("[3/6] training Scyan (%d populations, %d markers)", len(kt.populations), len(kt.markers))
        t0 = time.time()
        kw = {} if max_epochs is None else {"max_epochs": max_epochs}
        model.fit(enable_progress_bar=not quiet, **kw)
        train_s = time.time() - t0
        log.info("[4/6] annotating cells")
        pops = model.predict()
        adata.obsm["X_scyan"] = model.get_latent_representation()
        if labels is not None:
            adata.obs[labels_key] = pd.Categorical(labels)
        batches = adata.obs[batch_key].astype(str) if batch_key else None
        counts = population_counts(pops, kt.populations, batches)
        hist = model.history
        metrics = {"fraction_assigned": float(pops.notna().mean()), "elbo_train_final": float(hist["elbo_train"].iloc[-1, 0])}
        if labels is not None:
            metrics.update(label_metrics(labels, pops))
        metrics = {k: v for k, v in metrics.items() if v == v}
        log.info("%d of %d cells assigned%s", int(pops.notna().sum()), adata.n_obs,
                 f"; accuracy {metrics['accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f}" if labels is not None else "")

        log.info("[5/6] figures and report")
        figures = _figures(tmp, adata, model, marker_matrix(adata, kt.markers), pops, kt, batch_key, labels_key, seed)
        summary = dict(
            input=source, technology=f"{prep.technology} cytometry ({prep.reason})" if prep.reason else "not guessed",
            preprocessing="; ".join(prep.steps), cells=adata.n_obs, markers=len(kt.markers),
            populations=len(kt.populations), batch_key=batch_key, labels_key=labels_key,
            epochs=len(hist["elbo_train"]), training_seconds=round(train_s, 1), seed=seed,
            scprob_version=scprob.__version__,
        )
        from scprob.report import write_report

        write_report(tmp / "report.html", title or f"scprob annotate: Scyan on {source or 'data'}", summary, metrics,
                     figures, tables=[("Populations", counts)])

        log.info("[6/6] writing outputs")
        counts.to_csv(tmp / "populations.csv")
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
        model.save(tmp / "model")
        _write_h5ad(adata, tmp / "annotated.h5ad")
        if input_kind in ("fcs", "csv"):
            _write_annotated(adata, raw, var0, obs_cols, input_kind, tmp)
    log.info("done: %s", out)
    return metrics


def _figures(tmp: Path, adata, model, X, pops, kt, batch_key, labels_key, seed) -> list[tuple[str, str]]:
    from scprob.plot import (
        embed_2d,
        plot_confusion,
        plot_embedding,
        plot_marker_heatmap,
        plot_population_sizes,
        plot_training_curves,
    )

    figdir = tmp / "figures"
    figdir.mkdir()
    order = kt.populations
    plot_marker_heatmap(X, kt.markers, pops, figdir / "marker_heatmap.png", table=kt.rho, order=order)
    batches = adata.obs[batch_key].to_numpy() if batch_key else None
    plot_population_sizes(pops, figdir / "population_sizes.png", batches=batches, order=order)
    idx = np.arange(adata.n_obs)
    if len(idx) > MAX_EMBED:
        idx = np.sort(np.random.default_rng(seed).choice(len(idx), MAX_EMBED, replace=False))
    coords, method = embed_2d(adata.obsm["X_scyan"][idx], seed=seed)
    colors = {"predicted population": pops.astype(object).fillna(UNASSIGNED).to_numpy()[idx]}
    if labels_key:
        colors[f"manual label ({labels_key})"] = adata.obs[labels_key].to_numpy()[idx]
    if batch_key:
        colors[f"batch ({batch_key})"] = adata.obs[batch_key].to_numpy()[idx]
    plot_embedding(coords, colors, figdir / "embedding.png", method)
    plot_training_curves(model.history, figdir / "training_curve.png", panels=[("elbo", "negative log-likelihood per cell")])
    shown = "" if len(idx) == adata.n_obs else f", {len(idx)} random cells"
    figs = [
        ("Median marker value (preprocessed) per predicted population", "figures/marker_heatmap.png"),
        ("Population sizes", "figures/population_sizes.png"),
        (f"{method} of the Scyan latent space{shown}", "figures/embedding.png"),
        ("Training loss", "figures/training_curve.png"),
    ]
    if labels_key:
        plot_confusion(adata.obs[labels_key].to_numpy(), pops, figdir / "confusion.png", order=order)
        figs.append(("Manual labels vs predicted populations (never given to the model)", "figures/confusion.png"))
    return figs


def _write_h5ad(adata, path: Path) -> None:
    """h5ad cannot store keys with '/': drop such FCS keywords from ``uns["fcs"]["text"]``."""
    fcs = adata.uns.get("fcs")
    if isinstance(fcs, dict) and isinstance(fcs.get("text"), dict):
        fcs["text"] = {k: v for k, v in fcs["text"].items() if "/" not in str(k)}
    adata.write_h5ad(path, compression="gzip")


def _write_annotated(adata, raw, var0: pd.DataFrame, obs_cols: list[str], kind: str, tmp: Path) -> None:
    """The input's values and obs columns plus the prediction, as FCS or CSV."""
    import anndata as ad
    import scipy.sparse as sp

    pred = [POP_KEY] + [c for c in adata.obs.columns if str(c).startswith(f"{POP_KEY}_")]
    cols = [c for c in obs_cols if c not in pred] + pred
    X = raw.toarray() if sp.issparse(raw) else np.asarray(raw)
    o = ad.AnnData(X=X, obs=adata.obs[cols].copy(), var=var0)
    if kind == "fcs":
        from scprob.data.fcs import write_fcs

        if "fcs" in adata.uns:
            o.uns["fcs"] = adata.uns["fcs"]
        write_fcs(o, tmp / "annotated.fcs", obs_columns=cols)
    else:
        from scprob.data.cytometry import write_csv

        write_csv(o, tmp / "annotated.csv", obs_columns=cols)

