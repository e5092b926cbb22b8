"""The peer side of the GLUE benchmarks: scglue (PyPI ``scglue==0.4.1``), run with
benchmarks/.envs/glue/bin/python (made by benchmarks/make_glue_env.sh).  Never imports scprob.

    benchmarks/.envs/glue/bin/python benchmarks/_glue_worker.py --data synth|pbmc \\
        --threads 1 --seed 0 --max-epochs-per-stage 60 --out result.json [--emb-out emb.npz]

Data (under <repo root>/../shared/data):

* ``synth``: glue_synth/{rna,atac}.h5ad, guidance_edges.csv (peak-gene links), truth.csv (the
  hidden RNA-ATAC cell pairing and cell types).  RNA: all 500 genes, raw counts in
  layers["counts"] (X holds the same counts); ATAC: 1,500 peaks, counts in X.
* ``pbmc``: pbmc_cite_2batch.h5ad (400 CITE-seq PBMCs, 2 batches) split into two unpaired
  modalities: RNA (X counts) and protein (obsm["protein_counts"], 14 antibodies), protein cells
  renamed with a "prot_" prefix; antibody -> gene links from ``ADT_GENES`` below.

Preprocessing follows scglue's tutorial (docs "Stage 1: Data preprocessing"):
RNA: counts kept in layers["counts"], [pbmc: 2,000 HVGs, seurat_v3 on counts, + the genes linked
to an antibody], normalize_total, log1p, scale, PCA 100 comps -> use_rep="X_pca";
ATAC: scglue.data.lsi(n_components=100, n_iter=15) -> use_rep="X_lsi";
protein: no use_rep (14 features is already below the 50-d latent; scglue's NB encoder
library-size-normalizes and log1p's the raw counts itself; a 13-d PCA would be < latent_dim,
which scglue warns against).  All: prob_model "NB".
Guidance graph: a networkx MultiDiGraph with each link in both directions (type fwd/rev) plus a
self-loop (weight 1, sign 1) on every feature, as scglue.genomics.rna_anchored_guidance_graph
builds it.  Fit: scglue.models.fit_SCGLUE(adatas, graph, init_kws={"random_seed": seed},
fit_kws={"directory": tmp, "max_epochs": N}); N caps each of its two stages (pretraining and
fine-tuning, the latter after the balancing-weight estimation).  Without a cap scglue picks
max_epochs itself (synth: 858, pbmc: 4272; 6x its align_burnin).  With N=60 neither stage stops
early (scglue's auto patience is 72 on synth, 356 on pbmc), and the fine-tuning stage stays inside
its auto align_burnin (143 / 712 epochs): the discriminator sees annealed noise on the embeddings
throughout and LR reduction / early stopping, which wait for the burn-in, never start.  In
pretraining align_burnin is infinite (scglue's own choice), so alignment starts in fine-tuning.

Output: one JSON line on stdout (scglue's own INFO log lines also go to stdout, prefixed
"[INFO]"; --quiet hides them), also written to --out.  Fields: ok/error, fit_s (wall clock of
fit_SCGLUE only: both stages + the balancing step + model building), fit_cpu_s and
fit_children_cpu_s (scglue shuffles the graph in one background process by default),
preprocess_s (HVG/normalization/PCA/LSI/graph/configure_dataset), encode_s, epochs_per_stage
and stage_train_s (per Trainer.fit call: [pretraining, fine-tuning]), balance_s,
balancing_weight_nan, foscttm, label_transfer (synth only: 5-NN on RNA embeddings -> ATAC
cells), peak_rss_gb (VmHWM of this process), versions, and data details.
If training diverges (NaN; seen on pbmc with 2 epochs per stage: the pretrained embeddings are
too far apart for any leiden cluster pair to reach scglue's cosine cutoff, so every balancing
weight is 0/0 = NaN and fine-tuning stops at its first step), the JSON says ok=false with the
reason and foscttm=null, and the exit code is still 0.
"""

import argparse
import json
import os
import resource
import sys
import tempfile
import time
import warnings

p = argparse.ArgumentParser()
p.add_argument("--data", choices=["synth", "pbmc"], required=True)
p.add_argument("--threads", type=int, default=1)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--max-epochs-per-stage", type=int, default=60,
               help="fit_kws['max_epochs']: caps the pretraining and the fine-tuning stage each")
p.add_argument("--out", help="also write the JSON result here")
p.add_argument("--emb-out", help="write the embeddings (and cell names) to this .npz")
p.add_argument("--data-dir", help="default: <repo root>/../shared/data")
p.add_argument("--n-hvg", type=int, default=2000, help="pbmc: RNA highly variable genes")
p.add_argument("--quiet", action="store_true", help="hide scglue's INFO log lines")
args = p.parse_args()

for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS",
            "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[var] = str(args.threads)
import torch  # noqa: E402

torch.set_num_threads(args.threads)
try:
    torch.set_num_interop_threads(args.threads)
except RuntimeError:
    pass

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

warnings.filterwarnings("ignore")

import anndata as ad  # noqa: E402
import networkx as nx  # noqa: E402
import scanpy as sc  # noqa: E402
import scglue  # noqa: E402
import scipy.sparse as sp  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DATA = args.data_dir or os.path.join(os.path.dirname(ROOT), "shared", "data")

from _adt_genes import ADT_GENES  # noqa: E402  (shared with speed_glue.py)
from _proc import peak_rss_gb  # noqa: E402


def seed_all(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def guidance_graph(edges: pd.DataFrame, features) -> nx.MultiDiGraph:
    """Each link once in each direction (type fwd/rev) + one self-loop (weight 1, sign 1) on every
    feature, as scglue.genomics.rna_anchored_guidance_graph builds it.  The edge table may already
    hold reverse edges and self-loops (glue_synth's does): links are de-duplicated as unordered
    pairs, and the table's self-loops are replaced by ours."""
    g = nx.MultiDiGraph()
    seen = set()
    for s, t, w, sg in edges[["source", "target", "weight", "sign"]].itertuples(index=False):
        if s == t or frozenset((s, t)) in seen:
            continue
        seen.add(frozenset((s, t)))
        g.add_edge(s, t, weight=float(w), sign=int(sg), type="fwd")
        g.add_edge(t, s, weight=float(w), sign=int(sg), type="rev")
    for f in features:
        g.add_edge(f, f, weight=1.0, sign=1, type="loop")
    return g


def rna_pca(rna: ad.AnnData, seed: int) -> None:
    """scglue tutorial: counts layer kept, normalize_total, log1p, scale, PCA (100 comps)."""
    if "counts" not in rna.layers:
        rna.layers["counts"] = rna.X.copy()
    sub = rna[:, rna.var["highly_variable"]].copy() if "highly_variable" in rna.var else rna.copy()
    sub.X = sub.layers["counts"].copy()
    sc.pp.normalize_total(sub)
    sc.pp.log1p(sub)
    sc.pp.scale(sub)
    n_comps = min(100, sub.n_obs - 1, sub.n_vars - 1)
    sc.tl.pca(sub, n_comps=n_comps, svd_solver="auto", random_state=seed)
    rna.obsm["X_pca"] = sub.obsm["X_pca"]


def load_synth():
    d = os.path.join(DATA, "glue_synth")
    rna = ad.read_h5ad(os.path.join(d, "rna.h5ad"))
    atac = ad.read_h5ad(os.path.join(d, "atac.h5ad"))
    edges = pd.read_csv(os.path.join(d, "guidance_edges.csv"))
    truth = pd.read_csv(os.path.join(d, "truth.csv"))
    return rna, atac, edges, truth


def prep_synth(rna, atac, edges):
    x_is_counts = bool(sp.issparse(rna.X) and (rna.X != rna.layers["counts"]).nnz == 0)
    rna.X = rna.layers["counts"].copy()  # counts either way; the PCA works on a normalized copy
    rna_pca(rna, args.seed)  # all 500 genes (no HVG selection)
    scglue.data.lsi(atac, n_components=min(100, atac.n_vars - 1), n_iter=15, random_state=args.seed)
    scglue.models.configure_dataset(rna, "NB", use_highly_variable=False, use_layer="counts", use_rep="X_pca")
    scglue.models.configure_dataset(atac, "NB", use_highly_variable=False, use_rep="X_lsi")
    n_table = int(len(edges))
    feats = set(rna.var_names) | set(atac.var_names)
    edges = edges[edges["source"].isin(feats) & edges["target"].isin(feats)]
    graph = guidance_graph(edges, list(rna.var_names) + list(atac.var_names))
    n_links = sum(1 for _, _, k in graph.edges(data="type") if k == "fwd")
    return {"rna": rna, "atac": atac}, graph, dict(rna_X_is_counts=x_is_counts, edge_table_rows=n_table,
                                                   n_links=int(n_links))


def load_pbmc():
    a = ad.read_h5ad(os.path.join(DATA, "pbmc_cite_2batch.h5ad"))
    prot_df = a.obsm["protein_counts"]
    if not isinstance(prot_df, pd.DataFrame):
        raise SystemExit("pbmc: obsm['protein_counts'] is expected to be a DataFrame")
    rna = ad.AnnData(a.X.copy(), obs=a.obs[["batch"]].copy(), var=pd.DataFrame(index=a.var_names.copy()))
    prot_names = [str(c) for c in prot_df.columns]
    prot = ad.AnnData(sp.csr_matrix(prot_df.to_numpy(dtype=np.float32)),
                      obs=pd.DataFrame({"batch": a.obs["batch"].to_numpy()},
                                       index=["prot_" + str(n) for n in a.obs_names]),
                      var=pd.DataFrame(index=prot_names))
    prot.obs["batch"] = prot.obs["batch"].astype("category")
    truth = pd.DataFrame({"rna_cell": rna.obs_names, "prot_cell": prot.obs_names})
    rows = []
    for ab in prot_names:
        prefix = ab.split("_TotalSeq")[0]
        if prefix not in ADT_GENES:
            raise SystemExit(f"pbmc: antibody {ab!r} has no entry in ADT_GENES")
        rows += [(ab, g, 1.0, 1) for g in ADT_GENES[prefix]]
    edges = pd.DataFrame(rows, columns=["source", "target", "weight", "sign"])
    return rna, prot, edges, truth


def prep_pbmc(rna, prot, edges):
    rna.layers["counts"] = rna.X.copy()
    sc.pp.highly_variable_genes(rna, n_top_genes=args.n_hvg, flavor="seurat_v3")  # on counts in X
    n_hvg = int(rna.var["highly_variable"].sum())
    linked = [g for g in edges["target"].unique() if g in rna.var_names]
    missing = sorted(set(edges["target"]) - set(linked))
    rna.var.loc[linked, "highly_variable"] = True
    rna_pca(rna, args.seed)  # on the HVGs (incl. the linked genes), like the tutorial
    scglue.models.configure_dataset(rna, "NB", use_highly_variable=True, use_layer="counts",
                                    use_rep="X_pca", use_batch="batch")
    scglue.models.configure_dataset(prot, "NB", use_highly_variable=False, use_batch="batch")
    edges = edges[edges["target"].isin(rna.var_names)]
    feats = list(rna.var_names[rna.var["highly_variable"]]) + list(prot.var_names)
    graph = guidance_graph(edges, feats)
    return {"rna": rna, "prot": prot}, graph, dict(
        n_hvg_seurat_v3=n_hvg, n_rna_features=int(rna.var["highly_variable"].sum()),
        linked_genes=sorted(linked), linked_genes_missing=missing,
        n_links=int(sum(1 for _, _, k in graph.edges(data="type") if k == "fwd")))


def foscttm(x: np.ndarray, y: np.ndarray) -> float:
    """x[i] and y[i] are the same cell; mean over both directions and all cells of the fraction
    of cells of the other modality closer (Euclidean) than the true partner (scglue's formula)."""
    from scipy.spatial.distance import cdist

    d = cdist(x, y)
    diag = np.diag(d)
    fx = (d < diag[:, None]).mean(axis=1)
    fy = (d < diag[None, :]).mean(axis=0)
    return float((fx.mean() + fy.mean()) / 2)


class StageRecorder:
    """Per training stage (pretraining, fine-tuning): epochs completed and wall time, and the
    wall time of the balancing step between them.  Hooks scglue.models.base.Trainer.fit (one
    call per stage), Trainer.report_metrics, which runs on every EPOCH_COMPLETED (it only logs
    every config.PRINT_LOSS_INTERVAL = 10 epochs), and fit_SCGLUE's estimate_balancing_weight.
    The balancing step runs sc.pp.neighbors, whose umap code numba compiles anew in every
    process (~10 s of fit_s here, whatever the epoch count)."""

    def __init__(self):
        from scglue.models import base

        self.epochs, self.seconds = [], []
        orig_fit, orig_report = base.Trainer.fit, base.Trainer.report_metrics
        rec = self

        def fit(trainer, *a, **kw):
            rec.epochs.append(0)
            t0 = time.perf_counter()
            try:
                return orig_fit(trainer, *a, **kw)
            finally:
                rec.seconds.append(round(time.perf_counter() - t0, 3))

        def report_metrics(trainer, train_state, val_state):
            rec.epochs[-1] = int(train_state.epoch)
            return orig_report(trainer, train_state, val_state)

        base.Trainer.fit, base.Trainer.report_metrics = fit, report_metrics

        # the balancing step between the stages (fit_SCGLUE calls this module-level name)
        self.balance_s = None
        orig_balance = scglue.models.estimate_balancing_weight

        def estimate_balancing_weight(*a, **kw):
            t0 = time.perf_counter()
            try:
                return orig_balance(*a, **kw)
            finally:
                rec.balance_s = round(time.perf_counter() - t0, 3)

        scglue.models.estimate_balancing_weight = estimate_balancing_weight


def main():
    if args.quiet:
        import logging

        scglue.log.console_log_level = logging.WARNING
    seed_all(args.seed)
    stages = StageRecorder()
    t0 = time.perf_counter()
    if args.data == "synth":
        rna, other, edges, truth = load_synth()
    else:
        rna, other, edges, truth = load_pbmc()
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    if args.data == "synth":
        adatas, graph, info = prep_synth(rna, other, edges)
    else:
        adatas, graph, info = prep_pbmc(rna, other, edges)
    preprocess_s = time.perf_counter() - t0
    key = "atac" if args.data == "synth" else "prot"

    seed_all(args.seed)
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    ch0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryDirectory(prefix="glue_fit_") as tmp:
        t0 = time.perf_counter()
        glue = scglue.models.fit_SCGLUE(
            adatas, graph, init_kws={"random_seed": args.seed},
            fit_kws={"directory": tmp, "max_epochs": args.max_epochs_per_stage})
        fit_s = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    ch1 = resource.getrusage(resource.RUSAGE_CHILDREN)

    # balancing weights that fit_SCGLUE estimated between its stages (NaN when no pair of
    # leiden clusters across modalities reaches cosine >= 0.5 after pretraining: the fine-tuning
    # then diverges at once, TerminateOnNan stops it, and the embeddings are NaN)
    bw_nan = {k: int(np.isnan(v.obs["balancing_weight"].to_numpy(dtype=float)).sum())
              for k, v in adatas.items() if "balancing_weight" in v.obs}
    error = None
    t0 = time.perf_counter()
    try:
        z_rna = glue.encode_data("rna", adatas["rna"])
        z_oth = glue.encode_data(key, adatas[key])
        if not (np.isfinite(z_rna).all() and np.isfinite(z_oth).all()):
            raise ValueError("non-finite embeddings")
    except ValueError as e:  # torch.distributions rejects NaN parameters
        z_rna = z_oth = None
        error = "training diverged (NaN embeddings): " + str(e).splitlines()[0][:200]
    encode_s = time.perf_counter() - t0

    rna_idx = pd.Index(adatas["rna"].obs_names).get_indexer(truth["rna_cell"])
    oth_idx = pd.Index(adatas[key].obs_names).get_indexer(truth[f"{key}_cell"])
    if (rna_idx < 0).any() or (oth_idx < 0).any():
        raise SystemExit("truth pairing names do not match the data")
    res = dict(impl="scglue", data=args.data, ok=error is None, error=error, seed=args.seed,
               threads=args.threads, torch_threads=torch.get_num_threads(),
               max_epochs_per_stage=args.max_epochs_per_stage,
               n_cells={k: int(v.n_obs) for k, v in adatas.items()},
               n_features={k: int(v.n_vars) for k, v in adatas.items()},
               graph_nodes=int(graph.number_of_nodes()), graph_edges=int(graph.number_of_edges()),
               load_s=round(load_s, 3), preprocess_s=round(preprocess_s, 3), fit_s=round(fit_s, 3),
               fit_cpu_s=round(cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime, 2),
               fit_children_cpu_s=round(ch1.ru_utime + ch1.ru_stime - ch0.ru_utime - ch0.ru_stime, 2),
               encode_s=round(encode_s, 3), epochs_per_stage=stages.epochs, stage_train_s=stages.seconds,
               balance_s=stages.balance_s,
               balancing_weight_nan=bw_nan,
               foscttm=None if error else round(foscttm(z_rna[rna_idx], z_oth[oth_idx]), 5))
    if args.data == "synth":
        res["label_transfer"] = None
        if error is None:
            from sklearn.neighbors import KNeighborsClassifier

            y_rna = adatas["rna"].obs["cell_type"].astype(str).to_numpy()
            y_oth = adatas[key].obs["cell_type"].astype(str).to_numpy()
            knn = KNeighborsClassifier(n_neighbors=5).fit(z_rna, y_rna)
            res["label_transfer"] = round(float((knn.predict(z_oth) == y_oth).mean()), 5)
    res.update(info)
    res["peak_rss_gb"] = round(peak_rss_gb(), 3)
    from importlib.metadata import version

    res["versions"] = {m: version(m) for m in ("scglue", "torch", "anndata", "scanpy", "numpy", "pandas",
                                               "scipy", "networkx", "pytorch-ignite", "leidenalg", "igraph")}
    if args.emb_out and error is None:
        np.savez_compressed(args.emb_out, rna=z_rna, **{key: z_oth},
                            rna_cells=np.asarray(adatas["rna"].obs_names, dtype=str),
                            **{f"{key}_cells": np.asarray(adatas[key].obs_names, dtype=str)})
    line = json.dumps(res)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(line + "\n")
    print(line, flush=True)


main()
sys.exit(0)
