"""A kill at any instant of `geomtraj train`, store creation included, resumes bit for bit.

The process is made to die (``os._exit``, no cleanup, like SIGKILL) at its k-th file write, for
writes spread over the creation of the template, the first chunks and the finishing of the
store; ``--resume`` must then give the uninterrupted store's bytes and leave nothing beside it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from geomtraj.store import zarrstore as store_mod
from geomtraj.train.config import plan_from_config
from geomtraj.train.trainer import _save_checkpoint, _Trainer, train_plan

CONFIG = {
    "steps": 60,
    "record_every": 2,
    "record_params": 4,
    "chunk_rows": 10,
    "data": {"name": "sincos", "n_points": 16},
    "model": {"hidden": ["4x3"]},
    "runs": {"seeds": [0, 1], "precision": "float32"},
    "twins": [{"kind": "ulp", "param": "W1[0,1]", "step": 7}],
}
TOML = """
steps = 60
record_every = 2
record_params = 4
chunk_rows = 10
[data]
name = "sincos"
n_points = 16
[model]
hidden = ["4x3"]
[runs]
seeds = [0, 1]
precision = "float32"
[[twins]]
kind = "ulp"
param = "W1[0,1]"
step = 7
"""

#: Dies at the k-th write to a zarr store (argv[1]); the rest of argv is `geomtraj`'s.
CRASHER = """
import os, sys
import zarr.storage
k, n = int(sys.argv[1]), [0]
real = zarr.storage.LocalStore.set
async def counting(self, key, value):
    n[0] += 1
    if n[0] == k:
        os._exit(9)
    return await real(self, key, value)
zarr.storage.LocalStore.set = counting
from geomtraj.cli import main
rc = main(sys.argv[2:])
print(f"writes={n[0]}", file=sys.stderr)
sys.exit(rc)
"""


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ref") / "ref.zarr"
    train_plan(plan_from_config(CONFIG), store=path)
    return path


@pytest.mark.slow
def test_kills_at_every_stage_of_creation_resume_bit_identical(reference, tmp_path):
    (tmp_path / "grid.toml").write_text(TOML)
    (tmp_path / "crash.py").write_text(CRASHER)
    env = {**os.environ, "NUMBA_NUM_THREADS": "1"}
    # one uninterrupted run counts the writes (the template is most of them)
    n_writes = None
    # writes 1-3: the hidden template's group and first arrays; then spread up to the end
    kills = [1, 2, 3, 6, 12, 25, 45, 70, 95, 110, 0]
    procs = {}
    for k in kills:
        work = tmp_path / f"k{k}"
        work.mkdir()
        cmd = [sys.executable, str(tmp_path / "crash.py"), str(k), "train",
               str(tmp_path / "grid.toml"), "--out", str(work / "s.zarr"), "--quiet"]  # fmt: skip
        procs[k] = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
        if len(procs) % 2 == 0:  # two at a time on a small machine
            for p in procs.values():
                p.wait(timeout=600)
    for k, p in procs.items():
        err = p.communicate(timeout=600)[1]
        if k == 0:
            assert p.returncode == 0, err
            n_writes = int(err.strip().split("writes=")[-1])
        else:
            assert p.returncode == 9, (k, err)
    assert n_writes is not None and n_writes > max(kills)
    assert _tree_bytes(tmp_path / "k0" / "s.zarr") == _tree_bytes(reference)
    ref = _tree_bytes(reference)
    for k in kills[:-1]:
        work = tmp_path / f"k{k}"
        train_plan(plan_from_config(CONFIG), store=work / "s.zarr", resume=True)
        got = _tree_bytes(work / "s.zarr")
        assert got.keys() == ref.keys(), k
        assert [f for f in ref if ref[f] != got[f]] == [], k
        assert sorted(p.name for p in work.iterdir()) == ["s.zarr"], k  # no leftovers


@pytest.mark.parametrize("lr", [1e-3, 0.05])
def test_stale_checkpoint_of_a_deleted_store_is_not_reused(reference, tmp_path, lr):
    """A checkpoint left by a deleted store, of this config or another, never skips chunks."""
    plan = plan_from_config(CONFIG)
    path = tmp_path / "s.zarr"
    tr = _Trainer(plan_from_config({**CONFIG, "optimizer": {"lr": lr}}))
    for c in range(3):
        tr.run_chunk_steps(c)
    # the deleted store's checkpoint claims three chunks done
    _save_checkpoint(path, tr, 3, "an-earlier-store")
    real = store_mod.write_region

    class Crash(Exception):
        pass

    def crashing(*args, **kwargs):
        raise Crash

    store_mod.write_region = crashing
    try:
        with pytest.raises(Crash):  # dies before its own first checkpoint
            train_plan(plan, store=path)
    finally:
        store_mod.write_region = real
    assert not store_mod.resume_path(path).exists()  # a fresh train drops the stale one
    _save_checkpoint(path, tr, 3, "an-earlier-store")  # and if it reappears, it is ignored
    train_plan(plan, store=path, resume=True)
    ref, got = _tree_bytes(reference), _tree_bytes(path)
    assert ref.keys() == got.keys()
    assert [f for f in ref if ref[f] != got[f]] == []
