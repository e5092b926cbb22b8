"""``scprob`` command line.

    scprob demo [scvi|scyan] [--out DIR] [--max-epochs N] [--embedding umap|tsne|pca]
    scprob fit scvi|ldvae DATA.h5ad --batch-key K [--labels-key K] [--layer L]
               [--max-epochs N] [--n-latent N] [--gene-likelihood G] [--seed S]
               [--n-top-genes N | --all-genes] [--embedding umap|tsne|pca]
               [--checkpoint-every N] [--resume] --out DIR

``scprob fit`` on a file with more than 5,000 genes trains on its 2,000 most highly
variable genes (said in the log and the report) unless ``--all-genes`` or
``--n-top-genes`` is given.
    scprob annotate DATA.(fcs|h5ad|csv) --table TABLE.csv [--cofactor C | --logicle | --no-transform]
               [--no-scale] [--no-compensate] [--batch-key K] [--labels-key K] [--max-epochs N] --out DIR
    scprob integrate A.h5ad B.h5ad [C.h5ad ...] | DATA.h5mu --prob-models NB,NB[,...]
               (--graph EDGES.csv | --gtf GENES.gtf) [--batch-key K] [--labels-key K] [--layer L]
               [--max-epochs N] --out DIR

All commands also take --seed, --threads, --overwrite and -q; bad input exits with code 2
(``scprob: error: ...``) and leaves no output folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

MAX_GENES_KEPT = 5000  # above this many genes, `scprob fit` selects highly variable genes by default
DEFAULT_N_TOP_GENES = 2000


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scprob", description="Deep probabilistic models of single-cell omics.")
    sub = p.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--max-epochs", type=int, default=None,
                        help="default: scVI: scvi-tools' rule (400 for small data); Scyan: 100, early stopping; "
                             "GLUE: per stage, a budget from the data size, early stopping")
    common.add_argument("--seed", type=int, default=0)
    common.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    common.add_argument("--threads", type=int, default=None, help="CPU threads (default: cores, at most 8)")
    common.add_argument("-q", "--quiet", action="store_true")

    d = sub.add_parser("demo", parents=[common],
                       help="scvi: SCVI on the shipped mixology data; scyan: Scyan on the shipped AML CyTOF data")
    d.add_argument("model", nargs="?", choices=["scvi", "scyan"], default="scvi", help="which demo (default: scvi)")
    d.add_argument("--out", default=None, help="default: scprob_demo (scvi), scprob_demo_scyan (scyan)")
    d.add_argument("--embedding", choices=["umap", "tsne", "pca"], default="umap",
                   help="2-D map of the latent in the report (scvi demo; default umap, t-SNE if umap-learn is missing)")

    a = sub.add_parser("annotate", parents=[common], help="annotate cytometry cells with Scyan from a knowledge table")
    a.add_argument("data", help="input .fcs, .h5ad or .csv (events x channels)")
    a.add_argument("--table", required=True, help="knowledge table CSV: populations x markers, -1 / 1 / empty")
    a.add_argument("--out", required=True)
    t = a.add_mutually_exclusive_group()
    t.add_argument("--cofactor", type=float, default=None,
                   help="asinh cofactor (default: 5 for mass, 150 for flow cytometry, guessed from the data)")
    t.add_argument("--logicle", action="store_true", help="logicle transform instead of asinh")
    t.add_argument("--no-transform", action="store_true", help="the data are already transformed")
    a.add_argument("--no-scale", action="store_true", help="do not standardize the markers")
    a.add_argument("--no-compensate", action="store_true", help="ignore the FCS spillover matrix")
    a.add_argument("--batch-key", default=None)
    a.add_argument("--labels-key", default=None, help="manual labels, used only to score the annotation")

    f = sub.add_parser("fit", parents=[common], help="train SCVI or LDVAE on an .h5ad file")
    f.add_argument("model", choices=["scvi", "ldvae"])
    f.add_argument("data", help="input .h5ad")
    f.add_argument("--out", required=True)
    f.add_argument("--batch-key", default=None)
    f.add_argument("--labels-key", default=None)
    f.add_argument("--layer", default=None)
    f.add_argument("--n-latent", type=int, default=10)
    f.add_argument("--gene-likelihood", default=None, choices=["zinb", "nb", "poisson", "normal"])
    hv = f.add_mutually_exclusive_group()
    hv.add_argument("--n-top-genes", type=int, default=None,
                    help="train on this many highly variable genes (Seurat v3 flavour, across batches); default: "
                         f"{DEFAULT_N_TOP_GENES} when the file has more than {MAX_GENES_KEPT:,} genes, else all")
    hv.add_argument("--all-genes", action="store_true",
                    help=f"train on every gene even when there are more than {MAX_GENES_KEPT:,}")
    f.add_argument("--embedding", choices=["umap", "tsne", "pca"], default="umap",
                   help="2-D map of the latent in the report (default umap; t-SNE if umap-learn is missing)")
    f.add_argument("--drop-empty-cells", action="store_true", help="drop cells with zero counts instead of failing")
    f.add_argument("--checkpoint-every", type=int, default=None, metavar="N",
                   help="write a checkpoint to OUT/checkpoints/ every N epochs (atomic; a killed run loses at most N epochs)")
    f.add_argument("--resume", action="store_true",
                   help="continue from the last checkpoint in OUT/checkpoints/ (same other arguments)")

    g = sub.add_parser("integrate", parents=[common],
                       help="integrate two or more omics (e.g. scRNA + scATAC) with GLUE through a guidance graph")
    g.add_argument("data", nargs="+", metavar="DATA",
                   help="two or more .h5ad files (one per modality; modality name = file stem) or one .h5mu file")
    g.add_argument("--prob-models", required=True, metavar="NB,NB[,...]",
                   help="one prob model per modality, comma-separated, in input order (e.g. NB,NB)")
    gr = g.add_mutually_exclusive_group(required=True)
    gr.add_argument("--graph", metavar="EDGES.csv", help="guidance graph as an edge table: source,target[,weight,sign]; each link once "
                         "is enough (the reverse edges and self-loops are added)")
    gr.add_argument("--gtf", metavar="GENES.gtf",
                    help="build the graph from a GTF: the first modality's genes (gene_name) linked to the other "
                         "modalities' overlapping peaks (names like chr1:100-600)")
    g.add_argument("--batch-key", default=None, help="obs column of batches, for each modality that has it")
    g.add_argument("--labels-key", default=None,
                   help="obs column of cell types, used only to score label transfer (never given to the model)")
    g.add_argument("--layer", default=None, help="layer of counts, for each modality that has it (default X)")
    g.add_argument("--rep", choices=["auto", "none"], default="auto",
                   help="encoder input: 'auto' = PCA (expression) or LSI (peaks) of count modalities with over 100 "
                        "features (scglue's tutorial practice); 'none' = the normalized counts")
    g.add_argument("--out", required=True)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="scprob: %(message)s")
    import scprob
    from scprob.data import DataError, drop_empty_cells

    from .pipeline import prepare_out, run_pipeline

    if args.threads:
        scprob.settings.num_threads = args.threads
    if args.command == "demo" and args.out is None:
        args.out = "scprob_demo" if args.model == "scvi" else "scprob_demo_scyan"
    try:
        prepare_out(args.out, args.overwrite, resume=getattr(args, "resume", False))
        if getattr(args, "checkpoint_every", None) is not None and args.checkpoint_every < 1:
            raise ValueError(f"--checkpoint-every must be >= 1, got {args.checkpoint_every}")
        if args.command == "annotate":
            metrics = _annotate(args)
        elif args.command == "integrate":
            metrics = _integrate(args)
        elif args.command == "demo" and args.model == "scyan":
            from .annotate import run_annotate

            adata, table = scprob.data.load_aml()
            metrics = run_annotate(
                adata, table, args.out, source="shipped AML CyTOF sample (scprob.data.load_aml)", transform="none",
                scale=False, labels_key="cell_type", max_epochs=args.max_epochs, seed=args.seed,
                overwrite=args.overwrite, quiet=args.quiet,
                title="scprob demo: Scyan on AML CyTOF (14 populations, scored against manual gates)",
            )
        elif args.command == "demo":
            adata = scprob.data.load_mixology()
            metrics = run_pipeline(
                adata, "scvi", args.out, batch_key="protocol", labels_key="cell_line",
                max_epochs=args.max_epochs, seed=args.seed, overwrite=args.overwrite, embedding=args.embedding,
                title="scprob demo: SCVI on mixology (3 lung cancer cell lines, CEL-seq2 vs Drop-seq)",
            )
        else:
            from scprob.data import read_input

            adata = read_input(args.data, kinds=("h5ad",))  # DataError if missing, truncated or not AnnData
            if args.drop_empty_cells:
                adata = drop_empty_cells(adata, args.layer)
            adata, genes_note = _select_genes(adata, args)
            metrics = run_pipeline(
                adata, args.model, args.out, batch_key=args.batch_key, labels_key=args.labels_key, layer=args.layer,
                max_epochs=args.max_epochs, n_latent=args.n_latent, gene_likelihood=args.gene_likelihood,
                seed=args.seed, overwrite=args.overwrite, checkpoint_every=args.checkpoint_every, resume=args.resume,
                embedding=args.embedding, genes_note=genes_note,
            )
    except (DataError, FileExistsError, ValueError, OSError, FloatingPointError) as e:
        print(f"scprob: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(metrics, indent=2))
    return 0


def _select_genes(adata, args):
    """(AnnData to train on, a note for the report or None): the ``--n-top-genes`` most
    highly variable genes, by default 2,000 of a file with more than 5,000 genes."""
    from scprob.data import DataError

    n_top = args.n_top_genes
    if n_top is not None and n_top < 1:
        raise ValueError(f"--n-top-genes must be >= 1, got {n_top}")
    by_default = n_top is None and not args.all_genes and adata.n_vars > MAX_GENES_KEPT
    if by_default:
        n_top = DEFAULT_N_TOP_GENES
    if not n_top or n_top >= adata.n_vars:
        return adata, None
    from scprob.data.hvg import highly_variable_genes

    if args.batch_key and args.batch_key not in adata.obs.columns:
        raise DataError(f"batch_key {args.batch_key!r} is not a column of adata.obs")
    n_all = adata.n_vars
    mask = highly_variable_genes(adata, n_top, batch_key=args.batch_key, layer=args.layer)
    adata = adata[:, mask].copy()
    log = logging.getLogger("scprob")
    if by_default:
        log.info("%d genes (more than %s): training on the %d most highly variable; --all-genes keeps every gene, "
                 "--n-top-genes N keeps N", n_all, f"{MAX_GENES_KEPT:,}", adata.n_vars)
        return adata, f"the {adata.n_vars} most highly variable of {n_all}, selected by default; --all-genes keeps all"
    log.info("kept %d highly variable genes of %d", adata.n_vars, n_all)
    return adata, f"the {adata.n_vars} most highly variable of {n_all} (--n-top-genes)"


def _annotate(args) -> dict:
    from .annotate import run_annotate
    from .cytometry_input import read_input

    adata, kind = read_input(args.data)
    transform = "none" if args.no_transform else "logicle" if args.logicle else args.cofactor if args.cofactor is not None else "auto"
    return run_annotate(
        adata, args.table, args.out, input_kind=kind, source=Path(args.data).name, transform=transform,
        scale=not args.no_scale, compensate=not args.no_compensate, batch_key=args.batch_key,
        labels_key=args.labels_key, max_epochs=args.max_epochs, seed=args.seed, overwrite=args.overwrite,
        quiet=args.quiet,
    )


def _integrate(args) -> dict:
    from .integrate import read_modalities, run_integrate

    adatas = read_modalities(args.data)
    return run_integrate(
        adatas, args.prob_models, args.out, graph_csv=args.graph, gtf=args.gtf, batch_key=args.batch_key,
        labels_key=args.labels_key, layer=args.layer, max_epochs=args.max_epochs, seed=args.seed, rep=args.rep,
        overwrite=args.overwrite, quiet=args.quiet, source=", ".join(Path(p).name for p in args.data),
    )


if __name__ == "__main__":
    sys.exit(main())
