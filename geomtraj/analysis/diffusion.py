"""Anomalous diffusion after convergence (Kunin et al., arXiv 2107.09133), and phase-space rotation.

After the loss has converged, parameters keep moving. Kunin et al. find that the mean squared
displacement grows as a power of the lag, ``MSD(k) ~ k^c``, and that motion in the phase space
(theta, velocity) rotates. This module measures both on the recorded parameters of each run
(docs/science.md, Anomalous diffusion).

Analysis window (the post-convergence segment)
    The loss is smoothed by a centred rolling median of ``log(train_loss)`` over
    :attr:`DiffusionParams.loss_smooth_steps` steps (so bursts, which last tens of steps, do not
    count). Its final level is the median of the smoothed log loss over the last
    :attr:`~DiffusionParams.final_frac` of the run. The window starts at the first step at which
    the smoothed loss comes within :attr:`~DiffusionParams.loss_factor` of that level (the first
    crossing: a rule "stays within" would let one late burst void the whole window), and ends at
    the last recorded (finite) row. A window shorter than
    :attr:`~DiffusionParams.min_window_rows` rows is not analysed.
Mean squared displacement
    ``MSD(k) = mean_t ||theta_{t+k} - theta_t||^2`` over all pairs in the window (summed over the
    recorded coordinates), computed for every lag at once by the FFT method: ``sum_t (x_{t+k} -
    x_t)^2`` is split into two sums of squares (prefix sums) and a correlation
    (by FFT, ``scipy.fft``). Coordinates are centred first; the MSD does not change, and
    the correlation loses no precision to a large mean.
Detrending
    Under full-batch training a slow drift dominates the raw displacement (``v^2 k^2``). The
    detrended MSD is that of the residual after subtracting, per coordinate, the least-squares line
    ``a + b*t`` over the analysis window: a constant drift velocity is removed, and what remains is
    the fluctuation about it. Detrending also removes the part of a genuine fluctuation that looks
    linear over the window, which lowers the MSD at lags approaching the window length; the fit
    range stops at :attr:`~DiffusionParams.fit_lag_max_frac` of the window for that reason.
Exponent ``c``
    Ordinary least squares of ``log MSD`` on ``log k`` over :attr:`~DiffusionParams.n_fit_lags`
    log-spaced lags from :attr:`~DiffusionParams.fit_lag_min` steps to ``fit_lag_max_frac`` of the
    window (log spacing weights every decade alike; all integer lags would let the longest, noisiest
    lags dominate). The lower end skips the first ~1/(1 - beta1) steps, where momentum correlates
    successive steps and makes short-lag motion ballistic; the exponent describes longer times.
Confidence interval: a block bootstrap over time
    The window is cut into :attr:`~DiffusionParams.n_blocks` consecutive blocks of start times. For
    each block and fit lag, the sum of squared displacements of the pairs that *start* in the
    block, and their number, are kept; a bootstrap resample draws blocks with replacement, the MSD
    is the ratio of the summed sums to the summed counts, and the exponent is refitted. The
    percentile interval of :attr:`~DiffusionParams.n_boot` resamples is the CI. Blocks over time,
    not coordinates, are the resampled unit because the question is how the estimate would vary
    over another stretch of the same dynamics, and because the coordinates of one network are
    strongly coupled (every burst moves all of them at once), so treating them as independent
    replicates would overstate the information. With the defaults a block (a tenth of the window)
    is as long as the longest fit lag, so pairs from different blocks overlap little. Increments of
    a long-memory process are correlated across blocks, which makes the interval somewhat too
    narrow; the trend is fitted once on the whole window, and its uncertainty is not resampled.
Measured accuracy (30 realisations of 16-coordinate fBm of 20000 steps, with the exact generator
    of tests/synth_dynamics.py)
    Detrended ``c - 2H``: mean -0.001 (H = 0.25), -0.010 (H = 0.5), -0.053 (H = 0.75), standard
    deviation 0.012 to 0.020. The bias at large H is what detrending costs: a superdiffusive
    fluctuation is partly linear over the window, and one realisation cannot tell it from drift.
    CI coverage of 2H is about 0.8 for H <= 0.5 (nominal 0.95) and poor (0.13) at H = 0.75, where
    the bias exceeds the interval's width. Read a CI as the sampling spread of the estimate, not
    as a guarantee about the exponent.
Phase space
    The detrended window is projected on its top :attr:`~DiffusionParams.n_components` principal
    directions. Along direction ``j``, ``x_t`` is the projection and ``y_t = (x_{t+1} - x_t) / dt``
    the velocity per step. The rotation per step is the mean signed angle between successive points
    ``(x_t/sd(x), y_t/sd(y))`` (radians per step; positive is counter-clockwise in the (theta,
    velocity) plane, so an oscillation, which turns clockwise there, gives a negative value, and a
    period-2 flip gives about ±pi). The probability-current rate is ``0.5*<x_t*y_{t+1} -
    x_{t+1}*y_t>`` (signed area swept per row, divided by ``dt^2``), also reported normalised by
    ``sd(x)*sd(y)``. Read both with their kinematic baseline in mind: with the forward-difference
    velocity, ``x_t*y_{t+1} - x_{t+1}*y_t = x_t*x_{t+2} - x_{t+1}^2`` exactly, so for any stationary
    series the current is ``-MSD(2)/4`` in expectation: (theta, velocity) space turns clockwise for
    every motion, reversible or not, because position grows where velocity is positive.
Velocity current (a detailed-balance test)
    The signed area swept per step by the *velocities* along the top two principal directions,
    ``0.5*<u1_t*u2_{t+1} - u1_{t+1}*u2_t> / (sd(u1)*sd(u2))`` with ``u_j`` the increments of the
    projections (a Levy-area rate of the increment process). It changes sign under time reversal,
    so it vanishes in expectation for stationary increments in detailed balance, and a non-zero
    value is a rotational probability current (Kunin et al.'s broken detailed balance). The same
    area taken on the *positions* is not a valid test for diffusing parameters: the principal
    components of a random walk are near-cosines (Hess 2002), ``(cos(pi t/N), cos(2 pi t/N))``,
    which sweep an area of about ``3.3/N`` per step whatever the dynamics (an isotropic random walk
    of 15000 steps gives 2e-4 to 4e-4, with bootstrap intervals that exclude zero). Signs refer to
    directions oriented so that their largest-magnitude component is positive. The CI is a
    percentile block bootstrap over the same :attr:`~DiffusionParams.n_blocks` time blocks.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr
from scipy import fft as sp_fft
from scipy.ndimage import median_filter

from geomtraj.analysis.base import RunData, finite_or_none, one_blas_thread, progress_callback
from geomtraj.analysis.declaration import Analysis, Column, Field, Figure, Needs, params_attr
from geomtraj.analysis.panels import panel_pages
from geomtraj.errors import GeomtrajError


@dataclass(frozen=True)
class DiffusionParams:
    """Thresholds of the diffusion analysis, with their defaults.

    Attributes
    ----------
    loss_factor : float
        The analysis window starts where the smoothed loss first comes within this factor of its
        final level (default 10: the loss has come down to within one decade of where it ends, so
        the fast initial descent, whose displacement is not diffusion, is left out).
    loss_smooth_steps : int
        Width of the rolling median of the log loss (default 501 steps, as the burst baseline: many
        times a burst's length, so bursts do not decide where convergence begins).
    final_frac : float
        Fraction of the run at its end that defines the final loss level (default 0.1).
    min_window_rows : int
        Fewest recorded rows in the window (default 1000): with ``n_blocks`` blocks and fit lags up
        to a tenth of the window, fewer rows leave too few pairs per lag.
    fit_lag_min : int
        Smallest lag of the exponent fit, in steps (default 10, about ``1/(1-beta1)`` for
        ``beta1 = 0.9``: below it momentum makes motion ballistic).
    fit_lag_max_frac : float
        Largest fit lag as a fraction of the window (default 0.1, so detrending and the shrinking
        number of pairs barely bias the MSD there).
    n_fit_lags : int
        Number of log-spaced lags in the fit (default 30; fewer when the range has fewer integers).
    max_lag_frac : float
        The stored MSD curves go up to this fraction of the window (default 0.5, for figures).
    n_curve_lags : int
        Points of the stored MSD curves (log-spaced; default 64).
    n_blocks : int
        Blocks of the time bootstrap (default 10; see the module docstring).
    n_boot : int
        Bootstrap resamples (default 1000).
    ci : float
        Coverage of the bootstrap interval (default 0.95).
    n_components : int
        Principal directions for the phase-space statistics (default 2).
    seed : int
        Seed of the bootstrap's random generator.
    """

    loss_factor: float = 10.0
    loss_smooth_steps: int = 501
    final_frac: float = 0.1
    min_window_rows: int = 1000
    fit_lag_min: int = 10
    fit_lag_max_frac: float = 0.1
    n_fit_lags: int = 30
    max_lag_frac: float = 0.5
    n_curve_lags: int = 64
    n_blocks: int = 10
    n_boot: int = 1000
    ci: float = 0.95
    n_components: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.loss_factor <= 1 or not 0 < self.final_frac <= 1:
            raise GeomtrajError(
                f"loss_factor={self.loss_factor}, final_frac={self.final_frac}; expected "
                "loss_factor > 1 and 0 < final_frac <= 1"
            )
        if not 0 < self.fit_lag_max_frac <= self.max_lag_frac < 1:
            raise GeomtrajError(
                f"fit_lag_max_frac={self.fit_lag_max_frac}, max_lag_frac={self.max_lag_frac}; "
                "expected 0 < fit_lag_max_frac <= max_lag_frac < 1"
            )
        if self.fit_lag_min < 1 or self.n_fit_lags < 3 or self.n_curve_lags < 2:
            raise GeomtrajError(
                f"fit_lag_min={self.fit_lag_min}, n_fit_lags={self.n_fit_lags}, n_curve_lags="
                f"{self.n_curve_lags}; expected >= 1, >= 3 and >= 2"
            )
        if self.n_blocks < 2 or self.n_boot < 100 or not 0 < self.ci < 1:
            raise GeomtrajError(
                f"n_blocks={self.n_blocks}, n_boot={self.n_boot}, ci={self.ci}; expected "
                "n_blocks >= 2, n_boot >= 100 and 0 < ci < 1"
            )
        if self.n_components < 1 or self.min_window_rows < 10:
            raise GeomtrajError(
                f"n_components={self.n_components}, min_window_rows={self.min_window_rows}; "
                "expected >= 1 and >= 10"
            )


# ----------------------------------------------------------------------------------- MSD


def _as_trajectory(x: np.ndarray, name: str = "x") -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[0] < 2:
        raise GeomtrajError(
            f"{name} has shape {x.shape}; expected (n_times >= 2, n_coords) or (n_times,)"
        )
    if not np.all(np.isfinite(x)):
        raise GeomtrajError(f"{name} holds non-finite values; cut the trajectory at divergence")
    return x


#: Up to this many lags :func:`msd_block_sums` sums the displacements directly; with more, the
#: FFT's cost (independent of the number of lags) is lower.
_DIRECT_MAX_LAGS = 128


def msd_block_sums(
    x: np.ndarray, lags: np.ndarray, n_blocks: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Sums of squared displacements at ``lags``, split by the block of the pair's start time.

    ``S[b, i]`` is the sum of ``||x_{t+lags[i]} - x_t||^2`` over start times ``t`` in block ``b``
    with ``t + lags[i] < n``, and ``N[b, i]`` the number of such pairs, for ``n_blocks``
    consecutive blocks of start times of (nearly) equal length. ``S.sum(0) / N.sum(0)`` is the
    MSD. Up to :data:`_DIRECT_MAX_LAGS` lags the displacements are summed directly (a JIT kernel);
    with more lags the cross term is a correlation computed by FFT, summed over coordinates before
    the inverse transform, and the squares come from prefix sums.

    Parameters
    ----------
    x : array_like, shape (n, n_coords) or (n,)
        Trajectory sampled at equal intervals.
    lags : array_like of int
        Lags in samples, each in ``0 .. n-1``.
    n_blocks : int
        Number of blocks of start times.

    Returns
    -------
    S, N : ndarray, shape (n_blocks, len(lags))
    """
    x = _as_trajectory(x)
    n = x.shape[0]
    lags = np.asarray(lags, dtype=np.int64)
    if lags.ndim != 1 or lags.size == 0 or lags.min() < 0 or lags.max() >= n:
        raise GeomtrajError(f"lags must be integers in 0..{n - 1}, got {lags!r}")
    if not 1 <= n_blocks <= n:
        raise GeomtrajError(f"n_blocks={n_blocks}; expected 1..{n} for {n} samples")
    edges = np.linspace(0, n, n_blocks + 1).round().astype(np.int64)
    S = np.zeros((n_blocks, lags.size))
    N = np.zeros((n_blocks, lags.size))
    if lags.size <= _DIRECT_MAX_LAGS:
        from geomtraj.analysis.kernels.msd import _msd_block_sums

        # direct sums: n * p per lag, cheaper than the FFT over every lag at an analysis's few
        # dozen, and free of the cancellation between the squares and the correlation
        _msd_block_sums(np.ascontiguousarray(x), lags, edges, S, N)
        return S, N
    x = x - x.mean(axis=0)
    sq = np.concatenate([[0.0], np.cumsum(np.einsum("ij,ij->i", x, x))])  # prefix sums of ||x||^2
    kmax = int(lags.max())
    for b in range(n_blocks):
        a, e = edges[b], edges[b + 1]
        if e <= a:
            continue
        first = x[a:e]
        second = x[a : min(e + kmax, n)]
        # corr[k] = sum_{i} first[i] . second[i + k] over i with i + k < len(second); the sum over
        # coordinates is taken on the spectra, so one inverse FFT serves all of them
        full = _summed_correlation(second, first)
        u = np.minimum(e, n - lags)  # pairs start at a .. u-1
        cnt = np.maximum(u - a, 0)
        has = cnt > 0
        k = lags[has]
        u = u[has]
        corr = full[first.shape[0] - 1 + k]
        S[b, has] = (sq[u] - sq[a]) + (sq[u + k] - sq[a + k]) - 2.0 * corr
        N[b] = cnt
    return S, N


def _summed_correlation(second: np.ndarray, first: np.ndarray) -> np.ndarray:
    """``sum_j fftconvolve(second[:, j], first[::-1, j], mode="full")`` with one inverse FFT."""
    length = second.shape[0] + first.shape[0] - 1
    nfft = sp_fft.next_fast_len(length, real=True)
    spec = sp_fft.rfft(second, nfft, axis=0) * sp_fft.rfft(first[::-1], nfft, axis=0)
    return sp_fft.irfft(spec.sum(axis=1), nfft)[:length]


def msd(x: np.ndarray, lags: np.ndarray) -> np.ndarray:
    """Mean squared displacement ``mean_t ||x_{t+k} - x_t||^2`` at each lag ``k`` (FFT method).

    Parameters
    ----------
    x : array_like, shape (n, n_coords) or (n,)
        Trajectory sampled at equal intervals.
    lags : array_like of int
        Lags in samples, ``0 .. n-1``.

    Returns
    -------
    ndarray, shape (len(lags),)
    """
    S, N = msd_block_sums(x, lags, 1)
    return S[0] / N[0]


def detrend_linear(x: np.ndarray) -> np.ndarray:
    """Residual of each coordinate after subtracting its least-squares line ``a + b*t``."""
    x = _as_trajectory(x)
    t = np.arange(x.shape[0], dtype=np.float64)
    t -= t.mean()
    # with centred t the normal equations decouple: a = mean(x), b = <t, x> / <t, t>
    centred = x - x.mean(axis=0)
    slope = (t @ centred) / (t @ t)
    return centred - np.outer(t, slope)


def log_lags(lo: float, hi: float, n: int) -> np.ndarray:
    """Up to ``n`` distinct integers spaced evenly in ``log`` from ``lo`` to ``hi`` (inclusive)."""
    lo, hi = max(1, int(np.ceil(lo))), int(np.floor(hi))
    if hi < lo:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.geomspace(lo, hi, n).round().astype(np.int64))


def fit_power_law(lags: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    """Exponent and prefactor of ``values ~ A * lags^c``: least squares in log-log coordinates."""
    lags = np.asarray(lags, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    ok = (lags > 0) & (values > 0) & np.isfinite(values)
    if ok.sum() < 2:
        return float("nan"), float("nan")
    c, log_a = np.polyfit(np.log(lags[ok]), np.log(values[ok]), 1)
    return float(c), float(np.exp(log_a))


@dataclass(frozen=True)
class ExponentFit:
    """Diffusion exponent of one trajectory.

    Attributes
    ----------
    exponent : float
        ``c`` of ``MSD ~ k^c`` over the fit lags.
    prefactor : float
        ``A`` of ``MSD ~ A k^c`` (lags in the units of ``dt``).
    ci : tuple of float
        Block-bootstrap percentile interval of ``c``.
    fit_lags : ndarray
        Lags used in the fit, in samples.
    r2 : float
        Coefficient of determination of the log-log fit (how close the MSD is to one power law).
    exponent_low, exponent_high : float
        Exponents fitted separately over the lower and upper halves of the fit lags (in log lag);
        their difference shows curvature that a single exponent hides.
    """

    exponent: float
    prefactor: float
    ci: tuple[float, float]
    fit_lags: np.ndarray
    r2: float
    exponent_low: float
    exponent_high: float


def diffusion_exponent(
    x: np.ndarray,
    *,
    detrend: bool = True,
    dt: float = 1.0,
    params: DiffusionParams = DiffusionParams(),
    rng: np.random.Generator | None = None,
) -> ExponentFit:
    """Exponent ``c`` of ``MSD(k) ~ k^c`` with a block-bootstrap CI (module docstring).

    Parameters
    ----------
    x : array_like, shape (n, n_coords) or (n,)
        The trajectory over the analysis window, one row every ``dt`` steps.
    detrend : bool
        Subtract each coordinate's linear fit first (default True).
    dt : float
        Steps between rows (the store's ``record_every``); fit lags are chosen in steps.
    params : DiffusionParams
    rng : numpy.random.Generator, optional
        Bootstrap generator (default: seeded with ``params.seed``).

    Returns
    -------
    ExponentFit
    """
    x = _as_trajectory(x)
    if detrend:
        x = detrend_linear(x)
    n = x.shape[0]
    lags = log_lags(params.fit_lag_min / dt, params.fit_lag_max_frac * n, params.n_fit_lags)
    if lags.size < 3:
        raise GeomtrajError(
            f"only {lags.size} fit lags between {params.fit_lag_min} steps and "
            f"{params.fit_lag_max_frac:g} x {n} rows; use a longer window or lower fit_lag_min"
        )
    S, N = msd_block_sums(x, lags, params.n_blocks)
    curve = S.sum(0) / N.sum(0)
    c, a = fit_power_law(lags * dt, curve)
    with np.errstate(divide="ignore", invalid="ignore"):
        resid = np.log(curve) - np.log(a) - c * np.log(lags * dt)
        spread = np.log(curve) - np.mean(np.log(curve))
    r2 = 1.0 - float(resid @ resid) / float(spread @ spread) if np.all(curve > 0) else np.nan
    half = lags.size // 2
    c_low, _ = fit_power_law(lags[: half + 1] * dt, curve[: half + 1])
    c_high, _ = fit_power_law(lags[half:] * dt, curve[half:])
    rng = rng or np.random.default_rng(params.seed)
    pick = rng.integers(0, params.n_blocks, size=(params.n_boot, params.n_blocks))
    num = S[pick].sum(axis=1)
    den = N[pick].sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        boot_msd = num / den
    log_k = np.log(lags * dt)
    log_k = log_k - log_k.mean()
    with np.errstate(divide="ignore", invalid="ignore"):
        ly = np.log(boot_msd)
    good = np.all(np.isfinite(ly), axis=1)
    slopes = (ly[good] - ly[good].mean(axis=1, keepdims=True)) @ log_k / (log_k @ log_k)
    alpha = (1 - params.ci) / 2
    ci = (float(np.quantile(slopes, alpha)), float(np.quantile(slopes, 1 - alpha)))
    return ExponentFit(c, a, ci, lags, r2, c_low, c_high)


# ---------------------------------------------------------------------------- phase space


def phase_space(x: np.ndarray, *, dt: float = 1.0) -> dict[str, float]:
    """Rotation per step and probability-current rate of one coordinate in (x, velocity).

    Parameters
    ----------
    x : array_like, shape (n,)
        A coordinate (e.g. a principal component of the detrended trajectory), one row every
        ``dt`` steps.
    dt : float
        Steps between rows.

    Returns
    -------
    dict
        ``rotation`` (mean signed angle per step between successive normalised phase points,
        radians, counter-clockwise positive), ``current`` (``0.5*<x_t*y_{t+1} - x_{t+1}*y_t>`` per
        step, in units of x^2/step^2), ``current_normalised`` (``current / (sd(x)*sd(y))``).
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1 or x.size < 4 or not np.all(np.isfinite(x)):
        raise GeomtrajError(f"phase_space needs a finite 1-D series of >= 4 values, got {x.shape}")
    y = np.diff(x) / dt
    p = x[:-1]
    sx, sy = p.std(), y.std()
    nan = float("nan")
    if sx == 0 or sy == 0:
        return {"rotation": nan, "current": nan, "current_normalised": nan}
    z = p / sx + 1j * y / sy
    nz = z != 0
    turn = np.angle(z[1:][nz[1:] & nz[:-1]] * np.conj(z[:-1][nz[1:] & nz[:-1]]))
    current = 0.5 * np.mean(p[:-1] * y[1:] - p[1:] * y[:-1]) / dt
    return {
        "rotation": float(turn.mean() / dt) if turn.size else nan,
        "current": float(current),
        "current_normalised": float(current * dt / (sx * sy)),
    }


def levy_area_rate(
    p1: np.ndarray,
    p2: np.ndarray,
    *,
    dt: float = 1.0,
    n_blocks: int = 10,
    n_boot: int = 1000,
    ci: float = 0.95,
    rng: np.random.Generator | None = None,
) -> tuple[float, tuple[float, float]]:
    """Normalised signed area swept per step in the ``(p1, p2)`` plane, with a block-bootstrap CI.

    ``0.5*<p1_t*p2_{t+1} - p1_{t+1}*p2_t> / (sd(p1)*sd(p2)) / dt``: zero in expectation for a
    *stationary* process in detailed balance (time reversal flips its sign), non-zero for a
    rotational probability current. Apply it to stationary series (increments of a diffusing
    trajectory, not its positions: see the module docstring). The CI resamples ``n_blocks``
    consecutive blocks of time with replacement.
    """
    p1 = np.asarray(p1, dtype=np.float64)
    p2 = np.asarray(p2, dtype=np.float64)
    if p1.ndim != 1 or p1.shape != p2.shape or p1.size < 2 * n_blocks + 1:
        raise GeomtrajError(
            f"levy_area_rate needs two 1-D series of one length >= {2 * n_blocks + 1}, got "
            f"{p1.shape} and {p2.shape}"
        )
    s1, s2 = p1.std(), p2.std()
    if s1 == 0 or s2 == 0:
        return float("nan"), (float("nan"), float("nan"))
    area = 0.5 * (p1[:-1] * p2[1:] - p1[1:] * p2[:-1]) / (s1 * s2 * dt)
    edges = np.linspace(0, area.size, n_blocks + 1).round().astype(np.int64)
    sums = np.add.reduceat(area, edges[:-1])
    counts = np.diff(edges).astype(np.float64)
    rng = rng or np.random.default_rng(0)
    pick = rng.integers(0, n_blocks, size=(n_boot, n_blocks))
    boot = sums[pick].sum(axis=1) / counts[pick].sum(axis=1)
    alpha = (1 - ci) / 2
    return float(area.mean()), (
        float(np.quantile(boot, alpha)),
        float(np.quantile(boot, 1 - alpha)),
    )


def principal_directions(x: np.ndarray, n_components: int) -> tuple[np.ndarray, np.ndarray]:
    """Top principal directions of a trajectory (rows) and their explained-variance fractions.

    :class:`sklearn.decomposition.PCA` with the covariance eigensolver (an ``n_coords x
    n_coords`` eigenproblem, cheaper than an SVD of the long ``n_times x n_coords`` matrix). Each
    direction is oriented so that its largest-magnitude component is positive (scikit-learn's own
    convention, re-applied here so that it holds whatever the version): eigenvectors have no sign
    of their own, and the sign of the position-space current depends on the orientation.
    """
    from sklearn.decomposition import PCA

    x = _as_trajectory(x)
    k = min(n_components, *x.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        pca = PCA(n_components=k, svd_solver="covariance_eigh").fit(x)
    dirs = pca.components_
    lead = dirs[np.arange(k), np.argmax(np.abs(dirs), axis=1)]
    dirs = dirs * np.where(lead < 0, -1.0, 1.0)[:, None]
    explained = pca.explained_variance_ratio_
    # a motionless trajectory has no variance to explain
    return dirs, explained if np.all(np.isfinite(explained)) else np.full(k, np.nan)


# ------------------------------------------------------------------------ analysis window


def convergence_window(
    loss: np.ndarray, steps: np.ndarray, params: DiffusionParams = DiffusionParams()
) -> int | None:
    """First step at which the smoothed loss has come within ``loss_factor`` of its final level.

    Parameters
    ----------
    loss : array_like
        Per-step loss (finite), e.g. ``RunData.train_loss``.
    steps : array_like of int
        Steps of ``loss``.

    Returns
    -------
    int or None
        The step, or None for an empty series.
    """
    loss = np.asarray(loss, dtype=np.float64)
    steps = np.asarray(steps, dtype=np.int64)
    if loss.shape != steps.shape or loss.ndim != 1:
        raise GeomtrajError(f"loss {loss.shape} and steps {steps.shape} must be 1-D of one length")
    if loss.size == 0:
        return None
    y = np.log(np.maximum(loss, 1e-300))
    w = min(params.loss_smooth_steps | 1, loss.size if loss.size % 2 else loss.size - 1)
    # padded, not clipped like the burst baseline's: a clipped first window sees the converged
    # loss already and would put the window at step 0 of a run that starts far above its floor
    smooth = median_filter(y, size=max(w, 1), mode="nearest")
    tail = max(1, int(round(params.final_frac * loss.size)))
    final = np.median(smooth[-tail:])
    # first crossing, not "stays below": a single late burst would otherwise void the window
    start = int(np.argmax(smooth <= final + np.log(params.loss_factor)))
    return int(steps[start])


# ------------------------------------------------------------------------------ protocol


_SCALARS = (
    "window_start",
    "window_end",
    "window_rows",
    "exponent",
    "ci_low",
    "ci_high",
    "prefactor",
    "exponent_raw",
    "ci_raw_low",
    "ci_raw_high",
    "prefactor_raw",
    "fit_lag_min",
    "fit_lag_max",
    "fit_r2",
    "exponent_low",
    "exponent_high",
    "drift_speed",
    "velocity_current",
    "velocity_current_ci_low",
    "velocity_current_ci_high",
)


def analyze(
    ds: xr.Dataset,
    runs: Iterable[int] | None = None,
    *,
    progress=None,
    params: DiffusionParams | None = None,
) -> xr.Dataset:
    """MSD curves, diffusion exponents and phase-space statistics of ``runs`` (all by default).

    Parameters
    ----------
    ds : xarray.Dataset
        A store opened with :func:`geomtraj.store.open_store`.
    runs : iterable of int, optional
        Store run indices.
    progress : None, bool or callable
        False/None: silent; True: a progress bar; a callable is called with each finished run.
    params : DiffusionParams, optional

    Returns
    -------
    xarray.Dataset
        Over ``run``: the window (``window_start``, ``window_end`` steps, ``window_rows``), the
        detrended exponent ``exponent`` with ``ci_low``/``ci_high`` and ``prefactor``, the same for
        the raw MSD (``*_raw``), the fit range in steps with ``fit_r2``, ``exponent_low`` and
        ``exponent_high``, ``drift_speed`` (norm of the fitted drift velocity per step),
        ``velocity_current`` with its CI (current of the increments along the top two
        directions), ``note``;
        over (``run``, ``lag``): ``msd`` and ``msd_raw`` at log-spaced lags in steps (NaN beyond a
        run's window); over (``run``, ``component``): ``rotation``,
        ``current``, ``current_normalised`` and ``explained_variance``.
    """
    params = params or DiffusionParams()
    n_runs = ds.sizes["run"]
    indices = list(range(n_runs)) if runs is None else [int(r) for r in runs]
    if not indices:
        raise GeomtrajError("runs is empty; pass at least one run index (or None for all)")
    for r in indices:
        if not 0 <= r < n_runs:
            raise GeomtrajError(f"run {r} not in the store (it has runs 0..{n_runs - 1})")
    record_every = int(ds.attrs.get("record_every", 1))
    n_rows = ds.sizes["step"]
    # one lag grid for the whole store, so blocks of runs concatenate
    lag_rows = log_lags(1, params.max_lag_frac * n_rows, params.n_curve_lags)
    lag_steps = lag_rows * record_every
    nc = params.n_components
    scal = {k: np.full(len(indices), np.nan) for k in _SCALARS}
    notes = [""] * len(indices)
    curves = {k: np.full((len(indices), lag_rows.size), np.nan) for k in ("msd", "msd_raw")}
    phase = {
        k: np.full((len(indices), nc), np.nan)
        for k in ("rotation", "current", "current_normalised", "explained_variance")
    }
    tick, close = progress_callback(progress, len(indices), "diffusion")
    # a second BLAS thread doubled the CPU time of this loop and saved no wall time (measured on
    # 16 runs of 50,000 steps: 1.5 CPU-s against 0.73, both 0.73 s wall)
    try:
        with one_blas_thread():
            for i, r in enumerate(indices):
                notes[i] = _one_run(RunData(ds, r), params, lag_rows, i, scal, curves, phase)
                tick(1)
    finally:
        close()
    data = {k: (("run",), v) for k, v in scal.items()}
    data["note"] = (("run",), np.asarray(notes, dtype=object))
    for k, v in curves.items():
        data[k] = (("run", "lag"), v)
    for k, v in phase.items():
        data[k] = (("run", "component"), v)
    out = xr.Dataset(
        data,
        coords={
            "run": np.asarray(indices, dtype=np.int64),
            "lag": lag_steps,
            "component": np.arange(nc),
        },
    )
    out.attrs["analysis"] = "diffusion"
    out.attrs["params"] = params_attr(params)
    out["lag"].attrs["units"] = "steps"
    out["msd"].attrs["method"] = "FFT, linear trend per coordinate removed over the window"
    out["msd_raw"].attrs["method"] = "FFT, no detrending"
    out["rotation"].attrs["units"] = "radians per step, counter-clockwise in (theta, velocity)"
    return out


def _one_run(run: RunData, params, lag_rows, i, scal, curves, phase) -> str:
    dt = float(run.record_every)
    steps = run.step
    if run.iteration.size == 0 or steps.size == 0:
        return "no finite recorded rows"
    start = convergence_window(run.train_loss, run.iteration, params)
    if start <= run.iteration[0]:
        # the loss is within loss_factor of its final level from the first step on: no descent,
        # so no converged segment to speak of (a run that diverges before converging, say)
        return (
            f"the loss never fell by a factor {params.loss_factor:g} towards its final level: "
            "no post-convergence segment"
        )
    rows = steps >= start
    theta = run.theta[rows]
    n = theta.shape[0]
    scal["window_start"][i] = start
    scal["window_end"][i] = steps[-1]
    scal["window_rows"][i] = n
    if n < params.min_window_rows:
        return (
            f"post-convergence window has {n} rows (from step {start}); needs "
            f"{params.min_window_rows}: train longer or lower loss_factor"
        )
    if theta.shape[1] == 0:
        return "no recorded parameters"
    rng = np.random.default_rng(params.seed)
    resid = detrend_linear(theta)
    drift = (theta[-1] - resid[-1]) - (theta[0] - resid[0])  # the fitted line's ends
    scal["drift_speed"][i] = np.linalg.norm(drift) / (dt * (n - 1))
    ok = lag_rows < n * params.max_lag_frac
    lags_here = lag_rows[ok]
    curves["msd"][i, ok] = msd(resid, lags_here)
    curves["msd_raw"][i, ok] = msd(theta, lags_here)
    try:
        det = diffusion_exponent(resid, detrend=False, dt=dt, params=params, rng=rng)
        raw = diffusion_exponent(theta, detrend=False, dt=dt, params=params, rng=rng)
    except GeomtrajError as err:
        return str(err)
    scal["exponent"][i], scal["prefactor"][i] = det.exponent, det.prefactor
    scal["ci_low"][i], scal["ci_high"][i] = det.ci
    scal["exponent_raw"][i], scal["prefactor_raw"][i] = raw.exponent, raw.prefactor
    scal["ci_raw_low"][i], scal["ci_raw_high"][i] = raw.ci
    scal["fit_lag_min"][i] = det.fit_lags[0] * dt
    scal["fit_lag_max"][i] = det.fit_lags[-1] * dt
    scal["fit_r2"][i] = det.r2
    scal["exponent_low"][i], scal["exponent_high"][i] = det.exponent_low, det.exponent_high
    directions, explained = principal_directions(resid, params.n_components)
    proj = (resid - resid.mean(axis=0)) @ directions.T
    for j in range(directions.shape[0]):
        ps = phase_space(proj[:, j], dt=dt)
        phase["rotation"][i, j] = ps["rotation"]
        phase["current"][i, j] = ps["current"]
        phase["current_normalised"][i, j] = ps["current_normalised"]
        phase["explained_variance"][i, j] = explained[j]
    if directions.shape[0] >= 2:
        boot = {"n_blocks": params.n_blocks, "n_boot": params.n_boot, "ci": params.ci}
        vel = np.diff(proj[:, :2], axis=0)
        cur, (lo, hi) = levy_area_rate(vel[:, 0], vel[:, 1], dt=dt, rng=rng, **boot)
        scal["velocity_current"][i] = cur
        scal["velocity_current_ci_low"][i], scal["velocity_current_ci_high"][i] = lo, hi
    return ""


def report(result: xr.Dataset) -> dict:
    """Contract-4 ``diffusion`` section and per-run fields.

    ``diffusion`` lists, per run: ``exponent`` (detrended) with its block-bootstrap ``ci``,
    ``detrended: true``, ``exponent_raw`` and ``ci_raw``, the ``fit_lags`` range and the
    ``window`` (steps), the fit diagnostics ``fit_r2``, ``exponent_low`` and ``exponent_high``
    (lower and upper half of the fit lags), ``drift_speed``, per principal direction
    ``rotation_per_step``, ``probability_current`` and ``probability_current_normalised`` in the
    (theta, velocity) plane, and ``velocity_current`` with ``velocity_current_ci``, the current
    of the increments along the top two principal directions (the module docstring says how to
    read each).
    """
    entries, runs_out = [], {}
    for i, r in enumerate(result["run"].values.tolist()):
        v = {k: result[k].values[i] for k in _SCALARS}
        exp = finite_or_none(v["exponent"])
        entry = {
            "run": int(r),
            "exponent": exp,
            "ci": [finite_or_none(v["ci_low"]), finite_or_none(v["ci_high"])]
            if exp is not None
            else None,
            "detrended": True,
            "exponent_raw": finite_or_none(v["exponent_raw"]),
            "ci_raw": (
                [finite_or_none(v["ci_raw_low"]), finite_or_none(v["ci_raw_high"])]
                if finite_or_none(v["exponent_raw"]) is not None
                else None
            ),
            "fit_lags": (
                [int(v["fit_lag_min"]), int(v["fit_lag_max"])]
                if np.isfinite(v["fit_lag_min"])
                else None
            ),
            "window": (
                [int(v["window_start"]), int(v["window_end"])]
                if np.isfinite(v["window_start"])
                else None
            ),
            "fit_r2": finite_or_none(v["fit_r2"]),
            "exponent_low": finite_or_none(v["exponent_low"]),
            "exponent_high": finite_or_none(v["exponent_high"]),
            "drift_speed": finite_or_none(v["drift_speed"]),
            "rotation_per_step": [finite_or_none(x) for x in result["rotation"].values[i]],
            "probability_current": [finite_or_none(x) for x in result["current"].values[i]],
            "probability_current_normalised": [
                finite_or_none(x) for x in result["current_normalised"].values[i]
            ],
            "velocity_current": finite_or_none(v["velocity_current"]),
            "velocity_current_ci": (
                [
                    finite_or_none(v["velocity_current_ci_low"]),
                    finite_or_none(v["velocity_current_ci_high"]),
                ]
                if finite_or_none(v["velocity_current"]) is not None
                else None
            ),
            "note": str(result["note"].values[i]),
        }
        entries.append(entry)
        runs_out[int(r)] = {"diffusion": {"exponent": exp, "ci": entry["ci"]}}
    return {"runs": runs_out, "diffusion": entries}


# ------------------------------------------------------------------------------ figures


def figures(
    ds: xr.Dataset, result: xr.Dataset, outdir, *, per_figure: int = 12, max_runs: int = 24
) -> list[Path]:
    """MSD against lag on log-log axes, raw and detrended, with the fitted power law.

    One PNG per ``per_figure`` runs: ``diffusion_msd_<k>.png``. At most ``max_runs`` runs are
    drawn, evenly spread over the analysed runs (a grid of 1600 runs would otherwise make 134
    pages); every run's numbers are in the report.
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    lags = result["lag"].values.astype(float)
    n = result.sizes["run"]
    idx = np.unique(np.round(np.linspace(0, n - 1, min(n, max_runs))).astype(int))
    return panel_pages(
        idx, lambda ax, i: _draw_msd(ax, result, i, lags), outdir, "diffusion_msd", per_figure
    )


def _draw_msd(ax, result, i, lags):
    r = int(result["run"].values[i])
    ax.loglog(lags, result["msd_raw"].values[i], "o", ms=2, color="C1", label="raw")
    ax.loglog(lags, result["msd"].values[i], "o", ms=2, color="C0", label="detrended")
    lo, hi = result["fit_lag_min"].values[i], result["fit_lag_max"].values[i]
    if np.isfinite(lo):
        kk = np.geomspace(lo, hi, 20)
        for pre, c, col, name in (
            ("prefactor", "exponent", "C0", "c"),
            ("prefactor_raw", "exponent_raw", "C1", "c_raw"),
        ):
            a, e = result[pre].values[i], result[c].values[i]
            ax.loglog(kk, a * kk**e, "-", color=col, lw=1.2, label=f"{name} = {e:.2f}")
        ax.axvspan(lo, hi, color="gray", alpha=0.1)
    ax.set_title(f"run {r}", fontsize=8)
    ax.set_xlabel("lag (steps)")
    ax.set_ylabel("MSD")
    ax.legend(fontsize=6)


# -------------------------------------------------------------------------------- declaration

ANALYSIS = Analysis(
    name="diffusion",
    analyze=analyze,
    report=report,
    draw=figures,
    params=DiffusionParams,
    summary="mean squared displacement of the parameters after convergence, detrended",
    needs=Needs(variables=("theta", "train_loss")),
    fields=(
        Field("diffusion.exponent", "", "MSD power-law exponent after removing the drift; "
              "1 is ordinary diffusion"),
        Field("diffusion.ci", "", "block-bootstrap confidence interval of the exponent", "ci"),
        Field("diffusion[].run", "", "the run index", "int", required=True, place="report"),
        Field("diffusion[].exponent", "", "MSD power-law exponent after removing the drift",
              required=True, place="report"),
        Field("diffusion[].ci", "", "block-bootstrap confidence interval of the exponent", "ci",
              required=True, place="report"),
        Field("diffusion[].detrended", "", "the exponent is of the detrended MSD", "bool",
              required=True, place="report"),
    ),
    columns=(Column("MSD exponent", "diffusion.exponent"),),
    figures=(
        Figure(
            r"diffusion_msd.*",
            "Mean squared displacement against lag, log-log, raw and detrended, with the fitted "
            "power law; runs spread evenly over the analysed runs. A slope of 1 is ordinary "
            "diffusion, above 1 superdiffusion.",
        ),
    ),
    sections=("diffusion",),
    section_defaults=lambda why: {"diffusion": []},
)  # fmt: skip
