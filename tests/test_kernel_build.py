"""How kernels are compiled must not change what they compute.

geomtraj turns on LLVM's SLP vectoriser (numba leaves it off) and caches compiled kernel variants
on disk. Both are performance choices; these tests check they leave every bit of a trajectory
unchanged.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from geomtraj.train.kernels import mlp

_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    from geomtraj.train.data import make_dataset
    from geomtraj.train.trainer import train

    X, y = make_dataset("sincos", 40, 3)
    ds = train(X, y, hidden=(13, 9), steps=300, precision=["float32", "float64", "bfloat16"],
               seed=[0, 1, 2], beta2=0.99, lr=1e-2)
    np.savez(sys.argv[1], **{k: ds[k].values for k in
             ("theta", "m", "v", "train_loss", "grad_norm", "update_norm")})
    """
)


def _train_in_subprocess(tmp: Path, tag: str, slp: str) -> dict[str, np.ndarray]:
    cache = tmp / f"cache-{tag}"
    env = {**os.environ, "GEOMTRAJ_CACHE_DIR": str(cache), "GEOMTRAJ_SLP": slp}
    out = tmp / f"{tag}.npz"
    subprocess.run([sys.executable, "-c", _SCRIPT, str(out)], env=env, check=True, timeout=600)
    with np.load(out) as f:
        return {k: f[k] for k in f.files}


@pytest.mark.slow
def test_slp_vectorisation_does_not_change_results(tmp_path: Path) -> None:
    with_slp = _train_in_subprocess(tmp_path, "slp", "1")
    without = _train_in_subprocess(tmp_path, "noslp", "0")
    for name, a in with_slp.items():
        b = without[name]
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes(), f"{name} differs with and without SLP"
    assert np.isfinite(with_slp["theta"]).all()


def test_generated_kernel_modules_are_keyed_by_their_sources(tmp_path, monkeypatch) -> None:
    """A change in any kernel source gives a new module name, so stale compiled code is unused."""
    before = mlp._fingerprint()
    fake = tmp_path / "kernels"
    fake.mkdir()
    for name in mlp._SOURCES:
        target = fake / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((mlp._HERE / name).read_bytes())
    monkeypatch.setattr(mlp, "_HERE", fake)
    assert mlp._fingerprint() == before
    (fake / "fpmath.py").write_bytes((fake / "fpmath.py").read_bytes() + b"\n# changed\n")
    assert mlp._fingerprint() != before


def _assert_kernels_agree(plan, monkeypatch, *, lane_min_runs: int, label: str):
    """Train ``plan`` with the per-run kernel only, then with lane blocks from ``lane_min_runs``
    runs on; assert exactly one run diverges and every trajectory and final state is the same
    bytes. Returns a trainer built with lanes on, for checks of how the runs were split."""
    import geomtraj.train.trainer as train_mod

    monkeypatch.setattr(train_mod, "LANE_MIN_RUNS", 10**9)
    per_run = train_mod.train_plan(plan)
    monkeypatch.setattr(train_mod, "LANE_MIN_RUNS", lane_min_runs)
    trainer = train_mod._Trainer(plan)
    lanes = train_mod.train_plan(plan)
    assert (per_run["diverged_step"].values >= 0).sum() == 1
    for name in ("theta", "m", "v", "loss", "train_loss", "grad_norm", "update_norm",
                 "theta_final", "m_final", "v_final", "diverged_step"):  # fmt: skip
        a, b = per_run[name].values, lanes[name].values
        assert a.tobytes() == b.tobytes(), f"{label}: {name} differs between kernels"
    return trainer


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["float32", "float64", "bfloat16"])
def test_lane_kernel_is_bit_identical_to_the_per_run_kernel(precision, monkeypatch) -> None:
    """Runs trained with the run as the vector axis equal runs trained one per thread.

    The grid mixes what the lane path must handle: a lane block padded with copies, two
    architectures (one too small for lanes), last-bit twins, a scale twin and a diverging run.
    """
    from geomtraj.train.data import make_dataset
    from geomtraj.train.models import MLPSpec
    from geomtraj.train.plan import DataSource, Perturbation, Plan, Run

    # 23 points and widths 7, 5, 1: the lane kernel's groups of four points or rows end short
    X, y = make_dataset("sincos", 23, 5)
    wide, narrow = MLPSpec(2, (7, 5)), MLPSpec(2, (3,))
    runs = [Run(spec=wide, seed=s, lr=1e-2, beta2=0.99, precision=precision) for s in range(19)]
    runs += [Run(spec=narrow, seed=s, lr=1e-2, precision=precision) for s in range(3)]
    runs.append(Run(spec=wide, seed=40, lr=60.0, precision=precision))  # diverges
    runs.append(Run(spec=wide, seed=0, lr=1e-2, beta2=0.99, precision=precision, twin_of=0,
                    perturbation=Perturbation("ulp", param="W1[0,3]", step=37)))  # fmt: skip
    runs.append(Run(spec=wide, seed=1, lr=1e-2, beta2=0.99, precision=precision, twin_of=1,
                    perturbation=Perturbation("scale", k=3.0)))  # fmt: skip
    plan = Plan(runs=runs, datasets=[DataSource("sincos", X, y)], steps=120, record_every=3,
                record_params=6, chunk_rows=13)  # fmt: skip

    trainer = _assert_kernels_agree(plan, monkeypatch, lane_min_runs=8, label=precision)
    assert trainer.groups[0].lane_sets, "the grid should use the lane kernel"


@pytest.mark.slow
def test_lane_kernel_writing_into_the_recording_buffers_in_place(monkeypatch) -> None:
    """A lane set of whole consecutive runs (no padding) records through views of the buffers;
    the result equals the per-run kernel's, divergence and NaN rows included."""
    import geomtraj.train.trainer as train_mod
    from geomtraj.train.data import make_dataset
    from geomtraj.train.models import MLPSpec
    from geomtraj.train.plan import DataSource, Plan, Run

    X, y = make_dataset("sincos", 21, 2)
    spec = MLPSpec(2, (6, 4))
    runs = [Run(spec=spec, seed=s, lr=1e-2, precision="float32") for s in range(15)]
    runs.append(Run(spec=spec, seed=15, lr=60.0, precision="float32"))  # diverges
    plan = Plan(runs=runs, datasets=[DataSource("sincos", X, y)], steps=90, record_every=2,
                record_params=5, chunk_rows=20)  # fmt: skip
    trainer = _assert_kernels_agree(plan, monkeypatch, lane_min_runs=16, label="float32")
    padded, real, _ = trainer.groups[0].lane_sets[0]
    assert real.all() and train_mod._as_slice(padded) == slice(0, 16)
