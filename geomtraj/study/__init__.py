"""Reproduction studies: train the source papers' experiments, analyse them, judge their claims.

A study is a directory ``studies/NAME/`` holding training configs (TOML, as for ``geomtraj train``)
and a manifest ``study.toml``::

    name = "netay"
    title = "..."

    [[stores]]                 # one zarr store per entry
    name = "f32"
    config = "f32.toml"
    small = { steps = 4000, model = { hidden = ["5..44:13x5..44:13"] } }   # --scale small

    [analysis]
    analyses = ["periods", "spirals"]            # default: every analysis
    [analysis.spirals.window_params]             # keyword arguments of an analysis' analyze();
    max_windows = 20                             # a table fills that argument's dataclass

``geomtraj study NAME`` (:func:`run_study`) trains every store (a complete store of the same config
is reused, an interrupted one resumed), writes ``geomtraj analyze``'s report for each, lets the
study's module (:mod:`geomtraj.study.netay_study`, ``betas``, ``twins``,
``divergence``) measure what the reports do not
hold and judge the claims it owns, saves ``study.json`` and regenerates the results page from every
study found beside it (:mod:`geomtraj.study.results`). The same code runs at ``--scale full`` (the
papers' scale) and ``--scale small`` (a reduced grid for tests).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import importlib
import inspect
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from geomtraj.errors import ConfigError, GeomtrajError

__all__ = ["STUDIES", "Study", "StoreSpec", "find_studies_dir", "load_study", "run_study"]

#: Studies with a module in this package (the ``name`` of ``studies/NAME/study.toml``).
STUDIES = ("netay", "betas", "twins", "divergence", "mechanism")

SCALES = ("full", "small")

_MANIFEST_KEYS = {"name", "title", "source", "stores", "analysis"}
_STORE_KEYS = {"name", "config", "small"}


@dataclass
class StoreSpec:
    """One store of a study: its name, training config (with the scale's overrides) and plan."""

    name: str
    config_path: Path
    config: dict

    @functools.cached_property
    def plan(self):
        """The expanded plan, built once (a 1600-run grid takes a moment to expand and check)."""
        from geomtraj.train.config import plan_from_config

        try:
            return plan_from_config(self.config)
        except ConfigError as exc:
            raise ConfigError(f"{self.config_path}: {exc}") from None


@dataclass
class Study:
    """A parsed ``study.toml`` at one scale."""

    name: str
    title: str
    directory: Path
    scale: str
    stores: list[StoreSpec]
    analyses: list[str] | None = None
    analysis_params: dict[str, dict] = field(default_factory=dict)

    @property
    def module(self):
        return importlib.import_module(f"geomtraj.study.{self.name}_study")


def find_studies_dir(explicit: str | os.PathLike | None = None) -> Path:
    """``studies/`` of the source tree (beside the package), or of the working directory."""
    candidates = [Path(explicit)] if explicit else []
    candidates += [Path(__file__).resolve().parents[2] / "studies", Path.cwd() / "studies"]
    for c in candidates:
        if c.is_dir():
            return c
    raise GeomtrajError(
        f"no studies directory found (looked in {', '.join(str(c) for c in candidates)}); run from "
        "the geomtraj source tree or pass --studies DIR"
    )


def _merge(base: dict, override: dict) -> dict:
    """``base`` with ``override`` merged in, tables recursively, everything else replaced."""
    out = copy.deepcopy(base)
    for k, v in override.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_study(
    name: str, scale: str = "full", studies_dir: str | os.PathLike | None = None
) -> Study:
    """Parse ``studies/NAME/study.toml`` and its configs at ``scale`` (``"full"`` or ``"small"``).

    Raises
    ------
    ConfigError
        For an unknown study or scale, or a manifest or config that does not parse or check.
    """
    from geomtraj.train.config import load_config

    if name not in STUDIES:
        raise ConfigError(f"study {name!r} unknown; choose from {', '.join(STUDIES)}")
    if scale not in SCALES:
        raise ConfigError(f"--scale {scale!r} unknown; choose from {', '.join(SCALES)}")
    directory = find_studies_dir(studies_dir) / name
    manifest_path = directory / "study.toml"
    manifest = load_config(manifest_path)
    unknown = set(manifest) - _MANIFEST_KEYS
    if unknown:
        raise ConfigError(
            f"{manifest_path}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_MANIFEST_KEYS)}"
        )
    if manifest.get("name") != name:
        raise ConfigError(f"{manifest_path}: name = {manifest.get('name')!r}, expected {name!r}")
    stores = []
    for entry in manifest.get("stores", []):
        bad = set(entry) - _STORE_KEYS
        if bad or "name" not in entry or "config" not in entry:
            raise ConfigError(
                f"{manifest_path}: each [[stores]] needs name and config (and may have small); "
                f"got keys {sorted(entry)}"
            )
        cfg_path = directory / entry["config"]
        cfg = load_config(cfg_path)
        if scale == "small":
            cfg = _merge(cfg, entry.get("small", {}))
        stores.append(StoreSpec(entry["name"], cfg_path, cfg))
    if not stores:
        raise ConfigError(f"{manifest_path}: the study lists no [[stores]]")
    analysis = dict(manifest.get("analysis", {}))
    analyses = analysis.pop("analyses", None)
    study = Study(
        name=name,
        title=manifest.get("title", name),
        directory=directory,
        scale=scale,
        stores=stores,
        analyses=analyses,
        analysis_params=analysis,
    )
    # build every plan now, so that a config problem surfaces before anything is trained
    for s in stores:
        _ = s.plan
    return study


def analysis_kwargs(study: Study) -> dict[str, dict]:
    """The manifest's ``[analysis.NAME]`` tables as keyword arguments of each ``analyze()``.

    A sub-table fills the dataclass that is the argument's default (``window_params = {...}``
    becomes ``WindowParams(...)``), so a study states only the thresholds it changes.
    """
    from geomtraj.analysis.runner import available_analyses

    mods = available_analyses()
    out: dict[str, dict] = {}
    for name, table in study.analysis_params.items():
        if name not in mods:
            raise ConfigError(f"[analysis.{name}]: no analysis {name!r}; choose from {list(mods)}")
        sig = inspect.signature(mods[name].analyze)
        kwargs = {}
        for key, value in table.items():
            if key not in sig.parameters or key in ("ds", "runs", "progress"):
                raise ConfigError(f"[analysis.{name}]: {name}.analyze() has no argument {key!r}")
            default = sig.parameters[key].default
            if isinstance(value, dict) and dataclasses.is_dataclass(default):
                try:
                    value = dataclasses.replace(default, **value)
                except TypeError as exc:
                    raise ConfigError(f"[analysis.{name}.{key}]: {exc}") from None
            kwargs[key] = value
        out[name] = kwargs
    return out


# ------------------------------------------------------------------------------- running


def describe(study: Study, out_dir: Path) -> str:
    """The ``--dry-run`` text: every store's grid, recording, size and time estimate."""
    from geomtraj.train.plan import estimate_text

    lines = [f"study {study.name} ({study.scale} scale): {study.title}"]
    total_runs = 0
    for spec in study.stores:
        plan = spec.plan
        total_runs += len(plan.runs)
        path = out_dir / study.name / f"{spec.name}.zarr"
        rec = plan.record_params
        lines.append(
            f"\n[{spec.name}] {spec.config_path.name} -> {path}\n"
            f"  record: per-step loss, gradient and update norms of every run; theta, m, v of "
            f"{rec if isinstance(rec, int) else len(rec) if isinstance(rec, list) else rec} "
            f"coordinate(s) every {plan.record_every} step(s)"
            + (f"; full snapshots every {plan.snapshot_every} steps" if plan.snapshot_every else "")
        )
        lines += ["  " + line for line in estimate_text(plan).splitlines()]
    names = ", ".join(study.analyses) if study.analyses else "all"
    lines.append(
        f"\nthen: geomtraj analyze on each store (analyses: {names}), claims, results page"
    )
    lines.append(f"total: {total_runs} runs")
    return "\n".join(lines)


def _train_store(spec: StoreSpec, path: Path, progress: bool | None, log) -> dict:
    """Train (or reuse, or resume) one store; returns what ``study.json`` records of it."""
    from geomtraj.store import zarrstore as store_mod
    from geomtraj.train.trainer import plan_for_store, train_plan

    plan = plan_for_store(spec.plan, path)
    fingerprint = plan.fingerprint()
    resume = False
    if path.exists():
        attrs = store_mod.read_attrs(path)
        if attrs.get("geomtraj_fingerprint") != fingerprint:
            raise GeomtrajError(
                f"{path} holds a store of another config; delete it or choose another --out"
            )
        if attrs.get("geomtraj_status") == store_mod.STATUS_COMPLETE:
            log(f"[{spec.name}] reusing the complete store {path}")
            return {"trained": "reused", "train_seconds": None}
        resume = True
        log(f"[{spec.name}] resuming the interrupted store {path}")
    else:
        log(f"[{spec.name}] training {len(plan.runs)} runs x {plan.steps} steps -> {path}")
    t0 = time.perf_counter()
    train_plan(plan, path, resume=resume, progress=progress)
    return {
        "trained": "resumed" if resume else "trained",
        "train_seconds": time.perf_counter() - t0,
    }


def _store_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run_study(
    name: str,
    scale: str = "full",
    *,
    out: str | os.PathLike | None = None,
    results: str | os.PathLike | None = None,
    jobs: int = 1,
    progress: bool | None = None,
    from_reports: bool = False,
    studies_dir: str | os.PathLike | None = None,
    log=None,
) -> dict:
    """Train, analyse and judge one study; write ``OUT/NAME/study.json`` and the results page.

    Parameters
    ----------
    name, scale
        The study (:data:`STUDIES`) and ``"full"`` or ``"small"``.
    out
        Directory of the stores and reports (default ``out/studies/SCALE``).
    results
        The results page to regenerate (default ``docs/RESULTS.md`` of the source tree at full
        scale, ``OUT/RESULTS.md`` at small scale); its figures go to ``results/`` beside it.
    jobs
        Worker processes for the analyses.
    from_reports
        Skip training and analysis and judge the claims from the existing reports.

    Returns
    -------
    dict
        The ``study.json`` document.
    """
    from geomtraj.report import load_report, make_report
    from geomtraj.study import results as results_mod

    t_start = time.perf_counter()
    log = log or (lambda msg: print(msg, file=sys.stderr))
    study = load_study(name, scale, studies_dir)
    out_dir = Path(out) if out else Path("out") / "studies" / scale
    study_dir = out_dir / name
    study_dir.mkdir(parents=True, exist_ok=True)
    meta_path = study_dir / "study.json"
    previous = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    kwargs = analysis_kwargs(study)
    meta: dict = {
        "study": name,
        "title": study.title,
        "scale": scale,
        "stores": {},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    paths = {spec.name: study_dir / f"{spec.name}.zarr" for spec in study.stores}
    report_dirs = {spec.name: study_dir / f"{spec.name}-report" for spec in study.stores}

    def save(doc: dict) -> None:
        tmp = meta_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(doc, indent=1, default=_json_default))
        os.replace(tmp, meta_path)

    # every store is trained before any is analysed, and each training time is saved at once:
    # an interrupted study keeps what it had (the stores resume, the times survive)
    for spec in study.stores:
        before = previous.get("stores", {}).get(spec.name, {})
        entry = dict(before)
        if not from_reports:
            trained = _train_store(spec, paths[spec.name], progress, log)
            entry["trained"] = trained["trained"]
            if trained["train_seconds"] is not None or "train_seconds" not in entry:
                # a reused store keeps the time it took when it was trained
                entry["train_seconds"] = trained["train_seconds"]
            plan = spec.plan
            entry.update(
                runs=len(plan.runs),
                steps=plan.steps,
                store_bytes=_store_bytes(paths[spec.name]),
                config=f"studies/{name}/{spec.config_path.name}",
            )
        entry["store"] = str(paths[spec.name])
        entry["report"] = str(report_dirs[spec.name] / "report.json")
        meta["stores"][spec.name] = entry
        if not from_reports:
            save({**previous, **meta, "stores": {**previous.get("stores", {}), **meta["stores"]}})

    reports: dict[str, dict] = {}
    for spec in study.stores:
        report_dir = report_dirs[spec.name]
        if from_reports:
            if not (report_dir / "report.json").is_file():
                raise GeomtrajError(
                    f"{report_dir}/report.json not found; run the study without --from-reports"
                )
        else:
            log(f"[{spec.name}] analysing -> {report_dir}")
            if report_dir.exists():
                shutil.rmtree(report_dir)
            t0 = time.perf_counter()
            rep = make_report(
                paths[spec.name],
                report_dir,
                analyses=study.analyses,
                jobs=jobs,
                progress=progress,
                analysis_params=kwargs,
            )
            meta["stores"][spec.name]["analysis_seconds"] = time.perf_counter() - t0
            if rep.doc["errors"]:
                # a failing analysis is a bug, not bad input: the CLI reports an internal error
                first = rep.doc["errors"][0]
                raise RuntimeError(
                    f"[{spec.name}] analysis {first['analysis']} failed: {first['error']} (the "
                    f"report is in {report_dir})"
                )
        # linked tables read back inline; a report written before they were linked reads as is
        reports[spec.name] = load_report(report_dir)

    ctx = Context(study=study, study_dir=study_dir, reports=reports, meta=meta, log=log)
    t0 = time.perf_counter()
    meta["measurements"] = study.module.measure(ctx)
    meta["measure_seconds"] = time.perf_counter() - t0
    meta["claims"] = study.module.claims(ctx)
    meta["figures"] = [str(p) for p in study.module.figures(ctx, study_dir / "figures")]
    # the whole study's wall time: training, analyses, measurements and figures (a rerun that
    # reused stores or reports keeps the earlier total, which is the one a fresh run takes)
    wall = time.perf_counter() - t_start
    reused = from_reports or any(e.get("trained") == "reused" for e in meta["stores"].values())
    meta["wall_seconds"] = previous.get("wall_seconds") if reused else wall
    meta["wall_seconds_this_run"] = wall
    save(meta)
    page = results_mod.default_page(out_dir, scale) if results is None else Path(results)
    results_mod.write_page(out_dir, page, log=log)
    log(f"study {name}: {len(meta['claims'])} claim(s) judged; results page {page}")
    return meta


@dataclass
class Context:
    """What a study module's ``measure``, ``claims`` and ``figures`` get: reports, paths, log."""

    study: Study
    study_dir: Path
    reports: dict[str, dict]
    meta: dict
    log: object = print

    def store(self, name: str):
        from geomtraj.store.zarrstore import open_store

        return open_store(self.study_dir / f"{name}.zarr")


def _json_default(obj):
    import numpy as np

    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return None if not np.isfinite(obj) else float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")
