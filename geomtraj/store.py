"""The trajectory store (contract 2, schema 1): create, write regions, open and validate.

A store is a zarr v3 group written and read through xarray. geomtraj never uses consolidated
metadata (it is not part of the v3 spec) and stores every trajectory losslessly (Blosc/zstd with
byte shuffle: no scale factors, no bit rounding).

Writes follow xarray's documented safe pattern for long runs: the full-size template is created
first (``to_zarr(compute=False)``), then whole chunks are written with ``region=`` slices that align
with chunk boundaries.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import xarray as xr
from zarr.codecs import BloscCodec

from geomtraj.config import ZARR_CONSOLIDATED
from geomtraj.errors import StoreError

SCHEMA_VERSION = 1

#: Variables every schema-1 store holds, with their dimensions (contract 2).
REQUIRED_VARIABLES: dict[str, tuple[str, ...]] = {
    "theta": ("run", "step", "param"),
    "m": ("run", "step", "param"),
    "v": ("run", "step", "param"),
    "loss": ("run", "step"),
    "beta1": ("run",),
    "beta2": ("run",),
    "lr": ("run",),
    "eps": ("run",),
    "weight_decay": ("run",),
    "precision": ("run",),
    "hidden": ("run",),
    "activation": ("run",),
    "dataset": ("run",),
    "seed": ("run",),
    "n_params": ("run",),
    "twin_of": ("run",),
    "perturbation": ("run",),
    "diverged_step": ("run",),
}
#: Variables whose ``param`` dimension may also be per run, ``(run, param)``, when runs of different
#: architectures share a store.
PARAM_NAME_DIMS = (("param",), ("run", "param"))

PRECISIONS = ("float64", "float32", "bfloat16", "float16")

STATUS_TRAINING = "training"
STATUS_COMPLETE = "complete"

#: Lossless codec for every array.
COMPRESSORS = (BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"),)


def resume_path(path: str | os.PathLike) -> Path:
    """Checkpoint of an unfinished store: a sibling file, so the store itself stays pure zarr."""
    p = Path(path)
    return p.with_name(p.name + ".resume.npz")


def encoding_for(ds: xr.Dataset, chunks: dict[str, int]) -> dict[str, dict]:
    """Zarr encoding: lossless compression for every variable, chunked by ``chunks`` per dim."""
    enc: dict[str, dict] = {}
    for name, var in ds.variables.items():
        e: dict = {"compressors": COMPRESSORS}
        if var.ndim:
            e["chunks"] = tuple(min(chunks.get(d, n), n) or 1 for d, n in var.sizes.items())
        enc[name] = e
    return enc


def create(path: str | os.PathLike, template: xr.Dataset, chunks: dict[str, int]) -> None:
    """Write the metadata and the small eager variables of ``template``; large ones stay lazy.

    Dask-backed variables of ``template`` are not computed: only their metadata is written, and
    their chunks are filled later by :func:`write_region`.
    """
    template.to_zarr(
        os.fspath(path),
        mode="w-",
        compute=False,
        encoding=encoding_for(template, chunks),
        consolidated=ZARR_CONSOLIDATED,
        zarr_format=3,
    )


def write_region(path: str | os.PathLike, part: xr.Dataset, region: dict[str, slice]) -> None:
    """Write ``part`` into an existing store at ``region`` (must align with chunk boundaries)."""
    part = part.drop_vars(
        [c for c in part.coords if c in region or c in part.dims], errors="ignore"
    )
    part.to_zarr(os.fspath(path), region=region, consolidated=ZARR_CONSOLIDATED, zarr_format=3)


def set_attrs(path: str | os.PathLike, **attrs) -> None:
    """Update global attributes of an existing store."""
    import zarr

    group = zarr.open_group(os.fspath(path), mode="r+", zarr_format=3)
    group.attrs.update(attrs)


def read_attrs(path: str | os.PathLike) -> dict:
    meta = Path(path) / "zarr.json"
    try:
        return json.loads(meta.read_text()).get("attributes", {})
    except (OSError, ValueError) as exc:
        raise StoreError(
            f"{path}: cannot read zarr metadata ({exc}); is it a geomtraj store?"
        ) from None


def strings(da: xr.DataArray) -> list[str]:
    """Values of a string variable as Python ``str`` (zarr may return numpy's ``StringDType``)."""
    return [str(x) for x in np.asarray(da.values).ravel().tolist()]


def open_store(path: str | os.PathLike, *, allow_incomplete: bool = False) -> xr.Dataset:
    """Open a geomtraj store lazily and check it against contract 2.

    Raises
    ------
    StoreError
        With a one-line message naming what is wrong and how to fix it.
    """
    p = Path(path)
    if not p.exists():
        raise StoreError(f"{p}: no such store; check the path or train one with `geomtraj train`")
    if not p.is_dir() or not (p / "zarr.json").is_file():
        raise StoreError(
            f"{p}: not a zarr v3 store (no zarr.json); point at a `geomtraj train` output"
        )
    attrs = read_attrs(p)
    if "geomtraj_schema" not in attrs:
        raise StoreError(
            f"{p}: zarr store without a geomtraj_schema attribute; not a geomtraj store"
        )
    if attrs["geomtraj_schema"] != SCHEMA_VERSION:
        raise StoreError(
            f"{p}: store schema {attrs['geomtraj_schema']!r}, this geomtraj reads schema "
            f"{SCHEMA_VERSION}; use a matching geomtraj version"
        )
    if not allow_incomplete and attrs.get("geomtraj_status") != STATUS_COMPLETE:
        raise StoreError(
            f"{p}: training did not finish (status {attrs.get('geomtraj_status')!r}); "
            "resume it with `geomtraj train CONFIG --out STORE --resume`"
        )
    try:
        ds = xr.open_zarr(os.fspath(p), consolidated=ZARR_CONSOLIDATED, zarr_format=3)
    except Exception as exc:  # zarr raises many types for damaged metadata
        raise StoreError(f"{p}: cannot open as zarr ({type(exc).__name__}: {exc})") from None
    validate(ds, name=str(p))
    return ds


def validate(ds: xr.Dataset, name: str = "dataset") -> None:
    """Check ``ds`` against contract 2; raise :class:`StoreError` naming the first problem."""
    missing = [v for v in REQUIRED_VARIABLES if v not in ds.variables]
    if missing:
        raise StoreError(f"{name}: missing variable(s) {', '.join(missing)} required by schema 1")
    for var, dims in REQUIRED_VARIABLES.items():
        if ds[var].dims != dims:
            raise StoreError(f"{name}: variable {var!r} has dims {ds[var].dims}, expected {dims}")
    if "step" not in ds.coords or ds["step"].dims != ("step",):
        raise StoreError(f"{name}: missing the int64 `step` coordinate")
    if "param_name" not in ds.variables or ds["param_name"].dims not in PARAM_NAME_DIMS:
        raise StoreError(f"{name}: missing `param_name` with dims (param,) or (run, param)")
    precisions = set(strings(ds["precision"]))
    unknown = precisions - set(PRECISIONS)
    if unknown:
        raise StoreError(f"{name}: unknown precision(s) {sorted(unknown)}; expected {PRECISIONS}")
    for var in ("theta", "m", "v", "loss"):
        if not np.issubdtype(ds[var].dtype, np.floating):
            raise StoreError(f"{name}: variable {var!r} has dtype {ds[var].dtype}, expected float")
