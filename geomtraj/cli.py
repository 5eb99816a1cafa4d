"""The ``geomtraj`` command line.

Exit status: 0 on success, 2 for unusable input (a one-line reason on stderr, no traceback),
1 for an internal error, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import numpy as np

from geomtraj import __version__
from geomtraj.errors import GeomtrajError

#: Kinds of ``geomtraj plot`` (the keys of ``geomtraj.report.plots.KINDS``).
PLOT_KINDS = ("loss", "update", "grad", "theta", "moments", "spiral", "spectrum", "phase")


def _cmd_train(args: argparse.Namespace) -> int:
    from geomtraj.train.config import load_config, plan_from_config
    from geomtraj.train.plan import check_resources, estimate_text
    from geomtraj.train.trainer import train_plan

    plan = plan_from_config(load_config(args.config))  # (refuses a grid the memory cannot hold)
    if args.out is not None and not (args.resume and Path(args.out).exists()):
        check_resources(plan, store_dir=_existing_folder(Path(args.out).absolute().parent))
    if args.dry_run:
        print(estimate_text(plan))
        return 0
    if args.out is None:
        raise GeomtrajError("geomtraj train needs --out STORE (or --dry-run)")
    progress = False if args.quiet else None
    if args.scheduler:
        from geomtraj.analysis.runner import train_distributed

        ds = train_distributed(
            plan, args.out, args.scheduler, resume=args.resume, progress=progress
        )
    else:
        ds = train_plan(plan, args.out, resume=args.resume, progress=progress)
    n_div = int((ds["diverged_step"].values >= 0).sum())
    if not args.quiet:
        print(f"wrote {args.out}: {ds.sizes['run']} runs x {plan.steps} steps, {n_div} diverged")
    return 0


def _existing_folder(p: Path) -> str:
    """``p`` or its nearest existing ancestor (where free disk space can be asked for)."""
    while not p.exists() and p.parent != p:
        p = p.parent
    return os.fspath(p)


def _cmd_info(args: argparse.Namespace) -> int:
    from geomtraj.store.zarrstore import check_integrity, open_store, strings

    ds = open_store(args.store)
    check_integrity(args.store, ds)
    size = sum(f.stat().st_size for f in Path(args.store).rglob("*") if f.is_file())
    div = np.asarray(ds["diverged_step"].values)
    diverged = {int(i): int(div[i]) for i in np.flatnonzero(div >= 0)}
    precision = strings(ds["precision"])
    dtypes = {v: str(ds[v].dtype) for v in ("theta", "m", "v", "loss")}
    info = {
        "store": str(args.store),
        "schema": ds.attrs["geomtraj_schema"],
        "check": "ok",
        "status": ds.attrs.get("geomtraj_status"),
        "runs": int(ds.sizes["run"]),
        "steps": int(ds.attrs.get("steps", ds["step"].values[-1])),
        "recorded_params": int(ds.sizes["param"]),
        "record_every": int(ds.attrs.get("record_every", 1)),
        "size_mib": round(size / 2**20, 2),
        "storage_dtype": dtypes,
        "diverged": len(diverged),
        "diverged_steps": diverged,
        "precision_counts": {p: precision.count(p) for p in sorted(set(precision))},
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
    print(
        f"  check         ok (schema, run table, storage {dtypes['theta']} for "
        f"{', '.join(f'{n} {p}' for p, n in info['precision_counts'].items())}, chunks present)"
    )
    for k, vals in info["grid"].items():
        print(f"  {k:<13} {', '.join(vals)}")
    if diverged:
        shown = ", ".join(f"{r}@{t}" for r, t in list(diverged.items())[:20])
        more = f", ... ({len(diverged) - 20} more)" if len(diverged) > 20 else ""
        print(f"  {'divergences':<13} run@update: {shown}{more}")
    return 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    from geomtraj.analysis.runner import AnalyzeParams, estimate_run_bytes, human_bytes
    from geomtraj.report import make_report, terminal_summary
    from geomtraj.store.zarrstore import open_store

    if args.jobs < 1:
        raise GeomtrajError(f"--jobs must be >= 1, got {args.jobs}")
    if not math.isfinite(args.memory_limit) or args.memory_limit <= 0:
        raise GeomtrajError(f"--memory-limit must be a number > 0 MiB, got {args.memory_limit}")
    if args.analyses is not None and not any(a.strip() for a in args.analyses.split(",")):
        raise GeomtrajError(
            f"--analyses {args.analyses!r} names no analysis; leave it out to run all of them"
        )
    params = AnalyzeParams(memory_budget_bytes=int(args.memory_limit * 2**20))
    ds = open_store(args.store)  # (an unusable store is named before the output folder)
    store = Path(args.store)
    out = (
        Path(args.out)
        if args.out
        else store.with_name(store.name.removesuffix(".zarr") + "-report")
    )
    s_abs, o_abs = store.resolve(), out.resolve()
    if o_abs == s_abs or s_abs in o_abs.parents:
        raise GeomtrajError(
            f"--out {out} lies inside the store {store}; write the report outside it"
        )
    if out.is_dir() and any(out.iterdir()) and not args.force:
        raise GeomtrajError(
            f"{out} already exists; choose another --out, or --force to write over it"
        )
    per_run = estimate_run_bytes(ds)
    if per_run > params.memory_budget_bytes:
        print(
            f"geomtraj: warning: one run holds {human_bytes(per_run)} of trajectories, more than "
            f"--memory-limit {args.memory_limit:g} MiB; analyses read one whole run at a time, "
            "so memory will exceed the limit (use --steps to analyse a range)",
            file=sys.stderr,
        )
    rep = make_report(
        args.store,
        out,
        analyses=args.analyses,
        runs=args.runs,
        steps=args.steps,
        jobs=args.jobs,
        scheduler=args.scheduler,
        progress=False if args.quiet else None,
        params=params,
    )
    if not args.quiet:
        print(terminal_summary(rep.doc, out_dir=str(rep.out)))
    if rep.schema_errors:
        print(
            f"geomtraj: internal error: report.json breaks its schema ({rep.schema_errors[0]}); "
            f"written to {rep.out} anyway, please report it",
            file=sys.stderr,
        )
        return 1
    if rep.doc["errors"]:
        first = rep.doc["errors"][0]
        print(
            f"geomtraj: internal error in {len(rep.doc['errors'])} analysis task(s), first: "
            f"{first['analysis']} runs {first.get('runs', [])}: {first['error']}; their fields "
            f"are null in {rep.out}, please report it",
            file=sys.stderr,
        )
        return 1
    return 0


def _cmd_study(args: argparse.Namespace) -> int:
    from geomtraj.study import describe, load_study, run_study

    if args.jobs < 1:
        raise GeomtrajError(f"--jobs must be >= 1, got {args.jobs}")
    out = Path(args.out) if args.out else Path("out") / "studies" / args.scale
    if args.dry_run:
        print(describe(load_study(args.study, args.scale, args.studies), out))
        return 0
    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    run_study(
        args.study,
        args.scale,
        out=out,
        results=args.results,
        jobs=args.jobs,
        progress=False if args.quiet else None,
        from_reports=args.from_reports,
        studies_dir=args.studies,
        log=log,
    )
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from geomtraj.analysis.runner import parse_steps, select_steps
    from geomtraj.report.plots import plot_run
    from geomtraj.store.zarrstore import open_store

    out = args.out or f"run{args.run}_{args.kind}.png"
    if Path(out).suffix.lower() != ".png":
        raise GeomtrajError(f"--out {out}: geomtraj plot writes PNG files; name it *.png")
    # one run is read: zarr's lazy arrays open faster than a dask graph of the whole store
    ds = select_steps(open_store(args.store, dask=False), parse_steps(args.steps))
    path = plot_run(ds, args.run, args.kind, out)
    if not args.quiet:
        print(f"wrote {path}")
    return 0


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr with exit status 2, like every other bad input."""

    def error(self, message: str):
        self.exit(2, f"geomtraj: error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="geomtraj", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"geomtraj {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a grid of networks from a TOML config")
    p.add_argument("config", help="TOML file describing the grid")
    p.add_argument("--out", help="zarr store to create")
    p.add_argument("--resume", action="store_true", help="continue an interrupted store")
    p.add_argument("--dry-run", action="store_true", help="print grid size, store size and time")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="train blocks of runs on the workers of this dask.distributed scheduler",
    )
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("info", help="check a store and describe its grid")
    p.add_argument("store")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser(
        "analyze",
        help="analyse a store: report.json, report.md, report.html and figures",
        description="Analyse a store and write DIR/report.json, report.md, report.html and "
        "figures/*.png. Exit status 0 when analysed, 2 for unusable input, 1 for an internal "
        "error (the report is still written).",
    )
    p.add_argument("store")
    p.add_argument("--out", metavar="DIR", help="report directory (default: STORE-report)")
    p.add_argument(
        "--runs",
        help="runs to analyse: indices (0,3,8-15) and/or queries (beta2>0.99, precision=float32)",
    )
    p.add_argument("--steps", help="update range FIRST:LAST (inclusive; FIRST: or :LAST)")
    p.add_argument("--analyses", help="comma-separated analyses to run (default: all available)")
    p.add_argument("--jobs", type=int, default=1, help="local worker processes (default 1)")
    p.add_argument(
        "--scheduler", metavar="ADDRESS", help="run on this dask.distributed scheduler's workers"
    )
    p.add_argument(
        "--memory-limit",
        type=float,
        default=256,
        metavar="MIB",
        help="store data one process holds at a time (default 256 MiB)",
    )
    p.add_argument(
        "--force", action="store_true", help="write into an existing, non-empty --out directory"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary table")
    p.set_defaults(func=_cmd_analyze)

    p = sub.add_parser(
        "study",
        help="run a reproduction study: train, analyse, judge the claims, write the results page",
        description="Train the stores of studies/STUDY/ (reusing complete ones, resuming "
        "interrupted ones), analyse each, judge the study's claims and regenerate the results "
        "page (docs/RESULTS.md at full scale, OUT/RESULTS.md at small scale).",
    )
    p.add_argument("study", help="netay, betas, twins, divergence or mechanism")
    p.add_argument("--scale", default="full", help="full (the papers' scale) or small (minutes)")
    p.add_argument("--out", metavar="DIR", help="stores and reports (default out/studies/SCALE)")
    p.add_argument("--results", metavar="FILE", help="results page to regenerate")
    p.add_argument("--dry-run", action="store_true", help="print the plan; train nothing")
    p.add_argument(
        "--from-reports",
        action="store_true",
        help="judge the claims and redraw the figures from the existing reports",
    )
    p.add_argument("--jobs", type=int, default=1, help="analysis worker processes (default 1)")
    p.add_argument(
        "--studies", metavar="DIR", help="studies directory (default: the source tree's)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars or messages")
    p.set_defaults(func=_cmd_study)

    p = sub.add_parser("plot", help="one quick-look figure of one run")
    p.add_argument("store")
    p.add_argument("--run", type=int, required=True, help="run index")
    # the kinds are checked by geomtraj.report.plots.plot_run; listed here without importing it,
    # so that the parser stays light (a test keeps the list in step with plots.KINDS)
    p.add_argument("--kind", default="loss", help=f"what to draw: {', '.join(PLOT_KINDS)}")
    p.add_argument("--steps", help="update range FIRST:LAST")
    p.add_argument("--out", help="PNG file (default: runN_KIND.png)")
    p.add_argument("--quiet", action="store_true", help="print nothing")
    p.set_defaults(func=_cmd_plot)
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
        hint = {
            "train": "; a store can be continued with --resume",
            "study": "; rerunning the study resumes its stores",
        }.get(args.command, "")
        print(f"geomtraj: interrupted{hint}", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug in geomtraj, not bad input
        if os.environ.get("GEOMTRAJ_DEBUG"):
            raise
        hint = "set GEOMTRAJ_DEBUG=1 for the traceback and please report it"
        print(f"geomtraj: internal error: {type(exc).__name__}: {exc} ({hint})", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
