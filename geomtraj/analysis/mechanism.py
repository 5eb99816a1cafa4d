"""The second-moment decay mechanism of Adam's bursts, tested burst by burst (docs/mechanism.md).

The mechanism (arXiv 2506.04805): between bursts the gradient is small against ``sqrt(v)``, so
``v`` decays geometrically (``log v`` falls by ``ln beta2`` per update), the preconditioner
``P ~ sqrt(v)`` shrinks and the preconditioned sharpness ``lambda_max(P^-1 H)`` rises, by a factor
``beta2^(-1/2)`` per update while ``H`` stays put. Once it passes Adam's stability threshold
``(2 + 2*beta1) / ((1 - beta1) * lr)`` (:func:`.stability.stability_threshold`) the top direction
grows and a burst follows; the burst's large gradients raise ``v`` again and the cycle restarts.

This module measures it densely along a whole run, cheaply:

* **Replay.** The run is trained again from its initial state with the trainer itself
  (:func:`geomtraj.train.replay`, bit-for-bit reproducible, every parameter recorded), block by
  block, so the full ``theta_t``, ``v_t`` of every update pass by without being stored. The
  replayed update norms are compared with the stored ones at every update, and the replayed state
  with the store's full snapshots; any difference is reported in ``note``.
* **Tracking.** :func:`geomtraj.analysis.kernels.hvp.track_block` continues a Lanczos iteration on
  ``P^-1/2 H P^-1/2`` from the previous evaluation's Ritz vector (up to three float64
  Hessian-vector products per evaluated state, one when that vector has converged), with the
  preconditioned gradient in the same Rayleigh-Ritz basis (one HVP more), which also gives the
  curvature along it. Evaluations are :attr:`MechanismParams.dense_stride` updates apart at and
  above the threshold and a quarter of the decay forecast's time to the crossing below it
  (:attr:`MechanismParams.horizon`), at most :attr:`MechanismParams.stride`; the choice uses
  only the past of the tracked series, never the bursts.
* **Per-burst prediction** (:func:`burst_predictions`): for each burst after the first, the
  *predicted onset* is the first upward threshold crossing after the previous burst's end; the
  *decay forecast* needs only the state at the previous burst's end: with ``H`` frozen and
  ``v`` decaying by ``beta2`` per update, ``lambda`` reaches the threshold after
  ``T_decay = 2 ln(threshold / lambda_after) / -ln(beta2)`` updates, i.e. when ``v`` has fallen to
  ``v_crit = v_after (lambda_after / threshold)^2``. Neither uses the next onset.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import xarray as xr

from geomtraj.analysis.base import (
    RunData,
    binomial_p,
    finite_or_none,
    one_blas_thread,
    parse_perturbation,
    union_length,
)
from geomtraj.analysis.declaration import (
    Analysis,
    Column,
    Field,
    Figure,
    Needs,
    params_attr,
    params_from_result,
)
from geomtraj.analysis.stability import (
    missing_curvature_inputs,
    run_data_arrays,
    run_spec,
    stability_threshold,
    upward_crossings,
)
from geomtraj.errors import GeomtrajError

__all__ = [
    "MechanismParams",
    "Track",
    "replay_states",
    "track_run",
    "burst_predictions",
    "analyze",
    "report",
    "figures",
]


@dataclass(frozen=True)
class MechanismParams:
    """Settings of the mechanism analysis.

    Attributes
    ----------
    stride : int
        Longest spacing of the evaluations, in updates (default 48).
    dense_stride : int
        Shortest spacing (default 12), kept while the last measured ``lambda/threshold`` is at
        least 1 or the threshold is near; it is the resolution of the crossings, and the replay
        records a state every ``dense_stride`` updates.
    horizon : float
        Below the threshold the next evaluation comes after ``horizon`` times the decay
        forecast's time to the crossing, ``T = 2 ln(threshold/lambda) / -ln(beta2)`` (``H``
        frozen, ``v`` decaying by ``beta2`` per update), clipped to ``[dense_stride, stride]`` and
        rounded up to the replayed states (default 0.25). The spacing uses only the tracked
        series, never the bursts. While the forecast holds, no evaluation steps over a crossing
        (the next one comes before ``T`` whenever ``T > 16``) and the last ``4 * dense_stride``
        updates before it are evaluated every ``dense_stride``, so the crossings keep their
        resolution. At beta2 = 0.999 the spacing is 12 updates from ``lambda/threshold`` = 0.98
        up, 24 down to 0.96, 36 down to 0.94 and 48 below; at beta2 = 0.99 it is 12 down to
        0.79. With 0 the spacing is ``dense_stride`` from ``dense_level`` up and ``stride``
        below it.
    dense_level : float
        See ``horizon`` (default 0.9; used only when ``horizon`` is 0).
    lanczos_steps : int
        Lanczos steps from the previous evaluation's Ritz vector (default 3), so the iteration
        continues along the run; the preconditioned gradient joins their basis in one
        Rayleigh-Ritz step (one HVP more, which also gives the directional curvature). Two steps
        are too few: the median lag behind the dense ``lambda_max`` grows to 2e-3 on
        ``bursts_f64`` and the decay forecasts move by up to 18 updates.
    lanczos_tol : float
        The Lanczos steps stop after the first when the carried vector ``u`` has converged:
        ``||S u - (u^T S u) u|| <= lanczos_tol * u^T S u`` (default 0.01). A quarter to a half of
        the evaluations stop there; at 40 states of the ``bursts_*`` fixtures the median lag
        behind the dense ``lambda_max`` is then about 1e-4 (4e-6 to 8e-6 without the stop; 2e-4
        at 12 states with 3 plain Lanczos steps and no gradient, the version before 2026-12).
    block : int
        Updates replayed per block (default 8192); bounds the memory of the replay (every
        ``dense_stride``-th state: 683 x ``n_params`` values of ``theta`` and of ``v``). Each
        block costs the trainer a fixed few milliseconds; 2048 made the replay 25 % slower than
        the training on 50,000 updates.
    max_lag_momentum, max_lag_interval : float
        A crossing *explains* an onset when it precedes it by at most ``max_lag_momentum /
        (1 - beta1)`` updates (default 10), capped at ``max_lag_interval`` (default 0.5) of the
        run's median interval between onsets: the window of the stability analysis
        (:class:`geomtraj.analysis.stability.StabilityParams`).
    verdict_fraction, verdict_alpha, min_bursts : float, float, int
        A run's bursts "start at crossings" when at least ``verdict_fraction`` (0.8) of its
        predicted onsets fall in that window and the binomial test against the window's chance
        coverage gives ``p < verdict_alpha`` (0.01); runs with fewer than ``min_bursts`` (3)
        predictable bursts get no verdict.
    burst_signal : str
        Per-update series bursts are detected on (default ``"update_norm"``).
    """

    stride: int = 48
    dense_stride: int = 12
    horizon: float = 0.25
    dense_level: float = 0.9
    lanczos_steps: int = 3
    lanczos_tol: float = 0.01
    block: int = 8192
    max_lag_momentum: float = 10.0
    max_lag_interval: float = 0.5
    verdict_fraction: float = 0.8
    verdict_alpha: float = 0.01
    min_bursts: int = 3
    burst_signal: str = "update_norm"

    def __post_init__(self) -> None:
        if min(self.stride, self.dense_stride, self.lanczos_steps, self.block) < 1:
            raise GeomtrajError(
                f"stride={self.stride}, dense_stride={self.dense_stride}, lanczos_steps="
                f"{self.lanczos_steps}, block={self.block}; expected integers >= 1"
            )
        if not (self.horizon >= 0 and self.lanczos_tol >= 0):
            raise GeomtrajError(
                f"horizon={self.horizon}, lanczos_tol={self.lanczos_tol}; expected >= 0"
            )
        if not (self.max_lag_momentum > 0 and self.max_lag_interval > 0):
            raise GeomtrajError("max_lag_momentum and max_lag_interval must be positive")
        if not (0 < self.verdict_fraction <= 1 and 0 < self.verdict_alpha < 1):
            raise GeomtrajError("verdict_fraction must lie in (0, 1] and verdict_alpha in (0, 1)")


#: Work arrays of :func:`geomtraj.analysis.kernels.hvp.track_block`, in its argument order.
_WORK = ("A", "Z", "D1", "D2", "DL", "CV", "d2l", "RZ", "RA", "RD", "grad", "TMP", "TW")


# ------------------------------------------------------------------------------- the replay


def replay_states(
    ds: xr.Dataset, run: int, *, block: int = 8192, every: int = 1
) -> Iterator[tuple[int, np.ndarray, np.ndarray, int, np.ndarray]]:
    """Train run ``run`` again and yield its full state every ``every`` updates, block by block.

    Yields ``(t_first, theta, v, u_first, update_norm)``: ``theta[i]``, ``v[i]`` (in the run's
    storage dtype, every parameter) are the state after update ``t_first + i*every``, and
    ``update_norm[k]`` is the norm of update ``u_first + k`` (every update of the block). The
    first block holds step 0 alone (``theta_init``, ``v = 0``, no update). The replay stops at the
    last multiple of ``every`` before the run's end. The trainer itself replays (same
    hyper-parameters, precision, seed, batch size and perturbation), so the states are those of
    the original run bit for bit; recording every ``every``-th state only costs less than
    recording all.
    """
    from geomtraj.train.plan import DataSource, Plan, Run
    from geomtraj.train.trainer import replay

    rd = RunData(ds, run)
    h = rd.hyper
    n = h["n_params"]
    one = ds.isel(run=run)
    spec = run_spec(ds, run)
    X, y = run_data_arrays(ds, run, rounded=False)
    last = rd.final_step // every * every
    theta0 = np.asarray(one["theta_init"].values[:n], dtype=np.float64)
    yield 0, theta0[None, :], np.zeros((1, n)), 1, np.zeros(0)
    if last == 0:
        return
    pert = parse_perturbation(h["perturbation"])
    if pert is not None and pert.kind == "ulp" and pert.step > last:
        pert = None  # it would act after the last replayed update
    runs = [
        Run(spec=spec, beta1=h["beta1"], beta2=h["beta2"], lr=h["lr"], eps=h["eps"],
            weight_decay=h["weight_decay"], seed=h["seed"], precision=h["precision"],
            batch_size=int(one["batch_size"].values), perturbation=pert, theta0=theta0)
    ]  # fmt: skip
    plan = Plan(runs=runs, datasets=[DataSource(h["dataset"], X, y)], steps=last,
                record_every=every, record_params="all",
                chunk_rows=max(1, int(block) // every))  # fmt: skip
    cols = plan.recorded_indices()[0]
    # "all" records the flat layout in order; a copy only if it ever did not
    order = None if np.array_equal(cols, np.arange(n)) else np.argsort(cols)
    for row0, _rows, buf in replay(plan):
        theta, v = buf["theta"][0], buf["v"][0]
        if order is not None:
            theta, v = theta[:, order], v[:, order]
        yield (row0 + 1) * every, theta, v, row0 * every + 1, buf["update_norm"][0]


# ----------------------------------------------------------------------------- the tracking


@dataclass
class Track:
    """Dense curvature series of one run (one entry per state ``t = 0 .. final``).

    Attributes
    ----------
    step : ndarray of int64
        ``t``: the state after update ``t``; its curvature is the one update ``t + 1`` sees.
    sharpness : ndarray
        ``lambda_max(P^-1 H)`` (top Ritz value, a lower bound), NaN where not evaluated.
    dir_curv : ndarray
        Curvature of ``P^-1 H`` along the preconditioned gradient, NaN where not evaluated.
    log_v : ndarray
        Mean over parameters of ``log v_t`` at the replayed states (every ``dense_stride``
        updates; NaN between).
    loss : ndarray
        Full-batch float64 loss where evaluated.
    threshold : float
        The stability threshold.
    n_hvp : int
        Hessian-vector products used.
    seconds_replay, seconds_track : float
        CPU time of this process in the replay (training) and in the tracking kernel.
    mismatches : int
        Updates whose replayed norm differs from the stored one (0 for a bit-identical replay).
    """

    step: np.ndarray
    sharpness: np.ndarray
    dir_curv: np.ndarray
    log_v: np.ndarray
    loss: np.ndarray
    threshold: float
    n_hvp: int
    seconds_replay: float
    seconds_track: float
    mismatches: int

    @property
    def ratio(self) -> np.ndarray:
        """``sharpness / threshold``."""
        return self.sharpness / self.threshold

    @property
    def evaluated(self) -> np.ndarray:
        """Mask of the evaluated states."""
        return np.isfinite(self.sharpness)


def track_run(
    ds: xr.Dataset, run: int, params: MechanismParams | None = None, rd: RunData | None = None
) -> Track:
    """Replay run ``run`` and track its preconditioned sharpness (see the module docstring);
    ``rd``, optional, is the run's :class:`RunData` when the caller has it."""
    from geomtraj.analysis.kernels import hvp as kc

    params = params or MechanismParams()
    rd = RunData(ds, run) if rd is None else rd
    h = rd.hyper
    spec = run_spec(ds, run)
    X, y = run_data_arrays(ds, run)
    threshold = stability_threshold(h["beta1"], h["lr"])
    last = rd.final_step
    n_states = last + 1
    out = {k: np.full(n_states, np.nan) for k in ("sharpness", "dir_curv", "log_v", "loss")}
    work = kc.work_arrays(X.shape[0], spec.sizes)
    sizes = np.array(spec.sizes, np.int64)
    hyper = np.array([h["beta1"], h["beta2"], h["lr"], h["eps"], h["weight_decay"]])
    u = np.random.default_rng(0).standard_normal(spec.n_params)
    u /= np.linalg.norm(u)
    carry = np.array([0.0, float(params.stride)])  # evaluate the first state
    stored = np.asarray(rd.update_norm, dtype=np.float64) if rd.iteration.size else np.zeros(0)
    n_hvp, mismatches, t_replay, t_track = 0, 0, 0.0, 0.0
    act, loss_code = kc.ACTIVATIONS[spec.activation], kc.LOSSES[spec.loss]
    every = params.dense_stride
    with one_blas_thread():
        states = replay_states(ds, run, block=params.block, every=every)
        while True:
            t0 = time.process_time()
            try:
                t_first, theta, v, u_first, un = next(states)
            except StopIteration:
                break
            t1 = time.process_time()
            t_replay += t1 - t0
            rows = theta.shape[0]
            step = every if t_first else 1
            sl = slice(t_first, t_first + (rows - 1) * step + 1, step)
            if un.size:
                ref = stored[u_first - 1 : u_first - 1 + un.size]
                got = np.asarray(un[: ref.size], dtype=np.float64)
                mismatches += int(np.sum(~((got == ref) | (np.isnan(got) & np.isnan(ref)))))
            n_hvp += kc.track_block(
                np.ascontiguousarray(theta), np.ascontiguousarray(v), t_first, step, sizes,
                spec.n_layers, act, loss_code, X, y, hyper, threshold, u, carry, params.stride,
                params.dense_stride, params.dense_level, params.horizon, params.lanczos_steps,
                params.lanczos_tol,
                out["sharpness"][sl], out["dir_curv"][sl], out["loss"][sl], out["log_v"][sl],
                *(work[k] for k in _WORK),
            )  # fmt: skip
            t_track += time.process_time() - t1
    out["log_v"][0] = np.nan  # v = 0 at step 0
    return Track(np.arange(n_states, dtype=np.int64), out["sharpness"], out["dir_curv"],
                 out["log_v"], out["loss"], threshold, int(n_hvp), t_replay, t_track,
                 mismatches)  # fmt: skip


# ----------------------------------------------------------------------- per-burst prediction

#: Per-burst outputs of :func:`analyze` (dimension ``burst``), from :func:`burst_predictions`.
_BURST_FIELDS = ("onset", "prev_end", "predicted_onset", "lead", "measured_interval",
                 "predicted_interval", "decay_interval", "log_v_drop", "v_decay_time")  # fmt: skip


def max_lag_window(beta1: float, onsets: np.ndarray, params: MechanismParams) -> float:
    """Longest lag (updates) from a crossing to the onset it explains (see MechanismParams)."""
    lag = params.max_lag_momentum / (1.0 - beta1)
    if onsets.size >= 3:
        lag = min(lag, params.max_lag_interval * float(np.median(np.diff(onsets))))
    return lag


def burst_predictions(
    track: Track,
    onsets: np.ndarray,
    ends: np.ndarray,
    beta1: float,
    beta2: float,
    params: MechanismParams | None = None,
) -> dict:
    """Predict each burst from the state after the previous one (module docstring).

    Parameters
    ----------
    track : Track
        The run's dense curvature series.
    onsets, ends : ndarray
        Onset and end (steps) of each burst, in order.
    beta1, beta2 : float
        The run's Adam coefficients.

    Returns
    -------
    dict
        Per predicted burst (every burst after the first): ``onset``, ``prev_end``,
        ``predicted_onset`` (first upward crossing after ``prev_end``, or ``prev_end`` itself when
        the ratio is already above 1 there; NaN when none comes before the run ends), ``lead``
        (``onset - predicted_onset``), ``explained`` (``-resolution <= lead <= max_lag``),
        ``measured_interval``, ``predicted_interval`` (``predicted_onset - previous onset``),
        ``decay_interval`` (the decay forecast: ``prev_end + T_decay - previous onset``),
        ``log_v_drop`` (``ln(v_after / v_crit)`` with ``v_crit`` the mean-log ``v`` at the
        crossing, both interpolated between replayed states), ``v_decay_time``
        (``log_v_drop / -ln(beta2)``); and the run's summary: ``crossings``, ``n_crossings``,
        ``false_crossings`` (fraction of crossings with no onset in
        ``[c - resolution, c + max_lag]``), ``onsets_explained``, ``lead_median``,
        ``predicted_period``, ``decay_period``, ``measured_period`` (medians), ``chance_fraction``
        (fraction of the tracked range the explaining windows of all crossings cover) and
        ``p_value`` (one-sided binomial test of ``onsets_explained`` against it), ``max_lag``,
        ``resolution``.
    """
    params = params or MechanismParams()
    ok = track.evaluated
    steps = track.step[ok].astype(np.float64)
    ratio = track.ratio[ok]
    onsets = np.asarray(onsets, dtype=np.float64)
    ends = np.asarray(ends, dtype=np.float64)
    lo, hi = (steps[0], steps[-1]) if steps.size else (0.0, 0.0)
    inside = (onsets >= lo) & (onsets <= hi)
    onsets, ends = onsets[inside], ends[inside]
    cross = upward_crossings(steps, ratio) if steps.size >= 2 else np.zeros(0)
    resolution = float(params.dense_stride)
    max_lag = max_lag_window(beta1, onsets, params)
    decay_rate = -math.log(beta2)
    n = max(onsets.size - 1, 0)
    per = {k: np.full(n, np.nan) for k in _BURST_FIELDS}
    explained = np.zeros(n, bool)
    have_v = np.isfinite(track.log_v)
    v_steps, v_vals = track.step[have_v].astype(np.float64), track.log_v[have_v]

    def log_v(t: float) -> float:  # the replayed states are dense_stride updates apart
        return float(np.interp(t, v_steps, v_vals)) if v_steps.size else math.nan

    for i in range(1, onsets.size):
        k = i - 1
        prev_end, prev_on, on = ends[i - 1], onsets[i - 1], onsets[i]
        per["onset"][k], per["prev_end"][k] = on, prev_end
        per["measured_interval"][k] = on - prev_on
        after = steps >= prev_end
        if not after.any():
            continue
        first = int(np.flatnonzero(after)[0])
        lam_ratio = float(ratio[first])
        later = cross[cross > prev_end]
        if lam_ratio >= 1.0:
            pred = float(steps[first])
        elif later.size:
            pred = float(later[0])
        else:
            pred = math.nan
        if lam_ratio < 1.0:  # H frozen, v decaying by beta2: lambda grows by beta2^(-1/2)
            t_decay = 2.0 * math.log(1.0 / lam_ratio) / decay_rate
        else:
            t_decay = 0.0
        per["decay_interval"][k] = steps[first] + t_decay - prev_on
        if math.isfinite(pred):
            per["predicted_onset"][k] = pred
            per["lead"][k] = on - pred
            explained[k] = -resolution <= on - pred <= max_lag
            per["predicted_interval"][k] = pred - prev_on
            drop = log_v(prev_end) - log_v(pred)
            per["log_v_drop"][k] = drop
            per["v_decay_time"][k] = drop / decay_rate
    followed = np.array(
        [bool(np.any((onsets >= c - resolution) & (onsets <= c + max_lag))) for c in cross], bool
    )
    covered = union_length(np.clip(cross - resolution, lo, hi), np.clip(cross + max_lag, lo, hi))
    chance = covered / (hi - lo) if hi > lo else math.nan
    leads = per["lead"][np.isfinite(per["lead"])]
    out = dict(per)
    out.update(
        explained=explained,
        crossings=cross,
        n_crossings=int(cross.size),
        n_predicted=int(n),
        false_crossings=float(1.0 - followed.mean()) if cross.size else math.nan,
        onsets_explained=float(explained.mean()) if n else math.nan,
        lead_median=float(np.median(leads)) if leads.size else math.nan,
        predicted_period=_nanmedian(per["predicted_interval"]),
        decay_period=_nanmedian(per["decay_interval"]),
        measured_period=_nanmedian(per["measured_interval"]),
        chance_fraction=float(chance),
        p_value=binomial_p(int(explained.sum()), n, chance)
        if n and math.isfinite(chance)
        else math.nan,
        max_lag=float(max_lag),
        resolution=resolution,
    )
    return out


def _nanmedian(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(np.median(x)) if x.size else math.nan


# ----------------------------------------------------------------------------- the analysis

#: Per-run float outputs from :func:`burst_predictions`.
_RUN_FIELDS = ("false_crossings", "onsets_explained", "lead_median", "predicted_period",
               "decay_period", "measured_period", "chance_fraction", "p_value", "max_lag",
               "resolution")  # fmt: skip


def unmeasurable_reason(ds: xr.Dataset, run: int) -> str | None:
    """Why run ``run`` cannot be tracked (one line), or None when it can."""
    from geomtraj.analysis.base import per_update_note

    reason = missing_curvature_inputs(ds)
    if reason is not None:
        return reason
    note = per_update_note(ds, run)
    if note is not None and "cannot be derived" in note:
        return note
    if "batch_size" not in ds.variables:
        return "the store holds no batch_size, so the run cannot be replayed"
    return None


def analyze(
    ds: xr.Dataset,
    runs: Sequence[int] | None = None,
    *,
    progress: Callable[[int], object] | None = None,
    params: MechanismParams | None = None,
    **overrides,
) -> xr.Dataset:
    """Dense sharpness tracking and per-burst prediction of each run (module docstring).

    Parameters
    ----------
    ds : xarray.Dataset
        A store (:func:`geomtraj.store.open_store`).
    runs : sequence of int, optional
        Store run indices (all by default).
    progress : callable, optional
        Called with 1 after each run.
    params : MechanismParams, optional
        Settings; keyword ``overrides`` replace single fields.

    Returns
    -------
    xarray.Dataset
        Over ``run``, ``step`` (state ``t``) and ``burst``: ``sharpness``, ``dir_curv``,
        ``log_v`` per step; the fields of :func:`burst_predictions` per burst and per run;
        ``threshold``, ``n_bursts``, ``n_predicted``, ``n_crossings``, ``n_hvp``,
        ``mismatches``, ``measurable`` and ``note``. Timings stay out of the result, so that
        every scheduler gives the same Dataset (``benchmarks/bench_mechanism.py`` times
        :func:`track_run`).
    """
    from geomtraj.analysis.events import run_bursts

    params = params or MechanismParams()
    if overrides:
        try:
            params = replace(params, **overrides)
        except TypeError as exc:
            raise GeomtrajError(f"mechanism.analyze: {exc}; see MechanismParams") from None
    run_list = list(range(ds.sizes["run"])) if runs is None else [int(r) for r in runs]
    tracks: list[Track | None] = []
    preds: list[dict | None] = []
    notes, n_bursts, hypers = [], [], []
    for r in run_list:
        reason = unmeasurable_reason(ds, r)
        rd = RunData(ds, r)
        hypers.append(rd.hyper)
        if reason is None:
            b = run_bursts(rd, params.burst_signal)
            tr = track_run(ds, r, params, rd)
            pr = burst_predictions(tr, b.onset, b.end, rd.hyper["beta1"], rd.hyper["beta2"],
                                   params)  # fmt: skip
            note = ""
            if tr.mismatches:
                note = (
                    f"the replay differs from the stored run at {tr.mismatches} updates, so its "
                    "states are not the run's; not measurable"
                )
            tracks.append(tr)
            preds.append(pr)
            n_bursts.append(len(b))
        else:
            tracks.append(None)
            preds.append(None)
            n_bursts.append(0)
            note = reason
        notes.append(note)
        if progress is not None:
            progress(1)
    n_run = len(run_list)
    n_step = max((t.step.size for t in tracks if t is not None), default=1)
    n_burst = max((p["n_predicted"] for p in preds if p is not None), default=0)
    series = {k: np.full((n_run, n_step), np.nan) for k in ("sharpness", "dir_curv", "log_v")}
    per_burst = {k: np.full((n_run, n_burst), np.nan) for k in _BURST_FIELDS}
    explained = np.zeros((n_run, n_burst), bool)
    scalars = {k: np.full(n_run, np.nan) for k in (*_RUN_FIELDS, "threshold")}
    counts = {k: np.zeros(n_run, np.int64) for k in ("n_bursts", "n_predicted", "n_crossings",
                                                      "n_hvp", "mismatches")}  # fmt: skip
    for j, (h, tr, pr) in enumerate(zip(hypers, tracks, preds, strict=True)):
        counts["n_bursts"][j] = n_bursts[j]
        scalars["threshold"][j] = stability_threshold(h["beta1"], h["lr"])
        if tr is None or pr is None:
            continue
        for k in series:
            series[k][j, : tr.step.size] = getattr(tr, k)
        m = pr["n_predicted"]
        for k in _BURST_FIELDS:
            per_burst[k][j, :m] = pr[k]
        explained[j, :m] = pr["explained"]
        for k in _RUN_FIELDS:
            scalars[k][j] = pr[k]
        counts["n_predicted"][j], counts["n_crossings"][j] = m, pr["n_crossings"]
        counts["n_hvp"][j], counts["mismatches"][j] = tr.n_hvp, tr.mismatches
    variables: dict = {k: (("run", "step"), v) for k, v in series.items()}
    variables.update({k: (("run", "burst"), v) for k, v in per_burst.items()})
    variables["explained"] = (("run", "burst"), explained)
    variables.update({k: (("run",), v) for k, v in scalars.items()})
    variables.update({k: (("run",), v) for k, v in counts.items()})
    measurable = np.array([t is not None and t.mismatches == 0 for t in tracks], bool)
    variables["measurable"] = (("run",), measurable)
    variables["note"] = (("run",), np.array(notes, dtype=object))
    for name in ("beta1", "beta2", "lr", "precision", "hidden"):
        variables[name] = (("run",), ds[name].values[run_list])
    out = xr.Dataset(
        variables,
        # indexed ragged dims: blocks of runs with different lengths combine by padding with NaN
        coords={
            "run": np.array(run_list, np.int64),
            "step": np.arange(n_step, dtype=np.int64),
            "burst": np.arange(n_burst, dtype=np.int64),
        },
    )
    out.attrs.update(
        analysis="mechanism",
        params=params_attr(params),
    )
    return out


# ------------------------------------------------------------------------------- the report


def _settings(result: xr.Dataset) -> tuple[float, float, int]:
    """The verdict settings the result was computed with (defaults when absent)."""
    p = params_from_result(result, MechanismParams)
    return p.verdict_fraction, p.verdict_alpha, p.min_bursts


def _run_entry(result: xr.Dataset, j: int) -> dict:
    one = result.isel(run=j)
    fraction, alpha, min_bursts = _settings(result)
    note = str(one["note"].values)
    n_pred = int(one["n_predicted"])
    frac, p = finite_or_none(one["onsets_explained"]), finite_or_none(one["p_value"])
    measured = np.asarray(one["measured_interval"].values)
    decay = np.asarray(one["decay_interval"].values)
    ok = np.isfinite(measured) & np.isfinite(decay) & (measured > 0)
    decay_error = float(np.median(np.abs(decay[ok] / measured[ok] - 1))) if ok.any() else None
    if not bool(one["measurable"]):
        verdict = "not measurable"
    elif int(one["n_bursts"]) == 0:
        verdict, note = "no bursts", note or "the run has no bursts to predict"
    elif n_pred < min_bursts or frac is None:
        verdict = "too few bursts"
        note = note or f"{n_pred} predictable bursts (< {min_bursts})"
    elif frac >= fraction and p is not None and p < alpha:
        verdict = "bursts start at crossings"
    else:
        verdict = "bursts do not start at crossings"
    measurable = verdict not in ("not measurable", "no bursts")
    entry = {
        "run": int(one["run"]),
        "predicted_period": finite_or_none(one["predicted_period"]) if measurable else None,
        "onsets_explained": frac if measurable else None,
        "lead_median": finite_or_none(one["lead_median"]) if measurable else None,
        # (a run without bursts still has a false-crossing rate: every crossing is one)
        "false_crossings": finite_or_none(one["false_crossings"])
        if verdict != "not measurable"
        else None,
        "decay_period": finite_or_none(one["decay_period"]) if measurable else None,
        "measured_period": finite_or_none(one["measured_period"]) if measurable else None,
        "decay_forecast_error": decay_error if measurable else None,
        "chance_fraction": finite_or_none(one["chance_fraction"]) if measurable else None,
        "p_value": p if measurable else None,
        "n_bursts": int(one["n_bursts"]),
        "n_predicted": n_pred,
        "n_crossings": int(one["n_crossings"]),
        "verdict": verdict,
        "note": note,
    }
    return entry


def report(result: xr.Dataset) -> dict:
    """Contract-4 style fields: ``runs`` (``mechanism`` per run) and a ``mechanism`` section.

    Every run gets ``mechanism: {predicted_period, onsets_explained, lead_median,
    false_crossings, verdict, note}`` (``None`` values with the reason in ``note`` where not
    measurable or without bursts); the section holds the full per-run entries and ``overall``
    (predicted onsets pooled over runs with a verdict, against the pooled chance level).
    """
    entries = [_run_entry(result, j) for j in range(result.sizes["run"])]
    fraction, alpha, min_bursts = _settings(result)
    usable = [e for e in entries if e["onsets_explained"] is not None and e["n_predicted"]]
    n = sum(e["n_predicted"] for e in usable)
    k = sum(round(e["onsets_explained"] * e["n_predicted"]) for e in usable)
    chance = sum(e["chance_fraction"] * e["n_predicted"] for e in usable) / n if n else None
    overall: dict = {"n_runs": len(usable), "n_predicted": n,
                     "onsets_explained": k / n if n else None, "chance_fraction": chance,
                     "p_value": None, "note": ""}  # fmt: skip
    if not usable:
        overall["verdict"] = "not measurable"
        reasons = {e["note"] for e in entries if e["note"]}
        overall["note"] = "; ".join(sorted(reasons)) or "no run with bursts"
    elif n >= min_bursts and chance is not None:
        overall["p_value"] = binomial_p(k, n, chance)
        good = k / n >= fraction and overall["p_value"] < alpha
        overall["verdict"] = (
            "bursts start at crossings" if good else "bursts do not start at crossings"
        )
    else:
        overall["verdict"] = "too few bursts"
    keys = ("predicted_period", "onsets_explained", "lead_median", "false_crossings", "verdict",
            "note")  # fmt: skip
    runs = {e["run"]: {"mechanism": {key: e[key] for key in keys}} for e in entries}
    return {"runs": runs, "mechanism": {"runs": entries, "overall": overall}}


# ------------------------------------------------------------------------------- the figures


def figures(ds: xr.Dataset, result: xr.Dataset, outdir, *, max_runs: int = 3) -> list[Path]:
    """``mechanism_run.png`` and ``mechanism_intervals.png`` (docs/mechanism.md).

    The first shows, for up to ``max_runs`` runs with the most predicted bursts,
    ``lambda/threshold`` and the curvature along the preconditioned gradient, the mean ``log v``
    and the update norm, with the onsets (red) and the predicted onsets (blue) over a stretch of
    about five bursts. The second plots each burst's predicted interval (crossing, and decay
    forecast) against the measured one, over all runs.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    order = np.argsort(-np.asarray(result["n_predicted"].values), kind="stable")[:max_runs]
    order = [int(j) for j in order if int(result["n_predicted"].values[j]) > 0]
    if not order:
        return []
    paths = []
    fig, axes = plt.subplots(3 * len(order), 1, figsize=(10, 6.0 * len(order)), squeeze=False)
    for n_panel, j in enumerate(order):
        one = result.isel(run=j)
        rd = RunData(ds, int(one["run"]))
        onsets = np.asarray(one["onset"].values)
        onsets = onsets[np.isfinite(onsets)]
        pred = np.asarray(one["predicted_onset"].values)
        pred = pred[np.isfinite(pred)]
        mid = onsets.size // 2
        lo = onsets[max(mid - 3, 0)] - 20 if onsets.size else 0
        hi = onsets[min(mid + 3, onsets.size - 1)] + 20 if onsets.size else rd.steps
        step = np.asarray(result["step"].values)
        sel = (step >= lo) & (step <= hi)
        thr = float(one["threshold"])
        sh = np.asarray(one["sharpness"].values)[sel] / thr
        dc = np.asarray(one["dir_curv"].values)[sel] / thr
        ev = np.isfinite(sh)
        ax0, ax1, ax2 = axes[3 * n_panel : 3 * n_panel + 3, 0]
        ax0.plot(step[sel][ev], sh[ev], ".-", ms=2, lw=0.7, label=r"$\lambda_{max}(P^{-1}H)$/thr")
        ax0.plot(step[sel][ev], dc[ev], ".", ms=2, color="C2", label="along preconditioned g")
        ax0.axhline(1.0, color="k", ls="--", lw=0.8)
        if ev.any():  # the ratio hovers within a few percent of 1: zoom onto it
            both = np.concatenate([sh[ev], dc[ev & np.isfinite(dc)]])
            lo_y, hi_y = np.percentile(both, [1, 99])
            ax0.set_ylim(min(0.9, lo_y) - 0.02, max(1.05, hi_y) + 0.02)
        ax0.set_title(
            f"run {int(one['run'])}: beta1={float(one['beta1']):g}, beta2={float(one['beta2']):g}"
            f", lr={float(one['lr']):g}, {one['precision'].values}",
            fontsize=8,
        )
        ax0.legend(fontsize=7, loc="lower left")
        lv = np.asarray(one["log_v"].values)[sel]
        ax1.plot(step[sel][np.isfinite(lv)], lv[np.isfinite(lv)], ".-", ms=2, lw=0.8)
        ax1.set_ylabel("mean log v")
        it = (rd.iteration >= lo) & (rd.iteration <= hi)
        ax2.semilogy(rd.iteration[it], rd.update_norm[it], color="0.4", lw=0.5)
        ax2.set_ylabel("update norm")
        for ax in (ax0, ax1, ax2):
            ax.vlines(onsets[(onsets >= lo) & (onsets <= hi)], 0, 1, color="C3", lw=0.8,
                      transform=ax.get_xaxis_transform())  # fmt: skip
            ax.vlines(pred[(pred >= lo) & (pred <= hi)], 0, 1, color="C0", lw=0.8, ls=":",
                      transform=ax.get_xaxis_transform())  # fmt: skip
        ax2.set_xlabel("step (red: onsets; blue dotted: predicted onsets)")
    fig.tight_layout()
    paths.append(outdir / "mechanism_run.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 5))
    meas = np.asarray(result["measured_interval"].values).ravel()
    for name, color, label in (("predicted_interval", "C0", "first crossing"),
                               ("decay_interval", "C1", "decay forecast")):  # fmt: skip
        y = np.asarray(result[name].values).ravel()
        ok = np.isfinite(meas) & np.isfinite(y)
        ax.plot(meas[ok], y[ok], ".", ms=3, color=color, label=label)
    top = np.nanmax(meas) if np.isfinite(meas).any() else 1.0
    ax.plot([0, top], [0, top], "k--", lw=0.8)
    ax.set_xlabel("measured interval (onset to onset)")
    ax.set_ylabel("predicted interval")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(outdir / "mechanism_intervals.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths


# -------------------------------------------------------------------------------- declaration

ANALYSIS = Analysis(
    name="mechanism",
    analyze=analyze,
    report=report,
    draw=figures,
    params=MechanismParams,
    summary="whether each burst is predicted by the preconditioned sharpness crossing Adam's "
    "threshold as v decays (docs/mechanism.md)",
    needs=Needs(
        variables=("theta", "m", "v", "update_norm"),
        training_data=True,
        snapshots=True,
        without="runs without snapshots, training data or a replayable per-update series are "
        "'not measurable', with the reason",
    ),
    fields=(
        Field("mechanism.predicted_period", "steps",
              "median quiet interval predicted from the first threshold crossing after a burst"),
        Field("mechanism.onsets_explained", "x",
              "fraction of predicted bursts whose onset follows a crossing within the lag window"),
        Field("mechanism.lead_median", "steps", "median lead of a crossing before its onset"),
        Field("mechanism.false_crossings", "x", "fraction of threshold crossings without a burst"),
        Field("mechanism.verdict", "", "whether this run's bursts start at crossings", "str"),
        Field("mechanism.note", "", "why a value is missing", "str"),
        Field("mechanism.runs[].decay_period", "steps",
              "median quiet interval forecast from v's geometric decay from the burst's end",
              place="report"),
        Field("mechanism.runs[].p_value", "",
              "binomial test of the explained onsets against chance", place="report"),
        Field("mechanism.overall.verdict", "",
              "predicted onsets pooled over runs: whether bursts start at crossings", "str",
              place="report"),
    ),
    columns=(
        Column("onsets predicted", "mechanism.onsets_explained"),
        Column("predicted period", "mechanism.predicted_period"),
    ),
    figures=(
        Figure("mechanism_run",
               "lambda_max(P^-1 H) over Adam's threshold, mean log v and the update norm over a "
               "stretch of about five bursts, for the runs with the most predicted bursts. Look "
               "whether each onset (red) comes just after a crossing of 1 (predicted onsets in "
               "blue)."),
        Figure("mechanism_intervals",
               "Each burst's predicted quiet interval (from the crossing, and from v's decay) "
               "against the measured one, over all runs. Points on y = x are predicted exactly."),
    ),
    sections=("mechanism",),
)  # fmt: skip
