"""Record any trainer's trajectories into a schema-1 store (see ``docs/store-contract.md``).

Two producers besides ``geomtraj train``:

* :class:`TorchRecorder` records a PyTorch ``Adam``/``AdamW`` loop while it trains, chunk by chunk::

      with TorchRecorder("run.zarr", optimizer, model=model, record_params=16) as rec:
          for batch in batches:
              optimizer.zero_grad()
              loss = loss_fn(model(x), y)
              loss.backward()
              optimizer.step()
              rec.step(loss)

* :func:`write_store` writes a store from NumPy arrays (a JAX/optax or hand-rolled loop), and
  :func:`combine_stores` joins single-run stores (seeds, settings) into one.

The stores these write open with :func:`geomtraj.store.open_store` and are analysed by
``geomtraj analyze`` like the trainer's own.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from geomtraj import runtable
from geomtraj.constants import ZARR_CONSOLIDATED
from geomtraj.errors import GeomtrajError
from geomtraj.formats import FORMATS
from geomtraj.store.zarrstore import (
    COMPRESSORS,
    CONTAINER_DTYPES,
    PRECISIONS,
    SCHEMA_VERSION,
    STATUS_COMPLETE,
    STATUS_TRAINING,
    encoding_for,
    open_store,
    set_attrs,
    validate,
)

__all__ = ["TorchRecorder", "combine_stores", "dataset_from_arrays", "write_store"]

#: Per-run fields of the run table and their NumPy dtypes (contract 2).
_RUN_TABLE = {f.name: f.dtype for f in runtable.required_fields()}

#: Updates whose per-update values the recorder keeps as tensors before packing them into NumPy.
PACK_UPDATES = 64
#: ... or fewer, so that their full theta|m|v rows take at most this many bytes.
BLOCK_BYTES = 16 * 2**20


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("geomtraj")
    except PackageNotFoundError:
        return "unknown"


def _per_run(value, n_runs: int, dtype, name: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim == 0:
        arr = np.full(n_runs, arr.item() if dtype is not str else str(arr.item()), dtype=object)
    if arr.shape != (n_runs,):
        raise GeomtrajError(
            f"{name}: expected a scalar or {n_runs} per-run values, got {arr.shape}"
        )
    if dtype is str:
        return np.array([str(x) for x in arr.tolist()], dtype=object)  # zarr: variable-length
    return arr.astype(dtype)


def _first_divergence(loss: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """First step of each run whose loss is not finite, or -1."""
    bad = ~np.isfinite(loss)
    first = np.where(bad.any(axis=1), steps[np.argmax(bad, axis=1)], -1)
    return first.astype(np.int64)


def dataset_from_arrays(
    theta: np.ndarray,
    m: np.ndarray,
    v: np.ndarray,
    loss: np.ndarray,
    *,
    beta1: float | Sequence[float],
    beta2: float | Sequence[float],
    lr: float | Sequence[float],
    eps: float | Sequence[float],
    weight_decay: float | Sequence[float] = 0.0,
    step: Sequence[int] | None = None,
    param_name: Sequence[str] | None = None,
    precision: str | Sequence[str] | None = None,
    hidden: str | Sequence[str] = "",
    activation: str | Sequence[str] = "",
    dataset: str | Sequence[str] = "",
    seed: int | Sequence[int] = 0,
    n_params: int | Sequence[int] | None = None,
    diverged_step: int | Sequence[int] | None = None,
    train_loss: np.ndarray | None = None,
    grad_norm: np.ndarray | None = None,
    update_norm: np.ndarray | None = None,
    iteration: Sequence[int] | None = None,
    extra: Mapping[str, Any] | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """A schema-1 Dataset, in memory, from NumPy arrays (see :func:`write_store`)."""
    theta = np.asarray(theta)
    if theta.ndim == 2:  # one run
        theta, m, v, loss = (np.asarray(a)[None] for a in (theta, m, v, loss))
        train_loss, grad_norm, update_norm = (
            None if a is None else np.asarray(a)[None] for a in (train_loss, grad_norm, update_norm)
        )
    m, v, loss = np.asarray(m), np.asarray(v), np.asarray(loss)
    if theta.ndim != 3:
        raise GeomtrajError(
            f"theta: expected (step, param) or (run, step, param), got {theta.shape}"
        )
    n_runs, n_rows, width = theta.shape
    for name, arr in (("m", m), ("v", v)):
        if arr.shape != theta.shape:
            raise GeomtrajError(f"{name}: shape {arr.shape} differs from theta's {theta.shape}")
    if loss.shape != (n_runs, n_rows):
        raise GeomtrajError(f"loss: expected shape {(n_runs, n_rows)}, got {loss.shape}")
    steps = np.arange(1, n_rows + 1) if step is None else np.asarray(step, dtype=np.int64)
    if steps.shape != (n_rows,) or np.any(np.diff(steps) <= 0):
        raise GeomtrajError(f"step: expected {n_rows} increasing update counts")
    if precision is None:
        precision = "float64" if theta.dtype == np.float64 else "float32"
    precisions = _per_run(precision, n_runs, str, "precision")
    unknown = set(precisions) - set(PRECISIONS)
    if unknown:
        raise GeomtrajError(f"precision: unknown {sorted(unknown)}; expected one of {PRECISIONS}")
    # stored losslessly in the widest precision present (contract 2)
    store_dtype = max((np.dtype(CONTAINER_DTYPES[p]) for p in precisions), key=lambda d: d.itemsize)
    store_dtype = np.promote_types(store_dtype, theta.dtype if theta.dtype.kind == "f" else "f4")
    names = [f"p[{j}]" for j in range(width)] if param_name is None else list(param_name)
    if len(names) != width:
        raise GeomtrajError(f"param_name: {len(names)} names for {width} recorded parameters")
    table = {
        "beta1": beta1, "beta2": beta2, "lr": lr, "eps": eps, "weight_decay": weight_decay,
        "precision": precisions, "hidden": hidden, "activation": activation, "dataset": dataset,
        "seed": seed, "n_params": width if n_params is None else n_params, "twin_of": -1,
        "perturbation": "none",
        "diverged_step": _first_divergence(loss, steps) if diverged_step is None
        else diverged_step,
    }  # fmt: skip
    data: dict[str, Any] = {
        k: (("run",), _per_run(table[k], n_runs, dtype, k)) for k, dtype in _RUN_TABLE.items()
    }
    for name, arr in (("theta", theta), ("m", m), ("v", v)):
        data[name] = (("run", "step", "param"), arr.astype(store_dtype, copy=False))
    data["loss"] = (("run", "step"), loss.astype(store_dtype, copy=False))
    data["param_name"] = (("param",), np.array(names, dtype=object))
    coords: dict[str, Any] = {"step": steps}
    series = {"train_loss": train_loss, "grad_norm": grad_norm, "update_norm": update_norm}
    if any(a is not None for a in series.values()):
        lengths = {np.asarray(a).shape for a in series.values() if a is not None}
        if len(lengths) != 1 or len(next(iter(lengths))) != 2:
            raise GeomtrajError(
                "train_loss, grad_norm, update_norm: expected one (run, update) shape"
            )
        n_it = next(iter(lengths))[1]
        its = np.arange(1, n_it + 1) if iteration is None else np.asarray(iteration, np.int64)
        if its.shape != (n_it,):
            raise GeomtrajError(f"iteration: expected {n_it} update counts")
        coords["iteration"] = its
        for name, arr in series.items():
            if arr is not None:
                data[name] = (("run", "iteration"), np.asarray(arr).astype(store_dtype))
    for name, value in (extra or {}).items():
        data[name] = value
    ds = xr.Dataset(data, coords=coords)
    ds.attrs.update(
        geomtraj_schema=SCHEMA_VERSION,
        geomtraj_version=_version(),
        geomtraj_producer="geomtraj.store.record.write_store",
        steps=int(coords.get("iteration", steps)[-1]),
    )
    gaps = np.unique(np.diff(steps))
    if gaps.size == 1:
        ds.attrs["record_every"] = int(gaps[0])
    ds.attrs.update(attrs or {})
    validate(ds, name="write_store")
    return ds


def write_store(path: str | os.PathLike, theta: np.ndarray, m: np.ndarray, v: np.ndarray,
                loss: np.ndarray, *, overwrite: bool = False, **fields) -> Path:  # fmt: skip
    """Write a valid schema-1 store from NumPy arrays (a JAX/optax or hand-rolled Adam loop).

    Parameters
    ----------
    path
        Where the zarr v3 store is created; it must not exist unless ``overwrite``.
    theta, m, v : ndarray, shape (step, param) or (run, step, param)
        Parameters and raw (not bias-corrected) Adam moments after each recorded update.
    loss : ndarray, shape (step,) or (run, step)
        Loss at the parameters each recorded update started from (``theta_{t-1}``).
    **fields
        ``beta1``, ``beta2``, ``lr``, ``eps`` (required) and ``weight_decay``, ``precision``,
        ``hidden``, ``activation``, ``dataset``, ``seed``, ``n_params``, ``diverged_step``
        (scalars or per-run values); ``step`` (update count of each row, default 1, 2, ...);
        ``param_name``; the per-update series ``train_loss``, ``grad_norm``, ``update_norm``
        (shape (update,) or (run, update)) with their ``iteration`` counts; ``extra`` variables
        and ``attrs``. ``diverged_step`` defaults to the first row whose loss is not finite.

    Returns
    -------
    Path
        ``path``; open it with :func:`geomtraj.store.open_store`.

    Notes
    -----
    Without the per-update series, the analyses derive them from the rows when every update is
    recorded, and otherwise mark the run insufficient (``docs/store-contract.md``).
    """
    p = Path(path)
    if p.exists() and not overwrite:
        raise GeomtrajError(f"{p} exists; choose another path or pass overwrite=True")
    ds = dataset_from_arrays(theta, m, v, loss, **fields)
    ds.to_zarr(os.fspath(p), mode="w", encoding=encoding_for(ds, {}),
               consolidated=ZARR_CONSOLIDATED, zarr_format=3)  # fmt: skip
    return p


def combine_stores(sources: Sequence[str | os.PathLike], path: str | os.PathLike, *,
                   overwrite: bool = False) -> Path:  # fmt: skip
    """Join complete stores (one recorder each: seeds, settings) into one store along ``run``.

    The stores must record the same updates (``step``, and ``iteration`` where present). Runs
    whose recorded parameters differ get per-run names, ``param_name`` of dims ``(run, param)``,
    padded with ``""`` and NaN. Data are copied chunk by chunk (bounded memory).
    """
    if not sources:
        raise GeomtrajError("combine_stores: no source stores given")
    p = Path(path)
    if p.exists() and not overwrite:
        raise GeomtrajError(f"{p} exists; choose another path or pass overwrite=True")
    parts = [open_store(s).reset_coords() for s in sources]
    for name in ("step", "iteration"):
        ref = parts[0][name].values if name in parts[0].coords else None
        for s, ds in zip(sources[1:], parts[1:], strict=True):
            have = ds[name].values if name in ds.coords else None
            if (ref is None) != (have is None) or (
                ref is not None and not np.array_equal(ref, have)
            ):
                raise GeomtrajError(
                    f"{s}: its {name} coordinate differs from {sources[0]}'s; combine stores "
                    "that recorded the same updates"
                )
    names = [[str(x) for x in np.asarray(ds["param_name"].values).ravel()] for ds in parts]
    if any(n != names[0] for n in names[1:]):
        width = max(len(n) for n in names)
        padded = []
        for ds, n in zip(parts, names, strict=True):
            extra, fields = width - len(n), {}
            for k, var in ds.data_vars.items():
                if "param" not in var.dims or k == "param_name":
                    continue
                var = var.pad(
                    param=(0, extra), constant_values=np.nan if var.dtype.kind == "f" else -1
                )
                # per-run now: each run keeps its own parameter labels
                fields[k] = var if "run" in var.dims else var.expand_dims(run=ds.sizes["run"])
            labels = np.array([n + [""] * (width - len(n))] * ds.sizes["run"], dtype=object)
            fields["param_name"] = (("run", "param"), labels)
            padded.append(ds.drop_vars(list(fields)).assign(fields))
        parts = padded
    out = xr.concat(parts, dim="run", data_vars="minimal", coords="minimal",
                    compat="override", join="exact")  # fmt: skip
    out.attrs = dict(parts[0].attrs)
    out.attrs["geomtraj_producer"] = "geomtraj.store.record.combine_stores"
    out.attrs.pop("geomtraj_status", None)
    out.attrs.pop("geomtraj_fingerprint", None)
    for var in out.variables.values():
        var.encoding = {}
    out = out.chunk({"run": 1}).unify_chunks()
    for k, var in out.variables.items():
        if var.dtype == object:  # labels: small, and zarr needs their values to pick a dtype
            out[k] = out[k].compute()
    chunks = {d: c[0] for d, c in out.chunks.items() if c}
    out.to_zarr(os.fspath(p), mode="w", encoding=encoding_for(out, chunks),
                consolidated=ZARR_CONSOLIDATED, zarr_format=3)  # fmt: skip
    return p


# ---------------------------------------------------------------------------------- PyTorch

_TORCH_PRECISION = {f.torch_dtype: f.name for f in FORMATS.values()}


class TorchRecorder:
    """Record a PyTorch ``Adam``/``AdamW`` training loop into a schema-1 store.

    Call :meth:`step` with the loss after every ``optimizer.step()``, then :meth:`close` (or use
    the recorder as a context manager). Each update ``t`` gives a row of ``theta``, ``m``
    (``exp_avg``) and ``v`` (``exp_avg_sq``) of the recorded parameters, read from the
    optimizer's own state, and the per-update series ``train_loss`` (the loss handed to
    :meth:`step`: at ``theta_{t-1}``, the point update ``t`` started from), ``grad_norm``
    (``||g_t||`` over all parameters, with Adam's coupled weight decay added as torch adds it)
    and ``update_norm`` (``||theta_t - theta_{t-1}||`` over all parameters), and ``lr_update``,
    the learning rate each update used (a scheduler may change it).

    Memory stays bounded: values are buffered for ``chunk_updates`` updates, then appended to the
    store as whole zarr chunks, so a crash loses at most the current chunk; the store is marked
    complete on :meth:`close`, and until then opens only with ``allow_incomplete=True``.

    Parameters
    ----------
    path
        The zarr store to create (must not exist unless ``overwrite``).
    optimizer
        A ``torch.optim.Adam`` or ``torch.optim.AdamW`` (``amsgrad=False``, ``maximize=False``),
        all of whose param groups share one set of hyper-parameters.
    model
        The module whose parameters the optimizer updates; names the recorded parameters
        (``fc1.weight[3,2]``). Without it they are named ``p0[3,2]``, ... by optimizer order.
    record_params
        ``"all"``, a count ``N`` (``N`` coordinates evenly spread over the flat parameter vector,
        as ``geomtraj train`` picks them), or a list of names.
    record_every
        Updates between recorded rows of ``theta``/``m``/``v`` (the per-update series are
        recorded at every update). Keep 1 for the spiral and period-2 flip analyses.
    snapshot_every
        Every so many updates, also store all parameters and moments (``theta_snapshot``,
        ``m_snapshot``, ``v_snapshot``; 0: none).
    chunk_updates
        Updates per chunk (rounded up to a multiple of ``record_every``).
    hidden, activation, dataset, seed
        Labels of the run table; ``hidden`` defaults to the model's class name and ``seed`` to
        ``torch.initial_seed()``.
    overwrite
        Replace an existing store at ``path``.
    """

    def __init__(self, path: str | os.PathLike, optimizer, *, model=None,
                 record_params: str | int | Sequence[str] = 16, record_every: int = 1,
                 snapshot_every: int = 0, chunk_updates: int = 4096, hidden: str | None = None,
                 activation: str = "", dataset: str = "", seed: int | None = None,
                 overwrite: bool = False):  # fmt: skip
        import torch

        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise GeomtrajError(f"{self.path} exists; choose another path or pass overwrite=True")
        if not isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW):
            raise GeomtrajError(
                f"TorchRecorder records torch.optim.Adam or AdamW, got {type(optimizer).__name__}"
            )
        if int(record_every) < 1 or int(chunk_updates) < 1 or int(snapshot_every) < 0:
            raise GeomtrajError("record_every and chunk_updates must be >= 1, snapshot_every >= 0")
        self._torch = torch
        self.optimizer = optimizer
        self.record_every = int(record_every)
        self.snapshot_every = int(snapshot_every)
        self.chunk_updates = -(-int(chunk_updates) // self.record_every) * self.record_every
        self.hyper = self._hyper(optimizer)
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        dtypes = {str(p.dtype) for p in self.params}
        if len(dtypes) != 1 or next(iter(dtypes)) not in _TORCH_PRECISION:
            raise GeomtrajError(f"parameters must share one float dtype, got {sorted(dtypes)}")
        self.precision = _TORCH_PRECISION[next(iter(dtypes))]
        self.np_dtype = np.dtype(CONTAINER_DTYPES[self.precision])
        names = self._names(model)
        self.n_params = len(names)
        self.recorded = self._select(record_params, names)
        self.param_name = [names[i] for i in self.recorded]
        device, pdtype = self.params[0].device, self.params[0].dtype
        n_all, rec = self.n_params, torch.as_tensor(self.recorded, dtype=torch.long)
        # rows gather theta, m, v of the recorded coordinates from one theta|g|m|v concatenation
        self._idx3 = torch.cat([rec, rec + 2 * n_all, rec + 3 * n_all]).to(device)
        # flat views of the parameters and moments: torch updates them in place, so the views
        # follow, and one concatenation per update reads them all
        # (a non-contiguous tensor, e.g. channels-last, has no flat view: it is copied each time)
        self._contiguous = all(p.is_contiguous() for p in self.params)
        self._param_views = [p.detach().reshape(-1) for p in self.params]
        self._sizes = [p.numel() for p in self.params]
        self._moment_views: tuple[Any, int, list] | None = None
        self._coupled_decay = self.hyper["weight_decay"] != 0 and not isinstance(
            optimizer, torch.optim.AdamW
        )
        # On a small model each tensor op's dispatch, not its arithmetic, is the recording's
        # cost: an update costs one op, a concatenation of theta|g|m|v into a preallocated
        # block; gradient norms, update norms and the recorded coordinates are computed for a
        # whole block at once when it is packed into NumPy.
        block = max(1, min(PACK_UPDATES, BLOCK_BYTES // (4 * n_all * self.params[0].itemsize)))
        # row 0: theta of the update before the block (for update_norm); then one row an update
        self._block = torch.empty(block + 1, 4 * n_all, dtype=pdtype, device=device)
        self._block[0, :n_all] = torch.cat(self._params_flat())
        self._slots = list(self._block)
        self._theta_grad_slots = [r[: 2 * n_all] for r in self._slots]
        self._k = 0  # updates in the block
        self._is_row: list[bool] = []
        self._loss: list = []
        self._lr: list[float] = []
        # ... packed into NumPy (one device-to-host copy) every block
        self._packed: dict[str, list[np.ndarray]] = {
            k: [] for k in ("loss", "grad_norm", "update_norm", "lr", "rows")
        }
        self._snaps: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []
        self.t = 0  # updates recorded
        self._in_chunk = 0
        self._created = False
        self._group = None  # the open zarr group, once created
        self._arrays: dict[str, Any] = {}  # ... and its arrays, by name
        self._snap_created = False
        self._closed = False
        self.diverged_step = -1
        self._diverged_written = False
        self.labels = {
            "hidden": type(model).__name__
            if hidden is None and model is not None
            else hidden or "",
            "activation": activation,
            "dataset": dataset,
            "seed": int(torch.initial_seed() % 2**63) if seed is None else int(seed),
        }

    # -- set-up ----------------------------------------------------------------------------------
    @staticmethod
    def _hyper(optimizer) -> dict[str, float]:
        groups = optimizer.param_groups
        for g in groups:
            if g.get("amsgrad") or g.get("maximize"):
                raise GeomtrajError(
                    "amsgrad and maximize are not recorded: exp_avg_sq would not be the v that "
                    "scales the step"
                )
        hyper = {
            "beta1": float(groups[0]["betas"][0]),
            "beta2": float(groups[0]["betas"][1]),
            "lr": float(groups[0]["lr"]),
            "eps": float(groups[0]["eps"]),
            "weight_decay": float(groups[0]["weight_decay"]),
        }
        for g in groups[1:]:
            for k, v in (("beta1", g["betas"][0]), ("beta2", g["betas"][1]), ("lr", g["lr"]),
                         ("eps", g["eps"]), ("weight_decay", g["weight_decay"])):  # fmt: skip
                if float(v) != hyper[k]:
                    raise GeomtrajError(
                        f"param groups differ in {k} ({hyper[k]} and {float(v)}); a run holds "
                        "one value of each hyper-parameter: record one group per recorder"
                    )
        return hyper

    def _names(self, model) -> list[str]:
        """Flat parameter names: ``NAME[i,j]`` in row-major order, optimizer order."""
        by_id = {}
        if model is not None:
            by_id = {id(p): n for n, p in model.named_parameters()}
        names = []
        for k, p in enumerate(self.params):
            base = by_id.get(id(p), f"p{k}")
            shape = tuple(p.shape)
            for idx in np.ndindex(*shape) if shape else [()]:
                names.append(f"{base}[{','.join(map(str, idx))}]" if idx else base)
        return names

    @staticmethod
    def _select(record_params, names: list[str]) -> np.ndarray:
        n = len(names)
        if isinstance(record_params, str):
            if record_params != "all":
                raise GeomtrajError(f"record_params {record_params!r}: use 'all', a count or names")
            return np.arange(n)
        if isinstance(record_params, int | np.integer):
            if record_params < 1:
                raise GeomtrajError(f"record_params must be >= 1, got {record_params}")
            # evenly spread, the rule `geomtraj train` uses
            return np.unique(
                np.round(np.linspace(0, n - 1, min(int(record_params), n))).astype(np.int64)
            )
        where = {s: i for i, s in enumerate(names)}
        unknown = [s for s in record_params if s not in where]
        if unknown:
            raise GeomtrajError(f"record_params: no parameter named {unknown[0]!r}")
        return np.array([where[s] for s in record_params], dtype=np.int64)

    def _flat(self, tensors) -> Any:
        return self._torch.cat([x.detach().reshape(-1) for x in tensors])

    # -- recording -------------------------------------------------------------------------------
    def step(self, loss) -> None:
        """Record the update ``optimizer.step()`` has just made; ``loss`` is its loss (at
        ``theta_{t-1}``), a tensor or a float."""
        if self._closed:
            raise GeomtrajError("TorchRecorder.step after close()")
        torch = self._torch
        # no autograd bookkeeping to switch off: every input is detached (parameter views,
        # optimizer state, loss.detach()) or a gradient, and torch.no_grad costs ~1.5 us
        t, k = self.t + 1, self._k + 1
        row = t % self.record_every == 0
        snap = self.snapshot_every and t % self.snapshot_every == 0
        grads = [p.grad for p in self.params]
        if any(g is None for g in grads):
            grads = [torch.zeros_like(p) if g is None else g
                     for g, p in zip(grads, self.params, strict=True)]  # fmt: skip
        grads = [g.reshape(-1) for g in grads]
        if row or snap:
            views = self._state_views()  # theta, m, v
            n_p = len(self.params)
            torch.cat(views[:n_p] + grads + views[n_p:], out=self._slots[k])
            if snap:
                arr = self._numpy(self._slots[k])
                n = self.n_params
                self._snaps.append((t, arr[:n], arr[2 * n : 3 * n], arr[3 * n :]))
        else:
            torch.cat(self._params_flat() + grads, out=self._theta_grad_slots[k])
        self._loss.append(loss.detach() if torch.is_tensor(loss) else float(loss))
        self._lr.append(float(self.optimizer.param_groups[0]["lr"]))
        self._is_row.append(row)
        self._k, self.t = k, t
        self._in_chunk += 1
        if k == len(self._slots) - 1:
            self._pack()
        if self._in_chunk == self.chunk_updates:
            self._flush()

    def _state_views(self) -> list:
        """Flat views of the parameters, then ``exp_avg``, then ``exp_avg_sq`` of every
        parameter (zero where it never had a gradient), cached while the optimizer keeps the
        same state tensors."""
        state = self.optimizer.state
        cached = self._moment_views
        # torch creates a parameter's moments once and updates them in place; only a new state
        # table (load_state_dict) or a parameter's first gradient changes them. Checked in O(1):
        # a tensor's hash is a Python call, too dear to look every parameter up per update.
        if cached is not None and cached[0] is state and cached[1] == len(state):
            return cached[2]
        current = [state[p].get("exp_avg") if p in state else None for p in self.params]
        if all(x is None for x in current):
            raise GeomtrajError(
                "the optimizer has no exp_avg/exp_avg_sq state: call rec.step(loss) after "
                "optimizer.step()"
            )
        zero = self._torch.zeros_like
        m = [state[p]["exp_avg"] if p in state else zero(p) for p in self.params]
        v = [state[p]["exp_avg_sq"] if p in state else zero(p) for p in self.params]
        flat = self._params_flat() + [x.reshape(-1) for x in m + v]
        if self._contiguous and all(x.is_contiguous() for x in m + v):
            self._moment_views = (state, len(state), flat)
        return flat

    def _params_flat(self) -> list:
        if self._contiguous:
            return self._param_views
        return [p.detach().reshape(-1) for p in self.params]

    def _pack(self) -> None:
        """Move the block's values into NumPy (one device-to-host copy of each kind) and start
        the next block from its last theta."""
        k, packed = self._k, self._packed
        if k == 0:
            return
        torch, n = self._torch, self.n_params
        wide = torch.float64 if self.np_dtype == np.float64 else torch.float32
        with torch.no_grad():
            theta = self._block[: k + 1, :n].to(wide)
            packed["update_norm"].append(
                self._numpy(torch.linalg.vector_norm(theta[1:] - theta[:-1], dim=1))
            )
            grad = self._block[1 : k + 1, n : 2 * n]
            if self._coupled_decay:  # torch's coupled decay: g + wd * theta_{t-1}
                grad = grad.add(self._block[:k, :n], alpha=self.hyper["weight_decay"])
            g_norm = torch.linalg.vector_norm(grad.to(wide), dim=1)
            packed["grad_norm"].append(self._numpy(g_norm))
            if all(torch.is_tensor(x) for x in self._loss):
                packed["loss"].append(self._numpy(torch.stack(self._loss)))
            else:
                packed["loss"].append(np.array([float(x) for x in self._loss], self.np_dtype))
            packed["lr"].append(np.array(self._lr, dtype=np.float64))
            rows = np.flatnonzero(self._is_row) + 1
            if rows.size:
                at = torch.as_tensor(rows, device=self._block.device)
                packed["rows"].append(self._numpy(self._block[at][:, self._idx3]))
            self._block[0, :n] = self._block[k, :n]
        self._k = 0
        self._loss, self._lr, self._is_row = [], [], []

    def _numpy(self, x) -> np.ndarray:
        """``x`` as a NumPy array of the store's dtype (NumPy has no bfloat16: widen on the device;
        float32 holds every bfloat16/float16 value exactly)."""
        wide = self._torch.float64 if self.np_dtype == np.float64 else self._torch.float32
        return x.detach().to(wide).cpu().numpy().astype(self.np_dtype, copy=True)

    # -- writing ---------------------------------------------------------------------------------
    def _flush(self) -> None:
        n = self._in_chunk
        if n == 0:
            return
        first = self.t - n + 1
        its = np.arange(first, self.t + 1, dtype=np.int64)
        self._pack()
        packed = self._packed
        series = {
            "train_loss": np.concatenate(packed["loss"]),
            "grad_norm": np.concatenate(packed["grad_norm"]),
            "update_norm": np.concatenate(packed["update_norm"]),
        }
        lr = np.concatenate(packed["lr"])
        is_row = its % self.record_every == 0
        steps = its[is_row]
        n_rec = len(self.recorded)
        if packed["rows"]:
            flat = np.concatenate(packed["rows"])
        else:
            flat = np.zeros((0, 3 * n_rec), self.np_dtype)
        rows = {"t": flat[:, :n_rec], "m": flat[:, n_rec : 2 * n_rec], "v": flat[:, 2 * n_rec :]}
        row_loss = series["train_loss"][is_row]
        n_rows = len(steps)
        bad = ~(np.isfinite(series["train_loss"]) & np.isfinite(series["update_norm"]))
        if self.diverged_step < 0 and bad.any():
            self.diverged_step = int(its[np.argmax(bad)])
        per_update = xr.Dataset(
            {k: (("run", "iteration"), a[None]) for k, a in series.items()}
            | {"lr_update": (("run", "iteration"), lr[None])},
            coords={"iteration": its},
        )
        per_row = xr.Dataset(
            {"theta": (("run", "step", "param"), rows["t"][None]),
             "m": (("run", "step", "param"), rows["m"][None]),
             "v": (("run", "step", "param"), rows["v"][None]),
             "loss": (("run", "step"), row_loss[None])},
            coords={"step": steps},
        )  # fmt: skip
        if not self._created:
            self._create(per_update, per_row)
        else:
            self._append([(per_update, "iteration")] + ([(per_row, "step")] if n_rows else []))
        if self._snaps:
            self._write_snapshots()
        if self.diverged_step >= 0 and not self._diverged_written:
            import zarr

            group = zarr.open_group(os.fspath(self.path), mode="r+", zarr_format=3)
            group["diverged_step"][0] = self.diverged_step
            self._diverged_written = True
        self._in_chunk = 0
        self._packed = {k: [] for k in self._packed}

    def _append(self, parts: list[tuple[xr.Dataset, str]]) -> None:
        """Grow the store's arrays along each part's dimension by the part (whole chunks but the
        last).

        Written through zarr directly: xarray's ``append_dim`` re-reads the store's metadata on
        every call, which cost about 0.2 s a chunk. All data arrays are grown and written in one
        concurrent round, then the coordinates in a second, so a coordinate never names a row
        whose data is not written yet (each blocking zarr call costs a round trip to zarr's
        event loop: about 1.5 ms of CPU, most of a chunk's write).
        """
        import zarr
        from zarr.core.sync import sync

        if self._group is None:
            self._group = zarr.open_group(os.fspath(self.path), mode="r+", zarr_format=3)
            self._arrays = {}
        data, coords = [], []
        for part, dim in parts:
            for name, var in part.variables.items():
                if dim not in var.dims:
                    continue
                if name not in self._arrays:  # zarr updates a resized array's shape in place
                    self._arrays[name] = self._group[name].async_array
                (coords if name == dim else data).append((self._arrays[name], var, dim))

        async def grow(arr, var, dim) -> None:
            axis = var.dims.index(dim)
            old = arr.shape[axis]
            shape = list(arr.shape)
            shape[axis] = old + var.shape[axis]
            await arr.resize(tuple(shape))
            where = [slice(None)] * len(shape)
            where[axis] = slice(old, shape[axis])
            await arr.setitem(tuple(where), var.values)

        async def round_of(items) -> None:
            await asyncio.gather(*(grow(*item) for item in items))

        sync(round_of(data))
        sync(round_of(coords))

    def _create(self, per_update: xr.Dataset, per_row: xr.Dataset) -> None:
        table = {
            **self.hyper, "precision": self.precision, "hidden": self.labels["hidden"],
            "activation": self.labels["activation"], "dataset": self.labels["dataset"],
            "seed": self.labels["seed"], "n_params": self.n_params, "twin_of": -1,
            "perturbation": "none", "diverged_step": -1,
        }  # fmt: skip
        # one constructor, not a variable at a time: each assignment re-aligns the whole Dataset
        data = {k: var.variable for part in (per_update, per_row) for k, var in part.items()}
        for k, dtype in _RUN_TABLE.items():
            data[k] = (("run",), _per_run(table[k], 1, dtype, k))
        data["optimizer"] = (("run",), np.array([type(self.optimizer).__name__], dtype=object))
        data["param_name"] = (("param",), np.array(self.param_name, dtype=object))
        data["param_index"] = (("param",), self.recorded.astype(np.int64))
        coords = {"iteration": per_update["iteration"].values, "step": per_row["step"].values}
        ds = xr.Dataset(data, coords=coords)
        ds.attrs.update(
            geomtraj_schema=SCHEMA_VERSION,
            geomtraj_version=_version(),
            geomtraj_producer="geomtraj.store.record.TorchRecorder",
            geomtraj_status=STATUS_TRAINING,
            record_every=self.record_every,
            record_params=json.dumps(len(self.recorded)),
            steps=int(self.t),
            optimizer=repr(self.optimizer).replace("\n", " "),
        )
        rows = self.chunk_updates // self.record_every
        enc = {}
        for name, var in ds.variables.items():
            e: dict = {"compressors": COMPRESSORS}
            if "iteration" in var.dims and name != "iteration":
                e["chunks"] = (1, self.chunk_updates)
            elif "step" in var.dims and name != "step":
                e["chunks"] = (1, rows, *var.shape[2:])
            enc[name] = e
        self._attrs = dict(ds.attrs)
        ds.to_zarr(os.fspath(self.path), mode="w", encoding=enc, consolidated=ZARR_CONSOLIDATED,
                   zarr_format=3)  # fmt: skip
        self._created = True

    def _write_snapshots(self) -> None:
        t, th, m, v = (np.array(x) for x in zip(*self._snaps, strict=True))
        snap = xr.Dataset(
            {"theta_snapshot": (("run", "snapshot", "param_all"), th[None]),
             "m_snapshot": (("run", "snapshot", "param_all"), m[None]),
             "v_snapshot": (("run", "snapshot", "param_all"), v[None])},
            coords={"snapshot": t.astype(np.int64)},
        )  # fmt: skip
        if self._snap_created:
            self._append([(snap, "snapshot")])
        else:
            enc = {k: {"compressors": COMPRESSORS, "chunks": (1, 1, self.n_params)}
                   for k in snap.data_vars}  # fmt: skip
            snap.attrs = self._attrs
            snap.to_zarr(os.fspath(self.path), mode="a", encoding=enc,
                         consolidated=ZARR_CONSOLIDATED, zarr_format=3)  # fmt: skip
            self._snap_created, self._group = True, None  # reopen: the group has new arrays
        self._snaps = []

    def close(self) -> Path:
        """Write the last (partial) chunk and the divergence step; mark the store complete."""
        if self._closed:
            return self.path
        if self.t == 0:
            self._closed = True
            raise GeomtrajError("TorchRecorder closed before any step(); nothing was recorded")
        self._flush()
        set_attrs(self.path, steps=int(self.t), geomtraj_status=STATUS_COMPLETE)
        self._closed = True
        return self.path

    def __enter__(self) -> TorchRecorder:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif self._created or self._in_chunk:
            # keep what was recorded; the store stays "training", readable with allow_incomplete
            try:
                self._flush()
            except Exception:  # the original error matters more
                pass
