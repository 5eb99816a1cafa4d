"""Mini-batch training: reproducible, really mini-batch, and the recorded loss is full-batch."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_spec, make_theta0
from naive import loss_and_grad, loss_value

from geomtraj.train.data import make_dataset
from geomtraj.train.trainer import train

N_POINTS, BATCH, STEPS = 32, 8, 40
HIDDEN = (5, 7)


@pytest.fixture(scope="module")
def setup():
    X, y = make_dataset("sincos", N_POINTS, 4)
    spec = make_spec("tanh", "mse", HIDDEN)
    theta0 = make_theta0(spec)

    def run(batch_size, seed=0, beta1=0.5):
        # beta1 = 0.5 makes each batch gradient recoverable: g_t = 2 m_t - m_{t-1}
        return train(X, y, hidden=HIDDEN, theta0=theta0[None], beta1=beta1, beta2=0.99,
                     lr=1e-2, steps=STEPS, precision="float64", seed=seed,
                     batch_size=batch_size)  # fmt: skip

    return X, y, spec, theta0, run


def _bytes(ds):
    return {k: ds[k].values.tobytes() for k in ("theta", "m", "v", "loss", "train_loss")}


def test_minibatch_is_reproducible_and_not_full_batch(setup):
    *_, run = setup
    a, b = run(BATCH), run(BATCH)
    assert _bytes(a) == _bytes(b)
    assert (a["diverged_step"].values == -1).all()
    full = run(0)
    assert not np.array_equal(a["theta"].values, full["theta"].values)
    # another seed shuffles differently
    assert not np.array_equal(a["theta"].values, run(BATCH, seed=1)["theta"].values)
    # a batch as large as the data set is full batch, bit for bit
    assert _bytes(run(N_POINTS)) == _bytes(full)
    loss = a["train_loss"].values[0]
    assert loss[-1] < loss[0]


def test_recorded_loss_is_the_full_batch_loss(setup):
    X, y, spec, theta0, run = setup
    ds = run(BATCH)
    n = spec.n_params
    starts = np.vstack([theta0, ds["theta"].values[0, :-1, :n]])  # theta_{t-1} for t = 1..STEPS
    expected = np.array([loss_value(th, spec, X, y) for th in starts])
    np.testing.assert_allclose(ds["loss"].values[0], expected, rtol=1e-12, atol=0)
    np.testing.assert_allclose(ds["train_loss"].values[0], expected, rtol=1e-12, atol=0)


def _batch_members(g, theta, spec, X, y):
    """Solve ``sum_p w_p grad_p = BATCH * g`` for the points ``p`` whose gradients make up ``g``."""
    per_point = np.stack(
        [loss_and_grad(theta, spec, X[p : p + 1], y[p : p + 1])[1] for p in range(len(y))], axis=1
    )
    w = np.linalg.lstsq(per_point, BATCH * g, rcond=None)[0]
    members = np.rint(w)
    # the per-point gradients are linearly independent here (condition ~1e7), so w is an
    # indicator vector up to ~1e-9; anything else would mean g is not a plain batch mean
    assert np.abs(w - members).max() < 1e-5, np.round(w, 4)
    assert set(np.unique(members)) <= {0.0, 1.0}
    return np.flatnonzero(members)


def test_each_epoch_visits_every_point_once(setup):
    X, y, spec, theta0, run = setup
    ds = run(BATCH)
    n = spec.n_params
    m = np.vstack([np.zeros(n), ds["m"].values[0, :, :n]])
    starts = np.vstack([theta0, ds["theta"].values[0, :, :n]])
    per_epoch = N_POINTS // BATCH
    epochs = []
    for epoch in range(2):
        batches = []
        for t in range(epoch * per_epoch + 1, (epoch + 1) * per_epoch + 1):
            g = 2.0 * m[t] - m[t - 1]
            members = _batch_members(g, starts[t - 1], spec, X, y)
            assert len(members) == BATCH, (t, members)
            batches.append(tuple(members))
        assert sorted(np.concatenate(batches).tolist()) == list(range(N_POINTS)), batches
        epochs.append(batches)
    assert epochs[0] != epochs[1]  # reshuffled each epoch
