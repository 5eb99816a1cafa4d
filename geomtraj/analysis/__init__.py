"""Analyses of trajectory stores.

Each analysis lives in its own module and follows one protocol, so that ``geomtraj analyze``, the
``ds.geomtraj`` accessor and notebooks all call the same code:

``analyze(ds, runs=None, *, progress=None, **params) -> xarray.Dataset``
    Measure the runs ``runs`` (indices; all by default) of a store opened with
    :func:`geomtraj.store.open_store`, one run at a time through :class:`~.base.RunData`, and return
    a Dataset over ``run`` (coordinate: the store's run index). Results for disjoint blocks of
    runs combine with :func:`combine`; this is how the work is split across processes or a dask
    cluster. ``progress``, when given, is called with the number of runs just finished.
``report(result) -> dict``
    Turn a (combined) result into the contract-4 fields of ``report.json``:
    ``{"runs": {run: {field: value}}, SECTION: ...}``. Cross-run statistics (the grid test, a
    classifier over runs) are computed here. ``None`` means "not measurable" and comes with a
    ``note`` saying why.
``figures(ds, result, outdir) -> list[pathlib.Path]``
    Draw the analysis's figures into ``outdir``.

:data:`ANALYSES` maps each available analysis name to its module. The modules are also the Python
API: calling one runs its ``analyze``, so ``geomtraj.analysis.periods(ds)`` returns the Dataset of
``geomtraj.analysis.periods.analyze(ds)``, and the module's other functions stay reachable as
attributes (``geomtraj.analysis.periods.slow_period``).
"""

from __future__ import annotations

import importlib
import types

import xarray as xr

from geomtraj.analysis.base import RunData, iter_runs

#: Names of the analyses, in report order, with the module that implements each.
_MODULES = {
    "periods": "geomtraj.analysis.periods",
    "spirals": "geomtraj.analysis.spirals",
    "twins": "geomtraj.analysis.twins",
    "diffusion": "geomtraj.analysis.diffusion",
    "stability": "geomtraj.analysis.stability",
    "early_warning": "geomtraj.analysis.early_warning",
}


class _AnalysisModule(types.ModuleType):
    """An analysis module that can be called: ``module(ds, runs, **params)`` runs ``analyze``."""

    def __call__(self, ds: xr.Dataset, runs=None, **params) -> xr.Dataset:
        return self.analyze(ds, runs, **params)


def _load() -> dict:
    found = {}
    for name, path in _MODULES.items():
        try:
            module = importlib.import_module(path)
        except ModuleNotFoundError as exc:
            if exc.name != path:  # the module exists but one of its imports is missing: a bug
                raise
            continue
        module.__class__ = _AnalysisModule
        found[name] = module
    return found


#: Available analyses: name -> module following the protocol above.
ANALYSES: dict = _load()


def combine(parts: list[xr.Dataset]) -> xr.Dataset:
    """Concatenate results of disjoint run blocks over ``run`` (ragged dims padded with NaN)."""
    if len(parts) == 1:
        return parts[0]
    return xr.concat(parts, dim="run", join="outer", combine_attrs="override")


__all__ = ["ANALYSES", "RunData", "combine", "iter_runs", *ANALYSES]
