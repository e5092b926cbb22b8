"""Scale: one training epoch on synthetic sparse counts, 100k / 300k / 1M cells x 2,000
genes (~5% non-zero; 0.80 GB as CSR at 1M), scprob in memory and backed vs scvi-tools
1.4.2 in memory.  Prints seconds per epoch and each process's peak RSS.

    bash benchmarks/make_peer_env.sh     # once
    python benchmarks/scale.py --sizes 100000 300000 1000000 --threads 2

Each run is its own process (peak RSS = VmHWM of that process), one at a time.
Same architecture and settings as speed_scvi.py; train_size=1.0 (pure training epoch).
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
PEER = HERE / ".envs" / "scvi" / "bin" / "python"


def make_data(n_cells: int, path: Path, n_genes: int = 2000, density: float = 0.05, seed: int = 0) -> None:
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    gene_p = rng.gamma(0.6, 1.0, n_genes)
    gene_p /= gene_p.sum()
    blocks = []
    for start in range(0, n_cells, 100_000):
        n = min(100_000, n_cells - start)
        nnz_row = rng.binomial(n_genes, density, n)
        rows = np.repeat(np.arange(n), nnz_row)
        cols = rng.choice(n_genes, size=rows.size, p=gene_p)
        vals = rng.geometric(0.4, rows.size).astype(np.float32)
        m = sp.csr_matrix((vals, (rows, cols)), shape=(n, n_genes), dtype=np.float32)
        m.sum_duplicates()
        m.indices = m.indices.astype(np.int32)
        blocks.append(m)
    X = sp.vstack(blocks, format="csr")
    X.indices = X.indices.astype(np.int32)
    a = ad.AnnData(X=X, obs=pd.DataFrame(index=[f"c{i}" for i in range(n_cells)]),
                   var=pd.DataFrame(index=[f"g{i}" for i in range(n_genes)]))
    a.write_h5ad(path)
    print(f"made {path.name}: {n_cells} x {n_genes}, density {X.nnz / (n_cells * n_genes):.3f}, "
          f"CSR {(X.data.nbytes + X.indices.nbytes + X.indptr.nbytes) / 1e9:.2f} GB", flush=True)


def run(py: str, impl: str, path: Path, threads: int, backed: bool) -> dict:
    cmd = [py, str(HERE / "_speed_worker.py"), impl, str(path), "--epochs", "1", "--threads", str(threads),
           "--train-size", "1.0"] + (["--backed"] if backed else [])
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "SCPROB_NUM_THREADS": str(threads),
           "PATH": "/usr/bin:/bin"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"{impl} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


p = argparse.ArgumentParser()
p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
p.add_argument("--threads", type=int, default=2)
p.add_argument("--data-dir", default=str(HERE / ".data"))
p.add_argument("--peer-python", default=str(PEER))
p.add_argument("--skip-peer", action="store_true")
p.add_argument("--make", type=int, default=None, help=argparse.SUPPRESS)
args = p.parse_args()
if args.make:
    make_data(args.make, Path(args.data_dir) / f"synth_{args.make}.h5ad")
    sys.exit(0)

data_dir = Path(args.data_dir)
data_dir.mkdir(exist_ok=True)
rows = []
for n in args.sizes:
    path = data_dir / f"synth_{n}.h5ad"
    if not path.exists():  # in a child process, so this driver stays small
        subprocess.run([sys.executable, __file__, "--make", str(n), "--data-dir", str(data_dir)], check=True)
    r = {"n": n}
    r["mem"] = run(sys.executable, "scprob", path, args.threads, backed=False)
    r["backed"] = run(sys.executable, "scprob", path, args.threads, backed=True)
    if not args.skip_peer:
        r["peer"] = run(args.peer_python, "scvi", path, args.threads, backed=False)
    rows.append(r)
    print(json.dumps(r), flush=True)

print(f"\n{'cells':>9} | {'scprob mem s':>12} {'RSS GB':>7} | {'scprob backed s':>15} {'RSS GB':>7} | "
      f"{'scvi-tools s':>12} {'RSS GB':>7} | {'ratio mem':>9} {'ratio backed':>12}")
for r in rows:
    m, b, q = r["mem"], r["backed"], r.get("peer")
    qs = q["sec_first_epoch"] if q else float("nan")
    qr = q["peak_rss_gb"] if q else float("nan")
    print(f"{r['n']:>9} | {m['sec_first_epoch']:12.1f} {m['peak_rss_gb']:7.2f} | {b['sec_first_epoch']:15.1f} "
          f"{b['peak_rss_gb']:7.2f} | {qs:12.1f} {qr:7.2f} | {m['sec_first_epoch'] / qs:9.3f} {b['sec_first_epoch'] / qs:12.3f}")
