"""Paired comparisons of precisions, shared by the betas and divergence studies.

Runs of the same setting and seed in two precisions form a pair; the verdict rules on their ratios
are stated in ``docs/verdicts.md``.
"""

from __future__ import annotations

import numpy as np

from geomtraj.formats import FORMAT_NAMES
from geomtraj.study.claims import STARTUP_STEPS, bootstrap_ci, resample_ci

#: The precision ladder, widest first.
LADDER = FORMAT_NAMES

#: A paired burst-rate ratio float64/float32 below this (95% upper bound) counts as float64
#: removing most of the instability, the "main cause" the claim asserts.
MAIN_CAUSE_RATIO = 0.5

#: Below this (95% upper bound) float64 removes at least a fifth of the effect: "partly". An effect
#: under 20% is not a cause of the instability, however significant (docs/verdicts.md).
MINOR_CAUSE_RATIO = 0.8


#: The settings of a phase-diagram cell (paired runs share all of them and their seed).
SETTING = ("dataset", "hidden", "activation", "beta1", "beta2", "lr", "eps")


def setting_of(r: dict) -> tuple:
    """The run's setting (:data:`SETTING`), which a pair shares with its seed."""
    return tuple(r.get(k) for k in SETTING)


def late_divergence(r: dict) -> int | None:
    """Update at which the run diverged after start-up, None if it did not (or at start-up)."""
    d = r.get("diverged_step")
    return d if d is not None and d > STARTUP_STEPS else None


def failed_at_startup(r: dict) -> bool:
    """True if the run diverged within the start-up steps (counted apart from later divergence)."""
    d = r.get("diverged_step")
    return d is not None and d <= STARTUP_STEPS


def paired(runs: list[dict], num: str, den: str, steps: int) -> dict:
    """Whether and when precision ``num`` diverges beside ``den`` on the same setting and seed.

    Pairs where either run failed at start-up are counted apart and left out. Of the others:
    ``both``, ``only_num``, ``only_den``, ``neither`` diverged; ``ratio`` is the number of ``num``
    divergences over ``den``'s (pairs resampled for the interval); ``time_ratio`` the median of
    t_num / t_den over pairs where both diverged; ``restricted`` the mean of min(t, steps) of
    ``num`` over ``den``'s on the pairs where at least one diverged: a run that never diverges
    counts as the run length, the least its divergence time can be (explicit censoring).
    """
    by = {
        p: {(setting_of(r), r["seed"]): r for r in runs if r["precision"] == p} for p in (num, den)
    }
    keys = [k for k in by[num] if k in by[den]]
    startup = [k for k in keys if failed_at_startup(by[num][k]) or failed_at_startup(by[den][k])]
    keys = [k for k in keys if k not in set(startup)]
    t = np.array(
        [[late_divergence(by[num][k]) or -1, late_divergence(by[den][k]) or -1] for k in keys],
        float,
    ).reshape(-1, 2)
    d_num, d_den = t[:, 0] >= 0, t[:, 1] >= 0
    out = {
        "pairs": len(keys),
        "startup_pairs": len(startup),
        "both": int((d_num & d_den).sum()),
        "only_num": int((d_num & ~d_den).sum()),
        "only_den": int((~d_num & d_den).sum()),
        "neither": int((~d_num & ~d_den).sum()),
        "ratio": None,
        "ci": None,
        "time_ratio": None,
        "time_ratio_ci": None,
        "restricted": None,
        "restricted_ci": None,
    }
    if d_den.any():
        a, b = d_num.astype(float), d_den.astype(float)
        out["ratio"] = float(a.sum() / b.sum())
        out["ci"] = resample_ci([a, b], lambda x, y, axis=-1: x.sum(axis) / y.sum(axis))
    both = d_num & d_den
    if both.any():
        tr = t[both, 0] / t[both, 1]
        out["time_ratio"], out["time_ratio_ci"] = float(np.median(tr)), bootstrap_ci(tr)
    some = d_num | d_den
    if some.any():
        cens = np.where(t[some] >= 0, t[some], float(steps))
        out["restricted"] = float(cens[:, 0].mean() / cens[:, 1].mean())
        out["restricted_ci"] = resample_ci(
            [cens[:, 0], cens[:, 1]], lambda x, y, axis=-1: x.mean(axis) / y.mean(axis)
        )
    return out


def precision_verdict(ci: tuple[float, float] | None) -> str:
    """Verdict of a float64/float32 ratio's interval (burst rate, or divergences)."""
    if ci is None:
        return "not testable here"
    if ci[1] < MAIN_CAUSE_RATIO:
        return "supported"
    if ci[1] < MINOR_CAUSE_RATIO:
        return "partly"
    return "not supported"
