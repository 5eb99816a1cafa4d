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

:data:`ANALYSES` maps each available analysis name to its module, imported on first access (so
that ``import geomtraj`` and commands that run no analysis, such as ``geomtraj plot``, do not pay
for ``scipy.signal`` and the other dependencies of all six). The modules are also the Python
API: calling one runs its ``analyze``, so ``geomtraj.analysis.periods(ds)`` returns the Dataset of
``geomtraj.analysis.periods.analyze(ds)``, and the module's other functions stay reachable as
attributes (``geomtraj.analysis.periods.slow_period``).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from collections.abc import Iterator, Mapping

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
    "mechanism": "geomtraj.analysis.mechanism",
}


class _AnalysisModule(types.ModuleType):
    """An analysis module that can be called: ``module(ds, runs, **params)`` runs ``analyze``."""

    def __call__(self, ds: xr.Dataset, runs=None, **params) -> xr.Dataset:
        return self.analyze(ds, runs, **params)


def _callable(module: types.ModuleType) -> types.ModuleType:
    """Make an analysis module callable (idempotent)."""
    if not isinstance(module, _AnalysisModule):
        module.__class__ = _AnalysisModule
    return module


class _Registry(Mapping):
    """``name -> module`` of the available analyses, each imported on first access.

    Importing every analysis up front costs seconds (``scipy.signal`` alone about 2.7 s), which
    every ``geomtraj`` command paid, even ``geomtraj plot`` that runs none. Availability is
    decided without importing, from the module's import spec.
    """

    def __init__(self, modules: Mapping[str, str]):
        self._modules = dict(modules)

    @property
    def _available(self) -> list[str]:
        # find_spec locates the file without executing it; a missing module is simply left out
        return [n for n, p in self._modules.items() if importlib.util.find_spec(p) is not None]

    def __getitem__(self, name: str) -> types.ModuleType:
        if name not in self._modules or importlib.util.find_spec(self._modules[name]) is None:
            raise KeyError(name)
        return _callable(importlib.import_module(self._modules[name]))

    def __contains__(self, name: object) -> bool:
        return name in self._available

    def __iter__(self) -> Iterator[str]:
        return iter(self._available)

    def __len__(self) -> int:
        return len(self._available)

    def __repr__(self) -> str:
        loaded = [n for n, p in self._modules.items() if p in sys.modules]
        return f"<analyses {self._available}, imported so far: {loaded}>"


#: Available analyses: name -> module following the protocol above (imported on first access).
ANALYSES: Mapping[str, types.ModuleType] = _Registry(_MODULES)


class _Package(types.ModuleType):
    """This package, making each analysis submodule callable however it gets imported."""

    def __setattr__(self, name: str, value) -> None:
        # ``import geomtraj.analysis.periods`` binds the submodule here without __getattr__
        if name in _MODULES and isinstance(value, types.ModuleType):
            value = _callable(value)
        super().__setattr__(name, value)


def __getattr__(name: str):
    """``geomtraj.analysis.NAME``: import the analysis ``NAME`` on first use."""
    if name in _MODULES:
        return ANALYSES[name] if name in ANALYSES else _missing(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _missing(name: str):
    raise AttributeError(f"analysis {name!r} is not installed ({_MODULES[name]} not found)")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(ANALYSES))


sys.modules[__name__].__class__ = _Package


def combine(parts: list[xr.Dataset]) -> xr.Dataset:
    """Concatenate results of disjoint run blocks over ``run`` (ragged dims padded with NaN)."""
    if len(parts) == 1:
        return parts[0]
    return xr.concat(parts, dim="run", join="outer", combine_attrs="override")


__all__ = ["ANALYSES", "RunData", "combine", "iter_runs", *ANALYSES]
