"""Lazy re-exports for the package faces of :mod:`geomtraj.train` and :mod:`geomtraj.store`."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping


def lazy_getattr(package: str, exports: Mapping[str, str]) -> Callable[[str], object]:
    """A module ``__getattr__`` (PEP 562) that loads ``package.<exports[name]>`` on first use.

    A package face can then hand on its submodules' public names without importing them, so
    importing one submodule does not load the others (and their compiled kernels).
    """

    def __getattr__(name: str):
        if name in exports:
            return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
