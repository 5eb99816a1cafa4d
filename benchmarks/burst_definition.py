"""What the one definition of a burst (``BurstParams()``, prominence) changes for the analyses.

Trains real runs (sincos, hidden (12, 24), float64, beta1 = 0.9, lr = 3e-3; beta2 from 0.99 to
0.9995; 20,000 steps by default, seed 0) and prints, per run and per method (``prom``: the default,
``thr``: the former threshold over a 501-step rolling median): the bursts found after the first
2000 steps, the share of those steps inside bursts (the burst mask of the twins analysis), the
median burst length (onset to end) and rise (onset to peak), and, for bursts both methods find
(same peak to within 5 steps), the median shift of the prominence onset against the threshold one.

    .venv/bin/python benchmarks/burst_definition.py [--steps 20000] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check_periods_real import SKIP, train_grid  # noqa: E402

from geomtraj.analysis.base import RunData  # noqa: E402
from geomtraj.analysis.events import BurstParams, run_bursts  # noqa: E402

BETA2 = (0.99, 0.995, 0.998, 0.999, 0.9995)


def summary(b, steps: np.ndarray) -> tuple[int, float, float, float]:
    """Bursts after SKIP, share of steps inside them, median length and rise."""
    keep = b.onset > SKIP
    inside = b.mask(steps[steps > SKIP]).mean()
    length = np.median(b.end[keep] - b.onset[keep] + 1) if keep.any() else np.nan
    rise = np.median(b.peak[keep] - b.onset[keep]) if keep.any() else np.nan
    return int(keep.sum()), float(inside), float(length), float(rise)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t0 = time.perf_counter()
    ds = train_grid(beta2=BETA2, lr=(3e-3,), steps=args.steps, seed=args.seed)
    print(f"{len(BETA2)} runs (sincos, 12x24, float64, lr 3e-3, {args.steps} steps, seed "
          f"{args.seed}): training {time.perf_counter() - t0:.1f} s")  # fmt: skip
    print(f"{'beta2':>7} {'method':>6} {'bursts':>6} {'in bursts':>9} {'length':>6} {'rise':>5} "
          f"{'onset shift':>11}")  # fmt: skip
    for i, beta2 in enumerate(BETA2):
        run = RunData(ds, i)
        prom = run_bursts(run, "update_norm", BurstParams())
        thr = run_bursts(run, "update_norm", BurstParams(method="threshold"))
        # pair bursts by peak: the two methods place the peak of one spike alike
        d = np.abs(prom.peak[:, None] - thr.peak[None, :]) if len(thr) and len(prom) else None
        shift = np.nan
        if d is not None:
            j = d.argmin(axis=1)
            ok = d[np.arange(len(prom)), j] <= 5
            if ok.any():
                shift = float(np.median(prom.onset[ok] - thr.onset[j[ok]]))
        for name, b in (("prom", prom), ("thr", thr)):
            n, inside, length, rise = summary(b, run.iteration)
            extra = f"{shift:>11.1f}" if name == "prom" else ""
            print(f"{beta2:>7} {name:>6} {n:>6} {inside:>9.0%} {length:>6.0f} {rise:>5.0f} {extra}")


if __name__ == "__main__":
    main()
