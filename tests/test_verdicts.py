"""Every verdict rule of the results page, fed evidence it must reject and evidence it must accept.

The rules are stated in docs/verdicts.md. Each test builds report fragments (per-run entries as
``geomtraj analyze`` writes them) whose answer is known by construction, and checks the verdict
and, where it matters, that the numbers the rule cites reach the page.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from geomtraj.study import betas_study as betas_mod
from geomtraj.study import divergence_study as div_mod
from geomtraj.study import netay_study as netay_mod
from geomtraj.study import twins_study as twins_mod
from geomtraj.study.claims import false_positive_rate, near, split_divergence
from geomtraj.study.results import write_page

# ------------------------------------------------------------------------------- "near"


def test_near_needs_the_whole_interval_within_a_factor_two():
    assert near((0.6, 1.8)) and near((0.5, 2.0))
    assert not near((0.4, 1.2))  # reaches below half the prediction
    assert not near((1.5, 2.2))
    assert not near(None)


def _period_runs(ratio_by_beta2: dict[float, float], precisions=("float32", "float64"), n=6):
    """Runs whose slow period is ratio x 1/(1-beta2), with 5% multiplicative scatter."""
    rng = np.random.default_rng(1)
    runs = []
    for prec in precisions:
        for b2, ratio in ratio_by_beta2.items():
            for seed in range(n):
                pred = 1 / (1 - b2)
                period = ratio * pred * np.exp(rng.normal(0, 0.05))
                runs.append({
                    "twin_of": -1, "precision": prec, "beta1": 0.9, "beta2": b2, "seed": seed,
                    "slow": {"ratio": period / pred, "period": period, "predicted": pred,
                             "spectral_period": period},
                })  # fmt: skip
    return runs


def _grid_with_positive_slope():
    # a slope interval well above 0 (and even containing 1): the old rule called this partly
    g = {"slope": 0.9, "ci": [0.8, 1.1], "n_runs": 24}
    return {"slow": {"by_precision": {"float32": g, "float64": g}}}


@pytest.mark.parametrize(
    "ratios, verdict",
    [
        ({0.99: 1.0, 0.999: 1.1}, "supported"),
        ({0.99: 1.0, 0.999: 0.18}, "partly"),
        ({0.99: 0.18, 0.999: 0.18}, "not supported"),  # today's 0.18: never near
    ],
)
def test_slow_period_is_judged_on_the_ratio_not_the_slope(ratios, verdict):
    rep = {"grid": _grid_with_positive_slope(), "runs": _period_runs(ratios)}
    r = betas_mod._slow_row(rep)
    assert r["verdict"] == verdict
    assert "slope" in r["evidence"] and "never decides" in r["rule"]


def test_slow_period_cites_the_runs_whose_two_estimates_disagree():
    runs = _period_runs({0.99: 1.0, 0.999: 1.0})
    # 5 runs whose spectral period is 40% shorter than the event period, 2 within 20%
    for r in runs[:5]:
        r["slow"]["spectral_period"] = 0.6 * r["slow"]["period"]
    for r in runs[5:7]:
        r["slow"]["spectral_period"] = 1.2 * r["slow"]["period"]
    row = betas_mod._slow_row({"grid": {}, "runs": runs})
    assert row["disagreements"] == {"runs": 5, "of": len(runs)}
    assert f"in 5 of {len(runs)} runs" in row["evidence"]
    assert betas_mod.period_disagreements(runs[5:]) == (0, len(runs) - 5)


# ------------------------------------------------------------------------------ fast period


def _fast_runs(efold_over_claim: dict[float, float], flip=2.0, n=5):
    rng = np.random.default_rng(2)
    runs = []
    for b1, k in efold_over_claim.items():
        pred, lin = 1 / (1 - b1), -1 / np.log(np.sqrt(b1))
        for seed in range(n):
            efold = k * pred * np.exp(rng.normal(0, 0.05))
            runs.append({
                "twin_of": -1, "precision": "float32", "beta1": b1, "beta2": 0.999, "seed": seed,
                "fast": {"efold": efold, "predicted": pred, "linear_prediction": lin,
                         "flip_period": flip, "ratio": efold / pred},
            })  # fmt: skip
    return runs


def test_fast_claim_is_judged_per_beta1():
    # e-folding time on 1/(1-beta1) at beta1 = 0.9 only; the flip period is 2 everywhere, which is
    # near 1/(1-beta1) = 2 at beta1 = 0.5 only
    runs = _fast_runs({0.5: 5.0, 0.9: 1.0, 0.95: 0.3})
    assert betas_mod._fast_row({"runs": runs})["verdict"] == "partly"
    per = betas_mod.fast_by_beta1(runs)
    assert set(per) == {0.5, 0.9, 0.95}
    assert per[0.5]["flip/claim"]["near"] and not per[0.95]["flip/claim"]["near"]
    assert per[0.9]["efold/claim"]["near"] and not per[0.95]["efold/claim"]["near"]
    # the linearised comparison is reported per beta1, not pooled
    lin_05 = 5.0 * 2 / (-1 / np.log(np.sqrt(0.5)))
    assert per[0.5]["efold/linear"]["median"] == pytest.approx(lin_05, rel=0.1)


def test_fast_claim_fails_when_no_time_scale_is_near_at_any_beta1():
    runs = _fast_runs({0.8: 5.0, 0.9: 4.0, 0.95: 0.2}, flip=40.0)
    assert betas_mod._fast_row({"runs": runs})["verdict"] == "not supported"
    runs = _fast_runs({0.8: 1.0, 0.9: 1.1, 0.95: 0.9}, flip=40.0)
    assert betas_mod._fast_row({"runs": runs})["verdict"] == "supported"


# ------------------------------------------------------------------------------- precision


@pytest.mark.parametrize(
    "ci, verdict",
    [
        ((0.931, 0.99), "not supported"),  # today's 0.963: a 4% effect is no main cause
        ((0.6, 0.9), "not supported"),  # may be an effect under 20%
        ((0.5, 0.75), "partly"),
        ((0.2, 0.45), "supported"),
        (None, "not testable here"),
    ],
)
def test_precision_needs_float64_to_remove_most_of_the_effect(ci, verdict):
    assert betas_mod.precision_verdict(ci) == verdict


def test_float16_start_up_failures_are_counted_apart():
    runs = [{"diverged_step": 2}, {"diverged_step": 2}, {"diverged_step": 900}, {}]
    assert split_divergence(runs) == {"n": 4, "startup": 2, "late": 1, "late_steps": [900]}
    ladder = []
    for seed in range(6):
        for prec in ("float32", "float16"):
            ladder.append({"hidden": "12x24", "beta1": 0.9, "beta2": 0.999, "lr": 1e-3,
                           "eps": 1e-7, "seed": seed, "precision": prec, "twin_of": -1,
                           "n_steps": 1000, "n_bursts": 5,
                           "diverged_step": 2 if prec == "float16" else None})  # fmt: skip
    meas = betas_mod.measure(type("C", (), {"reports": {"ladder": {"runs": ladder}}})())
    f16 = meas["ladder"]["float16"]
    assert f16["diverged"] == 0 and f16["diverged_startup"] == 6
    assert "6 more at start-up" in betas_mod._precision_row(meas)["evidence"]


def test_precision_is_supported_when_float64_removes_the_divergences():
    # equal burst rates (ratio 1) but float32 diverges in 8 of 8 pairs, float64 in none
    ladder = []
    for seed in range(8):
        for prec in ("float64", "float32"):
            ladder.append({"hidden": "8x8", "beta1": 0.99, "beta2": 0.8, "lr": 0.1, "eps": 1e-8,
                           "seed": seed, "precision": prec, "twin_of": -1, "n_steps": 5000,
                           "n_bursts": 10 + seed,
                           "diverged_step": 700 + seed if prec == "float32" else None})  # fmt: skip
    meas = betas_mod.measure(type("C", (), {"reports": {"ladder": {"runs": ladder}}})())
    r = betas_mod._precision_row(meas)
    assert meas["paired_rate_ratio"]["float64/float32"]["ratio"] == pytest.approx(1.0)
    assert r["verdict"] == "supported" and "divergences float64/float32" in r["measured"]
    # float64 diverges alike: back to the burst-rate ratio, which shows no effect
    for run in ladder:
        run["diverged_step"] = 700 + run["seed"]
    meas = betas_mod.measure(type("C", (), {"reports": {"ladder": {"runs": ladder}}})())
    assert betas_mod._precision_row(meas)["verdict"] == "not supported"


# ------------------------------------------------------------------------------ divergence


def _netay_report(n=100, late=0, startup=0, bursts=True):
    runs = []
    for i in range(n):
        d = 3000 if i < late else 2 if i < late + startup else None
        runs.append({"run": i, "twin_of": -1, "precision": "float32", "hidden": "12x24",
                     "n_bursts": 20 if bursts else 0, "n_steps": 50000,
                     "diverged_step": d})  # fmt: skip
    return {"f32": {"runs": runs}}


@pytest.mark.parametrize(
    "late, startup, verdict",
    [
        (0, 0, "not supported"),  # bursts in every run, none diverges: never partly
        (0, 30, "not supported"),  # start-up failures are not long-run instability
        (1, 0, "partly"),  # one in a hundred: real, but rare
        (30, 0, "supported"),
    ],
)
def test_divergence_needs_runs_that_diverge(late, startup, verdict):
    r = netay_mod._divergence(_netay_report(late=late, startup=startup), {})
    assert r["verdict"] == verdict
    assert "bursts alone never give partly" in r["rule"]


# --------------------------------------------------------------------------------- spirals


def _spiral_report(n_runs=20, n_win=20, n_sp=8, dt_runs=(), dt_per_run=1):
    runs, windows = [], []
    for i in range(n_runs):
        runs.append({"run": i, "twin_of": -1, "spirals": {"n_windows": n_win, "n_spirals": n_sp,
                     "n_double": n_sp, "n_twisted": 0}})  # fmt: skip
        if i in dt_runs:
            windows += [{"run": i, "is_double": True, "is_twisted": True}] * dt_per_run
    return {"f32": {"runs": runs, "spiral_windows": windows}}


def test_double_twisted_spirals_below_the_false_positive_rate_are_not_supported(monkeypatch):
    from geomtraj.analysis import spirals

    # 40% of burst windows are spirals, but double twisted ones (1 window in 400) sit below the
    # measured false-positive rate
    monkeypatch.setattr(spirals, "FALSE_POSITIVE_RATE", {
        "spiral": {"rate": 0.02, "upper": 0.03, "n": 5000},
        "double_twisted": {"rate": 0.004, "upper": 0.006, "n": 5000},
    }, raising=False)  # fmt: skip
    r = netay_mod._spirals(_spiral_report(dt_runs=(0,)))
    assert r["verdict"] == "not supported" and "0.006" in r["rule"]
    assert "measured on null ensembles" in r["rule"]
    # frequent (5 per run) and in every run: supported
    r = netay_mod._spirals(_spiral_report(dt_runs=range(20), dt_per_run=5))
    assert r["verdict"] == "supported"
    # frequent but in a few runs only: partly
    r = netay_mod._spirals(_spiral_report(dt_runs=range(4), dt_per_run=15))
    assert r["verdict"] == "partly"


def test_false_positive_rate_is_the_spirals_measured_table(monkeypatch):
    from geomtraj.analysis import spirals

    table = {"double_twisted": {"rate": 0.02, "upper": 0.03, "n": 900}}
    monkeypatch.setattr(spirals, "FALSE_POSITIVE_RATE", table)
    fp = false_positive_rate("double_twisted")
    assert fp["upper"] == 0.03 and fp["n"] == 900 and "measured" in fp["source"]
    with pytest.raises(KeyError):
        false_positive_rate("twisted")  # a kind the table does not hold is an error, not a guess


@pytest.mark.parametrize(
    "ratio_ci, verdict",
    [((0.7, 1.3), "supported"), ((0.3, 0.6), "partly"), ((0.1, 0.45), "not supported")],
)
def test_local_behaviour_is_partly_only_when_the_ratio_reaches_a_half(ratio_ci, verdict):
    quiet_ci = (0.05, 0.1)  # quiet-window spirals well above a 1% false-positive rate
    assert netay_mod.local_verdict(ratio_ci, quiet_ci, 0.01) == verdict
    # quiet spirals no more frequent than false positives never give partly
    assert netay_mod.local_verdict((0.3, 0.6), (0.001, 0.02), 0.01) == "not supported"


# ----------------------------------------------------------------------------- Sun's spread


def test_spread_is_decided_on_the_window_averaged_loss():
    rep = {"twin_spread": {
        "final_loss": {"float32": {"ratio": 0.8, "ci": [0.5, 1.4]}},
        "final_loss_window": {"float32": {"ratio": 0.03, "ci": [0.02, 0.05]}},
    }}  # fmt: skip
    r = twins_mod._spread(rep)
    assert r["verdict"] == "not supported"  # the last step alone would say supported
    assert "window-averaged final loss 0.03" in r["measured"] and "last step: 0.8" in r["measured"]
    rep["twin_spread"]["final_loss_window"]["float32"] = {"ratio": 1.0, "ci": [0.6, 1.6]}
    assert twins_mod._spread(rep)["verdict"] == "supported"


# ------------------------------------------------------------------------ divergence study


def _pair_runs(t32, t64, setting=0):
    """One float32 and one float64 run per seed, diverging at the given updates (None: never)."""
    runs = []
    for seed, (a, b) in enumerate(zip(t32, t64, strict=True)):
        for prec, t in (("float32", a), ("float64", b)):
            runs.append({"twin_of": -1, "dataset": "sincos", "hidden": "8x8", "activation": "relu",
                         "beta1": 0.9, "beta2": 0.999, "lr": 0.1, "eps": 1e-8 * (1 + setting),
                         "seed": seed, "precision": prec, "diverged_step": t})  # fmt: skip
    return runs


def test_paired_divergences_with_censoring():
    # float32 diverges in 10 of 12 pairs; float64 in 2 of them, later; 2 pairs neither; 1 pair
    # with a start-up failure is left out
    t32 = [1000] * 10 + [None, None, 2]
    t64 = [3000, 3000] + [None] * 8 + [None, None, None]
    p = div_mod.paired(_pair_runs(t32, t64), "float64", "float32", steps=5000)
    assert (p["pairs"], p["startup_pairs"]) == (12, 1)
    assert (p["both"], p["only_num"], p["only_den"], p["neither"]) == (2, 0, 8, 2)
    assert p["ratio"] == pytest.approx(0.2)
    assert p["time_ratio"] == pytest.approx(3.0)
    # restricted means over the 10 pairs where one diverged: float64 (2 x 3000 + 8 x 5000) / 10
    assert p["restricted"] == pytest.approx((2 * 3000 + 8 * 5000) / 10 / 1000)
    assert div_mod.precision_verdict(p["ci"]) == "supported"


def test_precision_on_divergence_fails_when_float64_diverges_alike():
    t32 = [1000 + 10 * i for i in range(12)]
    t64 = [1000 + 10 * i + 5 for i in range(12)]
    meas = {"steps": 5000, "paired": {"float64/float32": div_mod.paired(
        _pair_runs(t32, t64), "float64", "float32", 5000)}, "burst_rate_ratio": {}}  # fmt: skip
    assert div_mod._precision_row(meas)["verdict"] == "not supported"
    # float64 diverges as often but 3x later: postponed, partly
    meas["paired"]["float64/float32"] = div_mod.paired(
        _pair_runs(t32, [3 * t for t in t32]), "float64", "float32", 5000
    )
    assert div_mod._precision_row(meas)["verdict"] == "partly"
    # no float32 divergence: nothing to explain
    meas["paired"]["float64/float32"] = div_mod.paired(
        _pair_runs([None] * 6, [None] * 6), "float64", "float32", 5000
    )
    assert div_mod._precision_row(meas)["verdict"] == "not testable here"


def test_phase_verdict_separates_the_unbounded_region():
    none = {"k": 0, "n": 100, "ci": (0.0, 0.037)}
    rare = {"k": 1, "n": 100, "ci": (0.002, 0.054)}
    common = {"k": 40, "n": 100, "ci": (0.31, 0.5)}
    assert div_mod.phase_verdict(none, none) == "not supported"
    assert div_mod.phase_verdict(none, common) == "partly"  # only where beta1 > sqrt(beta2)
    assert div_mod.phase_verdict(rare, common) == "partly"
    assert div_mod.phase_verdict(common, common) == "supported"
    assert div_mod.unbounded({"beta1": 0.99, "beta2": 0.95})
    assert not div_mod.unbounded({"beta1": 0.9, "beta2": 0.999})


# -------------------------------------------------------------------------- the results page


def test_every_verdict_is_printed_beside_its_rule(tmp_path):
    rows = [
        netay_mod._divergence(_netay_report(), {}),
        twins_mod._spread(
            {"twin_spread": {"final_loss": {"float32": {"ratio": 1, "ci": [0.5, 2]}}}}
        ),
    ]
    (tmp_path / "x").mkdir()
    doc = {"study": "x", "scale": "small", "claims": rows, "stores": {}}
    (tmp_path / "x" / "study.json").write_text(json.dumps(doc))
    text = write_page(tmp_path, tmp_path / "RESULTS.md", log=lambda m: None).read_text()
    for r in rows:
        block = text.split(f"### {r['claim']}")[1].split("###")[0]
        assert f"*Verdict: **{r['verdict']}***" in block and f"Rule: {r['rule']}" in block


def test_divergence_findings_name_what_the_phase_diagram_shows():
    none = {"k": 0, "n": 40, "ci": (0.0, 0.09)}
    some = {"k": 12, "n": 40, "ci": (0.18, 0.46)}
    by = {"float32": {"bounded": none, "unbounded": some, "startup": 0, "all": some},
          "float16": {"bounded": none, "unbounded": none, "startup": 30, "all": none}}  # fmt: skip
    more = div_mod.paired(
        _pair_runs([900] * 4 + [None] * 8, [800] * 12), "float64", "float32", 5000
    )
    found = " ".join(div_mod._surprises(by, {"float64/float32": more}))
    assert "float64 diverges more often than float32" in found
    assert "Every float32 divergence" in found and "float16 30 of 40" in found
    alike = div_mod.paired(_pair_runs([900] * 12, [900] * 12), "float64", "float32", 5000)
    by["float32"]["bounded"] = some
    # float64 diverging alike and float32 diverging on both sides: only the start-up line is left
    found = div_mod._surprises(by, {"float64/float32": alike})
    assert len(found) == 1 and found[0].startswith("Start-up failures")
