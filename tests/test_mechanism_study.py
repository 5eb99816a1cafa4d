"""The mechanism study's verdict rules and period-law fit, on evidence with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from geomtraj.study.mechanism_study import explained_verdict, fit_law, predict, ratio_verdict


def test_onsets_far_above_chance_are_supported():
    n = [40] * 10
    k = [38] * 10
    verdict, ci, excess = explained_verdict(k, n, [0.4] * 10)
    assert verdict == "supported" and ci[0] >= 0.8 and excess[0] >= 0.2


def test_onsets_explained_only_as_often_as_chance_are_not_supported_however_high():
    """Dense crossing windows cover most of the run: 90 % explained at 88 % chance is no effect."""
    n = [40] * 10
    k = [36] * 10
    verdict, _, excess = explained_verdict(k, n, [0.88] * 10)
    assert verdict == "partly" and excess[1] < 0.2
    verdict, _, _ = explained_verdict(k, n, [0.95] * 10)
    assert verdict == "not supported"


def test_few_explained_onsets_are_not_supported():
    verdict, ci, _ = explained_verdict([10] * 8, [40] * 8, [0.3] * 8)
    assert verdict == "not supported" and ci[1] < 0.5


def test_too_few_runs_are_not_testable():
    assert explained_verdict([5, 5], [5, 5], [0.2, 0.2])[0] == "not testable here"


@pytest.mark.parametrize(
    ("ci", "verdict"),
    [((0.9, 1.1), "supported"), ((0.6, 1.5), "partly"), ((0.2, 0.4), "not supported"),
     ((0.7, 2.5), "not supported"), (None, "not testable here")],
)  # fmt: skip
def test_ratio_verdict_bands(ci, verdict):
    assert ratio_verdict(ci) == verdict


def test_period_law_fit_recovers_known_exponents():
    rng = np.random.default_rng(0)
    rows = []
    for b1 in (0.8, 0.9, 0.95):
        for b2 in (0.99, 0.995, 0.999, 0.9995):
            for lr in (0.003, 0.01):
                t = 3.0 * (1 / (1 - b2)) ** 0.3 * (1 / (1 - b1)) ** 0.1 * lr**-0.2
                noisy = t * np.exp(0.01 * rng.standard_normal())
                rows.append({"beta1": b1, "beta2": b2, "lr": lr, "measured_period": noisy})
    law = fit_law(rows, "measured_period")
    assert law["exponent_beta2"] == pytest.approx(0.3, abs=0.02)
    assert law["exponent_beta1"] == pytest.approx(0.1, abs=0.02)
    assert law["exponent_lr"] == pytest.approx(-0.2, abs=0.02)
    held = [{"beta1": 0.9, "beta2": 0.9999, "lr": 0.01}]
    exact = 3.0 * 10000**0.3 * 10**0.1 * 0.01**-0.2
    assert predict(law, held)[0] == pytest.approx(exact, rel=0.05)
    assert fit_law(rows[:3], "measured_period") is None  # fewer runs than the law needs
