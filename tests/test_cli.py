"""The command line: a small grid end to end, and one-line errors with exit status 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_checks import one_line_exit_2

from geomtraj.cli import main

GRID = """
steps = 40
record_params = ["W1[0,0]", "b2[1]"]

[data]
name = "moons"
n_points = 16

[model]
hidden = ["3x2"]
activation = "tanh"
loss = "bce"

[optimizer]
beta2 = [0.99, 0.999]

[runs]
seeds = [0, 1]
precision = "float32"

[[twins]]
kind = "scale"
k = 3
"""


def _write(tmp_path: Path, text: str, name: str = "grid.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_train_info_analyze(tmp_path, capsys) -> None:
    cfg = _write(tmp_path, GRID)
    assert main(["train", str(cfg), "--dry-run"]) == 0
    assert "8 runs x 40 steps" in capsys.readouterr().out  # 2 beta2 x 2 seeds, plus twins

    store = tmp_path / "runs.zarr"
    assert main(["train", str(cfg), "--out", str(store), "--quiet"]) == 0
    assert main(["info", str(store)]) == 0
    out = capsys.readouterr().out
    assert "8 runs x 40 steps" in out and "scale:k=3" in out
    assert main(["analyze", str(store), "--out", str(tmp_path / "report")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    # the summary table has one row per run, starting with its index, last column perturbation
    rows = [line.split() for line in lines if line.split() and line.split()[0].isdigit()]
    assert [int(r[0]) for r in rows] == list(range(8))
    assert rows[-1][-1] == "scale:k=3"
    assert (tmp_path / "report" / "report.json").is_file()


BAD_CONFIGS = {
    "unknown key": ("steps = 10\nspeed = 1\n", "unknown key 'speed'"),
    "bad beta": ("steps = 10\n[optimizer]\nbeta2 = 1.5\n", "beta2=1.5"),
    "bad precision": ('steps = 10\n[runs]\nprecision = "float8"\n', "float8"),
    "bad parameter": (
        'steps = 10\n[[twins]]\nkind = "ulp"\nparam = "W9[0,0]"\nstep = 2\n',
        "W9[0,0]",
    ),
    "no steps": ("[data]\nseed = 1\n", "steps"),
    "not toml": ("steps = = 3\n", "invalid TOML"),
    "stride": ("steps = 10\nrecord_every = 3\n", "record_every=3"),
    "run chunk": ("steps = 10\nrun_chunk = 0\n", "run_chunk must be at least 1"),
    "chunk rows": ('steps = 10\nchunk_rows = "many"\n', "chunk_rows must be a number"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_is_one_line_exit_2(case, tmp_path, capsys) -> None:
    text, expected = BAD_CONFIGS[case]
    cfg = _write(tmp_path, text)
    one_line_exit_2(["train", str(cfg), "--out", str(tmp_path / "x.zarr")], capsys, expected)
    assert not (tmp_path / "x.zarr").exists()


def test_bad_paths_are_one_line_exit_2(tmp_path, capsys) -> None:
    cases = [
        ["train", str(tmp_path / "missing.toml"), "--out", str(tmp_path / "x.zarr")],
        ["info", str(tmp_path / "missing.zarr")],
        ["analyze", str(tmp_path)],
    ]
    for argv in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("geomtraj: error:"), err
