"""scprob SCVI vs scvi-tools 1.4.2 SCVI: seconds per epoch, peak RSS, validation ELBO.

    bash benchmarks/make_peer_env.sh          # once: the peer in benchmarks/.envs/scvi
    python benchmarks/speed_scvi.py ../shared/data/mouse_10k_1kgenes.h5ad --epochs 20 --threads 2

Identical architecture (1 hidden layer of 128, latent 10, ZINB, batch size 128, Adam lr
1e-3, KL warm-up defaults), the same 90/10 split, a synthetic 2-level batch covariate.
Each side runs alone in its own process (never two PyTorch jobs at once).
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEER = HERE / ".envs" / "scvi" / "bin" / "python"

p = argparse.ArgumentParser()
p.add_argument("path", nargs="?", default="../shared/data/mouse_10k_1kgenes.h5ad")
p.add_argument("--epochs", type=int, default=20)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--accelerator", default="cpu")
p.add_argument("--peer-python", default=str(PEER))
args = p.parse_args()

res = {}
for impl, py in (("scvi", args.peer_python), ("scprob", sys.executable)):
    cmd = [py, str(HERE / "_speed_worker.py"), impl, args.path, "--epochs", str(args.epochs),
           "--threads", str(args.threads), "--accelerator", args.accelerator]
    # the caller's environment (PYTHONPATH, CUDA variables) with the thread counts set
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               SCPROB_NUM_THREADS=str(args.threads))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"{impl} failed:\n{out.stderr[-4000:]}")
    res[impl] = json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps(res[impl]))
a, b = res["scprob"], res["scvi"]
print(f"\n{'':22}{'scprob':>12}{'scvi-tools':>12}{'ratio':>9}")
print(f"{'s / epoch (median)':22}{a['sec_per_epoch_median']:12.3f}{b['sec_per_epoch_median']:12.3f}{a['sec_per_epoch_median'] / b['sec_per_epoch_median']:9.3f}")
print(f"{'first epoch s':22}{a['sec_first_epoch']:12.3f}{b['sec_first_epoch']:12.3f}")
print(f"{'peak RSS GB':22}{a['peak_rss_gb']:12.3f}{b['peak_rss_gb']:12.3f}{a['peak_rss_gb'] / b['peak_rss_gb']:9.3f}")
print(f"{'elbo_validation':22}{a['elbo_validation']:12.2f}{b['elbo_validation']:12.2f}   (after {a['epochs']} epochs; lower is better)")
