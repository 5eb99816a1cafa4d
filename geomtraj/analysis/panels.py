"""Small-multiples figures shared by the analyses: one panel per run, several runs per PNG."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np


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
        fig.tight_layout()
        path = outdir / f"{stem}_{k0 // per_figure}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths
