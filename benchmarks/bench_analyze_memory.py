"""Peak memory and throughput of ``geomtraj analyze`` on stores larger than its memory budget.

``geomtraj analyze --memory-limit B`` may hold ``B`` MiB of store data per process. This benchmark
trains a store whose trajectories (theta, m, v, loss and the per-update series, uncompressed) are
``--factor`` times ``B`` (8 by default), and a store ``--factor`` times smaller (1 x ``B``), runs
``geomtraj analyze`` on each in a fresh process, samples the resident memory of that process and
its children every 20 ms, and reports the peak beside the store size. The claim under test: peak
RSS stays below 1.5 GB and does not grow with the store.

Throughput is recorded values per second: every stored number of the analysed runs (theta, m, v
and loss per recorded row, and the three per-update series), divided by the wall time of the
command (start-up and compilation from the disk cache included).

Usage::

    python benchmarks/bench_analyze_memory.py                    # budget 128 MiB, 8x store
    python benchmarks/bench_analyze_memory.py --budget-mb 64 --analyses periods --jobs 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from geomtraj.train.data import make_dataset
from geomtraj.train.models import MLPSpec
from geomtraj.train.plan import DataSource, Plan, Run
from geomtraj.train.trainer import train_plan

HIDDEN = (12, 24)  # 373 parameters, the paper's smallest figure network
RSS_LIMIT = 1.5e9


def plan_for(target_bytes: float, steps: int, precision: str) -> tuple[Plan, int]:
    """Runs of 12x24 tanh nets, every parameter recorded, enough of them for ``target_bytes``."""
    X, y = make_dataset("sincos", 64, 0)
    spec = MLPSpec(2, HIDDEN, "tanh", "mse")
    item = np.dtype(precision).itemsize
    per_run = steps * (3 * spec.n_params + 1 + 3) * item
    n_runs = max(1, int(np.ceil(target_bytes / per_run)))
    runs = [
        Run(spec=spec, beta2=(0.99, 0.995, 0.999)[i % 3], lr=1e-2, seed=i, precision=precision)
        for i in range(n_runs)
    ]
    plan = Plan(
        runs=runs,
        datasets=[DataSource("sincos", X, y, {"n_points": 64, "seed": 0})],
        steps=steps,
        record_every=1,
        record_params="all",
    )
    return plan, per_run * n_runs


def _tree_rss(proc) -> int:
    import psutil

    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def run_analyze(store: Path, out: Path, budget_mb: float, analyses: str | None, jobs: int):
    """``geomtraj analyze`` in a child process; returns (exit code, seconds, peak RSS bytes)."""
    import psutil

    cmd = [sys.executable, "-m", "geomtraj.cli", "analyze", str(store), "--out", str(out),
           "--quiet", "--memory-limit", str(budget_mb), "--jobs", str(jobs)]  # fmt: skip
    if analyses is not None:
        cmd += ["--analyses", analyses]
    peak = [0]
    t0 = time.perf_counter()
    child = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    proc = psutil.Process(child.pid)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _tree_rss(proc))
            time.sleep(0.02)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    _, err = child.communicate()
    seconds = time.perf_counter() - t0
    done.set()
    watcher.join()
    if err.strip():
        print(err.strip(), file=sys.stderr)
    return child.returncode, seconds, peak[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget-mb", type=float, default=128.0, help="analyze --memory-limit")
    ap.add_argument("--factor", type=float, default=8.0, help="store size / budget (>= 8)")
    ap.add_argument("--steps", type=int, default=4000, help="updates per run")
    ap.add_argument("--precision", default="float64")
    ap.add_argument("--analyses", default=None, help="analyze --analyses (default: all)")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--workdir", help="where the stores go (default: a temporary directory)")
    ap.add_argument("--json", help="append the results as JSON lines to this file")
    args = ap.parse_args(argv)

    work = Path(args.workdir or tempfile.mkdtemp(prefix="geomtraj-bench-analyze-"))
    work.mkdir(parents=True, exist_ok=True)
    budget = args.budget_mb * 2**20
    rows = []
    try:
        for factor in (1.0, args.factor):
            plan, data_bytes = plan_for(factor * budget, args.steps, args.precision)
            store = work / f"x{factor:g}.zarr"
            shutil.rmtree(store, ignore_errors=True)
            t0 = time.perf_counter()
            train_plan(plan, store, progress=False)
            train_s = time.perf_counter() - t0
            disk = sum(f.stat().st_size for f in store.rglob("*") if f.is_file())
            code, seconds, peak = run_analyze(
                store, work / f"x{factor:g}-report", args.budget_mb, args.analyses, args.jobs
            )
            n = len(plan.runs)
            values = n * (args.steps * (3 * plan.runs[0].spec.n_params + 1) + 3 * args.steps)
            rows.append(
                {
                    "factor": factor,
                    "runs": n,
                    "steps": args.steps,
                    "data_mib": data_bytes / 2**20,
                    "disk_mib": disk / 2**20,
                    "budget_mib": args.budget_mb,
                    "jobs": args.jobs,
                    "analyses": args.analyses or "all",
                    "train_s": train_s,
                    "analyze_s": seconds,
                    "exit": code,
                    "peak_rss_mib": peak / 2**20,
                    "values_per_s": values / seconds,
                    "mib_per_s": data_bytes / 2**20 / seconds,
                }
            )
            shutil.rmtree(store, ignore_errors=True)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)

    print(
        f"{'store/budget':>12} {'runs':>5} {'data MiB':>9} {'disk MiB':>9} {'analyze s':>10} "
        f"{'peak RSS MiB':>13} {'values/s':>10} {'MiB/s':>7} exit"
    )
    for r in rows:
        print(
            f"{r['factor']:>12g} {r['runs']:>5} {r['data_mib']:>9.0f} {r['disk_mib']:>9.0f} "
            f"{r['analyze_s']:>10.1f} {r['peak_rss_mib']:>13.0f} {r['values_per_s']:>10.3g} "
            f"{r['mib_per_s']:>7.1f} {r['exit']}"
        )
    if args.json:
        with open(args.json, "a") as fh:
            for r in rows:
                fh.write(json.dumps(r) + "\n")
    ok = all(r["exit"] == 0 and r["peak_rss_mib"] * 2**20 < RSS_LIMIT for r in rows)
    big = rows[-1]
    print(
        f"peak RSS {big['peak_rss_mib']:.0f} MiB on a store "
        f"{big['data_mib'] / args.budget_mb:.1f}x the {args.budget_mb:g} MiB budget: "
        f"{'OK' if ok else 'FAILED'} (limit 1.5 GB, exit 0)"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
