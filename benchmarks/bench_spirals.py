"""Throughput of the spiral detector: windows classified per second, surrogates included.

The target (issue "double twisted spirals") is 10,000 windows of 400 steps x 64 parameters in
under 60 s on 2 cores. The windows are synthetic (``tests/synth_spirals.py``: a third noise, the
rest spirals of every kind) and generated outside the clock; the time covers
:func:`geomtraj.analysis.spirals.measure_windows` only (residual, flip frame, PCA, phase, winding,
up to 199 phase-randomised surrogates per window, plane turns, classification). Compilation is
timed apart (numba caches it on disk after the first run).

The kernels are serial, so the cores are used by one process per core, each classifying its share
of the windows; the figure is the slowest worker's classifying time. ``--single`` also times one
process alone (one core).

    python benchmarks/bench_spirals.py [--windows 10000] [--chunk 250] [--workers 2] [--single]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

STEPS, PARAMS = 400, 64


def _chunk(seed: int, size: int) -> np.ndarray:
    import synth_spirals

    rng = np.random.default_rng(seed)
    kinds = synth_spirals.KINDS
    return np.stack(
        [
            synth_spirals.make_window(kinds[i % len(kinds)], rng, STEPS, PARAMS).theta
            for i in range(size)
        ]
    )


def _classify(chunks: list[tuple[int, int]]) -> tuple[float, float, int, int]:
    """Generate and classify chunks ``(seed, size)``: (wall seconds classifying, CPU seconds
    classifying, windows, spirals)."""
    from geomtraj.analysis.spirals import measure_windows

    measure_windows(_chunk(0, 2))  # compile or load the kernels outside the clock
    busy, cpu, count, spirals = 0.0, 0.0, 0, 0
    for seed, size in chunks:
        windows = _chunk(seed, size)
        keys = np.arange(seed * size, seed * size + size)
        t0, c0 = time.perf_counter(), time.process_time()
        res = measure_windows(windows, keys=keys)
        busy += time.perf_counter() - t0
        cpu += time.process_time() - c0
        count += size
        spirals += int(res["is_spiral"].sum())
    return busy, cpu, count, spirals


def _worker(chunks):
    return _classify(chunks)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, default=10_000)
    ap.add_argument("--chunk", type=int, default=250)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--single", action="store_true", help="also time one process on one core")
    args = ap.parse_args(argv)
    n_chunks = -(-args.windows // args.chunk)
    chunks = [(1 + i, args.chunk) for i in range(n_chunks)]
    total = n_chunks * args.chunk

    from geomtraj.analysis.spirals import measure_windows

    t0 = time.perf_counter()
    measure_windows(_chunk(0, 2))
    print(f"compile/load kernels: {time.perf_counter() - t0:.1f} s")
    print(f"cpus available: {os.cpu_count()}, load average: {os.getloadavg()[0]:.1f}")

    if args.single:
        busy, cpu, count, spirals = _classify(chunks)
        print(
            f"one process: {count} windows of {STEPS} steps x {PARAMS} params in {busy:.1f} s "
            f"({cpu:.1f} CPU s; {count / busy:.0f} windows/s, {spirals} spirals)"
        )

    # one process per core; the clock is the slowest worker's classifying time
    shares = [chunks[w :: args.workers] for w in range(args.workers)]
    ctx = __import__("multiprocessing").get_context("spawn")
    with ProcessPoolExecutor(args.workers, mp_context=ctx) as pool:
        results = list(pool.map(_worker, shares))
    wall = max(r[0] for r in results)
    cpu = sum(r[1] for r in results)
    count = sum(r[2] for r in results)
    spirals = sum(r[3] for r in results)
    print(
        f"{args.workers} processes: {count} windows of {STEPS} steps x {PARAMS} params in "
        f"{wall:.1f} s ({count / wall:.0f} windows/s, {spirals} spirals); target for {total}: "
        "under 60 s"
    )
    # the work splits evenly over processes, so CPU time over the cores is the wall time that
    # idle cores would take; on a shared machine it is the figure that other load cannot inflate
    print(
        f"CPU time classifying: {cpu:.1f} s in all, {cpu / args.workers:.1f} s per core "
        f"({1e3 * cpu / count:.2f} ms per window)"
    )
    print(f"load average after: {os.getloadavg()[0]:.1f} (other processes share these cores)")


if __name__ == "__main__":
    main()
