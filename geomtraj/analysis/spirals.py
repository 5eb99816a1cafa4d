"""Double twisted spirals: find, measure and classify rotations of parameters inside windows.

docs/spirals.md defines the measurement and gives its measured error rates; this module implements
it per window of a trajectory ``theta`` (``n_steps x n_params``):

1. **Residual.** ``theta`` minus its centred moving average over :attr:`SpiralParams.smooth_steps`
   steps, centred over time. The average needs ``h = smooth_steps // 2`` steps on either side, so
   the residual covers the window's rows ``h .. n-h-1`` (run-level windows are widened by ``h``).
2. **Flip demodulation.** ``flip_index = -sum r_t.r_{t+1} / sum |r_t|^2`` is the residual's
   negative lag-1 autocorrelation: near 1 when consecutive steps sit on opposite sides of the local
   mean (the period-2 flip of a burst), negative for slow motion. When it is positive the window
   is demodulated, ``d_t = (-1)^t r_t``, and smoothed with weights [1, 2, 1]/4 (the *flip frame*).
   The definition (docs/spirals.md) projects first and demodulates after, ``w_t = (-1)^t z_t``;
   the two orders give the same plane for a pure flip, because PCA does not see the sign of a
   row, but demodulating first lets the smoothing remove slow motion (which the flip frame moves
   to the Nyquist frequency) before it can take a principal component. Slow rotations (no flip)
   are analysed as they are: demodulating them would move them to the Nyquist frequency, where no
   phase can be unwrapped.
3. **Plane.** The top two principal components of the (flip-frame) residual, eigenvectors of its
   ``p x p`` Gram matrix (the SVD route, faster than scikit-learn for thousands of small windows),
   give ``w_t = PC1_t + i PC2_t``; ``plane_fraction`` is their share of the residual energy. In the
   raw frame, ``z_t = (-1)^t w_t``: the even and the odd steps are the two arms.
4. **Phase and radius** of ``w_t``: the phase increment of a step is the exact angle from ``w_t``
   to ``w_{t+1}``; the *active span* is where the radius (smoothed over ``2 * radius_half + 1``
   steps) is at least :attr:`~SpiralParams.active_fraction` of its maximum. Over the active span:
   the **winding** number (net phase change / 2 pi), the **coherence** (the share of
   radius-weighted phase motion that goes in the net direction: 1 for a rotation of one sense
   whatever its speed or ellipticity, near 0 for motion that turns back and forth), the **twist
   rate** (slope of the unwrapped phase in rad/step, least squares weighted by radius^2, with its
   standard error and R^2). The **growth and decay slopes** of log-radius before and after the
   peak, with the winding on either side (``turns_out``, ``turns_in``), use the radius in
   parameter space, the norm of the full residual ``||r_t||`` (smoothed and gated the same way):
   when the plane of a spiral turns, the radius of its projection on the window's plane rises and
   falls with the turn, the distance from the local mean does not. ``winding_score`` is coherence
   times winding, the turns of coherent rotation.
5. **Plane turn.** The active span is split where half of its residual energy has passed; the angle
   between the best-fit planes of the two halves (largest principal angle, degrees) is the turn,
   and ``plane_turn_noise`` the turn that noise alone would give (:func:`plane_turn`). Both are
   measured on the raw residual, also in demodulated windows (PCA does not see the sign of a
   row, so the plane is the same): the noise estimate compares the planes of the even and the
   odd rows, which must not share noise, and the flip frame's [1, 2, 1] smoothing makes
   neighbouring rows share two of their three samples (in noisy flipped bursts that understated
   the noise fourfold and called most untwisted spirals twisted; docs/spirals.md).
6. **Null model.** Surrogates of ``Re w`` and ``Im w`` are phase-randomised independently
   (Fourier-transform surrogates, or IAAFT with :attr:`~SpiralParams.iaaft_iterations` > 0): they
   keep each coordinate's spectrum and destroy the phase relation between the two, which is what a
   rotation is. Each surrogate goes through the same measurement, and the window is ranked among
   them on two statistics of its rotation, the **coherence** of its winding (in time) and the
   **quadrature** of its cross-spectrum (:func:`quadrature`, the circular angular momentum over
   its largest possible value; Kunin's probability current normalised), combined by the exact
   min-p rule, with sequential stopping for windows that are clearly not significant
   (:func:`surrogate_test`). The test runs only where it can change the label (the window
   winds coherently and is not diffusion-like) and stops once ``p <= alpha`` is out of reach;
   the p-value of every spiral is that of the full test (:func:`measure_windows`,
   ``test_all``). Either statistic alone misses a kind of spiral: a spiral that fills its window
   has narrow-band surrogates that also keep one sense of rotation throughout (coherence cannot
   separate them, quadrature can), and a burst that flips along a line and rotates only while it
   decays has most of its cross-spectrum in the line (quadrature is diluted, coherence is not).
   The **cosine content** (Hess 2002) of the two plane coordinates flags the smooth,
   window-locked cosines that PCA makes of diffusion; Fourier surrogates assume stationarity,
   which diffusion lacks, so for it the p-value alone is not a safe guard (a random walk's PCA
   arcs beat stationary surrogates).

Classification (flags, then one label):

- **spiral**: ``|winding| >= min_winding`` (winds at least once), ``coherence >= min_coherence``
  (coherent phase), ``p_value <= alpha`` (beats its surrogates) and
  ``cosine_content <= max_cosine_content`` (not random-walk-like);
- **double**: a spiral with two arms, by either of two readings, each measured and able to fail
  (``double_arms``, ``double_out_in``; docs/spirals.md). *Interleaved arms*: the even and the odd
  sub-sequences of the raw frame, ``e_k = z_{2k}`` and ``o_k = z_{2k+1}`` (the raw residual on the
  window's plane, neither demodulated nor smoothed), each wind at least ``min_winding`` turns with
  coherence ``>= min_coherence`` and beat their own phase-randomised surrogates
  (``p <= alpha``), in one sense, and in counter-phase (``arm_counter_phase >=
  min_counter_phase``: the odd arm is the even arm turned by about half a turn, ``z_{t+1} ~
  -z_t``; :func:`measure_arms`). *Outward then inward*: significant growth of the radius then
  significant decay (``slope_z`` standard errors each), each side winding at least
  ``min_arm_turns`` in the same sense. Demodulation alone decides nothing: a rotation without a
  flip has arms in phase, a flip without rotation has arms that do not wind, and a flip-frame
  rotation faster than about a quarter turn per step is one spiral whose even and odd steps are not
  in counter-phase;
- **twisted**: a spiral whose best-fit plane turns by at least ``min_plane_turn`` degrees between
  the halves of its active span, and by at least ``plane_noise_factor`` times the turn that noise
  alone gives (``plane_turn_noise``), both halves moving in a plane rather than along a line
  (``plane_aspect >= min_plane_aspect``). The definition also names "twist rate non-zero with
  confidence"; the twist rate is the phase slope, which any coherent spiral of at least one turn
  has, so that reading would mark every spiral twisted. It is available as
  ``twist_rule="plane_or_rate"``; the default ``"plane"`` keeps the label informative. The twist
  rate is reported either way.
- label: ``"noise"``, ``"spiral"``, ``"double"``, ``"twisted"`` or ``"double twisted"``.

**Error rates.** The rates at which these labels fall on windows where nothing rotates were
measured on six null ensembles (:data:`FALSE_POSITIVE_RATE`) and the recall on rotating bursts
over a grid of turns, e-folding times and noise (``benchmarks/spiral_error_rates.py``, both tables
in docs/spirals.md). A prevalence is evidence of spirals only above the false-positive bound; the
surrogate test's ``alpha`` is one criterion among several, not the detector's error rate.

The paper's own view, a raw parameter pair, is recorded per window: the two parameters with the
largest burst amplitude (RMS of the residual over the window), or a pair the user names.

:func:`measure_windows` is the array-level core (a batch of equal-length windows in, every
quantity and the labels out); :func:`analyze`, :func:`report` and :func:`figures` follow the
analysis protocol of :mod:`geomtraj.analysis` on a store.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.fft

from geomtraj.analysis.base import one_blas_thread
from geomtraj.analysis.declaration import (
    Analysis,
    Column,
    Field,
    Figure,
    Needs,
    describe_run,
    run_entry,
)
from geomtraj.analysis.kernels.winding import (
    FEATURES,
    N_FEATURES,
    PHASE_COS,
    PHASE_LEVELS,
    PHASE_SIN,
    _apply_phases,
    _min_p_values,
    _plane_features_batch,
    _plane_turn,
    _plane_turns,
    _principal_planes,
    _replay_checks,
    _residuals,
    _winding_scores,
    _winding_scores_below,
)
from geomtraj.errors import GeomtrajError

LABELS = ("noise", "spiral", "double", "twisted", "double twisted")

#: The detector's false-positive rates, measured with the default :class:`SpiralParams` by
#: ``benchmarks/spiral_error_rates.py`` (seed 2026) on 6,000 windows in which nothing rotates: six
#: null ensembles (random walk, AR(1) with phi = +0.9 and -0.9, white noise, a period-2 flip along
#: a line, amplitude-modulated flips in a plane), 500 windows each of 64 and of 200 analysed steps,
#: 16 parameters (docs/spirals.md, "False-positive rates"). Per flag (``double_twisted``: double and
#: twisted), ``rate`` is the pooled share of null windows given that flag, ``upper`` its Wilson 95%
#: upper bound and ``n`` the number of windows. A prevalence of a label in real windows means
#: something only above ``upper``; verdicts use this bound, not the surrogate test's ``alpha``.
FALSE_POSITIVE_RATE: dict[str, dict[str, float]] = {
    "spiral": {"rate": 5 / 6000, "upper": 0.001949, "n": 6000},
    "double": {"rate": 0.0, "upper": 0.00064, "n": 6000},
    "twisted": {"rate": 1 / 6000, "upper": 0.000944, "n": 6000},
    "double_twisted": {"rate": 0.0, "upper": 0.00064, "n": 6000},
}

#: Most windows whose surrogates are built at once.
_SURROGATE_BLOCK = 32

#: Bytes of complex spectra of surrogates built at once (windows times surrogates times bins), so
#: that a chunk of surrogates of long windows stays small.
_SURROGATE_BYTES = 16 * 2**20

#: Surrogates drawn per window between two checks of the sequential stopping rule.
_SURROGATE_STEP = 20

#: Surrogates are drawn in chunks ending at these counts (then in chunks of the last's size): a
#: window that stops at the first check draws only its first chunk, and one that runs to the end
#: takes three calls instead of one per check.
_SURROGATE_CHUNKS = (20, 80, 280)


#: Surrogate lengths at most this are inverted by a product with the inverse-DFT matrix
#: (:func:`inverse_rfft`), as are lengths up to :data:`_MATRIX_DFT_MAX` whose largest prime factor
#: exceeds a quarter of the length; pocketfft does the rest (docs/spirals.md, "Cost").
_MATRIX_DFT_SMALL = 64
_MATRIX_DFT_MAX = 512


@dataclass(frozen=True)
class SpiralParams:
    """Thresholds and settings of the spiral detector, with their defaults.

    Attributes
    ----------
    smooth_steps : int
        Width of the centred moving average whose residual is analysed (default 21, made odd). The
        residual keeps oscillations with periods up to about ``smooth_steps`` (gain >= 0.9) and the
        period-2 flip (gain ``1 +- 1/smooth_steps``), and removes drift and curvature on scales
        above a few times ``smooth_steps`` (periods of ``2*smooth_steps`` keep a third of their
        amplitude). 21 steps is twice the e-folding time of a flip envelope for beta1 = 0.9
        (``2/(1-beta1) = 20``), short compared with the quiet drift between bursts.
    active_fraction : float
        The active span is where the smoothed radius is at least this fraction of its maximum
        (default 0.1: 2.3 e-folds of growth or decay). Below it the phase is dominated by noise.
    radius_half : int
        Half-width of the moving average of the radius used for the active span and the log-radius
        slopes (default 2: five steps, enough to smooth the beat of an elliptical orbit).
    min_winding : float
        A spiral winds at least this many turns over its active span (default 1, docs/spirals.md).
    min_coherence : float
        Minimum coherence of the winding (default 0.8: nine tenths of the radius-weighted phase
        motion forward, one tenth back). A rotation of one sense scores 1 whatever its speed or
        ellipticity; noise in a plane turns back and forth and scores near 0. On the synthetic
        set of ``tests/synth_spirals.py`` (400 x 64 windows) noise stays below 0.3 and spirals
        above 0.9 (5th to 95th percentiles).
    n_surrogates : int
        Phase-randomised surrogates per window (default 199: with two statistics combined by the
        min-p rule, a window that beats every surrogate on one of them gets ``p = 2/200 = 0.01``).
    alpha : float
        A spiral must beat its surrogates: ``p_value <= alpha`` (default 0.01, one false positive
        in a hundred noise windows from this test alone; the other criteria remove most of those).
    stop_exceedances : int
        Surrogates stop once this many score at least the window on both statistics (default 10;
        the sequential Monte Carlo test of Besag and Clifford 1991, whose p-value ``h / k`` is
        then known to about 30%). Such a window cannot be significant at ``alpha``; stopping only
        saves work (noise windows need about 50 surrogates instead of 199). This rule serves
        :func:`measure_windows` with ``test_all=True``; by default only the windows whose label
        the test can change are tested, and they stop as soon as ``p <= alpha`` is out of reach
        (two exceedances with the defaults), which leaves every spiral's p-value as it is.
    iaaft_iterations : int
        0 (default) gives Fourier-transform surrogates (phases randomised, spectrum kept exactly);
        a positive number runs that many IAAFT iterations, which also keep each coordinate's
        amplitude distribution, at about twice the cost per iteration.
    max_cosine_content : float
        A window whose plane coordinates both have a cosine content above this is random-walk-like
        and never a spiral (default 0.7: most of each coordinate's energy in one cosine). Cosine
        content (Hess 2002) is the largest share of a coordinate's energy in one window-locked
        cosine ``cos(k pi (t + 1/2) / m)`` (the DCT-II basis, close to the principal-component
        basis of Markov diffusion); the veto uses the smaller of the two coordinates, since a
        plane needs both to be cosines to draw the smooth false loops of Hess. Synthetic spirals
        stay below 0.55; random walks analysed with a moving average as long as the window (no
        detrending) reach 0.95, and half of them exceed 0.7.
    slope_z : float
        Growth and decay of the log-radius count as significant when the slope is at least
        ``slope_z`` standard errors from zero (default 3).
    min_arm_turns : float
        For the outward-then-inward reading of "double", each arm must turn at least this much in
        the same sense (default 1: each arm is a spiral in its own right). Less lets an abrupt
        start or stop pass for an arm: the moving average smears a kick over ``smooth_steps / 2``
        steps, in which a damped rotation of the synthetic set turns 0.5 to 0.9 of a turn.
    min_counter_phase : float
        For the even/odd reading of "double", the two arms must be in counter-phase: the
        normalised correlation ``-Re(sum_k o_k conj(e_k)) / sqrt(sum |e_k|^2 sum |o_k|^2)`` of the
        even arm ``e_k = z_{2k}`` and the odd arm ``o_k = z_{2k+1}`` in the raw frame must be at
        least this (default 0.5). A period-2 flip of a rotation advancing ``delta`` rad per step
        scores ``cos(delta)`` (0.5 at six steps per turn) times its share of the arms' energy;
        arms in phase (a rotation without a flip) score near -1, noise near 0.
    min_plane_turn : float
        A spiral is twisted when its best-fit plane turns by at least this many degrees between the
        halves of its active span (default 20).
    plane_noise_factor : float
        The turn must also be at least this multiple of the angle that noise alone gives between
        two planes fitted to as many rows (the even and the odd rows of the span; default 2).
    min_plane_rows : int
        Each half needs at least this many rows for its plane to be fitted (default 8); otherwise
        the turn is not measurable (NaN) and the spiral is not called twisted.
    min_plane_aspect : float
        Each half must move in a plane, not along a line: the ratio of its second to its first
        principal eigenvalue must be at least this (default 0.1, an orbit no flatter than about
        1:3 in amplitude). The plane of a half that only moves along a line is that line plus an
        arbitrary second axis, so its "turn" means nothing; bursts that grow along a line and
        rotate only while they decay are the case in point.
    twist_rule : str
        ``"plane"`` (default) or ``"plane_or_rate"`` (also twisted when ``|twist_rate|`` exceeds
        ``slope_z`` standard errors; see the module docstring).
    min_steps : int
        Windows whose residual is shorter than this are not measured (default 24).
    seed : int
        Seed of the surrogates. Each window draws from ``default_rng([seed, *key])`` with a key
        fixed by its position (run and first step at run level), so results do not depend on
        batching or order.
    """

    smooth_steps: int = 21
    active_fraction: float = 0.1
    radius_half: int = 2
    min_winding: float = 1.0
    min_coherence: float = 0.8
    n_surrogates: int = 199
    alpha: float = 0.01
    stop_exceedances: int = 10
    iaaft_iterations: int = 0
    max_cosine_content: float = 0.7
    slope_z: float = 3.0
    min_arm_turns: float = 1.0
    min_counter_phase: float = 0.5
    min_plane_turn: float = 20.0
    plane_noise_factor: float = 2.0
    min_plane_rows: int = 8
    min_plane_aspect: float = 0.1
    twist_rule: str = "plane"
    min_steps: int = 24
    seed: int = 0

    def __post_init__(self) -> None:
        if self.smooth_steps < 3:
            raise GeomtrajError(f"smooth_steps={self.smooth_steps}; expected >= 3 steps")
        if not 0.0 < self.active_fraction < 1.0:
            raise GeomtrajError(f"active_fraction={self.active_fraction}; expected in (0, 1)")
        if self.n_surrogates < 1:
            raise GeomtrajError(f"n_surrogates={self.n_surrogates}; expected >= 1")
        if not 0.0 < self.alpha < 1.0:
            raise GeomtrajError(f"alpha={self.alpha}; expected in (0, 1)")
        if self.twist_rule not in ("plane", "plane_or_rate"):
            raise GeomtrajError(
                f"twist_rule={self.twist_rule!r}; expected 'plane' or 'plane_or_rate'"
            )
        if self.min_steps < 8:
            raise GeomtrajError(f"min_steps={self.min_steps}; expected >= 8")

    @property
    def half(self) -> int:
        """Rows lost at each end of a window to the moving average."""
        return self.smooth_steps // 2


#: Per-window quantities of the two interleaved arms (even and odd steps of the raw frame), measured
#: for spiral windows only (NaN elsewhere): each arm's winding, coherence and surrogate p-value,
#: and the counter-phase of the pair (see :func:`measure_arms`).
ARM_QUANTITIES = (
    "arm_winding_even",
    "arm_winding_odd",
    "arm_coherence_even",
    "arm_coherence_odd",
    "arm_p_even",
    "arm_p_odd",
    "arm_counter_phase",
)

#: Fewest samples an arm needs to be measured (half the residual steps of the window).
_MIN_ARM_STEPS = 8

#: Per-window quantities, in the order of the columns of :func:`measure_windows`' output.
QUANTITIES = (
    "n_steps",
    "plane_fraction",
    "flip_index",
    "demodulated",
    *FEATURES,
    "plane_turn",
    "plane_turn_noise",
    "plane_aspect",
    "cosine_content",
    "quadrature",
    "p_value",
    "n_surrogates",
    *ARM_QUANTITIES,
    "pair_x",
    "pair_y",
    "is_spiral",
    "is_double",
    "is_twisted",
    "label",
    "double_arms",
    "double_out_in",
)


# -- pieces --------------------------------------------------------------------------------------
def residual(theta: np.ndarray, smooth_steps: int) -> np.ndarray:
    """Residual of windows from their centred moving average, centred over time.

    Parameters
    ----------
    theta : ndarray, shape (..., n_steps, n_params)
    smooth_steps : int
        Odd width of the moving average (an even value is rounded up).

    Returns
    -------
    ndarray, shape (..., n_steps - 2*(smooth_steps//2), n_params)
        Row ``i`` is the residual at window row ``i + smooth_steps//2``.
    """
    h = smooth_steps // 2
    width = 2 * h + 1
    # subtract a reference row first so the running sum stays small (no cancellation)
    x = theta - theta[..., :1, :]
    c = np.cumsum(x, axis=-2)
    c = np.concatenate([np.zeros_like(c[..., :1, :]), c], axis=-2)
    ma = (c[..., width:, :] - c[..., :-width, :]) / width
    r = x[..., h : x.shape[-2] - h, :] - ma
    return r - r.mean(axis=-2, keepdims=True)


def principal_plane(resid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Top-two principal components of residual windows (n_windows, m, p).

    Returns ``(scores, axes, plane_fraction, energy_per_step)``: ``scores`` (n_windows, m, 2) are
    the projections on the axes (n_windows, p, 2) (unit vectors, sign fixed so that each axis's
    largest loading is positive), ``plane_fraction`` their share of the energy and
    ``energy_per_step`` ``sum ||r_t||^2 / m``.
    """
    resid = np.ascontiguousarray(resid, dtype=np.float64)
    nw, m, p = resid.shape
    axes = np.empty((nw, p, 2))
    top = np.empty(nw)
    total = np.empty(nw)
    _principal_planes(resid, axes, top, total)
    scores = np.matmul(resid, axes)
    with np.errstate(invalid="ignore", divide="ignore"):
        fraction = np.where(total > 0, top / total, np.nan)
    return scores, axes, fraction, total / m


def flip_index(resid: np.ndarray) -> np.ndarray:
    """Negative lag-1 autocorrelation of residual windows (..., m, p): ``-sum r_t.r_{t+1} /
    sum |r_t|^2``.

    Near 1 when consecutive steps sit on opposite sides of the local mean (the period-2 flip; a
    flip whose demodulated rotation advances by ``delta`` per step scores ``cos(delta)``), near
    -1 for slow motion, near 0 for white noise.
    """
    lag1 = np.einsum("...tp,...tp->...", resid[..., 1:, :], resid[..., :-1, :])
    power = np.einsum("...tp,...tp->...", resid, resid)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(power > 0, -lag1 / power, 0.0)


def flip_frame(resid: np.ndarray) -> np.ndarray:
    """Demodulate residual windows (..., m, p), ``d_t = (-1)^t r_t``, and smooth with [1, 2, 1]/4.

    Demodulation moves the period-2 flip to low frequencies and slow motion to the Nyquist
    frequency; the [1, 2, 1] filter (gain ``cos^2(pi f)``) then removes what was slow (gain below
    0.25 for periods of 6 steps or more in ``r``) and keeps the flip's envelope (gain above 0.75
    for demodulated rotations of 6 steps per turn or slower). Ends repeat their neighbour.
    """
    m = resid.shape[-2]
    d = resid * np.where(np.arange(m) % 2 == 0, 1.0, -1.0)[:, None]
    pad = np.concatenate([d[..., :1, :], d, d[..., -1:, :]], axis=-2)
    return 0.25 * pad[..., :-2, :] + 0.5 * pad[..., 1:-1, :] + 0.25 * pad[..., 2:, :]


def cosine_content(coords: np.ndarray) -> np.ndarray:
    """Largest share of each series' energy in one DCT-II cosine (Hess 2002), along axis -2.

    ``coords`` (..., m, c) gives (..., c). A window-locked cosine scores 1, white noise about
    ``2 ln(m) / m``.
    """
    d = scipy.fft.dct(coords, type=2, norm="ortho", axis=-2)
    e = d * d
    total = e.sum(axis=-2)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, e.max(axis=-2) / total, 0.0)


def plane_turn(
    resid: np.ndarray, start: int, end: int, min_rows: int = 8
) -> tuple[float, float, float]:
    """Turn of the best-fit plane across rows ``start..end`` of a residual (m, p), and its noise.

    The rows are split where half of their residual energy has passed, so that both halves carry
    the same share of the motion; the turn is the largest principal angle (degrees) between the
    top-two principal planes of the halves. The noise level estimates the turn that noise alone
    would give: within each half, the angle ``a_i`` between the planes of its even and its odd rows
    (interleaved subsets that share every real motion of the plane) compares two planes fitted
    from half the rows each, so it is about twice the error ``s_i`` of the half's own plane (errors
    grow as one over the square root of the rows, and two independent errors add in quadrature);
    the noise of the turn is then ``sqrt(s_1^2 + s_2^2) = sqrt(a_1^2 + a_2^2) / 2``.

    ``aspect`` is the smaller of the halves' ratios of second to first principal eigenvalue
    (0 when a half moves along a line, so that its plane is not defined).

    Returns ``(turn, noise, aspect)``; all NaN when a half has fewer than ``min_rows`` rows.
    """
    seg = np.ascontiguousarray(resid[start : end + 1], dtype=np.float64)
    return _plane_turn(seg, int(min_rows))


def iaaft_surrogates(
    series: np.ndarray, n_surrogates: int, rng: np.random.Generator, iterations: int
) -> np.ndarray:
    """Independent IAAFT surrogates of each row of ``series`` (c, m) -> (n_surrogates, c, m).

    Starts from Fourier-transform surrogates (random phases, amplitude spectrum kept) and then
    alternates ``iterations`` times between imposing the original sorted values and the original
    amplitude spectrum (Schreiber and Schmitz 1996), ending on the sorted values.
    """
    c, m = series.shape
    spec = scipy.fft.rfft(series, axis=-1)
    amp = np.abs(spec)
    phases = rng.uniform(0.0, 2.0 * np.pi, size=(n_surrogates, c, spec.shape[-1]))
    phases[..., 0] = 0.0
    if m % 2 == 0:
        phases[..., -1] = 0.0  # the Nyquist bin of a real series is real
    surr = scipy.fft.irfft(spec[None] * np.exp(1j * phases), n=m, axis=-1)
    ranked = np.broadcast_to(np.sort(series, axis=-1), surr.shape)
    for _ in range(iterations):
        np.put_along_axis(surr, np.argsort(surr, axis=-1), ranked, axis=-1)
        s = scipy.fft.rfft(surr, axis=-1)
        surr = scipy.fft.irfft(amp * np.exp(1j * np.angle(s)), n=m, axis=-1)
    np.put_along_axis(surr, np.argsort(surr, axis=-1), ranked, axis=-1)
    return surr


def window_rng(seed: int, key) -> np.random.Generator:
    """The random generator of one window, from the analysis seed and the window's key integers."""
    return np.random.default_rng([int(seed), *(int(k) for k in np.atleast_1d(key))])


def rotation_spectrum(xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weights and phases of the cross-spectrum of plane coordinates (n_windows, m).

    ``amp_f = sin(2 pi f / m) |X_f| |Y_f|`` and ``beta_f = arg(conj(X_f) Y_f)`` over the rfft
    bins, so that the circular angular momentum ``sum_t (x_t y_{t+1} - y_t x_{t+1})`` is
    ``-(4/m) sum_f amp_f sin(beta_f)``.
    """
    m = xs.shape[-1]
    return _cross_spectrum(scipy.fft.rfft(xs, axis=-1), scipy.fft.rfft(ys, axis=-1), m)


def _cross_spectrum(
    spec_x: np.ndarray, spec_y: np.ndarray, m: int
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`rotation_spectrum` from the rfft of the coordinates, of length ``m``."""
    weight = np.sin(2.0 * np.pi * np.arange(spec_x.shape[-1]) / m)
    weight[0] = 0.0
    if m % 2 == 0:
        weight[-1] = 0.0
    cross = np.conj(spec_x) * spec_y
    return weight * np.abs(cross), np.angle(cross)


def quadrature(amp: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Spectral rotation coherence ``|sum_f amp_f sin(beta_f)| / sum_f amp_f`` (last axis).

    The circular angular momentum of the plane trajectory divided by its largest possible value
    given the two amplitude spectra: 1 when the coordinates are a quarter period apart at every
    frequency with one sense (a rotation), near 0 when their phases are unrelated.
    """
    total = amp.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, np.abs(np.sum(amp * np.sin(beta), axis=-1)) / total, 0.0)


def _window_spectra(xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rfft of each window's two plane coordinates (n_windows, 2, n_bins) and the weights and
    phases of their cross-spectrum (:func:`rotation_spectrum`): what every block of Fourier
    surrogates of the windows starts from."""
    spec = scipy.fft.rfft(np.stack([xs, ys], axis=1), axis=-1)
    amp, beta = _cross_spectrum(spec[:, 0], spec[:, 1], xs.shape[-1])
    return spec, amp, beta


def _largest_prime_factor(m: int) -> int:
    largest, p = 1, 2
    while p * p <= m:
        while m % p == 0:
            largest, m = p, m // p
        p += 1
    return max(largest, m)


def _matrix_dft(m: int) -> bool:
    """Whether :func:`inverse_rfft` inverts length ``m`` by a matrix product.

    A fixed rule, so that the choice (and so the last bits of a surrogate) never depends on the
    machine: pocketfft is fast for lengths of small prime factors, but for short lengths its
    overhead, and for a large prime factor its Bluestein transform, costs more than the
    ``O(m^2)`` product (measured for lengths 16 to 1009 in batches of 200 series, one thread:
    the rule is within 0.2% of the faster of the two over lengths 16 to 420).
    """
    if m <= _MATRIX_DFT_SMALL:
        return True
    return m <= _MATRIX_DFT_MAX and 4 * _largest_prime_factor(m) > m


@functools.lru_cache(maxsize=64)  # at most 64 x 2 MB (length 512); building one takes ~1 ms
def _inverse_dft_matrix(m: int) -> np.ndarray:
    """The real ``(2 n_bins, m)`` matrix ``B`` with ``irfft(X, m) = view_as_real(X) @ B``.

    Rows alternate the real and the imaginary part of each bin, as a complex array viewed as
    float64 does: ``x_t = (1/m) sum_f w_f (Re X_f cos(2 pi f t/m) - Im X_f sin(2 pi f t/m))``
    with ``w_f = 2`` except 1 at zero frequency and (even ``m``) the Nyquist bin, whose imaginary
    parts are ignored, as ``irfft`` ignores them. The product ``f t`` is reduced modulo ``m`` in
    integers first, so every angle lies in ``[0, 2 pi)`` and every entry is within a few
    roundings of its exact value whatever ``f t``.
    """
    n_bins = m // 2 + 1
    f = np.arange(n_bins)[:, None]
    angle = (2.0 * np.pi / m) * ((f * np.arange(m)[None, :]) % m)
    weight = np.full((n_bins, 1), 2.0 / m)
    weight[0] = 1.0 / m
    if m % 2 == 0:
        weight[-1] = 1.0 / m
    basis = np.empty((2 * n_bins, m))
    basis[0::2] = weight * np.cos(angle)
    basis[1::2] = -weight * np.sin(angle)
    basis[1] = 0.0
    if m % 2 == 0:
        basis[-1] = 0.0
    basis.flags.writeable = False
    return basis


def inverse_rfft(spec: np.ndarray, m: int) -> np.ndarray:
    """``scipy.fft.irfft(spec, n=m, axis=-1)`` of a C-contiguous complex128 array, faster where
    :func:`_matrix_dft` says so (then equal to it to about ``1e-14`` relative, not bit for bit;
    ``spec`` may be overwritten)."""
    if not _matrix_dft(m):
        return scipy.fft.irfft(spec, n=m, axis=-1, overwrite_x=True)
    flat = spec.reshape(-1, spec.shape[-1]).view(np.float64)
    return (flat @ _inverse_dft_matrix(m)).reshape(*spec.shape[:-1], m)


def surrogate_scores(
    xs: np.ndarray,
    ys: np.ndarray,
    params: SpiralParams,
    rngs: Sequence[np.random.Generator],
    n_surrogates: int,
    spectra: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    exact_from: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Coherence and quadrature of phase-randomised surrogates of each window's plane coordinates.

    ``xs, ys`` (n_windows, m) are ``Re w`` and ``Im w``; each coordinate is randomised
    independently, which keeps both spectra (and, for IAAFT, both value distributions) and
    destroys the phase relation between them, the rotation. Each surrogate goes through the same
    measurement as the window: active span, winding and coherence in time, and the quadrature of
    its cross-spectrum (for Fourier surrogates, the random phases only shift ``beta_f`` by their
    difference). Window ``i`` draws its ``n_surrogates`` surrogates from ``rngs[i]``.

    ``spectra``, optional, is ``(spec, amp, beta)`` of these windows as :func:`_window_spectra`
    gives them; :func:`surrogate_test` computes them once for all its blocks of surrogates.

    ``exact_from``, optional (n_windows,): a coherence of window ``i`` below ``exact_from[i]``
    is only certified to be below it (its value then comes from a fast arctangent), which is
    all that a rank test against an observed coherence ``exact_from[i]`` reads
    (:func:`surrogate_test`); at or above it, and everywhere without ``exact_from``, every
    coherence is exact.

    Returns
    -------
    (coherence, quadrature) : ndarrays, shape (n_windows, n_surrogates)
    """
    nw, m = xs.shape
    k = n_surrogates
    if params.iaaft_iterations == 0:
        spec, amp, beta = _window_spectra(xs, ys) if spectra is None else spectra
        index = np.empty((nw, k, 2, spec.shape[-1]), dtype=np.uint16)
        for i in range(nw):
            index[i] = rngs[i].integers(0, PHASE_LEVELS, size=index.shape[1:], dtype=np.uint16)
        phased = np.empty((nw, k, 2, spec.shape[-1]), dtype=complex)
        quad = np.empty((nw, k))
        _apply_phases(spec, index, m % 2 == 0, amp, beta, PHASE_COS, PHASE_SIN, phased, quad)
        surr = inverse_rfft(phased, m)  # phased is scratch
    else:
        surr = np.empty((nw, k, 2, m))
        for i in range(nw):
            series = np.stack([xs[i], ys[i]])
            surr[i] = iaaft_surrogates(series, k, rngs[i], params.iaaft_iterations)
        quad = quadrature(*rotation_spectrum(surr[:, :, 0], surr[:, :, 1]))
    coh = np.empty((nw, k))
    if exact_from is None:
        _winding_scores(surr, params.active_fraction, params.radius_half, coh)
    else:
        below = np.ascontiguousarray(exact_from, dtype=np.float64)
        _winding_scores_below(surr, below, params.active_fraction, params.radius_half, coh)
    return coh, quad


def surrogate_test(
    xs: np.ndarray,
    ys: np.ndarray,
    observed: tuple[np.ndarray, np.ndarray],
    params: SpiralParams,
    keys: np.ndarray,
    stop_exceedances: np.ndarray | None = None,
    spectra: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Surrogate p-values of the windows' rotation, two statistics combined, sequentially.

    The two statistics are the coherence of the winding (in time) and the quadrature of the
    cross-spectrum. They fail in opposite cases: a spiral that fills its window has narrow-band
    surrogates that also keep one sense of rotation for the whole window (coherence cannot tell
    them apart, quadrature can), while a burst whose energy sits in a flip along a line and whose
    rotation comes only in its decay dilutes the quadrature (coherence, weighted by the motion
    of the phase, sees the rotation). The combined p-value is the exact min-p test: each sample
    (the window and every surrogate) gets ``T = min(p_coherence, p_quadrature)`` from its ranks
    among all samples, and ``p = #{samples with T <= T_window} / (n + 1)``.

    The stopping rule is checked after every :data:`_SURROGATE_STEP` surrogates (and after the
    last): a window stops at the first check where ``stop_exceedances`` of its surrogates score
    at least its own value on both statistics, and gets the conservative p-value
    ``min(1, 2 * min(h_coherence, h_quadrature) / k)`` (Besag and Clifford 1991, Bonferroni over
    the two statistics) after ``k`` surrogates. ``stop_exceedances`` (one per window) defaults to
    ``params.stop_exceedances``. Window ``i`` draws from :func:`window_rng` ``(params.seed,
    keys[i])`` in a fixed order, so its p-value does not depend on the batch. Surrogates are
    drawn in a few large chunks (:data:`_SURROGATE_CHUNKS`) and the checks are replayed on them,
    so the p-value and ``n_used`` are those of drawing block by block; surrogates drawn past a
    window's stop are discarded. Surrogate coherences below the window's are only certified to be
    below it (``exact_from`` of :func:`surrogate_scores`): the exceedance counts read no more,
    and in the min-p rule such a surrogate ranks below the window in coherence, so only its
    (exact) quadrature can put its ``T`` at or under the window's; the p-value is bit for bit
    that of exact coherences.

    ``spectra``, optional, is ``(spec, amp, beta)`` of these windows as :func:`_window_spectra`
    gives them, when the caller has them already (Fourier surrogates only).

    Returns ``(p_value, n_used)``, one per window.
    """
    nw = xs.shape[0]
    n = params.n_surrogates
    obs_coh, obs_quad = (np.ascontiguousarray(a, dtype=np.float64) for a in observed)
    if stop_exceedances is None:
        stop_exceedances = np.full(nw, params.stop_exceedances, dtype=np.int64)
    stop_exceedances = np.ascontiguousarray(stop_exceedances, dtype=np.int64)
    rngs = [window_rng(params.seed, key) for key in keys]
    coh = np.full((nw, n), np.nan)
    quad = np.full((nw, n), np.nan)
    used = np.zeros(nw, dtype=np.int64)
    running = np.ones(nw, dtype=bool)
    # exceedances of the surrogates drawn, and of those before used (_replay_checks)
    counts = np.zeros((nw, 2), dtype=np.int64)
    h_coh = np.zeros(nw, dtype=np.int64)
    h_quad = np.zeros(nw, dtype=np.int64)
    # the windows' spectra do not change between chunks of surrogates: computed once (row by
    # row the rfft gives the same bits whatever the batch)
    if params.iaaft_iterations > 0:
        spectra = None
    elif spectra is None:
        spectra = _window_spectra(xs, ys)
    drawn, size = 0, 0
    ends = iter(_SURROGATE_CHUNKS)
    while drawn < n and np.any(running):
        end = next(ends, drawn + size)
        size = end - drawn
        hi = min(n, end)
        todo = np.flatnonzero(running)
        spectrum_bytes = 2 * 16 * (xs.shape[1] // 2 + 1) * (hi - drawn)  # two complex series
        block = max(1, min(_SURROGATE_BYTES // spectrum_bytes, _SURROGATE_BLOCK))
        for lo in range(0, todo.size, block):
            sel = todo[lo : lo + block]
            # while every window runs (a burst length has few), views instead of copies
            whole = sel.size == nw
            block_rngs = rngs if whole else [rngs[i] for i in sel]
            sel = slice(None) if whole else sel
            sub = None if spectra is None else tuple(a[sel] for a in spectra)
            c, q = surrogate_scores(
                xs[sel], ys[sel], params, block_rngs, hi - drawn, spectra=sub,
                exact_from=obs_coh[sel],
            )  # fmt: skip
            coh[sel, drawn:hi] = c
            quad[sel, drawn:hi] = q
        # replay the checks that fall in this chunk on the exceedances counted so far
        _replay_checks(
            coh, quad, obs_coh, obs_quad, todo, drawn, hi, _SURROGATE_STEP, stop_exceedances,
            counts, h_coh, h_quad, used, running,
        )  # fmt: skip
        drawn = hi
    with np.errstate(invalid="ignore", divide="ignore"):
        p_value = np.minimum(1.0, 2.0 * np.minimum(h_coh, h_quad) / used)
    full = used == n
    if np.any(full):
        rows = np.flatnonzero(full)
        full_p = np.empty(rows.size)
        _min_p_values(obs_coh[rows], coh[rows], obs_quad[rows], quad[rows], full_p)
        p_value[rows] = full_p
    return p_value, used


def _hopeless_exceedances(params: SpiralParams) -> int:
    """Fewest exceedances ``h`` after which a window cannot reach ``p <= alpha``.

    With ``h = min(h_coherence, h_quadrature)`` surrogates scoring at least the window on its
    better statistic, those ``h`` surrogates and the window all have ``T <= T_window`` in the
    min-p rule, so the p-value after all ``n`` surrogates is at least ``(h + 1) / (n + 1)``, and
    exceedances only accumulate.
    """
    n = params.n_surrogates
    h = 0
    while (h + 1) / (n + 1) <= params.alpha:
        h += 1
    return h


def _as_batch(theta) -> np.ndarray:
    arr = np.asarray(theta, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise GeomtrajError(
            f"windows have shape {np.shape(theta)}; expected (n_steps, n_params) or "
            "(n_windows, n_steps, n_params)"
        )
    if arr.shape[2] < 2:
        raise GeomtrajError(
            f"windows have {arr.shape[2]} parameter(s); a plane needs at least 2 parameters"
        )
    if not np.all(np.isfinite(arr)):
        raise GeomtrajError(
            "windows contain NaN or inf; cut a diverged run at its divergence step first"
        )
    return arr


# -- measurement ---------------------------------------------------------------------------------
def measure_windows(
    windows,
    params: SpiralParams = SpiralParams(),
    *,
    keys: Sequence[int] | np.ndarray | None = None,
    pair: tuple[int, int] | None = None,
    test_all: bool = False,
) -> dict[str, np.ndarray]:
    """Measure and classify a batch of equal-length windows.

    Parameters
    ----------
    windows : array_like, shape (n_windows, n_steps, n_params) or (n_steps, n_params)
        Finite trajectory windows, float64 (other dtypes are converted).
    params : SpiralParams
        Thresholds and settings.
    keys : array_like of int, shape (n_windows,) or (n_windows, k), optional
        Non-negative integers per window that, with ``params.seed``, seed its surrogates (default:
        the window's index in the batch); :func:`analyze` uses (run, first step). Equal keys give
        equal surrogates whatever the batching.
    pair : (int, int), optional
        Columns of the raw parameter pair to record; default: per window, the two columns with the
        largest residual RMS (the largest burst amplitude).
    test_all : bool
        The surrogate test decides a label only where the window winds at least ``min_winding``
        turns with coherence ``>= min_coherence`` and cosine content ``<=
        max_cosine_content``; elsewhere (default) it is not run, and ``p_value`` is NaN and
        ``n_surrogates`` 0. Where it runs, it stops as soon as ``p <= alpha`` is out of reach,
        so only spirals are sure to get all ``n_surrogates``; every window classified a spiral
        has the p-value it would have with ``test_all``. ``True`` tests every window that moves
        and stops by ``stop_exceedances`` alone (the p-values of all windows, e.g. to check the
        test's calibration on noise).

    Returns
    -------
    dict of str to ndarray
        One array of length n_windows per name in :data:`QUANTITIES`. ``label`` holds strings,
        ``is_*`` and ``demodulated`` booleans, ``pair_x``/``pair_y`` column indices; the rest are
        float64 (NaN where not measurable). Indices ``active_start``, ``peak`` and ``active_end``
        count rows of the window.
    """
    theta = _as_batch(windows)
    nw, n, p = theta.shape
    h = params.half
    m = n - 2 * h
    if m < params.min_steps:
        raise GeomtrajError(
            f"windows of {n} steps leave {m} residual steps after the {params.smooth_steps}-step "
            f"moving average; expected at least {params.min_steps} (use longer windows)"
        )
    if keys is None:
        keys = np.arange(nw)
    keys = np.asarray(keys, dtype=np.int64)
    if keys.ndim == 1:
        keys = keys[:, None]
    if keys.ndim != 2 or keys.shape[0] != nw or np.any(keys < 0):
        raise GeomtrajError(
            f"keys has shape {keys.shape}; expected {nw} rows of non-negative integers, one per "
            "window"
        )

    if pair is not None:
        if len(pair) != 2 or not all(0 <= int(c) < p for c in pair) or pair[0] == pair[1]:
            raise GeomtrajError(f"pair={pair}; expected two different column indices in 0..{p - 1}")
        pair = (int(pair[0]), int(pair[1]))
    with one_blas_thread("blas"):
        return _measure(theta, params, keys, pair, test_all)


def _measure(theta, params, keys, pair, test_all=False):
    nw, n, p = theta.shape
    h = params.half
    m = n - 2 * h
    resid = np.empty((nw, m, p))
    flip = np.empty(nw)
    demod = np.empty(nw, dtype=bool)
    _residuals(theta, h, resid, flip, demod)
    plane, axes, fraction, energy = principal_plane(resid)
    xs = np.ascontiguousarray(plane[..., 0])
    ys = np.ascontiguousarray(plane[..., 1])
    energy = np.ascontiguousarray(energy)
    norms = np.ascontiguousarray(np.sqrt(np.einsum("wtp,wtp->wt", resid, resid)))
    feats = np.full((nw, N_FEATURES), np.nan)
    alive = energy > 0
    _plane_features_batch(xs, ys, norms, params.active_fraction, params.radius_half, feats)
    feats[~alive] = np.nan

    cos_content = cosine_content(plane).min(axis=-1)

    # null model: phase-randomised surrogates of the two plane coordinates, for the windows whose
    # label they can change (all with test_all), stopped once p > alpha is certain
    spectra = _window_spectra(xs, ys)  # also what every block of surrogates starts from
    quad = quadrature(*spectra[1:])
    coherence = feats[:, FEATURES.index("coherence")]
    with np.errstate(invalid="ignore"):
        candidate = alive & (
            (np.abs(feats[:, FEATURES.index("winding")]) >= params.min_winding)
            & (coherence >= params.min_coherence)
            & (cos_content <= params.max_cosine_content)
        )
    tested = alive if test_all else candidate
    stop_at = np.full(nw, params.stop_exceedances, dtype=np.int64)
    if not test_all:
        stop_at[:] = min(params.stop_exceedances, _hopeless_exceedances(params))
    rows = np.flatnonzero(tested)
    p_value = np.full(nw, np.nan)
    n_used = np.zeros(nw, dtype=np.int64)
    observed = (coherence[rows], quad[rows])
    p_value[rows], n_used[rows] = surrogate_test(
        xs[rows], ys[rows], observed, params, keys[rows], stop_at[rows],
        spectra=tuple(a[rows] for a in spectra),
    )  # fmt: skip

    turn = np.empty(nw)
    turn_noise = np.empty(nw)
    aspect = np.empty(nw)
    span = feats[:, [FEATURES.index("active_start"), FEATURES.index("active_end")]]
    span = np.where(np.isfinite(span), span, -1).astype(np.int64)
    # planes are fitted to the raw residual: the flip frame's [1, 2, 1] smoothing shares samples
    # between neighbouring rows, so its even and odd rows would understate the noise of a plane
    _plane_turns(
        resid, theta, h, demod, span[:, 0], span[:, 1], params.min_plane_rows, turn, turn_noise,
        aspect,
    )  # fmt: skip

    if pair is None:
        rms = np.sqrt(np.mean(resid * resid, axis=1))
        order = np.argsort(-rms, axis=1, kind="stable")
        pair_x, pair_y = order[:, 0], order[:, 1]
    else:
        pair_x, pair_y = np.full(nw, pair[0]), np.full(nw, pair[1])

    out: dict[str, np.ndarray] = {
        "n_steps": np.full(nw, float(m)),
        "plane_fraction": fraction,
        "flip_index": flip,
        "demodulated": demod,
    }
    for c, name in enumerate(FEATURES):
        out[name] = feats[:, c]
    # active-span indices count window rows, not residual rows
    for name in ("active_start", "peak", "active_end"):
        out[name] = out[name] + h
    out["plane_turn"] = turn
    out["plane_turn_noise"] = turn_noise
    out["plane_aspect"] = aspect
    out["cosine_content"] = cos_content
    out["quadrature"] = quad
    out["p_value"] = p_value
    out["n_surrogates"] = n_used.astype(float)
    out["pair_x"] = pair_x.astype(np.int64)
    out["pair_y"] = pair_y.astype(np.int64)
    for name in ARM_QUANTITIES:
        out[name] = np.full(nw, np.nan)
    # the arms are measured where they can decide a label: in spiral windows
    todo = np.flatnonzero(classify(out, params)["is_spiral"])
    if todo.size:
        arms = measure_arms(theta[todo], axes[todo], params, keys[todo])
        for name in ARM_QUANTITIES:
            out[name][todo] = arms[name]
    out.update(classify(out, params))
    return out


def measure_arms(
    theta: np.ndarray, axes: np.ndarray, params: SpiralParams, keys: np.ndarray
) -> dict[str, np.ndarray]:
    """Measure the two interleaved arms of windows: the even and the odd steps of the raw frame.

    The raw residual (no demodulation, no smoothing) of each window ``theta`` (n_windows, n, p)
    is projected on the window's principal plane ``axes`` (n_windows, p, 2), ``z_t``; the even
    arm is ``e_k = z_{2k}``, the odd arm ``o_k = z_{2k+1}``. Each arm goes through the window's
    own measurement (active span, winding, coherence). ``arm_counter_phase`` is
    ``-Re(sum_k o_k conj(e_k)) / sqrt(sum |e_k|^2 sum |o_k|^2)`` with ``z`` read as a complex
    number: 1 when the odd arm is the even arm turned by half a turn (``z_{t+1} = -z_t``), -1
    when the arms coincide. Where both arms wind at least ``min_winding`` turns in one sense with
    coherence ``>= min_coherence`` and in counter-phase (``>= min_counter_phase``), each arm also
    gets its own surrogate test (seeded by the window's key followed by 1 for the even arm, 2 for
    the odd arm); elsewhere the p-values cannot change the label and are not computed (NaN), which
    spares the surrogates of every rotation without a flip.

    Returns one array of length n_windows per name in :data:`ARM_QUANTITIES`; NaN where an arm
    has fewer than 8 samples or no motion.
    """
    nw = theta.shape[0]
    out = {name: np.full(nw, np.nan) for name in ARM_QUANTITIES}
    n_arm = (theta.shape[1] - 2 * params.half) // 2
    if n_arm < _MIN_ARM_STEPS:
        return out
    # the residual is linear in theta: project first, then take the residual of two coordinates
    z = residual(np.matmul(theta, axes), params.smooth_steps)
    # winding and coherence need only the plane radius (the norm feeds the envelope, unused here)
    norm = np.hypot(z[..., 0], z[..., 1])
    series = {}
    for parity, name in enumerate(("even", "odd")):
        rows = slice(parity, parity + 2 * n_arm, 2)
        xs = np.ascontiguousarray(z[:, rows, 0])
        ys = np.ascontiguousarray(z[:, rows, 1])
        feats = np.full((nw, N_FEATURES), np.nan)
        norms = np.ascontiguousarray(norm[:, rows])
        _plane_features_batch(xs, ys, norms, params.active_fraction, params.radius_half, feats)
        moving = np.einsum("wt,wt->w", norms, norms) > 0
        out[f"arm_winding_{name}"] = np.where(moving, feats[:, FEATURES.index("winding")], np.nan)
        out[f"arm_coherence_{name}"] = np.where(
            moving, feats[:, FEATURES.index("coherence")], np.nan
        )
        series[name] = (xs, ys)
    even = series["even"][0] + 1j * series["even"][1]
    odd = series["odd"][0] + 1j * series["odd"][1]
    cross = np.sum(odd * np.conj(even), axis=1)
    power = np.sqrt(np.sum(np.abs(even) ** 2, axis=1) * np.sum(np.abs(odd) ** 2, axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        out["arm_counter_phase"] = np.where(power > 0, -cross.real / power, np.nan)
        we, wo = out["arm_winding_even"], out["arm_winding_odd"]
        candidate = (
            (np.minimum(np.abs(we), np.abs(wo)) >= params.min_winding)
            & (np.sign(we) == np.sign(wo))
            & (
                np.minimum(out["arm_coherence_even"], out["arm_coherence_odd"])
                >= params.min_coherence
            )
            & (out["arm_counter_phase"] >= params.min_counter_phase)
        )
    todo = np.flatnonzero(candidate)
    if todo.size:
        # both arms in one surrogate test (half the calls): each series draws from its own key
        # and stops on its own, so its p-value is the one it gets alone
        names = ("even", "odd")
        xs = np.concatenate([series[name][0][todo] for name in names])
        ys = np.concatenate([series[name][1][todo] for name in names])
        obs_coh = np.concatenate([out[f"arm_coherence_{name}"][todo] for name in names])
        spectra = _window_spectra(xs, ys)
        observed = (obs_coh, quadrature(*spectra[1:]))
        arm_keys = np.concatenate(
            [
                np.concatenate([keys[todo], np.full((todo.size, 1), extra, dtype=np.int64)], axis=1)
                for extra in (1, 2)
            ]
        )
        p_value = surrogate_test(xs, ys, observed, params, arm_keys, spectra=spectra)[0]
        out["arm_p_even"][todo] = p_value[: todo.size]
        out["arm_p_odd"][todo] = p_value[todo.size :]
    return out


def classify(q: dict[str, np.ndarray], params: SpiralParams = SpiralParams()) -> dict:
    """Flags and labels from measured quantities (arrays of equal length).

    Returns ``{"is_spiral", "is_double", "is_twisted", "label", "double_arms",
    "double_out_in"}`` (the last two: which reading of "double" a spiral passes); see the module
    docstring for the rules. NaN quantities fail every test, so unmeasurable windows are noise.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        spiral = (
            (np.abs(q["winding"]) >= params.min_winding)
            & (q["coherence"] >= params.min_coherence)
            & (q["p_value"] <= params.alpha)
            & (q["cosine_content"] <= params.max_cosine_content)
        )
        # two interleaved arms: each winds, coherently and beyond its surrogates, in one sense,
        # and the odd arm is the even arm turned by half a turn
        arms = (
            (np.abs(q["arm_winding_even"]) >= params.min_winding)
            & (np.abs(q["arm_winding_odd"]) >= params.min_winding)
            & (np.sign(q["arm_winding_even"]) == np.sign(q["arm_winding_odd"]))
            & (q["arm_coherence_even"] >= params.min_coherence)
            & (q["arm_coherence_odd"] >= params.min_coherence)
            & (q["arm_p_even"] <= params.alpha)
            & (q["arm_p_odd"] <= params.alpha)
            & (q["arm_counter_phase"] >= params.min_counter_phase)
        )
        out_in = (
            (q["growth_slope"] >= params.slope_z * q["growth_stderr"])
            & (-q["decay_slope"] >= params.slope_z * q["decay_stderr"])
            & (np.sign(q["turns_out"]) == np.sign(q["turns_in"]))
            & (np.abs(q["turns_out"]) >= params.min_arm_turns)
            & (np.abs(q["turns_in"]) >= params.min_arm_turns)
        )
        double = spiral & (arms | out_in)
        twisted = (
            (q["plane_turn"] >= params.min_plane_turn)
            & (q["plane_turn"] >= params.plane_noise_factor * q["plane_turn_noise"])
            & (q["plane_aspect"] >= params.min_plane_aspect)
        )
        if params.twist_rule == "plane_or_rate":
            twisted |= np.abs(q["twist_rate"]) >= params.slope_z * q["twist_stderr"]
        twisted = spiral & twisted
    label = np.array(
        [
            LABELS[0]
            if not s
            else ("double twisted" if d and t else "double" if d else "twisted" if t else "spiral")
            for s, d, t in zip(spiral, double, twisted, strict=True)
        ],
        dtype=object,
    )
    return {
        "is_spiral": spiral,
        "is_double": double,
        "is_twisted": twisted,
        "label": label,
        "double_arms": spiral & arms,
        "double_out_in": spiral & out_in,
    }


def measure_window(
    theta, params: SpiralParams = SpiralParams(), *, key: int = 0, pair=None
) -> dict[str, object]:
    """Measure and classify one window ``theta`` (n_steps, n_params); one value per quantity."""
    arr = np.asarray(theta)
    if arr.ndim != 2:
        raise GeomtrajError(f"theta has shape {arr.shape}; expected (n_steps, n_params)")
    res = measure_windows(arr[None], params, keys=[key], pair=pair)
    return {name: (v[0].item() if hasattr(v[0], "item") else v[0]) for name, v in res.items()}


# -- windows of a run ----------------------------------------------------------------------------
@dataclass(frozen=True)
class WindowParams:
    """How windows are cut from a run, with their defaults.

    Attributes
    ----------
    burst_margin : int
        Steps added before a burst's onset and after its end (default 21, one moving-average
        width): the flip grows from the noise floor before the onset (where the smoothed log
        update norm has made 10% of its rise, :mod:`geomtraj.analysis.events`), and its tail
        decays after. Margins stop one step short of the neighbouring bursts, so where bursts
        are dense a window spans its burst alone.
    max_steps : int
        Longest analysed span of a burst window (default 1000 steps, centred on the burst's peak):
        a burst of a run whose spikes are rare can last thousands of steps (its slow decay, or
        merged bursts with ``method="threshold"``), and a spiral is a local shape.
    sliding_steps : int
        Length of the analysed span of a sliding window (default 200 steps: a burst of Adam with
        beta1 = 0.9 and its decay, or the same length of quiet training).
    stride : int or None
        Steps between the starts of successive sliding windows (default ``sliding_steps``, windows
        that do not overlap, so counts are of independent stretches).
    max_windows : int or None
        ``None`` (default) analyses every window of a run. ``N`` analyses at most ``N`` windows
        per run (burst or sliding), evenly spaced over the run's windows in time order: indices
        ``unique(round(linspace(0, n - 1, N)))`` of the ``n`` windows, so the first and (for
        ``N >= 2``) the last are kept. The subset is chosen before any measurement, so the cost
        of a run scales with ``N``; each kept window is measured exactly as in the full analysis
        (its surrogates are seeded by its run and first step), and the run's counts are of the
        analysed windows, with ``n_windows_total`` counting them all: a spiral prevalence
        estimated from a subsample of each long run (hundreds of bursts).
    """

    burst_margin: int = 21
    max_steps: int = 1000
    sliding_steps: int = 200
    stride: int | None = None
    max_windows: int | None = None

    def __post_init__(self) -> None:
        if self.burst_margin < 0 or self.max_steps < 8 or self.sliding_steps < 8:
            raise GeomtrajError(
                f"burst_margin={self.burst_margin}, max_steps={self.max_steps}, "
                f"sliding_steps={self.sliding_steps}; expected a margin >= 0 and spans >= 8 steps"
            )
        if self.stride is not None and self.stride < 1:
            raise GeomtrajError(f"stride={self.stride}; expected >= 1 step (or None)")
        if self.max_windows is not None and (
            isinstance(self.max_windows, bool)
            or not isinstance(self.max_windows, int | np.integer)
            or self.max_windows < 1
        ):
            raise GeomtrajError(
                f"max_windows={self.max_windows!r}; expected None (every window) or an integer "
                ">= 1 (windows analysed per run)"
            )

    def subsample(self, n_windows: int) -> np.ndarray:
        """Indices of the windows analysed among a run's ``n_windows`` (see ``max_windows``)."""
        if self.max_windows is None or n_windows <= self.max_windows:
            return np.arange(n_windows)
        return np.unique(np.round(np.linspace(0, n_windows - 1, self.max_windows)).astype(int))


def burst_spans(
    onset: np.ndarray,
    peak: np.ndarray,
    end: np.ndarray,
    first: int,
    last: int,
    params: SpiralParams = SpiralParams(),
    windows: WindowParams = WindowParams(),
) -> np.ndarray:
    """Analysed spans ``(start, end)`` (steps, inclusive) around bursts.

    Each burst's span runs from ``onset - burst_margin`` to ``end + burst_margin``, the margins
    stopping short of the neighbouring bursts and of the recorded steps ``first..last`` minus the
    moving average's half-width. Spans shorter than ``params.min_steps`` are widened around the
    peak; spans longer than ``windows.max_steps`` are cut around it.
    """
    h = params.half
    lo_lim, hi_lim = first + h, last - h
    spans = []
    for i in range(len(onset)):
        prev_end = end[i - 1] if i > 0 else lo_lim - 1
        next_on = onset[i + 1] if i + 1 < len(onset) else hi_lim + 1
        a = max(onset[i] - windows.burst_margin, prev_end + 1, lo_lim)
        b = min(end[i] + windows.burst_margin, next_on - 1, hi_lim)
        a, b = min(a, onset[i]), max(b, end[i])
        length = b - a + 1
        if length < params.min_steps:
            a = peak[i] - params.min_steps // 2
            b = a + params.min_steps - 1
        elif length > windows.max_steps:
            a = peak[i] - windows.max_steps // 2
            b = a + windows.max_steps - 1
        a, b = max(a, lo_lim), min(b, hi_lim)
        if b - a + 1 >= params.min_steps:
            spans.append((a, b))
    return np.array(spans, dtype=np.int64).reshape(-1, 2)


def sliding_spans(
    first: int,
    last: int,
    params: SpiralParams = SpiralParams(),
    windows: WindowParams = WindowParams(),
) -> np.ndarray:
    """Analysed spans ``(start, end)`` (steps, inclusive) of sliding windows in ``first..last``."""
    h = params.half
    length = windows.sliding_steps
    stride = windows.stride or length
    starts = np.arange(first + h, last - h - length + 2, stride, dtype=np.int64)
    return np.stack([starts, starts + length - 1], axis=1).reshape(-1, 2)


def _burst_overlap(spans: np.ndarray, onset, end, margin: int) -> tuple[np.ndarray, np.ndarray]:
    """Share of each span's steps inside a burst, and whether it is quiet (no burst within
    ``margin`` steps)."""
    # one (span, burst) table instead of a Python double loop; integer steps, so exact
    a, b = (np.asarray(spans, dtype=np.int64).reshape(-1, 2)[:, c, None] for c in (0, 1))
    o = np.asarray(onset, dtype=np.int64)[None, :]
    e = np.asarray(end, dtype=np.int64)[None, :]
    inside = np.maximum(0, np.minimum(b, e) - np.maximum(a, o) + 1).sum(axis=1)
    overlap = inside / (b[:, 0] - a[:, 0] + 1)
    quiet = ~np.any((o - margin <= b) & (e + margin >= a), axis=1)
    return overlap, quiet


#: Per-window columns of :func:`analyze`'s result (``(run, window)`` variables) besides the
#: measured :data:`QUANTITIES`.
WINDOW_COLUMNS = ("start", "end", "burst_overlap", "quiet")


def analyze_run(
    run,
    params: SpiralParams = SpiralParams(),
    windows: str = "bursts",
    window_params: WindowParams = WindowParams(),
    burst_params=None,
    signal: str = "update_norm",
    pair: tuple[str, str] | None = None,
) -> dict:
    """Spiral windows of one run (:class:`~geomtraj.analysis.base.RunData`).

    Returns ``{"table": {column: array}, "n_windows", "n_windows_total", "n_spirals",
    "n_double", "n_twisted", "n_windows_quiet", "n_spirals_quiet", "n_windows_burst",
    "n_spirals_burst", "run_pair_x", "run_pair_y", "note"}``. Counts are None when the run cannot
    be measured (``note`` says why). Window steps (``start``, ``end``, ``active_start``, ``peak``,
    ``active_end``) are optimizer steps; ``pair_x``/``pair_y`` hold parameter names.

    With ``window_params.max_windows``, only an evenly spaced subset of the run's windows is
    measured (:meth:`WindowParams.subsample`); every count but ``n_windows_total`` (all windows
    cut from the run) is of the analysed windows, and so is the run's raw pair.
    """
    from geomtraj.analysis.events import BurstParams, run_bursts

    out = {"table": {}, "run_pair_x": "", "run_pair_y": "", "note": ""}
    counts = (
        "n_windows",
        "n_windows_total",
        "n_spirals",
        "n_double",
        "n_twisted",
        "n_windows_quiet",
        "n_spirals_quiet",
        "n_windows_burst",
        "n_spirals_burst",
    )
    out.update(dict.fromkeys(counts))
    step = run.step
    if run.record_every != 1:
        out["note"] = (
            f"theta is recorded every {run.record_every} steps; spirals need every step "
            "(record_every = 1) to see the period-2 flip"
        )
        return out
    names = run.param_names
    if len(names) < 2:
        out["note"] = f"{len(names)} recorded parameter(s); a plane needs at least 2"
        return out
    if step.size < params.min_steps + 2 * params.half:
        out["note"] = f"only {step.size} finite recorded steps; too few for one window"
        return out
    bursts = run_bursts(run, signal, burst_params or BurstParams())
    first, last = int(step[0]), int(step[-1])
    if windows == "bursts":
        spans = burst_spans(
            bursts.onset, bursts.peak, bursts.end, first, last, params, window_params
        )
    elif windows == "sliding":
        spans = sliding_spans(first, last, params, window_params)
    else:
        raise GeomtrajError(f"windows={windows!r}; expected 'bursts' or 'sliding'")
    n_total = len(spans)
    # subsample before any measurement, so the cost scales with max_windows
    spans = spans[window_params.subsample(n_total)]
    if pair is not None:
        missing = [p for p in pair if p not in names]
        if missing or len(pair) != 2 or pair[0] == pair[1]:
            raise GeomtrajError(
                f"pair={tuple(pair)}; expected two different recorded parameter names of run "
                f"{run.run} (recorded: {', '.join(names[:6])}{', ...' if len(names) > 6 else ''})"
            )
        pair_cols = (names.index(pair[0]), names.index(pair[1]))
    else:
        pair_cols = None
    overlap, quiet = _burst_overlap(spans, bursts.onset, bursts.end, window_params.burst_margin)
    theta = run.theta
    h = params.half
    table: dict[str, list] = {c: [] for c in (*WINDOW_COLUMNS, *QUANTITIES)}
    energy = np.zeros(theta.shape[1])
    # windows of equal length are measured together (sliding windows all are)
    rows = np.searchsorted(step, spans)
    lengths = rows[:, 1] - rows[:, 0] + 1
    results = [None] * len(spans)
    for length in np.unique(lengths):
        idx = np.flatnonzero(lengths == length)
        stack = np.stack([theta[rows[k, 0] - h : rows[k, 1] + h + 1] for k in idx])
        keys = np.stack([np.full(idx.size, run.run), spans[idx, 0]], axis=1)
        res = measure_windows(stack, params, keys=keys, pair=pair_cols)
        for j, k in enumerate(idx):
            results[k] = {name: v[j] for name, v in res.items()}
        r = residual(stack, params.smooth_steps)
        energy += np.einsum("wtp,wtp->p", r, r)
    for k, res in enumerate(results):
        table["start"].append(int(spans[k, 0]))
        table["end"].append(int(spans[k, 1]))
        table["burst_overlap"].append(float(overlap[k]))
        table["quiet"].append(bool(quiet[k]))
        for name in QUANTITIES:
            v = res[name]
            if name in ("active_start", "peak", "active_end"):
                v = v - h + spans[k, 0] if np.isfinite(v) else v  # window rows -> steps
            elif name in ("pair_x", "pair_y"):
                v = names[int(v)]
            table[name].append(v)
    out["table"] = table
    spiral = np.array(table["is_spiral"], dtype=bool)
    q = np.array(table["quiet"], dtype=bool)
    inburst = np.array(table["burst_overlap"]) > 0
    out.update(
        n_windows=len(spans),
        n_windows_total=n_total,
        n_spirals=int(spiral.sum()),
        n_double=int(np.sum(table["is_double"])),
        n_twisted=int(np.sum(table["is_twisted"])),
        n_windows_quiet=int(q.sum()),
        n_spirals_quiet=int((spiral & q).sum()),
        n_windows_burst=int(inburst.sum()),
        n_spirals_burst=int((spiral & inburst).sum()),
    )
    # the run's raw pair: the named one, or the two parameters with the largest burst amplitude
    # (residual energy summed over the run's windows)
    if pair is not None:
        out["run_pair_x"], out["run_pair_y"] = pair
    elif len(spans):
        top = np.argsort(-energy, kind="stable")[:2]
        out["run_pair_x"], out["run_pair_y"] = names[top[0]], names[top[1]]
    if not len(spans):
        out["note"] = f"no {'bursts' if windows == 'bursts' else 'windows'} to analyse"
    return out


#: Per-run variables of :func:`analyze`'s result, with their meaning.
RUN_VARIABLES = {
    "n_windows": "windows analysed",
    "n_windows_total": "windows cut from the run, before subsampling (WindowParams.max_windows)",
    "n_spirals": "windows classified spiral (any label but noise)",
    "n_double": "spirals whose even and odd steps each wind, in counter-phase, or whose outward "
    "arm is followed by an inward arm of the same sense",
    "n_twisted": "spirals whose best-fit plane turns",
    "n_windows_quiet": "windows with no burst within burst_margin steps",
    "n_spirals_quiet": "spirals among the quiet windows",
    "n_windows_burst": "windows that overlap a burst",
    "n_spirals_burst": "spirals among the windows that overlap a burst",
}


def analyze(
    ds,
    runs=None,
    *,
    progress=None,
    windows: str = "bursts",
    params: SpiralParams = SpiralParams(),
    window_params: WindowParams = WindowParams(),
    burst_params=None,
    signal: str = "update_norm",
    pair: tuple[str, str] | None = None,
):
    """Spirals of the runs ``runs`` (all by default) of a store, as a Dataset over ``run``.

    Parameters
    ----------
    ds : xarray.Dataset
        A store opened with :func:`geomtraj.store.open_store`.
    runs : sequence of int, optional
        Run indices (default: all).
    progress : callable, optional
        Called with 1 after each run.
    windows : {"bursts", "sliding"}
        Burst windows (bursts of ``signal`` from :func:`geomtraj.analysis.events.run_bursts`, with
        margins) or sliding windows over the whole run (to compare quiet and burst stretches).
    params, window_params : SpiralParams, WindowParams
        Detector thresholds and window cutting.
    burst_params : BurstParams, optional
        Burst detection thresholds (default ``BurstParams()``).
    signal : str
        Per-step signal for burst detection (``"update_norm"`` or ``"train_loss"``).
    pair : (str, str), optional
        Names of the raw parameter pair to record and draw; default per window the two parameters
        with the largest burst amplitude (residual RMS), per run the two with the largest residual
        energy over all its windows.

    Returns
    -------
    xarray.Dataset
        Per run (dim ``run``): the counts of :data:`RUN_VARIABLES`, ``run_pair_x``/``run_pair_y``
        (the run's raw pair) and ``note``. Per window (dims ``(run, window)``, padded beyond each
        run's ``n_windows``): :data:`WINDOW_COLUMNS` and :data:`QUANTITIES`. Blocks of runs
        concatenate with ``xarray.concat(blocks, dim="run", join="outer")`` (their ``window``
        lengths differ; :func:`concat` does this), and :func:`windows_table` turns any result
        into one row per window.
    """
    import xarray as xr

    from geomtraj.analysis.base import iter_runs

    rows = []
    for run in iter_runs(ds, runs):
        row = analyze_run(run, params, windows, window_params, burst_params, signal, pair)
        row["run"] = run.run
        rows.append(row)
        if progress is not None:
            progress(1)
    run_index = np.array([r["run"] for r in rows], dtype=np.int64)
    n_max = max((len(r["table"].get("start", [])) for r in rows), default=0)
    data = {}
    for key in RUN_VARIABLES:
        vals = [r[key] for r in rows]
        if all(v is not None for v in vals):
            data[key] = ("run", np.array(vals, dtype=np.int64))
        else:
            # a run that could not be measured has None: NaN, and the column becomes float
            data[key] = ("run", np.array([np.nan if v is None else v for v in vals], float))
    for key in ("run_pair_x", "run_pair_y", "note"):
        data[key] = ("run", np.array([r[key] for r in rows], dtype=object))
    for col in (*WINDOW_COLUMNS, *QUANTITIES):
        sample = next((r["table"][col][0] for r in rows if r["table"].get(col)), 0.0)
        if isinstance(sample, str):
            arr = np.full((len(rows), n_max), "", dtype=object)
        elif isinstance(sample, (bool, np.bool_)):
            arr = np.zeros((len(rows), n_max), dtype=bool)
        else:
            arr = np.full((len(rows), n_max), np.nan)
        for i, r in enumerate(rows):
            vals = r["table"].get(col, [])
            arr[i, : len(vals)] = vals
        data[col] = (("run", "window"), arr)
    out = xr.Dataset(data, coords={"run": run_index, "window": np.arange(n_max)})
    for key, doc in RUN_VARIABLES.items():
        out[key].attrs["description"] = doc
    out.attrs["analysis"] = "spirals"
    out.attrs["windows"] = windows
    out.attrs["params"] = json.dumps(dataclasses.asdict(params))
    out.attrs["window_params"] = json.dumps(dataclasses.asdict(window_params))
    return out


def concat(blocks):
    """Concatenate results of disjoint blocks of runs (their ``window`` lengths may differ)."""
    import xarray as xr

    return xr.concat(list(blocks), dim="run", join="outer")


def windows_table(result):
    """One row per analysed window of a result (concatenated or not), as a pandas DataFrame.

    Columns: ``run``, ``window``, :data:`WINDOW_COLUMNS` and :data:`QUANTITIES`, with integer,
    boolean and string columns restored after padding.
    """
    import pandas as pd

    frames = []
    for i, run in enumerate(result["run"].values):
        n = result["n_windows"].values[i]
        n = int(n) if np.isfinite(n) else 0
        if n == 0:
            continue
        cols = {"run": np.full(n, int(run)), "window": np.arange(n)}
        for col in (*WINDOW_COLUMNS, *QUANTITIES):
            cols[col] = result[col].values[i, :n]
        frames.append(pd.DataFrame(cols))
    columns = ["run", "window", *WINDOW_COLUMNS, *QUANTITIES]
    if not frames:
        return pd.DataFrame(columns=columns)
    df = pd.concat(frames, ignore_index=True)
    for col in ("start", "end", "n_steps"):
        df[col] = df[col].astype(np.int64)
    for col in (
        "quiet",
        "demodulated",
        "is_spiral",
        "is_double",
        "is_twisted",
        "double_arms",
        "double_out_in",
    ):
        df[col] = df[col].astype(bool)
    for col in ("pair_x", "pair_y", "label"):
        df[col] = df[col].astype(str)
    return df[columns]


def _json_value(v):
    if isinstance(v, np.ndarray):
        v = v.item()
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v) if np.isfinite(v) else None
    return str(v)


def report(result) -> dict:
    """Contract-4 fields: per run ``spirals`` counts, and ``spiral_windows``.

    ``runs[i]["spirals"]`` holds ``n_windows``, ``n_spirals``, ``n_double``, ``n_twisted``, the
    run's raw ``pair``, and for sliding windows the split ``quiet``/``burst`` (windows, spirals);
    counts are None with a ``note`` when the run could not be measured. When the windows were
    subsampled (``WindowParams.max_windows`` set), every run also holds ``n_windows_total``, the
    number of windows before subsampling, and the counts are of the analysed windows.
    ``spiral_windows`` lists every window classified as a spiral, with every measured quantity
    (the full table of all windows is :func:`windows_table`).
    """
    window_params = json.loads(result.attrs.get("window_params") or "{}")
    subsampled = window_params.get("max_windows") is not None and "n_windows_total" in result
    runs = {}
    for i, run in enumerate(result["run"].values):
        r = result.isel(run=i)
        entry = {}
        for key in ("n_windows", "n_spirals", "n_double", "n_twisted"):
            entry[key] = _json_value(r[key].values)
        if subsampled:
            entry["n_windows_total"] = _json_value(r["n_windows_total"].values)
        entry["pair"] = [str(r["run_pair_x"].values), str(r["run_pair_y"].values)]
        if result.attrs.get("windows") == "sliding":
            entry["quiet"] = {
                "n_windows": _json_value(r["n_windows_quiet"].values),
                "n_spirals": _json_value(r["n_spirals_quiet"].values),
            }
            entry["burst"] = {
                "n_windows": _json_value(r["n_windows_burst"].values),
                "n_spirals": _json_value(r["n_spirals_burst"].values),
            }
        note = str(r["note"].values)
        if note and note != "nan":
            entry["note"] = note
        runs[int(run)] = {"spirals": entry}
    table = windows_table(result)
    rows = [
        {k: _json_value(v) for k, v in row.items()}
        for row in table[table["is_spiral"]].to_dict(orient="records")
    ]
    return {"runs": runs, "spiral_windows": rows}


# -- figures -------------------------------------------------------------------------------------
def _result_params(result) -> SpiralParams:
    raw = result.attrs.get("params")
    return SpiralParams(**json.loads(raw)) if raw else SpiralParams()


def window_geometry(theta, params: SpiralParams = SpiralParams()) -> dict[str, np.ndarray]:
    """The planes a window is drawn in: ``w`` (flip frame, or raw when not demodulated), ``z``
    (raw frame, ``(-1)^t w`` when demodulated) as (m, 2) arrays, ``theta`` rows of the analysed
    span (m, p), and ``demodulated``."""
    arr = _as_batch(theta)
    h = params.half
    m = arr.shape[1] - 2 * h
    resid = np.empty((1, m, arr.shape[2]))
    flip = np.empty(1)
    demod = np.empty(1, dtype=bool)
    _residuals(arr, h, resid, flip, demod)
    w = principal_plane(resid)[0][0]
    sign = np.where(np.arange(m) % 2 == 0, 1.0, -1.0)[:, None]
    z = w * sign if demod[0] else w
    return {"w": w, "z": z, "theta": arr[0, h : h + m], "demodulated": bool(demod[0])}


def _window_rows(run, start: int, end: int, h: int) -> np.ndarray:
    lo = int(np.searchsorted(run.step, start)) - h
    hi = int(np.searchsorted(run.step, end)) + h + 1
    return run.theta[max(lo, 0) : hi]


def _chosen_windows(table, max_windows: int):
    """Per run, the spirals with the most coherent turns, else the most coherent windows."""
    picks = {}
    for run, sub in table.groupby("run"):
        spirals = sub[sub["is_spiral"]]
        pool = spirals if len(spirals) else sub
        key = "winding_score" if len(spirals) else "coherence"
        order = np.argsort(-np.abs(pool[key].to_numpy()), kind="stable")
        picks[int(run)] = pool.iloc[order[:max_windows]]
    return picks


def _why_chosen(row, n_spirals: int) -> str:
    """Why a window was drawn, in words (the rule of :func:`_chosen_windows`)."""
    if bool(row["is_spiral"]):
        return f"its most coherent spiral (winding score {row['winding_score']:.2f})"
    if n_spirals:
        return f"a coherent window (coherence {row['coherence']:.2f})"
    return f"no spiral in this run: its most coherent window (coherence {row['coherence']:.2f})"


def _p_text(p_value) -> str:
    """The surrogate p-value for a caption; windows that cannot be spirals are not tested."""
    return f"p {p_value:.2f}" if np.isfinite(p_value) else "no surrogate test (cannot be a spiral)"


def _spiral_panels(axes, run, row, params, pair, steps_label: bool = True):
    """Raw path in the raw pair (``axes[0]``) and the flip's two arms in the principal plane
    (``axes[1]``) of one window; returns the window's geometry and steps."""
    from geomtraj.analysis.panels import flip_arms, raw_path

    h = params.half
    theta = _window_rows(run, int(row["start"]), int(row["end"]), h)
    geo = window_geometry(theta, params)
    steps = np.arange(int(row["start"]), int(row["start"]) + geo["w"].shape[0])
    px, py = pair or (row["pair_x"], row["pair_y"])
    i, j = run.param_names.index(px), run.param_names.index(py)
    raw_path(axes[0], geo["theta"][:, i], geo["theta"][:, j], steps, f"raw path: {px} vs {py}")
    # units of each axis's RMS, as in the flip-frame panel: PC1 often dwarfs PC2
    z = geo["z"] / np.maximum(np.sqrt(np.mean(geo["z"] ** 2, axis=0)), 1e-300)
    arms = flip_arms(axes[1], z[:, 0], z[:, 1], steps, "even and odd arms, top-2 PCs (RMS units)")
    axes[1].legend(fontsize=7, loc="best")
    if steps_label:
        for ax, (xl, yl) in zip(axes, ((px, py), ("PC1", "PC2")), strict=True):
            ax.set_xlabel(xl, fontsize=7)
            ax.set_ylabel(yl, fontsize=7)
    return geo, steps, arms


def figures(
    ds,
    result,
    outdir,
    *,
    max_runs: int = 6,
    max_windows: int = 2,
    max_gallery: int = 8,
    pair: tuple[str, str] | None = None,
) -> list[Path]:
    """Draw the spiral figures of a result into ``outdir``; returns the paths written.

    Runs are chosen by their number of spiral windows (most first, ties by run index), windows
    within a run by :func:`_chosen_windows` (its spirals with the most coherent turns, else its
    most coherent windows); every title says which rule picked it. For each of up to ``max_runs``
    runs and ``max_windows`` windows, ``spiral_run{r}_w{k}.png`` shows four views of one window:
    the raw path in the raw parameter pair the paper draws (the run's pair, or ``pair``), where
    the period-2 flip makes consecutive steps zigzag; the two arms of the flip, the even-step and
    the odd-step sub-sequences of the raw frame ``z`` each joined in time order in the top
    principal plane and coloured by step (a double spiral is two interleaved arms turning
    steadily); the flip frame ``w = (-1)^t z``, which merges the arms into one curve; and a 3-D
    view of ``w`` against the step. ``spirals_gallery.png`` shows the raw path and the arms of the
    best window of each of up to ``max_gallery`` runs, and ``spirals_counts.png`` the counts per
    run. Figures are bounded in number and size whatever the number of runs.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from geomtraj.analysis.base import RunData

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    params = _result_params(result)
    table = windows_table(result)
    paths: list[Path] = []
    if table.empty:
        return paths
    counts = table.groupby("run")["is_spiral"].sum().sort_values(ascending=False, kind="stable")
    runs = [int(r) for r in counts.index[:max_runs]]
    gallery_runs = [int(r) for r in counts.index[:max_gallery]]
    picks = _chosen_windows(table[table["run"].isin(set(runs) | set(gallery_runs))], max_windows)
    rank = {r: k + 1 for k, r in enumerate(int(r) for r in counts.index)}

    for run_index in runs:
        run = RunData(ds, run_index)
        n_spirals = int(counts[run_index])
        for k, (_, row) in enumerate(picks[run_index].iterrows()):
            fig = plt.figure(figsize=(17, 4.4))
            panels = [fig.add_subplot(1, 4, 1), fig.add_subplot(1, 4, 2)]
            geo, steps, arms = _spiral_panels(panels, run, row, params, pair)
            fig.colorbar(arms, ax=panels[1], label="step")
            ax = fig.add_subplot(1, 4, 3)
            # each axis in units of its own RMS: PC1 often carries most of the energy, and a
            # linear rescaling keeps the winding number
            w = geo["w"] / np.maximum(np.sqrt(np.mean(geo["w"] ** 2, axis=0)), 1e-300)
            ax.plot(w[:, 0], w[:, 1], color="0.7", lw=0.5)
            ax.scatter(w[:, 0], w[:, 1], c=steps, s=8, cmap="viridis")
            frame = "flip frame w = (-1)^t z" if geo["demodulated"] else "w = z (no flip)"
            ax.set_title(f"{frame}: PC1 vs PC2 (units of RMS)", fontsize=9)
            ax.tick_params(labelsize=7)
            ax3 = fig.add_subplot(1, 4, 4, projection="3d")
            ax3.plot(w[:, 0], w[:, 1], steps, color="0.6", lw=0.5)
            ax3.scatter(w[:, 0], w[:, 1], steps, c=steps, s=5, cmap="viridis")
            ax3.set_xlabel("PC1", fontsize=7)
            ax3.set_ylabel("PC2", fontsize=7)
            ax3.set_zlabel("step", fontsize=7)
            ax3.tick_params(labelsize=6)
            hyper = run.hyper
            fig.suptitle(
                f"run {run_index} ({hyper['precision']}, beta2={hyper['beta2']}; {n_spirals} "
                f"spiral windows, rank {rank[run_index]} of {len(rank)} runs), steps "
                f"{int(row['start'])}-{int(row['end'])}, {_why_chosen(row, n_spirals)}: "
                f"{row['label']}; winding {row['winding']:.2f}, coherence "
                f"{row['coherence']:.2f}, {_p_text(row['p_value'])}, plane turn "
                f"{row['plane_turn']:.0f} deg, twist rate {row['twist_rate']:.3f} rad/step",
                fontsize=9,
            )
            fig.tight_layout()
            path = outdir / f"spiral_run{run_index}_w{k}.png"
            fig.savefig(path, dpi=90)
            plt.close(fig)
            paths.append(path)

    # gallery: the best window of each of the runs with the most spirals, raw path beside arms
    ncol = min(2, len(gallery_runs))
    nrow = -(-len(gallery_runs) // ncol)
    fig, axes = plt.subplots(nrow, 2 * ncol, figsize=(7.0 * ncol, 3.4 * nrow), squeeze=False)
    for ax in axes.flat:
        ax.set_visible(False)
    for k, run_index in enumerate(gallery_runs):
        pair_axes = axes[k // ncol, 2 * (k % ncol) : 2 * (k % ncol) + 2]
        for ax in pair_axes:
            ax.set_visible(True)
        row = picks[run_index].iloc[0]
        run = RunData(ds, run_index)
        n_spirals = int(counts[run_index])
        _spiral_panels(pair_axes, run, row, params, pair, steps_label=False)
        r = result.sel(run=run_index)
        pair_axes[0].set_title(
            f"run {run_index} {run.hyper['precision']} b2={run.hyper['beta2']}: "
            f"{n_spirals}/{int(r['n_windows'])} spirals\nraw path, steps "
            f"{int(row['start'])}-{int(row['end'])}",
            fontsize=8,
        )
        pair_axes[1].set_title(f"arms: {row['label']}\n{_why_chosen(row, n_spirals)}", fontsize=8)
    fig.suptitle(
        f"best window of the {len(gallery_runs)} runs with the most spiral windows (of "
        f"{len(rank)}); colour: step",
        fontsize=10,
    )
    fig.tight_layout()
    path = outdir / "spirals_gallery.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    paths.append(path)

    # counts per run: a histogram beyond a readable number of bars
    n_runs = int(result.sizes["run"])
    if n_runs <= 40:
        fig, ax = plt.subplots(figsize=(max(5.0, 0.5 * n_runs + 2), 3.5))
        x = np.arange(n_runs)
        for off, key in enumerate(("n_windows", "n_spirals", "n_double", "n_twisted")):
            vals = np.nan_to_num(result[key].values.astype(float))
            ax.bar(x + 0.2 * off - 0.3, vals, 0.2, label=key)
        ax.set_xticks(x, [str(int(r)) for r in result["run"].values], fontsize=7)
        ax.set_xlabel("run")
    else:
        fig, ax = plt.subplots(figsize=(7.0, 3.5))
        for key in ("n_spirals", "n_double", "n_twisted"):
            vals = np.nan_to_num(result[key].values.astype(float))
            ax.hist(vals, bins=min(30, int(vals.max()) + 1), histtype="step", label=key)
        ax.set_xlabel("windows per run")
        ax.set_ylabel("runs")
    ax.legend(fontsize=7)
    ax.set_title(f"spiral windows per run ({result.attrs.get('windows', 'bursts')} windows)")
    fig.tight_layout()
    path = outdir / "spirals_counts.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    paths.append(path)
    return paths


def write_table(result, path) -> Path:
    """Write :func:`windows_table` of a result as CSV (``spirals.csv``); returns the path."""
    path = Path(path)
    windows_table(result).to_csv(path, index=False)
    return path


# -------------------------------------------------------------------------------- declaration


def _run_defaults(entry) -> dict:
    counts = ("n_windows", "n_spirals", "n_double", "n_twisted")
    return {"spirals": {**dict.fromkeys(counts), "note": None}}


def _caption_window(doc, m) -> str:
    n_spirals = (run_entry(doc, int(m.group(1))).get("spirals") or {}).get("n_spirals", "?")
    return (
        f"{describe_run(doc, int(m.group(1)))}, window {m.group(2)}: chosen because the run has "
        f"among the most spiral windows ({n_spirals}), and the window is its most coherent "
        "spiral (its title says so, or that the run has none). Left, the raw path zigzags: "
        "the period-2 flip puts consecutive steps on opposite sides of the centre. Second, "
        "the flip's two arms (even and odd steps, each joined in time order, coloured by "
        "step): a double spiral is two mirror-image arms turning steadily around the centre; "
        "arms that jump about without turning are not a spiral."
    )


ANALYSIS = Analysis(
    name="spirals",
    analyze=analyze,
    report=report,
    draw=figures,
    params=SpiralParams,
    summary="spiral windows of the parameter path in its flip frame, against surrogate nulls",
    needs=Needs(
        variables=("theta", "update_norm"),
        without="windows are placed on bursts of the update norm, derived from consecutive rows "
        "where the store lacks it",
    ),
    fields=(
        Field("spirals.n_windows", "count", "windows analysed", "count", required=True),
        Field("spirals.n_windows_total", "count", "windows before subsampling", "count"),
        Field("spirals.n_spirals", "count", "windows whose flip-frame path is a spiral", "count",
              required=True),
        Field("spirals.n_double", "count",
              "spirals with two arms (interleaved even/odd arms, or outward then inward)",
              "count", required=True),
        Field("spirals.n_twisted", "count",
              "spirals whose best-fit plane turns by at least 20 degrees between halves", "count",
              required=True),
        Field("spiral_windows", "", "every window classified as a spiral, with its quantities",
              "table", place="report"),
    ),
    columns=(
        Column("spirals", "spirals.n_spirals"),
        Column("double", "spirals.n_double"),
        Column("twisted", "spirals.n_twisted"),
    ),
    figures=(
        Figure(r"spiral_run(\d+)_w(\d+)", _caption_window),
        Figure(
            "spirals_gallery",
            "The best window of each of the runs with the most spiral windows: raw path, then the "
            "flip's even and odd arms coloured by step. Compare the arms across runs: steady "
            "turning around a centre is a spiral; the raw path's zigzag alone is the flip, not a "
            "spiral.",
        ),
        Figure("spirals_counts",
               "Spiral, double and twisted windows per run, out of the windows analysed."),
    ),
    sections=("spiral_windows",),
    run_defaults=_run_defaults,
)  # fmt: skip
