"""Slow and fast periods of Adam's relaxation oscillations, and their test against the betas.

Definitions are those of docs/science.md (Operational definitions) and docs/periods.md:

- **slow period**: the median interval between successive burst onsets (bursts on the update norm,
  found as the spikes of its smoothed log by prominence, :mod:`geomtraj.analysis.events`, so that
  no baseline window enters the period; docs/periods.md), with a moving-block bootstrap CI;
  cross-checked by the peak of a Welch spectrum of the log update norm (per log-frequency, the
  agreement test), of the log loss and of ``log v`` (``scipy.signal.welch``), refined by parabolic
  interpolation; compared with ``1/(1-beta2)``;
- **fast component**: the e-folding time of each burst's flip-amplitude decay after its peak (the
  update norm of a period-2 flip is twice its amplitude), with a bootstrap CI across bursts, and the
  flip period inside bursts; both compared with ``1/(1-beta1)`` and ``-1/ln(sqrt(beta1))`` as
  ratios per run, and summarised per beta1 value (median ratio with a bootstrap CI over runs);
- **mechanism check**: the slope of ``log v`` per step between bursts, against ``ln(beta2)``;
- **grid test**: across runs, ``log period`` regressed on ``log prediction`` per precision (and per
  beta1 for the slow period), with a bootstrap over seeds and a verdict.

The array-level functions (:func:`slow_period`, :func:`spectral_period`, :func:`efold_times`,
:func:`flip_period`, :func:`v_decay_slope`, :func:`grid_fit`) take plain arrays and are validated on
synthetic signals with known answers in ``tests/test_periods.py``.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import xarray as xr
from scipy import signal as sps
from scipy import stats

from geomtraj.analysis.base import RunData, finite_or_none, iter_runs
from geomtraj.analysis.declaration import (
    Analysis,
    Column,
    Field,
    Figure,
    Needs,
    describe_run,
    params_attr,
    params_from_result,
    run_entry,
)
from geomtraj.analysis.events import BurstParams, Bursts, run_bursts
from geomtraj.analysis.panels import thin_log_ticks
from geomtraj.errors import GeomtrajError


@dataclass(frozen=True)
class PeriodParams:
    """Thresholds and settings of the period analysis, with their defaults.

    Attributes
    ----------
    bursts : BurstParams
        Burst detection on the update norm (default ``BurstParams()``, the burst definition every
        analysis shares: the ``prominence`` method, whose onsets do not depend on a baseline
        window; docs/periods.md).
    min_intervals : int
        Fewest onset intervals for a slow period (default 4, i.e. 5 bursts): a median of fewer
        intervals has no useful CI.
    n_boot : int
        Bootstrap resamples for every CI (default 1000).
    ci_level : float
        Confidence level of every CI (default 0.95).
    seed : int
        Seed of the bootstrap generator, so reports are reproducible.
    min_period : float
        Shortest period, in steps, searched in the spectra (default 8): excludes the period-2 flip
        and its neighbours, which belong to the fast component.
    welch_segment : int
        Welch segment length in samples (default 8192; clipped to the signal). Long enough to hold
        several slow periods of up to ~1/(1-0.9995) = 2000 steps, short enough to average several
        segments of a 50,000-step run. ``noverlap`` is set to half of the actual segment length
        (scipy clamps ``nperseg`` but not ``noverlap``, scipy#25608).
    min_cycles : float
        A spectral peak must lie at a period no longer than the segment over ``min_cycles``
        (default 3), so that it rests on at least three oscillations per segment.
    agreement_tol : float
        Relative tolerance between the event slow period and the spectral one of the log update
        norm (default 0.25); a larger gap is flagged in the run's note and counted in the grid.
        The comparison is made for runs with at least ``agreement_min_bursts`` bursts (default 10).
        Irregular intervals put the spectral peak near the inverse of the *mean* interval, while
        the event period is the *median*: on real runs the two differ by up to ~20% when both
        are right (docs/periods.md), hence 0.25.
    agreement_segment : int
        Shortest Welch segment of the agreement spectrum (default 2048 samples: a dozen averaged
        segments on 20k steps). It is lengthened to the power of two that holds eight event slow
        periods, so that a peak of up to a quarter of the segment's length is still resolved.
    min_decay_points : int
        Fewest samples from a burst's peak to its end to fit an e-folding time (default 5).
    min_quiet : int
        Fewest recorded samples in a quiet segment (between the end of a burst and the next onset,
        after trimming ``quiet_margin`` steps at both sides) to fit a ``log v`` slope (default 10).
    quiet_margin : int
        Steps trimmed from both ends of each quiet segment (default 10), so that the tail of a
        burst's gradients (still feeding ``v``) does not bias the decay rate.
    min_flip_samples : int
        Fewest steps inside a burst to estimate its flip period (default 8).
    """

    bursts: BurstParams = field(default_factory=BurstParams)
    min_intervals: int = 4
    n_boot: int = 1000
    ci_level: float = 0.95
    seed: int = 0
    min_period: float = 8.0
    welch_segment: int = 8192
    min_cycles: float = 3.0
    agreement_tol: float = 0.25
    agreement_segment: int = 2048
    agreement_min_bursts: int = 10
    min_decay_points: int = 5
    min_quiet: int = 10
    quiet_margin: int = 10
    min_flip_samples: int = 8

    def __post_init__(self) -> None:
        if not 0 < self.ci_level < 1:
            raise GeomtrajError(f"ci_level={self.ci_level}; expected a level in (0, 1)")
        if self.min_intervals < 2 or self.n_boot < 100:
            raise GeomtrajError(
                f"min_intervals={self.min_intervals}, n_boot={self.n_boot}; "
                "expected >= 2 and >= 100"
            )


# --------------------------------------------------------------------------------------------------
# array-level estimators
# --------------------------------------------------------------------------------------------------


def _percentile_ci(samples: np.ndarray, level: float) -> tuple[float, float]:
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(samples, [a, 1.0 - a])
    return float(lo), float(hi)


def block_bootstrap_median(
    x: np.ndarray, n_boot: int, level: float, rng: np.random.Generator
) -> tuple[float, float]:
    """Moving-block bootstrap CI of the median of a (possibly autocorrelated) sequence.

    Blocks of length ``ceil(n**(1/3))`` (the usual rate for variance estimation) are drawn with
    replacement until ``n`` values are collected; intervals of a relaxation oscillation are
    correlated over a few bursts, which independent resampling would ignore.

    Hand-written because it is faster: it draws the same blocks from ``rng`` as
    ``arch.bootstrap.MovingBlockBootstrap`` (bit-identical intervals, tested), but all resamples
    at once: 6-60x faster for 20-200 intervals, and no 1.5-4 s import (bench_bootstrap.py).
    """
    x = np.asarray(x, dtype=np.float64)
    n = x.size
    b = max(1, int(np.ceil(n ** (1.0 / 3.0))))
    n_blocks = int(np.ceil(n / b))
    starts = rng.integers(0, n - b + 1, size=(n_boot, n_blocks))
    idx = (starts[:, :, None] + np.arange(b)[None, None, :]).reshape(n_boot, -1)[:, :n]
    return _percentile_ci(np.median(x[idx], axis=1), level)


@dataclass(frozen=True)
class SlowPeriod:
    """Event estimate of the slow period: ``period`` (median onset interval) and its CI."""

    period: float | None
    ci: tuple[float, float] | None
    n_intervals: int
    note: str = ""


def slow_period(onsets: np.ndarray, params: PeriodParams = PeriodParams()) -> SlowPeriod:
    """Median interval between successive burst onsets, with a moving-block bootstrap CI."""
    onsets = np.sort(np.asarray(onsets, dtype=np.float64))
    intervals = np.diff(onsets)
    n = intervals.size
    if n < params.min_intervals:
        return SlowPeriod(
            None, None, n, f"{n + 1 if onsets.size else 0} bursts, need {params.min_intervals + 1}"
        )
    rng = np.random.default_rng(params.seed)
    ci = block_bootstrap_median(intervals, params.n_boot, params.ci_level, rng)
    return SlowPeriod(float(np.median(intervals)), ci, n)


def _parabolic_peak(x: np.ndarray, y: np.ndarray, k: int) -> float:
    """Vertex abscissa of the parabola through ``(x, y)`` at ``k-1, k, k+1`` (uniform ``x``)."""
    if k <= 0 or k >= y.size - 1:
        return float(x[k])
    a, b, c = y[k - 1], y[k], y[k + 1]
    denom = a - 2.0 * b + c
    if denom >= 0:  # not a maximum (flat or convex): keep the bin centre
        return float(x[k])
    delta = 0.5 * (a - c) / denom
    return float(x[k] + delta * (x[1] - x[0]))


@dataclass(frozen=True)
class Spectrum:
    """Welch spectrum of a signal and its dominant period (``None`` when none is measurable)."""

    freq: np.ndarray  # cycles per step
    power: np.ndarray
    period: float | None
    note: str = ""


def welch_density(x: np.ndarray, spacing: float, nperseg: int) -> tuple[np.ndarray, np.ndarray]:
    """``scipy.signal.welch(x, fs=1/spacing, window="hann", nperseg=nperseg,
    noverlap=nperseg // 2, detrend="linear", scaling="density")``, computed in a few array passes.

    The same estimate (frequencies identical, power within a few units of 1e-15 relative;
    tests/test_periods.py): each half-overlapping segment loses its least-squares line in closed
    form (centred time, so mean and slope decouple) instead of scipy's per-segment solve, which
    made up most of the call; then Hann window, one batched rfft, the mean periodogram.
    """
    step = nperseg - nperseg // 2
    segs = np.lib.stride_tricks.sliding_window_view(x, nperseg)[::step]
    win, tc = _hann_and_ramp(nperseg)
    slope = (segs @ tc) / (tc @ tc)
    detrended = segs - segs.mean(axis=1, keepdims=True) - slope[:, None] * tc
    spec = np.fft.rfft(detrended * win, axis=-1)
    power = (spec.real**2 + spec.imag**2).mean(axis=0) * (spacing / (win @ win))
    power[1 : (nperseg + 1) // 2] *= 2.0  # one-sided: DC and (even length) Nyquist once
    return np.fft.rfftfreq(nperseg, d=spacing), power


@functools.lru_cache(maxsize=16)
def _hann_and_ramp(m: int) -> tuple[np.ndarray, np.ndarray]:
    """Hann window of length ``m`` and the centred sample times ``0..m-1`` (cached)."""
    w = sps.get_window("hann", m)
    t = np.arange(m, dtype=np.float64)
    t -= t.mean()
    w.flags.writeable = False
    t.flags.writeable = False
    return w, t


def spectral_period(
    x: np.ndarray,
    spacing: float = 1.0,
    params: PeriodParams = PeriodParams(),
    segment: int | None = None,
    per_log_frequency: bool = False,
) -> Spectrum:
    """Dominant period of ``x`` (samples ``spacing`` steps apart) from its Welch spectrum.

    The spectrum is ``scipy.signal.welch`` with a Hann window, linear detrending per segment and
    half-overlapping segments of ``segment`` samples (default ``params.welch_segment``; clipped
    to the signal). The peak is searched between ``params.min_period`` steps and a period of
    segment length over ``params.min_cycles``, then refined by a parabola through the log power
    of the three bins around it. With ``per_log_frequency`` the peak is that of ``f * P(f)``, the
    power per octave, which discounts the red foot of a spectrum whose bursts come irregularly
    (``power`` is returned unweighted either way).
    """
    x = np.asarray(x, dtype=np.float64)
    n = x.size
    empty = np.zeros(0)
    if n < 16 or not np.all(np.isfinite(x)):
        return Spectrum(empty, empty, None, f"{n} finite samples, too short for a spectrum")
    nperseg = int(min(segment or params.welch_segment, n))
    freq, power = welch_density(x, spacing, nperseg)
    f_lo = params.min_cycles / (nperseg * spacing)
    f_hi = 1.0 / params.min_period
    band = np.flatnonzero((freq >= f_lo) & (freq <= f_hi))
    if band.size < 3 or not np.any(power[band] > 0):
        return Spectrum(freq, power, None, "no spectral band between min_period and the segment")
    weighted = power * freq if per_log_frequency else power
    k = int(band[np.argmax(weighted[band])])
    if k == band[0]:
        # A maximum at the band's lowest frequency is the foot of a red (trend-like) spectrum, not
        # an oscillation: there is no peak to refine.
        return Spectrum(freq, power, None, "spectrum rises to its lowest frequency: no peak")
    logp = np.log(np.maximum(weighted, np.finfo(float).tiny))
    f_peak = _parabolic_peak(freq, logp, k)
    if not f_peak > 0:
        return Spectrum(freq, power, None, "spectral peak at zero frequency")
    return Spectrum(freq, power, 1.0 / f_peak)


def agreement_segment(period: float | None, params: PeriodParams = PeriodParams()) -> int:
    """Welch segment of the agreement spectrum: ``params.agreement_segment`` or, if longer, the
    power of two that holds eight slow periods (``period`` from the events; None keeps the
    default). The segment only sets the spectral resolution, not where the peak lies."""
    seg = int(params.agreement_segment)
    if period is not None and np.isfinite(period) and period > 0:
        seg = max(seg, 1 << int(np.ceil(np.log2(8.0 * period))))
    return seg


@dataclass(frozen=True)
class EfoldTimes:
    """Per-burst e-folding times of the flip-amplitude decay and their summary."""

    per_burst: np.ndarray  # one value per burst with a measurable decay (NaN otherwise)
    efold: float | None  # median over bursts
    ci: tuple[float, float] | None
    note: str = ""


def efold_times(
    amplitude: np.ndarray, steps: np.ndarray, bursts: Bursts, params: PeriodParams = PeriodParams()
) -> EfoldTimes:
    """E-folding time of each burst's decay, from its peak to its end.

    ``amplitude`` is the flip amplitude per step (the update norm: a period-2 flip of amplitude
    ``a`` moves the parameters by ``2a`` per step). The background motion is removed first: the
    flip amplitude is ``sqrt(amplitude**2 - b**2)`` with ``b`` the burst detector's rolling-median
    baseline (the quiet motion adds to the flip as an independent vector), so that the decay is
    neither flattened nor steepened as it reaches the quiet level. Per burst, the log of that
    excess is fitted by least squares on the steps from the peak to the burst's end where it is
    positive; the e-folding time is ``-1/slope``.
    Bursts whose decay is shorter than ``params.min_decay_points`` samples or does not decay are
    skipped. The summary is the median over bursts with a percentile bootstrap CI.
    """
    amplitude = np.asarray(amplitude, dtype=np.float64)[: bursts.steps.size]
    steps = np.asarray(steps)[: bursts.steps.size]
    background = np.exp(bursts.log_baseline)
    # the quiet motion adds to the flip as an independent vector: remove it in quadrature
    amplitude = np.sqrt(np.maximum(amplitude**2 - background**2, 0.0))
    times = np.full(len(bursts), np.nan)
    for i, (p, e) in enumerate(zip(bursts.peak, bursts.end, strict=True)):
        # steps are sorted: slice rather than compare every step with every burst
        i0, i1 = np.searchsorted(steps, p, "left"), np.searchsorted(steps, e, "right")
        amp = amplitude[i0:i1]
        ok = amp > 0
        if np.count_nonzero(ok) < params.min_decay_points:
            continue
        slope = _ls_slope(steps[i0:i1][ok].astype(np.float64), np.log(amp[ok]))
        if slope < 0:
            times[i] = -1.0 / slope
    good = times[np.isfinite(times)]
    if good.size < 2:
        return EfoldTimes(times, None, None, f"{good.size} bursts with a measurable decay, need 2")
    rng = np.random.default_rng(params.seed)
    boot = np.median(rng.choice(good, size=(params.n_boot, good.size)), axis=1)
    return EfoldTimes(times, float(np.median(good)), _percentile_ci(boot, params.ci_level))


def _ls_slope(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of ``y`` on ``x`` (closed form; ``np.polyfit(x, y, 1)[0]``, faster)."""
    xc = x - x.mean()
    return float(xc @ (y - y.mean()) / (xc @ xc))


def _hann_power(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Frequencies and summed one-sided periodogram of the columns of ``d`` (Hann window).

    The same peak shape as ``scipy.signal.periodogram(d, window="hann", detrend=False,
    axis=0).sum(axis=1)`` up to its constant scale (DC and, for an even length, Nyquist not
    doubled), with one FFT call instead of scipy's per-call set-up, which dominated per burst.
    """
    m = d.shape[0]
    w, freq = _hann_and_freq(m)
    x = np.fft.rfft(d * w[:, None], axis=0)
    power = (x.real**2 + x.imag**2).sum(axis=1)
    power[1 : (m + 1) // 2] *= 2.0
    return freq, power


@functools.lru_cache(maxsize=256)
def _hann_and_freq(m: int) -> tuple[np.ndarray, np.ndarray]:
    """Hann window and rfft frequencies of length ``m`` (cached: bursts repeat lengths)."""
    w, f = sps.get_window("hann", m), np.fft.rfftfreq(m)
    w.flags.writeable = False
    f.flags.writeable = False
    return w, f


def flip_period(
    theta: np.ndarray, steps: np.ndarray, bursts: Bursts, params: PeriodParams = PeriodParams()
) -> tuple[float | None, str]:
    """Median over bursts of the dominant period of the parameter motion inside each burst.

    Per burst, the periodograms of the per-step changes of every recorded parameter are summed
    (the trace of the cross-spectral matrix, which does not depend on the direction of the motion),
    and the period is that of the largest peak, refined by parabolic interpolation. Needs every
    step recorded; returns ``(None, note)`` otherwise.
    """
    steps = np.asarray(steps)
    if steps.size < 2 or np.any(np.diff(steps) != 1):
        return None, "flip period needs theta recorded at every step (record_every = 1)"
    periods = []
    for a, e in zip(bursts.onset, bursts.end, strict=True):
        i0, i1 = np.searchsorted(steps, a, "left"), np.searchsorted(steps, e, "right")
        if i1 - i0 < params.min_flip_samples:
            continue
        d = np.diff(theta[i0:i1], axis=0)
        d = d - d.mean(axis=0)
        if not np.any(d):
            continue
        # total power over the coordinates: the trace of the cross-spectral matrix, which peaks
        # at the frequency of the dominant motion whatever its direction
        freq, power = _hann_power(d)
        if freq.size < 3:
            continue
        k = int(np.argmax(power[1:]) + 1)
        logp = np.log(np.maximum(power, np.finfo(float).tiny))
        f = _parabolic_peak(freq, logp, k)
        if f > 0:
            periods.append(1.0 / min(f, 0.5))
    if not periods:
        return None, "no burst long enough to measure its flip period"
    return float(np.median(periods)), ""


@dataclass(frozen=True)
class VDecay:
    """Slope of ``log v`` per step between bursts (median over quiet segments and parameters)."""

    slope: float | None
    n_fits: int
    note: str = ""


def _quiet_rows(steps: np.ndarray, bursts: Bursts, params: PeriodParams) -> list[np.ndarray]:
    """Row selections of the quiet segments between successive bursts (trimmed, long enough)."""
    out = []
    margin = params.quiet_margin
    for k in range(len(bursts) - 1):
        a, b = bursts.end[k] + margin, bursts.onset[k + 1] - margin
        # steps are sorted: the rows in [a, b] by bisection, not by comparing every step
        sel = np.arange(np.searchsorted(steps, a, "left"), np.searchsorted(steps, b, "right"))
        if sel.size >= params.min_quiet:
            out.append(sel)
    return out


def v_decay_slope(
    v: np.ndarray, steps: np.ndarray, bursts: Bursts, params: PeriodParams = PeriodParams()
) -> VDecay:
    """Median slope of ``log v`` per step over the quiet segments between bursts.

    Quiet segments run from a burst's end to the next burst's onset, trimmed by
    ``params.quiet_margin`` steps at both sides, and need ``params.min_quiet`` recorded samples.
    The slope is the median, over every recorded parameter and every pair of successive recorded
    rows in those segments, of ``(log v_b - log v_a) / (step_b - step_a)``. The median ignores
    the upward kicks that small sub-threshold events give ``v`` and measures the free decay in
    between: while ``g**2 << v`` Adam gives ``v_t = beta2 * v_{t-1}``, a slope of ``ln(beta2)``.
    Whether that premise holds is measured by :func:`quiet_gradient_ratio`.
    """
    v = np.asarray(v, dtype=np.float64)
    steps = np.asarray(steps, dtype=np.float64)
    rates = []
    for sel in _quiet_rows(steps, bursts, params):
        rows = slice(sel[0], sel[-1] + 1)  # consecutive rows: views, not copies
        seg = v[rows]
        ok = np.all(seg > 0, axis=0) & np.all(np.isfinite(seg), axis=0)
        if not np.any(ok):
            continue
        dlog = np.diff(np.log(seg if ok.all() else seg[:, ok]), axis=0)
        rates.append((dlog / np.diff(steps[rows])[:, None]).ravel())
    if not rates:
        return VDecay(None, 0, "no quiet segment between bursts long enough for a v slope")
    allrates = np.concatenate(rates)
    return VDecay(float(np.median(allrates)), int(allrates.size))


def quiet_gradient_ratio(
    m: np.ndarray,
    v: np.ndarray,
    steps: np.ndarray,
    beta1: float,
    bursts: Bursts,
    params: PeriodParams = PeriodParams(),
) -> float | None:
    """Median of ``g_t**2 / v_t`` over the quiet segments: the premise of the mechanism check.

    The gradient is recovered exactly from Adam's first moment, ``g_t = (m_t - beta1*m_{t-1}) /
    (1 - beta1)``, so this needs every step recorded (``None`` otherwise). ``v`` decays freely with
    slope ``ln(beta2)`` only where this ratio is much smaller than 1.
    """
    steps = np.asarray(steps)
    if steps.size < 2 or np.any(np.diff(steps) != 1):
        return None
    ratios = []
    for sel in _quiet_rows(steps, bursts, params):
        sel = sel[sel >= 1]
        if sel.size == 0:
            continue
        a, b = sel[0], sel[-1] + 1  # consecutive rows: views, not copies
        g = (m[a:b] - beta1 * m[a - 1 : b - 1]) / (1.0 - beta1)
        vv = v[a:b]
        ok = vv > 0
        ratios.append((g[ok] ** 2) / vv[ok])
    if not ratios:
        return None
    return float(np.median(np.concatenate(ratios)))


# --------------------------------------------------------------------------------------------------
# grid test
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GridFit:
    """Slope of ``log period`` against ``log prediction`` with a bootstrap CI and a verdict."""

    slope: float | None
    ci: tuple[float, float] | None
    n_runs: int
    verdict: str
    note: str = ""


def _fe_slope(x: np.ndarray, y: np.ndarray, group: np.ndarray) -> float:
    """Common OLS slope of y on x with one intercept per group (fixed effects)."""
    xc = x.copy()
    yc = y.copy()
    for g in np.unique(group):
        m = group == g
        xc[m] -= x[m].mean()
        yc[m] -= y[m].mean()
    sxx = float(xc @ xc)
    return float(xc @ yc) / sxx if sxx > 0 else np.nan


def grid_fit(
    period: np.ndarray,
    prediction: np.ndarray,
    seed: np.ndarray,
    group: np.ndarray | None = None,
    params: PeriodParams = PeriodParams(),
    min_runs: int = 4,
) -> GridFit:
    """Regress ``log period`` on ``log prediction`` and bootstrap the slope over seeds.

    Runs without a period (NaN) are left out. ``group`` labels runs that share an intercept (for
    example beta1 for the slow period); the slope is common to all groups. The bootstrap draws seeds
    with replacement and keeps every run of a drawn seed, so that runs sharing an initialisation
    are not treated as independent. Verdict: ``proportional`` when the CI contains 1,
    ``power-law (slope s)`` when it does not, ``insufficient`` with fewer than ``min_runs`` runs,
    fewer than two distinct predictions in a group, or fewer than two seeds.
    """
    period = np.asarray(period, dtype=np.float64)
    prediction = np.asarray(prediction, dtype=np.float64)
    seed = np.asarray(seed)
    group = np.zeros(period.size, dtype=np.int64) if group is None else np.asarray(group)
    ok = np.isfinite(period) & (period > 0) & np.isfinite(prediction) & (prediction > 0)
    x, y, s, g = np.log(prediction[ok]), np.log(period[ok]), seed[ok], group[ok]
    n = int(ok.sum())
    spread = any(np.unique(x[g == k]).size >= 2 for k in np.unique(g)) if n else False
    seeds = np.unique(s)
    if n < min_runs or not spread:
        why = (
            f"{n} runs with a period; need {min_runs}"
            if n < min_runs
            else "one prediction value per group; the fit needs at least two"
        )
        return GridFit(None, None, n, "insufficient", why)
    slope = _fe_slope(x, y, g)
    if seeds.size < 2:
        return GridFit(slope, None, n, "insufficient", "one seed: no bootstrap over seeds")
    rng = np.random.default_rng(params.seed)
    by_seed = [np.flatnonzero(s == k) for k in seeds]
    boot = np.empty(params.n_boot)
    for b in range(params.n_boot):
        idx = np.concatenate([by_seed[i] for i in rng.integers(0, seeds.size, seeds.size)])
        boot[b] = _fe_slope(x[idx], y[idx], g[idx])
    boot = boot[np.isfinite(boot)]
    if boot.size < params.n_boot // 2:
        return GridFit(slope, None, n, "insufficient", "bootstrap resamples lack a spread")
    ci = _percentile_ci(boot, params.ci_level)
    verdict = "proportional" if ci[0] <= 1.0 <= ci[1] else f"power-law (slope {slope:.2f})"
    return GridFit(slope, ci, n, verdict)


# --------------------------------------------------------------------------------------------------
# per-run analysis and the protocol of geomtraj.analysis
# --------------------------------------------------------------------------------------------------

#: Variables of the result Dataset (over ``run``) and their meaning.
RESULT_VARIABLES = {
    "n_bursts": "bursts on the update norm",
    "n_bursts_loss": "bursts on the loss (cross-check)",
    "slow_period": "median interval between burst onsets (steps)",
    "slow_ci_lo": "lower end of the slow-period CI",
    "slow_ci_hi": "upper end of the slow-period CI",
    "slow_predicted": "1/(1-beta2)",
    "slow_ratio": "slow_period / slow_predicted",
    "spectral_period": "Welch peak period of the log loss (steps)",
    "spectral_period_v": "Welch peak period of the mean log v (steps)",
    "spectral_period_update": "Welch peak period (per log-frequency) of the log update norm",
    "slow_disagreement": "|spectral_period_update - slow_period| / slow_period",
    "efold": "median e-folding time of the flip-amplitude decay (steps)",
    "efold_ci_lo": "lower end of the e-folding CI",
    "efold_ci_hi": "upper end of the e-folding CI",
    "fast_predicted": "1/(1-beta1)",
    "fast_ratio": "efold / fast_predicted",
    "linear_prediction": "-1/ln(sqrt(beta1))",
    "flip_period": "median dominant period of the motion inside bursts (steps)",
    "efold_ratio_linear": "efold / linear_prediction",
    "flip_ratio": "flip_period / fast_predicted",
    "flip_ratio_linear": "flip_period / linear_prediction",
    "v_slope": "median slope of log v per step between bursts",
    "v_slope_expected": "ln(beta2)",
    "quiet_g2_over_v": "median g**2/v between bursts (the free-decay premise holds when << 1)",
}


def analyze_run(run: RunData, params: PeriodParams = PeriodParams()) -> dict:
    """All period measurements of one run, as a flat dict (NaN = not measurable)."""
    h = run.hyper
    notes = []
    bursts = run_bursts(run, "update_norm", params.bursts)
    loss_bursts = run_bursts(run, "train_loss", params.bursts)
    slow = slow_period(bursts.onset, params)
    if slow.note:
        notes.append(f"slow: {slow.note}")
    # Spectra from the first burst on, so that the initial descent of the loss does not dominate.
    t0 = bursts.onset[0] if len(bursts) else 0
    sel = run.iteration >= t0
    loss = run.train_loss[sel]
    tiny = np.finfo(float).tiny
    spec = spectral_period(np.log(np.maximum(loss, tiny)), 1.0, params)
    # the agreement spectrum: the series the events come from, analysed up to the last finite step
    un = np.asarray(run.update_norm, dtype=np.float64)[: bursts.steps.size][
        sel[: bursts.steps.size]
    ]
    spec_u = spectral_period(
        np.log(np.maximum(un, tiny)),
        1.0,
        params,
        agreement_segment(slow.period, params),
        per_log_frequency=True,
    )
    rows = run.step >= t0
    spec_v = Spectrum(np.zeros(0), np.zeros(0), None, "no recorded v")
    v = run.v
    if v.shape[1] and np.count_nonzero(rows) > 16:
        vv = v[rows]
        positive = np.all(vv > 0, axis=0)
        if np.any(positive):
            spec_v = spectral_period(np.log(vv[:, positive]).mean(axis=1), run.record_every, params)
    ef = efold_times(run.update_norm, run.iteration, bursts, params)
    if ef.note:
        notes.append(f"fast: {ef.note}")
    flip, flip_note = None, ""
    if len(bursts):
        flip, flip_note = flip_period(run.theta, run.step, bursts, params)
    if flip_note:
        notes.append(f"flip: {flip_note}")
    vd = v_decay_slope(v, run.step, bursts, params)
    g2v = (
        quiet_gradient_ratio(run.m, v, run.step, h["beta1"], bursts, params)
        if len(bursts)
        else None
    )
    if vd.note:
        notes.append(f"v_decay: {vd.note}")
    agreement, rel = "", np.nan
    if len(bursts) >= params.agreement_min_bursts and slow.period and spec_u.period:
        rel = abs(spec_u.period - slow.period) / slow.period
        agreement = "agree" if rel <= params.agreement_tol else "disagree"
        if agreement == "disagree":
            notes.append(
                f"slow: event ({slow.period:.4g}) and spectral ({spec_u.period:.4g}) periods "
                f"disagree by {100 * rel:.0f}% (> {100 * params.agreement_tol:.0f}%)"
            )
    nan = np.nan
    b1, b2 = h["beta1"], h["beta2"]
    slow_pred = 1.0 / (1.0 - b2)
    fast_pred = 1.0 / (1.0 - b1)
    linear = -1.0 / np.log(np.sqrt(b1)) if 0 < b1 < 1 else nan
    return {
        "n_bursts": len(bursts),
        "n_bursts_loss": len(loss_bursts),
        "slow_period": slow.period if slow.period is not None else nan,
        "slow_ci_lo": slow.ci[0] if slow.ci else nan,
        "slow_ci_hi": slow.ci[1] if slow.ci else nan,
        "slow_predicted": slow_pred,
        "slow_ratio": slow.period / slow_pred if slow.period is not None else nan,
        "spectral_period": spec.period if spec.period is not None else nan,
        "spectral_period_v": spec_v.period if spec_v.period is not None else nan,
        "spectral_period_update": spec_u.period if spec_u.period is not None else nan,
        "slow_disagreement": rel,
        "slow_agreement": agreement,
        "efold": ef.efold if ef.efold is not None else nan,
        "efold_ci_lo": ef.ci[0] if ef.ci else nan,
        "efold_ci_hi": ef.ci[1] if ef.ci else nan,
        "fast_predicted": fast_pred,
        "fast_ratio": ef.efold / fast_pred if ef.efold is not None else nan,
        "linear_prediction": linear,
        "flip_period": flip if flip is not None else nan,
        "efold_ratio_linear": ef.efold / linear if ef.efold is not None else nan,
        "flip_ratio": flip / fast_pred if flip is not None else nan,
        "flip_ratio_linear": flip / linear if flip is not None else nan,
        "v_slope": vd.slope if vd.slope is not None else nan,
        "v_slope_expected": float(np.log(b2)) if b2 > 0 else nan,
        "quiet_g2_over_v": g2v if g2v is not None else nan,
        "note": "; ".join(notes),
        "_bursts": bursts,
    }


#: Run labels copied into the result, for the grid test and the report.
_LABELS = ("beta1", "beta2", "precision", "seed", "hidden", "lr")


def analyze(
    ds: xr.Dataset, runs=None, *, progress=None, params: PeriodParams = PeriodParams()
) -> xr.Dataset:
    """Periods of the runs ``runs`` (all by default) of a store, as a Dataset over ``run``.

    Besides the variables of :data:`RESULT_VARIABLES` the result holds ``slow_agreement``
    (``agree``/``disagree``/empty), ``note`` (why a quantity is missing), the run labels
    (beta1, beta2, precision, seed, hidden, lr) and the bursts themselves as ``burst_onset``,
    ``burst_peak``, ``burst_end`` on ``(run, burst)`` (NaN-padded).
    """
    rows, bursts = [], []
    for run in iter_runs(ds, runs):
        row = analyze_run(run, params)
        bursts.append(row.pop("_bursts"))
        row.update({k: run.hyper[k] for k in _LABELS})
        row["run"] = run.run
        rows.append(row)
        if progress is not None:
            progress(1)
    return _to_dataset(rows, bursts, params)


def _to_dataset(rows: list[dict], bursts: list[Bursts], params: PeriodParams) -> xr.Dataset:
    run_index = np.array([r["run"] for r in rows], dtype=np.int64)
    data = {}
    for key in rows[0] if rows else list(RESULT_VARIABLES) + ["slow_agreement", "note"]:
        if key == "run":
            continue
        vals = [r[key] for r in rows]
        kind = object if isinstance(vals[0] if vals else 0.0, str) else None
        data[key] = ("run", np.array(vals, dtype=kind))
    n_max = max((len(b) for b in bursts), default=0)
    for name in ("onset", "peak", "end"):
        arr = np.full((len(bursts), n_max), np.nan)
        for i, b in enumerate(bursts):
            arr[i, : len(b)] = getattr(b, name)
        data[f"burst_{name}"] = (("run", "burst"), arr)
    out = xr.Dataset(data, coords={"run": run_index, "burst": np.arange(n_max)})
    for key, doc in RESULT_VARIABLES.items():
        if key in out:
            out[key].attrs["description"] = doc
    out.attrs["analysis"] = "periods"
    out.attrs["params"] = params_attr(params)
    return out


def _opt(r: xr.Dataset, key: str) -> float | None:
    """A number of the result, or None when absent (results written before the key existed)."""
    return finite_or_none(r[key]) if key in r else None


def _ci(lo, hi) -> list[float] | None:
    lo, hi = finite_or_none(lo), finite_or_none(hi)
    return None if lo is None or hi is None else [lo, hi]


def grid_test(result: xr.Dataset, params: PeriodParams = PeriodParams()) -> dict:
    """The grid test of :func:`grid_fit` on a period result, per precision.

    Returns ``{"slow": {...}, "fast": {...}}``. Each holds the pooled fit over all runs, with one
    intercept per (precision, beta1) for the slow period and per precision for the fast one, and
    ``by_precision``: the same fit within each precision, so float32 and float64 read apart.
    """
    prec = np.array([str(p) for p in result["precision"].values])
    beta1 = result["beta1"].values
    seed = result["seed"].values
    out = {}
    for kind, period, pred, grouping in (
        ("slow", "slow_period", "slow_predicted", "precision+beta1"),
        ("fast", "efold", "fast_predicted", "precision"),
    ):
        per = result[period].values
        prd = result[pred].values
        if kind == "slow":
            group = np.array([f"{p}|{b}" for p, b in zip(prec, beta1, strict=True)])
        else:
            group = prec
        fit = grid_fit(per, prd, seed, group, params)
        entry = _fit_dict(fit)
        entry["intercepts"] = grouping
        entry["by_precision"] = {}
        for p in sorted(set(prec)):
            m = prec == p
            sub = grid_fit(per[m], prd[m], seed[m], group[m], params)
            entry["by_precision"][p] = _fit_dict(sub)
        out[kind] = entry
    out["slow"]["agreement"] = _agreement_summary(result, params)
    out["fast"]["by_beta1"] = fast_by_beta1(result, params)
    return out


def _agreement_summary(result: xr.Dataset, params: PeriodParams) -> dict:
    """How many runs' event and spectral slow periods were compared, and which disagree."""
    if "slow_agreement" not in result:
        return {"tol": params.agreement_tol, "n_compared": 0, "n_disagree": 0, "runs": []}
    flag = np.array([str(a) for a in result["slow_agreement"].values])
    runs = [int(r) for r in result["run"].values[flag == "disagree"]]
    return {
        "tol": params.agreement_tol,
        "n_compared": int(np.count_nonzero(flag != "")),
        "n_disagree": len(runs),
        "runs": runs,
    }


#: Per-run fast ratios summarised per beta1: (report key, result variable).
FAST_RATIOS = (
    ("efold_over_predicted", "fast_ratio"),
    ("efold_over_linear", "efold_ratio_linear"),
    ("flip_over_predicted", "flip_ratio"),
    ("flip_over_linear", "flip_ratio_linear"),
)


def median_ci(x: np.ndarray, params: PeriodParams = PeriodParams()) -> dict:
    """Median of ``x`` (finite values) with a percentile bootstrap CI over its elements.

    ``scipy.stats.bootstrap`` resamples the values themselves, so each value must be one
    independent unit (here: one run). The CI is None with fewer than two values, or when every
    value is the same (no spread to resample).
    """
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    out = {"median": float(np.median(x)) if x.size else None, "ci": None, "n": int(x.size)}
    if x.size < 2 or np.all(x == x[0]):
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.bootstrap(
            (x,),
            np.median,
            n_resamples=params.n_boot,
            confidence_level=params.ci_level,
            method="percentile",
            rng=np.random.default_rng(params.seed),
        )
    lo, hi = res.confidence_interval
    out["ci"] = [float(lo), float(hi)]
    return out


def fast_by_beta1(result: xr.Dataset, params: PeriodParams = PeriodParams()) -> dict:
    """Per beta1 value: the fast ratios' medians over runs, each with a bootstrap CI over runs.

    Keys are ``str(beta1)``; each entry holds ``n_runs``, the two predictions
    (``1/(1-beta1)`` and ``-1/ln(sqrt(beta1))``) and, for each of :data:`FAST_RATIOS`,
    ``{"median", "ci", "n"}`` over the runs where the ratio was measured. Pooling over beta1
    would hide how the ratios move with beta1, which is what the claim is about.
    """
    beta1 = np.asarray(result["beta1"].values, dtype=np.float64)
    out = {}
    for b in np.unique(beta1[np.isfinite(beta1)]):
        m = beta1 == b
        entry = {
            "n_runs": int(np.count_nonzero(m)),
            "predicted": 1.0 / (1.0 - b) if b < 1 else None,
            "linear_prediction": -1.0 / np.log(np.sqrt(b)) if 0 < b < 1 else None,
        }
        for key, var in FAST_RATIOS:
            entry[key] = median_ci(result[var].values[m], params) if var in result else None
        out[str(float(b))] = entry
    return out


def _fit_dict(fit: GridFit) -> dict:
    d = {
        "slope": fit.slope,
        "ci": list(fit.ci) if fit.ci else None,
        "n_runs": fit.n_runs,
        "verdict": fit.verdict,
    }
    if fit.note:
        d["note"] = fit.note
    return d


def report(result: xr.Dataset, params: PeriodParams | None = None) -> dict:
    """Contract-4 fields: per run ``n_bursts``, ``slow``, ``fast``, ``v_decay``; and ``grid``.

    ``params`` default to those the result was computed with (its ``attrs["params"]``), so the
    grid test uses the bootstrap and agreement settings of the analysis.
    """
    params = params or params_from_result(result, PeriodParams)
    runs = {}
    for i, run in enumerate(result["run"].values):
        r = result.isel(run=i)
        note = str(r["note"].values)
        # notes are "section: reason"; each goes into the section whose value it explains
        by_section: dict[str, list[str]] = {}
        for part in filter(None, note.split("; ")):
            head, _, text = part.partition(": ")
            section = {"flip": "fast"}.get(head, head)
            by_section.setdefault(section, []).append(text if head != "flip" else part)
        entry = {
            "n_bursts": int(r["n_bursts"]),
            "n_bursts_loss": int(r["n_bursts_loss"]),
            "slow": {
                "predicted": float(r["slow_predicted"]),
                "period": finite_or_none(r["slow_period"]),
                "ci": _ci(r["slow_ci_lo"], r["slow_ci_hi"]),
                "ratio": finite_or_none(r["slow_ratio"]),
                "spectral_period": finite_or_none(r["spectral_period"]),
                "spectral_period_v": finite_or_none(r["spectral_period_v"]),
                "spectral_period_update": _opt(r, "spectral_period_update"),
                "disagreement": _opt(r, "slow_disagreement"),
                "agreement": str(r["slow_agreement"].values) or None,
            },
            "fast": {
                "predicted": float(r["fast_predicted"]),
                "efold": finite_or_none(r["efold"]),
                "ci": _ci(r["efold_ci_lo"], r["efold_ci_hi"]),
                "ratio": finite_or_none(r["fast_ratio"]),
                "linear_prediction": finite_or_none(r["linear_prediction"]),
                "flip_period": finite_or_none(r["flip_period"]),
                "ratio_linear": _opt(r, "efold_ratio_linear"),
                "flip_ratio": _opt(r, "flip_ratio"),
                "flip_ratio_linear": _opt(r, "flip_ratio_linear"),
            },
            "v_decay": {
                "slope": finite_or_none(r["v_slope"]),
                "expected": finite_or_none(r["v_slope_expected"]),
                "quiet_g2_over_v": finite_or_none(r["quiet_g2_over_v"]),
            },
        }
        for section, texts in by_section.items():
            if section in entry:
                entry[section]["note"] = "; ".join(texts)
        if note:
            entry["note"] = note
        runs[int(run)] = entry
    return {"runs": runs, "grid": grid_test(result, params)}


def figures(ds: xr.Dataset, result: xr.Dataset, outdir, runs=None, max_runs: int = 6) -> list:
    """Draw the store figure (measured against predicted periods) and per-run figures.

    Per-run figures are drawn for ``runs`` (default: the ``max_runs`` runs with the most bursts).
    Returns the paths written.
    """
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    paths = [_figure_grid(result, outdir, plt)]
    if runs is None:
        order = np.argsort(-result["n_bursts"].values, kind="stable")[:max_runs]
        runs = [int(result["run"].values[i]) for i in order]
    for run in runs:
        paths.append(_figure_run(ds, result.sel(run=run), outdir, plt))
    return paths


def _figure_grid(result: xr.Dataset, outdir, plt):
    """Measured against predicted periods on log-log axes, with CIs and the line y = x."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    precisions = sorted({str(p) for p in result["precision"].values})
    colours = dict(zip(precisions, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    for ax, (kind, per, lo, hi, pred, title) in zip(
        axes,
        (
            ("slow", "slow_period", "slow_ci_lo", "slow_ci_hi", "slow_predicted", "1/(1-beta2)"),
            ("fast", "efold", "efold_ci_lo", "efold_ci_hi", "fast_predicted", "1/(1-beta1)"),
        ),
        strict=True,
    ):
        allv = []
        for p in precisions:
            m = np.array([str(x) == p for x in result["precision"].values])
            x = result[pred].values[m]
            y = result[per].values[m]
            ok = np.isfinite(y)
            if not ok.any():
                continue
            err = np.vstack([y[ok] - result[lo].values[m][ok], result[hi].values[m][ok] - y[ok]])
            err = np.where(np.isfinite(err), np.maximum(err, 0), 0)
            # jitter x slightly per precision so that overlapping CIs stay visible
            shift = 1.0 + 0.03 * (precisions.index(p) - (len(precisions) - 1) / 2)
            ax.errorbar(x[ok] * shift, y[ok], yerr=err, fmt="o", ms=4, capsize=2, label=p,
                        color=colours[p])  # fmt: skip
            allv.extend([*x[ok], *y[ok]])
        if allv:
            a, b = min(allv) / 2, max(allv) * 2
            ax.plot([a, b], [a, b], "k--", lw=1, label="y = x")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"predicted: {title} (steps)")
        ax.set_ylabel(f"measured {'slow period' if kind == 'slow' else 'e-folding time'} (steps)")
        ax.set_title(f"{kind} component")
        ax.legend(fontsize=8)
    thin_log_ticks(fig)
    fig.tight_layout()
    path = outdir / "periods_grid.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _figure_run(ds: xr.Dataset, r: xr.Dataset, outdir, plt):
    """Loss with bursts marked, v with the fitted decay, spectrum with the predicted periods."""
    run = RunData(ds, int(r["run"]))
    fig, axes = plt.subplots(3, 1, figsize=(10, 9))
    it, loss = run.iteration, run.train_loss
    ax = axes[0]
    ax.semilogy(it, loss, lw=0.6, color="C0")
    onsets = r["burst_onset"].values
    onsets = onsets[np.isfinite(onsets)]
    # one collection for all onsets: an axvline each (thousands in a long run) cost seconds a page
    ax.vlines(onsets, 0, 1, transform=ax.get_xaxis_transform(), color="C3", lw=0.4, alpha=0.5)
    ax.set_ylabel("loss")
    ax.set_title(
        f"run {run.run}: {run.hyper['precision']} {run.hyper['hidden']} beta1={run.hyper['beta1']}"
        f" beta2={run.hyper['beta2']} lr={run.hyper['lr']} seed={run.hyper['seed']}"
        f" ({len(onsets)} bursts, red)"
    )
    ax = axes[1]
    v = run.v
    positive = np.all(v > 0, axis=0) if v.size else np.zeros(0, bool)
    if np.any(positive):
        logv = np.log(v[:, positive]).mean(axis=1)
        ax.plot(run.step, logv, lw=0.6, color="C1", label="mean log v")
        slope = float(r["v_slope"])
        expected = float(r["v_slope_expected"])
        if np.isfinite(slope) and onsets.size >= 2:
            # draw the fitted and the predicted decay over one quiet stretch after a burst
            ends = r["burst_end"].values
            k = len(onsets) // 2
            t0 = ends[k - 1] if k >= 1 else onsets[0]
            t1 = onsets[k]
            sel = (run.step >= t0) & (run.step <= t1)
            if sel.any():
                ts = run.step[sel]
                y0 = logv[sel][0]
                ax.plot(ts, y0 + slope * (ts - ts[0]), "k-", lw=1.5,
                        label=f"fitted slope {slope:.3g}/step")  # fmt: skip
                ax.plot(ts, y0 + expected * (ts - ts[0]), "k:", lw=1.5,
                        label=f"ln(beta2) = {expected:.3g}/step")  # fmt: skip
        ax.legend(fontsize=8)
    ax.set_ylabel("log v (mean over recorded params)")
    ax.set_xlabel("step")
    ax = axes[2]
    t0 = onsets[0] if onsets.size else 0
    spec = spectral_period(np.log(np.maximum(loss[it >= t0], np.finfo(float).tiny)))
    if spec.freq.size:
        ax.loglog(1.0 / spec.freq[1:], spec.power[1:], lw=0.8, color="C0", label="Welch, log loss")
        for val, style, lab in (
            (float(r["slow_predicted"]), "--", "1/(1-beta2)"),
            (float(r["fast_predicted"]), ":", "1/(1-beta1)"),
            (float(r["slow_period"]), "-", "event slow period"),
        ):
            if np.isfinite(val):
                ax.axvline(val, color="k", ls=style, lw=1, label=f"{lab} = {val:.4g}")
        ax.legend(fontsize=8)
    ax.set_xlabel("period (steps)")
    ax.set_ylabel("power density")
    thin_log_ticks(fig)
    fig.tight_layout()
    path = outdir / f"periods_run{run.run:04d}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# -------------------------------------------------------------------------------- declaration


def _run_defaults(entry) -> dict:
    """Contract-4 per-run sections before measuring: the predictions, every measurement null."""
    beta1, beta2 = float(entry["beta1"]), float(entry["beta2"])
    linear = -1.0 / math.log(math.sqrt(beta1)) if 0 < beta1 < 1 else (0.0 if beta1 <= 0 else None)
    return {
        "n_bursts": None,
        "slow": {
            "predicted": 1.0 / (1.0 - beta2) if beta2 != 1 else None,
            "period": None,
            "ci": None,
            "ratio": None,
            "spectral_period": None,
            "note": None,
        },
        "fast": {
            "predicted": 1.0 / (1.0 - beta1) if beta1 != 1 else None,
            "efold": None,
            "ci": None,
            "ratio": None,
            "linear_prediction": linear,
            "flip_period": None,
            "note": None,
        },
        "v_decay": {
            "slope": None,
            "expected": math.log(beta2) if beta2 > 0 else None,
            "note": None,
        },
    }


def _grid_default(why: str) -> dict:
    test = {"slope": None, "ci": None, "n_runs": 0, "verdict": "not run", "note": why}
    return {"grid": {"slow": dict(test), "fast": dict(test)}}


def _caption_run(doc, m) -> str:
    run = int(m.group(1))
    return (
        f"{describe_run(doc, run)}: chosen as one of the runs with the most bursts "
        f"({run_entry(doc, run).get('n_bursts', '?')}). Top: loss with burst onsets (red), whose "
        "spacing is the slow period; middle: log v against the fitted slope and ln(beta2); "
        "bottom: the spectrum against the predicted periods."
    )


ANALYSIS = Analysis(
    name="periods",
    analyze=analyze,
    report=report,
    draw=figures,
    params=PeriodParams,
    summary="slow and fast periods of the bursts against 1/(1-beta2) and 1/(1-beta1)",
    needs=Needs(
        variables=("update_norm", "train_loss", "theta", "v", "grad_norm"),
        without="update_norm and train_loss are derived from consecutive rows; otherwise the "
        "run is marked with the reason",
    ),
    fields=(
        Field("n_bursts", "count", "bursts of the update norm found by the periods analysis",
              "count", required=True),
        Field("slow.predicted", "steps",
              "predicted slow period, Adam's second-moment memory 1/(1-beta2)", required=True),
        Field("slow.period", "steps", "median interval between successive burst onsets",
              required=True),
        Field("slow.ci", "steps", "bootstrap confidence interval of the slow period", "ci",
              required=True),
        Field("slow.ratio", "x",
              "slow period divided by the prediction 1/(1-beta2); 1 means the prediction holds",
              required=True),
        Field("slow.spectral_period", "steps",
              "period at the Welch spectral peak of the log loss (a cross-check of the slow "
              "period)", required=True),
        Field("fast.predicted", "steps", "predicted fast e-folding time 1/(1-beta1)",
              required=True),
        Field("fast.efold", "steps",
              "e-folding time of the flip amplitude's decay inside a burst (median over bursts); "
              "predicted 1/(1-beta1)", required=True),
        Field("fast.ci", "steps", "bootstrap confidence interval of the fast efold", "ci",
              required=True),
        Field("fast.ratio", "x", "fast efold divided by the prediction 1/(1-beta1)",
              required=True),
        Field("fast.linear_prediction", "steps",
              "e-folding time of the linearised momentum, -1/ln(sqrt(beta1))", required=True),
        Field("fast.flip_period", "steps",
              "dominant period of the parameter changes inside a burst (median over bursts)",
              required=True),
        Field("v_decay.slope", "1/step", "median slope of log v per step between bursts",
              required=True),
        Field("v_decay.expected", "1/step",
              "expected v slope: v decays by beta2 per step without new gradient", required=True),
        Field("grid.slow.slope", "",
              "slope of log slow period on log 1/(1-beta2) across runs; 1 means the prediction "
              "holds", required=True, place="report"),
        Field("grid.slow.ci", "", "seed-bootstrap confidence interval of the slow grid slope",
              "ci", required=True, place="report"),
        Field("grid.slow.n_runs", "count", "runs in the slow grid fit", "count", required=True,
              place="report"),
        Field("grid.slow.verdict", "", "whether the slow periods follow 1/(1-beta2)", "str",
              required=True, place="report"),
        Field("grid.fast.slope", "",
              "slope of log fast efold on log 1/(1-beta1) across runs; 1 means the prediction "
              "holds", required=True, place="report"),
        Field("grid.fast.ci", "", "seed-bootstrap confidence interval of the fast grid slope",
              "ci", required=True, place="report"),
        Field("grid.fast.n_runs", "count", "runs in the fast grid fit", "count", required=True,
              place="report"),
        Field("grid.fast.verdict", "", "whether the fast efolds follow 1/(1-beta1)", "str",
              required=True, place="report"),
    ),
    columns=(
        Column("bursts", "n_bursts", default=True),
        Column("slow period", "slow.period", default=True),
        Column("slow ratio", "slow.ratio", default=True),
        Column("fast efold", "fast.efold", default=True),
        Column("slow CI", "slow.ci"),
        Column("1/(1-beta2)", "slow.predicted"),
        Column("spectral period", "slow.spectral_period"),
        Column("fast ratio", "fast.ratio"),
        Column("flip period", "fast.flip_period"),
        Column("v slope", "v_decay.slope"),
        Column("ln(beta2)", "v_decay.expected"),
    ),
    figures=(
        Figure(
            "periods_grid",
            "Measured against predicted periods, log-log, one point per run with its CI. Points "
            "on the dashed line y = x agree with the prediction; a slope across the grid below 1 "
            "means the measured period grows more slowly than predicted.",
        ),
        Figure(r"periods_run0*(\d+)", _caption_run),
    ),
    sections=("grid",),
    run_defaults=_run_defaults,
    section_defaults=_grid_default,
)  # fmt: skip
