"""The divergence study: where and when Adam diverges, and whether float64 avoids what float32 hits.

A phase diagram over the learning rate, eps, beta1 against beta2 (on both sides of
beta1 = sqrt(beta2), beyond which Adam's update is not bounded) and three tasks (the sincos
regression with MSE; moons and spirals classification with BCE, where the loss goes to zero), each
setting trained with the same seeds in float64, float32, bfloat16 and float16. It judges Netay's
divergence claim where divergence can happen, and the precision claim on divergences: paired runs
(same setting and seed) compare whether and when each precision diverges. Runs that never diverge
are censored at the run length and counted explicitly, never dropped. The rules are stated in
docs/verdicts.md.
"""

from __future__ import annotations

import math

import numpy as np

from geomtraj.study.claims import (
    STARTUP_STEPS,
    fmt,
    fmt_ci,
    originals,
    pct,
    resample_ci,
    row,
    wilson,
)
from geomtraj.study.precision import (
    LADDER,
    SETTING,
    failed_at_startup,
    late_divergence,
    paired,
    precision_verdict,
    setting_of,
)

#: Divergence is common, not a rare accident, when the Wilson lower bound of a diverged fraction
#: exceeds this (as in the Netay study's rule).
DIVERGENCE_COMMON = 0.05

#: float64 postpones divergence when the interval of its restricted mean time to divergence over
#: float32's lies above this (a quarter longer); it then counts as "partly" a cause.
POSTPONE_RATIO = 1.25


def unbounded(r: dict) -> bool:
    """True where beta1 > sqrt(beta2): Adam's ratio m_hat / sqrt(v_hat) has no bound there."""
    return r["beta1"] > math.sqrt(r["beta2"])


def _fraction(runs: list[dict]) -> dict:
    k = sum(late_divergence(r) is not None for r in runs)
    return {"k": k, "n": len(runs), "ci": wilson(k, len(runs))}


def _rate(r: dict) -> float | None:
    if r.get("n_bursts") is None or not r.get("n_steps"):
        return None
    return 1000.0 * r["n_bursts"] / r["n_steps"]


def _burst_ratio(runs: list[dict], num: str, den: str) -> dict:
    """Mean burst rate of ``num`` over ``den`` on paired runs that did not diverge."""
    by = {
        p: {(setting_of(r), r["seed"]): _rate(r) for r in runs if r["precision"] == p and
            r.get("diverged_step") is None}
        for p in (num, den)
    }  # fmt: skip
    pairs = [(by[num][k], by[den][k]) for k in by[num] if k in by[den]]
    pairs = [p for p in pairs if None not in p]
    if not pairs:
        return {"ratio": None, "ci": None, "pairs": 0}
    a, b = np.array(pairs, float).T
    est = float(a.mean() / b.mean()) if b.mean() > 0 else None
    ci = resample_ci([a, b], lambda x, y, axis=-1: x.mean(axis) / y.mean(axis))
    return {"ratio": est, "ci": ci, "pairs": len(pairs)}


def _all_runs(ctx) -> list[dict]:
    return [r for rep in ctx.reports.values() for r in originals(rep)]


def _steps(ctx) -> int:
    return max(spec.plan.steps for spec in ctx.study.stores)


def measure(ctx) -> dict:
    """Diverged fractions over the phase diagram, paired comparisons between precisions."""
    runs = _all_runs(ctx)
    steps = _steps(ctx)
    precisions = [p for p in LADDER if any(r["precision"] == p for r in runs)]
    by_prec = {}
    for p in precisions:
        rs = [r for r in runs if r["precision"] == p]
        late = [t for r in rs if (t := late_divergence(r)) is not None]
        by_prec[p] = {
            "all": _fraction(rs),
            "startup": sum(failed_at_startup(r) for r in rs),
            "bounded": _fraction([r for r in rs if not unbounded(r)]),
            "unbounded": _fraction([r for r in rs if unbounded(r)]),
            "step_median": float(np.median(late)) if late else None,
            "step_range": [min(late), max(late)] if late else None,
            "by": {
                key: {str(v): _fraction([r for r in rs if r.get(key) == v])
                      for v in sorted({r.get(key) for r in rs})}
                for key in ("dataset", "hidden", "lr", "eps", "beta1", "beta2")
            },
        }  # fmt: skip
    cells = {}
    for r in runs:
        key = "|".join(str(v) for v in setting_of(r)) + f"|{r['precision']}"
        c = cells.setdefault(key, {"n": 0, "late": 0, "startup": 0, "steps": []})
        c["n"] += 1
        c["startup"] += failed_at_startup(r)
        if (t := late_divergence(r)) is not None:
            c["late"] += 1
            c["steps"].append(t)
    pairs = {
        f"{p}/float32": paired(runs, p, "float32", steps) for p in precisions if p != "float32"
    }
    bursts = {
        f"{p}/float32": _burst_ratio(runs, p, "float32") for p in precisions if p != "float32"
    }
    return {
        "surprises": _surprises(by_prec, pairs),
        "steps": steps,
        "setting": list(SETTING),
        "by_precision": by_prec,
        "cells": cells,
        "paired": pairs,
        "burst_rate_ratio": bursts,
    }


def _surprises(by_prec: dict, pairs: dict) -> list[str]:
    """Findings to set against the claims, each with its numbers."""
    out = []
    p64 = pairs.get("float64/float32") or {}
    if p64.get("ci") and p64["ci"][0] > 1:
        out.append(
            "float64 diverges more often than float32 on the same settings and seeds, not less: "
            f"divergences float64/float32 {fmt(p64['ratio'])} {fmt_ci(p64['ci'])} over "
            f"{p64['pairs']} pairs."
        )
    f32 = by_prec.get("float32")
    if f32 and f32["unbounded"]["k"] and not f32["bounded"]["k"]:
        out.append(
            "Every float32 divergence of the phase diagram is where beta1 > sqrt(beta2) "
            f"({_frac_text(f32['unbounded'])} there, {_frac_text(f32['bounded'])} elsewhere): "
            "Adam's known instability of unbounded updates, not a long-run drift of usual settings."
        )
    startup = {p: e["startup"] for p, e in by_prec.items() if e["startup"]}
    if startup:
        out.append(
            "Start-up failures (divergence at or before update "
            f"{STARTUP_STEPS}), counted apart from the phase diagram: "
            + ", ".join(f"{p} {k} of {by_prec[p]['all']['n']}" for p, k in startup.items())
            + " (in float16, eps 1e-12 and 1e-8 round to zero: its smallest subnormal is 6e-8)."
        )
    return out


# ------------------------------------------------------------------------------------ claims


def phase_verdict(bounded: dict, unbounded_: dict) -> str:
    """Verdict of the divergence claim from float32's diverged fractions on both sides of
    beta1 = sqrt(beta2): supported when runs diverge commonly in Adam's usual regime
    (beta1 <= sqrt(beta2)); partly when they diverge only rarely there, or commonly only where
    beta1 > sqrt(beta2); not supported when no run diverges after start-up."""
    common = lambda f: f["ci"] is not None and f["ci"][0] > DIVERGENCE_COMMON  # noqa: E731
    if bounded["n"] + unbounded_["n"] == 0:
        return "not testable here"
    if bounded["k"] + unbounded_["k"] == 0:
        return "not supported"
    return "supported" if common(bounded) else "partly"


def _frac_text(f: dict) -> str:
    return f"{f['k']}/{f['n']} = {pct(f['k'] / f['n'], f['ci'])}" if f["n"] else "no runs"


def _phase_row(meas: dict) -> dict:
    by = meas.get("by_precision", {})
    f32 = by.get("float32")
    if not f32:
        return row("divergence_phase", "no float32 runs", "not testable here", "needs float32 runs")
    verdict = phase_verdict(f32["bounded"], f32["unbounded"])
    parts = [
        f"{p}: diverged {_frac_text(e['all'])} (beta1 <= sqrt(beta2): {_frac_text(e['bounded'])}; "
        f"beta1 > sqrt(beta2): {_frac_text(e['unbounded'])})"
        for p, e in by.items()
    ]
    evidence = []
    for p, e in by.items():
        margins = "; ".join(
            f"{key} " + ", ".join(f"{v}: {f['k']}/{f['n']}" for v, f in vals.items())
            for key, vals in e["by"].items()
        )
        when = (
            f"at updates {e['step_range'][0]}-{e['step_range'][1]} (median {fmt(e['step_median'])})"
            if e["step_range"]
            else "never"
        )
        evidence.append(
            f"{p} diverged {when}; {e['startup']} start-up failure(s) (update <= "
            f"{STARTUP_STEPS}) counted apart; by {margins}"
        )
    return row(
        "divergence_phase",
        "; ".join(parts),
        verdict,
        "Divergence: loss > 1e4 x initial or non-finite after update "
        f"{STARTUP_STEPS}. Judged on float32 (the paper's format): supported when the Wilson 95% "
        f"lower bound of the diverged fraction exceeds {DIVERGENCE_COMMON:.0%} where "
        "beta1 <= sqrt(beta2) (Adam's usual regime); partly when runs diverge but not that "
        "commonly there (e.g. only where beta1 > sqrt(beta2), where Adam's update is unbounded); "
        "not supported when no run diverges after start-up.",
        " | ".join(evidence) + ". Figure divergence_phase.png.",
    )


def _precision_row(meas: dict) -> dict:
    pairs = meas.get("paired", {})
    p64 = pairs.get("float64/float32") or {}
    if not p64.get("pairs") or not (p64.get("only_den", 0) + p64.get("both", 0)):
        verdict = "not testable here"
    else:
        verdict = precision_verdict(p64.get("ci"))
        rc = p64.get("restricted_ci")
        if verdict == "not supported" and rc is not None and rc[0] > POSTPONE_RATIO:
            verdict = "partly"

    def text(name, e):
        return (
            f"{name}: {e['pairs']} pairs, both diverged {e['both']}, only {name.split('/')[0]} "
            f"{e['only_num']}, only float32 {e['only_den']}, neither {e['neither']}; divergences "
            f"{name} {fmt(e['ratio'])} {fmt_ci(e['ci'])}; divergence time ratio (both diverged) "
            f"median {fmt(e['time_ratio'])} {fmt_ci(e['time_ratio_ci'])}; restricted mean time "
            f"ratio (censored at {meas.get('steps')}) {fmt(e['restricted'])} "
            f"{fmt_ci(e['restricted_ci'])}"
            + (f"; {e['startup_pairs']} pairs with a start-up failure left out"
               if e["startup_pairs"] else "")
        )  # fmt: skip

    bursts = meas.get("burst_rate_ratio", {})
    return row(
        "precision_divergence",
        text("float64/float32", p64) if p64 else "no float64/float32 pairs",
        verdict,
        "Paired runs (same setting and seed) in float64 and float32. Supported when float64 "
        "removes most divergences: the 95% interval of (float64 divergences)/(float32 "
        "divergences), pairs resampled, lies below 0.5; partly when it lies below 0.8, or when "
        "float64 postpones divergence (restricted mean time to divergence, non-diverging runs "
        f"censored at the run length, interval above {POSTPONE_RATIO}x float32's); not supported "
        "otherwise; not testable when no float32 run diverges after start-up. Start-up failures "
        f"(update <= {STARTUP_STEPS}) are counted apart.",
        " | ".join(text(k, e) for k, e in pairs.items() if k != "float64/float32")
        + ". Burst rate against float32 on paired runs that did not diverge: "
        + "; ".join(
            f"{k} {fmt(e['ratio'])} {fmt_ci(e['ci'])} ({e['pairs']} pairs)"
            for k, e in bursts.items()
        )  # fmt: skip
        + ". Figure divergence_times.png.",
    )


def claims(ctx) -> list[dict]:
    meas = ctx.meta.get("measurements") or {}
    return [_phase_row(meas), _precision_row(meas)]


# ----------------------------------------------------------------------------------- figures


def figures(ctx, outdir) -> list:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outdir.mkdir(parents=True, exist_ok=True)
    runs = _all_runs(ctx)
    steps = _steps(ctx)
    precisions = [p for p in LADDER if any(r["precision"] == p for r in runs)]
    rows_ = sorted({(r["dataset"], r["hidden"], r["beta1"], r["beta2"]) for r in runs})
    cols = sorted({(r["lr"], r["eps"]) for r in runs})
    fig, axes = plt.subplots(
        1, len(precisions), figsize=(3.2 * len(precisions) + 2, 0.28 * len(rows_) + 2.5),
        constrained_layout=True, squeeze=False,
    )  # fmt: skip
    cell: dict[tuple, list[bool]] = {}
    for r in runs:
        rk, ck = (r["dataset"], r["hidden"], r["beta1"], r["beta2"]), (r["lr"], r["eps"])
        # start-up failures are left out: a cell where every run failed at start-up stays grey
        if not failed_at_startup(r):
            cell.setdefault((r["precision"], rk, ck), []).append(late_divergence(r) is not None)
    for ax, p in zip(axes[0], precisions, strict=True):
        frac = np.full((len(rows_), len(cols)), np.nan)
        for i, rk in enumerate(rows_):
            for j, ck in enumerate(cols):
                div = cell.get((p, rk, ck))
                if div:
                    frac[i, j] = np.mean(div)
        cmap = matplotlib.colormaps["Reds"].with_extremes(bad="0.6")
        im = ax.imshow(np.ma.masked_invalid(frac), aspect="auto", cmap=cmap, vmin=0, vmax=1)
        ax.set_xticks(range(len(cols)), [f"{lr:g}/{eps:g}" for lr, eps in cols], rotation=90,
                      fontsize=6)  # fmt: skip
        ax.set_yticks(
            range(len(rows_)),
            [
                f"{d} {h} {b1:g}/{b2:g}{' *' if b1 > math.sqrt(b2) else ''}"
                for d, h, b1, b2 in rows_
            ],
            fontsize=6,
        )
        ax.set_xlabel("lr / eps")
        ax.set_title(p, fontsize=10)
    fig.colorbar(im, ax=axes[0, -1], label="fraction of seeds diverged")
    fig.suptitle(
        "Divergence phase diagram (rows: task, widths, beta1/beta2; * where beta1 > sqrt(beta2); "
        "grey: every run failed at start-up)"
    )
    p1 = outdir / "divergence_phase.png"
    fig.savefig(p1, dpi=90)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 5), constrained_layout=True)
    by = {p: {(setting_of(r), r["seed"]): r for r in runs if r["precision"] == p} for p in LADDER}
    for p, colour in (("float64", "C0"), ("bfloat16", "C2"), ("float16", "C3")):
        pts = [
            (late_divergence(by["float32"][k]) or steps * 1.1, late_divergence(r) or steps * 1.1)
            for k, r in by[p].items()
            if k in by["float32"]
            and (late_divergence(r) or late_divergence(by["float32"][k]))
            and not (failed_at_startup(r) or failed_at_startup(by["float32"][k]))
        ]
        if pts:
            x, y = np.array(pts, float).T
            ax.scatter(x, y, s=10, alpha=0.6, color=colour, label=f"{p} against float32")
    ax.plot([1, steps], [1, steps], "k--", lw=1)
    ax.axhline(steps * 1.1, color="grey", lw=0.5)
    ax.axvline(steps * 1.1, color="grey", lw=0.5)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("float32 divergence update (right edge: never)")
    ax.set_ylabel("other precision's divergence update (top edge: never)")
    ax.set_title("Paired divergence times (same setting and seed)")
    ax.legend(fontsize=8)
    p2 = outdir / "divergence_times.png"
    fig.savefig(p2, dpi=90)
    plt.close(fig)
    return [p1, p2]
