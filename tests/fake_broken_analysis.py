"""An analysis that fails on purpose, for the runner's failure-isolation tests.

Run 1 raises a ``TypeError`` (an internal error of the analysis), run 2 a ``GeomtrajError``
("not measurable"); every other run gets ``value = run * 10``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from geomtraj.errors import GeomtrajError

BUG_RUN = 1
NOT_MEASURABLE_RUN = 2


def analyze(ds: xr.Dataset, runs=None, *, progress=None, **params) -> xr.Dataset:
    runs = list(range(ds.sizes["run"])) if runs is None else list(runs)
    if BUG_RUN in runs:
        raise TypeError("deliberate bug")
    if NOT_MEASURABLE_RUN in runs:
        raise GeomtrajError(f"run {NOT_MEASURABLE_RUN}: deliberately not measurable")
    return xr.Dataset(
        {"value": ("run", np.array(runs, np.int64) * 10)}, coords={"run": np.array(runs)}
    )


def report(result: xr.Dataset) -> dict:
    return {"runs": {int(r): {"broken_value": int(v)} for r, v in
                     zip(result["run"].values, result["value"].values, strict=True)}}  # fmt: skip


def figures(ds: xr.Dataset, result: xr.Dataset, outdir: Path) -> list[Path]:
    return []
