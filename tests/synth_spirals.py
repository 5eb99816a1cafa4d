"""Synthetic trajectory windows with known spiral labels, for the spiral detector's tests.

Every window is an ``(n_steps, n_params)`` float64 array ``theta`` plus its truth. Signals are
built from the definitions in docs/spirals.md, not from the detector's code:

Spirals (``spiral=True``), a rotation ``w(t) = A r(t) (cos phi(t) + i e sin phi(t))`` (ellipticity
``e``) embedded in a plane of parameter space, on top of a background (linear drift, curvature,
a small random walk and white noise):

``damped``
    inward rotation, ``r = exp(-(t - t0)/tau)`` from a kick at ``t0`` (no flip).
``growing``
    outward rotation, ``r = exp((t - t1)/tau)`` up to ``t1`` (no flip).
``double``
    a burst: an outward arm then an inward arm (``r`` grows, peaks, decays) of one rotation sense,
    with the period-2 flip ``z = (-1)^t w``, so even and odd steps form two counter-phase arms.
``out_in``
    the same outward-then-inward envelope without the flip (double by the second reading of the
    definition: an outward arm followed by an inward arm of the same rotation sense).
``twisted``
    a damped or growing rotation (no flip) whose plane turns by 60 to 120 degrees about an axis in
    the plane, at a constant rate per unit of the spiral's accumulated energy.
``double_twisted``
    a flipped burst whose plane turns.

Noise (``spiral=False``):

``random_walk``
    Gaussian random walks, independent per parameter (the setting of Hess 2002, whose PCA gives
    cosines) or driven by 1 to 3 latent walks (low rank), plus optional drift.
``ar1``
    AR(1) noise ``x_t = phi x_{t-1} + e_t``, ``|phi|`` in [0.3, 0.98] and either sign (a negative
    ``phi`` alternates like a flip), independent or low rank.
``drift``
    linear plus quadratic drift in random directions with a little white noise, optionally
    rounded to a grid as float32 rounding would.

The number of turns of every spiral over its active part (``r >= 0.1 max r``) is drawn in
``[1.5, 5]``, so that the truth "winds at least once" holds with a margin (more turns when the
active part would otherwise be shorter than :data:`MIN_SPAN` steps); outward-then-inward
envelopes wind 3 to 6 turns, 40-60% of them on the way out, so that each arm is a spiral of at least
1.2 turns; its rotation period (of ``w``)
is 6 to 20 steps without the flip (the passband of the detector's 21-step moving average) and 6 to
60 steps with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SPIRAL_KINDS = ("damped", "growing", "double", "out_in", "twisted", "double_twisted")
NOISE_KINDS = ("random_walk", "ar1", "drift")
KINDS = SPIRAL_KINDS + NOISE_KINDS

#: Fraction of the peak radius that delimits a spiral's active part (as in the detector's default).
ACTIVE = 0.1

#: Shortest active part of a spiral, in steps. A plane fitted to fewer than 16 points in each half
#: of a shorter spiral is dominated by noise in tens of dimensions, so "twisted" is not measurable
#: there (the detector reports the turn as NaN); real burst windows last 50 to 150 steps.
MIN_SPAN = 32


@dataclass
class SynthWindow:
    """One synthetic window and its truth."""

    theta: np.ndarray
    kind: str
    spiral: bool
    double: bool
    twisted: bool
    info: dict = field(default_factory=dict)


def _orthonormal(rng: np.random.Generator, p: int, k: int) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((p, k)))
    return q[:, :k]


def _background(rng: np.random.Generator, n: int, p: int, scale: float) -> np.ndarray:
    """Drift, curvature, a small random walk and white noise, relative to ``scale``."""
    t = np.arange(n) / n
    drift = rng.uniform(0, 5) * scale * np.outer(t, rng.standard_normal(p) / np.sqrt(p))
    curve = rng.uniform(0, 2) * scale * np.outer(t**2, rng.standard_normal(p) / np.sqrt(p))
    walk_sigma = rng.uniform(0, 0.01) * scale
    walk = np.cumsum(walk_sigma * rng.standard_normal((n, p)), axis=0)
    white = rng.uniform(0.002, 0.02) * scale * rng.standard_normal((n, p))
    return drift + curve + walk + white


def _envelope(rng: np.random.Generator, shape: str, n: int, span: float) -> np.ndarray:
    """Radius profile, peak 1, whose active part (``r >= ACTIVE``) lasts ``span`` steps."""
    t = np.arange(n, dtype=float)
    log_gate = np.log(1.0 / ACTIVE)
    margin = 0.05 * n
    if shape == "damped":
        tau = span / log_gate
        t0 = rng.uniform(margin, n - margin - span)
        r = np.exp(-(t - t0) / tau)
        r[t < t0] = 0.0
    elif shape == "growing":
        tau = span / log_gate
        t1 = rng.uniform(margin + span, n - margin)
        r = np.exp((t - t1) / tau)
        r[t > t1] = 0.0
    else:  # burst: an outward arm, then an inward arm
        rise = rng.uniform(0.4, 0.6)
        tau_g, tau_d = rise * span / log_gate, (1 - rise) * span / log_gate
        tp = rng.uniform(margin + rise * span, n - margin - (1 - rise) * span)
        r = np.where(t < tp, np.exp((t - tp) / tau_g), np.exp(-(t - tp) / tau_d))
    return r / r.max()


def make_window(
    kind: str, rng: np.random.Generator, n_steps: int = 400, n_params: int = 64
) -> SynthWindow:
    """Draw one window of ``kind`` (see :data:`KINDS`)."""
    n, p = n_steps, n_params
    if kind in SPIRAL_KINDS:
        return _spiral(kind, rng, n, p)
    if kind == "random_walk":
        return _random_walk(rng, n, p)
    if kind == "ar1":
        return _ar1(rng, n, p)
    if kind == "drift":
        return _drift(rng, n, p)
    raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")


def _spiral(kind: str, rng: np.random.Generator, n: int, p: int) -> SynthWindow:
    flip = kind in ("double", "double_twisted")
    twisted = kind in ("twisted", "double_twisted")
    double = kind in ("double", "out_in", "double_twisted")
    if kind in ("damped", "growing"):
        shape = kind
    elif kind == "twisted":
        shape = str(rng.choice(["damped", "growing"]))
    else:
        shape = "burst"
    # rotation period of w: unflipped rotations stay in the detector's passband (<= 20 steps)
    period = rng.uniform(6.0, 60.0 if flip else 20.0)
    # outward-then-inward envelopes: each arm is a spiral of its own (at least 1.2 turns)
    turns = rng.uniform(3.0, 6.0) if shape == "burst" else rng.uniform(1.5, 5.0)
    span = min(max(turns * period, MIN_SPAN), 0.7 * n)
    turns = span / period
    if turns < 1.5:  # a long period in a short window: shorten the period instead
        period = span / 1.5
        turns = 1.5
    r = _envelope(rng, shape, n, span)
    sense = rng.choice([-1.0, 1.0])
    omega = sense * 2 * np.pi / period
    phi = omega * np.arange(n) + rng.uniform(0, 2 * np.pi)
    ellip = rng.uniform(0.4, 1.0)
    a = r * np.cos(phi)
    b = r * ellip * np.sin(phi)
    if flip:
        sign = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
        a, b = a * sign, b * sign
    u = _orthonormal(rng, p, 3)
    e1 = np.tile(u[:, 0], (n, 1))
    e2 = np.tile(u[:, 1], (n, 1))
    turn_deg = 0.0
    if twisted:
        # the plane turns about e1: e2 rotates toward u3 as the spiral's energy accumulates
        turn_deg = rng.uniform(60.0, 120.0)
        frac = np.cumsum(r**2) / np.sum(r**2)
        ang = np.deg2rad(turn_deg) * frac
        e2 = np.outer(np.cos(ang), u[:, 1]) + np.outer(np.sin(ang), u[:, 2])
    theta = a[:, None] * e1 + b[:, None] * e2
    theta += _background(rng, n, p, 1.0)
    theta += rng.standard_normal(p)  # an offset, as real parameters have
    info = {
        "turns": float(turns),
        "period": float(period),
        "omega": float(omega),
        "ellipticity": float(ellip),
        "flip": flip,
        "envelope": shape,
        "turn_deg": turn_deg,
    }
    return SynthWindow(theta, kind, True, double, twisted, info)


def _mix(rng: np.random.Generator, latent: np.ndarray, p: int) -> np.ndarray:
    """Embed ``k`` latent series in ``p`` parameters (random mixing, unit columns)."""
    k = latent.shape[1]
    mixing = rng.standard_normal((k, p)) / np.sqrt(k)
    return latent @ mixing


def _scales(rng: np.random.Generator, p: int) -> np.ndarray:
    return 10 ** rng.uniform(-1, 0, p)


def _random_walk(rng: np.random.Generator, n: int, p: int) -> SynthWindow:
    low_rank = rng.random() < 0.5
    if low_rank:
        k = int(rng.integers(1, 4))
        walk = _mix(rng, np.cumsum(rng.standard_normal((n, k)), axis=0), p)
        walk += 0.05 * rng.standard_normal((n, p))
    else:
        k = p
        walk = np.cumsum(rng.standard_normal((n, p)) * _scales(rng, p), axis=0)
    if rng.random() < 0.5:
        walk += np.outer(np.arange(n), rng.standard_normal(p)) * rng.uniform(0, 0.1)
    return SynthWindow(walk, "random_walk", False, False, False, {"rank": k})


def _ar1_series(rng: np.random.Generator, phi: float, n: int, k: int) -> np.ndarray:
    e = rng.standard_normal((n + 200, k))
    x = np.empty_like(e)
    x[0] = e[0]
    for t in range(1, n + 200):
        x[t] = phi * x[t - 1] + e[t]
    return x[200:]


def _ar1(rng: np.random.Generator, n: int, p: int) -> SynthWindow:
    phi = rng.uniform(0.3, 0.98) * rng.choice([-1.0, 1.0])
    low_rank = rng.random() < 0.5
    if low_rank:
        k = int(rng.integers(1, 4))
        x = _mix(rng, _ar1_series(rng, phi, n, k), p) + 0.05 * rng.standard_normal((n, p))
    else:
        k = p
        x = _ar1_series(rng, phi, n, p) * _scales(rng, p)
    return SynthWindow(x, "ar1", False, False, False, {"phi": float(phi), "rank": k})


def _drift(rng: np.random.Generator, n: int, p: int) -> SynthWindow:
    t = np.arange(n) / n
    x = np.outer(t, rng.standard_normal(p)) + np.outer(t**2, rng.standard_normal(p)) * rng.uniform(
        0, 1
    )
    x += rng.standard_normal(p)
    x += 10 ** rng.uniform(-5, -3) * rng.standard_normal((n, p))
    quantised = rng.random() < 0.5
    if quantised:
        # round to float32 to mimic the last-bit steps of a stored float32 trajectory
        x = x.astype(np.float32).astype(np.float64)
    return SynthWindow(x, "drift", False, False, False, {"quantised": quantised})


def make_set(
    n_per_kind: int, seed: int, n_steps: int = 400, n_params: int = 64, kinds=KINDS
) -> list[SynthWindow]:
    """``n_per_kind`` windows of each kind, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    return [make_window(k, rng, n_steps, n_params) for k in kinds for _ in range(n_per_kind)]


@dataclass
class SynthRun:
    """A synthetic run with the attributes the spiral analysis reads from
    :class:`geomtraj.analysis.base.RunData`: ``theta`` recorded at every step, and the update
    norm ``||theta_t - theta_{t-1}||`` per update, on which bursts are detected."""

    theta: np.ndarray
    run: int = 0
    record_every: int = 1
    info: dict = field(default_factory=dict)

    @property
    def step(self) -> np.ndarray:
        return np.arange(self.theta.shape[0], dtype=np.int64)

    @property
    def param_names(self) -> list[str]:
        return [f"W1[0,{j}]" for j in range(self.theta.shape[1])]

    @property
    def iteration(self) -> np.ndarray:
        return np.arange(1, self.theta.shape[0], dtype=np.int64)

    @property
    def update_norm(self) -> np.ndarray:
        return np.linalg.norm(np.diff(self.theta, axis=0), axis=1)

    @property
    def train_loss(self) -> np.ndarray:
        return np.ones(self.theta.shape[0] - 1)


def make_run(
    n_bursts: int, seed: int, period: int = 150, n_params: int = 12, run: int = 0
) -> SynthRun:
    """A run of ``n_bursts`` flipped bursts (``double`` spirals), one every ``period`` steps on
    a slow drift with white noise, their rotation period, sense and plane drawn per burst.

    Each burst grows and decays with e-folding times of 4 and 8 steps around its peak (the
    middle of its period) and flips every step, so the update norm jumps by about two orders
    of magnitude over the quiet steps between bursts: every burst is detected.
    """
    rng = np.random.default_rng(seed)
    n = (n_bursts + 1) * period
    t = np.arange(n, dtype=float)
    theta = np.outer(t / n, rng.standard_normal(n_params))
    theta += 1e-3 * rng.standard_normal((n, n_params))
    sign = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
    peaks = period * np.arange(1, n_bursts + 1)
    for tp in peaks:
        r = np.exp(-np.abs(t - tp) / np.where(t < tp, 4.0, 8.0))
        r[np.abs(t - tp) > period // 2 - 5] = 0.0
        phi = rng.choice([-1.0, 1.0]) * 2 * np.pi * t / rng.uniform(8.0, 20.0)
        u = _orthonormal(rng, n_params, 2)
        theta += np.outer(sign * r * np.cos(phi), u[:, 0]) + np.outer(
            sign * r * np.sin(phi), u[:, 1]
        )
    return SynthRun(theta, run, info={"peaks": peaks})


# -- null ensembles and rotating bursts, for the detector's measured error rates -----------------
#: Null ensembles: windows with no rotation at all, on which every spiral label is a false positive.
NULL_KINDS = ("random_walk", "ar1_pos", "ar1_neg", "white", "flip", "am_flip")


def _burst_envelope(t: np.ndarray, peak: float, tau_grow: float, tau_decay: float) -> np.ndarray:
    """``exp((t - peak)/tau_grow)`` before the peak, ``exp(-(t - peak)/tau_decay)`` after."""
    return np.where(t < peak, np.exp((t - peak) / tau_grow), np.exp(-(t - peak) / tau_decay))


def _smooth_noise(rng: np.random.Generator, n: int, k: int, width: float) -> np.ndarray:
    """``k`` unit-RMS Gaussian processes: white noise smoothed by a Gaussian of ``width`` steps."""
    t = np.arange(-int(4 * width), int(4 * width) + 1)
    kernel = np.exp(-0.5 * (t / width) ** 2)
    e = rng.standard_normal((n + kernel.size - 1, k))
    x = np.stack([np.convolve(e[:, j], kernel, mode="valid") for j in range(k)], axis=1)
    return x / np.sqrt(np.mean(x**2))


def null_window(kind: str, rng: np.random.Generator, n_rows: int, n_params: int) -> np.ndarray:
    """One window (n_rows, n_params) of a null ensemble of :data:`NULL_KINDS`; nothing rotates.

    ``random_walk``
        independent Gaussian random walks, per-parameter scales 0.1 to 1 (Hess 2002's diffusion);
    ``ar1_pos``, ``ar1_neg``
        independent AR(1) series with ``phi = +0.9`` (slow, red noise) and ``phi = -0.9`` (each
        step on the other side of the mean: a noisy period-2 flip with no direction);
    ``white``
        independent Gaussian white noise;
    ``flip``
        a period-2 flip along one line, ``(-1)^t r(t) u``, with a burst envelope (growth and decay
        e-folding times 3 to 20 steps, peak inside the window), on white noise of 1% to 30% of
        the peak and a slow drift;
    ``am_flip``
        a period-2 flip along two directions whose amplitudes are independent smooth random
        processes (Gaussian-smoothed noise, width 3 to 30 steps) under a burst envelope: the
        flip-frame point wanders in a plane without a sense of rotation.
    """
    n, p = n_rows, n_params
    t = np.arange(n, dtype=float)
    sign = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
    if kind == "random_walk":
        return np.cumsum(rng.standard_normal((n, p)) * _scales(rng, p), axis=0)
    if kind in ("ar1_pos", "ar1_neg"):
        return _ar1_series(rng, 0.9 if kind == "ar1_pos" else -0.9, n, p) * _scales(rng, p)
    if kind == "white":
        return rng.standard_normal((n, p)) * _scales(rng, p)
    if kind in ("flip", "am_flip"):
        peak = rng.uniform(0.3, 0.7) * n
        env = _burst_envelope(t, peak, rng.uniform(3.0, 20.0), rng.uniform(3.0, 20.0))
        if kind == "flip":
            amp = env[:, None] * _orthonormal(rng, p, 1).T
        else:
            mod = _smooth_noise(rng, n, 2, rng.uniform(3.0, 30.0))
            amp = (env[:, None] * mod) @ _orthonormal(rng, p, 2).T
        theta = sign[:, None] * amp
        theta += rng.uniform(0.01, 0.3) * rng.standard_normal((n, p))
        theta += np.outer(t / n, rng.standard_normal(p))
        return theta
    raise ValueError(f"unknown null kind {kind!r}; expected one of {NULL_KINDS}")


def rotating_burst(
    rng: np.random.Generator,
    turns: float,
    efold: float,
    noise: float,
    n_rows: int,
    n_params: int,
    flip: bool = True,
    plane_turn: float = 0.0,
) -> np.ndarray:
    """A burst that rotates: ``w`` turns ``turns`` times over its active part (``r >= 0.1``).

    The radius grows and decays with e-folding time ``efold`` around a peak at the window's
    middle (active part ``2 efold ln 10`` steps, half outward and half inward); the rotation has
    a random sense, ellipticity 0.5 to 1 and plane. With ``flip`` the point flips every step,
    ``z = (-1)^t w``: the even and the odd steps are two counter-phase arms, and every window is
    a double spiral by both readings once it winds at least twice. White noise of standard
    deviation ``noise`` (the peak radius is 1) is added to every parameter, with a slow drift.
    With ``plane_turn`` (degrees) the plane turns about its first axis by that angle over the
    burst, at a constant rate per unit of accumulated energy (twisted).
    """
    n, p = n_rows, n_params
    t = np.arange(n, dtype=float)
    peak = 0.5 * n + rng.uniform(-1.0, 1.0)
    r = _burst_envelope(t, peak, efold, efold)
    period = 2.0 * efold * np.log(1.0 / ACTIVE) / turns
    phi = rng.choice([-1.0, 1.0]) * 2.0 * np.pi * t / period + rng.uniform(0, 2 * np.pi)
    a = r * np.cos(phi)
    b = r * rng.uniform(0.5, 1.0) * np.sin(phi)
    if flip:
        sign = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
        a, b = a * sign, b * sign
    u = _orthonormal(rng, p, 3)
    ang = np.deg2rad(plane_turn) * np.cumsum(r**2) / np.sum(r**2)
    e2 = np.outer(np.cos(ang), u[:, 1]) + np.outer(np.sin(ang), u[:, 2])
    theta = np.outer(a, u[:, 0]) + b[:, None] * e2
    theta += noise * rng.standard_normal((n, p))
    theta += np.outer(t / n, rng.standard_normal(p))
    return theta
