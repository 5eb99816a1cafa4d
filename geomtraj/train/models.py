"""MLP specification, the flat parameter layout (contract 1) and parameter initialisation.

A network is ``d_in -> h_1 -> ... -> h_L -> 1``. Its parameters form one flat vector, layer by
layer: first ``W_l`` of shape ``(fan_in, fan_out)`` in row-major order, then ``b_l`` of shape
``(fan_out,)``. Names are ``W1[i,j]``, ``b1[j]``, ... with 1-based layers and 0-based indices.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import numpy as np

ACTIVATIONS = ("tanh", "sigmoid", "relu")
LOSSES = ("mse", "bce")

_NAME_RE = re.compile(r"^(W|b)(\d+)\[(\d+)(?:,(\d+))?\]$")


@dataclass(frozen=True)
class MLPSpec:
    """Architecture of one network: input width, hidden widths, activation and loss."""

    d_in: int
    hidden: tuple[int, ...]
    activation: str = "tanh"
    loss: str = "mse"

    def __post_init__(self) -> None:
        if self.d_in < 1:
            raise ValueError(f"d_in must be >= 1, got {self.d_in}")
        if len(self.hidden) < 1 or any(int(h) < 1 for h in self.hidden):
            raise ValueError(
                f"hidden widths must be >= 1 and at least one layer, got {self.hidden}"
            )
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation {self.activation!r} unknown; choose one of {ACTIVATIONS}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss {self.loss!r} unknown; choose one of {LOSSES}")

    @property
    def sizes(self) -> tuple[int, ...]:
        """Layer widths ``(d_in, h_1, ..., h_L, 1)``."""
        return (self.d_in, *self.hidden, 1)

    @property
    def n_layers(self) -> int:
        """Number of weight layers (hidden layers + the linear output layer)."""
        return len(self.hidden) + 1

    @functools.cached_property
    def n_params(self) -> int:
        s = self.sizes
        return sum(s[i] * s[i + 1] + s[i + 1] for i in range(len(s) - 1))

    @property
    def hidden_str(self) -> str:
        return format_hidden(self.hidden)

    def layer_offsets(self) -> list[tuple[int, int, int, int]]:
        """``(w_offset, b_offset, fan_in, fan_out)`` for each layer in the flat vector."""
        out, off, s = [], 0, self.sizes
        for i in range(len(s) - 1):
            fan_in, fan_out = s[i], s[i + 1]
            out.append((off, off + fan_in * fan_out, fan_in, fan_out))
            off += fan_in * fan_out + fan_out
        return out

    def param_names(self) -> list[str]:
        names: list[str] = []
        for layer, (_, _, fan_in, fan_out) in enumerate(self.layer_offsets(), start=1):
            names += [f"W{layer}[{i},{j}]" for i in range(fan_in) for j in range(fan_out)]
            names += [f"b{layer}[{j}]" for j in range(fan_out)]
        return names

    def param_index(self, name: str) -> int:
        """Flat index of a parameter named as in contract 1, e.g. ``"W1[0,3]"``."""
        m = _NAME_RE.match(name.replace(" ", ""))
        if not m:
            raise ValueError(f"parameter name {name!r} is not of the form W<l>[i,j] or b<l>[j]")
        kind, layer, i, j = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)
        offsets = self.layer_offsets()
        if not 1 <= layer <= len(offsets):
            raise ValueError(
                f"parameter {name!r}: layer {layer} does not exist (1..{len(offsets)})"
            )
        w_off, b_off, fan_in, fan_out = offsets[layer - 1]
        if kind == "W":
            if j is None or not (0 <= i < fan_in and 0 <= int(j) < fan_out):
                raise ValueError(
                    f"parameter {name!r} is outside W{layer} of shape ({fan_in},{fan_out})"
                )
            return w_off + i * fan_out + int(j)
        if j is not None or not 0 <= i < fan_out:
            raise ValueError(f"parameter {name!r} is outside b{layer} of shape ({fan_out},)")
        return b_off + i


def parse_hidden(value: str | int | list | tuple) -> tuple[int, ...]:
    """Hidden widths from ``"12x24"``, ``[12, 24]``, ``(12, 24)`` or ``12``."""
    if isinstance(value, int | np.integer):
        widths: tuple[int, ...] = (int(value),)
    elif isinstance(value, str):
        try:
            widths = tuple(int(w) for w in value.lower().split("x"))
        except ValueError:
            raise ValueError(f"hidden widths {value!r} must look like '12x24'") from None
    else:
        widths = tuple(int(w) for w in value)
    if not widths or any(w < 1 for w in widths):
        raise ValueError(f"hidden widths {value!r} must be positive integers")
    return widths


def format_hidden(hidden: tuple[int, ...]) -> str:
    return "x".join(str(h) for h in hidden)


def init_params(spec: MLPSpec, seed: int) -> np.ndarray:
    """Initial parameters in float64, contract-1 layout.

    Weights are Glorot-uniform, ``U(-a, a)`` with ``a = sqrt(6/(fan_in+fan_out))``, drawn layer by
    layer from ``numpy.random.default_rng(seed)`` in row-major order; biases are zero. Runs in
    other precisions start from this vector rounded to their format, so a seed means the same
    network in every precision.
    """
    rng = np.random.default_rng(seed)
    theta = np.zeros(spec.n_params, dtype=np.float64)
    for w_off, _, fan_in, fan_out in spec.layer_offsets():
        a = np.sqrt(6.0 / (fan_in + fan_out))
        theta[w_off : w_off + fan_in * fan_out] = rng.uniform(-a, a, size=fan_in * fan_out)
    return theta
