"""The fixture stores: registered, described, showing what they claim, regenerable bit for bit."""

from __future__ import annotations

import importlib.util
import re
import shutil

import datafiles
import numpy as np
import pytest
import zarr

from geomtraj.analysis.base import RunData
from geomtraj.analysis.events import run_bursts
from geomtraj.errors import GeomtrajError
from geomtraj.store.zarrstore import open_store, strings


def _load_make_fixtures():
    """``fixtures/make_fixtures.py`` is a script, not a package module: load it by path."""
    path = datafiles.FIXTURES_DIR / "make_fixtures.py"
    spec = importlib.util.spec_from_file_location("make_fixtures", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


mf = _load_make_fixtures()


def _open(name: str):
    return open_store(datafiles.fixture_path(name))


def _bursts(name: str, run: int = 0):
    ds = _open(name)
    rd = RunData(ds, run)
    return rd, run_bursts(rd)


# ------------------------------------------------------------------------- registry and README


def test_registry_configs_stores_and_readme_agree():
    readme = (datafiles.FIXTURES_DIR / "README.md").read_text()
    lines = dict(re.findall(r"^- `(\w+)\.zarr`: (.*)$", readme, re.M))
    assert lines == datafiles.FIXTURES  # one README line per fixture, the registry's text
    assert set(mf.CONFIGS) == set(datafiles.FIXTURES)
    for name in datafiles.FIXTURES:
        ds = _open(name)
        assert ds.attrs["geomtraj_status"] == "complete"
        assert datafiles.FIXTURES[name] in ds.attrs["description"]
        assert getattr(datafiles, name.upper()) == datafiles.fixture_path(name)


def test_fixtures_are_small():
    total = sum(
        f.stat().st_size for f in datafiles.FIXTURES_DIR.rglob("*.zarr/**/*") if f.is_file()
    )
    assert total < 8e6, f"fixture stores hold {total / 1e6:.1f} MB; keep them to a few MB"


def test_unknown_fixture_is_a_clear_error():
    with pytest.raises(GeomtrajError, match="unknown; choose from"):
        datafiles.fixture_path("nope")


# ------------------------------------------------------------------ each fixture shows its claim


def test_bursts_f32_has_regular_bursts():
    rd, b = _bursts("bursts_f32")
    assert rd.hyper["precision"] == "float32" and rd.hyper["beta2"] == 0.999
    assert _open("bursts_f32")["theta"].dtype == np.float32
    assert len(b) >= 20
    # Regular: the intervals between onsets (after the transient first half) vary far less than
    # those of a Poisson process of events, whose coefficient of variation is 1.
    iv = b.intervals()[len(b) // 2 :]
    assert iv.std() / iv.mean() < 0.5


def test_bursts_f64_is_the_same_run_in_float64():
    a, b = _open("bursts_f32"), _open("bursts_f64")
    for var in ("beta1", "beta2", "lr", "eps", "seed", "n_params", "param_index"):
        np.testing.assert_array_equal(a[var].values, b[var].values)
    assert strings(b["precision"]) == ["float64"] and b["theta"].dtype == np.float64
    # one initial point, rounded to float32 for the float32 run (as the trainer rounds it)
    theta0_32, theta0_64 = a["theta_init"].values, b["theta_init"].values
    np.testing.assert_array_equal(theta0_32, theta0_64.astype(np.float32))
    rd32, b32 = _bursts("bursts_f32")
    rd64, b64 = _bursts("bursts_f64")
    assert len(b64) >= 20
    # same dynamics, other rounding: the burst times drift apart
    n = min(len(b32), len(b64))
    assert not np.array_equal(b32.onset[:n], b64.onset[:n])


def test_twins_ulp_pair_is_identical_until_the_perturbation_then_diverges():
    ds = _open("twins_ulp")
    assert ds["twin_of"].values.tolist() == [-1, 0]
    assert strings(ds["perturbation"]) == ["none", "ulp:+1@W1[0,3]@t=500"]
    step = ds["step"].values
    theta = ds["theta"].values
    before, after = step < 500, step >= 500
    # rows up to T-1 equal the original's bit for bit; from update T on they differ
    assert theta[0, before].tobytes() == theta[1, before].tobytes()
    assert not np.array_equal(theta[0, after], theta[1, after])
    d_end = np.linalg.norm(theta[0, -1] - theta[1, -1]) / np.linalg.norm(theta[0, -1])
    assert d_end > 1e-4  # grown by orders of magnitude from one ulp (~6e-8 relative)


def test_diverging_run_diverges_and_holds_nan_after():
    ds = _open("diverging")
    d = int(ds["diverged_step"].values[0])
    assert 1000 < d < int(ds.attrs["steps"])  # after a stretch of training, not at once
    step = ds["step"].values
    theta = ds["theta"].values[0]
    assert np.all(np.isfinite(theta[step < d]))
    assert np.all(np.isnan(theta[step >= d]))
    loss = ds["train_loss"].values[0]
    assert np.nanmax(loss) > 1e3 * loss[0]


def test_quiet_run_converges_without_bursts():
    rd, b = _bursts("quiet")
    assert len(b) == 0
    assert rd.diverged_step is None
    assert rd.train_loss[-1] < 0.01 * rd.train_loss[0]


def test_beta_grid_is_a_product_over_beta1_beta2_and_seeds():
    ds = _open("beta_grid")
    combos = set(zip(ds["beta1"].values, ds["beta2"].values, ds["seed"].values, strict=True))
    assert combos == {
        (b1, b2, s) for b1 in (0.8, 0.9) for b2 in (0.99, 0.995, 0.999) for s in (0, 1)
    }
    for run in range(ds.sizes["run"]):
        assert len(run_bursts(RunData(ds, run))) >= 5


# ---------------------------------------------------------------------- bit-identical rebuilds


def test_compare_stores_sees_one_ulp_and_ignores_software_versions(tmp_path):
    src = datafiles.fixture_path("diverging")
    a, b = tmp_path / "a.zarr", tmp_path / "b.zarr"
    shutil.copytree(src, a)
    shutil.copytree(src, b)
    assert mf.compare_stores(a, b) == []
    g = zarr.open_group(b, mode="r+")
    g.attrs["geomtraj_version"] = "99.0"
    g.attrs["datasets"] = g.attrs["datasets"].replace("numpy 2", "numpy 9")
    assert mf.compare_stores(a, b) == []  # versions of the writing software are not content
    theta = g["theta"]
    x = theta[0, 10, 3]
    theta[0, 10, 3] = np.nextafter(x, np.float32(np.inf))
    assert mf.compare_stores(a, b) == ["theta: values differ"]
    theta[0, 10, 3] = x
    g.attrs["steps"] = 1
    assert mf.compare_stores(a, b) == ["group attributes differ: ['steps']"]


@pytest.mark.slow
def test_every_fixture_regenerates_bit_identically():
    assert mf.check(list(mf.CONFIGS), verbose=False) == []
