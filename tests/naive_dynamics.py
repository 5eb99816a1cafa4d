"""Slow, obviously correct NumPy versions of the dynamics analyses' fast paths."""

from __future__ import annotations

import numpy as np


def msd_direct(x: np.ndarray, lags) -> np.ndarray:
    """``mean_t ||x_{t+k} - x_t||^2`` by a loop over lags."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    out = []
    for k in lags:
        d = x[k:] - x[: x.shape[0] - k]
        out.append(np.mean(np.sum(d * d, axis=1)))
    return np.array(out)


def msd_block_sums_direct(x: np.ndarray, lags, n_blocks: int):
    """Sums and counts of squared displacements by the block of each pair's start time."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    n = x.shape[0]
    edges = np.linspace(0, n, n_blocks + 1).round().astype(np.int64)
    S = np.zeros((n_blocks, len(lags)))
    N = np.zeros((n_blocks, len(lags)))
    for b in range(n_blocks):
        for i, k in enumerate(lags):
            for t in range(edges[b], edges[b + 1]):
                if t + k < n:
                    S[b, i] += np.sum((x[t + k] - x[t]) ** 2)
                    N[b, i] += 1
    return S, N


def hinge_bruteforce(t: np.ndarray, y: np.ndarray, min_segment: int):
    """Best continuous two-segment line by one least-squares solve per candidate breakpoint.

    Returns ``(breakpoint, slope_before, slope_after, sse)``.
    """
    t = np.asarray(t, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n = t.size
    best = None
    for k in range(min_segment, n - min_segment):
        X = np.stack([np.ones(n), t - t[0], np.maximum(t - t[k], 0.0)], axis=1)
        coef, *_ = np.linalg.lstsq(X, y, rcond=None)
        sse = float(np.sum((y - X @ coef) ** 2))
        if best is None or sse < best[3]:
            best = (t[k], coef[1], coef[1] + coef[2], sse)
    return best


def phase_space_direct(x: np.ndarray) -> dict[str, float]:
    """Rotation and probability current of a 1-D series by explicit loops (dt = 1)."""
    x = np.asarray(x, dtype=np.float64)
    p = x[:-1]
    y = np.diff(x)
    sx, sy = p.std(), y.std()
    angles, area = [], []
    for t in range(p.size - 1):
        a0 = np.arctan2(y[t] / sy, p[t] / sx)
        a1 = np.arctan2(y[t + 1] / sy, p[t + 1] / sx)
        angles.append((a1 - a0 + np.pi) % (2 * np.pi) - np.pi)
        area.append(0.5 * (p[t] * y[t + 1] - p[t + 1] * y[t]))
    cur = float(np.mean(area))
    return {
        "rotation": float(np.mean(angles)),
        "current": cur,
        "current_normalised": cur / (sx * sy),
    }
