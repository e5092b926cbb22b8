"""One side of benchmarks/speed_scyan.py.  Runs under either environment: scprob's, or
benchmarks/.envs/scyan for the peer (the scyan package).

    python _scyan_worker.py fit {scprob,scyan} DATA.h5ad TABLE.csv --threads K
        fits with default settings, prints one JSON line (fit_s, predict_s, epochs, accuracy, ...)
    python _scyan_worker.py simulate {scprob,scyan} OUT.h5ad TABLE.csv --n-cells N --source SRC.h5ad
        trains that side's flow on SRC (default settings) and writes N cells sampled from it,
        with obs["cell_type"] the sampled population (the ground truth)

Threads are fixed before anything else imports torch's thread pools.
"""

import argparse
import json
import os
import sys
import time
import warnings

p = argparse.ArgumentParser()
p.add_argument("mode", choices=["fit", "simulate"])
p.add_argument("impl", choices=["scprob", "scyan"])
p.add_argument("path", help="fit: the data to fit; simulate: the output .h5ad")
p.add_argument("table")
p.add_argument("--threads", type=int, default=2)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--n-cells", type=int, default=200_000, help="simulate only")
p.add_argument("--source", help="simulate only: the real data the flow is trained on")
p.add_argument("--label-key", default="cell_type")
args = p.parse_args()

for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "SCPROB_NUM_THREADS"):
    os.environ[var] = str(args.threads)
import torch  # noqa: E402

torch.set_num_threads(args.threads)

import anndata as ad  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

warnings.filterwarnings("ignore")


from _proc import peak_rss_gb  # noqa: E402


def read_table(path) -> pd.DataFrame:
    """Knowledge table: first column = population names (index), then markers; empty = NaN."""
    table = pd.read_csv(path, index_col=0)
    return table.apply(pd.to_numeric, errors="coerce").astype(float)


torch.manual_seed(args.seed)
np.random.seed(args.seed)
table = read_table(args.table)


def make_model(adata):
    if args.impl == "scyan":
        import lightning
        import scyan  # seeds everything with 0 at import

        lightning.seed_everything(args.seed, verbose=False)  # so that --seed gives the peer different fits too
        return scyan.Scyan(adata, table), getattr(scyan, "__version__", "?")
    import scprob
    from scprob.models import Scyan

    scprob.settings.num_threads = args.threads
    return Scyan(adata, table, seed=args.seed), scprob.__version__


def names(model, attrs, default) -> list:
    for attr in attrs:
        v = getattr(model, attr, None)
        if v is not None:
            return [str(x) for x in v]
    return [str(x) for x in default]


def n_epochs(model):
    """Epochs actually trained (early stopping decides on both sides)."""
    if args.impl == "scyan":  # Lightning: after fit, current_epoch = number of completed epochs
        return int(model.trainer.current_epoch)
    for attr in ("n_epochs_", "epochs_", "n_epochs_trained_"):
        v = getattr(model, attr, None)
        if isinstance(v, (int, np.integer)):
            return int(v)
    hist = getattr(model, "history_", None)
    if hist is None:
        hist = getattr(model, "history", None)
    if callable(hist):
        hist = hist()
    if isinstance(hist, dict) and hist:
        for key in ("elbo_train", "train_loss_epoch", "train_loss", "loss_epoch", "loss"):
            if key in hist:
                return int(len(hist[key]))
        return int(max(len(v) for v in hist.values()))  # scprob: one row per epoch and metric
    return None


def labels_of(pred, model, adata) -> np.ndarray:
    """Predicted population names as an object array; unassigned cells -> None."""
    pops = names(model, ("populations", "pop_names"), table.index)
    if pred is None:
        pred = adata.obs["scyan_pop"]
    if isinstance(pred, (pd.Series, pd.Categorical, pd.Index)):
        pred = pd.Series(pred)
        if pd.api.types.is_numeric_dtype(pred.dtype):  # population codes, -1 / NaN = unknown
            pred = pred.to_numpy(dtype=float)
        else:
            return np.array([None if pd.isna(v) else str(v) for v in pred], dtype=object)
    if torch.is_tensor(pred):
        pred = pred.cpu().numpy()
    pred = np.asarray(pred)
    if pred.dtype.kind in "iuf":
        out = np.full(pred.shape, None, dtype=object)
        ok = np.isfinite(pred) & (pred >= 0)
        out[ok] = np.asarray(pops, dtype=object)[pred[ok].astype(int)]
        return out
    return np.array([None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in pred],
                    dtype=object)


def fit():
    adata = ad.read_h5ad(args.path)
    truth = adata.obs[args.label_key].astype(str).to_numpy()
    model, version = make_model(adata)
    t0 = time.perf_counter()
    model.fit()
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    pred = model.predict()
    predict_s = time.perf_counter() - t0
    lab = labels_of(pred, model, adata)
    unassigned = np.array([v is None for v in lab])
    acc = float(np.mean(np.where(unassigned, False, lab.astype(str) == truth)))  # unknown = error
    from sklearn.metrics import f1_score

    pred_names = np.where(unassigned, "unassigned", lab.astype(str))
    macro_f1 = float(f1_score(truth, pred_names, labels=sorted(set(truth)), average="macro"))
    print(json.dumps(dict(
        impl=args.impl, version=version, threads=args.threads, torch_threads=torch.get_num_threads(),
        n_cells=int(adata.n_obs), n_markers=int(table.shape[1]), n_pops=int(table.shape[0]),
        fit_s=round(fit_s, 3), predict_s=round(predict_s, 3), epochs=n_epochs(model),
        accuracy=round(acc, 5), macro_f1=round(macro_f1, 5), unassigned=int(unassigned.sum()), peak_rss_gb=round(peak_rss_gb(), 3),
        torch=torch.__version__,
    )), flush=True)


def simulate():
    src = ad.read_h5ad(args.source)
    model, version = make_model(src)
    model.fit()
    with torch.no_grad():
        if args.impl == "scyan":  # its sample() draws covariates without replacement: n <= n_obs only
            idx = torch.randint(0, model.covariates.shape[0], (args.n_cells,))
            x, z = model.sample(args.n_cells, covariates_sample=model.covariates[idx], return_z=True)
        else:
            x, z = model.sample(args.n_cells, return_z=True)
    x = x.cpu().numpy() if torch.is_tensor(x) else np.asarray(x)
    z = z.cpu().numpy() if torch.is_tensor(z) else np.asarray(z)
    pops = names(model, ("populations", "pop_names"), table.index)
    markers = names(model, ("markers", "var_names"), table.columns)
    obs = pd.DataFrame({"cell_type": pd.Categorical(np.asarray(pops, dtype=object)[z.astype(int)],
                                                    categories=pops)},
                       index=[f"c{i}" for i in range(len(z))])
    out = ad.AnnData(np.ascontiguousarray(x, dtype=np.float32), obs=obs, var=pd.DataFrame(index=markers))
    out.uns["simulation"] = dict(method=f"{args.impl}-flow", version=str(version), seed=args.seed,
                                 source=os.path.basename(args.source))
    out.write_h5ad(args.path)
    print(json.dumps(dict(impl=args.impl, simulated=args.path, n_cells=int(out.n_obs))), flush=True)


fit() if args.mode == "fit" else simulate()
sys.exit(0)
