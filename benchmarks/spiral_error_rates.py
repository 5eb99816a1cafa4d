"""Measured error rates of the spiral detector: false positives on null ensembles, recall on bursts.

False positives: windows of six null ensembles in which nothing rotates
(``tests/synth_spirals.py``, ``NULL_KINDS``: random walk, AR(1) with phi = +0.9 and -0.9, white
noise, a period-2 flip along a line, amplitude-modulated flips in a plane), at two analysed lengths
(64 and 200 steps, short and long burst windows), 16 parameters. Every window labelled spiral,
double, twisted or double twisted is a false positive. The pooled rate and its Wilson 95% interval
are what :data:`geomtraj.analysis.spirals.FALSE_POSITIVE_RATE` holds.

Recall: flipped rotating bursts (``rotating_burst``: an outward then an inward arm of one sense, the
even and odd steps two counter-phase arms) over a grid of turns over the active part, e-folding
times of the envelope and white-noise levels (standard deviation per parameter; the peak radius is
1), 64 and 200 analysed steps, 16 parameters. Each is a double spiral; the table gives the share
found as spiral and as double, and by which reading of double (even/odd arms, outward then inward
arm). A second grid turns the burst's plane by 0 to 90 degrees (3 turns, e-folding 10 steps) and
gives the share found twisted and double twisted; at 0 degrees "twisted" is a false positive among
real spirals.

Every window is measured by :func:`geomtraj.analysis.spirals.measure_windows` with the default
:class:`~geomtraj.analysis.spirals.SpiralParams`. Prints both tables in Markdown (as in
``docs/spirals.md``) and the ``FALSE_POSITIVE_RATE`` literal.

    python benchmarks/spiral_error_rates.py [--per-null 500] [--per-cell 30] [--workers 1]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

LENGTHS = (64, 200)
PARAMS = 16
TURNS = (1.5, 3.0, 6.0)
EFOLDS = (5.0, 10.0, 20.0)
NOISES = (0.01, 0.03, 0.1, 0.3)
RECALL_LENGTHS = (64, 200)
PLANE_TURNS = (0.0, 30.0, 60.0, 90.0)
TWIST_NOISES = (0.01, 0.03, 0.1)
FLAGS = ("spiral", "double", "twisted", "double_twisted")
_BATCH = 100


def _flags(res) -> dict[str, np.ndarray]:
    return {
        "spiral": res["is_spiral"],
        "double": res["is_double"],
        "twisted": res["is_twisted"],
        "double_twisted": res["is_double"] & res["is_twisted"],
    }


def _null_task(task) -> dict:
    """Counts of every flag among ``count`` windows of one null kind and length."""
    import synth_spirals

    from geomtraj.analysis import spirals as sp

    kind, length, count, seed = task
    params = sp.SpiralParams()
    rng = np.random.default_rng([seed, synth_spirals.NULL_KINDS.index(kind), length])
    rows = length + 2 * params.half
    hits = dict.fromkeys(FLAGS, 0)
    for lo in range(0, count, _BATCH):
        size = min(_BATCH, count - lo)
        batch = np.stack([synth_spirals.null_window(kind, rng, rows, PARAMS) for _ in range(size)])
        res = sp.measure_windows(batch, params, keys=np.arange(lo, lo + size))
        for flag, v in _flags(res).items():
            hits[flag] += int(np.sum(v))
    return {"kind": kind, "length": length, "n": count, **hits}


def _recall_task(task) -> dict:
    """Share of ``count`` flipped rotating bursts of one grid cell found as spiral and double."""
    import synth_spirals

    from geomtraj.analysis import spirals as sp

    length, turns, efold, noise, count, seed = task
    params = sp.SpiralParams()
    rng = np.random.default_rng([seed, length, int(10 * turns), int(efold), int(1000 * noise)])
    rows = length + 2 * params.half
    batch = np.stack(
        [synth_spirals.rotating_burst(rng, turns, efold, noise, rows, PARAMS) for _ in range(count)]
    )
    res = sp.measure_windows(batch, params, keys=np.arange(count))
    flags = _flags(res)
    return {
        "length": length,
        "turns": turns,
        "efold": efold,
        "noise": noise,
        "n": count,
        "spiral": int(flags["spiral"].sum()),
        "double": int(flags["double"].sum()),
        "double_arms": int(np.sum(res["double_arms"])),
        "double_out_in": int(np.sum(res["double_out_in"])),
    }


def _twist_task(task) -> dict:
    """Share of ``count`` flipped rotating bursts whose plane turns by ``plane_turn`` degrees
    found as spiral, twisted and double twisted."""
    import synth_spirals

    from geomtraj.analysis import spirals as sp

    length, plane_turn, noise, count, seed = task
    params = sp.SpiralParams()
    rng = np.random.default_rng([seed, 7, length, int(plane_turn), int(1000 * noise)])
    rows = length + 2 * params.half
    batch = np.stack(
        [
            synth_spirals.rotating_burst(rng, 3.0, 10.0, noise, rows, PARAMS, plane_turn=plane_turn)
            for _ in range(count)
        ]
    )
    flags = _flags(sp.measure_windows(batch, params, keys=np.arange(count)))
    return {
        "length": length,
        "plane_turn": plane_turn,
        "noise": noise,
        "n": count,
        **{flag: int(flags[flag].sum()) for flag in FLAGS},
    }


def _pct(k: int, n: int, digits: int = 1) -> str:
    from geomtraj.study.claims import wilson

    lo, hi = wilson(k, n)
    return f"{100 * k / n:.{digits}f}% [{100 * lo:.{digits}f}, {100 * hi:.{digits}f}]"


def false_positive_table(null_rows: list[dict]) -> dict:
    """Pooled rate, Wilson 95% upper bound and count of every flag over the null windows."""
    from geomtraj.study.claims import wilson

    n = sum(r["n"] for r in null_rows)
    table = {}
    for flag in FLAGS:
        k = sum(r[flag] for r in null_rows)
        table[flag] = {"rate": k / n, "upper": round(wilson(k, n)[1], 6), "n": n}
    return table


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-null", type=int, default=500, help="windows per null kind and length")
    ap.add_argument("--per-cell", type=int, default=30, help="bursts per recall grid cell")
    ap.add_argument("--workers", type=int, default=1, help="processes")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--json", type=Path, help="also write every count here")
    args = ap.parse_args(argv)
    import synth_spirals

    t0 = time.perf_counter()
    null_tasks = [
        (kind, length, args.per_null, args.seed)
        for kind in synth_spirals.NULL_KINDS
        for length in LENGTHS
    ]
    cells = [
        (length, turns, efold, noise, args.per_cell, args.seed)
        for length, turns, efold, noise in itertools.product(RECALL_LENGTHS, TURNS, EFOLDS, NOISES)
    ]
    twists = [
        (length, plane_turn, noise, args.per_cell, args.seed)
        for length, plane_turn, noise in itertools.product(
            RECALL_LENGTHS, PLANE_TURNS, TWIST_NOISES
        )
    ]
    if args.workers > 1:
        with ProcessPoolExecutor(args.workers) as pool:
            null_rows = list(pool.map(_null_task, null_tasks))
            recall_rows = list(pool.map(_recall_task, cells))
            twist_rows = list(pool.map(_twist_task, twists))
    else:
        null_rows = [_null_task(t) for t in null_tasks]
        recall_rows = [_recall_task(t) for t in cells]
        twist_rows = [_twist_task(t) for t in twists]
    elapsed = time.perf_counter() - t0

    print(f"## False positives on null ensembles ({PARAMS} parameters)\n")
    print("| ensemble | steps | windows | spiral | double | twisted | double twisted |")
    print("|---|---|---|---|---|---|---|")
    for r in null_rows:
        cells_txt = " | ".join(_pct(r[f], r["n"]) for f in FLAGS)
        print(f"| {r['kind']} | {r['length']} | {r['n']} | {cells_txt} |")
    n = sum(r["n"] for r in null_rows)
    pooled = " | ".join(_pct(sum(r[f] for r in null_rows), n, 3) for f in FLAGS)
    print(f"| **pooled** | | {n} | {pooled} |\n")

    print(f"## Recall on flipped rotating bursts ({PARAMS} parameters, {args.per_cell} per cell)\n")
    print("| steps | turns | e-folding | noise | spiral | double | by arms | by out-in |")
    print("|---|---|---|---|---|---|---|---|")
    for r in recall_rows:
        print(
            f"| {r['length']} | {r['turns']:g} | {r['efold']:g} | {r['noise']:g} "
            f"| {_pct(r['spiral'], r['n'])} | {_pct(r['double'], r['n'])} "
            f"| {100 * r['double_arms'] / r['n']:.0f}% "
            f"| {100 * r['double_out_in'] / r['n']:.0f}% |"
        )
    n = sum(r["n"] for r in recall_rows)
    print(
        f"| **all** | | | | {_pct(sum(r['spiral'] for r in recall_rows), n)} "
        f"| {_pct(sum(r['double'] for r in recall_rows), n)} | | |\n"
    )
    print(
        f"## Twisted: flipped rotating bursts whose plane turns (3 turns, e-folding 10 steps, "
        f"{PARAMS} parameters, {args.per_cell} per cell)\n"
    )
    print("| steps | plane turn (deg) | noise | spiral | twisted | double twisted |")
    print("|---|---|---|---|---|---|")
    for r in twist_rows:
        print(
            f"| {r['length']} | {r['plane_turn']:g} | {r['noise']:g} "
            f"| {_pct(r['spiral'], r['n'])} | {_pct(r['twisted'], r['n'])} "
            f"| {_pct(r['double_twisted'], r['n'])} |"
        )
    print()
    table = false_positive_table(null_rows)
    print("FALSE_POSITIVE_RATE = " + json.dumps(table, indent=4))
    print(f"\n{elapsed:.1f} s (seed {args.seed}, {args.workers} process(es))")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"null": null_rows, "recall": recall_rows, "twist": twist_rows, "table": table},
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
