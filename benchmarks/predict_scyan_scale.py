"""Scyan predict on many cells: time and peak memory (issue 6: 1M cells in bounded memory).

    python benchmarks/predict_scyan_scale.py --n-cells 1000000 --threads 2

Fits scprob's Scyan on the shipped AML sample (defaults), draws N cells from it
(``sample``), then times ``predict`` on them (chunks of 65,536 cells) and reports the
process's peak RSS (VmHWM) before and after predicting, next to the size of the data.
"""

import argparse
import os
import time

p = argparse.ArgumentParser()
p.add_argument("--n-cells", type=int, default=1_000_000)
p.add_argument("--threads", type=int, default=2)
args = p.parse_args()
for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "SCPROB_NUM_THREADS"):
    os.environ[var] = str(args.threads)

import anndata as ad  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from _proc import peak_rss_gb  # noqa: E402

import scprob  # noqa: E402
from scprob.models import Scyan  # noqa: E402

torch.set_num_threads(args.threads)


adata, table = scprob.data.load_aml()
model = Scyan(adata, table, seed=0).fit(enable_progress_bar=False)
x, z = model.sample(args.n_cells, return_z=True)
big = ad.AnnData(x, var=pd.DataFrame(index=model.markers))
truth = np.asarray(model.populations, dtype=object)[z]
del x
before = peak_rss_gb()
t0 = time.perf_counter()
pred = model.predict(big, key_added=None)
secs = time.perf_counter() - t0
after = peak_rss_gb()
acc = float(np.mean(pred.astype(object).to_numpy() == truth))
print(f"cells {args.n_cells:,} x {big.n_vars} markers ({big.X.nbytes / 1e9:.3f} GB of data), threads {args.threads}")
print(f"predict {secs:.1f} s ({args.n_cells / secs:,.0f} cells/s), accuracy vs sampled population {acc:.4f}")
print(f"peak RSS before predict {before:.2f} GB, after {after:.2f} GB (+{after - before:.2f} GB)")
