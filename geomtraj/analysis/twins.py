"""Twin divergence (Sun et al., arXiv 2206.02001): how a last-bit perturbation grows and saturates.

A twin (``twin_of >= 0``) is a copy of its original that differs by one perturbation: ``ulp`` moves
one parameter by a unit in the last place just before update ``T`` (rows up to ``T - 1`` are
equal), and ``scale`` computes every update as ``(lr*k)*(u/k)`` from update 1 on (so ``T = 1``).
For each twin this module measures, on the recorded parameters (docs/science.md, Twin divergence):

Divergence curves
    ``d_t = ||a_t - b_t|| / ||a_t||`` (relative L2, ``a`` the original, ``b`` the twin) and Sun's
    relative L1 ``2*mean(|a_t - b_t| / (|a_t| + |b_t|))`` (coordinates where both are exactly zero
    count as equal).
``d_0``
    The separation just after the perturbation: the median of the non-zero ``d_t`` over the first
    :attr:`TwinParams.d0_rows` recorded rows at or after ``T``. It is also given in units of the
    run's format epsilon (``d0_ulps``): a single last-bit change of one of ``n`` recorded
    coordinates of similar size gives roughly ``1/sqrt(n)`` to ``1``.
Growth phase, finite-time Lyapunov exponent and saturation step
    A continuous two-segment ("hinge") least-squares fit to ``log d_t`` over the rows from ``T`` to
    the end: ``log d = a + lambda*(t - T) + c*max(t - t_sat, 0)``, with the breakpoint ``t_sat``
    searched over every recorded step that leaves :attr:`TwinParams.min_segment_rows` rows on each
    side (solved exactly for all breakpoints at once from prefix sums). The slope of the first
    segment, ``lambda`` (natural log per step), is the finite-time Lyapunov exponent of the growth
    phase, and ``t_sat`` is the **saturation step**: the step at which exponential growth gives way
    to a plateau. A least-squares breakpoint is robust to the step-to-step jitter of ``d_t`` (Adam's
    flips make ``log d`` oscillate by several units inside bursts) where a first-crossing rule would
    fire on a single spike. The growth counts as **saturated** only when the slope after ``t_sat``
    is below :attr:`TwinParams.plateau_slope_frac` times ``lambda`` and the amplification is at
    least :attr:`TwinParams.min_amplification`; otherwise ``saturation_step`` is ``None``, with a
    note.
``d_sat`` and the amplification ``d_sat / d_0``
    ``d_sat`` is the geometric mean of ``d_t`` over the rows from ``t_sat`` for as many steps as the
    growth phase lasted (at least ``min_segment_rows`` rows): the level right after saturation.
    Recorded parameters keep separating slowly after saturation (diffusion along flat directions),
    so a level taken at the end of the run would depend on the run length.
Burst and quiet exponents
    Over the growth phase, the increments of ``log d`` between successive recorded rows are split
    by a burst mask of the *original* run (:func:`geomtraj.analysis.events.run_bursts` on its
    update norm, or a mask passed in): ``lambda_burst = sum(dlog d in bursts) / (steps in
    bursts)``, and likewise ``lambda_quiet``. Sums of increments telescope, so the jitter of
    ``log d`` enters only at the burst boundaries, and ``lambda`` is the step-weighted mean of the
    two. A burst spans its spike's whole rise and decay (``BurstParams()``), so on runs whose
    spikes decay into the next the quiet phase is the trough between them (docs/periods.md,
    "One definition of a burst for every analysis").

Across runs, :func:`report` compares the spread of the final loss that perturbations cause (the
original and its twins, same seed) with the spread that seeds cause (originals that differ only by
seed), per precision: Sun's headline comparison (see :func:`spread_comparison`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from geomtraj.analysis.base import RunData, progress_callback
from geomtraj.analysis.declaration import (
    Analysis,
    Column,
    Field,
    Figure,
    Needs,
    params_attr,
    params_from_result,
)
from geomtraj.analysis.panels import panel_pages
from geomtraj.errors import GeomtrajError
from geomtraj.formats import FORMATS

#: Machine epsilon (spacing of the format at 1) of each precision a run can compute in.
FORMAT_EPS = {f.name: f.machine_epsilon for f in FORMATS.values()}

#: Hyper-parameters that must agree for two originals to count as seeds of one configuration.
SEED_GROUP_KEYS = (
    "precision",
    "beta1",
    "beta2",
    "lr",
    "eps",
    "weight_decay",
    "hidden",
    "activation",
    "dataset",
)

#: Further per-run store variables that must agree too, where the store has them.
SEED_GROUP_EXTRA = ("loss_fn", "batch_size", "data_index")


def _config_label(run: RunData) -> str:
    """Every setting of a run except its seed: equal labels make seeds of one configuration."""
    parts = [f"{k}={run.hyper[k]!r}" for k in SEED_GROUP_KEYS]
    for k in SEED_GROUP_EXTRA:
        if k in run.ds:
            parts.append(f"{k}={np.asarray(run.ds[k].isel(run=run.run).values).item()!r}")
    return "|".join(parts)


@dataclass(frozen=True)
class TwinParams:
    """Thresholds of the twin-divergence analysis, with their defaults.

    Attributes
    ----------
    d0_rows : int
        Recorded rows at and after the perturbation step whose median non-zero ``d_t`` is ``d_0``
        (default 5). One row would do in exact arithmetic; a few rows smooth over the first updates,
        in which the perturbation of an unrecorded parameter reaches the recorded ones only after
        rounding (a float32 row can still be identical right after the perturbation).
    min_segment_rows : int
        Fewest recorded rows on each side of the hinge breakpoint (default 20), so that neither
        slope rests on a handful of points.
    plateau_slope_frac : float
        The growth counts as saturated when the slope after the breakpoint is below this fraction of
        the growth slope (default 0.1: growth has slowed at least tenfold).
    min_amplification : float
        Below this ``d_sat / d_0`` there is no growth phase to speak of (default 10): neither a
        Lyapunov exponent nor a saturation step is reported.
    curve_points : int
        Most points of each stored divergence curve (default 2000), sampled evenly over the store's
        recorded steps; fits always use every row.
    final_window_frac : float
        Fraction of the run at its end over which the windowed final loss (geometric mean) is taken
        (default 0.05). The last-step loss is Sun's literal measure; the windowed one is less
        sensitive to whether the last step falls inside a burst.
    n_boot : int
        Bootstrap resamples for the CI of the perturbation/seed spread ratio (default 2000).
    ci : float
        Coverage of the bootstrap intervals (default 0.95).
    seed : int
        Seed of the bootstrap's random generator (results are reproducible).
    burst_signal : str
        Per-step signal of the original run on which bursts are detected (default
        ``"update_norm"``, the signal :mod:`geomtraj.analysis.events` is calibrated on).
    """

    d0_rows: int = 5
    min_segment_rows: int = 20
    plateau_slope_frac: float = 0.1
    min_amplification: float = 10.0
    curve_points: int = 2000
    final_window_frac: float = 0.05
    n_boot: int = 2000
    ci: float = 0.95
    seed: int = 0
    burst_signal: str = "update_norm"

    def __post_init__(self) -> None:
        if self.d0_rows < 1 or self.min_segment_rows < 2 or self.curve_points < 2:
            raise GeomtrajError(
                f"d0_rows={self.d0_rows}, min_segment_rows={self.min_segment_rows}, "
                f"curve_points={self.curve_points}; expected >= 1, >= 2 and >= 2"
            )
        if not (0 < self.plateau_slope_frac < 1 and self.min_amplification >= 1):
            raise GeomtrajError(
                f"plateau_slope_frac={self.plateau_slope_frac}, min_amplification="
                f"{self.min_amplification}; expected 0 < plateau_slope_frac < 1 and "
                "min_amplification >= 1"
            )
        if not (0 < self.final_window_frac <= 1 and 0 < self.ci < 1 and self.n_boot >= 100):
            raise GeomtrajError(
                f"final_window_frac={self.final_window_frac}, ci={self.ci}, n_boot={self.n_boot}; "
                "expected 0 < final_window_frac <= 1, 0 < ci < 1 and n_boot >= 100"
            )


# --------------------------------------------------------------------------- divergence curves


def divergence_curves(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Relative L2 and Sun's relative L1 distance between two trajectories, row by row.

    Parameters
    ----------
    a, b : array_like, shape (n_rows, n_coords)
        The original's and the twin's recorded parameters at the same steps.

    Returns
    -------
    l2 : ndarray, shape (n_rows,)
        ``||a_t - b_t|| / ||a_t||`` (NaN where ``a_t`` is all zero).
    l1 : ndarray, shape (n_rows,)
        ``2*mean(|a_t - b_t| / (|a_t| + |b_t|))``; a coordinate that is zero in both counts as 0.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise GeomtrajError(
            f"divergence_curves needs two (rows, coords) arrays of one shape, got {a.shape} and "
            f"{b.shape}; pass the recorded theta of the original and of its twin"
        )
    diff = a - b
    norm = np.linalg.norm(a, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        l2 = np.linalg.norm(diff, axis=1) / norm
        den = np.abs(a) + np.abs(b)
        ratio = np.where(den > 0, np.abs(diff) / np.where(den > 0, den, 1.0), 0.0)
    l2[norm == 0] = np.nan
    return l2, 2.0 * ratio.mean(axis=1)


# --------------------------------------------------------------------------------- hinge fit


@dataclass(frozen=True)
class Hinge:
    """A continuous two-segment line ``y = a + slope*(t - t0) + (slope2 - slope)*max(t - tb, 0)``.

    Attributes
    ----------
    t0 : float
        Origin of the first segment.
    intercept : float
        ``a``, the value at ``t0``.
    slope, slope2 : float
        Slopes before and after the breakpoint, per unit of ``t``.
    breakpoint : float
        ``tb``, one of the sample positions.
    sse : float
        Residual sum of squares.
    r2_first : float
        Coefficient of determination of the fit over the first segment's samples.
    """

    t0: float
    intercept: float
    slope: float
    slope2: float
    breakpoint: float
    sse: float
    r2_first: float

    def __call__(self, t: np.ndarray) -> np.ndarray:
        t = np.asarray(t, dtype=np.float64)
        return (
            self.intercept
            + self.slope * (t - self.t0)
            + (self.slope2 - self.slope) * np.maximum(t - self.breakpoint, 0.0)
        )


def fit_hinge(t: np.ndarray, y: np.ndarray, min_segment: int = 20) -> Hinge:
    """Least-squares continuous two-segment line through ``(t, y)``, breakpoint at a sample.

    Every admissible breakpoint (leaving ``min_segment`` samples on each side) is tried at once:
    the 3x3 normal equations of ``[1, t, max(t - tb, 0)]`` are assembled from suffix sums of
    ``1, t, t^2, y, t*y`` and solved in one batch, so the cost is linear in the number of samples.

    Parameters
    ----------
    t : array_like, shape (n,)
        Increasing sample positions (steps).
    y : array_like, shape (n,)
        Finite values (``log d_t``).
    min_segment : int
        Fewest samples on each side of the breakpoint.

    Returns
    -------
    Hinge
    """
    t = np.asarray(t, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n = t.size
    if t.ndim != 1 or y.shape != t.shape:
        raise GeomtrajError(f"fit_hinge needs 1-D t and y of one length, got {t.shape}, {y.shape}")
    if n < 2 * min_segment + 1:
        raise GeomtrajError(
            f"fit_hinge got {n} samples; needs at least {2 * min_segment + 1} for two segments of "
            f"{min_segment}; lower min_segment or use a longer curve"
        )
    if not (np.all(np.isfinite(y)) and np.all(np.diff(t) > 0)):
        raise GeomtrajError("fit_hinge needs finite y and strictly increasing t")
    # Centre and scale for conditioning: steps are ~1e4, log d ~ -30.
    t0, span = t[0], t[-1] - t[0]
    u = (t - t0) / span
    ym = y.mean()
    z = y - ym

    # suffix sums S[j] = sum over i >= j
    def suffix(x):
        return np.cumsum(x[::-1])[::-1]

    c1, cu, cuu, cz, cuz = (suffix(x) for x in (np.ones(n), u, u * u, z, u * z))
    j = np.arange(min_segment, n - min_segment)
    tau = u[j]
    nb, ub, uub, zb, uzb = c1[j], cu[j], cuu[j], cz[j], cuz[j]
    sh = ub - tau * nb
    shh = uub - 2 * tau * ub + tau * tau * nb
    suh = uub - tau * ub
    shz = uzb - tau * zb
    xtx = np.empty((j.size, 3, 3))
    xtx[:, 0, 0] = n
    xtx[:, 0, 1] = xtx[:, 1, 0] = cu[0]
    xtx[:, 1, 1] = cuu[0]
    xtx[:, 0, 2] = xtx[:, 2, 0] = sh
    xtx[:, 1, 2] = xtx[:, 2, 1] = suh
    xtx[:, 2, 2] = shh
    xty = np.stack([np.full(j.size, cz[0]), np.full(j.size, cuz[0]), shz], axis=1)
    beta = np.linalg.solve(xtx, xty[..., None])[..., 0]
    sse = np.sum(z * z) - np.einsum("ij,ij->i", beta, xty)
    best = int(np.argmin(sse))
    a, b, c = beta[best]
    k = int(j[best])
    first = slice(0, k + 1)
    pred = a + b * u[first]
    resid = z[first] - pred
    tot = z[first] - z[first].mean()
    r2 = 1.0 - float(resid @ resid) / float(tot @ tot) if float(tot @ tot) > 0 else 0.0
    return Hinge(
        t0=float(t0),
        intercept=float(a + ym),
        slope=float(b / span),
        slope2=float((b + c) / span),
        breakpoint=float(t[k]),
        sse=float(max(sse[best], 0.0)),
        r2_first=r2,
    )


# ------------------------------------------------------------------------- one twin, arrays


@dataclass(frozen=True)
class TwinFit:
    """Growth and saturation of one divergence curve (see the module docstring).

    Attributes
    ----------
    perturbation_step : int
        ``T``: the first update at which the twin can differ.
    d0, d0_ulps : float
        Initial separation, and the same in units of the format's epsilon (NaN if unknown).
    d_sat, amplification : float
        Level right after saturation and ``d_sat / d0``.
    lyapunov : float or None
        Growth-phase slope of ``log d`` per step (None: no growth phase).
    lyapunov_burst, lyapunov_quiet : float or None
        The same restricted to burst and to quiet steps of the growth phase.
    burst_fraction : float or None
        Fraction of the growth phase's steps inside bursts.
    saturation_step : int or None
        Hinge breakpoint, when the growth saturated.
    plateau_slope : float
        Slope of ``log d`` after the breakpoint.
    growth_r2 : float
        Fit quality of the growth segment.
    hinge : Hinge or None
        The fitted line (None when too few rows).
    note : str
        Why a quantity is None, or "".
    """

    perturbation_step: int
    d0: float
    d0_ulps: float
    d_sat: float
    amplification: float
    lyapunov: float | None
    lyapunov_burst: float | None
    lyapunov_quiet: float | None
    burst_fraction: float | None
    saturation_step: int | None
    plateau_slope: float
    growth_r2: float
    hinge: Hinge | None
    note: str


def fit_divergence(
    steps: np.ndarray,
    d: np.ndarray,
    perturbation_step: int,
    *,
    burst_mask: np.ndarray | None = None,
    eps: float | None = None,
    params: TwinParams = TwinParams(),
) -> TwinFit:
    """Measure growth, saturation and the Lyapunov exponents of one divergence curve.

    Parameters
    ----------
    steps : array_like of int, shape (n,)
        Steps of the curve's rows (increasing).
    d : array_like, shape (n,)
        The divergence ``d_t`` (relative L2 or L1) at ``steps``. Zeros (rows still identical) and
        non-finite values are left out of every fit.
    perturbation_step : int
        ``T``, the first update at which the twin differs (1 for ``scale`` twins).
    burst_mask : array_like of bool, shape (n,), optional
        True at steps inside bursts of the original run; without it the burst and quiet exponents
        are None.
    eps : float, optional
        Machine epsilon of the run's format, for ``d0_ulps``.
    params : TwinParams

    Returns
    -------
    TwinFit
    """
    steps = np.asarray(steps, dtype=np.int64)
    d = np.asarray(d, dtype=np.float64)
    if steps.ndim != 1 or d.shape != steps.shape:
        raise GeomtrajError(
            f"fit_divergence needs 1-D steps and d of one length, got {steps.shape} and {d.shape}"
        )
    if burst_mask is not None:
        burst_mask = np.asarray(burst_mask, dtype=bool)
        if burst_mask.shape != steps.shape:
            raise GeomtrajError(
                f"burst_mask has shape {burst_mask.shape}, steps {steps.shape}; pass one flag per "
                "row (Bursts.mask(steps))"
            )
    T = int(perturbation_step)
    after = steps >= T
    good = after & np.isfinite(d) & (d > 0)
    nan = float("nan")
    first_rows = d[after][: params.d0_rows]
    first_rows = first_rows[np.isfinite(first_rows) & (first_rows > 0)]
    d0 = float(np.median(first_rows)) if first_rows.size else nan
    d0_ulps = d0 / eps if eps else nan

    def unmeasured(note: str, **measured) -> TwinFit:
        """A fit with no growth phase: the Lyapunov exponents and saturation step are None."""
        fields = {"d_sat": nan, "amplification": nan, "plateau_slope": nan, "growth_r2": nan}
        fields["hinge"] = None
        fields.update(measured)
        none = dict.fromkeys(
            ("lyapunov", "lyapunov_burst", "lyapunov_quiet", "burst_fraction", "saturation_step")
        )
        return TwinFit(perturbation_step=T, d0=d0, d0_ulps=d0_ulps, note=note, **none, **fields)

    if not np.isfinite(d0):
        return unmeasured(
            f"the twin equals its original in the first {params.d0_rows} rows from T={T}"
        )
    t, y = steps[good], np.log(d[good])
    if t.size < 2 * params.min_segment_rows + 1:
        return unmeasured(f"only {t.size} rows with d > 0 after T={T}; too few for a growth fit")
    hinge = fit_hinge(t, y, params.min_segment_rows)
    t_sat = int(hinge.breakpoint)
    # d_sat: level over as many steps after the breakpoint as the growth phase took
    length = max(t_sat - T, 1)
    window = (t >= t_sat) & (t <= t_sat + length)
    if window.sum() < params.min_segment_rows:
        window = np.flatnonzero(t >= t_sat)[: params.min_segment_rows]
    d_sat = float(np.exp(np.mean(y[window])))
    amplification = d_sat / d0
    growth = hinge.slope
    if not (growth > 0 and amplification >= params.min_amplification):
        return unmeasured(
            f"no growth phase: slope {growth:.3g}/step, amplification {amplification:.3g} "
            f"(at least {params.min_amplification:g} needed)",
            d_sat=d_sat,
            amplification=amplification,
            plateau_slope=hinge.slope2,
            growth_r2=hinge.r2_first,
            hinge=hinge,
        )
    notes = []
    saturated = hinge.slope2 < params.plateau_slope_frac * growth
    if not saturated:
        notes.append(
            f"not saturated: slope after the breakpoint {hinge.slope2:.3g}/step is not below "
            f"{params.plateau_slope_frac:g} x the growth slope {growth:.3g}/step"
        )
    lam_b = lam_q = frac_b = None
    if burst_mask is not None:
        lam_b, lam_q, frac_b = _burst_quiet_rates(t, y, burst_mask[good], T, t_sat)
        if lam_b is None:
            notes.append("no burst step inside the growth phase")
        if lam_q is None:
            notes.append("no quiet step inside the growth phase")
    return TwinFit(
        perturbation_step=T,
        d0=d0,
        d0_ulps=d0_ulps,
        d_sat=d_sat,
        amplification=amplification,
        lyapunov=growth,
        lyapunov_burst=lam_b,
        lyapunov_quiet=lam_q,
        burst_fraction=frac_b,
        saturation_step=t_sat if saturated else None,
        plateau_slope=hinge.slope2,
        growth_r2=hinge.r2_first,
        hinge=hinge,
        note="; ".join(notes),
    )


def _burst_quiet_rates(t, y, in_burst, T, t_sat):
    """Step-weighted mean growth rate of ``y`` over burst and over quiet steps of ``[T, t_sat]``.

    The increment from one row to the next is attributed to the phase of the step it ends on.
    """
    phase = (t > T) & (t <= t_sat)
    dy = np.diff(y)
    dt = np.diff(t).astype(np.float64)
    end_phase = phase[1:]
    end_burst = in_burst[1:]
    out = []
    for sel in (end_phase & end_burst, end_phase & ~end_burst):
        steps_in = dt[sel].sum()
        out.append(float(dy[sel].sum() / steps_in) if steps_in > 0 else None)
    total = dt[end_phase].sum()
    frac = float(dt[end_phase & end_burst].sum() / total) if total > 0 else None
    return out[0], out[1], frac


# ------------------------------------------------------------------------------ labels


_ULP = re.compile(r"^ulp:([+-]?\d+)@(.+)@t=(\d+)$")
_SCALE = re.compile(r"^scale:k=(.+)$")


def perturbation_step(label: str) -> int:
    """The first update at which a twin can differ, from its ``perturbation`` label.

    ``ulp:+1@W1[0,3]@t=2000`` gives 2000 (the parameter is moved just before update 2000);
    ``scale:k=3`` gives 1 (every update is rescaled).
    """
    m = _ULP.match(label)
    if m:
        return int(m.group(3))
    if _SCALE.match(label):
        return 1
    raise GeomtrajError(
        f"perturbation label {label!r} not understood; expected 'ulp:+N@NAME@t=T' or 'scale:k=K'"
    )


# ------------------------------------------------------------------------------ protocol


_SCALARS = (
    "perturbation_step",
    "d0",
    "d0_ulps",
    "d_sat",
    "amplification",
    "lyapunov",
    "lyapunov_l1",
    "lyapunov_burst",
    "lyapunov_quiet",
    "burst_fraction",
    "saturation_step",
    "plateau_slope",
    "growth_r2",
    "hinge_intercept",
    "hinge_t0",
    "final_distance",
    "final_distance_full",
)


def _final_losses(run: RunData, frac: float) -> tuple[float, float]:
    loss = run.train_loss
    if run.diverged_step is not None or loss.size == 0:
        return float("nan"), float("nan")
    w = max(1, int(round(frac * loss.size)))
    tail = loss[-w:]
    return float(loss[-1]), float(np.exp(np.mean(np.log(np.maximum(tail, 1e-300)))))


def analyze(
    ds: xr.Dataset,
    runs: Iterable[int] | None = None,
    *,
    progress=None,
    bursts: str | Mapping[int, np.ndarray] | None = "auto",
    params: TwinParams | None = None,
) -> xr.Dataset:
    """Twin divergence of every twin among ``runs``, and the final loss of every run.

    Parameters
    ----------
    ds : xarray.Dataset
        A store opened with :func:`geomtraj.store.open_store`.
    runs : iterable of int, optional
        Store run indices (all by default). A twin's original is read even when it is not listed.
    progress : None, bool or callable
        False/None: silent; True: a progress bar; a callable is called with each finished run.
    bursts : "auto", mapping or None
        Burst masks for the burst/quiet exponents: ``"auto"`` detects bursts on the original run
        (:func:`geomtraj.analysis.events.run_bursts`); a mapping ``{twin run: bool array over the
        store's recorded steps}`` supplies them; None skips the split.
    params : TwinParams, optional

    Returns
    -------
    xarray.Dataset
        Over ``run``: the scalars of :class:`TwinFit` (NaN where not measurable; ``saturation_step``
        -1), ``lyapunov_l1`` (growth slope of Sun's L1 curve), ``final_distance`` (last common row)
        and ``final_distance_full`` (relative L2 of ``theta_final`` over all parameters),
        ``final_loss`` and ``final_loss_window``, ``note``, ``config`` (every setting but the
        seed, which groups originals into seeds of one configuration), the run labels, and the
        curves ``divergence_l2`` and ``divergence_l1`` over ``div_step`` (at most
        ``curve_points`` of the store's steps).
    """
    params = params or TwinParams()
    n_runs = ds.sizes["run"]
    indices = list(range(n_runs)) if runs is None else [int(r) for r in runs]
    if not indices:
        raise GeomtrajError("runs is empty; pass at least one run index (or None for all)")
    for r in indices:
        if not 0 <= r < n_runs:
            raise GeomtrajError(f"run {r} not in the store (it has runs 0..{n_runs - 1})")
    if isinstance(bursts, str) and bursts != "auto":
        raise GeomtrajError(f"bursts={bursts!r}; expected 'auto', a mapping of masks, or None")
    all_steps = np.asarray(ds["step"].values, dtype=np.int64)
    pick = np.unique(np.linspace(0, all_steps.size - 1, params.curve_points).round().astype(int))
    div_step = all_steps[pick]
    tick, close = progress_callback(progress, len(indices), "twins")
    rows = []
    curves_l2 = np.full((len(indices), pick.size), np.nan)
    curves_l1 = np.full((len(indices), pick.size), np.nan)
    try:
        for i, r in enumerate(indices):
            run = RunData(ds, r)
            out = {k: np.nan for k in _SCALARS}
            out["saturation_step"] = -1
            out["note"] = ""
            out["config"] = _config_label(run)
            out["final_loss"], out["final_loss_window"] = _final_losses(
                run, params.final_window_frac
            )
            if run.hyper["twin_of"] >= 0:
                l2, l1, res = _one_twin(ds, run, bursts, params)
                out.update(res)
                n = min(l2.size, all_steps.size)
                keep = pick < n
                curves_l2[i, keep] = l2[pick[keep]]
                curves_l1[i, keep] = l1[pick[keep]]
            rows.append((run, out))
            tick(1)
    finally:
        close()
    return _to_dataset(indices, rows, div_step, curves_l2, curves_l1, params)


def _one_twin(ds, twin: RunData, bursts, params: TwinParams):
    orig = RunData(ds, twin.hyper["twin_of"])
    label = twin.hyper["perturbation"]
    T = perturbation_step(label)
    n = min(orig.theta.shape[0], twin.theta.shape[0])
    if orig.param_names != twin.param_names:
        raise GeomtrajError(
            f"run {twin.run} records {twin.param_names[:3]}... but its original {orig.run} records "
            f"{orig.param_names[:3]}...; twins must record the same parameters"
        )
    steps = orig.step[:n]
    l2, l1 = divergence_curves(orig.theta[:n], twin.theta[:n])
    mask, notes = None, []
    if isinstance(bursts, Mapping):
        if twin.run in bursts:
            m = np.asarray(bursts[twin.run], dtype=bool)
            mask = m[:n]
    elif bursts == "auto":
        from geomtraj.analysis.events import run_bursts

        b = run_bursts(orig, params.burst_signal)
        mask = b.mask(steps)
    eps = FORMAT_EPS.get(twin.hyper["precision"])
    fit = fit_divergence(steps, l2, T, burst_mask=mask, eps=eps, params=params)
    fit_l1 = fit_divergence(steps, l1, T, eps=eps, params=params)
    before = steps < T
    if np.any(l2[before] != 0):
        notes.append(f"differs from its original before T={T}")
    if twin.diverged_step is not None or orig.diverged_step is not None:
        notes.append("a run of the pair diverged; compared up to the first divergence")
    if fit.note:
        notes.insert(0, fit.note)
    res = {
        "perturbation_step": T,
        "d0": fit.d0,
        "d0_ulps": fit.d0_ulps,
        "d_sat": fit.d_sat,
        "amplification": fit.amplification,
        "lyapunov": _nan(fit.lyapunov),
        "lyapunov_l1": _nan(fit_l1.lyapunov),
        "lyapunov_burst": _nan(fit.lyapunov_burst),
        "lyapunov_quiet": _nan(fit.lyapunov_quiet),
        "burst_fraction": _nan(fit.burst_fraction),
        "saturation_step": -1 if fit.saturation_step is None else fit.saturation_step,
        "plateau_slope": fit.plateau_slope,
        "growth_r2": fit.growth_r2,
        "hinge_intercept": fit.hinge.intercept if fit.hinge else np.nan,
        "hinge_t0": fit.hinge.t0 if fit.hinge else np.nan,
        "final_distance": float(l2[n - 1]) if n else np.nan,
        "final_distance_full": _full_distance(ds, orig.run, twin.run),
        "note": "; ".join(notes),
    }
    return l2, l1, res


def _full_distance(ds, a: int, b: int) -> float:
    if "theta_final" not in ds:
        return float("nan")
    n = int(ds["n_params"].values[a])
    ta = np.asarray(ds["theta_final"].isel(run=a).values[:n], dtype=np.float64)
    tb = np.asarray(ds["theta_final"].isel(run=b).values[:n], dtype=np.float64)
    return float(np.linalg.norm(ta - tb) / np.linalg.norm(ta))


def _nan(x):
    return np.nan if x is None else x


def _to_dataset(indices, rows, div_step, curves_l2, curves_l1, params) -> xr.Dataset:
    data = {}
    for k in _SCALARS:
        dtype = np.int64 if k in ("perturbation_step", "saturation_step") else np.float64
        vals = [out[k] for _, out in rows]
        if dtype is np.int64:
            vals = [
                -1 if (v is None or (isinstance(v, float) and np.isnan(v))) else v for v in vals
            ]
        data[k] = (("run",), np.asarray(vals, dtype=dtype))
    for k in ("final_loss", "final_loss_window"):
        data[k] = (("run",), np.asarray([out[k] for _, out in rows], dtype=np.float64))
    for k in ("note", "config"):
        data[k] = (("run",), np.asarray([out[k] for _, out in rows], dtype=object))
    for k in ("twin_of", "seed", "diverged_step"):
        data[k] = (("run",), np.asarray([run.hyper[k] for run, _ in rows], dtype=np.int64))
    for k in SEED_GROUP_KEYS + ("perturbation",):
        vals = [run.hyper[k] for run, _ in rows]
        data[k] = (("run",), np.asarray(vals, dtype=object if isinstance(vals[0], str) else float))
    data["divergence_l2"] = (("run", "div_step"), curves_l2)
    data["divergence_l1"] = (("run", "div_step"), curves_l1)
    ds = xr.Dataset(data, coords={"run": np.asarray(indices, dtype=np.int64), "div_step": div_step})
    ds.attrs["analysis"] = "twins"
    ds.attrs["params"] = params_attr(params)
    ds["lyapunov"].attrs["units"] = "1/step (natural log of d per step)"
    ds["saturation_step"].attrs["missing"] = -1
    return ds


# ------------------------------------------------------------------------- spread comparison


def _pooled_sd(groups: list[np.ndarray]) -> float:
    """Within-group standard deviation pooled over groups (each of size >= 2)."""
    ss = sum(float(np.sum((g - g.mean()) ** 2)) for g in groups)
    dof = sum(g.size - 1 for g in groups)
    return float(np.sqrt(ss / dof)) if dof > 0 else float("nan")


def spread_comparison(
    perturbation_groups: list[np.ndarray],
    seed_groups: list[np.ndarray],
    *,
    n_boot: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
) -> dict:
    """Pooled within-group spread of a value across perturbations and across seeds, and their ratio.

    Each perturbation group holds one original and its twins (same seed, same hyper-parameters);
    each seed group holds originals that differ only by seed. The spread of a family is the pooled
    within-group standard deviation. The CI of the ratio comes from a cluster bootstrap: groups of
    each family are resampled with replacement (groups are the independent units; members of a
    group share their whole history up to the perturbation), independently for the two families.

    Returns
    -------
    dict
        ``perturbation_sd``, ``seed_sd``, ``ratio``, ``ci`` (None with fewer than 2 groups in a
        family), ``n_perturbation_groups``, ``n_seed_groups`` and ``note``.
    """
    pg = [np.asarray(g, float) for g in perturbation_groups if len(g) >= 2]
    sg = [np.asarray(g, float) for g in seed_groups if len(g) >= 2]
    out = {
        "perturbation_sd": _pooled_sd(pg) if pg else None,
        "seed_sd": _pooled_sd(sg) if sg else None,
        "ratio": None,
        "ci": None,
        "n_perturbation_groups": len(pg),
        "n_seed_groups": len(sg),
        "note": "",
    }
    if not pg or not sg:
        out["note"] = "needs at least one twin group and one group of seeds with equal settings"
        return out
    if out["seed_sd"] == 0:
        out["note"] = "seeds gave identical values"
        return out
    out["ratio"] = out["perturbation_sd"] / out["seed_sd"]
    if len(pg) < 2 or len(sg) < 2:
        out["note"] = "CI needs at least two groups of each kind"
        return out
    rng = np.random.default_rng(seed)
    ratios = np.empty(n_boot)
    for k in range(n_boot):
        p = [pg[i] for i in rng.integers(0, len(pg), len(pg))]
        s = [sg[i] for i in rng.integers(0, len(sg), len(sg))]
        sd_s = _pooled_sd(s)
        ratios[k] = _pooled_sd(p) / sd_s if sd_s > 0 else np.nan
    ratios = ratios[np.isfinite(ratios)]
    alpha = (1 - ci) / 2
    out["ci"] = [float(np.quantile(ratios, alpha)), float(np.quantile(ratios, 1 - alpha))]
    return out


def _spread_sections(result: xr.Dataset, params: TwinParams) -> dict:
    runs = result["run"].values.tolist()
    twin_of = dict(zip(runs, result["twin_of"].values.tolist(), strict=True))
    ok = dict(zip(runs, (result["diverged_step"].values < 0).tolist(), strict=True))
    prec = dict(zip(runs, [str(p) for p in result["precision"].values], strict=True))
    out = {}
    for quantity in ("final_loss", "final_loss_window"):
        val = dict(zip(runs, np.log10(result[quantity].values).tolist(), strict=True))
        usable = {r for r in runs if ok[r] and np.isfinite(val[r])}
        keys = {}
        for r in runs:
            if twin_of[r] < 0 and r in usable:
                key = str(result["config"].values[runs.index(r)])
                keys.setdefault(key, []).append(r)
        by_prec = {}
        for p in sorted(set(prec.values())):
            pert = []
            for o in runs:
                if twin_of[o] >= 0 or prec[o] != p or o not in usable:
                    continue
                members = [o] + [r for r in runs if twin_of[r] == o and r in usable]
                if len(members) >= 2:
                    pert.append(np.array([val[r] for r in members]))
            seeds = [np.array([val[r] for r in g]) for g in keys.values() if prec[g[0]] == p]
            sec = spread_comparison(
                pert, seeds, n_boot=params.n_boot, ci=params.ci, seed=params.seed
            )
            sec["n_excluded_diverged"] = sum(1 for r in runs if prec[r] == p and not ok[r])
            by_prec[p] = sec
        out[quantity] = by_prec
    return out


def report(result: xr.Dataset, params: TwinParams | None = None) -> dict:
    """Contract-4 fields: per-run twin fields, the ``twins`` list and the ``twin_spread`` section.

    ``twin_spread`` compares, per precision, the spread of ``log10`` of the final loss caused by
    perturbations with that caused by seeds (:func:`spread_comparison`), for the last-step loss
    (``final_loss``, Sun's measure) and the geometric mean over the last ``final_window_frac`` of
    the run (``final_loss_window``). The spread is taken in ``log10`` because final losses of one
    configuration spread over decades; it is the standard deviation in decades. ``params``
    default to those the result was computed with (its ``attrs["params"]``).
    """
    params = params or params_from_result(result, TwinParams)
    runs_out, twins = {}, []
    for i, r in enumerate(result["run"].values.tolist()):
        if int(result["twin_of"].values[i]) < 0:
            continue
        entry = {
            "run": int(r),
            "twin_of": int(result["twin_of"].values[i]),
            "perturbation": str(result["perturbation"].values[i]),
            "precision": str(result["precision"].values[i]),
        }
        for k in _SCALARS:
            v = result[k].values[i]
            if k in ("perturbation_step", "saturation_step"):
                entry[k] = None if int(v) < 0 else int(v)
            else:
                entry[k] = float(v) if np.isfinite(v) else None
        entry["note"] = str(result["note"].values[i])
        twins.append(entry)
        runs_out[int(r)] = {
            "twin": {k: entry[k] for k in ("lyapunov", "amplification", "saturation_step")}
        }
    return {"runs": runs_out, "twins": twins, "twin_spread": _spread_sections(result, params)}


# ------------------------------------------------------------------------------ figures


def figures(
    ds: xr.Dataset, result: xr.Dataset, outdir, *, per_figure: int = 12, max_twins: int = 24
) -> list[Path]:
    """Divergence curves of the twins on a log axis, with the fitted growth slope.

    At most ``max_twins`` twins get a panel, evenly spread over the twins in run order (a study
    with hundreds of twins would otherwise write dozens of pages); the overview shows them all.
    ``twins_divergence_<k>.png``: one panel per twin (``per_figure`` per file) around the growth
    phase, relative L2 and Sun's L1, the fitted exponential (dashed, slope in the legend), the
    perturbation step (grey) and the saturation step (red). ``twins_overview.png``: every twin's
    relative L2 over the whole run, coloured by precision.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    idx = np.flatnonzero(result["twin_of"].values >= 0)
    steps = result["div_step"].values
    pick = np.round(np.linspace(0, idx.size - 1, min(idx.size, max_twins))).astype(int)
    paths = panel_pages(
        idx[np.unique(pick)],
        lambda ax, i: _draw_twin(ax, result, i, steps),
        outdir,
        "twins_divergence",
        per_figure,
    )
    if idx.size:
        paths.append(_overview(plt, result, idx, steps, outdir))
    return paths


def _overview(plt, result, idx, steps, outdir):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    precisions = sorted({str(result["precision"].values[i]) for i in idx})
    colours = {p: f"C{k}" for k, p in enumerate(precisions)}
    for i in idx:
        p = str(result["precision"].values[i])
        ax.semilogy(steps, result["divergence_l2"].values[i], lw=0.4, color=colours[p], alpha=0.7)
    for p in precisions:
        ax.plot([], [], color=colours[p], label=p)
    ax.set_xlabel("step")
    ax.set_ylabel("relative L2 divergence from the original")
    ax.set_title("twin divergence, all twins")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = outdir / "twins_overview.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _draw_twin(ax, result, i, steps):
    l2 = result["divergence_l2"].values[i]
    l1 = result["divergence_l1"].values[i]
    ax.semilogy(steps, l2, lw=0.6, label="rel. L2")
    ax.semilogy(steps, l1, lw=0.4, alpha=0.5, label="Sun L1")
    T = int(result["perturbation_step"].values[i])
    lam = float(result["lyapunov"].values[i])
    sat = int(result["saturation_step"].values[i])
    a = float(result["hinge_intercept"].values[i])
    t0 = float(result["hinge_t0"].values[i])
    if np.isfinite(lam) and np.isfinite(a):
        end = sat if sat >= 0 else steps[-1]
        tt = np.linspace(t0, end, 50)
        ax.semilogy(tt, np.exp(a + lam * (tt - t0)), "k--", lw=1, label=f"slope {lam:.3g}/step")
        if sat >= 0:
            ax.axvline(sat, color="r", lw=0.6, ls=":")
    ax.axvline(T, color="gray", lw=0.6, ls=":")
    if sat > T:
        growth = sat - T
        ax.set_xlim(T - 0.25 * growth, min(float(steps[-1]), sat + 2.0 * growth))
    r = int(result["run"].values[i])
    ax.set_title(
        f"run {r} (twin of {int(result['twin_of'].values[i])}), {result['precision'].values[i]}",
        fontsize=8,
    )
    ax.set_xlabel("step")
    ax.set_ylabel("divergence")
    ax.legend(fontsize=6)


# -------------------------------------------------------------------------------- declaration

ANALYSIS = Analysis(
    name="twins",
    analyze=analyze,
    report=report,
    draw=figures,
    params=TwinParams,
    summary="how fast a twin perturbed by one ulp leaves the run it copies, and what it changes",
    needs=Needs(
        variables=("theta", "theta_final", "update_norm"),
        without="twins are compared over the recorded rows; the final distance needs "
        "theta_final",
    ),
    fields=(
        Field("twin.lyapunov", "1/step",
              "growth rate of the log distance between twin and original"),
        Field("twin.amplification", "x", "distance at saturation over the initial distance"),
        Field("twin.saturation_step", "step", "step at which the distance stops growing", "int"),
        Field("twins[].run", "", "the twin's run index", "int", required=True, place="report"),
        Field("twins[].twin_of", "", "the run it copies", "int", required=True, place="report"),
        Field("twins[].lyapunov", "1/step",
              "growth rate of the log distance between twin and original", required=True,
              place="report"),
        Field("twins[].amplification", "x", "distance at saturation over the initial distance",
              required=True, place="report"),
        Field("twins[].saturation_step", "step", "step at which the distance stops growing",
              "int", required=True, place="report"),
        Field("twin_spread", "",
              "spread of log10 final loss from perturbations against that from seeds", "any",
              place="report"),
    ),
    columns=(Column("lyapunov", "twin.lyapunov"),),
    figures=(
        Figure(
            r"twins_divergence.*",
            "Distance between each twin and the run it copies, log scale, around the growth "
            "phase. Look for a straight rise (exponential growth, slope in the legend) before "
            "saturation (red).",
        ),
        Figure(
            "twins_overview",
            "Relative distance of every twin over the whole run, by precision. Twins that "
            "saturate early lost their common trajectory quickly.",
        ),
    ),
    sections=("twins", "twin_spread"),
    section_defaults=lambda why: {"twins": []},
)  # fmt: skip
