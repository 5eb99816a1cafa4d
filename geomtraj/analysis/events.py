"""Burst (event) detection on per-step signals: the update norm or the log loss.

A burst (docs/science.md, "Operational definitions") is one spike of the signal: a rise well above
the quiet level around it, counted once. ``BurstParams()`` is the one definition that every
analysis uses (periods, spirals, stability, twins, early warning, report figures); it finds bursts
as the spikes of the smoothed log signal by topographic prominence and needs no baseline
(docs/periods.md explains why). Detection works on ``y = log(signal)``:

1. ``s`` is ``y`` smoothed by a centred moving average of :attr:`BurstParams.smooth` samples, which
   averages out the period-2 flip and sample noise;
2. a burst is a peak of ``s`` whose topographic prominence (``scipy.signal.find_peaks``: its height
   above the higher of the two lowest points that separate it from a higher peak) is at least the
   ``on`` level, ``max(log(on_factor), noise_z * sigma)``, where ``sigma`` is the white-noise level
   of ``y``, the robust spread of its step-to-step differences
   ``1.4826 * MAD(diff(y)) / sqrt(2)``: it measures sample-to-sample noise and is blind to the
   slow rise and fall of a relaxation oscillation, whose bursts are the signal;
3. its onset is the last sample before the peak at which ``s`` lay within
   :attr:`~BurstParams.rise_fraction` of the rise above the trough since the previous burst (or
   within ``off_z * sigma``, if more, so that noise on a flat quiet level does not place it
   early); its end the last sample before ``s`` falls back to the same level above the next
   trough; its peak is the maximum of ``y`` in between. A burst's end always lies before the next
   burst's onset. Where bursts are dense and each decays straight into the next (beta2 = 0.99), a
   burst spans most of its interval and the quiet stretches are short.

The former definition, ``method="threshold"``, is kept as an option:

1. the baseline is the centred rolling median of ``y`` over :attr:`BurstParams.baseline_window`
   steps (robust to the bursts themselves as long as they fill less than half the window);
2. the excess ``r = y - baseline`` is compared with two levels, ``on`` and ``off``, each the larger
   of a fixed factor over the median (``log(on_factor)``, ``log(off_factor)``) and a multiple of the
   white-noise level (``noise_z * sigma``, ``off_z * sigma``);
3. a burst is triggered when ``r`` stays above ``on`` for :attr:`~BurstParams.min_duration`
   steps; its onset is where ``r`` last rose above ``off`` before that, its end is where ``r``
   falls back below ``off``, its peak is the maximum of ``r`` in between. Bursts closer than
   :attr:`~BurstParams.merge_gap` steps are merged.

With dense spikes (Adam with beta2 = 0.99 bursts every ~50 steps and each burst decays straight into
the next) the rolling median sits on top of the spikes, so the threshold method misses most of
them and what it finds depends on the window; the prominence of a spike does not. With either
method ``log_baseline`` is the rolling median, which the e-folding fit and the early-warning
``burst_amplitude`` use as the quiet level.

Non-finite values (diverged runs) end the analysed signal: everything from the first NaN or inf on
is ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy import ndimage
from scipy import signal as sps

from geomtraj.analysis.base import derived
from geomtraj.analysis.kernels.burst_scan import _hysteresis_events, _rise_bounds
from geomtraj.errors import GeomtrajError

#: Burst detection methods (:attr:`BurstParams.method`).
METHODS = ("threshold", "prominence")


@dataclass(frozen=True)
class BurstParams:
    """Thresholds of burst detection, with their defaults.

    Attributes
    ----------
    baseline_window : int
        Width, in samples, of the centred rolling median (default 501): ``log_baseline``, and the
        baseline of the threshold method, for which it must be several times longer than one
        burst (a burst of Adam with beta1 = 0.9 lasts a few tens of steps) so that bursts do not
        drag the median up, and shorter than the slow drift of the quiet level. Rounded up to an
        odd number.
    on_factor : float
        A burst needs a spike of the smoothed signal by at least a factor ``on_factor`` above the
        troughs that separate it from higher spikes (prominence), or, with the threshold method,
        the signal above ``on_factor`` times its rolling median (default 4: a clear jump, beyond
        the step-to-step spread of update norms in quiet phases).
    off_factor : float
        Threshold method only: a burst ends when the signal falls below ``off_factor`` times the
        median (default 2). The gap between ``on`` and ``off`` is the hysteresis that counts one
        burst once.
    noise_z : float
        The ``on`` level is at least ``noise_z`` times the white-noise level of the log signal
        (default 5). White noise of the log gives no bursts (the largest prominence of its smoothed
        values over 50,000 samples is about 3.8 sigma; docs/periods.md). A log signal that itself
        wanders like a random walk is not covered by this guard: its slow excursions acquire
        prominences above ``log(on_factor)``.
    off_z : float
        The onset and end levels lie at least ``off_z`` times the white-noise level above the
        trough (threshold method: the ``off`` level is at least that; default 2).
    min_duration : int
        Threshold method only: consecutive samples above ``on`` needed to trigger a burst
        (default 3): a single outlier is not a burst, while a flip of Adam keeps the update norm
        high on every step.
    merge_gap : int
        Threshold method only: bursts separated by fewer than this many samples below ``off``
        count as one (default 5).
    floor : float
        Values below ``floor`` are raised to it before taking logs (an exact zero update would
        otherwise give ``-inf``).
    method : str
        ``"prominence"`` (default, the definition of a burst for every analysis: spikes of the
        smoothed log signal by prominence; see the module) or ``"threshold"`` (the former
        definition: the excess over the rolling median, with hysteresis). With
        ``"prominence"``, ``off_factor``, ``min_duration`` and ``merge_gap`` are unused
        and ``baseline_window`` only sets ``log_baseline``.
    smooth : int
        Width of the centred moving average applied before the prominence search (default 5:
        long enough to average out the period-2 flip and sample noise, short against the slow
        period of 20 steps or more).
    rise_fraction : float
        Where a spike's onset and end are placed, as a fraction of its rise above the neighbouring
        trough (default 0.1: the onset is where the last 90% of the rise begins).
    """

    baseline_window: int = 501
    on_factor: float = 4.0
    off_factor: float = 2.0
    noise_z: float = 5.0
    off_z: float = 2.0
    min_duration: int = 3
    merge_gap: int = 5
    floor: float = 1e-300
    method: str = "prominence"
    smooth: int = 5
    rise_fraction: float = 0.1

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise GeomtrajError(f"method={self.method!r}; expected one of {METHODS}")
        if self.smooth < 1 or not 0.0 <= self.rise_fraction < 1.0:
            raise GeomtrajError(
                f"smooth={self.smooth}, rise_fraction={self.rise_fraction}; "
                "expected smooth >= 1 and 0 <= rise_fraction < 1"
            )
        if self.baseline_window < 3:
            raise GeomtrajError(f"baseline_window={self.baseline_window}; expected >= 3 samples")
        if not self.on_factor > self.off_factor >= 1.0:
            raise GeomtrajError(
                f"on_factor={self.on_factor}, off_factor={self.off_factor}; expected "
                "on_factor > off_factor >= 1 (the gap is the hysteresis)"
            )
        if self.noise_z <= self.off_z or self.off_z < 0:
            raise GeomtrajError(
                f"noise_z={self.noise_z}, off_z={self.off_z}; expected noise_z > off_z >= 0"
            )
        if self.min_duration < 1 or self.merge_gap < 0:
            raise GeomtrajError(
                f"min_duration={self.min_duration}, merge_gap={self.merge_gap}; "
                "expected min_duration >= 1 and merge_gap >= 0"
            )


@dataclass(frozen=True)
class Bursts:
    """Bursts found in one signal.

    Attributes
    ----------
    onset, peak, end : ndarray of int64
        Steps (or sample indices when no steps were given) of each burst's onset, peak and last
        step (inclusive).
    steps : ndarray of int64
        The steps of the analysed samples (finite prefix of the signal).
    log_signal : ndarray of float64
        The log signal, per analysed sample.
    baseline_half : int
        Half width of the baseline window, in samples.
    log_baseline : ndarray of float64
        The rolling median of the log signal, per analysed sample (computed on first use: the
        prominence detector does not need it, and a count of bursts never reads it).
    on_level, off_level : float
        The two thresholds on the log excess that were applied.
    sigma : float
        White-noise level of the log signal (robust spread of its differences over sqrt(2)).
    """

    onset: np.ndarray
    peak: np.ndarray
    end: np.ndarray
    steps: np.ndarray
    log_signal: np.ndarray
    baseline_half: int
    on_level: float
    off_level: float
    sigma: float

    @cached_property
    def log_baseline(self) -> np.ndarray:
        y = self.log_signal
        base = _clipped_median(y, self.baseline_half) if y.size else np.zeros(0)
        base.flags.writeable = y.flags.writeable  # read-only when the bursts are shared
        return base

    def __len__(self) -> int:
        return int(self.onset.size)

    @property
    def last_step(self) -> int | None:
        """Last analysed step (None for an empty signal)."""
        return int(self.steps[-1]) if self.steps.size else None

    def mask(self, steps: np.ndarray) -> np.ndarray:
        """True at each of ``steps`` that lies inside a burst (onset to end, inclusive)."""
        steps = np.asarray(steps)
        inside = np.zeros(steps.shape, dtype=bool)
        for a, b in zip(self.onset, self.end, strict=True):
            inside |= (steps >= a) & (steps <= b)
        return inside

    def intervals(self) -> np.ndarray:
        """Steps between successive onsets."""
        return np.diff(self.onset)


def finite_prefix(signal: np.ndarray) -> int:
    """Number of leading finite values of ``signal`` (analysis stops at the first NaN or inf)."""
    bad = np.flatnonzero(~np.isfinite(signal))
    return int(bad[0]) if bad.size else int(signal.size)


def white_noise_level(y: np.ndarray) -> float:
    """Robust standard deviation of the sample-to-sample noise of ``y``.

    ``1.4826 * MAD(diff(y)) / sqrt(2)``: for white noise of standard deviation s this estimates s,
    while smooth structure (trends, slow oscillations, bursts that rise over several samples)
    hardly moves it.
    """
    if y.size < 3:
        return 0.0
    d = np.diff(y)
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / np.sqrt(2.0))


def rolling_median(y: np.ndarray, window: int) -> np.ndarray:
    """Centred rolling median of a finite 1-D array over ``window`` samples (clipped at ends)."""
    y = np.ascontiguousarray(y, dtype=np.float64)
    if y.ndim != 1:
        raise GeomtrajError(f"rolling_median needs a 1-D array, got shape {y.shape}")
    if not np.all(np.isfinite(y)):
        raise GeomtrajError("rolling_median needs finite values; cut the signal at its first NaN")
    return _clipped_median(y, int(window) // 2)


def _clipped_median(y: np.ndarray, half: int) -> np.ndarray:
    """Exact rolling median over ``[i-half, i+half]`` clipped to the array, in O(n log w).

    The interior is ``scipy.ndimage.median_filter`` (an exact rank filter, fastest here); its
    edge modes pad rather than clip, so the ``half`` samples at each end, whose windows are
    clipped, come from pandas' rolling median (``min_periods=1`` clips) run on the first and last
    ``2 * half`` samples only. Both are exact, so the result equals ``numpy.median`` of each
    clipped window bit for bit (tested).
    """
    n = y.size
    if n <= 2 * half + 1:
        return _pandas_clipped_median(y, half)
    out = ndimage.median_filter(y, size=2 * half + 1, mode="nearest")
    m = min(n, 2 * half)
    out[:half] = _pandas_clipped_median(y[:m], half)[:half]
    out[n - half :] = _pandas_clipped_median(y[n - m :], half)[m - half :]
    return out


def _pandas_clipped_median(y: np.ndarray, half: int) -> np.ndarray:
    import pandas as pd

    rolling = pd.Series(y).rolling(2 * half + 1, center=True, min_periods=1)
    return rolling.median().to_numpy(dtype=np.float64)


def detect_bursts(
    signal: np.ndarray, steps: np.ndarray | None = None, params: BurstParams = BurstParams()
) -> Bursts:
    """Find bursts in a positive per-step signal (update norm, or loss).

    Parameters
    ----------
    signal : array_like, 1-D
        Positive values, one per step. Analysis stops at the first non-finite value.
    steps : array_like of int, optional
        The step of each sample (default: sample indices).
    params : BurstParams
        Thresholds.

    Returns
    -------
    Bursts
    """
    x = np.asarray(signal, dtype=np.float64)
    if x.ndim != 1:
        raise GeomtrajError(f"detect_bursts needs a 1-D signal, got shape {x.shape}")
    if steps is None:
        steps = np.arange(x.size, dtype=np.int64)
    steps = np.asarray(steps, dtype=np.int64)
    if steps.shape != x.shape:
        raise GeomtrajError(f"steps has shape {steps.shape}, signal has shape {x.shape}")
    n = finite_prefix(x)
    x, steps = x[:n], steps[:n]
    if np.any(x < 0):
        raise GeomtrajError("detect_bursts needs a non-negative signal (a norm or a loss)")
    y = np.log(np.maximum(x, params.floor))
    half = params.baseline_window // 2
    sigma = white_noise_level(y)
    on = max(np.log(params.on_factor), params.noise_z * sigma)
    off = max(np.log(params.off_factor), params.off_z * sigma)
    base = None
    if params.method == "prominence":
        on_i, peak_i, end_i = _prominence_events(y, on, params.off_z * sigma, params)
    else:
        base = _clipped_median(y, half) if n else np.zeros(0)
        on_i, peak_i, end_i = _hysteresis_events(
            y - base, on, off, int(params.min_duration), int(params.merge_gap)
        )
    if on_i.size and on_i[0] == 0:
        on_i, peak_i, end_i = on_i[1:], peak_i[1:], end_i[1:]
    out = Bursts(
        onset=steps[on_i],
        peak=steps[peak_i],
        end=steps[end_i],
        steps=steps,
        log_signal=y,
        baseline_half=half,
        on_level=float(on),
        off_level=float(off),
        sigma=sigma,
    )
    if base is not None:  # computed already: the cached property's value
        out.__dict__["log_baseline"] = base
    return out


def smooth_log(y: np.ndarray, width: int) -> np.ndarray:
    """Centred moving average of ``y`` over ``width`` samples (edges: nearest value repeated)."""
    if width <= 1 or y.size == 0:
        return np.asarray(y, dtype=np.float64)
    return ndimage.uniform_filter1d(np.asarray(y, dtype=np.float64), int(width), mode="nearest")


def _prominence_events(
    y: np.ndarray, on: float, margin: float, params: BurstParams
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Onset, peak and end indices of the spikes of ``y`` with prominence ``>= on`` (smoothed)."""
    empty = np.zeros(0, dtype=np.int64)
    if y.size < 3:
        return empty, empty, empty
    s = smooth_log(y, params.smooth)
    peaks, _ = sps.find_peaks(s, prominence=on)
    if peaks.size == 0:
        return empty, empty, empty
    onset, end = _rise_bounds(s, peaks.astype(np.int64), float(params.rise_fraction), margin)
    # the peak of the raw log signal inside each burst (the smoothed peak lags or leads it)
    peak = np.array([a + int(np.argmax(y[a : e + 1])) for a, e in zip(onset, end, strict=True)],
                    dtype=np.int64)  # fmt: skip
    return onset, peak, end


#: Per-step signals of a run that bursts can be detected on.
SIGNALS = ("update_norm", "train_loss")


def run_bursts(run, signal: str = "update_norm", params: BurstParams = BurstParams()) -> Bursts:
    """Bursts of one run (:class:`geomtraj.analysis.base.RunData`) on a per-step signal.

    ``signal`` is ``"update_norm"`` (default: ``||theta_t - theta_{t-1}||``) or ``"train_loss"``.
    Steps are optimizer steps; a diverged run is analysed up to its divergence step.
    """
    if signal not in SIGNALS:
        raise GeomtrajError(f"unknown burst signal {signal!r}; expected one of {SIGNALS}")
    # several analyses of a block ask for the same run's bursts: detect them once
    return derived(
        run, signal, ("bursts", params),
        lambda: detect_bursts(getattr(run, signal), run.iteration, params),
    )  # fmt: skip
