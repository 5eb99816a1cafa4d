"""Wall time of ``geomtraj plot`` for each ``--kind``, beside the eager analysis registry.

``geomtraj plot`` runs no analysis, yet it used to pay for importing all six (``scipy.signal``
alone about 2.7 s) because :mod:`geomtraj.analysis` loaded them at package import. Each figure
here is one fresh interpreter, as a user's command is:

* **lazy**: ``geomtraj.cli.main(["plot", STORE, "--run", R, "--kind", KIND, ...])``, as shipped;
* **eager** (the baseline, same run, same machine): the same call after importing every module of
  ``geomtraj.analysis.ANALYSES`` first, which is what the package did before;
* **dask open** (the second baseline): the same call with the store opened through dask, as
  ``geomtraj plot`` did before it read the one run through zarr's lazy arrays;
* **library imports** (the third baseline): the same call after importing the libraries the
  looks used before they did their few lines of arithmetic with NumPy (``spiral``:
  ``scipy.ndimage`` and ``sklearn.decomposition``; ``spectrum``: ``scipy.signal``; the other
  kinds imported none, so their column repeats "now");
* the import of ``geomtraj.cli`` alone, of the plot path's modules, and of the full registry
  (timed inside the interpreter and as process wall time), and the cumulative import time of
  ``geomtraj.cli`` reported by ``python -X importtime``.

A warm-up plot of each kind runs first, so the numba caches and the page cache are warm. The
variants alternate, so load from other processes hits all alike; the figure is the median over
``--repeats``, as wall time and as the child's CPU time (user + system), which other processes on
a shared machine disturb much less than wall time.

    .venv/bin/python benchmarks/bench_plot.py [--store fixtures/bursts_f32.zarr] [--run 0]
        [--kinds loss,spectrum,...] [--repeats 2]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("loss", "update", "grad", "theta", "moments", "spiral", "spectrum", "phase")
EAGER = "import geomtraj.analysis as a\nfor n in a.ANALYSES:\n    a.ANALYSES[n]\n"
#: What each kind imported before its arithmetic was written with NumPy (docs/report.md).
LIBRARIES = {
    "spiral": "import scipy.ndimage, sklearn.decomposition\n",
    "spectrum": "import scipy.signal\n",
}
DASK_OPEN = (
    "import geomtraj.store as s\n_open = s.open_store\n"
    "s.open_store = lambda p, **k: _open(p, **{**k, 'dask': True})\n"
)


def _wall(code: str, *flags: str) -> tuple[float, str, float]:
    """Seconds one fresh interpreter takes to run ``code``, its stderr and its CPU seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, *flags, "-c", code], capture_output=True, text=True, cwd=ROOT
    )
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode != 0:
        raise SystemExit(f"bench_plot: {code!r} failed: {done.stderr.strip()[-500:]}")
    return seconds, done.stderr, cpu


def _importtime(module_code: str, top: str) -> float:
    """Cumulative import time of ``top`` in seconds, from ``python -X importtime``."""
    _, err, _ = _wall(module_code, "-X", "importtime")
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
        inner = statistics.median(float(err.split()[-1]) for _, err, _ in runs)
        wall = statistics.median(w for w, _, _ in runs)
        print(f"  {label:34s} {inner:12.2f} {wall:13.2f}")
    cli = _importtime("import geomtraj.cli", "geomtraj.cli")
    print(f"  python -X importtime -c 'import geomtraj.cli': cumulative {cli:.2f} s")

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "look.png"
        for kind in kinds:  # warm-up: numba caches, page cache, matplotlib font cache
            _wall(_plot_code(args.store, args.run, kind, out))
        print(f"\ngeomtraj plot {args.store.name} --run {args.run}, median of {args.repeats}, ")
        print("seconds as wall / CPU:")
        print(f"  {'kind':10s} {'now':>13s} {'dask open':>13s} {'eager registry':>15s} "
              f"{'library imports':>16s}")  # fmt: skip
        for kind in kinds:
            variants = ("", DASK_OPEN, EAGER, LIBRARIES.get(kind, ""))
            code = _plot_code(args.store, args.run, kind, out)
            times: list[list[tuple[float, float]]] = [[] for _ in variants]
            for _ in range(args.repeats):
                for k, prefix in enumerate(variants):
                    wall, _, cpu = _wall(prefix + code)
                    times[k].append((wall, cpu))
            med = [(statistics.median(w for w, _ in t), statistics.median(c for _, c in t))
                   for t in times]  # fmt: skip
            cells = [f"{w:6.2f}/{c:<6.2f}" for w, c in med]
            print(f"  {kind:10s} {cells[0]:>13s} {cells[1]:>13s} {cells[2]:>15s} {cells[3]:>16s}")


if __name__ == "__main__":
    main()
