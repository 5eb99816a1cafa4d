"""Figure helpers shared by the analyses and the quick looks: small multiples (one panel per run,
several runs per PNG) and the two arms of a period-2 flip drawn beside the raw path."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

#: Log axes spanning more decades than this lose their minor ticks (:func:`thin_log_ticks`).
MINOR_TICK_DECADES = 4.0


def thin_log_ticks(fig, decades: float = MINOR_TICK_DECADES) -> None:
    """Drop the minor ticks of every log axis of ``fig`` that spans more than ``decades``.

    They are unlabelled and, over many decades, a dense comb; yet matplotlib builds a tick
    object for each, twice (layout, then drawing): a page of 12 log-log MSD panels took 1.8 s
    with them and 0.7 s without. Call it after the data are drawn.
    """
    from matplotlib.ticker import NullLocator

    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            if axis.get_scale() != "log":
                continue
            lo, hi = sorted(axis.get_view_interval())
            if lo > 0 and np.isfinite(hi) and np.log10(hi / lo) > decades:
                axis.set_minor_locator(NullLocator())


def panel_pages(
    indices: np.ndarray,
    draw: Callable,
    outdir: Path,
    stem: str,
    per_figure: int = 12,
) -> list[Path]:
    """Draw ``draw(ax, i)`` for every ``i`` of ``indices``, ``per_figure`` panels (4 a row) per PNG.

    The files are ``outdir/<stem>_<k>.png``; returns their paths.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for k0 in range(0, indices.size, per_figure):
        chunk = indices[k0 : k0 + per_figure]
        ncol = min(4, chunk.size)
        nrow = int(np.ceil(chunk.size / ncol))
        fig, axes = plt.subplots(nrow, ncol, figsize=(4 * ncol, 3 * nrow), squeeze=False)
        for ax in axes.flat[chunk.size :]:
            ax.set_visible(False)
        for ax, i in zip(axes.flat, chunk, strict=False):
            draw(ax, int(i))
        thin_log_ticks(fig)
        fig.tight_layout()
        path = outdir / f"{stem}_{k0 // per_figure}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


def _time_coloured_line(ax, x: np.ndarray, y: np.ndarray, t: np.ndarray, norm, **style):
    """Join the points ``(x, y)`` in order, each segment coloured by the ``t`` of its start."""
    from matplotlib.collections import LineCollection

    pts = np.column_stack([x, y])
    segments = np.stack([pts[:-1], pts[1:]], axis=1)
    lines = LineCollection(segments, cmap="viridis", norm=norm, **style)
    lines.set_array(np.asarray(t[:-1], dtype=np.float64))
    ax.add_collection(lines)
    return lines


def raw_path(ax, x: np.ndarray, y: np.ndarray, steps: np.ndarray, title: str):
    """The raw path: consecutive steps joined in order, coloured by step.

    Under the period-2 flip consecutive steps sit on opposite sides of the centre, so this path
    zigzags; it is drawn beside :func:`flip_arms` to show what the arms are taken from.
    """
    from matplotlib.colors import Normalize

    norm = Normalize(float(steps[0]), float(steps[-1]))
    lines = _time_coloured_line(ax, x, y, steps, norm, linewidths=0.5, alpha=0.8)
    ax.scatter(x, y, c=steps, cmap="viridis", norm=norm, s=4, zorder=2)
    ax.autoscale_view()
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)
    return lines


def flip_arms(ax, x: np.ndarray, y: np.ndarray, steps: np.ndarray, title: str):
    """The two arms of the period-2 flip, each joined in time order and coloured by step.

    The even-step and the odd-step sub-sequences are drawn as two separate curves (solid with
    circles: even; dashed with triangles: odd). Under a flip ``z_t = (-1)^t w_t`` they are ``w``
    and its mirror image through the centre, so a double spiral shows as two interleaved arms
    turning steadily, and the flip's zigzag between them is not drawn. Returns the even arm's
    line collection (for a colour bar).
    """
    from matplotlib.colors import Normalize

    norm = Normalize(float(steps[0]), float(steps[-1]))
    even = steps % 2 == 0
    out = None
    for sel, ls, marker, name in ((even, "-", "o", "even steps"), (~even, "--", "^", "odd steps")):
        if sel.sum() < 2:
            continue
        lines = _time_coloured_line(ax, x[sel], y[sel], steps[sel], norm, linewidths=1.0,
                                    linestyles=ls)  # fmt: skip
        ax.scatter(x[sel], y[sel], c=steps[sel], cmap="viridis", norm=norm, s=7, marker=marker,
                   label=name, zorder=2)  # fmt: skip
        out = out or lines
    ax.autoscale_view()
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)
    return out
