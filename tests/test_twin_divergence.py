"""Twin divergence (Sun et al.): synthetic twins with known answers, then real last-bit twins."""

from __future__ import annotations

import json

import numpy as np
import pytest
from naive_dynamics import hinge_bruteforce
from synth_dynamics import exponential_twins, staircase_twins, twin_grid

from geomtraj.analysis import twins
from geomtraj.analysis.twins import (
    FORMAT_EPS,
    TwinParams,
    divergence_curves,
    fit_divergence,
    fit_hinge,
    perturbation_step,
    spread_comparison,
)
from geomtraj.errors import GeomtrajError

# ------------------------------------------------------------------------------ curves


def test_divergence_curves_match_their_definitions():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((50, 6))
    b = a + 1e-3 * rng.standard_normal((50, 6))
    a[3, 2] = b[3, 2] = 0.0  # a coordinate that is zero in both counts as equal
    l2, l1 = divergence_curves(a, b)
    for t in (0, 3, 49):
        assert l2[t] == pytest.approx(np.linalg.norm(a[t] - b[t]) / np.linalg.norm(a[t]))
        terms = [
            abs(x - y) / (abs(x) + abs(y)) if abs(x) + abs(y) > 0 else 0.0
            for x, y in zip(a[t], b[t], strict=True)
        ]
        assert l1[t] == pytest.approx(2 * np.mean(terms))
    same_l2, same_l1 = divergence_curves(a, a)
    assert np.all(same_l2 == 0) and np.all(same_l1 == 0)


def test_divergence_curves_reject_mismatched_shapes():
    with pytest.raises(GeomtrajError, match="same shape|one shape"):
        divergence_curves(np.zeros((3, 2)), np.zeros((3, 3)))


# ------------------------------------------------------------------------------ hinge


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hinge_fit_agrees_with_bruteforce(seed):
    rng = np.random.default_rng(seed)
    t = np.sort(rng.choice(np.arange(1, 400), size=120, replace=False)).astype(float)
    y = np.minimum(0.05 * t, 8.0) + rng.standard_normal(t.size)
    fast = fit_hinge(t, y, min_segment=10)
    tb, s1, s2, sse = hinge_bruteforce(t, y, 10)
    assert fast.breakpoint == tb
    assert fast.slope == pytest.approx(s1, rel=1e-8)
    assert fast.slope2 == pytest.approx(s2, rel=1e-6, abs=1e-10)
    assert fast.sse == pytest.approx(sse, rel=1e-8)


def test_hinge_recovers_an_exact_broken_line():
    t = np.arange(100.0)
    y = 3.0 + 0.2 * np.minimum(t, 60.0) - 0.01 * np.maximum(t - 60.0, 0.0)
    h = fit_hinge(t, y, min_segment=5)
    assert h.breakpoint == 60.0
    assert h.slope == pytest.approx(0.2) and h.slope2 == pytest.approx(-0.01)
    assert h(t) == pytest.approx(y)


# ------------------------------------------------------------------- synthetic twins


@pytest.mark.parametrize(("lyapunov", "seed"), [(0.005, 0), (0.02, 1), (0.1, 2)])
def test_exponent_and_saturation_of_exponential_twins(lyapunov, seed):
    """Known rate, known saturation: exponent within 10%, time to saturation within 10%."""
    n_steps = int(1000 + 3 * np.log(1e9) / lyapunov)
    steps, a, b, truth = exponential_twins(n_steps=n_steps, lyapunov=lyapunov, seed=seed)
    l2, _ = divergence_curves(a, b)
    fit = fit_divergence(steps, l2, truth.perturbation_step)
    assert fit.lyapunov == pytest.approx(truth.lyapunov, rel=0.10)
    growth_true = truth.saturation_step - truth.perturbation_step
    assert fit.saturation_step - truth.perturbation_step == pytest.approx(growth_true, rel=0.10)
    # d0 is a median of 5 noisy rows (log-noise 0.3) and d_sat a mean over the plateau
    assert fit.d0 == pytest.approx(truth.d0, rel=0.6)
    assert fit.d_sat == pytest.approx(truth.d_sat, rel=0.3)
    assert fit.amplification == pytest.approx(truth.d_sat / truth.d0, rel=0.7)
    assert fit.note == ""


def test_burst_and_quiet_exponents_of_a_staircase():
    """Growth only inside bursts, slow decay between them: each rate is recovered separately."""
    steps, a, b, mask, truth = staircase_twins(seed=3)
    l2, _ = divergence_curves(a, b)
    fit = fit_divergence(steps, l2, 500, burst_mask=mask)
    assert fit.lyapunov_burst == pytest.approx(truth["rate_burst"], rel=0.10)
    # across seeds the quiet estimate scatters by 3e-4 (log-noise at the burst boundaries)
    assert fit.lyapunov_quiet == pytest.approx(truth["rate_quiet"], abs=1.5e-3)
    assert fit.burst_fraction == pytest.approx(0.1, abs=0.02)
    # the overall exponent is the step-weighted mean of the two
    mean = fit.burst_fraction * fit.lyapunov_burst + (1 - fit.burst_fraction) * fit.lyapunov_quiet
    assert fit.lyapunov == pytest.approx(mean, rel=0.15)


def test_twins_that_do_not_grow_get_no_exponent():
    rng = np.random.default_rng(0)
    steps = np.arange(1, 3001)
    d = 1e-8 * np.exp(0.3 * rng.standard_normal(steps.size))
    fit = fit_divergence(steps, d, 1)
    assert fit.lyapunov is None and fit.saturation_step is None
    assert "no growth phase" in fit.note


def test_growth_until_the_end_is_not_saturation():
    steps, a, b, truth = exponential_twins(n_steps=1700, T=1000, lyapunov=0.02, d0=1e-12)
    l2, _ = divergence_curves(a, b)  # saturation would be at 1000 + 1382 > 1700
    fit = fit_divergence(steps, l2, truth.perturbation_step)
    assert fit.saturation_step is None and "not saturated" in fit.note
    assert fit.lyapunov == pytest.approx(0.02, rel=0.10)


def test_identical_twins_are_reported_not_fitted():
    steps = np.arange(1, 200)
    fit = fit_divergence(steps, np.zeros(steps.size), 50)
    assert fit.lyapunov is None and np.isnan(fit.d0) and "equals its original" in fit.note


def test_perturbation_labels():
    assert perturbation_step("ulp:+1@W1[0,3]@t=2000") == 2000
    assert perturbation_step("ulp:-2@b2[5]@t=7") == 7
    assert perturbation_step("scale:k=3") == 1
    with pytest.raises(GeomtrajError, match="not understood"):
        perturbation_step("none")


def test_params_are_validated():
    with pytest.raises(GeomtrajError, match="plateau_slope_frac"):
        TwinParams(plateau_slope_frac=2.0)


# ------------------------------------------------------------------------- spread


def test_spread_ratio_recovers_known_spreads():
    rng = np.random.default_rng(0)
    pert = [rng.normal(rng.normal(), 0.1, size=2) for _ in range(40)]
    seeds = [rng.normal(rng.normal(), 1.0, size=3) for _ in range(40)]
    out = spread_comparison(pert, seeds, n_boot=500)
    assert out["perturbation_sd"] == pytest.approx(0.1, rel=0.25)
    assert out["seed_sd"] == pytest.approx(1.0, rel=0.2)
    lo, hi = out["ci"]
    assert lo < 0.1 < hi and lo < out["ratio"] < hi
    assert out["n_perturbation_groups"] == 40 and out["n_seed_groups"] == 40


def test_spread_needs_both_families():
    out = spread_comparison([np.array([1.0, 1.1])], [])
    assert out["ratio"] is None and out["note"]


# ---------------------------------------------------------------------- real twins


@pytest.fixture(scope="module")
def grid():
    ds = twin_grid()
    return ds, twins.analyze(ds)


def test_real_ulp_twins_grow_from_one_ulp_to_macroscopic_and_saturate(grid):
    """float32 and float64 last-bit twins: ~1 ulp at the perturbation, >= 1e-4 after, saturated."""
    ds, res = grid
    rep = twins.report(res)
    entries = rep["twins"]
    assert len(entries) == 12
    assert {e["precision"] for e in entries} == {"float32", "float64"}
    steps = int(ds.attrs["steps"])
    for e in entries:
        assert e["perturbation_step"] == 500
        # "about one ulp": within a factor 10 of the format's epsilon
        assert 0.1 <= e["d0_ulps"] <= 10, e
        assert e["d_sat"] >= 1e-4, e  # macroscopic: differs in the fourth digit
        assert e["amplification"] >= 1e-4 / (10 * FORMAT_EPS[e["precision"]])
        assert e["lyapunov"] > 0
        assert e["saturation_step"] is not None and 500 < e["saturation_step"] < steps, e
        assert "differs from its original before" not in e["note"]
    # twins equal their original on every row before the perturbation
    i = int(np.flatnonzero(res["run"].values == entries[0]["run"])[0])
    before = res["div_step"].values < 500
    assert np.all(res["divergence_l2"].values[i, before] == 0)


def test_real_spread_section_compares_perturbations_with_seeds(grid):
    _, res = grid
    spread = twins.report(res)["twin_spread"]
    json.dumps(spread)  # JSON-ready
    for quantity in ("final_loss", "final_loss_window"):
        for precision in ("float32", "float64"):
            sec = spread[quantity][precision]
            assert sec["n_perturbation_groups"] == 6 and sec["n_seed_groups"] == 2
            assert sec["perturbation_sd"] > 0 and sec["seed_sd"] > 0
            assert sec["ratio"] == pytest.approx(sec["perturbation_sd"] / sec["seed_sd"])
            lo, hi = sec["ci"]
            assert lo <= sec["ratio"] <= hi


def test_analyze_blocks_concatenate_and_masks_can_be_given(grid):
    ds, whole = grid
    import xarray as xr

    parts = [twins.analyze(ds, range(0, 14)), twins.analyze(ds, range(14, 24))]
    joined = xr.concat(parts, dim="run")
    np.testing.assert_array_equal(joined["lyapunov"].values, whole["lyapunov"].values)
    no_split = twins.analyze(ds, [12], bursts=None)
    assert np.isnan(no_split["lyapunov_burst"].values[0])
    all_burst = {12: np.ones(ds.sizes["step"], bool)}
    given = twins.analyze(ds, [12], bursts=all_burst)
    assert given["burst_fraction"].values[0] == 1.0
    assert given["lyapunov_burst"].values[0] == pytest.approx(given["lyapunov"].values[0], rel=0.3)


def test_analyze_rejects_bad_runs(grid):
    ds, _ = grid
    with pytest.raises(GeomtrajError, match="not in the store"):
        twins.analyze(ds, [99])
    with pytest.raises(GeomtrajError, match="bursts"):
        twins.analyze(ds, [12], bursts="sometimes")


def test_figures_are_written(grid, tmp_path):
    ds, res = grid
    paths = twins.figures(ds, res.sel(run=[0, 12, 13]), tmp_path)
    assert [p.name for p in paths] == ["twins_divergence_0.png", "twins_overview.png"]
    assert all(p.stat().st_size > 10_000 for p in paths)


def test_figures_draw_a_bounded_sample_of_twins(grid, tmp_path):
    ds, res = grid
    assert int((res["twin_of"].values >= 0).sum()) > 2
    paths = twins.figures(ds, res, tmp_path, per_figure=1, max_twins=2)
    names = [p.name for p in paths]
    assert names == ["twins_divergence_0.png", "twins_divergence_1.png", "twins_overview.png"]
