"""Size of a report at many runs, from a real report whose runs are repeated.

    python benchmarks/bench_report_size.py REPORT_DIR [--runs 1600] [--out DIR]

``REPORT_DIR`` is the output of ``geomtraj analyze`` on a small store (``fixtures/beta_grid.zarr``
takes about a minute). Its runs are repeated until there are ``--runs`` of them: the run entries,
the per-run lists of the diffusion and stability sections, and the spiral windows (as many per
run as in the source). The figures are copied as they are: every analysis draws a bounded
sample of runs, so their number does not grow with the runs. Then ``report.json``,
``report.md`` and ``report.html`` are written as ``geomtraj analyze`` writes them, and their
sizes are printed, with the sections of ``report.json`` above 0.1 MB, beside the source's.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import tempfile
from pathlib import Path

from geomtraj.report import write_report


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


def _sizes(doc: dict, out: Path) -> dict[str, float]:
    paths = write_report(doc, out)
    sizes = {p.name: p.stat().st_size / 1e6 for p in paths}
    sizes["figures/"] = sum(p.stat().st_size for p in (out / "figures").iterdir()) / 1e6
    return sizes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("report", type=Path)
    ap.add_argument("--runs", type=int, default=1600)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    src = json.loads((args.report / "report.json").read_text())
    big = _repeat(src, args.runs)
    with tempfile.TemporaryDirectory() as tmp:
        small_dir, big_dir = Path(tmp) / "small", args.out or Path(tmp) / "big"
        for d in (small_dir, big_dir):
            shutil.copytree(args.report / "figures", d / "figures", dirs_exist_ok=True)
        small, large = _sizes(src, small_dir), _sizes(big, big_dir)
    print(f"{'file':14s} {len(src['runs']):>6d} runs (MB) {args.runs:>6d} runs (MB)")
    for name in small:
        print(f"{name:14s} {small[name]:>15.2f} {large[name]:>15.2f}")
    total_small, total_large = sum(small.values()), sum(large.values())
    print(f"{'total':14s} {total_small:>15.2f} {total_large:>15.2f}")
    print(f"sections of report.json above 0.1 MB at {args.runs} runs (compact JSON):")
    for key, value in big.items():
        size = len(json.dumps(value, separators=(",", ":"))) / 1e6
        if size > 0.1:
            print(f"  {key:20s} {size:8.2f} MB")


if __name__ == "__main__":
    main()
