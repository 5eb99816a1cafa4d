"""Analysis cost against training cost on a Netay-style grid, measured side by side.

The grid is the Netay study's in miniature: two-hidden-layer tanh networks of mixed widths
(n1, n2 in 5..44) on 64 ``sincos`` points, full-batch float32 Adam (beta1 = 0.9, beta2 = 0.999,
lr = 1e-3), 50,000 updates, 8 recorded parameters at every step and full snapshots every 2,500.
One invocation

1. trains the grid into a fresh store (the *training cost*; compilation is done beforehand on a
   4,000-step copy of two of its runs, analysed too, so no figure includes it);
2. runs the study's analyses (periods, spirals, diffusion, stability) on the whole store in this
   process as ``geomtraj analyze --jobs 1`` does (:func:`geomtraj.analysis.runner.run_analyses`:
   the store is checked and read into memory once, then each analysis runs), after the same
   warm-up;
3. times ``scipy.signal.welch`` on the series the period analysis reads (``v`` and ``theta`` of the
   recorded parameters and the log loss of each run, with its segment settings; the arrays are
   read from the store outside the clock), the baseline of the period analysis;
4. runs the same call with ``jobs=J`` local worker processes for each ``J > 1`` of ``--jobs``
   (their start-up included, as in every command), and with ``--workers N`` on a
   ``dask.distributed`` LocalCluster of N single-threaded worker processes after a warm-up
   call (workers started and kernels loaded, as in a long study): how the wall time falls with
   workers. A store with fewer run-chunks than workers is split into blocks of runs so that
   every worker gets some; training, beside, uses the machine's cores through its threads.
   The cluster's workers run without the ``MALLOC_TRIM_THRESHOLD_=65536`` that dask's nanny
   sets by default, which makes glibc map and unmap every large temporary array and slows the
   analyses by about 20% (README, "Dask workers"); ``--dask-malloc-trim`` keeps dask's setting;
5. times ``geomtraj analyze STORE --analyses periods,spirals,diffusion,stability --jobs J`` for
   each ``J`` of ``--jobs`` as a separate process (start-up, store check, report and figures
   included), and with ``--workers N`` also on the LocalCluster (``--no-cli`` skips step 5).

The analyses are also timed with a study's analysis parameters (``--study NAME``, ``netay`` by
default, ``none`` to skip: its ``studies/NAME/study.toml`` ``[analysis]`` tables, as
``geomtraj study NAME`` runs them; for ``netay``, spirals on at most 20 windows per run, where
the defaults test every burst window), in this process, on ``--jobs`` local processes and on
each LocalCluster. The bar of issue "analysis as fast as training" is about the study's
analyses, so its mark is on those lines.

All figures are per run (seconds), from the same store on the same machine in the same run.

    .venv/bin/python benchmarks/bench_analyze.py [--runs 6] [--steps 50000] [--params 8]
        [--snapshot-every 2500] [--jobs 1,2] [--workers 0] [--dask-malloc-trim] [--no-cli]
        [--study netay|none] [--keep DIR]

To measure another version of the analyses with this script, put its source first on the path
(``PYTHONPATH=/path/to/other/checkout .venv/bin/python benchmarks/bench_analyze.py``); the CLI
runs of steps 4 and 5 inherit that path.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ANALYSES = ("periods", "spirals", "diffusion", "stability")


def grid_widths(n_runs: int) -> list[str]:
    """``n_runs`` width pairs spread over the 5..44 square (a deterministic Latin-style pick)."""
    if n_runs == 1:
        return ["12x24"]
    lo, hi = 5, 44
    n1 = np.round(np.linspace(lo, hi, n_runs)).astype(int)
    # the second width walks the range in another order, so small and large pairs mix
    order = (np.arange(n_runs) * 3 + 1) % n_runs
    n2 = np.round(lo + (hi - lo) * order / max(n_runs - 1, 1)).astype(int)
    return [f"{a}x{b}" for a, b in zip(n1, n2, strict=True)]


def config_text(widths: list[str], steps: int, params: int, snapshot_every: int) -> str:
    hidden = ", ".join(f'"{w}"' for w in widths)
    return f"""name = "bench-analyze"
steps = {steps}
record_every = 1
record_params = {params}
snapshot_every = {snapshot_every}

[data]
name = "sincos"
n_points = 64
seed = 0

[model]
hidden = [{hidden}]
activation = "tanh"
loss = "mse"

[optimizer]
beta1 = 0.9
beta2 = 0.999
lr = 1e-3
eps = 1e-8

[runs]
seeds = [0]
precision = ["float32"]
"""


def train_store(cfg_path: Path, out: Path) -> tuple[float, float]:
    """Wall and CPU seconds of training the grid of ``cfg_path`` into ``out``."""
    from geomtraj.train.config import load_config, plan_from_config
    from geomtraj.train.trainer import train_plan

    plan = plan_from_config(load_config(cfg_path))
    t0, c0 = time.perf_counter(), time.process_time()
    train_plan(plan, out, progress=False)
    return time.perf_counter() - t0, time.process_time() - c0


def time_analyses(
    store: Path, jobs: int = 1, scheduler: str | None = None, params: dict | None = None
) -> tuple[dict[str, float], float, dict[str, float]]:
    """Seconds of each analysis over every run, as ``geomtraj analyze --jobs 1`` runs them.

    :func:`geomtraj.analysis.runner.run_analyses` in this process: the store is checked and each
    block of
    runs read into memory once, then every analysis runs on it; returns the per-analysis seconds
    (summed over blocks), the wall time of the whole call (check and read included) and the
    per-analysis CPU seconds (less moved by the load of a shared machine). With
    ``jobs`` > 1 or a ``scheduler`` the blocks run in other processes; only the wall time then
    says how the work spread.
    """
    from geomtraj.analysis.runner import run_analyses

    outcome = run_analyses(
        store, list(ANALYSES), jobs=jobs, scheduler=scheduler, progress=False,
        analysis_params=params,
    )  # fmt: skip
    if outcome.failures:
        raise SystemExit(f"analysis failures: {outcome.failures[:2]}")
    got = getattr(outcome, "cpu_seconds", {})  # an older geomtraj (PYTHONPATH) has none
    cpu = {name: got.get(name, float("nan")) for name in ANALYSES}
    return {name: outcome.seconds[name] for name in ANALYSES}, outcome.wall_seconds, cpu


def time_welch(store: Path) -> float:
    """``scipy.signal.welch`` on each run's ``v``, ``theta`` and log loss, periods' settings."""
    from scipy import signal as sps

    from geomtraj.analysis.base import RunData
    from geomtraj.analysis.periods import PeriodParams
    from geomtraj.store.zarrstore import open_store

    ds = open_store(store)
    seg = PeriodParams().welch_segment
    total = 0.0
    for r in range(ds.sizes["run"]):
        rd = RunData(ds, r)
        series = [np.asarray(rd.v), np.asarray(rd.theta), np.log(np.asarray(rd.train_loss))]
        t0 = time.perf_counter()
        for arr in series:
            nper = min(seg, arr.shape[0])
            sps.welch(arr, nperseg=nper, noverlap=nper // 2, detrend="linear", axis=0)
        total += time.perf_counter() - t0
    return total


def time_cli(store: Path, out: Path, extra: list[str]) -> float:
    cmd = [sys.executable, "-c", "import sys; from geomtraj.cli import main; sys.exit(main())",
           "analyze", str(store), "--out", str(out), "--analyses", ",".join(ANALYSES),
           "--quiet", *extra]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"geomtraj analyze {' '.join(extra)} failed:\n{proc.stderr[-2000:]}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=6)
    ap.add_argument("--steps", type=int, default=50_000)
    ap.add_argument("--params", type=int, default=8)
    ap.add_argument("--snapshot-every", type=int, default=2500)
    ap.add_argument("--jobs", default="1,2", help="comma-separated --jobs values to time")
    ap.add_argument("--workers", default="0",
                    help="comma-separated LocalCluster sizes to time (0: none)")  # fmt: skip
    ap.add_argument("--dask-malloc-trim", action="store_true",
                    help="keep dask's MALLOC_TRIM_THRESHOLD_ in the cluster's workers")  # fmt: skip
    ap.add_argument("--no-cli", action="store_true",
                    help="skip the whole-command timings (report and figures)")  # fmt: skip
    ap.add_argument("--study", default="netay",
                    help="also time the analyses with this study's parameters (netay, the "
                    "default: spirals on at most 20 windows per run, as studies/netay/study.toml "
                    "sets; none: skip)")  # fmt: skip
    ap.add_argument("--keep", default=None, help="directory to keep the store and reports in")
    args = ap.parse_args()
    cli = not args.no_cli
    jobs = [int(j) for j in args.jobs.split(",") if j]
    workers = [int(w) for w in args.workers.split(",") if int(w) > 0]

    import geomtraj
    from geomtraj.analysis.runner import AnalyzeParams, plan_blocks
    from geomtraj.store.zarrstore import open_store

    tmp = tempfile.TemporaryDirectory()
    root = Path(args.keep or tmp.name)
    root.mkdir(parents=True, exist_ok=True)
    widths = grid_widths(args.runs)
    n = len(widths)
    warm_cfg, cfg = root / "warm.toml", root / "grid.toml"
    # long enough for bursts and spiral windows, so every kernel the analyses use is compiled
    warm_steps = min(args.steps, 4000)
    warm_every = min(args.snapshot_every, 500)
    warm_cfg.write_text(config_text(widths[:2], warm_steps, args.params, warm_every))
    cfg.write_text(config_text(widths, args.steps, args.params, args.snapshot_every))
    print(f"geomtraj {geomtraj.__version__} from {Path(geomtraj.__file__).parent}")
    print(f"grid: {n} float32 runs ({', '.join(widths)}), {args.steps} updates, {args.params} "
          f"recorded parameters, snapshots every {args.snapshot_every}")  # fmt: skip

    # compile the trainer's and the analyses' kernels outside every clock
    warm_store, store = root / "warm.zarr", root / "grid.zarr"
    for path in (warm_store, store):
        if path.exists():
            raise SystemExit(f"{path} exists; pass an empty --keep directory")
    train_store(warm_cfg, warm_store)
    time_analyses(warm_store)

    t_train, c_train = train_store(cfg, store)
    t_an, t_wall, c_an = time_analyses(store)
    t_welch = time_welch(store)
    # the same call with local worker processes (their start-up included, as in every command)
    t_spread = [(f"{j} local processes", j, time_analyses(store, jobs=j)[1]) for j in jobs if j > 1]
    study_params, study_tables, t_study = None, None, []
    if args.study and args.study != "none":
        from geomtraj.study import analysis_kwargs, load_study

        study = load_study(args.study)
        study_params, study_tables = analysis_kwargs(study), study.analysis_params
        t_study.append(("in this process", 1, time_analyses(store, params=study_params)))
        t_study += [(f"{j} local processes", j, time_analyses(store, jobs=j, params=study_params))
                    for j in jobs if j > 1]  # fmt: skip
    t_cli = {f"--jobs {j}": time_cli(store, root / f"report-j{j}", ["--jobs", str(j)])
             for j in (jobs if cli else [])}  # fmt: skip
    trim = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"
    for w in workers:
        import dask
        from dask.distributed import LocalCluster

        unset = {} if args.dask_malloc_trim else {trim: None}
        with (
            dask.config.set(unset),
            # a worker whose heartbeat meets the closing scheduler logs a traceback as an
            # error (1 invocation in 3 here); failures of the analyses raise anyway
            LocalCluster(
                n_workers=w, threads_per_worker=1, processes=True, silence_logs=logging.CRITICAL
            ) as cluster,
        ):
            address = cluster.scheduler_address
            time_analyses(store, scheduler=address)  # the workers compile (or load) kernels
            t_w = time_analyses(store, scheduler=address)[1]
            label = f"LocalCluster, {w} worker(s)" + (", trim" if args.dask_malloc_trim else "")
            t_spread.append((label, w, t_w))
            if study_params is not None:
                t_study.append((label, w, time_analyses(store, scheduler=address,
                                                         params=study_params)))  # fmt: skip
            if cli:
                t_cli[f"LocalCluster {w} workers"] = time_cli(
                    store, root / f"report-w{w}", ["--scheduler", address]
                )

    total, c_total = sum(t_an.values()), sum(c_an.values())
    print(f"\nper run, seconds (total over {n} runs / {n}); CPU seconds of this process beside; "
          "default analysis parameters (spirals tests every burst window):")  # fmt: skip
    print(f"  training                     {t_train / n:8.3f}                      "
          f"CPU {c_train / n:8.3f}")  # fmt: skip
    for name, t in t_an.items():
        print(f"  {name:<28} {t / n:8.3f}   ({t / t_train:5.2f} x training)   "
              f"CPU {c_an[name] / n:8.3f}   ({c_an[name] / c_train:5.2f} x)")  # fmt: skip
    print(
        f"  all four analyses            {total / n:8.3f}   ({total / t_train:5.2f} x "
        f"training)   CPU {c_total / n:8.3f}   ({c_total / c_train:5.2f} x)"
    )
    print(f"  with store check and read    {t_wall / n:8.3f}   ({t_wall / t_train:5.2f} x "
          "training)")  # fmt: skip
    print(f"  scipy.signal.welch baseline  {t_welch / n:8.3f}   (periods / welch = "
          f"{t_an['periods'] / t_welch:.2f}; bar: <= 3)")  # fmt: skip
    if t_spread:
        print("the four analyses with store check and read, wall time per run (training used "
              f"{c_train / t_train:.1f} cores):")  # fmt: skip
        print(f"  in this process              {t_wall / n:8.3f}   ({t_wall / t_train:5.2f} x "
              "training)")  # fmt: skip
        grid = open_store(store)
        fit = AnalyzeParams().memory_budget_bytes // 2  # as run_analyses plans them
        for label, k, t in t_spread:
            blocks = len(plan_blocks(grid, range(n), tasks=k, max_bytes=fit))
            print(f"  {label:<28} {t / n:8.3f}   ({t / t_train:5.2f} x training; {blocks} "
                  "blocks)")  # fmt: skip
    if t_study:
        print(f"with the {args.study} study's analysis parameters ({study_tables}), per run:")
        t_one = t_study[0][2][0]
        for name, t in t_one.items():
            print(f"  {name:<28} {t / n:8.3f}   ({t / t_train:5.2f} x training)")
        for label, _k, (_, t, _) in t_study:
            print(f"  {label:<28} {t / n:8.3f}   ({t / t_train:5.2f} x training; with store "
                  "check and read; bar: <= 0.5)")  # fmt: skip
    if t_cli:
        print("geomtraj analyze, whole command (start-up, check, report, figures), per run:")
    for label, t in t_cli.items():
        print(f"  {label:<28} {t / n:8.3f}   ({t / t_train:5.2f} x training)")


if __name__ == "__main__":
    main()
