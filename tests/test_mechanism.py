"""The second-moment decay mechanism: the float64 HVP kernel against finite differences and the
dense Hessian, the tracker against dense eigenvalues and against an exact threshold crossing,
the replay, the per-burst prediction (with evidence it must reject) and the analysis on fixtures."""

from __future__ import annotations

import math

import datafiles
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from geomtraj.analysis import mechanism
from geomtraj.analysis.hessian import MLPObjective
from geomtraj.analysis.kernels import hvp as kc
from geomtraj.analysis.mechanism import MechanismParams, Track, burst_predictions
from geomtraj.analysis.stability import (
    SharpnessSolver,
    adam_preconditioner,
    checkpoint_states,
    run_data_arrays,
    run_spec,
    stability_threshold,
)
from geomtraj.store.zarrstore import open_store
from geomtraj.train.models import MLPSpec


def _kernel(spec: MLPSpec, X, y, wd, theta):
    """Loss, gradient and an ``hvp(v)`` closure from the numba kernels at ``theta``."""
    w = kc.work_arrays(X.shape[0], spec.sizes)
    sizes = np.array(spec.sizes, np.int64)
    act, loss = kc.ACTIVATIONS[spec.activation], kc.LOSSES[spec.loss]
    value = kc.linearise(theta, sizes, spec.n_layers, act, loss, X, y, wd, w["A"], w["Z"],
                         w["D1"], w["D2"], w["DL"], w["CV"], w["d2l"], w["grad"])  # fmt: skip
    grad = w["grad"].copy()

    def hvp(v):
        out = np.empty(spec.n_params)
        vec = np.ascontiguousarray(v, dtype=np.float64)
        kc.rop(theta, vec, sizes, spec.n_layers, wd, w["A"], w["D1"], w["DL"], w["CV"],
               w["d2l"], w["RZ"], w["RA"], w["RD"], out, w["TMP"], w["TW"])  # fmt: skip
        return out

    return value, grad, hvp


def _problem(activation, loss, seed=0, hidden=(5, 7)):
    rng = np.random.default_rng(seed)
    spec = MLPSpec(2, hidden, activation, loss)
    X = rng.standard_normal((30, 2))
    y = (rng.random(30) > 0.5).astype(float) if loss == "bce" else rng.standard_normal(30)
    theta = 0.7 * rng.standard_normal(spec.n_params)
    return spec, X, y, theta


# --------------------------------------------------------------------------- the HVP kernel


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "relu"])
@pytest.mark.parametrize("loss", ["mse", "bce"])
def test_kernel_matches_the_dense_hessian_and_the_numpy_gradient(activation, loss):
    spec, X, y, theta = _problem(activation, loss)
    obj = MLPObjective(spec, X, y, 0.01)
    value, grad, hvp = _kernel(spec, X, y, 0.01, theta)
    lin = obj.at(theta)
    assert value == pytest.approx(lin.loss, rel=1e-13)
    np.testing.assert_allclose(grad, lin.grad, rtol=0, atol=1e-13 * np.abs(lin.grad).max())
    H = obj.hessian(theta)
    H_kernel = np.array([hvp(e) for e in np.eye(spec.n_params)])
    np.testing.assert_allclose(H_kernel, H, rtol=0, atol=1e-12 * np.abs(H).max())


@pytest.mark.parametrize("activation", ["tanh", "sigmoid"])
def test_kernel_hvp_matches_central_differences_of_the_gradient(activation):
    """``(g(theta + h v) - g(theta - h v)) / 2h`` agrees to its O(h^2) truncation error."""
    spec, X, y, theta = _problem(activation, "mse", seed=1)
    v = np.random.default_rng(2).standard_normal(spec.n_params)
    _, _, hvp = _kernel(spec, X, y, 0.0, theta)
    exact = hvp(v)
    errors = []
    for h in (1e-3, 1e-4):
        gp = _kernel(spec, X, y, 0.0, theta + h * v)[1]
        gm = _kernel(spec, X, y, 0.0, theta - h * v)[1]
        errors.append(np.abs((gp - gm) / (2 * h) - exact).max() / np.abs(exact).max())
    assert errors[1] < 1e-7
    assert errors[1] < errors[0] / 30  # second order: 10x smaller h, ~100x smaller error


# -------------------------------------------------------------------------------- the tracker


def _teacher_student(seed=0):
    """A tanh net whose targets are its own outputs at ``theta``: a minimum, gradient ~1e-17."""
    rng = np.random.default_rng(seed)
    spec = MLPSpec(2, (4,), "tanh", "mse")
    X = rng.standard_normal((64, 2))
    theta = rng.standard_normal(spec.n_params)
    w = kc.work_arrays(64, spec.sizes)
    sizes = np.array(spec.sizes, np.int64)
    kc.linearise(theta, sizes, spec.n_layers, 0, 0, X, np.zeros(64), 0.0, w["A"], w["Z"],
                 w["D1"], w["D2"], w["DL"], w["CV"], w["d2l"], w["grad"])  # fmt: skip
    y = w["Z"][sum(spec.sizes) - 1].copy()  # the output row: the net's own predictions
    return spec, X, y, theta


def _track(spec, X, y, thetas, vs, t_first, hyper, threshold, params, u=None):
    n = len(thetas)
    out = {k: np.full(n, np.nan) for k in ("sharpness", "dir_curv", "loss", "log_v")}
    w = kc.work_arrays(X.shape[0], spec.sizes)
    if u is None:
        u = np.random.default_rng(0).standard_normal(spec.n_params)
        u /= np.linalg.norm(u)
    carry = np.array([0.0, float(params.stride)])
    kc.track_block(thetas, vs, t_first, 1, np.array(spec.sizes, np.int64), spec.n_layers, 0, 0, X,
                   y, np.asarray(hyper, float), threshold, u, carry, params.stride,
                   params.dense_stride, params.dense_level, params.horizon, params.lanczos_steps,
                   params.lanczos_tol,
                   out["sharpness"], out["dir_curv"], out["loss"], out["log_v"],
                   *(w[k] for k in mechanism._WORK))  # fmt: skip
    return out


@pytest.mark.parametrize("lanczos_tol, rtol", [(0.0, 1e-9), (0.01, 1e-6)])
def test_tracker_finds_the_exact_crossing_of_geometric_v_decay_at_a_minimum(lanczos_tol, rtol):
    """At a minimum g = 0, so Adam keeps theta and v_t = v_0 beta2^t exactly; with eps = 0 and the
    bias corrections at 1, lambda_t = lambda_0 beta2^(-t/2), which crosses the threshold at
    t* = 2 ln(threshold/lambda_0) / -ln(beta2): the decay forecast must give t* and the tracked
    crossing must lie within the dense spacing of it. Without the early stop of the Lanczos
    steps the values are exact to rounding; with it (the default) to ``rtol``."""
    spec, X, y, theta = _teacher_student()
    beta1, beta2 = 0.9, 0.999
    v0 = np.exp(np.random.default_rng(3).uniform(-14, -10, spec.n_params))
    t0 = 10**7  # bias corrections are 1 to machine precision
    n = 400
    vs = v0[None, :] * beta2 ** np.arange(n)[:, None]
    thetas = np.tile(theta, (n, 1))
    obj = MLPObjective(spec, X, y)
    H = obj.hessian(theta)
    lam0 = np.linalg.eigvalsh(H / np.sqrt(np.outer(np.sqrt(beta2 * v0), np.sqrt(beta2 * v0))))[-1]
    lr = (2 + 2 * beta1) / ((1 - beta1) * lam0 / 0.9)  # lambda_0 = 0.9 * threshold
    threshold = stability_threshold(beta1, lr)
    t_star = 2 * math.log(threshold / lam0) / -math.log(beta2)
    params = MechanismParams(stride=16, dense_stride=2, lanczos_steps=4, lanczos_tol=lanczos_tol)
    out = _track(spec, X, y, thetas, vs, t0, [beta1, beta2, lr, 0.0, 0.0], threshold, params)
    ev = np.isfinite(out["sharpness"])
    exact = lam0 * beta2 ** (-np.arange(n) / 2)
    # after the first evaluation the warm-started Lanczos is converged
    np.testing.assert_allclose(out["sharpness"][ev][1:], exact[ev][1:], rtol=rtol)
    # the spacing follows the decay forecast: a quarter of the time to t*, 2 to 16 updates
    gaps = np.diff(np.flatnonzero(ev))
    forecast = t_star - np.flatnonzero(ev)[:-1]
    expected_gaps = np.clip(np.ceil(np.where(forecast > 0, 0.25 * forecast, 0)), 2, 16)
    expected_gaps += expected_gaps % 2  # rounded up to the replayed rows (every update here)
    np.testing.assert_array_less(gaps, expected_gaps + 2)
    assert gaps[0] == 16 and gaps[-1] == 2
    assert np.sum(np.flatnonzero(ev) < t_star) < t_star / 6  # every 2nd update: t_star / 2
    track = Track(np.arange(n), out["sharpness"], out["dir_curv"], out["log_v"], out["loss"],
                  threshold, 0, 1.0, 1.0, 0)  # fmt: skip
    # a fictitious burst at 10..20 and the next at 300; the prediction starts from step 20
    pred = burst_predictions(track, np.array([10.0, 300.0]), np.array([20.0, 320.0]), beta1,
                             beta2, params)  # fmt: skip
    assert pred["n_crossings"] == 1
    assert abs(pred["crossings"][0] - t_star) <= params.dense_stride
    forecast_rtol = 1e-9 if lanczos_tol == 0 else 1e-4  # 2/ln(thr/lambda) ~ 20 x lambda's
    assert pred["decay_interval"][0] + 10.0 == pytest.approx(t_star, rel=forecast_rtol)
    # v decays by ln(beta2) per update from the state after the burst down to the crossing
    expected = pred["predicted_onset"][0] - 20
    assert pred["v_decay_time"][0] == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("lanczos_tol, rtol", [(0.0, 1e-9), (0.01, 1e-6)])
def test_tracker_has_no_crossing_when_v_stays_put(lanczos_tol, rtol):
    """The same minimum with v constant: lambda stays at 0.9 threshold, so no crossing at all;
    far from the threshold (the forecast is 210 updates away) every 48th state is evaluated."""
    spec, X, y, theta = _teacher_student()
    beta1, beta2 = 0.9, 0.999
    v0 = np.exp(np.random.default_rng(3).uniform(-14, -10, spec.n_params))
    n = 300
    obj = MLPObjective(spec, X, y)
    H = obj.hessian(theta)
    lam0 = np.linalg.eigvalsh(H / np.sqrt(np.outer(np.sqrt(v0), np.sqrt(v0))))[-1]
    lr = (2 + 2 * beta1) / ((1 - beta1) * lam0 / 0.9)
    # v_t = v0 / beta2 so that v' = beta2 v_t = v0 at every step
    vs = np.tile(v0 / beta2, (n, 1))
    params = MechanismParams(lanczos_tol=lanczos_tol)
    out = _track(spec, X, y, np.tile(theta, (n, 1)), vs, 10**7, [beta1, beta2, lr, 0.0, 0.0],
                 stability_threshold(beta1, lr), params)  # fmt: skip
    ratio = out["sharpness"] / stability_threshold(beta1, lr)
    assert np.nanmax(ratio) == pytest.approx(0.9, rel=rtol)
    assert set(np.diff(np.flatnonzero(np.isfinite(ratio)))) == {params.stride}
    track = Track(np.arange(n), out["sharpness"], out["dir_curv"], out["log_v"], out["loss"],
                  stability_threshold(beta1, lr), 0, 1.0, 1.0, 0)  # fmt: skip
    assert burst_predictions(track, np.zeros(0), np.zeros(0), beta1, beta2)["n_crossings"] == 0


def test_tracker_leaves_a_state_it_cannot_measure_unmeasured():
    """A non-finite v (so a non-finite preconditioner) gives NaN at that state, not an error, and
    the states after it are measured as before."""
    spec, X, y, theta = _teacher_student()
    v0 = np.exp(np.random.default_rng(3).uniform(-14, -10, spec.n_params))
    n = 60
    vs = np.tile(v0, (n, 1))
    vs[12, 3] = np.nan
    params = MechanismParams(stride=12, dense_stride=12, horizon=0.0)
    hyper = [0.9, 0.999, 1e-3, 0.0, 0.0]
    out = _track(spec, X, y, np.tile(theta, (n, 1)), vs, 10**7, hyper, 1.0, params)
    evaluated = np.flatnonzero(np.isfinite(out["sharpness"]))
    np.testing.assert_array_equal(evaluated, [0, 24, 36, 48])
    assert np.isnan(out["dir_curv"][12])
    np.testing.assert_allclose(out["sharpness"][evaluated], out["sharpness"][0], rtol=1e-6)


@pytest.fixture(scope="module")
def bursts_f32():
    ds = open_store(datafiles.BURSTS_F32)
    return ds, mechanism.track_run(ds, 0)


def test_replay_is_bit_identical_to_the_stored_run(bursts_f32):
    ds, track = bursts_f32
    assert track.mismatches == 0  # every one of the 5000 update norms, bit for bit
    *_, (t_first, theta, v, _, _) = mechanism.replay_states(ds, 0)
    one = ds.isel(run=0)
    np.testing.assert_array_equal(theta[-1], one["theta_final"].values)
    np.testing.assert_array_equal(v[-1], one["v_final"].values)
    assert t_first + theta.shape[0] - 1 == 5000


def test_tracker_agrees_with_dense_eigenvalues_and_never_exceeds_them(bursts_f32):
    """At 12 states of the fixture run the tracked value matches a fresh dense eigensolve; the Ritz
    value of Lanczos is a lower bound of lambda_max, so it may lag but never overshoot (measured
    with the defaults: median lag 5e-4, largest 0.6 %, docs/mechanism.md)."""
    ds, track = bursts_f32
    h = {k: float(ds[k].values[0]) for k in ("beta1", "beta2", "eps")}
    ev = np.flatnonzero(track.evaluated)
    steps = ev[np.linspace(1, ev.size - 1, 12).astype(int)]
    states = checkpoint_states(ds, 0, steps=steps, retrain=True)
    obj = MLPObjective(run_spec(ds, 0), *run_data_arrays(ds, 0))
    solver = SharpnessSolver(method="dense")
    rel = []
    with threadpool_limits(1):  # BLAS threads only contend on a busy machine for 373x373
        for i, t in enumerate(states.steps):
            lin = obj.at(states.theta[i])
            P = adam_preconditioner(states.v[i], lin.grad, int(t), h["beta1"], h["beta2"],
                                    h["eps"])  # fmt: skip
            exact = solver(lin, P)[0]
            rel.append(track.sharpness[int(t)] / exact - 1)
            # the directional curvature comes out of the Rayleigh-Ritz step: q^T H q / g^T q
            q = lin.grad / P
            along = q @ obj.hessian(states.theta[i]) @ q / (lin.grad @ q)
            assert track.dir_curv[int(t)] == pytest.approx(along, rel=1e-9)
    rel = np.array(rel)
    assert np.all(rel < 1e-9)
    # typically within what lambda rises in one dense spacing between bursts (0.6 % here)
    spacing = MechanismParams().dense_stride
    assert np.median(np.abs(rel)) < h["beta2"] ** (-spacing / 2) - 1


# ----------------------------------------------------------------------- per-burst prediction


def test_bursts_f32_each_burst_follows_the_first_crossing_after_the_previous_one(bursts_f32):
    ds, track = bursts_f32
    from geomtraj.analysis.base import RunData
    from geomtraj.analysis.events import run_bursts

    b = run_bursts(RunData(ds, 0))
    pred = burst_predictions(track, b.onset, b.end, 0.9, 0.999)
    assert pred["n_predicted"] == len(b) - 1 == 42
    assert pred["onsets_explained"] >= 0.8 and pred["p_value"] < 0.01
    assert 0 < pred["lead_median"] < pred["max_lag"]
    # evidence it must reject: onsets moved by half a period are no longer explained
    half = 0.5 * float(np.median(np.diff(b.onset)))
    moved = burst_predictions(track, b.onset + half, b.end + half, 0.9, 0.999)
    assert not (moved["onsets_explained"] >= 0.8 and moved["p_value"] < 0.01)
    assert moved["false_crossings"] > 0.5


def test_prediction_never_uses_the_onset_it_predicts(bursts_f32):
    ds, track = bursts_f32
    onsets = np.array([1000.0, 1100.0, 1210.0])
    ends = np.array([1040.0, 1150.0, 1250.0])
    a = burst_predictions(track, onsets, ends, 0.9, 0.999)
    later = onsets.copy()
    later[2] += 37.0  # move the predicted burst; its prediction must not move
    b = burst_predictions(track, later, ends, 0.9, 0.999)
    np.testing.assert_array_equal(a["predicted_onset"][1], b["predicted_onset"][1])
    np.testing.assert_array_equal(a["decay_interval"][1], b["decay_interval"][1])
    assert b["lead"][1] == a["lead"][1] + 37.0


# ------------------------------------------------------------------------------ the analysis


def test_report_gives_each_run_with_bursts_its_mechanism_fields():
    ds = open_store(datafiles.BURSTS_F64)
    rep = mechanism.report(mechanism.analyze(ds))
    fields = rep["runs"][0]["mechanism"]
    for key in ("predicted_period", "onsets_explained", "lead_median", "false_crossings"):
        assert fields[key] is not None and math.isfinite(fields[key])
    assert fields["verdict"] == "bursts start at crossings"
    entry = rep["mechanism"]["runs"][0]
    assert entry["predicted_period"] < entry["measured_period"]  # crossing precedes the onset


def test_blocks_of_runs_with_different_burst_counts_combine_into_the_whole_result():
    """The runner splits runs into blocks and concatenates their results: ragged ``burst`` and
    ``step`` dims pad with NaN, and the report equals that of one block of all runs."""
    from geomtraj.analysis import combine

    ds = open_store(datafiles.BETA_GRID)
    runs = [0, 5]
    whole = mechanism.analyze(ds, runs)
    parts = combine([mechanism.analyze(ds, [r]) for r in runs])
    assert whole.sizes["burst"] == parts.sizes["burst"]
    assert mechanism.report(parts) == mechanism.report(whole)


def test_report_judges_with_the_parameters_the_analysis_ran_with():
    """The verdict settings travel in the result (attrs["params"]), not as defaults."""
    ds = open_store(datafiles.BURSTS_F64)
    strict = mechanism.MechanismParams(min_bursts=10_000)
    rep = mechanism.report(mechanism.analyze(ds, params=strict))
    assert rep["runs"][0]["mechanism"]["verdict"] == "too few bursts"
    assert rep["mechanism"]["overall"]["verdict"] == "too few bursts"


def test_store_without_training_data_is_not_measurable_with_a_reason():
    ds = open_store(datafiles.BURSTS_F32).drop_vars(["data_x"])
    rep = mechanism.report(mechanism.analyze(ds))
    fields = rep["runs"][0]["mechanism"]
    assert fields["verdict"] == "not measurable"
    assert "data_x" in fields["note"] and fields["onsets_explained"] is None
    assert rep["mechanism"]["overall"]["verdict"] == "not measurable"


def test_params_are_checked():
    with pytest.raises(Exception, match="stride"):
        MechanismParams(stride=0)
