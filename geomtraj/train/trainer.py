"""Train grids of tiny MLPs with Adam and record their trajectories (contract 3).

The step loop is Python around compiled kernels (:mod:`geomtraj.train.kernels.mlp`): each call
advances
every run of a block by one chunk of updates, in parallel across runs, and fills recording buffers.
Between calls this module writes the chunk to the store, applies last-bit perturbations and saves a
resume checkpoint. Snapshots, progress and I/O stay outside the JIT.

Recording (contract 2, with these conventions):

* ``step`` holds the recorded update counts ``record_every, 2*record_every, ..., steps``.
  ``theta``/``m``/``v`` at row ``t`` are the values after update ``t``; ``loss`` at row ``t`` is the
  full-batch loss at ``theta_{t-1}``, the parameters update ``t`` started from. The initial point
  ``theta_0`` is ``theta_init`` (``m_0 = v_0 = 0``).
* ``iteration`` holds every update count ``1..steps``; ``train_loss``, ``grad_norm`` and
  ``update_norm`` are the full-batch loss at ``theta_{t-1}``, ``||g_t||`` (after weight decay) and
  ``||theta_t - theta_{t-1}||``, computed in the run's precision.
* ``theta_final``, ``m_final``, ``v_final`` hold the full state after the last update (or at
  divergence), so a run can be continued or checked.
* With ``snapshot_every = S > 0``, ``theta_snapshot``, ``m_snapshot`` and ``v_snapshot`` on
  ``(run, snapshot, param_all)`` hold the full state after updates ``S, 2S, ...`` (coordinate
  ``snapshot``): every parameter at a coarse stride, beside the recorded subset at a fine one.
  After a run diverges its snapshots are NaN.

A last-bit twin (``perturbation = ulp:+n@NAME@t=T``) moves parameter ``NAME`` of
``theta_{T-1}`` by ``n`` units in the last place of the run's format just before update ``T``;
rows up to ``T-1`` equal its original's. A rescaling twin (``scale:k=K``) computes every step as
``(lr*K)*(u/K)`` instead of ``lr*u``, which is the identity in exact arithmetic.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import sys
import uuid
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numba
import numpy as np
import xarray as xr

from geomtraj import __version__, runtable
from geomtraj.constants import DIVERGENCE_LOSS_FACTOR, kernel_compilation
from geomtraj.errors import ConfigError, StoreError
from geomtraj.formats import FORMATS
from geomtraj.store import zarrstore as store_mod
from geomtraj.train.kernels.mlp import HYPER_COLUMNS, get_kernels
from geomtraj.train.kernels.rounding import nextafter_format, round_to_format
from geomtraj.train.models import MLPSpec, init_params, parse_hidden
from geomtraj.train.plan import DataSource, Perturbation, Plan, Run, check_resources, lane_key

#: Full-batch runs of one architecture and data set train with the lane kernel (the run as the
#: vector axis) when there are at least this many of them; fewer train one run per thread. None
#: means one lane block per thread (``LANES * numba.get_num_threads()``), so that both cores stay
#: busy. Both kernels give bit-identical results, so this only changes speed.
LANE_MIN_RUNS: int | None = None

__all__ = [
    "DataSource",
    "Perturbation",
    "Run",
    "Plan",
    "train",
    "train_plan",
    "replay",
    "run_blocks",
    "create_store",
    "plan_for_store",
    "train_block",
    "finish_store",
]


#: Default of :meth:`_Group.advance`: no snapshot steps.
_NO_SNAPSHOTS = np.zeros(0, np.int64)


# --------------------------------------------------------------------------------- run state


class _Group:
    """Runs that share one compiled kernel: same precision format, activation and loss."""

    def __init__(
        self,
        plan: Plan,
        members: np.ndarray,
        rec_idx: np.ndarray,
        fmt: str,
        slots: np.ndarray | None = None,
    ):
        runs = [plan.runs[i] for i in members]
        self.members = members
        # rows of the trainer's buffers that hold these runs (their plan indices when it trains
        # the whole plan; positions within the block when it trains a block of runs)
        self.slots = members if slots is None else slots
        self.fmt = fmt
        self.dtype = np.dtype(FORMATS[fmt].storage_dtype)
        self.kernels = get_kernels(fmt, runs[0].spec.activation, runs[0].spec.loss)
        n = len(runs)
        max_layers = max(r.spec.n_layers for r in runs)
        self.sizes = np.zeros((n, max_layers + 1), np.int64)
        self.n_layers = np.array([r.spec.n_layers for r in runs], np.int64)
        for k, r in enumerate(runs):
            self.sizes[k, : r.spec.n_layers + 1] = r.spec.sizes
        n_max = max(r.spec.n_params for r in runs)
        d_in = plan.datasets[0].X.shape[1]
        p_max = max(ds.X.shape[0] for ds in plan.datasets)
        self.data_X = np.zeros((len(plan.datasets), d_in, p_max), self.dtype)
        self.data_y = np.zeros((len(plan.datasets), p_max), self.dtype)
        self.data_n = np.array([ds.X.shape[0] for ds in plan.datasets], np.int64)
        for d, ds in enumerate(plan.datasets):
            self.data_X[d, :, : ds.X.shape[0]] = _to_format(ds.X.T, fmt)
            self.data_y[d, : ds.X.shape[0]] = _to_format(ds.y, fmt)
        self.data_idx = np.array([r.data for r in runs], np.int64)
        self.batch = np.array([r.batch_size for r in runs], np.int64)
        self.rng = np.array(
            [np.random.SeedSequence([r.seed, 0x6A7]).generate_state(1, np.uint64)[0] for r in runs],
            np.uint64,
        )
        self.perm = np.tile(np.arange(p_max, dtype=np.int64), (n, 1))
        self.pos = np.zeros(n, np.int64)
        # one column per kernel field of the run table, in its declared order (HYPER_COLUMNS)
        hyper = [runtable.kernel_row(r, plan) for r in runs]
        self.hyper = np.array(hyper, np.float64).astype(self.dtype)
        assert self.hyper.shape[1] == len(HYPER_COLUMNS)
        theta0 = np.zeros((n, n_max))
        for k, r in enumerate(runs):
            th0 = init_params(r.spec, r.seed) if r.theta0 is None else r.theta0
            theta0[k, : r.spec.n_params] = th0
        self.theta = _to_format(theta0, fmt)  # (elementwise: one call rounds every run alike)
        self.theta_init = self.theta.copy()
        self.m = np.zeros_like(self.theta)
        self.v = np.zeros_like(self.theta)
        self.powers = np.ones((n, 2), self.dtype)
        self.loss0 = np.zeros(n, self.dtype)
        self.diverged = np.full(n, -1, np.int64)
        self.rec_idx = np.ascontiguousarray(rec_idx[members])
        self.ulp_events = [
            (k, r.spec.param_index(r.perturbation.param), r.perturbation.ulps, r.perturbation.step)
            for k, r in enumerate(runs)
            if r.perturbation is not None and r.perturbation.kind == "ulp"
        ]
        self._plan_lanes(plan, runs)

    STATE = ("theta", "m", "v", "powers", "loss0", "diverged", "rng", "perm", "pos")

    def state(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}{name}": getattr(self, name) for name in self.STATE}

    def load_state(self, prefix: str, saved) -> None:
        for name in self.STATE:
            getattr(self, name)[...] = saved[f"{prefix}{name}"]

    def advance(
        self,
        t_begin: int,
        t_end: int,
        row_base: int,
        upd_base: int,
        rec_every: int,
        buf: dict[str, np.ndarray],
        snapshot_steps: np.ndarray = _NO_SNAPSHOTS,
        snapshot=None,
    ) -> None:
        """Run updates ``t_begin+1 .. t_end``, applying ulp perturbations before their update.

        ``snapshot(group, step)`` is called after each update in ``snapshot_steps`` (before a
        perturbation of the same step, which belongs to the next update).
        """
        cuts = {s - 1 for _, _, _, s in self.ulp_events if t_begin <= s - 1 < t_end}
        snaps = {int(s) for s in snapshot_steps if t_begin < s <= t_end}
        start = t_begin
        for cut in sorted(cuts | snaps | {t_end}):
            self._call(start, cut, row_base, upd_base, rec_every, buf)
            if cut in snaps:
                snapshot(self, cut)
            for k, idx, ulps, step in self.ulp_events:
                if step - 1 == cut and cut < t_end and self.diverged[k] < 0:
                    self.theta[k, idx] = nextafter_format(self.theta[k, idx], ulps, self.fmt)
            start = cut

    # per-run arrays the kernels read or update, and the recording buffers they fill
    _RUN_ARRAYS = ("sizes", "n_layers", "data_idx", "batch", "rng", "perm", "pos", "hyper",
                   "theta", "m", "v", "powers", "loss0", "diverged", "rec_idx")  # fmt: skip
    _UPDATED = ("rng", "perm", "pos", "theta", "m", "v", "powers", "loss0", "diverged")

    def _plan_lanes(self, plan: Plan, runs) -> None:
        """Split the group into lane blocks and runs for the per-run kernel.

        Full-batch runs that share architecture and data set (:func:`geomtraj.train.plan.lane_key`),
        when there are enough of them (see :data:`LANE_MIN_RUNS`), train in blocks of ``LANES``
        with the run as the vector axis; a last partial block is padded with copies of a real
        run, whose results are discarded.
        """
        width = self.kernels.LANES
        min_runs = LANE_MIN_RUNS if LANE_MIN_RUNS is not None else width * numba.get_num_threads()
        by_key: dict[tuple, list[int]] = {}
        solo: list[int] = []
        for k, r in enumerate(runs):
            key = lane_key(r, plan)
            if key is None:
                solo.append(k)
            else:
                by_key.setdefault(key, []).append(k)
        self.lane_sets = []
        for idx in by_key.values():
            if len(idx) < min_runs:
                solo += idx
                continue
            pad = (-len(idx)) % width
            padded = np.array(idx + [idx[-1]] * pad, np.int64)
            real = np.arange(len(padded)) < len(idx)
            self.lane_sets.append((padded, real, runs[idx[0]].data))
        self.solo = np.array(sorted(solo), np.int64)
        self.solo_cost = np.array(
            [_step_cost(runs[k].spec, int(self.data_n[runs[k].data])) for k in self.solo]
        )
        self._solo_orders: dict[int, np.ndarray] = {}

    def _solo_order(self) -> np.ndarray:
        """``self.solo`` in the order that gives each numba thread about the same work."""
        threads = numba.get_num_threads()
        if threads not in self._solo_orders:
            order = balanced_order(self.solo_cost, threads)
            self._solo_orders[threads] = self.solo[order]
        return self._solo_orders[threads]

    def _call(self, t0, t1, row_base, upd_base, rec_every, buf) -> None:
        if t1 <= t0:
            return
        factor = self.dtype.type(DIVERGENCE_LOSS_FACTOR)
        with kernel_compilation():
            if len(self.solo):
                idx = self._solo_order()
                self._call_runs(idx, t0, t1, row_base, upd_base, rec_every, buf, factor)
            for padded, real, data in self.lane_sets:
                self._call_lanes(padded, real, data, t0, t1, row_base, upd_base, rec_every,
                                 buf, factor)  # fmt: skip

    def _call_runs(self, idx, t0, t1, row_base, upd_base, rec_every, buf, factor) -> None:
        """The per-run kernel on the runs ``idx`` of this group (gathered, then scattered back).

        Each run is independent of the others, so neither the subset nor its order changes a bit.
        """
        whole = len(idx) == len(self.members) and bool(np.all(idx == np.arange(len(idx))))
        arr = {k: getattr(self, k) if whole else getattr(self, k)[idx] for k in self._RUN_ARRAYS}
        sub = buf if whole else {k: v[idx] for k, v in buf.items()}
        self.kernels._train_block(
            t0, t1, row_base, upd_base, rec_every, arr["sizes"], arr["n_layers"],
            self.data_X, self.data_y, self.data_n, arr["data_idx"], arr["batch"], arr["rng"],
            arr["perm"], arr["pos"], arr["hyper"], arr["theta"], arr["m"], arr["v"],
            arr["powers"], arr["loss0"], arr["diverged"], arr["rec_idx"],
            sub["theta"], sub["m"], sub["v"], sub["loss"],
            sub["train_loss"], sub["grad_norm"], sub["update_norm"], factor,
        )  # fmt: skip
        if not whole:
            for k in self._UPDATED:
                getattr(self, k)[idx] = arr[k]
            for k, v in sub.items():
                buf[k][idx] = v

    def _call_lanes(self, padded, real, data, t0, t1, row_base, upd_base, rec_every, buf,
                    factor) -> None:  # fmt: skip
        """The lane kernel on one lane set: state transposed to (block, ..., lane) and back."""
        width = self.kernels.LANES
        nb = len(padded) // width

        def lanes(a):  # (runs, ...) -> (block, ..., lane)
            g = a[padded].reshape(nb, width, *a.shape[1:])
            return np.ascontiguousarray(np.moveaxis(g, 1, -1))

        def runs(a):  # inverse of lanes()
            return np.moveaxis(a, -1, 1).reshape(nb * width, *a.shape[1:-1])

        k0 = padded[0]
        n_layers = int(self.n_layers[k0])
        state = {k: lanes(getattr(self, k)) for k in ("hyper", "theta", "m", "v", "powers",
                                                       "loss0", "diverged")}  # fmt: skip
        # recording buffers in block order: views when the lane set is whole consecutive runs
        span = _as_slice(padded)
        if span is not None:
            sub = {k: v[span].reshape(nb, width, *v.shape[1:]) for k, v in buf.items()}
        else:
            sub = {k: np.ascontiguousarray(v[padded].reshape(nb, width, *v.shape[1:]))
                   for k, v in buf.items()}  # fmt: skip
        self.kernels._train_lanes(
            t0, t1, row_base, upd_base, rec_every, self.sizes[k0, : n_layers + 1], n_layers,
            self.data_X[data], self.data_y[data], int(self.data_n[data]),
            state["hyper"], state["theta"], state["m"], state["v"], state["powers"],
            state["loss0"], state["diverged"], self.rec_idx[k0],
            sub["theta"], sub["m"], sub["v"], sub["loss"],
            sub["train_loss"], sub["grad_norm"], sub["update_norm"], factor,
        )  # fmt: skip
        keep = padded[real]
        for k in ("theta", "m", "v", "powers", "loss0", "diverged"):
            getattr(self, k)[keep] = runs(state[k])[real]
        if span is None:
            for k, v in sub.items():
                buf[k][keep] = v.reshape(nb * width, *v.shape[2:])[real]


def _as_slice(idx: np.ndarray) -> slice | None:
    """``slice(a, b)`` when ``idx`` is ``a, a+1, ..., b-1`` (so a view can replace a copy)."""
    if idx.size == 0 or idx.ndim != 1:
        return None
    a = int(idx[0])
    return slice(a, a + idx.size) if np.array_equal(idx, np.arange(a, a + idx.size)) else None


#: Relative per-step time of a run in the per-run kernel, per data point:
#: ``n_params + _UNIT_COST * hidden units + _RUN_OVERHEAD`` (fitted to one-thread float32 tanh
#: timings of widths 5..44; activations and the fixed per-step work weigh a lot in nets this small).
_UNIT_COST = 5
_RUN_OVERHEAD = 200


def _step_cost(spec: MLPSpec, n_data: int) -> int:
    """Relative time of one update of a run (mini-batch runs too: every step evaluates the
    full-batch loss, and at batch 16 of 64 points they measured as slow as full-batch runs)."""
    return n_data * (spec.n_params + _UNIT_COST * sum(spec.hidden) + _RUN_OVERHEAD)


def balanced_order(cost: np.ndarray, threads: int) -> np.ndarray:
    """Positions ``0..n-1`` reordered so that ``prange(n)`` gives each thread about equal cost.

    numba's omp and workqueue layers split ``prange(n)`` statically into ``threads`` contiguous
    pieces, the first ``n % threads`` of them one longer (``set_parallel_chunksize`` does not
    change that assignment), so runs ordered from small to large nets leave the last thread most
    of the work. Here the pieces keep those sizes and are filled greedily, most expensive run
    first, each run going to the cheapest piece that still has room (longest processing time
    first); the pieces are then concatenated. Runs are independent, so any order gives the same
    bits; a layer that splits differently (TBB) just gains less.
    """
    n = len(cost)
    if threads <= 1 or n <= threads:
        return np.arange(n)
    size, longer = divmod(n, threads)
    room = [size + (piece < longer) for piece in range(threads)]
    load = [0.0] * threads
    pieces: list[list[int]] = [[] for _ in range(threads)]
    for k in np.argsort(-np.asarray(cost, np.float64), kind="stable"):
        piece = min((p for p in range(threads) if room[p]), key=load.__getitem__)
        pieces[piece].append(int(k))
        load[piece] += float(cost[k])
        room[piece] -= 1
    return np.array([k for piece in pieces for k in piece], np.int64)


def _to_format(a: np.ndarray, fmt: str) -> np.ndarray:
    """Cast float64 values to a run's container dtype and round them to its format."""
    a32 = np.asarray(a, dtype=FORMATS[fmt].storage_dtype)
    return round_to_format(a32, fmt) if FORMATS[fmt].emulated else a32


# ----------------------------------------------------------------------- the training engine


class _Trainer:
    """Chunk loop shared by the in-memory and the zarr paths.

    ``runs`` (a contiguous ``range`` of plan indices, default all) restricts training to a block of
    runs; buffers and gathered state then hold that block only, in run order. Layout (recorded
    coordinates, chunking, storage dtype) always comes from the whole plan, so a block's values
    land in the same places of the same store as they would in a whole-plan run.
    """

    def __init__(self, plan: Plan, runs: range | None = None):
        plan.validate()
        self.plan = plan
        self.runs = range(len(plan.runs)) if runs is None else runs
        self.n_all = max(r.spec.n_params for r in plan.runs)
        self.rec_idx = plan.recorded_indices()
        self.snapshot_steps = plan.snapshot_steps()
        self.n_rec = self.rec_idx.shape[1]
        self.run_chunk, self.rows = plan.chunking(self.n_rec)
        self.n_chunks = -(-plan.n_rows // self.rows)
        self.sdtype = plan.storage_dtype
        keys: dict[tuple, list[int]] = {}
        for i in self.runs:
            r = plan.runs[i]
            keys.setdefault((r.precision, r.spec.activation, r.spec.loss), []).append(i)
        first = self.runs.start
        self.groups = [
            _Group(plan, np.array(idx), self.rec_idx, fmt, np.array(idx) - first)
            for (fmt, _, _), idx in keys.items()
        ]

    # -- buffers ---------------------------------------------------------------------------
    def new_buffers(self, rows: int) -> dict[str, np.ndarray]:
        n, upd = len(self.runs), rows * self.plan.record_every
        nan = self.sdtype.type(np.nan)
        return {
            "theta": np.full((n, rows, self.n_rec), nan, self.sdtype),
            "m": np.full((n, rows, self.n_rec), nan, self.sdtype),
            "v": np.full((n, rows, self.n_rec), nan, self.sdtype),
            "loss": np.full((n, rows), nan, self.sdtype),
            "train_loss": np.full((n, upd), nan, self.sdtype),
            "grad_norm": np.full((n, upd), nan, self.sdtype),
            "update_norm": np.full((n, upd), nan, self.sdtype),
        }

    def run_chunk_steps(self, c: int) -> tuple[int, int, dict[str, np.ndarray]]:
        """Train chunk ``c``; return its row range start, row count and the filled buffers."""
        r = self.plan.record_every
        row0 = c * self.rows
        rows = min(self.rows, self.plan.n_rows - row0)
        buf = self.new_buffers(rows)
        t_begin, t_end = row0 * r, (row0 + rows) * r
        in_chunk = (self.snapshot_steps > t_begin) & (self.snapshot_steps <= t_end)
        snap_steps = self.snapshot_steps[in_chunk]
        snap = self.new_snapshots(snap_steps.size)
        position = {int(s): j for j, s in enumerate(snap_steps)}

        def take(g: _Group, step: int) -> None:
            j = position[step]
            for name in _TRAJ:
                vals = getattr(g, name)
                snap[name][g.slots, j, : vals.shape[1]] = vals
            # a diverged run's state is meaningless after its divergence step
            dead = g.slots[g.diverged >= 0]
            for name in _TRAJ:
                snap[name][dead, j, :] = np.nan

        for g in self.groups:
            # each group fills its own contiguous buffers: views where its runs are consecutive,
            # else copies scattered back in run order
            span = _as_slice(g.slots)
            if span is not None:
                g.advance(t_begin, t_end, row0, t_begin, r,
                          {k: v[span] for k, v in buf.items()}, snap_steps, take)  # fmt: skip
                continue
            sub = {k: np.ascontiguousarray(v[g.slots]) for k, v in buf.items()}
            g.advance(t_begin, t_end, row0, t_begin, r, sub, snap_steps, take)
            for k, v in sub.items():
                buf[k][g.slots] = v
        buf.update({f"{k}_snapshot": v for k, v in snap.items()})
        buf["snapshot_index"] = np.flatnonzero(in_chunk)
        return row0, rows, buf

    def new_snapshots(self, n_snap: int) -> dict[str, np.ndarray]:
        """NaN-filled snapshot buffers ``(runs, n_snap, param_all)`` for theta, m and v."""
        shape = (len(self.runs), n_snap, self.n_all)
        return {name: np.full(shape, np.nan, self.sdtype) for name in _TRAJ}

    # -- state in run order ----------------------------------------------------------------
    def gather(self, name: str) -> np.ndarray:
        """A per-run state array of all groups, in run order, cast to the storage dtype."""
        first = getattr(self.groups[0], name)
        # parameter vectors are padded to the widest network of the whole plan (the store's
        # param_all), whichever runs this trainer holds
        vector = name in ("theta_init", "theta", "m", "v")
        shape = (len(self.runs), self.n_all) if vector else (len(self.runs), *first.shape[1:])
        dtype = first.dtype if first.dtype.kind in "iu" else self.sdtype
        fill = -1 if dtype.kind in "iu" else np.nan
        out = np.full(shape, fill, dtype)
        for g in self.groups:
            vals = getattr(g, name)
            if vals.ndim == 1:
                out[g.slots] = vals
            else:
                out[g.slots, ..., : vals.shape[-1]] = vals
        return out

    def checkpoint(self) -> dict[str, np.ndarray]:
        state: dict[str, np.ndarray] = {}
        for k, g in enumerate(self.groups):
            state.update(g.state(f"g{k}_"))
        return state

    def restore(self, saved) -> None:
        for k, g in enumerate(self.groups):
            g.load_state(f"g{k}_", saved)


# ------------------------------------------------------------------------ dataset assembly


def _run_table(plan: Plan) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
    """The stored run-table fields a plan sets (all but ``diverged_step``), as declared."""
    table = {}
    for f in runtable.stored_fields():
        if f.source is None:  # set by training itself (diverged_step)
            continue
        dtype = object if f.dtype is str else f.dtype
        table[f.name] = (("run",), np.array([f.source(r, plan) for r in plan.runs], dtype))
    return table


def _static_dataset(tr: _Trainer, store_id: str | None = None) -> xr.Dataset:
    """Coordinates, run table, data sets, parameter names and initial parameters.

    ``store_id`` (a random token) ties a store in training to its resume checkpoint; it is
    dropped when the store is finished, so finished stores stay byte-identical.
    """
    plan = tr.plan
    r = plan.record_every
    names, names_of = [], {}  # (grids share a few architectures: name each one once)
    for k, run in enumerate(plan.runs):
        all_names = names_of.get(run.spec)
        if all_names is None:
            all_names = names_of[run.spec] = run.spec.param_names()
        names.append([all_names[i] if i >= 0 else "" for i in tr.rec_idx[k]])
    same = all(n == names[0] for n in names)
    p_max = max(ds.X.shape[0] for ds in plan.datasets)
    d_in = plan.datasets[0].X.shape[1]
    data_x = np.full((len(plan.datasets), p_max, d_in), np.nan)
    data_y = np.full((len(plan.datasets), p_max), np.nan)
    for d, ds in enumerate(plan.datasets):
        data_x[d, : ds.X.shape[0]] = ds.X
        data_y[d, : ds.X.shape[0]] = ds.y
    pdims = ("param",) if same else ("run", "param")
    variables = {
        **_run_table(plan),
        "param_name": (pdims, np.array(names[0] if same else names, dtype=object)),
        "param_index": (pdims, tr.rec_idx[0] if same else tr.rec_idx),
        "theta_init": (("run", "param_all"), tr.gather("theta_init")),
        "data_x": (("data", "point", "feature"), data_x),
        "data_y": (("data", "point"), data_y),
        "data_n": (("data",), np.array([ds.X.shape[0] for ds in plan.datasets], np.int64)),
    }
    coords = {
        "step": ("step", np.arange(1, plan.n_rows + 1, dtype=np.int64) * r),
        "iteration": ("iteration", np.arange(1, plan.steps + 1, dtype=np.int64)),
    }
    attrs = {
        "geomtraj_schema": store_mod.SCHEMA_VERSION,
        "geomtraj_version": __version__,
        "geomtraj_status": store_mod.STATUS_TRAINING,
        "geomtraj_fingerprint": plan.fingerprint(),
        "steps": plan.steps,
        "record_every": r,
        "record_params": json.dumps(
            plan.record_params
            if not isinstance(plan.record_params, np.integer)
            else int(plan.record_params)
        ),
        "datasets": json.dumps([{"name": ds.name, **ds.attrs} for ds in plan.datasets]),
        "divergence_loss_factor": DIVERGENCE_LOSS_FACTOR,
        "init": "Glorot-uniform weights from numpy default_rng(seed), zero biases",
        "description": json.dumps(plan.description),
    }
    if store_id is not None:
        attrs[STORE_ID] = store_id
    return xr.Dataset(variables, coords=coords, attrs=attrs)


def _lazy(shape, dtype, chunks):
    import dask.array as da

    fill = -1 if np.dtype(dtype).kind in "iu" else np.nan
    return da.full(shape, fill, dtype=dtype, chunks=chunks)


def _template(tr: _Trainer, store_id: str | None = None) -> tuple[xr.Dataset, dict[str, int]]:
    """Full-size store template: static variables eager, trajectories lazy (written later)."""
    plan, sd = tr.plan, tr.sdtype
    n, rows, rec = len(plan.runs), plan.n_rows, tr.n_rec
    n_all = max(run.spec.n_params for run in plan.runs)
    chunks = {
        "run": tr.run_chunk,
        "step": tr.rows,
        "iteration": tr.rows * plan.record_every,
        "param": rec or 1,
        "param_all": n_all,
    }
    rc, sc, uc = tr.run_chunk, tr.rows, tr.rows * plan.record_every
    ds = _static_dataset(tr, store_id)
    for name in ("theta", "m", "v"):
        ds[name] = (("run", "step", "param"), _lazy((n, rows, rec), sd, (rc, sc, max(rec, 1))))
    ds["loss"] = (("run", "step"), _lazy((n, rows), sd, (rc, sc)))
    for name in ("train_loss", "grad_norm", "update_norm"):
        ds[name] = (("run", "iteration"), _lazy((n, plan.steps), sd, (rc, uc)))
    for name in ("theta_final", "m_final", "v_final"):
        ds[name] = (("run", "param_all"), _lazy((n, n_all), sd, (rc, n_all)))
    ds["diverged_step"] = (("run",), _lazy((n,), np.int64, (rc,)))
    n_snap = tr.snapshot_steps.size
    if n_snap:
        # Every training chunk must write whole zarr chunks along `snapshot`: when the snapshot
        # stride divides the updates of a training chunk, a zarr chunk holds that chunk's
        # snapshots (fewer, larger reads); otherwise one snapshot per zarr chunk.
        span = tr.rows * plan.record_every
        per_chunk = span // plan.snapshot_every if span % plan.snapshot_every == 0 else 1
        chunks["snapshot"] = max(1, min(per_chunk, n_snap))
        ds = ds.assign_coords(snapshot=("snapshot", tr.snapshot_steps))
        for name in _TRAJ:
            ds[f"{name}_snapshot"] = (
                ("run", "snapshot", "param_all"),
                _lazy((n, n_snap, n_all), sd, (rc, chunks["snapshot"], n_all)),
            )
    return ds, chunks


_TRAJ = ("theta", "m", "v")


def _chunk_dataset(row0: int, rows: int, buf: dict[str, np.ndarray]):
    """The chunk's recorded rows and per-step series (snapshots: see :func:`_snapshot_dataset`)."""
    part = xr.Dataset(
        {
            **{k: (("run", "step", "param"), buf[k]) for k in _TRAJ},
            "loss": (("run", "step"), buf["loss"]),
            **{
                k: (("run", "iteration"), buf[k])
                for k in ("train_loss", "grad_norm", "update_norm")
            },
        }
    )
    return part


def _snapshot_dataset(buf: dict[str, np.ndarray]) -> tuple[xr.Dataset, dict] | None:
    """The snapshots taken during a chunk and their region along ``snapshot`` (None if none)."""
    idx = buf["snapshot_index"]
    if idx.size == 0:
        return None
    part = xr.Dataset(
        {f"{k}_snapshot": (("run", "snapshot", "param_all"), buf[f"{k}_snapshot"]) for k in _TRAJ}
    )
    return part, {"snapshot": slice(int(idx[0]), int(idx[-1]) + 1)}


def _final_dataset(tr: _Trainer) -> xr.Dataset:
    diverged = tr.gather("diverged")
    return xr.Dataset(
        {
            "theta_final": (("run", "param_all"), tr.gather("theta")),
            "m_final": (("run", "param_all"), tr.gather("m")),
            "v_final": (("run", "param_all"), tr.gather("v")),
            "diverged_step": (("run",), diverged.astype(np.int64)),
        }
    )


# ----------------------------------------------------------------------------- progress


class _Progress:
    """A tqdm bar in network-steps with runs done; silent when not on a terminal or quiet."""

    def __init__(self, total_runs: int, steps: int, done_steps: int, enabled: bool | None):
        if enabled is None:
            enabled = sys.stderr.isatty()
        self.bar = None
        self.total_runs = total_runs
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total_runs * steps,
                initial=total_runs * done_steps,
                unit="net-step",
                unit_scale=True,
                desc="train",
                dynamic_ncols=True,
                smoothing=0.1,
            )

    def update(self, n_steps: int, runs_done: int) -> None:
        if self.bar is not None:
            self.bar.update(self.total_runs * n_steps)
            self.bar.set_postfix_str(f"runs done {runs_done}/{self.total_runs}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ------------------------------------------------------------------------------ entry points


def train_plan(
    plan: Plan,
    store: str | os.PathLike | None = None,
    *,
    resume: bool = False,
    progress: bool | None = None,
) -> xr.Dataset:
    """Train every run of ``plan``.

    With ``store=None`` the result is returned as an in-memory Dataset. With a path, it is
    written chunk by chunk to a new zarr store (an existing path is an error unless ``resume``),
    and the lazily opened store is returned. ``resume=True`` continues an interrupted store from its
    last complete chunk; the finished store is bit-identical to an uninterrupted one.
    """
    check_resources(plan)  # (a grid the memory cannot hold is refused before allocating it)
    if store is None:
        return _train_in_memory(_Trainer(plan), progress)
    if resume:
        plan = plan_for_store(plan, store)
    return _train_to_store(_Trainer(plan), Path(store), resume, progress)


def replay(plan: Plan) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
    """Train ``plan`` again in memory, chunk by chunk: the replay interface for analyses.

    An analysis that needs states a store does not hold (the mechanism analysis's every-few-updates
    states) replays the run through this function instead of the trainer's internals. The same
    kernels run as for :func:`train_plan`, so the states are the original run's bit for bit;
    nothing is written.

    Yields
    ------
    (row0, rows, buffers)
        Per chunk of ``plan.chunk_rows`` recorded rows: the first row, the row count and the
        recorded variables (``theta``, ``m``, ``v``, ``update_norm``, ``loss``, ...) as arrays
        ``(run, row, ...)``. The buffers are new for every chunk.
    """
    check_resources(plan)
    tr = _Trainer(plan)
    for c in range(tr.n_chunks):
        yield tr.run_chunk_steps(c)


def _runs_done(tr: _Trainer, t_end: int) -> int:
    div = tr.gather("diverged")
    return int(np.sum(div >= 0)) if t_end < tr.plan.steps else len(tr.runs)


def _train_in_memory(tr: _Trainer, progress) -> xr.Dataset:
    plan = tr.plan
    ds, _ = _template(tr)
    snaps = [f"{k}_snapshot" for k in _TRAJ] if tr.snapshot_steps.size else []
    full = {k: np.array(ds[k].data) for k in ("theta", "m", "v", "loss", *_SCALARS, *snaps)}
    bar = _Progress(len(plan.runs), plan.steps, 0, progress)
    try:
        for c in range(tr.n_chunks):
            row0, rows, buf = tr.run_chunk_steps(c)
            u0, u1 = row0 * plan.record_every, (row0 + rows) * plan.record_every
            for k in ("theta", "m", "v", "loss"):
                full[k][:, row0 : row0 + rows] = buf[k]
            for k in _SCALARS:
                full[k][:, u0:u1] = buf[k]
            for k in snaps:
                full[k][:, buf["snapshot_index"]] = buf[k]
            bar.update(u1 - u0, _runs_done(tr, u1))
    finally:
        bar.close()
    for k, arr in full.items():
        ds[k] = (ds[k].dims, arr)
    for k, var in _final_dataset(tr).data_vars.items():
        ds[k] = var
    ds.attrs["geomtraj_status"] = store_mod.STATUS_COMPLETE
    return ds


_SCALARS = ("train_loss", "grad_norm", "update_norm")


#: Store attribute, present while a store is in training: a random token its resume checkpoint
#: repeats, so that a checkpoint left by an earlier, deleted store is never applied to this one.
STORE_ID = "geomtraj_store_id"


def _save_checkpoint(path: Path, tr: _Trainer, next_chunk: int, store_id: str) -> None:
    """Write the resume state atomically: a crash leaves either the old or the new file."""
    final = store_mod.resume_path(path)
    tmp = final.with_name(final.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.savez(
            fh,
            next_chunk=np.int64(next_chunk),
            store_id=np.str_(store_id),
            fingerprint=np.str_(tr.plan.fingerprint()),
            **tr.checkpoint(),
        )
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, final)


def plan_for_store(plan: Plan, store: str | os.PathLike) -> Plan:
    """``plan`` with the run chunk of the existing ``store`` when the plan leaves it to the default.

    The default run chunk depends on the version that made a store (it grew for small chunks);
    resuming a store, training a block of it or reusing it must follow the store's own layout.
    A plan with an explicit ``run_chunk``, or a path with no store, is returned unchanged.
    """
    if plan.run_chunk is not None:
        return plan
    stored = store_mod.read_run_chunk(store)
    if stored is None or stored == plan.chunking(plan.recorded_indices().shape[1])[0]:
        return plan
    return dataclasses.replace(plan, run_chunk=stored)


def check_resume(plan: Plan, path: Path, resume: bool) -> bool:
    """Whether ``path`` holds an unfinished store of ``plan`` to continue (``--resume``).

    A missing store is trained from the start, with or without ``resume``: a kill before the
    template was renamed into place leaves nothing to continue (docs/robustness.md).

    Raises
    ------
    StoreError
        When the store exists without ``resume``, is complete, or comes from another plan.
    """
    if not path.exists():
        # (a kill before the template was renamed into place leaves no store: start it afresh)
        return False
    if not resume:
        raise StoreError(f"{path} already exists; choose another --out, or --resume to continue it")
    attrs = store_mod.read_attrs(path)
    if attrs.get("geomtraj_status") == store_mod.STATUS_COMPLETE:
        raise StoreError(f"{path} is already complete; nothing to resume")
    if attrs.get("geomtraj_fingerprint") != plan.fingerprint():
        raise StoreError(
            f"{path} was started from a different config; cannot resume it with this one"
        )
    return True


def _load_checkpoint(tr: _Trainer, path: Path, store_id: str | None) -> int:
    """Restore the resume state of ``path`` into ``tr``; the chunk to continue from.

    A checkpoint is used only when it names this store (its ``store_id``) and this plan;
    otherwise training restarts at chunk 0, which rewrites every chunk with the same values.
    """
    ckpt = store_mod.resume_path(path)
    if store_id is None or not ckpt.exists():
        return 0
    try:
        with np.load(ckpt) as saved:
            if (
                "store_id" not in saved
                or str(saved["store_id"]) != store_id
                or str(saved["fingerprint"]) != tr.plan.fingerprint()
            ):
                return 0
            tr.restore(saved)
            return int(saved["next_chunk"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return 0  # (written atomically, so only outside damage gets here)


def _train_to_store(tr: _Trainer, path: Path, resume: bool, progress) -> xr.Dataset:
    plan = tr.plan
    start = 0
    if resume and path.exists():
        attrs = store_mod.read_attrs(path)
        if (
            attrs.get("geomtraj_status") == store_mod.STATUS_COMPLETE
            and attrs.get("geomtraj_fingerprint") == plan.fingerprint()
        ):
            # killed between marking it complete and deleting the checkpoint: nothing left to do
            store_mod.resume_path(path).unlink(missing_ok=True)
            return store_mod.open_store(path)
    if check_resume(plan, path, resume):
        store_id = store_mod.read_attrs(path).get(STORE_ID)
        start = _load_checkpoint(tr, path, store_id)
        if start == 0:
            tr = _Trainer(plan)  # (a rejected checkpoint may have been half restored)
        creating = None
    else:
        store_id = uuid.uuid4().hex
        store_mod.resume_path(path).unlink(missing_ok=True)  # an earlier store's, if any
        # The template (metadata, run table, data sets, initial parameters) is written by a
        # second thread while the first chunk trains (the kernels release the GIL); it reads
        # only what training never changes. Nothing is written into the store before it exists.
        pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="geomtraj-store")
        creating = pool.submit(_create_store, tr, path, store_id)
        pool.shutdown(wait=False)  # (the submitted work still runs)
    bar = _Progress(len(plan.runs), plan.steps, start * tr.rows * plan.record_every, progress)
    try:
        for c in range(start, tr.n_chunks):
            row0, rows, buf = tr.run_chunk_steps(c)
            if creating is not None:
                creating, done = None, creating
                done.result()  # (raises what creating the store raised)
            u0, u1 = row0 * plan.record_every, (row0 + rows) * plan.record_every
            store_mod.write_region(
                path,
                _chunk_dataset(row0, rows, buf),
                {
                    "run": slice(None),
                    "step": slice(row0, row0 + rows),
                    "param": slice(None),
                    "iteration": slice(u0, u1),
                },
            )
            _write_snapshots(path, buf, slice(None))
            _save_checkpoint(path, tr, c + 1, store_id)
            bar.update(u1 - u0, _runs_done(tr, u1))
    finally:
        bar.close()
        if creating is not None:  # training stopped before the store was needed: let it finish
            concurrent.futures.wait([creating])
    store_mod.write_region(path, _final_dataset(tr), {"run": slice(None), "param_all": slice(None)})
    return _finish(path)


def _create_store(tr: _Trainer, path: Path, store_id: str) -> None:
    template, chunks = _template(tr, store_id)
    store_mod.create(path, template, chunks)


def _write_snapshots(path: Path, buf: dict[str, np.ndarray], run_region: slice) -> None:
    snap = _snapshot_dataset(buf)
    if snap is not None:
        part, region = snap
        store_mod.write_region(path, part, {"run": run_region, **region, "param_all": slice(None)})


def _finish(path: Path) -> xr.Dataset:
    # the chunk checksums, the status and the dropped store id land in one atomic rewrite
    store_mod.set_attrs(
        path,
        drop=(STORE_ID,),
        **{store_mod.CHUNK_CHECKSUMS: store_mod.chunk_checksums(path)},
        geomtraj_status=store_mod.STATUS_COMPLETE,
    )
    store_mod.resume_path(path).unlink(missing_ok=True)
    return store_mod.open_store(path)


# ------------------------------------------------- training one store from several processes
#
# ``geomtraj train --scheduler`` splits a plan into blocks of runs that match the store's run
# chunks: the parent writes the template (``create_store``), each worker trains one block and
# writes only that block's chunks (``train_block``), and the parent marks the store complete
# (``finish_store``). No two writers touch the same chunk, and every run computes exactly what it
# computes in a whole-plan ``train_plan``, so the finished store is byte-identical to one.


def run_blocks(plan: Plan) -> list[range]:
    """Consecutive runs, one block per run-chunk of the store: the units of :func:`train_block`."""
    run_chunk, _ = plan.chunking(plan.recorded_indices().shape[1])
    n = len(plan.runs)
    return [range(a, min(a + run_chunk, n)) for a in range(0, n, run_chunk)]


def create_store(plan: Plan, store: str | os.PathLike) -> None:
    """Write the full-size, not yet trained store of ``plan`` (status ``training``).

    Raises
    ------
    StoreError
        If ``store`` already exists.
    """
    path = Path(store)
    if path.exists():
        raise StoreError(f"{path} already exists; choose another --out, or --resume to continue it")
    template, chunks = _template(_Trainer(plan))
    store_mod.create(path, template, chunks)


def train_block(plan: Plan, store: str | os.PathLike, runs: range) -> np.ndarray:
    """Train the runs ``runs`` of ``plan`` into ``store`` made by :func:`create_store`.

    ``runs`` must start on a run-chunk boundary of the store and end on one (or at the last run),
    e.g. an element of :func:`run_blocks`, so that blocks trained by different processes never
    write the same chunk. Training a block again rewrites the same values.

    Returns
    -------
    numpy.ndarray of int64
        ``diverged_step`` of the block's runs.
    """
    path = Path(store)
    plan = plan_for_store(plan, path)
    n = len(plan.runs)
    run_chunk, _ = plan.chunking(plan.recorded_indices().shape[1])
    runs = range(runs.start, runs.stop)
    if not (
        0 <= runs.start < runs.stop <= n
        and runs.start % run_chunk == 0
        and (runs.stop % run_chunk == 0 or runs.stop == n)
    ):
        raise ConfigError(
            f"runs {runs.start}..{runs.stop - 1} do not align with the store's run chunks of "
            f"{run_chunk} (of {n} runs); use geomtraj.train.run_blocks(plan)"
        )
    attrs = store_mod.read_attrs(path)
    if attrs.get("geomtraj_fingerprint") != plan.fingerprint():
        raise StoreError(f"{path} was created from a different plan; cannot train a block into it")
    if attrs.get("geomtraj_status") == store_mod.STATUS_COMPLETE:
        raise StoreError(f"{path} is already complete; nothing to train")
    tr = _Trainer(plan, runs)
    run_region = slice(runs.start, runs.stop)
    for c in range(tr.n_chunks):
        row0, rows, buf = tr.run_chunk_steps(c)
        u0, u1 = row0 * plan.record_every, (row0 + rows) * plan.record_every
        store_mod.write_region(
            path,
            _chunk_dataset(row0, rows, buf),
            {
                "run": run_region,
                "step": slice(row0, row0 + rows),
                "param": slice(None),
                "iteration": slice(u0, u1),
            },
        )
        _write_snapshots(path, buf, run_region)
    store_mod.write_region(path, _final_dataset(tr), {"run": run_region, "param_all": slice(None)})
    return tr.gather("diverged").astype(np.int64)


def finish_store(plan: Plan, store: str | os.PathLike) -> xr.Dataset:
    """Mark ``store`` complete once every block of :func:`run_blocks` is trained; open it."""
    path = Path(store)
    plan = plan_for_store(plan, path)
    attrs = store_mod.read_attrs(path)
    if attrs.get("geomtraj_fingerprint") != plan.fingerprint():
        raise StoreError(f"{path} was created from a different plan; cannot finish it")
    return _finish(path)


def _per_run(value, n: int, name: str) -> list:
    if isinstance(value, str) or np.ndim(value) == 0:
        return [value] * n
    vals = list(np.asarray(value, dtype=object).ravel()) if not isinstance(value, list) else value
    if len(vals) != n:
        raise ConfigError(f"{name} has {len(vals)} values for {n} runs")
    return vals


def train(
    X: np.ndarray,
    y: np.ndarray,
    hidden: Sequence[int] | str = (12, 24),
    activation: str = "tanh",
    loss: str = "mse",
    theta0: np.ndarray | None = None,
    beta1=0.9,
    beta2=0.999,
    lr=1e-3,
    eps=1e-8,
    weight_decay=0.0,
    steps: int = 1000,
    precision="float64",
    record_every: int = 1,
    seed=0,
    *,
    batch_size=0,
    record_params: str | int | list[str] = "all",
    twin_of=None,
    perturbation=None,
    n_runs: int | None = None,
    store: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool | None = False,
    dataset_name: str = "custom",
    snapshot_every: int = 0,
) -> xr.Dataset:
    """Train one or more networks on ``(X, y)`` with Adam and return their trajectories.

    Parameters
    ----------
    X, y
        Inputs ``(n_points, d_in)`` and targets ``(n_points,)`` (labels in {0, 1} for ``bce``).
    hidden, activation, loss
        Architecture ``d_in -> hidden... -> 1`` (tanh/sigmoid/relu; mse/bce).
    theta0
        Initial parameters ``(n_runs, n_params)`` in the contract-1 layout; default Glorot from
        ``seed``.
    beta1, beta2, lr, eps, weight_decay, seed, precision, batch_size
        Scalars, or one value per run. ``precision`` is ``float64``, ``float32`` or emulated
        ``bfloat16``/``float16``; ``batch_size=0`` trains full batch.
    steps, record_every, record_params
        Number of updates, recording stride, and ``"all"``, a count or parameter names.
    snapshot_every
        Store full snapshots of theta, m and v after every ``snapshot_every``-th update (0: none).
    twin_of, perturbation
        Per run: the index of the run it perturbs (or -1) and a :class:`Perturbation` (or None).
    store
        Write to this zarr path instead of returning an in-memory Dataset.

    Returns
    -------
    xarray.Dataset
        The store schema (contract 2).
    """
    X = np.ascontiguousarray(X, dtype=np.float64)
    y = np.ascontiguousarray(y, dtype=np.float64).ravel()
    if X.ndim != 2 or X.shape[0] != y.shape[0]:
        raise ConfigError(f"X must be (n_points, d_in) and y (n_points,), got {X.shape}, {y.shape}")
    spec = MLPSpec(X.shape[1], parse_hidden(hidden), activation, loss)
    lengths = [
        len(np.atleast_1d(v))
        for v in (beta1, beta2, lr, eps, weight_decay, seed, batch_size)
        if not isinstance(v, str)
    ]
    if not isinstance(precision, str):
        lengths.append(len(precision))
    if theta0 is not None:
        theta0 = np.atleast_2d(np.asarray(theta0, dtype=np.float64))
        lengths.append(theta0.shape[0])
    if twin_of is not None:
        lengths.append(len(np.atleast_1d(twin_of)))
    n = n_runs or max(lengths)
    cols = {
        name: _per_run(val, n, name)
        for name, val in [
            ("beta1", beta1),
            ("beta2", beta2),
            ("lr", lr),
            ("eps", eps),
            ("weight_decay", weight_decay),
            ("seed", seed),
            ("precision", precision),
            ("batch_size", batch_size),
            ("twin_of", -1 if twin_of is None else twin_of),
            ("perturbation", perturbation),
        ]
    }
    runs = [
        Run(
            spec=spec,
            beta1=float(cols["beta1"][i]),
            beta2=float(cols["beta2"][i]),
            lr=float(cols["lr"][i]),
            eps=float(cols["eps"][i]),
            weight_decay=float(cols["weight_decay"][i]),
            seed=int(cols["seed"][i]),
            precision=str(cols["precision"][i]),
            batch_size=int(cols["batch_size"][i]),
            twin_of=int(cols["twin_of"][i]),
            perturbation=cols["perturbation"][i],
            theta0=None if theta0 is None else theta0[i if theta0.shape[0] > 1 else 0],
        )
        for i in range(n)
    ]
    plan = Plan(
        runs=runs,
        datasets=[DataSource(dataset_name, X, y)],
        steps=int(steps),
        record_every=int(record_every),
        record_params=record_params,
        snapshot_every=int(snapshot_every),
    )
    return train_plan(plan, store, resume=resume, progress=progress)
