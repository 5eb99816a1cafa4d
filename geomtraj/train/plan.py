"""What to train: data sets, runs (architecture, hyper-parameters, precision, twin) and the plan.

A :class:`Plan` is what a TOML config expands to (:mod:`geomtraj.train.config`) and what
:func:`geomtraj.train.train_plan` executes. It knows the recording layout (which coordinates are
recorded, how the store is chunked) but nothing about kernels or storage.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from geomtraj import runtable
from geomtraj.constants import (
    CHUNK_TARGET_BYTES,
    LANES,
    MIN_BLOCKS,
    RECORD_BUFFER_BYTES,
    RUN_CHUNK,
    RUN_CHUNK_MAX,
)
from geomtraj.errors import ConfigError
from geomtraj.formats import FORMATS
from geomtraj.train.models import MLPSpec

__all__ = [
    "DataSource",
    "Perturbation",
    "Run",
    "Plan",
    "check_data_size",
    "check_resources",
    "estimate",
    "estimate_seconds",
    "lane_key",
    "resources",
]


@dataclass(frozen=True)
class DataSource:
    """One data set of a store: the arrays and a JSON-able description that rebuilds them."""

    name: str
    X: np.ndarray
    y: np.ndarray
    attrs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Perturbation:
    """A twin's difference from its original: ``ulp`` (nextafter) or ``scale`` (Sun's k)."""

    kind: str
    param: str = ""
    ulps: int = 1
    step: int = 1
    k: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ("ulp", "scale"):
            raise ConfigError(f"perturbation kind {self.kind!r} unknown; use 'ulp' or 'scale'")
        if self.kind == "ulp" and (self.ulps == 0 or self.step < 1 or not self.param):
            raise ConfigError(
                f"ulp perturbation needs a parameter name, ulps != 0 and step >= 1, got {self}"
            )
        if self.kind == "scale" and not (self.k > 0 and np.isfinite(self.k)):
            raise ConfigError(f"scale perturbation needs a positive finite k, got k={self.k}")

    @property
    def label(self) -> str:
        if self.kind == "ulp":
            return f"ulp:{self.ulps:+d}@{self.param}@t={self.step}"
        return f"scale:k={self.k:g}"


@dataclass(frozen=True)
class Run:
    """One network to train: architecture, data, hyper-parameters, seed, precision, twin."""

    spec: MLPSpec
    data: int = 0
    # defaults as the run table declares them (geomtraj.runtable), the same as a config's
    beta1: float = runtable.field("beta1").default
    beta2: float = runtable.field("beta2").default
    lr: float = runtable.field("lr").default
    eps: float = runtable.field("eps").default
    weight_decay: float = runtable.field("weight_decay").default
    seed: int = runtable.field("seed").default
    precision: str = runtable.field("precision").default
    batch_size: int = runtable.field("batch_size").default
    twin_of: int = -1
    perturbation: Perturbation | None = None
    theta0: np.ndarray | None = field(default=None, compare=False, repr=False)


@dataclass
class Plan:
    """Everything ``train_plan`` needs: runs, their data sets, steps and recording settings.

    ``record_params`` is ``"all"``, an integer ``N`` (``N`` coordinates evenly spread over the flat
    vector, ``round(linspace(0, n_params-1, N))``), or a list of parameter names.
    ``snapshot_every`` (0: none) adds full snapshots of theta, m and v after every
    ``snapshot_every``-th update, at a coarser stride than the recorded subset.
    """

    runs: list[Run]
    datasets: list[DataSource]
    steps: int
    record_every: int = 1
    record_params: str | int | list[str] = "all"
    chunk_rows: int | None = None
    run_chunk: int | None = None
    description: dict = field(default_factory=dict)
    snapshot_every: int = 0

    # ----------------------------------------------------------------- checks and derived layout
    def validate(self) -> None:
        if not self.runs:
            raise ConfigError("the plan has no runs")
        if self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")
        if self.record_every < 1 or self.steps % self.record_every:
            raise ConfigError(
                f"record_every={self.record_every} must be >= 1 and divide steps={self.steps}"
            )
        if self.snapshot_every < 0 or self.snapshot_every > self.steps:
            raise ConfigError(
                f"snapshot_every={self.snapshot_every} must be 0 (no snapshots) or between 1 and "
                f"steps={self.steps}"
            )
        d_in = {ds.X.shape[1] for ds in self.datasets}
        if len(d_in) != 1:
            raise ConfigError(f"all data sets of one store need the same input width, got {d_in}")
        for i, r in enumerate(self.runs):
            where = f"run {i}"
            if r.precision not in FORMATS:
                raise ConfigError(
                    f"{where}: precision {r.precision!r} unknown; choose from {list(FORMATS)}"
                )
            if not 0 <= r.data < len(self.datasets):
                raise ConfigError(f"{where}: data index {r.data} out of range")
            if r.spec.d_in != self.datasets[r.data].X.shape[1]:
                raise ConfigError(f"{where}: network input width != data set input width")
            bad = runtable.out_of_range(r)  # the ranges the run table declares
            if bad:
                raise ConfigError(
                    f"{where}: "
                    + ", ".join(f"{name}={value} must lie in {valid}" for name, value, valid in bad)
                )
            if r.batch_size < 0:
                raise ConfigError(f"{where}: batch_size must be >= 0 (0 = full batch)")
            if r.twin_of >= 0:
                if not r.twin_of < len(self.runs) or self.runs[r.twin_of].twin_of >= 0:
                    raise ConfigError(f"{where}: twin_of={r.twin_of} must name an original run")
                if r.perturbation is None:
                    raise ConfigError(f"{where}: a twin needs a perturbation")
            p = r.perturbation
            if p is not None and p.kind == "ulp":
                r.spec.param_index(p.param)  # raises a clear ValueError for a bad name
                if p.step > self.steps:
                    raise ConfigError(f"{where}: perturbation step {p.step} > steps {self.steps}")
            if r.theta0 is not None and np.shape(r.theta0) != (r.spec.n_params,):
                raise ConfigError(
                    f"{where}: theta0 has shape {np.shape(r.theta0)}, expected ({r.spec.n_params},)"
                )

    @property
    def n_rows(self) -> int:
        return self.steps // self.record_every

    def snapshot_steps(self) -> np.ndarray:
        """Steps after which full snapshots of theta, m and v are stored (empty when none)."""
        if not self.snapshot_every:
            return np.zeros(0, np.int64)
        return np.arange(self.snapshot_every, self.steps + 1, self.snapshot_every, dtype=np.int64)

    @property
    def storage_dtype(self) -> np.dtype:
        """Widest precision present: float64 if any run computes in float64, else float32."""
        wide = any(FORMATS[r.precision].storage_dtype == np.float64 for r in self.runs)
        return np.dtype(np.float64 if wide else np.float32)

    def recorded_indices(self) -> np.ndarray:
        """``(n_runs, n_recorded)`` flat indices of the recorded coordinates, -1 as padding."""
        per_run, of_spec = [], {}  # (grids share a few architectures: select once for each)
        for r in self.runs:
            if r.spec in of_spec:
                per_run.append(of_spec[r.spec])
                continue
            n = r.spec.n_params
            sel = self.record_params
            if isinstance(sel, str):
                if sel != "all":
                    raise ConfigError(f"record params {sel!r}: use 'all', a count or a name list")
                idx = np.arange(n)
            elif isinstance(sel, int | np.integer):
                if sel < 0:
                    raise ConfigError(f"record params count must be >= 0, got {sel}")
                idx = np.unique(np.round(np.linspace(0, n - 1, min(int(sel), n))).astype(np.int64))
            else:
                idx = np.array([r.spec.param_index(name) for name in sel], dtype=np.int64)
            per_run.append(of_spec.setdefault(r.spec, idx))
        width = max(len(i) for i in per_run)
        out = np.full((len(self.runs), width), -1, dtype=np.int64)
        for k, idx in enumerate(per_run):
            out[k, : len(idx)] = idx
        return out

    def chunking(self, n_recorded: int) -> tuple[int, int]:
        """``(run_chunk, rows_per_chunk)`` for the stored arrays and the recording buffers.

        The run chunk is ``run_chunk`` when set, else :data:`~geomtraj.constants.RUN_CHUNK` runs,
        doubled while a chunk of the largest array per run (recorded rows, per-update scalars or
        final parameters) is below 3/4 of :data:`~geomtraj.constants.CHUNK_TARGET_BYTES` (so it ends
        between 3/4 and 3/2 of it), up to :data:`~geomtraj.constants.RUN_CHUNK_MAX` runs or a
        :data:`~geomtraj.constants.MIN_BLOCKS`-th of the runs, whichever is more.
        """
        n_runs, item = len(self.runs), self.storage_dtype.itemsize
        run_chunk = self.run_chunk or min(n_runs, RUN_CHUNK)
        if self.chunk_rows:
            rows = min(self.chunk_rows, self.n_rows)
        else:
            per_row_chunk = max(1, run_chunk * n_recorded * item)
            rows = max(1, CHUNK_TARGET_BYTES // per_row_chunk)
            per_row_buffer = n_runs * (3 * n_recorded * item + item + 3 * self.record_every * item)
            rows = min(rows, max(1, RECORD_BUFFER_BYTES // per_row_buffer), self.n_rows)
            # keep the per-update scalars' chunks (rows*record_every updates) at a sensible size too
            rows = max(1, min(rows, max(1, 2**20 // self.record_every)))
        if not self.run_chunk:
            n_all = max(r.spec.n_params for r in self.runs)
            per_run = item * max(rows * n_recorded, rows * self.record_every, n_all)
            cap = min(n_runs, max(RUN_CHUNK_MAX, n_runs // MIN_BLOCKS))
            while 4 * run_chunk * per_run < 3 * CHUNK_TARGET_BYTES and 2 * run_chunk <= cap:
                run_chunk *= 2
        return run_chunk, int(rows)

    def fingerprint(self) -> str:
        """Hash of everything that determines the store's content (resume refuses a mismatch)."""
        h = hashlib.sha256()
        h.update(repr((self.steps, self.record_every, self.record_params)).encode())
        if self.snapshot_every:  # (absent from older fingerprints, which had no snapshots)
            h.update(repr(("snapshot_every", self.snapshot_every)).encode())
        h.update(repr(self.chunking(self.recorded_indices().shape[1])).encode())
        for ds in self.datasets:
            h.update(np.ascontiguousarray(ds.X, np.float64).tobytes())
            h.update(np.ascontiguousarray(ds.y, np.float64).tobytes())
        for r in self.runs:
            h.update(repr(r).encode())
            if r.theta0 is not None:
                h.update(np.ascontiguousarray(r.theta0, np.float64).tobytes())
        return h.hexdigest()


def estimate(plan: Plan, net_steps_per_s: float) -> dict:
    """Grid size, uncompressed store size and a time estimate for ``--dry-run``."""
    rec = plan.recorded_indices().shape[1]
    n, item = len(plan.runs), plan.storage_dtype.itemsize
    traj = 3 * n * plan.n_rows * rec * item
    n_all = max(r.spec.n_params for r in plan.runs)
    traj += 3 * n * plan.snapshot_steps().size * n_all * item
    scalars = n * (plan.n_rows + 3 * plan.steps) * item
    return {
        "runs": n,
        "steps": plan.steps,
        "recorded_params": rec,
        "store_bytes_uncompressed": int(traj + scalars),
        "seconds_estimate": n * plan.steps / net_steps_per_s,
        "time": _hms(n * plan.steps / net_steps_per_s),
    }


def _hms(seconds: float) -> str:
    """``H:MM:SS`` with as many hours as it takes (``"25:45:00"``, not the time of day)."""
    total = round(seconds)
    return f"{total // 3600:02d}:{total % 3600 // 60:02d}:{total % 60:02d}"


#: Network-steps per second on one core for a (12,24) network on 64 points, the figure ``--dry-run``
#: scales by parameter count and data size. Measured on the 2-core reference machine with one
#: numba thread, training (no store) the 196-architecture width grid of
#: ``benchmarks/bench_train.py`` for 600 steps: (12,24)-equivalents of 131,800 (float32), 70,900
#: (float64) and 122,700 (bfloat16) per second, taken 25% lower here for writing the store, which
#: costs 10-30% more (README "Speed"). float16 uses the bfloat16 figure: its runs often diverge
#: early, which makes a measured rate look optimistic.
REFERENCE_RATE = {
    "float64": 53_000.0,
    "float32": 99_000.0,
    "bfloat16": 92_000.0,
    "float16": 92_000.0,
}

#: The same for runs that take the lane kernel (see :func:`lane_key`): 1024 (12,24) networks on 64
#: points, 2,000 steps into a store with nothing recorded, 2 threads (``make bench``,
#: 2026-11-23; bfloat16 the same way, best of three), halved: 393,800 (float32), 148,000
#: (float64) and 340,400 (bfloat16) network-steps per second.
LANE_RATE = {
    "float64": 74_000.0,
    "float32": 197_000.0,
    "bfloat16": 170_000.0,
    "float16": 170_000.0,
}
_REFERENCE_WORK = 373 * 64


def lane_key(run: Run, plan: Plan) -> tuple | None:
    """What a run shares with the runs it can train beside in the lane kernel, or None.

    Full-batch runs of one precision, activation, loss, architecture and data set advance
    together, the run as the vector axis; mini-batch runs always take the per-run kernel.
    """
    n_points = len(plan.datasets[run.data].y)
    if run.batch_size and run.batch_size < n_points:
        return None
    spec = run.spec
    return (run.precision, spec.activation, spec.loss, spec.sizes, run.data)


def estimate_seconds(plan: Plan, cores: int) -> float:
    """Estimated training time of ``plan`` on ``cores`` cores: each run's work at its rate."""
    counts: dict[tuple, int] = {}
    keys = [lane_key(r, plan) for r in plan.runs]
    for key in keys:
        if key is not None:
            counts[key] = counts.get(key, 0) + 1
    seconds = 0.0
    for r, key in zip(plan.runs, keys, strict=True):
        # (as the trainer decides with its default LANE_MIN_RUNS: one lane block per thread)
        lanes = key is not None and counts[key] >= LANES * cores
        rate = (LANE_RATE if lanes else REFERENCE_RATE)[r.precision]
        work = r.spec.n_params * len(plan.datasets[r.data].y) / _REFERENCE_WORK
        seconds += plan.steps * work / (rate * cores)
    return seconds


def estimate_text(plan: Plan, cores: int | None = None) -> str:
    """Grid, store size and time estimate of ``plan``, as ``geomtraj train --dry-run`` prints it."""
    import os

    cores = cores or os.cpu_count() or 1
    # time is the sum over runs of work / rate: a mixed-precision grid pays each run's own rate
    est = estimate(plan, len(plan.runs) * plan.steps / estimate_seconds(plan, cores))
    return (
        f"grid: {est['runs']} runs x {est['steps']} steps, {est['recorded_params']} recorded "
        f"parameters per run\nstore: about {est['store_bytes_uncompressed'] / 2**20:,.1f} MiB "
        f"before compression\ntime: about {est['time']} on {cores} cores (plus 10-20 s to "
        "compile each new kernel variant once per machine)"
    )


# ------------------------------------------------------------------- memory and disk, up front
#
# A grid too large for the machine must be refused before anything grid-sized is allocated
# (docs/robustness.md): the figures below are arithmetic on the plan's sizes, never arrays.

#: Bytes of bookkeeping per chunk of the lazy store template (dask's graph and zarr's metadata).
_TEMPLATE_BYTES_PER_CHUNK = 1024
#: Bytes a parameter name costs in memory (a Python string, e.g. ``"W2[11,23]"``).
_NAME_BYTES = 80


def _n_recorded(plan: Plan) -> int:
    """Recorded coordinates per run, as :meth:`Plan.recorded_indices` will find them."""
    n_all = max(r.spec.n_params for r in plan.runs)
    sel = plan.record_params
    if isinstance(sel, str):
        return n_all
    if isinstance(sel, int | np.integer):
        return max(0, min(int(sel), n_all))
    return len(sel)


def resources(plan: Plan) -> dict[str, int]:
    """Peak memory (bytes) that training ``plan`` needs, and the disk its store needs.

    Memory: the training state (theta, m, v, the start point and the final values, per run and
    parameter), one chunk's recording and snapshot buffers (twice: the buffer and the copy being
    written), the coordinates, the recorded indices and names, the data sets, and the template's
    per-chunk bookkeeping. Disk: the store before compression (an upper bound: compression is
    lossless and only shrinks it).
    """
    n, item = len(plan.runs), plan.storage_dtype.itemsize
    n_all = max(r.spec.n_params for r in plan.runs)
    rec = _n_recorded(plan)
    run_chunk, rows = plan.chunking(rec)
    upd = rows * plan.record_every
    n_snap = plan.steps // plan.snapshot_every if plan.snapshot_every else 0
    snap_per_chunk = min(n_snap, max(1, upd // plan.snapshot_every)) if n_snap else 0
    points = sum(ds.X.shape[0] * (ds.X.shape[1] + 1) for ds in plan.datasets)
    state = 8 * n * n_all * 8  # theta, m, v, theta0 and gathers in float64, finals in storage
    buffers = 2 * n * (rows * (3 * rec + 1) + 3 * upd) * item
    snapshots = 2 * 3 * n * snap_per_chunk * n_all * item
    coords = 8 * (plan.n_rows + plan.steps + n_snap)
    names = 8 * n * rec + _NAME_BYTES * rec * len({r.spec for r in plan.runs})
    run_blocks = -(-n // max(1, run_chunk))
    chunks = run_blocks * (
        4 * -(-plan.n_rows // max(1, rows)) + 3 * -(-plan.steps // max(1, upd)) + 4 + 3 * n_snap
    )
    memory = (
        state + buffers + snapshots + coords + names + 3 * 8 * points
        + _TEMPLATE_BYTES_PER_CHUNK * chunks
    )  # fmt: skip
    est = estimate_sizes(plan, rec)
    disk = est + 4 * n * n_all * item + 8 * (points + coords // 8) + 4 * chunks
    return {"memory_bytes": int(memory), "disk_bytes": int(disk)}


def estimate_sizes(plan: Plan, rec: int) -> int:
    """Trajectory and per-update bytes of the store before compression (no allocation)."""
    n, item = len(plan.runs), plan.storage_dtype.itemsize
    n_all = max(r.spec.n_params for r in plan.runs)
    n_snap = plan.steps // plan.snapshot_every if plan.snapshot_every else 0
    traj = 3 * n * plan.n_rows * rec * item + 3 * n * n_snap * n_all * item
    return int(traj + n * (plan.n_rows + 3 * plan.steps) * item)


def available_memory() -> int:
    """Bytes of memory this process may still use (what the kernel reports as available)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # (no psutil, or an unusual platform: fall back to physical memory)
        import os

        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def _gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB" if n >= 2**30 else f"{n / 2**20:,.1f} MiB"


def check_resources(
    plan: Plan, store_dir: str | None = None, memory: int | None = None, disk: int | None = None
) -> dict[str, int]:
    """Refuse ``plan`` when it needs more memory than is available, or more disk than is free.

    ``store_dir`` is the folder the store will be written in (its free space is checked; None:
    memory only). ``memory`` and ``disk`` override what is available (tests).

    Raises
    ------
    ConfigError
        One line stating the memory and the disk the grid needs, and what there is.
    """
    import shutil

    need = resources(plan)
    have_mem = available_memory() if memory is None else memory
    have_disk = disk
    if have_disk is None and store_dir is not None:
        have_disk = shutil.disk_usage(store_dir).free
    too_big = need["memory_bytes"] > have_mem or (
        have_disk is not None and need["disk_bytes"] > have_disk
    )
    if too_big:
        free = f"{_gib(have_disk)} free" if have_disk is not None else "free space not checked"
        raise ConfigError(
            f"the grid ({len(plan.runs)} runs x {plan.steps} steps, {_n_recorded(plan)} recorded "
            f"parameters) needs about {_gib(need['memory_bytes'])} of memory "
            f"({_gib(have_mem)} available) and {_gib(need['disk_bytes'])} of disk for its store "
            f"({free}); make the grid, steps or recording smaller"
        )
    return need


def check_data_size(n_points: int, memory: int | None = None) -> None:
    """Refuse a data set too large to generate (before generating it)."""
    if n_points < 1:
        return  # (make_dataset says what is wrong)
    need = 3 * 8 * 8 * n_points  # a few float64 columns and temporaries per point
    have = available_memory() if memory is None else memory
    if need > have:
        raise ConfigError(
            f"data.n_points = {n_points} needs about {_gib(need)} of memory ({_gib(have)} "
            f"available) and {_gib(3 * 8 * n_points)} of disk for the store's copy of the data "
            "set; use fewer points"
        )
