"""Render a ``report.json`` document as Markdown, an HTML page and a terminal table.

The HTML page links its figures from the report's ``figures/`` folder, opens with the grid
summary and the status of every analysis, and has a run table of ten default columns (the rest
behind a toggle) whose headers carry units and one-line definitions and sort on a click. It needs
no network access and no external script or style. See ``docs/report.md``.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from urllib.parse import quote

from geomtraj import runtable
from geomtraj.report.tables import is_link


@dataclass(frozen=True)
class Column:
    """One column of the run table (see ``docs/report.md``, "The run table").

    Attributes
    ----------
    header : str
        The column's short name.
    unit : str
        Unit shown under the header ("" for a plain number or a label).
    path : tuple of str
        Keys of the value in a ``report.json`` run entry.
    kind : str
        ``"num"`` sorts numerically, ``"str"`` as text.
    default : bool
        Shown without the "all columns" toggle.
    definition : str
        One line, shown as the header's tooltip.
    """

    header: str
    unit: str
    path: tuple[str, ...]
    kind: str
    default: bool
    definition: str

    @property
    def label(self) -> str:
        """The header with its unit, e.g. ``slow period [steps]``."""
        return f"{self.header} [{self.unit}]" if self.unit else self.header


def _field_column(name: str, default: bool) -> Column:
    """A column of a run-table field: header, unit and definition as :mod:`geomtraj.runtable`
    declares them."""
    f = runtable.field(name)
    kind = "str" if f.dtype is str else "num"
    return Column(f.label, f.unit, (name,), kind, default, f.definition)


#: The report's own columns of the run table (the run's labels and health), shown by default;
#: the run's settings are labelled, united and defined by the run table's declaration.
BASE_COLUMNS: list[Column] = [
    Column("run", "", ("run",), "num", True, "index of the run in the store"),
    Column("status", "", ("status",), "str", True,
           "training health: ok, diverged (non-finite loss) or insufficient (too few finite "
           "updates to analyse)"),
    _field_column("precision", True),
    _field_column("beta2", True),
    _field_column("lr", True),
    Column("final loss", "", ("final_loss",), "num", True, "training loss at the last step"),
]  # fmt: skip
#: The report's own columns behind the "all columns" toggle.
EXTRA_COLUMNS: list[Column] = [
    _field_column(name, False)
    for name in ("hidden", "beta1", "seed", "perturbation", "diverged_step")
]
NOTE_COLUMN = Column("note", "", ("note",), "str", False, "why a run or a measurement is missing")


def _described(doc: Mapping | None) -> dict[str, Mapping]:
    """``analyses`` of ``doc`` with each analysis's fields and columns.

    A document that does not describe its analyses (written before reports did, or a test's
    hand-made one) gets the descriptions of the shipped analyses.
    """
    analyses = dict((doc or {}).get("analyses") or {})
    if doc is not None and any("fields" in st for st in analyses.values()):
        return analyses
    from geomtraj.report.assemble import describe, report_declarations

    shipped = {n: describe(d) for n, d in report_declarations().items()}
    return {n: {**shipped.get(n, {}), **st} for n, st in {**shipped, **analyses}.items()}


def run_columns(doc: Mapping | None = None) -> list[Column]:
    """The run table of ``doc``: default columns first, then those behind the toggle, then note.

    The analyses' columns come from their declarations (``analyses.<name>.columns`` in
    ``report.json``), with the unit and definition of the field each shows.
    """
    declared = []
    for st in _described(doc).values():
        fields = {f["name"]: f for f in st.get("fields") or []}
        for c in st.get("columns") or []:
            f = fields.get(c["field"], {})
            kind = "num" if f.get("type", "num") in ("num", "int", "count") else "str"
            declared.append(Column(c["header"], f.get("unit", ""), tuple(c["field"].split(".")),
                                   kind, bool(c["default"]), f.get("definition", "")))  # fmt: skip
    return [
        *BASE_COLUMNS,
        *(c for c in declared if c.default),
        *EXTRA_COLUMNS,
        *(c for c in declared if not c.default),
        NOTE_COLUMN,
    ]


def __getattr__(name: str):
    # ``COLUMNS``: the run table of a report of the shipped analyses
    if name == "COLUMNS":
        return run_columns()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _get(entry: Mapping, path: Sequence[str]):
    cur = entry
    for key in path:
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(key)
    return cur


def _section_note(entry: Mapping, path: Sequence[str]) -> str | None:
    if len(path) == 2 and isinstance(entry.get(path[0]), Mapping):
        return entry[path[0]].get("note")
    return None


def fmt(x, digits: int = 4) -> str:
    """A value for a table cell; None is ``-``."""
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if x == 0 or (1e-3 <= abs(x) < 1e5):
            return f"{x:.{digits}g}"
        return f"{x:.{max(digits - 1, 1)}e}"
    if isinstance(x, list | tuple):
        return "[" + ", ".join(fmt(v, 3) for v in x) + "]"
    return str(x)


def _grid_rows(doc: Mapping) -> list[tuple[str, dict]]:
    """Grid tests, each pooled and then per precision (``by_precision``), so that float32 and
    float64 read apart."""
    grid = doc.get("grid") or {}
    rows = []
    for k, v in grid.items():
        if not isinstance(v, Mapping):
            continue
        rows.append((k, v))
        for prec, sub in (v.get("by_precision") or {}).items():
            if isinstance(sub, Mapping):
                rows.append((f"{k} ({prec})", sub))
    return rows


# ------------------------------------------------------------------------ analysis sections


def _is_scalar(v) -> bool:
    return v is None or isinstance(v, str | int | float | bool)


def _entry_table(title: str, entries: Sequence[Mapping], keys: Sequence[str] | None = None):
    """``(title, [(key, kind)], rows)`` for a list of entries; only scalar or interval fields."""
    if keys is None:
        keys = [k for k, v in entries[0].items() if _is_scalar(v) or k == "ci"]
    else:
        keys = [k for k in keys if any(k in e for e in entries)]
    kinds = []
    for k in keys:
        vals = [e.get(k) for e in entries if e.get(k) is not None]
        num = vals and all(isinstance(v, int | float) and not isinstance(v, bool) for v in vals)
        kinds.append("num" if num else "str")
    rows = [[e.get(k) for k in keys] for e in entries]
    return title, list(zip(keys, kinds, strict=True)), rows


def _lift_constants(table) -> tuple[tuple, list[tuple[str, object]]]:
    """Columns with one value in every row (but ``run``) leave the table, to be said once.

    On the demo every stability row repeated the same long note, which made each row a paragraph.
    """
    title, cols, rows = table
    if len(rows) < 2:
        return table, []
    same = [
        j for j, (k, _) in enumerate(cols) if k != "run" and all(r[j] == rows[0][j] for r in rows)
    ]
    constants = [(f"{title} (every entry): {cols[j][0]}", rows[0][j]) for j in same]
    keep = [j for j in range(len(cols)) if j not in same]
    return (title, [cols[j] for j in keep], [[r[j] for j in keep] for r in rows]), constants


def analysis_sections(doc: Mapping) -> list[dict]:
    """One section per analysis of ``doc["analyses"]``: status, note, and what it reported.

    A section lists the analysis's own top-level entry of ``report.json`` (the key named after
    it): its scalar fields, and a table for each list of entries in it (one level deep, so
    ``early_warning.curves.matched`` is a table too). A list whose declared fields include its
    ``run`` (``twins[].run``, ``twins[].lyapunov``, ...) shows just those, in their order, and the
    note; other lists show every scalar field of their entries. ``fields`` names the
    analysis's per-run fields, shown in the run table; ``units`` gives, per table, the unit and
    definition of each declared column; ``legend`` lists every declared field as ``(name, unit,
    definition)``; ``linked`` lists ``(name, link)`` for each declared table that ``doc`` links
    to a CSV file.
    """
    described = _described(doc)
    out = []
    for name, st in (doc.get("analyses") or {}).items():
        sec = {"name": name, "status": st.get("status"), "note": st.get("note"),
               "scalars": [], "tables": [], "fields": [], "units": {}}  # fmt: skip
        declared = (described.get(name) or {}).get("fields") or []
        units = {f["name"]: (f.get("unit", ""), f.get("definition", "")) for f in declared}

        def table(title, entries, prefix, sec=sec, units=units):
            keys = [n.removeprefix(prefix) for n in units if n.startswith(prefix)]
            keys = [k for k in keys if "." not in k]
            # a list declared with its ``run`` column is shown as declared, with the note
            t = _entry_table(title, entries, [*keys, "note"] if "run" in keys else None)
            sec["tables"].append(t)
            sec["units"][title] = {k: units[prefix + k] for k, _ in t[1] if prefix + k in units}

        body = doc.get(name)
        if isinstance(body, list) and body and all(isinstance(e, Mapping) for e in body):
            table(name, body, f"{name}[].")
        elif isinstance(body, Mapping) and not is_link(body):
            for key, val in body.items():
                if is_link(val):
                    continue  # named under ``linked``
                if _is_scalar(val):
                    sec["scalars"].append((key, val))
                elif isinstance(val, list) and val and all(isinstance(e, Mapping) for e in val):
                    table(key, val, f"{name}.{key}[].")
                elif isinstance(val, Mapping):
                    for sub, v in val.items():
                        if _is_scalar(v):
                            sec["scalars"].append((f"{key}.{sub}", v))
                        elif isinstance(v, list) and v and all(isinstance(e, Mapping) for e in v):
                            table(f"{key}: {sub}", v, f"{name}.{key}.{sub}[].")
                elif isinstance(val, list) and all(_is_scalar(v) for v in val):
                    sec["scalars"].append((key, fmt(val)))
        lifted = [_lift_constants(t) for t in sec["tables"]]
        sec["tables"] = [t for t, _ in lifted]
        sec["scalars"] += [c for _, consts in lifted for c in consts]
        # the reason already stands under the heading
        sec["scalars"] = [(k, v) for k, v in sec["scalars"] if not (v and v == sec["note"])]
        # tables written beside report.json (docs/report.md, "Linked tables"), named with a link
        sec["linked"] = [
            (f["name"], link)
            for f in declared
            if f.get("type") == "table" and is_link(link := _get(doc, f["name"].split(".")))
        ]
        run_keys = [f["name"].split(".")[0] for f in declared if f.get("place", "run") == "run"]
        sec["fields"] = list(dict.fromkeys(run_keys))
        sec["legend"] = [(f["name"], f.get("unit", ""), f.get("definition", "")) for f in declared]
        out.append(sec)
    return out


# ---------------------------------------------------------------------------------- terminal


def terminal_summary(doc: Mapping, *, max_rows: int = 50, out_dir: str | None = None) -> str:
    """The summary printed by ``geomtraj analyze``: a title line, a header and one row per run.

    With more than ``max_rows`` runs, the first ``max_rows`` are shown and a last line says how
    many more are in the report. Grid-test lines follow after a blank line when the grid test ran.
    """
    ran = ("ok", "partial")
    names = [n for n, st in doc.get("analyses", {}).items() if st.get("status") in ran]
    unmeasured = [
        n for n, st in doc.get("analyses", {}).items() if st.get("status") == "not measurable"
    ]
    where = f"; report in {out_dir}" if out_dir else ""
    gaps = f"; not measurable: {', '.join(unmeasured)}" if unmeasured else ""
    title = (
        f"{doc['store']}: {doc['n_runs']} runs analysed with "
        f"{', '.join(names) if names else 'no analyses (none available)'}{gaps}{where}"
    )
    lab = runtable.label
    cols = [
        ("run", 4, ("run",)),
        (lab("hidden"), 7, ("hidden",)),
        (lab("precision"), 9, ("precision",)),
        (lab("beta1"), 6, ("beta1",)),
        (lab("beta2"), 7, ("beta2",)),
        (lab("lr"), 8, ("lr",)),
        (lab("seed"), 5, ("seed",)),
        ("status", 12, ("status",)),
        ("final loss", 10, ("final_loss",)),
        ("bursts", 6, ("n_bursts",)),
        ("slow", 8, ("slow", "period")),
        ("ratio", 6, ("slow", "ratio")),
        ("efold", 7, ("fast", "efold")),
        ("spirals", 7, ("spirals", "n_spirals")),
    ]
    header = " ".join(f"{h:>{w}}" for h, w, _ in cols) + "  perturbation"
    lines = [title, header]
    runs = doc["runs"]
    for e in runs[:max_rows]:
        cells = []
        for _, w, path in cols:
            v = _get(e, path)
            if path == ("status",) and e.get("diverged_step") is not None:
                v = f"div@{e['diverged_step']}" if v == "diverged" else v
            cells.append(f"{fmt(v, 4):>{w}}")
        lines.append(" ".join(cells) + f"  {e.get('perturbation', '')}")
    if len(runs) > max_rows:
        lines.append(f"... {len(runs) - max_rows} more runs in report.md / report.html")
    grid = [(k, v) for k, v in _grid_rows(doc) if v.get("verdict") not in (None, "not run")]
    if grid:
        lines.append("")
        for k, v in grid:
            lines.append(
                f"grid {k}: slope {fmt(v.get('slope'))} CI {fmt(v.get('ci'))} over "
                f"{v.get('n_runs')} runs: {v.get('verdict')}"
            )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- markdown


def _md(x) -> str:
    """A table cell or text from the store: HTML-escaped (Markdown passes raw HTML through)."""
    return html.escape(fmt(x), quote=False).replace("|", "\\|").replace("\n", " ")


def _md_text(x) -> str:
    return html.escape(str(x), quote=False).replace("\n", " ")


def markdown(doc: Mapping) -> str:
    """``report.md``: summary, analyses, errors, runs, twins, diffusion, figures."""
    s = doc.get("summary", {})
    out = [
        "# geomtraj report",
        "",
        f"- store: {_md_text(doc['store'])}",
        f"- runs: {doc['n_runs']} analysed of {doc.get('n_runs_store', doc['n_runs'])}",
        f"- created: {doc.get('created', '-')}, geomtraj {doc['versions'].get('geomtraj')}",
        f"- options: {_md_text(json.dumps(doc.get('options', {})))}",
        "",
        "## Grid summary",
        "",
        "- runs by status: "
        + ", ".join(f"{k} {v}" for k, v in sorted(s.get("status", {}).items())),
        "",
        "| precision | runs | diverged | insufficient |",
        "|---|---|---|---|",
    ]
    for p, c in sorted(s.get("precision", {}).items()):
        out.append(f"| {_md(p)} | {c['runs']} | {c['diverged']} | {c['insufficient']} |")
    out += ["", "| grid test | slope | CI | runs | verdict | note |", "|---|---|---|---|---|---|"]
    for k, v in _grid_rows(doc):
        out.append(
            f"| {_md(k)} | {_md(v.get('slope'))} | {_md(v.get('ci'))} | {_md(v.get('n_runs'))} | "
            f"{_md(v.get('verdict'))} | {_md(v.get('note'))} |"
        )
    out += ["", "## Analyses", "", "| analysis | status | runs | note |", "|---|---|---|---|"]
    for name, st in doc.get("analyses", {}).items():
        status = _md(st.get("status"))
        if st.get("status") not in ("ok", "not selected"):
            status = f"**{status}**"  # anything short of ok must catch the eye
        out.append(f"| {_md(name)} | {status} | {_md(st.get('n_runs'))} | {_md(st.get('note'))} |")
    if doc.get("errors"):
        out += ["", "## Errors", ""]
        for e in doc["errors"]:
            out.append(
                f"- **{_md_text(e['analysis'])}** runs {e.get('runs', [])}: {_md_text(e['error'])}"
            )
    if doc.get("warnings"):
        out += ["", "## Warnings", ""]
        for w in doc["warnings"]:
            out.append(
                f"- {_md_text(w['analysis'])}: {_md_text(w['category'])} x{w['count']} at "
                f"{_md_text(w.get('where', '?'))}: {_md_text(w['message'])}"
            )
    out += ["", "## Runs", ""]
    # the default columns and the note; every field is in report.json and report.html
    cols = [c for c in run_columns(doc) if c.default or c.path == ("note",)]
    out.append("| " + " | ".join(_md_text(c.label) for c in cols) + " |")
    out.append("|" + "---|" * len(cols))
    for e in doc["runs"]:
        out.append("| " + " | ".join(_md(_get(e, c.path)) for c in cols) + " |")
    out += ["", "Columns:", ""]
    out += [f"- **{_md_text(c.label)}**: {_md_text(c.definition)}" for c in cols]
    for sec in analysis_sections(doc):
        out += ["", f"## {_md_text(sec['name'].replace('_', ' ').capitalize())}", ""]
        status = _md(sec["status"])
        out.append(f"Status: **{status}**" + (f". {_md_text(sec['note'])}" if sec["note"] else ""))
        if sec["scalars"]:
            out.append("")
            out += [f"- {_md_text(k)}: {_md(v)}" for k, v in sec["scalars"]]
        if sec["fields"]:
            out += ["", f"Per-run fields in the run table: {', '.join(sec['fields'])}."]
        for name, link in sec["linked"]:
            out += ["", f"Table `{_md_text(name)}`: {link['n_rows']} rows of "
                        f"{len(link['columns'])} columns in [{_md_text(link['table'])}]"
                        f"({quote(str(link['table']))}) (CSV, beside report.json)."]  # fmt: skip
        for title, cols, rows in sec["tables"]:
            out += ["", f"{_md_text(title)}:", ""] if title != sec["name"] else [""]
            units = sec["units"].get(title, {})
            heads = [f"{k} [{units[k][0]}]" if units.get(k, ("",))[0] else k for k, _ in cols]
            out.append("| " + " | ".join(_md_text(h) for h in heads) + " |")
            out.append("|" + "---|" * len(cols))
            out += ["| " + " | ".join(_md(v) for v in row) + " |" for row in rows]
        if sec["legend"]:
            out += ["", "Fields:", ""]
            out += [f"- `{n}`{f' [{_md_text(u)}]' if u else ''}: {_md_text(d)}"
                    for n, u, d in sec["legend"]]  # fmt: skip
    if doc.get("figures"):
        out += ["", "## Figures", ""]
        for f in doc["figures"]:
            title = _md_text(f.get("title", f["file"])).replace("]", "\\]")
            out += [f"![{title}]({f['file']})", ""]
            if f.get("caption"):
                out += [f"*{_md_text(f['caption'])}*", ""]
    return "\n".join(out).rstrip() + "\n"


# -------------------------------------------------------------------------------------- html


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _cell(value, kind: str, note: str | None = None, css: str = "") -> dict:
    """A table cell for the template: shown text, sort key, classes and tooltip."""
    if value is None:
        sort = ""
    elif isinstance(value, int | float) and not isinstance(value, bool):
        sort = repr(float(value)) if math.isfinite(float(value)) else ""
    else:
        sort = str(value)
    classes = [c for c in (css, "s" if kind == "str" else "", "null" if value is None else "") if c]
    title = note if note and value is None else None
    text = fmt(value)
    # the page sorts on the shown text where it is the key (an id, a count, a note): a 1600-run
    # report would otherwise carry every such cell twice
    return {"text": text, "sort": None if _sorts_as(text, sort) else sort,
            "cls": " ".join(classes), "title": title}  # fmt: skip


def _sorts_as(text: str, sort: str) -> bool:
    """True when ``text`` itself is the sort key ``sort`` (the same string or the same number)."""
    if text == sort:
        return True
    try:
        return sort != "" and float(text) == float(sort)
    except ValueError:
        return False


def _head(header: str, kind: str, unit: str = "", title: str = "", cls: str = "") -> dict:
    classes = " ".join(c for c in ("s" if kind == "str" else "", cls) if c)
    return {"header": header, "kind": kind, "unit": unit, "title": title, "cls": classes}


def _run_table(doc: Mapping, columns: Sequence[Column]) -> dict:
    """The run table: default columns shown, the others (class ``x``) behind the toggle."""
    headers = [
        _head(c.header, c.kind, c.unit, c.definition, "" if c.default else "x") for c in columns
    ]
    rows = []
    for e in doc["runs"]:
        cells = []
        for c in columns:
            css = " ".join(x for x in ("note" if c.path == ("note",) else "",
                                       "" if c.default else "x") if x)  # fmt: skip
            cells.append(_cell(_get(e, c.path), c.kind, _section_note(e, c.path), css))
        rows.append({"cls": str(e["status"]), "cells": cells})
    return {"headers": headers, "rows": rows}


def _plain_table(
    columns: Sequence[tuple[str, str]],
    rows: Sequence[Sequence],
    units: Mapping[str, tuple[str, str]] | None = None,
) -> dict:
    """A table of ``(header, kind)`` columns; a column named ``note`` wraps its text.

    ``units`` maps a header to its unit and definition (shown in brackets and as a tooltip).
    """
    units = units or {}
    return {
        "headers": [_head(h, k, *units.get(h, ("", ""))) for h, k in columns],
        "rows": [
            {"cls": "", "cells": [_cell(v, k, None, "note" if h == "note" else "")
                                  for (h, k), v in zip(columns, row, strict=True)]}
            for row in rows
        ],
    }  # fmt: skip


@cache
def _template():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("geomtraj.report", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    return env.get_template("report.html.j2")


#: A top-level section larger than this (as JSON) stays in report.json only, not in the page.
PAGE_SECTION_BYTES = 100_000


def page_data(doc: Mapping) -> dict:
    """The document embedded in ``report.html``: all of it but bulky sections.

    Sections of more than :data:`PAGE_SECTION_BYTES` (per-window or per-step tables, such as
    ``spiral_windows``) are left to ``report.json`` and named in ``omitted_from_page``; on the
    demo they were a megabyte of a page that shows none of them.
    """
    out: dict = {}
    omitted = []
    for key, val in doc.items():
        if len(json.dumps(val, allow_nan=False)) > PAGE_SECTION_BYTES:
            omitted.append(key)
        else:
            out[key] = val
    if omitted:
        out["omitted_from_page"] = {"sections": omitted, "see": "report.json"}
    return out


def html_page(doc: Mapping, figure_dir: str | Path) -> str:
    """``report.html``: the page, linking its figures in ``figure_dir`` (relative ``figures/``).

    Figures are linked, not embedded: embedding doubled every PNG as base64 and made the demo
    page 10 MB. The report folder (page, ``figures/``, ``report.json``) travels as one. The page
    is ``templates/report.html.j2``, autoescaped.
    """
    from markupsafe import Markup

    base = Path(figure_dir).parent
    columns = run_columns(doc)
    s = doc.get("summary", {})
    grid = [
        {"name": k, "slope": fmt(v.get("slope")), "ci": fmt(v.get("ci")),
         "n_runs": v.get("n_runs"), "verdict": v.get("verdict")}
        for k, v in _grid_rows(doc)
    ]  # fmt: skip
    precision = _plain_table(
        [("precision", "str"), ("runs", "num"), ("diverged", "num"), ("insufficient", "num")],
        [(p, c["runs"], c["diverged"], c["insufficient"])
         for p, c in sorted(s.get("precision", {}).items())],
    )  # fmt: skip
    analyses = _plain_table(
        [("analysis", "str"), ("status", "str"), ("runs", "num"), ("seconds", "num"),
         ("note", "str")],
        [(n, st.get("status"), st.get("n_runs"), st.get("seconds"), st.get("note") or "")
         for n, st in doc.get("analyses", {}).items()],
    )  # fmt: skip
    for row in analyses["rows"]:
        status = row["cells"][1]
        status["cls"] += " st-" + status["text"].replace(" ", "-")
    sections = []
    for sec in analysis_sections(doc):
        tables = [
            {"title": title, **_plain_table(cols, rows, sec["units"].get(title))}
            for title, cols, rows in sec["tables"]
        ]
        scalars = [(k, fmt(v)) for k, v in sec["scalars"]]
        status_cls = "st-" + str(sec["status"]).replace(" ", "-")
        sections.append({**sec, "tables": tables, "scalars": scalars, "status_cls": status_cls})
    figures = []
    for f in doc.get("figures", []):
        if not (base / f["file"]).is_file():
            raise FileNotFoundError(f"figure {f['file']} is not in {base}")
        figures.append(
            {
                "file": f["file"],
                "src": quote(f["file"]),
                "analysis": f["analysis"],
                "title": f.get("title", f["file"]),
                "caption": f.get("caption") or "",
            }
        )
    # no <, > or & may reach the script element: "<!--" or "</script" in a store string would
    # change how the page is parsed; JSON's \\u escapes keep the values
    payload = (
        json.dumps(page_data(doc), allow_nan=False)
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
    )
    return _template().render(
        doc={**doc, "n_runs_store": doc.get("n_runs_store"), "created": doc.get("created", ""),
             "errors": doc.get("errors") or [], "warnings": doc.get("warnings") or []},
        run_counts=[(k, s.get("status", {}).get(k, 0)) for k in ("ok", "diverged", "insufficient")],
        grid=grid,
        precision=precision,
        axes=[(k, ", ".join(fmt(x) for x in v)) for k, v in s.get("axes", {}).items()],
        grid_notes=[(k, v["note"]) for k, v in _grid_rows(doc) if v.get("note")],
        analyses=analyses,
        runs=_run_table(doc, columns),
        extra_columns=[c.header for c in columns if not c.default],
        sections=sections,
        figures=figures,
        payload=Markup(payload),
    )  # fmt: skip
