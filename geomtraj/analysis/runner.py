"""Run analyses over blocks of runs: in this process, in local processes, or on a dask cluster.

``geomtraj analyze`` and the ``ds.geomtraj`` accessor meet the analyses here. The work unit is a
*block*: the selected runs of one run-chunk of the store. A block task opens the store itself
(so it can run in any process that sees the path), reads the block's trajectories once, chunk by
chunk, to check them (:func:`scan_block`), then calls every selected analysis on the block's
usable runs. Per-block results are concatenated over ``run`` in the parent, which is why the
result does not depend on how blocks were spread over processes.

Memory per process is bounded by :attr:`AnalyzeParams.memory_budget_bytes`: a block whose
trajectories fit in half the budget is held in memory while its analyses run (each on-disk chunk is
then decoded once per block instead of once per run), and :func:`plan_blocks` splits a run-chunk
too large for that into blocks that fit. Only a single run larger than half the budget is
streamed: the analyses then read it through :class:`geomtraj.analysis.base.RunData`.

``geomtraj train --scheduler`` uses :func:`train_distributed`: the workers train blocks of runs
into their own regions of one store (see :func:`geomtraj.train.train_block`).
"""

from __future__ import annotations

import dataclasses
import importlib
import multiprocessing
import os
import re
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import numpy as np
import xarray as xr

from geomtraj.analysis.base import (
    in_memory_array,
    per_update_note,
    rows_are_consecutive,
    rows_in_memory,
)
from geomtraj.analysis.declaration import Analysis, as_analysis, protocol_gaps
from geomtraj.errors import GeomtrajError, StoreError
from geomtraj.store.zarrstore import DATA_VARIABLES, check_integrity, open_store, strings

__all__ = [
    "AnalyzeParams",
    "RunHealth",
    "BlockResult",
    "Outcome",
    "available_analyses",
    "select_analyses",
    "select_runs",
    "parse_steps",
    "select_steps",
    "plan_blocks",
    "scan_block",
    "analyze_block",
    "run_analyses",
    "train_distributed",
]


@dataclass(frozen=True)
class AnalyzeParams:
    """Limits of the analysis runner.

    Attributes
    ----------
    min_finite_steps : int
        A run with fewer finite per-step values (``train_loss``, ``update_norm``) than this, in the
        selected step range, is ``insufficient``: no analysis can measure anything on it. 2,
        because a single point has no interval, slope or spectrum; each analysis applies its own,
        stricter minimum and says so in a note.
    memory_budget_bytes : int
        Store data one process may hold at a time: a block of runs is loaded whole only when its
        trajectories take at most half of this (the other half is left for the analyses' own
        arrays); otherwise it is streamed. 256 MiB keeps several ``--jobs`` processes well below
        the 1.5 GB the project allows, and is 64 on-disk chunks of the default 4 MiB.
    overview_points : int
        Points per run kept for the report's overview figure of the loss. 1000 resolves the
        bursts of a 20000-step run to 20 steps while the figure stays small.
    overview_total_points : int
        Cap on the overview points of all runs together (16 bytes each in the parent process):
        2 million, 32 MB, so that a grid of 10^4 runs keeps 200 points per run instead of
        160 MB of samples.
    """

    min_finite_steps: int = 2
    memory_budget_bytes: int = 256 * 2**20
    overview_points: int = 1000
    overview_total_points: int = 2_000_000


# ------------------------------------------------------------------------------- analyses


def registered_analyses() -> dict[str, ModuleType | Analysis]:
    """Everything :mod:`geomtraj.analysis` registers (``ANALYSES``), complete or not."""
    import geomtraj.analysis as registry

    return dict(getattr(registry, "ANALYSES", {}) or {})


def available_analyses() -> dict[str, ModuleType | Analysis]:
    """Registered analyses that declare themselves or follow the protocol, in registry order.

    A module still missing ``analyze``, ``report`` or ``figures`` (work in progress) is left out;
    the report lists it as not available, with the missing functions.
    """
    return {k: m for k, m in registered_analyses().items() if not protocol_gaps(m)}


def select_analyses(
    names: str | Sequence[str] | None, registry: dict[str, ModuleType | Analysis] | None = None
) -> dict[str, ModuleType | Analysis]:
    """The analyses named in ``names`` (a comma-separated string or a list; all by default).

    ``"none"`` selects no analysis: the store is only checked and summarised.

    Raises
    ------
    GeomtrajError
        For a name that is not registered.
    """
    registry = available_analyses() if registry is None else registry
    if names is None:
        return dict(registry)
    wanted = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
    wanted = [n for n in wanted if n and n != "none"]
    unknown = [n for n in wanted if n not in registry]
    if unknown:
        have = ", ".join(registry) or "none installed"
        raise GeomtrajError(f"unknown analysis {', '.join(map(repr, unknown))}; available: {have}")
    return {n: registry[n] for n in dict.fromkeys(wanted)}


# ---------------------------------------------------------------------------- run selection

_QUERY = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(>=|<=|!=|==|>|<|=)\s*(.+?)\s*$")
_RANGE = re.compile(r"^\s*(\d+)\s*(?:-|:|\.\.)\s*(\d+)\s*$", re.ASCII)  # ("²" is no index)


def _run_fields(ds: xr.Dataset) -> list[str]:
    return sorted(k for k, v in ds.variables.items() if v.dims == ("run",) and k != "run")


def select_runs(ds: xr.Dataset, spec: str | Iterable[int] | None) -> list[int]:
    """Run indices picked by ``spec``.

    ``spec`` is None (all runs), a list of indices, or a string of terms separated by ``,`` or
    ``and``. Index terms (``3``, ``0-7``) are united; query terms on per-run variables
    (``beta2>0.99``, ``precision=float32``, ``hidden==12x24``) all have to hold. The query terms
    are evaluated by xarray itself, as ``ds.query(run="beta2 > 0.99 and precision == 'float32'")``
    (the run table is a set of coordinates on ``run``, see :func:`geomtraj.store.open_store`),
    so ``--runs`` picks exactly the runs that ``ds.query`` or ``ds.sel(run=ds.beta2 > 0.99)``
    picks in a notebook.

    Raises
    ------
    GeomtrajError
        For a malformed term, an unknown variable, an index out of range, or an empty selection.
    """
    n = int(ds.sizes["run"])
    if spec is None:
        return list(range(n))
    if not isinstance(spec, str):
        picked = sorted({int(i) for i in spec})
        bad = [i for i in picked if not 0 <= i < n]
        if bad:
            raise GeomtrajError(f"run index {bad[0]} out of range; the store has runs 0..{n - 1}")
        return picked
    terms = [t for t in re.split(r",|\band\b", spec) if t.strip()]
    if not terms:
        raise GeomtrajError(f"--runs {spec!r} is empty; give indices (0-7) or a query (beta2>0.99)")
    indices: set[int] | None = None
    clauses: list[str] = []
    fields = _run_fields(ds)
    for term in terms:
        t = term.strip()
        if (t.isascii() and t.isdigit()) or _RANGE.match(t):
            m = _RANGE.match(t)
            lo, hi = (int(m.group(1)), int(m.group(2))) if m else (int(t), int(t))
            if not (0 <= lo <= hi < n):
                raise GeomtrajError(
                    f"--runs term {t!r} is out of range; the store has runs 0..{n - 1}"
                )
            indices = (indices or set()) | set(range(lo, hi + 1))
            continue
        m = _QUERY.match(t)
        if not m:
            raise GeomtrajError(
                f"--runs term {t!r} not understood; use indices (3, 0-7) or NAME OP VALUE "
                "(beta2>0.99, precision=float32)"
            )
        name, op, raw = m.groups()
        if name not in fields:
            raise GeomtrajError(
                f"--runs: no per-run variable {name!r} in the store; "
                f"choose from {', '.join(fields)}"
            )
        if ds[name].dtype.kind in "biuf":
            try:
                value = repr(float(raw))
            except ValueError:
                raise GeomtrajError(f"--runs: {name} is numeric, {raw!r} is not a number") from None
        else:
            if op not in ("=", "==", "!="):
                raise GeomtrajError(f"--runs: {name} holds text; compare it with = or !=")
            value = repr(raw.strip("'\""))
        clauses.append(f"({name} {'==' if op == '=' else op} {value})")
    keep = np.ones(n, bool)
    if clauses:
        # xarray's own query on the run table: ds.query(run="beta2 > 0.99 and ...")
        table = ds[fields].reset_coords().assign_coords(run=np.arange(n))
        chosen = table.query(run=" and ".join(clauses))["run"].values
        keep = np.isin(np.arange(n), chosen)
    picked = sorted(i for i in (indices if indices is not None else range(n)) if keep[i])
    if not picked:
        raise GeomtrajError(f"--runs {spec!r} selects no runs of the store's {n}")
    return picked


def parse_steps(spec: str | tuple | None) -> tuple[int | None, int | None] | None:
    """``"A:B"`` (or ``A-B``, ``A:``, ``:B``) as inclusive update counts; None for all steps."""
    if spec is None or isinstance(spec, tuple):
        return spec
    m = re.fullmatch(r"\s*(\d*)\s*(?::|-|\.\.)\s*(\d*)\s*", spec)
    if not m or not (m.group(1) or m.group(2)):
        raise GeomtrajError(f"--steps {spec!r} not understood; use FIRST:LAST, FIRST: or :LAST")
    lo = int(m.group(1)) if m.group(1) else None
    hi = int(m.group(2)) if m.group(2) else None
    if lo is not None and hi is not None and hi < lo:
        raise GeomtrajError(f"--steps {spec!r}: the last step is before the first")
    return lo, hi


def select_steps(ds: xr.Dataset, steps: tuple[int | None, int | None] | None) -> xr.Dataset:
    """``ds`` restricted to updates ``steps`` (inclusive) on ``step`` and ``iteration``."""
    if steps is None:
        return ds
    lo, hi = steps
    sel = {"step": slice(lo, hi)}
    if "iteration" in ds.dims:
        sel["iteration"] = slice(lo, hi)
    out = ds.sel(sel)
    if out.sizes["step"] == 0:
        st = ds["step"].values
        raise GeomtrajError(
            f"--steps {lo}:{hi} selects no recorded steps; the store records steps "
            f"{int(st[0])}..{int(st[-1])}"
        )
    out.attrs = {**ds.attrs, "step_range": [lo, hi]}
    return out


# ----------------------------------------------------------------------------------- blocks


def _run_chunk(ds: xr.Dataset) -> int:
    chunks = ds["theta"].encoding.get("chunks") or ds["theta"].encoding.get("preferred_chunks")
    if isinstance(chunks, dict):
        chunks = [chunks.get("run")]
    size = chunks[0] if chunks and chunks[0] else None
    return int(size) if size else max(1, int(ds.sizes["run"]))


def plan_blocks(
    ds: xr.Dataset, runs: Sequence[int], tasks: int = 1, max_bytes: int | None = None
) -> list[list[int]]:
    """Selected runs grouped by the store's run-chunk, in run order (one block per chunk).

    A chunk is split into blocks of near-equal run counts in two cases. With ``max_bytes``, a
    chunk whose runs' trajectories (from its first selected run to its last) take more than that
    is split until each block's do not, so that every block can be held in memory
    (:func:`analyze_block`) instead of streamed run by run, which decodes the chunk once per run
    (64 times for a full-scale Netay chunk) instead of once per block. With fewer chunks than
    ``tasks`` (the workers that will share them), each chunk gets as many blocks as its share of
    the runs asks for (rounded up), so that there are at least ``min(tasks, runs)`` blocks and a
    small store still keeps every worker busy. Blocks of one chunk each decode it, which costs
    far less than a worker left idle or a run read alone. Results do not depend on the split:
    every analysis works run by run.
    """
    size = _run_chunk(ds)
    by_chunk: dict[int, list[int]] = {}
    for r in sorted(runs):
        by_chunk.setdefault(r // size, []).append(int(r))
    blocks = list(by_chunk.values())
    per_run = _block_bytes(ds, 1)
    # the longest run span a held block may cover (analyze_block holds a block whose span fits)
    cap = max(1, max_bytes // per_run) if max_bytes and per_run else None
    total = sum(len(b) for b in blocks)
    out: list[list[int]] = []
    for b in blocks:
        # each chunk gets parts in proportion to its runs; ceil: at least min(tasks, runs)
        parts = min(len(b), -(-tasks * len(b) // total)) if len(blocks) < tasks else 1
        while True:
            split = [a.tolist() for a in np.array_split(np.asarray(b), parts)]
            # a selection with gaps can leave a part's span above the cap: split further (a
            # single run always passes)
            if cap is None or all(p[-1] - p[0] + 1 <= cap for p in split):
                break
            parts += 1
        out.extend(split)
    return out


# ------------------------------------------------------------------------------------- scan


@dataclass
class RunHealth:
    """What :func:`scan_block` found about one run.

    Attributes
    ----------
    status : str
        ``"ok"``, ``"diverged"`` or ``"insufficient"``.
    note : str or None
        Why a run is insufficient.
    n_steps : int
        Finite per-step values (updates) in the step range, before divergence.
    final_loss : float or None
        Last finite ``train_loss`` in the step range.
    overview : tuple of (ndarray, ndarray)
        A strided sample ``(iteration, train_loss)`` for the overview figure.
    """

    run: int
    status: str = "ok"
    note: str | None = None
    n_steps: int = 0
    final_loss: float | None = None
    overview: tuple[np.ndarray, np.ndarray] = field(
        default_factory=lambda: (np.zeros(0, np.int64), np.zeros(0))
    )
    #: insufficient because its stored data is missing (not because it diverged early)
    damaged: bool = False


def _real_columns(ds: xr.Dataset, r0: int, r1: int, rows: np.ndarray | None = None) -> np.ndarray:
    """``(r1-r0, n_param)`` mask of recorded (not padded) columns (``rows``: the names, if read)."""
    names = ds["param_name"]
    if "run" in names.dims:
        if rows is None:
            rows = names.isel(run=slice(r0, r1)).values
        labels = np.array([str(x) for x in np.asarray(rows).ravel().tolist()], dtype=object)
        return (labels != "").reshape(r1 - r0, -1)
    labels = np.array(strings(names), dtype=object)
    return np.broadcast_to(labels != "", (r1 - r0, labels.size))


def _chunk_bounds(var: xr.DataArray, dim: str) -> list[tuple[int, int]]:
    """Contiguous index ranges along ``dim`` matching the on-disk chunks of ``var``."""
    n = var.sizes[dim]
    chunks = var.chunksizes.get(dim) if var.chunks is not None else None
    if not chunks:
        return [(0, n)] if n else []
    out, a = [], 0
    for c in chunks:
        out.append((a, a + c))
        a += c
    return out


def _read(var: xr.DataArray, name: str, where: str) -> np.ndarray:
    """Load ``var``; a chunk that fails to decode becomes a one-line :class:`StoreError`."""
    try:
        return np.asarray(var.values)
    except (RuntimeError, ValueError, OSError, EOFError, TypeError) as exc:
        raise StoreError(
            f"{name}: cannot decode {where} ({type(exc).__name__}: {exc}); the store is "
            "damaged: restore it from a copy or re-train it"
        ) from None


def scan_block(
    ds: xr.Dataset,
    runs: Sequence[int],
    params: AnalyzeParams = AnalyzeParams(),
    *,
    name: str = "store",
    keep: bool = False,
) -> tuple[dict[int, RunHealth], dict[str, np.ndarray]]:
    """Read the data of runs ``min(runs) .. max(runs)`` once, chunk by chunk, and check it.

    A run is ``insufficient`` when it has fewer than ``params.min_finite_steps`` finite updates
    in the step range, or when it holds NaN at a step before its ``diverged_step`` (the store
    never writes NaN there, so its data is missing). Chunks that cannot be decoded raise.

    Parameters
    ----------
    keep
        Also return the block's data (``{variable: array over runs r0..r1}``), so that analyses
        can run on it without reading the store again.

    Returns
    -------
    health : dict
        :class:`RunHealth` per run of ``runs``.
    data : dict
        The loaded arrays when ``keep`` (else empty), with ``data["_runs"] = [r0, r1]``.
    """
    runs = sorted(int(r) for r in runs)
    r0, r1 = runs[0], runs[-1] + 1
    diverged = np.asarray(ds["diverged_step"].values[r0:r1], dtype=np.int64)
    limit = np.where(diverged < 0, np.iinfo(np.int64).max, diverged)
    first_nan = np.full(r1 - r0, np.iinfo(np.int64).max)  # earliest NaN step before divergence
    nan_var = [""] * (r1 - r0)
    all_nan = np.ones(r1 - r0, bool)
    n_steps = np.zeros(r1 - r0, np.int64)
    final_loss = np.full(r1 - r0, np.nan)
    data: dict[str, np.ndarray] = {}
    sample_at = None
    samples: list[tuple[list, list]] = [([], []) for _ in range(r1 - r0)]
    if keep and ds["param_name"].dims[:1] == ("run",):
        # the analyses read each run's names again (RunData.param_names): keep them too
        data["param_name"] = np.asarray(ds["param_name"].isel(run=slice(r0, r1)).values)
    real = _real_columns(ds, r0, r1, data.get("param_name"))
    all_real = bool(real.all())
    # the per-update loss; a store without it (another producer's) has the recorded rows' loss
    loss_series = "train_loss" if "train_loss" in ds.variables else "loss"

    for var_name in DATA_VARIABLES:
        if var_name not in ds.variables:
            continue
        var = ds[var_name].isel(run=slice(r0, r1))
        time_dim = var.dims[1]
        times = np.asarray(ds[time_dim].values, dtype=np.int64)
        if keep:
            data[var_name] = np.empty(var.shape, var.dtype)
        if var_name == loss_series and times.size:
            k = min(params.overview_points, times.size)
            sample_at = np.unique(np.linspace(0, times.size - 1, k).round().astype(np.int64))
        for a, b in _chunk_bounds(var, time_dim):
            where = f"{var_name} runs {r0}-{r1 - 1}, {time_dim} {times[a]}-{times[b - 1]}"
            part = _read(var.isel({time_dim: slice(a, b)}), name, where)
            if keep:
                data[var_name][:, a:b] = part
            t = times[a:b]
            before = t[None, :] < limit[:, None]  # (runs, time): rows that must be finite
            nan = np.isnan(part)
            if part.ndim == 3:
                # padded columns hold NaN by design; skip the mask when there are none
                nan = (nan if all_real else nan & real[:, None, :]).any(axis=2)
            all_nan &= ~(~nan & before).any(axis=1)
            bad = nan & before
            rows = bad.any(axis=1)
            for i in np.flatnonzero(rows):
                step = int(t[np.argmax(bad[i])])
                if step < first_nan[i]:
                    first_nan[i], nan_var[i] = step, var_name
            if var_name == loss_series:  # a per-step (2-D) series: finiteness counts here only
                ok = np.isfinite(part) & before
                n_steps += ok.sum(axis=1)
                for i in range(r1 - r0):
                    idx = np.flatnonzero(ok[i])
                    if idx.size:
                        final_loss[i] = part[i, idx[-1]]
                    if sample_at is not None:
                        sel = sample_at[(sample_at >= a) & (sample_at < b)] - a
                        sel = sel[ok[i, sel]]
                        samples[i][0].extend(t[sel].tolist())
                        samples[i][1].extend(part[i, sel].tolist())

    health: dict[int, RunHealth] = {}
    derivable = rows_are_consecutive(ds)
    for r in runs:
        i = r - r0
        h = RunHealth(run=r, n_steps=int(n_steps[i]))
        # a store of another producer may lack the per-update series (docs/store-contract.md)
        h.note = per_update_note(ds, r)
        h.final_loss = float(final_loss[i]) if np.isfinite(final_loss[i]) else None
        h.overview = (np.asarray(samples[i][0], np.int64), np.asarray(samples[i][1]))
        if diverged[i] >= 0:
            h.status = "diverged"
        if all_nan[i] and diverged[i] < 0:
            h.status, h.damaged = "insufficient", True
            h.note = (
                "no finite values: the run's data is all NaN although it did not diverge; "
                "its chunks are missing or overwritten, restore or re-train the store"
            )
        elif first_nan[i] != np.iinfo(np.int64).max:
            h.status, h.damaged = "insufficient", True
            h.note = (
                f"{nan_var[i]} is NaN at step {first_nan[i]}, before the run diverged "
                f"({'never' if diverged[i] < 0 else diverged[i]}): part of its data is missing; "
                "restore or re-train the store"
            )
        elif h.note and not derivable:
            h.status = "insufficient"
        elif n_steps[i] < params.min_finite_steps:
            h.status = "insufficient"
            why = (
                f"it diverged at update {diverged[i]}"
                if diverged[i] >= 0
                else "the step range holds too few updates"
            )
            h.note = (
                f"{n_steps[i]} finite update(s) in the analysed range, at least "
                f"{params.min_finite_steps} needed ({why})"
            )
        health[r] = h
    if keep:
        data["_runs"] = np.array([r0, r1])
    return health, data


def _with_block(ds: xr.Dataset, data: dict[str, np.ndarray]) -> xr.Dataset:
    """``ds`` whose data variables read runs ``data['_runs']`` from memory instead of the store."""
    import dask.array as da

    r0, r1 = (int(x) for x in data["_runs"])
    out = ds.copy()
    for name, block in data.items():
        if name == "_runs":
            continue
        lazy = ds[name].data
        if not isinstance(lazy, da.Array):
            continue
        parts = [lazy[:r0], in_memory_array(block), lazy[r1:]]
        parts = [p for p in parts if p.shape[0]]
        out[name] = (ds[name].dims, da.concatenate(parts, axis=0), ds[name].attrs)
        out[name].encoding = ds[name].encoding
    return out


def _block_bytes(ds: xr.Dataset, n_runs: int) -> int:
    total = 0
    for name in DATA_VARIABLES:
        if name in ds.variables:
            var = ds[name]
            total += var.dtype.itemsize * int(np.prod(var.shape[1:])) * n_runs
    return total


# --------------------------------------------------------------------------- block analysis


@dataclass
class BlockResult:
    """What one block task returns to the parent (all small, picklable)."""

    runs: list[int]
    health: dict[int, RunHealth]
    results: dict[str, xr.Dataset | None]
    run_notes: dict[str, dict[int, str]]  # analysis -> run -> why it measured nothing
    failures: list[dict]
    seconds: dict[str, float]
    loaded: bool
    warnings: list[dict] = field(default_factory=list)
    cpu_seconds: dict[str, float] = field(default_factory=dict)  # this process's CPU time


def _call_analysis(analysis: Analysis, ds: xr.Dataset, runs: list[int], params: dict, progress):
    result = analysis.run(ds, runs, params, progress)
    if not isinstance(result, xr.Dataset):
        raise TypeError(f"analyze returned {type(result).__name__}, expected xarray.Dataset")
    return result.load()


class capture_warnings:  # noqa: N801 - used as a context manager, like warnings.catch_warnings
    """Record the warnings an analysis emits (into ``sink``) instead of printing them.

    They go into the report's ``warnings`` list: the terminal stays readable, and nothing is lost.
    """

    def __init__(self, analysis: str, sink: list[dict]):
        self.analysis, self.sink = analysis, sink
        self._cm = warnings.catch_warnings(record=True)

    def __enter__(self):
        self._log = self._cm.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc) -> bool:
        for w in self._log:
            self.sink.append(
                {
                    "analysis": self.analysis,
                    "category": w.category.__name__,
                    "message": str(w.message).splitlines()[0][:300],
                    "where": f"{Path(w.filename).name}:{w.lineno}",
                    "count": 1,
                }
            )
        self._cm.__exit__(*exc)
        return False


def merge_warnings(items: list[dict]) -> list[dict]:
    """Identical warnings (same analysis, category, message, place) once, with a count."""
    merged: dict[tuple, dict] = {}
    for w in items:
        key = (w["analysis"], w["category"], w["message"], w["where"])
        if key in merged:
            merged[key]["count"] += w["count"]
        else:
            merged[key] = dict(w)
    return list(merged.values())


def _failure(name: str, runs: list[int], exc: BaseException) -> dict:
    tb = traceback.extract_tb(exc.__traceback__)
    where = f"{Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else "?"
    return {
        "analysis": name,
        "runs": runs,
        "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300],
        "where": where,
    }


def _mark_twins_of_damaged(
    ds: xr.Dataset, health: dict[int, RunHealth], params: AnalyzeParams, name: str, span: int
) -> None:
    """Mark ``insufficient`` (damaged) the twins in ``health`` whose original run lacks data.

    A twin is measured against its original, so a damaged original would give wrong twin
    numbers. Originals outside the block are scanned (read once per run-chunk, not kept).
    """
    twin_of = np.asarray(ds["twin_of"].values, dtype=np.int64)
    wanted = {int(twin_of[r]) for r in health if twin_of[r] >= 0}
    known = {o: health[o] for o in wanted if o in health}
    by_chunk: dict[int, list[int]] = {}
    for o in sorted(wanted - set(known)):
        if 0 <= o < twin_of.size:
            by_chunk.setdefault(o // span, []).append(o)
    for originals in by_chunk.values():
        got, _ = scan_block(ds, originals, params, name=name, keep=False)
        known.update(got)
    for r, h in health.items():
        o = int(twin_of[r])
        if o < 0 or h.status == "insufficient":
            continue
        orig = known.get(o)
        if orig is None or orig.damaged:
            h.status, h.damaged = "insufficient", True
            h.note = (
                f"its original run {o} is damaged ({orig.note if orig else 'out of range'}), "
                "so the twin cannot be compared with it"
            )


def analyze_block(
    path: str,
    names: Sequence[str],
    runs: Sequence[int],
    steps: tuple[int | None, int | None] | None = None,
    params: AnalyzeParams = AnalyzeParams(),
    analysis_params: dict[str, dict] | None = None,
    registry: dict[str, str | ModuleType | Analysis] | None = None,
    progress: Callable[[int], None] | None = None,
) -> BlockResult:
    """Check one block of runs and run the analyses ``names`` on its usable runs.

    This is the task every execution mode runs (in this process, a worker process or a dask
    worker). An analysis that raises :class:`GeomtrajError` for the block is retried run by run:
    runs that still raise get a note ("not measurable"); any other exception is recorded as a
    failure (an internal error) and does not stop the other runs or analyses. ``progress`` is
    handed to the analyses (called with the number of runs each has just finished).
    """
    import dask

    if registry is None:
        registry = available_analyses()
    else:  # module names travel to worker processes; modules themselves do not pickle
        registry = {
            k: importlib.import_module(v) if isinstance(v, str) else v for k, v in registry.items()
        }
    registry = {k: as_analysis(m, k) for k, m in registry.items() if k in names}
    analysis_params = analysis_params or {}
    with dask.config.set(scheduler="synchronous"):
        ds = select_steps(open_store(path), steps)
        runs = sorted(int(r) for r in runs)
        span = _run_chunk(ds)
        # held when the block's runs fit (plan_blocks splits chunks so that they do)
        loaded = _block_bytes(ds, runs[-1] - runs[0] + 1) <= params.memory_budget_bytes // 2
        health, data = scan_block(ds, runs, params, name=str(path), keep=loaded)
        _mark_twins_of_damaged(ds, health, params, str(path), span)
        view = _with_block(ds, data) if loaded else ds
        r0 = int(data["_runs"][0]) if loaded else 0
        held = {k: a for k, a in data.items() if k != "_runs"}
        del data
        good = [r for r in runs if health[r].status != "insufficient"]
        results: dict[str, xr.Dataset | None] = {}
        notes: dict[str, dict[int, str]] = {}
        failures: list[dict] = []
        seconds: dict[str, float] = {name: 0.0 for name in names}
        cpu: dict[str, float] = {name: 0.0 for name in names}
        caught: list[dict] = []
        # per-run reads index the block in memory instead of computing dask graphs
        with rows_in_memory(view, r0, held):
            for name in names:
                analysis = registry[name]
                kw = analysis_params.get(name, {})
                t0, c0 = time.perf_counter(), time.process_time()
                results[name], notes[name] = None, {}
                with capture_warnings(name, caught):
                    if not good:
                        continue
                    try:
                        results[name] = _call_analysis(analysis, view, good, kw, progress)
                    except Exception:
                        # isolate the runs that fail, keep the others
                        parts = []
                        for r in good:
                            try:
                                parts.append(_call_analysis(analysis, view, [r], kw, None))
                            except GeomtrajError as exc:
                                notes[name][r] = str(exc).splitlines()[0]
                            except Exception as exc:  # a bug in the analysis: report, go on
                                failures.append(_failure(name, [r], exc))
                        results[name] = _concat(parts, name, failures)
                    finally:
                        seconds[name] = time.perf_counter() - t0
                        cpu[name] = time.process_time() - c0
    return BlockResult(runs, health, results, notes, failures, seconds, loaded, caught, cpu)


# ----------------------------------------------------------------------------- execution


@dataclass
class Outcome:
    """Everything :func:`run_analyses` gathered, in run order.

    Attributes
    ----------
    runs : list of int
        The selected runs.
    health : dict
        :class:`RunHealth` per run.
    results : dict
        Per analysis, the concatenated result Dataset, or None when no run could be analysed.
    run_notes : dict
        Per analysis, run -> reason it measured nothing.
    failures : list of dict
        Internal errors of analyses (``analysis``, ``runs``, ``error``, ``where``).
    seconds : dict
        Per analysis, the summed time of its block tasks.
    cpu_seconds : dict
        Per analysis, the summed CPU time of its block tasks (their processes' CPU time: on a
        shared machine it moves less with the load than ``seconds``).
    wall_seconds : float
        Elapsed time of the whole run.
    """

    runs: list[int]
    health: dict[int, RunHealth]
    results: dict[str, xr.Dataset | None]
    run_notes: dict[str, dict[int, str]]
    failures: list[dict]
    seconds: dict[str, float]
    wall_seconds: float = 0.0
    blocks_loaded: int = 0
    warnings: list[dict] = field(default_factory=list)
    n_blocks: int = 0
    cpu_seconds: dict[str, float] = field(default_factory=dict)


def _worker_init() -> None:
    """Worker processes: one numba thread each (parallelism is across processes)."""
    os.environ["NUMBA_NUM_THREADS"] = "1"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")


def _mp_context():
    # not fork: zarr's async I/O threads may already be running (zarr#766)
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


#: Longest silence, in seconds, of progress written where stderr is not a terminal (nohup, CI).
PROGRESS_LINE_SECONDS = 9.0


class _Bar:
    """Progress on stderr: a tqdm bar on a terminal; elsewhere a plain line every few seconds.

    ``enabled`` None chooses by whether stderr is a terminal; True forces the bar; False is
    silent. Off a terminal, a line ``desc: done/total (pct%) after N s`` is printed every
    ``interval`` seconds from a daemon thread, so a long analysis is never silent for long.
    """

    def __init__(
        self, total: int, desc: str, enabled: bool | None, interval: float = PROGRESS_LINE_SECONDS
    ):
        tty = sys.stderr.isatty()
        self.bar = None
        self.total, self.desc, self.done, self.postfix = total, desc, 0, ""
        self._stop: threading.Event | None = None
        if total and (enabled or (enabled is None and tty)):
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="run", dynamic_ncols=True, file=sys.stderr)
        elif total and enabled is None:
            self._t0 = time.monotonic()
            self._stop = threading.Event()
            threading.Thread(
                target=self._lines, args=(interval,), daemon=True, name="geomtraj-progress"
            ).start()

    def _lines(self, interval: float) -> None:
        while not self._stop.wait(interval):
            pct = 100 * self.done / self.total
            extra = f", {self.postfix}" if self.postfix else ""
            print(
                f"{self.desc}: {self.done}/{self.total} ({pct:.0f}%) after "
                f"{time.monotonic() - self._t0:.0f} s{extra}",
                file=sys.stderr,
                flush=True,
            )

    def update(self, n: int, postfix: str = "") -> None:
        self.done += n
        if postfix:
            self.postfix = postfix
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix_str(postfix)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self._stop is not None:
            self._stop.set()


def _connect(scheduler: str):
    try:
        from distributed import Client
    except ImportError:  # pragma: no cover - distributed is a dependency
        raise GeomtrajError("--scheduler needs dask.distributed; pip install distributed") from None
    try:
        return Client(scheduler, timeout="15s", set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise GeomtrajError(
            f"cannot connect to the dask scheduler at {scheduler!r} ({type(exc).__name__}); "
            "start one (`dask scheduler` and `dask worker ADDRESS`) or drop --scheduler"
        ) from None


def run_analyses(
    path: str | os.PathLike,
    analyses: Sequence[str] | None = None,
    runs: Sequence[int] | None = None,
    steps: tuple[int | None, int | None] | None = None,
    *,
    jobs: int = 1,
    scheduler: str | None = None,
    progress: bool | None = None,
    params: AnalyzeParams = AnalyzeParams(),
    analysis_params: dict[str, dict] | None = None,
    registry: dict[str, ModuleType | Analysis] | None = None,
) -> Outcome:
    """Check the store at ``path`` and run ``analyses`` on ``runs`` (all by default).

    Parameters
    ----------
    path
        A geomtraj store; it is checked with :func:`geomtraj.store.check_integrity` first.
    analyses
        Names from :func:`available_analyses` (all by default).
    runs, steps
        Run indices, and an inclusive ``(first, last)`` update range.
    jobs
        Local worker processes (1: everything in this process).
    scheduler
        Address of a ``dask.distributed`` scheduler; the block tasks then run on its workers,
        which must see ``path`` (a shared file system) and have geomtraj installed.
    progress
        A progress bar on stderr: None shows it on a terminal only.
    registry
        Analyses to choose from instead of :mod:`geomtraj.analysis` (tests use this; with a
        scheduler or several jobs the modules must be importable by the workers).

    Raises
    ------
    GeomtrajError
        For an unusable store or selection, with a one-line message.
    """
    t_start = time.perf_counter()
    path = str(Path(path).absolute())
    ds = open_store(path)
    check_integrity(path, ds)
    mods = select_analyses(analyses, available_analyses() if registry is None else registry)
    names = list(mods)
    for name in names:  # a misspelt parameter is bad input, found before the long part
        try:
            as_analysis(mods[name], name).kwargs((analysis_params or {}).get(name))
        except TypeError as exc:
            raise GeomtrajError(f"parameters of {name}: {exc}") from None
    picked = list(range(ds.sizes["run"])) if runs is None else select_runs(ds, runs)
    select_steps(ds, steps)  # raises early for an empty step range
    per_run_points = max(
        2, min(params.overview_points, params.overview_total_points // len(picked))
    )
    params = dataclasses.replace(params, overview_points=per_run_points)
    # worker processes find the analyses by module (one registered at run time included)
    shipped = registry is None and all(isinstance(m, ModuleType) for m in mods.values())
    task_registry = None if shipped else {k: _module_name(m) for k, m in mods.items()}
    args = (names, steps, params, analysis_params, task_registry)

    # the bar counts (run, analysis) pairs; in this process the analyses report each run as
    # they finish it, from other processes a block counts when it comes back
    per_run = max(1, len(names))
    bar = _Bar(len(picked) * per_run, "analyze", progress)
    parts: list[BlockResult] = []
    counted = [0]

    def tick(n: int) -> None:
        counted[0] += n
        bar.update(n)

    def collect(res: BlockResult) -> None:
        parts.append(res)
        bad = sum(h.status == "insufficient" for p in parts for h in p.health.values())
        bar.update(max(0, len(res.runs) * per_run - counted[0]), f"insufficient {bad}")
        counted[0] = 0

    client = None
    try:
        client = _connect(scheduler) if scheduler else None
        # small stores are split so that every worker (local process or dask thread) gets a
        # block, and large run-chunks so that every block can be held in memory
        workers = sum(client.nthreads().values()) if client is not None else jobs
        blocks = plan_blocks(
            ds, picked, tasks=max(1, workers), max_bytes=params.memory_budget_bytes // 2
        )
        if client is not None:
            futures: list = []  # cancelled below, whatever fails first
            try:
                from distributed import as_completed

                futures = [
                    client.submit(analyze_block, path, args[0], b, *args[1:], pure=False)
                    for b in blocks
                ]
                for fut in as_completed(futures, loop=client.loop):
                    collect(fut.result())
            finally:
                client.cancel(futures)  # on an error or Ctrl-C, stop the rest
        elif jobs > 1 and len(blocks) > 1:
            with ProcessPoolExecutor(
                max_workers=min(jobs, len(blocks)),
                mp_context=_mp_context(),
                initializer=_worker_init,
            ) as pool:
                pending = {pool.submit(analyze_block, path, args[0], b, *args[1:]) for b in blocks}
                while pending:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in done:
                        collect(fut.result())
        else:
            # in this process the analyses themselves are passed (one need not be importable)
            local = args[:4] + (None if registry is None else mods,)
            for b in blocks:
                collect(analyze_block(path, *local[:1], b, *local[1:], progress=tick))
    finally:
        bar.close()
        if client is not None:
            client.close()

    parts.sort(key=lambda p: p.runs[0])
    health = {r: h for p in parts for r, h in p.health.items()}
    results: dict[str, xr.Dataset | None] = {}
    notes: dict[str, dict[int, str]] = {}
    seconds: dict[str, float] = {}
    cpu: dict[str, float] = {}
    failures = [f for p in parts for f in p.failures]
    caught = merge_warnings([w for p in parts for w in p.warnings])
    for name in names:
        got = [p.results[name] for p in parts if p.results.get(name) is not None]
        results[name] = _concat(got, name, failures)
        notes[name] = {r: n for p in parts for r, n in p.run_notes.get(name, {}).items()}
        seconds[name] = sum(p.seconds.get(name, 0.0) for p in parts)
        cpu[name] = sum(p.cpu_seconds.get(name, 0.0) for p in parts)
    return Outcome(
        runs=picked,
        health=health,
        results=results,
        run_notes=notes,
        failures=failures,
        warnings=caught,
        seconds=seconds,
        wall_seconds=time.perf_counter() - t_start,
        blocks_loaded=sum(p.loaded for p in parts),
        n_blocks=len(parts),
        cpu_seconds=cpu,
    )


def _module_name(obj: ModuleType | Analysis) -> str:
    """The importable module of an analysis, by which worker processes find it."""
    return obj.module if isinstance(obj, Analysis) else obj.__name__


def _concat(parts: list[xr.Dataset], name: str, failures: list[dict]) -> xr.Dataset | None:
    """Per-block results of one analysis over ``run``, in run order (None if there are none)."""
    if not parts:
        return None
    from geomtraj.analysis import combine

    try:
        out = combine(parts)
    except Exception as exc:  # the protocol requires blocks to concatenate: an analysis bug
        failures.append(_failure(name, [], exc) | {"error": f"blocks do not concatenate: {exc}"})
        return None
    if "run" in out.coords:
        out = out.sortby("run")
    return out


# ------------------------------------------------------------------------ distributed train


def train_distributed(
    plan,
    store: str | os.PathLike,
    scheduler: str,
    *,
    resume: bool = False,
    progress: bool | None = None,
) -> xr.Dataset:
    """Train ``plan`` into ``store`` on a ``dask.distributed`` cluster, one task per run block.

    The parent writes the template, every task trains one block of runs (aligned with the
    store's run chunks, so no two tasks write the same chunk), and the parent marks the store
    complete. The result is byte-identical to ``train_plan(plan, store)`` in one process.
    With ``resume``, an unfinished store of the same plan is trained again block by block (a
    block's values do not depend on where or how often it is trained).
    """
    from geomtraj.train.trainer import (
        check_resume,
        create_store,
        finish_store,
        plan_for_store,
        run_blocks,
        train_block,
    )

    path = Path(store).absolute()
    if resume:
        plan = plan_for_store(plan, path)
    if not check_resume(plan, path, resume):
        plan.validate()
    client = _connect(scheduler)
    try:
        if not path.exists():
            create_store(plan, path)
        blocks = run_blocks(plan)
        [plan_future] = client.scatter([plan], broadcast=True)
        futures = {
            client.submit(train_block, plan_future, str(path), b, pure=False): b for b in blocks
        }
        from distributed import as_completed

        bar = _Bar(len(plan.runs), "train", progress)
        try:
            for fut in as_completed(futures, loop=client.loop):
                fut.result()
                bar.update(len(futures[fut]))
        finally:
            bar.close()
            client.cancel(list(futures))  # on an error or Ctrl-C, stop the rest
    finally:
        client.close()
    return finish_store(plan, path)


def estimate_run_bytes(ds: xr.Dataset) -> int:
    """Bytes of one run's trajectories as :class:`~geomtraj.analysis.base.RunData` holds them."""
    rows, cols = int(ds.sizes["step"]), int(ds.sizes["param"])
    return 3 * rows * cols * 8 + 3 * int(ds.sizes.get("iteration", 0)) * 8


def human_bytes(n: float) -> str:
    """``1536 -> '1.5 KiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover
