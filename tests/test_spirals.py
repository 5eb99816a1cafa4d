"""Spiral detector: kernels against NumPy twins, analytic answers, the labelled synthetic set, the
null model, and the store-level protocol on a trained store."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.fft
import xarray as xr
from naive_spirals import (
    apply_phases,
    arms,
    plane_features,
    plane_turn,
    principal_plane,
    residuals,
)
from naive_spirals import sequential_surrogate_test as naive_sequential_test
from naive_spirals import winding_score as naive_winding_score
from synth_spirals import (
    KINDS,
    NOISE_KINDS,
    NULL_KINDS,
    SPIRAL_KINDS,
    make_run,
    make_set,
    make_window,
    null_window,
    rotating_burst,
)

from geomtraj.analysis import spirals as sp
from geomtraj.analysis.kernels.winding import (
    ATAN_ERROR,
    FEATURES,
    N_FEATURES,
    PHASE_COS,
    PHASE_LEVELS,
    PHASE_SIN,
    _apply_phases,
    _atan2_approx,
    _min_p_values,
    _moving_average,
    _plane_features,
    _plane_features_batch,
    _plane_turn,
    _principal_planes,
    _residuals,
    _winding_scores,
    _winding_scores_below,
    _window_residual,
)
from geomtraj.errors import GeomtrajError

P = sp.SpiralParams()


def _window_planes(theta: np.ndarray, half: int = P.half):
    """Kernel residual and plane coordinates of one window, for the twin comparisons."""
    m = theta.shape[0] - 2 * half
    out = np.empty((1, m, theta.shape[1]))
    flip, demod = np.empty(1), np.empty(1, bool)
    _residuals(theta[None], half, out, flip, demod)
    return out[0], flip[0], demod[0]


# -- kernels against their NumPy twins -----------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_residuals_match_naive(kind):
    w = make_window(kind, np.random.default_rng(1), 160, 9)
    r, flip, demod = _window_planes(w.theta)
    r_ref, flip_ref, demod_ref = residuals(w.theta, P.half)
    assert demod == demod_ref
    assert flip == pytest.approx(flip_ref, abs=1e-12)
    np.testing.assert_allclose(r, r_ref, atol=1e-12 * np.abs(w.theta).max())


@pytest.mark.parametrize("kind", KINDS)
def test_plane_features_match_naive(kind):
    w = make_window(kind, np.random.default_rng(2), 200, 12)
    r, _, _ = _window_planes(w.theta)
    axes, _ = principal_plane(r)
    xy = r @ axes
    x, y = np.ascontiguousarray(xy[:, 0]), np.ascontiguousarray(xy[:, 1])
    norm = np.linalg.norm(r, axis=1)
    got = np.empty(N_FEATURES)
    _plane_features(x, y, norm, P.active_fraction, P.radius_half, got)
    want = plane_features(x, y, norm, P.active_fraction, P.radius_half)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    scores = np.empty((1, 1))
    _winding_scores(np.stack([x, y])[None, None], P.active_fraction, P.radius_half, scores)
    assert scores[0, 0] == pytest.approx(naive_winding_score(x, y, 0.1, 2), rel=1e-12)


def test_fast_arctangent_is_within_its_stated_error():
    # every octant, the axes, the origin and a dense sweep of angles
    rng = np.random.default_rng(3)
    angle = np.concatenate([np.linspace(-np.pi, np.pi, 400_001), rng.uniform(-4, 4, 10_000)])
    radius = np.exp(rng.uniform(-30, 30, angle.size))
    y, x = radius * np.sin(angle), radius * np.cos(angle)
    special = [(0.0, 0.0), (0.0, 1.0), (1.0, 0.0), (0.0, -1.0), (-1.0, 0.0), (1e-300, 1e300)]
    y = np.append(y, [a for a, _ in special])
    x = np.append(x, [b for _, b in special])
    got = np.array([_atan2_approx(a, b) for a, b in zip(y, x, strict=True)])
    assert np.max(np.abs(got - np.arctan2(y, x))) <= 0.5 * ATAN_ERROR


def test_winding_scores_are_exact_at_or_above_the_bar_and_certified_below():
    # surrogates of a rotation and of noise, scored against bars that cut through their
    # coherences: each score at or above its window's bar equals the exact kernel's bit for bit,
    # each below is below in the exact kernel too
    rng = np.random.default_rng(8)
    t = np.arange(110)
    env = np.exp(-(((t - 55) / 25.0) ** 2))
    spec = scipy.fft.rfft(np.stack([env * np.cos(0.7 * t), env * np.sin(0.7 * t)]), axis=-1)
    rot = scipy.fft.irfft(spec * np.exp(2j * np.pi * rng.random((60, 2, 56))), n=110, axis=-1)
    surr = np.stack([rot, rng.standard_normal((60, 2, 110))])
    exact = np.empty((2, 60))
    _winding_scores(surr, P.active_fraction, P.radius_half, exact)
    bars = np.array([np.median(exact[0]), np.quantile(exact[1], 0.9)])
    got = np.empty((2, 60))
    _winding_scores_below(surr, bars, P.active_fraction, P.radius_half, got)
    high = exact >= bars[:, None]
    assert high.sum() >= 30 and (~high).sum() >= 60
    np.testing.assert_array_equal(got[high], exact[high])
    assert np.all(got[~high] < bars[:, None].repeat(60, axis=1)[~high])
    # a bar above every score never asks for an exact one, and the fast values are close
    _winding_scores_below(surr, np.full(2, 2.0), P.active_fraction, P.radius_half, got)
    np.testing.assert_allclose(got, exact, atol=1e-7)


@pytest.mark.parametrize("seed", range(4))
def test_plane_turn_matches_naive(seed):
    w = make_window(KINDS[seed], np.random.default_rng(seed), 240, 10)
    r, _, _ = _window_planes(w.theta)
    for a, b in ((0, r.shape[0] - 1), (20, 90), (0, 30)):
        seg = np.ascontiguousarray(r[a : b + 1])
        np.testing.assert_allclose(_plane_turn(seg, 8), plane_turn(seg, 8), atol=1e-6)


def test_principal_planes_match_svd():
    rng = np.random.default_rng(3)
    resid = rng.standard_normal((3, 50, 7)) * np.array([5, 3, 1, 1, 1, 0.5, 0.2])
    axes, top, total = np.empty((3, 7, 2)), np.empty(3), np.empty(3)
    _principal_planes(resid, axes, top, total)
    for i in range(3):
        ref, frac = principal_plane(resid[i])
        # same axes up to sign, largest loading positive
        np.testing.assert_allclose(np.abs(axes[i].T @ ref), np.eye(2), atol=1e-10)
        assert np.all(axes[i][np.argmax(np.abs(axes[i]), axis=0), [0, 1]] > 0)
        assert top[i] / total[i] == pytest.approx(frac, rel=1e-12)


def test_moving_average_is_the_clipped_mean_bit_for_bit():
    # the interior loop is split from the clipped ends so that it vectorises: the same operations
    # as the plain loop, so the same bits, at every length and half-width (shorter than the
    # window included)
    rng = np.random.default_rng(5)
    for n in range(1, 14):
        for half in range(0, 6):
            v = rng.standard_normal(n)
            csum = [0.0]
            for x in v:
                csum.append(csum[-1] + x)
            want = [
                (csum[min(n, t + half + 1)] - csum[max(0, t - half)])
                / (min(n, t + half + 1) - max(0, t - half))
                for t in range(n)
            ]
            got = np.empty(n)
            _moving_average(v, half, got)
            assert got.tolist() == want


def test_min_p_values_match_the_definition_with_ties():
    # samples from few levels, so that ties between the window and its surrogates are common
    rng = np.random.default_rng(11)
    for n in (1, 19, 199):
        surr_a, surr_b = rng.integers(0, 6, (40, n)) / 5.0, rng.integers(0, 4, (40, n)) / 3.0
        obs_a, obs_b = rng.integers(0, 6, 40) / 5.0, rng.integers(0, 4, 40) / 3.0
        got = np.empty(40)
        _min_p_values(obs_a, surr_a, obs_b, surr_b, got)
        for i in range(40):
            samples = [np.append(obs_a[i], surr_a[i]), np.append(obs_b[i], surr_b[i])]
            ranks = [np.mean(x[None, :] >= x[:, None], axis=1) for x in samples]
            t = np.minimum(*ranks)
            assert got[i] == np.mean(t <= t[0])


def test_inverse_rfft_matches_pocketfft_at_every_length():
    # the matrix product replaces pocketfft for short lengths and large prime factors; it must
    # give the same series to rounding, ignoring the imaginary parts of the zero-frequency and
    # Nyquist bins as irfft does
    rng = np.random.default_rng(7)
    by_matrix = []
    for m in range(2, 600):
        shape = (3, 2, m // 2 + 1)
        spec = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
        want = scipy.fft.irfft(spec, n=m, axis=-1)
        got = sp.inverse_rfft(spec.copy(), m)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-14 * np.abs(want).max())
        by_matrix.append(sp._matrix_dft(m))
    assert all(by_matrix[:63])  # lengths 2..64
    assert sp._matrix_dft(127) and sp._matrix_dft(4 * 31) is False and sp._matrix_dft(128) is False
    assert sp._matrix_dft(509) and not sp._matrix_dft(521)  # primes, below and above the cap
    assert [sp._largest_prime_factor(k) for k in (1, 2, 12, 97, 4 * 97, 2 * 3 * 5 * 7)] == [
        1, 2, 3, 97, 97, 7,
    ]  # fmt: skip


@pytest.mark.parametrize("m", [40, 41])
def test_apply_phases_matches_naive_and_keeps_the_spectrum(m):
    rng = np.random.default_rng(m)
    series = rng.standard_normal((2, 2, m))
    spec = scipy.fft.rfft(series, axis=-1)
    index = rng.integers(0, PHASE_LEVELS, size=(2, 5, 2, spec.shape[-1]), dtype=np.uint16)
    got = np.empty(index.shape, dtype=complex)
    amp, beta = sp.rotation_spectrum(series[:, 0], series[:, 1])
    quad = np.empty((2, 5))
    _apply_phases(spec, index, m % 2 == 0, amp, beta, PHASE_COS, PHASE_SIN, got, quad)
    want = apply_phases(spec, index / PHASE_LEVELS, m % 2 == 0)
    np.testing.assert_allclose(got, want, atol=1e-12)
    surr = scipy.fft.irfft(got, n=m, axis=-1)
    # the quadrature from the phases is that of the surrogate itself
    want = sp.quadrature(*sp.rotation_spectrum(surr[:, :, 0], surr[:, :, 1]))
    np.testing.assert_allclose(quad, want, atol=1e-10)
    np.testing.assert_allclose(
        np.abs(scipy.fft.rfft(surr, axis=-1)), np.abs(spec)[:, None] * np.ones((1, 5, 1, 1)),
        atol=1e-10,
    )  # fmt: skip
    means = np.broadcast_to(series.mean(axis=-1)[:, None], surr.shape[:-1])
    np.testing.assert_allclose(surr.mean(axis=-1), means, atol=1e-12)


def test_iaaft_keeps_values_and_nearly_the_spectrum():
    rng = np.random.default_rng(4)
    x = np.exp(0.3 * np.cumsum(rng.standard_normal((2, 128)), axis=1))  # skewed, non-Gaussian
    amp = np.abs(scipy.fft.rfft(x))
    err = {}
    for iterations in (0, 30):
        surr = sp.iaaft_surrogates(x, 4, np.random.default_rng(0), iterations)
        sorted_x = np.broadcast_to(np.sort(x), surr.shape)
        np.testing.assert_array_equal(np.sort(surr, axis=-1), sorted_x)
        err[iterations] = np.mean(np.abs(np.abs(scipy.fft.rfft(surr)) - amp).sum(-1) / amp.sum(-1))
    # the iterations pull the spectrum back towards the original's after the rank remapping
    assert err[30] < 0.15 < err[0]


# -- analytic answers ----------------------------------------------------------------------------
def _embed(plane_xy: np.ndarray, p: int, seed: int = 0) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((p, 2)))
    return plane_xy @ q.T


def test_circle_winding_coherence_and_twist_rate_are_exact():
    n, omega, p = 200, 2 * np.pi / 25, 6
    t = np.arange(n)
    theta = _embed(np.stack([np.cos(omega * t), np.sin(omega * t)], axis=1), p)
    q = sp.measure_window(theta, sp.SpiralParams(smooth_steps=51))
    m = n - 50
    assert abs(q["winding"]) == pytest.approx(omega * (m - 1) / (2 * np.pi), rel=1e-6)
    assert q["coherence"] == pytest.approx(1.0, abs=1e-9)
    assert abs(q["twist_rate"]) == pytest.approx(omega, rel=1e-6)
    assert q["twist_r2"] == pytest.approx(1.0, abs=1e-9)
    assert q["plane_fraction"] == pytest.approx(1.0, abs=1e-9)
    assert not q["demodulated"]


def test_growth_and_decay_slopes_of_a_burst():
    n, gamma_up, gamma_down, p = 300, 0.12, 0.05, 5
    t = np.arange(n, dtype=float)
    env = np.where(t < 150, np.exp(gamma_up * (t - 150)), np.exp(-gamma_down * (t - 150)))
    phase = 2 * np.pi * t / 12
    flip = (-1.0) ** t
    theta = _embed(flip[:, None] * env[:, None] * np.stack([np.cos(phase), np.sin(phase)], 1), p)
    q = sp.measure_window(theta)
    assert q["demodulated"] and q["is_double"]
    assert q["growth_slope"] == pytest.approx(gamma_up, rel=0.1)
    assert q["decay_slope"] == pytest.approx(-gamma_down, rel=0.1)
    assert abs(q["twist_rate"]) == pytest.approx(2 * np.pi / 12, rel=0.02)
    assert q["flip_index"] > 0.8


def test_plane_turn_of_a_known_twist():
    # a circle whose plane turns about its first axis at a constant rate: the two halves' mean
    # planes are half the total turn apart
    n, p, total = 400, 5, 80.0
    t = np.arange(n)
    ang = np.deg2rad(total) * t / (n - 1)
    e1, e2, e3 = np.eye(p)[:3]
    phase = 2 * np.pi * t / 10
    theta = np.outer(np.cos(phase), e1) + np.sin(phase)[:, None] * (
        np.outer(np.cos(ang), e2) + np.outer(np.sin(ang), e3)
    )
    turn, noise, aspect = sp.plane_turn(theta, 0, n - 1)
    assert turn == pytest.approx(total / 2, abs=3.0)
    assert noise < 1.0 and aspect > 0.5


def test_cosine_content():
    m = 128
    t = np.arange(m)
    cos = np.cos(3 * np.pi * (t + 0.5) / m)
    noise = np.random.default_rng(0).standard_normal(m)
    got = sp.cosine_content(np.stack([cos, noise], axis=1))
    assert got[0] == pytest.approx(1.0, abs=1e-12)
    assert got[1] < 0.2


def test_flip_frame_of_a_pure_flip_spans_the_same_plane():
    # PCA does not see the sign of a row, so demodulating before projecting (the definition
    # projects first) finds the same plane for a pure flip
    n, p = 120, 6
    t = np.arange(n)
    w = np.stack([np.cos(t / 5.0), 0.5 * np.sin(t / 5.0)], axis=1) * np.exp(-t / 60)[:, None]
    theta = _embed(((-1.0) ** t)[:, None] * w, p)
    r, flip, demod = _window_planes(theta, half=1)
    assert demod and flip > 0.9
    raw = theta[1:-1] - np.array([theta[i : i + 3].mean(0) for i in range(n - 2)])
    axes_flip, _ = principal_plane(r)
    axes_raw, _ = principal_plane(raw - raw.mean(0))
    cosines = np.linalg.svd(axes_flip.T @ axes_raw, compute_uv=False)
    assert cosines.min() > np.cos(np.deg2rad(1.0))


# -- the labelled synthetic set ------------------------------------------------------------------
def _classify_set(windows, params=P, test_all=False):
    by_kind = {}
    for kind in {w.kind for w in windows}:
        sel = [w for w in windows if w.kind == kind]
        res = sp.measure_windows(np.stack([w.theta for w in sel]), params, test_all=test_all)
        by_kind[kind] = (sel, res)
    return by_kind


def _accuracy(by_kind):
    spirals = [k for k in by_kind if k in SPIRAL_KINDS]
    noise = [k for k in by_kind if k in NOISE_KINDS]
    detected = np.concatenate([by_kind[k][1]["is_spiral"] for k in spirals])
    false = np.concatenate([by_kind[k][1]["is_spiral"] for k in noise])
    double_ok, twisted_ok = [], []
    for k in spirals:
        sel, res = by_kind[k]
        found = res["is_spiral"]
        double_ok.append((res["is_double"] == [w.double for w in sel])[found])
        twisted_ok.append((res["is_twisted"] == [w.twisted for w in sel])[found])
    return (
        detected.mean(),
        false.mean(),
        np.concatenate(double_ok).mean(),
        np.concatenate(twisted_ok).mean(),
    )


def test_accuracy_on_the_labelled_set():
    by_kind = _classify_set(make_set(25, seed=11, n_steps=200, n_params=24))
    detected, false, double, twisted = _accuracy(by_kind)
    assert detected >= 0.95
    assert false <= 0.02
    assert double >= 0.90
    assert twisted >= 0.90


def test_accuracy_at_benchmark_size():
    """400 x 64 windows, 60 of each kind (540 windows), a set the thresholds never saw."""
    by_kind = _classify_set(make_set(60, seed=2026, n_steps=400, n_params=64))
    detected, false, double, twisted = _accuracy(by_kind)
    assert detected >= 0.95
    assert false <= 0.02
    assert double >= 0.90
    assert twisted >= 0.90


def test_null_model_p_values_are_calibrated_on_noise():
    # on noise the surrogate test alone rejects at about its nominal rate; coherence keeps every
    # noise window out of the spirals
    by_kind = _classify_set(
        make_set(60, seed=5, n_steps=160, n_params=16, kinds=NOISE_KINDS), test_all=True
    )
    p = np.concatenate([by_kind[k][1]["p_value"] for k in NOISE_KINDS])
    assert np.mean(p <= 0.01) <= 0.04
    assert np.mean(p <= 0.05) <= 0.10
    # sequential stopping saves surrogates on noise
    used = np.concatenate([by_kind[k][1]["n_surrogates"] for k in NOISE_KINDS])
    assert used.mean() < 0.6 * P.n_surrogates
    assert not any(by_kind[k][1]["is_spiral"].any() for k in NOISE_KINDS)


def test_cosine_content_flags_diffusion_seen_through_a_wide_window():
    # without the local moving average (a width as long as the window), PCA of a random walk draws
    # Hess's cosines; the cosine content flags them, and no window becomes a spiral
    rng = np.random.default_rng(6)
    walks = np.cumsum(rng.standard_normal((40, 420, 32)), axis=1)
    res = sp.measure_windows(walks, sp.SpiralParams(smooth_steps=301))
    assert np.mean(res["cosine_content"] > P.max_cosine_content) > 0.25
    assert not res["is_spiral"].any()


def test_surrogates_do_not_depend_on_batching():
    windows = np.stack([w.theta for w in make_set(2, seed=7, n_steps=120, n_params=8)])
    keys = np.arange(100, 100 + len(windows))
    whole = sp.measure_windows(windows, keys=keys)
    parts = [sp.measure_windows(windows[i : i + 1], keys=keys[i : i + 1]) for i in (4, 0, 9)]
    for j, i in enumerate((4, 0, 9)):
        np.testing.assert_array_equal(parts[j]["p_value"][0], whole["p_value"][i])
        assert parts[j]["label"][0] == whole["label"][i]
    again = sp.measure_windows(windows, keys=keys)
    np.testing.assert_array_equal(again["p_value"], whole["p_value"])


def test_surrogate_test_of_joined_series_equals_separate_tests():
    # measure_arms tests both arms in one call: each series must keep the p-value and the
    # number of surrogates it gets alone, bit for bit (rotations that run to 199 surrogates,
    # noise that stops early, and one lone series that takes the whole-block path)
    rng = np.random.default_rng(11)
    t = np.arange(90)
    env = np.exp(-(((t - 45) / 15.0) ** 2))
    rot = [env * np.cos(0.9 * t + ph) for ph in (0.0, 1.0)]
    xs = np.stack([rot[0], rot[1], *rng.standard_normal((3, 90))])
    ys = np.stack(
        [env * np.sin(0.9 * t), env * np.sin(0.9 * t + 1.0), *rng.standard_normal((3, 90))]
    )
    keys = np.stack([np.arange(5), np.full(5, 40), np.array([1, 2, 1, 2, 1])], axis=1)

    def test(rows):
        feats = np.full((len(rows), len(sp.FEATURES)), np.nan)
        x, y = xs[rows], ys[rows]
        norms = np.hypot(x, y)
        _plane_features_batch(x, y, norms, P.active_fraction, P.radius_half, feats)
        observed = (
            feats[:, sp.FEATURES.index("coherence")],
            sp.quadrature(*sp.rotation_spectrum(x, y)),
        )
        return sp.surrogate_test(x, y, observed, P, keys[rows])

    p_all, used_all = test(np.arange(5))
    assert used_all[0] == P.n_surrogates and used_all[-1] < P.n_surrogates
    for rows in ([0], [1, 3], [4, 2]):
        p, used = test(np.array(rows))
        np.testing.assert_array_equal(p, p_all[rows])
        np.testing.assert_array_equal(used, used_all[rows])


@pytest.mark.parametrize("stop", [1, 2, 10])
def test_surrogate_test_equals_drawing_block_by_block(stop):
    # surrogates are drawn in a few large chunks and the checks of the stopping rule replayed on
    # them: p-values and surrogate counts must be those of drawing 20 at a time per window,
    # bit for bit (rotations that run to the end, noise that stops at each threshold)
    rng = np.random.default_rng(12)
    t = np.arange(75)
    env = np.exp(-(((t - 37) / 12.0) ** 2))
    xs = np.concatenate([env * np.cos(0.8 * t)[None], rng.standard_normal((6, 75))])
    ys = np.concatenate([env * np.sin(0.8 * t)[None], rng.standard_normal((6, 75))])
    xs[1], ys[1] = env * np.cos(0.3 * t), env * np.sin(0.3 * t + 1.2)  # an elliptic rotation
    feats = np.full((len(xs), len(sp.FEATURES)), np.nan)
    _plane_features_batch(xs, ys, np.hypot(xs, ys), P.active_fraction, P.radius_half, feats)
    observed = (
        feats[:, sp.FEATURES.index("coherence")],
        sp.quadrature(*sp.rotation_spectrum(xs, ys)),
    )
    keys = np.stack([np.arange(len(xs)), np.full(len(xs), 3)], axis=1)
    stops = np.full(len(xs), stop)
    stops[-1] = 10  # thresholds differ between the windows of one call
    for params in (P, sp.SpiralParams(n_surrogates=47), sp.SpiralParams(n_surrogates=399)):
        p, used = sp.surrogate_test(xs, ys, observed, params, keys, stops)
        want_p, want_used = naive_sequential_test(xs, ys, observed, params, keys, stops)
        np.testing.assert_array_equal(used, want_used)
        np.testing.assert_array_equal(p, want_p)
        assert used[0] == params.n_surrogates and np.any(used < params.n_surrogates)


def test_hopeless_windows_stop_and_spirals_keep_their_p_value():
    # the test stops a window once p <= alpha is out of reach (h + 1 exceedances among n + 1
    # samples); every window it still calls a spiral has the p-value of the full test, and the
    # windows whose other criteria fail are not tested at all
    assert sp._hopeless_exceedances(P) == 2  # (1 + 1) / 200 = alpha, (2 + 1) / 200 > alpha
    assert sp._hopeless_exceedances(sp.SpiralParams(n_surrogates=999, alpha=0.05)) == 50
    windows = np.stack([w.theta for w in make_set(3, seed=21, n_steps=140, n_params=10)])
    fast = sp.measure_windows(windows)
    full = sp.measure_windows(windows, test_all=True)
    for name in sp.QUANTITIES:
        if name not in ("p_value", "n_surrogates"):
            np.testing.assert_array_equal(fast[name], full[name], err_msg=name)
    spiral = fast["is_spiral"]
    assert spiral.any() and not spiral.all()
    np.testing.assert_array_equal(fast["p_value"][spiral], full["p_value"][spiral])
    assert np.all(fast["n_surrogates"][spiral] == P.n_surrogates)
    assert np.all(np.isnan(fast["p_value"][fast["coherence"] < P.min_coherence]))
    assert fast["n_surrogates"][~spiral].sum() < 0.5 * full["n_surrogates"][~spiral].sum()


def test_burst_overlap_counts_steps_inside_bursts():
    spans = np.array([[0, 9], [10, 19], [30, 39], [50, 59]])
    onset, end = np.array([5, 18, 62]), np.array([12, 20, 70])
    overlap, quiet = sp._burst_overlap(spans, onset, end, margin=2)
    # [0, 9] holds 5..9, [10, 19] holds 10..12 and 18..19; [50, 59] ends 3 steps before 62
    np.testing.assert_array_equal(overlap, [0.5, 0.5, 0.0, 0.0])
    np.testing.assert_array_equal(quiet, [False, False, True, True])
    overlap, quiet = sp._burst_overlap(spans, onset, end, margin=3)
    np.testing.assert_array_equal(quiet, [False, False, True, False])
    overlap, quiet = sp._burst_overlap(spans, np.array([], int), np.array([], int), margin=2)
    np.testing.assert_array_equal(overlap, np.zeros(4))
    assert quiet.all()


def test_iaaft_surrogates_also_separate_spirals_from_noise():
    params = sp.SpiralParams(iaaft_iterations=5)
    by_kind = _classify_set(
        make_set(6, seed=8, n_steps=160, n_params=12, kinds=("double", "damped", "ar1")), params
    )
    assert by_kind["double"][1]["is_spiral"].all() and by_kind["damped"][1]["is_spiral"].all()
    assert not by_kind["ar1"][1]["is_spiral"].any()


# -- input errors --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "windows, message",
    [
        (np.zeros(10), "expected (n_steps, n_params)"),
        (np.zeros((100, 1)), "at least 2 parameters"),
        (np.full((100, 3), np.nan), "NaN or inf"),
        (np.zeros((30, 3)), "use longer windows"),
    ],
)
def test_bad_windows_are_one_line_errors(windows, message):
    with pytest.raises(GeomtrajError, match=message.replace("(", r"\(").replace(")", r"\)")):
        sp.measure_windows(windows)


def test_bad_parameters_are_one_line_errors():
    with pytest.raises(GeomtrajError, match="alpha"):
        sp.SpiralParams(alpha=1.5)
    with pytest.raises(GeomtrajError, match="twist_rule"):
        sp.SpiralParams(twist_rule="rate")
    with pytest.raises(GeomtrajError, match="pair"):
        sp.measure_windows(np.random.default_rng(0).standard_normal((100, 4)), pair=(1, 1))
    with pytest.raises(GeomtrajError, match="keys"):
        sp.measure_windows(np.zeros((2, 100, 4)), keys=[1])


@pytest.mark.parametrize("value", [0, -1, 2.5, True, "10"])
def test_bad_max_windows_is_a_one_line_error(value):
    with pytest.raises(GeomtrajError, match=r"max_windows=.*expected None \(every window\)"):
        sp.WindowParams(max_windows=value)


def test_subsample_indices_are_evenly_spaced_and_keep_both_ends():
    assert list(sp.WindowParams().subsample(5)) == [0, 1, 2, 3, 4]
    assert list(sp.WindowParams(max_windows=8).subsample(5)) == [0, 1, 2, 3, 4]
    assert list(sp.WindowParams(max_windows=5).subsample(5)) == [0, 1, 2, 3, 4]
    # linspace(0, 9, 4) = 0, 3, 6, 9; linspace(0, 10, 4) = 0, 3.33, 6.67, 10
    assert list(sp.WindowParams(max_windows=4).subsample(10)) == [0, 3, 6, 9]
    assert list(sp.WindowParams(max_windows=4).subsample(11)) == [0, 3, 7, 10]
    assert list(sp.WindowParams(max_windows=1).subsample(7)) == [0]
    assert list(sp.WindowParams(max_windows=3).subsample(0)) == []


@pytest.fixture(scope="module")
def many_bursts():
    """A synthetic run of 30 flipped bursts, and its full analyses (burst and sliding windows)."""
    run = make_run(30, seed=1, run=3)
    full = {
        "bursts": sp.analyze_run(run),
        "sliding": sp.analyze_run(run, windows="sliding", window_params=sp.WindowParams(
            sliding_steps=100, stride=70)),
    }  # fmt: skip
    return run, full


@pytest.mark.parametrize("windows", ["bursts", "sliding"])
@pytest.mark.parametrize("k", [1, 2, 7, 30, 500])
def test_max_windows_analyses_an_evenly_spaced_subset(many_bursts, windows, k):
    run, full = many_bursts
    wp = sp.WindowParams(max_windows=k)
    if windows == "sliding":
        wp = sp.WindowParams(sliding_steps=100, stride=70, max_windows=k)
    part = sp.analyze_run(run, windows=windows, window_params=wp)
    n = full[windows]["n_windows"]
    assert n == (30 if windows == "bursts" else 65)  # 30 bursts; (4650 - 20 - 100) // 70 + 1
    keep = np.unique(np.round(np.linspace(0, n - 1, k)).astype(int))
    assert part["n_windows"] == len(part["table"]["start"]) == min(k, n)
    assert part["n_windows_total"] == full[windows]["n_windows_total"] == n
    assert part["table"]["start"] == [full[windows]["table"]["start"][i] for i in keep]
    # every per-window value, surrogate p-values included, is that of the full analysis
    for col in (*sp.WINDOW_COLUMNS, *sp.QUANTITIES):
        want = [full[windows]["table"][col][i] for i in keep]
        np.testing.assert_array_equal(np.array(part["table"][col]), np.array(want), err_msg=col)
    # the counts are of the analysed windows
    spiral = np.array(part["table"]["is_spiral"])
    assert part["n_spirals"] == spiral.sum()
    assert part["n_windows_burst"] == np.sum(np.array(part["table"]["burst_overlap"]) > 0)
    assert part["n_windows_quiet"] == np.sum(part["table"]["quiet"])


def test_max_windows_none_analyses_every_window(many_bursts):
    run, full = many_bursts
    assert full["bursts"]["n_windows"] == full["bursts"]["n_windows_total"] == 30
    # the 30 synthetic bursts are flipped spirals, each found in its own window
    assert full["bursts"]["n_double"] == 30
    table = full["bursts"]["table"]
    assert np.all(np.array(table["start"]) < run.info["peaks"])
    assert np.all(run.info["peaks"] < np.array(table["end"]))


def test_twist_rule_plane_or_rate_marks_every_spiral_twisted():
    by_kind = _classify_set(
        make_set(4, seed=9, n_steps=200, n_params=12, kinds=("damped", "double")),
        sp.SpiralParams(twist_rule="plane_or_rate"),
    )
    for _, res in by_kind.values():
        assert np.array_equal(res["is_twisted"], res["is_spiral"])


# -- "double" by evidence ------------------------------------------------------------------------
def _rotation(
    delta_deg: float,
    envelope: str,
    flip: bool,
    *,
    inward_sense: float = 1.0,
    n: int = 220,
    p: int = 12,
    seed: int = 0,
) -> np.ndarray:
    """A rotation advancing ``delta_deg`` per step in a random plane of ``p`` parameters, with a
    damped envelope (inward arm only) or a burst (outward then inward, the inward arm turning
    ``inward_sense`` times as fast), flipped every step or not, on white noise of 1% of its peak."""
    rng = np.random.default_rng(seed)
    t = np.arange(n, dtype=float)
    d = np.deg2rad(delta_deg)
    if envelope == "damped":
        r = np.where(t < 40, 0.0, np.exp(-(t - 40) / 30))
        phi = d * t
    else:
        r = np.where(t < 110, np.exp((t - 110) / 20), np.exp(-(t - 110) / 20))
        phi = np.where(t < 110, d * t, d * 110 + inward_sense * d * (t - 110))
    a, b = r * np.cos(phi), 0.8 * r * np.sin(phi)
    if flip:
        sign = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
        a, b = a * sign, b * sign
    u, _ = np.linalg.qr(rng.standard_normal((p, 2)))
    return np.outer(a, u[:, 0]) + np.outer(b, u[:, 1]) + 0.01 * rng.standard_normal((n, p))


def test_arms_of_a_flipped_rotation_are_in_counter_phase_by_cos_delta():
    # z_{t+1} = -w_t e^{i delta}: the odd arm is the even arm turned by pi + delta, so the
    # counter-phase score is cos(delta), and each arm winds as w does
    for delta in (20.0, 45.0):
        q = sp.measure_window(_rotation(delta, "damped", flip=True))
        assert q["demodulated"]
        assert q["arm_counter_phase"] == pytest.approx(np.cos(np.deg2rad(delta)), abs=0.03)
        assert q["arm_winding_even"] == pytest.approx(q["winding"], rel=0.15)
        assert q["arm_winding_odd"] == pytest.approx(q["winding"], rel=0.15)


@pytest.mark.parametrize("kind", ["double", "damped", "out_in"])
def test_arms_match_naive(kind):
    w = make_window(kind, np.random.default_rng(3), 200, 12)
    q = sp.measure_window(w.theta)
    assert q["is_spiral"]
    r, _, _ = _window_planes(w.theta)
    axes, _ = principal_plane(r)
    ref = arms(w.theta, P.half, axes, P.active_fraction, P.radius_half)
    # the plane's axes are defined up to sign; winding and counter-phase do not depend on it
    # beyond the sense, which flips with the orientation of the pair of axes
    got_axes = sp.principal_plane(r[None])[1][0]
    orient = np.sign(np.linalg.det(axes.T @ got_axes))
    for name, value in ref.items():
        expected = orient * value if name.startswith("arm_winding") else value
        assert q[name] == pytest.approx(expected, abs=1e-9), name


def test_flipped_rotation_is_double_by_its_interleaved_arms():
    # only an inward arm: "double" can come from the even and odd arms alone
    q = sp.measure_window(_rotation(30.0, "damped", flip=True))
    assert q["label"] == "double"
    assert q["double_arms"] and not q["double_out_in"]
    assert q["arm_p_even"] <= P.alpha and q["arm_p_odd"] <= P.alpha


def test_rotation_without_a_flip_has_arms_in_phase_and_is_not_double():
    q = sp.measure_window(_rotation(30.0, "damped", flip=False))
    assert q["is_spiral"] and not q["demodulated"]
    assert q["arm_counter_phase"] < -0.8
    assert not q["is_double"]


def test_fast_flip_frame_rotation_is_one_spiral_not_two_arms():
    # 75 degrees per step in the flip frame: consecutive raw steps are 105 degrees apart, not
    # half a turn; the window is demodulated and a spiral (the old rule called it double)
    q = sp.measure_window(_rotation(75.0, "damped", flip=True))
    assert q["demodulated"] and q["is_spiral"]
    assert q["arm_counter_phase"] < P.min_counter_phase
    assert not q["is_double"]


def test_outward_then_inward_arm_of_one_sense_is_double():
    q = sp.measure_window(_rotation(30.0, "burst", flip=False))
    assert q["label"] == "double"
    assert q["double_out_in"] and not q["double_arms"]
    assert np.sign(q["turns_out"]) == np.sign(q["turns_in"])


def test_outward_then_inward_arm_of_opposite_senses_is_not_double():
    # the rotation reverses at the peak: no net winding, no spiral, a fortiori no double
    for flip in (False, True):
        q = sp.measure_window(_rotation(30.0, "burst", flip=flip, inward_sense=-1.0))
        assert np.sign(q["turns_out"]) != np.sign(q["turns_in"])
        assert not q["is_double"]


def test_flips_without_rotation_are_never_double():
    rng = np.random.default_rng(31)
    kinds = ("flip", "am_flip", "ar1_neg")
    windows = np.stack([null_window(k, rng, 120, 16) for k in kinds for _ in range(20)])
    res = sp.measure_windows(windows)
    assert res["demodulated"].mean() > 0.9
    assert not res["is_double"].any()


# -- measured error rates ------------------------------------------------------------------------
def test_false_positive_table_is_complete_and_its_bounds_are_wilson():
    from geomtraj.study.claims import wilson

    table = sp.FALSE_POSITIVE_RATE
    assert set(table) == {"spiral", "double", "twisted", "double_twisted"}
    for entry in table.values():
        k = round(entry["rate"] * entry["n"])
        assert k == pytest.approx(entry["rate"] * entry["n"], abs=1e-9)
        assert entry["upper"] == pytest.approx(wilson(k, entry["n"])[1], abs=1e-6)
    # a double twisted spiral is double and twisted; a double one is a spiral
    assert table["double_twisted"]["rate"] <= min(table["double"]["rate"], table["twisted"]["rate"])
    assert table["double"]["rate"] <= table["spiral"]["rate"]


def test_null_ensembles_are_rejected_at_the_measured_rate():
    """600 fresh null windows (a seed the table never saw): each flag's count must be consistent
    with the table's bound (one-sided binomial p above 0.001 at the upper bound)."""
    from scipy.stats import binom

    rng = np.random.default_rng(4242)
    rows = 64 + 2 * P.half
    windows = np.stack([null_window(k, rng, rows, 16) for k in NULL_KINDS for _ in range(100)])
    res = sp.measure_windows(windows, keys=np.arange(len(windows)) + 10**6)
    flags = {
        "spiral": res["is_spiral"],
        "double": res["is_double"],
        "twisted": res["is_twisted"],
        "double_twisted": res["is_double"] & res["is_twisted"],
    }
    for flag, hits in flags.items():
        k, n = int(hits.sum()), hits.size
        assert binom.sf(k - 1, n, sp.FALSE_POSITIVE_RATE[flag]["upper"]) > 1e-3, (flag, k, n)


@pytest.mark.parametrize("noise", [0.01, 0.03])
def test_known_rotating_bursts_are_found(noise):
    # grid cells where the measured recall is 100% [88.6, 100] (docs/spirals.md): 3 turns,
    # e-folding 10 steps
    rng = np.random.default_rng(77)
    windows = np.stack([rotating_burst(rng, 3.0, 10.0, noise, 220, 16) for _ in range(12)])
    res = sp.measure_windows(windows)
    assert res["is_spiral"].mean() >= 11 / 12
    assert res["is_double"].mean() >= 11 / 12
    assert res["double_arms"].mean() >= 11 / 12


def test_noisy_rotating_bursts_are_missed_as_measured():
    # at noise 0.3 (per parameter; peak radius 1) the measured recall is 0% [0, 11.4]: the detector
    # reports noise as noise rather than guessing
    rng = np.random.default_rng(78)
    windows = np.stack([rotating_burst(rng, 3.0, 10.0, 0.3, 220, 16) for _ in range(12)])
    assert sp.measure_windows(windows)["is_spiral"].sum() <= 2


def test_raw_residual_of_the_plane_turns_matches_the_numpy_residual():
    theta = make_window("double", np.random.default_rng(4), 160, 9).theta
    out = np.empty((160 - 2 * P.half, 9))
    _window_residual(theta, P.half, out)
    np.testing.assert_allclose(out, sp.residual(theta, P.smooth_steps), atol=1e-12)


def test_noisy_untwisted_flipped_bursts_are_not_twisted():
    # measured 0% [0, 11.4] per cell (docs/spirals.md); with the planes fitted in the flip frame,
    # whose smoothing shares noise between even and odd rows, most of these were called twisted
    rng = np.random.default_rng(79)
    windows = np.stack([rotating_burst(rng, 3.0, 10.0, 0.1, 84, 16) for _ in range(12)])
    res = sp.measure_windows(windows)
    assert res["is_spiral"].sum() >= 9
    assert not res["is_twisted"].any()
    spiral = res["is_spiral"]
    assert np.median(res["plane_turn"][spiral] / res["plane_turn_noise"][spiral]) < 2


def test_turning_planes_of_flipped_bursts_are_twisted():
    # measured 100% [88.6, 100] at a 90-degree turn and noise 0.01 (docs/spirals.md)
    rng = np.random.default_rng(80)
    windows = np.stack(
        [rotating_burst(rng, 3.0, 10.0, 0.01, 84, 16, plane_turn=90.0) for _ in range(12)]
    )
    res = sp.measure_windows(windows)
    assert res["demodulated"].all()
    assert (res["label"] == "double twisted").mean() >= 11 / 12


# -- the store-level protocol --------------------------------------------------------------------
@pytest.fixture(scope="module")
def bursting_store():
    """Two float32 runs with beta2 = 0.999, whose update norm bursts every ~100 steps."""
    from geomtraj.train.data import make_dataset
    from geomtraj.train.trainer import train

    X, y = make_dataset("sincos", n_points=64, seed=0)
    return train(
        X, y, hidden=(12, 24), beta2=0.999, lr=1e-2, steps=1500, precision="float32",
        seed=[0, 1], record_params=16, progress=False,
    )  # fmt: skip


def test_analyze_counts_and_table(bursting_store):
    res = sp.analyze(bursting_store)
    assert list(res["run"].values) == [0, 1]
    assert res.attrs["windows"] == "bursts"
    table = sp.windows_table(res)
    assert len(table) == int(res["n_windows"].sum()) > 10
    for r in (0, 1):
        sub = table[table["run"] == r]
        assert int(res["n_spirals"].sel(run=r)) == sub["is_spiral"].sum()
        assert int(res["n_double"].sel(run=r)) == sub["is_double"].sum()
        assert (sub["start"] <= sub["end"]).all()
    # real bursts of float32 Adam: the flip frame, and spirals among them
    assert table["demodulated"].mean() > 0.8
    assert int(res["n_spirals"].sum()) >= 1
    assert set(table["label"]) <= set(sp.LABELS)


def test_blocks_of_runs_concatenate(bursting_store):
    whole = sp.analyze(bursting_store)
    blocks = sp.concat([sp.analyze(bursting_store, [0]), sp.analyze(bursting_store, [1])])
    a, b = sp.windows_table(whole), sp.windows_table(blocks)
    assert a.shape == b.shape
    np.testing.assert_array_equal(a["p_value"].to_numpy(), b["p_value"].to_numpy())
    np.testing.assert_array_equal(a["label"].to_numpy(), b["label"].to_numpy())
    assert isinstance(blocks, xr.Dataset) and blocks.sizes["run"] == 2


def test_report_is_json_and_follows_contract_4(bursting_store):
    res = sp.analyze(bursting_store)
    rep = json.loads(json.dumps(sp.report(res)))
    names = set(sp.windows_table(res)["pair_x"]) | set(sp.windows_table(res)["pair_y"])
    for r in ("0", "1"):
        entry = rep["runs"][r]["spirals"]
        assert {"n_windows", "n_spirals", "n_double", "n_twisted"} <= set(entry)
        assert isinstance(entry["n_spirals"], int) and entry["n_spirals"] <= entry["n_windows"]
        assert len(entry["pair"]) == 2 and set(entry["pair"]) <= names
    assert len(rep["spiral_windows"]) == int(res["n_spirals"].sum())
    assert all(row["is_spiral"] for row in rep["spiral_windows"])


def test_report_of_subsampled_windows_holds_the_total(bursting_store):
    import jsonschema

    from geomtraj.report import load_schema

    full = sp.report(sp.analyze(bursting_store))
    assert all("n_windows_total" not in e["spirals"] for e in full["runs"].values())
    res = sp.analyze(bursting_store, window_params=sp.WindowParams(max_windows=3))
    assert json.loads(res.attrs["window_params"])["max_windows"] == 3
    rep = json.loads(json.dumps(sp.report(res)))
    schema = load_schema()
    entry_schema = {"$defs": schema["$defs"], **schema["$defs"]["run"]["properties"]["spirals"]}
    for r in ("0", "1"):
        entry = rep["runs"][r]["spirals"]
        assert entry["n_windows"] == 3
        assert entry["n_windows_total"] == full["runs"][int(r)]["spirals"]["n_windows"] > 3
        jsonschema.validate(entry, entry_schema)


def test_sliding_windows_split_quiet_and_burst(bursting_store):
    windows = sp.WindowParams(sliding_steps=100)
    res = sp.analyze(bursting_store, windows="sliding", window_params=windows)
    table = sp.windows_table(res)
    assert (table["end"] - table["start"] + 1 == 100).all()
    assert not (table["quiet"] & (table["burst_overlap"] > 0)).any()
    for r in (0, 1):
        sub = table[table["run"] == r]
        assert int(res["n_windows_quiet"].sel(run=r)) == sub["quiet"].sum()
        in_burst = sub["is_spiral"] & (sub["burst_overlap"] > 0)
        assert int(res["n_spirals_burst"].sel(run=r)) == in_burst.sum()
    rep = sp.report(res)
    assert "quiet" in rep["runs"][0]["spirals"]


def test_named_pair_and_unknown_pair(bursting_store):
    from geomtraj.analysis.base import RunData

    names = RunData(bursting_store, 0).param_names
    res = sp.analyze(bursting_store, [0], pair=(names[3], names[5]))
    table = sp.windows_table(res)
    assert (table["pair_x"] == names[3]).all() and (table["pair_y"] == names[5]).all()
    with pytest.raises(GeomtrajError, match="recorded parameter names"):
        sp.analyze(bursting_store, [0], pair=("W9[0,0]", names[0]))


def test_record_every_above_one_is_not_measurable():
    from geomtraj.train.data import make_dataset
    from geomtraj.train.trainer import train

    X, y = make_dataset("sincos", n_points=32, seed=0)
    ds = train(X, y, hidden=(4, 4), steps=200, record_every=2, precision="float32", progress=False)
    rep = sp.report(sp.analyze(ds))
    entry = rep["runs"][0]["spirals"]
    assert entry["n_windows"] is None and "record_every" in entry["note"]


def test_figures(bursting_store, tmp_path):
    res = sp.analyze(bursting_store)
    paths = sp.figures(bursting_store, res, tmp_path, max_runs=1, max_windows=1)
    names = {p.name for p in paths}
    assert {"spirals_gallery.png", "spirals_counts.png"} <= names
    assert any(n.startswith("spiral_run") for n in names)
    assert all(p.stat().st_size > 10_000 for p in paths)
    csv = sp.write_table(res, tmp_path / "spirals.csv")
    assert csv.read_text().count("\n") == int(res["n_windows"].sum()) + 1


def test_every_feature_is_in_the_table():
    assert set(FEATURES) <= set(sp.QUANTITIES)
