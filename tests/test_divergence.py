"""Divergence: a run that explodes or goes non-finite stops, records its step, and NaN after it."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_spec, make_theta0

from geomtraj.train.trainer import train

STEPS = 30


@pytest.fixture(scope="module")
def runs(sincos):
    """float32 runs: 0 normal (lr 1e-3), 1 lr = 50 (explodes), 2 with an output weight of 1e30
    (its loss overflows float32 at once)."""
    X, y = sincos
    spec = make_spec("tanh", "mse", (5, 7))
    theta = make_theta0(spec)
    huge = theta.copy()
    huge[spec.param_index("W3[0,0]")] = 1e30
    ds = train(X, y, hidden=spec.hidden, theta0=np.stack([theta, theta, huge]),
               lr=[1e-3, 50.0, 1e-3], steps=STEPS, precision="float32")  # fmt: skip
    return spec, ds


def test_normal_run_does_not_diverge(runs):
    spec, ds = runs
    assert ds["diverged_step"].values[0] == -1
    for name in ("theta", "m", "v", "loss", "train_loss", "grad_norm", "update_norm"):
        assert np.isfinite(ds[name].values[0]).all(), name


def test_exploding_run_stops_at_its_divergence_step(runs):
    spec, ds = runs
    d = int(ds["diverged_step"].values[1])
    assert 1 <= d <= STEPS
    factor = ds.attrs["divergence_loss_factor"]
    loss = ds["train_loss"].values[1]
    # the first update whose starting loss is non-finite or above factor * initial loss
    assert not (np.isfinite(loss[d - 1]) and loss[d - 1] <= factor * loss[0])
    assert np.isfinite(loss[: d - 1]).all() and (loss[: d - 1] <= factor * loss[0]).all()
    assert np.isnan(loss[d:]).all()
    step = ds["step"].values
    for name in ("theta", "m", "v"):
        a = ds[name].values[1, :, : spec.n_params]
        assert np.isfinite(a[step < d]).all(), name
        assert np.isnan(a[step >= d]).all(), name
    assert np.isnan(ds["loss"].values[1, step >= d]).all()
    # the final state is the one the diverging update started from: theta_{d-1}
    if d >= 2:
        last = ds["theta"].values[1, d - 2, : spec.n_params]
        assert last.tobytes() == ds["theta_final"].values[1, : spec.n_params].tobytes()


def test_non_finite_start_diverges_at_step_1(runs):
    spec, ds = runs
    assert ds["diverged_step"].values[2] == 1
    assert not np.isfinite(ds["train_loss"].values[2, 0])
    assert np.isnan(ds["train_loss"].values[2, 1:]).all()
    assert np.isnan(ds["theta"].values[2]).all()
    assert np.isnan(ds["loss"].values[2]).all()
