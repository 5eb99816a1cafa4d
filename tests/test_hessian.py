"""geomtraj.analysis.hessian: loss and gradient against the NumPy reference and the trainer, exact
HVPs
against finite differences of the gradient."""

from __future__ import annotations

import naive
import numpy as np
import pytest
from conftest import adam_float64, data_for, make_spec, make_theta0

from geomtraj.analysis.hessian import MLPObjective, hessian, hvp, loss_and_grad
from geomtraj.errors import GeomtrajError

COMBOS = [(a, lo) for a in ("tanh", "sigmoid", "relu") for lo in ("mse", "bce")]


@pytest.mark.parametrize(("activation", "loss"), COMBOS)
@pytest.mark.parametrize("weight_decay", [0.0, 0.03])
def test_loss_and_gradient_match_naive_backprop(activation, loss, weight_decay):
    spec = make_spec(activation, loss)
    X, y = data_for(loss)
    theta = make_theta0(spec)
    value, grad = loss_and_grad(spec, theta, X, y, weight_decay)
    ref_value, ref_grad = naive.loss_and_grad(theta, spec, X, y)
    ref_grad = ref_grad + weight_decay * theta
    assert value == pytest.approx(ref_value, rel=1e-13)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-11, atol=1e-14 * np.abs(ref_grad).max())


@pytest.mark.parametrize(("activation", "loss"), [("tanh", "mse"), ("sigmoid", "bce")])
def test_gradient_norm_matches_the_trainer(activation, loss):
    """The trainer's recorded ||g_1|| (float64, weight decay added) at theta_0."""
    spec, X, y, theta0, ds = adam_float64(activation, loss)
    for r in range(theta0.shape[0]):
        wd = float(ds["weight_decay"].values[r])
        _, grad = loss_and_grad(spec, theta0[r], X, y, wd)
        recorded = float(ds["grad_norm"].values[r, 0])
        assert np.linalg.norm(grad) == pytest.approx(recorded, rel=1e-12)


@pytest.mark.parametrize(("activation", "loss"), COMBOS)
def test_hvp_matches_finite_differences_of_the_gradient(activation, loss):
    spec = make_spec(activation, loss)
    X, y = data_for(loss)
    theta = make_theta0(spec, seed=1)
    objective = MLPObjective(spec, X, y, weight_decay=0.01)
    rng = np.random.default_rng(7)
    for _ in range(3):
        v = rng.standard_normal(spec.n_params)
        h = 1e-5
        g_plus = objective.loss_and_grad(theta + h * v)[1]
        g_minus = objective.loss_and_grad(theta - h * v)[1]
        fd = (g_plus - g_minus) / (2 * h)
        exact = objective.hvp(theta, v)
        # central differences: truncation O(h^2) ~ 1e-10, rounding ~ 1e-16/h ~ 1e-11
        scale = np.abs(exact).max()
        np.testing.assert_allclose(exact, fd, rtol=0, atol=1e-6 * scale)


@pytest.mark.parametrize(("activation", "loss"), COMBOS)
def test_hessian_is_symmetric_and_batched_hvps_agree(activation, loss):
    spec = make_spec(activation, loss)
    X, y = data_for(loss)
    theta = make_theta0(spec, seed=2)
    lin = MLPObjective(spec, X, y).at(theta)
    rng = np.random.default_rng(3)
    V = rng.standard_normal((4, spec.n_params))
    batched = lin(V)
    single = np.stack([lin(v) for v in V])
    np.testing.assert_allclose(batched, single, rtol=1e-12, atol=1e-14)
    # u.Hv == v.Hu to rounding: the R-operator computes each product independently
    assert V[0] @ batched[1] == pytest.approx(V[1] @ batched[0], rel=1e-10)
    H = hessian(spec, theta, X, y)
    np.testing.assert_allclose(H @ V[2], batched[2], rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize(("activation", "loss"), COMBOS)
def test_kernel_products_match_the_numpy_ones_to_rounding(activation, loss):
    """KernelLinearisation: the same point (loss and gradient bit for bit), the JIT products."""
    spec = make_spec(activation, loss)
    X, y = data_for(loss)
    theta = make_theta0(spec, seed=5)
    objective = MLPObjective(spec, X, y, weight_decay=0.02)
    ref, fast = objective.at(theta), objective.at(theta, kernel=True)
    assert fast.loss == ref.loss and fast.grad.tobytes() == ref.grad.tobytes()
    V = np.random.default_rng(6).standard_normal((3, spec.n_params))
    want = ref(V)
    np.testing.assert_allclose(fast(V), want, rtol=0, atol=1e-13 * np.abs(want).max())
    np.testing.assert_allclose(fast(V[1]), want[1], rtol=0, atol=1e-13 * np.abs(want).max())
    with pytest.raises(GeomtrajError, match="HVP directions"):
        fast(V[:, :-1])


@pytest.mark.parametrize(("activation", "loss"), [("tanh", "mse"), ("sigmoid", "bce")])
def test_dense_hessian_matches_finite_differences_column_by_column(activation, loss):
    """Every column of the dense Hessian against central differences of the gradient."""
    spec = make_spec(activation, loss)
    X, y = data_for(loss)
    theta = make_theta0(spec, seed=4)
    objective = MLPObjective(spec, X, y, weight_decay=0.01)
    H = objective.hessian(theta)
    h = 1e-5
    fd = np.empty_like(H)
    for i in range(spec.n_params):
        e = np.zeros(spec.n_params)
        e[i] = h
        fd[:, i] = objective.loss_and_grad(theta + e)[1] - objective.loss_and_grad(theta - e)[1]
        fd[:, i] /= 2 * h
    # truncation O(h^2) and rounding ~1e-16/h, as for single HVPs
    np.testing.assert_allclose(H, fd, rtol=0, atol=1e-6 * np.abs(H).max())
    np.testing.assert_allclose(H, H.T, rtol=0, atol=1e-12 * np.abs(H).max())


def test_weight_decay_adds_the_identity():
    spec = make_spec("tanh", "mse")
    X, y = data_for("mse")
    theta = make_theta0(spec)
    v = np.random.default_rng(0).standard_normal(spec.n_params)
    plain = hvp(spec, theta, X, y, v)
    decayed = hvp(spec, theta, X, y, v, weight_decay=0.5)
    np.testing.assert_allclose(decayed - plain, 0.5 * v, rtol=1e-12, atol=1e-14)


def test_bad_input_is_a_one_line_error():
    spec = make_spec("tanh", "mse")
    X, y = data_for("mse")
    objective = MLPObjective(spec, X, y)
    with pytest.raises(GeomtrajError, match="theta has shape"):
        objective.at(np.zeros(spec.n_params + 1))
    with pytest.raises(GeomtrajError, match="non-finite"):
        objective.at(np.full(spec.n_params, np.nan))
    with pytest.raises(GeomtrajError, match="HVP directions"):
        objective.hvp(make_theta0(spec), np.zeros(3))
    with pytest.raises(GeomtrajError, match="do not fit"):
        MLPObjective(spec, X[:, :1], y)
