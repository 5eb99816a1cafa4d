"""Slow pure-NumPy twins of the burst-detection kernels (geomtraj.analysis.kernels.burst_scan)."""

from __future__ import annotations

import numpy as np


def rolling_median(y: np.ndarray, half: int) -> np.ndarray:
    n = y.size
    return np.array([np.median(y[max(0, i - half) : min(n, i + half + 1)]) for i in range(n)])


def hysteresis_events(excess, on, off, min_duration, merge_gap):
    """Same contract as ``_hysteresis_events``, written for clarity, not speed."""
    above_on = excess > on
    above_off = excess > off
    n = excess.size
    bursts: list[list[int]] = []
    i = 0
    while i < n:
        if not above_on[i]:
            i += 1
            continue
        j = i
        while j < n and above_on[j]:
            j += 1
        if j - i >= min_duration:
            start = i
            while start > 0 and above_off[start - 1]:
                start -= 1
            stop = j
            while stop < n and above_off[stop]:
                stop += 1
            if bursts and start - bursts[-1][1] - 1 < merge_gap:
                bursts[-1][1] = stop - 1
            else:
                bursts.append([start, stop - 1])
            i = stop
        else:
            i = j
    onset = np.array([b[0] for b in bursts], dtype=np.int64)
    end = np.array([b[1] for b in bursts], dtype=np.int64)
    peak = np.array([a + int(np.argmax(excess[a : e + 1])) for a, e in bursts], dtype=np.int64)
    return onset, peak, end
