"""A small analysis that follows the protocol of ``geomtraj.analysis``, for the runner's tests.

It measures simple, exactly checkable things of each run (no science): the number of finite
updates, the mean update norm, and the number of updates whose update norm exceeds twice the run's
median ("bursts" in name only). Tests compare its output with NumPy on the same store.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from geomtraj.analysis.base import iter_runs
from geomtraj.errors import GeomtrajError

#: Runs with fewer finite updates than this are "not measurable" (raises GeomtrajError).
MIN_UPDATES = 3


def analyze(ds: xr.Dataset, runs=None, *, progress=None, **params) -> xr.Dataset:
    rows = []
    for rd in iter_runs(ds, runs):
        un = rd.update_norm
        if un.size < MIN_UPDATES:
            raise GeomtrajError(f"run {rd.run}: {un.size} finite updates, {MIN_UPDATES} needed")
        theta_mean = float(np.mean(rd.theta)) if rd.theta.size else np.nan
        rows.append((rd.run, un.size, float(np.mean(un)), int(np.sum(un > 2 * np.median(un))),
                     theta_mean))  # fmt: skip
    run, n, mean, peaks, tmean = (np.array(c) for c in zip(*rows, strict=True))
    return xr.Dataset(
        {
            "n_updates": ("run", n.astype(np.int64)),
            "mean_update_norm": ("run", mean.astype(np.float64)),
            "n_peaks": ("run", peaks.astype(np.int64)),
            "theta_mean": ("run", tmean.astype(np.float64)),
        },
        coords={"run": run.astype(np.int64)},
    )


def report(result: xr.Dataset) -> dict:
    runs = {}
    for i, r in enumerate(result["run"].values):
        runs[int(r)] = {
            "n_bursts": int(result["n_peaks"].values[i]),
            "slow": {
                "period": float(result["mean_update_norm"].values[i]),
                "ci": None,
                "note": "fake: mean update norm, no CI",
            },  # fmt: skip
            "fake": {
                "n_updates": int(result["n_updates"].values[i]),
                "theta_mean": float(result["theta_mean"].values[i]),
            },  # fmt: skip
        }
    n = int(result.sizes["run"])
    return {
        "runs": runs,
        "grid": {
            "slow": {
                "slope": float(np.mean(result["mean_update_norm"].values)),
                "ci": None,
                "n_runs": n,
                "verdict": "fake",
                "note": "mean of the runs' mean update norm",
            }
        },  # fmt: skip
        "fake_total_updates": int(result["n_updates"].values.sum()),
    }


def figures(ds: xr.Dataset, result: xr.Dataset, outdir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3))
    ax.bar(result["run"].values, result["n_peaks"].values)
    ax.set_xlabel("run")
    ax.set_ylabel("updates above 2x median")
    path = Path(outdir) / "fake_peaks.png"
    fig.savefig(path, dpi=60)
    plt.close(fig)
    return [path]
