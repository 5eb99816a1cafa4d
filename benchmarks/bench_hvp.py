"""Cost of one Hessian-vector product, NumPy against the JIT kernel, by network size.

The stability analysis's eigensolvers call the product one vector at a time, so its fixed cost
counts: NumPy's (:class:`geomtraj.analysis.hessian.Linearisation`) makes about forty small array
calls,
the JIT kernel's (:class:`geomtraj.analysis.hessian.KernelLinearisation`) costs little per call but
grows
with the network. Both are timed alternately in one process (CPU time, best of ``--repeats``,
one BLAS thread as in the analysis) on tanh networks on 64 points, and checked to agree; the
crossover sets ``geomtraj.analysis.stability.KERNEL_HVP_MAX_PARAMS`` (docs/stability.md).

    .venv/bin/python benchmarks/bench_hvp.py [--repeats 5] [--calls 200]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from threadpoolctl import threadpool_limits

from geomtraj.analysis.hessian import MLPObjective
from geomtraj.train.models import MLPSpec

WIDTHS = [(5, 13), (12, 24), (21, 13), (13, 36), (20, 30), (28, 36), (44, 36), (44, 44)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--calls", type=int, default=200)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print("network  parameters   NumPy (us)  kernel (us)  max relative difference")
    with threadpool_limits(1):
        for hidden in WIDTHS:
            spec = MLPSpec(1, hidden, "tanh", "mse")
            X = rng.uniform(-1, 1, (64, 1))
            objective = MLPObjective(spec, X, np.sin(3 * X[:, 0]))
            theta = rng.standard_normal(spec.n_params) * 0.5
            ref, fast = objective.at(theta), objective.at(theta, kernel=True)
            V = rng.standard_normal((5, spec.n_params))
            want = np.stack([ref(v) for v in V])
            diff = np.abs(np.stack([fast(v) for v in V]) - want).max() / np.abs(want).max()
            assert diff < 1e-12, diff
            best = {"numpy": np.inf, "kernel": np.inf}
            for _ in range(args.repeats):
                for label, lin in (("numpy", ref), ("kernel", fast)):
                    t0 = time.process_time()
                    for i in range(args.calls):
                        lin(V[i % 5])
                    best[label] = min(best[label], (time.process_time() - t0) / args.calls)
            name = "x".join(map(str, hidden))
            print(f"{name:>7}  {spec.n_params:10d}   {best['numpy'] * 1e6:10.1f}  "
                  f"{best['kernel'] * 1e6:11.1f}  {diff:.1e}")  # fmt: skip


if __name__ == "__main__":
    main()
