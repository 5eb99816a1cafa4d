"""Held-out check of the slow period on real runs: events against independent estimates.

Trains a grid of real runs (sincos, hidden (12, 24), float64, beta1 = 0.9; beta2 from 0.99 to
0.9995, lr from 1e-3 to 1e-2; 40,000 steps by default, about a second each) and prints, per run:

- ``event``: the slow period of :mod:`geomtraj.analysis.periods` (median onset interval);
- ``spikes``: the median spacing of the spikes of the smoothed log update norm
  (``tests/synth_periods.spike_spacing_period``: Gaussian smoothing, prominence of one e-fold,
  peaks rather than onsets, no baseline) -- the independent estimate of the 15% criterion;
- ``spectral``: the Welch peak (per log-frequency) of the log update norm, as the analysis reports
  it (``spectral_period_update``);
- the event period with the detector's baseline window at 101, 501 and 2001 steps, and its
  largest relative move (the 5% criterion);
- ``old``: the period of the former detector (threshold over a 501-step rolling median), for
  comparison.

    .venv/bin/python benchmarks/check_periods_real.py [--steps 40000] [--seed 0]
    .venv/bin/python benchmarks/check_periods_real.py --precision float32 --seed 1
    .venv/bin/python benchmarks/check_periods_real.py --fast [--steps 40000]

``--fast`` prints instead the fast component per beta1 (``report["grid"]["fast"]["by_beta1"]``)
over beta1 in 0.5 ... 0.95 (beta2 = 0.999, lr = 1e-2, three seeds each).

The same check on a few runs is ``tests/test_periods.py::test_real_runs_agree_with_independent``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from synth_periods import spike_spacing_period  # noqa: E402

from geomtraj.analysis import periods  # noqa: E402
from geomtraj.analysis.events import BurstParams  # noqa: E402
from geomtraj.train.data import make_dataset  # noqa: E402
from geomtraj.train.trainer import train  # noqa: E402

BETA2 = (0.99, 0.995, 0.998, 0.999, 0.9995)
LR = (1e-3, 3e-3, 1e-2)
WINDOWS = (101, 501, 2001)
#: The first steps hold the initial descent of the loss, not the relaxation oscillation.
SKIP = 2000


def train_grid(beta2=BETA2, lr=LR, steps: int = 40_000, seed: int = 0, precision="float64"):
    """The held-out grid of real runs, in memory (one run per (beta2, lr))."""
    X, y = make_dataset("sincos", n_points=64, seed=0)
    b2 = [b for b in beta2 for _ in lr]
    lrs = [x for _ in beta2 for x in lr]
    return train(X, y, hidden=(12, 24), beta2=b2, lr=lrs, steps=steps, precision=precision,
                 seed=seed, record_params=8)  # fmt: skip


def check(ds) -> list[dict]:
    """Per run: event, spike-spacing and spectral periods, and the event period per window."""
    base = periods.PeriodParams()
    res = periods.analyze(ds, params=base)
    rows = []
    for i, run in enumerate(res["run"].values):
        r = res.sel(run=run)
        un = ds["update_norm"].isel(run=i).values
        by_window = []
        for w in WINDOWS:
            p = dataclasses.replace(
                base, bursts=dataclasses.replace(base.bursts, baseline_window=w)
            )
            b = periods.run_bursts(periods.RunData(ds, int(run)), "update_norm", p.bursts)
            by_window.append(periods.slow_period(b.onset, p).period or np.nan)
        old_p = dataclasses.replace(base, bursts=BurstParams(method="threshold"))
        old = periods.run_bursts(periods.RunData(ds, int(run)), "update_norm", old_p.bursts)
        event = float(r["slow_period"])
        spikes = spike_spacing_period(un, skip=SKIP)
        spectral = float(r["spectral_period_update"])
        bw = np.array(by_window)
        rows.append({
            "beta2": float(r["beta2"]), "lr": float(r["lr"]), "n_bursts": int(r["n_bursts"]),
            "event": event, "spikes": spikes, "spectral": spectral,
            "windows": by_window, "window_move": float(bw.max() / bw.min() - 1),
            "vs_spikes": event / spikes - 1, "vs_spectral": spectral / event - 1,
            "old": periods.slow_period(old.onset, old_p).period or np.nan,
            "agreement": str(r["slow_agreement"].values),
        })  # fmt: skip
    return rows


BETA1 = (0.5, 0.7, 0.8, 0.9, 0.95)


def fast_table(steps: int) -> None:
    """Per beta1: the median ratios of the fast component with their bootstrap CIs over runs."""
    X, y = make_dataset("sincos", n_points=64, seed=0)
    seeds = (0, 1, 2)
    b1 = [b for b in BETA1 for _ in seeds]
    ds = train(X, y, hidden=(12, 24), beta1=b1, beta2=0.999, lr=1e-2, steps=steps,
               precision="float64", seed=[s for _ in BETA1 for s in seeds],
               record_params=8)  # fmt: skip
    rep = periods.report(periods.analyze(ds))
    print(f"fast component per beta1 (sincos 12x24 float64, beta2 0.999, lr 1e-2, {steps} steps, "
          f"{len(seeds)} seeds; median ratio [95% CI over runs])")  # fmt: skip
    print("| beta1 | runs | 1/(1-beta1) | -1/ln(sqrt(beta1)) | efold / 1/(1-b1) | "
          "efold / linear | flip / 1/(1-b1) | flip / linear |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")

    def cell(d: dict) -> str:
        if d["median"] is None:
            return "n/a"
        ci = f" [{d['ci'][0]:.3g}, {d['ci'][1]:.3g}]" if d["ci"] else ""
        return f"{d['median']:.3g}{ci}"

    for b, e in rep["grid"]["fast"]["by_beta1"].items():
        print(f"| {b} | {e['n_runs']} | {e['predicted']:.3g} | {e['linear_prediction']:.3g} | "
              f"{cell(e['efold_over_predicted'])} | {cell(e['efold_over_linear'])} | "
              f"{cell(e['flip_over_predicted'])} | {cell(e['flip_over_linear'])} |")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--precision", default="float64", help="float64 (default) or float32")
    ap.add_argument("--fast", action="store_true", help="the fast component per beta1 instead")
    args = ap.parse_args()
    if args.fast:
        fast_table(args.steps)
        return
    t0 = time.perf_counter()
    ds = train_grid(steps=args.steps, seed=args.seed, precision=args.precision)
    t1 = time.perf_counter()
    rows = check(ds)
    t2 = time.perf_counter()
    print(f"{len(rows)} real runs (sincos, 12x24, {args.precision}, {args.steps} steps, "
          f"seed {args.seed}): "
          f"training {t1 - t0:.1f} s, check {t2 - t1:.1f} s")  # fmt: skip
    head = (f"{'beta2':>7} {'lr':>6} {'bursts':>6} {'event':>6} {'spikes':>6} {'spectral':>8} "
            f"{'w101':>6} {'w501':>6} {'w2001':>6} {'move':>6} {'ev/spk':>7} {'spc/ev':>7} "
            f"{'old':>6}  flag")  # fmt: skip
    print(head)
    for r in rows:
        print(f"{r['beta2']:>7} {r['lr']:>6.0e} {r['n_bursts']:>6} {r['event']:>6.1f} "
              f"{r['spikes']:>6.1f} {r['spectral']:>8.1f} "
              + " ".join(f"{w:>6.1f}" for w in r["windows"])
              + f" {100 * r['window_move']:>5.1f}% {100 * r['vs_spikes']:>+6.1f}% "
              f"{100 * r['vs_spectral']:>+6.1f}% {r['old']:>6.1f}  {r['agreement']}")  # fmt: skip
    ok_spk = sum(abs(r["vs_spikes"]) <= 0.15 for r in rows)
    ok_spc = sum(abs(r["vs_spectral"]) <= 0.15 for r in rows)
    ok_win = sum(r["window_move"] <= 0.05 for r in rows)
    n = len(rows)
    print(f"within 15% of the spike spacing: {ok_spk}/{n}; within 15% of the spectral peak: "
          f"{ok_spc}/{n}; moved <= 5% over windows 101-2001: {ok_win}/{n}")  # fmt: skip


if __name__ == "__main__":
    main()
