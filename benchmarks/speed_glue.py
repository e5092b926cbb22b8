"""scprob GLUE vs scglue 0.4.1 (the peer): fit time, FOSCTTM, label transfer, in one run.

    bash benchmarks/make_glue_env.sh                    # once: the peer in benchmarks/.envs/glue
    python benchmarks/speed_glue.py                     # synthetic set, 1 thread, seed 0
    python benchmarks/speed_glue.py --data pbmc --seeds 0 1 2 --threads 2

Data (``../shared/data``): ``synth`` = glue_synth (RNA 2,000 cells x 500 genes, ATAC the
same cells shuffled x 1,500 peaks, guidance_edges.csv, truth.csv pairing); ``pbmc`` =
pbmc_cite_2batch (RNA in X, 14 antibodies in obsm, treated as two unpaired files, each
antibody linked to the gene(s) encoding it, batch = obs["batch"]).

Each side runs alone in its own process with threads set before anything else:
* scprob: the defaults of ``scprob integrate`` (prob models ``--prob-models``: NB for counts,
  NBMixture for the antibodies on pbmc; ``use_rep="auto"``: PCA/LSI encoder input
  chosen by ``scprob.data.reduce.add_representation``; ``GLUE(...).train()`` with its default
  schedule and early stopping), in this file's ``--worker`` mode;
* scglue: ``benchmarks/_glue_worker.py`` (tutorial preprocessing, ``fit_SCGLUE`` with
  ``max_epochs`` capped at ``--peer-epochs`` per stage, 60 as in the issue's reference).
fit_s is the wall clock of training only (the peer's includes its balancing step).
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"
PEER = HERE / ".envs" / "glue" / "bin" / "python"

p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
p.add_argument("--data", choices=["synth", "pbmc"], default="synth")
p.add_argument("--threads", type=int, default=1)
p.add_argument("--seeds", type=int, nargs="+", default=[0])
p.add_argument("--peer-epochs", type=int, default=60)
p.add_argument("--skip-peer", action="store_true")
p.add_argument("--train-kwargs", default="{}", help="JSON of extra GLUE.train arguments for scprob's side")
p.add_argument("--model-kwargs", default="{}", help="JSON of extra GLUE(...) arguments for scprob's side")
p.add_argument("--prob-models", default=None,
               help="scprob's prob models, one per modality (comma-separated); default NB,NB on synth and "
                    "NB,NBMixture on pbmc (antibody counts: background + foreground NB)")
p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
args = p.parse_args()


def scprob_worker(seed: int) -> dict:
    import numpy as np
    import pandas as pd
    import torch

    torch.set_num_threads(args.threads)
    import anndata as ad
    import scipy.sparse as sp

    import scprob
    from scprob.metrics import foscttm, label_transfer
    from scprob.models import GLUE

    scprob.settings.num_threads = args.threads
    labels = None
    if args.data == "synth":
        rna, atac = ad.read_h5ad(DATA / "glue_synth/rna.h5ad"), ad.read_h5ad(DATA / "glue_synth/atac.h5ad")
        edges, truth = pd.read_csv(DATA / "glue_synth/guidance_edges.csv"), pd.read_csv(DATA / "glue_synth/truth.csv")
        mods = {"rna": rna, "atac": atac}
        pairs = (truth["rna_cell"].to_numpy(), truth["atac_cell"].to_numpy())
        labels = (rna.obs["cell_type"], atac.obs["cell_type"])
        batch = None
    else:
        sys.path.insert(0, str(HERE))
        from _adt_genes import ADT_GENES

        from scprob.data.hvg import highly_variable_genes

        a = ad.read_h5ad(DATA / "pbmc_cite_2batch.h5ad")
        P = a.obsm["protein_counts"]
        rna = ad.AnnData(sp.csr_matrix(a.X), obs=a.obs[["batch"]].copy(), var=pd.DataFrame(index=a.var_names))
        prot = ad.AnnData(sp.csr_matrix(P.to_numpy(np.float32)), var=pd.DataFrame(index=[str(c) for c in P.columns]),
                          obs=pd.DataFrame({"batch": a.obs["batch"].to_numpy()}, index=["prot_" + n for n in a.obs_names]))
        rows = [(ab, g) for ab in prot.var_names for g in ADT_GENES[ab.split("_TotalSeq")[0]] if g in rna.var_names]
        highly_variable_genes(rna, n_top_genes=2000, batch_key="batch")
        rna.var.loc[sorted({g for _, g in rows}), "highly_variable"] = True
        used = list(rna.var_names[rna.var["highly_variable"]]) + list(prot.var_names)
        links = pd.DataFrame(rows, columns=["source", "target"])
        edges = pd.concat([links, links.rename(columns={"source": "target", "target": "source"}),
                           pd.DataFrame({"source": used, "target": used})])
        mods = {"rna": rna, "prot": prot}
        pairs = (rna.obs_names.to_numpy(), prot.obs_names.to_numpy())
        batch = "batch"
    scprob.settings.seed = seed
    t0 = time.perf_counter()
    prob_models = (args.prob_models or ("NB,NB" if args.data == "synth" else "NB,NBMixture")).split(",")
    if len(prob_models) != len(mods):
        raise SystemExit(f"--prob-models needs {len(mods)} names, got {prob_models}")
    for m, pm in zip(mods.values(), prob_models):
        GLUE.configure_dataset(m, pm, use_batch=batch, use_rep="auto")
    prep = time.perf_counter() - t0
    model = GLUE(mods, edges, random_state=seed, **json.loads(args.model_kwargs))
    t0 = time.perf_counter()
    model.train(seed=seed, enable_progress_bar=False, **json.loads(args.train_kwargs))
    fit = time.perf_counter() - t0
    keys = list(mods)
    z = {k: model.encode_data(k) for k in keys}
    x = z[keys[0]][mods[keys[0]].obs_names.get_indexer(pairs[0])]
    y = z[keys[1]][mods[keys[1]].obs_names.get_indexer(pairs[1])]
    out = dict(side="scprob", seed=seed, fit_s=round(fit, 2), preprocess_s=round(prep, 2), foscttm=foscttm(x, y),
               epochs=model.history["stage"].iloc[:, 0].value_counts().to_dict())
    if labels is not None:
        out["label_transfer"] = label_transfer(z[keys[0]], labels[0], z[keys[1]], labels[1], k=5)
    return out


def run(cmd: list[str]) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               OPENBLAS_NUM_THREADS=str(args.threads), SCPROB_NUM_THREADS=str(args.threads))
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    if res.returncode or not lines:
        raise SystemExit(f"{cmd[:3]} failed:\n{res.stderr[-3000:]}")
    return json.loads(lines[-1])


if args.worker:
    print(json.dumps(scprob_worker(args.seeds[0])))
    sys.exit(0)

print(f"GLUE on {args.data}, {args.threads} thread(s); peer epochs capped at {args.peer_epochs} per stage")
print(f"{'seed':>4} {'side':>7} {'fit_s':>8} {'FOSCTTM':>8} {'transfer':>8}  epochs")
for seed in args.seeds:
    rows = [run([sys.executable, __file__, "--worker", "--data", args.data, "--threads", str(args.threads), "--seeds", str(seed),
                 "--train-kwargs", args.train_kwargs, "--model-kwargs", args.model_kwargs]
                + (["--prob-models", args.prob_models] if args.prob_models else []))]
    if not args.skip_peer:
        peer = run([str(PEER), str(HERE / "_glue_worker.py"), "--data", args.data, "--threads", str(args.threads),
                    "--seed", str(seed), "--max-epochs-per-stage", str(args.peer_epochs), "--quiet"])
        rows.append(dict(side="scglue", seed=seed, fit_s=peer.get("fit_s"), foscttm=peer.get("foscttm"),
                         label_transfer=peer.get("label_transfer"), epochs=peer.get("epochs_per_stage")))
    for r in rows:
        lt = r.get("label_transfer")
        fos = r.get("foscttm")
        print(f"{seed:>4} {r['side']:>7} {r['fit_s']:>8} {fos if fos is None else round(fos, 4):>8} "
              f"{'-' if lt is None else round(lt, 4):>8}  {r['epochs']}")
    if len(rows) == 2 and rows[1]["fit_s"]:
        print(f"     fit time ratio scprob/scglue: {rows[0]['fit_s'] / rows[1]['fit_s']:.3f}")
