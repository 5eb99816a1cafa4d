"""Deterministic two-dimensional toy data sets.

Every data set is a pure function of ``(name, n_points, seed, noise)`` and is
built with NumPy only, from a single ``rng = np.random.default_rng(seed)``
(PCG64).  The exact order of the random draws is documented in each generator
and is part of the contract: changing it changes :data:`GENERATOR_VERSION`.
:func:`dataset_attrs` returns a JSON-serialisable record that is sufficient to
rebuild the arrays bit for bit with :func:`make_dataset_from_attrs`.

Returned arrays are always ``X``: float64, shape ``(n_points, 2)``,
C-contiguous, and ``y``: float64, shape ``(n_points,)``, C-contiguous.  For the
classification sets ``y`` holds the labels ``0.0`` / ``1.0``, with exactly
``n_points // 2`` zeros and ``n_points - n_points // 2`` ones.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "DATASETS",
    "GENERATOR_VERSION",
    "DatasetSpec",
    "dataset_attrs",
    "make_dataset",
    "make_dataset_from_attrs",
]

#: Version of the generators below.  Bump whenever any generator's output for
#: the same parameters could change (formula, draw order, dtype handling, ...).
GENERATOR_VERSION = "geomtraj.data/1"  # an identifier stored in every store, not a module path

# Spiral geometry: angles run from pi/2 to 3.5*pi (1.5 turns), radius = theta / 3.5*pi.
_SPIRAL_THETA_MIN = 0.5 * math.pi
_SPIRAL_THETA_MAX = 3.5 * math.pi


@dataclass(frozen=True)
class DatasetSpec:
    """Registry entry for one data set."""

    name: str
    description: str
    task: str  # "regression" | "classification"
    n_points: int  # default number of points
    noise: float  # default noise level
    formula: str  # human-readable construction, stored in dataset attrs
    generator: Callable[[int, np.random.Generator, float], tuple[np.ndarray, np.ndarray]]


def _sincos(n: int, rng: np.random.Generator, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """Regression target ``sin(3*x0) * cos(2*x1)``.

    Draw order: (1) ``X = rng.uniform(-1.0, 1.0, size=(n, 2))``;
    (2) ``eps = rng.standard_normal(n)`` (always drawn, even when ``noise == 0``).
    ``y = sin(3*X[:,0]) * cos(2*X[:,1])``, plus ``noise * eps`` only when ``noise != 0``
    (so for ``noise == 0`` the target equals the formula exactly).
    """
    X = rng.uniform(-1.0, 1.0, size=(n, 2))
    eps = rng.standard_normal(n)
    y = np.sin(3.0 * X[:, 0]) * np.cos(2.0 * X[:, 1])
    if noise != 0.0:
        y = y + noise * eps
    return X, y


def _shuffle_with_noise(
    X: np.ndarray, y: np.ndarray, rng: np.random.Generator, noise: float
) -> tuple[np.ndarray, np.ndarray]:
    """Shared tail of the classification sets.

    Draw order: (1) ``z = rng.standard_normal((n, 2))`` (always drawn);
    ``X += noise * z`` only when ``noise != 0``; (2) ``perm = rng.permutation(n)``;
    rows of ``X`` and ``y`` are reordered by ``perm``.
    """
    n = X.shape[0]
    z = rng.standard_normal((n, 2))
    if noise != 0.0:
        X = X + noise * z
    perm = rng.permutation(n)
    return X[perm], y[perm]


def _labels(n0: int, n1: int) -> np.ndarray:
    return np.concatenate([np.zeros(n0), np.ones(n1)])


def _moons(n: int, rng: np.random.Generator, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaving half circles (label 0 outer, label 1 inner).

    Deterministic part: ``n0 = n // 2`` points ``(cos t, sin t)`` with
    ``t = linspace(0, pi, n0)``, then ``n1 = n - n0`` points
    ``(1 - cos t, 1 - sin t - 0.5)`` with ``t = linspace(0, pi, n1)``.
    Random part: see :func:`_shuffle_with_noise` (Gaussian noise, then row permutation).
    """
    n0 = n // 2
    n1 = n - n0
    t0 = np.linspace(0.0, math.pi, n0)
    t1 = np.linspace(0.0, math.pi, n1)
    outer = np.column_stack([np.cos(t0), np.sin(t0)])
    inner = np.column_stack([1.0 - np.cos(t1), 1.0 - np.sin(t1) - 0.5])
    X = np.concatenate([outer, inner], axis=0)
    return _shuffle_with_noise(X, _labels(n0, n1), rng, noise)


def _spiral_arm(m: int, sign: float) -> np.ndarray:
    theta = np.linspace(_SPIRAL_THETA_MIN, _SPIRAL_THETA_MAX, m)
    r = theta / _SPIRAL_THETA_MAX
    return sign * np.column_stack([r * np.cos(theta), r * np.sin(theta)])


def _spirals(n: int, rng: np.random.Generator, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaved Archimedean spirals (1.5 turns each, radius in (1/7, 1]).

    Deterministic part: ``theta = linspace(pi/2, 3.5*pi, m)``, ``r = theta / (3.5*pi)``;
    label 0: ``n0 = n // 2`` points ``(r cos theta, r sin theta)``; label 1:
    ``n1 = n - n0`` points ``-(r cos theta, r sin theta)`` (the first arm rotated by pi).
    Random part: see :func:`_shuffle_with_noise` (Gaussian noise, then row permutation).
    """
    n0 = n // 2
    n1 = n - n0
    X = np.concatenate([_spiral_arm(n0, 1.0), _spiral_arm(n1, -1.0)], axis=0)
    return _shuffle_with_noise(X, _labels(n0, n1), rng, noise)


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            name="sincos",
            description="smooth 2-D regression surface sin(3*x0)*cos(2*x1) on [-1,1]^2",
            task="regression",
            n_points=64,
            noise=0.0,
            formula=(
                "X = rng.uniform(-1, 1, size=(n, 2)); eps = rng.standard_normal(n); "
                "y = sin(3*X[:,0]) * cos(2*X[:,1]) + (noise*eps if noise != 0 else 0)"
            ),
            generator=_sincos,
        ),
        DatasetSpec(
            name="moons",
            description="two interleaving half circles, binary labels 0/1",
            task="classification",
            n_points=64,
            noise=0.1,
            formula=(
                "n0 = n//2, n1 = n - n0; label 0: (cos t, sin t), t = linspace(0, pi, n0); "
                "label 1: (1 - cos t, 1 - sin t - 0.5), t = linspace(0, pi, n1); "
                "z = rng.standard_normal((n, 2)); X += noise*z if noise != 0; "
                "perm = rng.permutation(n); X, y = X[perm], y[perm]"
            ),
            generator=_moons,
        ),
        DatasetSpec(
            name="spirals",
            description="two interleaved Archimedean spirals (1.5 turns), binary labels 0/1",
            task="classification",
            n_points=64,
            noise=0.05,
            formula=(
                "n0 = n//2, n1 = n - n0; theta = linspace(pi/2, 3.5*pi, m), r = theta/(3.5*pi); "
                "label 0: (r cos theta, r sin theta) with m = n0; "
                "label 1: -(r cos theta, r sin theta) with m = n1; "
                "z = rng.standard_normal((n, 2)); X += noise*z if noise != 0; "
                "perm = rng.permutation(n); X, y = X[perm], y[perm]"
            ),
            generator=_spirals,
        ),
    )
}


def _validate(
    name: str, n_points: Any, seed: Any, noise: Any
) -> tuple[DatasetSpec, int, int, float]:
    """Check the parameters; return ``(spec, n_points, seed, noise)`` with defaults resolved."""
    choices = ", ".join(sorted(DATASETS))
    if not isinstance(name, str) or name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid choices: {choices}")
    spec = DATASETS[name]

    if isinstance(n_points, bool):
        raise ValueError(f"n_points must be an integer >= 2, got {n_points!r}")
    try:
        n = operator.index(n_points)
    except TypeError:
        raise ValueError(f"n_points must be an integer >= 2, got {n_points!r}") from None
    if n < 2:
        raise ValueError(f"n_points must be an integer >= 2, got {n}")

    if isinstance(seed, bool):
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    try:
        s = operator.index(seed)
    except TypeError:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}") from None
    if s < 0:
        raise ValueError(f"seed must be a non-negative integer, got {s}")

    if noise is None:
        eps = float(spec.noise)
    else:
        if isinstance(noise, bool):
            raise ValueError(f"noise must be a finite number >= 0 or None (default), got {noise!r}")
        try:
            eps = float(noise)
        except (TypeError, ValueError):
            raise ValueError(
                f"noise must be a finite number >= 0 or None (default), got {noise!r}"
            ) from None
        if not math.isfinite(eps) or eps < 0.0:
            raise ValueError(f"noise must be a finite number >= 0 or None (default), got {noise!r}")
    return spec, int(n), int(s), eps


def make_dataset(
    name: str, n_points: int = 64, seed: int = 0, noise: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Build data set ``name`` deterministically.

    Parameters
    ----------
    name:
        One of :data:`DATASETS` (``"sincos"``, ``"moons"``, ``"spirals"``).
    n_points:
        Number of points, an integer >= 2.
    seed:
        Non-negative integer seed for ``np.random.default_rng(seed)``, the only
        source of randomness.
    noise:
        Standard deviation of the additive Gaussian noise (on the target for
        regression, on the coordinates for classification); ``None`` selects the
        data set's default (``DATASETS[name].noise``).

    Returns
    -------
    X, y:
        ``X`` float64 ``(n_points, 2)`` and ``y`` float64 ``(n_points,)``, both C-contiguous.

    Raises
    ------
    ValueError
        Unknown ``name``, ``n_points < 2``, negative seed, or negative / non-finite ``noise``.
    """
    spec, n, s, eps = _validate(name, n_points, seed, noise)
    rng = np.random.default_rng(s)
    X, y = spec.generator(n, rng, eps)
    X = np.ascontiguousarray(X, dtype=np.float64)
    y = np.ascontiguousarray(y, dtype=np.float64)
    assert X.shape == (n, 2) and y.shape == (n,)
    return X, y


def dataset_attrs(
    name: str, n_points: int = 64, seed: int = 0, noise: float | None = None
) -> dict[str, Any]:
    """JSON-serialisable description sufficient to rebuild ``make_dataset(...)`` exactly.

    ``noise`` is stored resolved (the default substituted for ``None``).  Keys:
    ``name, task, n_points, seed, noise, generator_version, rng, formula, description``.
    Raises ``ValueError`` for the same bad inputs as :func:`make_dataset`.
    """
    spec, n, s, eps = _validate(name, n_points, seed, noise)
    return {
        "name": spec.name,
        "task": spec.task,
        "n_points": n,
        "seed": s,
        "noise": eps,
        "generator_version": GENERATOR_VERSION,
        "rng": f"numpy.random.default_rng(seed) [PCG64], numpy {np.__version__}",
        "formula": spec.formula,
        "description": spec.description,
    }


def make_dataset_from_attrs(attrs: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Rebuild a data set from a :func:`dataset_attrs` record.

    Raises ``ValueError`` if the record was written by a different generator version.
    """
    version = attrs.get("generator_version")
    if version != GENERATOR_VERSION:
        raise ValueError(
            f"dataset attrs have generator_version {version!r}; "
            f"this geomtraj provides {GENERATOR_VERSION!r}"
        )
    return make_dataset(attrs["name"], attrs["n_points"], attrs["seed"], attrs["noise"])
