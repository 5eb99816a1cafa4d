"""Portable, deterministic elementary functions for numba kernels.

Why this module exists
----------------------
``math.tanh``/``math.exp`` inside an ``@njit`` kernel compile to calls into the
platform libm (or to LLVM intrinsics lowered to libm/SVML calls).  Their results
can differ in the last bit between machines and library versions, and a libm
call inside a loop stops LLVM from vectorising that loop.  The functions here
are built *only* from IEEE-754 basic operations (``+ - * /``, comparisons that
LLVM turns into ``select``, and bit reinterpretation between a float and the
integer of the same width), all of which are correctly rounded by IEEE-754.
Without fastmath, LLVM may not reassociate or contract them into FMAs, so the
results are bit-for-bit identical on every IEEE-754 machine (scalar and
vectorised code included), and the loop calling them vectorises.

API
---
``make_fpmath(dtype)`` with ``dtype`` in ``(np.float32, np.float64)`` returns a
``types.SimpleNamespace`` of ``@njit`` scalar functions that compute in and
return ``dtype`` (the argument is first converted to ``dtype``; every internal
constant is of ``dtype``, so float32 code contains no float64 arithmetic):

* ``exp_pos(a)``   -- ``exp(a)`` for ``a >= 0`` (``+inf`` on overflow, NaN propagates;
  undefined for ``a < 0``).
* ``expm1_pos(a)`` -- ``exp(a) - 1`` for ``a >= 0``, accurate for tiny ``a``.
* ``tanh(x)``      -- all ``x``; ``tanh(+-0) = +-0``, ``tanh(+-inf) = +-1``, NaN -> NaN.
* ``sigmoid(x)``   -- ``1 / (1 + exp(-x))`` for all ``x``; NaN -> NaN.

The namespace also carries ``dtype``, ``TANH_SAT`` and ``EXP_CLAMP``.  The
factory is memoised, and ``FP32``/``FP64`` are the two ready-made namespaces.

Algorithm
---------
``exp``/``expm1`` (``a >= 0``): the argument is clamped to ``EXP_CLAMP``
(89 for float32, 710 for float64 -- beyond ``ln(max)`` so the clamped value
still overflows to ``inf``; NaN is clamped too and re-selected at the end, so no
integer conversion ever sees a NaN).  ``k = round(a / ln2)`` is obtained with
the "shifter" trick ``t = a * (1/ln2) + 1.5 * 2**p`` (p = 23 or 52): ``t - shifter``
is ``k`` as a float and the low bits of ``t`` hold ``k`` as an integer, so there
is no float->int conversion at all.  Cody-Waite reduction
``r = (a - k*LN2_HI) - k*LN2_LO`` uses the fdlibm splits of ln 2 (``LN2_HI`` has
15 resp. 32 significant bits, so ``k*LN2_HI`` is exact for ``k <= 128`` resp.
``k <= 1024`` and the subtraction is exact by Sterbenz); ``|r| <= ~ln2/2``.
``expm1(r) = r + r*r*q(r)`` with ``q`` the Taylor series ``sum r**(n-2)/n!``,
``n = 2..8`` (float32, truncation < 6e-10 relative) or ``n = 2..14`` (float64,
truncation < 3e-19 relative), evaluated by Horner.  Then

* ``exp(a)   = ((1 + em) * 2) * 2**(k-1)``
* ``expm1(a) = (p * 2) * 2**(k-1)`` with ``p = em + (1 - 2**-k)`` for
  ``k <= 24`` (float32) / ``53`` (float64), where ``1 - 2**-k`` is exact -- this
  is ``2**k*em + (2**k - 1)`` without cancellation, and just ``em`` for
  ``k = 0`` -- and ``p = (em - 2**-k) + 1`` for larger ``k`` (both computed,
  one selected; ``k`` capped at 100 / 1000 for building ``2**-k``)

where the powers of two are built from exponent bits.  Splitting off one factor
2 keeps ``2**(k-1)`` representable for ``k = 128`` (float32) / ``1024`` (float64);
the final multiplication overflows to ``inf`` exactly when the result does.

``tanh(x) = copysign(em / (em + 2), x)`` with ``em = expm1_pos(2|x|)``;
``|x| >= TANH_SAT`` returns exactly ``+-1``, where ``TANH_SAT`` is the smallest
value whose exact tanh rounds to 1: ``0.5*ln(2**26 - 1) -> 9.010914`` (float32),
``0.5*ln(2**55 - 1) -> 19.061547465398498`` (float64).  Below ``TANH_SAT``,
``2|x|`` needs neither the clamp nor the cap of ``k`` (``k <= 26``, float64 55), and a NaN
argument is the only NaN any of its operations meets, so tanh uses
an ``expm1`` without the clamp, the cap and the NaN select, which also scales
by ``2**k`` in one exact multiplication: the same bits (all 2**32 float32
arguments compared) in four fewer vector operations of about 45.

``sigmoid(x) = 1 / (1 + y)`` with ``E = exp_pos(|x|)``, ``y = 1/E`` for ``x >= 0``
and ``y = E`` for ``x < 0`` -- no cancellation; ``E = inf`` gives exactly 1 / 0.
Consequence: for float32 ``x < -88.72`` (float64 ``x < -709.78``) the result is
0 instead of the (subnormal) true value, an absolute error < 2**-126 (2**-1022).

Every function is branch-free (comparisons become ``select``), has no loops
and no calls, so LLVM inlines the chain into the calling loop and vectorises it.
Decorator flags come from ``geomtraj.constants.TRAIN_JIT`` (``fastmath=False``,
``error_model="numpy"``).

Measured accuracy
-----------------
Max error in ulps of the exact result (normal results only).  float32:
*exhaustive* over every float32 argument (all ``a >= 0`` below the overflow
threshold for exp/expm1, all ``0 <= x < TANH_SAT`` for tanh, both signs for
sigmoid; tanh is odd by construction), against float64 libm.  float64: 6e7
random arguments (uniform [0, 1], log-uniform [1e-6, 20], uniform [0, 709],
both signs for sigmoid) against x87 80-bit long double:

===========  ==================  =========================
function     float32 (all args)  float64 (6e7 random args)
===========  ==================  =========================
exp_pos      0.947 ulp           0.950 ulp
expm1_pos    1.450 ulp           1.969 ulp
tanh         2.424 ulp           2.518 ulp
sigmoid      2.481 ulp           2.363 ulp
===========  ==================  =========================

The worst cases of expm1 are ``k = 1`` (``a ~ 0.35-0.37``; ``em + 1/2`` with
``em ~ -0.29`` amplifies the polynomial error ~1.4x), of tanh small/medium
``|x|`` (three roundings: expm1, ``em + 2``, the division), of sigmoid
``x ~ -16.6`` (f32) / ``-36.8`` (f64).  Overflow to ``inf`` of exp/expm1 happens
at exactly the correctly rounded threshold (tested).  ``tests/test_fpmath.py``
asserts ``<= 1.0 / 2.5 / 3.0 / 3.0`` ulp on a 1.5e6-point sample, the special
values, and golden SHA-256 digests of ~1e6 results per dtype (identical on
numba 0.68.1/numpy 2.4/py3.11 and numba 0.68.0/numpy 2.5/py3.12 hosts).

Speed and vectorisation
-----------------------
An ``@njit`` loop ``out[i] = FP32.tanh(x[i])`` over 2304 float32 elements
(x ~ N(0, 2)), best of several runs on the 2-core AVX-512 Xeon dev box:
fpmath ``tanh`` 0.63 ns/element (0.74 through ``expm1_pos``; ``sigmoid`` 0.65 ns,
float64 ``tanh`` 2.3 ns), versus ``math.tanh`` (same for ``np.tanh``) 10 ns/element -- numba
lowers it to ``llvm.tanh.v8f32``, which LLVM scalarises into eight ``tanhf``
libm calls.  The fpmath loop's LLVM IR is vectorised (``<8 x float>``; LLVM
prefers 256-bit vectors on this CPU) and contains no ``double``, no ``fpext``,
no libm call and no ``fma``/``fmuladd`` (tested).
"""

from __future__ import annotations

import functools
import math
from types import SimpleNamespace

import numpy as np
from numba import njit

from geomtraj.constants import TRAIN_JIT

__all__ = ["make_fpmath", "FP32", "FP64"]

# fastmath=False, error_model="numpy" (no fused multiply-add, no reassociation, IEEE division)
_JIT = TRAIN_JIT


@functools.cache
def _make_fpmath(ftype: type) -> SimpleNamespace:
    if ftype is np.float32:
        itype = np.int32
        MANT = np.int64(23)  # explicit mantissa bits
        BIAS = np.int64(127)
        SHIFTER = np.float32(1.5 * 2.0**23)
        LN2_HI = np.uint32(0x3F317200).view(np.float32)  # 0.693145751953125
        LN2_LO = np.uint32(0x35BFBE8E).view(np.float32)  # 1.4286067653e-06
        EXP_CLAMP = np.float32(89.0)  # > ln(FLT_MAX) = 88.7228...
        KEXACT = np.int64(24)  # 1 - 2**-k is exact in float32 for k <= 24
        KCAP = np.int64(100)  # 2**-k is irrelevant beyond (and stays normal)
        TANH_SAT = np.uint32(0x41102CB4).view(np.float32)  # 9.010914
        # Taylor coefficients of q(r) = (expm1(r) - r) / r**2, n = 2..8
        C = [np.float32(1.0 / math.factorial(n)) for n in range(2, 9)]
    elif ftype is np.float64:
        itype = np.int64
        MANT = np.int64(52)
        BIAS = np.int64(1023)
        SHIFTER = np.float64(1.5 * 2.0**52)
        LN2_HI = np.float64(float.fromhex("0x1.62e42feep-1"))
        LN2_LO = np.float64(float.fromhex("0x1.a39ef35793c76p-33"))
        EXP_CLAMP = np.float64(710.0)  # > ln(DBL_MAX) = 709.78...
        KEXACT = np.int64(53)
        KCAP = np.int64(1000)
        TANH_SAT = np.float64(float.fromhex("0x1.30fc1931f09cap+4"))  # 19.0615...
        C = [np.float64(1.0 / math.factorial(n)) for n in range(2, 15)]
    else:  # pragma: no cover - guarded by make_fpmath
        raise ValueError(ftype)

    ZERO = ftype(0.0)
    ONE = ftype(1.0)
    TWO = ftype(2.0)
    INV_LN2 = ftype(1.0 / math.log(2.0))
    SHIFTER_BITS = np.int64(SHIFTER.view(itype))

    if ftype is np.float32:
        C2, C3, C4, C5, C6, C7, C8 = C

        @njit(**_JIT)
        def _expm1_poly(r):
            """expm1(r) for |r| <= ~0.35 (float32, degree 8)."""
            q = C8
            q = q * r + C7
            q = q * r + C6
            q = q * r + C5
            q = q * r + C4
            q = q * r + C3
            q = q * r + C2
            return r + (r * r) * q

    else:
        C2, C3, C4, C5, C6, C7, C8, C9, C10, C11, C12, C13, C14 = C

        @njit(**_JIT)
        def _expm1_poly(r):
            """expm1(r) for |r| <= ~0.35 (float64, degree 14)."""
            q = C14
            q = q * r + C13
            q = q * r + C12
            q = q * r + C11
            q = q * r + C10
            q = q * r + C9
            q = q * r + C8
            q = q * r + C7
            q = q * r + C6
            q = q * r + C5
            q = q * r + C4
            q = q * r + C3
            q = q * r + C2
            return r + (r * r) * q

    @njit(**_JIT)
    def _pow2(k):
        """2**k from exponent bits; k (int64) must be in the normal range."""
        return itype((k + BIAS) << MANT).view(ftype)

    @njit(**_JIT)
    def _reduce(a):
        """Clamp a (NaN/inf -> EXP_CLAMP) and return (k, r, em = expm1(r))."""
        aa = a if a < EXP_CLAMP else EXP_CLAMP
        t = aa * INV_LN2 + SHIFTER
        kf = t - SHIFTER
        k = np.int64(ftype(t).view(itype)) - SHIFTER_BITS
        r = (aa - kf * LN2_HI) - kf * LN2_LO
        return k, r, _expm1_poly(r)

    @njit(**_JIT)
    def exp_pos(x):
        """exp(x) for x >= 0 (inf on overflow, NaN propagates)."""
        a = ftype(x)  # compute in dtype whatever the caller passes
        k, r, em = _reduce(a)
        p = ONE + em
        res = (p + p) * _pow2(k - np.int64(1))
        return res if a == a else a

    @njit(**_JIT)
    def expm1_pos(x):
        """exp(x) - 1 for x >= 0 (inf on overflow, NaN propagates)."""
        a = ftype(x)  # compute in dtype whatever the caller passes
        k, r, em = _reduce(a)
        kc = k if k < KCAP else KCAP
        tk = _pow2(-kc)  # 2**-k
        # 1 - 2**-k is exact for k <= KEXACT; beyond, subtract 2**-k from em first
        p = em + (ONE - tk) if k <= KEXACT else (em - tk) + ONE
        res = (p + p) * _pow2(k - np.int64(1))
        return res if a == a else a

    @njit(**_JIT)
    def _expm1_tanh(a):
        """``expm1_pos(a)`` for tanh: the same operations, bit for bit, without what
        ``0 <= a < 2*TANH_SAT`` never needs (there ``k <= 26``, float64 55): no clamp of ``a``,
        no cap of ``k``, no NaN select. A NaN argument still comes out as the same NaN, because
        it is the only NaN any operation meets (``2**j`` built from exponent bits is never
        NaN); larger ``a`` give values that tanh replaces by 1. The integers stay far from
        overflow for every float32 argument, and wrap (no undefined behaviour) for float64.
        """
        t = a * INV_LN2 + SHIFTER
        kf = t - SHIFTER
        k = np.int64(ftype(t).view(itype)) - SHIFTER_BITS
        r = (a - kf * LN2_HI) - kf * LN2_LO
        em = _expm1_poly(r)
        tk = _pow2(-k)
        p = em + (ONE - tk) if k <= KEXACT else (em - tk) + ONE
        return p * _pow2(k)  # (== (p + p) * 2**(k-1): both exact for these k)

    @njit(**_JIT)
    def tanh(x):
        """tanh(x); exactly +-1 for |x| >= TANH_SAT, tanh(-0) = -0, NaN -> NaN."""
        xf = ftype(x)  # compute in dtype whatever the caller passes
        ax = abs(xf)
        em = _expm1_tanh(ax + ax)
        t = em / (em + TWO)
        t = ONE if ax >= TANH_SAT else t
        return math.copysign(t, xf)

    @njit(**_JIT)
    def sigmoid(x):
        """1 / (1 + exp(-x)); exactly 1 / 0 where exp(|x|) overflows, NaN -> NaN."""
        xf = ftype(x)  # compute in dtype whatever the caller passes
        e = exp_pos(abs(xf))
        y = ONE / e if xf >= ZERO else e
        return ONE / (ONE + y)

    return SimpleNamespace(
        dtype=ftype,
        exp_pos=exp_pos,
        expm1_pos=expm1_pos,
        tanh=tanh,
        sigmoid=sigmoid,
        TANH_SAT=TANH_SAT,
        EXP_CLAMP=EXP_CLAMP,
    )


def make_fpmath(dtype) -> SimpleNamespace:
    """Return the namespace of njit elementary functions for ``dtype``.

    ``dtype`` may be ``np.float32``/``np.float64`` or anything ``np.dtype``
    accepts for them.  The result is memoised per dtype.
    """
    ftype = np.dtype(dtype).type
    if ftype not in (np.float32, np.float64):
        raise ValueError(f"make_fpmath: dtype must be float32 or float64, got {np.dtype(dtype)}")
    return _make_fpmath(ftype)


FP32 = make_fpmath(np.float32)
FP64 = make_fpmath(np.float64)
