"""Claims table rows, their confidence intervals and the verdict vocabulary.

Every row states the claim, its source, what was measured (with a 95% interval), the verdict and
the rule that turned the numbers into the verdict. Rules are fixed before the numbers are seen and
are written into the row, so that a reader can check them; they never change to fit a result.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

__all__ = [
    "VERDICTS",
    "CLAIMS",
    "row",
    "wilson",
    "resample_ci",
    "bootstrap_ci",
    "ratio_of_sums_ci",
    "fmt",
    "fmt_ci",
    "pct",
    "run_field",
    "originals",
    "NEAR_BAND",
    "near",
    "median_ratio",
    "STARTUP_STEPS",
    "split_divergence",
    "false_positive_rate",
]

#: The verdicts a row may carry.
VERDICTS = ("supported", "partly", "not supported", "not testable here")

#: The claims of the results page, in its order: (id, claim, source, study that judges it).
CLAIMS: tuple[tuple[str, str, str, str], ...] = (
    ("divergence", "Long runs of Adam go numerically unstable and diverge, even in shallow narrow "
     "networks", "Netay 2024 (arXiv 2408.12273), abstract", "netay"),
    ("local_behaviour", "The same local behaviour of parameters appears in stable and unstable "
     "training segments", "Netay 2024, abstract", "netay"),
    ("spirals", "Parameters form double twisted spirals", "Netay 2024, abstract and figs. 1-5",
     "netay"),
    ("slow_period", "Slow fluctuation periods lie near 1/(1-beta2)", "Netay 2024", "betas"),
    ("fast_period", "Fast components lie near 1/(1-beta1)", "Netay 2024", "betas"),
    ("precision", "Finite precision is a main cause of the instability", "Netay 2024", "betas"),
    ("restrained", "Last-bit perturbations grow, then saturate (restrained instability)",
     "Sun et al. 2022 (arXiv 2206.02001)", "twins"),
    ("twin_spread", "The spread caused by last-bit perturbations is comparable to the spread "
     "across seeds", "Sun et al. 2022", "twins"),
    ("divergence_phase", "Long runs of Adam go numerically unstable and diverge (phase diagram "
     "over lr, eps, beta1 against beta2 and three tasks, where Adam can diverge)",
     "Netay 2024, abstract", "divergence"),
    ("precision_divergence", "Finite precision is a main cause of the instability (judged on "
     "the divergences of the phase diagram, paired seeds)", "Netay 2024", "divergence"),
    ("diffusion", "After convergence parameters diffuse anomalously: MSD ~ k^c with c != 1",
     "Kunin et al. 2021 (arXiv 2107.09133)", "netay"),
    ("burst_crossing", "Bursts begin when the preconditioned sharpness crosses the threshold",
     "arXiv 2506.04805", "mechanism"),
    ("quiet_interval", "The quiet interval is the time v takes to decay to the critical level",
     "arXiv 2506.04805 (the forecast: docs/mechanism.md)", "mechanism"),
    ("period_law", "The slow period follows the law found here", "docs/mechanism.md",
     "mechanism"),
    ("edge_of_stability", "Full-batch Adam's preconditioned sharpness hovers at "
     "(2+2*beta1)/((1-beta1)*lr)", "Cohen et al. 2022 (arXiv 2207.14484)", "netay"),
)  # fmt: skip

_BY_ID = {c[0]: c for c in CLAIMS}

#: "Near" a prediction: the 95% interval of the median measured/predicted ratio lies within this
#: band (a factor of two either way); a slope alone never makes a period near (docs/verdicts.md).
NEAR_BAND = (0.5, 2.0)

#: Divergences at or before this update are a start-up failure (float16 underflows to a zero
#: second moment at update 2), counted apart from long-run instability (docs/verdicts.md).
STARTUP_STEPS = 10

#: Resamples of every bootstrap interval, and its seed (intervals are reproducible).
N_BOOTSTRAP = 2000
SEED = 20240823


def row(claim_id: str, measured: str, verdict: str, rule: str, evidence: str = "", **extra) -> dict:
    """One claims-table row; ``measured`` holds the headline numbers with their intervals."""
    if verdict not in VERDICTS:
        raise ValueError(f"verdict {verdict!r} is not one of {VERDICTS}")
    cid, claim, source, study = _BY_ID[claim_id]
    return {
        "id": cid,
        "claim": claim,
        "source": source,
        "study": study,
        "measured": measured,
        "verdict": verdict,
        "rule": rule,
        "evidence": evidence,
        **extra,
    }


def wilson(k: int, n: int, level: float = 0.95) -> tuple[float, float] | None:
    """Wilson score interval of the proportion ``k/n`` (None when ``n`` is 0)."""
    if n <= 0:
        return None
    from scipy.stats import binomtest

    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def resample_ci(
    columns: Sequence[Sequence[float]],
    statistic: Callable[..., float],
    level: float = 0.95,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of ``statistic(*columns)``, resampling rows together.

    Each row (a run, or a pair of runs) is one independent unit, so the columns are resampled as
    paired samples by :func:`scipy.stats.bootstrap` (``N_BOOTSTRAP`` resamples, seeded). A
    ``statistic`` that takes an ``axis`` keyword is evaluated on all resamples at once. Resamples
    whose statistic is not finite (an empty denominator) are left out before the percentiles are
    taken. None with fewer than 3 rows or no finite resample.
    """
    from scipy.stats import bootstrap

    cols = [np.asarray(c, float) for c in columns]
    if cols[0].size < 3:
        return None
    with np.errstate(divide="ignore", invalid="ignore"):
        res = bootstrap(
            cols,
            statistic,
            n_resamples=N_BOOTSTRAP,
            paired=True,
            confidence_level=level,
            method="percentile",
            rng=np.random.default_rng(SEED),
        )
    lo, hi = res.confidence_interval
    if np.isfinite(lo) and np.isfinite(hi):
        return float(lo), float(hi)
    # scipy's percentiles turn NaN when any resample is; drop those resamples instead
    stats = np.asarray(res.bootstrap_distribution, float)
    stats = stats[np.isfinite(stats)]
    if not stats.size:
        return None
    a = (1 - level) / 2
    return float(np.quantile(stats, a)), float(np.quantile(stats, 1 - a))


def bootstrap_ci(
    values: Sequence[float],
    statistic: Callable[[np.ndarray], float] = np.median,
    level: float = 0.95,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of ``statistic`` over the finite ``values`` (None if < 3)."""
    x = np.asarray([v for v in values if v is not None], float)
    return resample_ci([x[np.isfinite(x)]], statistic, level)


def ratio_of_sums_ci(
    num: Sequence[float], den: Sequence[float], level: float = 0.95
) -> tuple[float, tuple[float, float] | None]:
    """``sum(num)/sum(den)`` and its bootstrap interval, resampling the (num, den) pairs.

    Used for pooled fractions whose units (runs) hold different numbers of windows: the run is the
    independent unit, so runs are resampled, not windows.
    """
    n, d = np.asarray(num, float), np.asarray(den, float)
    keep = np.isfinite(n) & np.isfinite(d)
    n, d = n[keep], d[keep]
    if d.sum() <= 0:
        return math.nan, None
    return float(n.sum() / d.sum()), resample_ci([n, d], _ratio_of_sums, level)


def _ratio_of_sums(num: np.ndarray, den: np.ndarray, axis: int = -1) -> np.ndarray:
    return num.sum(axis=axis) / den.sum(axis=axis)


def fmt(x, digits: int = 3) -> str:
    """A number for the page: ``n/a`` for None or NaN, else ``digits`` significant digits."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if isinstance(x, int | np.integer):
        return str(int(x))
    return f"{x:.{digits}g}"


def fmt_ci(ci, digits: int = 3) -> str:
    if ci is None:
        return "[CI n/a]"
    return f"[{fmt(ci[0], digits)}, {fmt(ci[1], digits)}]"


def pct(p, ci=None) -> str:
    """A proportion as a percentage, with its interval when given."""
    if p is None or not math.isfinite(p):
        return "n/a"
    s = f"{100 * p:.1f}%"
    if ci is not None:
        s += f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]%"
    return s


def run_field(run: dict, *keys, default=None):
    """``run[k1][k2]...`` of a report's run entry, or ``default`` where a level is missing/None."""
    cur = run
    for k in keys:
        if not isinstance(cur, dict) or cur.get(k) is None:
            return default
        cur = cur[k]
    return cur


def originals(report: dict) -> list[dict]:
    """The report's run entries that are not twins."""
    return [r for r in report["runs"] if r.get("twin_of", -1) < 0]


def median_ratio(ratios: Sequence[float]) -> tuple[float | None, tuple[float, float] | None, int]:
    """Median of the finite positive ``ratios``, its bootstrap interval and their number."""
    x = np.asarray([r for r in ratios if r is not None], float)
    x = x[np.isfinite(x) & (x > 0)]
    if not x.size:
        return None, None, 0
    return float(np.median(x)), bootstrap_ci(x), int(x.size)


def near(ci: tuple[float, float] | None, band: tuple[float, float] = NEAR_BAND) -> bool:
    """True when the interval ``ci`` of a measured/predicted ratio lies within ``band``."""
    return ci is not None and band[0] <= ci[0] and ci[1] <= band[1]


def split_divergence(runs: Sequence[dict]) -> dict:
    """Runs that diverged at start-up (update <= STARTUP_STEPS) and later, counted apart."""
    steps = [r.get("diverged_step") for r in runs]
    startup = [s for s in steps if s is not None and s <= STARTUP_STEPS]
    late = [s for s in steps if s is not None and s > STARTUP_STEPS]
    return {"n": len(runs), "startup": len(startup), "late": len(late), "late_steps": late}


def false_positive_rate(kind: str) -> dict:
    """The spiral detector's measured false-positive rate of ``kind``.

    ``kind`` is ``"spiral"``, ``"double"``, ``"twisted"`` or ``"double_twisted"``: the entry of
    ``geomtraj.analysis.spirals.FALSE_POSITIVE_RATE`` (rate, Wilson 95% upper bound, number of
    null windows), measured on null ensembles (docs/spirals.md). Verdicts compare with ``upper``.
    """
    from geomtraj.analysis.spirals import FALSE_POSITIVE_RATE

    entry = FALSE_POSITIVE_RATE[kind]
    return {"rate": float(entry["rate"]), "upper": float(entry["upper"]), "n": entry["n"],
            "source": "measured on null ensembles"}  # fmt: skip
