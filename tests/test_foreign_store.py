"""Stores written by other producers (docs/store-contract.md): plain xarray, hand-built Datasets.

The synthetic runs are relaxation oscillations with known burst onsets (tests/synth_periods.py),
written with ``xarray.Dataset.to_zarr``'s defaults and only the variables the contract requires,
so the analyses must derive the per-update series themselves.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
from synth_periods import relaxation_oscillation

from geomtraj.analysis.base import RunData, per_update_note
from geomtraj.analysis.runner import select_runs
from geomtraj.cli import main
from geomtraj.errors import StoreError
from geomtraj.store.zarrstore import open_store

# xarray writes numpy's fixed-width strings, which zarr warns have no v3 spec yet (still readable)
pytestmark = pytest.mark.filterwarnings("ignore:The data type .* does not have a Zarr V3")

#: (slow period, seed) of the synthetic runs; 64 recorded parameters make zarr's default chunks of
#: theta (32 along param) disagree with those of param_name (64).
RUNS = [(300.0, 1), (500.0, 2)]
N_STEPS = 6000
N_PARAMS = 64


def _plain_dataset(step_stride: int = 1, attrs: dict | None = None) -> tuple[xr.Dataset, list]:
    runs = [
        relaxation_oscillation(
            n_steps=N_STEPS, slow_period=p, beta2=0.999, seed=s, n_params=N_PARAMS
        )
        for p, s in RUNS
    ]
    n_runs = len(runs)
    rows = slice(step_stride - 1, None, step_stride)

    def per_run(value, dtype=None):
        return (("run",), np.array([value] * n_runs, dtype=dtype))

    ds = xr.Dataset(
        {
            "theta": (("run", "step", "param"), np.stack([r.theta[rows] for r in runs])),
            "m": (("run", "step", "param"), np.stack([r.m[rows] for r in runs])),
            "v": (("run", "step", "param"), np.stack([r.v[rows] for r in runs])),
            "loss": (("run", "step"), np.stack([r.loss[rows] for r in runs])),
            "param_name": (("param",), np.array([f"w[{j}]" for j in range(N_PARAMS)])),
            "beta1": per_run(0.9),
            "beta2": (("run",), np.array([0.999, 0.995])),
            "lr": per_run(1e-3),
            "eps": per_run(1e-8),
            "weight_decay": per_run(0.0),
            "precision": per_run("float64"),
            "hidden": per_run("64"),
            "activation": per_run("tanh"),
            "dataset": per_run("synthetic"),
            "seed": (("run",), np.array([s for _, s in RUNS])),
            "n_params": per_run(N_PARAMS),
            "twin_of": per_run(-1),
            "perturbation": per_run("none"),
            "diverged_step": per_run(-1),
        },
        coords={"step": runs[0].steps[rows]},
        attrs={"geomtraj_schema": 1, **(attrs or {})},
    )
    return ds, runs


@pytest.fixture(scope="module")
def plain_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("foreign") / "plain.zarr"
    ds, runs = _plain_dataset()
    ds.to_zarr(path, zarr_format=3, consolidated=False)
    return path, runs


def _chunks(path, var):
    meta = json.loads((path / var / "zarr.json").read_text())
    return meta["chunk_grid"]["configuration"]["chunk_shape"]


def test_plain_store_opens_as_complete_with_its_own_chunks(plain_store) -> None:
    path, _ = plain_store
    # the premise: xarray's defaults chunk theta and param_name differently along param
    assert _chunks(path, "theta")[2] != _chunks(path, "param_name")[0]
    ds = open_store(path)  # no geomtraj_status: another producer's store, complete
    assert ds.chunks["param"] == ds["theta"].chunksizes["param"]
    np.testing.assert_array_equal(
        RunData(ds, 1).theta, xr.open_zarr(path, consolidated=False)["theta"].values[1]
    )


def test_plain_store_is_analysed_and_its_slow_periods_are_right(plain_store, tmp_path) -> None:
    path, runs = plain_store
    out = tmp_path / "report"
    code = main(
        ["analyze", str(path), "--out", str(out), "--analyses", "periods,spirals,diffusion,twins"]
    )
    assert code == 0
    doc = json.loads((out / "report.json").read_text())
    for entry, run in zip(doc["runs"], runs, strict=True):
        assert entry["status"] == "ok"
        assert "derived from the recorded rows" in entry["note"]
        assert entry["final_loss"] == pytest.approx(run.loss[-1], rel=1e-12)
        truth = float(np.mean(np.diff(run.onsets)))  # jittered intervals: their mean
        assert entry["n_bursts"] == len(run.onsets)
        assert abs(entry["slow"]["period"] - truth) / truth < 0.05, (entry["slow"], truth)


def test_plain_store_with_every_analysis_exits_0(plain_store, tmp_path) -> None:
    path, _ = plain_store
    out = tmp_path / "r"
    assert main(["analyze", str(path), "--out", str(out)]) == 0
    doc = json.loads((out / "report.json").read_text())
    # no training data: the analyses that recompute the Hessian say so instead of measuring
    assert [e["stability"]["verdict"] for e in doc["runs"]] == ["not measurable"] * 2
    assert "holds no data_x" in json.dumps(doc["stability"])
    assert doc["early_warning"]["verdict"] == "not measurable"
    for name in ("stability", "early_warning"):  # and the report does not call them ok
        assert doc["analyses"][name]["status"] == "not measurable", doc["analyses"][name]
        assert doc["analyses"][name]["note"]


def test_status_training_is_refused_and_unknown_status_too(tmp_path) -> None:
    ds, _ = _plain_dataset()
    ds = ds.isel(run=[0], step=slice(0, 50))
    for status, fix in (("training", "allow_incomplete=True"), ("done?", "expected")):
        path = tmp_path / f"{status}.zarr"
        ds.attrs.update(geomtraj_status=status, geomtraj_producer="a JAX loop")
        ds.to_zarr(path, zarr_format=3, consolidated=False)
        with pytest.raises(StoreError, match=fix) as err:
            open_store(path)
        assert "\n" not in str(err.value)
    assert open_store(tmp_path / "training.zarr", allow_incomplete=True).sizes["step"] == 50


def test_rows_every_5_updates_make_the_run_insufficient_naming_the_series(tmp_path) -> None:
    ds, _ = _plain_dataset(step_stride=5, attrs={"record_every": 5})
    path = tmp_path / "stride5.zarr"
    ds.to_zarr(path, zarr_format=3, consolidated=False)
    note = per_update_note(open_store(path), 0)
    assert "update_norm and train_loss not in the store" in note and "every 5 updates" in note
    out = tmp_path / "report"
    assert main(["analyze", str(path), "--out", str(out), "--analyses", "periods"]) == 0
    doc = json.loads((out / "report.json").read_text())
    assert [e["status"] for e in doc["runs"]] == ["insufficient", "insufficient"]
    assert all("update_norm" in e["note"] for e in doc["runs"])


def test_derived_series_equal_the_true_ones() -> None:
    ds, runs = _plain_dataset()
    run = RunData(ds, 0)
    np.testing.assert_array_equal(run.iteration, np.arange(2, N_STEPS + 1))
    # the first update has no recorded predecessor; the others are the true update norms
    np.testing.assert_allclose(run.update_norm, runs[0].update_norm[1:], rtol=1e-12)
    np.testing.assert_array_equal(run.train_loss, runs[0].loss[1:])
    assert "all parameters" in run.per_update_note


def test_hand_built_dataset_without_eps_is_a_clear_error() -> None:
    ds, _ = _plain_dataset()
    with pytest.raises(StoreError, match="eps"):
        RunData(ds.drop_vars("eps"), 0)
    import geomtraj.accessor  # noqa: F401 - registers ds.geomtraj

    with pytest.raises(StoreError, match="missing variable.*eps"):
        ds.drop_vars("eps").geomtraj.periods()


def test_hand_built_dataset_is_analysed_in_memory() -> None:
    import geomtraj.accessor  # noqa: F401 - registers ds.geomtraj

    ds, runs = _plain_dataset()
    res = ds.geomtraj.periods(runs=[0])
    truth = float(np.mean(np.diff(runs[0].onsets)))
    assert abs(float(res["slow_period"].values[0]) - truth) / truth < 0.05


def test_run_table_is_coordinates_for_xarray_selection(plain_store) -> None:
    path, _ = plain_store
    ds = open_store(path)
    assert "beta2" in ds.coords and isinstance(ds["beta2"].variable._data, np.ndarray)
    assert ds.sel(run=ds.beta2 == 0.999).sizes["run"] == 1
    assert ds.query(run="beta2 > 0.997")["seed"].values.tolist() == [1]
    assert sorted(float(k) for k in ds.groupby("beta2").groups) == [0.995, 0.999]
    # --runs evaluates its query terms with the same machinery
    assert select_runs(ds, "beta2>0.997") == [0]
    assert select_runs(ds, "beta2 <= 0.997, precision=float64") == [1]
    assert select_runs(ds, "hidden=64") == [0, 1]
