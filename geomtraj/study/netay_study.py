"""The Netay study: a 40 x 40 grid of hidden widths, 50,000 Adam steps each, float32 and float64.

It judges the claims on divergence, local behaviour in stable and unstable segments, double
twisted spirals, and (from the same long runs) Kunin's diffusion exponent and Cohen's edge of
stability; it draws the maps over (n1, n2).
"""

from __future__ import annotations

import numpy as np

from geomtraj.study.claims import (
    STARTUP_STEPS,
    bootstrap_ci,
    false_positive_rate,
    fmt,
    fmt_ci,
    originals,
    pct,
    ratio_of_sums_ci,
    resample_ci,
    row,
    run_field,
    split_divergence,
    wilson,
)

#: Width pairs the paper's figures show; the stable/unstable comparison always includes those
#: present in the grid.
PAPER_PAIRS = ("12x24", "16x29", "17x12", "20x20", "21x21", "26x26", "27x27")

#: Runs analysed with sliding windows (quiet and burst stretches alike) for the local-behaviour
#: comparison, and the windows kept per run: 24 x 60 windows of 200 steps, about 10 s.
SLIDING_RUNS = 24
SLIDING_WINDOWS = 60

#: Divergence counts as a property of long Adam runs, not a rare accident, when the Wilson lower
#: bound of the fraction of runs diverging after start-up exceeds this (docs/verdicts.md).
DIVERGENCE_COMMON = 0.05

#: "Same local behaviour": partly only when the quiet/burst spiral-fraction ratio's interval
#: reaches this (quiet windows spiral at least half as often as burst windows could be true).
LOCAL_PARTLY_RATIO = 0.5

#: Tolerances of the edge-of-stability verdict on the ratio sharpness / threshold.
EOS_SUPPORTED = (0.8, 1.25)
EOS_PARTLY = (0.5, 2.0)


def _widths(hidden: str) -> tuple[int, int]:
    a, b = hidden.split("x")
    return int(a), int(b)


def _sliding_runs(report: dict) -> list[int]:
    runs = originals(report)
    paper = [r["run"] for r in runs if r["hidden"] in PAPER_PAIRS]
    rest = [r["run"] for r in runs if r["hidden"] not in PAPER_PAIRS]
    n_more = max(0, min(SLIDING_RUNS - len(paper), len(rest)))
    pick = np.unique(np.round(np.linspace(0, len(rest) - 1, n_more)).astype(int)) if n_more else []
    return sorted(paper + [rest[i] for i in pick])


def measure(ctx) -> dict:
    """Sliding-window spirals on a subset of float32 runs (quiet against burst stretches)."""
    from geomtraj.analysis import spirals
    from geomtraj.analysis.spirals import WindowParams

    report = ctx.reports["f32"]
    runs = _sliding_runs(report)
    ctx.log(f"[netay] sliding-window spirals on {len(runs)} runs")
    res = spirals.analyze(
        ctx.store("f32"),
        runs,
        windows="sliding",
        window_params=WindowParams(max_windows=SLIDING_WINDOWS),
    )
    per_run = spirals.report(res)["runs"]
    out = {"precision_pairs": _precision_pairs(ctx.reports), "width_trend": _width_trend(report)}
    return {
        **out,
        "sliding": {
            "runs": runs,
            "max_windows": SLIDING_WINDOWS,
            "per_run": {str(k): v["spirals"] for k, v in per_run.items()},
        },
    }


def _width_trend(report: dict) -> dict:
    """Spearman correlation of the burst rate with n1 and with n2 over the grid."""
    from scipy.stats import spearmanr

    runs = [r for r in originals(report) if r.get("n_bursts") is not None and r.get("n_steps")]
    rate = [1000 * r["n_bursts"] / r["n_steps"] for r in runs]
    out = {}
    for k, name in enumerate(("n1", "n2")):
        w = [_widths(r["hidden"])[k] for r in runs]
        if len(set(w)) > 1 and len(runs) >= 3:
            res = spearmanr(w, rate)
            out[name] = {"rho": float(res.statistic), "p_value": float(res.pvalue), "n": len(runs)}
    return out


def _precision_pairs(reports: dict) -> dict | None:
    """Burst rate of the float64 subsample over the float32 runs of the same widths and seed."""
    from geomtraj.study.betas_study import _paired_ratio

    if "f64" not in reports:
        return None
    runs = originals(reports["f32"]) + originals(reports["f64"])
    est, ci, n = _paired_ratio(runs, "float64", "float32")
    return {"ratio": est, "ci": ci, "pairs": n}


# ------------------------------------------------------------------------------------ claims


def divergence_verdict(k_late: int, n: int) -> str:
    """supported: runs diverge after start-up, and not rarely (Wilson lower bound above
    DIVERGENCE_COMMON); partly: some do, rarely; not supported: none does (bursts never count)."""
    if n == 0:
        return "not testable here"
    if k_late == 0:
        return "not supported"
    return "supported" if wilson(k_late, n)[0] > DIVERGENCE_COMMON else "partly"


def _divergence(reports: dict, meas: dict) -> dict:
    parts, evidence = [], []
    k_all = n_all = 0
    for name in ("f32", "f64"):
        rep = reports.get(name)
        if rep is None:
            continue
        runs = originals(rep)
        n = len(runs)
        split = split_divergence(runs)
        k_div = split["late"]
        k_all, n_all = k_all + k_div, n_all + n
        k_burst = sum((r.get("n_bursts") or 0) > 0 for r in runs)
        div_ci, burst_ci = wilson(k_div, n), wilson(k_burst, n)
        prec = runs[0]["precision"] if runs else name
        parts.append(
            f"{prec}: diverged {k_div}/{n} = {pct(k_div / n, div_ci)}; bursts (unstable "
            f"episodes) in {k_burst}/{n} = {pct(k_burst / n, burst_ci)}"
        )
        steps = split["late_steps"]
        if steps:
            evidence.append(
                f"{prec}: divergence steps median {fmt(float(np.median(steps)))} "
                f"(range {min(steps)}-{max(steps)})"
            )
        if split["startup"]:
            evidence.append(
                f"{prec}: {split['startup']} run(s) diverged at start-up (update <= "
                f"{STARTUP_STEPS}), counted apart"
            )
        rates = [1000 * r["n_bursts"] / r["n_steps"] for r in runs if r.get("n_bursts") is not None]
        if rates:
            evidence.append(
                f"{prec}: bursts per 1000 steps median {fmt(float(np.median(rates)))} "
                f"{fmt_ci(bootstrap_ci(rates))}"
            )
    for name, t in (meas.get("width_trend") or {}).items():
        evidence.append(
            f"burst rate against {name}: Spearman rho {fmt(t['rho'])} (p = {fmt(t['p_value'], 2)}, "
            f"{t['n']} runs)"
        )
    pairs = meas.get("precision_pairs")
    if pairs and pairs.get("pairs"):
        evidence.append(
            f"burst rate float64/float32 on the {pairs['pairs']} widths run in both: "
            f"{fmt(pairs['ratio'])} {fmt_ci(pairs['ci'])}"
        )
    return row(
        "divergence",
        "; ".join(parts),
        divergence_verdict(k_all, n_all),
        "Divergence means loss > 1e4 x initial or non-finite, after update "
        f"{STARTUP_STEPS} (earlier ones are start-up failures, counted apart). Supported: runs "
        f"diverge and the Wilson 95% lower bound of the diverged fraction exceeds "
        f"{DIVERGENCE_COMMON:.0%}; partly: some runs diverge, but rarely; not supported: no run "
        "diverges, whatever else is seen (bursts alone never give partly).",
        "; ".join(evidence) + ". Maps by width: figures netay_maps_*.png.",
    )


def _local_behaviour(meas: dict) -> dict:
    per_run = meas.get("sliding", {}).get("per_run", {})
    q_sp, q_n, b_sp, b_n = [], [], [], []
    for entry in per_run.values():
        q, b = entry.get("quiet") or {}, entry.get("burst") or {}
        if q.get("n_windows") is None or b.get("n_windows") is None:
            continue
        q_sp.append(q["n_spirals"])
        q_n.append(q["n_windows"])
        b_sp.append(b["n_spirals"])
        b_n.append(b["n_windows"])
    if sum(q_n) == 0 or sum(b_n) == 0:
        return row(
            "local_behaviour",
            f"{sum(q_n)} quiet and {sum(b_n)} burst windows in {len(per_run)} runs",
            "not testable here",
            "needs both quiet (stable) and burst (unstable) windows",
        )
    p_q, ci_q = ratio_of_sums_ci(q_sp, q_n)
    p_b, ci_b = ratio_of_sums_ci(b_sp, b_n)
    # ratio quiet/burst of the spiral fraction, resampling runs
    ratio = p_q / p_b if p_b > 0 else float("nan")
    ratio_ci = resample_ci(
        [q_sp, q_n, b_sp, b_n],
        lambda qs, qn, bs, bn, axis=-1: (
            (qs.sum(axis) / qn.sum(axis)) / (bs.sum(axis) / bn.sum(axis))
        ),
    )
    k_q = int(sum(q_sp))
    fp = false_positive_rate("spiral")
    verdict = local_verdict(ratio_ci, wilson(k_q, int(sum(q_n))), fp["upper"])
    return row(
        "local_behaviour",
        f"spiral fraction in quiet (stable) windows {pct(p_q, ci_q)} vs in burst (unstable) "
        f"windows {pct(p_b, ci_b)}; ratio quiet/burst {fmt(ratio)} {fmt_ci(ratio_ci)}",
        verdict,
        "supported: the ratio's 95% interval (runs resampled) contains 1; partly: it excludes 1 "
        f"but reaches {LOCAL_PARTLY_RATIO:g} (quiet windows may spiral at least half as often), "
        "and quiet-window spirals exceed the detector's false-positive rate "
        f"({fp['upper']:.3g}, {fp['source']}; Wilson lower bound); not supported: otherwise.",
        f"{len(per_run)} float32 runs (the paper's width pairs in the grid and an even sample), "
        f"sliding 200-step windows, at most {meas['sliding']['max_windows']} per run: "
        f"{int(sum(q_n))} quiet windows ({k_q} spirals), {int(sum(b_n))} windows overlapping a "
        f"burst ({int(sum(b_sp))} spirals).",
    )


def local_verdict(ratio_ci, quiet_ci, fp_upper: float) -> str:
    """Verdict of "same local behaviour" from the quiet/burst ratio's interval."""
    if ratio_ci is not None and ratio_ci[0] <= 1 <= ratio_ci[1]:
        return "supported"
    if (
        ratio_ci is not None
        and ratio_ci[1] >= LOCAL_PARTLY_RATIO
        and quiet_ci is not None
        and quiet_ci[0] > fp_upper
    ):
        return "partly"
    return "not supported"


def spiral_verdict(ci_dt, runs_ci, fp_dt: float) -> str:
    """supported: double twisted spirals above their false-positive rate and in most runs;
    partly: above it, but not in most runs; not supported: double twisted spirals no more
    frequent than the detector's false positives (whatever plain spirals do)."""
    if ci_dt is None or ci_dt[0] <= fp_dt:
        return "not supported"
    if runs_ci is not None and runs_ci[0] > 0.5:
        return "supported"
    return "partly"


def _spirals(reports: dict) -> dict:
    rep = reports["f32"]
    runs = [r for r in originals(rep) if run_field(r, "spirals", "n_windows") is not None]
    n_win = [r["spirals"]["n_windows"] for r in runs]
    n_sp = [r["spirals"]["n_spirals"] for r in runs]
    n_dbl = [r["spirals"]["n_double"] for r in runs]
    n_tw = [r["spirals"]["n_twisted"] for r in runs]
    dt_by_run: dict[int, int] = {}
    for w in rep.get("spiral_windows", []):
        if w.get("is_double") and w.get("is_twisted"):
            dt_by_run[w["run"]] = dt_by_run.get(w["run"], 0) + 1
    n_dt = [dt_by_run.get(r["run"], 0) for r in runs]
    if sum(n_win) == 0:
        return row("spirals", "no burst windows to analyse", "not testable here",
                   "needs burst windows")  # fmt: skip
    p_sp, ci_sp = ratio_of_sums_ci(n_sp, n_win)
    p_dt, ci_dt = ratio_of_sums_ci(n_dt, n_win)
    p_d, ci_d = ratio_of_sums_ci(n_dbl, n_win)
    p_t, ci_t = ratio_of_sums_ci(n_tw, n_win)
    k_runs = sum(k > 0 for k in n_dt)
    runs_ci = wilson(k_runs, len(runs))
    fp_dt, fp_sp = false_positive_rate("double_twisted"), false_positive_rate("spiral")
    verdict = spiral_verdict(ci_dt, runs_ci, fp_dt["upper"])
    sp_above = "above" if ci_sp is not None and ci_sp[0] > fp_sp["upper"] else "not above"
    total = sum(r["spirals"].get("n_windows_total") or r["spirals"]["n_windows"] for r in runs)
    return row(
        "spirals",
        f"of burst windows: spirals {pct(p_sp, ci_sp)}, double twisted {pct(p_dt, ci_dt)}; runs "
        f"with at least one double twisted spiral {k_runs}/{len(runs)} = "
        f"{pct(k_runs / len(runs), runs_ci)}",
        verdict,
        "supported: the interval of the double-twisted fraction of burst windows lies above the "
        f"detector's measured false-positive rate for double twisted spirals ({fp_dt['upper']:.3g}"
        f", {fp_dt['source']}) and such spirals appear in most runs (Wilson lower bound > 50%); "
        "partly: above that rate but not in most runs; not supported: double twisted spirals no "
        "more frequent than false positives, however many plain spirals there are. Fractions "
        "pool windows, intervals resample runs.",
        f"float32 grid, {sum(n_win)} burst windows analysed (of {total}): double {pct(p_d, ci_d)}, "
        f"twisted {pct(p_t, ci_t)}; plain spirals against their false-positive rate "
        f"{fp_sp['upper']:.3g}: {sp_above}. Spiral prevalence by width: netay_maps_float32.png.",
    )


def _diffusion(reports: dict) -> dict:
    rep = reports["f32"]
    entries = [d for d in rep.get("diffusion", []) if d.get("exponent") is not None]
    c = [d["exponent"] for d in entries]
    if len(c) < 3:
        return row("diffusion", f"{len(c)} run(s) with an exponent", "not testable here",
                   "needs at least 3 runs with a detrended exponent")  # fmt: skip
    med, ci = float(np.median(c)), bootstrap_ci(c)
    own = [d for d in entries if d.get("ci")]
    k_anom = sum(not (d["ci"][0] <= 1 <= d["ci"][1]) for d in own)
    raw = [d["exponent_raw"] for d in entries if d.get("exponent_raw") is not None]
    verdict = "supported" if ci is not None and not (ci[0] <= 1 <= ci[1]) else "not supported"
    return row(
        "diffusion",
        f"detrended exponent c: median {fmt(med)} {fmt_ci(ci)} over {len(c)} runs; c != 1 in "
        f"{k_anom}/{len(own)} runs' own intervals",
        verdict,
        "supported: the 95% interval of the median detrended exponent (runs resampled) excludes "
        "1 (normal diffusion); not supported: it contains 1.",
        f"float32 grid, full-batch Adam (Kunin studied SGD, whose noise differs). Raw (not "
        f"detrended) exponent median {fmt(float(np.median(raw)) if raw else None)}: drift makes "
        "it ballistic-looking, which is why the verdict uses the detrended one.",
    )


def _edge_of_stability(reports: dict) -> dict:
    stab = reports["f32"].get("stability") or {}
    runs = [r for r in stab.get("runs", []) if r.get("sharpness_ratio_median") is not None]
    ratios = [r["sharpness_ratio_median"] for r in runs]
    if len(ratios) < 3:
        need = "needs the preconditioned sharpness at checkpoints of at least 3 runs"
        return row("edge_of_stability", f"{len(ratios)} run(s) with sharpness",
                   "not testable here", need)  # fmt: skip
    med, ci = float(np.median(ratios)), bootstrap_ci(ratios)
    inside = lambda iv, band: iv is not None and band[0] <= iv[0] and iv[1] <= band[1]  # noqa: E731
    if inside(ci, EOS_SUPPORTED):
        verdict = "supported"
    elif inside(ci, EOS_PARTLY):
        verdict = "partly"
    else:
        verdict = "not supported"
    overall = stab.get("overall") or {}
    n_ck = [r.get("n_checkpoints") or 0 for r in runs]
    onset = (
        f" Burst onsets at a threshold crossing: {fmt(overall.get('fraction_at_crossing'))} "
        f"(chance {fmt(overall.get('chance_fraction'))}, p = {fmt(overall.get('p_value'))})."
        if overall.get("fraction_at_crossing") is not None
        else f" Onset-crossing test: {overall.get('note') or 'not measurable'}."
    )
    return row(
        "edge_of_stability",
        f"lambda_max(P^-1 H) / threshold, median over checkpoints then runs: {fmt(med)} "
        f"{fmt_ci(ci)} ({len(ratios)} runs)",
        verdict,
        f"supported: the 95% interval lies within {EOS_SUPPORTED}; partly: within {EOS_PARTLY}; "
        "not supported: otherwise.",
        f"float32 grid, {int(np.median(n_ck))} checkpoints per run (full snapshots); threshold "
        f"38/lr = {fmt(runs[0]['threshold'])}." + onset,
    )


def claims(ctx) -> list[dict]:
    meas = ctx.meta.get("measurements") or {}
    return [
        _divergence(ctx.reports, meas),
        _local_behaviour(meas),
        _spirals(ctx.reports),
        _diffusion(ctx.reports),
        _edge_of_stability(ctx.reports),
    ]


# ----------------------------------------------------------------------------------- figures


def width_maps(report: dict) -> dict[str, np.ndarray]:
    """Per (n1, n2): divergence step, bursts per 1000 steps, spiral fraction of burst windows."""
    runs = originals(report)
    n1s = sorted({_widths(r["hidden"])[0] for r in runs})
    n2s = sorted({_widths(r["hidden"])[1] for r in runs})
    shape = (len(n1s), len(n2s))
    maps = {k: np.full(shape, np.nan) for k in ("diverged_step", "burst_rate", "spiral_fraction")}
    for r in runs:
        a, b = _widths(r["hidden"])
        i, j = n1s.index(a), n2s.index(b)
        if r.get("diverged_step") is not None:
            maps["diverged_step"][i, j] = r["diverged_step"]
        if r.get("n_bursts") is not None and r.get("n_steps"):
            maps["burst_rate"][i, j] = 1000 * r["n_bursts"] / r["n_steps"]
        nw = run_field(r, "spirals", "n_windows")
        if nw:
            maps["spiral_fraction"][i, j] = r["spirals"]["n_spirals"] / nw
    maps["n1"], maps["n2"] = np.array(n1s), np.array(n2s)
    return maps


def figures(ctx, outdir) -> list:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outdir.mkdir(parents=True, exist_ok=True)
    paths = []
    for rep in ctx.reports.values():
        maps = width_maps(rep)
        prec = originals(rep)[0]["precision"]
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), constrained_layout=True)
        n1, n2 = maps["n1"], maps["n2"]
        extent = (n2[0] - 0.5, n2[-1] + 0.5, n1[0] - 0.5, n1[-1] + 0.5)
        panels = (
            ("diverged_step", "divergence step (blank: did not diverge)", "viridis"),
            ("burst_rate", "bursts per 1000 steps", "magma"),
            ("spiral_fraction", "spiral fraction of burst windows", "cividis"),
        )
        for ax, (key, title, cmap) in zip(axes, panels, strict=True):
            data = maps[key]
            im = ax.imshow(data, origin="lower", extent=extent, aspect="auto", cmap=cmap)
            if np.all(np.isnan(data)):
                ax.text(0.5, 0.5, "no run diverged" if key == "diverged_step" else "no data",
                        transform=ax.transAxes, ha="center", va="center")  # fmt: skip
            else:
                fig.colorbar(im, ax=ax)
            ax.set_xlabel("n2 (second hidden width)")
            ax.set_ylabel("n1 (first hidden width)")
            ax.set_title(title, fontsize=10)
        fig.suptitle(f"Netay width grid, {prec}, {len(originals(rep))} networks")
        path = outdir / f"netay_maps_{prec}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths
