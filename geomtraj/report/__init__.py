"""The analysis report (contract 4): ``report.json``, ``report.md``, ``report.html``, figures.

Bulky lists declared as tables go to CSV files linked from ``report.json``
(:mod:`geomtraj.report.tables`); :func:`load_report` reads a report folder back whole.

:func:`make_report` is what ``geomtraj analyze`` runs: it checks the store, runs the selected
analyses over blocks of runs (:func:`geomtraj.analysis.runner.run_analyses`), asks each analysis
for its
``report`` and ``figures``, assembles ``report.json`` (validated against the JSON Schema
``geomtraj.report/1`` built from the declarations of the analyses it ran) and renders it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import ModuleType

import numpy as np

from geomtraj.analysis.declaration import Analysis
from geomtraj.errors import GeomtrajError
from geomtraj.report.assemble import (
    SCHEMA_ID,
    build_report,
    report_declarations,
    to_jsonable,
)
from geomtraj.report.captions import figure_caption
from geomtraj.report.render import html_page, markdown, terminal_summary
from geomtraj.report.tables import link_tables, load_report, table_file

__all__ = [
    "SCHEMA_ID",
    "Report",
    "load_schema",
    "validate_report",
    "make_report",
    "measurability",
    "NOT_MEASURABLE",
    "write_report",
    "load_report",
    "build_report",
    "terminal_summary",
    "markdown",
    "html_page",
]


@cache
def load_schema() -> dict:
    """The JSON Schema of ``report.json`` for the shipped analyses.

    Built from the analyses' declarations (:mod:`geomtraj.report.schema`), never kept as a file
    that could fall out of step with them; ``python -m geomtraj.report.schema`` prints it.
    """
    from geomtraj.report.schema import build_schema, builtin_declarations

    return build_schema(builtin_declarations())


def validate_report(doc: dict, schema: dict | None = None) -> list[str]:
    """Schema violations of ``doc`` as one-line strings (empty when it is valid).

    ``schema`` defaults to :func:`load_schema`; :func:`make_report` passes the schema built from
    the declarations of the analyses it ran (:func:`geomtraj.report.schema.build_schema`).
    """
    import jsonschema

    validator = jsonschema.Draft202012Validator(load_schema() if schema is None else schema)
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
        for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.path)))
    ]


@dataclass
class Report:
    """What :func:`make_report` produced.

    Attributes
    ----------
    doc : dict
        The ``report.json`` document.
    out : Path
        The report directory.
    files : list of Path
        ``report.json``, ``report.md``, ``report.html`` and the figures.
    results : dict
        Per analysis, its concatenated result Dataset (None when it measured nothing).
    schema_errors : list of str
        Violations of the schema (empty for a valid report).
    """

    doc: dict
    out: Path
    files: list[Path] = field(default_factory=list)
    results: dict = field(default_factory=dict)
    schema_errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every analysis ran without internal error and the report is valid."""
        return not self.doc["errors"] and not self.schema_errors


def _analysis_status(
    selected: dict[str, ModuleType | Analysis],
    registry: dict[str, ModuleType | Analysis],
    outcome,
    failed: set[str],
    declarations: Mapping[str, Analysis],
    reports: Mapping[str, Mapping | None],
) -> dict[str, dict]:
    """Status of every analysis the report knows of: registered ones and the declared ones.

    This is where ``analyses.<name>.status`` is decided, once; ``report.md``, ``report.html``, the
    captions and the terminal summary only show it. An analysis that ran is ``"not measurable"``
    when :func:`measurability` says so.
    """
    known = list(registry) + [n for n in declarations if n not in registry]
    status: dict[str, dict] = {}
    from geomtraj.analysis.runner import protocol_gaps, registered_analyses

    incomplete = {k: gaps for k, m in registered_analyses().items() if (gaps := protocol_gaps(m))}
    for name in dict.fromkeys([*known, *incomplete]):
        if name not in registry and name in incomplete:
            missing = ", ".join(f"{f}()" for f in incomplete[name])
            status[name] = {"status": "not available", "note": f"module lacks {missing}"}
        elif name not in registry:
            status[name] = {"status": "not available", "note": "module not present"}
        elif name not in selected:
            status[name] = {"status": "not selected", "note": "left out by --analyses"}
        else:
            res = outcome.results.get(name)
            n = int(res.sizes.get("run", 0)) if res is not None else 0
            errs = [f for f in outcome.failures if f["analysis"] == name]
            st = {"n_runs": n, "seconds": round(outcome.seconds.get(name, 0.0), 3), "note": None}
            if name in failed:
                st["status"] = "failed"
                st["note"] = "report() or figures() raised; see errors"
            elif res is None and not errs:
                st["status"] = "no runs"
                st["note"] = "no run was usable for this analysis"
            elif res is None:
                st["status"] = "failed"
                st["note"] = f"failed on {len(errs)} block/run(s); see errors"
            elif errs:
                st["status"] = "partial"
                st["note"] = f"failed on {len(errs)} run(s); see errors"
            else:
                st["status"] = "ok"
            if st["status"] in ("ok", "partial"):
                none_measured, notes = measurability(
                    name, reports.get(name), declarations.get(name)
                )
                if none_measured:
                    st["status"] = NOT_MEASURABLE
                if notes:
                    text = "; ".join(notes)
                    st["note"] = f"{st['note']}; {text}" if st.get("note") else text
            status[name] = st
    return status


NOT_MEASURABLE = "not measurable"


def measurability(
    name: str, rep: Mapping | None, decl: Analysis | None = None
) -> tuple[bool, list[str]]:
    """Whether analysis ``name`` measured anything, read from its own report, and notes to show.

    The one rule of "not measurable" (``docs/report.md``, "Status of an analysis"). An analysis
    says "nothing could be measured" through the ``verdict`` of its section (the top-level key
    named after it), of that section's ``overall`` entry, or of every per-run entry it reports
    under its name; each starts with ``"not measurable"``. An analysis whose declaration ``decl``
    has per-run fields but that reported no run and left every list it declares empty found
    nothing to measure (twins on a store without twins), whatever its verdict fields say. A
    string field of its section that starts with ``"not measurable"`` (one feature that could not
    be measured) becomes a note while the analysis as a whole stays measurable.

    Returns
    -------
    all_unmeasurable : bool
        True when the analysis as a whole measured nothing.
    notes : list of str
        The reasons (for a not-measurable analysis) or the partial gaps and the verdict.
    """
    section = (rep or {}).get(name)
    if not isinstance(section, Mapping):
        section = {}
    verdicts = [
        c for c in (section, section.get("overall")) if isinstance(c, Mapping) and c.get("verdict")
    ]
    for c in verdicts:
        if str(c["verdict"]).startswith(NOT_MEASURABLE):
            note = c.get("note") or str(c["verdict"])
            return True, [str(note)]
    per_run = [
        e.get(name) for e in ((rep or {}).get("runs") or {}).values() if isinstance(e, Mapping)
    ]
    per_run = [e for e in per_run if isinstance(e, Mapping) and "verdict" in e]
    if per_run and all(str(e["verdict"]).startswith(NOT_MEASURABLE) for e in per_run):
        notes = {str(e.get("note")) for e in per_run if e.get("note")}
        return True, sorted(notes) or [f"{NOT_MEASURABLE} on every run"]
    notes = [
        f"{k} {v}"
        for k, v in section.items()
        if isinstance(v, str) and k != "verdict" and v.startswith(NOT_MEASURABLE)
    ]
    if verdicts:
        notes.append(f"verdict: {verdicts[0]['verdict']}")
    empty = _nothing_reported(decl, rep) if decl is not None else None
    if empty:
        return True, [empty, *notes]
    return False, notes


def _nothing_reported(decl: Analysis, rep: Mapping | None) -> str | None:
    """Why ``rep`` holds no result of ``decl`` (see :func:`measurability`), or None."""
    rep = rep or {}
    run_keys = {f.path[0] for f in decl.run_fields()}
    if not run_keys or any(
        run_keys & set(e) for e in (rep.get("runs") or {}).values() if isinstance(e, Mapping)
    ):
        return None
    lists = {f.path[0] for f in decl.report_fields() if f.name.split(".")[0].endswith("[]")}
    if any(rep.get(k) for k in lists):
        return None
    empty = "".join(f"; {k} is empty" for k in sorted(lists))
    return f"no analysed run gave it anything to measure (no per-run result{empty})"


def _figure_entries(paths, figdir: Path, analysis: str, errors: list[dict]) -> list[dict]:
    out = []
    for p in paths or []:
        p = Path(p)
        if p.suffix != ".png" or p.parent.resolve() != figdir.resolve() or not p.is_file():
            errors.append(
                {"analysis": analysis, "runs": [], "error": f"figure {p} is not a PNG in {figdir}"}
            )
            continue
        out.append({"file": f"figures/{p.name}", "analysis": analysis, "title": p.stem})
    return out


def _draw_here(analysis: Analysis, name: str, view, result, figdir: Path):
    """``figures()`` of one analysis in this process: (paths, warnings, failure or None)."""
    from geomtraj.analysis import runner

    warned: list[dict] = []
    try:
        with runner.capture_warnings(name, warned):
            paths = analysis.draw(view, result, figdir)
    except Exception as exc:
        return [], warned, runner._failure(name, [], exc) | {"error": f"figures(): {exc}"}
    return paths, warned, None


def _draw_task(store: str, steps, name: str, module: str, result, figdir: str):
    """``figures()`` of one analysis in a worker process, which finds the analysis by the name
    of its module and opens the store itself: (paths, warnings, failure or None)."""
    import importlib

    from geomtraj.analysis import runner
    from geomtraj.store.zarrstore import open_store

    analysis = report_declarations({name: importlib.import_module(module)})[name]
    view = runner.select_steps(open_store(store), steps)
    return _draw_here(analysis, name, view, result, Path(figdir))


def _draw_figures(
    names: list[str],
    declarations: dict[str, Analysis],
    registry: Mapping,
    results: Mapping,
    view,
    source: tuple[str, tuple | None],
    figdir: Path,
    jobs: int,
    max_bytes: int,
) -> dict[str, tuple[list, list[dict], dict | None]]:
    """Draw the figures of the analyses ``names``: ``{name: (paths, warnings, failure)}``.

    With ``jobs`` above 1, up to ``jobs - 1`` worker processes draw beside this one. Figures are
    bounded in number whatever the store's size (each analysis picks a few runs), so on a small
    grid they took most of a report's time, one analysis after the other. An analysis goes to a
    worker only when the registry holds it as a module or a declaration (the worker imports it by
    its module's name, as the analysis workers do) and its result, which the worker gets pickled,
    takes at most ``max_bytes`` (half the memory budget of a process); the workers take the
    largest results first, this process the others, until none is left. Every figure is drawn
    by the same code from the same result and store, so the files are the same wherever they
    were drawn. A task that fails to reach its worker (a module the worker cannot import, a
    result that cannot be pickled) or whose worker dies is drawn by this process instead.
    """
    from collections import deque
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    from geomtraj.analysis import runner

    out: dict[str, tuple[list, list[dict], dict | None]] = {}

    def here(name: str) -> None:
        out[name] = _draw_here(declarations[name], name, view, results[name], figdir)

    movable = [
        n
        for n in names
        if isinstance(registry.get(n), ModuleType | Analysis) and results[n].nbytes <= max_bytes
    ]
    # this process draws too, so at most one worker fewer than there are analyses
    n_workers = min(jobs - 1, len(movable), len(names) - 1)
    if n_workers < 1:
        for name in names:
            here(name)
        return out
    local = [n for n in names if n not in movable]  # drawn here, while the workers start
    queue = deque(sorted(movable, key=lambda n: -results[n].nbytes))
    running: dict = {}
    with ProcessPoolExecutor(
        max_workers=n_workers, mp_context=runner._mp_context(), initializer=runner._worker_init
    ) as pool:
        try:
            while local or queue or running:
                while queue and len(running) < n_workers:
                    name = queue.popleft()
                    module = runner._module_name(registry[name])
                    try:
                        fut = pool.submit(
                            _draw_task, *source, name, module, results[name], str(figdir)
                        )
                    except Exception:  # a broken pool takes nothing more
                        here(name)
                        continue
                    running[fut] = name
                if local or queue:
                    here(local.pop(0) if local else queue.pop())
                    done = {f for f in running if f.done()}
                else:
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    name = running.pop(fut)
                    try:
                        out[name] = fut.result()
                    except Exception:  # the worker died, or its answer did not come back
                        here(name)
        finally:
            for fut in running:
                fut.cancel()
    return out


def make_report(
    store: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    analyses=None,
    runs=None,
    steps=None,
    jobs: int = 1,
    scheduler: str | None = None,
    progress: bool | None = None,
    params=None,
    analysis_params: dict[str, dict] | None = None,
    registry: dict[str, ModuleType | Analysis] | None = None,
    figures: bool = True,
) -> Report:
    """Analyse ``store`` and write the report into ``out`` (default: ``STORE-report`` beside it).

    Parameters are those of :func:`geomtraj.analysis.runner.run_analyses`; ``runs`` may be a
    selection
    string such as ``"beta2>0.99"`` and ``steps`` a range such as ``"1000:5000"``.

    Raises
    ------
    GeomtrajError
        For an unusable store or selection (the CLI turns it into exit status 2).
    """
    from geomtraj.analysis import runner
    from geomtraj.report.plots import overview_figure
    from geomtraj.store.zarrstore import open_store

    params = params or runner.AnalyzeParams()
    store = Path(store)
    if out is None:
        out = store.with_name(store.name.removesuffix(".zarr") + "-report")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise GeomtrajError(f"--out {out} exists and is not a directory; choose another --out")
    registry = runner.available_analyses() if registry is None else dict(registry)
    selected = runner.select_analyses(analyses, registry)
    declarations = report_declarations(registry)
    step_range = runner.parse_steps(steps)

    # check everything that can be checked before the long part
    ds = open_store(store)
    picked = runner.select_runs(ds, runs)
    runner.select_steps(ds, step_range)

    outcome = runner.run_analyses(
        store,
        list(selected),
        picked,
        step_range,
        jobs=jobs,
        scheduler=scheduler,
        progress=progress,
        params=params,
        analysis_params=analysis_params,
        registry=registry,
    )
    view = runner.select_steps(ds, step_range)
    errors = list(outcome.failures)
    figdir = out / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    for old in figdir.glob("*.png"):
        old.unlink()
    # a table an earlier report linked must not outlive it beside a report that has none
    for decl in declarations.values():
        for f in decl.fields:
            if f.type == "table":
                name = table_file(f.path)
                (out / name).unlink(missing_ok=True)
                (out / name.removesuffix(".gz")).unlink(missing_ok=True)  # uncompressed, older
    reports: dict[str, dict | None] = {}
    fig_entries: list[dict] = []
    failed: set[str] = set()
    caught = list(outcome.warnings)
    to_draw: list[str] = []
    for name in selected:
        result = outcome.results.get(name)
        if result is None:
            continue
        try:
            with runner.capture_warnings(name, caught):
                reports[name] = declarations[name].make_report(result)
        except Exception as exc:
            failed.add(name)
            errors.append(runner._failure(name, [], exc) | {"error": f"report(): {exc}"})
            continue
        to_draw.append(name)
    if figures:
        drawn = _draw_figures(
            to_draw, declarations, registry, outcome.results, view, (str(store), step_range),
            figdir, jobs, params.memory_budget_bytes // 2,
        )  # fmt: skip
        for name in to_draw:  # in the analyses' order, however the drawing was shared out
            paths, warned, failure = drawn[name]
            caught += warned
            if failure is not None:
                failed.add(name)
                errors.append(failure)
                continue
            fig_entries += _figure_entries(paths, figdir, name, errors)
    # one read of the lazy beta2 column: indexing ``.values`` per run read it once per run, which
    # took minutes on a 1600-run store
    beta2 = np.asarray(ds["beta2"].values, dtype=float)
    hyper = {
        r: {"beta2": float(beta2[r]), "precision": p}
        for r, p in zip(picked, _strings_at(ds, "precision", picked), strict=True)
    }
    if figures:
        overview = {r: outcome.health[r].overview for r in picked}
        path = overview_figure(picked, hyper, overview, figdir / "overview_loss.png")
        fig_entries.insert(0, {"file": f"figures/{path.name}", "analysis": "overview",
                               "title": "loss of the analysed runs"})  # fmt: skip
    status = _analysis_status(selected, registry, outcome, failed, declarations, reports)
    options = {
        "runs": runs if runs is None or isinstance(runs, str) else list(runs),
        "steps": list(step_range) if step_range else None,
        "analyses": list(selected),
        "jobs": jobs,
        "scheduler": scheduler,
        "memory_budget_bytes": params.memory_budget_bytes,
    }
    doc = build_report(
        ds,
        store=str(store),
        runs=picked,
        health=outcome.health,
        reports=reports,
        status=status,
        run_notes=outcome.run_notes,
        figures=fig_entries,
        errors=errors,
        options=options,
        declarations=declarations,
    )
    for entry in doc["figures"]:
        entry["caption"] = figure_caption(entry, doc, declarations)
    doc["warnings"] = to_jsonable(runner.merge_warnings(caught))
    from geomtraj.report.schema import build_schema

    # the document as written (its tables linked) is the one the schema checks
    written, files = _write(doc, out)
    schema_errors = validate_report(written, build_schema(declarations.values()))
    files += [out / f["file"] for f in doc["figures"]]
    return Report(doc, out, files, dict(outcome.results), schema_errors)


def _strings_at(ds, name: str, runs: list[int]) -> list[str]:
    from geomtraj.store.zarrstore import strings

    return strings(ds[name].isel(run=runs))


def write_report(doc: dict, out: str | os.PathLike, *, link: bool = True) -> list[Path]:
    """Write ``report.json``, ``report.md``, ``report.html`` and the linked tables into ``out``.

    The figures must be in ``out/figures``. Each declared table field (type ``"table"``) goes to
    its CSV file and ``report.json`` links it (:func:`geomtraj.report.tables.link_tables`);
    ``link=False`` keeps every table inline, as reports were written before. Read a report back
    with :func:`load_report`.
    """
    return _write(doc, out, link=link)[1]


def _write(doc: dict, out: str | os.PathLike, *, link: bool = True) -> tuple[dict, list[Path]]:
    """:func:`write_report`, also returning the document as written (tables linked)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    doc = to_jsonable(doc)
    # the tables first: a report.json on disk never links a table that is not yet written
    written, tables = link_tables(doc, out) if link else (doc, [])
    paths = [out / "report.json", out / "report.md", out / "report.html"]
    paths[0].write_text(json.dumps(written, indent=1, allow_nan=False) + "\n")
    paths[1].write_text(markdown(written))
    paths[2].write_text(html_page(written, out / "figures"))
    return written, [*paths, *tables]
