"""The number-format registry, the run-table declaration and the one Adam update of the kernels."""

from __future__ import annotations

import math

import numpy as np
import pytest

from geomtraj import runtable
from geomtraj.errors import ConfigError, StoreError
from geomtraj.formats import FORMATS, get_format, widest_storage_dtype
from geomtraj.train.kernels.rounding import ROUNDERS, STORAGE_DTYPE, get_rounder, round_to_format

# ----------------------------------------------------------------------------- format registry


def _finfo(name):
    if name == "bfloat16":
        ml_dtypes = pytest.importorskip("ml_dtypes")
        return ml_dtypes.finfo(ml_dtypes.bfloat16)
    return np.finfo(np.dtype(name))


@pytest.mark.parametrize("name", list(FORMATS))
def test_registry_constants_match_the_formats_own_definitions(name):
    """eps, unit roundoff and the largest finite value, against NumPy's (ml_dtypes') finfo."""
    f, info = FORMATS[name], _finfo(name)
    assert f.machine_epsilon == float(info.eps)
    assert f.unit_roundoff == float(info.eps) / 2
    assert f.max_finite == float(info.max)
    assert f.significand_bits == info.nmant + 1
    assert f.exponent_bits == info.nexp
    assert f.emulated == (np.dtype(f.storage_dtype).itemsize * 8 > info.bits)


@pytest.mark.parametrize("name", list(FORMATS))
def test_registry_rounder_is_the_kernels_rounder_and_rounds_to_the_unit_roundoff(name):
    f = FORMATS[name]
    assert ROUNDERS[name] is get_rounder(name)
    assert STORAGE_DTYPE[name] is f.storage_dtype
    # relative rounding error of normal values is at most the unit roundoff, and reaches half of it
    rng = np.random.default_rng(0)
    x = rng.uniform(1.0, 2.0, 20_000).astype(f.storage_dtype)
    r = round_to_format(x, name)
    rel = np.abs(r.astype(np.float64) - x.astype(np.float64)) / x.astype(np.float64)
    assert rel.max() <= f.unit_roundoff
    if f.emulated:
        assert rel.max() > 0.5 * f.unit_roundoff
    else:
        assert rel.max() == 0.0  # a native format stores its own values unchanged


def test_unknown_format_is_a_clear_error_and_widest_dtype():
    with pytest.raises(ValueError, match="unknown number format 'float8'; expected one of float64"):
        get_format("float8")
    assert widest_storage_dtype(["bfloat16", "float32"]) == np.float32
    assert widest_storage_dtype(["float16", "float64"]) == np.float64


# ----------------------------------------------------------------------------------- run table


def test_every_declared_field_has_a_label_and_definition_and_unknown_names_are_refused():
    for f in runtable.RUN_FIELDS:
        assert runtable.label(f.name) and runtable.definition(f.name)
        assert isinstance(runtable.unit(f.name), str)
    assert runtable.unit("batch_size") == "points"
    with pytest.raises(KeyError, match="no run-table field 'beta3'"):
        runtable.label("beta3")


def test_kernel_columns_are_the_adam_hyper_parameters_in_a_gapless_order():
    from geomtraj.train.kernels.mlp import HYPER_COLUMNS

    assert HYPER_COLUMNS == ("beta1", "beta2", "lr", "eps", "weight_decay", "kscale")
    assert list(runtable.KERNEL_COLUMNS.values()) == list(range(6))


def test_config_defaults_are_the_plan_defaults():
    """``[optimizer]`` keys left out of a config give what ``Run`` gives when left out."""
    from geomtraj.train.models import MLPSpec
    from geomtraj.train.plan import Run

    run = Run(MLPSpec(2, (3,)))
    defaults = runtable.config_defaults("optimizer")
    assert set(defaults) == {"beta1", "beta2", "lr", "eps", "weight_decay"}
    for key, value in defaults.items():
        assert getattr(run, key) == value
    assert runtable.kernel_row(run, None) == [0.9, 0.999, 1e-3, 1e-8, 0.0, 1.0]


def test_intervals_refuse_what_they_must():
    beta = runtable.field("beta1").valid
    assert list(beta.contains([0.0, 0.5, 1.0, -0.1, np.nan, np.inf])) == [1, 1, 0, 0, 0, 0]
    lr = runtable.field("lr").valid
    assert list(lr.contains([1e-3, 0.0, -1.0, np.inf, np.nan])) == [1, 0, 0, 0, 0]
    assert str(beta) == "[0, 1)" and str(lr) == "(0, inf)"


@pytest.mark.parametrize(
    ("key", "value"),
    [("beta1", 1.0), ("beta2", -0.5), ("lr", 0.0), ("eps", -1e-8), ("weight_decay", np.nan)],
)
def test_plan_refuses_each_out_of_range_hyper_parameter(key, value):
    from geomtraj.train.data import make_dataset
    from geomtraj.train.models import MLPSpec
    from geomtraj.train.plan import DataSource, Plan, Run

    X, y = make_dataset("sincos", 8, 0)
    plan = Plan([Run(MLPSpec(2, (3,)), **{key: value})], [DataSource("s", X, y)], steps=2)
    with pytest.raises(ConfigError, match=rf"run 0: {key}={value} must lie in"):
        plan.validate()


@pytest.fixture(scope="module")
def tiny_store():
    from geomtraj.train.data import make_dataset
    from geomtraj.train.trainer import train

    X, y = make_dataset("sincos", 16, 0)
    return train(X, y, hidden=(3,), steps=3, seed=[0, 1], weight_decay=[0.0, 1e-3], batch_size=8)


def test_trained_store_holds_every_declared_field_with_its_dtype(tiny_store):
    from geomtraj.store.zarrstore import REQUIRED_VARIABLES

    for f in runtable.stored_fields():
        var = tiny_store[f.name]
        assert var.dims == ("run",)
        if f.dtype is str:
            assert var.dtype.kind in "OUT"
        else:
            assert var.dtype == np.dtype(f.dtype), f.name
        assert (f.name in REQUIRED_VARIABLES) == f.required
    assert "kscale" not in tiny_store  # a kernel column only
    np.testing.assert_array_equal(tiny_store["weight_decay"].values, [0.0, 1e-3])
    np.testing.assert_array_equal(tiny_store["batch_size"].values, [8, 8])


@pytest.mark.parametrize(("key", "value"), [("weight_decay", np.nan), ("beta2", 1.0)])
def test_store_check_refuses_a_damaged_run_table(tiny_store, key, value):
    from geomtraj.store.zarrstore import _check_hyper

    _check_hyper(tiny_store, "ok")  # the trained table passes
    ds = tiny_store.copy(deep=True)
    ds[key].values[1] = value
    with pytest.raises(StoreError, match=rf"bad: run 1 has {key}=.*not a valid hyper-parameter"):
        _check_hyper(ds, "bad")


# --------------------------------------------------------------------------- the Adam update


def _bias_corrections(b1, b2, t):
    """``1 - beta^t`` with ``beta^t`` a running product in the run dtype, as the kernels keep it."""
    p1, p2 = b1.dtype.type(1), b2.dtype.type(1)
    for _ in range(t):
        p1, p2 = p1 * b1, p2 * b2
    return b1.dtype.type(1) - p1, b2.dtype.type(1) - p2


def _textbook_adam(fmt, theta, m, v, grad, b1, b2, lr, eps, wd, k, t):
    """Adam step by step in NumPy, rounded with the NumPy twin of the kernels' rounders."""
    dt = FORMATS[fmt].storage_dtype

    def rnd(a):
        return round_to_format(np.asarray(a, dt), fmt)

    one = dt(1)
    b1, b2, lr, eps, wd, k = (dt(c) for c in (b1, b2, lr, eps, wd, k))
    bc1, bc2 = _bias_corrections(b1, b2, t)
    with np.errstate(over="ignore", invalid="ignore"):
        g = rnd(grad + wd * theta)
        m = rnd(b1 * m + (one - b1) * g)
        v = rnd(b2 * v + (one - b2) * (g * g))
        u = (m / bc1) / (np.sqrt(v / bc2) + eps)
        theta = rnd(theta - rnd((lr * k) * (u / k)))
    return theta, m, v, g


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_adam_update_is_the_textbook_update_bit_for_bit(fmt):
    from numba import njit

    from geomtraj.train.kernels.adam import make_adam_update

    adam_update = make_adam_update(fmt)

    @njit
    def apply(theta, m, v, grad, consts):
        out = np.empty((4, theta.size), theta.dtype)
        for i in range(theta.size):
            r = adam_update(theta[i], m[i], v[i], grad[i], consts[0], consts[1], consts[2],
                            consts[3], consts[4], consts[5], consts[6], consts[7], consts[8],
                            consts[9])  # fmt: skip
            for j in range(4):
                out[j, i] = r[j]
        return out

    dt = FORMATS[fmt].storage_dtype
    rng = np.random.default_rng(1)
    n = 4096
    theta = round_to_format(rng.normal(0, 1, n), fmt)
    m = round_to_format(rng.normal(0, 1e-2, n), fmt)
    v = round_to_format(rng.uniform(0, 1e-3, n), fmt)
    grad = round_to_format(rng.normal(0, 1e-1, n) * 10.0 ** rng.integers(-6, 2, n), fmt)
    for b1, b2, lr, eps, wd, k, t in [(0.9, 0.999, 1e-3, 1e-8, 0.0, 1.0, 1),
                                      (0.8, 0.99, 0.05, 1e-6, 1e-2, 4.0, 37)]:  # fmt: skip
        b1_, b2_, lr_, eps_, wd_, k_ = (dt(x) for x in (b1, b2, lr, eps, wd, k))
        bc1, bc2 = _bias_corrections(b1_, b2_, t)
        one = dt(1)
        consts = np.array(
            [b1_, b2_, one - b1_, one - b2_, bc1, bc2, lr_ * k_, eps_, wd_, k_], dtype=dt
        )
        got = apply(theta, m, v, grad, consts)
        want = _textbook_adam(fmt, theta, m, v, grad, b1, b2, lr, eps, wd, k, t)
        for name, a, b in zip(("theta", "m", "v", "g"), got, want, strict=True):
            assert a.dtype == dt
            np.testing.assert_array_equal(a.view(f"u{a.itemsize}"), b.view(f"u{b.itemsize}"), name)
        assert np.any(got[0] != theta)  # the update moves the parameters
    assert math.isfinite(float(got[0].sum()))
