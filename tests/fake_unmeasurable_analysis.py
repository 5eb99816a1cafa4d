"""An analysis that runs on every run and measures nothing, as stability does on a store whose
checkpoints are too sparse: each run and the section's verdict say "not measurable"."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from geomtraj.analysis.base import iter_runs

REASON = "checkpoints 400 steps apart, coarser than the 25-step lag window"


def analyze(ds: xr.Dataset, runs=None, *, progress=None, **params) -> xr.Dataset:
    run = np.array([rd.run for rd in iter_runs(ds, runs)], dtype=np.int64)
    return xr.Dataset({"measured": ("run", np.zeros(run.size, bool))}, coords={"run": run})


def report(result: xr.Dataset) -> dict:
    runs = {
        int(r): {"fake_unmeasurable": {"verdict": "not measurable", "note": REASON}}
        for r in result["run"].values
    }
    return {"runs": runs, "fake_unmeasurable": {"verdict": "not measurable", "note": REASON}}


def figures(ds: xr.Dataset, result: xr.Dataset, outdir: Path) -> list[Path]:
    return []
