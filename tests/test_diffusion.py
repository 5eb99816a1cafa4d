"""Anomalous diffusion (Kunin et al.): MSD, exponent, phase space; analytic and synthetic checks."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from naive_dynamics import msd_block_sums_direct, msd_direct, phase_space_direct
from synth_dynamics import fractional_brownian_motion, harmonic_phase, twin_grid

from geomtraj.analysis import diffusion
from geomtraj.analysis.diffusion import (
    DiffusionParams,
    convergence_window,
    detrend_linear,
    diffusion_exponent,
    levy_area_rate,
    log_lags,
    msd,
    msd_block_sums,
    phase_space,
    principal_directions,
)
from geomtraj.errors import GeomtrajError

# ----------------------------------------------------------------------------------- MSD


def test_fft_msd_agrees_with_direct():
    rng = np.random.default_rng(0)
    x = 5.0 + np.cumsum(rng.standard_normal((400, 3)), axis=0)  # a large mean must not matter
    lags = np.array([0, 1, 2, 7, 50, 201, 399])
    np.testing.assert_allclose(msd(x, lags), msd_direct(x, lags), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("n_blocks", [1, 3, 7])
def test_block_sums_agree_with_direct(n_blocks):
    rng = np.random.default_rng(1)
    x = np.cumsum(rng.standard_normal((90, 2)), axis=0)
    lags = np.array([1, 4, 30, 89])
    S, N = msd_block_sums(x, lags, n_blocks)
    S0, N0 = msd_block_sums_direct(x, lags, n_blocks)
    np.testing.assert_array_equal(N, N0)
    np.testing.assert_allclose(S, S0, rtol=1e-9, atol=1e-9)


def test_constant_velocity_is_ballistic():
    """x_t = x_0 + v t gives MSD(k) = |v|^2 k^2 exactly, so c = 2 (raw)."""
    t = np.arange(2000.0)[:, None]
    v = np.array([0.3, -0.1, 0.02])
    x = 1.0 + v * t
    lags = np.array([1, 10, 100, 999])
    np.testing.assert_allclose(msd(x, lags), (v @ v) * lags**2.0, rtol=1e-8)
    fit = diffusion_exponent(x, detrend=False)
    assert fit.exponent == pytest.approx(2.0, abs=1e-6)
    assert fit.ci[0] == pytest.approx(2.0, abs=1e-6) and fit.r2 == pytest.approx(1.0)
    assert np.abs(detrend_linear(x)).max() < 1e-9  # the drift is all there is


def test_lag_grid_and_bad_input():
    lags = log_lags(10, 2000, 30)
    assert lags[0] == 10 and lags[-1] == 2000 and np.all(np.diff(lags) > 0)
    with pytest.raises(GeomtrajError, match="non-finite"):
        msd(np.array([0.0, np.nan, 1.0]), [1])
    with pytest.raises(GeomtrajError, match="lags must be"):
        msd(np.zeros(10), [10])
    with pytest.raises(GeomtrajError, match="fit_lag_max_frac"):
        DiffusionParams(fit_lag_max_frac=0.8)


# ------------------------------------------------------------------------ fBm


@pytest.mark.parametrize("hurst", [0.25, 0.5, 0.75])
def test_fbm_generator_has_the_right_msd(hurst):
    paths = fractional_brownian_motion(4096, hurst, n_paths=32, seed=0)
    lags = np.array([1, 8, 64, 256])
    m = msd(paths, lags) / paths.shape[1]  # per path
    np.testing.assert_allclose(m, lags ** (2 * hurst), rtol=0.1)


@pytest.mark.parametrize("hurst", [0.25, 0.5, 0.75])
def test_detrended_exponent_of_fbm_with_drift(hurst):
    """fBm plus a linear drift: detrended c within 0.1 of 2H, raw c visibly pulled towards 2.

    The drift speed is chosen so that drift and fBm displace equally at the geometric centre of the
    fit range (k_c = sqrt(10 * 2000)), the regime where the raw exponent is meaningless.
    """
    n, coords = 20000, 16
    params = DiffusionParams()
    fbm = fractional_brownian_motion(n, hurst, n_paths=coords, seed=0)
    k_c = np.sqrt(params.fit_lag_min * params.fit_lag_max_frac * n)
    speed = k_c ** (hurst - 1.0)
    signs = np.random.default_rng(1).choice([-1.0, 1.0], size=coords)
    x = fbm + speed * np.arange(n)[:, None] * signs
    detrended = diffusion_exponent(x, params=params)
    raw = diffusion_exponent(x, detrend=False, params=params)
    assert detrended.exponent == pytest.approx(2 * hurst, abs=0.1)
    assert detrended.ci[0] < detrended.exponent < detrended.ci[1]
    assert raw.exponent > 2 * hurst + 0.2
    assert raw.exponent <= 2.0 + 1e-9


# ------------------------------------------------------------------------ phase space


@pytest.mark.parametrize("omega", [0.05, 0.3, 1.0])
def test_harmonic_oscillator_turns_clockwise_at_omega(omega):
    """x = A cos(omega t): rotation -omega per step, current -A^2 sin^2(omega) / 2."""
    amplitude = 2.0
    x = harmonic_phase(int(round(400 * 2 * np.pi / omega)), omega, amplitude)
    ps = phase_space(x)
    assert ps["rotation"] == pytest.approx(-omega, rel=1e-3)
    assert ps["current"] == pytest.approx(-0.5 * amplitude**2 * np.sin(omega) ** 2, rel=1e-3)
    naive = phase_space_direct(x)
    for key in ("rotation", "current", "current_normalised"):
        assert ps[key] == pytest.approx(naive[key], rel=1e-9)


def test_phase_space_current_is_the_lag_two_identity():
    """With the forward-difference velocity the current is 0.5*<x_t x_{t+2} - x_{t+1}^2> exactly."""
    x = np.cumsum(np.random.default_rng(2).standard_normal(5000))
    expected = 0.5 * np.mean(x[:-2] * x[2:] - x[1:-1] ** 2)
    assert phase_space(x)["current"] == pytest.approx(expected, rel=1e-10)


def test_levy_area_detects_rotation_and_not_reversible_noise():
    rng = np.random.default_rng(3)
    n = 40000
    theta = 0.05
    rot = 0.98 * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    p = np.zeros((n, 2))
    q = np.zeros((n, 2))
    noise = rng.standard_normal((n, 2))
    for t in range(1, n):
        p[t] = rot @ p[t - 1] + noise[t]  # counter-clockwise drift: a probability current
        q[t] = 0.98 * q[t - 1] + noise[t]  # reversible (detailed balance)
    cur, (lo, hi) = levy_area_rate(p[:, 0], p[:, 1])
    assert cur > 0 and lo > 0
    cur0, (lo0, hi0) = levy_area_rate(q[:, 0], q[:, 1])
    assert lo0 < 0 < hi0 and abs(cur0) < 0.2 * cur
    # the increments of the rotating process carry the current too
    vel = np.diff(p, axis=0)
    assert levy_area_rate(vel[:, 0], vel[:, 1])[1][0] > 0


def test_velocity_current_of_a_random_walk_is_null_where_positions_are_not():
    """An isotropic random walk is reversible: its velocity current's CI covers 0 in most
    realisations, while the position-space area of its top two PCs is the cosine artefact,
    about 3.3/N per step in magnitude, whatever the seed."""
    n, coords = 15000, 16
    covered, position_area = 0, []
    for seed in range(10):
        x = np.cumsum(np.random.default_rng(seed).standard_normal((n, coords)), axis=0)
        resid = detrend_linear(x)
        dirs, _ = principal_directions(resid, 2)
        proj = (resid - resid.mean(axis=0)) @ dirs.T
        vel = np.diff(proj, axis=0)
        _, (lo, hi) = levy_area_rate(vel[:, 0], vel[:, 1])
        covered += lo < 0 < hi
        position_area.append(abs(levy_area_rate(proj[:, 0], proj[:, 1])[0]))
    assert covered >= 7  # nominal 95%; the 10-block bootstrap covers about 85-90%
    assert np.median(position_area) == pytest.approx(3.3 / n, rel=0.6)


def test_principal_directions_find_the_dominant_axis():
    rng = np.random.default_rng(4)
    axis = np.array([3.0, 4.0]) / 5.0
    x = np.outer(rng.standard_normal(2000) * 10, axis) + rng.standard_normal((2000, 2))
    dirs, explained = principal_directions(x, 2)
    assert abs(dirs[0] @ axis) == pytest.approx(1.0, abs=1e-3)
    assert explained[0] > 0.95 and explained.sum() == pytest.approx(1.0)


# ---------------------------------------------------------------------- window


def test_convergence_window_starts_where_the_loss_reaches_ten_times_its_floor():
    steps = np.arange(1, 20001)
    loss = 1e-5 + np.exp(-steps / 500.0)
    start = convergence_window(loss, steps, DiffusionParams())
    # smoothed loss reaches 10 * 1e-5 where exp(-t/500) = 9e-5
    assert start == pytest.approx(500 * np.log(1 / 9e-5), abs=5)


# ---------------------------------------------------------------------- real runs


@pytest.fixture(scope="module")
def grid():
    ds = twin_grid()
    return ds, diffusion.analyze(ds, range(0, 12, 3))


def test_real_runs_report(grid):
    ds, res = grid
    rep = diffusion.report(res)
    json.dumps(rep)
    assert len(rep["diffusion"]) == 4
    steps = int(ds.attrs["steps"])
    for e in rep["diffusion"]:
        assert e["detrended"] is True and e["note"] == ""
        assert 0 <= e["window"][0] < e["window"][1] == steps
        assert e["ci"][0] <= e["exponent"] <= e["ci"][1]
        assert e["ci_raw"][0] <= e["exponent_raw"] <= e["ci_raw"][1]
        assert len(e["rotation_per_step"]) == 2 and e["velocity_current_ci"] is not None


def test_short_window_is_a_note_not_an_error(grid):
    ds, _ = grid
    res = diffusion.analyze(ds, [0], params=DiffusionParams(min_window_rows=10**6))
    assert np.isnan(res["exponent"].values[0]) and "window has" in str(res["note"].values[0])
    assert diffusion.report(res)["diffusion"][0]["exponent"] is None


def test_figures_are_written(grid, tmp_path):
    ds, res = grid
    paths = diffusion.figures(ds, res, tmp_path)
    assert [p.name for p in paths] == ["diffusion_msd_0.png"]
    assert paths[0].stat().st_size > 10_000


def test_wide_log_axes_lose_only_their_minor_ticks():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    from geomtraj.analysis.panels import thin_log_ticks

    fig, (wide, narrow, linear) = plt.subplots(1, 3)
    wide.loglog([1, 1e6], [1e-9, 1])  # 6 and 9 decades
    narrow.loglog([1, 100], [1, 1000])  # 2 and 3 decades
    linear.plot([0, 1e6], [0, 1])
    kept = [a.xaxis for a in (narrow, linear)] + [a.yaxis for a in (narrow, linear)]
    before = [axis.get_minor_locator() for axis in kept]
    assert not isinstance(narrow.xaxis.get_minor_locator(), NullLocator)
    thin_log_ticks(fig)
    assert isinstance(wide.xaxis.get_minor_locator(), NullLocator)
    assert isinstance(wide.yaxis.get_minor_locator(), NullLocator)
    assert not isinstance(wide.xaxis.get_major_locator(), NullLocator)
    assert [axis.get_minor_locator() for axis in kept] == before  # untouched
    plt.close(fig)


def test_figures_draw_at_most_max_runs_evenly_spread(grid, tmp_path):
    ds, res = grid
    drawn = []
    from geomtraj.analysis import diffusion as mod

    original = mod._draw_msd
    try:
        mod._draw_msd = lambda ax, result, i, lags: drawn.append(i)
        paths = mod.figures(ds, res, tmp_path, max_runs=2)
    finally:
        mod._draw_msd = original
    n = res.sizes["run"]
    assert n > 2 and drawn == [0, n - 1] and len(paths) == 1


def test_principal_directions_have_a_fixed_orientation():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((500, 4)) * np.array([5.0, 3.0, 1.0, 0.5])
    for sign in (1.0, -1.0):
        dirs, _ = principal_directions(sign * x, 2)
        lead = dirs[np.arange(2), np.argmax(np.abs(dirs), axis=1)]
        assert np.all(lead > 0)


@pytest.mark.parametrize("n_blocks", [1, 4])
def test_direct_and_fft_block_sums_agree(monkeypatch, n_blocks):
    """Few lags are summed directly, many by FFT; both give the same sums to rounding."""
    rng = np.random.default_rng(2)
    x = 3.0 + np.cumsum(rng.standard_normal((600, 4)), axis=0)
    lags = np.array([1, 2, 5, 17, 60, 200, 599])
    S, N = msd_block_sums(x, lags, n_blocks)
    monkeypatch.setattr(sys.modules[msd_block_sums.__module__], "_DIRECT_MAX_LAGS", 0)
    S_fft, N_fft = msd_block_sums(x, lags, n_blocks)
    np.testing.assert_array_equal(N, N_fft)
    np.testing.assert_allclose(S, S_fft, rtol=1e-10, atol=1e-9)
    S0, _ = msd_block_sums_direct(x, lags, n_blocks)
    np.testing.assert_allclose(S, S0, rtol=1e-12)
