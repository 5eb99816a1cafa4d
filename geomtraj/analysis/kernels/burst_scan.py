"""JIT-compiled kernels of burst detection (:mod:`geomtraj.analysis.events`).

Pure arrays in, arrays out; the public wrappers in ``geomtraj.analysis.events`` validate and
allocate. Slow NumPy twins live in ``tests/naive_events.py``.
"""

from __future__ import annotations

import numba
import numpy as np

from geomtraj.constants import ANALYSIS_JIT


@numba.njit(**ANALYSIS_JIT)
def _hysteresis_events(excess, on, off, min_duration, merge_gap):
    """Bursts of ``excess`` by a two-level threshold with hysteresis (JIT-compiled).

    A burst is triggered when ``excess`` stays above ``on`` for ``min_duration`` consecutive
    samples. Its onset is the last sample before the trigger at which ``excess`` rose above ``off``
    (so the onset marks the start of the rise, not the moment it became obvious); it ends at the
    last sample before ``excess`` falls below ``off``. Bursts separated by fewer than
    ``merge_gap`` samples below ``off`` are merged. The peak is the arg-max of ``excess`` within
    the burst.

    Returns ``(onset, peak, end)`` index arrays; ``end`` is inclusive.
    """
    n = excess.shape[0]
    onset = np.empty(n, dtype=np.int64)
    peak = np.empty(n, dtype=np.int64)
    end = np.empty(n, dtype=np.int64)
    count = 0
    i = 0
    while i < n:
        if excess[i] <= on:
            i += 1
            continue
        # run of samples above `on` starting at i
        j = i
        while j < n and excess[j] > on:
            j += 1
        if j - i < min_duration:
            i = j
            continue
        start = i
        while start > 0 and excess[start - 1] > off:
            start -= 1
        stop = j  # first index after the run above `on`
        while stop < n and excess[stop] > off:
            stop += 1
        last = stop - 1
        if count > 0 and start - end[count - 1] - 1 < merge_gap:
            # too close to the previous burst: extend it
            count -= 1
            start = onset[count]
        best = start
        for k in range(start, last + 1):
            if excess[k] > excess[best]:
                best = k
        onset[count] = start
        peak[count] = best
        end[count] = last
        count += 1
        i = stop
    return onset[:count], peak[:count], end[:count]


@numba.njit(**ANALYSIS_JIT)
def _rise_bounds(smooth, peaks, fraction, margin):
    """Onset and end of each spike of ``smooth`` around its ``peaks`` (sorted indices; JIT).

    Between two successive peaks the trough is the minimum of ``smooth``. A spike's onset is the
    last sample before its peak at or below ``trough + max(fraction * (smooth[peak] - trough),
    margin)`` (the start of the final ``1 - fraction`` of the rise, with the trough since the
    previous peak; ``margin`` keeps noise around a flat quiet level from placing it early); its
    end is the last sample after the peak before ``smooth`` falls to the same level above the
    next trough. Before the first peak and after the last, the trough is taken over the signal's
    start or end. ``end`` is inclusive and always lies before the next onset.
    """
    n = smooth.shape[0]
    k = peaks.shape[0]
    onset = np.empty(k, dtype=np.int64)
    end = np.empty(k, dtype=np.int64)
    for j in range(k):
        p = peaks[j]
        lo = peaks[j - 1] if j > 0 else 0
        trough = smooth[lo]
        for i in range(lo, p + 1):
            if smooth[i] < trough:
                trough = smooth[i]
        level = trough + max(fraction * (smooth[p] - trough), margin)
        i = p
        while i > lo and smooth[i] > level:
            i -= 1
        onset[j] = i
        hi = peaks[j + 1] if j + 1 < k else n - 1
        trough = smooth[p]
        for i in range(p, hi + 1):
            if smooth[i] < trough:
                trough = smooth[i]
        level = trough + max(fraction * (smooth[p] - trough), margin)
        i = p
        while i < hi and smooth[i + 1] > level:
            i += 1
        end[j] = i
    return onset, end
