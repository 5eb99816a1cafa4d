"""Analyses of trajectory stores.

Each analysis lives in its own module and follows one protocol, so that ``geomtraj analyze``, the
``ds.geomtraj`` accessor and notebooks all call the same code:

``analyze(ds, runs=None, *, progress=None, **params) -> xarray.Dataset``
    Measure the runs ``runs`` (indices; all by default) of a store opened with
    :func:`geomtraj.store.open_store`, one run at a time through :class:`~.base.RunData`, and return
    a Dataset over ``run`` (coordinate: the store's run index). Results for disjoint blocks of
    runs concatenate with ``xarray.concat(..., dim="run")``; this is how the work is split across
    processes or a dask cluster.
``report(result) -> dict``
    Turn a (concatenated) result into the contract-4 fields of ``report.json``:
    ``{"runs": {run: {field: value}}, SECTION: ...}``. Cross-run statistics (the grid test, a
    classifier over runs) are computed here. ``None`` means "not measurable" and comes with a
    ``note`` saying why.
``figures(ds, result, outdir) -> list[pathlib.Path]``
    Draw the analysis's figures into ``outdir``.

The package-level functions below (``periods(ds)``, ...) are the Python API: they forward to the
module's ``analyze``.
"""

from __future__ import annotations

from geomtraj.analysis.base import RunData, iter_runs

__all__ = ["RunData", "iter_runs"]
