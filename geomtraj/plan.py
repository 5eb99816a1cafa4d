"""What to train: data sets, runs (architecture, hyper-parameters, precision, twin) and the plan.

A :class:`Plan` is what a TOML config expands to (:mod:`geomtraj.experiment`) and what
:func:`geomtraj.train.train_plan` executes. It knows the recording layout (which coordinates are
recorded, how the store is chunked) but nothing about kernels or storage.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

import numpy as np

from geomtraj.config import (
    CHUNK_TARGET_BYTES,
    MIN_BLOCKS,
    RECORD_BUFFER_BYTES,
    RUN_CHUNK,
    RUN_CHUNK_MAX,
)
from geomtraj.errors import ConfigError
from geomtraj.kernels.mlp import LANES
from geomtraj.kernels.rounding import STORAGE_DTYPE
from geomtraj.models import MLPSpec

__all__ = ["DataSource", "Perturbation", "Run", "Plan", "estimate", "estimate_seconds", "lane_key"]


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
    beta1: float = 0.9
    beta2: float = 0.999
    lr: float = 1e-3
    eps: float = 1e-8
    weight_decay: float = 0.0
    seed: int = 0
    precision: str = "float64"
    batch_size: int = 0
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
            if r.precision not in STORAGE_DTYPE:
                raise ConfigError(
                    f"{where}: precision {r.precision!r} unknown; choose from {list(STORAGE_DTYPE)}"
                )
            if not 0 <= r.data < len(self.datasets):
                raise ConfigError(f"{where}: data index {r.data} out of range")
            if r.spec.d_in != self.datasets[r.data].X.shape[1]:
                raise ConfigError(f"{where}: network input width != data set input width")
            if not (0 <= r.beta1 < 1 and 0 <= r.beta2 < 1):
                raise ConfigError(f"{where}: beta1={r.beta1}, beta2={r.beta2} must lie in [0, 1)")
            if not (r.lr > 0 and r.eps >= 0 and r.weight_decay >= 0):
                raise ConfigError(f"{where}: need lr > 0, eps >= 0, weight_decay >= 0")
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
        wide = any(STORAGE_DTYPE[r.precision] == np.float64 for r in self.runs)
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

        The run chunk is ``run_chunk`` when set, else :data:`~geomtraj.config.RUN_CHUNK` runs,
        doubled while a chunk of the largest array per run (recorded rows, per-update scalars or
        final parameters) is below 3/4 of :data:`~geomtraj.config.CHUNK_TARGET_BYTES` (so it ends
        between 3/4 and 3/2 of it), up to :data:`~geomtraj.config.RUN_CHUNK_MAX` runs or a
        :data:`~geomtraj.config.MIN_BLOCKS`-th of the runs, whichever is more.
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
        "time": time.strftime("%H:%M:%S", time.gmtime(n * plan.steps / net_steps_per_s)),
    }


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
