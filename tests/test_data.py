"""Tests for geomtraj.train.data: deterministic toy data sets."""

from __future__ import annotations

import json

import numpy as np
import pytest

from geomtraj.train.data import (
    DATASETS,
    GENERATOR_VERSION,
    dataset_attrs,
    make_dataset,
    make_dataset_from_attrs,
)

NAMES = sorted(DATASETS)
CLASSIFICATION = [n for n in NAMES if DATASETS[n].task == "classification"]


def test_registry_contents():
    assert set(NAMES) == {"sincos", "moons", "spirals"}
    assert DATASETS["sincos"].task == "regression"
    assert DATASETS["moons"].task == "classification"
    assert DATASETS["spirals"].task == "classification"
    assert DATASETS["sincos"].noise == 0.0
    assert DATASETS["moons"].noise == 0.1
    assert DATASETS["spirals"].noise == 0.05
    for spec in DATASETS.values():
        assert spec.description and spec.formula
        assert spec.n_points >= 2


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("n_points", [2, 3, 64, 101])
def test_shapes_and_dtypes(name, n_points):
    X, y = make_dataset(name, n_points=n_points, seed=3)
    assert X.shape == (n_points, 2)
    assert y.shape == (n_points,)
    assert X.dtype == np.float64 and y.dtype == np.float64
    assert X.flags.c_contiguous and y.flags.c_contiguous
    assert np.all(np.isfinite(X)) and np.all(np.isfinite(y))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("noise", [None, 0.0, 0.3])
def test_deterministic_bytes(name, noise):
    X1, y1 = make_dataset(name, n_points=50, seed=7, noise=noise)
    X2, y2 = make_dataset(name, n_points=50, seed=7, noise=noise)
    assert X1.tobytes() == X2.tobytes()
    assert y1.tobytes() == y2.tobytes()


@pytest.mark.parametrize("name", NAMES)
def test_different_seed_differs(name):
    X1, y1 = make_dataset(name, n_points=50, seed=0)
    X2, y2 = make_dataset(name, n_points=50, seed=1)
    assert X1.tobytes() != X2.tobytes()
    if DATASETS[name].task == "classification":
        # same multiset of labels, different arrangement
        assert np.sort(y1).tobytes() == np.sort(y2).tobytes()
        assert y1.tobytes() != y2.tobytes()


@pytest.mark.parametrize("name", CLASSIFICATION)
def test_noise_free_geometry_is_seed_independent(name):
    # without noise only the row order depends on the seed
    X1, y1 = make_dataset(name, n_points=40, seed=0, noise=0.0)
    X2, y2 = make_dataset(name, n_points=40, seed=5, noise=0.0)
    o1 = np.lexsort((X1[:, 1], X1[:, 0]))
    o2 = np.lexsort((X2[:, 1], X2[:, 0]))
    np.testing.assert_array_equal(X1[o1], X2[o2])
    np.testing.assert_array_equal(y1[o1], y2[o2])


@pytest.mark.parametrize("name", CLASSIFICATION)
@pytest.mark.parametrize("n_points", [2, 7, 64, 255])
def test_label_balance(name, n_points):
    _, y = make_dataset(name, n_points=n_points, seed=11)
    assert set(np.unique(y)) <= {0.0, 1.0}
    assert int(np.sum(y == 0.0)) == n_points // 2
    assert int(np.sum(y == 1.0)) == n_points - n_points // 2


@pytest.mark.parametrize("name", CLASSIFICATION)
def test_labels_are_shuffled(name):
    _, y = make_dataset(name, n_points=200, seed=0)
    # not the unshuffled block layout [0]*100 + [1]*100
    assert not np.array_equal(y, np.sort(y))
    # labels interleave: many label changes along the row order
    assert np.count_nonzero(np.diff(y)) > 50


def test_sincos_formula_exact_without_noise():
    X, y = make_dataset("sincos", n_points=257, seed=42, noise=0.0)
    expected = np.sin(3.0 * X[:, 0]) * np.cos(2.0 * X[:, 1])
    assert np.array_equal(y, expected)
    assert np.all(X >= -1.0) and np.all(X < 1.0)
    # default noise for sincos is 0
    X0, y0 = make_dataset("sincos", n_points=257, seed=42)
    assert X0.tobytes() == X.tobytes() and y0.tobytes() == y.tobytes()


def test_sincos_draw_order():
    rng = np.random.default_rng(9)
    X_ref = rng.uniform(-1.0, 1.0, size=(30, 2))
    eps = rng.standard_normal(30)
    X, y = make_dataset("sincos", n_points=30, seed=9, noise=0.25)
    assert X.tobytes() == X_ref.tobytes()
    expected = np.sin(3.0 * X_ref[:, 0]) * np.cos(2.0 * X_ref[:, 1]) + 0.25 * eps
    assert np.array_equal(y, expected)


def test_sincos_noise_only_changes_target():
    X0, y0 = make_dataset("sincos", n_points=64, seed=1, noise=0.0)
    X1, y1 = make_dataset("sincos", n_points=64, seed=1, noise=0.1)
    assert X0.tobytes() == X1.tobytes()
    assert not np.array_equal(y0, y1)
    assert np.max(np.abs(y1 - y0)) < 1.0


def test_moons_noise_free_points_on_circles():
    X, y = make_dataset("moons", n_points=64, seed=0, noise=0.0)
    outer, inner = X[y == 0.0], X[y == 1.0]
    np.testing.assert_allclose(np.hypot(outer[:, 0], outer[:, 1]), 1.0, atol=1e-12)
    np.testing.assert_allclose(np.hypot(inner[:, 0] - 1.0, inner[:, 1] - 0.5), 1.0, atol=1e-12)
    assert np.all(outer[:, 1] >= -1e-12) and np.all(inner[:, 1] <= 0.5 + 1e-12)


def test_spirals_noise_free_point_symmetry():
    # with an even split, arm 1 is arm 0 rotated by pi
    X, y = make_dataset("spirals", n_points=64, seed=0, noise=0.0)
    a0, a1 = X[y == 0.0], X[y == 1.0]
    key0 = np.lexsort((a0[:, 1], a0[:, 0]))
    key1 = np.lexsort((-a1[:, 1], -a1[:, 0]))
    np.testing.assert_allclose(a0[key0], -a1[key1], atol=1e-15)
    r = np.hypot(X[:, 0], X[:, 1])
    assert np.all(r <= 1.0 + 1e-12) and np.all(r >= 1.0 / 7.0 - 1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_attrs_json_roundtrip_rebuilds_exactly(name):
    attrs = dataset_attrs(name, 33, 4, None)
    attrs2 = json.loads(json.dumps(attrs))
    assert attrs2 == attrs
    assert attrs["name"] == name
    assert attrs["n_points"] == 33 and attrs["seed"] == 4
    assert attrs["noise"] == DATASETS[name].noise  # default resolved
    assert attrs["generator_version"] == GENERATOR_VERSION
    assert attrs["formula"] == DATASETS[name].formula
    X1, y1 = make_dataset(name, 33, 4)
    X2, y2 = make_dataset_from_attrs(attrs2)
    assert X1.tobytes() == X2.tobytes() and y1.tobytes() == y2.tobytes()


def test_attrs_accept_numpy_scalars():
    attrs = dataset_attrs("moons", np.int64(10), np.int32(2), np.float32(0.5))
    json.dumps(attrs)
    assert type(attrs["n_points"]) is int and type(attrs["seed"]) is int
    assert type(attrs["noise"]) is float


def test_attrs_version_mismatch_rejected():
    attrs = dataset_attrs("sincos", 8, 0, 0.0)
    attrs["generator_version"] = "geomtraj.data/0"
    with pytest.raises(ValueError, match="generator_version"):
        make_dataset_from_attrs(attrs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "circles"}, r"'circles'.*moons, sincos, spirals"),
        ({"name": "sincos", "n_points": 1}, r"n_points.*>= 2.*got 1"),
        ({"name": "sincos", "n_points": 0}, r"n_points"),
        ({"name": "moons", "n_points": -5}, r"n_points"),
        ({"name": "moons", "n_points": 10.0}, r"n_points"),
        ({"name": "moons", "n_points": True}, r"n_points"),
        ({"name": "spirals", "noise": -0.1}, r"noise.*>= 0.*-0\.1"),
        ({"name": "spirals", "noise": float("nan")}, r"noise"),
        ({"name": "sincos", "noise": float("inf")}, r"noise"),
        ({"name": "sincos", "noise": "a"}, r"noise"),
        ({"name": "sincos", "seed": -1}, r"seed"),
    ],
)
def test_bad_input_raises(kwargs, match):
    with pytest.raises(ValueError, match=match) as excinfo:
        make_dataset(**kwargs)
    assert "\n" not in str(excinfo.value)
    with pytest.raises(ValueError, match=match):
        dataset_attrs(
            kwargs["name"], kwargs.get("n_points", 64), kwargs.get("seed", 0), kwargs.get("noise")
        )
