"""One run's arrays from a store, loaded lazily and cut at divergence.

Every per-run analysis reads a store through :class:`RunData`, so memory stays bounded by one run
(and, for ``theta``/``m``/``v``, by the recorded parameters of that run) whatever the store's size.
"""

from __future__ import annotations

import functools
import re
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from functools import cached_property

import numpy as np
import xarray as xr

from geomtraj import runtable
from geomtraj.errors import GeomtrajError, StoreError
from geomtraj.store.zarrstore import strings

#: Hyper-parameters and labels copied from the store for every run, with their Python types.
#: The required fields of the run table (geomtraj.runtable).
RUN_FIELDS: dict[str, type] = {
    f.name: {np.float64: float, np.int64: int, str: str}[f.dtype]
    for f in runtable.required_fields()
}


def finite_or_none(x) -> float | None:
    """``float(x)``, or None (JSON ``null``: not measured) when it is NaN or infinite."""
    x = float(x)
    return x if np.isfinite(x) else None


#: Rows of lazy (dask) variables already in memory, by the name of their dask array:
#: ``name -> (r0, numpy-backed Variable of runs r0, r0+1, ...)``. See :func:`rows_in_memory`.
_IN_MEMORY: dict[str, tuple[int, xr.Variable]] = {}


@contextmanager
def rows_in_memory(ds: xr.Dataset, r0: int, rows: dict[str, np.ndarray]):
    """While inside, :class:`RunView` reads runs ``r0...`` of ``ds``'s variables from ``rows``.

    ``rows[name]`` holds the values of ``ds[name]`` for runs ``r0 .. r0 + len(rows[name]) - 1``
    (read once for a block of runs). Without it each per-run read computes the variable's dask
    graph again (about 3 ms each, more than the analysis of the values); with it a read is a
    NumPy index of the same numbers. Variables that are not dask arrays are left alone.
    """
    keys = []
    for name, block in rows.items():
        if name not in ds.variables:
            continue
        var = ds.variables[name]
        key = getattr(var.data, "name", None)
        if not isinstance(key, str) or var.dims[:1] != ("run",) or block.shape[1:] != var.shape[1:]:
            continue
        _IN_MEMORY[key] = (int(r0), xr.Variable(var.dims, block, var.attrs))
        keys.append(key)
    try:
        yield
    finally:
        for key in keys:
            _IN_MEMORY.pop(key, None)
        for k in list(_DERIVED):  # a copy: another thread's block may add entries meanwhile
            if k[0] in keys:
                _DERIVED.pop(k, None)


#: What analyses derive from held rows and share (a run's bursts, read by periods, spirals,
#: stability ...), by ``(dask name of the rows, run, what)``; dropped with the rows.
_DERIVED: dict[tuple, object] = {}


def derived(run, name: str, what: tuple, compute: Callable[[], object]) -> object:
    """``compute()``, computed once per held run and shared while :func:`rows_in_memory` holds it.

    ``run`` is a :class:`RunData` whose variable ``name`` the result is computed from, ``what``
    (hashable) names the computation and its settings. When the variable's rows are not held
    (or ``run`` is not a RunData), ``compute()`` runs every time. The result is shared between
    analyses, so its arrays are made read-only.
    """
    ds = getattr(run, "ds", None)
    var = ds.variables.get(name) if isinstance(ds, xr.Dataset) else None
    key = getattr(var.data, "name", None) if var is not None else None
    held = _IN_MEMORY.get(key) if isinstance(key, str) else None
    if held is None or not 0 <= run.run - held[0] < held[1].shape[0]:
        return compute()
    full = (key, run.run, *what)
    if full not in _DERIVED:
        value = compute()
        for arr in vars(value).values() if hasattr(value, "__dict__") else ():
            if isinstance(arr, np.ndarray):
                arr.flags.writeable = False
        _DERIVED[full] = value
    return _DERIVED[full]


def in_memory_array(block: np.ndarray):
    """``block`` as a one-chunk dask array, without the copy ``dask.array.from_array`` makes.

    ``from_array`` copies a NumPy array (and, unnamed, hashes its bytes): for a block of runs of
    50,000 recorded steps that costs more than reading it. The array is not written to while the
    dask array lives (the analyses only read).
    """
    import dask.array as da

    name = f"in-memory-{uuid.uuid4().hex}"
    chunks = tuple((s,) for s in block.shape)
    meta = np.empty((0,) * block.ndim, dtype=block.dtype)
    return da.Array({(name, *(0,) * block.ndim): block}, name, chunks, meta=meta)


class RunView:
    """``ds.isel(run=run)`` one variable at a time: ``view[name]`` is run ``run`` of ``ds[name]``.

    Selecting every variable of a store at once builds a lazy slice of each (about 40 ms), more
    than the per-run reads that follow; an analysis reads only a few of them. ``view[name]`` is an
    :class:`xarray.Variable` (``.values``, ``.isel``), read from the rows that
    :func:`rows_in_memory` holds when it holds the run.
    """

    __slots__ = ("ds", "run")

    def __init__(self, ds: xr.Dataset, run: int):
        self.ds, self.run = ds, int(run)

    def __getitem__(self, name: str) -> xr.Variable:
        var = self.ds.variables[name]
        held = _IN_MEMORY.get(getattr(var.data, "name", None)) if _IN_MEMORY else None
        if held is not None and 0 <= self.run - held[0] < held[1].shape[0]:
            return held[1].isel(run=self.run - held[0])
        return var.isel(run=self.run)


class RunData:
    """Lazy view of run ``run`` of a store opened with :func:`geomtraj.store.open_store`.

    Arrays are loaded on first access and truncated before the divergence step, so analyses see
    only finite values of a diverged run ("analysed up to that step", docs/science.md, Divergence
    of training).

    Attributes
    ----------
    run : int
        Index of the run in the store.
    hyper : dict
        The run's hyper-parameters and labels (:data:`RUN_FIELDS`).
    iteration : ndarray of int64
        Update counts ``t`` of the per-step series (``update_norm``, ``train_loss``), up to the last
        finite step.
    update_norm, train_loss : ndarray of float64
        ``||theta_t - theta_{t-1}||`` and the loss at ``theta_{t-1}``, per step.
    step : ndarray of int64
        Update counts of the recorded rows of ``theta``, ``m`` and ``v`` (finite rows only).
    theta, m, v : ndarray of float64, shape (len(step), n_recorded)
        Recorded parameters and raw Adam moments.
    param_names : list of str
        Names (contract 1) of the recorded parameters, the columns of ``theta``, ``m``, ``v``.
    """

    def __init__(self, ds: xr.Dataset, run: int):
        missing = [k for k in RUN_FIELDS if k not in ds.variables]
        if missing:
            raise StoreError(
                f"dataset: missing variable(s) {', '.join(missing)} required by schema 1 "
                "(see docs/store-contract.md); geomtraj.store.record.write_store builds a valid "
                "store"
            )
        self.ds = ds
        self.run = int(run)
        self._one = RunView(ds, self.run)
        hyper = {}
        for name, kind in RUN_FIELDS.items():
            var = self._one[name]
            hyper[name] = strings(var)[0] if kind is str else kind(var.values)
        self.hyper = hyper

    def __repr__(self) -> str:
        h = self.hyper
        return (
            f"RunData(run={self.run}, {h['precision']}, {h['hidden']}, beta1={h['beta1']}, "
            f"beta2={h['beta2']}, lr={h['lr']}, seed={h['seed']})"
        )

    # -- per-step series -------------------------------------------------------------------------
    @property
    def diverged_step(self) -> int | None:
        d = self.hyper["diverged_step"]
        return None if d < 0 else d

    @property
    def steps(self) -> int:
        """Number of updates the run was trained for (the store's ``steps``)."""
        return int(self.ds.attrs.get("steps", int(self.ds["step"].values[-1])))

    @property
    def final_step(self) -> int:
        """The last state with finite values: ``steps``, or ``diverged_step - 1`` (at least 0)."""
        return max(self.steps if self.diverged_step is None else self.diverged_step - 1, 0)

    @cached_property
    def _per_step(self) -> dict[str, np.ndarray]:
        missing = missing_per_update(self.ds)
        if missing:
            if not rows_are_consecutive(self.ds):
                return {
                    "iteration": np.zeros(0, np.int64),
                    "update_norm": np.zeros(0),
                    "train_loss": np.zeros(0),
                }
            return self._derived_per_step()
        it = np.asarray(self.ds.variables["iteration"].values, dtype=np.int64)
        un = np.asarray(self._one["update_norm"].values, dtype=np.float64)
        tl = np.asarray(self._one["train_loss"].values, dtype=np.float64)
        keep = self._before_divergence(it) & np.isfinite(un) & np.isfinite(tl)
        n = _leading_true(keep)
        return {"iteration": it[:n], "update_norm": un[:n], "train_loss": tl[:n]}

    def _derived_per_step(self) -> dict[str, np.ndarray]:
        """Per-update series from consecutive recorded rows (docs/store-contract.md).

        Update ``t`` (row ``t``) moved ``theta`` from row ``t-1``, and the row's ``loss`` is the
        loss at ``theta_{t-1}``, the same quantity as ``train_loss``; the first row has no
        predecessor, so the series start at the second row. ``update_norm`` is taken over the
        recorded parameters only (all of them when the producer recorded every parameter).
        """
        theta = self.theta
        it = self.step[1:]
        un = np.linalg.norm(np.diff(theta, axis=0), axis=1) if len(theta) > 1 else np.zeros(0)
        tl = self.loss[1:]
        keep = np.isfinite(un) & np.isfinite(tl)
        n = _leading_true(keep)
        return {"iteration": it[:n], "update_norm": un[:n], "train_loss": tl[:n]}

    @property
    def per_update_note(self) -> str | None:
        """How the per-update series were obtained when the store does not hold them, else None."""
        return per_update_note(self.ds, self.run)

    @property
    def iteration(self) -> np.ndarray:
        return self._per_step["iteration"]

    @property
    def update_norm(self) -> np.ndarray:
        return self._per_step["update_norm"]

    @property
    def train_loss(self) -> np.ndarray:
        return self._per_step["train_loss"]

    # -- recorded trajectories -------------------------------------------------------------------
    @cached_property
    def _labels(self) -> list[str]:
        """``param_name`` of the run's columns, padded ones as ``""``."""
        names = self.ds.variables["param_name"]
        return strings(self._one["param_name"] if "run" in names.dims else names)

    @cached_property
    def _columns(self) -> np.ndarray:
        """Indices along ``param`` that hold real (not padded) recorded parameters."""
        return np.array([i for i, s in enumerate(self._labels) if s], dtype=np.int64)

    @cached_property
    def param_names(self) -> list[str]:
        return [self._labels[i] for i in self._columns]

    @cached_property
    def step(self) -> np.ndarray:
        return self._all_steps[: self._n_rows]

    @cached_property
    def _all_steps(self) -> np.ndarray:
        return np.asarray(self.ds.variables["step"].values, dtype=np.int64)

    @cached_property
    def _n_rows(self) -> int:
        keep = self._before_divergence(self._all_steps)
        return _leading_true(keep)

    def _recorded(self, name: str) -> np.ndarray:
        var = self._one[name].isel(step=slice(0, self._n_rows))
        arr = np.asarray(var.values, dtype=np.float64)
        cols = self._columns
        if len(cols) != arr.shape[1]:
            arr = arr[:, cols]
        return arr

    @cached_property
    def theta(self) -> np.ndarray:
        return self._recorded("theta")

    @cached_property
    def m(self) -> np.ndarray:
        return self._recorded("m")

    @cached_property
    def v(self) -> np.ndarray:
        return self._recorded("v")

    @cached_property
    def loss(self) -> np.ndarray:
        """Recorded-row loss (contract 2), finite rows only."""
        return np.asarray(self._one["loss"].values[: self._n_rows], dtype=np.float64)

    @property
    def record_every(self) -> int:
        """Updates between recorded rows: the store's attribute, else the ``step`` spacing."""
        return record_every(self.ds)

    def _before_divergence(self, t: np.ndarray) -> np.ndarray:
        d = self.diverged_step
        return np.ones(t.shape, bool) if d is None else t < d


# ----------------------------------------------------------------- shared by several analyses

_PERTURBATION = re.compile(r"^ulp:([+-]?\d+)@(.+)@t=(\d+)$")


@functools.lru_cache(maxsize=1)
def _thread_pools():
    """The process's thread pools, listed once: ``threadpool_limits`` lists them on every call by
    scanning the loaded libraries (a few ms)."""
    # SciPy's BLAS (numba's np.dot, LAPACK, ARPACK) is loaded before the pools are listed
    import scipy.linalg  # noqa: F401
    import scipy.sparse.linalg  # noqa: F401
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def one_blas_thread(user_api: str | None = None):
    """Context manager limiting the thread pools to one thread (only BLAS with ``user_api="blas"``).

    The analyses' matrices are small, so BLAS threads only add start-up and spinning (40x slower
    on a busy 2-core machine), and one thread keeps a product's summation order, and so its bits,
    the same whatever the machine's core count; parallelism comes from processes.
    """
    return _thread_pools().limit(limits=1, user_api=user_api)


def parse_perturbation(label: str):
    """The :class:`geomtraj.train.plan.Perturbation` a store's ``perturbation`` label describes."""
    from geomtraj.train.plan import Perturbation

    if label in ("", "none"):
        return None
    m = _PERTURBATION.match(label)
    if m:
        return Perturbation("ulp", param=m.group(2), ulps=int(m.group(1)), step=int(m.group(3)))
    if label.startswith("scale:k="):
        return Perturbation("scale", k=float(label.split("=", 1)[1]))
    raise GeomtrajError(
        f"perturbation label {label!r} not understood; expected 'none', 'ulp:+N@NAME@t=T' or "
        "'scale:k=K'"
    )


def binomial_p(k: int, n: int, chance: float) -> float:
    """One-sided binomial p-value of ``k`` or more successes in ``n`` at success rate ``chance``."""
    from scipy.stats import binomtest

    if chance <= 0.0:
        return 0.0 if k > 0 else 1.0
    if chance >= 1.0:
        return 1.0
    return float(binomtest(k, n, chance, "greater").pvalue)


def union_length(starts: np.ndarray, stops: np.ndarray) -> float:
    """Total length of the union of intervals ``[starts_i, stops_i]``."""
    if starts.size == 0:
        return 0.0
    order = np.argsort(starts)
    total, cur_a, cur_b = 0.0, starts[order[0]], stops[order[0]]
    for a, b in zip(starts[order[1:]], stops[order[1:]], strict=True):
        if a > cur_b:
            total += cur_b - cur_a
            cur_a, cur_b = a, b
        else:
            cur_b = max(cur_b, b)
    return float(total + cur_b - cur_a)


#: Per-update series (dims ``(run, iteration)``) the burst analyses read; a store may lack them.
PER_UPDATE_SERIES = ("update_norm", "train_loss")


def missing_per_update(ds: xr.Dataset) -> list[str]:
    """Names of :data:`PER_UPDATE_SERIES` the store does not hold."""
    return [
        k for k in PER_UPDATE_SERIES if k not in ds.variables or ds[k].dims != ("run", "iteration")
    ]


def record_every(ds: xr.Dataset) -> int:
    """Updates between recorded rows: the ``record_every`` attribute, else the ``step`` spacing.

    A store of another producer may lack the attribute; its ``step`` coordinate then says it
    (the smallest gap when the spacing is irregular).
    """
    if "record_every" in ds.attrs:
        return int(ds.attrs["record_every"])
    gaps = np.unique(np.diff(np.asarray(ds["step"].values, dtype=np.int64)))
    return int(gaps[0]) if gaps.size else 1


def rows_are_consecutive(ds: xr.Dataset) -> bool:
    """Whether the recorded rows are consecutive updates, so per-update series can be derived."""
    st = np.asarray(ds["step"].values, dtype=np.int64)
    return st.size >= 2 and bool(np.all(np.diff(st) == 1))


def per_update_note(ds: xr.Dataset, run: int) -> str | None:
    """Note for a run whose store lacks per-update series; None when the store holds them.

    When the rows are consecutive updates (``record_every = 1``) the series are derived from them
    (see :meth:`RunData._derived_per_step`) and the note says so; otherwise the note names the
    missing variables and the run cannot be analysed for bursts.
    """
    missing = missing_per_update(ds)
    if not missing:
        return None
    names = " and ".join(missing)
    if rows_are_consecutive(ds):
        n_rec = len(RunData(ds, run).param_names)
        n_par = int(ds["n_params"].values[run])
        over = "all" if n_rec >= n_par else f"{n_rec} of the {n_par}"
        return (
            f"{names} not in the store: derived from the recorded rows (record_every = 1), "
            f"update_norm over {over} parameters"
        )
    st = np.asarray(ds["step"].values, dtype=np.int64)
    spacing = (
        f"every {int(st[1] - st[0])} updates"
        if st.size >= 2 and np.unique(np.diff(st)).size == 1
        else "at irregular updates"
        if st.size >= 2
        else "at a single update"
    )
    return (
        f"{names} not in the store and the rows are recorded {spacing}, so they cannot be "
        "derived; record them per update (or record every update) to analyse bursts"
    )


def _leading_true(mask: np.ndarray) -> int:
    """Length of the leading run of True values in ``mask``."""
    bad = np.flatnonzero(~mask)
    return int(bad[0]) if bad.size else int(mask.size)


def progress_callback(progress, total: int, desc: str):
    """``(tick, close)`` for an analysis's ``progress`` argument.

    ``progress`` is None/False (silent), True (a tqdm bar of ``total`` runs) or a callable, which
    ``tick`` calls with 1 per finished run, as the analysis protocol says.
    """
    if callable(progress):
        return progress, lambda: None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=desc, unit="run")
        return (lambda _n: bar.update(1)), bar.close
    return (lambda _n: None), lambda: None


def iter_runs(ds: xr.Dataset, runs=None):
    """Yield :class:`RunData` for ``runs`` (all by default), one at a time."""
    indices = range(ds.sizes["run"]) if runs is None else runs
    for r in indices:
        yield RunData(ds, int(r))
