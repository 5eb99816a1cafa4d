"""Burst detection: kernels against NumPy twins, and detection on signals with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from naive_events import hysteresis_events, rolling_median
from synth_periods import noise_trajectory, random_walk_trajectory, relaxation_oscillation

from geomtraj.analysis.events import BurstParams, detect_bursts
from geomtraj.analysis.events import rolling_median as events_rolling_median
from geomtraj.analysis.kernels.burst_scan import _hysteresis_events
from geomtraj.errors import GeomtrajError


@pytest.mark.parametrize("half", [0, 1, 2, 7, 50])
def test_rolling_median_matches_numpy(half):
    rng = np.random.default_rng(half)
    y = rng.normal(size=400)
    y[::17] = y[3]  # ties
    got = events_rolling_median(y, 2 * half + 1)
    np.testing.assert_array_equal(got, rolling_median(y, half))


def test_rolling_median_window_longer_than_signal():
    y = np.array([3.0, 1.0, 2.0])
    np.testing.assert_array_equal(events_rolling_median(y, 21), np.full(3, 2.0))


@pytest.mark.parametrize("seed", range(5))
def test_hysteresis_matches_naive(seed):
    rng = np.random.default_rng(seed)
    excess = np.convolve(rng.normal(size=3000), np.ones(5) / 2, mode="same")
    for on, off, dur, gap in [(1.0, 0.3, 1, 0), (1.2, 0.5, 3, 5), (0.8, 0.0, 2, 20)]:
        got = _hysteresis_events(excess, on, off, dur, gap)
        want = hysteresis_events(excess, on, off, dur, gap)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, w)


def test_one_burst_counts_once_despite_dips():
    # a burst whose level dips between the two thresholds stays one burst (hysteresis)
    x = np.ones(3000)
    x[1000:1060] = 50.0
    x[1030:1034] = 3.0  # above off (2x), below on (4x)
    b = detect_bursts(x, None, BurstParams(method="threshold"))
    assert len(b) == 1
    assert b.onset[0] == 1000 and b.end[0] == 1059


def test_onset_peak_end_of_a_known_burst():
    n = 5000
    x = np.full(n, 1e-3)
    t = np.arange(n)
    shape = 1e-3 * (1 + 100 * np.exp(-0.5 * ((t - 2500) / 10.0) ** 2))
    x = np.maximum(x, shape)
    b = detect_bursts(x, steps=t + 1, params=BurstParams(method="threshold"))
    assert len(b) == 1
    assert b.peak[0] == 2501
    # excess above 2x (off) starts where 100*exp(-z^2/2) > 1, i.e. |t-2500| < 10*sqrt(2 ln 100)
    half_width = 10.0 * np.sqrt(2 * np.log(100.0))
    assert abs(b.onset[0] - (2501 - half_width)) <= 1
    assert abs(b.end[0] - (2501 + half_width)) <= 1


def test_onsets_of_a_relaxation_oscillation_threshold():
    rise = 4.0
    tr = relaxation_oscillation(n_steps=20_000, slow_period=500.0, rise=rise, seed=3)
    b = detect_bursts(tr.update_norm, tr.steps, BurstParams(method="threshold"))
    assert len(b) == len(tr.onsets)
    # The detected onset is where the growing flip crosses the off level (2x the quiet norm): a lag
    # after the true start. The background noise moves that crossing; the flip grows by e every
    # `rise` steps, so the lag may wander by up to one rise time, never more.
    lag = b.onset - tr.onsets
    assert np.all(lag >= 0)
    assert np.ptp(lag) <= rise


def test_onsets_of_a_relaxation_oscillation():
    # the default (prominence) onset is where the smoothed log norm starts the last 90% of its
    # rise above the quiet trough: at the true start, up to the noise of the quiet level
    rise = 4.0
    tr = relaxation_oscillation(n_steps=20_000, slow_period=500.0, rise=rise, seed=3)
    b = detect_bursts(tr.update_norm, tr.steps)
    assert len(b) == len(tr.onsets)
    lag = b.onset - tr.onsets
    assert np.median(np.abs(lag)) <= 1
    # the flip rises from the quiet level to its peak (x200) in ceil(rise * ln 200) = 22 steps;
    # smoothed noise of the quiet level (sd 0.2 in log) can move an onset earlier, never by
    # half the rise
    assert np.all(np.abs(lag) < 0.5 * np.ceil(rise * np.log(200.0)))
    assert np.all((b.peak > b.onset) & (b.peak <= b.end)) and np.all(b.end[:-1] < b.onset[1:])


@pytest.mark.parametrize("seed", range(4))
def test_no_bursts_on_noise_and_random_walks(seed):
    for tr in (noise_trajectory(seed=seed), random_walk_trajectory(seed=seed)):
        assert len(detect_bursts(tr.update_norm, tr.steps)) == 0
        assert len(detect_bursts(tr.loss, tr.steps)) == 0


@pytest.mark.parametrize("sigma", [0.1, 0.5, 1.0, 2.0])
def test_no_bursts_on_lognormal_noise(sigma):
    rng = np.random.default_rng(int(sigma * 10))
    x = np.exp(rng.normal(0.0, sigma, size=50_000))
    assert len(detect_bursts(x)) == 0


def test_analysis_stops_at_first_nonfinite_value():
    tr = relaxation_oscillation(n_steps=20_000, slow_period=500.0, seed=1)
    x = tr.update_norm.copy()
    x[10_000] = np.nan
    x[10_001:] = 1e30  # garbage after divergence must be ignored
    b = detect_bursts(x, tr.steps)
    assert b.last_step == tr.steps[9_999]
    assert np.all(b.end < tr.steps[10_000])
    full = detect_bursts(tr.update_norm[:10_000], tr.steps[:10_000])
    np.testing.assert_array_equal(b.onset, full.onset)


def test_mask_marks_burst_steps():
    x = np.ones(3000)
    x[1000:1050] = 100.0
    b = detect_bursts(x, steps=np.arange(3000) + 1, params=BurstParams(method="threshold"))
    m = b.mask(np.arange(3000) + 1)
    assert m.sum() == 50 and m[1000] and not m[999]
    # the default smooths over 5 samples first: the burst is widened by the smoothing's
    # half-width (2) plus the last quiet sample on each side, no more
    b = detect_bursts(x, steps=np.arange(3000) + 1)
    m = b.mask(np.arange(3000) + 1)
    assert len(b) == 1 and m[1000:1050].all()
    assert 50 <= m.sum() <= 50 + 2 * 3


def test_bad_input_and_params():
    with pytest.raises(GeomtrajError, match="1-D"):
        detect_bursts(np.ones((3, 3)))
    with pytest.raises(GeomtrajError, match="non-negative"):
        detect_bursts(-np.ones(10))
    with pytest.raises(GeomtrajError, match="steps has shape"):
        detect_bursts(np.ones(10), steps=np.arange(9))
    with pytest.raises(GeomtrajError, match="hysteresis"):
        BurstParams(on_factor=2.0, off_factor=3.0)
    assert len(detect_bursts(np.zeros(0))) == 0


# --------------------------------------------------------------------------------------------------
# the O(n log w) rolling median and the prominence method
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n, window", [(1, 3), (5, 3), (10, 11), (12, 11), (300, 101), (2500, 501)])
def test_fast_rolling_median_equals_clipped_numpy(n, window):
    # scipy's rank filter pads at the ends; the public function must still clip like numpy.median
    from geomtraj.analysis.events import rolling_median as fast

    rng = np.random.default_rng(n)
    y = np.round(rng.normal(size=n), 1)  # ties
    np.testing.assert_array_equal(fast(y, window), rolling_median(y, window // 2))


@pytest.mark.parametrize("regime", ["dense", "sparse"])
@pytest.mark.parametrize("period", [50, 300])
def test_prominence_onsets_match_true_onsets(regime, period):
    from synth_periods import spike_train

    u, onsets = spike_train(20_000, period, regime, noise=0.2, seed=period)
    b = detect_bursts(u, None, BurstParams(method="prominence"))
    # every true onset found once, within a tenth of a period (the rise lasts a tenth)
    assert len(b) == onsets.size or len(b) == onsets.size - 1  # the first may start in the signal
    d = np.abs(b.onset[:, None] - onsets[None, :]).min(axis=1)
    assert np.all(d <= 0.1 * period + 3)
    # burst ends lie before the next onset, peaks inside the burst
    assert np.all(b.end[:-1] < b.onset[1:])
    assert np.all((b.peak >= b.onset) & (b.peak <= b.end))


def test_prominence_bursts_do_not_depend_on_the_baseline_window():
    from synth_periods import spike_train

    u, _ = spike_train(20_000, 60, "dense", noise=0.3, seed=1)
    ref = detect_bursts(u, None, BurstParams(method="prominence", baseline_window=101))
    for w in (501, 2001):
        b = detect_bursts(u, None, BurstParams(method="prominence", baseline_window=w))
        np.testing.assert_array_equal(b.onset, ref.onset)


def test_threshold_method_misses_dense_spikes_that_prominence_finds():
    # beta2 = 0.99 in miniature: spikes every 50 steps fill the median's window, so few
    # spikes clear 4x the median; the prominence method counts each spike once
    from synth_periods import spike_train

    u, onsets = spike_train(20_000, 50, "dense", noise=0.2, height=2.5, seed=3)
    old = detect_bursts(u, None, BurstParams(method="threshold"))
    new = detect_bursts(u, None, BurstParams())
    assert len(new) >= 0.95 * onsets.size
    assert len(old) < 0.5 * onsets.size


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("sd", [0.3, 2.0])
def test_prominence_finds_nothing_in_white_noise(seed, sd):
    y = np.random.default_rng(seed).normal(0.0, sd, 20_000)
    assert len(detect_bursts(np.exp(y), None, BurstParams(method="prominence"))) == 0


def test_prominence_bad_params():
    with pytest.raises(GeomtrajError, match="method"):
        BurstParams(method="median")
    with pytest.raises(GeomtrajError, match="rise_fraction"):
        BurstParams(method="prominence", rise_fraction=1.0)


# --------------------------------------------------------------------------------------------------
# one definition of a burst for every analysis
# --------------------------------------------------------------------------------------------------


def test_every_analysis_counts_the_same_bursts():
    # periods, stability and the spiral burst windows of one run count the bursts of BurstParams()
    import datafiles

    from geomtraj.analysis import periods, spirals, stability
    from geomtraj.analysis.base import RunData
    from geomtraj.analysis.events import run_bursts
    from geomtraj.store.zarrstore import open_store

    ds = open_store(datafiles.fixture_path("bursts_f32"))
    run = RunData(ds, 0)
    n = len(run_bursts(run))
    assert n == 43  # the fixture's regular bursts (docs/periods.md)
    assert int(periods.analyze(ds)["n_bursts"].values[0]) == n
    no_data = ds.drop_vars(["data_x", "data_y"])  # no curvature needed to count bursts
    assert stability.report(stability.analyze(no_data))["stability"]["runs"][0]["n_bursts"] == n
    assert spirals.analyze_run(run, windows="bursts")["n_windows_total"] == n
    # the former definition stays available, and finds one burst fewer here
    former = BurstParams(method="threshold")
    assert len(run_bursts(run, "update_norm", former)) == 42
    assert spirals.analyze_run(run, burst_params=former)["n_windows_total"] == 42


def test_a_spike_counts_once_it_has_fallen_back_by_the_on_level():
    # detection on a prefix (early warning) sees no future: a spike cut before it has fallen by
    # log(on_factor) from its peak is not a burst yet
    t = np.arange(3000)
    x = 1e-3 * (1 + 100 * np.exp(-0.5 * ((t - 2500) / 10.0) ** 2))
    fallen = np.log(x[2500] / x)  # fall from the peak
    assert len(detect_bursts(x[:2501])) == 0  # cut at the peak
    cut = 2500 + int(np.argmax(fallen[2500:] > np.log(4.0) + 0.3))
    assert len(detect_bursts(x[: cut - 8])) == 0  # smoothed fall still short of log 4
    assert len(detect_bursts(x[: cut + 8])) == 1


def test_a_runs_bursts_are_detected_once_while_its_rows_are_held():
    """Periods, spirals and stability each ask for a run's bursts: one detection serves them."""
    import datafiles

    from geomtraj.analysis import base
    from geomtraj.analysis.events import run_bursts
    from geomtraj.store.zarrstore import open_store

    ds = open_store(datafiles.BETA_GRID)
    rows = {"update_norm": np.asarray(ds["update_norm"].values)}
    fresh = run_bursts(base.RunData(ds, 1))
    assert run_bursts(base.RunData(ds, 1)) is not fresh  # rows not held: detected each time
    with base.rows_in_memory(ds, 0, rows):
        first = run_bursts(base.RunData(ds, 1))
        assert run_bursts(base.RunData(ds, 1)) is first  # another reader of the same run
        assert run_bursts(base.RunData(ds, 2)) is not first
        assert run_bursts(base.RunData(ds, 1), "train_loss") is not first  # not held: computed
        assert np.array_equal(first.onset, fresh.onset) and len(first) == len(fresh) > 0
        assert np.array_equal(first.log_baseline, fresh.log_baseline)
        with pytest.raises(ValueError, match="read-only"):
            first.onset[0] = 0  # shared between analyses, so nobody may change it
    assert not base._DERIVED and not base._IN_MEMORY
