"""The twins study: last-bit and k-rescaling twins against the spread across seeds (Sun et al.).

It judges whether last-bit perturbations grow and then saturate, and whether the spread they cause
in the final loss is comparable to the spread across seeds, from the ``twins`` and
``twin_spread`` sections of the report.
"""

from __future__ import annotations

import numpy as np

from geomtraj.study.claims import bootstrap_ci, fmt, fmt_ci, pct, row, wilson

#: Amplification d_sat/d_0 above which a perturbation has grown (ten times its initial size).
GROWTH_FACTOR = 10.0

#: "Comparable" spreads: the ratio perturbation spread / seed spread within this band.
COMPARABLE = (1 / 3, 3.0)


def measure(ctx) -> dict:
    return {}


def _restrained(report: dict) -> dict:
    twins = [t for t in report.get("twins", []) if t.get("amplification") is not None]
    if not twins:
        return row("restrained", "no measurable twin", "not testable here", "needs twin runs")
    parts, evidence = [], []
    grows_all, sat_all = True, True
    groups = sorted(
        {(str(t.get("perturbation", "")).split(":")[0], t.get("precision")) for t in twins}
    )
    for kind, prec in groups:
        ts = [
            t
            for t in twins
            if str(t.get("perturbation", "")).startswith(kind) and t.get("precision") == prec
        ]
        amp = [t["amplification"] for t in ts]
        med, ci = float(np.median(amp)), bootstrap_ci(amp)
        k_sat = sum(t.get("saturation_step") is not None for t in ts)
        sat_ci = wilson(k_sat, len(ts))
        grows_all &= ci is not None and ci[0] > GROWTH_FACTOR
        sat_all &= sat_ci is not None and sat_ci[0] > 0.5
        parts.append(
            f"{kind} twins, {prec}: amplification d_sat/d_0 median {fmt(med)} {fmt_ci(ci)}; "
            f"saturated {k_sat}/{len(ts)} = {pct(k_sat / len(ts), sat_ci)}"
        )
        ly = [t["lyapunov"] for t in ts if t.get("lyapunov") is not None]
        d_sat = [t["d_sat"] for t in ts if t.get("d_sat") is not None]
        evidence.append(
            f"{kind}, {prec}: growth rate (finite-time Lyapunov exponent) median "
            f"{fmt(float(np.median(ly)) if ly else None)} per step; saturation level d_sat median "
            f"{fmt(float(np.median(d_sat)) if d_sat else None)} (relative L2)"
        )
    if grows_all and sat_all:
        verdict = "supported"
    elif grows_all or sat_all:
        verdict = "partly"
    else:
        verdict = "not supported"
    return row(
        "restrained",
        "; ".join(parts),
        verdict,
        f"supported: for every kind of twin and precision the median amplification's 95% "
        f"interval lies above "
        f"{GROWTH_FACTOR:g} and most twins saturate (Wilson lower bound > 50%); partly: one of "
        "the two; not supported: neither.",
        "; ".join(evidence) + ".",
    )


def spread_verdict(cis: list) -> str:
    """The precisions' common verdict on the spread ratio's intervals, partly when they differ."""
    lo, hi = COMPARABLE
    verdicts = []
    for ci in cis:
        if ci is None:
            continue
        if lo <= ci[0] and ci[1] <= hi:
            verdicts.append("supported")
        elif ci[1] >= lo and ci[0] <= hi:
            verdicts.append("partly")
        else:
            verdicts.append("not supported")
    if not verdicts:
        return "not testable here"
    return verdicts[0] if len(set(verdicts)) == 1 else "partly"


def _spread(report: dict) -> dict:
    spread = report.get("twin_spread") or {}
    last, window = spread.get("final_loss") or {}, spread.get("final_loss_window") or {}
    # the window-averaged loss decides: the last step alone catches each twin at a random phase of
    # the same oscillation, which measures the oscillation, not a spread of outcomes
    decided_on, decide = ("window-averaged", window) if window else ("last-step", last)
    verdict = spread_verdict([e.get("ci") for e in decide.values()])
    parts = [
        f"{prec}: perturbation sd / seed sd of the {decided_on} final loss {fmt(e.get('ratio'))} "
        f"{fmt_ci(e.get('ci'))}"
        + (
            f" (last step: {fmt(last[prec].get('ratio'))} {fmt_ci(last[prec].get('ci'))})"
            if decide is window and prec in last
            else ""
        )
        for prec, e in decide.items()
    ]
    return row(
        "twin_spread",
        "; ".join(parts) or "no twin spread measured",
        verdict,
        "Decided on the final loss averaged over the last window of steps (the last step is "
        "reported beside it). Per precision: supported when the ratio's 95% interval lies within "
        f"[{COMPARABLE[0]:.2g}, {COMPARABLE[1]:g}] (same order of magnitude), partly when it "
        "overlaps that band, not supported when it lies outside. Verdict: the precisions' common "
        "verdict, partly when they differ.",
        "Sun compare test accuracies at the end of training; the final loss is the analogue here. "
        "A last-step ratio far above the window-averaged one means the perturbation moves the "
        "loss along its oscillation more than it moves its level.",
    )


def claims(ctx) -> list[dict]:
    rep = ctx.reports["twins"]
    return [_restrained(rep), _spread(rep)]


def figures(ctx, outdir) -> list:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outdir.mkdir(parents=True, exist_ok=True)
    twins = [t for t in ctx.reports["twins"].get("twins", []) if t.get("amplification")]
    fig, ax = plt.subplots(figsize=(6.5, 4.2), constrained_layout=True)
    for i, (kind, colour) in enumerate((("ulp", "C0"), ("scale", "C1"))):
        for j, prec in enumerate(("float32", "float64")):
            amp = [
                t["amplification"]
                for t in twins
                if str(t.get("perturbation", "")).startswith(kind) and t.get("precision") == prec
            ]
            if amp:
                x = np.full(len(amp), 2 * i + j) + np.linspace(-0.2, 0.2, len(amp))
                ax.scatter(x, amp, s=10, color=colour, alpha=0.7)
    ax.set_xticks(range(4), ["ulp f32", "ulp f64", "k-scale f32", "k-scale f64"])
    ax.set_yscale("log")
    ax.axhline(GROWTH_FACTOR, color="k", ls="--", lw=1)
    ax.set_ylabel("amplification d_sat / d_0")
    ax.set_title("Twins: growth of last-bit perturbations")
    path = outdir / "twins_amplification.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [path]
