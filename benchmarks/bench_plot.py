"""Wall time of ``geomtraj plot`` for each ``--kind``, beside the eager analysis registry.

``geomtraj plot`` runs no analysis, yet it used to pay for importing all six (``scipy.signal``
alone about 2.7 s) because :mod:`geomtraj.analysis` loaded them at package import. Each figure
here is one fresh interpreter, as a user's command is:

* **lazy**: ``geomtraj.cli.main(["plot", STORE, "--run", R, "--kind", KIND, ...])``, as shipped;
* **eager** (the baseline, same run, same machine): the same call after importing every module of
  ``geomtraj.analysis.ANALYSES`` first, which is what the package did before;
* the import of ``geomtraj.cli`` alone, of the plot path's modules, and of the full registry
  (timed inside the interpreter and as process wall time), and the cumulative import time of
  ``geomtraj.cli`` reported by ``python -X importtime``.

A warm-up plot of each kind runs first, so the numba caches and the page cache are warm. Lazy
and eager calls alternate, so load from other processes hits both alike; the figure is the
median over ``--repeats``.

    .venv/bin/python benchmarks/bench_plot.py [--store fixtures/bursts_f32.zarr] [--run 0]
        [--kinds loss,spectrum,...] [--repeats 2]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("loss", "update", "grad", "theta", "moments", "spiral", "spectrum", "phase")
EAGER = "import geomtraj.analysis as a\nfor n in a.ANALYSES:\n    a.ANALYSES[n]\n"


def _wall(code: str, *flags: str) -> tuple[float, str]:
    """Seconds one fresh interpreter takes to run ``code``, and its stderr."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, *flags, "-c", code], capture_output=True, text=True, cwd=ROOT
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"bench_plot: {code!r} failed: {done.stderr.strip()[-500:]}")
    return seconds, done.stderr


def _importtime(module_code: str, top: str) -> float:
    """Cumulative import time of ``top`` in seconds, from ``python -X importtime``."""
    _, err = _wall(module_code, "-X", "importtime")
    cumulative = float("nan")
    for line in err.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) == 3 and parts[2] == top:
            cumulative = int(parts[1])
    return cumulative / 1e6


def _plot_code(store: Path, run: int, kind: str, out: Path) -> str:
    args = ["plot", str(store), "--run", str(run), "--kind", kind, "--out", str(out), "--quiet"]
    return f"from geomtraj.cli import main\nraise SystemExit(main({args!r}))\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", type=Path, default=ROOT / "fixtures" / "bursts_f32.zarr")
    ap.add_argument("--run", type=int, default=0)
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    kinds = [k for k in args.kinds.split(",") if k]

    print("imports in a fresh interpreter (seconds; median of repeats):")
    print(f"  {'what':34s} {'timed import':>12s} {'process wall':>13s}")
    for label, code in (
        ("import geomtraj.cli", "import geomtraj.cli"),
        ("plot path (report.plots, store)", "import geomtraj.report.plots, geomtraj.store"),
        ("full registry (baseline)", EAGER),
    ):
        timed = "import time\n_t = time.perf_counter()\n" + code
        timed += "\nimport sys\nprint(time.perf_counter() - _t, file=sys.stderr)\n"
        runs = [_wall(timed) for _ in range(args.repeats)]
        inner = statistics.median(float(err.split()[-1]) for _, err in runs)
        wall = statistics.median(w for w, _ in runs)
        print(f"  {label:34s} {inner:12.2f} {wall:13.2f}")
    cli = _importtime("import geomtraj.cli", "geomtraj.cli")
    print(f"  python -X importtime -c 'import geomtraj.cli': cumulative {cli:.2f} s")

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "look.png"
        for kind in kinds:  # warm-up: numba caches, page cache, matplotlib font cache
            _wall(_plot_code(args.store, args.run, kind, out))
        print(f"\ngeomtraj plot {args.store.name} --run {args.run}, median of {args.repeats}:")
        print(f"  {'kind':10s} {'lazy (s)':>9s} {'eager (s)':>10s} {'saved (s)':>10s}")
        for kind in kinds:
            code = _plot_code(args.store, args.run, kind, out)
            lazy, eager = [], []
            for _ in range(args.repeats):
                lazy.append(_wall(code)[0])
                eager.append(_wall(EAGER + code)[0])
            lz, eg = statistics.median(lazy), statistics.median(eager)
            print(f"  {kind:10s} {lz:9.2f} {eg:10.2f} {eg - lz:10.2f}")


if __name__ == "__main__":
    main()
