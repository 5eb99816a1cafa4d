"""Render a ``report.json`` document as Markdown, self-contained HTML and a terminal table.

The HTML page embeds its figures as base64 PNG (it can be mailed or archived alone), opens with
the grid summary, and has a run table that sorts on a click of any column header. It needs no
network access and no external script or style.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

#: Columns of the run tables: (header, getter, kind); kind "num" sorts numerically.
_COLUMNS: list[tuple[str, tuple[str, ...], str]] = [
    ("run", ("run",), "num"),
    ("status", ("status",), "str"),
    ("precision", ("precision",), "str"),
    ("hidden", ("hidden",), "str"),
    ("beta1", ("beta1",), "num"),
    ("beta2", ("beta2",), "num"),
    ("lr", ("lr",), "num"),
    ("seed", ("seed",), "num"),
    ("perturbation", ("perturbation",), "str"),
    ("diverged", ("diverged_step",), "num"),
    ("final loss", ("final_loss",), "num"),
    ("bursts", ("n_bursts",), "num"),
    ("slow period", ("slow", "period"), "num"),
    ("slow CI", ("slow", "ci"), "str"),
    ("1/(1-beta2)", ("slow", "predicted"), "num"),
    ("slow ratio", ("slow", "ratio"), "num"),
    ("spectral period", ("slow", "spectral_period"), "num"),
    ("fast efold", ("fast", "efold"), "num"),
    ("fast ratio", ("fast", "ratio"), "num"),
    ("flip period", ("fast", "flip_period"), "num"),
    ("v slope", ("v_decay", "slope"), "num"),
    ("ln(beta2)", ("v_decay", "expected"), "num"),
    ("spirals", ("spirals", "n_spirals"), "num"),
    ("double", ("spirals", "n_double"), "num"),
    ("twisted", ("spirals", "n_twisted"), "num"),
    ("note", ("note",), "str"),
]


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
    where = f"; report in {out_dir}" if out_dir else ""
    title = (
        f"{doc['store']}: {doc['n_runs']} runs analysed with "
        f"{', '.join(names) if names else 'no analyses (none available)'}{where}"
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
        out.append(
            f"| {_md(name)} | {_md(st.get('status'))} | {_md(st.get('n_runs'))} | "
            f"{_md(st.get('note'))} |"
        )
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
    out.append("| " + " | ".join(h for h, _, _ in _COLUMNS) + " |")
    out.append("|" + "---|" * len(_COLUMNS))
    for e in doc["runs"]:
        out.append("| " + " | ".join(_md(_get(e, p)) for _, p, _ in _COLUMNS) + " |")
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
        if (th.textContent === want[0]) { th.click(); if (want[1] === 'desc') th.click(); }
      });
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
        f'<th data-type="{kind}"{_STR_CLASS if kind == "str" else ""}>{_e(h)}</th>'
        for h, kind in headers
    )
    return (
        f'<div class="scroll"><table id="{table_id}" class="sortable"><thead><tr>{head}</tr>'
        f"</thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


def html_page(doc: Mapping, figure_dir: str | Path) -> str:
    """``report.html``: one self-contained page; figures are read from ``figure_dir``'s parent."""
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
        f'<tr><td class="s">{_e(n)}</td><td class="s">{_e(st.get("status"))}</td>'
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

    run_rows = []
    for e in doc["runs"]:
        cells = []
        for _, path, kind in _COLUMNS:
            css = "note" if path == ("note",) else ""
            cells.append(_cell(_get(e, path), kind, _section_note(e, path), css))
        run_rows.append(f'<tr class="{_e(e["status"])}">{"".join(cells)}</tr>')
    parts.append('<section id="runs"><h2>Runs</h2>')
    parts.append(_table([(h, k) for h, _, k in _COLUMNS], run_rows, "run-table"))
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
    for f in doc.get("figures", []):
        png = (base / f["file"]).read_bytes()
        data = base64.b64encode(png).decode("ascii")
        title = f.get("title", f["file"])
        parts.append(
            f'<figure><img src="data:image/png;base64,{data}" alt="{_e(title)}" '
            f'data-file="{_e(f["file"])}"><figcaption>{_e(f["analysis"])}: {_e(title)} '
            f"(<code>{_e(f['file'])}</code>)</figcaption></figure>"
        )
    parts.append("</section>")
    # no <, > or & may reach the script element: "<!--" or "</script" in a store string would
    # change how the page is parsed; JSON's \\u escapes keep the values
    payload = (
        json.dumps(doc, allow_nan=False)
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
    )
    parts.append(f'<script type="application/json" id="report-data">{payload}</script>')
    parts.append(f"<script>{_JS}</script></body></html>")
    return "\n".join(parts)
