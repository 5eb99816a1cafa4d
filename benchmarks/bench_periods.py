"""Speed of the period analysis against ``scipy.signal.welch`` on the same series, in one run.

Both are timed side by side, in one process, on the same in-memory arrays of synthetic relaxation
oscillations (one run generated at a time; store I/O is not part of any figure). Two Welch
references, with the analysis's segment settings:

- ``welch, update norm``: ``welch(log update norm)``, the 1-D series the slow period comes from;
- ``welch, all series read``: ``welch`` of every per-step series the analysis reads: ``v`` and
  ``theta`` (steps x params, ``axis=0``), the log loss and the log update norm.

Then the analysis per part (bursts, the three spectra, e-folding, flip period, v decay), so that
the figure can be traced. Defaults are a Netay-style run: 50,000 steps, 8 recorded parameters.

    .venv/bin/python benchmarks/bench_periods.py [--runs 8] [--steps 50000] [--params 8]
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

from geomtraj.analysis import periods as P  # noqa: E402
from geomtraj.analysis.events import run_bursts  # noqa: E402


def _parts(run, params: P.PeriodParams) -> dict:
    """Seconds spent in each part of the analysis of one run."""
    t = {}
    t0 = time.perf_counter()
    b = run_bursts(run, "update_norm", params.bursts)
    run_bursts(run, "train_loss", params.bursts)
    t["bursts (update norm, loss)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    sp = P.slow_period(b.onset, params)
    t["slow period + bootstrap"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    P.spectral_period(np.log(run.train_loss), 1.0, params)
    P.spectral_period(np.log(run.v).mean(axis=1), 1.0, params)
    P.spectral_period(np.log(run.update_norm), 1.0, params, P.agreement_segment(sp.period), True)
    t["three spectra"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    P.efold_times(run.update_norm, run.iteration, b, params)
    t["e-folding"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    P.flip_period(run.theta, run.step, b, params)
    t["flip period"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    P.v_decay_slope(run.v, run.step, b, params)
    P.quiet_gradient_ratio(run.m, run.v, run.step, 0.9, b, params)
    t["v decay + g2/v"] = time.perf_counter() - t0
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--steps", type=int, default=50_000)
    ap.add_argument("--params", type=int, default=8)
    args = ap.parse_args()
    params = P.PeriodParams()
    nper = min(params.welch_segment, args.steps)

    def welch(x, axis=-1):
        return sps.welch(x, nperseg=nper, noverlap=nper // 2, detrend="linear", axis=axis)

    # compile the kernels outside the timing
    warm = relaxation_oscillation(n_steps=5000, slow_period=500.0, n_params=4)
    P.analyze_run(_run(warm, 0.999), params)

    t_analysis = t_w1 = t_wall = 0.0
    parts: dict[str, float] = {}
    n_bursts = []
    for r in range(args.runs):
        beta2 = [0.99, 0.995, 0.998, 0.999][r % 4]
        tr = relaxation_oscillation(
            n_steps=args.steps, slow_period=1 / (1 - beta2), beta2=beta2, n_params=args.params,
            seed=r,
        )  # fmt: skip
        run = _run(tr, beta2)
        t0 = time.perf_counter()
        out = P.analyze_run(run, params)
        t1 = time.perf_counter()
        welch(np.log(tr.update_norm))
        t2 = time.perf_counter()
        welch(tr.v, axis=0)
        welch(tr.theta, axis=0)
        welch(np.log(tr.loss))
        welch(np.log(tr.update_norm))
        t3 = time.perf_counter()
        t_analysis += t1 - t0
        t_w1 += t2 - t1
        t_wall += t3 - t2
        for k, v in _parts(run, params).items():
            parts[k] = parts.get(k, 0.0) + v
        n_bursts.append(out["n_bursts"])
    n = args.runs
    print(f"period analysis: {n} runs x {args.steps} steps x {args.params} params "
          f"(median {np.median(n_bursts):.0f} bursts per run)")  # fmt: skip
    print(f"  analysis (analyze_run)       {t_analysis / n * 1e3:8.1f} ms/run")
    print(f"  welch, update norm           {t_w1 / n * 1e3:8.1f} ms/run   "
          f"ratio {t_analysis / t_w1:5.2f}  (bar: <= 3)")  # fmt: skip
    print(f"  welch, all series read       {t_wall / n * 1e3:8.1f} ms/run   "
          f"ratio {t_analysis / t_wall:5.2f}  (bar: <= 3)")  # fmt: skip
    print("  analysis by part:")
    for k, v in parts.items():
        print(f"    {k:<28} {v / n * 1e3:8.1f} ms/run")


def _run(tr, beta2: float) -> SimpleNamespace:
    """The attributes of RunData that the analysis reads, from in-memory arrays."""
    hyper = {"beta1": 0.9, "beta2": beta2}
    return SimpleNamespace(
        hyper=hyper, iteration=tr.steps, update_norm=tr.update_norm, train_loss=tr.loss,
        step=tr.steps, theta=tr.theta, m=tr.m, v=tr.v, record_every=1,
    )  # fmt: skip


if __name__ == "__main__":
    main()
