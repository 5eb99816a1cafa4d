"""Early warning of divergence: features with known values on analytic series, no look-ahead,
the grouped classifier and its bootstrap on synthetic feature tables, and a small diverging grid."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from synth_stability import synthetic_features, synthetic_store

from geomtraj.analysis import early_warning as ew
from geomtraj.analysis.base import RunData
from geomtraj.analysis.early_warning import FEATURES, EarlyWarningParams, window_features
from geomtraj.errors import GeomtrajError

PARAMS = EarlyWarningParams(window=200, min_start=10)


def _feature(values: np.ndarray, name: str) -> float:
    return float(values[FEATURES.index(name)])


# ---------------------------------------------------------------- features with known values


def test_trends_have_the_rates_of_the_analytic_series():
    ds = synthetic_store(1000, update_rate=0.002, flip_rate=0.004)
    f = window_features(RunData(ds, 0), [600], PARAMS)[0]
    # slopes per 100 steps of log10 quantities: 100 * rate / ln(10)
    assert _feature(f, "update_trend") == pytest.approx(100 * 0.002 / np.log(10), rel=1e-9)
    assert _feature(f, "flip_growth") == pytest.approx(100 * 0.004 / np.log(10), rel=1e-9)
    # loss at theta_{e-1}: train_loss of iteration e
    assert _feature(f, "loss_level") == pytest.approx(np.log10(0.5 * np.exp(-600 / 500)))


def test_update_ratio_and_v_of_a_constant_gradient():
    g = 0.3
    ds = synthetic_store(1000, gradient=g)
    f = window_features(RunData(ds, 0), [500], PARAMS)[0]
    ratio = g / (g + 1e-8)
    assert _feature(f, "ratio_median") == pytest.approx(ratio, rel=1e-12)
    assert _feature(f, "ratio_max") == pytest.approx(np.log10(ratio), abs=1e-12)
    assert _feature(f, "large_ratio_fraction") == 1.0
    assert _feature(f, "v_floor") == pytest.approx(np.log10(g * g), rel=1e-12)
    assert _feature(f, "v_trend") == pytest.approx(0.0, abs=1e-9)


def test_bursts_are_counted_in_the_window_only():
    ds = synthetic_store(2000, update_rate=0.0, burst_steps=(700, 900, 1000, 1500))
    f = window_features(RunData(ds, 0), [1100, 1600], EarlyWarningParams(window=500))
    # the windows (600, 1100] and (1100, 1600] hold 3 and 1 onsets: per 1000 steps
    assert _feature(f[0], "burst_rate") == pytest.approx(1000 * 3 / 500)
    assert _feature(f[1], "burst_rate") == pytest.approx(1000 * 1 / 500)
    assert _feature(f[0], "burst_amplitude") == pytest.approx(np.log10(50), rel=0.05)


def test_features_do_not_look_past_the_window_end():
    """Replacing everything after the window's end by other values changes no feature."""
    ds = synthetic_store(1000, burst_steps=(300, 650))
    end = 500
    other = ds.copy(deep=True)
    after_it = ds["iteration"].values > end
    after_row = ds["step"].values > end
    rng = np.random.default_rng(0)
    for name in ("update_norm", "train_loss"):
        arr = other[name].values.copy()
        arr[0, after_it] = rng.uniform(1e-3, 1e3, after_it.sum())
        other[name] = other[name].copy(data=arr)
    for name in ("theta", "m", "v"):
        arr = other[name].values.copy()
        arr[0, after_row] = rng.uniform(1e-3, 1.0, (after_row.sum(), arr.shape[2]))
        other[name] = other[name].copy(data=arr)
    a = window_features(RunData(ds, 0), [end], PARAMS)[0]
    b = window_features(RunData(other, 0), [end], PARAMS)[0]
    np.testing.assert_array_equal(a, b)


def test_bad_settings_are_one_line_errors():
    with pytest.raises(GeomtrajError, match="control"):
        EarlyWarningParams(control="random")
    with pytest.raises(GeomtrajError, match="lead_times"):
        EarlyWarningParams(lead_times=(-5,))


# ------------------------------------------------------------------- classifier and bootstrap


def test_bootstrap_auc_equals_sklearn_on_the_resampled_points():
    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(6), 5)
    y = np.tile([1, 1, 0, 0, 0], 6)
    score = rng.standard_normal(y.size) + y
    score[3] = score[0]  # a tie between a positive and a negative
    counts = rng.multinomial(6, np.full(6, 1 / 6), size=20)
    got = ew.bootstrap_auc(y, [score], groups, 20, rng, counts=counts)[:, 0]
    want = []
    for c in counts:
        idx = np.concatenate([np.repeat(np.flatnonzero(groups == g), c[g]) for g in range(6)])
        if np.unique(y[idx]).size == 2:
            want.append(roc_auc_score(y[idx], score[idx]))
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_seed_bootstrap_interval_covers_the_population_auc_most_of_the_time():
    # positives ~ N(1, 1), negatives ~ N(0, 1): population AUC = Phi(1 / sqrt(2)) = 0.7602
    from scipy.stats import norm

    truth = norm.cdf(1 / np.sqrt(2))
    rng = np.random.default_rng(5)
    groups = np.repeat(np.arange(30), 6)
    y = np.tile([1, 1, 1, 0, 0, 0], 30)
    hits = 0
    for _ in range(100):
        score = rng.standard_normal(y.size) + y
        b = ew.bootstrap_auc(y, [score], groups, 1000, rng)[:, 0]
        hits += np.quantile(b, 0.025) <= truth <= np.quantile(b, 0.975)
    assert 88 <= hits <= 99  # nominal 95%; 100 trials (92 hit with this seed)


def test_one_seed_cannot_be_resampled():
    y = np.array([1, 0, 1, 0])
    out = ew.bootstrap_auc(y, [y * 1.0], np.zeros(4), 100, np.random.default_rng(0))
    assert out.shape == (0, 1)


def test_an_informative_geometry_feature_beats_a_noise_loss():
    rep = ew.report(synthetic_features(n_seeds=30, informative="ratio_max"))["early_warning"]
    for entry in rep["curves"]["end"]:
        assert entry["auc_geometry"] > 0.8
        # out-of-fold AUC of a noise feature: 0.5 up to sampling (sd ~0.05 for 120 runs)
        assert abs(entry["auc_loss"] - 0.5) < 0.2
        assert entry["verdict"] == "geometry beats loss"
        assert entry["feature_auc"]["ratio_max"] > 0.85
    assert rep["coefficients"]["ratio_max"] > 0


def test_an_informative_loss_is_not_beaten_by_noise_geometry():
    rep = ew.report(synthetic_features(n_seeds=30, informative="loss_level"))["early_warning"]
    for entry in rep["curves"]["end"]:
        assert entry["auc_loss"] > 0.8
        assert entry["verdict"] == "loss beats geometry"


def test_matched_controls_remove_a_training_time_confound():
    """The loss only tracks the window's end step: runs diverge early, controls end late."""
    res = synthetic_features(informative="burst_rate")
    li = FEATURES.index("loss_level")
    feats = res["features"].values.copy()
    feats[:, :, li] = -res["window_end"].values / 1000.0  # loss falls with training time
    ctrl = res["control_features"].values.copy()
    ctrl[:, :, li] = -res["control_end"].values[None, :] / 1000.0
    res = res.assign(features=res["features"].copy(data=feats),
                     control_features=res["control_features"].copy(data=ctrl))  # fmt: skip
    rep = ew.report(res)["early_warning"]
    end = rep["curves"]["end"][0]
    matched = rep["curves"]["matched"][0]
    assert end["auc_loss"] == pytest.approx(1.0)  # the confound, perfectly
    assert abs(matched["auc_loss"] - 0.5) < 0.15  # gone once times are matched
    assert matched["auc_geometry"] > 0.8


def test_too_few_diverged_runs_give_a_note():
    res = synthetic_features(n_seeds=2)
    rep = ew.report(res)["early_warning"]
    assert rep["verdict"] == "not measurable" and "at least" in rep["note"]


# ------------------------------------------------------------------------- a diverging grid


@pytest.mark.slow
def test_small_diverging_grid(tmp_path):
    """relu nets with beta1 > sqrt(beta2): some diverge; every part of the analysis runs."""
    from geomtraj.train.data import make_dataset
    from geomtraj.train.trainer import train

    X, y = make_dataset("sincos", 64, 0)
    seeds = np.repeat(np.arange(10), 2)
    ds = train(X, y, hidden=(8, 8), activation="relu", beta1=0.99, beta2=0.92, lr=0.01,
               precision=["float32", "bfloat16"] * 10, seed=seeds, steps=3000, record_every=1,
               record_params=8, snapshot_every=50)  # fmt: skip
    d = ds["diverged_step"].values
    assert 5 <= np.sum(d > 0) <= 15
    res = ew.analyze(ds, lead_times=(0, 100, 400), n_boot=200, n_matchings=2)
    assert np.isfinite(res["features"].sel(feature="sharpness_ratio").values).any()
    rep = ew.report(res)
    sec = rep["early_warning"]
    assert sec["n_diverged"] == np.sum(d > 0)
    for entry in sec["curves"]["matched"]:
        if entry["auc_geometry"] is not None:
            assert 0.0 <= entry["auc_geometry"] <= 1.0 and entry["verdict"]
    paths = ew.figures(ds, res, tmp_path)
    assert paths and paths[0].stat().st_size > 0


def test_windows_stay_inside_the_analysed_steps():
    import xarray as xr

    from geomtraj.analysis.runner import select_steps

    ds = synthetic_store(1000)
    # a second run that diverges, so that the store has something to predict
    both = xr.concat([ds, synthetic_store(1000, diverged_step=700)], dim="run",
                     data_vars="minimal", coords="minimal", compat="override")  # fmt: skip
    view = select_steps(both, (301, 800))
    res = ew.analyze(view, lead_times=(0, 100, 500), n_boot=10)
    ends = res["window_end"].values[0]
    assert ends.tolist() == [800, 700, -1]  # (500 - 200, 500] starts before step 300
    assert res["window_end"].values[1].tolist() == [699, 599, -1]  # diverged at 700
    grid = res["control_end"].values
    has = np.isfinite(res["control_features"].values[0]).any(axis=1)
    assert grid[has].min() >= 300 + 200 and grid[has].max() <= 800
    full = window_features(RunData(ds, 0), [700], EarlyWarningParams())[0]
    np.testing.assert_array_equal(res["features"].values[0, 1], full)


def test_a_store_without_divergence_is_not_measurable():
    ds = synthetic_store(500)
    res = ew.analyze(ds)
    assert np.isnan(res["features"].values).all()
    assert "no run of the store diverged" in str(res["note"].values[0])
    rep = ew.report(res)["early_warning"]
    assert rep["verdict"] == "not measurable" and rep["n_diverged"] == 0


def test_a_store_without_training_data_marks_the_sharpness_not_measurable(tmp_path, capsys):
    """geomtraj analyze on a fixture copy whose data variables were dropped exits 0."""
    import json
    import shutil

    import datafiles

    from geomtraj.cli import main
    from geomtraj.store.zarrstore import CHUNK_CHECKSUMS, chunk_checksums

    store = tmp_path / "nodata.zarr"
    shutil.copytree(datafiles.fixture_path("diverging"), store)
    for name in ("data_x", "data_y"):
        shutil.rmtree(store / name)
    meta = json.loads((store / "zarr.json").read_text())
    for name in ("data_x", "data_y"):  # consolidated metadata, where the writer kept it
        (meta.get("consolidated_metadata") or {}).get("metadata", {}).pop(name, None)
    # the arrays were dropped on purpose, so the chunk table is retaken: without that the store
    # is (rightly) refused as damaged, which tests/test_bad_input.py checks
    meta["attributes"][CHUNK_CHECKSUMS] = chunk_checksums(store)
    (store / "zarr.json").write_text(json.dumps(meta))
    out = tmp_path / "report"
    code = main(["analyze", str(store), "--out", str(out), "--analyses",
                 "stability,early_warning", "--quiet"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    doc = json.loads((out / "report.json").read_text())
    assert doc["errors"] == []
    (run,) = doc["runs"]
    assert run["stability"]["verdict"] == "not measurable"
    assert run["early_warning"]["sharpness_ratio"] == "not measurable"
    assert "data_x, data_y" in run["early_warning"]["note"]
    assert doc["early_warning"]["sharpness_ratio"].startswith("not measurable: ")
    (entry,) = doc["stability"]["runs"]
    assert "data_x, data_y" in entry["note"]
