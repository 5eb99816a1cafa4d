"""Early warning of divergence: does the local geometry of a run predict that it will blow up?

For every run and lead time ``k``, features are computed on a window of
:attr:`EarlyWarningParams.window` steps that ends ``k`` steps before the *reference step*: the last
finite state of a diverged run (``diverged_step - 1``) or the last step of a run that did not
diverge. Only data up to the window's end is used (bursts are detected on the prefix of the series
that ends there), so no feature sees the future.

Features (all per window, on the recorded coordinates where they need ``theta``/``m``/``v``):

``loss_level``
    ``log10`` of the full-batch loss at the window's end: the trivial baseline.
``burst_rate``, ``burst_amplitude``
    Burst onsets per 1000 steps (:func:`.events.detect_bursts` on the update norm), and the
    largest ``log10`` excess of the update norm over its rolling median. A burst is a spike by
    prominence, so it counts once the update norm has fallen back from its peak by the ``on``
    level within the prefix: a spike still rising at the window's end is not counted yet.
``update_trend``
    Slope of ``log10`` update norm per 100 steps (least squares over the window).
``v_floor``, ``v_trend``
    ``log10`` of the smallest bias-corrected ``v`` over coordinates and window (how far the
    second moment has decayed: the floor that rounding noise and Adam's step size are set against),
    and the slope of ``log10`` of the median ``v`` per 100 steps.
``ratio_median``, ``ratio_max``, ``large_ratio_fraction``
    The update ratio ``|m_hat/(sqrt(v_hat)+eps)|`` (1 for a steady gradient; unbounded when
    ``beta1 > sqrt(beta2)``): its median, ``log10`` of its maximum, and the fraction of entries
    above :attr:`EarlyWarningParams.large_update_ratio`.
``flip_growth``
    Slope per 100 steps of ``log10`` of the flip amplitude ``||theta_t - 2 theta_{t-1} +
    theta_{t-2}|| / 4`` (for a period-2 flip of amplitude ``a`` this is ``a``), computed here rather
    than by the spiral analysis; needs ``record_every = 1``.
``sharpness_ratio``
    ``lambda_max(P^-1 H) / threshold`` (:mod:`.stability`) at the latest full state (recorded row,
    snapshot, or ``theta_init``/final) no older than one window; NaN where none exists.

Classification (in :func:`report`). For each ``k``, diverged runs are the positives. Negatives are
the runs that did not diverge, with their window either at the end of the run (``"end"``, as
literally asked: but then loss and v differ simply because the run trained longer) or *matched in
time* (``"matched"``): each survivor's window ends at the same step as a randomly drawn diverged
run's window at that ``k`` (to within :attr:`~EarlyWarningParams.control_stride`), so that training
time alone separates nothing. A standardised logistic regression is evaluated by grouped
cross-validation (:class:`sklearn.model_selection.GroupKFold`, groups = seeds, so a seed is never in
both training and test folds) on three feature sets: geometry (every feature but the loss), loss
level alone, and both. ROC AUCs of the out-of-fold scores get bootstrap CIs over seeds, and the
difference geometry - loss a paired bootstrap CI; its sign decides the verdict.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import xarray as xr

from geomtraj.analysis.base import RunData, one_blas_thread
from geomtraj.analysis.declaration import Analysis, Field, Figure, Needs
from geomtraj.errors import GeomtrajError

__all__ = [
    "EarlyWarningParams",
    "FEATURES",
    "GEOMETRY",
    "window_features",
    "bootstrap_auc",
    "analyze",
    "report",
    "figures",
]

#: Every feature, in the order of the ``feature`` axis.
FEATURES = (
    "loss_level",
    "burst_rate",
    "burst_amplitude",
    "update_trend",
    "v_floor",
    "v_trend",
    "ratio_median",
    "ratio_max",
    "large_ratio_fraction",
    "flip_growth",
    "sharpness_ratio",
)
#: The local-geometry features: all but the loss level.
GEOMETRY = FEATURES[1:]


@dataclass(frozen=True)
class EarlyWarningParams:
    """Settings of the early-warning analysis.

    Attributes
    ----------
    lead_times : tuple of int
        Lead times ``k`` (steps between the window's end and the reference step), default
        ``(0, 25, 50, 100, 200, 400, 800)``: from "just before" to many momentum times
        (1/(1-beta1) = 100 steps for beta1 = 0.99).
    window : int
        Window length in steps (default 200): long enough for trends over a couple of momentum
        times and a least-squares slope from 200 points, short enough that early divergences
        (a few hundred steps in) still fit at small ``k``.
    min_start : int
        Windows must start after this step (default 50): Adam's first steps, while the bias
        corrections are far from 1, are not "local dynamics" of a trained run.
    control_stride : int
        Spacing of the windows computed for runs that did not diverge, from which the time-matched
        controls are drawn (default 50 steps, a quarter window).
    large_update_ratio : float
        Threshold of ``large_ratio_fraction`` (default 0.5, as in
        :class:`.stability.StabilityParams`: half of the maximal steady Adam step).
    n_splits : int
        Folds of the grouped cross-validation (default 5, fewer when there are fewer seeds).
    C : float
        Inverse L2 regularisation of the logistic regression (default 1.0, scikit-learn's; the
        features are standardised inside each training fold).
    n_boot : int
        Bootstrap resamples over seeds for the AUC confidence intervals (default 1000).
    ci : float
        Confidence level (default 0.95).
    min_class : int
        Fewest runs in each class for an AUC at a lead time (default 5); otherwise null with a note.
    control : str
        Negatives for the main verdict: ``"matched"`` (default, see the module docstring) or
        ``"end"``; the report gives both curves.
    n_matchings : int
        Random pairings of controls with diverged runs averaged over (default 10: one pairing
        alone moved AUCs by up to 0.05 on the configs/early_warning.toml grid).
    sharpness_checkpoints : int
        At most this many full states per run are used for ``sharpness_ratio`` (default 400).
    seed : int
        Seed of the control matching and of the bootstrap (default 0).
    """

    lead_times: tuple[int, ...] = (0, 25, 50, 100, 200, 400, 800)
    window: int = 200
    min_start: int = 50
    control_stride: int = 50
    large_update_ratio: float = 0.5
    n_splits: int = 5
    C: float = 1.0
    n_boot: int = 1000
    ci: float = 0.95
    min_class: int = 5
    control: str = "matched"
    n_matchings: int = 10
    sharpness_checkpoints: int = 400
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.lead_times or min(self.lead_times) < 0:
            raise GeomtrajError(f"lead_times={self.lead_times}; expected non-negative step counts")
        if self.window < 10 or self.control_stride < 1 or self.min_start < 0:
            raise GeomtrajError(
                f"window={self.window}, control_stride={self.control_stride}, min_start="
                f"{self.min_start}; expected window >= 10, stride >= 1, min_start >= 0"
            )
        if self.control not in ("matched", "end"):
            raise GeomtrajError(f"control={self.control!r}; expected 'matched' or 'end'")
        if not 0 < self.ci < 1 or self.n_splits < 2:
            raise GeomtrajError(f"ci={self.ci}, n_splits={self.n_splits}; expected 0<ci<1, >=2")


# ----------------------------------------------------------------------------- the features


class _RunSeries:
    """Per-step and per-recorded-row series of one run, computed once, sliced per window."""

    def __init__(self, rd: RunData, params: EarlyWarningParams, sharpness: tuple | None):
        h = rd.hyper
        self.params = params
        self.iteration = rd.iteration
        self.update_norm = rd.update_norm
        self.train_loss = rd.train_loss
        self.step = rd.step
        b1, b2, eps = h["beta1"], h["beta2"], h["eps"]
        t = self.step[:, None].astype(np.float64)
        if rd.theta.shape[1] and self.step.size:
            m_hat = rd.m / (1.0 - b1**t)
            v_hat = rd.v / (1.0 - b2**t)
            ratio = np.abs(m_hat / (np.sqrt(v_hat) + eps))
            tiny = np.finfo(np.float64).tiny
            self.ratio_median = np.median(ratio, axis=1)
            self.ratio_max = np.max(ratio, axis=1)
            self.ratio_large = np.mean(ratio > params.large_update_ratio, axis=1)
            self.v_min = np.log10(np.maximum(np.min(v_hat, axis=1), tiny))
            self.v_median = np.log10(np.maximum(np.median(v_hat, axis=1), tiny))
            # the flip needs three consecutive steps (rows t-2, t-1, t)
            consecutive = np.concatenate([[False, False], self.step[2:] - self.step[:-2] == 2])
            th = rd.theta
            flip = np.full(self.step.size, np.nan)
            flip[2:] = np.linalg.norm(th[2:] - 2.0 * th[1:-1] + th[:-2], axis=1) / 4.0
            flip[~consecutive] = np.nan
            self.log_flip = np.log10(np.maximum(flip, tiny))
        else:
            self.ratio_median = self.ratio_max = self.ratio_large = np.zeros(0)
            self.v_min = self.v_median = self.log_flip = np.zeros(0)
        self.sharpness = sharpness  # (steps, ratio) of full states, or None

    def features(self, end: int) -> np.ndarray:
        """The feature vector of the window ``(end - window, end]``; NaN where not computable."""
        from geomtraj.analysis.events import detect_bursts

        p = self.params
        start = end - p.window
        out = np.full(len(FEATURES), np.nan)
        # per-step series: iteration t holds ||theta_t - theta_{t-1}|| and L(theta_{t-1})
        n_it = int(np.searchsorted(self.iteration, end, side="right"))
        w_it = slice(int(np.searchsorted(self.iteration, start, side="right")), n_it)
        if n_it >= 1 and w_it.stop - w_it.start >= 2:
            out[0] = np.log10(max(self.train_loss[n_it - 1], np.finfo(np.float64).tiny))
            un = self.update_norm[:n_it]
            b = detect_bursts(un, self.iteration[:n_it])
            inside = (b.onset > start) & (b.onset <= end)
            out[1] = 1000.0 * np.count_nonzero(inside) / p.window
            y = np.log(np.maximum(un[w_it], 1e-300))
            excess = y - b.log_baseline[w_it]
            out[2] = float(np.max(excess)) / np.log(10.0)
            out[3] = 100.0 * _slope(self.iteration[w_it], y / np.log(10.0))
        rows = slice(
            int(np.searchsorted(self.step, start, side="right")),
            int(np.searchsorted(self.step, end, side="right")),
        )
        if rows.stop - rows.start >= 2 and self.ratio_max.size:
            st = self.step[rows]
            out[4] = float(np.min(self.v_min[rows]))
            out[5] = 100.0 * _slope(st, self.v_median[rows])
            out[6] = float(np.median(self.ratio_median[rows]))
            out[7] = float(np.log10(max(np.max(self.ratio_max[rows]), 1e-300)))
            out[8] = float(np.mean(self.ratio_large[rows]))
            lf = self.log_flip[rows]
            ok = np.isfinite(lf)
            if np.count_nonzero(ok) >= 10:
                out[9] = 100.0 * _slope(st[ok], lf[ok])
        if self.sharpness is not None:
            s_steps, s_ratio = self.sharpness
            i = int(np.searchsorted(s_steps, end, side="right")) - 1
            if i >= 0 and s_steps[i] > start and np.isfinite(s_ratio[i]):
                out[10] = s_ratio[i]
        return out


def _slope(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of ``y`` on ``x``."""
    x = np.asarray(x, dtype=np.float64)
    xc = x - x.mean()
    den = float(xc @ xc)
    return float(xc @ (y - y.mean()) / den) if den > 0 else np.nan


def _sharpness_series(ds: xr.Dataset, run: int, params: EarlyWarningParams):
    """``(steps, lambda_max(P^-1 H)/threshold)`` at the run's full states; None with only two."""
    from geomtraj.analysis import stability as st

    if st.missing_curvature_inputs(ds) is not None:
        return None  # no network or data to rebuild (analyze notes why)
    states = st.checkpoint_states(ds, run, max_checkpoints=params.sharpness_checkpoints)
    if states.steps.size <= 2 and states.source == "init+final":
        return None
    rd = RunData(ds, run)
    h = rd.hyper
    spec = st.run_spec(ds, run)
    X, y = st.run_data_arrays(ds, run)
    from geomtraj.analysis.hessian import MLPObjective

    objective = MLPObjective(spec, X, y, h["weight_decay"])
    threshold = st.stability_threshold(h["beta1"], h["lr"])
    ratio = np.full(states.steps.size, np.nan)
    # one solver per run: each checkpoint's Lanczos starts from the previous one's eigenvectors
    solver = st.SharpnessSolver()
    with one_blas_thread():
        for i, t in enumerate(states.steps):
            if not np.all(np.isfinite(states.theta[i])):
                continue
            lin = objective.at(states.theta[i])
            if not (np.isfinite(lin.loss) and np.all(np.isfinite(lin.grad))):
                continue
            P = st.adam_preconditioner(states.v[i], lin.grad, int(t), h["beta1"], h["beta2"],
                                       h["eps"])  # fmt: skip
            if not (np.all(np.isfinite(P)) and np.all(P > 0)):
                continue
            top, _ = solver(lin, P)
            ratio[i] = top / threshold
    return states.steps, ratio


def window_features(rd: RunData, ends: Sequence[int], params: EarlyWarningParams | None = None,
                    sharpness=None) -> np.ndarray:  # fmt: skip
    """Feature vectors ``(len(ends), len(FEATURES))`` of windows ending at ``ends`` of one run."""
    params = params or EarlyWarningParams()
    series = _RunSeries(rd, params, sharpness)
    return np.stack([series.features(int(e)) for e in ends]) if len(ends) else np.zeros((0, 11))


# ---------------------------------------------------------------------------- the analysis


def analyze(
    ds: xr.Dataset,
    runs: Sequence[int] | None = None,
    *,
    progress: Callable[[int], object] | None = None,
    params: EarlyWarningParams | None = None,
    **overrides,
) -> xr.Dataset:
    """Window features of every run at every lead time, and time-matched control windows.

    Returns
    -------
    xarray.Dataset
        ``features`` (run, lead, feature): the window ending ``lead`` steps before the run's
        reference step (NaN where the window does not fit in the analysed steps after
        ``min_start``), ``window_end`` (run, lead; -1 where it does not fit),
        ``control_features`` (run, control_end, feature): windows ending on a fixed grid of
        steps, for runs that did not diverge (NaN otherwise),
        and per run ``diverged``, ``reference_step`` (the last finite step of a diverged run, else
        the last analysed step), ``note``, ``seed``, ``beta1``, ``beta2``, ``lr``,
        ``precision``, ``hidden``.
    """
    params = params or EarlyWarningParams()
    if overrides:
        try:
            params = replace(params, **overrides)
        except TypeError as exc:
            raise GeomtrajError(f"early_warning.analyze: {exc}; see EarlyWarningParams") from None
    run_list = list(range(ds.sizes["run"])) if runs is None else [int(r) for r in runs]
    leads = np.array(sorted(set(int(k) for k in params.lead_times)), np.int64)
    total = int(ds.attrs.get("steps", int(ds["step"].values[-1])))
    first = params.min_start + params.window
    grid = np.arange(first, total + 1, params.control_stride, dtype=np.int64)
    nf = len(FEATURES)
    feats = np.full((len(run_list), leads.size, nf), np.nan)
    ends = np.full((len(run_list), leads.size), -1, np.int64)
    ctrl = np.full((len(run_list), grid.size, nf), np.nan)
    diverged = np.zeros(len(run_list), bool)
    reference = np.zeros(len(run_list), np.int64)
    notes = np.full(len(run_list), "", dtype=object)
    # without a single diverged run in the store there is nothing to predict: skip the features
    # (checked on the whole store, so that every block of runs decides alike)
    none_diverged = not bool(np.any(np.asarray(ds["diverged_step"].values) >= 0))
    from geomtraj.analysis.stability import missing_curvature_inputs

    no_curvature = missing_curvature_inputs(ds)
    for j, r in enumerate(run_list):
        rd = RunData(ds, r)
        d = rd.diverged_step
        diverged[j] = d is not None
        if none_diverged:
            reference[j] = int(rd.iteration[-1]) if rd.iteration.size else -1
            notes[j] = "no run of the store diverged; features not computed"
            if progress is not None:
                progress(1)
            continue
        it = rd.iteration
        # the analysed steps (a --steps range may cut the run): windows must lie inside them
        first = max(params.min_start, int(it[0]) - 1) if it.size else 0
        last = int(it[-1]) if it.size else -1
        reference[j] = (d - 1) if d is not None else last
        if d is not None and d - 1 > last:
            notes[j] = f"divergence at step {d} lies after the analysed steps (to {last})"
        sharp = _sharpness_series(ds, r, params) if it.size else None
        series = _RunSeries(rd, params, sharp)
        for i, k in enumerate(leads):
            e = int(reference[j] - k)
            if e - params.window >= first and e <= last:
                ends[j, i] = e
                feats[j, i] = series.features(e)
        if not diverged[j]:
            for i, e in enumerate(grid):
                if e - params.window >= first and e <= last:
                    ctrl[j, i] = series.features(int(e))
        if progress is not None:
            progress(1)
    variables = {
        "features": (("run", "lead", "feature"), feats),
        "window_end": (("run", "lead"), ends),
        "control_features": (("run", "control_end", "feature"), ctrl),
        "diverged": (("run",), diverged),
        "reference_step": (("run",), reference),
        "note": (("run",), notes),
    }
    for name in ("seed", "beta1", "beta2", "lr", "precision", "hidden"):
        variables[name] = (("run",), ds[name].values[run_list])
    out = xr.Dataset(
        variables,
        coords={"run": np.array(run_list, np.int64), "lead": leads, "feature": list(FEATURES),
                "control_end": grid},
    )  # fmt: skip
    out.attrs.update(analysis="early_warning", params=repr(params), window=params.window,
                     control_stride=params.control_stride)  # fmt: skip
    if no_curvature is not None and not none_diverged:
        out.attrs["sharpness_not_measurable"] = no_curvature
    for name in ("n_splits", "C", "n_boot", "ci", "min_class", "control", "n_matchings", "seed"):
        out.attrs[name] = getattr(params, name)
    return out


# ------------------------------------------------------------------------------ the classifier


def _settings(result: xr.Dataset) -> EarlyWarningParams:
    d = EarlyWarningParams()
    kw = {name: type(getattr(d, name))(result.attrs[name])
          for name in ("n_splits", "C", "n_boot", "ci", "min_class", "control", "n_matchings",
                       "seed", "window", "control_stride") if name in result.attrs}  # fmt: skip
    return replace(d, **kw)


def _design(result: xr.Dataset, li: int, control: str, seed: int):
    """Rows (features), labels and seed groups at lead index ``li`` for one control design.

    Time matching: each surviving run is paired once (at random, from ``seed``) with a diverged
    run, the same pairing at every lead time, and its control window ends on the grid step nearest
    to that run's window end; where the partner's window does not fit at this lead time, the next
    diverged run in the pairing order whose window fits stands in.
    """
    feats = result["features"].values[:, li]
    div = result["diverged"].values.astype(bool)
    ends = result["window_end"].values[:, li]
    seeds = result["seed"].values
    pos = np.flatnonzero(div & (ends >= 0))
    X, y, g = [feats[pos]], [np.ones(pos.size)], [seeds[pos]]
    surv = np.flatnonzero(~div)
    if control == "end":
        keep = surv[ends[surv] >= 0]
        X.append(feats[keep])
        y.append(np.zeros(keep.size))
        g.append(seeds[keep])
    elif pos.size:
        grid = result["control_end"].values
        ctrl = result["control_features"].values
        every = np.flatnonzero(div)
        partner = np.random.default_rng(seed).integers(0, every.size, surv.size)
        fits = ends[every] >= 0
        targets = []
        for start in partner:
            order = (start + np.arange(every.size)) % every.size
            targets.append(ends[every[order[np.argmax(fits[order])]]])
        rows = []
        for j, target in zip(surv, targets, strict=True):
            i = int(np.argmin(np.abs(grid - target)))
            if np.isfinite(ctrl[j, i]).any():
                rows.append((j, ctrl[j, i]))
        if rows:
            X.append(np.stack([r[1] for r in rows]))
            y.append(np.zeros(len(rows)))
            g.append(seeds[[r[0] for r in rows]])
    return np.concatenate(X), np.concatenate(y), np.concatenate(g)


def _oof_scores(X: np.ndarray, y: np.ndarray, groups: np.ndarray, p: EarlyWarningParams):
    """Out-of-fold decision scores of a standardised logistic regression, grouped folds."""
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n_groups = np.unique(groups).size
    folds = GroupKFold(n_splits=min(p.n_splits, n_groups))
    scores = np.full(y.size, np.nan)
    for train, test in folds.split(X, y, groups):
        if np.unique(y[train]).size < 2:
            scores[test] = float(y[train].mean())  # one class only: predict its prior
            continue
        model = make_pipeline(
            SimpleImputer(strategy="median", keep_empty_features=True),
            StandardScaler(),
            LogisticRegression(C=p.C, max_iter=2000),
        )
        model.fit(X[train], y[train])
        scores[test] = model.decision_function(X[test])
    return scores


def _pair_matrix(y: np.ndarray, score: np.ndarray) -> np.ndarray:
    """``C[i, j]`` = 1 if positive ``i`` outscores negative ``j``, 1/2 on a tie, else 0."""
    pos, neg = score[y == 1], score[y == 0]
    return (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])


def bootstrap_auc(
    y: np.ndarray,
    scores_list: Sequence[np.ndarray],
    groups: np.ndarray,
    n_boot: int,
    rng: np.random.Generator,
    *,
    counts: np.ndarray | None = None,
) -> np.ndarray:
    """ROC AUCs of each score vector on ``n_boot`` resamples of whole groups (seeds).

    A resample draws as many groups as there are, with replacement: :func:`scipy.stats.bootstrap`
    resamples the group labels (seeded by ``rng``), unless ``counts[b, g]`` (how often group
    ``g``, in ``numpy.unique`` order, is drawn in resample ``b``) is given. A point counts as
    often as its group was drawn. The AUC of the resample is then the weighted Mann-Whitney
    statistic ``sum_ij w_i w_j C_ij / (sum_i w_i * sum_j w_j)`` over positive-negative pairs,
    which equals :func:`sklearn.metrics.roc_auc_score` on the resampled points, computed for all
    resamples at once. Returns ``(n_valid, len(scores_list))``; resamples lacking a class are
    dropped, and so is everything with fewer than two groups (no resampling is possible).
    """
    from scipy.stats import bootstrap

    y = np.asarray(y)
    uniq, gidx = np.unique(groups, return_inverse=True)
    pairs = [_pair_matrix(y, np.asarray(score)) for score in scores_list]
    if counts is not None:
        out = _weighted_aucs(y, gidx, pairs, np.asarray(counts))
    elif uniq.size < 2:
        return np.empty((0, len(pairs)))
    else:
        labels = np.arange(uniq.size)

        def aucs(drawn: np.ndarray, axis: int = -1) -> np.ndarray:
            drawn = np.moveaxis(drawn, axis, -1)
            drawn_counts = (drawn[..., None] == labels).sum(axis=-2)
            return _weighted_aucs(y, gidx, pairs, drawn_counts).T

        res = bootstrap(
            (labels,),
            aucs,
            n_resamples=n_boot,
            vectorized=True,
            # the one-hot counts of a batch hold batch * groups**2 values
            batch=max(1, 2**22 // uniq.size**2),
            method="percentile",
            rng=rng,
        )
        out = np.asarray(res.bootstrap_distribution).reshape(len(pairs), -1).T
    return out[np.all(np.isfinite(out), axis=1)]


def _weighted_aucs(
    y: np.ndarray, gidx: np.ndarray, pairs: Sequence[np.ndarray], counts: np.ndarray
) -> np.ndarray:
    """AUCs ``(n_resamples, len(pairs))`` of resamples drawing group ``g`` ``counts[b, g]`` times.

    NaN where a resample lacks a class.
    """
    w_pos = counts[:, gidx[y == 1]].astype(np.float64)
    w_neg = counts[:, gidx[y == 0]].astype(np.float64)
    norm = w_pos.sum(axis=1) * w_neg.sum(axis=1)
    out = np.full((counts.shape[0], len(pairs)), np.nan)
    ok = norm > 0
    for i, C in enumerate(pairs):
        out[ok, i] = np.einsum("bi,ij,bj->b", w_pos[ok], C, w_neg[ok]) / norm[ok]
    return out


def _curve(result: xr.Dataset, control: str, p: EarlyWarningParams) -> list[dict]:
    """One entry per lead time: AUCs of geometry, loss and both, their CIs and a verdict.

    With time-matched controls the AUCs are averaged over ``n_matchings`` random pairings, and the
    bootstrap pools ``n_boot / n_matchings`` resamples of each, so the CIs include the spread that
    the choice of pairing adds.
    """
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(p.seed)
    geo = [FEATURES.index(f) for f in GEOMETRY]
    n_match = p.n_matchings if control == "matched" else 1
    lo_q, hi_q = (1 - p.ci) / 2, 1 - (1 - p.ci) / 2
    rows = []
    for li, k in enumerate(result["lead"].values):
        entry: dict = {"lead": int(k), "n_diverged": 0, "n_controls": 0, "n_matchings": n_match,
                       "auc_geometry": None, "ci_geometry": None, "auc_loss": None,
                       "ci_loss": None, "auc_combined": None, "ci_combined": None,
                       "difference_ci": None, "verdict": None, "feature_auc": None,
                       "note": ""}  # fmt: skip
        aucs, boots, feature_aucs, missing = [], [], [], set()
        for m in range(n_match):
            X, y, g = _design(result, li, control, p.seed + m)
            entry["n_diverged"], entry["n_controls"] = int(np.sum(y == 1)), int(np.sum(y == 0))
            if min(entry["n_diverged"], entry["n_controls"]) < p.min_class:
                break
            used = [i for i in geo if np.isfinite(X[:, i]).any()]
            missing |= {FEATURES[i] for i in geo if i not in used}
            scores = [
                _oof_scores(X[:, used], y, g, p),
                _oof_scores(X[:, [0]], y, g, p),
                _oof_scores(X[:, [0, *used]], y, g, p),
            ]
            aucs.append([roc_auc_score(y, sc) for sc in scores])
            boots.append(bootstrap_auc(y, scores, g, max(p.n_boot // n_match, 1), rng))
            feature_aucs.append(_feature_aucs(X, y))
        if not aucs:
            entry["note"] = (
                f"{entry['n_diverged']} diverged and {entry['n_controls']} control windows fit "
                f"at this lead time (< {p.min_class} in a class)"
            )
            rows.append(entry)
            continue
        mean = np.mean(np.asarray(aucs), axis=0)
        b = np.concatenate(boots)
        entry.update(auc_geometry=float(mean[0]), auc_loss=float(mean[1]),
                     auc_combined=float(mean[2]))  # fmt: skip
        entry["feature_auc"] = {
            name: None if any(f[name] is None for f in feature_aucs)
            else float(np.mean([f[name] for f in feature_aucs]))
            for name in FEATURES
        }  # fmt: skip
        if b.shape[0] < 10:
            entry["verdict"] = "undecided"
            entry["note"] = "too few seeds for a bootstrap CI"
            rows.append(entry)
            continue
        for i, key in enumerate(("ci_geometry", "ci_loss", "ci_combined")):
            entry[key] = [float(np.quantile(b[:, i], lo_q)), float(np.quantile(b[:, i], hi_q))]
        diff = b[:, 0] - b[:, 1]
        dci = [float(np.quantile(diff, lo_q)), float(np.quantile(diff, hi_q))]
        entry["difference_ci"] = dci
        if dci[0] > 0:
            entry["verdict"] = "geometry beats loss"
        elif dci[1] < 0:
            entry["verdict"] = "loss beats geometry"
        else:
            entry["verdict"] = "no clear difference"
        if missing:
            entry["note"] = f"features not available here: {', '.join(sorted(missing))}"
        rows.append(entry)
    return rows


def _feature_aucs(X: np.ndarray, y: np.ndarray) -> dict:
    """In-sample ROC AUC of each feature alone (above 0.5: larger in runs that diverge)."""
    from sklearn.metrics import roc_auc_score

    out = {}
    for i, name in enumerate(FEATURES):
        ok = np.isfinite(X[:, i])
        if ok.sum() >= 2 and np.unique(y[ok]).size == 2:
            out[name] = float(roc_auc_score(y[ok], X[ok, i]))
        else:
            out[name] = None
    return out


def _coefficients(result: xr.Dataset, control: str, p: EarlyWarningParams) -> dict | None:
    """Standardised logistic coefficients of the geometry model at the smallest lead time."""
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y, _ = _design(result, 0, control, p.seed)
    if np.unique(y).size < 2:
        return None
    used = [FEATURES.index(f) for f in GEOMETRY if np.isfinite(X[:, FEATURES.index(f)]).any()]
    model = make_pipeline(SimpleImputer(strategy="median"), StandardScaler(),
                          LogisticRegression(C=p.C, max_iter=2000))  # fmt: skip
    model.fit(X[:, used], y)
    coef = model[-1].coef_[0]
    return {FEATURES[i]: float(c) for i, c in zip(used, coef, strict=True)}


def report(result: xr.Dataset) -> dict:
    """The ``early_warning`` section: ROC AUC against lead time, geometry beside loss level.

    ``curves`` holds one list per control design (``matched``, ``end``), one entry per lead time
    with the AUCs, their seed-bootstrap CIs, the CI of AUC(geometry) - AUC(loss) and a verdict;
    ``verdict`` summarises the main design (``control``) over lead times.
    """
    p = _settings(result)
    div = result["diverged"].values.astype(bool)
    runs = {
        int(r): {"early_warning": {"diverged": bool(dv), "reference_step": int(ref)}}
        for r, dv, ref in zip(
            result["run"].values, div, result["reference_step"].values, strict=True
        )  # fmt: skip
    }
    section: dict = {
        "control": p.control,
        "window": p.window,
        "lead_times": [int(k) for k in result["lead"].values],
        "features": list(GEOMETRY),
        "baseline": "loss_level",
        "n_diverged": int(div.sum()),
        "n_survived": int((~div).sum()),
        "curves": {},
        "coefficients": None,
        "verdict": "not measurable",
        "note": "",
    }
    no_sharpness = result.attrs.get("sharpness_not_measurable")
    if no_sharpness:
        # the classifier still runs on the other features; the sharpness ratio is not measurable
        for entry in runs.values():
            entry["early_warning"].update(sharpness_ratio="not measurable", note=str(no_sharpness))
        section["sharpness_ratio"] = f"not measurable: {no_sharpness}"
    if div.sum() < p.min_class or (~div).sum() < p.min_class:
        section["note"] = (
            f"{int(div.sum())} diverged and {int((~div).sum())} surviving runs; the classifier "
            f"needs at least {p.min_class} of each (train settings that diverge, e.g. "
            "configs/early_warning.toml)"
        )
        return {"runs": runs, "early_warning": section}
    for control in ("matched", "end"):
        section["curves"][control] = _curve(result, control, p)
    section["coefficients"] = _coefficients(result, p.control, p)
    verdicts = [e["verdict"] for e in section["curves"][p.control] if e["verdict"]]
    if not verdicts:
        section["note"] = "no lead time has enough runs in both classes"
    elif all(v == "geometry beats loss" for v in verdicts):
        section["verdict"] = "geometry beats loss at every lead time"
    elif any(v == "geometry beats loss" for v in verdicts):
        better = [e["lead"] for e in section["curves"][p.control]
                  if e["verdict"] == "geometry beats loss"]  # fmt: skip
        section["verdict"] = f"geometry beats loss at lead times {better}"
    elif any(v == "loss beats geometry" for v in verdicts):
        section["verdict"] = "geometry does not beat loss; loss is better at some lead times"
    else:
        section["verdict"] = "geometry does not beat loss"
    return {"runs": runs, "early_warning": section}


# ------------------------------------------------------------------------------- the figures


def figures(ds: xr.Dataset, result: xr.Dataset, outdir) -> list[Path]:
    """``early_warning_auc.png``: ROC AUC against lead time, geometry, loss and both, per design."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rep = report(result)["early_warning"]
    if not rep["curves"]:
        return []
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, control in zip(axes, ("matched", "end"), strict=True):
        curve = rep["curves"][control]
        for key, label, color in (("geometry", "local geometry", "C0"),
                                  ("loss", "loss level (baseline)", "C3"),
                                  ("combined", "geometry + loss", "C2")):  # fmt: skip
            pts = [(e["lead"], e[f"auc_{key}"], e[f"ci_{key}"]) for e in curve
                   if e[f"auc_{key}"] is not None]  # fmt: skip
            if not pts:
                continue
            k = np.array([q[0] for q in pts], float)
            auc = np.array([q[1] for q in pts])
            ax.plot(k, auc, "o-", color=color, label=label, ms=4)
            ci = [q[2] for q in pts]
            if all(c is not None for c in ci):
                ax.fill_between(k, [c[0] for c in ci], [c[1] for c in ci], color=color,
                                alpha=0.15)  # fmt: skip
        ax.axhline(0.5, color="k", lw=0.6, ls=":")
        ax.set_xscale("symlog", linthresh=25)
        ax.set_xlim(0, 1.15 * float(result["lead"].values.max()))
        ax.set_xlabel("lead time k (steps before divergence)")
        title = "time-matched controls" if control == "matched" else "controls at run end"
        ax.set_title(f"{title}: {rep['n_diverged']} diverged, {rep['n_survived']} survived",
                     fontsize=9)  # fmt: skip
    level = int(round(100 * _settings(result).ci))
    axes[0].set_ylabel(f"ROC AUC (grouped CV over seeds, {level}% CI)")
    axes[0].legend(fontsize=8, loc="lower left")
    fig.suptitle(f"Early warning of divergence, window {rep['window']} steps", fontsize=10)
    fig.tight_layout()
    path = outdir / "early_warning_auc.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


# -------------------------------------------------------------------------------- declaration

ANALYSIS = Analysis(
    name="early_warning",
    analyze=analyze,
    report=report,
    draw=figures,
    params=EarlyWarningParams,
    summary="whether local geometry predicts divergence better than the loss level",
    needs=Needs(
        variables=("theta", "m", "v", "update_norm", "train_loss"),
        training_data=True,
        without="without the training data the sharpness ratio is 'not measurable' and the "
        "classifier uses the other features",
    ),
    fields=(
        Field("early_warning.diverged", "", "whether the run diverged", "bool"),
        Field("early_warning.reference_step", "step",
              "divergence step, or the matched step of a surviving run", "int"),
        Field("early_warning.curves.matched[].auc_geometry", "",
              "ROC AUC of the geometry features at this lead time; 0.5 is chance",
              place="report"),
        Field("early_warning.verdict", "", "whether geometry beats the loss level", "str",
              place="report"),
    ),
    figures=(
        Figure(
            "early_warning_auc",
            "ROC AUC of predicting divergence against lead time: local geometry, loss level and "
            "both. Geometry helps only where its curve and CI lie above the loss curve; 0.5 is "
            "chance.",
        ),
    ),
    sections=("early_warning",),
)  # fmt: skip
