"""The results page (``docs/RESULTS.md``): claims table, evidence, maps, surprises, how to rerun.

:func:`write_page` reads every ``OUT/NAME/study.json`` that the studies wrote, copies their figures
next to the page and renders it. It is rerun by every ``geomtraj study``; nothing on the page is
written by hand.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from geomtraj.study.claims import CLAIMS, fmt

__all__ = ["default_page", "load_studies", "claims_table", "write_page"]


#: Captions of the studies' figures, by file-name prefix.
CAPTIONS = {
    "netay_maps": "Maps over the (n1, n2) width grid: divergence step, bursts per 1000 steps and "
    "the fraction of analysed burst windows that are spirals.",
    "betas_periods": "Measured slow periods and burst e-folding times against 1/(1-beta2) and "
    "1/(1-beta1), one point per run, coloured by precision.",
    "betas_ladder": "Burst rate on each rung of the precision ladder (same settings and seeds).",
    "divergence_phase": "Fraction of seeds that diverged after start-up in each cell of the "
    "phase diagram (task, widths, beta1/beta2 by lr/eps), per precision; * marks beta1 > "
    "sqrt(beta2); start-up failures are left out, grey cells had nothing else.",
    "divergence_times": "Paired divergence updates: each run against its float32 twin of the same "
    "setting and seed; runs that never diverged sit on the edges (censored at the run length); "
    "pairs with a start-up failure are left out.",
    "twins_amplification": "Growth d_sat/d_0 of last-bit (ulp) and k-rescaling twins, per "
    "precision.",
    "mechanism_run": "One run's bursts against the mechanism: lambda_max(P^-1 H) over Adam's "
    "threshold (1 dashed), mean log v and the update norm, with the burst onsets (red) and the "
    "onsets predicted from the first crossing after the previous burst (blue).",
    "mechanism_intervals": "Each burst's predicted quiet interval, from the threshold crossing and "
    "from v's geometric decay after the previous burst, against the measured interval, over the "
    "grid; the dashed line is y = x.",
}


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it (no machine's home)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def default_page(out_dir: Path, scale: str) -> Path:
    """``docs/RESULTS.md`` of the source tree at full scale, ``OUT/RESULTS.md`` otherwise."""
    if scale == "full":
        from geomtraj.study import find_studies_dir

        return find_studies_dir().parent / "docs" / "RESULTS.md"
    return Path(out_dir) / "RESULTS.md"


def load_studies(out_dir: Path) -> dict[str, dict]:
    """Every finished study's ``study.json`` under ``out_dir`` (those with judged claims).

    Only ``out_dir/NAME/study.json`` of study ``NAME`` counts: a copy of a study's folder kept
    under another name (``netay.old``) holds the same study name and would otherwise stand in
    for the study, its claims and its times, whichever folder sorted last.
    """
    found = {}
    for path in sorted(Path(out_dir).glob("*/study.json")):
        doc = json.loads(path.read_text())
        if doc.get("claims") is not None and doc.get("study") == path.parent.name:
            found[doc["study"]] = doc
    return found


def claims_table(studies: dict[str, dict]) -> list[dict]:
    """One row per claim of :data:`~geomtraj.study.claims.CLAIMS`, in order.

    A claim whose study has not been run gets the verdict ``not run`` and says which command runs
    it, so the table always has every row.
    """
    rows = {r["id"]: r for doc in studies.values() for r in doc["claims"]}
    out = []
    for cid, claim, source, study in CLAIMS:
        if cid in rows:
            out.append(rows[cid])
        else:
            out.append({
                "id": cid, "claim": claim, "source": source, "study": study,
                "measured": f"study {study} not run", "verdict": "not run",
                "rule": f"run `geomtraj study {study}`", "evidence": "",
            })  # fmt: skip
    return out


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _duration(seconds) -> str:
    if seconds is None:
        return "n/a"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def write_page(out_dir: Path, page: Path, log=print) -> Path:
    """Render the results page from the studies under ``out_dir``; figures go to ``results/``."""
    out_dir, page = Path(out_dir), Path(page)
    studies = load_studies(out_dir)
    page.parent.mkdir(parents=True, exist_ok=True)
    figdir = page.parent / "results"
    figdir.mkdir(exist_ok=True)
    figures: dict[str, list[str]] = {}
    for name, doc in studies.items():
        for f in doc.get("figures", []):
            src = Path(f)
            if src.is_file():
                shutil.copyfile(src, figdir / src.name)
                figures.setdefault(name, []).append(src.name)
    rows = claims_table(studies)
    scale = {doc.get("scale") for doc in studies.values()}
    scale_text = ", ".join(sorted(s for s in scale if s)) or "none"
    rel = figdir.relative_to(page.parent)
    lines = [
        "# Results: the source papers' claims, measured",
        "",
        "<!-- generated by `geomtraj study`; edits are overwritten -->",
        "",
        f"Generated from the study reports under `{_shown(out_dir)}` (scale: {scale_text}). Every "
        "number comes from `geomtraj analyze` reports of stores trained by `geomtraj study NAME`; "
        "rerunning a study regenerates this page. Intervals are 95%: Wilson intervals for "
        "proportions, percentile bootstrap (2000 resamples, runs resampled) for medians and "
        "pooled fractions.",
        "",
        "## Claims",
        "",
        "| claim | source | what geomtraj measured (95% CI) | verdict |",
        "|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {_cell(r['claim'])} | {_cell(r['source'])} | {_cell(r['measured'])} | "
            f"**{r['verdict']}** |"
        )
    lines += ["", "## Evidence and verdict rules", ""]
    for r in rows:
        lines += [
            f"### {r['claim']}",
            "",
            f"*Verdict: **{r['verdict']}*** (study `{r['study']}`). {r['measured']}.",
            "",
        ]
        if r.get("evidence"):
            lines += [r["evidence"], ""]
        lines += [f"Rule: {r['rule']}", ""]
    lines += _surprises(rows, studies)
    lines += ["## Figures", ""]
    for name, files in figures.items():
        for f in files:
            caption = next((c for k, c in CAPTIONS.items() if f.startswith(k)), f)
            lines += [
                f"![{f}]({rel}/{f})",
                "",
                f"**{caption}** `{f}` is drawn by `geomtraj study {name}` (from its stores) or "
                f"`geomtraj study {name} --from-reports` (from the existing reports) and copied "
                f"here from `out/studies/SCALE/{name}/figures/`.",
                "",
            ]
    lines += _runs_section(studies)
    lines += _reproduce(studies)
    page.write_text("\n".join(lines) + "\n")
    log(f"wrote {page}")
    return page


def _surprises(rows: list[dict], studies: dict[str, dict]) -> list[str]:
    """Every claim the measurements do not support, and the study modules' own findings."""
    out = ["## What surprised us", ""]
    items = []
    for r in rows:
        if r["verdict"] in ("partly", "not supported"):
            items.append(f"- **{r['claim']}** ({r['source']}): {r['verdict']}. {r['measured']}.")
    for doc in studies.values():
        for s in doc.get("measurements", {}).get("surprises", []):
            items.append(f"- {s}")
    out += items or ["- Nothing: every measured claim was supported."]
    return [*out, ""]


def _runs_section(studies: dict[str, dict]) -> list[str]:
    out = ["## What was run", "",
           "| study | store | runs | steps | on disk | training | analysis |",
           "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, doc in studies.items():
        for store, e in doc.get("stores", {}).items():
            size = e.get("store_bytes")
            out.append(
                f"| {name} ({doc.get('scale')}) | `{e.get('config', store)}` | {e.get('runs')} | "
                f"{e.get('steps')} | {fmt(size / 2**30) + ' GiB' if size else 'n/a'} | "
                f"{_duration(e.get('train_seconds'))} | {_duration(e.get('analysis_seconds'))} |"
            )
    for name, doc in studies.items():
        out.append(f"\nStudy {name} ({doc.get('scale')} scale): {_total(doc)}.")
    out.append("")
    out.append(
        "Times are wall-clock on the machine that ran the study (2 cores for the committed page); "
        "'n/a' for training means the store was reused from an earlier run of the same config. "
        "A study's total is that of its last run from no store; a later run reuses its complete "
        "stores and analyses them again, so the table can show a newer analysis time."
    )
    return [*out, ""]


def _total(doc: dict) -> str:
    """The study's time from configs to judged claims, or the sum of its measured parts."""
    if doc.get("wall_seconds") is not None:
        return f"{_duration(doc['wall_seconds'])} from configs to judged claims"
    parts = [e.get(k) for e in doc.get("stores", {}).values()
             for k in ("train_seconds", "analysis_seconds")]  # fmt: skip
    parts.append(doc.get("measure_seconds"))
    if any(p is None for p in parts):
        return "total time not recorded"
    return f"{_duration(sum(parts))} of training, analyses and extra measurements"


def _reproduce(studies: dict[str, dict]) -> list[str]:
    return [
        "## How to reproduce",
        "",
        "From a fresh clone (`make setup` first, or let make do it):",
        "",
        "```",
        "make study-netay     # geomtraj study netay: 1600 + 100 networks, 50,000 steps each",
        "make study-betas     # geomtraj study betas: the beta1 x beta2 grid, precision ladder",
        "make study-twins     # geomtraj study twins: last-bit and k-rescaling twins",
        "make study-divergence  # geomtraj study divergence: where Adam diverges, paired runs",
        "make study-mechanism   # geomtraj study mechanism: bursts against v's decay, a period law",
        "```",
        "",
        "Each command trains its stores under `out/studies/full/NAME/` (a complete store of the "
        "same config is reused, an interrupted one resumed), writes `NAME-report/` beside each "
        "store with `geomtraj analyze`, judges its claims into `study.json` and regenerates this "
        "page and the figures in `docs/results/`. `geomtraj study NAME --dry-run` prints the plan "
        "(grid, recording, store size, time) without training; `--from-reports` re-judges the "
        "claims and redraws the figures from existing reports; `--scale small` runs the same code "
        "on reduced grids (minutes) and writes `out/studies/small/RESULTS.md`.",
        "",
    ]
