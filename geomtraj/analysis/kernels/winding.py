"""JIT-compiled kernels of the spiral detector (:mod:`geomtraj.analysis.spirals`).

Pure arrays in, arrays out; the public wrappers in ``geomtraj.analysis.spirals`` validate, cast and
allocate. Slow NumPy twins live in ``tests/naive_spirals.py``.

The kernels are serial: windows are independent, and geomtraj parallelises across processes (blocks
of runs, or shares of a batch of windows), as the trainer does across runs. Thread-parallel kernels
were measured slower on a loaded machine: OpenMP workers spin between parallel regions and take
the core the NumPy steps in between need.

A window's plane trajectory is given as two float64 arrays ``x, y`` (the point ``w_t = x_t + i y_t``
in the flip frame when the window was demodulated). The phase increment of a step is the exact angle
from ``w_t`` to ``w_{t+1}``, ``atan2(x_t y_{t+1} - y_t x_{t+1}, x_t x_{t+1} + y_t y_{t+1})``, in
``(-pi, pi]``; summing increments unwraps the phase without ``numpy.unwrap``'s threshold.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from geomtraj.constants import ANALYSIS_JIT

#: Layout of the feature vector returned by :func:`_plane_features`.
FEATURES = (
    "winding",  # net phase change over the active span / 2 pi (turns)
    "coherence",  # |sum c dphi| / sum c |dphi| over the active span, c = radius products
    "winding_score",  # coherence * winding: turns of coherent rotation, the surrogate statistic
    "twist_rate",  # slope of the unwrapped phase (rad/step), weighted by radius^2
    "twist_stderr",
    "twist_r2",
    "growth_slope",  # slope of log residual norm from the envelope's start to its peak (per step)
    "growth_stderr",
    "decay_slope",  # slope of log residual norm from the peak to the envelope's end (per step)
    "decay_stderr",
    "turns_out",  # winding over the active span before the peak
    "turns_in",  # winding over the active span after the peak
    "active_start",  # indices into the window's plane trajectory
    "peak",
    "active_end",
)
N_FEATURES = len(FEATURES)

_TWO_PI = 2.0 * math.pi


@numba.njit(**ANALYSIS_JIT)
def _phase_increments(x, y, out):
    """Angle from ``w_t`` to ``w_{t+1}`` for every step, into ``out[:n-1]`` (JIT-compiled)."""
    for t in range(x.shape[0] - 1):
        cross = x[t] * y[t + 1] - y[t] * x[t + 1]
        dot = x[t] * x[t + 1] + y[t] * y[t + 1]
        out[t] = math.atan2(cross, dot)


@numba.njit(**ANALYSIS_JIT)
def _moving_average(v, half, out):
    """Centred moving average of ``v`` over ``2*half+1`` samples, clipped at the ends."""
    _moving_average_into(v, half, out, np.empty(v.shape[0] + 1))


@numba.njit(**ANALYSIS_JIT)
def _moving_average_into(v, half, out, csum):
    """:func:`_moving_average` with a scratch array ``csum`` of ``len(v) + 1``, so that a loop
    over surrogates allocates it once; the interior, where no clipping happens, is a loop
    without branches that vectorises (the same operations as at the ends, so the same bits)."""
    n = v.shape[0]
    csum[0] = 0.0
    for t in range(n):
        csum[t + 1] = csum[t] + v[t]
    inner_lo = min(half, n)
    inner_hi = max(inner_lo, n - half - 1)
    for t in range(inner_lo):
        lo = max(0, t - half)
        hi = min(n, t + half + 1)
        out[t] = (csum[hi] - csum[lo]) / (hi - lo)
    width = 2 * half + 1
    for t in range(inner_lo, inner_hi):
        out[t] = (csum[t + half + 1] - csum[t - half]) / width
    for t in range(inner_hi, n):
        lo = max(0, t - half)
        hi = min(n, t + half + 1)
        out[t] = (csum[hi] - csum[lo]) / (hi - lo)


@numba.njit(**ANALYSIS_JIT)
def _gate(v, fraction):
    """Index of the maximum of ``v`` and the first and last index where ``v >= fraction * max``."""
    n = v.shape[0]
    peak = 0
    for t in range(1, n):
        if v[t] > v[peak]:
            peak = t
    level = fraction * v[peak]
    a = 0
    while v[a] < level:
        a += 1
    b = n - 1
    while v[b] < level:
        b -= 1
    return peak, a, b


@numba.njit(**ANALYSIS_JIT)
def _ols(tt, yy, lo, hi):
    """Least-squares slope of ``yy`` on ``tt`` over ``[lo, hi]`` and its standard error."""
    m = hi - lo + 1
    if m < 3:
        return math.nan, math.nan
    tm = 0.0
    ym = 0.0
    for i in range(lo, hi + 1):
        tm += tt[i]
        ym += yy[i]
    tm /= m
    ym /= m
    sxx = 0.0
    sxy = 0.0
    for i in range(lo, hi + 1):
        sxx += (tt[i] - tm) ** 2
        sxy += (tt[i] - tm) * (yy[i] - ym)
    slope = sxy / sxx
    sse = 0.0
    for i in range(lo, hi + 1):
        e = yy[i] - ym - slope * (tt[i] - tm)
        sse += e * e
    return slope, math.sqrt(sse / (m - 2) / sxx)


@numba.njit(**ANALYSIS_JIT)
def _radius(x, y, radius_half, rad, rs):
    """Radius ``|w_t|`` into ``rad`` and its centred moving average into ``rs``."""
    _radius_into(x, y, radius_half, rad, rs, np.empty(x.shape[0] + 1))


@numba.njit(**ANALYSIS_JIT)
def _radius_into(x, y, radius_half, rad, rs, csum):
    """:func:`_radius` with the scratch ``csum`` of :func:`_moving_average_into`."""
    for t in range(x.shape[0]):
        rad[t] = math.sqrt(x[t] * x[t] + y[t] * y[t])
    _moving_average_into(rad, radius_half, rs, csum)


@numba.njit(**ANALYSIS_JIT)
def _winding(dphi, rad, a, b, split):
    """Winding (turns) and coherence over steps ``a..b``, and the turns before step ``split``."""
    net = 0.0
    num = 0.0
    den = 0.0
    before = 0.0
    for t in range(a, b):
        net += dphi[t]
        c = rad[t] * rad[t + 1]
        num += c * dphi[t]
        den += c * abs(dphi[t])
        if t < split:
            before += dphi[t]
    coherence = abs(num) / den if den > 0.0 else 0.0
    return net / _TWO_PI, coherence, before / _TWO_PI


@numba.njit(**ANALYSIS_JIT)
def _winding_score(x, y, active_fraction, radius_half):
    """Coherence times winding of one plane trajectory over its active span (JIT-compiled).

    The statistic of the surrogate test: turns of coherent rotation. 0 for an empty trajectory.
    """
    n = x.shape[0]
    return _winding_score_into(
        x, y, active_fraction, radius_half, np.empty(n), np.empty(n), np.empty(n + 1)
    )


@numba.njit(**ANALYSIS_JIT)
def _winding_score_into(x, y, active_fraction, radius_half, rad, rs, csum):
    """:func:`_winding_score` with scratch arrays ``rad`` and ``rs`` of the trajectory's length
    and ``csum`` one longer, so that a loop over surrogates allocates them once (JIT-compiled)."""
    _radius_into(x, y, radius_half, rad, rs, csum)
    peak, a, b = _gate(rs, active_fraction)
    if not rs[peak] > 0.0:
        return 0.0
    # the coherence reads the increments of the active span only: computing the others (an
    # atan2 each, the kernel's largest cost) would be wasted; same operations, same order as
    # _phase_increments then _winding, so the score is bit-identical
    num = 0.0
    den = 0.0
    for t in range(a, b):
        cross = x[t] * y[t + 1] - y[t] * x[t + 1]
        dot = x[t] * x[t + 1] + y[t] * y[t + 1]
        dphi = math.atan2(cross, dot)
        c = rad[t] * rad[t + 1]
        num += c * dphi
        den += c * abs(dphi)
    return abs(num) / den if den > 0.0 else 0.0


@numba.njit(**ANALYSIS_JIT)
def _winding_scores(surr, active_fraction, radius_half, out):
    """:func:`_winding_score` of every trajectory ``surr[i, k, 0], surr[i, k, 1]`` (x and y) into
    ``out[i, k]`` (JIT-compiled)."""
    n_win, n_surr = surr.shape[0], surr.shape[1]
    n = surr.shape[3]
    rad = np.empty(n)
    rs = np.empty(n)
    csum = np.empty(n + 1)
    for job in range(n_win * n_surr):
        i = job // n_surr
        k = job - i * n_surr
        out[i, k] = _winding_score_into(
            surr[i, k, 0], surr[i, k, 1], active_fraction, radius_half, rad, rs, csum
        )


#: Coefficients (ascending powers of ``s = a^2``) of a polynomial ``g`` with ``a g(a^2) ~
#: atan(a)`` on ``[0, 1]`` (a Chebyshev fit of degree 10 in ``s``), for :func:`_atan2_approx`.
ATAN_COEFS = (
    0.9999999996145252,
    -0.33333323665625847,
    0.1999959585413317,
    -0.14279048416295467,
    0.11053784748766916,
    -0.08796117538856041,
    0.06710113943015017,
    -0.044273667577748976,
    0.022203454291330502,
    -0.007166164588504788,
    0.0010844926867061852,
)

#: A bound on ``|_atan2_approx(y, x) - atan2(y, x)|`` (rad): the largest error on a grid of 4
#: million points of ``[0, 1]`` is 2.8e-10 (``tests/test_spirals.py`` checks it again).
ATAN_ERROR = 1e-9


@numba.njit(**ANALYSIS_JIT)
def _atan2_approx(y, x):
    """``atan2(y, x)`` to within :data:`ATAN_ERROR`, without a call to the maths library, so
    that loops over it vectorise (JIT-compiled)."""
    ax = abs(x)
    ay = abs(y)
    big = max(ax, ay)
    a = min(ax, ay) / max(big, 1e-300)  # atan2(0, 0) = 0
    s = a * a
    c = ATAN_COEFS
    g = c[10]
    g = g * s + c[9]
    g = g * s + c[8]
    g = g * s + c[7]
    g = g * s + c[6]
    g = g * s + c[5]
    g = g * s + c[4]
    g = g * s + c[3]
    g = g * s + c[2]
    g = g * s + c[1]
    g = g * s + c[0]
    r = a * g
    r = 0.5 * math.pi - r if ay > ax else r
    r = math.pi - r if x < 0.0 else r
    return -r if y < 0.0 else r


@numba.njit(**ANALYSIS_JIT)
def _winding_scores_below(surr, exact_from, active_fraction, radius_half, out):
    """:func:`_winding_scores`, exact only where it matters for a rank test (JIT-compiled).

    ``out[i, k]`` is the coherence of surrogate ``k`` of window ``i``, bit for bit that of
    :func:`_winding_score`, whenever it is at least ``exact_from[i]``; below, ``out[i, k]`` is
    only certainly below ``exact_from[i]``. The phase increments are first taken with
    :func:`_atan2_approx`: with the radius products ``c_t`` and ``S = sum c_t``, the sums
    ``N = sum c_t dphi_t`` and ``D = sum c_t |dphi_t|`` are then each within
    ``E = (ATAN_ERROR + rounding) S`` of their exact values, so the coherence is at most
    ``(|N| + E) / (D - E)``; the exact kernel runs only where that bound reaches
    ``exact_from[i]``. The active span and the radii are those of the exact kernel.
    """
    n_win, n_surr = surr.shape[0], surr.shape[1]
    n = surr.shape[3]
    rad = np.empty(n)
    rs = np.empty(n)
    csum = np.empty(n + 1)
    dphi = np.empty(n)
    # rounding of two sums of at most n terms each of size at most pi c_t, and of the bound
    slack = ATAN_ERROR + 4.0 * n * 2.3e-16 * math.pi
    for i in range(n_win):
        for k in range(n_surr):
            x = surr[i, k, 0]
            y = surr[i, k, 1]
            _radius_into(x, y, radius_half, rad, rs, csum)
            peak, a, b = _gate(rs, active_fraction)
            if not rs[peak] > 0.0:
                out[i, k] = 0.0
                continue
            for t in range(a, b):  # no reduction in this loop, so that it vectorises
                cross = x[t] * y[t + 1] - y[t] * x[t + 1]
                dot = x[t] * x[t + 1] + y[t] * y[t + 1]
                dphi[t] = _atan2_approx(cross, dot)
            num = 0.0
            den = 0.0
            weight = 0.0
            for t in range(a, b):
                c = rad[t] * rad[t + 1]
                num += c * dphi[t]
                den += c * abs(dphi[t])
                weight += c
            err = slack * weight
            approx = abs(num) / den if den > 0.0 else 0.0
            if den > err and (abs(num) + err) / (den - err) < exact_from[i]:
                out[i, k] = approx
            else:
                out[i, k] = _winding_score_into(x, y, active_fraction, radius_half, rad, rs, csum)


#: Random phases are drawn as ``2 pi j / 2**16`` with ``j`` uniform on ``0 .. 2**16 - 1``: a
#: lattice 1e-4 rad fine, uniform for any purpose of a surrogate, whose cosines and sines come
#: from a table instead of two calls to the maths library per bin.
PHASE_LEVELS = 2**16
PHASE_COS = np.cos(2.0 * np.pi * np.arange(PHASE_LEVELS) / PHASE_LEVELS)
PHASE_SIN = np.sin(2.0 * np.pi * np.arange(PHASE_LEVELS) / PHASE_LEVELS)


@numba.njit(**ANALYSIS_JIT)
def _apply_phases(spec, phase_index, keep_last, amp, beta, cos_table, sin_table, out, quad):
    """Fourier-transform surrogates of plane coordinates in the frequency domain (JIT-compiled).

    ``spec`` (n_windows, 2, n_bins) holds the rfft of each window's two real series (x, y);
    ``phase_index`` (n_windows, n_surrogates, 2, n_bins) integers indexing the tables of
    ``cos``/``sin`` of uniformly spaced angles (:data:`PHASE_COS`, :data:`PHASE_SIN`). ``out``
    (same shape as ``phase_index``) receives ``spec`` times ``exp(i phi)``, so every surrogate
    keeps the amplitude spectra exactly and gets phases uniform on the circle. The zero-frequency
    bin, and the last bin when ``keep_last`` (even length: the Nyquist bin of a real series is
    real), keep their value, so that the surrogate is real with the same mean.

    ``quad[i, k]`` receives the surrogate's quadrature
    ``|sum_f amp_f sin(beta_f + phi_y - phi_x)| / sum_f amp_f`` from the window's cross-spectrum
    weights ``amp`` and phases ``beta`` (n_windows, n_bins): the random phases only shift the
    cross-spectrum's phase by their difference.
    """
    n_win, n_surr, n_ser, n_bins = out.shape
    n_rand = n_bins - 1 if keep_last else n_bins
    sin_beta = np.empty(n_bins)
    cos_beta = np.empty(n_bins)
    for i in range(n_win):
        total = 0.0
        for f in range(n_bins):
            total += amp[i, f]
            sin_beta[f] = math.sin(beta[i, f])
            cos_beta[f] = math.cos(beta[i, f])
        for k in range(n_surr):
            acc = 0.0
            for c in range(n_ser):
                out[i, k, c, 0] = spec[i, c, 0]
                if keep_last:
                    out[i, k, c, n_bins - 1] = spec[i, c, n_bins - 1]
            for f in range(1, n_rand):
                jx = phase_index[i, k, 0, f]
                jy = phase_index[i, k, 1, f]
                cx, sx = cos_table[jx], sin_table[jx]
                cy, sy = cos_table[jy], sin_table[jy]
                out[i, k, 0, f] = spec[i, 0, f] * complex(cx, sx)
                out[i, k, 1, f] = spec[i, 1, f] * complex(cy, sy)
                # sin(beta + phi_y - phi_x) from the cosines and sines already at hand
                cd = cy * cx + sy * sx
                sd = sy * cx - cy * sx
                acc += amp[i, f] * (sin_beta[f] * cd + cos_beta[f] * sd)
            if keep_last:
                acc += amp[i, n_bins - 1] * sin_beta[n_bins - 1]
            acc += amp[i, 0] * sin_beta[0]
            quad[i, k] = abs(acc) / total if total > 0.0 else 0.0


@numba.njit(**ANALYSIS_JIT)
def _replay_checks(coh, quad, obs_coh, obs_quad, rows, lo, hi, step, stop_at, counts, h_coh,
                   h_quad, used, running):  # fmt: skip
    """Replay the stopping rule of a sequential surrogate test on surrogates ``lo .. hi - 1``
    (JIT-compiled).

    For each window ``i`` of ``rows``, the exceedances (surrogates scoring at least the window,
    ``coh[i, t] >= obs_coh[i]`` and ``quad[i, t] >= obs_quad[i]``) are counted on from
    ``counts[i]`` (those of surrogates ``0 .. lo - 1``, left there by the previous call). The
    rule is checked after every ``step`` surrogates and after the last of ``n = coh.shape[1]``:
    the window stops at the first check where both counts reach ``stop_at[i]``. ``used[i]``
    becomes that check, or the last check passed, and ``h_coh[i]``, ``h_quad[i]`` the counts of
    the surrogates before it; ``running[i]`` says whether the window goes on past ``hi``.
    """
    n = coh.shape[1]
    for r in range(rows.size):
        i = rows[r]
        hc = counts[i, 0]
        hq = counts[i, 1]
        stopped = False
        for t in range(lo, hi):
            if coh[i, t] >= obs_coh[i]:
                hc += 1
            if quad[i, t] >= obs_quad[i]:
                hq += 1
            k = t + 1
            if k % step == 0 or k == n:
                used[i] = k
                h_coh[i] = hc
                h_quad[i] = hq
                if min(hc, hq) >= stop_at[i]:
                    stopped = True
                    break
        counts[i, 0] = hc
        counts[i, 1] = hq
        running[i] = (not stopped) and hi < n


@numba.njit(**ANALYSIS_JIT)
def _count_at_least(values, obs, x, stop):
    """``#{samples >= x}`` among ``obs`` and ``values``, or a number above ``stop`` as soon as the
    count passes it (JIT-compiled)."""
    count = 1 if obs >= x else 0
    for s in range(values.size):
        if values[s] >= x:
            count += 1
            if count > stop:
                break
    return count


@numba.njit(**ANALYSIS_JIT)
def _min_p_row_sorted(obs_a, surr_a, obs_b, surr_b, a, b, t):
    """The min-p count of one row from the ranks of all its samples (any values, NaN included:
    NaN ranks above every number, as in ``numpy.sort``)."""
    total = surr_a.size + 1
    a[0] = obs_a
    b[0] = obs_b
    a[1:] = surr_a
    b[1:] = surr_b
    sa = np.sort(a)
    sb = np.sort(b)
    ia = np.searchsorted(sa, a)  # side "left": samples below each value
    ib = np.searchsorted(sb, b)
    for j in range(total):
        t[j] = min(total - ia[j], total - ib[j])
    count = 0
    for j in range(total):
        if t[j] <= t[0]:
            count += 1
    return count


@numba.njit(**ANALYSIS_JIT)
def _min_p_values(obs_a, surr_a, obs_b, surr_b, out):
    """The min-p combination of two surrogate statistics, per row (JIT-compiled).

    Row ``i`` has ``n + 1`` samples of each statistic, the window's (``obs_a[i]``, ``obs_b[i]``)
    and its surrogates' (``surr_a[i]``, ``surr_b[i]``). Every sample gets the count of samples
    scoring at least as high on each statistic, ``T`` is the smaller of its two counts, and
    ``out[i] = #{samples with T <= T_window} / (n + 1)``: the p-value of the min-p test with
    ``p = count / (n + 1)`` per statistic (the same numbers in counts, so no rounding enters).

    Only surrogates that score at least the window on a statistic can have ``T <= T_window``: one
    below it on both has more samples above it on each than the window has. Their counts are
    taken directly, each pass stopping once it exceeds ``T_window``, so a row costs ``O(n)`` plus
    ``O(n)`` per such surrogate instead of two sorts. A row with a NaN goes through the sort,
    which ranks NaN as ``numpy.sort`` does.
    """
    n_rows, n = surr_a.shape
    total = n + 1
    a = np.empty(total)
    b = np.empty(total)
    t = np.empty(total, dtype=np.int64)
    for i in range(n_rows):
        oa = obs_a[i]
        ob = obs_b[i]
        sa = surr_a[i]
        sb = surr_b[i]
        finite = not (math.isnan(oa) or math.isnan(ob))
        ca = 1
        cb = 1
        for j in range(n):
            if math.isnan(sa[j]) or math.isnan(sb[j]):
                finite = False
                break
            if sa[j] >= oa:
                ca += 1
            if sb[j] >= ob:
                cb += 1
        if not finite:
            out[i] = _min_p_row_sorted(oa, sa, ob, sb, a, b, t) / total
            continue
        t_window = min(ca, cb)
        count = 1
        for j in range(n):
            if sa[j] >= oa and _count_at_least(sa, oa, sa[j], t_window) <= t_window:
                count += 1
            elif sb[j] >= ob and _count_at_least(sb, ob, sb[j], t_window) <= t_window:
                count += 1
        out[i] = count / total


@numba.njit(**ANALYSIS_JIT)
def _window_residual(x, half, r):
    """``r_t = x_{t+half} - mean(x_{t..t+2 half})``, centred over time, into ``r`` (m, p); a running
    sum over a reference-shifted copy keeps cancellation small (JIT-compiled)."""
    n, p = x.shape
    m = n - 2 * half
    width = 2 * half + 1
    for j in range(p):
        ref = x[0, j]
        acc = 0.0
        for t in range(width):
            acc += x[t, j] - ref
        for t in range(m):
            if t > 0:
                acc += (x[t + width - 1, j] - ref) - (x[t - 1, j] - ref)
            r[t, j] = (x[t + half, j] - ref) - acc / width
        mean = 0.0
        for t in range(m):
            mean += r[t, j]
        mean /= m
        for t in range(m):
            r[t, j] -= mean


@numba.njit(**ANALYSIS_JIT)
def _residuals(theta, half, out, flip, demod):
    """Residuals of windows from their centred moving average, in the flip frame where needed.

    For each window ``theta[i]`` (n, p) (JIT-compiled):

    1. ``r_t = theta_{t+half} - mean(theta_{t..t+2 half})`` for ``t = 0..n-2 half-1``, centred
       over time (a running sum over a reference-shifted copy keeps cancellation small);
    2. ``flip[i] = -sum_t r_t.r_{t+1} / sum_t |r_t|^2``;
    3. when it is positive (``demod[i]``), ``r`` is replaced by its flip frame: ``d_t = (-1)^t r_t``
       smoothed with weights [1, 2, 1]/4, the ends repeating their neighbour.

    ``out[i]`` (m, p) receives the result.
    """
    n_win, n, p = theta.shape
    m = n - 2 * half
    for i in range(n_win):
        r = out[i]
        _window_residual(theta[i], half, r)
        lag1 = 0.0
        power = 0.0
        for t in range(m):
            for j in range(p):
                power += r[t, j] * r[t, j]
                if t > 0:
                    lag1 += r[t, j] * r[t - 1, j]
        flip[i] = -lag1 / power if power > 0.0 else 0.0
        demod[i] = flip[i] > 0.0
        if demod[i]:
            prev = np.empty(p)
            for j in range(p):
                prev[j] = r[0, j]  # d_{-1} = d_0
            for t in range(m):
                sign = 1.0 if t % 2 == 0 else -1.0
                nxt = t + 1 if t + 1 < m else t
                nsign = 1.0 if nxt % 2 == 0 else -1.0
                for j in range(p):
                    cur = sign * r[t, j]
                    smooth = 0.25 * prev[j] + 0.5 * cur + 0.25 * nsign * r[nxt, j]
                    prev[j] = cur
                    r[t, j] = smooth


# hand PCA kept: it runs inside the JIT window loops (thousands per run), where sklearn cannot
@numba.njit(**ANALYSIS_JIT)
def _top_plane(rows):
    """Top-two principal plane of ``rows`` (k, p), centred: an orthonormal basis (p, 2) and the
    ratio of the second to the first eigenvalue (0 for a line, 1 for a circle).

    With fewer rows than columns the smaller ``k x k`` Gram matrix is diagonalised and its
    eigenvectors mapped back (the SVD identity ``v = rows.T u / s``).
    """
    k, p = rows.shape
    cen = rows.copy()
    for j in range(p):
        mean = 0.0
        for i in range(k):
            mean += cen[i, j]
        mean /= k
        for i in range(k):
            cen[i, j] -= mean
    basis = np.empty((p, 2))
    if k >= p:
        vals, vecs = np.linalg.eigh(cen.T @ cen)
        for c in range(2):
            for j in range(p):
                basis[j, c] = vecs[j, p - 2 + c]
        top = vals[p - 1]
        ratio = max(vals[p - 2], 0.0) / top if top > 0.0 else 0.0
        return basis, ratio
    vals, u = np.linalg.eigh(cen @ cen.T)
    for c in range(2):
        norm = 0.0
        for j in range(p):
            acc = 0.0
            for i in range(k):
                acc += cen[i, j] * u[i, k - 2 + c]
            basis[j, c] = acc
            norm += acc * acc
        norm = math.sqrt(norm)
        if norm > 0.0:
            for j in range(p):
                basis[j, c] /= norm
    top = vals[k - 1]
    ratio = max(vals[k - 2], 0.0) / top if top > 0.0 else 0.0
    return basis, ratio


@numba.njit(**ANALYSIS_JIT)
def _plane_angle(u, v):
    """Largest principal angle (degrees) between the planes spanned by the columns of u, v.

    Its cosine is the smaller singular value of the 2 x 2 matrix ``u.T v``, from the closed form
    ``s^2 = (T - sqrt(T^2 - 4 D^2)) / 2`` with ``T`` the squared Frobenius norm and ``D`` the
    determinant.
    """
    p = u.shape[0]
    m00 = 0.0
    m01 = 0.0
    m10 = 0.0
    m11 = 0.0
    for j in range(p):
        m00 += u[j, 0] * v[j, 0]
        m01 += u[j, 0] * v[j, 1]
        m10 += u[j, 1] * v[j, 0]
        m11 += u[j, 1] * v[j, 1]
    frob = m00 * m00 + m01 * m01 + m10 * m10 + m11 * m11
    det = m00 * m11 - m01 * m10
    smin2 = 0.5 * (frob - math.sqrt(max(frob * frob - 4.0 * det * det, 0.0)))
    cos_angle = min(math.sqrt(max(smin2, 0.0)), 1.0)
    return math.degrees(math.acos(cos_angle))


@numba.njit(**ANALYSIS_JIT)
def _plane_turn(seg, min_rows):
    """Turn (degrees) of the best-fit plane between the energy halves of ``seg`` (k, p), the turn
    that noise alone gives, and the flatter half's eigenvalue ratio (JIT-compiled; see
    ``geomtraj.analysis.spirals.plane_turn``).
    """
    k, p = seg.shape
    if k < 2 * min_rows:
        return math.nan, math.nan, math.nan
    energy = np.empty(k)
    acc = 0.0
    for i in range(k):
        for j in range(p):
            acc += seg[i, j] * seg[i, j]
        energy[i] = acc
    cut = np.searchsorted(energy, 0.5 * energy[k - 1]) + 1
    if cut < min_rows or k - cut < min_rows:
        return math.nan, math.nan, math.nan
    first = seg[:cut]
    second = seg[cut:]
    plane1, ratio1 = _top_plane(first)
    plane2, ratio2 = _top_plane(second)
    turn = _plane_angle(plane1, plane2)
    a1 = _plane_angle(_top_plane(first[0::2])[0], _top_plane(first[1::2])[0])
    a2 = _plane_angle(_top_plane(second[0::2])[0], _top_plane(second[1::2])[0])
    return turn, 0.5 * math.sqrt(a1 * a1 + a2 * a2), min(ratio1, ratio2)


@numba.njit(**ANALYSIS_JIT)
def _plane_turns(resid, theta, half, demod, start, end, min_rows, turn, noise, aspect):
    """:func:`_plane_turn` of rows ``start[i]..end[i]`` of the raw residual of every window.

    ``resid[i]`` is used as it is unless ``demod[i]``; then the raw residual is recomputed from
    ``theta[i]`` (n, p) into a scratch buffer, never demodulated (JIT-compiled).
    """
    scratch = np.empty((resid.shape[1], resid.shape[2]))
    for i in range(resid.shape[0]):
        if start[i] < 0:
            turn[i] = math.nan
            noise[i] = math.nan
            aspect[i] = math.nan
            continue
        if demod[i]:
            _window_residual(theta[i], half, scratch)
            rows = scratch
        else:
            rows = resid[i]
        turn[i], noise[i], aspect[i] = _plane_turn(rows[start[i] : end[i] + 1], min_rows)


# hand PCA kept: one eigh per window inside a JIT loop; sklearn would leave the kernel per window
@numba.njit(**ANALYSIS_JIT)
def _principal_planes(resid, axes, top, total):
    """Top-two principal axes of every residual window ``resid[i]`` (m, p) (JIT-compiled).

    ``axes[i]`` (p, 2) receives the unit eigenvectors of the Gram matrix ``r.T r`` with the two
    largest eigenvalues (largest first), each signed so that its largest loading is positive;
    ``top[i]`` their eigenvalue sum and ``total[i]`` the trace (the residual energy).
    """
    p = resid.shape[2]
    for i in range(resid.shape[0]):
        r = resid[i]
        gram = r.T @ r
        vals, vecs = np.linalg.eigh(gram)
        trace = 0.0
        for j in range(p):
            trace += gram[j, j]
        total[i] = trace
        top[i] = vals[p - 1] + vals[p - 2]
        for c in range(2):
            col = p - 1 - c
            big = 0
            for j in range(1, p):
                if abs(vecs[j, col]) > abs(vecs[big, col]):
                    big = j
            sign = -1.0 if vecs[big, col] < 0.0 else 1.0
            for j in range(p):
                axes[i, j, c] = sign * vecs[j, col]


@numba.njit(**ANALYSIS_JIT)
def _plane_features(x, y, norm, active_fraction, radius_half, out):
    """Measure one plane trajectory into ``out`` (layout :data:`FEATURES`) (JIT-compiled).

    ``x, y`` are the plane coordinates of ``w_t``; ``norm`` is the norm of the full residual
    ``||r_t||`` at each step. The *active span* runs from the first to the last step whose smoothed
    plane radius reaches ``active_fraction`` of its maximum; the winding, coherence and phase fit
    use that span only, because the phase of a point near the origin is noise. The envelope (peak,
    growth and decay of the log radius) is measured on the smoothed full residual norm, gated the
    same way: when the plane of a spiral turns, the radius of its projection on the window's plane
    changes with the turn, the distance from the local mean does not.
    """
    n = x.shape[0]
    for i in range(out.shape[0]):
        out[i] = math.nan
    if n < 4:
        return
    rad = np.empty(n)
    rs = np.empty(n)
    _radius(x, y, radius_half, rad, rs)
    peak_r, a, b = _gate(rs, active_fraction)
    if not rs[peak_r] > 0.0:
        return
    ns = np.empty(n)
    _moving_average(norm, radius_half, ns)
    peak, ea, eb = _gate(ns, active_fraction)
    dphi = np.empty(n - 1)
    _phase_increments(x, y, dphi)

    turns, coherence, before = _winding(dphi, rad, a, b, peak)
    out[0] = turns
    out[1] = coherence
    out[2] = coherence * turns

    # twist rate: weighted least squares of the unwrapped phase on the step, weights radius^2
    m = b - a + 1
    if m >= 3:
        phase = np.empty(m)
        wts = np.empty(m)
        phase[0] = 0.0
        for i in range(1, m):
            phase[i] = phase[i - 1] + dphi[a + i - 1]
        wsum = 0.0
        for i in range(m):
            wts[i] = rs[a + i] * rs[a + i]
            wsum += wts[i]
        w2sum = 0.0
        tm = 0.0
        pm = 0.0
        for i in range(m):
            wts[i] /= wsum
            w2sum += wts[i] * wts[i]
            tm += wts[i] * i
            pm += wts[i] * phase[i]
        sxx = 0.0
        sxy = 0.0
        syy = 0.0
        for i in range(m):
            sxx += wts[i] * (i - tm) ** 2
            sxy += wts[i] * (i - tm) * (phase[i] - pm)
            syy += wts[i] * (phase[i] - pm) ** 2
        if sxx > 0.0:
            slope = sxy / sxx
            sse = syy - slope * sxy
            n_eff = 1.0 / w2sum
            out[3] = slope
            if n_eff > 2.0:
                out[4] = math.sqrt(max(sse, 0.0) * n_eff / (n_eff - 2.0) / (n_eff * sxx))
            out[5] = sxy * sxy / (sxx * syy) if syy > 0.0 else 1.0

    # growth and decay of the log residual norm on either side of its peak
    if ns[peak] > 0.0:
        tt = np.empty(n)
        logr = np.empty(n)
        floor = math.log(active_fraction * ns[peak])
        for t in range(n):
            tt[t] = t
            logr[t] = math.log(ns[t]) if ns[t] > 0.0 else floor
        out[6], out[7] = _ols(tt, logr, ea, peak)
        out[8], out[9] = _ols(tt, logr, peak, eb)
    out[10] = before
    out[11] = turns - before
    out[12] = a
    out[13] = peak
    out[14] = b


@numba.njit(**ANALYSIS_JIT)
def _plane_features_batch(xs, ys, norms, active_fraction, radius_half, out):
    """:func:`_plane_features` of every window (rows of ``xs, ys, norms``)."""
    for k in range(xs.shape[0]):
        _plane_features(xs[k], ys[k], norms[k], active_fraction, radius_half, out[k])
