"""geomtraj: optimizer trajectories of tiny networks in finite-precision arithmetic."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("geomtraj")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.1.0"

# Registers the ``ds.geomtraj`` xarray accessor (it imports only xarray until a method is called).
from geomtraj import accessor as _accessor  # noqa: E402, F401

__all__ = ["__version__"]
