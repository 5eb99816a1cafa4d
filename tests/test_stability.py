"""Edge of stability: the threshold, Cohen et al.'s preconditioner, lambda_max(P^-1 H) on problems
with known spectra, burst onsets against crossings, and the analysis on trained stores."""

from __future__ import annotations

import naive
import numpy as np
import pytest
import scipy.linalg
from conftest import make_spec, make_theta0
from synth_stability import (
    frozen_adam_on_quadratic,
    quadratic_problem,
    real_runs,
    sawtooth_ratio,
)

from geomtraj.analysis import base, stability
from geomtraj.analysis.base import RunView
from geomtraj.analysis.hessian import MLPObjective
from geomtraj.analysis.stability import (
    SharpnessSolver,
    StabilityParams,
    adam_preconditioner,
    checkpoint_states,
    onsets_vs_crossings,
    power_iteration,
    preconditioned_sharpness,
    stability_threshold,
    update_ratio,
    upward_crossings,
)
from geomtraj.errors import GeomtrajError
from geomtraj.train.data import make_dataset
from geomtraj.train.trainer import train

# ------------------------------------------------------------------------------- the formulas


def test_threshold_is_38_over_lr_for_beta1_09():
    assert stability_threshold(0.9, 0.01) == pytest.approx(3800.0, rel=1e-12)
    assert stability_threshold(0.0, 0.1) == pytest.approx(20.0, rel=1e-12)  # plain GD: 2/lr
    with pytest.raises(GeomtrajError, match="beta1"):
        stability_threshold(1.0, 0.01)


@pytest.mark.parametrize("beta1", [0.0, 0.5, 0.9])
def test_frozen_adam_on_a_quadratic_is_stable_exactly_below_the_threshold(beta1):
    lr = 0.01
    thr = stability_threshold(beta1, lr)
    below = frozen_adam_on_quadratic(0.99 * thr, beta1, lr, 500)
    above = frozen_adam_on_quadratic(1.01 * thr, beta1, lr, 500)
    assert below[-1] < 1e-3 * below.max()
    assert above[-1] > 1e3


def test_preconditioner_reproduces_the_adam_step():
    """theta_{t+1} - theta_t = -lr * m_{t+1} / P(v_t, g(theta_t), t), from the NumPy reference."""
    spec = make_spec("tanh", "mse")
    X, y = make_dataset("sincos", 64, 0)
    theta0 = make_theta0(spec)
    b1, b2, lr, eps = 0.9, 0.99, 0.01, 1e-8
    ref = naive.adam_reference(theta0, spec, X, y, 6, b1, b2, lr, eps)
    objective = MLPObjective(spec, X, y)
    thetas = np.vstack([theta0, ref["theta"]])
    ms = np.vstack([np.zeros(spec.n_params), ref["m"]])
    vs = np.vstack([np.zeros(spec.n_params), ref["v"]])
    for t in range(6):  # state after update t (t = 0: the initial point)
        g = objective.loss_and_grad(thetas[t])[1]
        P = adam_preconditioner(vs[t], g, t, b1, b2, eps)
        m_next = b1 * ms[t] + (1 - b1) * g
        np.testing.assert_allclose(thetas[t + 1] - thetas[t], -lr * m_next / P, rtol=1e-10)


def test_update_ratio_is_one_for_a_constant_gradient():
    g = np.array([0.3, -2.0, 1e-3])
    b1, b2, t = 0.9, 0.999, 50
    m = (1 - b1**t) * g  # the raw moments after t steps of the same gradient
    v = (1 - b2**t) * g * g
    np.testing.assert_allclose(update_ratio(m, v, t, b1, b2, 0.0), 1.0, rtol=1e-12)
    assert np.isnan(update_ratio(m, v, 0, b1, b2, 0.0)).all()


# ----------------------------------------------------------- lambda_max on known quadratics


@pytest.mark.parametrize("method", ["dense", "eigsh", "power"])
@pytest.mark.parametrize("negative", [0, 3])
def test_lambda_max_of_a_quadratic_with_known_hessian_within_1_percent(method, negative):
    hvp, P, lam = quadratic_problem(40, seed=5, negative=negative)
    top, hmax = preconditioned_sharpness(hvp, P, method=method, tol=1e-12)
    assert top == pytest.approx(lam.max(), rel=0.01)
    H = hvp(np.eye(40))
    assert hmax == pytest.approx(np.linalg.eigvalsh(H)[-1], rel=0.01)
    # and tighter than 1 %: all three methods are exact to solver tolerance here
    assert top == pytest.approx(lam.max(), rel=1e-6)


def test_power_iteration_finds_the_largest_algebraic_eigenvalue():
    A = np.diag([3.0, 1.0, -10.0])  # the largest magnitude is negative
    top, ok = power_iteration(lambda x: A @ x, 3, tol=1e-14)
    assert ok and top == pytest.approx(3.0, rel=1e-8)


def test_sharpness_matches_a_generalised_eigenproblem_on_an_mlp():
    spec = make_spec("tanh", "mse")
    X, y = make_dataset("sincos", 64, 0)
    lin = MLPObjective(spec, X, y).at(make_theta0(spec))
    P = np.random.default_rng(0).uniform(0.01, 1.0, spec.n_params)
    top, _ = preconditioned_sharpness(lin, P, method="eigsh", tol=1e-12)
    H = lin(np.eye(spec.n_params))
    ref = scipy.linalg.eigh(0.5 * (H + H.T), np.diag(P), eigvals_only=True)[-1]
    assert top == pytest.approx(ref, rel=1e-8)


def test_warm_started_lanczos_matches_the_dense_solver_along_a_trained_run():
    """Netay-sized network (12x24, 373 parameters) at 9 checkpoints of a float32 run."""
    X, y = make_dataset("sincos", 64, 0)
    ds = train(X, y, hidden=(12, 24), lr=1e-2, beta2=0.99, steps=800, record_every=100,
               record_params="all", precision="float32", seed=0)  # fmt: skip
    spec = make_spec("tanh", "mse", (12, 24))
    objective = MLPObjective(spec, *stability.run_data_arrays(ds, 0))
    states = checkpoint_states(ds, 0)
    assert states.steps.size == 9 and spec.n_params == 373
    warm, dense = SharpnessSolver(method="eigsh"), SharpnessSolver(method="dense")
    for i, t in enumerate(states.steps):
        lin = objective.at(states.theta[i])
        P = adam_preconditioner(states.v[i], lin.grad, int(t), 0.9, 0.99, 1e-8)
        s_w, h_w = warm(lin, P)
        s_d, h_d = dense(lin, P)
        # eigsh stops at a relative residual of 1e-8; the eigenvalue error is far smaller
        assert s_w == pytest.approx(s_d, rel=1e-9) and h_w == pytest.approx(h_d, rel=1e-9)
    # the point of Lanczos: a few tens of HVPs per checkpoint instead of n_params
    assert dense.n_hvp == 9 * 373 and warm.n_hvp < 0.2 * dense.n_hvp


def test_a_warm_start_on_a_lower_eigenvector_still_finds_the_top():
    """The previous top eigenvector is an exact, but no longer the top, eigenvector."""
    n = 50
    first = np.linspace(1.0, 2.0, n)
    first[0] = 10.0  # top along e_0
    second = first.copy()
    second[0], second[-1] = 3.0, 20.0  # e_0 still an eigenvector, but the top is now e_{n-1}
    for method in ("eigsh", "power"):
        solver = SharpnessSolver(method=method, tol=1e-12)
        assert solver(lambda V, d=first: V * d, np.ones(n))[0] == pytest.approx(10.0, rel=1e-8)
        assert solver(lambda V, d=second: V * d, np.ones(n))[0] == pytest.approx(20.0, rel=1e-8)


def test_bad_preconditioner_is_an_error():
    hvp, P, _ = quadratic_problem(5, seed=0)
    with pytest.raises(GeomtrajError, match="positive"):
        preconditioned_sharpness(hvp, -P)
    with pytest.raises(GeomtrajError, match="method"):
        preconditioned_sharpness(hvp, P, method="lobpcg")


# ------------------------------------------------------------------ onsets against crossings


def test_upward_crossings_are_interpolated():
    steps, ratio, crossings, _ = sawtooth_ratio(period=200, n_periods=5, lag=0, stride=10)
    found = upward_crossings(steps, ratio)
    np.testing.assert_allclose(found, crossings, atol=1e-9)


def test_onsets_a_fixed_lag_after_crossings_are_at_crossings():
    steps, ratio, crossings, onsets = sawtooth_ratio(period=300, n_periods=20, lag=40, stride=5)
    out = onsets_vs_crossings(steps, ratio, onsets, max_lag=100)
    assert out["n_onsets"] == out["n_at_crossing"] == out["n_crossings"] == 20
    np.testing.assert_allclose(out["lags"], 40.0, atol=1e-9)
    # the windows [c - 5, c + 100] cover 105 of every 300 steps
    assert out["chance_fraction"] == pytest.approx(105 / 300, abs=0.02)
    assert out["p_value"] < 1e-6
    assert out["fraction_above_at_onset"] == 1.0
    assert out["fraction_time_above"] == pytest.approx(0.5, abs=0.02)


def test_random_onsets_are_at_crossings_only_by_chance():
    steps, ratio, _, _ = sawtooth_ratio(period=300, n_periods=60, lag=0, stride=5)
    onsets = np.random.default_rng(1).integers(0, steps[-1], 200)
    out = onsets_vs_crossings(steps, ratio, onsets, max_lag=100)
    assert out["fraction_at_crossing"] == pytest.approx(out["chance_fraction"], abs=0.1)
    assert out["p_value"] > 0.01


# ---------------------------------------------------------------------------- stored runs


@pytest.fixture(scope="module")
def small_store():
    """Two float64 runs of a (5, 7) tanh net, every parameter recorded every 5 steps."""
    X, y = make_dataset("sincos", 64, 0)
    return train(X, y, hidden=(5, 7), lr=[0.01, 0.03], beta2=0.99, steps=400, record_every=5,
                 record_params="all", precision="float64", seed=3)  # fmt: skip


def test_store_sharpness_matches_a_direct_computation(small_store):
    ds = small_store
    res = stability.analyze(ds, max_checkpoints=9)
    spec = make_spec("tanh", "mse", (5, 7))
    X, y = make_dataset("sincos", 64, 0)
    j = 1
    steps = res["checkpoint_step"].values[j]
    assert steps[0] == 0 and steps[8] == 400 and np.all(steps[9:] == -1)
    t = int(steps[4])
    row = int(np.flatnonzero(ds["step"].values == t)[0])
    theta = ds["theta"].values[j, row]
    v = ds["v"].values[j, row]
    lin = MLPObjective(spec, X, y).at(theta)
    b1, b2, lr, eps = 0.9, 0.99, 0.03, 1e-8
    v_next = b2 * v + (1 - b2) * lin.grad**2
    P = (1 - b1 ** (t + 1)) * (np.sqrt(v_next / (1 - b2 ** (t + 1))) + eps)
    H = lin(np.eye(spec.n_params))
    ref = scipy.linalg.eigh(0.5 * (H + H.T), np.diag(P), eigvals_only=True)[-1]
    assert res["sharpness"].values[j, 4] == pytest.approx(ref, rel=1e-8)
    assert res["threshold"].values[j] == pytest.approx((2 + 2 * b1) / ((1 - b1) * lr))
    assert res["sharpness_ratio"].values[j, 4] == pytest.approx(ref / res["threshold"].values[j])
    assert str(res["checkpoint_source"].values[j]) == "recorded"


def test_subset_store_has_only_init_and_final_unless_retrained(small_store):
    X, y = make_dataset("sincos", 64, 0)
    sub = train(X, y, hidden=(5, 7), lr=[0.01, 0.03], beta2=0.99, steps=400, record_every=5,
                record_params=4, precision="float64", seed=3)  # fmt: skip
    states = checkpoint_states(sub, 1, max_checkpoints=9)
    assert states.source == "init+final" and states.steps.tolist() == [0, 400]
    assert "retrain=True" in states.note
    rebuilt = checkpoint_states(sub, 1, max_checkpoints=9, retrain=True)
    assert rebuilt.source == "retrained" and rebuilt.note == ""
    full = checkpoint_states(small_store, 1, steps=rebuilt.steps)
    assert rebuilt.steps.tolist() == full.steps.tolist() == [0, 50, 100, 150, 200, 250, 300,
                                                              350, 400]  # fmt: skip
    for name in ("theta", "m", "v"):  # the trainer is bit-for-bit reproducible
        assert getattr(rebuilt, name).tobytes() == getattr(full, name).tobytes(), name


def test_requested_checkpoints_without_state_are_dropped_with_a_note():
    X, y = make_dataset("sincos", 64, 0)
    ds = train(X, y, hidden=(5, 7), lr=0.01, steps=100, record_every=10, record_params="all",
               precision="float64")  # fmt: skip
    states = checkpoint_states(ds, 0, steps=[0, 10, 15, 100, 500])
    assert states.steps.tolist() == [0, 10, 100]
    assert "outside" in states.note and "hold no full state" in states.note


def test_diverged_run_is_measured_up_to_its_last_finite_state():
    X, y = make_dataset("sincos", 64, 0)
    ds = train(X, y, hidden=(5, 7), lr=[0.01, 50.0], steps=40, record_params="all",
               precision="float32")  # fmt: skip
    d = int(ds["diverged_step"].values[1])
    assert d > 1
    states = checkpoint_states(ds, 1)
    assert states.steps[-1] == d - 1
    assert np.isfinite(states.theta).all()


def test_report_has_a_verdict_and_notes_for_too_few_bursts(small_store):
    res = stability.analyze(small_store, max_checkpoints=20)
    rep = stability.report(res)
    assert set(rep["runs"]) == {0, 1}
    entry = rep["stability"]["runs"][0]
    assert entry["verdict"] == "too few bursts" and "onsets" in entry["note"]
    assert rep["stability"]["overall"]["verdict"] == "too few bursts"
    assert entry["threshold"] == pytest.approx(3800.0)


def test_unknown_setting_is_a_one_line_error(small_store):
    with pytest.raises(GeomtrajError, match="StabilityParams"):
        stability.analyze(small_store, wrong_setting=1)
    with pytest.raises(GeomtrajError, match="eig_method"):
        StabilityParams(eig_method="qr")


# -------------------------------------------------------------------------- the real runs


@pytest.mark.slow
def test_bursts_begin_where_sharpness_crosses_the_threshold(tmp_path):
    """8x8 tanh nets at three learning rates: every burst onset follows an upward crossing."""
    ds = real_runs(steps=8000)
    res = stability.analyze(ds, max_checkpoints=1600)
    rep = stability.report(res)
    overall = rep["stability"]["overall"]
    assert overall["n_onsets"] >= 30
    assert overall["verdict"] == "bursts start at crossings"
    for e in rep["stability"]["runs"]:
        # bursts start while the sharpness is above threshold, far more often than chance
        assert e["fraction_above_at_onset"] > e["fraction_time_above"]
        assert e["p_value_above"] < 0.01
    paths = stability.figures(ds, res, tmp_path)
    assert all(p.stat().st_size > 0 for p in paths)


def test_snapshots_give_checkpoints_and_match_a_retrained_run(small_store):
    X, y = make_dataset("sincos", 64, 0)
    snap = train(X, y, hidden=(5, 7), lr=[0.01, 0.03], beta2=0.99, steps=400, record_every=5,
                 record_params=4, precision="float64", seed=3, snapshot_every=100)  # fmt: skip
    states = checkpoint_states(snap, 1)
    assert states.source == "snapshots" and states.steps.tolist() == [0, 100, 200, 300, 400]
    assert "snapshots" in states.note
    full = checkpoint_states(small_store, 1, steps=states.steps)
    for name in ("theta", "m", "v"):
        assert getattr(states, name).tobytes() == getattr(full, name).tobytes(), name
    # retraining checks itself against the snapshots and the recorded coordinates
    rebuilt = checkpoint_states(snap, 1, max_checkpoints=9, retrain=True)
    assert rebuilt.source == "retrained" and rebuilt.note == ""


def test_retraining_reports_a_trajectory_that_does_not_match_the_store():
    X, y = make_dataset("sincos", 64, 0)
    sub = train(X, y, hidden=(5, 7), lr=0.01, beta2=0.99, steps=100, record_every=5,
                record_params=4, precision="float64", seed=3)  # fmt: skip
    theta = sub["theta"].values.copy()
    theta[0, 4, 0] += 1e-3  # step 25, a checkpoint of the retrained run
    tampered = sub.assign(theta=sub["theta"].copy(data=theta))
    assert checkpoint_states(sub, 0, max_checkpoints=5, retrain=True).note == ""
    note = checkpoint_states(tampered, 0, max_checkpoints=5, retrain=True).note
    assert "differs from the stored one by up to 0.001" in note


def test_sparse_checkpoints_are_not_measurable():
    """Two checkpoints 400 steps apart cannot place a crossing within a 100-step window."""
    X, y = make_dataset("sincos", 64, 0)
    sub = train(X, y, hidden=(5, 7), lr=0.01, beta2=0.99, steps=400, record_params=4,
                precision="float64", seed=3)  # fmt: skip
    rep = stability.report(stability.analyze(sub))
    entry = rep["stability"]["runs"][0]
    assert entry["verdict"] == "not measurable" and "lag window" in entry["note"]
    assert entry["fraction_at_crossing"] is None and entry["p_value"] is None
    assert rep["stability"]["overall"]["verdict"] == "not measurable"


def test_a_step_range_restricts_the_checkpoints(small_store):
    from geomtraj.analysis.runner import select_steps

    view = select_steps(small_store, (100, 300))
    states = checkpoint_states(view, 0, max_checkpoints=1000)
    assert states.steps.min() == 100 and states.steps.max() == 300
    full = checkpoint_states(small_store, 0, steps=states.steps)
    assert states.theta.tobytes() == full.theta.tobytes()


def test_a_store_without_training_data_is_not_measurable(tmp_path):
    """A store written elsewhere (PyTorch, xarray) may lack data_x/data_y: no crash, a reason."""
    import datafiles

    from geomtraj.store.zarrstore import open_store

    ds = open_store(datafiles.fixture_path("bursts_f32")).drop_vars(["data_x", "data_y"])
    rep = stability.report(stability.analyze(ds))["stability"]
    (entry,) = rep["runs"]
    assert entry["verdict"] == rep["overall"]["verdict"] == "not measurable"
    assert "data_x, data_y" in entry["note"] and entry["note"] == rep["overall"]["note"]
    assert entry["sharpness_ratio_median"] is None and entry["n_checkpoints"] == 0
    # what needs no curvature is still reported: the threshold and the bursts (43 by prominence,
    # as the periods analysis counts them; the former threshold detector missed one of them)
    assert entry["threshold"] == pytest.approx(3800.0) and entry["n_bursts"] == 43


def test_state_views_read_a_chunk_of_runs_once_and_give_the_stores_numbers():
    import datafiles

    from geomtraj.store.zarrstore import open_store

    ds = open_store(datafiles.BETA_GRID)
    runs = [1, 4, 5, 10]
    views = stability._StateViews(ds, runs)
    assert views.names  # the lazy full states are what the views hold
    seen = []
    for r in runs:
        view = views(r)
        seen.append(view)
        for name in views.names + views.tables:
            assert np.array_equal(view[name].values, ds[name].values, equal_nan=True), name
            assert view[name].dims == ds[name].dims
    # runs of one chunk share one view, so each chunk is read once
    chunk = np.searchsorted(views.bounds, runs, side="right")
    assert len(set(chunk.tolist())) == 2  # the selection spans two chunks of runs
    for a in range(len(runs) - 1):
        assert (seen[a] is seen[a + 1]) == (chunk[a] == chunk[a + 1])
    # per-run reads of the held rows give the store's numbers, bit for bit
    for r in runs:
        for name in views.names:
            held, stored = RunView(views(r), r)[name].values, ds[name].isel(run=r).values
            assert held.tobytes() == np.asarray(stored).tobytes(), name
    views.close()
    assert not base._IN_MEMORY  # nothing stays held after the analysis


def test_rows_in_memory_serve_run_view_reads_of_their_runs_only():
    import datafiles

    from geomtraj.store.zarrstore import open_store

    ds = open_store(datafiles.BETA_GRID)
    stored = ds["theta_final"].values
    marked = stored[2:5] + 1.0  # different numbers, to see where a read comes from
    with base.rows_in_memory(ds, 2, {"theta_final": marked}):
        for r in range(ds.sizes["run"]):
            got = RunView(ds, r)["theta_final"].values
            want = marked[r - 2] if 2 <= r < 5 else stored[r]
            assert np.array_equal(got, want, equal_nan=True), r
    assert np.array_equal(RunView(ds, 3)["theta_final"].values, stored[3], equal_nan=True)
    assert not base._IN_MEMORY
