"""Training and analysis on a dask.distributed cluster give what one process gives.

A LocalCluster with two worker processes (started with ``spawn``, one numba thread each: zarr's
async I/O threads rule out fork) trains a grid with ``geomtraj train --scheduler`` and analyses it
with ``run_analyses(scheduler=...)``; the store must be byte-identical to one trained by
``train_plan`` in this process, and every analysis result identical.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import fake_analysis
import pytest
import xarray as xr

from geomtraj.analysis import ANALYSES
from geomtraj.analysis.runner import run_analyses
from geomtraj.cli import main
from geomtraj.train.config import load_config, plan_from_config
from geomtraj.train.trainer import run_blocks, train_plan

distributed = pytest.importorskip("distributed")
pytestmark = pytest.mark.slow

CONFIG = """
steps = 300
record_params = 6
chunk_rows = 64
run_chunk = 8  # (these chunks are small: the default would hold all 32 runs in one)

[data]
name = "sincos"
n_points = 32

[model]
hidden = ["4x3"]

[optimizer]
beta2 = [0.99, 0.999]
lr = [0.01, 0.05]

[runs]
seeds = [0, 1]
precision = ["float32", "float64"]

[[twins]]
kind = "ulp"
param = "W1[0,1]"
step = 100
"""
TESTS = str(Path(__file__).parent)


@pytest.fixture(scope="module")
def cluster():
    import dask
    from distributed import Client, LocalCluster

    with dask.config.set({"distributed.worker.multiprocessing-method": "spawn"}):
        cluster = LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
            env={"NUMBA_NUM_THREADS": "1"},
        )
    with Client(cluster) as client:
        client.run(sys.path.insert, 0, TESTS)  # the stand-in analysis lives in tests/
    yield cluster
    cluster.close()


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def stores(cluster, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    cfg = tmp / "grid.toml"
    cfg.write_text(CONFIG)
    plan = plan_from_config(load_config(cfg))
    local, remote = tmp / "local.zarr", tmp / "cluster.zarr"
    train_plan(plan, local, progress=False)
    argv = ["train", str(cfg), "--out", str(remote), "--scheduler", cluster.scheduler_address]
    assert main([*argv, "--quiet"]) == 0
    return plan, local, remote


def test_cluster_store_is_byte_identical(stores, cluster) -> None:
    plan, local, remote = stores
    assert len(run_blocks(plan)) == 4  # 32 runs in run-chunks of 8: every worker trains blocks
    a, b = _tree(local), _tree(remote)
    assert sorted(a) == sorted(b)
    assert [k for k in a if a[k] != b[k]] == []
    with distributed.Client(cluster.scheduler_address) as client:
        env = client.run(lambda: __import__("os").environ.get("NUMBA_NUM_THREADS"))
    assert set(env.values()) == {"1"}


def test_cluster_analysis_is_identical(stores, cluster) -> None:
    _, local, remote = stores
    registry = {"periods": fake_analysis, **{f"real_{k}": m for k, m in ANALYSES.items()}}
    here = run_analyses(local, registry=registry, progress=False)
    there = run_analyses(remote, registry=registry, scheduler=cluster.scheduler_address)
    assert here.failures == there.failures
    assert here.run_notes == there.run_notes
    for name in registry:
        if here.results[name] is None:
            assert there.results[name] is None, name
            continue
        xr.testing.assert_identical(here.results[name], there.results[name])
    assert {r: (h.status, h.note, h.n_steps) for r, h in here.health.items()} == {
        r: (h.status, h.note, h.n_steps) for r, h in there.health.items()
    }


def test_unreachable_scheduler_is_one_line_exit_2(tmp_path, capsys) -> None:
    cfg = tmp_path / "grid.toml"
    cfg.write_text(CONFIG)
    argv = [
        "train",
        str(cfg),
        "--out",
        str(tmp_path / "x.zarr"),
        "--scheduler",
        "tcp://127.0.0.1:9",
    ]
    assert main([*argv, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot connect to the dask scheduler" in err
    assert not (tmp_path / "x.zarr").exists()
