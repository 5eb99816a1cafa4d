"""Moving-block bootstrap of the median burst interval: geomtraj's vectorised version against
``arch.bootstrap.MovingBlockBootstrap`` on the same data and seed, in the same run.

    python benchmarks/bench_bootstrap.py

Prints, for a few numbers of intervals, the time per interval estimate (2000 resamples, as many
as ``PeriodParams.n_boot`` or more) of each, whether the two intervals are identical, and the
import time of ``arch.bootstrap``.
"""

from __future__ import annotations

import time

import numpy as np

from geomtraj.analysis.periods import block_bootstrap_median

N_BOOT = 2000


def _per_call(fn, repeats: int) -> tuple[float, tuple[float, float]]:
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    return (time.perf_counter() - start) / repeats, out


def main() -> None:
    start = time.perf_counter()
    from arch.bootstrap import MovingBlockBootstrap

    print(f"import arch.bootstrap: {time.perf_counter() - start:.2f} s")
    print(f"{'intervals':>9} {'geomtraj ms':>12} {'arch ms':>9} {'speed-up':>9} identical")
    for n in (20, 40, 200, 1000):
        x = np.random.default_rng(n).gamma(5.0, 100.0, n)
        block = int(np.ceil(n ** (1 / 3)))

        def hand(x=x):
            return block_bootstrap_median(x, N_BOOT, 0.95, np.random.default_rng(0))

        def arch(x=x, block=block):
            mbb = MovingBlockBootstrap(block, x, seed=np.random.default_rng(0))
            return tuple(mbb.conf_int(np.median, reps=N_BOOT, method="percentile").ravel())

        t_hand, ci_hand = _per_call(hand, 10)
        t_arch, ci_arch = _per_call(arch, 3)
        same = ci_hand == ci_arch
        print(f"{n:>9} {1e3 * t_hand:>12.1f} {1e3 * t_arch:>9.1f} {t_arch / t_hand:>8.0f}x {same}")


if __name__ == "__main__":
    main()
