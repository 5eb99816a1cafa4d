"""Honest status in the report: an analysis that measured nothing says "not measurable", never ok;
the run table's default columns, units and definitions; figure captions; the page's size; and the
stability figure that joins only dense checkpoints by a line."""

from __future__ import annotations

import html
import json
import re

import fake_analysis
import fake_unmeasurable_analysis
import numpy as np
import pytest
from report_stores import small_store

from geomtraj.analysis.stability import _joined_where_dense
from geomtraj.report import make_report, measurability, validate_report
from geomtraj.report.captions import figure_caption
from geomtraj.report.render import COLUMNS, PAGE_SECTION_BYTES, markdown, page_data

NAME = "fake_unmeasurable"


@pytest.fixture(scope="module")
def unmeasured_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("unmeasured")
    registry = {"periods": fake_analysis, NAME: fake_unmeasurable_analysis}
    return make_report(small_store(), out, registry=registry, progress=False)


# --------------------------------------------------------------------------- measurability


def test_a_not_measurable_verdict_is_read_from_the_section_or_its_overall() -> None:
    assert measurability("a", {"a": {"verdict": "not measurable", "note": "why"}}) == (
        True,
        ["why"],
    )
    rep = {"a": {"runs": [], "overall": {"verdict": "not measurable", "note": "sparse"}}}
    assert measurability("a", rep) == (True, ["sparse"])
    # no note: the verdict itself is the reason, never an empty note
    assert measurability("a", {"a": {"verdict": "not measurable", "note": ""}}) == (
        True,
        ["not measurable"],
    )


def test_every_run_not_measurable_makes_the_analysis_not_measurable() -> None:
    runs = {r: {"a": {"verdict": "not measurable", "note": "too short"}} for r in range(3)}
    assert measurability("a", {"runs": runs}) == (True, ["too short"])


def test_measured_analyses_stay_measurable() -> None:
    """Evidence it must reject: a negative verdict, one measured run, a partial gap."""
    assert measurability("a", {"a": {"verdict": "bursts do not start at crossings"}}) == (
        False,
        ["verdict: bursts do not start at crossings"],
    )
    runs = {0: {"a": {"verdict": "not measurable"}}, 1: {"a": {"verdict": "too few bursts"}}}
    assert measurability("a", {"runs": runs})[0] is False
    partial = {"a": {"verdict": "geometry beats loss", "sharpness_ratio": "not measurable: x"}}
    assert measurability("a", partial) == (
        False,
        ["sharpness_ratio not measurable: x", "verdict: geometry beats loss"],
    )
    # an analysis with no section of its own (periods, spirals) is left as it is
    assert measurability("periods", {"runs": {0: {"n_bursts": 3}}}) == (False, [])
    assert measurability("periods", None) == (False, [])


def test_report_says_not_measurable_everywhere(unmeasured_report) -> None:
    doc = unmeasured_report.doc
    st = doc["analyses"][NAME]
    assert st["status"] == "not measurable"
    assert st["note"] == fake_unmeasurable_analysis.REASON
    assert doc["analyses"]["periods"]["status"] == "ok"
    assert validate_report(doc) == []
    on_disk = json.loads((unmeasured_report.out / "report.json").read_text())
    assert on_disk["analyses"][NAME]["status"] == "not measurable"
    md = (unmeasured_report.out / "report.md").read_text()
    row = next(ln for ln in md.splitlines() if ln.startswith(f"| {NAME} |"))
    assert "**not measurable**" in row and fake_unmeasurable_analysis.REASON in row
    assert "| ok |" not in row
    page = (unmeasured_report.out / "report.html").read_text()
    cell = re.search(rf'<td[^>]*>{NAME}</td><td[^>]* class="([^"]+)"[^>]*>([^<]+)</td>', page)
    assert cell.groups() == ("s st-not-measurable", "not measurable")


def test_schema_rejects_an_unknown_status(unmeasured_report) -> None:
    doc = json.loads(json.dumps(unmeasured_report.doc))
    doc["analyses"][NAME]["status"] = "sort of"
    assert validate_report(doc)


# ------------------------------------------------------------------------------- run table


def test_run_table_has_ten_default_columns_with_definitions(unmeasured_report) -> None:
    default = [c for c in COLUMNS if c.default]
    assert 6 <= len(default) <= 10
    assert all(c.definition and not c.definition.endswith(".") for c in COLUMNS)
    by_header = {c.header: c for c in COLUMNS}
    assert by_header["slow period"].unit == "steps" and by_header["fast efold"].unit == "steps"
    assert "1/(1-beta2)" in by_header["slow ratio"].definition
    assert "e-folding" in by_header["fast efold"].definition
    page = (unmeasured_report.out / "report.html").read_text()
    start = page.index('id="run-table"')
    table = page[start : page.index("</thead>", start)]
    heads = re.findall(r"<th ([^>]*)>(.*?)</th>", table)
    assert len(heads) == len(COLUMNS)
    for (attrs, text), col in zip(heads, COLUMNS, strict=True):
        assert f'title="{col.definition}"' in html.unescape(attrs)
        assert ("x" in attrs.split('class="')[-1].split('"')[0].split()) is (not col.default)
        if col.unit:
            assert f"[{col.unit}]" in text
    assert 'id="all-columns"' in page
    # the Markdown table has the default columns and the note, with their definitions below
    md = markdown(unmeasured_report.doc)
    header = next(ln for ln in md.splitlines() if ln.startswith("| run |"))
    assert header.count("|") - 1 == len(default) + 1
    assert "- **slow ratio [x]**: slow period divided by the prediction 1/(1-beta2)" in md


def test_run_settings_are_labelled_by_the_run_table_declaration() -> None:
    from geomtraj import runtable

    by_path = {c.path: c for c in COLUMNS}
    names = ("precision", "beta2", "lr", "hidden", "beta1", "seed", "perturbation", "diverged_step")
    for name in names:
        c = by_path[(name,)]
        assert (c.header, c.unit, c.definition) == (
            runtable.label(name),
            runtable.unit(name),
            runtable.definition(name),
        )
    assert by_path[("hidden",)].label == "hidden [units]"
    assert by_path[("diverged_step",)].label == "diverged at [steps]"
    assert by_path[("precision",)].kind == "str" and by_path[("seed",)].kind == "num"


# ---------------------------------------------------------------------------- size, captions


def test_bulky_sections_stay_in_report_json() -> None:
    doc = {"schema": "s", "runs": [], "spiral_windows": {"start": list(range(30_000))}}
    assert len(json.dumps(doc["spiral_windows"])) > PAGE_SECTION_BYTES
    got = page_data(doc)
    assert "spiral_windows" not in got and got["runs"] == []
    assert got["omitted_from_page"] == {"sections": ["spiral_windows"], "see": "report.json"}
    small = {"schema": "s", "runs": [], "stability": {"overall": {}}}
    assert page_data(small) == small


def test_every_figure_has_a_caption(unmeasured_report) -> None:
    figs = unmeasured_report.doc["figures"]
    assert figs and all(f["caption"] for f in figs)
    assert figs[0]["file"] == "figures/overview_loss.png" and "diverged" in figs[0]["caption"]
    page = (unmeasured_report.out / "report.html").read_text()
    for f in figs:
        assert f["caption"] in html.unescape(page)


def test_captions_give_the_reason_a_run_was_chosen() -> None:
    doc = {
        "runs": [{"run": 2, "precision": "float32", "beta1": 0.9, "beta2": 0.99, "lr": 0.01,
                  "n_bursts": 281}],
        "analyses": {"stability": {"status": "not measurable", "note": "checkpoints too sparse"}},
    }  # fmt: skip
    cap = figure_caption({"file": "figures/periods_run0002.png", "analysis": "periods"}, doc)
    assert cap.startswith("run 2 (float32, beta1=0.9, beta2=0.99, lr=0.01)")
    assert "most bursts (281)" in cap
    cap = figure_caption({"file": "figures/stability_sharpness.png", "analysis": "stability"}, doc)
    assert "NOT MEASURABLE on these runs: checkpoints too sparse" in cap
    assert "markers" in cap


# ------------------------------------------------------------------------- stability figure


def test_sparse_checkpoints_are_not_joined_by_a_line() -> None:
    xs, ys = _joined_where_dense(np.array([0.0, 20000.0]), np.array([1.2, 1.4]), 7.4)
    assert np.isnan(xs[1]) and np.isnan(ys[1]) and xs.size == 3
    dense = np.arange(0.0, 100.0, 5.0)
    xs, ys = _joined_where_dense(dense, np.ones_like(dense), 7.4)
    assert not np.isnan(xs).any() and xs.size == dense.size
    # one gap in an otherwise dense run breaks the line there only
    steps = np.array([0.0, 5.0, 10.0, 500.0, 505.0])
    xs, _ = _joined_where_dense(steps, np.ones(5), 7.4)
    assert np.flatnonzero(np.isnan(xs)).tolist() == [3]


# ---------------------------------------------------------------------- a section per analysis


def test_every_analysis_has_a_section_with_its_status(unmeasured_report) -> None:
    doc = unmeasured_report.doc
    page = (unmeasured_report.out / "report.html").read_text()
    md = (unmeasured_report.out / "report.md").read_text()
    for name, st in doc["analyses"].items():
        m = re.search(rf'<section id="{name}" class="analysis"><h2>[^<]*\s*<span class="badge '
                      rf'([^"]+)">([^<]+)</span>', page)  # fmt: skip
        assert m and m.group(2) == st["status"], name
        heading = f"## {name.replace('_', ' ').capitalize()}"
        assert md.count(heading) == 1, name
        assert f"Status: **{st['status']}**" in md.split(heading)[1].split("\n## ")[0]
    m = re.search(rf'<section id="{NAME}" class="analysis">(.*?)</section>', page, re.S)
    assert 'class="badge st-not-measurable"' in m.group(1)
    assert fake_unmeasurable_analysis.REASON in m.group(1)


def test_an_analysis_section_shows_its_fields_and_tables() -> None:
    from geomtraj.report.render import analysis_sections

    doc = {
        "analyses": {"stability": {"status": "ok", "note": "verdict: x"},
                     "periods": {"status": "ok", "note": None}},
        "stability": {"runs": [{"run": 0, "verdict": "x", "ci": [1.0, 2.0]}],
                      "overall": {"n_onsets": 40, "verdict": "x"}},
    }  # fmt: skip
    stab, periods = analysis_sections(doc)
    assert stab["scalars"] == [("overall.n_onsets", 40), ("overall.verdict", "x")]
    ((title, cols, rows),) = stab["tables"]
    assert title == "runs" and cols == [("run", "num"), ("verdict", "str"), ("ci", "str")]
    assert rows == [[0, "x", [1.0, 2.0]]]
    assert periods["fields"] == ["n_bursts", "slow", "fast", "v_decay"] and not periods["tables"]


def test_a_store_without_training_data_reports_stability_not_measurable(tmp_path) -> None:
    """The real analyses, on a store written by another program (no data set, no network)."""
    from test_foreign_store import _plain_dataset

    path = tmp_path / "plain.zarr"
    _plain_dataset()[0].to_zarr(path, zarr_format=3, consolidated=False)
    rep = make_report(path, tmp_path / "r", analyses="stability,early_warning", progress=False)
    assert rep.ok, (rep.doc["errors"], rep.schema_errors)
    for name in ("stability", "early_warning"):
        st = rep.doc["analyses"][name]
        assert st["status"] == "not measurable" and st["note"], st
    md = (rep.out / "report.md").read_text()
    assert "| stability | **not measurable** |" in md
    assert "| ok |" not in md.split("## Analyses")[1].split("## Runs")[0]


def test_a_value_shared_by_every_entry_is_said_once() -> None:
    from geomtraj.report.render import analysis_sections

    entries = [{"run": r, "source": "init+final", "ratio": 1.0 + r} for r in range(3)]
    doc = {"analyses": {"a": {"status": "ok", "note": None}}, "a": {"runs": entries}}
    (sec,) = analysis_sections(doc)
    ((title, cols, rows),) = sec["tables"]
    assert cols == [("run", "num"), ("ratio", "num")] and rows[2] == [2, 3.0]
    assert ("runs (every entry): source", "init+final") in sec["scalars"]


def test_nothing_to_measure_reads_not_measurable_in_every_output(tmp_path) -> None:
    """Twins on runs without a twin: no per-run result, no twin; one rule says so everywhere."""
    rep = make_report(small_store(), tmp_path / "r", analyses="twins", runs="0-7", progress=False)
    assert rep.ok, (rep.doc["errors"], rep.schema_errors)
    st = rep.doc["analyses"]["twins"]
    assert st["status"] == "not measurable"
    assert st["note"].startswith("no analysed run gave it anything to measure")
    on_disk = json.loads((rep.out / "report.json").read_text())
    assert on_disk["analyses"]["twins"] == st
    md = (rep.out / "report.md").read_text()
    assert f"| twins | **not measurable** | {st['n_runs']} | {st['note']} |" in md
    assert f"Status: **not measurable**. {st['note']}" in md
    page = html.unescape((rep.out / "report.html").read_text())
    m = re.search(r'<section id="twins" class="analysis">(.*?)</section>', page, re.S)
    assert 'class="badge st-not-measurable">not measurable<' in m.group(1)
    assert st["note"] in m.group(1)
    # the analysis that did measure keeps ok: the rule rejects a measured result
    rep = make_report(small_store(), tmp_path / "t", analyses="twins", progress=False)
    assert rep.doc["analyses"]["twins"]["status"] == "ok", rep.doc["analyses"]["twins"]
