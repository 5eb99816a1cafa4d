"""Quick-look figures of one run (``geomtraj plot``) and the report's overview figure.

These are looks at the raw data, not measurements: the analyses draw their own figures. Every
figure reads one run through :class:`~geomtraj.analysis.base.RunData` (memory bounded by one run)
and is drawn with matplotlib's Agg backend, imported inside the functions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from geomtraj.analysis.base import RunData
from geomtraj.analysis.panels import flip_arms, raw_path
from geomtraj.errors import GeomtrajError
from geomtraj.formats import FORMATS


@dataclass(frozen=True)
class PlotParams:
    """Choices of the quick-look figures.

    Attributes
    ----------
    spiral_window : int
        Recorded rows shown by the ``spiral`` look when no step range is given (the last ones).
        2000 covers a few slow periods of the demo grid (1/(1-beta2) up to 1000).
    spiral_smooth : int
        Width, in recorded rows, of the moving average removed from theta before the ``spiral``
        projection (docs/science.md, Spiral: "residual of theta from its local moving average").
        16 is several flip periods (2 steps) yet short against a slow period.
    welch_segments : int
        Welch segments of the ``spectrum`` look: 8 halves the variance relative to 2 while keeping
        periods up to n/8 steps resolved.
    max_params : int
        Recorded parameters drawn by the ``theta``/``moments`` looks (more make an unreadable
        figure).
    """

    spiral_window: int = 2000
    spiral_smooth: int = 16
    welch_segments: int = 8
    max_params: int = 8


def _figure(nrows: int = 1, ncols: int = 1, size=(8.0, 4.5)):
    # a bare Figure on the Agg canvas: pyplot's import and its figure manager cost about a third
    # of a quick look's time, and nothing here is shown on a screen
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return path


def _title(rd: RunData, what: str) -> str:
    h = rd.hyper
    return (
        f"run {rd.run}: {what} ({h['precision']}, {h['hidden']}, beta1={h['beta1']:g}, "
        f"beta2={h['beta2']:g}, lr={h['lr']:g})"
    )


def _need(n: int, minimum: int, rd: RunData, what: str) -> None:
    if n < minimum:
        raise GeomtrajError(
            f"run {rd.run} has {n} finite {what} in the selected steps, {minimum} needed for this "
            "figure; choose another run or a wider --steps range"
        )


def _loss(rd: RunData, ax, p: PlotParams) -> str:
    _need(rd.iteration.size, 1, rd, "updates")
    loss = rd.train_loss
    ax.plot(rd.iteration, np.where(loss > 0, loss, np.nan), lw=0.6)
    ax.set_yscale("log")
    ax.set_xlabel("update t")
    ax.set_ylabel("full-batch loss at theta_{t-1}")
    if rd.diverged_step is not None:
        ax.axvline(rd.diverged_step, color="r", ls="--", lw=0.8, label="diverged")
        ax.legend()
    return "loss"


def _series(name: str, label: str) -> Callable:
    def draw(rd: RunData, ax, p: PlotParams) -> str:
        _need(rd.iteration.size, 1, rd, "updates")
        if name not in rd.ds.variables:
            raise GeomtrajError(f"the store has no {name!r}; it was written by an older geomtraj")
        vals = np.asarray(rd.ds[name].isel(run=rd.run).values, dtype=np.float64)
        vals = vals[: rd.iteration.size]
        ax.plot(rd.iteration, np.where(vals > 0, vals, np.nan), lw=0.6)
        ax.set_yscale("log")
        ax.set_xlabel("update t")
        ax.set_ylabel(label)
        return name.replace("_", " ")

    return draw


def _theta(rd: RunData, ax, p: PlotParams) -> str:
    _need(rd.step.size, 1, rd, "recorded rows")
    k = min(p.max_params, rd.theta.shape[1])
    for j in range(k):
        ax.plot(rd.step, rd.theta[:, j], lw=0.6, label=rd.param_names[j])
    ax.set_xlabel("update t")
    ax.set_ylabel("theta")
    ax.legend(fontsize=7, ncol=2)
    return "recorded parameters"


def _spiral_rows(rd: RunData, p: PlotParams) -> slice:
    n = rd.step.size
    return slice(max(0, n - p.spiral_window), n)


def moving_average(x: np.ndarray, size: int) -> np.ndarray:
    """Centred moving average of ``x`` along axis 0, edges padded with the end rows.

    The same window as ``scipy.ndimage.uniform_filter1d(x, size, axis=0, mode="nearest")`` (rows
    ``i - size//2`` to ``i + (size-1)//2``), by a cumulative sum: importing ``scipy.ndimage`` took
    longer than the whole average does in a quick look.
    """
    x = np.asarray(x, dtype=np.float64)
    padded = np.pad(x, [(size // 2, size - 1 - size // 2)] + [(0, 0)] * (x.ndim - 1), mode="edge")
    csum = np.cumsum(padded, axis=0)
    csum = np.concatenate([np.zeros_like(csum[:1]), csum])
    return (csum[size:] - csum[:-size]) / size


def top_components(x: np.ndarray, k: int = 2) -> np.ndarray:
    """Projection of the rows of ``x`` on their top ``k`` principal components.

    ``sklearn.decomposition.PCA(k).fit_transform(x)``, signs included (each component's largest
    loading made positive, as scikit-learn's ``svd_flip`` does for PCA), by one SVD: importing
    scikit-learn cost 0.85 s of CPU, more than the rest of a spiral look.
    """
    centred = x - x.mean(axis=0)
    u, sv, vt = np.linalg.svd(centred, full_matrices=False)
    signs = np.sign(vt[np.arange(k), np.argmax(np.abs(vt[:k]), axis=1)])
    return u[:, :k] * (sv[:k] * np.where(signs == 0, 1.0, signs))


def _spiral(rd: RunData, axes, p: PlotParams) -> str:
    rows = _spiral_rows(rd, p)
    theta = rd.theta[rows]
    _need(theta.shape[0], max(3 * p.spiral_smooth, 8), rd, "recorded rows")
    if theta.shape[1] < 2:
        raise GeomtrajError(
            f"run {rd.run} records {theta.shape[1]} parameter(s); a spiral look needs 2 or more "
            "(train with record_params >= 2)"
        )
    resid = theta - moving_average(theta, p.spiral_smooth)
    z = top_components(resid, 2)
    # units of each axis's RMS: PC1 often dwarfs PC2, and a linear rescaling keeps the turns
    z = z / np.maximum(np.sqrt(np.mean(z**2, axis=0)), 1e-300)
    steps = rd.step[rows]
    raw_path(axes[0], z[:, 0], z[:, 1], steps, "raw path (consecutive updates joined)")
    arms = flip_arms(axes[1], z[:, 0], z[:, 1], steps, "even and odd arms of the period-2 flip")
    axes[1].legend(fontsize=7, loc="best")
    for ax in axes:
        ax.set_xlabel("PC1 (RMS units)")
        ax.set_ylabel("PC2 (RMS units)")
    axes[1].figure.colorbar(arms, ax=axes[1], label="update t")
    return f"theta residual on its top 2 PCs, updates {steps[0]}-{steps[-1]}"


def _moments(rd: RunData, axes, p: PlotParams) -> str:
    _need(rd.step.size, 1, rd, "recorded rows")
    k = min(p.max_params, rd.m.shape[1])
    for j in range(k):
        axes[0].plot(rd.step, rd.m[:, j], lw=0.6, label=rd.param_names[j])
        axes[1].plot(rd.step, np.where(rd.v[:, j] > 0, rd.v[:, j], np.nan), lw=0.6)
    axes[0].set_ylabel("m (raw)")
    axes[1].set_ylabel("v (raw)")
    axes[1].set_yscale("log")
    axes[1].set_xlabel("update t")
    axes[0].legend(fontsize=7, ncol=2)
    return "Adam moments"


def welch_density(x: np.ndarray, nperseg: int, noverlap: int) -> tuple[np.ndarray, np.ndarray]:
    """Welch's power spectral density of ``x`` (unit sampling rate): frequencies and PSD.

    ``scipy.signal.welch(x, fs=1, nperseg=nperseg, noverlap=noverlap, detrend="linear")``: a
    periodic Hann window, each segment's least-squares line removed, one-sided density scaling,
    mean over the segments. Written out with NumPy because importing ``scipy.signal`` took 0.7 s
    of CPU, half a quick look; a test compares the two.
    """
    step = nperseg - noverlap
    starts = np.arange(0, x.size - nperseg + 1, step)
    segs = np.stack([x[s : s + nperseg] for s in starts]).astype(np.float64)
    t = np.arange(nperseg, dtype=np.float64)
    design = np.column_stack([t, np.ones_like(t)])
    coef, *_ = np.linalg.lstsq(design, segs.T, rcond=None)
    segs = segs - (design @ coef).T
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * t / nperseg)
    spec = np.abs(np.fft.rfft(segs * window, axis=1)) ** 2 / np.sum(window**2)
    spec[:, 1 : (nperseg + 1) // 2] *= 2.0  # one-sided: every bin but 0 and Nyquist counts twice
    return np.fft.rfftfreq(nperseg), spec.mean(axis=0)


def _spectrum(rd: RunData, ax, p: PlotParams) -> str:
    loss = rd.train_loss
    _need(int(np.sum(loss > 0)), 16, rd, "positive losses")
    x = np.log(loss[loss > 0])
    nperseg = max(8, x.size // max(1, p.welch_segments // 2 + 1))
    nperseg = min(nperseg, x.size)
    # scipy clamps nperseg but not noverlap (scipy#25608): set both
    f, pxx = welch_density(x, nperseg, nperseg // 2)
    keep = f > 0
    ax.loglog(1.0 / f[keep], pxx[keep], lw=0.8)
    b1, b2 = rd.hyper["beta1"], rd.hyper["beta2"]
    for val, lab, col in ((1 / (1 - b2), "1/(1-beta2)", "C1"), (1 / (1 - b1), "1/(1-beta1)", "C2")):
        ax.axvline(val, color=col, ls="--", lw=0.8, label=f"{lab} = {val:g}")
    ax.set_xlabel("period (updates)")
    ax.set_ylabel("Welch PSD of log loss")
    ax.legend(fontsize=8)
    return "spectrum of log loss"


def _phase(rd: RunData, ax, p: PlotParams) -> str:
    _need(rd.step.size, 3, rd, "recorded rows")
    th = rd.theta[:, 0]
    vel = np.diff(th)
    pts = ax.scatter(th[1:] - th.mean(), vel, c=rd.step[1:], s=2, cmap="viridis")
    ax.set_xlabel(f"{rd.param_names[0]} - mean")
    ax.set_ylabel("velocity per recorded row")
    ax.figure.colorbar(pts, ax=ax, label="update t")
    return f"phase space of {rd.param_names[0]}"


#: ``kind -> (draw function, number of panels)``.
KINDS: dict[str, tuple[Callable, int]] = {
    "loss": (_loss, 1),
    "update": (_series("update_norm", "||theta_t - theta_{t-1}||"), 1),
    "grad": (_series("grad_norm", "||g_t||"), 1),
    "theta": (_theta, 1),
    "moments": (_moments, 2),
    "spiral": (_spiral, 2),
    "spectrum": (_spectrum, 1),
    "phase": (_phase, 1),
}


def plot_run(
    ds: xr.Dataset, run: int, kind: str, path: str | Path, params: PlotParams = PlotParams()
) -> Path:
    """Draw the quick look ``kind`` (one of :data:`KINDS`) of run ``run`` into ``path`` (PNG).

    Raises
    ------
    GeomtrajError
        For an unknown kind, a run out of range, or too little data for the figure.
    """
    if kind not in KINDS:
        raise GeomtrajError(f"unknown plot kind {kind!r}; choose from {', '.join(KINDS)}")
    n = int(ds.sizes["run"])
    if not 0 <= run < n:
        raise GeomtrajError(f"run {run} out of range; the store has runs 0..{n - 1}")
    draw, panels = KINDS[kind]
    rd = RunData(ds, run)
    if panels == 1:
        fig, axes = _figure()
        what = draw(rd, axes[0, 0], params)
    elif kind == "moments":
        fig, axes = _figure(2, 1, (8.0, 6.0))
        what = draw(rd, axes[:, 0], params)
    else:
        fig, axes = _figure(1, 2, (11.0, 4.8))
        what = draw(rd, axes[0], params)
    fig.suptitle(_title(rd, what), fontsize=10)
    return _save(fig, Path(path))


def overview_figure(
    runs: list[int], hyper: Mapping[int, Mapping], overview: Mapping[int, tuple], path: Path
) -> Path:
    """Loss curves of all analysed runs on one plot, coloured by beta2, dashed for float32."""
    from matplotlib import colormaps

    fig, axes = _figure(1, 1, (9.0, 4.8))
    ax = axes[0, 0]
    b2 = sorted({float(hyper[r]["beta2"]) for r in runs})
    cmap = colormaps["viridis"]
    styles = {f.name: f.line_style for f in FORMATS.values()}
    for r in runs:
        it, loss = overview[r]
        if len(it) == 0:
            continue
        h = hyper[r]
        c = cmap(b2.index(float(h["beta2"])) / max(1, len(b2) - 1))
        y = np.where(np.asarray(loss) > 0, loss, np.nan)
        ax.plot(it, y, lw=0.5, color=c, ls=styles.get(h["precision"], "-"), alpha=0.8)
    for k, v in enumerate(b2):
        ax.plot([], [], color=cmap(k / max(1, len(b2) - 1)), label=f"beta2={v:g}")
    for prec, ls in styles.items():
        if any(hyper[r]["precision"] == prec for r in runs):
            ax.plot([], [], color="0.3", ls=ls, label=prec)
    ax.set_yscale("log")
    ax.set_xlabel("update t")
    ax.set_ylabel("full-batch loss (strided sample)")
    ax.set_title(f"loss of the {len(runs)} analysed runs", fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)
