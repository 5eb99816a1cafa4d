"""The declaration of an analysis: one object that says everything the rest of geomtraj needs.

An analysis module ends with ``ANALYSIS = Analysis(...)``. The declaration names the analysis and
its parameter dataclass, says what it reads from a store (:class:`Needs`), lists its result fields
with units and one-line definitions (:class:`Field`), the run-table columns it adds
(:class:`Column`) and the figures it draws (:class:`Figure`, with their captions), and holds its
three functions (``analyze``, ``report``, ``draw``). The runner (:mod:`geomtraj.analysis.runner`),
the
report (:mod:`geomtraj.report`) and the report's JSON Schema are generic code over these
declarations; see ``docs/architecture.md`` ("Adding an analysis").

This module imports nothing heavy: :mod:`geomtraj.analysis` and the report read declarations
without paying for ``scipy.signal``.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType

__all__ = [
    "Analysis",
    "Column",
    "Field",
    "Figure",
    "Needs",
    "as_analysis",
    "params_attr",
    "params_from_result",
]

#: JSON Schema of each :attr:`Field.type` (``None`` is always allowed: "not measurable here").
FIELD_TYPES: dict[str, dict] = {
    "num": {"type": ["number", "null"]},
    "int": {"type": ["integer", "null"]},
    "count": {"type": ["integer", "null"], "minimum": 0},
    "ci": {
        "oneOf": [
            {"type": "null"},
            {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2},
        ]
    },
    "str": {"type": ["string", "null"]},
    "bool": {"type": ["boolean", "null"]},
    "list": {"type": ["array", "null"]},
    # a bulky list of entries, written beside report.json as a CSV file and linked from it
    # (geomtraj/report/tables.py; docs/report.md, "Linked tables")
    "table": {
        "oneOf": [
            {"type": "null"},
            {"type": "array", "items": {"type": "object"}},
            {
                "type": "object",
                "required": ["table", "format", "n_rows", "columns", "sha256"],
                "properties": {
                    "table": {"type": "string", "pattern": "^[^/\\\\]+\\.csv(\\.gz)?$"},
                    "format": {"enum": ["csv", "csv.gz"]},
                    "n_rows": {"type": "integer", "minimum": 0},
                    "columns": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["name", "type"],
                            "properties": {
                                "name": {"type": "string"},
                                "type": {"enum": ["int", "num", "bool", "str", "json"]},
                            },
                        },
                    },
                    "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                },
            },
        ]
    },
    "any": {},
}


@dataclass(frozen=True)
class Field:
    """One result field of an analysis in ``report.json``.

    Attributes
    ----------
    name : str
        Where the value sits. For ``place="run"``, keys inside a run entry joined by dots
        (``"slow.period"``); for ``place="report"``, keys from the top of the document, with ``[]``
        after a key that holds a list of entries (``"twins[].lyapunov"``).
    unit : str
        ``"steps"``, ``"1/step"``, ``"count"``, ``"x"`` (a ratio), ... ; ``""`` for a label or a
        plain number.
    definition : str
        One line, no final full stop: the report's tooltip and legend.
    type : str
        A key of :data:`FIELD_TYPES`; ``None`` (JSON ``null``) is always allowed. ``"table"`` is a
        list of entries that grows with windows or bursts rather than runs: the report writes it
        to a CSV file beside ``report.json`` and links it (``place="report"``, no ``[]``).
    required : bool
        The field is part of contract 4 and every report carries it (``null`` when not measured).
    place : str
        ``"run"`` (every run entry) or ``"report"`` (the analysis's top-level section).
    """

    name: str
    unit: str
    definition: str
    type: str = "num"
    required: bool = False
    place: str = "run"

    def __post_init__(self) -> None:
        if self.type not in FIELD_TYPES:
            raise ValueError(f"Field {self.name!r}: type {self.type!r} not in {list(FIELD_TYPES)}")
        if self.place not in ("run", "report"):
            raise ValueError(f"Field {self.name!r}: place {self.place!r}, expected run or report")
        if self.type == "table" and (self.place != "report" or "[]" in self.name):
            raise ValueError(f"Field {self.name!r}: a table sits at place report, outside lists")

    @property
    def path(self) -> tuple[str, ...]:
        """The keys of the value (list markers dropped)."""
        return tuple(k.removesuffix("[]") for k in self.name.split("."))

    @property
    def kind(self) -> str:
        """How a table sorts it: ``"num"`` or ``"str"``."""
        return "num" if self.type in ("num", "int", "count") else "str"


@dataclass(frozen=True)
class Column:
    """A run-table column: a :class:`Field` of place ``"run"`` under a short header.

    Attributes
    ----------
    header : str
        The column's short name (``"slow period"``).
    field : str
        The :attr:`Field.name` it shows; unit and definition come from that field.
    default : bool
        Shown without the page's "show all columns" toggle (at most about ten in all).
    """

    header: str
    field: str
    default: bool = False


@dataclass(frozen=True)
class Figure:
    """A figure the analysis draws, found by its file name, with its caption.

    Attributes
    ----------
    pattern : str
        Regular expression that the file's stem (``periods_run0002``) matches in full.
    caption : str or callable
        What to look at and why its runs were chosen; a callable gets the ``report.json`` document
        and the match of ``pattern`` and returns the text.
    """

    pattern: str
    caption: str | Callable[[Mapping, re.Match], str]

    def caption_for(self, stem: str, doc: Mapping) -> str | None:
        """The caption of the file ``stem`` if this declaration covers it, else None."""
        m = re.fullmatch(self.pattern, stem)
        if m is None:
            return None
        return self.caption(doc, m) if callable(self.caption) else self.caption


@dataclass(frozen=True)
class Needs:
    """What an analysis reads from a store, beyond the required table of contract 2.

    Attributes
    ----------
    variables : tuple of str
        Store variables it reads (``theta``, ``update_norm``, ...).
    training_data : bool
        It needs the training set (``data_X``/``data_y``) to evaluate the model.
    snapshots : bool
        It needs full optimizer states at checkpoints (``snapshot_*``, or every parameter
        recorded).
    without : str
        What it does on a store that lacks them (derive, or mark the runs with the reason).
    """

    variables: tuple[str, ...] = ()
    training_data: bool = False
    snapshots: bool = False
    without: str = ""


@dataclass(frozen=True)
class Analysis:
    """The declaration of one analysis (see the module docstring).

    Attributes
    ----------
    name : str
        The registry name, also the key of its section in ``report.json``.
    analyze : callable
        ``analyze(ds, runs=None, *, progress=None, **kwargs) -> xarray.Dataset`` over ``run``.
    report : callable
        ``report(result) -> {"runs": {run: {...}}, SECTION: ...}``; it reads the parameters the
        result was computed with from the result itself (:func:`params_from_result`).
    draw : callable
        ``draw(ds, result, outdir) -> list[pathlib.Path]`` of PNG files.
    params : type or None
        The dataclass of its parameters (the ``params=`` argument of ``analyze``).
    summary : str
        One line: the question it answers.
    needs : Needs
    fields : tuple of Field
    columns : tuple of Column
    figures : tuple of Figure
    sections : tuple of str
        Top-level keys of ``report.json`` it writes (besides per-run entries).
    run_defaults : callable or None
        ``run_defaults(entry) -> dict``: its per-run fields before measuring (predictions from the
        run's settings, every measurement ``None``), given the run entry with its labels.
    section_defaults : callable or None
        ``section_defaults(why) -> dict``: its top-level sections when it reported nothing,
        ``why`` being the reason.
    module : str
        The module that holds the declaration (worker processes import it by this name).
    declared : bool
        False for a module of the bare protocol adapted by :func:`as_analysis`.
    """

    name: str
    analyze: Callable
    report: Callable
    draw: Callable
    params: type | None = None
    summary: str = ""
    needs: Needs = Needs()
    fields: tuple[Field, ...] = ()
    columns: tuple[Column, ...] = ()
    figures: tuple[Figure, ...] = ()
    sections: tuple[str, ...] = ()
    run_defaults: Callable[[Mapping], dict] | None = None
    section_defaults: Callable[[str], dict] | None = None
    module: str = ""
    declared: bool = True

    def __post_init__(self) -> None:
        if not self.module:
            object.__setattr__(self, "module", getattr(self.analyze, "__module__", "") or "")
        names = {f.name for f in self.fields if f.place == "run"}
        unknown = [c.field for c in self.columns if c.field not in names]
        if unknown:
            raise ValueError(f"{self.name}: columns name undeclared fields {unknown}")

    def __call__(self, ds, runs=None, **kwargs):
        """``analyze(ds, runs, **kwargs)``, as calling an analysis module does."""
        return self.analyze(ds, runs=runs, **kwargs)

    # -- the generic protocol --------------------------------------------------------------------
    def field(self, name: str) -> Field:
        """The declared field ``name``."""
        return next(f for f in self.fields if f.name == name)

    def kwargs(self, given: Mapping | None) -> dict:
        """Keyword arguments of ``analyze`` from ``given``.

        ``given`` holds ``analyze``'s own keywords (``{"params": PeriodParams(...)}``); a
        ``params`` given as a mapping fills the parameter dataclass (so a study's table states only
        the values it changes).
        """
        kw = dict(given or {})
        raw = kw.get("params")
        if self.params is not None and isinstance(raw, Mapping):
            kw["params"] = params_from_mapping(self.params, raw)
        return kw

    def run(self, ds, runs, kwargs: Mapping | None = None, progress=None):
        """``analyze(ds, runs, progress=progress, **kwargs)`` (see :meth:`kwargs`).

        The analysis keeps its parameters in the result (``attrs["params"]``, written with
        :func:`params_attr`), so that :meth:`make_report` uses the values the analysis used.
        """
        return self.analyze(ds, runs=runs, progress=progress, **self.kwargs(kwargs))

    def make_report(self, result) -> dict:
        """``report(result)``, with the result's own parameters where ``report`` takes them."""
        takes = "params" in inspect.signature(self.report).parameters
        if takes and self.params is not None:
            return self.report(result, params=params_from_result(result, self.params))
        return self.report(result)

    def run_fields(self) -> list[Field]:
        return [f for f in self.fields if f.place == "run"]

    def report_fields(self) -> list[Field]:
        return [f for f in self.fields if f.place == "report"]


#: The functions every analysis module provides (the protocol of :mod:`geomtraj.analysis`).
PROTOCOL = ("analyze", "report", "figures")


def protocol_gaps(module: ModuleType | Analysis) -> list[str]:
    """Names of the protocol functions ``module`` lacks (empty when it follows the protocol)."""
    if isinstance(module, Analysis):
        return []
    if isinstance(getattr(module, "ANALYSIS", None), Analysis):
        return []
    return [f for f in PROTOCOL if not callable(getattr(module, f, None))]


def as_analysis(obj: ModuleType | Analysis, name: str | None = None) -> Analysis:
    """The declaration of ``obj``: itself, its module's ``ANALYSIS``, or an adapted module.

    A module that follows only the bare protocol (``analyze``, ``report``, ``figures``) is adapted
    with no declared fields: the report then shows its own section as it comes, and its
    parameters round-trip only if it stores them itself. Declaring ``ANALYSIS`` adds the rest.
    """
    if isinstance(obj, Analysis):
        return obj if name is None or name == obj.name else dataclasses.replace(obj, name=name)
    declared = getattr(obj, "ANALYSIS", None)
    if isinstance(declared, Analysis):
        if name is not None and name != declared.name:
            return dataclasses.replace(declared, name=name)
        return declared
    gaps = protocol_gaps(obj)
    if gaps:
        raise TypeError(f"{obj.__name__} lacks {', '.join(gaps)}")
    return Analysis(
        name=name or obj.__name__.rsplit(".", 1)[-1],
        analyze=obj.analyze,
        report=obj.report,
        draw=obj.figures,
        summary=(obj.__doc__ or "").strip().split("\n")[0],
        module=obj.__name__,
        declared=False,
    )


# ------------------------------------------------------------------------ parameter round trip


def params_attr(params) -> str:
    """A parameter dataclass as the JSON text stored in a result's ``attrs["params"]``."""
    return json.dumps(dataclasses.asdict(params), sort_keys=True)


def params_from_mapping(cls: type, values: Mapping):
    """``cls(**values)``, nested dataclasses and tuples rebuilt from their JSON forms."""
    defaults = cls()
    kw = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        v, d = values[f.name], getattr(defaults, f.name)
        if dataclasses.is_dataclass(d) and isinstance(v, Mapping):
            v = params_from_mapping(type(d), v)
        elif isinstance(d, tuple) and isinstance(v, list):
            v = tuple(v)
        kw[f.name] = v
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise TypeError(f"{cls.__name__} has no parameter(s) {', '.join(unknown)}")
    return cls(**kw)


def params_from_result(result, cls: type):
    """The parameters ``result`` was computed with (``attrs["params"]``), else ``cls()``.

    ``attrs["params"]`` is JSON (:func:`params_attr`); results written before that held a Python
    ``repr`` of the dict, which is read too. A result without it gets the defaults.
    """
    raw = getattr(result, "attrs", {}).get("params")
    if not raw:
        return cls()
    try:
        values = json.loads(raw)
    except (TypeError, ValueError):
        try:
            values = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            return cls()
    if not isinstance(values, Mapping):
        return cls()
    return params_from_mapping(cls, values)


# ------------------------------------------------------------------------------ caption helpers


def run_entry(doc: Mapping, run: int) -> Mapping:
    """The entry of run ``run`` in a ``report.json`` document (empty if absent)."""
    return next((e for e in doc.get("runs", []) if e.get("run") == run), {})


def describe_run(doc: Mapping, run: int) -> str:
    """``run 2 (float32, beta1=0.9, beta2=0.99, lr=0.01)`` for a figure caption."""
    e = run_entry(doc, run)
    if not e:
        return f"run {run}"
    return (
        f"run {run} ({e.get('precision')}, beta1={e.get('beta1')}, beta2={e.get('beta2')}, "
        f"lr={e.get('lr')})"
    )
