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
from pathlib import Path
from urllib.parse import quote


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


#: The run table: the ten default columns first, then those behind the "all columns" toggle.
COLUMNS: list[Column] = [
    Column("run", "", ("run",), "num", True, "index of the run in the store"),
    Column("status", "", ("status",), "str", True,
           "training health: ok, diverged (non-finite loss) or insufficient (too few finite "
           "updates to analyse)"),
    Column("precision", "", ("precision",), "str", True, "number format the run trained in"),
    Column("beta2", "", ("beta2",), "num", True, "Adam's second-moment decay rate"),
    Column("lr", "", ("lr",), "num", True, "learning rate"),
    Column("final loss", "", ("final_loss",), "num", True, "training loss at the last step"),
    Column("bursts", "count", ("n_bursts",), "num", True,
           "bursts of the update norm found by the periods analysis"),
    Column("slow period", "steps", ("slow", "period"), "num", True,
           "median interval between successive burst onsets"),
    Column("slow ratio", "x", ("slow", "ratio"), "num", True,
           "slow period divided by the prediction 1/(1-beta2); 1 means the prediction holds"),
    Column("fast efold", "steps", ("fast", "efold"), "num", True,
           "e-folding time of the flip amplitude's decay inside a burst (median over bursts); "
           "predicted 1/(1-beta1)"),
    Column("hidden", "", ("hidden",), "str", False, "widths of the hidden layers"),
    Column("beta1", "", ("beta1",), "num", False, "Adam's first-moment decay rate"),
    Column("seed", "", ("seed",), "num", False, "seed of the initial weights"),
    Column("perturbation", "", ("perturbation",), "str", False,
           "how a twin run was perturbed from the run it copies (empty for an ordinary run)"),
    Column("diverged", "step", ("diverged_step",), "num", False,
           "first step with a non-finite loss, if any"),
    Column("slow CI", "steps", ("slow", "ci"), "str", False,
           "bootstrap confidence interval of the slow period"),
    Column("1/(1-beta2)", "steps", ("slow", "predicted"), "num", False,
           "predicted slow period, Adam's second-moment memory"),
    Column("spectral period", "steps", ("slow", "spectral_period"), "num", False,
           "period at the Welch spectral peak of the log loss (a cross-check of the slow period)"),
    Column("fast ratio", "x", ("fast", "ratio"), "num", False,
           "fast efold divided by the prediction 1/(1-beta1)"),
    Column("flip period", "steps", ("fast", "flip_period"), "num", False,
           "dominant period of the parameter changes inside a burst (median over bursts)"),
    Column("v slope", "1/step", ("v_decay", "slope"), "num", False,
           "median slope of log v per step between bursts"),
    Column("ln(beta2)", "1/step", ("v_decay", "expected"), "num", False,
           "expected v slope: v decays by beta2 per step without new gradient"),
    Column("spirals", "count", ("spirals", "n_spirals"), "num", False,
           "windows whose flip-frame path is a spiral"),
    Column("double", "count", ("spirals", "n_double"), "num", False,
           "spirals with two arms (interleaved even/odd arms, or outward then inward)"),
    Column("twisted", "count", ("spirals", "n_twisted"), "num", False,
           "spirals whose best-fit plane turns by at least 20 degrees between halves"),
    Column("note", "", ("note",), "str", False, "why a run or a measurement is missing"),
]  # fmt: skip


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
    cols = [
        ("run", 4, ("run",)),
        ("hidden", 7, ("hidden",)),
        ("precision", 9, ("precision",)),
        ("beta1", 6, ("beta1",)),
        ("beta2", 7, ("beta2",)),
        ("lr", 8, ("lr",)),
        ("seed", 5, ("seed",)),
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
    cols = [c for c in COLUMNS if c.default or c.path == ("note",)]
    out.append("| " + " | ".join(_md_text(c.label) for c in cols) + " |")
    out.append("|" + "---|" * len(cols))
    for e in doc["runs"]:
        out.append("| " + " | ".join(_md(_get(e, c.path)) for c in cols) + " |")
    out += ["", "Columns:", ""]
    out += [f"- **{_md_text(c.label)}**: {_md_text(c.definition)}" for c in cols]
    for section, keys in (
        ("twins", ("run", "twin_of", "lyapunov", "amplification", "saturation_step", "note")),
        ("diffusion", ("run", "exponent", "ci", "detrended", "note")),
    ):
        rows = doc.get(section) or []
        out += ["", f"## {section.capitalize()}", ""]
        if not rows:
            note = (doc.get("analyses", {}).get(section) or {}).get("note")
            out.append(f"No entries{f' ({_md_text(note)})' if note else ''}.")
            continue
        out.append("| " + " | ".join(keys) + " |")
        out.append("|" + "---|" * len(keys))
        for e in rows:
            out.append("| " + " | ".join(_md(e.get(k)) for k in keys) + " |")
    if doc.get("figures"):
        out += ["", "## Figures", ""]
        for f in doc["figures"]:
            title = _md_text(f.get("title", f["file"])).replace("]", "\\]")
            out += [f"![{title}]({f['file']})", ""]
            if f.get("caption"):
                out += [f"*{_md_text(f['caption'])}*", ""]
    return "\n".join(out).rstrip() + "\n"


# -------------------------------------------------------------------------------------- html

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2330;
background:#fafbfc}
header,section{padding:0 24px}
header{background:#1d2330;color:#fff;padding:14px 24px}
header h1{margin:0 0 4px;font-size:20px} header p{margin:0;opacity:.85}
h2{font-size:17px;margin:22px 0 8px}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{background:#fff;border:1px solid #d8dde6;border-radius:6px;padding:10px 14px;min-width:150px}
.card b{display:block;font-size:22px}
table{border-collapse:collapse;background:#fff;font-size:13px}
th,td{border:1px solid #d8dde6;padding:3px 7px;text-align:right;white-space:nowrap}
td.s,th.s{text-align:left} td.note{white-space:normal;min-width:260px;text-align:left;color:#555}
th.sortable{cursor:pointer;background:#eef1f6;user-select:none}
th.sortable:after{content:" \\2195";color:#99a}
th.asc:after{content:" \\2191"} th.desc:after{content:" \\2193"}
tr.insufficient td{background:#fff4e0} tr.diverged td{background:#fdecec}
td.null{color:#aab}
.scroll{overflow-x:auto;max-width:100%}
figure{display:inline-block;margin:8px;background:#fff;border:1px solid #d8dde6;padding:6px}
figure img{max-width:880px;display:block}
figcaption{font-size:12px;color:#555}
.err{color:#a00}
td.st-ok{color:#176c2e} td.st-not-measurable,td.st-partial,td.st-no-runs{background:#fff4e0;
font-weight:600} td.st-failed{background:#fdecec;color:#a00;font-weight:600}
#run-table .x{display:none} #run-table.all .x{display:table-cell}
th small{font-weight:normal;color:#667}
"""

_JS = """
(function(){
  function key(td, num){
    var v = td.getAttribute('data-v');
    if (v === null || v === '') return null;
    return num ? parseFloat(v) : v.toLowerCase();
  }
  document.querySelectorAll('table.sortable').forEach(function(table){
    var ths = table.querySelectorAll('th');
    ths.forEach(function(th, col){
      th.classList.add('sortable');
      th.addEventListener('click', function(){
        var num = th.getAttribute('data-type') === 'num';
        var asc = !th.classList.contains('asc');
        ths.forEach(function(h){ h.classList.remove('asc', 'desc'); });
        th.classList.add(asc ? 'asc' : 'desc');
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function(a, b){
          var x = key(a.cells[col], num), y = key(b.cells[col], num);
          if (x === null && y === null) return 0;
          if (x === null) return 1;
          if (y === null) return -1;
          return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1);
        });
        rows.forEach(function(r){ body.appendChild(r); });
      });
    });
  });
  window.addEventListener('load', function(){
    // report.html#sort=COLUMN or #sort=COLUMN:desc opens the run table sorted by COLUMN
    var m = /sort=([^&]+)/.exec(decodeURIComponent(location.hash));
    if (m) {
      var want = m[1].split(':');
      document.querySelectorAll('#run-table th').forEach(function(th){
        if (th.getAttribute('data-col') === want[0]) {
          th.click(); if (want[1] === 'desc') th.click();
        }
      });
    }
    var all = document.getElementById('all-columns');
    if (all) {
      var sync = function(){
        document.getElementById('run-table').classList.toggle('all', all.checked);
      };
      all.addEventListener('change', sync);
      if (/(^|[#&])columns=all/.test(location.hash)) { all.checked = true; }
      sync();
    }
    var imgs = document.querySelectorAll('#figures img');
    var ok = 0;
    imgs.forEach(function(i){ if (i.complete && i.naturalWidth > 0) ok++; });
    document.body.setAttribute('data-images-ok', ok + '/' + imgs.length);
  });
})();
"""


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _cell(value, kind: str, note: str | None = None, css: str = "") -> str:
    if value is None:
        sort = ""
    elif isinstance(value, int | float) and not isinstance(value, bool):
        sort = repr(float(value)) if math.isfinite(float(value)) else ""
    else:
        sort = str(value)
    classes = [c for c in (css, "s" if kind == "str" else "", "null" if value is None else "") if c]
    attrs = f' data-v="{_e(sort)}"'
    if classes:
        attrs += f' class="{" ".join(classes)}"'
    if note and value is None:
        attrs += f' title="{_e(note)}"'
    return f"<td{attrs}>{_e(fmt(value))}</td>"


_STR_CLASS = ' class="s"'


def _table(headers: Sequence[tuple[str, str]], rows: Sequence[str], table_id: str) -> str:
    head = "".join(
        f'<th data-type="{kind}" data-col="{_e(h)}"{_STR_CLASS if kind == "str" else ""}>'
        f"{_e(h)}</th>"
        for h, kind in headers
    )
    return (
        f'<div class="scroll"><table id="{table_id}" class="sortable"><thead><tr>{head}</tr>'
        f"</thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


def _run_table(doc: Mapping) -> str:
    """The run table: default columns shown, the others behind the "all columns" toggle."""
    head = []
    for c in COLUMNS:
        cls = " ".join(x for x in ("s" if c.kind == "str" else "", "" if c.default else "x") if x)
        unit = f"<br><small>[{_e(c.unit)}]</small>" if c.unit else ""
        head.append(
            f'<th data-type="{c.kind}" data-col="{_e(c.header)}" title="{_e(c.definition)}"'
            f"{f' class={chr(34)}{cls}{chr(34)}' if cls else ''}>{_e(c.header)}{unit}</th>"
        )
    rows = []
    for e in doc["runs"]:
        cells = []
        for c in COLUMNS:
            css = " ".join(x for x in ("note" if c.path == ("note",) else "",
                                       "" if c.default else "x") if x)  # fmt: skip
            cells.append(_cell(_get(e, c.path), c.kind, _section_note(e, c.path), css))
        rows.append(f'<tr class="{_e(e["status"])}">{"".join(cells)}</tr>')
    n_extra = sum(not c.default for c in COLUMNS)
    return (
        f'<p><label><input type="checkbox" id="all-columns"> show all columns ({n_extra} more: '
        f"{_e(', '.join(c.header for c in COLUMNS if not c.default))})</label> "
        "&middot; hover a header for its definition, click it to sort</p>"
        f'<div class="scroll"><table id="run-table" class="sortable"><thead><tr>{"".join(head)}'
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


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
    page 10 MB. The report folder (page, ``figures/``, ``report.json``) travels as one.
    """
    base = Path(figure_dir).parent
    s = doc.get("summary", {})
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>geomtraj report: {_e(doc['store'])}</title><style>{_CSS}</style></head><body>",
        "<header><h1>geomtraj report</h1>",
        f"<p>{_e(doc['store'])} &middot; {doc['n_runs']} of {doc.get('n_runs_store')} runs "
        f"&middot; {_e(doc.get('created', ''))} &middot; geomtraj "
        f"{_e(doc['versions'].get('geomtraj'))}</p></header>",
        '<section id="summary"><h2>Grid summary</h2><div class="cards">',
    ]
    for status in ("ok", "diverged", "insufficient"):
        parts.append(
            f'<div class="card" id="count-{status}"><b>{s.get("status", {}).get(status, 0)}</b>'
            f"runs {status}</div>"
        )
    for k, v in _grid_rows(doc):
        parts.append(
            f'<div class="card" id="grid-{_e(k)}"><b>{_e(fmt(v.get("slope")))}</b>'
            f"grid {_e(k)} slope, CI {_e(fmt(v.get('ci')))}, {_e(v.get('n_runs'))} runs: "
            f"{_e(v.get('verdict'))}</div>"
        )
    parts.append("</div>")
    prec_rows = [
        f'<tr><td class="s">{_e(p)}</td><td>{c["runs"]}</td><td>{c["diverged"]}</td>'
        f"<td>{c['insufficient']}</td></tr>"
        for p, c in sorted(s.get("precision", {}).items())
    ]
    parts.append(
        _table(
            [("precision", "str"), ("runs", "num"), ("diverged", "num"), ("insufficient", "num")],
            prec_rows,
            "precision-table",
        )
    )
    axes = s.get("axes", {})
    if axes:
        parts.append(
            "<p>"
            + "; ".join(
                f"<b>{_e(k)}</b>: {_e(', '.join(fmt(x) for x in v))}" for k, v in axes.items()
            )
            + "</p>"
        )
    grid_notes = [f"<li>{_e(k)}: {_e(v['note'])}</li>" for k, v in _grid_rows(doc) if v.get("note")]
    if grid_notes:
        parts.append(f"<ul>{''.join(grid_notes)}</ul>")
    parts.append("</section>")

    rows = [
        f'<tr><td class="s">{_e(n)}</td>'
        f'<td class="s st-{_e(str(st.get("status")).replace(" ", "-"))}">'
        f"{_e(st.get('status'))}</td>"
        f"{_cell(st.get('n_runs'), 'num')}{_cell(st.get('seconds'), 'num')}"
        f'<td class="note">{_e(st.get("note") or "")}</td></tr>'
        for n, st in doc.get("analyses", {}).items()
    ]
    parts.append('<section id="analyses"><h2>Analyses</h2>')
    parts.append(
        _table(
            [
                ("analysis", "str"),
                ("status", "str"),
                ("runs", "num"),
                ("seconds", "num"),
                ("note", "str"),
            ],
            rows,
            "analyses-table",
        )  # fmt: skip
    )
    parts.append("</section>")
    if doc.get("errors"):
        parts.append('<section id="errors"><h2 class="err">Errors</h2><ul>')
        for e in doc["errors"]:
            parts.append(
                f'<li class="err"><b>{_e(e["analysis"])}</b> runs {_e(e.get("runs", []))}: '
                f"<code>{_e(e['error'])}</code> {_e(e.get('where', ''))}</li>"
            )
        parts.append("</ul></section>")

    if doc.get("warnings"):
        parts.append('<section id="warnings"><h2>Warnings</h2><ul>')
        for w in doc["warnings"]:
            parts.append(
                f"<li><b>{_e(w['analysis'])}</b>: {_e(w['category'])} x{_e(w['count'])} at "
                f"{_e(w.get('where', '?'))}: {_e(w['message'])}</li>"
            )
        parts.append("</ul></section>")

    parts.append('<section id="runs"><h2>Runs</h2>')
    parts.append(_run_table(doc))
    parts.append("</section>")

    for section, keys in (
        ("twins", ("run", "twin_of", "lyapunov", "amplification", "saturation_step", "note")),
        ("diffusion", ("run", "exponent", "ci", "detrended", "note")),
    ):
        entries = doc.get(section) or []
        parts.append(f'<section id="{section}"><h2>{section.capitalize()}</h2>')
        if not entries:
            note = (doc.get("analyses", {}).get(section) or {}).get("note")
            parts.append(f"<p>No entries{_e(f' ({note})' if note else '')}.</p></section>")
            continue
        kinds = [("str" if k in ("note", "ci") else "num") for k in keys]
        body = [
            "<tr>"
            + "".join(
                _cell(e.get(k), kd, None, "note" if k == "note" else "")
                for k, kd in zip(keys, kinds, strict=True)
            )
            + "</tr>"
            for e in entries
        ]
        parts.append(_table(list(zip(keys, kinds, strict=True)), body, f"{section}-table"))
        parts.append("</section>")

    parts.append('<section id="figures"><h2>Figures</h2>')
    parts.append(
        "<p>Figures are linked from the <code>figures/</code> folder beside this page (keep the "
        "folder with the page); click one to open it full size.</p>"
    )
    for f in doc.get("figures", []):
        if not (base / f["file"]).is_file():
            raise FileNotFoundError(f"figure {f['file']} is not in {base}")
        title = f.get("title", f["file"])
        caption = f.get("caption") or ""
        src = _e(quote(f["file"]))
        parts.append(
            f'<figure><a href="{src}"><img src="{src}" alt="{_e(title)}" '
            f'data-file="{_e(f["file"])}"></a><figcaption><b>{_e(f["analysis"])}: '
            f"{_e(title)}</b> (<code>{_e(f['file'])}</code>)<br>{_e(caption)}</figcaption>"
            "</figure>"
        )
    parts.append("</section>")
    # no <, > or & may reach the script element: "<!--" or "</script" in a store string would
    # change how the page is parsed; JSON's \\u escapes keep the values
    payload = (
        json.dumps(page_data(doc), allow_nan=False)
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
    )
    parts.append(f'<script type="application/json" id="report-data">{payload}</script>')
    parts.append(f"<script>{_JS}</script></body></html>")
    return "\n".join(parts)
