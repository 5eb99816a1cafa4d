"""Signals with known answers for the edge-of-stability and early-warning tests, and the small grid
of real runs they are checked on.

* :func:`quadratic_problem`: a quadratic loss whose Hessian ``H`` and Adam preconditioner ``P`` are
  built so that the spectrum of ``P^{-1} H`` is known exactly.
* :func:`frozen_adam_on_quadratic`: Adam's update with a frozen preconditioner on a 1-D quadratic,
  which is stable exactly below Cohen et al.'s threshold ``(2 + 2*beta1) / ((1 - beta1) * lr)``.
* :func:`sawtooth_ratio`: a relaxation-oscillation sharpness ratio that crosses 1 at known steps.
* :func:`synthetic_store`: an in-memory store (contract 2) whose per-step series and recorded
  trajectories are analytic curves, for the early-warning features.
* :func:`synthetic_features`: an early-warning result with one informative feature.
* :func:`real_runs`: a few tiny tanh networks at several learning rates that show Adam's bursts;
  ``python tests/synth_stability.py OUTDIR`` trains them, runs the stability analysis and writes
  its figures and report section.
"""

from __future__ import annotations

import numpy as np


def quadratic_problem(n: int, seed: int, spread: float = 100.0, negative: int = 0):
    """``(hvp, P, eigenvalues)`` of a quadratic with known ``P^{-1} H`` spectrum.

    ``H = P^{1/2} Q diag(lam) Q^T P^{1/2}`` with ``Q`` a random orthogonal matrix and ``P`` a
    random positive diagonal with entries between 1 and ``spread``, so
    ``P^{-1} H = P^{-1/2} (Q diag(lam) Q^T) P^{1/2}`` is similar to ``diag(lam)``. ``negative``
    eigenvalues are made negative (and larger in magnitude than the top positive one, which
    defeats a plain power method).
    """
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    lam = np.sort(rng.uniform(0.1, 10.0, n))[::-1].copy()
    lam[0] = 12.0  # a clear gap at the top
    if negative:
        lam[-negative:] = -rng.uniform(20.0, 30.0, negative)
    P = np.exp(rng.uniform(0.0, np.log(spread), n))
    half = np.sqrt(P)
    H = half[:, None] * (Q * lam) @ Q.T * half[None, :]
    H = 0.5 * (H + H.T)

    def hvp(V):
        return np.asarray(V) @ H  # rows are vectors; H is symmetric

    return hvp, P, lam


def frozen_adam_on_quadratic(
    curvature: float, beta1: float, lr: float, steps: int, precond: float = 1.0
) -> np.ndarray:
    """``|x_t|`` of ``x -= lr * m / precond``, ``m = beta1*m + (1-beta1)*curvature*x`` from x=1.

    Adam with its preconditioner frozen at ``precond`` on the loss ``curvature/2 * x**2``: the
    iteration is linear and stable exactly when ``curvature/precond`` is below
    ``(2 + 2*beta1) / ((1 - beta1) * lr)``.
    """
    x, m = 1.0, 0.0
    out = np.empty(steps)
    for t in range(steps):
        m = beta1 * m + (1.0 - beta1) * curvature * x
        x = x - lr * m / precond
        out[t] = abs(x)
    return out


def sawtooth_ratio(
    period: int, n_periods: int, lag: int, rise: float = 0.2, stride: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A sharpness ratio that rises linearly through 1 and drops, with burst onsets ``lag`` after.

    Per period the ratio climbs from ``1 - rise/2`` to ``1 + rise/2`` and drops back, so it crosses
    1 upwards once, half a period in. Returns ``(steps, ratio, crossings, onsets)`` with
    ``onsets = crossings + lag``.
    """
    steps = np.arange(0, period * n_periods, stride, dtype=np.int64)
    phase = (steps % period) / period
    ratio = 1.0 - rise / 2 + rise * phase
    crossings = np.arange(n_periods) * period + period / 2.0
    return steps, ratio, crossings, (crossings + lag).astype(np.int64)


def synthetic_store(
    steps: int = 1000,
    *,
    update_rate: float = 0.002,
    flip_rate: float = 0.004,
    gradient: float = 0.3,
    beta1: float = 0.9,
    beta2: float = 0.99,
    burst_steps=(),
    n_rec: int = 3,
    diverged_step: int = -1,
):
    """One run whose series are analytic, so each early-warning feature has a known value.

    * ``update_norm_t = 1e-3 * exp(update_rate * t)``, times 50 at each step of ``burst_steps``
      and the 5 steps after it;
    * ``theta_t = 0.01 * (-1)^t * exp(flip_rate * t)`` in every recorded coordinate, so the flip
      amplitude ``||theta_t - 2 theta_{t-1} + theta_{t-2}|| / 4`` grows at ``flip_rate``;
    * ``m_t = (1 - beta1^t) * gradient`` and ``v_t = (1 - beta2^t) * gradient**2``: the raw
      moments of a constant gradient, so ``m_hat = gradient`` and ``v_hat = gradient**2`` exactly
      (update ratio ``|g|/(|g| + eps)``);
    * ``train_loss_t = 0.5 * exp(-t / 500)``.

    ``diverged_step`` only labels the run (its series stay finite; analyses cut them there).
    """
    import xarray as xr

    t = np.arange(1, steps + 1, dtype=np.int64)
    un = 1e-3 * np.exp(update_rate * t)
    for b in burst_steps:
        un[(t >= b) & (t < b + 6)] *= 50.0
    theta = 0.01 * ((-1.0) ** t * np.exp(flip_rate * t))[:, None] * np.ones(n_rec)
    m = ((1 - beta1**t) * gradient)[:, None] * np.ones(n_rec)
    v = ((1 - beta2**t) * gradient**2)[:, None] * np.ones(n_rec)
    loss = 0.5 * np.exp(-t / 500.0)
    run = {
        "beta1": beta1,
        "beta2": beta2,
        "lr": 0.01,
        "eps": 1e-8,
        "weight_decay": 0.0,
        "precision": "float64",
        "hidden": "2",
        "activation": "tanh",
        "dataset": "synthetic",
        "seed": 0,
        "n_params": 9,
        "twin_of": -1,
        "perturbation": "none",
        "diverged_step": diverged_step,
        "loss_fn": "mse",
        "data_index": 0,
        "batch_size": 0,
    }
    names = ["W1[0,0]", "W1[0,1]", "W1[1,0]", "W1[1,1]", "b1[0]", "b1[1]", "W2[0,0]", "W2[1,0]",
             "b2[0]"][:n_rec]  # fmt: skip
    variables = {k: (("run",), np.array([val], dtype=object if isinstance(val, str) else None))
                 for k, val in run.items()}  # fmt: skip
    variables.update(
        theta=(("run", "step", "param"), theta[None]),
        m=(("run", "step", "param"), m[None]),
        v=(("run", "step", "param"), v[None]),
        loss=(("run", "step"), loss[None]),
        train_loss=(("run", "iteration"), loss[None]),
        update_norm=(("run", "iteration"), un[None]),
        grad_norm=(("run", "iteration"), np.full((1, steps), gradient)),
        param_name=(("param",), np.array(names, dtype=object)),
        param_index=(("param",), np.arange(n_rec)),
    )
    coords = {"step": ("step", t), "iteration": ("iteration", t)}
    return xr.Dataset(variables, coords=coords, attrs={"steps": steps, "record_every": 1})


def synthetic_features(n_seeds: int = 12, informative: str = "ratio_max", seed: int = 0):
    """An early-warning result (as :func:`~geomtraj.analysis.early_warning.analyze` returns) with
    four runs per seed, half of which diverge; only ``informative`` separates them (by 2 standard
    deviations), every other feature, the loss included, is noise."""
    import xarray as xr

    from geomtraj.analysis.early_warning import FEATURES

    rng = np.random.default_rng(seed)
    leads = np.array([0, 100])
    n = 4 * n_seeds
    diverged = np.tile([True, True, False, False], n_seeds)
    feats = rng.standard_normal((n, leads.size, len(FEATURES)))
    feats[diverged, :, FEATURES.index(informative)] += 2.0
    ends = np.where(diverged, 2000, 5000)[:, None] - leads[None, :]
    grid = np.arange(250, 5001, 50)
    ctrl = rng.standard_normal((n, grid.size, len(FEATURES)))
    ctrl[diverged] = np.nan
    return xr.Dataset(
        {
            "features": (("run", "lead", "feature"), feats),
            "window_end": (("run", "lead"), ends),
            "control_features": (("run", "control_end", "feature"), ctrl),
            "diverged": (("run",), diverged),
            "reference_step": (("run",), np.where(diverged, 1999, 5000)),
            "seed": (("run",), np.repeat(np.arange(n_seeds), 4)),
        },
        coords={"run": np.arange(n), "lead": leads, "feature": list(FEATURES),
                "control_end": grid},
        attrs={"n_boot": 300, "n_matchings": 2},
    )  # fmt: skip


#: The real-run grid: tiny tanh networks on the sincos regression at three learning rates.
REAL_LRS = (0.003, 0.01, 0.03)


def real_runs(steps: int = 20000, hidden=(8, 8), lrs=REAL_LRS, store=None):
    """Train the real-run grid (float64, every parameter recorded at every step)."""
    from geomtraj.train.data import make_dataset
    from geomtraj.train.trainer import train

    X, y = make_dataset("sincos", 64, 0)
    return train(
        X, y, hidden=hidden, lr=list(lrs), beta2=0.999, steps=steps, record_every=1,
        record_params="all", precision="float64", seed=0, store=store, dataset_name="sincos",
    )  # fmt: skip


def main(outdir: str) -> None:
    """Train the real-run grid, analyse it and write figures and the report section to outdir."""
    import json
    import time
    from pathlib import Path

    from geomtraj.analysis import stability

    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ds = real_runs()
    t1 = time.perf_counter()
    result = stability.analyze(ds)
    t2 = time.perf_counter()
    rep = stability.report(result)
    paths = stability.figures(ds, result, out)
    (out / "stability.json").write_text(json.dumps(rep["stability"], indent=1))
    print(f"trained in {t1 - t0:.1f} s, analysed in {t2 - t1:.1f} s")
    for e in rep["stability"]["runs"]:
        print({k: e[k] for k in ("run", "n_onsets", "fraction_at_crossing", "chance_fraction",
                                 "median_lag", "fraction_above_at_onset", "fraction_time_above",
                                 "verdict")})  # fmt: skip
    print(rep["stability"]["overall"])
    print("figures:", *paths)


if __name__ == "__main__":
    import sys

    main(sys.argv[1] if len(sys.argv) > 1 else "stability_out")
