"""Synthetic trajectories with known slow period, envelope e-folding time and v decay rate.

``relaxation_oscillation`` builds what SCIENCE.md section 2 describes, with every rate given:

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
