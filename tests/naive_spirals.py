"""Slow pure-NumPy twins of the spiral kernels (geomtraj.analysis.kernels.winding).

Written from the definitions in the kernels' docstrings with NumPy/SciPy building blocks (moving
averages by slicing, ``np.arctan2``, ``np.polyfit``, SVD, ``scipy.linalg.subspace_angles``), not
by transcribing the loops, so tests compare the two to a tolerance.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

FEATURES = (
    "winding",
    "coherence",
    "winding_score",
    "twist_rate",
    "twist_stderr",
    "twist_r2",
    "growth_slope",
    "growth_stderr",
    "decay_slope",
    "decay_stderr",
    "turns_out",
    "turns_in",
    "active_start",
    "peak",
    "active_end",
)


def residuals(theta: np.ndarray, half: int) -> tuple[np.ndarray, float, bool]:
    """One window (n, p): residual from the centred moving average, flip index, flip frame."""
    n = theta.shape[0]
    width = 2 * half + 1
    ma = np.array([theta[t : t + width].mean(axis=0) for t in range(n - 2 * half)])
    r = theta[half : n - half] - ma
    r = r - r.mean(axis=0)
    flip = -np.sum(r[1:] * r[:-1]) / np.sum(r * r)
    if flip > 0:
        d = r * ((-1.0) ** np.arange(r.shape[0]))[:, None]
        padded = np.vstack([d[:1], d, d[-1:]])
        r = np.array(
            [np.average(padded[t : t + 3], axis=0, weights=[1, 2, 1]) for t in range(len(d))]
        )
    return r, float(flip), bool(flip > 0)


def principal_plane(resid: np.ndarray) -> tuple[np.ndarray, float]:
    """Top-two right singular vectors (p, 2) of a residual and their share of the energy."""
    _, s, vt = np.linalg.svd(resid, full_matrices=False)
    return vt[:2].T, float((s[0] ** 2 + s[1] ** 2) / np.sum(s**2))


def _smooth(v: np.ndarray, half: int) -> np.ndarray:
    n = v.size
    return np.array([v[max(0, t - half) : min(n, t + half + 1)].mean() for t in range(n)])


def _gate(v: np.ndarray, fraction: float) -> tuple[int, int, int]:
    peak = int(np.argmax(v))
    above = np.flatnonzero(v >= fraction * v[peak])
    return peak, int(above[0]), int(above[-1])


def _ols(t: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    if t.size < 3:
        return np.nan, np.nan
    (slope, icpt), cov = np.polyfit(t, y, 1, cov="unscaled")
    resid = y - (slope * t + icpt)
    return float(slope), float(np.sqrt(np.sum(resid**2) / (t.size - 2) * cov[0, 0]))


def plane_features(
    x: np.ndarray, y: np.ndarray, norm: np.ndarray, active_fraction: float, radius_half: int
) -> np.ndarray:
    """The kernel's feature vector (FEATURES order) for one plane trajectory."""
    out = np.full(len(FEATURES), np.nan)
    rad = np.hypot(x, y)
    rs = _smooth(rad, radius_half)
    _, a, b = _gate(rs, active_fraction)
    ns = _smooth(norm, radius_half)
    peak, ea, eb = _gate(ns, active_fraction)
    dphi = np.arctan2(x[:-1] * y[1:] - y[:-1] * x[1:], x[:-1] * x[1:] + y[:-1] * y[1:])
    span = slice(a, b)
    c = rad[:-1] * rad[1:]
    turns = dphi[span].sum() / (2 * np.pi)
    coherence = abs(np.sum(c[span] * dphi[span])) / np.sum(c[span] * np.abs(dphi[span]))
    before = dphi[a : max(a, min(peak, b))].sum() / (2 * np.pi)
    out[0], out[1], out[2] = turns, coherence, coherence * turns
    # weighted least squares of the unwrapped phase, weights radius^2 (normalised)
    phase = np.concatenate([[0.0], np.cumsum(dphi[a:b])])
    t = np.arange(phase.size, dtype=float)
    w = rs[a : b + 1] ** 2
    w = w / w.sum()
    tm, pm = np.sum(w * t), np.sum(w * phase)
    sxx = np.sum(w * (t - tm) ** 2)
    sxy = np.sum(w * (t - tm) * (phase - pm))
    syy = np.sum(w * (phase - pm) ** 2)
    slope = sxy / sxx
    n_eff = 1.0 / np.sum(w**2)
    out[3] = slope
    out[4] = np.sqrt(max(syy - slope * sxy, 0.0) / (n_eff - 2.0) / sxx)
    out[5] = sxy**2 / (sxx * syy)
    logr = np.log(ns)
    tt = np.arange(x.size, dtype=float)
    out[6], out[7] = _ols(tt[ea : peak + 1], logr[ea : peak + 1])
    out[8], out[9] = _ols(tt[peak : eb + 1], logr[peak : eb + 1])
    out[10], out[11] = before, turns - before
    out[12], out[13], out[14] = a, peak, b
    return out


def winding_score(x: np.ndarray, y: np.ndarray, active_fraction: float, radius_half: int) -> float:
    """Coherence of the winding over the active span (the surrogate statistic)."""
    return float(plane_features(x, y, np.hypot(x, y), active_fraction, radius_half)[1])


def apply_phases(spec: np.ndarray, uniform: np.ndarray, keep_last: bool) -> np.ndarray:
    """``spec`` (w, c, f) times ``exp(2 pi i u)`` for ``uniform`` (w, k, c, f), DC kept."""
    factor = np.exp(2j * np.pi * uniform)
    factor[..., 0] = 1.0
    if keep_last:
        factor[..., -1] = 1.0
    return spec[:, None] * factor


def plane_turn(seg: np.ndarray, min_rows: int) -> tuple[float, float, float]:
    """Turn between the energy halves, its noise level, and the flatter half's eigenvalue ratio."""
    if seg.shape[0] < 2 * min_rows:
        return np.nan, np.nan, np.nan
    energy = np.cumsum(np.sum(seg**2, axis=1))
    cut = int(np.searchsorted(energy, 0.5 * energy[-1])) + 1
    if cut < min_rows or seg.shape[0] - cut < min_rows:
        return np.nan, np.nan, np.nan

    def plane(rows):
        centred = rows - rows.mean(axis=0)
        _, s, vt = np.linalg.svd(centred, full_matrices=False)
        return vt[:2].T, s[1] ** 2 / s[0] ** 2

    def angle(u, v):
        return float(np.degrees(np.max(scipy.linalg.subspace_angles(u, v))))

    halves = (seg[:cut], seg[cut:])
    (p1, r1), (p2, r2) = plane(halves[0]), plane(halves[1])
    split = [angle(plane(h[0::2])[0], plane(h[1::2])[0]) for h in halves]
    return angle(p1, p2), 0.5 * float(np.hypot(*split)), float(min(r1, r2))


def arms(
    theta: np.ndarray, half: int, axes: np.ndarray, active_fraction: float, radius_half: int
) -> dict[str, float]:
    """The two interleaved arms of one window (n, p) on the plane ``axes`` (p, 2): winding and
    coherence of the even and the odd steps of the raw residual (no flip frame), and their
    counter-phase ``-Re <o, e> / (|e| |o|)`` with the plane read as complex numbers."""
    n = theta.shape[0]
    width = 2 * half + 1
    ma = np.array([theta[t : t + width].mean(axis=0) for t in range(n - 2 * half)])
    raw = theta[half : n - half] - ma
    raw = raw - raw.mean(axis=0)
    k = raw.shape[0] // 2
    z = raw @ axes
    out = {}
    arm = {}
    for parity, name in enumerate(("even", "odd")):
        rows = np.arange(parity, 2 * k, 2)
        x, y = z[rows, 0].copy(), z[rows, 1].copy()
        feats = plane_features(
            x, y, np.linalg.norm(raw[rows], axis=1), active_fraction, radius_half
        )
        out[f"arm_winding_{name}"] = feats[FEATURES.index("winding")]
        out[f"arm_coherence_{name}"] = feats[FEATURES.index("coherence")]
        arm[name] = x + 1j * y
    e, o = arm["even"], arm["odd"]
    out["arm_counter_phase"] = float(-np.vdot(e, o).real / (np.linalg.norm(e) * np.linalg.norm(o)))
    return out


def sequential_surrogate_test(xs, ys, observed, params, keys, stop_exceedances):
    """The sequential surrogate test drawn the plain way: one window at a time, a block of 20
    surrogates between checks of the stopping rule, each window's surrogates scored by
    ``geomtraj.analysis.spirals.surrogate_scores``, p-values by their definitions (the stopped
    ``min(1, 2 h / k)`` and the min-p rank rule after all surrogates). Returns (p, n_used)."""
    from geomtraj.analysis import spirals as sp

    n = params.n_surrogates
    p_value = np.empty(len(xs))
    used = np.zeros(len(xs), dtype=np.int64)
    for i in range(len(xs)):
        rng = sp.window_rng(params.seed, keys[i])
        coh, quad = np.empty(0), np.empty(0)
        while used[i] < n:
            step = min(20, n - used[i])
            c, q = sp.surrogate_scores(xs[i : i + 1], ys[i : i + 1], params, [rng], step)
            coh, quad = np.append(coh, c[0]), np.append(quad, q[0])
            used[i] += step
            h = min(np.sum(coh >= observed[0][i]), np.sum(quad >= observed[1][i]))
            if h >= stop_exceedances[i] and used[i] < n:
                break
        if used[i] < n:
            p_value[i] = min(1.0, 2.0 * h / used[i])
            continue
        samples = [np.append(observed[0][i], coh), np.append(observed[1][i], quad)]
        # p of each sample in each statistic: the share of samples scoring at least as high
        ranks = [np.mean(s[None, :] >= s[:, None], axis=1) for s in samples]
        t = np.minimum(*ranks)
        p_value[i] = np.mean(t <= t[0])
    return p_value, used
