"""The report machinery: run selection, the block runner, report.json assembly and its schema,
Markdown/HTML/terminal rendering, the accessor and the quick-look plots.

The analyses are stand-ins (``fake_analysis``, ``fake_broken_analysis``) so that these tests check
the machinery whatever analyses are installed; their outputs are recomputed here with NumPy.
"""

from __future__ import annotations

import copy
import json
import math
import re
import warnings

import fake_analysis
import fake_broken_analysis
import numpy as np
import pytest
import xarray as xr
from report_stores import N_RUNS, small_store

import geomtraj.accessor  # noqa: F401  (registers ds.geomtraj)
import geomtraj.analysis
from geomtraj.analysis.runner import (
    AnalyzeParams,
    _block_bytes,
    _run_chunk,
    parse_steps,
    plan_blocks,
    run_analyses,
    select_runs,
    select_steps,
)
from geomtraj.errors import GeomtrajError
from geomtraj.report import make_report, validate_report
from geomtraj.report.assemble import run_defaults, to_jsonable
from geomtraj.report.plots import KINDS, plot_run
from geomtraj.report.render import html_page, markdown, terminal_summary
from geomtraj.store.zarrstore import open_store

FAKE = {"periods": fake_analysis}
USABLE = [r for r in range(N_RUNS) if r != 9]  # run 9 has no finite update


@pytest.fixture(scope="module")
def store():
    return small_store()


@pytest.fixture(scope="module")
def ds(store):
    return open_store(store)


@pytest.fixture(scope="module")
def fake_report(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("fake-report")
    return make_report(store, out, registry=FAKE, progress=False)


# ------------------------------------------------------------------------- pure functions


def test_run_defaults_carry_the_predictions() -> None:
    d = run_defaults(0.9, 0.999, None)
    assert d["slow"]["predicted"] == pytest.approx(1000.0)
    assert d["fast"]["predicted"] == pytest.approx(10.0)
    assert d["fast"]["linear_prediction"] == pytest.approx(-1 / np.log(np.sqrt(0.9)))
    assert d["v_decay"]["expected"] == pytest.approx(np.log(0.999))
    measured = [d["slow"]["period"], d["fast"]["efold"], d["v_decay"]["slope"], d["n_bursts"]]
    assert measured == [None] * 4
    # beta2 = 0 has no finite ln(beta2): null, never a number
    assert run_defaults(0.0, 0.0, None)["v_decay"]["expected"] is None


def test_to_jsonable_turns_nonfinite_into_null() -> None:
    got = to_jsonable(
        {1: np.float32(np.nan), "a": [np.int64(3), np.inf, 2.5], "b": np.arange(2), "c": (1,)}
    )
    assert got == {"1": None, "a": [3, None, 2.5], "b": [0, 1], "c": [1]}
    assert json.loads(json.dumps(got, allow_nan=False)) == got


def test_select_runs_indices_and_queries(ds) -> None:
    beta2 = ds["beta2"].values
    assert select_runs(ds, None) == list(range(N_RUNS))
    assert select_runs(ds, "3") == [3]
    assert select_runs(ds, "0-2,5") == [0, 1, 2, 5]
    assert select_runs(ds, "beta2>0.995") == [i for i in range(N_RUNS) if beta2[i] > 0.995]
    want = [i for i in range(4) if beta2[i] > 0.995 and i % 2 == 1]
    assert select_runs(ds, "0-3, beta2>0.995 and precision=float64") == want
    assert select_runs(ds, "perturbation!=none") == [10]
    for bad, msg in [
        ("99", "out of range"),
        ("speed>1", "no per-run variable 'speed'"),
        ("beta2>abc", "not a number"),
        ("precision>float32", "compare it with = or !="),
        ("beta2>0.9999", "selects no runs"),
        ("??", "not understood"),
    ]:
        with pytest.raises(GeomtrajError, match=re.escape(msg)):
            select_runs(ds, bad)


def test_steps_are_an_inclusive_update_range(ds) -> None:
    assert parse_steps("100:200") == (100, 200)
    assert parse_steps(":50") == (None, 50)
    assert parse_steps("7:") == (7, None)
    sub = select_steps(ds, (100, 200))
    assert sub["step"].values[[0, -1]].tolist() == [100, 200]
    assert sub["iteration"].values[[0, -1]].tolist() == [100, 200]
    for bad in ("x", ":", "5:3"):
        with pytest.raises(GeomtrajError):
            parse_steps(bad)
    with pytest.raises(GeomtrajError, match="selects no recorded steps"):
        select_steps(ds, (10_000, None))


# ---------------------------------------------------------------------------------- runner


def _expected_fake(ds, runs):
    """What fake_analysis measures, recomputed from the raw store with NumPy."""
    out = {}
    for r in runs:
        d = int(ds["diverged_step"].values[r])
        un = ds["update_norm"].values[r]
        it = ds["iteration"].values
        keep = np.isfinite(un) & ((it < d) if d >= 0 else True)
        n = int(np.argmin(keep)) if not keep.all() else keep.size
        un = un[:n]
        out[r] = (n, float(np.mean(un)), int(np.sum(un > 2 * np.median(un))))
    return out


def test_runner_matches_direct_computation(store, ds) -> None:
    got = run_analyses(store, registry=FAKE, progress=False)
    res = got.results["periods"]
    measurable = [r for r in USABLE if r != 8]  # run 8 has two updates, fake needs three
    assert res["run"].values.tolist() == measurable
    assert got.run_notes["periods"] == {8: "run 8: 2 finite updates, 3 needed"}
    want = _expected_fake(ds, measurable)
    for i, r in enumerate(measurable):
        n, mean, peaks = want[r]
        assert int(res["n_updates"].values[i]) == n
        assert float(res["mean_update_norm"].values[i]) == mean
        assert int(res["n_peaks"].values[i]) == peaks
    assert got.health[9].status == "insufficient" and "0 finite update" in got.health[9].note
    assert got.health[8].status == "diverged"
    assert got.failures == []


def test_loaded_and_streamed_blocks_agree(store) -> None:
    loaded = run_analyses(store, registry=FAKE, progress=False)
    streamed = run_analyses(
        store, registry=FAKE, progress=False, params=AnalyzeParams(memory_budget_bytes=1)
    )
    assert loaded.blocks_loaded == loaded.n_blocks == 2
    assert streamed.blocks_loaded == 0
    xr.testing.assert_identical(loaded.results["periods"], streamed.results["periods"])


def test_chunks_too_large_to_hold_are_split_into_blocks_that_fit(store, ds) -> None:
    # a run-chunk larger than half the memory budget was streamed, each run decoding the whole
    # chunk again; it is now split into blocks that are each held in memory
    per_run = _block_bytes(ds, 1)
    chunk = _run_chunk(ds)
    runs = list(range(ds.sizes["run"]))
    gappy = [r for r in runs if r % 3 != 1]  # a selection with gaps
    for fit in (1, 2, 2.5, 3, 3.9, chunk - 1):  # budgets between whole runs too
        for chosen in (runs, gappy):
            blocks = plan_blocks(ds, chosen, max_bytes=int(fit * per_run))
            assert [r for b in blocks for r in b] == chosen
            assert all(_block_bytes(ds, b[-1] - b[0] + 1) <= fit * per_run for b in blocks)
            assert all(len({r // chunk for r in b}) == 1 for b in blocks)
    assert plan_blocks(ds, runs, max_bytes=chunk * per_run) == plan_blocks(ds, runs)
    default = run_analyses(store, registry=FAKE, progress=False)
    budget = AnalyzeParams(memory_budget_bytes=2 * 3 * per_run)  # half of it holds 3 runs
    split = run_analyses(store, registry=FAKE, progress=False, params=budget)
    assert split.n_blocks > default.n_blocks and split.blocks_loaded == split.n_blocks
    xr.testing.assert_identical(default.results["periods"], split.results["periods"])
    assert {r: h.note for r, h in split.health.items()} == {
        r: h.note for r, h in default.health.items()
    }


def test_runs_and_steps_selection_reach_the_analyses(store, ds) -> None:
    got = run_analyses(store, registry=FAKE, runs=[1, 3, 10], steps=(51, 150), progress=False)
    res = got.results["periods"]
    assert res["run"].values.tolist() == [1, 3, 10]
    assert res["n_updates"].values.tolist() == [100, 100, 100]
    want = [float(np.mean(ds["update_norm"].values[r, 50:150])) for r in (1, 3, 10)]
    np.testing.assert_array_equal(res["mean_update_norm"].values, want)


def test_failures_are_isolated_and_reported(store, tmp_path) -> None:
    registry = {"periods": fake_analysis, "broken": fake_broken_analysis}
    rep = make_report(store, tmp_path / "rep", registry=registry, progress=False)
    errors = rep.doc["errors"]
    assert [(e["analysis"], e["runs"]) for e in errors] == [("broken", [1])]
    assert "TypeError: deliberate bug" in errors[0]["error"]
    assert rep.doc["analyses"]["broken"]["status"] == "partial"
    got = rep.results["broken"]["run"].values.tolist()
    assert got == [r for r in USABLE if r not in (1, 2)]
    runs = {e["run"]: e for e in rep.doc["runs"]}
    assert runs[0]["broken_value"] == 0 and runs[3]["broken_value"] == 30
    assert "broken_value" not in runs[1] and "broken_value" not in runs[2]
    assert not rep.ok and rep.schema_errors == []


@pytest.mark.slow
def test_local_processes_match_one_process(store) -> None:
    one = run_analyses(store, registry=FAKE, progress=False)
    # two processes take the two run-chunks; three split them into four blocks (8 + 3 runs)
    for jobs, blocks in ((2, 2), (3, 4)):
        many = run_analyses(store, registry=FAKE, progress=False, jobs=jobs)
        assert many.n_blocks == blocks
        xr.testing.assert_identical(one.results["periods"], many.results["periods"])
        notes = {r: h.note for r, h in many.health.items()}
        assert {r: h.note for r, h in one.health.items()} == notes


def test_unifying_run_chunks_stays_silent() -> None:
    # a run table in one chunk beside per-run arrays in run-chunks, with step and snapshot axes
    # of many chunks: dask would warn that unifying multiplies chunks, on every user's terminal
    import dask.array as da

    from geomtraj.store.zarrstore import unified_chunks

    ds = xr.Dataset(
        {
            "loss": (("run", "step"), da.zeros((16, 200), chunks=(8, 10))),
            "theta_snapshot": (("run", "snapshot"), da.zeros((16, 40), chunks=(8, 2))),
            "seed": ("run", da.zeros(16, chunks=16)),
        }
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = unified_chunks(ds)
    assert out.chunks["run"] == (8, 8) and out["seed"].data.chunks == ((8, 8),)


def test_small_stores_are_split_so_every_worker_gets_runs(ds) -> None:
    runs = list(range(ds.sizes["run"]))
    chunk = _run_chunk(ds)
    by_chunk = plan_blocks(ds, runs)
    assert by_chunk == [runs[i : i + chunk] for i in range(0, len(runs), chunk)]
    for tasks in (1, 2, 3, len(runs), len(runs) + 3):
        blocks = plan_blocks(ds, runs, tasks=tasks)
        assert [r for b in blocks for r in b] == runs  # every run once, in order
        assert len(blocks) >= min(tasks, len(runs))
        assert all(len({r // chunk for r in b}) == 1 for b in blocks)  # a block stays in a chunk
    assert plan_blocks(ds, [2, 0], tasks=5) == [[0], [2]]


# ------------------------------------------------------------------------------- report.json


def test_report_fills_every_contract_field(fake_report, ds) -> None:
    doc = fake_report.doc
    assert fake_report.schema_errors == [] and fake_report.ok
    assert doc["schema"] == "geomtraj.report/1" and doc["n_runs"] == N_RUNS
    runs = {e["run"]: e for e in doc["runs"]}
    want = _expected_fake(ds, [0])[0]
    e0 = runs[0]
    assert e0["status"] == "ok" and e0["diverged_step"] is None
    assert e0["n_bursts"] == want[2]
    assert e0["slow"]["period"] == want[1]
    assert e0["slow"]["predicted"] == pytest.approx(1 / (1 - ds["beta2"].values[0]))
    assert e0["slow"]["note"] == "fake: mean update norm, no CI"
    assert e0["fast"]["efold"] is None and "did not report" in e0["fast"]["note"]
    assert e0["spirals"]["n_spirals"] is None and e0["spirals"]["note"]
    assert e0["fake"]["n_updates"] == want[0]
    assert runs[8]["status"] == "diverged" and runs[8]["diverged_step"] == 3
    assert runs[8]["n_bursts"] is None and "3 needed" in runs[8]["note"]
    assert runs[9]["status"] == "insufficient" and "0 finite update" in runs[9]["note"]
    assert runs[9]["slow"]["period"] is None and "insufficient" in runs[9]["slow"]["note"]
    assert doc["grid"]["slow"]["verdict"] == "fake"
    assert doc["grid"]["fast"]["verdict"] == "not run" and doc["grid"]["fast"]["note"]
    assert doc["fake_total_updates"] == sum(e["fake"]["n_updates"] for e in runs.values()
                                            if "fake" in e)  # fmt: skip
    for name in ("spirals", "twins", "diffusion"):
        assert doc["analyses"][name]["status"] == "not available"
    files = {f["file"] for f in doc["figures"]}
    assert files == {"figures/overview_loss.png", "figures/fake_peaks.png"}
    for f in files:
        assert (fake_report.out / f).stat().st_size > 1000
    on_disk = json.loads((fake_report.out / "report.json").read_text())
    assert validate_report(on_disk) == []


def test_schema_rejects_broken_reports(fake_report) -> None:
    doc = fake_report.doc
    cases = {
        "missing slow": lambda d: d["runs"][0].pop("slow"),
        "bad status": lambda d: d["runs"][0].update(status="fine"),
        "negative bursts": lambda d: d["runs"][0].update(n_bursts=-1),
        "three-sided CI": lambda d: d["runs"][0]["slow"].update(ci=[1, 2, 3]),
        "string period": lambda d: d["runs"][0]["slow"].update(period="12"),
        "figure elsewhere": lambda d: d["figures"].append({"file": "/etc/x.png", "analysis": "x"}),
        "wrong schema": lambda d: d.update(schema="geomtraj.report/2"),
        "no grid": lambda d: d.pop("grid"),
    }
    for name, breaker in cases.items():
        broken = copy.deepcopy(doc)
        breaker(broken)
        assert validate_report(broken), name


# ------------------------------------------------------------------------------- rendering


def test_terminal_summary_has_one_row_per_run(fake_report) -> None:
    doc = fake_report.doc
    lines = terminal_summary(doc).splitlines()
    assert lines[0].startswith(str(doc["store"])) and "periods" in lines[0]
    rows = [ln for ln in lines[2:] if ln and not ln.startswith("grid")]
    assert len(rows) == N_RUNS
    assert rows[10].split()[0] == "10" and rows[10].endswith("ulp:+1@W1[0,1]@t=50")
    assert "div@3" in rows[8] and "insufficient" in rows[9]
    assert lines[-1].startswith("grid slow: slope")
    short = terminal_summary(doc, max_rows=4).splitlines()
    assert short[6] == f"... {N_RUNS - 4} more runs in report.md / report.html"


def test_markdown_lists_runs_and_figures(fake_report) -> None:
    md = markdown(fake_report.doc)
    table = [ln for ln in md.splitlines() if re.match(r"\| \d+ \| (ok|diverged|insufficient) ", ln)]
    assert len(table) == N_RUNS
    assert "![loss of the analysed runs](figures/overview_loss.png)" in md
    assert "## Grid summary" in md and "| float32 |" in md


def test_html_links_its_figures_and_sorts(fake_report) -> None:
    page = (fake_report.out / "report.html").read_text()
    # nothing from the network, and no figure duplicated into the page as base64
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page)
    assert "data:image/png;base64," not in page
    images = re.findall(r'<img src="([^"]+)"[^>]*data-file="([^"]+)"', page)
    assert {f for _, f in images} == {f["file"] for f in fake_report.doc["figures"]}
    for src, f in images:
        assert src == f and (fake_report.out / src).is_file()
    assert page.index('id="summary"') < page.index('id="run-table"')
    assert len(re.findall(r"<tr class=\"(ok|diverged|insufficient)\"", page)) == N_RUNS
    assert 'table id="run-table" class="sortable"' in page
    payload = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page)
    assert json.loads(payload.group(1).replace("<\\/", "</")) == fake_report.doc
    # rendering again from the document gives the same page
    assert html_page(fake_report.doc, fake_report.out / "figures") == page


# ------------------------------------------------------------------------- accessor, plots


def test_accessor_forwards_to_the_analyses(ds, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(geomtraj.analysis, "ANALYSES", {"fake": fake_analysis})
    assert ds.geomtraj.analyses == ["fake"] and "fake" in dir(ds.geomtraj)
    got = ds.geomtraj.fake(runs="0-7, beta2>0.995 and precision=float64")
    runs = select_runs(ds, "0-7, beta2>0.995 and precision=float64")
    xr.testing.assert_identical(got, fake_analysis.analyze(ds, runs))
    assert ds.geomtraj.report("fake", got) == fake_analysis.report(got)
    assert ds.geomtraj.run(3).run == 3
    assert ds.geomtraj.plot(0, "loss", tmp_path / "a.png").stat().st_size > 1000
    with pytest.raises(AttributeError, match="analyses: fake"):
        ds.geomtraj.nonexistent  # noqa: B018
    with pytest.raises(GeomtrajError, match="unknown analysis 'nope'"):
        ds.geomtraj.analyze("nope")


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_plot_kind_draws(ds, kind, tmp_path) -> None:
    path = plot_run(ds, 1, kind, tmp_path / f"{kind}.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_arithmetic_agrees_with_the_libraries() -> None:
    """The quick looks' NumPy PCA, moving average and Welch spectrum against scikit-learn's and
    SciPy's, on random walks (whose spectra and components have no special structure)."""
    from scipy.ndimage import uniform_filter1d
    from scipy.signal import welch
    from sklearn.decomposition import PCA

    from geomtraj.report.plots import moving_average, top_components, welch_density

    rng = np.random.default_rng(1)
    for n, d in ((2000, 16), (50, 3)):
        walk = np.cumsum(rng.normal(size=(n, d)) @ rng.normal(size=(d, d)), axis=0)
        np.testing.assert_allclose(top_components(walk, 2), PCA(2).fit_transform(walk),
                                   rtol=1e-9, atol=1e-9 * np.abs(walk).max())  # fmt: skip
        for size in (1, 2, 15, 16):
            want = uniform_filter1d(walk, size=size, axis=0, mode="nearest")
            # a cumulative sum over n rows rounds by up to about n * eps * max|x|
            bound = n * np.finfo(float).eps * np.abs(walk).max()
            np.testing.assert_allclose(moving_average(walk, size), want, rtol=0, atol=bound)
    for n, nperseg in ((5000, 1000), (101, 17), (16, 8), (16, 16)):
        x = np.cumsum(rng.normal(size=n))
        f, p = welch(x, fs=1.0, nperseg=nperseg, noverlap=nperseg // 2, detrend="linear")
        got_f, got_p = welch_density(x, nperseg, nperseg // 2)
        np.testing.assert_array_equal(got_f, f)
        np.testing.assert_allclose(got_p, p, rtol=1e-9)


def test_plot_refuses_a_run_without_data(ds, tmp_path) -> None:
    with pytest.raises(GeomtrajError, match="run 9 has 0 finite updates"):
        plot_run(ds, 9, "loss", tmp_path / "x.png")
    with pytest.raises(GeomtrajError, match="out of range"):
        plot_run(ds, 99, "loss", tmp_path / "x.png")
    assert math.isfinite(float(ds["beta2"].values[9]))


# ---------------------------------------------------------------------------- linked tables


def _window_rows(n: int) -> list[dict]:
    """Rows with every kind of cell a table must carry back exactly."""
    rng = np.random.default_rng(0)
    return [
        {"run": k // 3, "window": k,
         "winding": float(rng.normal() * 10.0 ** rng.integers(-300, 300)),
         "peak": float(k), "n_surrogates": 199.0 if k % 2 else 199, "tiny": 5e-324,
         "big": 1e16, "is_spiral": bool(k % 2), "label": 'a "double", spiral\nline',
         "pair_x": "" if k == 1 else "W1[0,0]", "arm_p_even": None if k % 4 == 0 else 0.005,
         "ci": [1.0, 2.5], "extra": {"x": 1}}
        for k in range(n)
    ]  # fmt: skip


def test_a_table_comes_back_exactly_and_pandas_reads_it(tmp_path) -> None:
    import pandas as pd

    from geomtraj.report.tables import read_table, write_table

    rows = _window_rows(9)
    link = write_table(rows, tmp_path / "t.csv")
    types = {c["name"]: c["type"] for c in link["columns"]}
    assert types == {"run": "int", "window": "int", "winding": "num", "peak": "num",
                     "n_surrogates": "num", "tiny": "num", "big": "num", "is_spiral": "bool",
                     "label": "str", "pair_x": "json", "arm_p_even": "num", "ci": "json",
                     "extra": "json"}  # fmt: skip
    back = read_table(link, tmp_path)
    assert back == rows and link["n_rows"] == 9
    # same types, not only equal values: an int stays an int and 3.0 stays a float
    assert [type(v) for r in back for v in r.values()] == [
        type(v) for r in rows for v in r.values()
    ]
    frame = pd.read_csv(tmp_path / "t.csv")
    assert frame["winding"].tolist() == [r["winding"] for r in rows]
    assert frame["is_spiral"].dtype == bool and frame["arm_p_even"].isna().sum() == 3


def _report_with_windows(fake_report, tmp_path, n: int = 30):
    import shutil

    shutil.copytree(fake_report.out / "figures", tmp_path / "figures")
    doc = copy.deepcopy(fake_report.doc)
    doc["spiral_windows"] = _window_rows(n)
    return doc


def test_report_json_links_its_tables_and_load_report_reads_them_back(fake_report, tmp_path):
    from geomtraj.report import load_report, write_report

    doc = _report_with_windows(fake_report, tmp_path)
    inline = tmp_path / "inline"
    files = write_report(doc, tmp_path)
    assert tmp_path / "spiral_windows.csv.gz" in files
    on_disk = json.loads((tmp_path / "report.json").read_text())
    link = on_disk["spiral_windows"]
    assert link["table"] == "spiral_windows.csv.gz" and link["n_rows"] == 30
    assert validate_report(on_disk) == []
    assert load_report(tmp_path) == to_jsonable(doc)
    assert doc["spiral_windows"][0]["window"] == 0  # the caller's document keeps its rows
    # the page and the Markdown name the file under the analysis that declares it
    md = (tmp_path / "report.md").read_text()
    assert "Table `spiral_windows`: 30 rows of 13 columns in [spiral_windows.csv.gz]" in md
    assert 'href="spiral_windows.csv.gz"' in (tmp_path / "report.html").read_text()
    # the compressed table reads as it is with pandas, and the same rows give the same bytes
    import pandas as pd

    assert len(pd.read_csv(tmp_path / "spiral_windows.csv.gz")) == 30
    again = tmp_path / "again"
    (again / "figures").mkdir(parents=True)
    for f in (tmp_path / "figures").iterdir():
        (again / "figures" / f.name).write_bytes(f.read_bytes())
    write_report(doc, again)
    assert (again / "spiral_windows.csv.gz").read_bytes() == (
        tmp_path / "spiral_windows.csv.gz"
    ).read_bytes()
    # a report written before tables were linked (rows inline) reads as it is
    (inline / "figures").mkdir(parents=True)
    for f in (tmp_path / "figures").iterdir():
        (inline / "figures" / f.name).write_bytes(f.read_bytes())
    write_report(doc, inline, link=False)
    assert not (inline / "spiral_windows.csv.gz").exists()
    assert json.loads((inline / "report.json").read_text())["spiral_windows"][0]["window"] == 0
    assert load_report(inline) == load_report(tmp_path)


def test_a_damaged_table_is_refused(fake_report, tmp_path) -> None:
    from geomtraj.report import load_report, write_report

    write_report(_report_with_windows(fake_report, tmp_path), tmp_path)
    table = tmp_path / "spiral_windows.csv.gz"
    good = table.read_bytes()
    table.write_bytes(good[:40] + bytes([good[40] ^ 1]) + good[41:])  # one bit changed
    with pytest.raises(GeomtrajError, match="checksum differs"):
        load_report(tmp_path)
    table.write_bytes(good[: len(good) // 2])  # cut short
    with pytest.raises(GeomtrajError, match="checksum differs"):
        load_report(tmp_path)
    table.unlink()
    with pytest.raises(GeomtrajError, match="cannot be read"):
        load_report(tmp_path)
    with pytest.raises(GeomtrajError, match="cannot read the report"):
        load_report(tmp_path / "nowhere")
    (tmp_path / "report.json").write_text("{")
    with pytest.raises(GeomtrajError, match="not a JSON report"):
        load_report(tmp_path)


def test_read_table_checks_rows_against_the_link(tmp_path) -> None:
    """With a matching checksum (a link edited by hand), the count, header and cells still count."""
    import hashlib

    from geomtraj.report.tables import read_table, write_table

    link = write_table(_window_rows(4), tmp_path / "t.csv")

    def relink(data: bytes, **change) -> dict:
        (tmp_path / "t.csv").write_bytes(data)
        return {**link, "sha256": hashlib.sha256(data).hexdigest(), **change}

    data = (tmp_path / "t.csv").read_bytes()
    with pytest.raises(GeomtrajError, match="4 rows, report.json says 5"):
        read_table(relink(data, n_rows=5), tmp_path)
    with pytest.raises(GeomtrajError, match="header"):
        read_table(relink(data.replace(b"run,", b"rum,", 1)), tmp_path)
    with pytest.raises(GeomtrajError, match=r"t.csv:2: invalid literal"):
        read_table(relink(data.replace(b"\n0,0,", b"\nx,0,", 1)), tmp_path)
    with pytest.raises(GeomtrajError, match="not a table link"):
        read_table({**link, "table": "../t.csv"}, tmp_path)
    # compressed: the rows come back, and bytes that are no gzip stream are refused
    gz = write_table(_window_rows(4), tmp_path / "t.csv.gz")
    assert gz["format"] == "csv.gz" and read_table(gz, tmp_path) == read_table(
        relink(data), tmp_path
    )
    (tmp_path / "t.csv.gz").write_bytes(data)
    bad = {**gz, "sha256": hashlib.sha256(data).hexdigest()}
    with pytest.raises(GeomtrajError, match="cannot be decoded"):
        read_table(bad, tmp_path)


def test_a_rewritten_report_leaves_no_stale_table(store, tmp_path) -> None:
    out = tmp_path / "rep"
    out.mkdir()
    (out / "spiral_windows.csv").write_text("run,window\n0,0\n")  # uncompressed, older
    (out / "spiral_windows.csv.gz").write_bytes(b"")
    (out / "notes.csv").write_text("mine\n")  # a file of the user's, not a table of a report
    rep = make_report(store, out, registry=FAKE, progress=False)
    assert "spiral_windows" not in rep.doc
    assert not (out / "spiral_windows.csv").exists() and (out / "notes.csv").exists()
    assert not (out / "spiral_windows.csv.gz").exists()
