"""The zarr store (contract 2): content, encoding, and clear errors for unusable input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from geomtraj.errors import StoreError
from geomtraj.store import zarrstore as store_mod
from geomtraj.train.config import plan_from_config
from geomtraj.train.data import make_dataset_from_attrs
from geomtraj.train.models import MLPSpec
from geomtraj.train.trainer import train, train_plan

STEPS, RECORD_EVERY = 40, 4
MIXED = {
    "steps": STEPS,
    "record_every": RECORD_EVERY,
    "chunk_rows": 3,  # 10 rows in chunks of 3: several region writes, a short last chunk
    "data": {"name": ["sincos", "moons"], "n_points": 24, "seed": 5},
    "model": {"hidden": ["6x4", "5"], "activation": "tanh", "loss": "mse"},
    "optimizer": {"beta1": 0.9, "beta2": 0.99, "lr": 1e-2},
    "runs": {"seeds": [0], "precision": ["float64", "float32"]},
    "twins": [{"kind": "ulp", "param": "W1[0,3]", "ulps": 1, "step": 20}],
}
FLOAT32_ONLY = {**MIXED, "steps": 8, "record_every": 1, "runs": {"precision": "float32"}}
FLOAT32_ONLY.pop("twins")

#: Contract 2: every variable a schema-1 store holds, with its dims (written out here, not taken
#: from geomtraj.store, so that a change of the schema module cannot silently change the test).
CONTRACT_2 = {
    "theta": ("run", "step", "param"),
    "m": ("run", "step", "param"),
    "v": ("run", "step", "param"),
    "loss": ("run", "step"),
    "step": ("step",),
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
INT64 = ("step", "seed", "n_params", "twin_of", "diverged_step")
FLOAT64 = ("beta1", "beta2", "lr", "eps", "weight_decay")
STRINGS = ("precision", "hidden", "activation", "dataset", "perturbation")


def _open(path) -> xr.Dataset:
    """Contract 2 says: opened by ``xarray.open_zarr(path)`` (geomtraj never consolidates)."""
    return xr.open_zarr(path, consolidated=False, zarr_format=3)


@pytest.fixture(scope="module")
def mixed_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "mixed.zarr"
    train_plan(plan_from_config(MIXED), store=path)
    return path


@pytest.fixture(scope="module")
def float32_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "f32.zarr"
    train_plan(plan_from_config(FLOAT32_ONLY), store=path)
    return path


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


# ---------------------------------------------------------------------------------- contents


def test_open_store_validates(mixed_store, tmp_path):
    ds = train_plan(plan_from_config(FLOAT32_ONLY), store=tmp_path / "returned.zarr")
    store_mod.validate(ds)  # train_plan returns the opened store
    ds = store_mod.open_store(mixed_store)
    store_mod.validate(ds, name=str(mixed_store))
    assert ds.attrs["geomtraj_status"] == store_mod.STATUS_COMPLETE


def test_validate_accepts_a_trained_dataset(sincos):
    X, y = sincos
    store_mod.validate(train(X, y, hidden=(3,), steps=2), name="in memory")


def test_store_holds_contract_2(mixed_store):
    ds = _open(mixed_store)
    assert ds.attrs["geomtraj_schema"] == 1
    assert ds.attrs["geomtraj_status"] == "complete"
    # a finished store holds only zarr nodes, and no resume checkpoint is left beside it
    for f in mixed_store.rglob("*"):
        if f.is_file():
            rel = f.relative_to(mixed_store).parts
            assert rel[-1] == "zarr.json" or "c" in rel, f
    assert [p.name for p in mixed_store.parent.iterdir()] == [mixed_store.name]
    assert "geomtraj_version" in ds.attrs
    for name, dims in CONTRACT_2.items():
        assert name in ds.variables, f"{name} missing"
        assert ds[name].dims == dims, (name, ds[name].dims)
    for name in INT64:
        assert ds[name].dtype == np.int64, name
    for name in FLOAT64:
        assert ds[name].dtype == np.float64, name
    for name in STRINGS:
        assert all(isinstance(s, str) for s in ds[name].values.tolist()), name
    assert ds["param_name"].dims in (("param",), ("run", "param"))
    n_runs = 16  # 2 hidden x 2 data sets x 2 precisions, and one twin each
    assert ds.sizes["run"] == n_runs and ds.sizes["step"] == STEPS // RECORD_EVERY
    np.testing.assert_array_equal(
        ds["step"].values, np.arange(RECORD_EVERY, STEPS + 1, RECORD_EVERY, dtype=np.int64)
    )
    # the run table describes the config
    assert sorted(set(ds["precision"].values.tolist())) == ["float32", "float64"]
    assert sorted(set(ds["hidden"].values.tolist())) == ["5", "6x4"]
    assert sorted(set(ds["dataset"].values.tolist())) == ["moons", "sincos"]
    assert set(ds["activation"].values.tolist()) == {"tanh"}
    twin_of = ds["twin_of"].values
    np.testing.assert_array_equal(twin_of, [-1] * 8 + list(range(8)))
    perturbation = ds["perturbation"].values.tolist()
    assert perturbation == ["none"] * 8 + ["ulp:+1@W1[0,3]@t=20"] * 8
    assert (ds["diverged_step"].values == -1).all()
    for r in range(n_runs):
        hidden = tuple(int(h) for h in str(ds["hidden"].values[r]).split("x"))
        spec = MLPSpec(2, hidden)
        assert ds["n_params"].values[r] == spec.n_params
        names = ds["param_name"].values if ds["param_name"].ndim == 1 else ds["param_name"][r]
        assert list(np.asarray(names).tolist())[: spec.n_params] == spec.param_names()


def test_padding_beyond_n_params_is_nan(mixed_store):
    ds = _open(mixed_store)
    n_params = ds["n_params"].values
    assert len(set(n_params.tolist())) == 2  # two architectures share the param axis
    for r, n in enumerate(n_params):
        for name in ("theta", "m", "v"):
            a = ds[name].values[r]
            assert np.isfinite(a[:, :n]).all(), (name, r)
            assert np.isnan(a[:, n:]).all(), (name, r)


def test_last_row_is_the_final_state_and_loss_rows_match_train_loss(mixed_store):
    ds = _open(mixed_store)
    for r, n in enumerate(ds["n_params"].values):
        for name in ("theta", "m", "v"):
            last = ds[name].values[r, -1, :n]
            assert last.tobytes() == ds[f"{name}_final"].values[r, :n].tobytes(), (name, r)
        # loss at recorded row t is train_loss at update t: the same number, not a recomputation
        loss = ds["loss"].values[r]
        train_loss = ds["train_loss"].values[r, ds["step"].values - 1]
        assert loss.tobytes() == train_loss.tobytes(), r
    # the per-update axis (its name is geomtraj's extension, not contract 2) counts 1..steps
    update_dim = ds["train_loss"].dims[1]
    assert ds[update_dim].values.tolist() == list(range(1, STEPS + 1))


def test_theta_init_is_the_start_point(mixed_store):
    """Update 1 starts from theta_init: its loss (row 0 of train_loss) is the loss there."""
    ds = _open(mixed_store)
    from naive import loss_value

    for r in range(ds.sizes["run"]):
        if ds["precision"].values[r] != "float64":
            continue
        n = int(ds["n_params"].values[r])
        spec = MLPSpec(2, tuple(int(h) for h in str(ds["hidden"].values[r]).split("x")))
        d = int(ds["data_index"].values[r])
        npts = int(ds["data_n"].values[d])
        X, y = ds["data_x"].values[d, :npts], ds["data_y"].values[d, :npts]
        expected = loss_value(ds["theta_init"].values[r, :n], spec, X, y)
        np.testing.assert_allclose(ds["train_loss"].values[r, 0], expected, rtol=1e-12)


def test_datasets_rebuild_from_attrs(mixed_store):
    ds = _open(mixed_store)
    records = json.loads(ds.attrs["datasets"])
    assert [rec["name"] for rec in records] == ["sincos", "moons"]
    for d, rec in enumerate(records):
        X, y = make_dataset_from_attrs(rec)
        n = int(ds["data_n"].values[d])
        assert n == 24 == X.shape[0]
        assert X.tobytes() == ds["data_x"].values[d, :n].tobytes()
        assert y.tobytes() == ds["data_y"].values[d, :n].tobytes()
    # every run names the data set it trained on
    names = [rec["name"] for rec in records]
    for r in range(ds.sizes["run"]):
        assert ds["dataset"].values[r] == names[int(ds["data_index"].values[r])]


def test_storage_dtype_is_the_widest_precision(mixed_store, float32_store):
    mixed, f32 = _open(mixed_store), _open(float32_store)
    for name in ("theta", "m", "v", "loss", "train_loss", "theta_final"):
        assert mixed[name].dtype == np.float64, name
        assert f32[name].dtype == np.float32, name
    # float32 runs in the float64 store hold exactly float32 values
    is32 = mixed["precision"].values == "float32"
    th = mixed["theta"].values[is32]
    th = th[np.isfinite(th)]
    assert th.size and np.array_equal(th.astype(np.float32).astype(np.float64), th)


def test_encoding_is_lossless(mixed_store):
    arrays = sorted(p.parent for p in mixed_store.rglob("zarr.json") if p.parent != mixed_store)
    assert len(arrays) >= len(CONTRACT_2)
    for arr in arrays:
        meta = json.loads((arr / "zarr.json").read_text())
        assert meta["node_type"] == "array"
        codecs = [c["name"] for c in meta["codecs"]]
        # one serializer, then exactly Blosc and a CRC32C checksum: no filters, no quantising or
        # bit-rounding codecs
        assert codecs[0] in ("bytes", "vlen-utf8", "vlen-bytes"), (arr.name, codecs)
        assert codecs[1:] == ["blosc", "crc32c"], (arr.name, codecs)
        assert not meta.get("storage_transformers"), arr.name
        for key in ("scale_factor", "add_offset", "dtype", "units"):
            assert key not in meta.get("attributes", {}), (arr.name, key)
    for name in ("theta", "m", "v", "loss"):
        meta = json.loads((mixed_store / name / "zarr.json").read_text())
        assert meta["data_type"] == "float64"
    # and the group itself is opened through zarr as a v3 group
    group = zarr.open_group(str(mixed_store), mode="r", zarr_format=3)
    assert group["theta"].filters == ()


# ------------------------------------------------------------------------------ error cases


def _assert_store_error(path, **kwargs):
    with pytest.raises(StoreError) as info:
        store_mod.open_store(path, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg, msg
    assert str(path) in msg, msg
    return msg


def test_missing_path(tmp_path):
    _assert_store_error(tmp_path / "nowhere.zarr")


def test_plain_directory_and_plain_file(tmp_path):
    (tmp_path / "plain").mkdir()
    _assert_store_error(tmp_path / "plain")
    (tmp_path / "file.zarr").write_text("not a store")
    _assert_store_error(tmp_path / "file.zarr")


def test_zarr_store_without_geomtraj_attrs(tmp_path):
    path = tmp_path / "foreign.zarr"
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.create_array("x", shape=(3,), dtype="float64")
    group.attrs["something"] = 1
    assert "geomtraj" in _assert_store_error(path)


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_wrong_schema_version(mixed_store, tmp_path):
    path = _copy(mixed_store, tmp_path / "schema2.zarr")
    store_mod.set_attrs(path, geomtraj_schema=2)
    assert "schema" in _assert_store_error(path)


def test_missing_variable(mixed_store, tmp_path):
    path = tmp_path / "no_theta.zarr"
    ds = _open(mixed_store).drop_vars("theta").load()
    for var in ds.variables.values():
        var.encoding.clear()
    ds.to_zarr(path, consolidated=False, zarr_format=3)
    assert "geomtraj_schema" in json.loads((path / "zarr.json").read_text())["attributes"]
    assert "theta" in _assert_store_error(path)


def test_incomplete_store(mixed_store, tmp_path):
    path = _copy(mixed_store, tmp_path / "training.zarr")
    store_mod.set_attrs(path, geomtraj_status=store_mod.STATUS_TRAINING)
    assert "resume" in _assert_store_error(path)


def test_existing_path_and_resume_of_complete_store(mixed_store, tmp_path):
    path = _copy(mixed_store, tmp_path / "again.zarr")
    before = _tree_bytes(path)
    plan = plan_from_config(MIXED)
    with pytest.raises(StoreError) as info:
        train_plan(plan, store=path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    # resuming a complete store of the same config (a kill can land between marking it complete
    # and deleting the checkpoint) returns it untouched
    train_plan(plan, store=path, resume=True)
    assert _tree_bytes(path) == before
    other = plan_from_config({**MIXED, "steps": 2 * STEPS})
    with pytest.raises(StoreError):
        train_plan(other, store=path, resume=True)
    assert _tree_bytes(path) == before  # refused without touching it
    # with no store yet (a kill before the template was in place), --resume trains it afresh
    train_plan(plan, store=tmp_path / "absent.zarr", resume=True)
    assert _tree_bytes(tmp_path / "absent.zarr") == before


class _Crash(Exception):
    pass


def test_resume_after_interruption_is_bit_identical(mixed_store, tmp_path, monkeypatch):
    """Kill training after a few chunk writes; resuming gives the uninterrupted store's bytes."""
    path = tmp_path / "interrupted.zarr"
    real_write = store_mod.write_region
    calls = {"n": 0}

    def crashing_write(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise _Crash
        return real_write(*args, **kwargs)

    monkeypatch.setattr(store_mod, "write_region", crashing_write)
    with pytest.raises(_Crash):
        train_plan(plan_from_config(MIXED), store=path)
    monkeypatch.setattr(store_mod, "write_region", real_write)
    assert store_mod.read_attrs(path)["geomtraj_status"] == store_mod.STATUS_TRAINING
    _assert_store_error(path)  # incomplete
    train_plan(plan_from_config(MIXED), store=path, resume=True)
    a, b = _tree_bytes(mixed_store), _tree_bytes(path)
    assert sorted(a) == sorted(b)
    assert [k for k in a if a[k] != b[k]] == []


# ------------------------------------------------------------------------- run chunks by size

SMALL_RUNS = {
    "steps": 20,
    "data": {"name": "sincos", "n_points": 16},
    "model": {"hidden": "4x3"},
    "optimizer": {"lr": 1e-2},
    "runs": {"seeds": list(range(40)), "precision": "float32"},
    "record_params": 0,
}


def test_default_run_chunk_grows_only_while_chunks_are_small():
    """Eight runs of 20 updates make chunks of a few hundred bytes: the default run chunk doubles
    (to 32 of these 40 runs: never past the run count; to 64 of 300; to 128 of 1,024, an eighth,
    so --scheduler still has blocks to hand out); with every coordinate of 20,000 steps
    recorded, eight runs already fill a chunk of about 4 MiB (the chunk target) and it stays 8;
    16 coordinates of 2,000 steps grow to 32 runs, the first chunk of 3 MiB or more."""
    small = plan_from_config(SMALL_RUNS)
    assert small.chunking(0)[0] == 32
    many = plan_from_config({**SMALL_RUNS, "runs": {"seeds": list(range(300))}})
    assert many.chunking(0)[0] == 64  # RUN_CHUNK_MAX
    # past 8 * RUN_CHUNK_MAX runs, blocks of an eighth of the runs: 1,024 runs -> 128 per chunk
    plenty = plan_from_config({**SMALL_RUNS, "runs": {"seeds": list(range(1024))}})
    assert plenty.chunking(0)[0] == 128
    small.run_chunk = 8  # an explicit run chunk is kept
    assert small.chunking(0)[0] == 8
    big = plan_from_config({**SMALL_RUNS, "steps": 20_000, "record_params": "all"})
    rec = big.recorded_indices().shape[1]
    run_chunk, rows = big.chunking(rec)
    assert run_chunk == 8
    assert run_chunk * rows * rec * 4 >= 3 * 2**20
    runs = {"seeds": list(range(1024)), "precision": "float32"}
    some = plan_from_config({**SMALL_RUNS, "steps": 2000, "record_params": 16, "runs": runs})
    run_chunk, rows = some.chunking(16)
    assert (run_chunk, rows) == (32, 2000)  # 16 runs: 2.0 MB, 32 runs: 4.1 MB


def test_a_store_keeps_its_own_run_chunk_when_resumed_trained_by_block_or_finished(tmp_path):
    """A store laid out with another run chunk than today's default (as older versions made
    them) is resumed in its own layout, and ends byte-identical to one trained in that layout."""
    from geomtraj.train.trainer import (
        create_store,
        finish_store,
        plan_for_store,
        run_blocks,
        train_block,
    )

    old = plan_from_config(SMALL_RUNS)
    old.run_chunk = 8
    now = plan_from_config(SMALL_RUNS)
    assert now.chunking(0)[0] != 8 and now.fingerprint() != old.fingerprint()

    reference = tmp_path / "reference.zarr"
    train_plan(old, reference)
    assert plan_for_store(now, reference).fingerprint() == old.fingerprint()
    assert plan_for_store(now, tmp_path / "absent.zarr") is now

    interrupted = tmp_path / "interrupted.zarr"
    create_store(old, interrupted)  # the template only, as a run killed before its first write
    train_plan(now, interrupted, resume=True)

    blocks = tmp_path / "blocks.zarr"
    create_store(old, blocks)
    for b in run_blocks(old):
        train_block(now, blocks, b)
    finish_store(now, blocks)

    want = _tree_bytes(reference)
    for path in (interrupted, blocks):
        got = _tree_bytes(path)
        assert sorted(got) == sorted(want)
        assert [k for k in want if got[k] != want[k]] == []


def test_dry_run_estimate_follows_the_kernel_each_run_takes():
    """``--dry-run`` prices each run at the rate of the kernel it will train in: full-batch runs
    of one architecture with a lane block per thread take the lane kernel (faster per
    network-step); a group too small for that, and mini-batch runs, take the per-run kernel."""
    from geomtraj.train.plan import LANE_RATE, REFERENCE_RATE, estimate_seconds, lane_key

    cfg = {
        **SMALL_RUNS,
        "data": {"name": "sincos", "n_points": 64},
        "model": {"hidden": "12x24"},
        "runs": {"seeds": list(range(64)), "precision": "float32"},
    }
    lanes = plan_from_config(cfg)
    assert all(lane_key(r, lanes) == lane_key(lanes.runs[0], lanes) for r in lanes.runs)
    few = plan_from_config({**cfg, "runs": {"seeds": list(range(8)), "precision": "float32"}})
    mini = plan_from_config(
        {**cfg, "runs": {"seeds": list(range(64)), "precision": "float32", "batch_size": 16}}
    )
    assert lane_key(mini.runs[0], mini) is None
    per_step = {name: estimate_seconds(p, 2) / len(p.runs) for name, p in
                [("lanes", lanes), ("few", few), ("mini", mini)]}  # fmt: skip
    speedup = LANE_RATE["float32"] / REFERENCE_RATE["float32"]
    assert per_step["few"] == pytest.approx(per_step["lanes"] * speedup)
    assert per_step["mini"] == pytest.approx(per_step["few"])
    # with 2 cores, 32 runs is one lane block per thread; on 4 cores 64 runs are just enough
    assert estimate_seconds(lanes, 4) == pytest.approx(estimate_seconds(lanes, 2) / 2)
