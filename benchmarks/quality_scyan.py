"""Scyan quality on the shipped AML data: scprob vs the scyan package, seeds 0, 1, 2.

    bash benchmarks/make_scyan_env.sh          # once: the peer in benchmarks/.envs/scyan
    python benchmarks/quality_scyan.py         # --threads 1, both sides, seeds 0 1 2
    python benchmarks/quality_scyan.py --skip-peer

Data: ``scprob.data.load_aml()`` (280 CyTOF cells, 20 manually gated per population,
already asinh-transformed and scaled) with its knowledge table; the manual gates
(``obs.cell_type``) are only used to score.  Each fit runs alone in its own process
(benchmarks/_scyan_worker.py) with the default settings of each side:
``scyan.Scyan(adata, table).fit()`` / ``scprob.models.Scyan(adata, table, seed=s).fit()``,
then ``predict()``.  Unassigned cells count as errors for accuracy and as their own
class for macro-F1.
"""

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
p.add_argument("--threads", type=int, default=1)
p.add_argument("--skip-peer", action="store_true")
p.add_argument("--peer-python", default=str(HERE / ".envs" / "scyan" / "bin" / "python"))
args = p.parse_args()


def worker_env(threads: int) -> dict:
    import os

    env = {k: v for k, v in os.environ.items() if k in ("HOME", "LANG", "LC_ALL", "TMPDIR", "USER")}
    t = str(threads)
    env.update(PATH="/usr/bin:/bin", OMP_NUM_THREADS=t, MKL_NUM_THREADS=t, OPENBLAS_NUM_THREADS=t,
               SCPROB_NUM_THREADS=t, PYTHONUNBUFFERED="1")
    return env


def main() -> None:
    import scprob

    adata, table = scprob.data.load_aml()
    data_dir = HERE / ".data"
    data_dir.mkdir(exist_ok=True)
    data, table_path = data_dir / "aml_short.h5ad", data_dir / "aml_table.csv"
    adata.write_h5ad(data)
    table.to_csv(table_path)
    sides = [("scprob", sys.executable)]
    if not args.skip_peer:
        if not Path(args.peer_python).exists():
            sys.exit(f"no peer environment at {args.peer_python}: run bash benchmarks/make_scyan_env.sh (or --skip-peer)")
        sides.insert(0, ("scyan", args.peer_python))
    rows = []
    for impl, py in sides:
        for seed in args.seeds:
            cmd = [py, str(HERE / "_scyan_worker.py"), "fit", impl, str(data), str(table_path),
                   "--threads", str(args.threads), "--seed", str(seed)]
            out = subprocess.run(cmd, capture_output=True, text=True, env=worker_env(args.threads))
            if out.returncode != 0:
                sys.exit(f"{impl} seed {seed} failed:\n{out.stderr[-3000:]}")
            res = json.loads([ln for ln in out.stdout.splitlines() if ln.startswith("{")][-1])
            res["seed"] = seed
            rows.append(res)
            print(json.dumps(res), flush=True)
    print(f"\nAML (280 cells x {rows[0]['n_markers']} table markers, {rows[0]['n_pops']} populations), threads={args.threads}")
    print(f"{'impl':<8}{'seed':>5}{'accuracy':>10}{'macro-F1':>10}{'unassigned':>11}{'epochs':>8}{'fit s':>8}")
    for r in rows:
        print(f"{r['impl']:<8}{r['seed']:>5}{r['accuracy']:>10.4f}{r['macro_f1']:>10.4f}{r['unassigned']:>11}"
              f"{r['epochs']:>8}{r['fit_s']:>8.1f}")
    for impl, _ in sides:
        acc = [r["accuracy"] for r in rows if r["impl"] == impl]
        f1 = [r["macro_f1"] for r in rows if r["impl"] == impl]
        print(f"{impl:<8} mean accuracy {statistics.mean(acc):.4f} (spread {max(acc) - min(acc):.4f}), "
              f"mean macro-F1 {statistics.mean(f1):.4f}")


if __name__ == "__main__":
    main()
