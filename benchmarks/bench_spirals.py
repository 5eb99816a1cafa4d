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

``--grid N`` times instead the whole analysis (:func:`geomtraj.analysis.spirals.analyze`, burst
windows) per run of a Netay-style grid of ``N`` runs (``benchmarks/bench_analyze.py``'s: mixed
widths, 50,000 updates, 8 recorded parameters), trained first into a temporary store (or read
from ``--store``). With ``--baseline DIR`` (another checkout's source, e.g. from ``git archive``
or ``git worktree``) the same store is analysed by both versions in the same invocation, each
in its own process, in alternation ``--repeats`` times; each prints its best per-run time, a
digest of its report (the counts and every spiral window, which must match for the figures to
compare like with like) and a digest of its whole result (which also holds the p-values of
windows that are not spirals, left untested since the surrogate test runs only where it can
change a label). When the grid is trained here, it is trained ``--repeats`` times, once before
each round of the alternation, and the spiral time is also given as a share of the best training
time per run (training uses both cores, the analysis one).

    python benchmarks/bench_spirals.py --grid 6 [--store PATH] [--baseline DIR] [--repeats 3]
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

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


def _time_store(store: str, repeats: int) -> None:
    """Child process of ``--grid``: best per-run seconds of the spiral analysis of every run of
    ``store`` over ``repeats`` calls, and a digest of the result (printed as one line)."""
    import hashlib
    import json

    import geomtraj
    from geomtraj.analysis import spirals
    from geomtraj.store.zarrstore import open_store

    ds = open_store(store).load()  # read once, outside the clock, as the runner does
    spirals.analyze(ds, runs=[int(ds.run[0])])  # compile or load the kernels outside the clock
    best, best_cpu = np.inf, np.inf
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        result = spirals.analyze(ds)
        best = min(best, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    digest = hashlib.sha256()
    for name in sorted(result.variables):
        values = result[name].values
        digest.update(name.encode())
        digest.update(values.astype(str).tobytes() if values.dtype == object else values.tobytes())
    # the report (every spiral window with every quantity, and the counts) is what must not move;
    # the whole result also holds the p-values of windows that are not spirals
    report = hashlib.sha256(json.dumps(spirals.report(result), sort_keys=True).encode())
    n = result.sizes["run"]
    print(f"{best / n:.4f} {best_cpu / n:.4f} {report.hexdigest()[:16]} "
          f"{digest.hexdigest()[:16]} {Path(geomtraj.__file__).parent}")  # fmt: skip


def _grid(args) -> None:
    import subprocess
    import tempfile

    import bench_analyze

    tmp = tempfile.TemporaryDirectory()
    store = args.store
    t_train_run = c_train_run = None
    if store is None:
        widths = bench_analyze.grid_widths(args.grid)
        cfg = Path(tmp.name) / "grid.toml"
        cfg.write_text(bench_analyze.config_text(widths, 50_000, 8, 2_500))
        store = str(Path(tmp.name) / "grid.zarr")
        c0 = time.process_time()
        t_train = bench_analyze.train_store(cfg, Path(store))
        c_train_run = (time.process_time() - c0) / len(widths)  # every thread's CPU time
        t_train_run = t_train / len(widths)
        print(f"grid: {len(widths)} float32 runs ({', '.join(widths)}), 50000 updates, 8 "
              f"recorded parameters; training {t_train_run:.3f} s per run (first)")  # fmt: skip
    trees = {"this checkout": None}
    if args.baseline:
        trees["baseline"] = str(Path(args.baseline).resolve())
    best = {name: np.inf for name in trees}
    best_cpu = {name: np.inf for name in trees}
    digests = {}
    for r in range(args.repeats):
        if t_train_run is not None and r > 0:
            # training is timed as often as the analysis, in the same alternation (best of all)
            again = Path(tmp.name) / f"again{r}.zarr"
            c0 = time.process_time()
            t_train_run = min(t_train_run, bench_analyze.train_store(cfg, again) / len(widths))
            c_train_run = min(c_train_run, (time.process_time() - c0) / len(widths))
        # alternate the versions, so that other load on the machine weighs on both alike
        for name, tree in trees.items():
            env = dict(os.environ)
            if tree is not None:
                env["PYTHONPATH"] = os.pathsep.join(filter(None, [tree, env.get("PYTHONPATH")]))
            cmd = [sys.executable, __file__, "--time-store", store, "--repeats", "1"]
            line = subprocess.run(
                cmd, env=env, check=True, capture_output=True, text=True
            ).stdout.split()
            best[name] = min(best[name], float(line[0]))
            best_cpu[name] = min(best_cpu[name], float(line[1]))
            digests[name] = (line[2], line[3], line[4])
    if t_train_run is not None:
        print(f"training {t_train_run:.3f} s per run, {c_train_run:.3f} CPU s per run over its "
              f"threads (best of {args.repeats})")  # fmt: skip
    for name in trees:
        print(f"{name:>14}: spirals {best[name]:.3f} s per run, {best_cpu[name]:.3f} CPU s per "
              f"run (best of {args.repeats}); report digest {digests[name][0]}, result digest "
              f"{digests[name][1]} ({digests[name][2]})")  # fmt: skip
        if t_train_run is not None:
            # CPU over CPU is the ratio that load inflates least; training's CPU counts both
            # of its threads, so on an idle machine the wall ratio is higher by about their gain
            print(f"{'':>14}  spirals / training: {best[name] / t_train_run:.2f} (wall), "
                  f"{best_cpu[name] / c_train_run:.2f} (CPU)")  # fmt: skip
    if args.baseline:
        same = digests["this checkout"][0] == digests["baseline"][0]
        same_all = digests["this checkout"][1] == digests["baseline"][1]
        ratio = best["baseline"] / best["this checkout"]
        ratio_cpu = best_cpu["baseline"] / best_cpu["this checkout"]
        # CPU time is the figure that other load on a shared machine inflates least
        print(f"speed-up {ratio:.2f}x wall, {ratio_cpu:.2f}x CPU; reports "
              f"{'identical' if same else 'DIFFER'}; whole results "
              f"{'identical' if same_all else 'differ'}")  # fmt: skip


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, default=10_000)
    ap.add_argument("--chunk", type=int, default=250)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--single", action="store_true", help="also time one process on one core")
    ap.add_argument("--grid", type=int, default=0, help="time the analysis of a grid of N runs")
    ap.add_argument("--store", default=None, help="with --grid: an existing store to analyse")
    ap.add_argument("--baseline", default=None, help="with --grid: another checkout to compare")
    ap.add_argument("--repeats", type=int, default=3, help="with --grid: timings per version")
    ap.add_argument("--time-store", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.time_store:
        _time_store(args.time_store, args.repeats)
        return
    if args.grid or args.store:
        _grid(args)
        return
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
