"""Training grids described in TOML: parse, check and expand into a :class:`~geomtraj.train.Plan`.

Example (every key is optional except ``steps``)::

    steps = 20000
    record_every = 1
    record_params = 16            # "all", a count, or a list of names such as ["W1[0,3]"]
    snapshot_every = 0            # full snapshots of theta/m/v every N updates (0: none)
    chunk_rows = 4096             # recorded rows per stored chunk (default: chunks of ~4 MiB)
    run_chunk = 8                 # runs per stored chunk, also the blocks of --scheduler
                                  # (default: 8, doubled while chunks stay below 3 MiB, up
                                  # to 64 or an eighth of the runs)

    [data]
    name = "sincos"               # or a list, which makes it a grid axis
    n_points = 64
    seed = 0

    [model]
    hidden = ["12x24"]            # grid axis; "5..44x5..44" is every pair of widths 5 to 44,
                                  # "5..44:4x5..44:4" every 4th (ranges include both ends)
    activation = "tanh"
    loss = "mse"

    [optimizer]                   # each value a scalar or a list (a grid axis)
    beta1 = 0.9
    beta2 = [0.99, 0.995, 0.999]
    lr = 1e-3
    eps = 1e-8
    weight_decay = 0.0

    [runs]
    seeds = [0, 1]
    precision = ["float32", "float64"]
    batch_size = 0                # 0 = full batch

    [grid]
    mode = "product"              # or "zip": hidden and optimizer lists are zipped

    [[twins]]                     # one twin of every run above per entry
    kind = "ulp"                  # nextafter on one parameter before update `step`
    param = "W1[0,3]"
    ulps = 1
    step = 5000

    [[twins]]
    kind = "scale"                # Sun's (lr*k)*(u/k)
    k = 3

Runs are ordered as the product ``hidden x data x beta1 x beta2 x lr x eps x weight_decay x seed x
precision`` (the last varies fastest); twins follow all original runs, grouped by twin entry.
"""

from __future__ import annotations

import itertools
import math
import re
import tomllib
from pathlib import Path

from geomtraj import runtable
from geomtraj.errors import ConfigError
from geomtraj.formats import FORMATS
from geomtraj.train.data import DATASETS, dataset_attrs, make_dataset
from geomtraj.train.models import ACTIVATIONS, LOSSES, MLPSpec, parse_hidden
from geomtraj.train.plan import (
    DataSource,
    Perturbation,
    Plan,
    Run,
    check_data_size,
    check_resources,
)

_SECTIONS: dict[str, set[str]] = {
    "": {
        "steps",
        "record_every",
        "record_params",
        "snapshot_every",
        "chunk_rows",
        "run_chunk",
        "data",
        "model",
        "optimizer",
        "runs",
        "grid",
        "twins",
        "name",
        "description",
    },
    "data": {"name", "n_points", "seed", "noise"},
    "model": {"hidden", "activation", "loss"},
    "optimizer": set(runtable.config_defaults("optimizer")),
    "runs": {"seeds", "precision", "batch_size"},
    "grid": {"mode"},
    "twins": {"kind", "param", "ulps", "step", "k"},
}

#: Defaults of the ``[optimizer]`` keys, as the run table declares them.
_DEFAULTS = runtable.config_defaults("optimizer")


def _check_keys(table: dict, section: str) -> None:
    allowed = _SECTIONS[section]
    for key in table:
        if key not in allowed:
            where = f"[{section}]" if section else "the top level"
            raise ConfigError(
                f"unknown key {key!r} in {where}; allowed: {', '.join(sorted(allowed))}"
            )


def _as_list(value, name: str) -> list:
    vals = value if isinstance(value, list) else [value]
    if not vals:
        raise ConfigError(f"{name} is an empty list")
    return vals


def _number(value, name: str, kind=float):
    """A finite number (an integer when ``kind`` is int) from the config, else ConfigError."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    if kind is int and int(value) != value:
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    return kind(value)


#: Seeds are stored as int64 and feed numpy's generators, which refuse negative seeds.
_SEED_MAX = 2**63 - 1


def _seed(value, name: str) -> int:
    seed = _number(value, name, int)
    if not 0 <= seed <= _SEED_MAX:
        raise ConfigError(f"{name} must be an integer from 0 to 2**63-1, got {seed}")
    return seed


def _string(value, name: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a string, got {value!r}")
    return value


def _count_or_none(value, name: str) -> int | None:
    """A positive integer setting, or None when absent."""
    if value is None:
        return None
    count = _number(value, name, int)
    if count < 1:
        raise ConfigError(f"{name} must be at least 1, got {count}")
    return count


def expand_hidden(item):
    """Hidden-width entries of one ``model.hidden`` item: ranges ``"A..B[:S]"`` expand to a product.

    ``"5..7x12"`` gives ``["5x12", "6x12", "7x12"]``; the first factor varies slowest, as in
    ``itertools.product``. Items without ``..`` pass through unchanged.
    """
    if not isinstance(item, str) or ".." not in item:
        return [item]
    factors = []
    for part in item.lower().replace(" ", "").split("x"):
        m = re.fullmatch(r"(\d+)\.\.(\d+)(?::(\d+))?", part)
        if m:
            lo, hi, step = int(m[1]), int(m[2]), int(m[3] or 1)
            if lo < 1 or hi < lo or step < 1:
                raise ValueError(f"range {part!r} in {item!r} needs 1 <= A <= B and a step >= 1")
            factors.append([str(w) for w in range(lo, hi + 1, step)])
        elif part.isdigit():
            factors.append([part])
        else:
            raise ValueError(f"hidden widths {item!r} must look like '12x24' or '5..44x5..44:2'")
    return ["x".join(p) for p in itertools.product(*factors)]


def load_config(path: str | Path) -> dict:
    """Read a TOML file; errors are one line with the file name."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        text = p.read_bytes().decode("utf-8-sig")  # (a leading byte-order mark is allowed)
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{p}: not UTF-8 text (byte {exc.start}); TOML files must be UTF-8"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the config ({exc.strerror})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: invalid TOML ({exc})") from None


def plan_from_config(cfg: dict) -> Plan:
    """Expand a parsed config into a plan; every problem raises :class:`ConfigError`."""
    _check_keys(cfg, "")
    for section in ("data", "model", "optimizer", "runs", "grid"):
        if not isinstance(cfg.get(section, {}), dict):
            raise ConfigError(f"[{section}] must be a table")
        _check_keys(cfg.get(section, {}), section)
    if "steps" not in cfg:
        raise ConfigError("the config needs `steps` (number of Adam updates per run)")
    steps = _number(cfg["steps"], "steps", int)

    data_cfg, model, opt = cfg.get("data", {}), cfg.get("model", {}), cfg.get("optimizer", {})
    runs_cfg, grid = cfg.get("runs", {}), cfg.get("grid", {})

    datasets = []
    for name in _as_list(data_cfg.get("name", "sincos"), "data.name"):
        if not isinstance(name, str) or name not in DATASETS:
            raise ConfigError(f"data set {name!r} unknown; choose from {sorted(DATASETS)}")
        n_points = _number(data_cfg.get("n_points", 64), "data.n_points", int)
        seed = _seed(data_cfg.get("seed", 0), "data.seed")
        check_data_size(n_points)
        noise = data_cfg.get("noise")
        noise = None if noise is None else _number(noise, "data.noise")
        try:
            X, y = make_dataset(name, n_points, seed, noise)
        except ValueError as exc:
            raise ConfigError(f"[data] {exc}") from None
        datasets.append(DataSource(name, X, y, dataset_attrs(name, n_points, seed, noise)))

    activation = _string(model.get("activation", "tanh"), "model.activation")
    loss = _string(model.get("loss", "mse"), "model.loss")
    if activation not in ACTIVATIONS:
        raise ConfigError(f"model.activation {activation!r} unknown; choose from {ACTIVATIONS}")
    if loss not in LOSSES:
        raise ConfigError(f"model.loss {loss!r} unknown; choose from {LOSSES}")
    for ds in datasets:
        if loss == "bce" and DATASETS[ds.name].task != "classification":
            raise ConfigError(f"loss 'bce' needs a classification data set, {ds.name!r} is not")
    try:
        hiddens = [
            parse_hidden(h)
            for item in _as_list(model.get("hidden", "12x24"), "hidden")
            for h in expand_hidden(item)
        ]
    except (TypeError, ValueError, OverflowError) as exc:
        raise ConfigError(f"model.hidden: {exc}") from None

    axes = {
        k: [_number(v, f"optimizer.{k}") for v in _as_list(opt.get(k, d), k)]
        for k, d in _DEFAULTS.items()
    }
    seeds = [_seed(s, "runs.seeds") for s in _as_list(runs_cfg.get("seeds", 0), "seeds")]
    precisions = _as_list(runs_cfg.get("precision", "float64"), "precision")
    for p in precisions:
        if not isinstance(p, str) or p not in FORMATS:
            raise ConfigError(f"precision {p!r} unknown; choose from {list(FORMATS)}")
    batch = _number(runs_cfg.get("batch_size", 0), "runs.batch_size", int)

    mode = _string(grid.get("mode", "product"), "grid.mode")
    if mode == "product":
        combos = list(itertools.product(hiddens, *axes.values()))
    elif mode == "zip":
        lists = [hiddens, *axes.values()]
        n = max(len(v) for v in lists)
        if any(len(v) not in (1, n) for v in lists):
            raise ConfigError("grid.mode = 'zip' needs hidden and optimizer lists of equal length")
        combos = [tuple(v[i] if len(v) > 1 else v[0] for v in lists) for i in range(n)]
    else:
        raise ConfigError(f"grid.mode {mode!r} unknown; use 'product' or 'zip'")

    runs: list[Run] = []
    for hidden, b1, b2, lr, eps, wd in combos:
        for d in range(len(datasets)):
            spec = MLPSpec(datasets[d].X.shape[1], hidden, activation, loss)
            for seed in seeds:
                for prec in precisions:
                    runs.append(
                        Run(
                            spec=spec,
                            data=d,
                            beta1=b1,
                            beta2=b2,
                            lr=lr,
                            eps=eps,
                            weight_decay=wd,
                            seed=seed,
                            precision=prec,
                            batch_size=batch,
                        )
                    )
    originals = list(runs)
    twins_cfg = cfg.get("twins", [])
    if not isinstance(twins_cfg, list):
        raise ConfigError("twins must be an array of tables: [[twins]]")
    for tw in twins_cfg:
        if not isinstance(tw, dict):
            raise ConfigError(f"each [[twins]] entry must be a table, got {tw!r}")
        _check_keys(tw, "twins")
        kind = tw.get("kind")
        if kind == "ulp":
            pert = Perturbation(
                "ulp",
                param=_string(tw.get("param", ""), "twins.param"),
                ulps=_number(tw.get("ulps", 1), "twins.ulps", int),
                step=_number(tw.get("step", 1), "twins.step", int),
            )
        elif kind == "scale":
            pert = Perturbation("scale", k=_number(tw.get("k", 1), "twins.k"))
        else:
            raise ConfigError(f"twins.kind {kind!r} unknown; use 'ulp' or 'scale'")
        for i, base in enumerate(originals):
            runs.append(Run(**{**base.__dict__, "twin_of": i, "perturbation": pert}))

    record = cfg.get("record_params", "all")
    if (
        not (record == "all" or isinstance(record, int | list))
        or isinstance(record, bool)
        or (isinstance(record, list) and not all(isinstance(x, str) for x in record))
    ):
        raise ConfigError(
            f"record_params must be 'all', a count or a list of names, got {record!r}"
        )
    plan = Plan(
        runs=runs,
        datasets=datasets,
        steps=steps,
        record_every=_number(cfg.get("record_every", 1), "record_every", int),
        record_params=record,
        chunk_rows=_count_or_none(cfg.get("chunk_rows"), "chunk_rows"),
        run_chunk=_count_or_none(cfg.get("run_chunk"), "run_chunk"),
        snapshot_every=_number(cfg.get("snapshot_every", 0), "snapshot_every", int),
        description={k: cfg[k] for k in ("name", "description") if k in cfg},
    )
    try:
        plan.validate()
        check_resources(plan)  # before anything grid-sized is allocated
        plan.recorded_indices()
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return plan
