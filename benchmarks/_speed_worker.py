"""One side of benchmarks/speed_scvi.py: trains scprob's or scvi-tools' SCVI and prints JSON.
Runs under either environment (scprob's, or benchmarks/.envs/scvi for the peer)."""

import argparse
import json
import time

import numpy as np
from _proc import peak_rss_gb  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("impl", choices=["scprob", "scvi"])
p.add_argument("path")
p.add_argument("--epochs", type=int, default=20)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--accelerator", default="cpu")
p.add_argument("--backed", action="store_true", help="read the .h5ad backed (scprob only)")
p.add_argument("--train-size", type=float, default=0.9, help="1.0: pure training epochs, no validation")
args = p.parse_args()

import torch  # noqa: E402

torch.set_num_threads(args.threads)
import anndata as ad  # noqa: E402
from lightning.pytorch.callbacks import Callback  # noqa: E402

t_start = time.perf_counter()
adata = ad.read_h5ad(args.path, backed="r" if args.backed else None)
rng = np.random.default_rng(0)
adata.obs["sim_batch"] = np.where(rng.random(adata.n_obs) < 0.5, "A", "B")
perm = rng.permutation(adata.n_obs)
n_train = int(np.ceil(0.9 * adata.n_obs))
train_idx, val_idx = np.sort(perm[:n_train]), np.sort(perm[n_train:])


class EpochTimer(Callback):
    def __init__(self):
        self.starts = []

    def on_train_epoch_start(self, trainer, pl_module):
        if args.accelerator != "cpu":
            torch.cuda.synchronize()
        self.starts.append(time.perf_counter())

    def on_train_end(self, trainer, pl_module):
        if args.accelerator != "cpu":
            torch.cuda.synchronize()
        self.starts.append(time.perf_counter())


timer = EpochTimer()
arch = dict(n_hidden=128, n_latent=10, n_layers=1, gene_likelihood="zinb")
common = dict(max_epochs=args.epochs, batch_size=128, accelerator=args.accelerator, devices=1,
              plan_kwargs=dict(lr=1e-3), callbacks=[timer], enable_progress_bar=False,
              check_val_every_n_epoch=args.epochs)  # validate once, after the last epoch, on both sides
if args.train_size >= 1.0:
    split = {"train_size": 1.0}
    common.pop("check_val_every_n_epoch")
else:
    split = {}
t0 = time.perf_counter()
if args.impl == "scprob":
    import scprob
    from scprob.models import SCVI

    scprob.settings.num_threads = args.threads
    SCVI.setup_anndata(adata, batch_key="sim_batch")
    model = SCVI(adata, **arch)
    if not split:
        split = dict(datasplitter_kwargs=dict(external_indexing=[train_idx, val_idx]))
    model.train(**split, **common)
    version = scprob.__version__
else:
    import scvi

    scvi.settings.num_threads = args.threads
    scvi.settings.dl_num_workers = 0
    scvi.model.SCVI.setup_anndata(adata, batch_key="sim_batch")
    model = scvi.model.SCVI(adata, **arch)
    if not split:
        split = dict(datasplitter_kwargs=dict(external_indexing=[train_idx, val_idx, np.array([], dtype=int)]))
    model.train(**split, **common)
    version = scvi.__version__
total = time.perf_counter() - t0
epochs = np.diff(timer.starts)
hist = model.history
elbo_val = float(hist["elbo_validation"].iloc[-1, 0]) if "elbo_validation" in hist else float("nan")
print(json.dumps(dict(
    impl=args.impl, version=version, n_cells=adata.n_obs, backed=args.backed,
    wall_sec_incl_load=time.perf_counter() - t_start, epochs=len(epochs), sec_per_epoch_median=float(np.median(epochs[1:] if len(epochs) > 1 else epochs)),
    sec_first_epoch=float(epochs[0]), total_sec=total, elbo_validation=elbo_val,
    peak_rss_gb=peak_rss_gb(), threads=torch.get_num_threads(),
)))
