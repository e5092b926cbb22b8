"""Train SCVI with Lightning DDP on 2 CPU processes (gloo); run by tests/test_ddp.py.

Lightning's "ddp" launcher re-executes this script once per extra rank."""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("SCPROB_NUM_THREADS", "1")

import torch.distributed as dist  # noqa: E402

from scprob.metrics import knn_label_transfer  # noqa: E402
from scprob.models import SCVI  # noqa: E402
from tests.conftest import make_counts  # noqa: E402

out = sys.argv[1]
adata = make_counts(n_cells=300, n_genes=50)
SCVI.setup_anndata(adata, batch_key="batch")
model = SCVI(adata, n_hidden=32, n_latent=4)
model.train(max_epochs=25, accelerator="cpu", devices=2, strategy="ddp", batch_size=32, enable_progress_bar=False)
rank = int(os.environ.get("LOCAL_RANK", 0))
world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
elbo = model.history["elbo_train"].iloc[:, 0].tolist()
z = model.get_latent_representation()
res = dict(rank=rank, world=world, elbo_first=elbo[0], elbo_last=elbo[-1],
           knn=knn_label_transfer(z, adata.obs["cell_type"], adata.obs["batch"]))
with open(f"{out}.rank{rank}.json", "w") as fh:
    json.dump(res, fh)
