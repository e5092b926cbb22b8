"""scprob Scyan vs the scyan package (PyPI ``scyan``, the peer): fit time, epochs, accuracy.

    bash benchmarks/make_scyan_env.sh                   # once: the peer in benchmarks/.envs/scyan
    python benchmarks/speed_scyan.py                    # 200,000 cells, --threads 1 2
    python benchmarks/speed_scyan.py --n-cells 20000 --simulate simple --threads 2   # quick check

Data: N cells simulated once and cached as benchmarks/.data/scyan_sim_<N>.h5ad (markers as
var_names, obs["cell_type"] the ground-truth population), read by both sides:

* ``--simulate flow`` (default): scprob's Scyan is trained on the shipped AML sample
  (../shared/data/aml_short.h5ad, 280 CyTOF cells) with the AML knowledge table and N
  cells are drawn from the trained flow (``sample(N, return_z=True)``).
* ``--simulate scyanflow``: the same with the scyan package's flow (in the peer env);
  cached as scyan_sim_scyanflow_<N>.h5ad.
* ``--simulate simple``: no flow: population drawn per cell, each marker +1/-1 from the
  table (uniform in [-1, 1] where the table says NaN) plus N(0, 0.3^2) noise, then a fixed
  random smooth invertible map (residual tanh layers); cached as scyan_sim_simple_<N>.h5ad.

Each fit runs alone in its own process (never two PyTorch jobs at once) with
torch.set_num_threads(k) (and OMP/MKL/SCPROB_NUM_THREADS=k) set before anything else, with
the default settings of each side: peer ``scyan.Scyan(adata, table).fit()`` then
``.predict()``; scprob ``Scyan(adata, table, seed=0).fit()`` then ``.predict()``.  Only
fit is timed as fit_s (predict separately).  Accuracy: predicted vs simulated population,
unassigned cells count as errors.  Peak RSS is each worker's VmHWM.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PEER = HERE / ".envs" / "scyan" / "bin" / "python"
WORKER = HERE / "_scyan_worker.py"
DATA = ROOT.parent / "shared" / "data"

p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
p.add_argument("--n-cells", type=int, default=200_000)
p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
p.add_argument("--skip-peer", action="store_true", help="fit scprob only")
p.add_argument("--skip-scprob", action="store_true", help="fit the peer only")
p.add_argument("--simulate", choices=["flow", "simple", "scyanflow"], default="flow")
p.add_argument("--regenerate", action="store_true", help="re-simulate even if the cached file exists")
p.add_argument("--source", default=str(DATA / "aml_short.h5ad"), help="real data the flow is trained on")
p.add_argument("--table", default=str(DATA / "aml_table.csv"))
p.add_argument("--data", help="use this .h5ad (var_names ⊇ table markers, obs['cell_type']) instead of simulating")
p.add_argument("--seed", type=int, default=0)
p.add_argument("--peer-python", default=str(PEER))
p.add_argument("--timeout", type=float, default=3600, help="seconds per worker")
p.add_argument("--json", help="also write all results to this file")
args = p.parse_args()


def worker_env(threads: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k in ("HOME", "LANG", "LC_ALL", "TMPDIR", "USER",
                                                         "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    t = str(threads)
    env.update(PATH="/usr/bin:/bin", OMP_NUM_THREADS=t, MKL_NUM_THREADS=t, OPENBLAS_NUM_THREADS=t,
               SCPROB_NUM_THREADS=t, PYTHONUNBUFFERED="1")
    return env


def run_worker(python: str, argv: list, threads: int, what: str) -> dict:
    cmd = [python, str(WORKER), *argv, "--threads", str(threads), "--seed", str(args.seed)]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=worker_env(threads), timeout=args.timeout)
    if out.returncode != 0:
        sys.exit(f"{what} failed (exit {out.returncode}):\n{out.stderr[-4000:]}")
    lines = [ln for ln in out.stdout.strip().splitlines() if ln.startswith("{")]
    if not lines:
        sys.exit(f"{what} printed no JSON:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    res = json.loads(lines[-1])
    res["wall_s"] = round(time.perf_counter() - t0, 2)
    res["loadavg_1min_after"] = round(os.getloadavg()[0], 2)
    return res


def read_table(path):
    import pandas as pd

    table = pd.read_csv(path, index_col=0)
    return table.apply(pd.to_numeric, errors="coerce").astype(float)


def simulate_simple(n: int, path: Path) -> None:
    """Table-driven populations pushed through a fixed random smooth invertible map."""
    import anndata as ad
    import pandas as pd

    table = read_table(args.table)
    rho = table.to_numpy()
    n_pops, n_markers = rho.shape
    rng = np.random.default_rng(args.seed)
    weights = rng.dirichlet(np.full(n_pops, 5.0))  # "uniform-ish": every population well represented
    z = rng.choice(n_pops, size=n, p=weights)
    target = rho[z]
    free = np.isnan(target)
    target[free] = rng.uniform(-1, 1, size=int(free.sum()))
    x = target + 0.3 * rng.standard_normal((n, n_markers))
    # x <- x + 0.3 tanh(A x + b): Lipschitz constant of the residual 0.3 * ||A||_2 = 0.6 < 1 -> invertible
    for _ in range(3):
        a = rng.standard_normal((n_markers, n_markers))
        a *= 2.0 / np.linalg.norm(a, 2)
        b = 0.3 * rng.standard_normal(n_markers)
        x = x + 0.3 * np.tanh(x @ a.T + b)
    pops = [str(v) for v in table.index]
    obs = pd.DataFrame({"cell_type": pd.Categorical(np.asarray(pops, dtype=object)[z], categories=pops)},
                       index=[f"c{i}" for i in range(n)])
    out = ad.AnnData(x.astype(np.float32), obs=obs, var=pd.DataFrame(index=[str(m) for m in table.columns]))
    out.uns["simulation"] = dict(method="simple", seed=args.seed)
    out.write_h5ad(path)


def dataset() -> Path:
    if args.data:
        return Path(args.data)
    suffix = {"flow": "", "simple": "simple_", "scyanflow": "scyanflow_"}[args.simulate]
    path = HERE / ".data" / f"scyan_sim_{suffix}{args.n_cells}.h5ad"
    if path.exists() and not args.regenerate:
        print(f"data: {path} (cached)", flush=True)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.h5ad")
    t0 = time.perf_counter()
    if args.simulate == "simple":
        simulate_simple(args.n_cells, tmp)
    else:
        impl, py = ("scprob", sys.executable) if args.simulate == "flow" else ("scyan", args.peer_python)
        if impl == "scprob":
            chk = subprocess.run([py, "-c", "from scprob.models import Scyan"], capture_output=True, text=True)
            if chk.returncode != 0:
                sys.exit("scprob.models.Scyan is not importable yet: use --simulate simple (or scyanflow)\n"
                         + chk.stderr[-1500:])
        run_worker(py, ["simulate", impl, str(tmp), args.table, "--n-cells", str(args.n_cells),
                        "--source", args.source], max(args.threads), f"simulation ({impl} flow)")
    tmp.replace(path)
    print(f"data: {path} (simulated in {time.perf_counter() - t0:.1f} s, --simulate {args.simulate})", flush=True)
    return path


def main() -> None:
    if not args.skip_peer and not Path(args.peer_python).exists():
        sys.exit(f"no peer environment at {args.peer_python}: run bash benchmarks/make_scyan_env.sh "
                 "(or pass --skip-peer)")
    data = dataset()
    load = os.getloadavg()[0]
    print(f"load average before fitting: {load:.2f} on {os.cpu_count()} cores", flush=True)
    if load > 0.5:
        print("WARNING: the machine is busy; timings will be inflated (oversubscribed torch threads "
              "slow down by large factors). Re-run on an idle machine for numbers to report.", flush=True)
    sides = [(impl, py) for impl, py, skip in (("scyan", args.peer_python, args.skip_peer),
                                                ("scprob", sys.executable, args.skip_scprob)) if not skip]
    results = []
    for k in args.threads:
        for impl, py in sides:
            res = run_worker(py, ["fit", impl, str(data), args.table], k, f"{impl} fit, {k} thread(s)")
            print(json.dumps(res), flush=True)
            results.append(res)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))

    cols = [("fit_s", "fit s", "{:.1f}"), ("epochs", "epochs", "{}"), ("accuracy", "accuracy", "{:.4f}"),
            ("unassigned", "unassigned", "{}"), ("predict_s", "predict s", "{:.2f}"),
            ("peak_rss_gb", "peak RSS GB", "{:.2f}")]
    print(f"\n{data.name}: {results[0]['n_cells']:,} cells x {results[0]['n_markers']} markers, "
          f"{results[0]['n_pops']} populations")
    print(f"{'threads':>7}  {'impl':<7}" + "".join(f"{h:>13}" for _, h, _ in cols))
    for r in results:
        vals = "".join(f"{(f.format(r[c]) if r.get(c) is not None else '-'):>13}" for c, _, f in cols)
        print(f"{r['threads']:>7}  {r['impl']:<7}" + vals)
    by = {(r["impl"], r["threads"]): r for r in results}
    for k in args.threads:
        a, b = by.get(("scprob", k)), by.get(("scyan", k))
        if a and b:
            print(f"ratio scprob/scyan fit time, {k} thread(s): {a['fit_s'] / b['fit_s']:.3f}"
                  f"   (per epoch: {(a['fit_s'] / a['epochs']) / (b['fit_s'] / b['epochs']):.3f})"
                  if a.get("epochs") and b.get("epochs") else
                  f"ratio scprob/scyan fit time, {k} thread(s): {a['fit_s'] / b['fit_s']:.3f}")


if __name__ == "__main__":
    main()
