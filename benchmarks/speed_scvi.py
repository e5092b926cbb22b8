"""scprob SCVI vs scvi-tools 1.4.2 SCVI: seconds per epoch, peak RSS, validation ELBO.

    bash benchmarks/make_peer_env.sh          # once: the peer in benchmarks/.envs/scvi
    python benchmarks/speed_scvi.py ../shared/data/mouse_10k_1kgenes.h5ad --epochs 20 --threads 2

Identical architecture (1 hidden layer of 128, latent 10, ZINB, batch size 128, Adam lr
1e-3, KL warm-up defaults), the same 90/10 split, a synthetic 2-level batch covariate.
Each side runs alone in its own process (never two PyTorch jobs at once).

``--rounds N`` alternates the two sides N times (peer, scprob, peer, scprob, ...) and
reports each round's ratio and their median: on a shared machine whose speed drifts by
10-15% over minutes, a single peer-then-scprob pair can move the ratio by as much.
"""

import argparse
import json
import os
import statistics
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
p.add_argument("--rounds", type=int, default=1, help="alternate the two sides this many times")
args = p.parse_args()


def run(impl: str, py: str) -> dict:
    cmd = [py, str(HERE / "_speed_worker.py"), impl, args.path, "--epochs", str(args.epochs),
           "--threads", str(args.threads), "--accelerator", args.accelerator]
    # the caller's environment (PYTHONPATH, CUDA variables) with the thread counts set
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               SCPROB_NUM_THREADS=str(args.threads))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"{impl} failed:\n{out.stderr[-4000:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps(r), flush=True)
    return r


rounds = []
for _ in range(max(1, args.rounds)):
    rounds.append({impl: run(impl, py) for impl, py in (("scvi", args.peer_python), ("scprob", sys.executable))})
ratios = [r["scprob"]["sec_per_epoch_median"] / r["scvi"]["sec_per_epoch_median"] for r in rounds]
if len(rounds) > 1:
    print("\nratio per round: " + ", ".join(f"{x:.3f}" for x in ratios) + f"; median {statistics.median(ratios):.3f}")
res = min(rounds, key=lambda r: abs(r["scprob"]["sec_per_epoch_median"] / r["scvi"]["sec_per_epoch_median"]
                                   - statistics.median(ratios)))  # the median round, shown in full
a, b = res["scprob"], res["scvi"]
print(f"\n{'':22}{'scprob':>12}{'scvi-tools':>12}{'ratio':>9}")
print(f"{'s / epoch (median)':22}{a['sec_per_epoch_median']:12.3f}{b['sec_per_epoch_median']:12.3f}{a['sec_per_epoch_median'] / b['sec_per_epoch_median']:9.3f}")
print(f"{'first epoch s':22}{a['sec_first_epoch']:12.3f}{b['sec_first_epoch']:12.3f}")
print(f"{'peak RSS GB':22}{a['peak_rss_gb']:12.3f}{b['peak_rss_gb']:12.3f}{a['peak_rss_gb'] / b['peak_rss_gb']:9.3f}")
print(f"{'elbo_validation':22}{a['elbo_validation']:12.2f}{b['elbo_validation']:12.2f}   (after {a['epochs']} epochs; lower is better)")
