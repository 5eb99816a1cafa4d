"""The reproduction studies: configs, the study command, verdict rules and the claims table.

The end-to-end test runs every study at ``--scale small`` (the code that runs at full scale, on
reduced grids) and checks that the claims table comes out with every row filled.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from geomtraj.cli import main
from geomtraj.errors import ConfigError, GeomtrajError
from geomtraj.study import STUDIES, _merge, load_study, run_study
from geomtraj.study import betas_study as betas_mod
from geomtraj.study import twins_study as twins_mod
from geomtraj.study.claims import (
    CLAIMS,
    VERDICTS,
    bootstrap_ci,
    ratio_of_sums_ci,
    resample_ci,
    wilson,
)
from geomtraj.study.results import claims_table
from geomtraj.train.config import expand_hidden, plan_from_config

# ----------------------------------------------------------------------- configs and manifests


def test_hidden_ranges_expand_to_the_product_of_widths():
    assert expand_hidden("5..7x12") == ["5x12", "6x12", "7x12"]
    assert expand_hidden("1..3:2x4..5") == ["1x4", "1x5", "3x4", "3x5"]
    assert len(expand_hidden("5..44x5..44")) == 1600
    assert expand_hidden("12x24") == ["12x24"]
    for bad in ("5..x3", "7..5x3", "0..3x3", "1..3:0x2"):
        with pytest.raises(ValueError):
            expand_hidden(bad)


def test_bad_hidden_range_in_a_config_is_a_config_error():
    with pytest.raises(ConfigError, match="model.hidden"):
        plan_from_config({"steps": 10, "model": {"hidden": ["5..x3"]}})


def test_merge_overrides_tables_recursively():
    base = {"steps": 10, "model": {"hidden": ["1x1"], "activation": "tanh"}, "runs": {"seeds": [0]}}
    out = _merge(base, {"steps": 5, "model": {"hidden": ["2x2"]}})
    assert out == {"steps": 5, "model": {"hidden": ["2x2"], "activation": "tanh"},
                   "runs": {"seeds": [0]}}  # fmt: skip
    assert base["model"]["hidden"] == ["1x1"]  # the base config is not modified


@pytest.mark.parametrize("name", STUDIES)
def test_full_scale_plans_match_what_the_issue_asks(name):
    study = load_study(name, "full")
    plans = {s.name: s.plan for s in study.stores}
    if name == "netay":
        f32, f64 = plans["f32"], plans["f64"]
        widths = {r.spec.hidden for r in f32.runs}
        assert len(f32.runs) == 1600 and len(widths) == 1600
        assert {(12, 24), (16, 29), (17, 12), (20, 20), (27, 27)} <= widths
        assert f32.steps == 50000 and {r.precision for r in f32.runs} == {"float32"}
        assert {r.precision for r in f64.runs} == {"float64"} and len(f64.runs) >= 100
        # each store stays under 10 GB even before compression
        from geomtraj.train.plan import estimate

        for p in plans.values():
            assert estimate(p, 1.0)["store_bytes_uncompressed"] < 10 * 10**9
        assert f32.snapshot_every > 0 and 0 < f32.record_params < 64
    if name == "betas":
        (plan,) = plans.values()
        b1 = sorted({r.beta1 for r in plan.runs})
        b2 = sorted({r.beta2 for r in plan.runs})
        assert 1 / (1 - b1[-1]) >= 10 * 1 / (1 - b1[0]) - 1e-9
        assert 1 / (1 - b2[-1]) >= 10 * 1 / (1 - b2[0]) - 1e-6
        assert len({r.seed for r in plan.runs}) >= 5
        assert {r.precision for r in plan.runs} == {"float64", "float32", "bfloat16", "float16"}
    if name == "divergence":
        runs = [r for p in plans.values() for r in p.runs]
        assert all(p.steps == 50000 for p in plans.values())
        assert {r.precision for r in runs} == {"float64", "float32", "bfloat16", "float16"}
        lrs, epss = {r.lr for r in runs}, {r.eps for r in runs}
        assert min(lrs) == pytest.approx(1e-3) and max(lrs) == pytest.approx(1e-1)
        assert min(epss) == pytest.approx(1e-12) and max(epss) == pytest.approx(1e-4)
        # both sides of beta1 = sqrt(beta2), where Adam's update is and is not bounded
        assert {r.beta1 > r.beta2**0.5 for r in runs} == {True, False}
        losses = {(p.datasets[r.data].name, r.spec.loss) for p in plans.values() for r in p.runs}
        assert losses == {("sincos", "mse"), ("moons", "bce"), ("spirals", "bce")}
        # every setting is run in every precision with the same seeds (paired runs)
        key = lambda r: (r.data, r.beta1, r.beta2, r.lr, r.eps, r.seed)  # noqa: E731
        for p in plans.values():
            by = {}
            for r in p.runs:
                by.setdefault(key(r), set()).add(r.precision)
            assert all(len(v) == 4 for v in by.values())
    if name == "twins":
        (plan,) = plans.values()
        kinds = {r.perturbation.kind for r in plan.runs if r.perturbation}
        assert kinds == {"ulp", "scale"}
        assert len({r.seed for r in plan.runs}) >= 5


def test_small_scale_is_smaller():
    for name in STUDIES:
        full, small = load_study(name, "full"), load_study(name, "small")
        for a, b in zip(full.stores, small.stores, strict=True):
            pa, pb = a.plan, b.plan
            assert len(pb.runs) * pb.steps < len(pa.runs) * pa.steps / 10


def test_unknown_study_scale_and_manifest_keys_are_one_line_errors(tmp_path, capsys):
    assert main(["study", "nope", "--dry-run"]) == 2
    assert main(["study", "netay", "--scale", "huge", "--dry-run"]) == 2
    (tmp_path / "netay").mkdir()
    (tmp_path / "netay" / "study.toml").write_text('name = "netay"\nstore = 1\n')
    assert main(["study", "netay", "--studies", str(tmp_path), "--dry-run"]) == 2
    (tmp_path / "netay" / "study.toml").write_text('name = "netay"\n')
    assert main(["study", "netay", "--studies", str(tmp_path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(line.startswith("geomtraj: error:") for line in err)
    assert (
        "unknown" in err[0] and "huge" in err[1] and "store" in err[2] and "no [[stores]]" in err[3]
    )


def test_dry_run_prints_the_plan_and_trains_nothing(tmp_path, capsys):
    assert main(["study", "netay", "--dry-run", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "1600 runs x 50000 steps" in out and "snapshots every 2500" in out
    assert "MiB before compression" in out and "time: about" in out
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------ statistics


def test_wilson_interval_matches_the_closed_form():
    k, n, z = 7, 20, 1.959963984540054
    p = k / n
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
    lo, hi = wilson(k, n)
    assert lo == pytest.approx(centre - half, rel=1e-9) and hi == pytest.approx(centre + half)
    assert wilson(0, 0) is None and wilson(0, 10)[0] == 0.0


def test_bootstrap_interval_covers_the_true_median_most_of_the_time():
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(100):
        ci = bootstrap_ci(rng.normal(3.0, 1.0, 60))
        hits += ci[0] <= 3.0 <= ci[1]
    assert 88 <= hits <= 99  # nominal 95%; 100 trials
    assert bootstrap_ci([1.0, 2.0]) is None


def test_ratio_interval_is_the_same_evaluated_at_once_or_per_resample():
    # the vectorized statistic sees the same seeded resamples as a per-resample one
    rng = np.random.default_rng(1)
    a, b = rng.gamma(2.0, 1.0, 40), rng.gamma(4.0, 1.0, 40)
    at_once = resample_ci([a, b], lambda x, y, axis=-1: x.mean(axis) / y.mean(axis))
    one_by_one = resample_ci([a, b], lambda x, y: x.mean() / y.mean())
    np.testing.assert_allclose(at_once, one_by_one, rtol=1e-12)


def test_ratio_interval_covers_the_true_ratio_most_of_the_time():
    rng = np.random.default_rng(2)
    hits = 0
    for _ in range(100):
        a, b = rng.gamma(2.0, 1.0, 50), rng.gamma(4.0, 1.0, 50)
        ci = resample_ci([a, b], lambda x, y, axis=-1: x.mean(axis) / y.mean(axis))
        hits += ci[0] <= 0.5 <= ci[1]
    assert 88 <= hits <= 99  # nominal 95%; 100 trials (95 hit with this seed)


def test_pooled_fraction_resamples_runs():
    est, ci = ratio_of_sums_ci([1, 2, 3, 0], [10, 10, 10, 10])
    assert est == pytest.approx(6 / 40)
    assert ci[0] < est < ci[1]


# ---------------------------------------------------------------------------- verdict rules


def _ladder_runs(rate: dict[str, float], n_seeds=6):
    runs = []
    for seed in range(n_seeds):
        for prec, r in rate.items():
            runs.append({"hidden": "12x24", "beta1": 0.9, "beta2": 0.999, "lr": 1e-3, "eps": 1e-7,
                         "seed": seed, "precision": prec, "twin_of": -1, "n_steps": 10000,
                         "n_bursts": int(r * 10 + seed), "diverged_step": None})  # fmt: skip
    return runs


@pytest.mark.parametrize(
    "rates, verdict",
    [
        ({"float64": 0.5, "float32": 5.0}, "supported"),
        ({"float64": 3.5, "float32": 5.0}, "partly"),
        ({"float64": 5.0, "float32": 5.0}, "not supported"),
    ],
)
def test_precision_verdict_follows_the_paired_burst_rate_ratio(rates, verdict):
    runs = _ladder_runs(rates)
    meas = betas_mod.measure(type("C", (), {"reports": {"ladder": {"runs": runs}}})())
    r = betas_mod._precision_row(meas)
    assert r["verdict"] == verdict
    expected = np.mean([rates["float64"] * 10 + s for s in range(6)]) / np.mean(
        [rates["float32"] * 10 + s for s in range(6)]
    )
    assert meas["paired_rate_ratio"]["float64/float32"]["ratio"] == pytest.approx(expected)


def test_twin_spread_verdict_band():
    for ci, verdict in (([0.5, 2.0], "supported"), ([0.05, 0.5], "partly"), ([0.01, 0.1],
                        "not supported")):  # fmt: skip
        rep = {"twin_spread": {"final_loss": {"float32": {"ratio": 0.3, "ci": ci}}}}
        assert twins_mod._spread(rep)["verdict"] == verdict


# ------------------------------------------------------------------- the small studies, whole


@pytest.fixture(scope="module")
def small_studies(tmp_path_factory):
    out = tmp_path_factory.mktemp("studies")
    page = out / "RESULTS.md"
    docs = {name: run_study(name, "small", out=out, results=page, progress=False,
                            log=lambda m: None) for name in STUDIES}  # fmt: skip
    return out, page, docs


@pytest.mark.slow
def test_small_studies_fill_every_row_of_the_claims_table(small_studies):
    out, page, docs = small_studies
    from geomtraj.study.results import load_studies

    rows = claims_table(load_studies(out))
    assert [r["id"] for r in rows] == [c[0] for c in CLAIMS]
    for r in rows:
        assert r["verdict"] in VERDICTS, r
        assert r["measured"] and r["rule"] and r["source"], r
    text = page.read_text()
    for r in rows:
        assert r["claim"] in text and f"**{r['verdict']}**" in text
    assert "## What surprised us" in text and "## How to reproduce" in text
    for doc in docs.values():
        for f in doc["figures"]:
            assert (page.parent / "results" / f.split("/")[-1]).is_file()
    # numbers in the table come from the reports: the divergence row counts the f32 store's runs
    f32 = json.loads((out / "netay" / "f32-report" / "report.json").read_text())
    n = sum(r["twin_of"] < 0 for r in f32["runs"])
    assert f"/{n} = " in rows[0]["measured"]


@pytest.mark.slow
def test_rerun_reuses_stores_and_from_reports_rejudges(small_studies, capsys):
    out, page, docs = small_studies
    before = (out / "twins" / "twins.zarr" / "zarr.json").stat().st_mtime_ns
    msgs = []
    doc = run_study("twins", "small", out=out, results=page, progress=False, log=msgs.append)
    assert any("reusing the complete store" in m for m in msgs)
    assert (out / "twins" / "twins.zarr" / "zarr.json").stat().st_mtime_ns == before
    assert (
        doc["stores"]["twins"]["train_seconds"] == docs["twins"]["stores"]["twins"]["train_seconds"]
    )
    assert doc["stores"]["twins"]["trained"] == "reused"
    # the study's total stays the first run's, not the shorter rerun's
    assert doc["wall_seconds"] == docs["twins"]["wall_seconds"] is not None
    again = run_study("twins", "small", out=out, results=page, from_reports=True, log=msgs.append)
    assert again["claims"] == doc["claims"]


def test_a_store_of_another_config_is_not_overwritten(tmp_path):
    study = load_study("twins", "small")
    path = tmp_path / "twins" / "twins.zarr"
    path.mkdir(parents=True)
    attrs = {"geomtraj_fingerprint": "x"}
    meta = {"zarr_format": 3, "node_type": "group", "attributes": attrs}
    (path / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(GeomtrajError, match="another config"):
        run_study(study.name, "small", out=tmp_path, progress=False, log=lambda m: None)


def test_a_copy_of_a_study_folder_does_not_stand_in_for_the_study(tmp_path):
    # a folder kept for comparison ("netay.old") holds a study.json of the same study; the
    # results page reads the study's own folder only, whichever name sorts last
    from geomtraj.study.results import load_studies

    for folder, wall in (("netay", 100.0), ("netay.old", 200.0), ("netay.zz", 300.0)):
        (tmp_path / folder).mkdir()
        doc = {"study": "netay", "claims": [], "wall_seconds": wall}
        (tmp_path / folder / "study.json").write_text(json.dumps(doc))
    assert load_studies(tmp_path)["netay"]["wall_seconds"] == 100.0
    (tmp_path / "netay" / "study.json").unlink()
    assert load_studies(tmp_path) == {}
