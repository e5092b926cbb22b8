"""Host-device synchronisations per training step on a GPU (issue 9: the GPU path keeps
the data on the device and never waits for it inside a step).

    python benchmarks/gpu_syncs.py ../shared/data/mouse_10k_1kgenes.h5ad

Trains SCVI (ZINB, sparse counts) for two epochs under ``torch.cuda.set_sync_debug_mode
("warn")``, which makes PyTorch warn at every operation that waits for the GPU, and prints
the count per epoch and per step with the source lines that caused them.
"""

import argparse
import collections
import time
import warnings

import numpy as np

p = argparse.ArgumentParser()
p.add_argument("path", nargs="?", default="../shared/data/mouse_10k_1kgenes.h5ad")
p.add_argument("--epochs", type=int, default=2)
p.add_argument("--batch-size", type=int, default=128)
args = p.parse_args()

import anndata as ad  # noqa: E402
import torch  # noqa: E402

from scprob.models import SCVI  # noqa: E402

if not torch.cuda.is_available():
    raise SystemExit("no CUDA device")
adata = ad.read_h5ad(args.path)
adata.obs["sim_batch"] = np.where(np.random.default_rng(0).random(adata.n_obs) < 0.5, "A", "B")
SCVI.setup_anndata(adata, batch_key="sim_batch")
model = SCVI(adata, n_hidden=128, n_latent=10, gene_likelihood="zinb")
sites: collections.Counter = collections.Counter()
torch.cuda.set_sync_debug_mode("warn")
t0 = time.perf_counter()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    model.train(max_epochs=args.epochs, batch_size=args.batch_size, accelerator="gpu", train_size=1.0,
                enable_progress_bar=False)
torch.cuda.synchronize()
torch.cuda.set_sync_debug_mode("default")
wall = time.perf_counter() - t0
syncs = [w for w in caught if "synchroniz" in str(w.message)]
for w in syncs:
    sites[f"{w.filename}:{w.lineno}"] += 1
steps = args.epochs * int(np.ceil(adata.n_obs / args.batch_size))
print(f"{len(syncs)} synchronisations in {args.epochs} epochs, {steps} steps: {len(syncs) / steps:.2f} per step "
      f"({wall:.1f} s under the debug mode)")
for site, n in sites.most_common(15):
    print(f"{n:8d}  {site}")
