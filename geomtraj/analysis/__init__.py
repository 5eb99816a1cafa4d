"""Analyses of trajectory stores.

Each analysis lives in its own module, which ends with its declaration,
``ANALYSIS = Analysis(...)`` (:mod:`geomtraj.analysis.declaration`): its name, parameter dataclass,
what it reads from a store, its result fields with units and definitions, its run-table columns,
its figures with their captions, and three functions, so that ``geomtraj analyze``, the
``ds.geomtraj`` accessor and notebooks all call the same code:

``analyze(ds, runs=None, *, progress=None, **params) -> xarray.Dataset``
    Measure the runs ``runs`` (indices; all by default) of a store opened with
    :func:`geomtraj.store.open_store`, one run at a time through :class:`~.base.RunData`, and return
    a Dataset over ``run`` (coordinate: the store's run index), with the parameters used in
    ``attrs["params"]``. Results for disjoint blocks of runs combine with :func:`combine`; this is
    how the work is split across processes or a dask cluster. ``progress``, when given, is called
    with the number of runs just finished.
``report(result) -> dict``
    Turn a (combined) result into the contract-4 fields of ``report.json``:
    ``{"runs": {run: {field: value}}, SECTION: ...}``. Cross-run statistics (the grid test, a
    classifier over runs) are computed here, with the parameters the result was computed with.
    ``None`` means "not measurable" and comes with a ``note`` saying why.
``figures(ds, result, outdir) -> list[pathlib.Path]``
    Draw the analysis's figures into ``outdir`` (``Analysis.draw``).

:data:`ANALYSES` maps each available analysis name to its module, imported on first access (so
that ``import geomtraj`` and commands that run no analysis, such as ``geomtraj plot``, do not pay
for ``scipy.signal`` and the other dependencies of all six). A module of this package that declares
``ANALYSIS`` is found without being imported; :func:`register` adds one at run time; a module of
the bare protocol above (no declaration) is listed in ``_MODULES`` and adapted by
:func:`~geomtraj.analysis.declaration.as_analysis`. :func:`declaration` gives the declaration of
any of them. See ``docs/architecture.md``. The modules are also the Python API: calling one runs
its ``analyze``, so ``geomtraj.analysis.periods(ds)`` returns the Dataset of
``geomtraj.analysis.periods.analyze(ds)``, and the module's other functions stay reachable as
attributes (``geomtraj.analysis.periods.slow_period``).
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
import types
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path

import xarray as xr

from geomtraj.analysis.base import RunData, iter_runs
from geomtraj.analysis.declaration import Analysis, as_analysis

#: Names of the analyses, in report order, with the module that implements each. A module that
#: declares ``ANALYSIS`` need not be listed (it is found, and follows these by name); one of the
#: bare protocol (``analyze``, ``report``, ``figures``) is listed here and adapted.
_MODULES = {
    "periods": "geomtraj.analysis.periods",
    "spirals": "geomtraj.analysis.spirals",
    "twins": "geomtraj.analysis.twins",
    "diffusion": "geomtraj.analysis.diffusion",
    "stability": "geomtraj.analysis.stability",
    "early_warning": "geomtraj.analysis.early_warning",
    "mechanism": "geomtraj.analysis.mechanism",
}

#: A module of this package is an analysis when it declares ``ANALYSIS = Analysis(...)``.
_DECLARES = re.compile(r"^ANALYSIS\s*(?::[^=]*)?=\s*Analysis\(", re.MULTILINE)


@cache
def _discovered() -> dict[str, str]:
    """``name -> module path``: :data:`_MODULES`, then every other module here that declares
    ``ANALYSIS``, by name.

    The module files are read as text, not imported (importing them all costs seconds), so adding
    a declared analysis is adding its module: nothing else lists it.
    """
    here = Path(__file__).parent
    found = {
        p.stem: f"{__name__}.{p.stem}"
        for p in sorted(here.glob("*.py"))
        if not p.stem.startswith("_")
        and p.stem not in _MODULES
        and _DECLARES.search(p.read_text(encoding="utf-8"))
    }
    return {**_MODULES, **found}


#: Analyses added at run time with :func:`register` (a plug-in, a notebook, a test).
_REGISTERED: dict[str, Analysis] = {}


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
    decided without importing, from the module's import spec. With ``discover``, the modules are
    those of this package that declare ``ANALYSIS`` (:func:`_discovered`), followed by the
    analyses given to :func:`register`.
    """

    def __init__(self, modules: Mapping[str, str] | None = None, *, discover: bool = False):
        self._fixed = dict(modules or {})
        self._discover = discover

    @property
    def _modules(self) -> dict[str, str]:
        return {**_discovered(), **self._fixed} if self._discover else self._fixed

    @property
    def _available(self) -> list[str]:
        # find_spec locates the file without executing it; a missing module is simply left out
        names = [n for n, p in self._modules.items() if importlib.util.find_spec(p) is not None]
        if self._discover:
            names += [n for n in _REGISTERED if n not in names]
        return names

    def __getitem__(self, name: str) -> types.ModuleType | Analysis:
        if self._discover and name in _REGISTERED:
            return _REGISTERED[name]
        modules = self._modules
        if name not in modules or importlib.util.find_spec(modules[name]) is None:
            raise KeyError(name)
        return _callable(importlib.import_module(modules[name]))

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
ANALYSES: Mapping[str, types.ModuleType | Analysis] = _Registry(discover=True)


def declaration(name: str) -> Analysis:
    """The :class:`~geomtraj.analysis.declaration.Analysis` of analysis ``name`` (imports it)."""
    return as_analysis(ANALYSES[name], name)


def shipped() -> list[str]:
    """Names of the available analyses that come with geomtraj, in report order (not registered)."""
    return [n for n in ANALYSES if n not in _REGISTERED]


def register(analysis: Analysis) -> Analysis:
    """Add ``analysis`` to :data:`ANALYSES` for this process (replacing one of the same name).

    Analyses that live in a module of this package need no registration. Worker processes
    (``--jobs``, ``--scheduler``) import analyses by module, so a registered analysis must be the
    ``ANALYSIS`` of an importable module to run there.
    """
    if not isinstance(analysis, Analysis):
        raise TypeError(f"register() takes an Analysis declaration, not {type(analysis).__name__}")
    _REGISTERED[analysis.name] = analysis
    return analysis


def unregister(name: str) -> None:
    """Remove an analysis added with :func:`register` (no error if there is none)."""
    _REGISTERED.pop(name, None)


class _Package(types.ModuleType):
    """This package, making each analysis submodule callable however it gets imported."""

    def __setattr__(self, name: str, value) -> None:
        # ``import geomtraj.analysis.periods`` binds the submodule here without __getattr__
        if name in _discovered() and isinstance(value, types.ModuleType):
            value = _callable(value)
        super().__setattr__(name, value)


def __getattr__(name: str):
    """``geomtraj.analysis.NAME``: import the analysis ``NAME`` on first use."""
    if name in _discovered() or name in _REGISTERED:
        return ANALYSES[name] if name in ANALYSES else _missing(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _missing(name: str):
    raise AttributeError(f"analysis {name!r} is not installed ({_discovered()[name]} not found)")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(ANALYSES))


sys.modules[__name__].__class__ = _Package


def combine(parts: list[xr.Dataset]) -> xr.Dataset:
    """Concatenate results of disjoint run blocks over ``run`` (ragged dims padded with NaN)."""
    if len(parts) == 1:
        return parts[0]
    return xr.concat(parts, dim="run", join="outer", combine_attrs="override")


__all__ = [
    "ANALYSES",
    "Analysis",
    "RunData",
    "combine",
    "declaration",
    "iter_runs",
    "register",
    "shipped",
    "unregister",
    *ANALYSES,
]
