"""The ``ds.geomtraj`` accessor: the analyses of :mod:`geomtraj.analysis` on an opened store.

Thin forwarding only, for notebooks::

    import geomtraj.accessor  # registers ds.geomtraj
    ds = geomtraj.store.open_store("runs.zarr")
    res = ds.geomtraj.periods(runs="beta2>0.99")   # = ANALYSES["periods"].analyze(ds, runs=...)
    ds.geomtraj.report("periods", res)             # = ANALYSES["periods"].report(res)
    ds.geomtraj.plot(3, "spiral", "run3.png")      # the quick look of `geomtraj plot`
"""

from __future__ import annotations

import functools
from pathlib import Path

import xarray as xr

__all__ = ["GeomtrajAccessor"]


@xr.register_dataset_accessor("geomtraj")
class GeomtrajAccessor:
    """Analyses of a geomtraj store, as methods of the Dataset (``ds.geomtraj.NAME(...)``)."""

    def __init__(self, ds: xr.Dataset):
        self._ds = ds

    @property
    def analyses(self) -> list[str]:
        """Names of the registered analyses."""
        from geomtraj.analysis.runner import available_analyses

        return list(available_analyses())

    def _module(self, name: str):
        from geomtraj.analysis.runner import select_analyses

        # only the named analysis is imported; an unknown name gets select_analyses' error
        return self._complete(name) or select_analyses([name])[name]

    @staticmethod
    def _complete(name: str):
        """The module of analysis ``name`` if registered and following the protocol, else None."""
        import geomtraj.analysis as registry
        from geomtraj.analysis.runner import protocol_gaps

        analyses = getattr(registry, "ANALYSES", {}) or {}
        if name not in analyses:
            return None
        module = analyses[name]
        return None if protocol_gaps(module) else module

    def _runs(self, runs):
        from geomtraj.analysis.runner import select_runs

        return None if runs is None else select_runs(self._ds, runs)

    def analyze(self, name: str, runs=None, **params) -> xr.Dataset:
        """``ANALYSES[name].analyze(ds, runs, **params)``; ``runs`` may be a query string."""
        return self._module(name).analyze(self._ds, runs=self._runs(runs), **params)

    def report(self, name: str, result: xr.Dataset | None = None, runs=None, **params) -> dict:
        """``ANALYSES[name].report(result)``, analysing first when ``result`` is None."""
        if result is None:
            result = self.analyze(name, runs, **params)
        return self._module(name).report(result)

    def figures(self, name: str, result: xr.Dataset, outdir: str | Path) -> list[Path]:
        """``ANALYSES[name].figures(ds, result, outdir)``."""
        return self._module(name).figures(self._ds, result, Path(outdir))

    def run(self, run: int):
        """One run as :class:`geomtraj.analysis.base.RunData`."""
        from geomtraj.analysis.base import RunData

        return RunData(self._ds, run)

    def select(self, runs) -> list[int]:
        """Run indices for ``runs`` (indices or a query such as ``"beta2>0.99"``)."""
        return self._runs(runs)

    def plot(self, run: int, kind: str = "loss", path: str | Path | None = None) -> Path:
        """The quick-look figure ``kind`` of ``run`` (see ``geomtraj plot``), saved as PNG."""
        from geomtraj.report.plots import plot_run

        return plot_run(self._ds, run, kind, path or f"run{run}_{kind}.png")

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        if self._complete(name) is not None:
            return functools.partial(self.analyze, name)
        raise AttributeError(
            f"ds.geomtraj has no {name!r}; analyses: {', '.join(self.analyses) or 'none'}"
        )

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self.analyses))
