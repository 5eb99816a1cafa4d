"""Size of a report at many runs, from a real report whose runs are repeated.

    python benchmarks/bench_report_size.py REPORT_DIR [--runs 1600] [--out DIR]

``REPORT_DIR`` is the output of ``geomtraj analyze`` on a small store (``fixtures/beta_grid.zarr``
takes about a minute), or a full-scale report to rewrite as it is (``--runs`` equal to its own
runs). It is read with :func:`geomtraj.report.load_report`, so a report of either form (tables
inline or linked) will do. Its runs are repeated until there are ``--runs`` of them: the run
entries, the per-run lists of the diffusion and stability sections, and the spiral windows (as
many per run as in the source). The figures are linked, not copied: every analysis draws a
bounded sample of runs, so their number does not grow with the runs. Then the report is written
twice as ``geomtraj analyze`` writes it: with its tables inline in ``report.json`` (the baseline,
as reports were written before ``docs/report.md``'s "Linked tables") and linked to CSV files
beside it. The sizes of each file are printed for the source and the repeated report, with the
sections of ``report.json`` above 0.1 MB.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
from pathlib import Path

from geomtraj.report import load_report, write_report


def _repeat(doc: dict, n: int) -> dict:
    k = len(doc["runs"])
    out = copy.deepcopy(doc)
    out["runs"] = [dict(doc["runs"][i % k], run=i) for i in range(n)]
    out["n_runs"] = out["n_runs_store"] = n
    windows = doc.get("spiral_windows") or []
    out["spiral_windows"] = [
        dict(w, run=w["run"] + k * j) for j in range(-(-n // k)) for w in windows
        if w["run"] + k * j < n
    ]  # fmt: skip
    if isinstance(doc.get("diffusion"), list) and doc["diffusion"]:
        out["diffusion"] = [dict(doc["diffusion"][i % k], run=i) for i in range(n)]
    stab = doc.get("stability")
    if isinstance(stab, dict) and isinstance(stab.get("runs"), list) and stab["runs"]:
        m = len(stab["runs"])
        out["stability"] = dict(stab, runs=[dict(stab["runs"][i % m], run=i) for i in range(n)])
    return out


def _sizes(doc: dict, out: Path, link: bool) -> dict[str, float]:
    """Megabytes of each file ``write_report`` writes into ``out`` (figures not counted)."""
    return {p.name: p.stat().st_size / 1e6 for p in write_report(doc, out, link=link)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("report", type=Path)
    ap.add_argument("--runs", type=int, default=1600)
    ap.add_argument("--out", type=Path, help="keep the repeated, linked report here")
    args = ap.parse_args()
    src = load_report(args.report)
    big = _repeat(src, args.runs)
    figures = args.report.resolve() / "figures"
    sizes: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        docs = {f"{len(src['runs'])} runs": src}
        if args.runs != len(src["runs"]):
            docs[f"{args.runs} runs"] = big
        for k, (label, doc) in enumerate(docs.items()):
            for link in (False, True):
                out = Path(tmp) / f"{k}-{link}"
                if link and k == len(docs) - 1 and args.out:
                    out = args.out
                out.mkdir(parents=True, exist_ok=True)
                if not (out / "figures").exists():
                    (out / "figures").symlink_to(figures, target_is_directory=True)
                key = f"{label}, {'linked' if link else 'inline'}"
                sizes[key] = _sizes(doc, out, link)
    names = list(dict.fromkeys(n for s in sizes.values() for n in s))
    print(f"report files in MB (figures not counted: {_du(figures):.2f} MB in {figures}):")
    print(f"{'file':20s}" + "".join(f"{k:>22s}" for k in sizes))
    for name in names:
        cells = [f"{s[name]:.2f}" if name in s else "-" for s in sizes.values()]
        print(f"{name:20s}" + "".join(f"{c:>22s}" for c in cells))
    print(f"{'total':20s}" + "".join(f"{sum(s.values()):>22.2f}" for s in sizes.values()))
    print(f"sections of report.json above 0.1 MB at {args.runs} runs, tables inline "
          "(compact JSON):")  # fmt: skip
    for key, value in big.items():
        size = len(json.dumps(value, separators=(",", ":"))) / 1e6
        if size > 0.1:
            print(f"  {key:20s} {size:8.2f} MB")


def _du(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file()) / 1e6


if __name__ == "__main__":
    main()
