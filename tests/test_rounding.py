"""Bit-exactness of the emulated low-precision rounders in geomtraj.train.kernels.rounding."""

from __future__ import annotations

import functools
import re

import numpy as np
import pytest
from numba import njit

from geomtraj.train.kernels.rounding import (
    FORMATS,
    ROUNDERS,
    STORAGE_DTYPE,
    get_rounder,
    nextafter_format,
    round_bf16,
    round_fp16,
    round_identity,
    round_to_format,
)

JIT = dict(fastmath=False, error_model="numpy", cache=False)


@functools.cache
def vec(fmt):
    f = ROUNDERS[fmt]

    @njit(**JIT)
    def loop(x):
        out = np.empty_like(x)
        for i in range(x.size):
            out[i] = f(x[i])
        return out

    return loop


def u32(a):
    return np.asarray(a, dtype=np.float32).view(np.uint32)


def f32(bits):
    return np.asarray(bits, dtype=np.uint32).view(np.float32)


def random_bits(n=1_000_000, seed=0):
    rng = np.random.default_rng(seed)
    return f32(rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32))


def edge_cases():
    v = [
        0.0, -0.0, 1.0, -1.0, np.inf, -np.inf,
        65504.0, 65505.0, 65519.0, 65519.996, 65520.0, 65520.004, 65536.0, 1e10,
        2.0**-14, 2.0**-15, 2.0**-24, 2.0**-25, 3 * 2.0**-25, 2.0**-26, 5 * 2.0**-26,
        1e-8, 6.1e-5, 6.103e-5, 6.1035e-5, 1e-40, 1e-45,
        1 + 2.0**-8, 1 + 3 * 2.0**-8, 1 + 2.0**-11, 1 + 3 * 2.0**-11,  # ties
        3.3895314e38, 3.39e38, 3.4028235e38, 1.1754944e-38, 1.17549435e-38,
    ]  # fmt: skip
    x = np.array(v, dtype=np.float32)
    # fp16 subnormal/normal boundary and bf16/fp16 ties: patterns around them
    specials = [u32(2.0**-14), u32(2.0**-24), u32(65504.0), u32(65520.0), 0x3F808000, 0x3F818000]
    around = np.concatenate([np.arange(int(s) - 3, int(s) + 4) for s in specials])
    x = np.concatenate([x, f32(around.astype(np.uint32))])
    # every fp16 subnormal value and every midpoint between them (ties to even)
    k = np.arange(0, 2**11, dtype=np.float32)
    x = np.concatenate([x, k * np.float32(2.0**-25)])
    return np.concatenate([x, -x])


def all_inputs():
    return np.concatenate([random_bits(), edge_cases()])


# ---------------------------------------------------------------------------
# independent references
# ---------------------------------------------------------------------------


def ref_fp16(x):
    with np.errstate(over="ignore", invalid="ignore"):
        return x.astype(np.float16).astype(np.float32)


def ref_bf16_numpy(x):
    """Pick the nearer of the two bfloat16 neighbours in exact float64 arithmetic."""
    with np.errstate(invalid="ignore"):
        return _ref_bf16_numpy(x)


def _ref_bf16_numpy(x):
    u = u32(x)
    lo = u & np.uint32(0xFFFF0000)  # truncation (towards zero)
    hi = lo + np.uint32(0x10000)  # next bf16 away from zero (may be inf)
    lo_v = f32(lo).astype(np.float64)
    hi_v = f32(hi).astype(np.float64)
    hi_v = np.where(np.isinf(hi_v), np.copysign(2.0**128, hi_v), hi_v)
    xd = x.astype(np.float64)
    d_lo, d_hi = np.abs(xd - lo_v), np.abs(hi_v - xd)
    lo_even = ((lo >> np.uint32(16)) & np.uint32(1)) == 0
    pick_hi = (d_hi < d_lo) | ((d_hi == d_lo) & ~lo_even)
    return f32(np.where(pick_hi, hi, lo))


def assert_bits_equal(got, want, x):
    nan = np.isnan(x)
    assert np.isnan(got[nan]).all(), "NaN input must give NaN"
    g, w = u32(got[~nan]), u32(want[~nan])
    bad = np.flatnonzero(g != w)
    assert bad.size == 0, (
        f"{bad.size} mismatches, first x={x[~nan][bad[0]]!r} ({u32(x[~nan][bad[0]]):#010x}): "
        f"got {g[bad[0]]:#010x}, want {w[bad[0]]:#010x}"
    )


# ---------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------


def test_round_fp16_matches_numpy_float16():
    x = all_inputs()
    assert_bits_equal(vec("float16")(x), ref_fp16(x), x)


def test_round_bf16_matches_ml_dtypes():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    x = all_inputs()
    with np.errstate(over="ignore", invalid="ignore"):
        want = x.astype(ml_dtypes.bfloat16).astype(np.float32)
    assert_bits_equal(vec("bfloat16")(x), want, x)


def test_round_bf16_matches_numpy_bit_reference():
    x = all_inputs()
    assert_bits_equal(vec("bfloat16")(x), ref_bf16_numpy(x), x)


@pytest.mark.parametrize("fmt", ["bfloat16", "float16"])
def test_nan_inf_and_overflow(fmt):
    r = ROUNDERS[fmt]
    qnan = 0x7FC00000
    for bits in (0x7F800001, 0x7FC00000, 0x7FFFFFFF, 0xFF800001, 0xFFC00001):
        out = np.float32(r(np.float32(f32(bits))))
        assert np.isnan(out)
        assert u32(out) == (qnan | (bits & 0x80000000)), "canonical quiet NaN, sign kept"
    assert r(np.float32(np.inf)) == np.inf and r(np.float32(-np.inf)) == -np.inf
    big = np.float32(3.4028235e38)
    assert r(big) == np.inf and r(-big) == -np.inf
    if fmt == "float16":
        assert r(np.float32(65504.0)) == 65504.0
        assert r(np.float32(65519.996)) == 65504.0
        assert r(np.float32(65520.0)) == np.inf and r(np.float32(-65520.0)) == -np.inf
        assert u32(np.float32(r(np.float32(-1e-9)))) == 0x80000000  # -> -0.0
        assert r(np.float32(2.0**-25)) == 0.0  # tie to even (0)
        assert r(np.float32(3 * 2.0**-25)) == 2.0**-23  # tie to even (2 * 2**-24)
    else:
        assert r(np.float32(3.3895314e38)) == np.float32(3.3895314e38)
        assert r(np.float32(1 + 2.0**-8)) == 1.0  # tie to even
        assert r(np.float32(1 + 3 * 2.0**-8)) == np.float32(1 + 2.0**-6)


def test_identity_and_tables():
    assert set(ROUNDERS) == set(FORMATS) == set(STORAGE_DTYPE)
    assert ROUNDERS["float32"] is round_identity and ROUNDERS["float64"] is round_identity
    assert ROUNDERS["bfloat16"] is round_bf16 and ROUNDERS["float16"] is round_fp16
    assert STORAGE_DTYPE["float64"] is np.float64
    assert all(STORAGE_DTYPE[f] is np.float32 for f in ("float32", "bfloat16", "float16"))
    x = random_bits(1000)
    for fmt in ("float32", "float64"):
        assert_bits_equal(vec(fmt)(x), x, x)
    assert round_identity(0.1) == 0.1
    assert get_rounder("float16") is round_fp16
    for bad in ("fp8", "bf16", None, 16):
        with pytest.raises(ValueError, match="unknown number format"):
            get_rounder(bad)


@pytest.mark.parametrize("fmt", ["bfloat16", "float16"])
def test_rounder_loop_vectorises_in_float32(fmt):
    loop = vec(fmt)
    loop(np.ones(64, np.float32))
    ir = loop.inspect_llvm(loop.signatures[0])
    assert "double" not in ir and "fpext" not in ir
    assert re.search(r"<\d+ x (float|i32)>", ir), "rounder loop did not vectorise"


# ---------------------------------------------------------------------------
# NumPy side
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_to_format(fmt):
    x = all_inputs()
    x2 = x.reshape(-1, 2)[:, ::-1]  # non-contiguous 2-D input
    got = round_to_format(x2, fmt)
    assert got.shape == x2.shape and got.dtype == STORAGE_DTYPE[fmt]
    assert not np.shares_memory(got, x)
    flat = np.ascontiguousarray(got).ravel()
    xf = np.ascontiguousarray(x2).ravel()
    if fmt == "float64":
        with np.errstate(invalid="ignore"):  # signalling NaNs
            np.testing.assert_array_equal(flat, xf.astype(np.float64))
    elif fmt == "float32":
        assert_bits_equal(flat, xf, xf)
    else:
        # bit-identical (NaN payload included) to what the kernel computes
        np.testing.assert_array_equal(u32(flat), u32(vec(fmt)(xf)))
        want = ref_fp16(xf) if fmt == "float16" else ref_bf16_numpy(xf)
        assert_bits_equal(flat, want, xf)
    # scalar input
    s = round_to_format(np.float32(1 + 2.0**-12), fmt)
    assert s.shape == ()


def test_unknown_format_raises():
    with pytest.raises(ValueError, match="unknown number format 'fp8'"):
        round_to_format(np.zeros(3, np.float32), "fp8")
    with pytest.raises(ValueError, match="unknown number format"):
        nextafter_format(1.0, 1, "half")


NEXT_VALUES = [1.0, -1.0, 0.1, -3.7, 1e-6, 3e-8, 1000.0, 6.1e-5, 2.0**-14, 65000.0]


def representable(v, fmt):
    return np.array_equal(u32(round_to_format(v, fmt)), u32(v)) if fmt != "float64" else True


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("n", [1, -1, 3, -3])
def test_nextafter_format(fmt, n):
    dt = STORAGE_DTYPE[fmt]
    x = round_to_format(np.array(NEXT_VALUES, dtype=np.float32), fmt)
    y = nextafter_format(x, n, fmt)
    assert y.dtype == dt and y.shape == x.shape
    assert np.all(y != x)
    assert np.all(np.sign(y - x) == np.sign(n))
    assert representable(y, fmt)
    back = nextafter_format(y, -n, fmt)
    np.testing.assert_array_equal(back, x)
    # one step at a time gives the same as n steps at once
    z = x
    for _ in range(abs(n)):
        z = nextafter_format(z, int(np.sign(n)), fmt)
    np.testing.assert_array_equal(z, y)
    # a single step lands on the adjacent value of the format
    if abs(n) == 1:
        target = np.inf if n > 0 else -np.inf
        if fmt in ("float32", "float64"):
            np.testing.assert_array_equal(y, np.nextafter(x.astype(dt), dt(target)))
        elif fmt == "float16":
            h = x.astype(np.float16)
            np.testing.assert_array_equal(y, np.nextafter(h, np.float16(target)).astype(np.float32))
        else:
            ml_dtypes = pytest.importorskip("ml_dtypes")
            b = x.astype(ml_dtypes.bfloat16)
            want = np.nextafter(b, np.full_like(b, target)).astype(np.float32)
            np.testing.assert_array_equal(y, want)
    # scalar in -> scalar out
    s = nextafter_format(1.0, n, fmt)
    assert np.ndim(s) == 0 and s != 1.0 and isinstance(s, dt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_nextafter_format_edges(fmt):
    dt = STORAGE_DTYPE[fmt]
    big = {
        "float64": np.finfo(np.float64).max,
        "float32": np.finfo(np.float32).max,
        "bfloat16": 3.3895314e38,
        "float16": 65504.0,
    }[fmt]
    tiny = {
        "float64": 5e-324,
        "float32": 1e-45,
        "bfloat16": float(np.uint32(0x00010000).view(np.float32)),
        "float16": 2.0**-24,
    }[fmt]
    assert nextafter_format(dt(big), 1, fmt) == np.inf
    assert nextafter_format(np.inf, 1, fmt) == np.inf
    assert nextafter_format(np.inf, -1, fmt) == dt(big)
    assert nextafter_format(-np.inf, 1, fmt) == -dt(big)
    assert nextafter_format(0.0, 1, fmt) == dt(tiny)
    assert nextafter_format(0.0, -1, fmt) == -dt(tiny)
    assert nextafter_format(-0.0, 1, fmt) == dt(tiny)
    assert nextafter_format(dt(tiny), -1, fmt) == 0.0
    assert np.isnan(nextafter_format(np.nan, 3, fmt))
    # a value not representable in the format is rounded first
    if fmt in ("bfloat16", "float16"):
        v = np.float32(1 + 2.0**-14)
        assert nextafter_format(v, 1, fmt) == nextafter_format(np.float32(1.0), 1, fmt)
    with pytest.raises(ValueError, match="integer"):
        nextafter_format(1.0, 1.5, fmt)
