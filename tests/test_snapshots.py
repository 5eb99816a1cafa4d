"""Full snapshots of theta, m and v at a coarse stride (``snapshot_every``)."""

from __future__ import annotations

import numpy as np
import pytest

from geomtraj.errors import ConfigError
from geomtraj.train.data import make_dataset
from geomtraj.train.plan import Perturbation
from geomtraj.train.trainer import create_store, finish_store, run_blocks, train, train_block

KW = dict(hidden=(5, 7), beta2=[0.99, 0.999, 0.99], lr=[0.05, 0.05, 50.0], steps=600,
          precision="float32", seed=[0, 1, 2], n_runs=3, snapshot_every=50)  # fmt: skip


@pytest.fixture(scope="module")
def data():
    return make_dataset("sincos", 64, 0)


@pytest.fixture(scope="module")
def full(data):
    """Every parameter recorded at every step, plus snapshots: the snapshots must repeat rows."""
    return train(*data, record_params="all", **KW)


def test_snapshots_equal_the_recorded_rows(full):
    assert list(full["snapshot"].values) == list(range(50, 601, 50))
    assert full["theta_snapshot"].dims == ("run", "snapshot", "param_all")
    for name in ("theta", "m", "v"):
        rows = full[name].sel(step=full["snapshot"].values).values
        np.testing.assert_array_equal(full[f"{name}_snapshot"].values, rows)


def test_snapshots_of_a_diverged_run_are_nan_after_divergence(full):
    d = int(full["diverged_step"].values[2])
    assert 0 < d < 600  # lr = 50 explodes
    snaps = full["snapshot"].values
    theta = full["theta_snapshot"].values[2]
    assert np.all(np.isnan(theta[snaps >= d]))
    assert np.all(np.isfinite(theta[snaps < d]))


def test_store_and_blocks_match_in_memory(data, full, tmp_path):
    # a subset recorded at the fine stride, every parameter in the snapshots
    ds = train(*data, record_params=4, store=tmp_path / "a.zarr", **KW)
    np.testing.assert_array_equal(ds["theta_snapshot"].values, full["theta_snapshot"].values)
    np.testing.assert_array_equal(ds["v_snapshot"].values, full["v_snapshot"].values)


def test_snapshot_before_a_ulp_perturbation_equals_the_original(data):
    step = 301
    ulp = Perturbation("ulp", param="W1[0,1]", ulps=1, step=step)
    ds = train(*data, hidden=(5, 7), lr=0.05, steps=400, precision="float64", seed=[0, 0],
               n_runs=2, twin_of=[-1, 0], snapshot_every=100, perturbation=[None, ulp])  # fmt: skip
    th = ds["theta_snapshot"].values
    # snapshot after update 300 is taken before the perturbation of theta_300 (applied before
    # update 301): identical in both runs; the next snapshot differs
    np.testing.assert_array_equal(th[0, 2], th[1, 2])
    assert np.any(th[0, 3] != th[1, 3])


def test_bad_snapshot_stride(data):
    with pytest.raises(ConfigError, match="snapshot_every"):
        train(*data, hidden=(3,), steps=10, snapshot_every=11)


def test_block_training_writes_snapshots(tmp_path):
    # blocks of runs trained separately into one store (the path of `train --scheduler`) write
    # their own snapshot regions; the result equals a whole-plan run
    from geomtraj.train.config import plan_from_config
    from geomtraj.train.trainer import train_plan

    cfg = {
        "steps": 300, "record_params": 3, "snapshot_every": 70, "chunk_rows": 100,
        "data": {"name": "sincos", "n_points": 32},
        "model": {"hidden": ["4x3"]},
        "optimizer": {"lr": 0.05, "beta2": [0.99, 0.999]},
        "runs": {"seeds": [0, 1, 2], "precision": "float32"},
    }  # fmt: skip
    plan = plan_from_config(cfg)
    plan.run_chunk = 2  # several blocks
    whole = train_plan(plan, tmp_path / "whole.zarr")
    create_store(plan, tmp_path / "blocks.zarr")
    for block in reversed(run_blocks(plan)):
        train_block(plan, tmp_path / "blocks.zarr", block)
    blocks = finish_store(plan, tmp_path / "blocks.zarr")
    for name in ("theta_snapshot", "m_snapshot", "v_snapshot"):
        np.testing.assert_array_equal(blocks[name].values, whole[name].values)


def test_snapshot_chunks_follow_training_chunks(data, tmp_path):
    # 600 updates in training chunks of 200 (chunk_rows) and a snapshot every 50: four snapshots
    # per zarr chunk; a stride that does not divide the chunk falls back to one per chunk
    from geomtraj.train.config import plan_from_config
    from geomtraj.train.trainer import train_plan

    for every, expected in ((50, 4), (70, 1)):
        cfg = {
            "steps": 600, "record_params": 3, "snapshot_every": every, "chunk_rows": 200,
            "data": {"name": "sincos", "n_points": 32}, "model": {"hidden": ["4x3"]},
        }  # fmt: skip
        ds = train_plan(plan_from_config(cfg), tmp_path / f"s{every}.zarr")
        assert ds["theta_snapshot"].encoding["chunks"][1] == expected
