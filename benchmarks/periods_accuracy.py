"""Accuracy of the slow-period estimators on synthetic spike trains with known periods.

Prints the markdown tables of docs/periods.md: per regime (dense sawtooth or sparse bursts), noise
level and true period (20 to 2000 steps), the true median interval, the event estimate
(:func:`geomtraj.analysis.periods.slow_period` on the bursts of the ``prominence`` detector), its
relative error, the bursts found against the true count, and the relative error of the spectral
cross-check (per log-frequency Welch peak of the log series); then the bursts found on null
signals (white noise and random walks of the log), which have none, beside the former
threshold detector (``BurstParams(method="threshold")``).

    .venv/bin/python benchmarks/periods_accuracy.py [--seeds 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from synth_periods import spike_train  # noqa: E402

from geomtraj.analysis.events import BurstParams, detect_bursts  # noqa: E402
from geomtraj.analysis.periods import (  # noqa: E402
    PeriodParams,
    agreement_segment,
    slow_period,
    spectral_period,
)

PERIODS = (20, 50, 100, 200, 500, 1000, 2000)
NOISES = (0.1, 0.3, 0.5)


def accuracy(regime: str, noise: float, period: int, seeds: int, params: PeriodParams) -> dict:
    """Median over seeds of the true period, the estimates and their relative errors."""
    true, est, found, n_true, spec = [], [], [], [], []
    for seed in range(seeds):
        n = int(max(20_000, 40 * period))
        u, onsets = spike_train(n, period, regime, noise, seed=seed)
        b = detect_bursts(u, None, params.bursts)
        sp = slow_period(b.onset, params)
        true.append(float(np.median(np.diff(onsets))))
        est.append(sp.period if sp.period is not None else np.nan)
        found.append(len(b))
        n_true.append(onsets.size)
        s = spectral_period(np.log(u), 1.0, params, agreement_segment(sp.period, params), True)
        spec.append(s.period if s.period is not None else np.nan)
    true_a, est_a, spec_a = np.array(true), np.array(est), np.array(spec)
    return {
        "true": float(np.median(true_a)),
        "est": float(np.median(est_a)),
        "err": float(np.median(np.abs(est_a / true_a - 1))),
        "err_max": float(np.max(np.abs(est_a / true_a - 1))),
        "found": int(np.sum(found)),
        "n_true": int(np.sum(n_true)),
        "spec_err": float(np.median(np.abs(spec_a / true_a - 1))),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    params = PeriodParams()
    print(f"Event and spectral slow periods on synthetic spike trains ({args.seeds} seeds each; "
          "errors are |estimate/true - 1|, median and max over seeds)\n")  # fmt: skip
    print("| regime | noise (log sd) | true period | event estimate | rel. error (median, max) "
          "| bursts found / true | spectral rel. error |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for regime in ("dense", "sparse"):
        for noise in NOISES:
            for period in PERIODS:
                a = accuracy(regime, noise, period, args.seeds, params)

                def pct(x: float) -> str:
                    return "n/a" if not np.isfinite(x) else f"{100 * x:.1f}%"

                est = "none" if not np.isfinite(a["est"]) else f"{a['est']:.1f}"
                print(f"| {regime} | {noise} | {a['true']:.1f} | {est} | {pct(a['err'])}, "
                      f"{pct(a['err_max'])} | {a['found']} / {a['n_true']} | "
                      f"{pct(a['spec_err'])} |")  # fmt: skip
    print("\nBursts found on null signals (20,000 steps each; none exist)\n")
    print("| null signal | log sd per step | seeds | bursts found | former threshold detector |")
    print("|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for name, sd in (("white noise", 0.3), ("white noise", 1.0), ("white noise", 2.0),
                     ("random walk", 0.01), ("random walk", 0.05)):  # fmt: skip
        total = former = 0
        for _ in range(args.seeds * 3):
            step = rng.normal(0.0, sd, 20_000)
            y = np.cumsum(step) if name == "random walk" else step
            total += len(detect_bursts(np.exp(y), None, params.bursts))
            former += len(detect_bursts(np.exp(y), None, BurstParams(method="threshold")))
        print(f"| {name} | {sd} | {args.seeds * 3} | {total} | {former} |")


if __name__ == "__main__":
    main()
