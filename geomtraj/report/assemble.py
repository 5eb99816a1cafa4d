"""Assemble ``report.json`` (schema ``geomtraj.report/1``, contract 4) from the analyses' reports.

Each analysis's ``report(result)`` gives ``{"runs": {run: {...}}, SECTION: ...}``. This module
merges them into one document, fills every contract-4 field an analysis did not provide with
``null`` and a ``note`` saying why (not selected, not available, run insufficient, ...), and turns
NumPy scalars and non-finite floats into JSON (a non-finite number becomes ``null`` with a note:
JSON has no NaN, and a NaN must never read as a number).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import platform
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

import numpy as np
import xarray as xr

from geomtraj.analysis.base import RUN_FIELDS
from geomtraj.analysis.declaration import Analysis, as_analysis
from geomtraj.store.zarrstore import strings

SCHEMA_ID = "geomtraj.report/1"


def report_declarations(registry: Mapping | None = None) -> dict[str, Analysis]:
    """The declarations a report is built from: ``registry``'s analyses, then the shipped ones.

    Every analysis of :mod:`geomtraj.analysis` takes part even when ``registry`` leaves it out,
    so that its contract-4 fields are in every report (null, with the reason). A module of the
    bare protocol registered under a shipped analysis's name (a stand-in, as in the tests) runs
    its own functions under that analysis's declared fields.
    """
    from geomtraj.analysis import ANALYSES, declaration

    registry = ANALYSES if registry is None else registry
    out: dict[str, Analysis] = {}
    for name in [*registry, *(n for n in ANALYSES if n not in registry)]:
        own = as_analysis(registry[name], name) if name in registry else None
        if own is not None and (own.declared or name not in ANALYSES):
            out[name] = own
            continue
        shipped = declaration(name)
        if own is not None:
            shipped = dataclasses.replace(
                shipped, analyze=own.analyze, report=own.report, draw=own.draw,
                params=own.params, module=own.module,
            )  # fmt: skip
        out[name] = shipped
    return out


def run_section_owners(declarations: Mapping[str, Analysis]) -> dict[str, str]:
    """Per-run keys every run entry carries (from ``run_defaults``) and the analysis of each."""
    probe = {"beta1": 0.9, "beta2": 0.999}
    return {
        key: name
        for name, d in declarations.items()
        if d.run_defaults is not None
        for key in d.run_defaults(probe)
    }


def top_section_owners(declarations: Mapping[str, Analysis]) -> dict[str, str]:
    """Top-level keys every report carries (from ``section_defaults``) and their analysis."""
    return {
        key: name
        for name, d in declarations.items()
        if d.section_defaults is not None
        for key in d.section_defaults("")
    }


#: Top-level keys that belong to the report itself; an analysis may not set them.
RESERVED = {
    "schema",
    "store",
    "n_runs",
    "n_runs_store",
    "versions",
    "created",
    "options",
    "analyses",
    "summary",
    "runs",
    "figures",
    "errors",
}

#: Per-run labels copied from the store into every run entry.
RUN_LABELS = (
    "beta1",
    "beta2",
    "lr",
    "eps",
    "weight_decay",
    "precision",
    "hidden",
    "activation",
    "dataset",
    "seed",
    "twin_of",
    "perturbation",
)


def versions() -> dict[str, str | None]:
    """Versions of geomtraj and of the libraries that shape its numbers."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in ("geomtraj", "numpy", "scipy", "scikit-learn", "xarray", "zarr", "dask", "numba"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    if out["geomtraj"] is None:
        from geomtraj import __version__

        out["geomtraj"] = __version__
    return out


# ------------------------------------------------------------------------------- JSON values


def to_jsonable(obj):
    """NumPy and Python values as plain JSON types; non-finite floats become None."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [to_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        x = float(obj)
        return x if math.isfinite(x) else None
    if isinstance(obj, np.str_ | str):
        return str(obj)
    if isinstance(obj, Path):
        return str(obj)
    if obj is None:
        return None
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    return str(obj)


def _has_nonfinite(obj) -> bool:
    if isinstance(obj, Mapping):
        return any(_has_nonfinite(v) for v in obj.values())
    if isinstance(obj, list | tuple | np.ndarray):
        return any(_has_nonfinite(v) for v in obj)
    if isinstance(obj, float | np.floating):
        return not math.isfinite(float(obj))
    return False


def _num(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


# ----------------------------------------------------------------------------- run entries


def run_defaults(
    beta1: float, beta2: float, note: str | None, declarations: Mapping[str, Analysis] | None = None
) -> dict:
    """Per-run sections of every declared analysis before measuring: predictions, nulls, ``note``.

    Each analysis gives its own (``run_defaults`` of its declaration); for the shipped ones these
    are the contract-4 sections ``n_bursts``, ``slow``, ``fast``, ``v_decay`` and ``spirals``.
    """
    declarations = report_declarations() if declarations is None else declarations
    out: dict = {}
    for d in declarations.values():
        if d.run_defaults is None:
            continue
        for key, val in d.run_defaults({"beta1": beta1, "beta2": beta2}).items():
            if isinstance(val, dict):
                val = {**val, "note": note}
            out[key] = to_jsonable(val)
    return out


def _merge(base: dict, new: Mapping) -> dict:
    """Recursive dict merge; values of ``new`` win."""
    for k, v in new.items():
        if isinstance(v, Mapping) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v if not isinstance(v, Mapping) else dict(v)
    return base


def _per_run_reports(rep: Mapping | None) -> dict[int, Mapping]:
    runs = (rep or {}).get("runs") or {}
    if isinstance(runs, list):  # tolerate a list of entries with a "run" key
        return {int(e["run"]): e for e in runs if isinstance(e, Mapping) and "run" in e}
    return {int(k): v for k, v in runs.items() if isinstance(v, Mapping)}


def _why_missing(owner: str, status: Mapping[str, dict]) -> str:
    st = status.get(owner, {"status": "not available"})["status"]
    return {
        "not available": f"{owner} analysis not available in this geomtraj",
        "not selected": f"{owner} analysis not run (not selected with --analyses)",
        "failed": f"{owner} analysis failed (see errors)",
        "no runs": f"{owner} analysis had no usable run",
    }.get(st, f"{owner} analysis did not report this")


def _add_note(entry: dict, text: str) -> None:
    entry["note"] = text if not entry.get("note") else f"{entry['note']}; {text}"


def _hyper_table(ds: xr.Dataset, runs: list[int]) -> dict[int, dict]:
    """Per-run labels of ``runs``, read once for the whole selection."""
    cols = {}
    for name in RUN_LABELS:
        if name not in ds.variables:
            continue
        var = ds[name].isel(run=runs)
        if RUN_FIELDS.get(name, float) is str or var.dtype.kind in "OSUT":
            cols[name] = strings(var)
        else:
            cols[name] = np.asarray(var.values).tolist()
    div = np.asarray(ds["diverged_step"].isel(run=runs).values).tolist()
    out = {}
    for k, r in enumerate(runs):
        row = {name: vals[k] for name, vals in cols.items()}
        row["diverged_step"] = int(div[k]) if div[k] >= 0 else None
        out[r] = row
    return out


def build_report(
    ds: xr.Dataset,
    *,
    store: str,
    runs: list[int],
    health: Mapping[int, object],
    reports: Mapping[str, Mapping | None],
    status: Mapping[str, dict],
    run_notes: Mapping[str, Mapping[int, str]] | None = None,
    figures: list[dict] | None = None,
    errors: list[dict] | None = None,
    options: Mapping | None = None,
    declarations: Mapping[str, Analysis] | None = None,
) -> dict:
    """The ``report.json`` document.

    Parameters
    ----------
    ds
        The store (for hyper-parameters and labels of ``runs``).
    runs
        The analysed runs, in order.
    health
        Per run, a :class:`geomtraj.analysis.runner.RunHealth`.
    reports
        Per analysis that ran, the dict its ``report(result)`` returned (None if it had none).
    status
        Per known analysis: ``{"status": ..., "note": ..., ...}`` (see the schema).
    run_notes
        Per analysis, run -> why it measured nothing on that run.
    declarations
        The analyses' declarations (:func:`report_declarations` by default): their per-run and
        top-level defaults, and the fields and columns the report describes.
    """
    declarations = report_declarations() if declarations is None else declarations
    run_owner = run_section_owners(declarations)
    top_owner = top_section_owners(declarations)
    run_notes = run_notes or {}
    errors = list(errors or [])
    hyper = _hyper_table(ds, runs)
    per_run = {name: _per_run_reports(rep) for name, rep in reports.items()}
    entries = []
    for r in runs:
        h = health[r]
        row = hyper[r]
        entry: dict = {"run": int(r), **row}
        entry["status"] = h.status
        entry["note"] = h.note
        entry["n_steps"] = h.n_steps
        entry["final_loss"] = h.final_loss
        entry.update(run_defaults(row["beta1"], row["beta2"], None, declarations))
        provided: set[str] = set()
        for name, by_run in per_run.items():
            got = by_run.get(r)
            if got is None:
                continue
            got = dict(got)
            got.pop("run", None)
            if got.get("status") == "insufficient":
                entry["status"] = "insufficient"
            got.pop("status", None)
            note = got.pop("note", None)
            if note:  # a run-level note of this analysis
                _add_note(entry, f"{name}: {note}")
            if _has_nonfinite(got):
                _add_note(entry, f"{name} gave non-finite values, reported as null")
            _merge(entry, to_jsonable(got))
            provided.update(got)
        # contract-4 fields nobody filled: null, with the reason
        for key, owner in run_owner.items():
            if key in provided:
                continue
            if h.status == "insufficient":
                why = "run insufficient (see the run's note)"
            elif r in run_notes.get(owner, {}):
                why = f"{owner}: {run_notes[owner][r]}"
            else:
                why = _why_missing(owner, status)
            if isinstance(entry[key], dict):
                entry[key]["note"] = why
            elif h.status != "insufficient" and why not in (entry.get("note") or ""):
                _add_note(entry, why)
        for key in run_owner:
            sec = entry[key]
            if (
                isinstance(sec, dict)
                and any(v is None for k, v in sec.items() if k != "note")
                and not sec.get("note")
            ):
                sec["note"] = f"{run_owner[key]} left this unmeasured without a reason"
        entries.append(to_jsonable(entry))

    doc: dict = {
        "schema": SCHEMA_ID,
        "store": str(store),
        "n_runs": len(runs),
        "n_runs_store": int(ds.sizes["run"]),
        "versions": versions(),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "options": to_jsonable(dict(options or {})),
        "analyses": to_jsonable({k: dict(v) for k, v in status.items()}),
        "summary": {},
        "runs": entries,
        "figures": to_jsonable(figures or []),
        "errors": errors,
    }
    for key, owner in top_owner.items():
        # a section nobody filled: its analysis's default, with the reason
        default = declarations[owner].section_defaults(_why_missing(owner, status))
        doc[key] = to_jsonable(default[key])
    for name, st in doc["analyses"].items():
        if name in declarations:
            st.update(describe(declarations[name]))
    for name, rep in reports.items():
        for key, val in (rep or {}).items():
            if key == "runs":
                continue
            if key in RESERVED:
                errors.append({"analysis": name, "error": f"report() set reserved key {key!r}"})
                continue
            val = to_jsonable(val)
            if isinstance(val, dict) and isinstance(doc.get(key), dict):
                # a sub-section the analysis provides replaces its default whole, and the
                # default's own "not reported" note goes with it (never beside real values)
                if "note" not in val:
                    doc[key].pop("note", None)
                doc[key].update(val)
            else:
                doc[key] = val
    doc["errors"] = to_jsonable(errors)
    doc["summary"] = summarize(doc)
    return doc


def describe(decl: Analysis) -> dict:
    """What ``report.json`` says of an analysis besides its status: summary, fields, columns.

    The report renders its run table, units and tooltips from these, so that a ``report.json``
    can be rendered again without the analyses installed.
    """
    return {
        "summary": decl.summary,
        "fields": [  # fmt: skip
            {
                "name": f.name,
                "unit": f.unit,
                "definition": f.definition,
                "type": f.type,
                "place": f.place,
            }
            for f in decl.fields
        ],
        "columns": [
            {"header": c.header, "field": c.field, "default": c.default} for c in decl.columns
        ],
    }


def summarize(doc: Mapping) -> dict:
    """The grid summary shown at the top of the report: counts by status, precision, beta2."""
    runs = doc["runs"]
    by_status: dict[str, int] = {}
    by_precision: dict[str, dict[str, int]] = {}
    grid_axes: dict[str, list] = {}
    for e in runs:
        by_status[e["status"]] = by_status.get(e["status"], 0) + 1
        p = by_precision.setdefault(e["precision"], {"runs": 0, "diverged": 0, "insufficient": 0})
        p["runs"] += 1
        if e["status"] in ("diverged", "insufficient"):
            p[e["status"]] += 1
        for axis in ("hidden", "precision", "beta1", "beta2", "lr", "eps"):
            vals = grid_axes.setdefault(axis, [])
            if e.get(axis) not in vals:
                vals.append(e.get(axis))
    for axis, vals in grid_axes.items():
        grid_axes[axis] = sorted(vals, key=lambda v: (isinstance(v, str), v))
    bursts = [e["n_bursts"] for e in runs if isinstance(e.get("n_bursts"), int)]
    ratios = [e["slow"]["ratio"] for e in runs if e["slow"].get("ratio") is not None]
    return {
        "status": by_status,
        "precision": by_precision,
        "axes": grid_axes,
        "runs_with_bursts": sum(1 for b in bursts if b > 0),
        "median_slow_ratio": float(np.median(ratios)) if ratios else None,
        "spirals": sum(
            (e["spirals"].get("n_spirals") or 0) for e in runs if isinstance(e["spirals"], dict)
        ),
    }
