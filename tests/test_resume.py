"""An interrupted `geomtraj train` resumes and ends bit-identical to an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from geomtraj.store.zarrstore import read_attrs, resume_path

CONFIG = """
steps = 40000
record_every = 2
record_params = 8
chunk_rows = 500
snapshot_every = 700

[data]
name = "sincos"
n_points = 32

[model]
hidden = ["6x5"]

[optimizer]
beta2 = [0.99, 0.999]
lr = 0.01

[runs]
seeds = [0, 1, 2, 3]
precision = "float32"

[[twins]]
kind = "ulp"
param = "W1[0,1]"
step = 9001
"""


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _train_cmd(cfg: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "geomtraj.cli",
        "train",
        str(cfg),
        "--out",
        str(out),
        "--quiet",
        *extra,
    ]


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(tmp_path: Path) -> None:
    cfg = tmp_path / "grid.toml"
    cfg.write_text(CONFIG)
    ref, killed = tmp_path / "ref.zarr", tmp_path / "killed.zarr"
    env = {**os.environ, "NUMBA_NUM_THREADS": "2"}

    subprocess.run(_train_cmd(cfg, ref), check=True, env=env, timeout=600)

    proc = subprocess.Popen(_train_cmd(cfg, killed), env=env)
    ckpt = resume_path(killed)
    deadline = time.monotonic() + 300
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "training finished before it could be killed"
    assert read_attrs(killed)["geomtraj_status"] == "training"
    with np.load(ckpt) as saved:
        done = int(saved["next_chunk"])
    assert 1 <= done < 40, f"killed after chunk {done}; the test needs a kill mid-run"

    # a plain re-run refuses to overwrite; --resume continues from the checkpoint
    rerun = subprocess.run(_train_cmd(cfg, killed), env=env, capture_output=True, text=True)
    assert rerun.returncode == 2 and "--resume" in rerun.stderr
    assert len(rerun.stderr.strip().splitlines()) == 1
    subprocess.run(_train_cmd(cfg, killed, "--resume"), check=True, env=env, timeout=600)

    assert not ckpt.exists()
    a, b = _tree_bytes(ref), _tree_bytes(killed)
    assert a.keys() == b.keys()
    different = [k for k in a if a[k] != b[k]]
    assert not different, f"files differ after resume: {different[:5]}"
