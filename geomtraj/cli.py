"""The ``geomtraj`` command line.

Exit status: 0 on success, 2 for unusable input (a one-line reason on stderr, no traceback),
1 for an internal error, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from geomtraj import __version__
from geomtraj.errors import GeomtrajError

#: Network-steps per second on one core for a (12,24) network on 64 points, measured with
#: NUMBA_NUM_THREADS=1 on the 2-core reference machine (benchmarks/bench_train.py); ``--dry-run``
#: scales it by parameter count and data size. float16 uses the bfloat16 figure: its runs often
#: diverge early, which makes a measured rate look optimistic.
_REFERENCE_RATE = {
    "float64": 48_000.0,
    "float32": 77_000.0,
    "bfloat16": 71_000.0,
    "float16": 71_000.0,
}
_REFERENCE_WORK = 373 * 64


def _cmd_train(args: argparse.Namespace) -> int:
    from geomtraj.experiment import load_config, plan_from_config
    from geomtraj.plan import estimate
    from geomtraj.train import train_plan

    plan = plan_from_config(load_config(args.config))
    if args.dry_run:
        cores = os.cpu_count() or 1
        work = sum(r.spec.n_params * len(plan.datasets[r.data].y) for r in plan.runs) / len(
            plan.runs
        )
        rate = min(_REFERENCE_RATE[r.precision] for r in plan.runs) * cores * _REFERENCE_WORK / work
        est = estimate(plan, rate)
        print(
            f"grid: {est['runs']} runs x {est['steps']} steps, {est['recorded_params']} recorded "
            f"parameters per run\nstore: about {est['store_bytes_uncompressed'] / 2**20:,.1f} MiB "
            f"before compression\ntime: about {est['time']} on {cores} cores (plus 10-20 s to "
            "compile each new kernel variant once per machine)"
        )
        return 0
    if args.out is None:
        raise GeomtrajError("geomtraj train needs --out STORE (or --dry-run)")
    progress = False if args.quiet else None
    ds = train_plan(plan, args.out, resume=args.resume, progress=progress)
    n_div = int((ds["diverged_step"].values >= 0).sum())
    if not args.quiet:
        print(f"wrote {args.out}: {ds.sizes['run']} runs x {plan.steps} steps, {n_div} diverged")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from geomtraj.store import open_store

    ds = open_store(args.store)
    size = sum(f.stat().st_size for f in Path(args.store).rglob("*") if f.is_file())
    div = ds["diverged_step"].values
    info = {
        "store": str(args.store),
        "schema": ds.attrs["geomtraj_schema"],
        "runs": int(ds.sizes["run"]),
        "steps": int(ds.attrs.get("steps", ds["step"].values[-1])),
        "recorded_params": int(ds.sizes["param"]),
        "record_every": int(ds.attrs.get("record_every", 1)),
        "size_mib": round(size / 2**20, 2),
        "diverged": int((div >= 0).sum()),
        "grid": {
            k: sorted({str(v) for v in np.asarray(ds[k].values).tolist()})
            for k in ("hidden", "precision", "beta1", "beta2", "lr", "eps", "seed", "perturbation")
        },
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(
        f"{info['store']}: schema {info['schema']}, {info['runs']} runs x {info['steps']} steps, "
        f"{info['recorded_params']} recorded params every {info['record_every']} step(s), "
        f"{info['size_mib']} MiB, {info['diverged']} diverged"
    )
    for k, vals in info["grid"].items():
        print(f"  {k:<13} {', '.join(vals)}")
    return 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    # The analyses (bursts, periods, spirals, twins, diffusion) are separate work items; until they
    # land this command checks the store and prints its per-run summary.
    from geomtraj.store import open_store, strings

    ds = open_store(args.store)
    print(f"{args.store}: {ds.sizes['run']} runs; per-run summary (analyses not yet available)")
    print(
        f"{'run':>4} {'hidden':>7} {'precision':>9} {'beta1':>6} {'beta2':>7} {'lr':>8} "
        f"{'seed':>5} {'perturbation':<24} {'final loss':>11} {'diverged':>8}"
    )
    hidden, precision, pert = (strings(ds[k]) for k in ("hidden", "precision", "perturbation"))
    beta1, beta2, lr, seed, div = (ds[k].values for k in ("beta1", "beta2", "lr", "seed",
                                                          "diverged_step"))  # fmt: skip
    last = ds["train_loss"].isel(iteration=-1).values
    for i in range(ds.sizes["run"]):
        print(
            f"{i:>4} {hidden[i]:>7} {precision[i]:>9} {beta1[i]:>6g} {beta2[i]:>7g} {lr[i]:>8g} "
            f"{seed[i]:>5} {pert[i]:<24} {last[i]:>11.4g} {div[i] if div[i] >= 0 else '-':>8}"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="geomtraj", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"geomtraj {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a grid of networks from a TOML config")
    p.add_argument("config", help="TOML file describing the grid")
    p.add_argument("--out", help="zarr store to create")
    p.add_argument("--resume", action="store_true", help="continue an interrupted store")
    p.add_argument("--dry-run", action="store_true", help="print grid size, store size and time")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("info", help="check a store and describe its grid")
    p.add_argument("store")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("analyze", help="analyse a store (currently: per-run summary)")
    p.add_argument("store")
    p.add_argument("--out", help="report directory (reserved for the report)")
    p.set_defaults(func=_cmd_analyze)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except GeomtrajError as exc:
        print(f"geomtraj: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("geomtraj: interrupted; a store can be continued with --resume", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug in geomtraj, not bad input
        if os.environ.get("GEOMTRAJ_DEBUG"):
            raise
        hint = "set GEOMTRAJ_DEBUG=1 for the traceback and please report it"
        print(f"geomtraj: internal error: {type(exc).__name__}: {exc} ({hint})", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
