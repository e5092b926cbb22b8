"""PyroSCVI vs SCVI with the same architecture and NB likelihood, on mixology (issue 8).

    python benchmarks/speed_pyro.py --threads 2                     # seconds per epoch
    python benchmarks/speed_pyro.py --threads 2 --quality --seeds 0 1 2

Data: ``--data`` (default ../shared/data/mixology_3cl.h5ad), 2,000 Seurat-v3 HVGs across
protocols, batch = protocol, label = cell_line.  Both models: 1 hidden layer of 128,
latent 10, dropout 0.1, batch norm, batch one-hot in the decoder, NB with gene-wise
dispersion, observed library, batch size 128, Adam lr 1e-3, KL warm-up over 400 epochs.

Speed mode: each model trains ``--epochs`` epochs, ``--repeats`` times, in alternating
order, in this one process with ``torch.set_num_threads(--threads)``; an epoch is timed
from one ``on_train_epoch_end`` to the next (training steps, the validation pass and
Lightning's epoch overhead), the first epoch of each run left out.  Prints each run's median
seconds per epoch, their median over runs and the ratio PyroSCVI / SCVI.

Quality mode: default training (400 epochs) per seed; prints kNN label transfer across
protocols (scprob.metrics.knn_label_transfer) and the final validation ELBO per cell of
both models (last epoch, and the mean of the last 10 epochs) and their relative gap.
"""

import argparse
import os
import time

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--data", default="../shared/data/mixology_3cl.h5ad")
p.add_argument("--threads", type=int, required=True, help="torch.set_num_threads (set it: the default spins on every core)")
p.add_argument("--epochs", type=int, default=30)
p.add_argument("--repeats", type=int, default=2)
p.add_argument("--quality", action="store_true", help="default training per seed: label transfer and ELBO")
p.add_argument("--seeds", type=int, nargs="+", default=[0])
args = p.parse_args()
os.environ["SCPROB_NUM_THREADS"] = str(args.threads)

import anndata as ad  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.callbacks import Callback  # noqa: E402

import scprob  # noqa: E402
from scprob.data.hvg import highly_variable_genes  # noqa: E402
from scprob.metrics import knn_label_transfer  # noqa: E402
from scprob.models import SCVI, PyroSCVI  # noqa: E402

torch.set_num_threads(args.threads)
scprob.settings.num_threads = args.threads
ARCH = dict(n_hidden=128, n_latent=10, n_layers=1, dropout_rate=0.1)


class EpochTimer(Callback):
    """Wall-clock time between consecutive training-epoch ends."""

    def __init__(self):
        self.stamps: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module):
        if not self.stamps:
            self.stamps.append(time.perf_counter())

    def on_train_epoch_end(self, trainer, pl_module):
        self.stamps.append(time.perf_counter())

    def epoch_seconds(self) -> np.ndarray:
        return np.diff(self.stamps)


def build(name: str, adata):
    a = adata.copy()
    cls = SCVI if name == "SCVI" else PyroSCVI
    cls.setup_anndata(a, batch_key="protocol")
    model = SCVI(a, gene_likelihood="nb", **ARCH) if cls is SCVI else PyroSCVI(a, **ARCH)
    return model, a


full = ad.read_h5ad(args.data)
adata = full[:, highly_variable_genes(full, 2000, batch_key="protocol")].copy()
print(f"{adata.n_obs} cells x {adata.n_vars} genes, torch threads {torch.get_num_threads()}, torch {torch.__version__}")

if not args.quality:
    times: dict[str, list[float]] = {"SCVI": [], "PyroSCVI": []}  # per-run medians
    for rep in range(args.repeats):
        for name in (("SCVI", "PyroSCVI") if rep % 2 == 0 else ("PyroSCVI", "SCVI")):
            model, _ = build(name, adata)
            timer = EpochTimer()
            model.train(max_epochs=args.epochs, enable_progress_bar=False, callbacks=[timer])
            secs = timer.epoch_seconds()[1:]
            times[name].append(float(np.median(secs)))
            print(f"run {rep} {name:9s} median {np.median(secs):.4f} s/epoch over {len(secs)} epochs")
    # the median over runs of each run's median: one run disturbed by another process
    # does not move it
    s, py = np.median(times["SCVI"]), np.median(times["PyroSCVI"])
    print(f"\n{'':10}{'s / epoch':>12}{'ratio to SCVI':>15}   (median over {args.repeats} runs of the per-run median)")
    print(f"{'SCVI':10}{s:12.4f}{1.0:15.3f}")
    print(f"{'PyroSCVI':10}{py:12.4f}{py / s:15.3f}")
else:
    rows = []
    for seed in args.seeds:
        res = {}
        for name in ("SCVI", "PyroSCVI"):
            scprob.settings.seed = seed
            model, a = build(name, adata)
            t = time.time()
            model.train(enable_progress_bar=False)
            elbo = model.history["elbo_validation"].iloc[:, 0]
            res[name] = dict(
                knn=knn_label_transfer(model.get_latent_representation(), a.obs["cell_line"], a.obs["protocol"]),
                elbo=float(elbo.iloc[-1]), elbo10=float(elbo.iloc[-10:].mean()), secs=time.time() - t,
            )
        s, py = res["SCVI"], res["PyroSCVI"]
        gap = (py["elbo"] - s["elbo"]) / abs(s["elbo"])
        rows.append((seed, s, py, gap))
        print(f"seed {seed}: kNN SCVI {s['knn']:.3f} PyroSCVI {py['knn']:.3f} | val ELBO/cell SCVI {s['elbo']:.1f} "
              f"PyroSCVI {py['elbo']:.1f} (gap {100 * gap:+.2f}%; last-10 means {s['elbo10']:.1f} / {py['elbo10']:.1f}) | "
              f"{s['secs']:.0f} s / {py['secs']:.0f} s")
    print(f"\n{'seed':>4} {'kNN SCVI':>9} {'kNN Pyro':>9} {'ELBO SCVI':>10} {'ELBO Pyro':>10} {'gap %':>7}")
    for seed, s, py, gap in rows:
        print(f"{seed:>4} {s['knn']:9.3f} {py['knn']:9.3f} {s['elbo']:10.1f} {py['elbo']:10.1f} {100 * gap:+7.2f}")
    print(f"mean {np.mean([r[1]['knn'] for r in rows]):9.3f} {np.mean([r[2]['knn'] for r in rows]):9.3f} "
          f"{np.mean([r[1]['elbo'] for r in rows]):10.1f} {np.mean([r[2]['elbo'] for r in rows]):10.1f} "
          f"{100 * np.mean([r[3] for r in rows]):+7.2f}")
