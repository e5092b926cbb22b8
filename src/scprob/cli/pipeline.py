"""The train-and-report pipeline behind ``scprob demo`` and ``scprob fit``.

Everything is written into a temporary folder beside ``out`` and renamed into place at
the end, so a failed run never leaves a half-written result.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger("scprob")

MODELS = ("scvi", "ldvae")


CHECKPOINTS = "checkpoints"


def prepare_out(out: str | Path, overwrite: bool, resume: bool = False) -> Path:
    """The output folder, checked: empty or absent unless ``overwrite``; with ``resume`` it
    must hold ``checkpoints/last.ckpt`` (and only checkpoints, or a finished run's outputs)."""
    out = Path(out)
    if resume:
        if not (out / CHECKPOINTS / "last.ckpt").exists():
            raise FileNotFoundError(f"--resume: no checkpoint in {out / CHECKPOINTS} (run with --checkpoint-every N first)")
        return out
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"output folder {out} exists and is not empty; pass --overwrite to replace it.")
    return out


@contextlib.contextmanager
def staged_output(out: Path) -> Iterator[Path]:
    """A temporary folder beside ``out``, renamed into place when the block succeeds and
    removed whatever happens: a failed run never leaves a half-written ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_pipeline(
    adata,
    model_name: str,
    out: str | Path,
    batch_key: str | None,
    labels_key: str | None = None,
    layer: str | None = None,
    max_epochs: int | None = None,
    n_latent: int = 10,
    gene_likelihood: str | None = None,
    seed: int = 0,
    overwrite: bool = False,
    title: str | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    embedding: str = "umap",
    genes_note: str | None = None,
) -> dict:
    """Set up, train, evaluate and write ``out/{adata.h5ad, model/, metrics.json,
    report.html, figures/}``.  Returns the metrics dict.

    ``checkpoint_every``: keep a checkpoint of training in ``out/checkpoints/`` every that
    many epochs; ``resume``: continue from the one there (same other arguments).  The
    checkpoints stay in ``out/checkpoints/`` next to the outputs.

    The report's embedding is a UMAP of the latent (``embedding="tsne"`` / ``"pca"``
    otherwise), coloured by batch and by labels, or, without labels, by Leiden clusters
    of the latent (``adata.obs["leiden"]``, also in ``clusters.csv``).  ``genes_note``
    (e.g. how genes were selected) goes into the report's summary."""
    import scprob
    from scprob.metrics import integration_metrics
    from scprob.models import LDVAE, SCVI
    from scprob.plot import plot_embedding
    from scprob.report import EMBEDDINGS, cluster_latent, embed_latent, plot_training_curves, write_report

    if model_name not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model_name!r}")
    if embedding not in EMBEDDINGS:
        raise ValueError(f"embedding must be one of {EMBEDDINGS}, got {embedding!r}")
    out = prepare_out(out, overwrite, resume)
    cls = SCVI if model_name == "scvi" else LDVAE
    scprob.settings.seed = seed
    log.info("[1/5] validating and registering %d cells x %d genes", adata.n_obs, adata.n_vars)
    cls.setup_anndata(adata, layer=layer, batch_key=batch_key, labels_key=labels_key)
    kwargs = dict(n_latent=n_latent)
    if gene_likelihood:
        kwargs["gene_likelihood"] = gene_likelihood
    model = cls(adata, **kwargs)  # raises on data the likelihood cannot model

    with staged_output(out) as tmp:
        log.info("[2/5] training %s", cls.__name__)
        t0 = time.time()
        ckdir = out / CHECKPOINTS
        if checkpoint_every or resume:
            model.train(max_epochs=max_epochs, seed=seed, checkpoint_dir=ckdir, checkpoint_every_n_epochs=checkpoint_every or 1,
                        resume_from=ckdir if resume else None)
        else:
            model.train(max_epochs=max_epochs, seed=seed)
        train_s = time.time() - t0
        log.info("[3/5] latent representation and metrics")
        latent = model.get_latent_representation()
        key = "X_scvi" if model_name == "scvi" else "X_ldvae"
        adata.obsm[key] = latent
        batches = adata.obs[batch_key].to_numpy() if batch_key else np.zeros(adata.n_obs)
        metrics = integration_metrics(latent, batches, adata.obs[labels_key].to_numpy() if labels_key else None)
        if not batch_key:
            metrics.pop("batch_silhouette", None)
        clusters = cluster_method = None
        if not labels_key:  # no labels: the latent's own clusters stand in for them
            clusters, cluster_method = cluster_latent(latent, seed=seed)
            adata.obs[cluster_method] = pd.Categorical(clusters, categories=sorted(set(clusters), key=int))
            metrics["n_clusters"] = int(len(set(clusters)))
            log.info("%d %s clusters of the latent space (adata.obs[%r])", metrics["n_clusters"], cluster_method.title(),
                     cluster_method)
        hist = model.history
        metrics["elbo_train_final"] = float(hist["elbo_train"].iloc[-1, 0])
        if "elbo_validation" in hist:
            metrics["elbo_validation_final"] = float(hist["elbo_validation"].iloc[-1, 0])
        metrics = {k: v for k, v in metrics.items() if v == v}  # drop NaN
        log.info("[4/5] figures and report")
        figdir = tmp / "figures"
        figdir.mkdir()
        plot_training_curves(hist, figdir / "training_curves.png")
        coords, method = embed_latent(latent, embedding, seed=seed)
        colors = {}
        if batch_key:
            colors[f"batch ({batch_key})"] = adata.obs[batch_key].to_numpy()
        if labels_key:
            colors[f"label ({labels_key})"] = adata.obs[labels_key].to_numpy()
        if clusters is not None:
            colors[f"{cluster_method.title()} clusters of the latent"] = clusters
            pd.DataFrame({cluster_method: clusters}, index=adata.obs_names).to_csv(tmp / "clusters.csv")
        if not colors:
            colors["all cells"] = np.zeros(adata.n_obs)
        plot_embedding(coords, colors, figdir / "embedding.png", method)
        adata.obsm[f"{key}_2d"] = coords
        if model_name == "ldvae":
            model.get_loadings().to_csv(tmp / "loadings.csv")
        log.info("[5/5] writing outputs")
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
        model.save(tmp / "model")
        if (checkpoint_every or resume) and ckdir.exists():
            shutil.copytree(ckdir, tmp / CHECKPOINTS)  # kept with the outputs
        adata.write_h5ad(tmp / "adata.h5ad", compression="gzip")
        summary = dict(
            model=cls.__name__, cells=adata.n_obs, genes=adata.n_vars if genes_note is None else f"{adata.n_vars} ({genes_note})",
            batch_key=batch_key, labels_key=labels_key,
            epochs=len(hist["elbo_train"]), training_seconds=round(train_s, 1), seed=seed,
            scprob_version=scprob.__version__,
        )
        figures = [("Training curves (train solid, validation dashed; y-axis clipped to the epochs after the first "
                    "fifth so the late epochs are readable)", "figures/training_curves.png"),
                   (f"{method} of the latent space" + (f" (clusters: {cluster_method.title()} on the latent's "
                                                         "15-nearest-neighbour graph)" if clusters is not None else ""),
                    "figures/embedding.png")]
        write_report(tmp / "report.html", title or f"scprob {cls.__name__} report", summary, metrics, figures)
    log.info("done: %s", out)
    return metrics
