"""The JSON Schema of ``report.json`` (``geomtraj.report/1``), generated from the declarations.

The report's own parts (store, versions, analyses' status, run labels, figures, errors) are
:data:`BASE`; every analysis adds the fields it declares (:class:`geomtraj.analysis.declaration.
Field`): its per-run fields into the run entry, its top-level sections at the top, each value with
its type, its unit and definition as ``description``. A field declared ``required`` is required
inside its section, and the section itself is required when the analysis gives a default for it
(``run_defaults``, ``section_defaults``): these are the fields of contract 4.
The schema is built when it is needed (:func:`geomtraj.report.load_schema` for the analyses
shipped with geomtraj, ``make_report`` for those it ran), so adding an analysis edits no schema
file; ``python -m geomtraj.report.schema [FILE]`` prints it or writes it to ``FILE``. See
``docs/contracts.md`` (contract 4) and ``docs/architecture.md``.
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Iterable
from pathlib import Path

from geomtraj.analysis.declaration import FIELD_TYPES, Analysis, Field
from geomtraj.report.assemble import SCHEMA_ID

_NOTE = {"type": ["string", "null"]}
_STATUSES = [
    "ok", "partial", "not measurable", "failed", "not selected", "not available", "no runs"
]  # fmt: skip

#: The report's own parts, before any analysis adds its fields.
BASE: dict = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://geomtraj.invalid/schemas/geomtraj.report/1",
    "title": SCHEMA_ID,
    "description": "report.json written by `geomtraj analyze` (contract 4). Periods and times are "
    "in optimizer steps. null means 'not measurable here', never zero; the reason is in a `note`. "
    "Sections may carry more fields than listed. Generated from the analyses' declarations.",
    "type": "object",
    "required": ["schema", "store", "n_runs", "versions", "runs", "analyses", "figures", "errors"],
    "properties": {
        "schema": {"const": SCHEMA_ID},
        "store": {"type": "string"},
        "n_runs": {"type": "integer", "minimum": 0},
        "n_runs_store": {"type": "integer", "minimum": 0},
        "versions": {
            "type": "object",
            "required": ["geomtraj", "python", "numpy", "xarray", "zarr"],
            "additionalProperties": {"type": ["string", "null"]},
        },
        "created": {"type": "string"},
        "options": {"type": "object"},
        "analyses": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "required": ["status"],
                "properties": {
                    "status": {"enum": _STATUSES},
                    "note": _NOTE,
                    "n_runs": {"type": "integer", "minimum": 0},
                    "seconds": {"type": "number", "minimum": 0},
                    "summary": {"type": "string"},
                    "fields": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["name", "unit", "definition"],
                            "properties": {
                                "name": {"type": "string"},
                                "unit": {"type": "string"},
                                "definition": {"type": "string"},
                                "place": {"enum": ["run", "report"]},
                            },
                        },
                    },
                    "columns": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["header", "field", "default"],
                            "properties": {
                                "header": {"type": "string"},
                                "field": {"type": "string"},
                                "default": {"type": "boolean"},
                            },
                        },
                    },
                },
            },
        },
        "summary": {"type": "object"},
        "runs": {"type": "array", "items": {"$ref": "#/$defs/run"}},
        "figures": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["file", "analysis"],
                "properties": {
                    "file": {"type": "string", "pattern": "^figures/[^/]+\\.png$"},
                    "analysis": {"type": "string"},
                    "title": {"type": "string"},
                    "caption": {"type": "string"},
                },
            },
        },
        "warnings": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["analysis", "category", "message", "count"],
                "properties": {
                    "analysis": {"type": "string"},
                    "category": {"type": "string"},
                    "message": {"type": "string"},
                    "where": {"type": "string"},
                    "count": {"type": "integer", "minimum": 1},
                },
            },
        },
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["analysis", "error"],
                "properties": {
                    "analysis": {"type": "string"},
                    "runs": {"type": "array", "items": {"type": "integer"}},
                    "error": {"type": "string"},
                    "where": {"type": "string"},
                },
            },
        },
    },
    "$defs": {
        "run": {
            "type": "object",
            "required": ["run", "beta1", "beta2", "lr", "eps", "precision", "hidden", "status",
                         "diverged_step"],
            "properties": {
                "run": {"type": "integer", "minimum": 0},
                "beta1": {"type": "number"},
                "beta2": {"type": "number"},
                "lr": {"type": "number"},
                "eps": {"type": "number"},
                "precision": {"enum": ["float64", "float32", "bfloat16", "float16"]},
                "hidden": {"type": "string"},
                "status": {"enum": ["ok", "diverged", "insufficient"]},
                "diverged_step": {"type": ["integer", "null"]},
                "n_steps": {"type": "integer", "minimum": 0},
                "final_loss": {"type": ["number", "null"]},
                "note": _NOTE,
            },
        },
    },
}  # fmt: skip


def _object() -> dict:
    return {"type": "object", "required": [], "properties": {"note": dict(_NOTE)}}


def _leaf(f: Field) -> dict:
    unit = f" [{f.unit}]" if f.unit else ""
    return {**copy.deepcopy(FIELD_TYPES[f.type]), "description": f"{f.definition}{unit}"}


def _insert(node: dict, parts: list[str], f: Field, owner: str, always: bool = True) -> None:
    key = parts[0].removesuffix("[]")
    listed = parts[0].endswith("[]")
    if f.required and always and key not in node["required"]:
        node["required"].append(key)
    if len(parts) == 1:
        leaf = _leaf(f)
        node["properties"][key] = {"type": "array", "items": leaf} if listed else leaf
        return
    child = node["properties"].get(key)
    if child is None or "properties" not in (child.get("items", child)):
        child = {"type": "array", "items": _object()} if listed else _object()
        child["description"] = f"written by the {owner} analysis"
        node["properties"][key] = child
    _insert(child.get("items", child) if listed else child, parts[1:], f, owner)


def _tidy(node):
    """Drop empty ``required`` lists (schemas read more easily without them)."""
    if isinstance(node, dict):
        if node.get("required") == []:
            del node["required"]
        for v in node.values():
            _tidy(v)
    elif isinstance(node, list):
        for v in node:
            _tidy(v)
    return node


def build_schema(declarations: Iterable[Analysis]) -> dict:
    """The schema of a report on the analyses ``declarations``: :data:`BASE` and their fields."""
    schema = copy.deepcopy(BASE)
    run = schema["$defs"]["run"]
    top = {"required": schema["required"], "properties": schema["properties"]}
    for decl in declarations:
        for f in decl.fields:
            # a section is always there only when the analysis gives its default (null + note)
            if f.place == "run":
                target, always = run, decl.run_defaults is not None
            else:
                target, always = top, decl.section_defaults is not None
            _insert(target, f.name.split("."), f, decl.name, always)
    return _tidy(schema)


def builtin_declarations() -> list[Analysis]:
    """The declarations of the analyses shipped in :mod:`geomtraj.analysis` (imports them)."""
    from geomtraj.analysis import declaration, shipped

    return [declaration(name) for name in shipped()]


def schema_text(declarations: Iterable[Analysis] | None = None) -> str:
    """The schema as JSON text (sorted keys, two-space indent)."""
    decls = builtin_declarations() if declarations is None else declarations
    return json.dumps(build_schema(decls), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m geomtraj.report.schema [FILE]``: print the schema, or write it to ``FILE``."""
    argv = sys.argv[1:] if argv is None else argv
    text = schema_text()
    if argv:
        Path(argv[0]).write_text(text, "utf-8")
        print(f"wrote {argv[0]}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
