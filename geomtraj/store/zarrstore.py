"""The trajectory store (contract 2, schema 1): create, write regions, open and validate.

A store is a zarr v3 group written and read through xarray. geomtraj never uses consolidated
metadata (it is not part of the v3 spec) and stores every trajectory losslessly (Blosc/LZ4 with
byte shuffle: no scale factors, no bit rounding), with a CRC32C checksum per chunk.

Writes follow xarray's documented safe pattern for long runs: the full-size template is created
first (``to_zarr(compute=False)``), then whole chunks are written with ``region=`` slices that align
with chunk boundaries.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
import warnings
from pathlib import Path

import numpy as np
import xarray as xr
from zarr.codecs import BloscCodec, Crc32cCodec

from geomtraj import runtable
from geomtraj.constants import ZARR_CONSOLIDATED
from geomtraj.errors import StoreError
from geomtraj.formats import FORMAT_NAMES, storage_dtype

SCHEMA_VERSION = 1

#: Variables every schema-1 store holds, with their dimensions (contract 2).
REQUIRED_VARIABLES: dict[str, tuple[str, ...]] = {
    "theta": ("run", "step", "param"),
    "m": ("run", "step", "param"),
    "v": ("run", "step", "param"),
    "loss": ("run", "step"),
    # the required fields of the run table (geomtraj.runtable), one value per run
    **{f.name: ("run",) for f in runtable.required_fields()},
}
#: Variables whose ``param`` dimension may also be per run, ``(run, param)``, when runs of different
#: architectures share a store.
PARAM_NAME_DIMS = (("param",), ("run", "param"))

PRECISIONS = FORMAT_NAMES

STATUS_TRAINING = "training"
STATUS_COMPLETE = "complete"

#: Lossless codecs for every array: Blosc/LZ4 with byte shuffle, then a CRC32C checksum of each
#: chunk, so that a damaged chunk is an error on read instead of a silently wrong value (a flipped
#: bit inside a compressed block can still decode). Measured on 16 recorded coordinates of 2,000
#: steps (widths (12,24)), compression ratio and speed per core, LZ4 level 5 against the zstd
#: level 3 used before: float32 theta 1.48x at 1.6 GB/s against 1.29x at 0.52 GB/s, m 1.27x
#: against 1.23x, v 1.33x against 1.30x, the per-update loss 1.53x at 1.4 GB/s against 1.68x at
#: 0.27 GB/s; float64 theta 1.27x against 1.22x. Compressing had set the pace of recording.
COMPRESSORS = (BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"), Crc32cCodec())


def resume_path(path: str | os.PathLike) -> Path:
    """Checkpoint of an unfinished store: a sibling file, so the store itself stays pure zarr."""
    p = Path(path)
    return p.with_name(p.name + ".resume.npz")


#: Largest chunk, in bytes before compression, of a variable written whole when the store is
#: created (the run table, the data sets, the initial parameters).
STATIC_CHUNK_BYTES = 16 * 2**20


def encoding_for(ds: xr.Dataset, chunks: dict[str, int]) -> dict[str, dict]:
    """Zarr encoding: lossless compression for every variable.

    Lazy (dask-backed) variables, filled region by region later, are chunked by ``chunks`` per
    dim. Eager ones are written once, now: they get as few chunks as fit
    :data:`STATIC_CHUNK_BYTES`, split along their first dim, because every chunk is a file and a
    run table cut into run chunks of 8 made creating a 1024-run store write about 2,000 files
    (2.6 s of a 10 s benchmark).
    """
    enc: dict[str, dict] = {}
    for name, var in ds.variables.items():
        e: dict = {"compressors": COMPRESSORS}
        if var.ndim and var.chunks is not None:
            e["chunks"] = tuple(min(chunks.get(d, n), n) or 1 for d, n in var.sizes.items())
        elif var.ndim:
            shape = [max(n, 1) for n in var.shape]
            row_bytes = max(1, var.dtype.itemsize * int(np.prod(shape[1:])))
            shape[0] = max(1, min(shape[0], STATIC_CHUNK_BYTES // row_bytes))
            e["chunks"] = tuple(shape)
        enc[name] = e
    return enc


def create(path: str | os.PathLike, template: xr.Dataset, chunks: dict[str, int]) -> None:
    """Write the metadata and the small eager variables of ``template``; large ones stay lazy.

    Dask-backed variables of ``template`` are not computed: only their metadata is written, and
    their chunks are filled later by :func:`write_region`. The template is built in a hidden
    sibling folder and renamed into place, so ``path`` either does not exist or holds the whole
    template whenever the process is killed (docs/robustness.md).

    Raises
    ------
    StoreError
        If ``path`` already exists.
    """
    p = Path(path)
    remove_partial(p)
    tmp = p.with_name(f"{_PARTIAL_PREFIX}{p.name}.{uuid.uuid4().hex[:12]}")
    try:
        template.to_zarr(
            os.fspath(tmp),
            mode="w-",
            compute=False,
            encoding=encoding_for(template, chunks),
            consolidated=ZARR_CONSOLIDATED,
            zarr_format=3,
        )
        try:
            os.rename(tmp, p)  # atomic on one file system; refuses an existing non-empty folder
        except OSError:
            raise StoreError(
                f"{p} already exists; choose another --out, or --resume to continue it"
            ) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


#: Hidden sibling folders a killed :func:`create` may leave; they are never a store.
_PARTIAL_PREFIX = ".geomtraj-creating."


def remove_partial(path: str | os.PathLike) -> None:
    """Delete the half-built templates that killed creations of ``path`` left beside it."""
    p = Path(path)
    if p.parent.is_dir():
        for left in p.parent.glob(f"{_PARTIAL_PREFIX}{p.name}.*"):
            shutil.rmtree(left, ignore_errors=True)


def write_region(path: str | os.PathLike, part: xr.Dataset, region: dict[str, slice]) -> None:
    """Write ``part`` into an existing store at ``region`` (must align with chunk boundaries)."""
    part = part.drop_vars(
        [c for c in part.coords if c in region or c in part.dims], errors="ignore"
    )
    part.to_zarr(os.fspath(path), region=region, consolidated=ZARR_CONSOLIDATED, zarr_format=3)


def set_attrs(path: str | os.PathLike, *, drop: tuple[str, ...] = (), **attrs) -> None:
    """Update global attributes of an existing store (and delete those named in ``drop``).

    The group's ``zarr.json`` is rewritten beside itself and renamed over the old one, so a kill
    leaves either the old or the new attributes, never a truncated file.
    """
    meta = Path(path) / "zarr.json"
    doc = json.loads(meta.read_text())
    values = doc.setdefault("attributes", {})
    for key in drop:
        values.pop(key, None)
    values.update(attrs)
    tmp = meta.with_name(f"zarr.json.{uuid.uuid4().hex[:12]}.tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    os.replace(tmp, meta)


#: Root attribute of a finished geomtraj store: for every array, a digest of its layout
#: (shape, dtype, chunks, codecs) and each chunk file's CRC32C (the 4 bytes the checksum codec
#: appends) keyed by the chunk's path. It ties each checksum to its array and chunk key, and says
#: which chunk files exist (docs/robustness.md).
CHUNK_CHECKSUMS = "geomtraj_chunk_crc32c"

_LAYOUT_KEYS = ("shape", "data_type", "chunk_grid", "chunk_key_encoding", "codecs", "fill_value")


def _array_dirs(path: Path) -> list[Path]:
    return sorted(d for d in path.iterdir() if d.is_dir() and (d / "zarr.json").is_file())


def _layout(array_dir: Path) -> str | None:
    """Digest of an array's layout metadata; None when its ``zarr.json`` is unreadable."""
    try:
        meta = json.loads((array_dir / "zarr.json").read_text())
        layout = json.dumps({k: meta.get(k) for k in _LAYOUT_KEYS}, sort_keys=True)
    except (OSError, ValueError, AttributeError):
        return None
    return hashlib.sha256(layout.encode()).hexdigest()[:16]


def _chunk_files(array_dir: Path) -> dict[str, str]:
    """``{chunk key: file path}`` of every chunk file under an array's folder."""
    out: dict[str, str] = {}
    root = os.fspath(array_dir)
    for folder, _, files in os.walk(root):
        rel = os.path.relpath(folder, root).replace(os.sep, "/")
        for name in files:
            if name != "zarr.json":
                out[name if rel == "." else f"{rel}/{name}"] = os.path.join(folder, name)
    return out


def _crc_tail(f: str | os.PathLike) -> str | None:
    """The last 4 bytes of a chunk file as hex (its CRC32C), or None when it has fewer."""
    fd = os.open(f, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        return os.pread(fd, 4, size - 4).hex() if size >= 4 else None
    finally:
        os.close(fd)


def chunk_checksums(path: str | os.PathLike) -> dict[str, dict]:
    """``{array: {"layout": digest, "chunks": {key: crc32c hex}}}`` of the store at ``path``.

    Reads 4 bytes per chunk file; keys are sorted, so equal stores give equal tables.
    """
    out: dict[str, dict] = {}
    for d in _array_dirs(Path(path)):
        files = _chunk_files(d)
        out[d.name] = {
            "layout": _layout(d),
            "chunks": {k: _crc_tail(files[k]) or "" for k in sorted(files)},
        }
    return out


def _describe_chunk(path: Path, ds: xr.Dataset | None, var: str, key: str) -> str:
    """``"(runs 0-7, step 101-200)"``: what chunk ``key`` of ``var`` holds ("" if unknown)."""
    try:
        meta = json.loads((path / var / "zarr.json").read_text())
        chunk = meta["chunk_grid"]["configuration"]["chunk_shape"]
        shape, dims = meta["shape"], meta.get("dimension_names") or []
        idx = [int(x) for x in key.split("/" if "/" in key else ".") if x.isdigit()]
        parts = []
        for d, (i, c, n) in enumerate(zip(idx, chunk, shape, strict=False)):
            dim = dims[d] if d < len(dims) else None
            lo, hi = i * c, min((i + 1) * c, n) - 1
            if lo > hi:
                return ""  # (a key outside the array)
            if dim == "run":
                parts.append(f"runs {lo}-{hi}")
            elif dim == var:  # a coordinate: its own values may be the damaged ones
                parts.append(f"{dim} indices {lo}-{hi}")
            elif dim in ("step", "iteration") and ds is not None and dim in ds.coords:
                t = np.asarray(ds[dim].values)
                parts.append(f"{dim} {int(t[lo])}-{int(t[hi])}")
        return f" ({', '.join(parts)})" if parts else ""
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return ""


def _check_checksums(path: Path, recorded, ds: xr.Dataset | None, name: str) -> bool:
    """Every chunk file listed in ``recorded`` is present, in its place, with its checksum.

    Returns whether every array was checked: an array whose layout differs from the recorded
    one was rewritten by another tool (not damage of what training wrote) and is skipped.
    """

    def damaged(what: str) -> StoreError:
        return StoreError(
            f"{name}: {what}; the store is damaged: restore it from a copy or re-train it"
        )

    if not isinstance(recorded, dict):
        raise damaged(f"its attribute {CHUNK_CHECKSUMS} is not a table")
    complete = True
    for var in sorted(recorded):
        entry = recorded[var]
        d = path / var
        if not (d / "zarr.json").is_file():
            raise damaged(f"array {var!r} is missing")
        if not isinstance(entry, dict) or entry.get("layout") != _layout(d):
            complete = False
            continue
        files = _chunk_files(d)
        for key, crc in sorted(entry.get("chunks", {}).items()):
            f = files.pop(key, None)
            where = f"chunk {var}/{key}{_describe_chunk(path, ds, var, key)}"
            if f is None:
                raise damaged(f"{where} is missing")
            got = _crc_tail(f)
            if got is None:
                raise damaged(f"{where} is empty (truncated)")
            if got != crc:
                raise damaged(
                    f"{where} does not match its recorded checksum (truncated, overwritten or "
                    "swapped with another chunk)"
                )
        if files:
            key = sorted(files)[0]
            raise damaged(
                f"chunk {var}/{key}{_describe_chunk(path, ds, var, key)} was not written by "
                "training (moved or copied in)"
            )
    return complete


def read_run_chunk(path: str | os.PathLike) -> int | None:
    """Runs per chunk of an existing store (its ``train_loss`` metadata); None if unreadable."""
    meta = Path(path) / "train_loss" / "zarr.json"
    try:
        shape = json.loads(meta.read_text())["chunk_grid"]["configuration"]["chunk_shape"]
        return int(shape[0])
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None


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


def open_store(
    path: str | os.PathLike, *, allow_incomplete: bool = False, dask: bool = True
) -> xr.Dataset:
    """Open a store lazily, check it against contract 2 and expose the run table as coordinates.

    Any producer's store is read (see ``docs/store-contract.md``): one without a
    ``geomtraj_status`` attribute comes from a producer other than ``geomtraj train`` and is taken
    as complete; only ``geomtraj_status = "training"`` marks an unfinished store. Chunking is the
    producer's choice: variables whose chunks disagree along a dimension (``xarray``'s default
    ``to_zarr`` lets zarr choose each array's chunks) are read with unified chunks.

    The per-run fields (every variable of dims ``(run,)``: hyper-parameters, labels, seeds) become
    coordinates on ``run``, loaded eagerly since they are small, so that xarray's own selection
    works on them: ``ds.sel(run=ds.beta2 == 0.999)``, ``ds.query(run="beta2 > 0.99")``,
    ``ds.groupby("beta2")``.

    With ``dask=False`` the variables are xarray's lazily indexed zarr arrays instead of dask
    arrays: a selection reads only its chunks when its values are asked for, and importing dask
    and building its graph (about 0.4 s of CPU) is skipped. For a command that reads one run,
    such as ``geomtraj plot``; the checks are the same.

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
            f"{p}: zarr store without a geomtraj_schema attribute; not a geomtraj store "
            "(a store of another producer needs the attribute geomtraj_schema = 1, see "
            "docs/store-contract.md)"
        )
    if attrs["geomtraj_schema"] != SCHEMA_VERSION:
        raise StoreError(
            f"{p}: store schema {attrs['geomtraj_schema']!r}, this geomtraj reads schema "
            f"{SCHEMA_VERSION}; use a matching geomtraj version"
        )
    status = attrs.get("geomtraj_status", STATUS_COMPLETE)  # absent: another producer's store
    if not allow_incomplete and status == STATUS_TRAINING:
        producer = attrs.get("geomtraj_producer", "geomtraj.train")
        if producer == "geomtraj.train":
            fix = "resume it with `geomtraj train CONFIG --out STORE --resume`"
        else:
            fix = (
                f"its producer ({producer}) stopped before close(); the chunks written so far "
                "open with open_store(path, allow_incomplete=True)"
            )
        raise StoreError(f"{p}: training did not finish (status {status!r}); {fix}")
    if status not in (STATUS_TRAINING, STATUS_COMPLETE):
        raise StoreError(
            f"{p}: unknown geomtraj_status {status!r}; expected {STATUS_COMPLETE!r} or "
            f"{STATUS_TRAINING!r} (or no such attribute)"
        )
    try:
        ds = xr.open_zarr(
            os.fspath(p),
            consolidated=ZARR_CONSOLIDATED,
            zarr_format=3,
            **({} if dask else {"chunks": None}),
        )
    except Exception as exc:  # zarr raises many types for damaged metadata
        raise StoreError(f"{p}: cannot open as zarr ({type(exc).__name__}: {exc})") from None
    validate(ds, name=str(p))
    return run_table_as_coords(unified_chunks(ds))


def unified_chunks(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with one chunking per dimension.

    Arrays may be chunked differently along a shared dimension: in a geomtraj store the run
    table (one chunk) and the per-run arrays (run-chunks) along ``run``, and in
    another producer's ``theta`` and ``param_name`` along ``param``. That makes whole-Dataset
    operations raise "inconsistent chunks"; :meth:`xarray.Dataset.unify_chunks` splits each dask
    array at the union of the boundaries, so every chunk read still lies inside one on-disk
    chunk. Dask warns that the split makes more chunks; here that is the intent and costs only
    the small run-table reads, so the warning (which reached every user's terminal) is silenced.
    """
    try:
        ds.chunks  # noqa: B018 - raises ValueError when chunks disagree
    except ValueError:
        from dask.array.core import PerformanceWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PerformanceWarning)
            return ds.unify_chunks()
    return ds


def run_table_as_coords(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with every per-run variable (dims ``(run,)``) as an eagerly loaded coordinate."""
    names = [k for k, var in ds.variables.items() if var.dims == ("run",) and k != "run"]
    ds = ds.set_coords(names)
    return ds.assign_coords({k: ds[k].variable.load() for k in names})


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


# ------------------------------------------------------------------ deeper checks (analyze, info)

#: Variables that hold a run's values at every recorded step (or update) before it diverges, so a
#: chunk file of theirs can be missing only where every run of its run block had already diverged.
DATA_VARIABLES = ("theta", "m", "v", "loss", "train_loss", "grad_norm", "update_norm")

#: Container dtype of each precision (emulated formats compute in float32), from the registry.
CONTAINER_DTYPES = {p: storage_dtype(p) for p in FORMAT_NAMES}


def check_integrity(path: str | os.PathLike, ds: xr.Dataset) -> None:
    """Checks beyond :func:`validate` that catch damage a lazy open cannot see.

    ``open_store`` reads only metadata; these checks read the per-run table and list the chunk
    files, without reading trajectories:

    * there are recorded steps;
    * hyper-parameters are valid numbers (a lost chunk of the run table reads as a fill value);
    * trajectories are stored at least as wide as every run's precision (lossless, contract 2);
    * every chunk file is where training wrote it: in a store that carries the table
      :data:`CHUNK_CHECKSUMS`, each chunk file listed there exists and ends with its recorded
      CRC32C (4 bytes read per file), and no other chunk file is present. zarr reads a missing
      chunk as its fill value (NaN, 0, ...), which would silently give wrong numbers, and the
      codec's own checksum does not notice a chunk file moved to another key or array. Stores
      without the table (older or foreign ones) get the weaker test: no chunk file that must
      hold trajectory data is missing or empty.

    Chunks that cannot be decoded are found when they are read (see ``geomtraj.analysis.runner``).

    Raises
    ------
    StoreError
        With a one-line message naming the problem and the fix.
    """
    name = str(path)
    if ds.sizes.get("step", 0) == 0 or ds.sizes.get("run", 0) == 0:
        raise StoreError(
            f"{name}: the store has {ds.sizes.get('run', 0)} runs and "
            f"{ds.sizes.get('step', 0)} recorded steps; nothing to analyse, re-train it"
        )
    recorded = read_attrs(path).get(CHUNK_CHECKSUMS)
    # exact for stores that carry geomtraj's table; older or foreign stores (or arrays another
    # tool rewrote) get the weaker test: chunk files that must hold data exist
    exact = recorded is not None and _check_checksums(Path(path), recorded, ds, name)
    _check_hyper(ds, name)
    _check_storage_dtype(ds, name)
    if not exact:
        _check_chunks(Path(path), ds, name)


def _check_hyper(ds: xr.Dataset, name: str) -> None:
    # every run-table field with a declared range (geomtraj.runtable: betas, lr, eps, weight decay)
    for f in runtable.checked_fields():
        if f.name not in ds.variables:
            continue
        vals = np.asarray(ds[f.name].values, dtype=np.float64)
        bad = np.flatnonzero(~f.valid.contains(vals))
        if bad.size:
            r = int(bad[0])
            raise StoreError(
                f"{name}: run {r} has {f.name}={float(vals[r])!r}, not a valid hyper-parameter "
                f"({len(bad)} run(s) affected); the run table is damaged, restore or re-train it"
            )


def _check_storage_dtype(ds: xr.Dataset, name: str) -> None:
    precisions = strings(ds["precision"])
    need = max(np.dtype(CONTAINER_DTYPES[p]).itemsize for p in precisions)
    for var in DATA_VARIABLES:
        if var not in ds.variables:
            continue
        have = ds[var].dtype
        if have.itemsize < need:
            wide = [np.dtype(CONTAINER_DTYPES[p]).itemsize > 4 for p in precisions]
            r = wide.index(True)
            raise StoreError(
                f"{name}: {var!r} is stored as {have} but run {r} computed in {precisions[r]}, "
                "so its values were rounded when stored (mixed precisions); re-train into a "
                "fresh store, which stores the widest precision present"
            )


def _chunk_file(meta: dict, key: tuple[int, ...]) -> str | None:
    """Relative path of chunk ``key`` under an array's folder, or None for an unknown encoding."""
    enc = meta.get("chunk_key_encoding", {})
    sep = enc.get("configuration", {}).get("separator")
    if enc.get("name") == "default":
        return (sep or "/").join(["c", *map(str, key)])
    if enc.get("name") == "v2":
        return (sep or ".").join(map(str, key))
    return None


def _check_chunks(path: Path, ds: xr.Dataset, name: str) -> None:
    import itertools

    diverged = np.asarray(ds["diverged_step"].values, dtype=np.int64)
    for var in DATA_VARIABLES:
        meta_path = path / var / "zarr.json"
        if var not in ds.variables or not meta_path.is_file():
            continue
        meta = json.loads(meta_path.read_text())
        codecs = [c.get("name") for c in meta.get("codecs", [])]
        if "sharding_indexed" in codecs or meta.get("chunk_grid", {}).get("name") != "regular":
            continue  # geomtraj writes neither; such a store is checked when read
        shape = meta["shape"]
        chunk = meta["chunk_grid"]["configuration"]["chunk_shape"]
        if 0 in shape or _chunk_file(meta, (0,) * len(shape)) is None:
            continue
        time_dim = ds[var].dims[1]
        times = np.asarray(ds[time_dim].values, dtype=np.int64)
        counts = [-(-s // c) for s, c in zip(shape, chunk, strict=True)]
        for i in range(counts[0]):
            block = diverged[i * chunk[0] : (i + 1) * chunk[0]]
            for j in range(counts[1]):
                t0 = int(times[j * chunk[1]])
                # some run of the block is still finite at the chunk's first step: data expected
                if not np.any((block < 0) | (block > t0)):
                    continue
                for rest in itertools.product(*(range(c) for c in counts[2:])):
                    rel = _chunk_file(meta, (i, j, *rest))
                    f = path / var / rel
                    if not f.is_file():
                        what = "missing"
                    elif f.stat().st_size == 0:
                        what = "empty (truncated)"
                    else:
                        continue
                    r1 = min((i + 1) * chunk[0], shape[0]) - 1
                    t1 = int(times[min((j + 1) * chunk[1], shape[1]) - 1])
                    raise StoreError(
                        f"{name}: chunk {var}/{rel} (runs {i * chunk[0]}-{r1}, {time_dim} "
                        f"{t0}-{t1}) is {what}; the store is damaged: restore it from a copy "
                        "or re-train it"
                    )
