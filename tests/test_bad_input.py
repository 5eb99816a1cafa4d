"""Bad input to `geomtraj analyze` (and `info`, `plot`): every case exits with status 2 and one
line naming the problem and the fix, or, when the problem is confined to some runs, gives a report
in which those runs are marked ``insufficient`` with a note. Never a traceback.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import fake_analysis
import numpy as np
import pytest
import xarray as xr
from cli_checks import one_line_exit_2
from report_stores import (
    chunk_files,
    copy_store,
    nan_like,
    set_attr,
    set_values,
    small_store,
)

import geomtraj.analysis.runner
from geomtraj.cli import main
from geomtraj.store.zarrstore import CHUNK_CHECKSUMS, chunk_checksums, read_attrs
from geomtraj.store.zarrstore import set_attrs as store_set_attrs

FAKE = {"periods": fake_analysis}


@pytest.fixture(autouse=True)
def _fake_registry(monkeypatch):
    # the machinery is under test here, not the analyses: use the stand-in
    monkeypatch.setattr(geomtraj.analysis.runner, "available_analyses", lambda: dict(FAKE))


def _rewrite(src: Path, dst: Path, change) -> Path:
    """A copy of ``src`` rewritten through xarray after ``change(ds)``."""
    ds = change(xr.open_zarr(src, consolidated=False).load())
    ds.attrs.pop(CHUNK_CHECKSUMS)  # (another tool's store: no chunk checksum table)
    for var in ds.variables.values():
        var.encoding = {}
    ds.to_zarr(dst, consolidated=False, zarr_format=3)
    return dst


def _theta_chunk(store: Path) -> Path:
    """Chunk (runs 0-7, steps 101-200) of theta."""
    path = store / "theta" / "c" / "0" / "1" / "0"
    assert path.is_file()
    return path


# Each case: build the bad input under tmp_path, return (argv, expected text in the message).
def _missing(tmp):
    return ["analyze", str(tmp / "nope.zarr")], "no such store"


def _not_zarr(tmp):
    (tmp / "plain").mkdir()
    (tmp / "plain" / "notes.txt").write_text("hello")
    return ["analyze", str(tmp / "plain")], "not a zarr v3 store"


def _a_file(tmp):
    (tmp / "file.zarr").write_text("x")
    return ["analyze", str(tmp / "file.zarr")], "not a zarr v3 store"


def _plain_zarr(tmp):
    import zarr

    zarr.open_group(str(tmp / "other.zarr"), mode="w", zarr_format=3).attrs["x"] = 1
    return ["analyze", str(tmp / "other.zarr")], "without a geomtraj_schema"


def _wrong_schema(tmp):
    s = copy_store(tmp / "s.zarr")
    set_attr(s, None, geomtraj_schema=2)
    return ["analyze", str(s)], "store schema 2"


def _unfinished(tmp):
    s = copy_store(tmp / "s.zarr")
    set_attr(s, None, geomtraj_status="training")
    return ["analyze", str(s)], "--resume"


def _missing_variable(tmp):
    s = copy_store(tmp / "s.zarr")
    shutil.rmtree(s / "v")
    return ["analyze", str(s)], "missing variable(s) v"


def _broken_metadata(tmp):
    s = copy_store(tmp / "s.zarr")
    (s / "theta" / "zarr.json").write_text("{not json")
    return ["analyze", str(s)], "cannot open as zarr"


def _deleted_chunk(tmp):
    s = copy_store(tmp / "s.zarr")
    _theta_chunk(s).unlink()
    return ["analyze", str(s)], "chunk theta/c/0/1/0 (runs 0-7, step 101-200) is missing"


def _empty_chunk(tmp):
    s = copy_store(tmp / "s.zarr")
    _theta_chunk(s).write_bytes(b"")
    return ["analyze", str(s)], "is empty (truncated)"


def _without_table(store: Path) -> Path:
    """``store`` as a store made before the chunk checksum table (or by another tool)."""
    store_set_attrs(store, drop=(CHUNK_CHECKSUMS,))
    return store


def _truncated_chunk(tmp):
    s = copy_store(tmp / "s.zarr")
    f = _theta_chunk(s)
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return ["analyze", str(s)], (
        "chunk theta/c/0/1/0 (runs 0-7, step 101-200) does not match its recorded checksum"
    )


def _truncated_chunk_no_table(tmp):
    argv, _ = _truncated_chunk(tmp)
    _without_table(Path(argv[1]))
    return argv, "cannot decode theta runs 0-7, step 101-200"


def _garbled_chunk(tmp):
    s = copy_store(tmp / "s.zarr")
    f = chunk_files(s, "update_norm")[-1]
    f.write_bytes(np.random.default_rng(0).bytes(f.stat().st_size))
    return ["analyze", str(s)], "chunk update_norm/c/1/3 (runs 8-10, iteration 301-400) does not"


def _garbled_chunk_no_table(tmp):
    argv, _ = _garbled_chunk(tmp)
    _without_table(Path(argv[1]))
    return argv, "cannot decode update_norm runs 8-10"


def _swap_files(f1: Path, f2: Path) -> None:
    """Exchange the contents of two chunk files (each stays a valid, decodable chunk)."""
    a, b = f1.read_bytes(), f2.read_bytes()
    f1.write_bytes(b)
    f2.write_bytes(a)


def _swapped_m_and_v(tmp):
    # both chunks hold valid data with a valid codec checksum: only their place is wrong
    s = copy_store(tmp / "s.zarr")
    _swap_files(s / "m" / "c" / "0" / "1" / "0", s / "v" / "c" / "0" / "1" / "0")
    return ["analyze", str(s)], "chunk m/c/0/1/0 (runs 0-7, step 101-200) does not match"


def _swapped_chunk_keys(tmp):
    s = copy_store(tmp / "s.zarr")
    _swap_files(s / "theta" / "c" / "0" / "1" / "0", s / "theta" / "c" / "0" / "2" / "0")
    return ["analyze", str(s)], "chunk theta/c/0/1/0 (runs 0-7, step 101-200) does not match"


def _rewritten_chunk(tmp):
    # rewritten through zarr: a valid chunk with a valid codec checksum, but not the one trained
    s = copy_store(tmp / "s.zarr")
    set_values(s, "loss", (1, slice(0, 5)), 0.5)
    return ["analyze", str(s)], "chunk loss/c/0/0 (runs 0-7, step 1-100) does not match"


def _chunk_copied_in(tmp):
    s = copy_store(tmp / "s.zarr")
    src = s / "theta_final" / "c" / "0" / "0"
    (s / "theta_final" / "c" / "7").mkdir()
    shutil.copy(src, s / "theta_final" / "c" / "7" / "0")
    return ["analyze", str(s)], "chunk theta_final/c/7/0 was not written by training"


def _flipped_bit(tmp):
    # one bit flipped inside a chunk: the compressed block may still decode, to wrong values;
    # the per-chunk checksum turns it into an error
    s = copy_store(tmp / "s.zarr")
    f = chunk_files(s, "theta")[0]
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x10
    f.write_bytes(bytes(data))
    return ["analyze", str(s)], "checksum"


def _damaged_run_table(tmp):
    s = copy_store(tmp / "s.zarr")
    chunk_files(s, "beta2")[0].unlink()  # reads back as the fill value, NaN
    return ["analyze", str(s)], "chunk beta2/c/0 (runs 0-10) is missing"


def _damaged_run_table_no_table(tmp):
    s = _without_table(copy_store(tmp / "s.zarr"))
    chunk_files(s, "beta2")[0].unlink()
    return ["analyze", str(s)], "run 0 has beta2=nan"


def _lost_static_chunk(var: str, expected: str):
    # zarr reads a lost chunk as its fill value (0, -1 or NaN): wrong numbers, unless refused
    def case(tmp):
        s = copy_store(tmp / "s.zarr")
        files = chunk_files(s, var)
        assert files, var
        files[0].unlink()
        return ["analyze", str(s)], f"chunk {var}/{expected} is missing"

    case.__name__ = f"_lost_{var}"
    return case


def _mixed_precisions(tmp):
    s = _rewrite(small_store(), tmp / "s.zarr", lambda d: d.assign(m=d.m.astype(np.float32)))
    return ["analyze", str(s)], "'m' is stored as float32 but run 1 computed in float64"


def _zero_steps(tmp):
    s = _rewrite(
        small_store(), tmp / "s.zarr", lambda d: d.isel(step=slice(0, 0), iteration=slice(0, 0))
    )
    return ["analyze", str(s)], "0 recorded steps"


def _empty_step_range(tmp):
    return ["analyze", str(small_store()), "--steps", "5000:"], "selects no recorded steps"


def _bad_runs(tmp):
    return ["analyze", str(small_store()), "--runs", "lr>>1"], "'>1' is not a number"


def _bad_analysis(tmp):
    return ["analyze", str(small_store()), "--analyses", "nope"], "unknown analysis 'nope'"


def _bad_jobs(tmp):
    return ["analyze", str(small_store()), "--jobs", "0"], "--jobs must be >= 1"


def _info_deleted_chunk(tmp):
    argv, msg = _deleted_chunk(tmp)
    return ["info", argv[1]], msg


def _plot_empty_run(tmp):
    return ["plot", str(small_store()), "--run", "9"], "run 9 has 0 finite updates"


def _plot_bad_kind(tmp):
    return ["plot", str(small_store()), "--run", "1", "--kind", "x"], "unknown plot kind 'x'"


EXIT_2 = {
    f.__name__.strip("_"): f
    for f in (
        _missing, _not_zarr, _a_file, _plain_zarr, _wrong_schema, _unfinished,
        _missing_variable, _broken_metadata, _deleted_chunk, _empty_chunk, _truncated_chunk,
        _garbled_chunk, _flipped_bit, _damaged_run_table, _mixed_precisions, _zero_steps,
        _empty_step_range, _truncated_chunk_no_table, _garbled_chunk_no_table,
        _damaged_run_table_no_table, _swapped_m_and_v, _swapped_chunk_keys, _rewritten_chunk,
        _chunk_copied_in,
        *(
            _lost_static_chunk(v, key)
            for v, key in (
                ("diverged_step", "c/0 (runs 0-7)"), ("twin_of", "c/0 (runs 0-10)"),
                ("seed", "c/0 (runs 0-10)"), ("step", "c/0 (step indices 0-399)"),
                ("theta_init", "c/0/0 (runs 0-10)"), ("theta_final", "c/0/0 (runs 0-7)"),
                ("n_params", "c/0 (runs 0-10)"), ("data_x", "c/0/0/0"),
            )
        ),
        _bad_runs, _bad_analysis, _bad_jobs, _info_deleted_chunk, _plot_empty_run, _plot_bad_kind,
    )
}  # fmt: skip


@pytest.mark.parametrize("case", list(EXIT_2))
def test_unusable_input_is_one_line_exit_2(case, tmp_path, capsys) -> None:
    argv, expected = EXIT_2[case](tmp_path)
    if argv[0] == "analyze":
        argv += ["--out", str(tmp_path / "report"), "--quiet"]
    one_line_exit_2(argv, capsys, expected)
    assert not (tmp_path / "report" / "report.json").exists()


def test_garbled_chunk_from_a_real_process(tmp_path) -> None:
    # the console entry point, with whatever warnings a real process prints
    argv, expected = _garbled_chunk(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "geomtraj.cli", *argv, "--out", str(tmp_path / "r"), "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert expected in proc.stderr and "Traceback" not in proc.stderr


# ---------------------------------------------------------------- problems confined to runs


def _analyze(store: Path, out: Path, capsys) -> dict:
    code = main(["analyze", str(store), "--out", str(out), "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.err == "" and captured.out == ""
    return {e["run"]: e for e in json.loads((out / "report.json").read_text())["runs"]}


def test_runs_without_data_are_marked_insufficient(tmp_path, capsys) -> None:
    s = copy_store(tmp_path / "s.zarr")
    # run 2: every value NaN although it did not diverge (all its data lost)
    for var in ("theta", "m", "v", "loss", "train_loss", "grad_norm", "update_norm"):
        set_values(s, var, 2, nan_like(s, var))
    # run 4: a stretch of theta overwritten with NaN
    set_values(s, "theta", (4, slice(150, 160)), nan_like(s, "theta"))
    _retake_checksums(s)
    runs = _analyze(s, tmp_path / "rep", capsys)
    assert runs[2]["status"] == "insufficient" and "all NaN" in runs[2]["note"]
    assert runs[4]["status"] == "insufficient"
    assert "theta is NaN at step 151, before the run diverged (never)" in runs[4]["note"]
    # run 9 of the store diverged at update 1: zero finite steps
    assert runs[9]["status"] == "insufficient" and "0 finite update(s)" in runs[9]["note"]
    for r in (2, 4, 9):
        assert runs[r]["n_bursts"] is None and runs[r]["slow"]["period"] is None
        assert runs[r]["slow"]["note"] and runs[r]["fast"]["note"]
    # the others are measured as usual
    assert runs[0]["status"] == "ok" and runs[0]["n_bursts"] is not None
    assert runs[8]["status"] == "diverged"
    assert runs[10]["status"] == "ok"  # a twin of an intact original is measured


def _retake_checksums(store: Path) -> None:
    """Record the chunks as they are now: data lost before the store was finished (a store
    whose chunks were rewritten after it is refused whole, see ``_rewritten_chunk``)."""
    store_set_attrs(store, **{CHUNK_CHECKSUMS: chunk_checksums(store)})
    assert read_attrs(store)[CHUNK_CHECKSUMS]


def test_twins_of_a_damaged_original_are_marked_too(tmp_path, capsys) -> None:
    s = copy_store(tmp_path / "s.zarr")
    set_values(s, "theta", (0, slice(150, 160)), nan_like(s, "theta"))  # run 10 is its twin
    _retake_checksums(s)
    runs = _analyze(s, tmp_path / "rep", capsys)
    assert runs[0]["status"] == "insufficient"
    assert runs[10]["status"] == "insufficient"
    assert "its original run 0 is damaged (theta is NaN at step 151" in runs[10]["note"]
    assert runs[1]["status"] == "ok"


def test_mixed_precision_runs_are_reported_side_by_side(tmp_path, capsys) -> None:
    # float32 and float64 runs in one store (stored in float64) are normal: both are analysed
    out = tmp_path / "rep"
    runs = _analyze(small_store(), out, capsys)
    doc = json.loads((out / "report.json").read_text())
    assert {runs[0]["precision"], runs[1]["precision"]} == {"float32", "float64"}
    assert runs[0]["status"] == runs[1]["status"] == "ok"
    by_precision = doc["summary"]["precision"]
    assert by_precision["float32"]["runs"] == sum(
        e["precision"] == "float32" for e in runs.values()
    )
    assert set(by_precision) == {"float32", "float64"}


def test_step_range_with_too_few_updates_marks_runs(tmp_path, capsys) -> None:
    code = main(
        ["analyze", str(small_store()), "--steps", "400:400", "--out", str(tmp_path / "r"),
         "--quiet"]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    runs = json.loads((tmp_path / "r" / "report.json").read_text())["runs"]
    assert all(e["status"] == "insufficient" for e in runs)
    assert "1 finite update(s) in the analysed range" in runs[0]["note"]
