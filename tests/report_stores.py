"""Small stores trained by geomtraj for the report, CLI, bad-input and distributed tests.

Each store is trained once per test session (``functools.cache``) into a temporary directory;
tests that damage a store work on a copy (:func:`copy_store`).
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np
import zarr

from geomtraj.train.data import make_dataset
from geomtraj.train.models import MLPSpec, init_params
from geomtraj.train.plan import DataSource, Perturbation, Plan, Run

_ROOT = Path(tempfile.mkdtemp(prefix="geomtraj-report-tests-"))
atexit.register(shutil.rmtree, _ROOT, True)

HIDDEN = (3, 4)
STEPS = 400
CHUNK_ROWS = 100  # four row-chunks, so chunk damage hits part of a run
N_RUNS = 11


def small_plan(steps: int = STEPS, chunk_rows: int | None = CHUNK_ROWS) -> Plan:
    """Eleven runs in two run-chunks (8 + 3) with what the report must handle.

    * runs 0-7: float32/float64 alternating, beta2 in {0.99, 0.999}, lr 1e-2 (ordinary runs);
    * run 8: lr 22, diverges after two finite updates (status ``diverged``);
    * run 9: a huge initial weight, non-finite from update 1 (no finite update: ``insufficient``);
    * run 10: a last-bit twin of run 0.
    """
    X, y = make_dataset("sincos", 32, 0)
    spec = MLPSpec(2, HIDDEN, "tanh", "mse")
    runs = []
    for i in range(8):
        runs.append(
            Run(
                spec=spec,
                beta2=(0.99, 0.999)[(i // 2) % 2],
                lr=1e-2,
                seed=i // 4,
                precision=("float32", "float64")[i % 2],
            )
        )
    runs.append(Run(spec=spec, beta2=0.999, lr=22.0, seed=5, precision="float64"))
    theta0 = init_params(spec, 6)
    theta0[-1] = 1e300
    runs.append(Run(spec=spec, beta2=0.999, lr=1e-2, seed=6, precision="float64", theta0=theta0))
    runs.append(
        Run(
            spec=spec,
            beta2=0.99,
            lr=1e-2,
            seed=0,
            precision="float32",
            twin_of=0,
            perturbation=Perturbation("ulp", param="W1[0,1]", ulps=1, step=50),
        )
    )
    return Plan(
        runs=runs,
        datasets=[DataSource("sincos", X, y, {"n_points": 32, "seed": 0})],
        steps=steps,
        record_every=1,
        record_params=6,
        chunk_rows=chunk_rows,
    )


@functools.cache
def small_store() -> Path:
    """The store of :func:`small_plan`, trained in this process."""
    from geomtraj.train.trainer import train_plan

    path = _ROOT / "small.zarr"
    train_plan(small_plan(), path, progress=False)
    return path


def copy_store(dst: Path, src: Path | None = None) -> Path:
    """A private copy of ``src`` (default :func:`small_store`) at ``dst``."""
    shutil.copytree(src or small_store(), dst)
    return dst


def chunk_files(store: Path, var: str) -> list[Path]:
    """The chunk files of ``var``, in key order."""
    return sorted(p for p in (store / var / "c").rglob("*") if p.is_file())


def set_values(store: Path, var: str, index, value) -> None:
    """Overwrite ``store[var][index]`` in place (to simulate damaged or odd data)."""
    arr = zarr.open_array(str(store / var), mode="r+", zarr_format=3)
    arr[index] = value


def set_attr(store: Path, var: str | None, **attrs) -> None:
    """Set attributes of the group (``var=None``) or of one array."""
    if var is None:
        zarr.open_group(str(store), mode="r+", zarr_format=3).attrs.update(attrs)
    else:
        zarr.open_array(str(store / var), mode="r+", zarr_format=3).attrs.update(attrs)


def nan_like(store: Path, var: str):
    dtype = zarr.open_array(str(store / var), mode="r", zarr_format=3).dtype
    return np.array(np.nan, dtype=dtype)
