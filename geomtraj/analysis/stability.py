"""Edge of stability: Adam's preconditioned sharpness against its stability threshold.

Cohen et al. (arXiv 2207.14484) write full-batch Adam as
``theta_{t+1} = theta_t - lr * P_t^{-1} m_t`` with the raw (not bias-corrected) momentum
``m_t = beta1*m_{t-1} + (1-beta1)*g_t``, ``g_t = grad L(theta_t)``, and the diagonal preconditioner

    ``P_t = (1 - beta1^t) * diag(sqrt(v_t / (1 - beta2^t)) + eps)``,

where ``v_t`` already contains ``g_t**2``. This is contract 3's update exactly
(``lr*m_hat/(sqrt(v_hat)+eps) = lr*m/((1-beta1^t)(sqrt(v_hat)+eps))``). Linearising the update
with ``P`` frozen, a quadratic direction of curvature ``lambda`` of ``P^{-1} H`` is stable when
``lambda < (2 + 2*beta1) / ((1 - beta1) * lr)`` (38/lr for beta1 = 0.9), the *threshold*; Cohen et
al. find that the *preconditioned sharpness* ``lambda_max(P_t^{-1} H_t)`` rises to it and hovers
there.

Indexing in this module. geomtraj stores the state *after* update ``t`` (``theta_t``, ``m_t``,
``v_t``, contract 2). At a checkpoint ``t`` this module measures the curvature the *next* update
(``t+1``) sees: ``H = H(theta_t)`` and the preconditioner of that update,

    ``P = (1 - beta1^(t+1)) * (sqrt(v' / (1 - beta2^(t+1))) + eps)``,
    ``v' = beta2*v_t + (1 - beta2)*g(theta_t)**2``,

with ``g`` recomputed in float64 (weight decay included, as in the trainer). This is Cohen et al.'s
``P_t^{-1} H_t`` in their indexing. The eigenvalue is computed on the symmetric matrix
``P^{-1/2} H P^{-1/2}``, which has the same spectrum as ``P^{-1} H``. ``H`` comes from exact
Hessian-vector products (:mod:`geomtraj.analysis.hessian`) in float64 on the run's data, rounded
first to the
run's number format as the trainer rounded it.

Where the full state lives. ``lambda_max`` needs every coordinate of ``theta``, ``m``, ``v``:

* ``theta_init`` (step 0, ``m = v = 0``) and ``theta_final``/``m_final``/``v_final`` (the last step,
  or step ``diverged_step - 1`` of a diverged run) always hold it;
* the recorded rows hold it when the run recorded every parameter (``record_params = "all"``,
  checked through ``param_index``);
* otherwise full snapshots (``theta_snapshot``/``m_snapshot``/``v_snapshot``, written every
  ``snapshot_every`` updates) hold it at their coarser stride;
* with ``retrain=True`` (and not every parameter recorded), the run is trained again from
  ``theta_init`` with :func:`geomtraj.train.train` (same hyper-parameters, precision, seed, batch
  size and perturbation, every parameter recorded at the checkpoint stride). The trainer is
  bit-for-bit reproducible, and the retrained trajectory is compared with the stored recorded
  coordinates and snapshots; any difference is reported in ``note``. Without ``retrain`` only
  step 0, the snapshots and the final step are measured, and ``note`` says so.

Bursts against crossings. The sharpness ratio ``lambda_max / threshold`` is interpolated linearly
between checkpoints to find *upward crossings* of 1. A burst (:func:`.events.run_bursts` on the
update norm) *starts at a crossing* when an upward crossing lies in
``[onset - max_lag, onset + resolution]`` (``resolution`` = checkpoint spacing; ``max_lag`` =
``max_lag_momentum/(1-beta1)``, capped at half the median interval between onsets; checkpoints
must be at most a quarter of ``max_lag`` apart, else the run is "not measurable"). The fraction of
onsets that do is compared with its chance level, the fraction of analysed steps covered by those
windows around all crossings, with a one-sided binomial test; the lag ``onset - crossing`` is
reported too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import xarray as xr

from geomtraj.analysis.base import (
    RunData,
    RunView,
    binomial_p,
    finite_or_none,
    in_memory_array,
    one_blas_thread,
    parse_perturbation,
    rows_in_memory,
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
from geomtraj.analysis.hessian import MLPObjective
from geomtraj.errors import GeomtrajError
from geomtraj.store.zarrstore import strings
from geomtraj.train.models import MLPSpec, parse_hidden

__all__ = [
    "StabilityParams",
    "stability_threshold",
    "adam_preconditioner",
    "update_ratio",
    "preconditioned_sharpness",
    "power_iteration",
    "top_eigenpair",
    "SharpnessSolver",
    "upward_crossings",
    "onsets_vs_crossings",
    "CheckpointStates",
    "checkpoint_states",
    "missing_curvature_inputs",
    "analyze",
    "report",
    "figures",
]


@dataclass(frozen=True)
class StabilityParams:
    """Settings of the edge-of-stability analysis.

    Attributes
    ----------
    max_checkpoints : int
        At most this many checkpoints per run, spread evenly over the steps that hold the full
        state (default 2000). Burst onsets can only be matched with crossings when the spacing of
        checkpoints is well below ``max_lag``; 2000 checkpoints over a 20000-step run that records
        every step gives a spacing of 10 steps, one momentum time for beta1 = 0.9.
    large_update_ratio : float
        A coordinate's update is *large* when ``|m_hat/(sqrt(v_hat)+eps)| > large_update_ratio``
        (default 0.5). The ratio is 1 for a gradient of constant sign and size (a full ``lr`` step)
        and near 0 when the gradient flips sign every step (the momentum cancels), so 0.5
        separates coordinates that move at a sizeable fraction of the maximal Adam step from those
        that do not.
    eig_method : str
        ``"auto"`` (default): a dense symmetric eigensolver when the network has at most
        ``dense_max_params`` parameters (its Hessian from ``n_params`` HVPs), otherwise Lanczos
        (``scipy.sparse.linalg.eigsh``, ``which="LA"``) on HVPs, warm-started at each checkpoint
        from the previous checkpoint's eigenvectors (:class:`SharpnessSolver`); ``"dense"``,
        ``"eigsh"`` or ``"power"`` force a method.
    dense_max_params : int
        Largest network solved densely by ``"auto"`` (default 64). The dense Hessian costs
        ``n_params`` HVPs and an ``O(n^3)`` eigensolver, Lanczos a few tens of HVPs: at 64 data
        points the dense solve of a 12x24 network (373 parameters) takes 0.13 s and Lanczos
        0.01 s; only below about 64 parameters is the dense one faster. Both agree to the
        solver tolerance (``docs/stability.md``).
    eig_tol : float
        Relative tolerance of the iterative solvers (default 1e-8, far below the 1 % at which a
        crossing could move).
    power_iters : int
        Iteration cap of the power method (default 2000).
    max_lag_momentum : float
        A burst starts at a crossing when an upward crossing precedes its onset by at most
        ``max_lag_momentum / (1 - beta1)`` steps (default 10, i.e. 100 steps for beta1 = 0.9).
        Just above the threshold the unstable flip grows by a factor only slightly above 1 per
        step and must rise from the rounding floor by many orders of magnitude, which takes tens of
        momentum times' worth of steps at most; the test is against the chance level of the same
        window, so a longer window does not by itself favour "coincidence".
    max_lag_interval : float
        The lag window is also capped at this fraction of the run's median interval between burst
        onsets (default 0.5): a window as long as the interval would put every onset near some
        crossing, and the test against chance would lose all power.
    max_resolution_fraction : float
        Onsets are matched with crossings only when checkpoints are at most this fraction of the
        lag window apart (default 0.25, 25 steps for a 100-step window). The ratio stays above
        the threshold only for the few tens of steps between the crossing and the burst that
        knocks it down, and coarser checkpoints miss that excursion: on the bursts_f32 fixture
        (12x24, beta2 = 0.999) all 43 onsets follow a crossing at 10-step checkpoints, while at
        50-step ones the crossing fraction is not above its chance level (binomial p = 0.23).
        The verdict says bursts start at crossings when at least this fraction of onsets do
        (default 0.8) *and* the binomial test against chance gives ``p < verdict_alpha``.
    verdict_alpha : float
        Significance level of that binomial test (default 0.01).
    min_onsets : int
        Fewest burst onsets inside the checkpointed range for a verdict (default 3).
    retrain : bool
        Rebuild intermediate checkpoints by training the run again from ``theta_init`` when the
        store did not record every parameter (default False: it costs a full training run).
    burst_signal : str
        Per-step series bursts are detected on (default ``"update_norm"``).
    seed : int
        Seed of the random start vector of the iterative eigensolvers (default 0).
    """

    max_checkpoints: int = 2000
    large_update_ratio: float = 0.5
    eig_method: str = "auto"
    dense_max_params: int = 64
    eig_tol: float = 1e-8
    power_iters: int = 2000
    max_lag_momentum: float = 10.0
    max_lag_interval: float = 0.5
    max_resolution_fraction: float = 0.25
    verdict_fraction: float = 0.8
    verdict_alpha: float = 0.01
    min_onsets: int = 3
    retrain: bool = False
    burst_signal: str = "update_norm"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_checkpoints < 2:
            raise GeomtrajError(f"max_checkpoints={self.max_checkpoints}; expected at least 2")
        if self.eig_method not in ("auto", "dense", "eigsh", "power"):
            raise GeomtrajError(
                f"eig_method={self.eig_method!r}; expected 'auto', 'dense', 'eigsh' or 'power'"
            )
        if not self.large_update_ratio > 0:
            raise GeomtrajError(f"large_update_ratio={self.large_update_ratio}; expected > 0")
        if not (
            self.max_lag_momentum > 0
            and 0 < self.verdict_fraction <= 1
            and self.max_lag_interval > 0
            and 0 < self.max_resolution_fraction <= 1
        ):
            raise GeomtrajError(
                f"max_lag_momentum={self.max_lag_momentum}, max_lag_interval="
                f"{self.max_lag_interval}, max_resolution_fraction="
                f"{self.max_resolution_fraction}, verdict_fraction={self.verdict_fraction}; "
                "expected positive values, the last two at most 1"
            )


# ----------------------------------------------------------------------------- the formulas


def stability_threshold(beta1: float, lr: float) -> float:
    """Adam's stability threshold ``(2 + 2*beta1) / ((1 - beta1) * lr)`` (Cohen et al.)."""
    if not (0 <= beta1 < 1 and lr > 0):
        raise GeomtrajError(f"beta1={beta1}, lr={lr}; expected 0 <= beta1 < 1 and lr > 0")
    return (2.0 + 2.0 * beta1) / ((1.0 - beta1) * lr)


def adam_preconditioner(
    v: np.ndarray, grad: np.ndarray, t: int, beta1: float, beta2: float, eps: float
) -> np.ndarray:
    """Diagonal of Cohen et al.'s ``P`` for the update that starts from the state after ``t``.

    ``P = (1 - beta1^(t+1)) * (sqrt(v' / (1 - beta2^(t+1))) + eps)`` with
    ``v' = beta2*v + (1 - beta2)*grad**2``; ``v`` is the raw second moment after update ``t``
    (zero at ``t = 0``) and ``grad`` the gradient at ``theta_t``.
    """
    v = np.asarray(v, dtype=np.float64)
    grad = np.asarray(grad, dtype=np.float64)
    if v.shape != grad.shape or t < 0:
        raise GeomtrajError(f"v {v.shape} and grad {grad.shape} must match and t={t} be >= 0")
    nxt = beta2 * v + (1.0 - beta2) * grad * grad
    s = t + 1
    return (1.0 - beta1**s) * (np.sqrt(nxt / (1.0 - beta2**s)) + eps)


def update_ratio(
    m: np.ndarray, v: np.ndarray, t: int, beta1: float, beta2: float, eps: float
) -> np.ndarray:
    """``|m_hat / (sqrt(v_hat) + eps)|`` per coordinate after update ``t`` (NaN at ``t = 0``)."""
    m = np.asarray(m, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    if t < 1:
        return np.full(m.shape, np.nan)
    m_hat = m / (1.0 - beta1**t)
    v_hat = v / (1.0 - beta2**t)
    return np.abs(m_hat / (np.sqrt(v_hat) + eps))


def _power_top_magnitude(
    op: Callable[[np.ndarray], np.ndarray], x0: np.ndarray, iters: int, tol: float
) -> tuple[float, np.ndarray, bool, int]:
    """Eigenvalue of largest magnitude, its unit vector, whether it converged, and the products."""
    x = x0 / np.linalg.norm(x0)
    lam = 0.0
    for k in range(iters):
        y = op(x)
        new = float(x @ y)  # Rayleigh quotient of the unit vector x
        norm = np.linalg.norm(y)
        if norm == 0.0:
            return 0.0, x, True, k + 1
        x = y / norm
        if abs(new - lam) <= tol * max(abs(new), 1e-300):
            return new, x, True, k + 1
        lam = new
    return lam, x, False, iters


def _power_top(
    matvec: Callable[[np.ndarray], np.ndarray], x0: np.ndarray, iters: int, tol: float
) -> tuple[float, np.ndarray, bool]:
    """Largest *algebraic* eigenpair by the power method (shifted when the largest is negative)."""
    mu, x, ok, _ = _power_top_magnitude(matvec, x0, iters, tol)
    if mu >= 0:
        return mu, x, ok
    shift = abs(mu)
    top, x, ok2, _ = _power_top_magnitude(lambda z: matvec(z) + shift * z, x0, iters, tol)
    return top - shift, x, ok and ok2


def power_iteration(
    matvec: Callable[[np.ndarray], np.ndarray],
    n: int,
    *,
    iters: int = 2000,
    tol: float = 1e-8,
    seed: int = 0,
    v0: np.ndarray | None = None,
) -> tuple[float, bool]:
    """Largest *algebraic* eigenvalue of a symmetric operator by the power method.

    The plain power method converges to the eigenvalue of largest magnitude; when that one is
    negative the method is run again on ``A + |mu| I``, whose top eigenvalue is the largest
    algebraic one of ``A`` shifted by ``|mu|``. It starts from ``v0`` when given (a warm start),
    else from a random vector drawn with ``seed``. Returns ``(eigenvalue, converged)``.
    """
    x0 = np.random.default_rng(seed).standard_normal(n) if v0 is None else np.asarray(v0, float)
    top, _, ok = _power_top(matvec, x0, iters, tol)
    return top, ok


def top_eigenpair(
    matvec: Callable[[np.ndarray], np.ndarray],
    n: int,
    v0: np.ndarray,
    *,
    method: str = "eigsh",
    tol: float = 1e-8,
    power_iters: int = 2000,
    ncv: int | None = None,
) -> tuple[float, np.ndarray]:
    """Largest algebraic eigenvalue and its unit eigenvector of a symmetric operator.

    Parameters
    ----------
    matvec : callable
        ``matvec(X)`` returns ``A @ X`` for ``X`` of shape ``(n,)``; for ``method="dense"`` it is
        also called once on ``(n, n)`` rows (the identity) to build ``A``.
    n : int
        Dimension.
    v0 : ndarray, shape (n,)
        Start vector of the iterative methods (a random vector, or the previous eigenvector for a
        warm start).
    method : str
        ``"dense"`` (``numpy.linalg.eigh`` of the built matrix), ``"eigsh"`` (Lanczos,
        ``scipy.sparse.linalg.eigsh`` with ``which="LA"``) or ``"power"``.
    tol : float
        Relative tolerance of the iterative methods.
    power_iters : int
        Iteration cap of the power method.
    ncv : int, optional
        Lanczos vectors per restart cycle of ``eigsh`` (its default, 20, when None).
    """
    if method == "eigsh" and n < 3:  # ARPACK needs k < n - 1 ... and a 2x2 is trivial anyway
        method = "dense"
    if method == "dense":
        A = np.asarray(matvec(np.eye(n)), dtype=np.float64)
        w, V = np.linalg.eigh(0.5 * (A + A.T))
        return float(w[-1]), V[:, -1]
    if method == "eigsh":
        from scipy.sparse.linalg import LinearOperator, eigsh

        op = LinearOperator((n, n), matvec=lambda x: matvec(np.ravel(x)), dtype=np.float64)
        w, V = eigsh(op, k=1, which="LA", tol=tol, v0=v0, ncv=None if ncv is None else min(ncv, n))
        return float(w[0]), V[:, 0]
    if method == "power":
        top, x, _ = _power_top(matvec, np.asarray(v0, dtype=np.float64), power_iters, tol)
        return top, x
    raise GeomtrajError(f"method={method!r}; expected 'auto', 'dense', 'eigsh' or 'power'")


class SharpnessSolver:
    """``lambda_max(P^{-1} H)`` and ``lambda_max(H)`` at a sequence of points, warm-started.

    Each call solves both eigenproblems at one point from its Hessian-vector products. The
    iterative methods start from the previous call's eigenvectors (with a small random admixture,
    so that a start vector that happens to span an invariant subspace cannot hide a larger
    eigenvalue): along a trajectory the top eigenvector turns slowly, so Lanczos converges in
    fewer products. The first call starts from a random vector drawn with ``seed``, exactly as
    :func:`preconditioned_sharpness` does, so a sequence of calls is deterministic. Reuse one
    solver per run (in checkpoint order) and a new one for another run.

    Parameters
    ----------
    method : str
        ``"auto"`` (dense up to ``dense_max_params`` parameters, Lanczos above), ``"dense"``,
        ``"eigsh"`` or ``"power"``.
    dense_max_params : int
        Largest network solved densely by ``"auto"``.
    tol : float
        Relative tolerance of the iterative solvers.
    power_iters : int
        Iteration cap of the power method.
    seed : int
        Seed of the first (random) start vector and of the admixtures.

    Attributes
    ----------
    n_hvp : int
        Hessian-vector products used so far (all calls).
    """

    #: Weight of the random unit vector added to a warm start vector (itself of unit norm).
    WARM_NOISE = 1e-2
    #: Lanczos vectors per restart cycle. ARPACK checks convergence only at the end of a cycle;
    #: the top eigenvalue of these Hessians is well separated, so 10 vectors converge in one cycle
    #: and half the HVPs of eigsh's default 20 (measured on Netay-style runs, docs/stability.md).
    NCV = 10

    def __init__(
        self,
        *,
        method: str = "auto",
        dense_max_params: int = 64,
        tol: float = 1e-8,
        power_iters: int = 2000,
        seed: int = 0,
    ) -> None:
        if method not in ("auto", "dense", "eigsh", "power"):
            raise GeomtrajError(f"method={method!r}; expected 'auto', 'dense', 'eigsh' or 'power'")
        self.method, self.dense_max_params = method, dense_max_params
        self.tol, self.power_iters, self.seed = tol, power_iters, seed
        self.n_hvp = 0
        self._rng: np.random.Generator | None = None
        self._vectors: tuple[np.ndarray, np.ndarray] | None = None

    def _starts(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if self._vectors is None or self._vectors[0].size != n:
            self._rng = np.random.default_rng(self.seed)
            v0 = self._rng.standard_normal(n)
            return v0, v0
        assert self._rng is not None
        noise = self._rng.standard_normal((2, n))
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
        return tuple(u + self.WARM_NOISE * z for u, z in zip(self._vectors, noise, strict=True))

    def __call__(
        self, hvp: Callable[[np.ndarray], np.ndarray], precond: np.ndarray
    ) -> tuple[float, float]:
        """``(lambda_max(P^{-1/2} H P^{-1/2}), lambda_max(H))`` at the point ``hvp`` linearises.

        ``hvp(V)`` returns ``H @ V`` for ``V`` of shape ``(n,)`` or ``(k, n)``; ``precond`` is the
        positive diagonal of ``P``.
        """
        P = np.asarray(precond, dtype=np.float64)
        if P.ndim != 1 or not (np.all(np.isfinite(P)) and np.all(P > 0)):
            raise GeomtrajError("the preconditioner must be a 1-D array of positive finite values")
        n = P.size
        method = self.method
        if method == "auto":
            method = "dense" if n <= self.dense_max_params else "eigsh"
        d = 1.0 / np.sqrt(P)

        def counted(V: np.ndarray) -> np.ndarray:
            self.n_hvp += 1 if np.ndim(V) == 1 else int(np.shape(V)[0])
            return hvp(V)

        start_s, start_h = self._starts(n)
        if method == "dense":
            # one Hessian serves both problems (the n products dominate the cost)
            H = np.asarray(counted(np.eye(n)), dtype=np.float64)
            H = 0.5 * (H + H.T)
            ws, Vs = np.linalg.eigh(d[:, None] * H * d[None, :])
            wh, Vh = np.linalg.eigh(H)
            s, us, h, uh = float(ws[-1]), Vs[:, -1], float(wh[-1]), Vh[:, -1]
        else:
            kw = {"method": method, "tol": self.tol, "power_iters": self.power_iters,
                  "ncv": self.NCV}  # fmt: skip
            s, us = top_eigenpair(lambda x: d * counted(d * x), n, start_s, **kw)
            h, uh = top_eigenpair(counted, n, start_h, **kw)
        self._vectors = (us, uh)
        return s, h


def preconditioned_sharpness(
    hvp: Callable[[np.ndarray], np.ndarray],
    precond: np.ndarray,
    *,
    method: str = "auto",
    dense_max_params: int = 64,
    tol: float = 1e-8,
    power_iters: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """``lambda_max(P^{-1} H)`` and ``lambda_max(H)`` from Hessian-vector products.

    One solve from a random start; :class:`SharpnessSolver` does the same along a sequence of
    points with warm starts.

    Parameters
    ----------
    hvp : callable
        ``hvp(V)`` returns ``H @ V`` for ``V`` of shape ``(n,)`` or ``(k, n)`` (rows are vectors).
    precond : ndarray, shape (n,)
        The positive diagonal of ``P``.
    method : str
        ``"dense"`` (eigenvalues of the matrix built from ``n`` HVPs), ``"eigsh"`` (Lanczos,
        largest algebraic), ``"power"`` (:func:`power_iteration`) or ``"auto"`` (dense up to
        ``dense_max_params``).

    Returns
    -------
    (float, float)
        The largest algebraic eigenvalue of ``P^{-1/2} H P^{-1/2}`` (the spectrum of ``P^{-1} H``)
        and of ``H`` itself.
    """
    solver = SharpnessSolver(
        method=method, dense_max_params=dense_max_params, tol=tol, power_iters=power_iters,
        seed=seed,
    )  # fmt: skip
    return solver(hvp, precond)


# ------------------------------------------------------------------- crossings against bursts


def upward_crossings(steps: np.ndarray, ratio: np.ndarray, level: float = 1.0) -> np.ndarray:
    """Steps where ``ratio`` rises through ``level``, interpolated linearly between samples.

    Non-finite samples break the series: no crossing is drawn across them.
    """
    s = np.asarray(steps, dtype=np.float64)
    r = np.asarray(ratio, dtype=np.float64)
    a, b = r[:-1], r[1:]
    ok = np.isfinite(a) & np.isfinite(b) & (a < level) & (b >= level)
    i = np.flatnonzero(ok)
    frac = (level - a[i]) / (b[i] - a[i])
    return s[i] + frac * (s[i + 1] - s[i])


def onsets_vs_crossings(
    steps: np.ndarray, ratio: np.ndarray, onsets: np.ndarray, max_lag: float
) -> dict:
    """Whether burst onsets follow upward crossings of the sharpness ratio through 1.

    Parameters
    ----------
    steps, ratio : ndarray
        Checkpoint steps (increasing) and ``lambda_max(P^-1 H) / threshold`` there.
    onsets : ndarray
        Burst onsets (steps).
    max_lag : float
        Largest lag ``onset - crossing`` (steps) that counts as "at the crossing".

    Returns
    -------
    dict
        ``n_onsets`` (onsets inside the checkpointed range), ``n_crossings``, ``n_at_crossing``,
        ``fraction_at_crossing``, ``chance_fraction`` (fraction of the range covered by the same
        windows around the crossings), ``p_value`` (one-sided binomial), ``lags`` (``onset -
        latest crossing at or before onset + resolution``, NaN where none), ``ratio_at_onset``,
        ``fraction_above_at_onset`` and ``fraction_time_above`` (its chance level) with their
        one-sided binomial ``p_value_above``, and ``resolution`` (median checkpoint spacing).
    """
    steps = np.asarray(steps, dtype=np.float64)
    ratio = np.asarray(ratio, dtype=np.float64)
    ok = np.isfinite(ratio)
    steps, ratio = steps[ok], ratio[ok]
    out: dict = {
        "n_onsets": 0, "n_crossings": 0, "n_at_crossing": 0, "fraction_at_crossing": None,
        "chance_fraction": None, "p_value": None, "lags": np.zeros(0),
        "ratio_at_onset": np.zeros(0), "fraction_above_at_onset": None,
        "fraction_time_above": None, "p_value_above": None, "resolution": None,
    }  # fmt: skip
    if steps.size < 2:
        return out
    resolution = float(np.median(np.diff(steps)))
    lo, hi = steps[0], steps[-1]
    onsets = np.asarray(onsets, dtype=np.float64)
    onsets = onsets[(onsets >= lo) & (onsets <= hi)]
    cross = upward_crossings(steps, ratio)
    # a crossing c "explains" onsets in [c - resolution, c + max_lag]
    starts, stops = cross - resolution, cross + max_lag
    at = np.array([bool(np.any((starts <= o) & (o <= stops))) for o in onsets], dtype=bool)
    covered = union_length(np.clip(starts, lo, hi), np.clip(stops, lo, hi))
    chance = covered / (hi - lo) if hi > lo else 0.0
    lags = np.full(onsets.size, np.nan)
    for k, o in enumerate(onsets):
        before = cross[cross <= o + resolution]
        if before.size:
            lags[k] = o - before[-1]
    r_on = np.interp(onsets, steps, ratio)
    grid = np.linspace(lo, hi, max(int(hi - lo) + 1, 2))
    above_time = float(np.mean(np.interp(grid, steps, ratio) >= 1.0))
    out.update(
        n_onsets=int(onsets.size),
        n_crossings=int(cross.size),
        n_at_crossing=int(at.sum()),
        chance_fraction=float(chance),
        lags=lags,
        ratio_at_onset=r_on,
        fraction_time_above=above_time,
        resolution=resolution,
    )
    if onsets.size:
        out["fraction_at_crossing"] = float(at.mean())
        out["fraction_above_at_onset"] = float(np.mean(r_on >= 1.0))
        out["p_value"] = binomial_p(int(at.sum()), onsets.size, chance)
        out["p_value_above"] = binomial_p(int(np.sum(r_on >= 1.0)), onsets.size, above_time)
    return out


# ------------------------------------------------------------------------ states from a store


@dataclass
class CheckpointStates:
    """Full Adam states of one run at its checkpoints.

    Attributes
    ----------
    steps : ndarray of int64, shape (k,)
        Update counts ``t`` (state after update ``t``; 0 is the initial point).
    theta, m, v : ndarray, shape (k, n_params)
        Full state in the contract-1 layout, float64 (``m = v = 0`` at step 0).
    source : str
        ``"recorded"`` (recorded rows with every parameter), ``"snapshots"`` (full snapshots),
        ``"init+final"`` (only the two states a store always holds) or ``"retrained"``.
    note : str
        What limited the checkpoints, or "" when nothing did.
    """

    steps: np.ndarray
    theta: np.ndarray
    m: np.ndarray
    v: np.ndarray
    source: str
    note: str = ""


def run_spec(ds: xr.Dataset, run: int) -> MLPSpec:
    """The network of store run ``run`` (:class:`~geomtraj.train.models.MLPSpec`)."""
    one = RunView(ds, run)
    d_in = int(ds.sizes["feature"])
    return MLPSpec(
        d_in,
        parse_hidden(strings(one["hidden"])[0]),
        strings(one["activation"])[0],
        strings(one["loss_fn"])[0],
    )


def run_data_arrays(ds: xr.Dataset, run: int, *, rounded: bool = True):
    """The data ``(X, y)`` run ``run`` trained on, float64; rounded to its format if ``rounded``."""
    from geomtraj.train.kernels.rounding import round_to_format

    one = RunView(ds, run)
    d = int(one["data_index"].values)
    n = int(ds["data_n"].values[d])
    X = np.asarray(ds["data_x"].values[d, :n], dtype=np.float64)
    y = np.asarray(ds["data_y"].values[d, :n], dtype=np.float64)
    if rounded:
        fmt = strings(one["precision"])[0]
        X = round_to_format(X, fmt).astype(np.float64)
        y = round_to_format(y, fmt).astype(np.float64)
    return X, y


def _full_columns(ds: xr.Dataset, run: int, n_params: int) -> np.ndarray | None:
    """Column of ``param`` holding each flat index, when every parameter is recorded; else None."""
    pidx = RunView(ds, run)["param_index"] if "run" in ds["param_index"].dims else ds["param_index"]
    idx = np.asarray(pidx.values, dtype=np.int64)
    where = np.full(n_params, -1, np.int64)
    for col, flat in enumerate(idx):
        if 0 <= flat < n_params:
            where[flat] = col
    return where if np.all(where >= 0) else None


def _even_subset(values: np.ndarray, k: int) -> np.ndarray:
    if values.size <= k:
        return values
    pick = np.unique(np.round(np.linspace(0, values.size - 1, k)).astype(np.int64))
    return values[pick]


def _snapshot_steps(ds: xr.Dataset, run: int, final_step: int) -> np.ndarray:
    """Steps of the run's finite full snapshots (``theta_snapshot``), empty when none."""
    if "theta_snapshot" not in ds.variables or "snapshot" not in ds.coords:
        return np.zeros(0, np.int64)
    st = np.asarray(ds["snapshot"].values, dtype=np.int64)
    return st[(st >= 1) & (st <= final_step)]


def _step_range_filter(ds: xr.Dataset) -> Callable[[np.ndarray], np.ndarray]:
    """Mask function for steps inside the analysed range (``geomtraj analyze --steps``)."""
    lo, hi = ds.attrs.get("step_range") or (None, None)

    def inside(steps: np.ndarray) -> np.ndarray:
        keep = np.ones(np.shape(steps), bool)
        if lo is not None:
            keep &= np.asarray(steps) >= lo
        if hi is not None:
            keep &= np.asarray(steps) <= hi
        return keep

    return inside


def checkpoint_states(
    ds: xr.Dataset,
    run: int,
    *,
    steps: Sequence[int] | None = None,
    max_checkpoints: int = 2000,
    retrain: bool = False,
) -> CheckpointStates:
    """Full ``theta``, ``m``, ``v`` of run ``run`` at checkpoints (see the module docstring).

    Parameters
    ----------
    ds : xarray.Dataset
        A store.
    run : int
        Store run index.
    steps : sequence of int, optional
        Requested checkpoints; by default up to ``max_checkpoints`` evenly spread over all steps
        that hold the full state (recorded rows when every parameter is recorded, else full
        snapshots, plus step 0 and the final step). Requested steps that hold no full state are
        dropped and named in ``note`` (or rebuilt when ``retrain``).
    retrain : bool
        Rebuild checkpoints the store lacks by training again from ``theta_init``; by default
        (``steps=None``) ``max_checkpoints`` evenly spaced ones, unless every parameter is recorded.
    """
    rd = RunData(ds, run)
    n = rd.hyper["n_params"]
    one = RunView(ds, run)
    final_step = rd.final_step
    cols = _full_columns(ds, run, n)
    rec_steps = rd.step if cols is not None else np.zeros(0, np.int64)
    snap_steps = _snapshot_steps(ds, run, final_step) if cols is None else np.zeros(0, np.int64)
    avail = np.unique(np.concatenate([[0], rec_steps, snap_steps, [final_step]])).astype(np.int64)
    in_range = _step_range_filter(ds)
    avail = avail[in_range(avail)]
    if cols is not None:
        source = "recorded"
    else:
        source = "snapshots" if snap_steps.size else "init+final"
    notes = []
    if steps is None:
        wanted = _even_subset(avail, max_checkpoints)
        missing = np.zeros(0, np.int64)
        if cols is None and retrain:
            stride = max(1, math.ceil(final_step / (max_checkpoints - 1))) if final_step else 1
            missing = np.arange(stride, final_step + 1, stride, dtype=np.int64)
            missing = missing[in_range(missing)]
            wanted = np.unique(np.concatenate([[0], missing, [final_step]]))
            wanted = wanted[in_range(wanted)]
        elif cols is None:
            where = (
                f"at {snap_steps.size} snapshots (every {int(snap_steps[0])} steps), "
                if snap_steps.size
                else ""
            )
            notes.append(
                "the store records only a subset of parameters, so the full state exists only "
                f"{where}at step 0 and at the final step; pass retrain=True to rebuild "
                "intermediate checkpoints"
            )
    else:
        wanted = np.unique(np.asarray(steps, dtype=np.int64))
        bad = wanted[(wanted < 0) | (wanted > final_step)]
        if bad.size:
            notes.append(f"steps {bad.tolist()[:5]} lie outside 0..{final_step}, dropped")
        wanted = wanted[(wanted >= 0) & (wanted <= final_step) & in_range(wanted)]
        missing = np.setdiff1d(wanted, avail)
    retrained: dict[int, tuple] = {}
    if missing.size and retrain:
        retrained, msg = _retrain(ds, run, rd, missing, snap_steps)
        source = "retrained"
        if msg:
            notes.append(msg)
    elif missing.size:
        notes.append(
            f"{missing.size} requested checkpoints (e.g. {missing[:3].tolist()}) hold no full "
            "state in the store; dropped (retrain=True rebuilds them)"
        )
        wanted = np.setdiff1d(wanted, missing)

    theta = np.empty((wanted.size, n))
    m = np.zeros((wanted.size, n))
    v = np.zeros((wanted.size, n))
    filled = np.zeros(wanted.size, bool)
    for k, s in enumerate(wanted):
        s = int(s)
        if s == 0:
            theta[k] = np.asarray(one["theta_init"].values[:n], dtype=np.float64)
        elif s == final_step:
            theta[k] = np.asarray(one["theta_final"].values[:n], dtype=np.float64)
            m[k] = np.asarray(one["m_final"].values[:n], dtype=np.float64)
            v[k] = np.asarray(one["v_final"].values[:n], dtype=np.float64)
        elif s in retrained:
            theta[k], m[k], v[k] = retrained[s]
        else:
            continue
        filled[k] = True
    rest = np.flatnonzero(~filled)
    if rest.size and cols is not None:
        rows = np.searchsorted(rd.step, wanted[rest])
        for name, out in (("theta", theta), ("m", m), ("v", v)):
            block = np.asarray(one[name].isel(step=rows).values, dtype=np.float64)
            out[rest] = block[:, cols]
    elif rest.size:
        idx = np.searchsorted(np.asarray(ds["snapshot"].values, dtype=np.int64), wanted[rest])
        for name, out in (("theta", theta), ("m", m), ("v", v)):
            block = one[f"{name}_snapshot"].isel(snapshot=idx).values
            out[rest] = np.asarray(block, dtype=np.float64)[:, :n]
    return CheckpointStates(wanted, theta, m, v, source, "; ".join(notes))


def _retrain(ds: xr.Dataset, run: int, rd: RunData, steps: np.ndarray, snap_steps: np.ndarray):
    """Train run ``run`` again from ``theta_init`` and return its full state at ``steps``.

    The rebuilt trajectory is compared with what the store holds (the recorded coordinates and
    any full snapshots); a difference is returned as a note.
    """
    from geomtraj.train.trainer import train

    h = rd.hyper
    n = h["n_params"]
    one = RunView(ds, run)
    spec = run_spec(ds, run)
    X, y = run_data_arrays(ds, run, rounded=False)
    steps = np.asarray(steps, dtype=np.int64)
    last = int(steps.max())
    stride = int(np.gcd.reduce(np.concatenate([steps, snap_steps[snap_steps <= last]])))
    pert = parse_perturbation(h["perturbation"])
    if pert is not None and pert.kind == "ulp" and pert.step > last:
        pert = None  # it would act after the last checkpoint
    out = train(
        X, y, hidden=spec.hidden, activation=spec.activation, loss=spec.loss,
        theta0=np.asarray(one["theta_init"].values[:n], dtype=np.float64)[None, :],
        beta1=h["beta1"], beta2=h["beta2"], lr=h["lr"], eps=h["eps"],
        weight_decay=h["weight_decay"], steps=last, precision=h["precision"],
        record_every=stride, seed=h["seed"], batch_size=int(one["batch_size"].values),
        record_params="all", perturbation=[pert], progress=False,
    )  # fmt: skip
    st = np.asarray(out["step"].values, dtype=np.int64)
    full = {k: np.asarray(out[k].values[0, :, :n], dtype=np.float64) for k in ("theta", "m", "v")}
    states = {
        int(s): tuple(full[k][int(np.searchsorted(st, s))] for k in ("theta", "m", "v"))
        for s in steps
    }
    diffs = []
    common = np.intersect1d(rd.step, st)
    if common.size and rd.param_names:
        flat = [spec.param_index(nm) for nm in rd.param_names]
        rebuilt = full["theta"][np.searchsorted(st, common)][:, flat]
        diffs.append(np.abs(rebuilt - rd.theta[np.searchsorted(rd.step, common)]))
    snaps = snap_steps[snap_steps <= last]
    if snaps.size:
        idx = np.searchsorted(np.asarray(ds["snapshot"].values, dtype=np.int64), snaps)
        stored = np.asarray(one["theta_snapshot"].isel(snapshot=idx).values, np.float64)[:, :n]
        diffs.append(np.abs(full["theta"][np.searchsorted(st, snaps)] - stored))
    worst = max((float(d.max()) for d in diffs if d.size), default=0.0)
    msg = ""
    if worst != 0.0:
        msg = (
            f"retrained trajectory differs from the stored one by up to {worst:.3g}; its "
            "checkpoints are approximate"
        )
    return states, msg


# ---------------------------------------------------------------------------- the analysis


#: Per-checkpoint outputs of :func:`analyze` and the key :func:`_fill_checkpoints` fills them under.
_CHECKPOINT_COLUMNS = {
    "sharpness": "sharpness",
    "hessian_max": "hessian_max",
    "large_update_fraction": "large_fraction",
    "update_ratio_median": "ratio_median",
    "update_ratio_max": "ratio_max",
    "checkpoint_loss": "loss",
}
#: Per-run float outputs; entries 2..-3 come straight from :func:`onsets_vs_crossings`.
_RUN_SCALARS = (
    "threshold",
    "median_lag",
    "fraction_at_crossing",
    "chance_fraction",
    "p_value",
    "fraction_above_at_onset",
    "fraction_time_above",
    "p_value_above",
    "resolution",
    "max_lag",
)
_RUN_COUNTS = ("n_bursts", "n_onsets", "n_crossings", "n_at_crossing", "n_checkpoints")


#: What recomputing a run's curvature needs beyond the recorded series: the network, its full
#: state at step 0 and at the end, and the data it trained on.
_CURVATURE_INPUTS = (
    "data_x", "data_y", "data_n", "data_index", "theta_init", "theta_final", "m_final",
    "v_final", "hidden", "activation", "loss_fn",
)  # fmt: skip


def missing_curvature_inputs(ds: xr.Dataset) -> str | None:
    """Why the store's curvature cannot be recomputed (a one-line reason), or None when it can.

    A store written by another trainer (PyTorch, plain xarray) may hold the trajectories without
    the training data (``data_x``/``data_y``) or the full states; then no Hessian exists to
    measure, and the analyses that need one mark their runs "not measurable" with this reason.
    """
    absent = [name for name in _CURVATURE_INPUTS if name not in ds.variables]
    if "feature" not in ds.sizes and "data_x" not in absent:
        absent.append("the feature dimension of data_x")
    if not absent:
        return None
    return (
        f"the store holds no {', '.join(absent)}, so the network's Hessian cannot be "
        "recomputed; write the training data and full states with the store (geomtraj train) "
        "to measure the sharpness"
    )


#: Lazy variables a run's curvature reads: its full states (one row per run) and the training data.
_STATE_ROWS = (
    "theta_init", "theta_final", "m_final", "v_final", "theta_snapshot", "m_snapshot",
    "v_snapshot", "param_index", "param_name",
)  # fmt: skip
_SMALL_TABLES = ("data_x", "data_y", "data_n")


class _StateViews:
    """Views of a store whose full states are read once per chunk of runs, not once per run.

    A snapshot chunk holds every run of its run chunk, so reading one run's snapshots reads (and
    decompresses) the whole chunk; a view holds the rows of the chunk's selected runs in memory,
    and every reader (:func:`checkpoint_states`, :func:`run_data_arrays`, ...) gets the same
    numbers from it. At most one chunk of runs is held at a time.
    """

    def __init__(self, ds: xr.Dataset, runs: Sequence[int]):
        import dask.array as da

        self.ds, self.runs = ds, sorted(int(r) for r in runs)
        self.names = [n for n in _STATE_ROWS if n in ds.variables and ds[n].dims[:1] == ("run",)]
        self.names = [n for n in self.names if isinstance(ds[n].data, da.Array)]
        lazy = [n for n in _SMALL_TABLES if n in ds.variables]
        self.tables = [n for n in lazy if isinstance(ds[n].data, da.Array)]
        self.view, self.span = ds, (0, 0)
        self._held = None  # the rows_in_memory registration of the chunk held
        if self.names:
            bounds = np.cumsum((0, *ds[self.names[0]].data.chunks[0]))
        else:
            bounds = np.array([0, ds.sizes["run"]])
        self.bounds = bounds

    def __call__(self, run: int) -> xr.Dataset:
        if not self.names or self.span[0] <= run < self.span[1]:
            return self.view
        import dask.array as da

        k = int(np.searchsorted(self.bounds, run, side="right")) - 1
        lo, hi = int(self.bounds[k]), int(self.bounds[k + 1])
        inside = [r for r in self.runs if lo <= r < hi] or [run]
        r0, r1 = min(inside), max(inside) + 1
        self.close()
        out = self.ds.copy()
        rows = {}
        for name in self.names + self.tables:
            var = self.ds[name]
            lazy = var.data
            if name in self.tables:  # small and the same for every run: plain NumPy
                out[name] = (var.dims, np.asarray(var.values), var.attrs)
                out[name].encoding = var.encoding
                continue
            rows[name] = block = var.isel(run=slice(r0, r1)).values
            parts = [p for p in (lazy[:r0], in_memory_array(block), lazy[r1:]) if p.shape[0]]
            out[name] = (var.dims, da.concatenate(parts, axis=0), var.attrs)
            out[name].encoding = var.encoding
        # per-run reads (RunView) index the rows instead of computing the dask graph each time
        self._held = rows_in_memory(out, r0, rows)
        self._held.__enter__()
        self.view, self.span = out, (r0, r1)
        return out

    def close(self) -> None:
        """Release the rows held for :class:`~geomtraj.analysis.base.RunView` reads."""
        if self._held is not None:
            self._held.__exit__(None, None, None)
            self._held = None


def _measure(ds: xr.Dataset, run: int, params: StabilityParams, checkpoints):
    """All per-checkpoint measurements and the burst comparison of one run."""
    from geomtraj.analysis.events import run_bursts

    rd = RunData(ds, run)
    h = rd.hyper
    spec = run_spec(ds, run)
    X, y = run_data_arrays(ds, run)
    objective = MLPObjective(spec, X, y, h["weight_decay"])
    states = checkpoint_states(
        ds, run, steps=checkpoints, max_checkpoints=params.max_checkpoints, retrain=params.retrain
    )
    b1 = h["beta1"]
    threshold = stability_threshold(b1, h["lr"])
    k = states.steps.size
    cols = {name: np.full(k, np.nan) for name in _CHECKPOINT_COLUMNS.values()}
    # tiny matrices: BLAS threads only add synchronisation (40x slower on a busy 2-core machine)
    with one_blas_thread():
        _fill_checkpoints(states, objective, params, h, cols)
    ratio = cols["sharpness"] / threshold
    bursts = run_bursts(rd, params.burst_signal)
    max_lag = params.max_lag_momentum / (1.0 - b1)
    if len(bursts) >= 2:
        max_lag = min(max_lag, params.max_lag_interval * float(np.median(bursts.intervals())))
    cmp = onsets_vs_crossings(states.steps, ratio, bursts.onset, max_lag)
    return states, cols, ratio, threshold, bursts, cmp, max_lag


#: Largest network whose Hessian-vector products run in the JIT kernels
#: (:class:`geomtraj.analysis.hessian.KernelLinearisation`): they are 2-5x cheaper than the
#: vectorised NumPy products at every size measured, up to 2,113 parameters on 64 points
#: (``benchmarks/bench_hvp.py``, docs/stability.md); larger networks keep NumPy's, unmeasured.
KERNEL_HVP_MAX_PARAMS = 2500


def _fill_checkpoints(states, objective, params, h, cols) -> None:
    b1, b2, eps = h["beta1"], h["beta2"], h["eps"]
    # one solver per run: each checkpoint's Lanczos starts from the previous one's eigenvectors
    solver = SharpnessSolver(
        method=params.eig_method, dense_max_params=params.dense_max_params, tol=params.eig_tol,
        power_iters=params.power_iters, seed=params.seed,
    )  # fmt: skip
    # the JIT products are the cheaper below this size, NumPy's above (docs/stability.md)
    kernel = objective.spec.n_params <= KERNEL_HVP_MAX_PARAMS
    for i, t in enumerate(states.steps):
        t = int(t)
        if not np.all(np.isfinite(states.theta[i])):
            continue
        lin = objective.at(states.theta[i], kernel=kernel)
        P = adam_preconditioner(states.v[i], lin.grad, t, b1, b2, eps)
        s, hmax = solver(lin, P)
        cols["sharpness"][i], cols["hessian_max"][i], cols["loss"][i] = s, hmax, lin.loss
        if t >= 1:
            u = update_ratio(states.m[i], states.v[i], t, b1, b2, eps)
            cols["large_fraction"][i] = float(np.mean(u > params.large_update_ratio))
            cols["ratio_median"][i] = float(np.median(u))
            cols["ratio_max"][i] = float(np.max(u))


def analyze(
    ds: xr.Dataset,
    runs: Sequence[int] | None = None,
    *,
    progress: Callable[[int], object] | None = None,
    params: StabilityParams | None = None,
    checkpoints: Sequence[int] | None = None,
    **overrides,
) -> xr.Dataset:
    """Preconditioned sharpness at checkpoints, and burst onsets against threshold crossings.

    Parameters
    ----------
    ds : xarray.Dataset
        A store (:func:`geomtraj.store.open_store`).
    runs : sequence of int, optional
        Store run indices (all by default).
    progress : callable, optional
        Called with 1 after each run (for example ``tqdm.update``).
    params : StabilityParams, optional
        Settings; keyword ``overrides`` replace single fields (``retrain=True``, ...).
    checkpoints : sequence of int, optional
        Steps to measure at (default: up to ``params.max_checkpoints`` evenly spread).

    Returns
    -------
    xarray.Dataset
        Over ``run`` and ``checkpoint`` (``params.max_checkpoints`` slots, or as many as requested,
        padded with NaN and step -1): ``checkpoint_step``, ``sharpness`` (``lambda_max(P^-1 H)``),
        ``sharpness_ratio`` (over the threshold), ``hessian_max`` (``lambda_max(H)``),
        ``large_update_fraction``, ``update_ratio_median``, ``update_ratio_max``,
        ``checkpoint_loss``; per run ``threshold``, ``checkpoint_source``, ``n_bursts``,
        ``n_onsets``, ``n_crossings``, ``n_at_crossing``, ``fraction_at_crossing``,
        ``chance_fraction``, ``p_value``, ``median_lag``, ``fraction_above_at_onset``,
        ``fraction_time_above``, ``p_value_above``, ``resolution``, ``max_lag``, ``matchable``
        (checkpoints dense enough to match onsets with crossings; the onset statistics are NaN
        where they are not) and ``note``.
    """
    params = params or StabilityParams()
    if overrides:
        try:
            params = replace(params, **overrides)
        except TypeError as exc:
            raise GeomtrajError(f"stability.analyze: {exc}; see StabilityParams") from None
    run_list = list(range(ds.sizes["run"])) if runs is None else [int(r) for r in runs]
    slots = params.max_checkpoints if checkpoints is None else len(set(checkpoints)) + 2
    data = {name: np.full((len(run_list), slots), np.nan) for name in _CHECKPOINT_COLUMNS}
    data["sharpness_ratio"] = np.full((len(run_list), slots), np.nan)
    ck_step = np.full((len(run_list), slots), -1, np.int64)
    scalars = {name: np.full(len(run_list), np.nan) for name in _RUN_SCALARS}
    counts = {name: np.zeros(len(run_list), np.int64) for name in _RUN_COUNTS}
    source = np.empty(len(run_list), dtype=object)
    note = np.empty(len(run_list), dtype=object)
    matchable = np.zeros(len(run_list), bool)
    no_curvature = missing_curvature_inputs(ds)
    views = _StateViews(ds, run_list)  # full states read once per chunk of runs
    try:
        for j, r in enumerate(run_list):
            if no_curvature is not None:
                _unmeasurable_run(ds, r, params, j, scalars, counts)
                source[j], note[j] = "none", no_curvature
                if progress is not None:
                    progress(1)
                continue
            states, cols, ratio, threshold, bursts, cmp, max_lag = _measure(
                views(r), r, params, checkpoints
            )
            k = min(states.steps.size, slots)
            ck_step[j, :k] = states.steps[:k]
            for name, key in _CHECKPOINT_COLUMNS.items():
                data[name][j, :k] = cols[key][:k]
            data["sharpness_ratio"][j, :k] = ratio[:k]
            scalars["threshold"][j] = threshold
            scalars["max_lag"][j] = max_lag
            counts["n_bursts"][j] = len(bursts)
            counts["n_checkpoints"][j] = states.steps.size
            source[j] = states.source
            notes = [states.note] if states.note else []
            res = cmp["resolution"]
            matchable[j] = res is not None and res <= params.max_resolution_fraction * max_lag
            if res is not None:
                scalars["resolution"][j] = res
            if not matchable[j]:
                # interpolating the ratio across a gap wider than the lag window says nothing
                # about where it crossed, so no onset statistic is computed
                gap = f"checkpoints {res:g} steps apart" if res is not None else ""
                gap = gap or "fewer than 2 checkpoints"
                notes.append(
                    f"{gap}, coarser than {params.max_resolution_fraction:g} of the "
                    f"{max_lag:g}-step lag window; burst onsets cannot be matched with crossings"
                )
                counts["n_onsets"][j] = cmp["n_onsets"]
            else:
                for key in _RUN_SCALARS[2:-2]:
                    if cmp[key] is not None:
                        scalars[key][j] = cmp[key]
                lags = cmp["lags"][np.isfinite(cmp["lags"])]
                if lags.size:
                    scalars["median_lag"][j] = float(np.median(lags))
                for key in ("n_onsets", "n_crossings", "n_at_crossing"):
                    counts[key][j] = cmp[key]
            note[j] = "; ".join(notes)
            if progress is not None:
                progress(1)
    finally:
        views.close()
    variables = {name: (("run", "checkpoint"), arr) for name, arr in data.items()}
    variables["checkpoint_step"] = (("run", "checkpoint"), ck_step)
    variables.update({name: (("run",), arr) for name, arr in scalars.items()})
    variables.update({name: (("run",), arr) for name, arr in counts.items()})
    variables["checkpoint_source"] = (("run",), source)
    variables["matchable"] = (("run",), matchable)
    variables["note"] = (("run",), note)
    for name in ("beta1", "beta2", "lr", "eps", "precision", "hidden"):
        variables[name] = (("run",), ds[name].values[run_list])
    out = xr.Dataset(variables, coords={"run": np.array(run_list, np.int64)})
    if no_curvature is not None:
        out.attrs["not_measurable"] = no_curvature
    out.attrs.update(
        analysis="stability",
        params=params_attr(params),
        max_resolution_fraction=params.max_resolution_fraction,
        preconditioner=(
            "P = (1-beta1^(t+1)) * (sqrt(v'/(1-beta2^(t+1))) + eps), "
            "v' = beta2*v_t + (1-beta2)*g(theta_t)^2 (Cohen et al. 2207.14484)"
        ),
    )
    return out


def _unmeasurable_run(ds: xr.Dataset, run: int, params: StabilityParams, j, scalars, counts):
    """The per-run fields that need no curvature (threshold, bursts) of a run without data."""
    from geomtraj.analysis.events import run_bursts

    rd = RunData(ds, run)
    scalars["threshold"][j] = stability_threshold(rd.hyper["beta1"], rd.hyper["lr"])
    bursts = run_bursts(rd, params.burst_signal)
    counts["n_bursts"][j] = len(bursts)


# ------------------------------------------------------------------------------- the report


def _run_entry(res: xr.Dataset, j: int) -> dict:
    one = res.isel(run=j)
    ratio = np.asarray(one["sharpness_ratio"].values)
    finite = ratio[np.isfinite(ratio)]
    n_on = int(one["n_onsets"])
    frac = finite_or_none(one["fraction_at_crossing"])
    p = finite_or_none(one["p_value"])
    notes = [str(one["note"].values)] if str(one["note"].values) else []
    verdict_fraction, alpha, min_onsets = _verdict_settings(res)
    if not bool(one["matchable"]):
        verdict = "not measurable"
    elif n_on < min_onsets or frac is None:
        verdict = "too few bursts"
        notes.append(f"{n_on} burst onsets inside the checkpointed range (< {min_onsets})")
    elif frac >= verdict_fraction and p is not None and p < alpha:
        verdict = "bursts start at crossings"
    else:
        verdict = "bursts do not start at crossings"
    return {
        "run": int(one["run"]),
        "threshold": finite_or_none(one["threshold"]),
        "n_checkpoints": int(one["n_checkpoints"]),
        "checkpoint_source": str(one["checkpoint_source"].values),
        "sharpness_ratio_median": float(np.median(finite)) if finite.size else None,
        "sharpness_ratio_max": float(np.max(finite)) if finite.size else None,
        "fraction_time_above": finite_or_none(one["fraction_time_above"]),
        "large_update_fraction_median": finite_or_none(
            np.nanmedian(one["large_update_fraction"].values)
        )
        if np.isfinite(one["large_update_fraction"].values).any()
        else None,
        "n_bursts": int(one["n_bursts"]),
        "n_onsets": n_on,
        "n_crossings": int(one["n_crossings"]),
        "n_at_crossing": int(one["n_at_crossing"]),
        "fraction_at_crossing": frac,
        "chance_fraction": finite_or_none(one["chance_fraction"]),
        "p_value": p,
        "median_lag": finite_or_none(one["median_lag"]),
        "fraction_above_at_onset": finite_or_none(one["fraction_above_at_onset"]),
        "p_value_above": finite_or_none(one["p_value_above"]),
        "max_lag": finite_or_none(one["max_lag"]),
        "verdict": verdict,
        "note": "; ".join(notes),
    }


def _verdict_settings(result: xr.Dataset) -> tuple[float, float, int]:
    """The verdict settings the result was computed with (defaults when absent)."""
    p = params_from_result(result, StabilityParams)
    return p.verdict_fraction, p.verdict_alpha, p.min_onsets


def report(result: xr.Dataset) -> dict:
    """Contract-4 style fields: per-run entries and a ``stability`` section.

    ``stability`` holds ``runs`` (one entry per run: threshold, sharpness ratio statistics, burst
    onsets against crossings, a verdict and a note) and ``overall`` (onsets pooled over runs with
    a verdict, against the pooled chance level).
    """

    entries = [_run_entry(result, j) for j in range(result.sizes["run"])]
    verdict_fraction, alpha, min_onsets = _verdict_settings(result)
    usable = [e for e in entries if e["fraction_at_crossing"] is not None]
    n_on = sum(e["n_onsets"] for e in usable)
    n_at = sum(e["n_at_crossing"] for e in usable)
    chance = sum(e["chance_fraction"] * e["n_onsets"] for e in usable) / n_on if n_on else None
    overall: dict = {
        "n_runs": len(usable),
        "n_onsets": n_on,
        "n_at_crossing": n_at,
        "fraction_at_crossing": n_at / n_on if n_on else None,
        "chance_fraction": chance,
        "p_value": None,
        "note": "",
    }
    if "not_measurable" in result.attrs:
        overall["verdict"] = "not measurable"
        overall["note"] = str(result.attrs["not_measurable"])
    elif not any(e["verdict"] != "not measurable" for e in entries):
        overall["verdict"] = "not measurable"
        overall["note"] = (
            "no run has checkpoints dense enough to match burst onsets with crossings; record "
            "every parameter, store snapshots at most a quarter of the lag window apart, or "
            "pass retrain=True"
        )
    elif n_on >= min_onsets and chance is not None:
        overall["p_value"] = binomial_p(n_at, n_on, chance)
        good = overall["fraction_at_crossing"] >= verdict_fraction and overall["p_value"] < alpha
        overall["verdict"] = (
            "bursts start at crossings" if good else "bursts do not start at crossings"
        )
    else:
        overall["verdict"] = "too few bursts"
        overall["note"] = f"{n_on} burst onsets inside checkpointed ranges over all runs"
    runs = {
        e["run"]: {"stability": {k: e[k] for k in ("threshold", "sharpness_ratio_median",
                                                  "fraction_at_crossing", "verdict")}}
        for e in entries
    }  # fmt: skip
    return {"runs": runs, "stability": {"runs": entries, "overall": overall}}


# ------------------------------------------------------------------------------- the figures


def _resolution_fraction(result: xr.Dataset) -> float:
    """The largest checkpoint spacing, as a fraction of ``max_lag``, that still counts as dense."""
    return float(result.attrs.get("max_resolution_fraction",
                                  StabilityParams().max_resolution_fraction))  # fmt: skip


def _joined_where_dense(
    steps: np.ndarray, ratio: np.ndarray, dense_gap: float
) -> tuple[np.ndarray, np.ndarray]:
    """``steps, ratio`` with a NaN between checkpoints farther apart than ``dense_gap``.

    matplotlib breaks a line at NaN, so only dense stretches are drawn as curves.
    """
    steps = np.asarray(steps, dtype=float)
    ratio = np.asarray(ratio, dtype=float)
    if steps.size < 2:
        return steps, ratio
    cut = np.flatnonzero(np.diff(steps) > dense_gap) + 1
    return np.insert(steps, cut, np.nan), np.insert(ratio, cut, np.nan)


def figures(ds: xr.Dataset, result: xr.Dataset, outdir, *, max_runs: int = 6) -> list[Path]:
    """Sharpness ratio against the threshold over steps, with burst onsets.

    ``stability_sharpness.png``: the whole checkpointed range, one panel per run (up to
    ``max_runs``, those with the most matched onsets first), with the update norm in grey and
    burst onsets as red lines. ``stability_zoom.png``: the same runs around three consecutive
    bursts in the middle of the run, where one can see the ratio climb through 1 and the burst
    follow.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from geomtraj.analysis.events import run_bursts

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    order = np.argsort(-np.asarray(result["n_onsets"].values), kind="stable")[:max_runs]
    if order.size == 0:
        return []
    panels = []
    for j in order:
        one = result.isel(run=int(j))
        run = int(one["run"])
        st = np.asarray(one["checkpoint_step"].values)
        keep = st >= 0
        if not keep.any():
            continue
        rd = RunData(ds, run)
        title = (
            f"run {run}: lr={float(one['lr']):g}, beta1={float(one['beta1']):g}, "
            f"beta2={float(one['beta2']):g}, {one['precision'].values}"
        )
        ratio = np.asarray(one["sharpness_ratio"].values)[keep]
        dense_gap = _resolution_fraction(result) * float(one["max_lag"])
        panels.append((title, st[keep], ratio, run_bursts(rd), rd, dense_gap))
    if not panels:
        return []
    paths = []
    for name, zoomed in (("stability_sharpness.png", False), ("stability_zoom.png", True)):
        fig, axes = plt.subplots(len(panels), 1, figsize=(10, 2.4 * len(panels)), squeeze=False)
        for ax, (title, st, ratio, b, rd, dense_gap) in zip(axes[:, 0], panels, strict=True):
            lo, hi = int(st[0]), int(st[-1])
            if zoomed and len(b) >= 2:
                mid = max(len(b) // 2 - 1, 0)
                last = min(mid + 2, len(b) - 1)
                lo = max(int(b.onset[mid]) - (int(b.onset[last]) - int(b.onset[mid])) // 4, lo)
                hi = min(int(b.end[last]) + 50, hi)
            sel = (st >= lo) & (st <= hi)
            xs, ys = _joined_where_dense(st[sel], ratio[sel], dense_gap)
            ax.plot(xs, ys, "-", lw=0.8, color="C0")
            # every checkpoint is a marker; a line joins only checkpoints close enough to match
            # onsets (a line across a sparse gap would read as a measured course)
            ax.plot(st[sel], ratio[sel], "o" if sel.sum() <= 50 else ".", ms=4 if sel.sum() <= 50
                    else 2, color="C0", label=r"$\lambda_{max}(P^{-1}H)$ / threshold")  # fmt: skip
            ax.axhline(1.0, color="k", lw=0.8, ls="--", label="threshold")
            onsets = b.onset[(b.onset >= lo) & (b.onset <= hi)]
            # one collection, not one axvline per onset: hundreds of artists made tight_layout slow
            ax.vlines(onsets, 0, 1, transform=ax.get_xaxis_transform(), color="C3", lw=0.6,
                      alpha=0.7)  # fmt: skip
            ax2 = ax.twinx()
            it = (rd.iteration >= lo) & (rd.iteration <= hi)
            ax2.semilogy(rd.iteration[it], rd.update_norm[it], color="0.6", lw=0.4)
            ax2.set_ylabel("update norm", fontsize=7)
            ax.set_zorder(ax2.get_zorder() + 1)
            ax.patch.set_visible(False)
            ax.set_ylabel("sharpness ratio")
            ax.set_title(f"{title}; {onsets.size} burst onsets shown (red)", fontsize=8)
        axes[0, 0].legend(fontsize=7, loc="upper left")
        axes[-1, 0].set_xlabel("step")
        fig.tight_layout()
        paths.append(outdir / name)
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


# -------------------------------------------------------------------------------- declaration


def _caption(doc, m) -> str:
    what = (
        "around three consecutive bursts in the middle of the run"
        if m.group(0) == "stability_zoom"
        else "over the whole checkpointed range"
    )
    return (
        f"Sharpness ratio (largest eigenvalue of the preconditioned Hessian over the "
        f"threshold) {what}, for the runs with the most burst onsets. Look whether the ratio "
        "crosses 1 (dashed) just before each burst onset (red). Checkpoints are joined by a "
        "line only where they are dense enough to match onsets; sparse checkpoints are drawn "
        "as separate markers, not as a measured curve."
    )


ANALYSIS = Analysis(
    name="stability",
    analyze=analyze,
    report=report,
    draw=figures,
    params=StabilityParams,
    summary="whether bursts start where the preconditioned sharpness crosses Adam's threshold",
    needs=Needs(
        variables=("theta", "m", "v", "update_norm"),
        training_data=True,
        snapshots=True,
        without="with too few full checkpoints every run is 'not measurable', with the reason "
        "(retrain=True replays training to get them)",
    ),
    fields=(
        Field("stability.threshold", "", "Adam's stability threshold (2+2*beta1)/((1-beta1)*lr)"),
        Field("stability.sharpness_ratio_median", "x",
              "median over checkpoints of the preconditioned sharpness over the threshold"),
        Field("stability.fraction_at_crossing", "x",
              "fraction of burst onsets within the lag window after a threshold crossing"),
        Field("stability.verdict", "", "whether this run's bursts start at crossings", "str"),
        Field("stability.runs[].sharpness_ratio_max", "x",
              "largest sharpness ratio over the checkpoints", place="report"),
        Field("stability.runs[].p_value", "",
              "binomial test of the onsets at crossings against chance", place="report"),
        Field("stability.overall.verdict", "",
              "onsets pooled over runs: whether bursts start at crossings", "str",
              place="report"),
    ),
    columns=(
        Column("sharpness ratio", "stability.sharpness_ratio_median"),
        Column("onsets at crossing", "stability.fraction_at_crossing"),
    ),
    figures=(Figure(r"stability_.*", _caption),),
    sections=("stability",),
)  # fmt: skip
