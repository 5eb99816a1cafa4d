"""An analysis is one object: its declaration drives the runner, report.json/md/html and the schema.

A toy analysis declared here, in the test, and registered at run time must appear everywhere the
shipped ones do, with no other file touched; the parameters an analysis ran with must reach its
``report`` (the grid test of periods, the spread comparison of twins); the shipped schema file
must be what the declarations generate.
"""

from __future__ import annotations

import dataclasses
import html
import json
import re

import datafiles
import numpy as np
import pytest
import xarray as xr
from report_stores import small_store

from geomtraj.analysis import _MODULES, ANALYSES, declaration, register, shipped, unregister
from geomtraj.analysis.base import iter_runs
from geomtraj.analysis.declaration import (
    Analysis,
    Column,
    Field,
    Figure,
    as_analysis,
    params_attr,
    params_from_result,
)
from geomtraj.errors import GeomtrajError
from geomtraj.report import load_schema, make_report, validate_report
from geomtraj.report.assemble import report_declarations
from geomtraj.report.render import run_columns
from geomtraj.report.schema import build_schema, schema_text
from geomtraj.report.schema import main as schema_main

# ------------------------------------------------------------------------------ a toy analysis


@dataclasses.dataclass(frozen=True)
class ToyParams:
    threshold: float = 1.0


def _toy_analyze(ds, runs=None, *, progress=None, params: ToyParams | None = None):
    params = params or ToyParams()
    rows = [(rd.run, float(np.max(rd.update_norm))) for rd in iter_runs(ds, runs)]
    run, peak = (np.array(c) for c in zip(*rows, strict=True))
    out = xr.Dataset({"peak": ("run", peak)}, coords={"run": run.astype(np.int64)})
    out.attrs["params"] = params_attr(params)
    return out


def _toy_report(result, params: ToyParams | None = None) -> dict:
    params = params or params_from_result(result, ToyParams)
    peaks = [
        {"run": int(r), "peak_update": float(p)}
        for r, p in zip(result["run"].values, result["peak"].values, strict=True)
    ]
    return {
        "runs": {e["run"]: {"toy": {"peak_update": e["peak_update"]}} for e in peaks},
        "toy": {
            "threshold": params.threshold,
            "n_above": sum(e["peak_update"] > params.threshold for e in peaks),
            "peaks": peaks,
        },
    }


def _toy_draw(ds, result, outdir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3, 2))
    ax.bar(result["run"].values, result["peak"].values)
    path = outdir / "toy_peaks.png"
    fig.savefig(path, dpi=50)
    plt.close(fig)
    return [path]


TOY_CAPTION = "Largest update norm of every run; look for runs above the threshold."
TOY = Analysis(
    name="toy",
    analyze=_toy_analyze,
    report=_toy_report,
    draw=_toy_draw,
    params=ToyParams,
    summary="the largest update norm of each run",
    fields=(
        Field("toy.peak_update", "x", "largest update norm of the run"),
        Field("toy.n_above", "count", "runs whose largest update norm exceeds the threshold",
              "count", required=True, place="report"),
        Field("toy.peaks[].run", "", "run index", "int", place="report"),
        Field("toy.peaks[].peak_update", "x", "largest update norm of the run", place="report"),
    ),
    columns=(Column("peak update", "toy.peak_update"),),
    figures=(Figure("toy_peaks", TOY_CAPTION),),
    sections=("toy",),
    section_defaults=lambda why: {"toy": {"threshold": None, "n_above": None, "note": why}},
)  # fmt: skip


@pytest.fixture(scope="module")
def toy_report(tmp_path_factory):
    register(TOY)
    try:
        yield make_report(
            small_store(),
            tmp_path_factory.mktemp("toy"),
            analyses="toy",
            analysis_params={"toy": {"params": {"threshold": 0.05}}},
            progress=False,
        )
    finally:
        unregister("toy")


def test_a_registered_analysis_runs_and_reports_with_its_own_parameters(toy_report) -> None:
    doc = toy_report.doc
    assert toy_report.ok, (doc["errors"], toy_report.schema_errors)
    st = doc["analyses"]["toy"]
    assert st["status"] == "ok" and st["summary"] == TOY.summary
    assert {"name": "toy.peak_update", "unit": "x", "definition": "largest update norm of the run",
            "type": "num", "place": "run"} in st["fields"]  # fmt: skip
    # the table given for ``params`` filled ToyParams, and report() saw it
    assert doc["toy"]["threshold"] == 0.05
    assert doc["toy"] == json.loads(json.dumps(_toy_report(toy_report.results["toy"])["toy"]))
    peaks = {e["run"]: e["peak_update"] for e in doc["toy"]["peaks"]}
    assert doc["toy"]["n_above"] == sum(p > 0.05 for p in peaks.values()) > 0
    for e in doc["runs"]:
        if e["run"] in peaks:
            assert e["toy"]["peak_update"] == peaks[e["run"]]
    # the shipped analyses were not selected, and say so
    assert doc["analyses"]["periods"]["status"] == "not selected"


def test_a_registered_analysis_appears_in_markdown_html_and_figures(toy_report) -> None:
    md = (toy_report.out / "report.md").read_text()
    section = md.split("## Toy\n")[1].split("\n## ")[0]
    assert "Status: **ok**" in section
    assert "| run | peak_update [x] |" in section
    assert "- n_above: " in section and "- threshold: 0.05" in section
    page = html.unescape((toy_report.out / "report.html").read_text())
    assert re.search(r'<section id="toy" class="analysis"><h2>Toy\s*<span class="badge', page)
    head = re.search(r'<th data-type="num" data-col="peak update"([^>]*)>', page)
    assert head and 'title="largest update norm of the run"' in head.group(1)
    assert 'class="x"' in head.group(1)  # behind the "show all columns" toggle
    (fig,) = [f for f in toy_report.doc["figures"] if f["analysis"] == "toy"]
    assert fig["caption"] == TOY_CAPTION and TOY_CAPTION in page


def test_a_registered_analysis_is_in_the_schema(toy_report) -> None:
    schema = build_schema(report_declarations({"toy": TOY}).values())
    toy = schema["properties"]["toy"]
    assert "toy" in schema["required"] and toy["required"] == ["n_above"]
    assert toy["properties"]["n_above"]["minimum"] == 0
    assert (
        "[x]"
        in schema["$defs"]["run"]["properties"]["toy"]["properties"]["peak_update"]["description"]
    )
    doc = json.loads(json.dumps(toy_report.doc))
    assert validate_report(doc, schema) == []
    # evidence the schema must reject: a negative count, a text for a number, no section
    for breaker in (
        lambda d: d["toy"].update(n_above=-1),
        lambda d: d["runs"][0]["toy"].update(peak_update="big"),
        lambda d: d.pop("toy"),
    ):
        broken = json.loads(json.dumps(doc))
        breaker(broken)
        assert validate_report(broken, schema), breaker
    # the shipped schema knows nothing of the toy, so the toy's fields are free there
    assert "toy" not in load_schema()["properties"]


def test_a_misspelt_parameter_is_bad_input(tmp_path) -> None:
    register(TOY)
    try:
        with pytest.raises(GeomtrajError, match="parameters of toy: ToyParams has no .*thresh"):
            make_report(small_store(), tmp_path, analyses="toy", progress=False,
                        analysis_params={"toy": {"params": {"thresh": 1}}})  # fmt: skip
    finally:
        unregister("toy")
    assert "toy" not in ANALYSES


# -------------------------------------------------------------------- the shipped declarations


def test_every_shipped_analysis_declares_itself() -> None:
    names = list(ANALYSES)
    # the report order fixed in _MODULES, then any other module that declares ANALYSIS
    assert names[: len(_MODULES)] == list(_MODULES) and names == shipped()
    assert {"periods", "spirals", "twins", "diffusion", "stability"} <= set(names)
    for name in names:
        d = declaration(name)
        assert d.declared and d.name == name and d.module == f"geomtraj.analysis.{name}"
        assert dataclasses.is_dataclass(d.params) and d.fields and d.figures
        assert all(f.definition and not f.definition.endswith(".") for f in d.fields)
        assert as_analysis(ANALYSES[name]) is d


def test_the_run_table_stays_ten_default_columns_with_units() -> None:
    cols = run_columns()
    assert [c.header for c in cols if c.default] == [
        "run", "status", "precision", "beta2", "lr", "final loss",
        "bursts", "slow period", "slow ratio", "fast efold",
    ]  # fmt: skip
    by_header = {c.header: c for c in cols}
    assert by_header["slow period"].unit == "steps" and by_header["lyapunov"].unit == "1/step"
    assert cols[-1].header == "note"


def test_the_schema_command_writes_the_schema_built_from_the_declarations(tmp_path) -> None:
    assert schema_main([str(tmp_path / "schema.json")]) == 0
    written = json.loads((tmp_path / "schema.json").read_text("utf-8"))
    assert written == load_schema() == json.loads(schema_text())
    assert {"slow", "fast", "mechanism"} <= set(written["$defs"]["run"]["properties"])


def test_a_bare_protocol_module_is_adapted() -> None:
    import fake_analysis

    d = as_analysis(fake_analysis)
    assert not d.declared and d.name == "fake_analysis" and d.draw is fake_analysis.figures
    assert d.fields == () and d.params is None


# --------------------------------------------------------------------- parameter round trip


def test_periods_grid_test_uses_the_parameters_it_ran_with() -> None:
    from geomtraj.analysis import periods
    from geomtraj.store.zarrstore import open_store

    custom = periods.PeriodParams(ci_level=0.5, agreement_tol=0.05)
    result = periods.analyze(open_store(datafiles.BETA_GRID), params=custom)
    assert params_from_result(result, periods.PeriodParams) == custom
    used = declaration("periods").make_report(result)["grid"]["slow"]
    default = periods.report(result, params=periods.PeriodParams())["grid"]["slow"]
    assert used == periods.report(result)["grid"]["slow"]
    assert used["agreement"]["tol"] == 0.05 and default["agreement"]["tol"] == 0.25
    # a 50% interval is inside the 95% one, and narrower
    (lo, hi), (dlo, dhi) = used["ci"], default["ci"]
    assert dlo <= lo <= hi <= dhi and hi - lo < dhi - dlo


def _twin_result(params) -> xr.Dataset:
    """Four originals in two configurations of two seeds, each with one twin."""
    from geomtraj.analysis import twins

    rng = np.random.default_rng(0)
    n = 8
    data = {k: ("run", np.full(n, np.nan)) for k in twins._SCALARS}
    for k in ("perturbation_step", "saturation_step"):
        data[k] = ("run", np.full(n, -1, np.int64))
    data.update(
        twin_of=("run", np.array([-1, -1, -1, -1, 0, 1, 2, 3])),
        diverged_step=("run", np.full(n, -1)),
        precision=("run", np.array(["float32"] * n, dtype=object)),
        perturbation=("run", np.array(["none"] * 4 + ["ulp:+1@W1[0,0]@t=10"] * 4, dtype=object)),
        config=("run", np.array(["A", "A", "B", "B"] * 2, dtype=object)),
        note=("run", np.array([""] * n, dtype=object)),
        final_loss=("run", 10 ** rng.normal(-3, 0.5, n)),
        final_loss_window=("run", 10 ** rng.normal(-3, 0.5, n)),
    )
    out = xr.Dataset(data, coords={"run": np.arange(n)})
    out.attrs["params"] = params_attr(params)
    return out


def test_twins_spread_comparison_uses_the_parameters_it_ran_with() -> None:
    from geomtraj.analysis import twins

    custom = twins.TwinParams(ci=0.5, n_boot=400, seed=3)
    result = _twin_result(custom)
    used = twins.report(result)["twin_spread"]["final_loss"]["float32"]
    default = twins.report(result, params=twins.TwinParams())["twin_spread"]["final_loss"][
        "float32"
    ]
    assert used == twins.report(result, params=custom)["twin_spread"]["final_loss"]["float32"]
    assert used["ratio"] == default["ratio"] and used["ci"] and default["ci"]
    assert used["ci"][1] - used["ci"][0] < default["ci"][1] - default["ci"][0]


# ------------------------------------------------------------------------------ honest status


def test_an_analysis_that_found_nothing_to_measure_is_not_measurable() -> None:
    from geomtraj.report import measurability

    twins = declaration("twins")
    rep = {"runs": {}, "twins": [], "twin_spread": {"final_loss": {}}}
    assert measurability("twins", rep, twins) == (
        True,
        ["no analysed run gave it anything to measure (no per-run result; twins is empty)"],
    )
    # evidence it must reject: one measured twin, or a run entry of its own
    one = {"run": 3, "twin_of": 0, "lyapunov": 0.01}
    assert measurability("twins", {"runs": {}, "twins": [one]}, twins) == (False, [])
    assert measurability("twins", {"runs": {3: {"twin": {"lyapunov": 0.01}}}, "twins": []},
                         twins) == (False, [])  # fmt: skip
    # an analysis with a per-run result measured something
    assert measurability("periods", {"runs": {0: {"n_bursts": 3}}}, declaration("periods")) == (
        False,
        [],
    )
