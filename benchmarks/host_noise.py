"""How steady this machine's CPUs are: the same pure-Python loop, timed repeatedly on each
CPU at once (one pinned process per CPU) and then on each alone.  On a quiet machine every
time is within a few percent of the others; on a shared host whose neighbours take CPU
time, they spread, and short multi-threaded steps (each joins its threads many times)
slow down by more than the spread.  Run it next to a benchmark to tell the two apart.

    python benchmarks/host_noise.py --rounds 8
"""

import argparse
import os
import subprocess
import sys
import time


def loop_ms(cpu: int, rounds: int) -> list[float]:
    os.sched_setaffinity(0, {cpu})
    out = []
    for _ in range(rounds):
        t = time.perf_counter()
        s = 0
        for i in range(3_000_000):
            s += i * i
        out.append(1e3 * (time.perf_counter() - t))
    return out


p = argparse.ArgumentParser()
p.add_argument("--rounds", type=int, default=8)
p.add_argument("--cpu", type=int, default=None, help=argparse.SUPPRESS)
args = p.parse_args()
if args.cpu is not None:
    print(" ".join(f"{v:.0f}" for v in loop_ms(args.cpu, args.rounds)))
    sys.exit(0)

cpus = sorted(os.sched_getaffinity(0))
run = lambda cpu: subprocess.Popen([sys.executable, __file__, "--cpu", str(cpu), "--rounds", str(args.rounds)],  # noqa: E731
                                   stdout=subprocess.PIPE, text=True)
for label, groups in (("together", [cpus]), ("alone", [[c] for c in cpus])):
    for group in groups:
        procs = {c: run(c) for c in group}
        for c, proc in procs.items():
            ms = [float(v) for v in proc.communicate()[0].split()]
            print(f"{label:8} cpu {c}: ms per loop {' '.join(f'{v:.0f}' for v in ms)}   "
                  f"min {min(ms):.0f}  max {max(ms):.0f}  spread {100 * (max(ms) / min(ms) - 1):.0f}%")
