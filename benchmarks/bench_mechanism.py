"""Cost of dense sharpness tracking (``geomtraj.analysis.mechanism``) against training the run.

One float32 and one float64 run of the bursts set-up (2 -> 12 -> 24 -> 1 tanh, MSE, 64 sincos
points, full-batch Adam, beta2 = 0.999, lr = 0.01) are trained for ``--steps`` updates in memory
(8 coordinates recorded every update, as the fixtures do); that time is the baseline. The
mechanism analysis then replays the run with the trainer and tracks ``lambda_max(P^-1 H)`` and
the directional curvature with its defaults; the replay and the tracking are timed apart (CPU
time of the process, robust to other load on the machine) and their sum is printed as a multiple
of the training time. A second row per precision (``fixed``) tracks the same run with the
settings the analysis had before the forecast spacing (an evaluation every 12 updates from
``lambda/threshold`` = 0.9 up and every 24 below, three Lanczos steps always, replay blocks of
2048 updates), for comparison in the same invocation. For scale, the NumPy path of the
stability analysis (``geomtraj.analysis.hessian`` HVPs, warm-started Lanczos via
``SharpnessSolver``) is
timed at 20 states and its cost per state multiplied by the number of states the tracker
evaluated. Compilation is done once before
anything is timed.

Usage::

    python benchmarks/bench_mechanism.py                 # 10,000 updates
    python benchmarks/bench_mechanism.py --steps 50000   # the budget case of docs/mechanism.md
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from threadpoolctl import threadpool_limits

from geomtraj.analysis import mechanism
from geomtraj.analysis.hessian import MLPObjective
from geomtraj.analysis.stability import SharpnessSolver, adam_preconditioner, run_spec
from geomtraj.train.data import make_dataset
from geomtraj.train.trainer import train


def _train(precision: str, steps: int):
    X, y = make_dataset("sincos", 64, 0)
    t0 = time.process_time()
    ds = train(X, y, hidden=(12, 24), beta1=0.9, beta2=0.999, lr=0.01, steps=steps,
               precision=precision, record_params=8, seed=0)  # fmt: skip
    return ds, time.process_time() - t0


def _numpy_cost_per_state(ds, n_states: int = 20) -> float:
    """Seconds per state of the NumPy HVP + warm-started Lanczos path of the stability analysis."""
    from geomtraj.analysis.stability import run_data_arrays

    h = {k: float(ds[k].values[0]) for k in ("beta1", "beta2", "eps")}
    obj = MLPObjective(run_spec(ds, 0), *run_data_arrays(ds, 0))
    states = list(mechanism.replay_states(ds, 0, block=512))[1]  # updates 1..512
    t_first, thetas, vs, _, _ = states
    solver = SharpnessSolver(method="eigsh")
    t0 = time.process_time()
    with threadpool_limits(1):
        for i in range(n_states):
            lin = obj.at(np.asarray(thetas[i], np.float64))
            P = adam_preconditioner(np.asarray(vs[i], np.float64), lin.grad, t_first + i,
                                    h["beta1"], h["beta2"], h["eps"])  # fmt: skip
            solver(lin, P)
    return (time.process_time() - t0) / n_states


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--precisions", nargs="+", default=["float32", "float64"])
    args = parser.parse_args(argv)
    warm, _ = _train("float32", 64)  # compile the trainer and the tracker first
    mechanism.track_run(warm, 0)
    _train("float64", 64)
    settings = {
        "defaults": mechanism.MechanismParams(),
        "fixed": mechanism.MechanismParams(stride=24, horizon=0.0, lanczos_tol=0.0, block=2048),
    }
    print(f"{'precision':>9} {'settings':>8} {'updates':>8} {'train s':>8} {'replay s':>9} "
          f"{'track s':>8} {'evaluated':>9} {'HVPs':>7} {'x train':>8} "
          f"{'numpy x train':>14}")  # fmt: skip
    for precision in args.precisions:
        ds, t_train = _train(precision, args.steps)
        per_state = _numpy_cost_per_state(ds)
        for name, params in settings.items():
            tr = mechanism.track_run(ds, 0, params)
            n_eval = int(tr.evaluated.sum())
            total = tr.seconds_replay + tr.seconds_track
            print(f"{precision:>9} {name:>8} {args.steps:>8} {t_train:8.2f} "
                  f"{tr.seconds_replay:9.2f} {tr.seconds_track:8.2f} {n_eval:9d} {tr.n_hvp:7d} "
                  f"{total / t_train:8.2f} {per_state * n_eval / t_train:14.1f}")  # fmt: skip
            if tr.mismatches:
                print(f"  replay differs from the trained run at {tr.mismatches} updates")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
