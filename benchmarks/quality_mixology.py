"""Integration quality of SCVI on the mixology 3-cell-line data (issue: core).

python benchmarks/quality_mixology.py [../shared/data/mixology_3cl.h5ad] [--seeds 0 1 2]

Batch = protocol, label = cell_line, 2,000 Seurat-v3 HVGs across protocols, default
training (scprob.models.SCVI defaults, default max_epochs).  Prints kNN label transfer
across protocols, ARI of k-means(3) and batch silhouette for each seed.
"""

import argparse
import os
import time

os.environ.setdefault("SCPROB_NUM_THREADS", "2")

import anndata as ad  # noqa: E402
import numpy as np  # noqa: E402

import scprob  # noqa: E402
from scprob.data.hvg import highly_variable_genes  # noqa: E402
from scprob.metrics import integration_metrics  # noqa: E402
from scprob.models import SCVI  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("path", nargs="?", default="../shared/data/mixology_3cl.h5ad")
p.add_argument("--seeds", type=int, nargs="+", default=[0])
p.add_argument("--max-epochs", type=int, default=None)
args = p.parse_args()

full = ad.read_h5ad(args.path)
adata = full[:, highly_variable_genes(full, 2000, batch_key="protocol")].copy()
rows = []
for seed in args.seeds:
    scprob.settings.seed = seed
    a = adata.copy()
    SCVI.setup_anndata(a, batch_key="protocol")
    m = SCVI(a)
    t = time.time()
    m.train(max_epochs=args.max_epochs, enable_progress_bar=False)
    secs = time.time() - t
    met = integration_metrics(m.get_latent_representation(), a.obs["protocol"], a.obs["cell_line"])
    rows.append(met)
    print(f"seed {seed}: knn {met['knn_label_transfer']:.3f}  ari {met['kmeans_ari']:.3f}  "
          f"batch_sil {met['batch_silhouette']:+.3f}  ({secs:.0f} s, {len(m.history['elbo_train'])} epochs)")
if len(rows) > 1:
    for k in rows[0]:
        v = np.array([r[k] for r in rows])
        print(f"{k}: mean {v.mean():.3f}  min {v.min():.3f}  max {v.max():.3f}")
