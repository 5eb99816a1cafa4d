"""Emulated low-precision number formats, computed in float32 containers.

The formats are declared in :data:`geomtraj.formats.FORMATS` (docs/formats.md); ``FORMATS``,
``STORAGE_DTYPE`` and ``ROUNDERS`` here are read from it. A run in format ``fmt`` stores and
computes its values in ``STORAGE_DTYPE[fmt]`` and, for the emulated formats, rounds each result
back to the format with ``ROUNDERS[fmt]`` (an ``@njit`` scalar function ``float32 -> float32``):

* ``round_bf16(x)`` -- nearest bfloat16 value (8-bit significand), ties to even,
  by the bit trick ``(u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000`` on the float32
  pattern ``u``.  The carry out of the mantissa increments the exponent, so values
  at or beyond the midpoint between the largest bfloat16 (``0x7F7F``,
  3.3895e38) and 2**128 become ``inf``; ``inf`` stays ``inf``; float32 subnormals
  round to bfloat16 subnormals (ml_dtypes semantics).
* ``round_fp16(x)`` -- nearest IEEE binary16 value, ties to even: for
  ``|x| >= 2**-14`` (normal half range) the same bit trick dropping 13 mantissa
  bits; for ``|x| < 2**-14`` ``(|x| + 0.5) - 0.5``, which rounds ``|x|`` to a
  multiple of 2**-24 (the float32 ulp in [0.5, 1) equals the half subnormal
  quantum; float32 RNE on ``0.5 + m*2**-24`` ties to even ``m``) with the sign
  restored from the bits (so ``-0.0`` and tiny negatives give ``-0.0``).
  ``|r| > 65504`` (i.e. ``|x| >= 65520``) becomes ``+-inf``.
* ``round_identity(x)`` -- returns ``x`` (native float32/float64 runs).

NaN input gives the canonical quiet NaN with the input's sign (``0x7FC00000`` /
``0xFFC00000``) for both emulated formats.  All rounders are branch-free (selects
only), so loops calling them vectorise, and are exactly equal to
``x.astype(np.float16).astype(np.float32)`` resp. ``ml_dtypes.bfloat16`` for
every non-NaN float32 (tested on random bit patterns and edge cases).

NumPy side (plain vectorised Python for use outside kernels):
``round_to_format(a, fmt)`` and ``nextafter_format(x, n, fmt)``; unknown format
names raise ``ValueError``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from geomtraj.constants import TRAIN_JIT
from geomtraj.formats import FORMAT_NAMES
from geomtraj.formats import FORMATS as _REGISTRY

__all__ = [
    "FORMATS",
    "ROUNDERS",
    "STORAGE_DTYPE",
    "get_rounder",
    "nextafter_format",
    "round_bf16",
    "round_fp16",
    "round_identity",
    "round_to_format",
]

# fastmath=False, error_model="numpy" (no fused multiply-add, no reassociation, IEEE division)
_JIT = TRAIN_JIT

#: Format names and storage dtypes, from the registry :data:`geomtraj.formats.FORMATS`.
FORMATS = FORMAT_NAMES
STORAGE_DTYPE = {f.name: f.storage_dtype for f in _REGISTRY.values()}

# --- constants (typed, so njit code stays in 32-bit integer/float arithmetic) ---
_SIGN = np.uint32(0x80000000)
_ABS = np.uint32(0x7FFFFFFF)
_QNAN = np.uint32(0x7FC00000)
_BF16_KEEP = np.uint32(0xFFFF0000)
_BF16_HALF_M1 = np.uint32(0x7FFF)
_BF16_SHIFT = np.uint32(16)
_FP16_KEEP = np.uint32(0xFFFFE000)
_FP16_HALF_M1 = np.uint32(0x0FFF)
_FP16_SHIFT = np.uint32(13)
_ONE_U = np.uint32(1)
_FP16_MIN_NORMAL = np.float32(2.0**-14)
_FP16_MAX = np.float32(65504.0)
_F32_HALF = np.float32(0.5)
_INF_U = np.uint32(0x7F800000)


def _check_format(fmt) -> str:
    if not isinstance(fmt, str) or fmt not in STORAGE_DTYPE:
        raise ValueError(f"unknown number format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return fmt


@njit(**_JIT)
def round_identity(x):
    """Return ``x`` unchanged (rounder of the native float32/float64 formats)."""
    return x


@njit(**_JIT)
def round_bf16(x):
    """Round a float32 to the nearest bfloat16 value (ties to even), as float32."""
    xf = np.float32(x)
    u = xf.view(np.uint32)
    r = np.uint32(np.uint32(u + _BF16_HALF_M1 + ((u >> _BF16_SHIFT) & _ONE_U)) & _BF16_KEEP).view(
        np.float32
    )
    nan = np.uint32(_QNAN | (u & _SIGN)).view(np.float32)
    return r if xf == xf else nan


@njit(**_JIT)
def round_fp16(x):
    """Round a float32 to the nearest IEEE binary16 value (ties to even), as float32."""
    xf = np.float32(x)
    u = xf.view(np.uint32)
    sign = np.uint32(u & _SIGN)
    ax = np.uint32(u & _ABS).view(np.float32)
    # normal half range: drop 13 mantissa bits, RNE via the carry trick
    rn = np.uint32(np.uint32(u + _FP16_HALF_M1 + ((u >> _FP16_SHIFT) & _ONE_U)) & _FP16_KEEP).view(
        np.float32
    )
    # subnormal half range: float32 addition rounds |x| to a multiple of 2**-24
    sub = (ax + _F32_HALF) - _F32_HALF
    rs = np.uint32(np.float32(sub).view(np.uint32) | sign).view(np.float32)
    r = rn if ax >= _FP16_MIN_NORMAL else rs
    inf = np.uint32(_INF_U | sign).view(np.float32)
    r = inf if abs(r) > _FP16_MAX else r
    nan = np.uint32(_QNAN | sign).view(np.float32)
    return r if xf == xf else nan


#: The rounding function of each format, named by the registry (``NumberFormat.rounder_name``).
ROUNDERS = {f.name: globals()[f.rounder_name] for f in _REGISTRY.values()}


def get_rounder(fmt: str):
    """``ROUNDERS[fmt]`` with a clear ``ValueError`` for unknown formats."""
    return ROUNDERS[_check_format(fmt)]


# ----------------------------------------------------------------------------
# NumPy side
# ----------------------------------------------------------------------------


def _np_round_bf16(a: np.ndarray) -> np.ndarray:
    u = a.view(np.uint32)
    r = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) & _BF16_KEEP
    r = np.where(np.isnan(a), _QNAN | (u & _SIGN), r).astype(np.uint32)
    return r.view(np.float32)


def _np_round_fp16(a: np.ndarray) -> np.ndarray:
    u = a.view(np.uint32)
    sign = u & _SIGN
    ax = np.abs(a)
    rn = (u + np.uint32(0x0FFF) + ((u >> np.uint32(13)) & np.uint32(1))) & _FP16_KEEP
    rs = ((ax + _F32_HALF) - _F32_HALF).view(np.uint32) | sign
    r = np.where(ax >= _FP16_MIN_NORMAL, rn, rs).astype(np.uint32).view(np.float32)
    r = np.where(np.abs(r) > _FP16_MAX, (_INF_U | sign).view(np.float32), r)
    r = np.where(np.isnan(a), (_QNAN | sign).view(np.float32), r)
    return r.astype(np.float32, copy=False)


#: The NumPy twin of each kernel rounder (bit for bit the same results), by rounder name.
_NP_ROUNDERS = {"round_bf16": _np_round_bf16, "round_fp16": _np_round_fp16}


def round_to_format(a, fmt: str) -> np.ndarray:
    """Round an array to the values of number format ``fmt`` (a new array).

    ``float64``/``float32``: a copy cast to that dtype.  ``bfloat16``/``float16``:
    float32 array holding the nearest (ties-to-even) value of the format, bit-for-bit
    what ``ROUNDERS[fmt]`` computes in a kernel.  Input that is not float32 is first
    cast to float32 (note: float64 -> float32 -> format is a double rounding).
    """
    _check_format(fmt)
    # signalling NaNs raise "invalid" in casts/additions; NaN handling is explicit
    with np.errstate(invalid="ignore", over="ignore"):
        if not _REGISTRY[fmt].emulated:
            return np.array(a, dtype=STORAGE_DTYPE[fmt], copy=True)
        a32 = np.array(a, dtype=np.float32, copy=True)
        a1 = np.atleast_1d(a32)
        r = _NP_ROUNDERS[_REGISTRY[fmt].rounder_name](a1)
    return r.reshape(a32.shape)


# half-width bit patterns of the emulated formats: bits of +inf (all exponent bits set)
_INF16 = {
    f.name: (2**f.exponent_bits - 1) << (f.significand_bits - 1)
    for f in _REGISTRY.values()
    if f.emulated
}


def _to_bits16(v32: np.ndarray, fmt: str) -> np.ndarray:
    if fmt == "bfloat16":
        return (v32.view(np.uint32) >> np.uint32(16)).astype(np.int64)
    return v32.astype(np.float16).view(np.uint16).astype(np.int64)


def _from_bits16(b: np.ndarray, fmt: str) -> np.ndarray:
    if fmt == "bfloat16":
        return (b.astype(np.uint32) << np.uint32(16)).view(np.float32)
    return b.astype(np.uint16).view(np.float16).astype(np.float32)


def nextafter_format(x, n: int, fmt: str):
    """Move ``x`` by ``n`` units in the last place of format ``fmt``.

    ``x`` is first rounded to the format (``round_to_format``); then the result
    is the ``|n|``-th representable neighbour above (``n > 0``) or below (``n < 0``).
    ``+-0`` steps to the smallest subnormal in the direction of ``n``, the largest
    finite value steps to ``inf``, ``inf`` stays ``inf`` going outward, NaN stays
    NaN -- as repeated ``np.nextafter`` towards ``+-inf`` does.  ``n = 0`` just
    rounds.

    Returns the format's storage dtype (float64, float32; float32 holding the
    emulated value for bfloat16/float16); an array for array input, a NumPy
    scalar for scalar input.
    """
    _check_format(fmt)
    if int(n) != n:
        raise ValueError(f"nextafter_format: n must be an integer, got {n!r}")
    n = int(n)
    scalar = np.ndim(x) == 0
    v = np.atleast_1d(round_to_format(x, fmt))
    if not _REGISTRY[fmt].emulated:
        dt = STORAGE_DTYPE[fmt]
        target = dt(np.inf) if n > 0 else dt(-np.inf)
        with np.errstate(over="ignore"):  # max -> inf is the intended result
            for _ in range(abs(n)):
                v = np.nextafter(v, target)
        out = v
    else:
        inf = _INF16[fmt]
        b = _to_bits16(v, fmt)
        # sign-magnitude -> ordered integer (+0 and -0 both map to 0)
        neg = (b & 0x8000) != 0
        o = np.where(neg, -(b & 0x7FFF), b) + n
        o = np.clip(o, -inf, inf)
        b2 = np.where(o < 0, 0x8000 | (-o), o)
        out = _from_bits16(b2, fmt)
        out = np.where(np.isnan(v), v, out).astype(np.float32)
    return out[0] if scalar else out
