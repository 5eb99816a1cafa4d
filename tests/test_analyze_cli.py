"""`geomtraj analyze | info | plot` end to end on a store trained by geomtraj.

The first test runs every installed analysis; the others use the stand-in analysis so that they
check the command's options and exit codes quickly.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import fake_analysis
import fake_broken_analysis
import jsonschema
import pytest
from report_stores import N_RUNS, copy_store, small_store

import geomtraj.analysis.runner
from geomtraj.analysis import ANALYSES
from geomtraj.cli import main
from geomtraj.report import load_schema

FAKE = {"periods": fake_analysis}


def _schema() -> dict:
    return load_schema()


def _check_report(out, n_runs: int) -> dict:
    doc = json.loads((out / "report.json").read_text())
    jsonschema.validate(doc, _schema())
    assert doc["n_runs"] == len(doc["runs"]) == n_runs
    page = (out / "report.html").read_text()
    md = (out / "report.md").read_text()
    assert doc["figures"], "the overview figure at least"
    for fig in doc["figures"]:
        assert (out / fig["file"]).is_file()
        assert f'data-file="{fig["file"]}"' in page and f"]({fig['file']})" in md
    assert len(re.findall(r'<img src="figures/[^"]+\.png"', page)) == len(doc["figures"])
    return doc


@pytest.mark.slow
def test_analyze_with_the_installed_analyses(tmp_path, capsys) -> None:
    out = tmp_path / "report"
    code = main(["analyze", str(small_store()), "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    doc = _check_report(out, N_RUNS)
    for name in ANALYSES:
        st = doc["analyses"][name]
        assert st["status"] in ("ok", "no runs", "not measurable"), st
        if st["status"] == "not measurable":
            assert st["note"], st  # the reason, never an empty note
    # one diverged run of eleven: no early-warning classifier can be fitted, and the report says so
    assert doc["analyses"]["early_warning"]["status"] == "not measurable"
    assert "diverged" in doc["analyses"]["early_warning"]["note"]
    assert doc["errors"] == []
    lines = captured.out.splitlines()
    assert lines[0].startswith(f"{small_store()}: {N_RUNS} runs analysed")
    assert sum(1 for ln in lines if re.match(r"\s+\d+\s+3x4\s", ln)) == N_RUNS


@pytest.fixture
def fake_registry(monkeypatch):
    monkeypatch.setattr(geomtraj.analysis.runner, "available_analyses", lambda: dict(FAKE))


def test_options_reach_the_report(tmp_path, capsys, fake_registry) -> None:
    out = tmp_path / "r"
    argv = ["analyze", str(small_store()), "--out", str(out), "--runs", "0-7,beta2>0.995",
            "--steps", "101:300", "--analyses", "periods", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""  # --quiet, and not a terminal anyway
    doc = _check_report(out, 4)
    assert [e["run"] for e in doc["runs"]] == [2, 3, 6, 7]
    assert all(e["fake"]["n_updates"] == 200 for e in doc["runs"])
    assert doc["options"]["steps"] == [101, 300] and doc["options"]["runs"] == "0-7,beta2>0.995"


def test_default_out_is_beside_the_store(tmp_path, capsys, fake_registry) -> None:
    store = copy_store(tmp_path / "grid.zarr")
    assert main(["analyze", str(store)]) == 0
    assert (tmp_path / "grid-report" / "report.html").is_file()
    assert f"report in {tmp_path / 'grid-report'}" in capsys.readouterr().out


def _report_with_jobs(out, jobs: int, capsys, *extra: str) -> dict:
    """``geomtraj analyze --jobs JOBS`` of the small store into ``out``: its report without the
    fields that differ between two runs (creation time, options, seconds)."""
    argv = ["analyze", str(small_store()), "--out", str(out), "--jobs", str(jobs), "--quiet"]
    assert main([*argv, *extra]) == 0, capsys.readouterr().err
    doc = _check_report(out, N_RUNS)
    for key in ("created", "options"):
        doc.pop(key)
    for st in doc["analyses"].values():
        st.pop("seconds", None)
    return doc


@pytest.mark.slow
def test_jobs_give_the_same_report(tmp_path, capsys, fake_registry) -> None:
    docs = [_report_with_jobs(tmp_path / f"j{jobs}", jobs, capsys) for jobs in (1, 2)]
    assert docs[0] == docs[1]


def test_internal_error_is_exit_1_with_the_report_written(tmp_path, capsys, monkeypatch) -> None:
    registry = {"periods": fake_analysis, "broken": fake_broken_analysis}
    monkeypatch.setattr(geomtraj.analysis.runner, "available_analyses", lambda: dict(registry))
    out = tmp_path / "r"
    assert main(["analyze", str(small_store()), "--out", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("geomtraj: internal error in 1 analysis")
    assert "broken runs [1]: TypeError: deliberate bug" in err
    doc = _check_report(out, N_RUNS)
    assert doc["analyses"]["broken"]["status"] == "partial"


def test_progress_bar_only_when_asked_or_on_a_terminal(capsys) -> None:
    from geomtraj.analysis.runner import _Bar

    bar = _Bar(3, "analyze", None)  # stderr is captured, not a terminal: silent
    bar.update(3)
    bar.close()
    assert capsys.readouterr().err == ""
    bar = _Bar(3, "analyze", True)
    bar.update(3)
    bar.close()
    assert "analyze" in capsys.readouterr().err


def test_info_checks_and_describes(capsys) -> None:
    assert main(["info", str(small_store())]) == 0
    out = capsys.readouterr().out
    assert f"{N_RUNS} runs x 400 steps" in out and "check         ok" in out
    assert "divergences   run@update: 8@3, 9@1" in out
    assert main(["info", str(small_store()), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["diverged_steps"] == {"8": 3, "9": 1} and info["check"] == "ok"
    assert info["precision_counts"] == {"float32": 5, "float64": 6}
    assert info["grid"]["beta2"] == ["0.99", "0.999"] and info["size_mib"] > 0


def test_plot_writes_one_figure(tmp_path, capsys) -> None:
    png = tmp_path / "s.png"
    argv = ["plot", str(small_store()), "--run", "3", "--kind", "spectrum", "--out", str(png)]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == f"wrote {png}"
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_plot_kinds_listed_by_the_parser_are_the_drawable_ones() -> None:
    from geomtraj.cli import PLOT_KINDS
    from geomtraj.report.plots import KINDS

    assert list(PLOT_KINDS) == list(KINDS)


def test_progress_lines_off_a_terminal(capsys) -> None:
    """Off a terminal (nohup, CI) analyze is never silent for long: a line every interval."""
    import time

    from geomtraj.analysis.runner import PROGRESS_LINE_SECONDS, _Bar

    assert PROGRESS_LINE_SECONDS <= 10
    bar = _Bar(4, "analyze", None, interval=0.05)
    bar.update(1, "insufficient 0")
    time.sleep(0.4)
    bar.close()
    time.sleep(0.1)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) >= 2, lines
    assert lines[0].startswith("analyze: 1/4 (25%) after ") and "insufficient 0" in lines[0]
    time.sleep(0.2)
    assert capsys.readouterr().err == ""  # stopped by close()
    quiet = _Bar(4, "analyze", False, interval=0.05)
    time.sleep(0.2)
    quiet.close()
    assert capsys.readouterr().err == ""


def test_existing_report_folder_needs_force(tmp_path, capsys, fake_registry) -> None:
    out = tmp_path / "r"
    argv = ["analyze", str(small_store()), "--out", str(out), "--quiet"]
    assert main(argv) == 0
    before = (out / "report.json").read_bytes()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and "already exists" in err and "--force" in err
    assert (out / "report.json").read_bytes() == before  # untouched
    assert main([*argv, "--force"]) == 0
    (tmp_path / "empty").mkdir()  # an empty folder is no report to lose
    assert main(["analyze", str(small_store()), "--out", str(tmp_path / "empty"), "--quiet"]) == 0


def test_store_strings_are_escaped_in_the_reports(tmp_path, capsys, fake_registry) -> None:
    """A store string holding markup (here its path) stays text in report.md and report.html."""
    store = copy_store(tmp_path / "a<!--b<script>x" / "s.zarr")
    out = tmp_path / "r"
    assert main(["analyze", str(store), "--out", str(out), "--quiet"]) == 0
    md = (out / "report.md").read_text()
    assert "<!--" not in md and "<script>" not in md
    assert "a&lt;!--b&lt;script&gt;x" in md
    page = (out / "report.html").read_text()
    data = page.split('<script type="application/json" id="report-data">')[1].split("</script>")[0]
    assert "<" not in data and ">" not in data
    assert json.loads(data)["store"] == str(store)  # the escapes keep the value
    assert page.count("<!--") == 0


@pytest.mark.slow
def test_figures_drawn_beside_this_process_are_the_same_files(tmp_path, capsys) -> None:
    # with --jobs 2 a worker process draws some analyses' figures while this one draws the others
    pngs, docs = [], []
    analyses = ("--analyses", "periods,diffusion,stability")
    for jobs in (1, 2):
        out = tmp_path / f"j{jobs}"
        docs.append(_report_with_jobs(out, jobs, capsys, *analyses))
        pngs.append({p.name: p.read_bytes() for p in sorted((out / "figures").glob("*.png"))})
    assert docs[0] == docs[1]
    assert {a["analysis"] for a in docs[0]["figures"]} >= {"periods", "diffusion", "stability"}
    assert pngs[0].keys() == pngs[1].keys() and pngs[0] == pngs[1]


def test_a_figure_task_that_cannot_reach_a_worker_is_drawn_here(tmp_path) -> None:
    # "periods" goes to the worker, but its result cannot be pickled; "broken" has a result too
    # large to send and is drawn here meanwhile: both end up drawn, by this process
    import numpy as np
    import xarray as xr

    from geomtraj.report import _draw_figures, report_declarations
    from geomtraj.store import open_store

    registry = {"periods": fake_analysis, "broken": fake_broken_analysis}
    decls = report_declarations(registry)
    ds = open_store(small_store())
    n = ds.sizes["run"]
    result = xr.Dataset({"n_peaks": ("run", list(range(n)))}, coords={"run": list(range(n))})
    unpicklable = result.copy()
    unpicklable.attrs["callback"] = lambda: None  # pickling it for a worker fails
    big = result.assign(extra=("x", np.zeros(2**18)))  # 2 MiB: above the bound, drawn here
    results = {"periods": unpicklable, "broken": big}
    drawn = _draw_figures(["periods", "broken"], decls, registry, results, ds,
                          (str(small_store()), None), tmp_path, 2, 2**20)  # fmt: skip
    paths, warned, failure = drawn["periods"]
    assert failure is None and [Path(p).name for p in paths] == ["fake_peaks.png"]
    assert (tmp_path / "fake_peaks.png").is_file()
    assert drawn["broken"] == ([], [], None)
