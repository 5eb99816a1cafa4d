"""Throughput of the spiral detector: windows classified per second, surrogates included.

The target (issue "double twisted spirals") is 10,000 windows of 400 steps x 64 parameters in
under 60 s on 2 cores. The windows are synthetic (``tests/synth_spirals.py``: a third noise, the
rest spirals of every kind) and generated before the clock starts; the time covers
:func:`geomtraj.analysis.spirals.measure_windows` only (residual, PCA, flip frame, phase, winding,
99 phase-randomised surrogates per window, plane turns, classification). Compilation is timed
apart (numba caches it on disk after the first run).

Two ways of using the cores are timed: one process whose numba kernels run on all threads (the
NumPy and SciPy steps between them run on one), and one process per core, each with one thread,
classifying its share of the windows.

    python benchmarks/bench_spirals.py [--windows 10000] [--chunk 250] [--workers 2]
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


def _classify(chunks: list[tuple[int, int]]) -> tuple[float, int, int]:
    """Generate and classify chunks ``(seed, size)``: (seconds classifying, windows, spirals)."""
    from geomtraj.analysis.spirals import measure_windows

    measure_windows(_chunk(0, 2))  # compile or load the kernels outside the clock
    busy, count, spirals = 0.0, 0, 0
    for seed, size in chunks:
        windows = _chunk(seed, size)
        keys = np.arange(seed * size, seed * size + size)
        t0 = time.perf_counter()
        res = measure_windows(windows, keys=keys)
        busy += time.perf_counter() - t0
        count += size
        spirals += int(res["is_spiral"].sum())
    return busy, count, spirals


def _worker(chunks):
    return _classify(chunks)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, default=10_000)
    ap.add_argument("--chunk", type=int, default=250)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    n_chunks = -(-args.windows // args.chunk)
    chunks = [(1 + i, args.chunk) for i in range(n_chunks)]
    total = n_chunks * args.chunk

    from geomtraj.analysis.spirals import measure_windows

    t0 = time.perf_counter()
    measure_windows(_chunk(0, 2))
    print(f"compile/load kernels: {time.perf_counter() - t0:.1f} s")
    print(f"cpus available: {os.cpu_count()}, load average: {os.getloadavg()[0]:.1f}")

    busy, count, spirals = _classify(chunks)
    print(
        f"one process, numba threads on all cores: {count} windows of {STEPS} steps x {PARAMS} "
        f"params in {busy:.1f} s ({count / busy:.0f} windows/s, {spirals} spirals)"
    )

    # one single-threaded process per core; the clock is the slowest worker's classifying time
    os.environ["NUMBA_NUM_THREADS"] = "1"
    shares = [chunks[w :: args.workers] for w in range(args.workers)]
    ctx = __import__("multiprocessing").get_context("spawn")
    with ProcessPoolExecutor(args.workers, mp_context=ctx) as pool:
        results = list(pool.map(_worker, shares))
    wall = max(r[0] for r in results)
    count = sum(r[1] for r in results)
    print(
        f"{args.workers} processes, one thread each: {count} windows in {wall:.1f} s "
        f"({count / wall:.0f} windows/s); target for {total}: under 60 s"
    )
    print(f"load average after: {os.getloadavg()[0]:.1f} (other processes share these cores)")


if __name__ == "__main__":
    main()
