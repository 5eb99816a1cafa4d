"""Speed of the period analysis against ``scipy.signal.welch`` alone on the same arrays.

The issue's bar: analysing periods over 100 runs x 50,000 steps x 64 recorded parameters takes less
than 3x the time ``scipy.signal.welch`` needs on the same arrays. Both run here side by side, in one
process, on the same in-memory arrays of synthetic relaxation oscillations (one run generated at a
time; store I/O is not part of either figure). The Welch reference is ``welch(v, axis=0)`` and
``welch(theta, axis=0)`` (each 50,000 x 64) plus ``welch(log loss)`` per run, with the same segment
settings the analysis uses.

    .venv/bin/python benchmarks/bench_periods.py [--runs 100] [--steps 50000] [--params 64]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from scipy import signal as sps

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from synth_periods import relaxation_oscillation  # noqa: E402

from geomtraj.analysis.periods import PeriodParams, analyze_run  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--steps", type=int, default=50_000)
    ap.add_argument("--params", type=int, default=64)
    args = ap.parse_args()
    params = PeriodParams()
    nper = min(params.welch_segment, args.steps)

    # compile the kernels outside the timing
    warm = relaxation_oscillation(n_steps=5000, slow_period=500.0, n_params=4)
    analyze_run(_run(warm, 0.999), params)

    t_analysis = t_welch = 0.0
    n_bursts = []
    for r in range(args.runs):
        beta2 = [0.99, 0.995, 0.998, 0.999][r % 4]
        tr = relaxation_oscillation(
            n_steps=args.steps, slow_period=1 / (1 - beta2), beta2=beta2, n_params=args.params,
            seed=r,
        )  # fmt: skip
        run = _run(tr, beta2)
        t0 = time.perf_counter()
        out = analyze_run(run, params)
        t1 = time.perf_counter()
        for arr in (tr.v, tr.theta):
            sps.welch(arr, nperseg=nper, noverlap=nper // 2, detrend="linear", axis=0)
        sps.welch(np.log(tr.loss), nperseg=nper, noverlap=nper // 2, detrend="linear")
        t2 = time.perf_counter()
        t_analysis += t1 - t0
        t_welch += t2 - t1
        n_bursts.append(out["n_bursts"])
    print(f"period analysis: {args.runs} runs x {args.steps} steps x {args.params} params")
    print(f"  analysis           {t_analysis:8.2f} s  ({t_analysis / args.runs * 1e3:.1f} ms/run)")
    print(f"  scipy welch alone  {t_welch:8.2f} s  ({t_welch / args.runs * 1e3:.1f} ms/run)")
    print(f"  ratio analysis / welch = {t_analysis / t_welch:.2f}  (bar: < 3)")
    print(f"  bursts per run: median {np.median(n_bursts):.0f}")


def _run(tr, beta2: float) -> SimpleNamespace:
    """The attributes of RunData that the analysis reads, from in-memory arrays."""
    hyper = {"beta1": 0.9, "beta2": beta2}
    return SimpleNamespace(
        hyper=hyper, iteration=tr.steps, update_norm=tr.update_norm, train_loss=tr.loss,
        step=tr.steps, theta=tr.theta, m=tr.m, v=tr.v, record_every=1,
    )  # fmt: skip


if __name__ == "__main__":
    main()
