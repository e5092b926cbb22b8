"""Per-step A/B of scprob's SCVI training step, in one process, epochs alternating
between likelihood backends so that machine drift cancels (no Lightning: the bare
forward / backward / fused-Adam loop over the same minibatches).

    python benchmarks/step_ab.py ../shared/data/mouse_10k_1kgenes.h5ad --threads 2 \
        --variants numba_parallel,numba_split,numba_serial,torch --rounds 4

Variants: ``numba_parallel`` (the default CPU path: float32 dense and non-zero parts in one
numba kernel, rows over threads), ``numba_serial`` (the same on one thread), ``numba_split``
(the dense part in PyTorch ops, the non-zero part in numba, as for float64), ``torch`` (the
fused Function with PyTorch ops only).
"""

import argparse
import time

import numpy as np

p = argparse.ArgumentParser()
p.add_argument("path")
p.add_argument("--threads", type=int, default=2)
p.add_argument("--variants", default="numba_parallel,numba_split,numba_serial,torch")
p.add_argument("--rounds", type=int, default=4)
args = p.parse_args()

import torch  # noqa: E402

torch.set_num_threads(args.threads)
import anndata as ad  # noqa: E402

import scprob  # noqa: E402
from scprob.data import BatchLoader  # noqa: E402
from scprob.distributions import _fused  # noqa: E402
from scprob.models import SCVI  # noqa: E402

scprob.settings.num_threads = args.threads
scprob.settings.apply_threads()
adata = ad.read_h5ad(args.path)
rng = np.random.default_rng(0)
adata.obs["sim_batch"] = np.where(rng.random(adata.n_obs) < 0.5, "A", "B")
SCVI.setup_anndata(adata, batch_key="sim_batch")
model = SCVI(adata, n_hidden=128, n_latent=10, gene_likelihood="zinb")
n_train = int(np.ceil(0.9 * adata.n_obs))
loader = BatchLoader(model._store(), np.arange(n_train), 128, shuffle=True, seed=0)
module = model.module.train()
opt = torch.optim.Adam([q for q in module.parameters() if q.requires_grad], lr=1e-3, eps=0.01, weight_decay=1e-6,
                       fused=True)
kern = _fused._numba_kernels()
parallel = (kern.nz_rows_parallel, kern.rows_f32_parallel) if kern else None


def use(name: str) -> None:
    if name.startswith("numba"):
        if kern is None:
            raise SystemExit("numba is not installed")
        _fused.set_backend("numba")
        _fused.F32_KERNEL = name != "numba_split"
        serial = name == "numba_serial"
        kern.nz_rows_parallel = kern.nz_rows_serial if serial else parallel[0]
        kern.rows_f32_parallel = kern.rows_f32_serial if serial else parallel[1]
    elif name in ("torch", "autograd"):
        _fused.set_backend(name)
    else:
        raise SystemExit(f"unknown variant {name!r}")


def epoch() -> float:
    t = time.perf_counter()
    for batch in loader:
        _, _, lo = module(batch, loss_kwargs={"kl_weight": 0.01})
        opt.zero_grad(set_to_none=True)
        lo.loss.backward()
        opt.step()
    return time.perf_counter() - t


names = args.variants.split(",")
for name in names:  # warm-up (numba compile / cache load)
    use(name)
    epoch()
times = {name: [] for name in names}
for _ in range(args.rounds):
    for name in names:
        use(name)
        times[name].append(epoch())
for name in names:
    med = float(np.median(times[name]))
    print(f"{name:16} {med:.3f} s/epoch  {1e3 * med / len(loader):.2f} ms/step  {np.round(times[name], 3)}")
