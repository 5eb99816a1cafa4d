"""Accuracy, special values, determinism and codegen of geomtraj.train.kernels.fpmath."""

from __future__ import annotations

import decimal
import functools
import hashlib
import math
import platform
import re

import numba
import numpy as np
import pytest
from numba import njit

from geomtraj.train.kernels.fpmath import FP32, FP64, make_fpmath

JIT = dict(fastmath=False, error_model="numpy", cache=False)
FUNCS = ("exp_pos", "expm1_pos", "tanh", "sigmoid")
NS = {np.float32: FP32, np.float64: FP64}

# Max ulp error bounds asserted below.  Measured maxima (see module docstring):
# float32 exhaustively over all float32 arguments, float64 over 6e7 random ones:
#   exp_pos 0.95 / 0.95, expm1_pos 1.45 / 1.97, tanh 2.42 / 2.52, sigmoid 2.48 / 2.36
ULP_BOUND = {"exp_pos": 1.0, "expm1_pos": 2.5, "tanh": 3.0, "sigmoid": 3.0}


@functools.cache
def vec(dtype, name):
    """An njit loop applying FP<dtype>.<name> elementwise (exercises compiled, inlined code)."""
    f = getattr(NS[dtype], name)

    @njit(**JIT)
    def loop(x):
        out = np.empty_like(x)
        for i in range(x.size):
            out[i] = f(x[i])
        return out

    return loop


# ---------------------------------------------------------------------------
# references
# ---------------------------------------------------------------------------

_HAVE_LONGDOUBLE = np.finfo(np.longdouble).nmant >= 63


def _ref_longdouble(name, x):
    x = x.astype(np.longdouble)
    with np.errstate(over="ignore"):
        if name == "exp_pos":
            return np.exp(x)
        if name == "expm1_pos":
            return np.expm1(x)
        if name == "tanh":
            return np.tanh(x)
        return 1 / (1 + np.exp(-x))


def _ref_decimal(name, x):
    """80-digit decimal reference values (list of Decimal)."""
    out = []
    with decimal.localcontext() as ctx:
        ctx.prec = 80
        for v in x.tolist():
            d = decimal.Decimal(v)
            if name == "exp_pos":
                r = d.exp()
            elif name == "expm1_pos":
                r = d.exp() - 1 if abs(d) > decimal.Decimal("1e-30") else d + d * d / 2
            elif name == "tanh":
                if abs(d) < decimal.Decimal("1e-30"):
                    r = d
                elif abs(d) > 100:
                    r = decimal.Decimal(1).copy_sign(d)
                else:
                    e = (2 * d).exp()
                    r = (e - 1) / (e + 1)
            else:
                r = 1 / (1 + (-max(d, decimal.Decimal(-1000))).exp())
            out.append(r)
    return out


def _ulps(y, ref, dtype):
    """|y - ref| in ulps of the (extended-precision) reference, normal results only."""
    fi = np.finfo(dtype)
    ref = np.asarray(ref, dtype=np.longdouble)
    ok = (np.abs(ref) >= fi.tiny) & (np.abs(ref) <= fi.max)
    _, e = np.frexp(np.abs(ref[ok]))
    ulp = np.ldexp(np.longdouble(1), e - 1 - fi.nmant)
    return np.abs(y[ok].astype(np.longdouble) - ref[ok]) / ulp


def ulp_error(y, x, name, dtype):
    """Max error of y = f(x) in ulps of the exact result (normal results only)."""
    if dtype is np.float32:
        # float64 libm results are ~1e-8 float32-ulp accurate: a fine reference
        xd = x.astype(np.float64)
        with np.errstate(over="ignore"):
            ref = {
                "exp_pos": np.exp,
                "expm1_pos": np.expm1,
                "tanh": np.tanh,
                "sigmoid": lambda v: 1 / (1 + np.exp(-v)),
            }[name](xd)
        return float(_ulps(y, ref, dtype).max())
    if _HAVE_LONGDOUBLE:  # x87 80-bit: 11 extra bits
        return float(_ulps(y, _ref_longdouble(name, x), dtype).max())
    # no extended precision on this platform: 80-digit decimal reference on a subsample
    fi = np.finfo(dtype)
    idx = np.random.default_rng(1).choice(x.size, size=min(x.size, 3000), replace=False)
    worst = 0.0
    for yi, r in zip(y[idx], _ref_decimal(name, x[idx]), strict=True):
        if not (fi.tiny <= abs(r) <= fi.max):
            continue
        _, e = math.frexp(float(abs(r)))
        ulp = decimal.Decimal(math.ldexp(1.0, e - 1 - fi.nmant))
        worst = max(worst, float(abs(decimal.Decimal(float(yi)) - r) / ulp))
    return worst


def sample(dtype, nonneg):
    rng = np.random.default_rng(12345)
    if dtype is np.float32:
        bits = rng.integers(0, 2**32, 300_000, dtype=np.uint64).astype(np.uint32)
        rnd = bits.view(np.float32)
    else:
        rnd = rng.integers(0, 2**64 - 1, 300_000, dtype=np.uint64).view(np.float64)
    rnd = rnd[np.isfinite(rnd)].astype(dtype)
    parts = [
        np.linspace(-25, 25, 200_001).astype(dtype),
        rnd,
        (rng.standard_normal(200_000) * 3).astype(dtype),
        (10.0 ** rng.uniform(-38, 2.9, 100_000)).astype(dtype),
        # the region |x| ~ 0.2-0.4 holds the worst cases of expm1/tanh
        rng.uniform(0.0, 1.0, 100_000).astype(dtype),
        np.array([1e-30, 1e-20, 1e-8, 0.3465, 0.3466, 0.35, 0.693, 1.0, 9.0, 19.0], dtype),
    ]
    x = np.concatenate(parts + [-p for p in parts])
    if nonneg:
        x = np.abs(x)
        lim = np.log(np.finfo(dtype).max)
        x = x[x < lim]
    return x


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", FUNCS)
def test_max_ulp_error(name, dtype):
    x = sample(dtype, nonneg=name.endswith("_pos"))
    y = vec(dtype, name)(x)
    assert y.dtype == dtype
    err = ulp_error(y, x, name, dtype)
    assert err <= ULP_BOUND[name], f"{name}[{dtype.__name__}] max error {err:.3f} ulp"


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_scalar_call_matches_vector_loop(dtype):
    """The (non-inlined) scalar entry point and the vectorised loop agree bit-for-bit."""
    x = sample(dtype, nonneg=True)[::997]
    F = NS[dtype]
    for name in FUNCS:
        yv = vec(dtype, name)(x)
        ys = np.array([getattr(F, name)(v) for v in x], dtype=dtype)
        np.testing.assert_array_equal(yv.view(f"u{yv.itemsize}"), ys.view(f"u{ys.itemsize}"))


# ---------------------------------------------------------------------------
# special values
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_special_values(dtype):
    F = NS[dtype]
    d = dtype
    inf, nan = d(np.inf), d(np.nan)
    tiny = np.finfo(d).smallest_subnormal
    nbtype = numba.from_dtype(np.dtype(d))
    for f in (F.exp_pos, F.expm1_pos, F.tanh, F.sigmoid):
        assert np.isnan(f(nan))
        (sig,) = [s for s in f.nopython_signatures if s.args == (nbtype,)]
        assert sig.return_type == nbtype
    # exp / expm1
    assert F.exp_pos(d(0)) == 1 and F.expm1_pos(d(0)) == 0
    assert F.exp_pos(inf) == inf and F.expm1_pos(inf) == inf
    big = d(800.0) if d is np.float64 else d(100.0)
    assert F.exp_pos(big) == inf and F.expm1_pos(big) == inf
    for t in (tiny, d(1e-30), d(1e-20)):
        assert F.expm1_pos(t) == t
        assert F.exp_pos(t) == 1
    # tanh
    assert F.tanh(d(0.0)) == 0 and math.copysign(1.0, F.tanh(d(0.0))) == 1.0
    assert F.tanh(d(-0.0)) == 0 and math.copysign(1.0, F.tanh(d(-0.0))) == -1.0
    assert F.tanh(inf) == 1 and F.tanh(-inf) == -1
    for t in (tiny, d(1e-30), d(1e-20)):
        assert F.tanh(t) == t and F.tanh(-t) == -t
    sat = F.TANH_SAT
    for v in (sat, np.nextafter(sat, inf), d(25.0), d(1e30), np.finfo(d).max):
        assert F.tanh(v) == 1 and F.tanh(-v) == -1
    below = np.nextafter(sat, d(0))
    assert F.tanh(below) <= 1 and F.tanh(below) >= np.nextafter(d(1), d(0))
    # sigmoid
    assert F.sigmoid(d(0.0)) == 0.5 and F.sigmoid(d(-0.0)) == 0.5
    assert F.sigmoid(inf) == 1 and F.sigmoid(-inf) == 0
    assert F.sigmoid(big) == 1 and F.sigmoid(-big) == 0
    assert F.sigmoid(np.finfo(d).max) == 1 and F.sigmoid(-np.finfo(d).max) == 0
    assert F.sigmoid(tiny) == 0.5 and F.sigmoid(-tiny) == 0.5
    # NaN through the vectorised loop too, and no NaN from overflow
    x = np.array([nan, inf, -inf, np.finfo(d).max, -np.finfo(d).max, 0.0, -0.0], d)
    for name in ("tanh", "sigmoid"):
        y = vec(dtype, name)(x)
        assert np.isnan(y[0]) and not np.isnan(y[1:]).any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_exp_overflow_threshold(dtype):
    """exp_pos/expm1_pos overflow to inf exactly where the correctly rounded result does."""
    it = np.uint32 if dtype is np.float32 else np.uint64
    xmax = dtype(np.log(np.finfo(dtype).max))
    u0 = int(np.asarray(xmax).view(it))
    x = np.arange(u0 - 40, u0 + 40, dtype=np.int64).astype(it).view(dtype)
    with decimal.localcontext() as ctx:
        ctx.prec = 60
        fi = np.finfo(dtype)
        # results >= max + ulp(max)/2 round to inf
        limit = decimal.Decimal(float(fi.max)) + decimal.Decimal(2) ** (fi.maxexp - 2 - fi.nmant)
        exact_inf = np.array([decimal.Decimal(float(v)).exp() >= limit for v in x])
    assert exact_inf.any() and not exact_inf.all()
    np.testing.assert_array_equal(np.isinf(vec(dtype, "exp_pos")(x)), exact_inf)
    np.testing.assert_array_equal(np.isinf(vec(dtype, "expm1_pos")(x)), exact_inf)


@functools.cache
def tanh_by_definition(dtype):
    """tanh as its docstring defines it, through expm1_pos (clamp, cap of k and NaN select)."""
    F = NS[dtype]
    expm1, sat, one, two = F.expm1_pos, F.TANH_SAT, dtype(1), dtype(2)

    @njit(**JIT)
    def loop(x):
        out = np.empty_like(x)
        for i in range(x.size):
            ax = abs(x[i])
            em = expm1(ax + ax)
            t = one if ax >= sat else em / (em + two)
            out[i] = math.copysign(t, x[i])
        return out

    return loop


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_tanh_matches_its_definition_through_expm1_bit_for_bit(dtype):
    """tanh's own expm1 leaves out the clamp, the cap of k and the NaN select, which its
    arguments never need: every result, NaN payloads included, is the same bits as tanh computed
    through expm1_pos. (float32 was also compared over all 2**32 arguments: no difference.)"""
    it = np.uint32 if dtype is np.float32 else np.uint64
    rng = np.random.default_rng(7)
    sat = NS[dtype].TANH_SAT
    u_sat = int(np.asarray(sat).view(it))
    bits = rng.integers(0, u_sat + 4096, 1_000_000, dtype=np.int64).astype(it)  # [0, sat]
    edges = np.arange(u_sat - 2048, u_sat + 2048, dtype=np.int64).astype(it)
    anything = rng.integers(0, np.iinfo(it).max, 200_000, dtype=it, endpoint=True)
    nans = (
        np.array([0x7FC00001, 0x7F800123, 0xFFC00042], it)
        if dtype is np.float32
        else (np.array([0x7FF8000000000001, 0x7FF0000000000123, 0xFFF8000000000042], it))
    )
    x = np.concatenate([bits, edges, anything, nans]).view(dtype)
    x = np.concatenate([x, -x])
    got = vec(dtype, "tanh")(x).view(it)
    np.testing.assert_array_equal(got, tanh_by_definition(dtype)(x).view(it))


@pytest.mark.parametrize("dtype,p", [(np.float32, 24), (np.float64, 53)], ids=["f32", "f64"])
def test_tanh_saturation_threshold_is_tight(dtype, p):
    """TANH_SAT is the smallest value whose exact tanh rounds to 1 in dtype."""
    sat = NS[dtype].TANH_SAT
    with decimal.localcontext() as ctx:
        ctx.prec = 60

        def rounds_to_one(v):  # 1 - tanh(v) = 2 / (exp(2v) + 1) <= half ulp below 1 (tie -> 1)
            d = decimal.Decimal(float(v))
            return 2 / ((2 * d).exp() + 1) <= decimal.Decimal(2) ** -(p + 1)

        assert rounds_to_one(sat)
        assert not rounds_to_one(np.nextafter(sat, dtype(0)))


def test_make_fpmath_api():
    assert make_fpmath(np.float32) is FP32
    assert make_fpmath("float64") is FP64
    assert make_fpmath(np.dtype(np.float32)) is FP32
    with pytest.raises(ValueError, match="float32 or float64"):
        make_fpmath(np.float16)
    assert FP32.dtype is np.float32 and FP64.dtype is np.float64


# ---------------------------------------------------------------------------
# determinism: golden hashes (identical on every IEEE-754 machine)
# ---------------------------------------------------------------------------

GOLDEN = {
    "float32": "bbd62a23dc605f506c31e578cfbe3724b0198c7474793df27c5b81acc3fb38b5",
    "float64": "ec05a69eee0b199017a42d50fe2715484f37d624bdd5ef72b2e4646e88edf16c",
}


def golden_inputs(dtype):
    grid = np.arange(-8192, 8193, dtype=np.int64).astype(dtype) / dtype(256)
    it = np.uint32 if dtype is np.float32 else np.uint64
    step = 4099 if dtype is np.float32 else 2**44 + 12345
    hi = 2**32 if dtype is np.float32 else 2**64
    bits = np.arange(0, hi - step, step, dtype=np.uint64)[:1_100_000].astype(it).view(dtype)
    return np.concatenate([grid, bits])


def golden_digest(dtype):
    x = golden_inputs(dtype)
    h = hashlib.sha256()
    for name in FUNCS:
        xx = np.abs(x) if name.endswith("_pos") else x
        y = vec(dtype, name)(xx)
        y = np.where(np.isnan(y), dtype(np.nan), y)  # canonical NaN payload
        h.update(name.encode())
        h.update(np.ascontiguousarray(y).view(np.uint8).tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_golden_bits(dtype):
    assert golden_digest(dtype) == GOLDEN[dtype.__name__]


# ---------------------------------------------------------------------------
# codegen: float32 stays float32, no libm, no FMA contraction, vectorised
# ---------------------------------------------------------------------------

tanh32 = FP32.tanh
sigmoid32 = FP32.sigmoid


@njit(**JIT)
def _act_loop32(x, out_t, out_s):
    for i in range(x.size):
        out_t[i] = tanh32(x[i])
        out_s[i] = sigmoid32(x[i])


def _compiled_ir():
    x = np.linspace(-3, 3, 2304).astype(np.float32)
    _act_loop32(x, np.empty_like(x), np.empty_like(x))
    sig = _act_loop32.signatures[0]
    return _act_loop32.inspect_llvm(sig), _act_loop32.inspect_asm(sig)


def test_float32_loop_has_no_double_arithmetic_and_vectorises():
    ir, asm = _compiled_ir()
    for bad in ("fpext", "fptrunc", "fadd double", "fsub double", "fmul double", "fdiv double"):
        assert bad not in ir, bad
    # no libm calls, no fused multiply-add, no fast-math flags
    for bad in ("@tanhf", "@expf", "@expm1f", "@tanh", "@exp", "llvm.fma", "llvm.fmuladd"):
        assert bad not in ir, bad
    assert not re.search(r"\bf(add|sub|mul|div) (fast|contract|reassoc)", ir)
    widths = {int(w) for w in re.findall(r"<(\d+) x float>", ir)}
    assert widths and max(widths) >= 4, "loop calling fpmath tanh/sigmoid did not vectorise"
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert "vfmadd" not in asm and "vfmsub" not in asm and "vfnmadd" not in asm
