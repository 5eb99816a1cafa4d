"""Gradients: the naive back-propagation against finite differences, and the kernels against it."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import data_for, make_spec, make_theta0
from naive import forward, loss_and_grad, loss_value, unflatten

from geomtraj.train.trainer import train

ACTIVATIONS = ("tanh", "sigmoid", "relu")
LOSSES = ("mse", "bce")
CASES = [(a, loss) for a in ACTIVATIONS for loss in LOSSES]

# Central differences err by ~h^2/6 |L'''| (truncation) plus ~eps_mach |L| / h (rounding of the
# two loss values). With L, L''' of order 1 the sum is smallest near h = (3 eps_mach)^(1/3) ~ 1e-5,
# where both terms are ~1e-10, four orders of magnitude below the 1e-6 we assert.
FD_STEP = 1e-5


def _central_differences(theta, spec, X, y, h=FD_STEP):
    g = np.empty_like(theta)
    for i in range(theta.size):
        up, down = theta.copy(), theta.copy()
        up[i] += h
        down[i] -= h
        g[i] = (loss_value(up, spec, X, y) - loss_value(down, spec, X, y)) / (up[i] - down[i])
    return g


def _rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.parametrize(("activation", "loss"), CASES)
def test_naive_gradient_matches_finite_differences(activation, loss):
    spec = make_spec(activation, loss)
    X, y = data_for(loss)
    theta = make_theta0(spec)
    if activation == "relu":
        # a kink within reach of a +-h step would make the difference quotient meaningless; with
        # inputs and activations of order 1, a step h moves any pre-activation by ~1e-5 or less
        acts, _ = forward(theta, spec, X)
        hidden_layers = unflatten(theta, spec)[:-1]
        z_min = min(
            np.abs(a @ W + b).min() for a, (W, b) in zip(acts[:-1], hidden_layers, strict=True)
        )
        assert z_min > 1e-3, "choose another theta0: a relu kink lies too close"
    loss_val, grad = loss_and_grad(theta, spec, X, y)
    assert np.isclose(loss_val, loss_value(theta, spec, X, y), rtol=1e-15, atol=0)
    fd = _central_differences(theta, spec, X, y)
    assert np.linalg.norm(grad) > 1e-3  # a non-trivial gradient
    assert _rel(fd, grad) < 1e-6


@pytest.mark.parametrize(("activation", "loss"), CASES)
def test_kernel_gradient_matches_naive(activation, loss):
    """With beta1 = 0.5 the first Adam moment is m_1 = 0.5 * g exactly (a power-of-two scaling)."""
    spec = make_spec(activation, loss)
    X, y = data_for(loss)
    theta0 = make_theta0(spec)
    ds = train(X, y, hidden=spec.hidden, activation=activation, loss=loss, theta0=theta0[None],
               beta1=0.5, beta2=0.999, lr=1e-3, steps=1, precision="float64")  # fmt: skip
    n = spec.n_params
    g_kernel = 2.0 * ds["m"].values[0, 0, :n]
    loss_naive, g_naive = loss_and_grad(theta0, spec, X, y)
    assert np.isfinite(g_kernel).all()
    # the kernel sums in its own fixed order, numpy in another: agreement to rounding, not bits
    assert _rel(g_kernel, g_naive) < 1e-12
    # v_1 = (1 - beta2) g^2, and the recorded norm and loss belong to the same g and theta_0
    v = ds["v"].values[0, 0, :n]
    np.testing.assert_allclose(v, 0.001 * g_naive**2, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(ds["grad_norm"].values[0, 0], np.linalg.norm(g_naive), rtol=1e-12)
    np.testing.assert_allclose(ds["loss"].values[0, 0], loss_naive, rtol=1e-12)
    np.testing.assert_allclose(ds["train_loss"].values[0, 0], loss_naive, rtol=1e-12)
