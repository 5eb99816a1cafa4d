"""Synthetic trajectories with known answers for the twin-divergence and diffusion analyses."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TwinTruth:
    """What a synthetic twin pair was built with."""

    perturbation_step: int
    d0: float
    lyapunov: float
    d_sat: float
    saturation_step: float


def base_trajectory(n_steps: int, n_coords: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth-ish trajectory around 1 whose norm stays away from zero (the 'original')."""
    walk = np.cumsum(rng.standard_normal((n_steps, n_coords)), axis=0) * 1e-3
    return 1.0 + 0.3 * rng.standard_normal(n_coords) + walk


def twin_from_divergence(
    a: np.ndarray, d: np.ndarray, rng: np.random.Generator, turn: float = 0.05
) -> np.ndarray:
    """A twin ``b`` with ``||a_t - b_t|| / ||a_t|| = d_t`` exactly, along a slowly turning line."""
    n, k = a.shape
    u = np.cumsum(rng.standard_normal((n, k)) * turn, axis=0) + rng.standard_normal(k)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    return a + (d * np.linalg.norm(a, axis=1))[:, None] * u


def exponential_twins(
    n_steps: int = 6000,
    T: int = 1000,
    lyapunov: float = 0.02,
    d0: float = 1e-12,
    d_sat: float = 1e-3,
    plateau_slope: float = 1e-5,
    log_noise: float = 0.3,
    n_coords: int = 16,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, TwinTruth]:
    """Twins equal before ``T``, then ``d_t = d0*exp(lyapunov*(t-T))`` up to ``d_sat``, then flat.

    The plateau creeps up at ``plateau_slope`` (log per step), as real twins keep drifting apart
    slowly; ``log d`` carries iid Gaussian noise of standard deviation ``log_noise``.

    Returns
    -------
    steps, a, b, truth
    """
    rng = np.random.default_rng(seed)
    steps = np.arange(1, n_steps + 1)
    t_sat = T + np.log(d_sat / d0) / lyapunov
    log_d = np.where(
        steps < t_sat,
        np.log(d0) + lyapunov * (steps - T),
        np.log(d_sat) + plateau_slope * (steps - t_sat),
    )
    d = np.exp(log_d + log_noise * rng.standard_normal(n_steps))
    d[steps < T] = 0.0
    a = base_trajectory(n_steps, n_coords, rng)
    b = twin_from_divergence(a, d, rng)
    return steps, a, b, TwinTruth(T, d0, lyapunov, d_sat, float(t_sat))


def staircase_twins(
    n_steps: int = 8000,
    T: int = 500,
    period: int = 200,
    burst_len: int = 20,
    rate_burst: float = 0.1,
    rate_quiet: float = -0.005,
    d0: float = 1e-15,
    d_sat: float = 1e-2,
    log_noise: float = 0.2,
    n_coords: int = 16,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
    """Twins whose ``log d`` grows at ``rate_burst`` inside bursts and ``rate_quiet`` outside.

    Bursts last ``burst_len`` steps every ``period`` steps (from step 1). Growth stops at ``d_sat``.

    Returns
    -------
    steps, a, b, burst_mask, truth (dict with the rates and the saturation step)
    """
    rng = np.random.default_rng(seed)
    steps = np.arange(1, n_steps + 1)
    mask = ((steps - 1) % period) < burst_len
    log_d = np.empty(n_steps)
    level = np.log(d0)
    t_sat = None
    for i, t in enumerate(steps):
        if t > T:
            level += rate_burst if mask[i] else rate_quiet
            if level >= np.log(d_sat):
                level = np.log(d_sat)
                t_sat = t_sat or int(t)
        log_d[i] = level
    d = np.exp(log_d + log_noise * rng.standard_normal(n_steps))
    d[steps < T] = 0.0
    a = base_trajectory(n_steps, n_coords, rng)
    b = twin_from_divergence(a, d, rng)
    truth = {"rate_burst": rate_burst, "rate_quiet": rate_quiet, "saturation_step": t_sat}
    return steps, a, b, mask, truth


# ------------------------------------------------------------------------------ diffusion


def fgn_autocovariance(n: int, hurst: float) -> np.ndarray:
    """Autocovariance ``gamma(k)``, k = 0..n-1, of unit-variance fractional Gaussian noise."""
    k = np.arange(n, dtype=np.float64)
    h2 = 2.0 * hurst
    return 0.5 * (np.abs(k + 1) ** h2 - 2 * k**h2 + np.abs(k - 1) ** h2)


def fractional_brownian_motion(n: int, hurst: float, n_paths: int = 1, seed: int = 0) -> np.ndarray:
    """Exact fractional Brownian motion by circulant embedding (Davies and Harte, 1987).

    The covariance of fractional Gaussian noise (the increments) is embedded in a circulant matrix
    of size ``2n``; its eigenvalues are the FFT of the first row (non-negative for every
    ``0 < hurst < 1``), so ``FFT(sqrt(lambda / 2n) * complex white noise)`` has exactly that
    covariance. Cumulative sums give fBm with ``E[(B_{t+k} - B_t)^2] = k^(2*hurst)``.

    Returns
    -------
    ndarray, shape (n, n_paths)
        Paths starting at ``B_1`` (the first increment).
    """
    if not 0 < hurst < 1:
        raise ValueError(f"hurst={hurst}; expected 0 < hurst < 1")
    rng = np.random.default_rng(seed)
    gamma = fgn_autocovariance(n + 1, hurst)
    row = np.concatenate([gamma[: n + 1], gamma[n - 1 : 0 : -1]])  # length 2n
    lam = np.fft.fft(row).real
    if lam.min() < -1e-9 * lam.max():
        raise ValueError("circulant embedding is not non-negative definite")
    lam = np.clip(lam, 0.0, None)
    m = row.size
    paths = np.empty((n, n_paths))
    for j in range(n_paths):
        w = rng.standard_normal(m) + 1j * rng.standard_normal(m)
        fgn = np.fft.fft(np.sqrt(lam / m) * w)[:n].real
        paths[:, j] = np.cumsum(fgn)
    return paths


def harmonic_phase(n: int, omega: float, amplitude: float = 1.0, phase: float = 0.3) -> np.ndarray:
    """``x_t = amplitude * cos(omega*t + phase)``, t = 0..n-1: a phase-space circle."""
    t = np.arange(n, dtype=np.float64)
    return amplitude * np.cos(omega * t + phase)


# ------------------------------------------------------------------- a real grid with twins

#: A small grid trained by geomtraj: two beta2 values x three seeds x float32/float64, each with
#: a last-bit twin (W1[0,3] moved by one ulp just before update 500). Runs 0..11 are originals.
TWIN_GRID_TOML = """
steps = 3000
record_every = 1
record_params = 16
[data]
name = "sincos"
n_points = 64
[model]
hidden = ["12x24"]
activation = "tanh"
loss = "mse"
[optimizer]
beta2 = [0.99, 0.995]
lr = 0.01
[runs]
seeds = [0, 1, 2]
precision = ["float32", "float64"]
[[twins]]
kind = "ulp"
param = "W1[0,3]"
ulps = 1
step = 500
"""


@functools.cache
def twin_grid():
    """The grid of :data:`TWIN_GRID_TOML`, trained in memory once per test process."""
    import tomllib

    from geomtraj.train.config import plan_from_config
    from geomtraj.train.trainer import train_plan

    return train_plan(plan_from_config(tomllib.loads(TWIN_GRID_TOML)), progress=False)
