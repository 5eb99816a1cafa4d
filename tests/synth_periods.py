"""Synthetic trajectories with known slow period, envelope e-folding time and v decay rate.

``relaxation_oscillation`` builds what docs/science.md (The mechanism) describes, with every rate
given:

- burst onsets separated by ``slow_period`` steps, each interval jittered uniformly by
  ``+-jitter`` (relative);
- in each burst the parameters flip with period 2 along a random direction; the flip amplitude rises
  exponentially over ``rise`` steps to its peak, then decays with e-folding time ``efold``;
- between bursts the parameters take small random steps (the quiet background);
- Adam's second moment follows its recursion ``v_t = beta2*v_{t-1} + (1-beta2)*g_t**2`` with
  gradients proportional to the flip displacement plus a tiny floor, so that between bursts
  ``log v`` falls with slope ``ln(beta2)``;
- the loss is a quadratic in the flip displacement over a noisy floor.

``noise_trajectory`` and ``random_walk_trajectory`` are the nulls: no bursts exist in them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Trajectory:
    """Per-step arrays of a synthetic run (steps 1..n)."""

    steps: np.ndarray
    theta: np.ndarray  # (n, n_params)
    m: np.ndarray  # (n, n_params), Adam's first moment with beta1 = 0.9
    v: np.ndarray  # (n, n_params)
    update_norm: np.ndarray  # ||theta_t - theta_{t-1}||
    loss: np.ndarray
    onsets: np.ndarray  # true burst onsets (empty for nulls)


def _first_moment(grad: np.ndarray, beta1: float = 0.9) -> np.ndarray:
    m = np.empty_like(grad)
    acc = np.zeros(grad.shape[1])
    for i in range(grad.shape[0]):
        acc = beta1 * acc + (1.0 - beta1) * grad[i]
        m[i] = acc
    return m


def _finish(theta, theta0, grad, v, loss, onsets) -> Trajectory:
    n = theta.shape[0]
    prev = np.vstack([theta0[None, :], theta[:-1]])
    un = np.linalg.norm(theta - prev, axis=1)
    m = _first_moment(grad)
    return Trajectory(
        np.arange(1, n + 1), theta, m, v, un, loss, np.asarray(onsets, dtype=np.int64)
    )


def relaxation_oscillation(
    n_steps: int = 30_000,
    slow_period: float = 1000.0,
    efold: float = 20.0,
    beta2: float = 0.999,
    jitter: float = 0.1,
    rise: float = 4.0,
    peak_ratio: float = 200.0,
    quiet_step: float = 1e-4,
    n_params: int = 8,
    seed: int = 0,
) -> Trajectory:
    """A relaxation oscillation with known slow period, e-folding time and v decay (see module)."""
    rng = np.random.default_rng(seed)
    t = np.arange(1, n_steps + 1, dtype=np.float64)
    onsets = []
    s = 0.5 * slow_period
    while s < n_steps - 2 * efold * 10:
        onsets.append(int(round(s)))
        s += slow_period * (1.0 + jitter * rng.uniform(-1.0, 1.0))
    amplitude = np.zeros(n_steps)
    direction = rng.normal(size=n_params)
    direction /= np.linalg.norm(direction)
    # the flip moves theta by 2*a per step; its peak is `peak_ratio` times the quiet update norm
    quiet_norm = quiet_step * np.sqrt(n_params)
    a_peak = 0.5 * peak_ratio * quiet_norm
    # the flip starts from the quiet level and grows by e every `rise` steps up to the peak
    rise_len = int(np.ceil(rise * np.log(peak_ratio)))
    for o in onsets:
        p = o + rise_len
        up = (t >= o) & (t < p)
        amplitude[up] = a_peak * np.exp((t[up] - p) / rise)
        down = (t >= p) & (t < p + 12 * efold)
        amplitude[down] = np.maximum(amplitude[down], a_peak * np.exp(-(t[down] - p) / efold))
    sign = np.where(np.arange(n_steps) % 2 == 0, 1.0, -1.0)
    background = np.cumsum(rng.normal(0.0, quiet_step, size=(n_steps, n_params)), axis=0)
    flip = (amplitude * sign)[:, None] * direction[None, :]
    theta = background + flip
    theta0 = np.zeros(n_params)
    # Adam's v recursion with gradients of a unit-curvature quadratic along the flip direction
    grad = flip + rng.normal(0.0, 1e-12, size=flip.shape)
    v = np.empty_like(grad)
    acc = np.full(n_params, (a_peak**2) * 1e-3)
    for i in range(n_steps):
        acc = beta2 * acc + (1.0 - beta2) * grad[i] ** 2
        v[i] = acc
    loss = 1e-3 * np.exp(rng.normal(0.0, 0.01, n_steps)) + 0.5 * amplitude**2
    return _finish(theta, theta0, grad, v, loss, onsets)


def noise_trajectory(
    n_steps: int = 30_000, n_params: int = 8, scale: float = 1e-3, seed: int = 0
) -> Trajectory:
    """Parameters that jitter around a fixed point with white noise (no bursts)."""
    rng = np.random.default_rng(seed)
    theta = rng.normal(0.0, scale, size=(n_steps, n_params))
    v = np.abs(rng.normal(1e-6, 1e-7, size=(n_steps, n_params)))
    loss = 1e-2 + (theta**2).sum(axis=1)
    return _finish(theta, np.zeros(n_params), theta, v, loss, [])


def random_walk_trajectory(
    n_steps: int = 30_000, n_params: int = 8, step: float = 1e-3, seed: int = 0
) -> Trajectory:
    """Parameters that random-walk, with the loss of a quadratic bowl around the origin."""
    rng = np.random.default_rng(seed)
    theta = np.cumsum(rng.normal(0.0, step, size=(n_steps, n_params)), axis=0)
    v = np.abs(rng.normal(1e-6, 1e-7, size=(n_steps, n_params)))
    loss = 1e-2 + (theta**2).sum(axis=1)
    return _finish(theta, np.zeros(n_params), theta, v, loss, [])


# --------------------------------------------------------------------------------------------------
# independent slow-period estimate and spike trains with known periods
# --------------------------------------------------------------------------------------------------


def spike_spacing_period(
    update_norm: np.ndarray, sigma: float = 2.0, prominence: float = 1.0, skip: int = 0
) -> float:
    """Median spacing of the spikes of the smoothed log update norm: an independent slow period.

    Independent of the burst detector by construction: a Gaussian smoothing (``sigma`` steps)
    rather than a moving average, a fixed prominence of one e-fold rather than the detector's
    ``on`` level, peaks rather than onsets, and no baseline. The first ``skip`` steps are left out.
    """
    from scipy import ndimage
    from scipy import signal as sps

    y = np.log(np.maximum(np.asarray(update_norm, dtype=np.float64)[skip:], 1e-300))
    y = y[: np.flatnonzero(~np.isfinite(y))[0]] if not np.all(np.isfinite(y)) else y
    peaks, _ = sps.find_peaks(ndimage.gaussian_filter1d(y, sigma), prominence=prominence)
    return float(np.median(np.diff(peaks))) if peaks.size > 4 else float("nan")


def spike_train(
    n_steps: int,
    period: float,
    regime: str = "sparse",
    noise: float = 0.3,
    height: float = 3.0,
    jitter: float = 0.2,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """An update-norm series of bursts with known onsets, dense or sparse, with log-normal noise.

    Each burst rises linearly in ``log`` by ``height`` (natural-log units) over ``rise`` steps and
    then decays exponentially. ``regime="sparse"`` decays within a quarter of the period and leaves
    a flat quiet level; ``"dense"`` decays over the whole interval, straight into the next rise
    (the sawtooth of Adam at beta2 = 0.99). Intervals are ``period`` times ``1 + jitter*U(-1, 1)``;
    ``noise`` is the standard deviation of white noise added to the log. Returns
    ``(update_norm, onsets)``.
    """
    if regime not in ("sparse", "dense"):
        raise ValueError(f"regime={regime!r}; expected 'sparse' or 'dense'")
    rng = np.random.default_rng(seed)
    rise = max(2.0, 0.1 * period)
    logu = np.zeros(n_steps)
    onsets = []
    s = float(rng.uniform(0.2, 0.8) * period)
    while s < n_steps:
        onsets.append(int(round(s)))
        s += period * (1.0 + jitter * rng.uniform(-1.0, 1.0))
    onsets_a = np.array(onsets, dtype=np.int64)
    t = np.arange(n_steps, dtype=np.float64)
    nxt = np.append(onsets_a[1:], n_steps + int(period))
    for o, o_next in zip(onsets_a, nxt, strict=True):
        p = o + rise
        up = (t >= o) & (t < p)
        logu[up] = np.maximum(logu[up], height * (t[up] - o) / rise)
        if regime == "dense":
            # linear in log from the peak down to the quiet level at the next onset
            down = (t >= p) & (t < o_next)
            logu[down] = np.maximum(logu[down], height * (o_next - t[down]) / (o_next - p))
        else:
            down = (t >= p) & (t < p + 0.25 * period)
            logu[down] = np.maximum(logu[down], height * np.exp(-(t[down] - p) / (0.05 * period)))
    logu += rng.normal(0.0, noise, n_steps)
    return 1e-4 * np.exp(logu), onsets_a
