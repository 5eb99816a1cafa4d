"""The run table, declared once: every per-run field, its type, unit, meaning and where it goes.

A store holds one value of each field per run (variables of dims ``(run,)``,
docs/store-contract.md). :data:`RUN_FIELDS` drives everything that used to list them by hand:

* the config keys of ``[optimizer]`` and their defaults (:func:`config_defaults`);
* the store's required variables and the types :class:`geomtraj.analysis.base.RunData` reads
  (:func:`stored_fields`, :func:`required_fields`);
* the range checks of the plan and of an opened store (:attr:`RunField.valid`);
* the training kernel's per-run array of Adam hyper-parameters: one column per field with a
  ``kernel_column``, filled by :func:`kernel_row` and read in the kernel by the named indices
  of :data:`KERNEL_COLUMNS` (``COL_BETA1``, ...), never by a bare position;
* the report's column headers and tooltips (:func:`label`, :func:`unit`, :func:`definition`).

This module imports only NumPy, so the kernels, the store and the report can all read it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Interval:
    """The valid values of a numeric field: finite numbers between ``low`` and ``high``.

    ``high = inf`` means unbounded above (the value must still be finite).
    """

    low: float
    high: float
    low_closed: bool = True
    high_closed: bool = False

    def __str__(self) -> str:
        high = "inf" if math.isinf(self.high) else f"{self.high:g}"
        return (
            f"{'[' if self.low_closed else '('}{self.low:g}, {high}"
            f"{']' if self.high_closed else ')'}"
        )

    def contains(self, values) -> np.ndarray:
        """Boolean mask of the ``values`` that lie in the interval (NaN and inf never do)."""
        a = np.asarray(values, dtype=np.float64)
        above = a >= self.low if self.low_closed else a > self.low
        below = a <= self.high if self.high_closed else a < self.high
        return np.isfinite(a) & above & below


@dataclass(frozen=True)
class RunField:
    """One per-run field of the run table.

    Attributes
    ----------
    name : str
        Store variable name, and the key in ``RunData.hyper``.
    dtype : type
        ``np.float64``, ``np.int64`` or ``str`` (stored as strings).
    label : str
        Short column header for reports.
    unit : str
        Unit of the value ("" for pure numbers and labels).
    definition : str
        One-line meaning, for tooltips and docs.
    config_key : str or None
        ``section.key`` of the experiment config that sets the field, or None.
    default : object
        Value when the config leaves it out (None: no default here).
    kernel_column : int or None
        Column of the training kernel's per-run hyper-parameter array, or None.
    stored : bool
        Whether a store holds the field as a ``(run,)`` variable.
    required : bool
        Whether every schema-1 store must hold it (fields only ``train`` writes are optional).
    valid : Interval or None
        Valid values, checked when a plan is built and when a store is opened.
    source : callable or None
        ``source(run, plan)`` gives the field's value for a :class:`geomtraj.train.plan.Run` of a
        plan.
    """

    name: str
    dtype: type
    label: str
    unit: str
    definition: str
    config_key: str | None = None
    default: Any = None
    kernel_column: int | None = None
    stored: bool = True
    required: bool = True
    valid: Interval | None = None
    source: Callable[[Any, Any], Any] | None = None


_UNIT_INTERVAL = Interval(0.0, 1.0)
_POSITIVE = Interval(0.0, math.inf, low_closed=False)
_NON_NEGATIVE = Interval(0.0, math.inf)


def _attr(name: str) -> Callable[[Any, Any], Any]:
    return lambda run, plan: getattr(run, name)


def _kscale(run, plan) -> float:
    p = run.perturbation
    return p.k if p is not None and p.kind == "scale" else 1.0


#: Every per-run field, in the order a trained store holds them.
RUN_FIELDS: tuple[RunField, ...] = (
    RunField("beta1", np.float64, "beta1", "", "Adam's first-moment decay rate",
             "optimizer.beta1", 0.9, 0, valid=_UNIT_INTERVAL, source=_attr("beta1")),
    RunField("beta2", np.float64, "beta2", "", "Adam's second-moment decay rate",
             "optimizer.beta2", 0.999, 1, valid=_UNIT_INTERVAL, source=_attr("beta2")),
    RunField("lr", np.float64, "lr", "", "Adam's learning rate (step size)",
             "optimizer.lr", 1e-3, 2, valid=_POSITIVE, source=_attr("lr")),
    RunField("eps", np.float64, "eps", "", "Adam's eps, added to sqrt(v_hat) in the denominator",
             "optimizer.eps", 1e-8, 3, valid=_NON_NEGATIVE, source=_attr("eps")),
    RunField("weight_decay", np.float64, "weight decay", "",
             "coupled L2 weight decay: weight_decay * theta is added to the gradient",
             "optimizer.weight_decay", 0.0, 4, valid=_NON_NEGATIVE,
             source=_attr("weight_decay")),
    RunField("precision", str, "precision", "",
             "number format the run computes in (float64, float32, emulated bfloat16, float16)",
             "runs.precision", "float64", source=_attr("precision")),
    RunField("hidden", str, "hidden", "units", "hidden layer widths, e.g. 12x24",
             "model.hidden", source=lambda run, plan: run.spec.hidden_str),
    RunField("activation", str, "activation", "", "activation of the hidden layers",
             "model.activation", source=lambda run, plan: run.spec.activation),
    RunField("loss_fn", str, "loss", "", "training loss: mse or bce",
             "model.loss", required=False, source=lambda run, plan: run.spec.loss),
    RunField("dataset", str, "data set", "", "name of the training data set",
             "data.name", source=lambda run, plan: plan.datasets[run.data].name),
    RunField("data_index", np.int64, "data index", "", "index of the run's data set in the store",
             required=False, source=_attr("data")),
    RunField("seed", np.int64, "seed", "", "seed of the initial parameters and minibatch order",
             "runs.seeds", 0, source=_attr("seed")),
    RunField("batch_size", np.int64, "batch", "points",
             "points per minibatch (0: full batch)", "runs.batch_size", 0, required=False,
             source=_attr("batch_size")),
    RunField("n_params", np.int64, "params", "", "number of trainable parameters",
             source=lambda run, plan: run.spec.n_params),
    RunField("twin_of", np.int64, "twin of", "",
             "index of the run this twin perturbs (-1: an original run)",
             source=_attr("twin_of")),
    RunField("perturbation", str, "perturbation", "",
             "how a twin differs from its original ('none' for originals)",
             source=lambda run, plan: run.perturbation.label if run.perturbation else "none"),
    RunField("diverged_step", np.int64, "diverged at", "steps",
             "update at which the run diverged (-1 in a store, null in a report: it did not)"),
    RunField("kscale", np.float64, "k", "",
             "Sun's rescaling factor of a scale twin: the step is (lr*k) * (u/k); 1 otherwise",
             kernel_column=5, stored=False, source=_kscale),
)  # fmt: skip

_BY_NAME = {f.name: f for f in RUN_FIELDS}

#: Fields of the kernel's hyper-parameter array, in column order.
KERNEL_FIELDS: tuple[RunField, ...] = tuple(
    sorted((f for f in RUN_FIELDS if f.kernel_column is not None), key=lambda f: f.kernel_column)
)
#: Column of each kernel field, by field name (the kernel binds them to ``COL_<NAME>`` globals).
KERNEL_COLUMNS: dict[str, int] = {f.name: f.kernel_column for f in KERNEL_FIELDS}
if tuple(KERNEL_COLUMNS.values()) != tuple(range(len(KERNEL_FIELDS))):
    raise AssertionError("kernel columns of the run table must be 0, 1, ... without gaps")


def field(name: str) -> RunField:
    """The declaration of field ``name`` (``KeyError`` with the known names if there is none)."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"no run-table field {name!r}; fields: {', '.join(_BY_NAME)}") from None


def label(name: str) -> str:
    """Short column header of field ``name`` for reports."""
    return field(name).label


def unit(name: str) -> str:
    """Unit of field ``name`` ("" for pure numbers and labels)."""
    return field(name).unit


def definition(name: str) -> str:
    """One-line definition of field ``name``, for tooltips."""
    return field(name).definition


def stored_fields() -> tuple[RunField, ...]:
    """Fields a store holds as ``(run,)`` variables, in store order."""
    return tuple(f for f in RUN_FIELDS if f.stored)


def required_fields() -> tuple[RunField, ...]:
    """Fields every schema-1 store must hold."""
    return tuple(f for f in RUN_FIELDS if f.stored and f.required)


def checked_fields() -> tuple[RunField, ...]:
    """Stored fields with a declared range of valid values."""
    return tuple(f for f in RUN_FIELDS if f.stored and f.valid is not None)


def config_defaults(section: str) -> dict[str, Any]:
    """``{key: default}`` of the fields set in config section ``section``, in declaration order."""
    out = {}
    for f in RUN_FIELDS:
        if f.config_key and f.config_key.split(".")[0] == section:
            out[f.config_key.split(".", 1)[1]] = f.default
    return out


def kernel_row(run, plan) -> list[float]:
    """The kernel's hyper-parameter row of ``run``, one value per :data:`KERNEL_FIELDS` column."""
    return [float(f.source(run, plan)) for f in KERNEL_FIELDS]


def out_of_range(run) -> list[tuple[str, float, Interval]]:
    """``(name, value, valid)`` of every checked field of a plan's ``run`` outside its range."""
    bad = []
    for f in checked_fields():
        value = f.source(run, None)
        if not f.valid.contains(value):
            bad.append((f.name, value, f.valid))
    return bad
