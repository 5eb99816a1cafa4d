"""The number formats a run can compute in, declared once.

Every module that needs a property of a format (its storage dtype, its rounding, its machine
epsilon, its PyTorch dtype, its line style in figures) reads it from :data:`FORMATS` here; adding a
format is one entry here and, for an emulated format, one rounding function
(docs/formats.md, "Adding a number format").

The native formats compute and store in their own dtype. The emulated formats compute in float32
and round every result to the format at the points listed in :mod:`geomtraj.train.kernels.mlp`;
float32
holds every one of their values exactly, so they are stored as float32 without loss.

This module imports neither numba nor the kernels: the trainer's kernels look the compiled rounding
function up by ``rounder_name`` (:func:`geomtraj.train.kernels.rounding.get_rounder`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class NumberFormat:
    """One number format a run can compute in.

    Attributes
    ----------
    name : str
        The name used in configs, plans and the store's ``precision`` variable.
    storage_dtype : type
        NumPy dtype that holds the format's values in the kernels and in the store.
    significand_bits : int
        Bits of the significand, the implicit leading bit included (``p``: 53, 24, 8, 11).
    exponent_bits : int
        Bits of the exponent field.
    emulated : bool
        True when the format is computed in ``storage_dtype`` and rounded after each operation
        that the kernels round (bfloat16, float16), False for native IEEE arithmetic.
    rounder_name : str
        Name of the ``@njit`` rounding function in :mod:`geomtraj.train.kernels.rounding`.
    torch_dtype : str
        ``str()`` of the matching ``torch.dtype``, for recording PyTorch training.
    line_style : str
        Matplotlib line style that marks runs of this format in figures.
    """

    name: str
    storage_dtype: type
    significand_bits: int
    exponent_bits: int
    emulated: bool
    rounder_name: str
    torch_dtype: str
    line_style: str

    @property
    def compute_dtype(self) -> type:
        """The dtype the kernels compute in: the storage dtype (emulated formats: float32)."""
        return self.storage_dtype

    @property
    def machine_epsilon(self) -> float:
        """Spacing of the format's values at 1, ``2**(1 - p)``."""
        return 2.0 ** (1 - self.significand_bits)

    @property
    def unit_roundoff(self) -> float:
        """Largest relative error of rounding to nearest, ``2**-p`` (half the machine epsilon)."""
        return 2.0 ** (-self.significand_bits)

    @property
    def max_finite(self) -> float:
        """Largest finite value, ``(2 - 2**(1-p)) * 2**emax``."""
        emax = 2 ** (self.exponent_bits - 1) - 1
        return float((2.0 - self.machine_epsilon) * 2.0**emax)


#: Every format, by name, in the order of increasing rounding error.
FORMATS: dict[str, NumberFormat] = {
    f.name: f
    for f in (
        NumberFormat("float64", np.float64, 53, 11, False, "round_identity", "torch.float64", "-"),
        NumberFormat("float32", np.float32, 24, 8, False, "round_identity", "torch.float32", "--"),
        NumberFormat("bfloat16", np.float32, 8, 8, True, "round_bf16", "torch.bfloat16", ":"),
        NumberFormat("float16", np.float32, 11, 5, True, "round_fp16", "torch.float16", "-."),
    )
}

#: Names of the formats, in the order of :data:`FORMATS`.
FORMAT_NAMES: tuple[str, ...] = tuple(FORMATS)


def get_format(name: str) -> NumberFormat:
    """The format called ``name``.

    Raises
    ------
    ValueError
        For a name that is not a format, with the list of formats.
    """
    if not isinstance(name, str) or name not in FORMATS:
        raise ValueError(f"unknown number format {name!r}; expected one of {', '.join(FORMATS)}")
    return FORMATS[name]


def storage_dtype(name: str) -> type:
    """``get_format(name).storage_dtype``."""
    return get_format(name).storage_dtype


def widest_storage_dtype(names) -> np.dtype:
    """The storage dtype that holds every value of the formats ``names`` without loss."""
    return max((np.dtype(storage_dtype(n)) for n in names), key=lambda d: d.itemsize)
