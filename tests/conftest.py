"""Shared fixtures: small data sets, initial parameters and trained trajectories.

Compiling one kernel variant (precision x activation x loss) takes 10-20 s the first time on a
machine (later processes load it from the disk cache), so the suite sticks to few variants and
shares trained results through session fixtures.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from geomtraj.train.data import make_dataset
from geomtraj.train.models import MLPSpec, init_params
from geomtraj.train.trainer import train

#: Two hidden layers of different widths exercise every branch of the back-propagation.
HIDDEN = (5, 7)


def data_for(loss: str) -> tuple[np.ndarray, np.ndarray]:
    """MSE on the regression set, BCE on a classification set (64 points each)."""
    return make_dataset("sincos", 64, 0) if loss == "mse" else make_dataset("moons", 64, 0)


def make_spec(activation: str, loss: str, hidden=HIDDEN) -> MLPSpec:
    return MLPSpec(2, tuple(hidden), activation, loss)


def make_theta0(spec: MLPSpec, seed: int = 0) -> np.ndarray:
    """Glorot weights plus a small random shift of every parameter (so biases are non-zero)."""
    rng = np.random.default_rng(1000 + seed)
    return init_params(spec, seed) + 0.1 * rng.standard_normal(spec.n_params)


@pytest.fixture(scope="session")
def sincos():
    return make_dataset("sincos", 64, 0)


@pytest.fixture(scope="session")
def moons():
    return make_dataset("moons", 64, 0)


#: Hyper-parameters of the float64 Adam trajectories compared with the references: one plain run
#: and one with other betas and weight decay.
ADAM_HYPER = (
    {"beta1": 0.9, "beta2": 0.999, "lr": 1e-2, "eps": 1e-8, "weight_decay": 0.0},
    {"beta1": 0.8, "beta2": 0.99, "lr": 3e-3, "eps": 1e-6, "weight_decay": 1e-2},
)
ADAM_STEPS = 100


@functools.cache
def adam_float64(activation: str, loss: str):
    """``(spec, X, y, theta0, ds)``: float64 kernel trajectories, all params every step."""
    spec = make_spec(activation, loss)
    X, y = data_for(loss)
    theta0 = np.stack([make_theta0(spec, seed) for seed in range(len(ADAM_HYPER))])
    cols = {k: [h[k] for h in ADAM_HYPER] for k in ADAM_HYPER[0]}
    ds = train(X, y, hidden=spec.hidden, activation=activation, loss=loss, theta0=theta0,
               steps=ADAM_STEPS, precision="float64", **cols)  # fmt: skip
    return spec, X, y, theta0, ds
