"""Training speed in network-steps per second, beside a batched PyTorch peer.

Networks: 2 -> 12 -> 24 -> 1 (tanh, MSE), 64 points of the sincos data set, full-batch Adam.
Each cell trains ``--steps`` updates into a zarr store in a temporary directory (the way users
train), with recording off (``record_params = 0``: only the per-update loss and norms), 16
coordinates of theta/m/v every step, or every coordinate every step. Compile time is measured
once per precision, apart from the timed runs. When torch is installed, the PyTorch peer
(``benchmarks/peers/torch_adam.py``) runs in the same invocation and the ratio is printed.

A second case, the width grid, trains one float32 run of each architecture 2 -> n1 -> n2 -> 1 for
n1, n2 in 5, 8, ..., 44 (196 different networks, so none shares an architecture and every run
takes the per-run kernel), recording off, with the machine's thread count and with one thread: how
evenly the work of runs of very different sizes is spread over the threads.

Usage::

    python benchmarks/bench_train.py                      # every cell, each timed once
    python benchmarks/bench_train.py --repeats 3          # the fastest of three (make bench)
    python benchmarks/bench_train.py --nets 1024 --dtypes float32 --records none
    python benchmarks/bench_train.py --nets --width-grid   # the width grid only
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numba
import numpy as np

from geomtraj.train.data import make_dataset
from geomtraj.train.models import MLPSpec
from geomtraj.train.trainer import DataSource, Plan, Run, train, train_plan

HERE = Path(__file__).resolve().parent
RECORDS = {"none": 0, "16": 16, "all": "all"}


def _store_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def bench_geomtraj(
    n_nets: int, dtype: str, record: str, steps: int, workdir: Path, repeats: int = 1
) -> dict:
    """Train into a fresh store ``repeats`` times; the fastest counts (as for the peer)."""
    X, y = make_dataset("sincos", 64, 0)
    out = workdir / f"bench-{n_nets}-{dtype}-{record}.zarr"
    times = []
    for _ in range(repeats):
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        train(
            X,
            y,
            hidden=(12, 24),
            steps=steps,
            precision=dtype,
            seed=np.arange(n_nets),
            lr=1e-3,
            record_params=RECORDS[record],
            store=out,
        )
        times.append(time.perf_counter() - t0)
    seconds = min(times)
    recorded = 0 if record == "none" else (16 if record == "16" else 373)
    raw = n_nets * steps * (3 * recorded + 4) * np.dtype(dtype).itemsize
    row = {
        "impl": "geomtraj",
        "n_nets": n_nets,
        "dtype": dtype,
        "record": record,
        "steps": steps,
        "seconds": seconds,
        "seconds_all": times,
        "network_steps_per_s": n_nets * steps / seconds,
        "raw_mb_per_s": raw / seconds / 1e6,
        "store_mb": _store_bytes(out) / 1e6,
        "threads": numba.get_num_threads(),
    }
    shutil.rmtree(out, ignore_errors=True)
    return row


#: Hidden widths of the width grid: every pair (n1, n2) of these is one run.
GRID_WIDTHS = range(5, 45, 3)


def width_grid_plan(steps: int) -> Plan:
    """One float32 run per architecture 2 -> n1 -> n2 -> 1, ordered from small to large nets."""
    X, y = make_dataset("sincos", 64, 0)
    runs = [
        Run(MLPSpec(2, (n1, n2)), seed=k, precision="float32", lr=1e-3)
        for k, (n1, n2) in enumerate((a, b) for a in GRID_WIDTHS for b in GRID_WIDTHS)
    ]
    return Plan(runs, [DataSource("sincos", X, y)], steps=steps, record_params=0)


def bench_width_grid(steps: int, threads: int, workdir: Path) -> dict:
    """Net-steps/s of the width grid with ``threads`` numba threads (to a store, no recording)."""
    saved = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        plan = width_grid_plan(steps)
        out = workdir / f"grid-{threads}.zarr"
        t0 = time.perf_counter()
        train_plan(plan, store=out, progress=False)
        seconds = time.perf_counter() - t0
    finally:
        numba.set_num_threads(saved)
    shutil.rmtree(out, ignore_errors=True)
    n = len(plan.runs)
    return {
        "impl": "geomtraj",
        "case": "width_grid",
        "n_nets": n,
        "dtype": "float32",
        "record": "none",
        "steps": steps,
        "seconds": seconds,
        "network_steps_per_s": n * steps / seconds,
        "threads": threads,
    }


def compile_seconds(dtype: str, workdir: Path) -> float:
    X, y = make_dataset("sincos", 64, 0)
    t0 = time.perf_counter()
    train(X, y, hidden=(12, 24), steps=2, precision=dtype, store=workdir / f"compile-{dtype}.zarr")
    return time.perf_counter() - t0


def bench_peer(n_nets: int, dtype: str, steps: int, repeats: int = 1) -> dict | None:
    try:
        sys.path.insert(0, str(HERE / "peers"))
        from torch_adam import run_peer
    except ImportError:
        return None
    return run_peer(n_nets, widths=(12, 24), n_points=64, steps=steps, dtype=dtype, repeats=repeats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", type=int, nargs="*", default=[64, 1024])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    ap.add_argument("--records", nargs="+", default=["none", "16", "all"], choices=list(RECORDS))
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument(
        "--peer-steps", type=int, default=None, help="steps for the peer (default: --steps)"
    )
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="timed runs per cell, for geomtraj and the peer alike; the fastest is reported "
        "(this machine's timings vary by tens of percent between runs)",
    )
    ap.add_argument(
        "--width-grid",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time the width grid (196 architectures, float32) with all threads and one",
    )
    ap.add_argument("--json", type=Path, help="append result rows to this JSON-lines file")
    args = ap.parse_args()

    print(
        f"geomtraj training benchmark: {os.cpu_count()} cores, numba {numba.__version__}, "
        f"{numba.get_num_threads()} threads, {args.steps} steps, widths (12,24), 64 points"
    )
    rows, peer = [], None
    with tempfile.TemporaryDirectory(prefix="geomtraj-bench-") as tmp:
        work = Path(tmp)
        for dtype in args.dtypes if args.nets else ():
            print(
                f"compile {dtype}: {compile_seconds(dtype, work):.1f} s (not in the figures below)"
            )
        if args.nets:
            print(
                f"{'nets':>5} {'dtype':>8} {'record':>6} {'net-steps/s':>12} {'peer':>10} "
                f"{'ratio':>6} {'vs off':>7} {'MB/s raw':>9} {'store MB':>9}"
            )
        for n in args.nets:
            for dtype in args.dtypes:
                peer = (
                    None
                    if args.no_peer
                    else bench_peer(n, dtype, args.peer_steps or args.steps, args.repeats)
                )
                if peer is not None:
                    peer["impl"] = "torch"
                    rows.append(peer)
                base = None
                for record in args.records:
                    row = bench_geomtraj(n, dtype, record, args.steps, work, args.repeats)
                    rows.append(row)
                    rate = row["network_steps_per_s"]
                    base = rate if record == "none" else base
                    prate = peer["network_steps_per_s"] if peer else float("nan")
                    slow = f"{(base / rate - 1) * 100:+.0f}%" if base and record != "none" else ""
                    print(
                        f"{n:>5} {dtype:>8} {record:>6} {rate:>12,.0f} {prate:>10,.0f} "
                        f"{rate / prate:>6.2f} {slow:>7} {row['raw_mb_per_s']:>9.1f} "
                        f"{row['store_mb']:>9.1f}",
                        flush=True,
                    )
        if args.width_grid:
            bench_width_grid(2, 1, work)  # compile the float32 per-run kernel outside the timing
            widths = f"{GRID_WIDTHS.start}..{GRID_WIDTHS.stop - 1} step {GRID_WIDTHS.step}"
            print(f"width grid: 2 -> n1 -> n2 -> 1, n1, n2 in {widths}, float32, record none")
            print(f"{'nets':>5} {'threads':>7} {'net-steps/s':>12} {'speed-up':>8}")
            single = None
            for threads in sorted({1, numba.get_num_threads()}):
                row = bench_width_grid(args.steps, threads, work)
                rows.append(row)
                rate = row["network_steps_per_s"]
                single = rate if threads == 1 else single
                print(
                    f"{row['n_nets']:>5} {threads:>7} {rate:>12,.0f} {rate / single:>8.2f}",
                    flush=True,
                )
    if peer is None and not args.no_peer and args.nets:
        print("(PyTorch not installed: no peer column; `pip install torch` to compare)")
    if args.json:
        with open(args.json, "a") as fh:
            for row in rows:
                fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
