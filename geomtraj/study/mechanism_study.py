"""The mechanism study: each burst against the second-moment decay mechanism, and a period law.

``measure`` runs :mod:`geomtraj.analysis.mechanism` on every run of the ``grid`` and ``heldout``
stores (the analysis replays each run, so the stores need no snapshots), fits the period law on
the grid and predicts the held-out runs with it. ``claims`` judges the three claims of
docs/mechanism.md with the rules stated beside them; ``figures`` draws one run's mechanism and the
predicted against the measured intervals.

The period law. Per run, ``Delta`` is the median over bursts of ``ln(v_after / v_crit)``, the fall
of the mean ``log v`` from the end of a burst to the crossing that precedes the next one, and
``T`` the median interval between onsets. Both are fitted across the grid as power laws,
``log y = c + p log(1/(1-beta2)) + q log(1/(1-beta1)) + r log(lr)`` (least squares, one
coefficient set per precision pooled); between bursts ``log v`` falls by ``-ln beta2`` per update,
so a decay time ``Delta / -ln(beta2)`` grows like ``(1/(1-beta2))^(1 + p_Delta)``: the exponent of
``Delta`` says how much of the period's exponent the decay explains.
"""

from __future__ import annotations

import math

import numpy as np

from geomtraj.study.claims import NEAR_BAND, bootstrap_ci, fmt, fmt_ci, resample_ci, row

#: Stores of the study.
STORES = ("grid", "heldout")

#: "Explained": the pooled fraction of onsets that follow their predicted crossing must have a 95%
#: interval above this, and exceed the chance coverage of the crossing windows by EXCESS.
EXPLAINED, EXPLAINED_PARTLY, EXCESS = 0.8, 0.5, 0.2

#: A predicted time is *close* to the measured one when the interval of the median
#: measured/predicted ratio lies within this band (a quarter either way); NEAR_BAND gives partly.
CLOSE_BAND = (0.8, 1.25)

#: Fewest runs with bursts to fit the law (four coefficients).
MIN_FIT_RUNS = 6

_CACHE: dict = {}


def _analyse(ctx, name: str):
    """The mechanism result of store ``name`` (computed once per study directory)."""
    from geomtraj.analysis import mechanism

    key = (str(ctx.study_dir), name)
    if key not in _CACHE:
        ds = ctx.store(name)
        _CACHE[key] = (ds, mechanism.analyze(ds))
    return _CACHE[key]


def _run_rows(result, report: dict) -> list[dict]:
    rows = []
    for j, entry in enumerate(report["mechanism"]["runs"]):
        one = result.isel(run=j)
        drop = np.asarray(one["log_v_drop"].values)
        measured = np.asarray(one["measured_interval"].values)
        decay = np.asarray(one["decay_interval"].values)
        ok = np.isfinite(measured) & np.isfinite(decay) & (decay > 0)
        rows.append({
            **{k: entry[k] for k in ("run", "verdict", "n_predicted", "onsets_explained",
                                     "chance_fraction", "lead_median", "false_crossings",
                                     "predicted_period", "decay_period", "measured_period")},
            "beta1": float(one["beta1"]), "beta2": float(one["beta2"]), "lr": float(one["lr"]),
            "precision": str(one["precision"].values),
            "explained_count": int(np.nansum(np.asarray(one["explained"].values, float))),
            "delta": float(np.median(drop[np.isfinite(drop)])) if np.isfinite(drop).any()
            else None,
            "decay_ratio": float(np.median(measured[ok] / decay[ok])) if ok.any() else None,
        })  # fmt: skip
    return rows


def _design(rows: list[dict]) -> np.ndarray:
    return np.array(
        [[1.0, -math.log(1 - r["beta2"]), -math.log(1 - r["beta1"]), math.log(r["lr"])]
         for r in rows]
    )  # fmt: skip


def fit_law(rows: list[dict], key: str) -> dict | None:
    """Least-squares power law of ``rows[key]`` in 1/(1-beta2), 1/(1-beta1) and lr (log-log)."""
    use = [r for r in rows if r.get(key) is not None and r[key] > 0]
    if len(use) < MIN_FIT_RUNS:
        return None
    A = _design(use)
    y = np.log([r[key] for r in use])
    coef, *_ = np.linalg.lstsq(A, y, rcond=None)
    resid = y - A @ coef
    return {
        "coef": coef.tolist(),
        "exponent_beta2": float(coef[1]),
        "exponent_beta1": float(coef[2]),
        "exponent_lr": float(coef[3]),
        "rms_log_residual": float(np.sqrt(np.mean(resid**2))),
        "n_runs": len(use),
    }


def predict(law: dict, rows: list[dict]) -> np.ndarray:
    """The law's value at each row's hyper-parameters."""
    return np.exp(_design(rows) @ np.asarray(law["coef"]))


def measure(ctx) -> dict:
    """Per run: mechanism fields, Delta and periods; the laws fitted on the grid; the held-out
    check."""
    from geomtraj.analysis import mechanism

    out: dict = {}
    for name in STORES:
        try:
            _, result = _analyse(ctx, name)
        except FileNotFoundError:
            continue
        out[name] = _run_rows(result, mechanism.report(result))
    grid = [r for r in out.get("grid", []) if r["measured_period"] is not None]
    out["law_period"] = fit_law(grid, "measured_period")
    out["law_delta"] = fit_law(grid, "delta")
    held = [r for r in out.get("heldout", []) if r["measured_period"] is not None]
    if out["law_period"] is not None and held:
        pred = predict(out["law_period"], held)
        out["heldout_check"] = [
            {"run": r["run"], "precision": r["precision"], "beta2": r["beta2"],
             "measured_period": r["measured_period"], "law_period": float(p),
             "ratio": r["measured_period"] / float(p)}
            for r, p in zip(held, pred, strict=True)
        ]  # fmt: skip
    else:
        out["heldout_check"] = []
    return out


def _measurements(ctx) -> dict:
    m = ctx.meta.get("measurements") if isinstance(ctx.meta, dict) else None
    return m if m is not None else measure(ctx)


def explained_verdict(k, n, chance) -> tuple[str, tuple | None, tuple | None]:
    """Verdict on per-run explained counts ``k`` of ``n`` predicted onsets at ``chance`` coverage.

    Returns the verdict, the interval of the pooled explained fraction and of its excess over the
    pooled chance coverage (runs resampled).
    """
    k, n, chance = (np.asarray(x, float) for x in (k, n, chance))
    if n.sum() == 0 or k.size < 3:
        return "not testable here", None, None
    ci = resample_ci([k, n], lambda a, b: a.sum() / b.sum())
    excess = resample_ci([k, n, chance], lambda a, b, c: (a.sum() - (c * b).sum()) / b.sum())
    if ci is None or excess is None:
        return "not testable here", ci, excess
    if ci[0] >= EXPLAINED and excess[0] >= EXCESS:
        return "supported", ci, excess
    if ci[0] >= EXPLAINED_PARTLY and excess[0] > 0:
        return "partly", ci, excess
    return "not supported", ci, excess


def ratio_verdict(ci) -> str:
    """Close (CLOSE_BAND), near (NEAR_BAND) or neither, for an interval of a ratio."""
    if ci is None:
        return "not testable here"
    if CLOSE_BAND[0] <= ci[0] and ci[1] <= CLOSE_BAND[1]:
        return "supported"
    if NEAR_BAND[0] <= ci[0] and ci[1] <= NEAR_BAND[1]:
        return "partly"
    return "not supported"


def _onset_claim(m: dict) -> dict:
    rows = [r for r in m.get("grid", []) + m.get("heldout", [])
            if r["n_predicted"] and r["chance_fraction"] is not None]  # fmt: skip
    k = [r["explained_count"] for r in rows]
    n = [r["n_predicted"] for r in rows]
    chance = [r["chance_fraction"] for r in rows]
    verdict, ci, excess = explained_verdict(k, n, chance)
    leads = [r["lead_median"] for r in rows if r["lead_median"] is not None]
    false = [r["false_crossings"] for r in rows if r["false_crossings"] is not None]
    total = sum(n)
    measured = (
        f"{sum(k)}/{total} predicted onsets follow their crossing "
        f"({fmt(sum(k) / total if total else None)} {fmt_ci(ci)}), chance coverage "
        f"{fmt(sum(c * b for c, b in zip(chance, n, strict=True)) / total if total else None)}, "
        f"excess {fmt_ci(excess)}; {len(rows)} runs"
    )
    return row(
        "burst_crossing",
        measured,
        verdict,
        f"Pooled over runs (runs resampled): supported when the 95% interval of the fraction of "
        f"predicted onsets (first upward crossing of lambda_max(P^-1 H)/threshold after the "
        f"previous burst) that the onset follows within the lag window lies above {EXPLAINED:g} "
        f"and its excess over the windows' chance coverage above {EXCESS:g}; partly when above "
        f"{EXPLAINED_PARTLY:g} with a positive excess; not supported otherwise.",
        f"median lead of the crossing over the onset "
        f"{fmt(float(np.median(leads)) if leads else None)} updates (median over runs); "
        f"fraction of crossings without a burst, median over runs "
        f"{fmt(float(np.median(false)) if false else None)}.",
    )


def _interval_claim(m: dict) -> dict:
    ratios = [r["decay_ratio"] for r in m.get("grid", []) if r["decay_ratio"] is not None]
    med = float(np.median(ratios)) if ratios else None
    ci = bootstrap_ci(ratios) if len(ratios) >= 3 else None
    return row(
        "quiet_interval",
        f"measured / forecast interval: median over {len(ratios)} runs {fmt(med)} {fmt_ci(ci)}",
        ratio_verdict(ci),
        "The forecast uses only the state at the previous burst's end: with H frozen and v "
        "decaying by beta2 per update, T = 2 ln(threshold/lambda_after)/-ln(beta2) after it. Per "
        "run, the median over bursts of measured interval / (burst-end offset + T); supported "
        f"when the interval of the median over runs lies within [{CLOSE_BAND[0]:g}, "
        f"{CLOSE_BAND[1]:g}], partly within [{NEAR_BAND[0]:g}, {NEAR_BAND[1]:g}], not supported "
        "otherwise.",
        "Interval from onset to onset; the forecast never uses the next onset.",
    )


def _law_claim(m: dict) -> dict:
    law, delta, held = m.get("law_period"), m.get("law_delta"), m.get("heldout_check") or []
    if law is None or not held:
        return row(
            "period_law",
            "no law fitted or no held-out run with bursts",
            "not testable here",
            "needs the grid and the held-out runs with bursts",
        )
    ratios = [h["ratio"] for h in held]
    lo, hi = min(ratios), max(ratios)
    if CLOSE_BAND[0] <= lo and hi <= CLOSE_BAND[1]:
        verdict = "supported"
    elif NEAR_BAND[0] <= lo and hi <= NEAR_BAND[1]:
        verdict = "partly"
    else:
        verdict = "not supported"
    parts = ", ".join(f"{h['precision']} {fmt(h['ratio'])}" for h in held)
    return row(
        "period_law",
        f"T ~ (1/(1-beta2))^{fmt(law['exponent_beta2'])} (1/(1-beta1))^"
        f"{fmt(law['exponent_beta1'])} lr^{fmt(law['exponent_lr'])} on {law['n_runs']} grid runs "
        f"(rms log residual {fmt(law['rms_log_residual'])}); held-out beta2 = "
        f"{fmt(held[0]['beta2'], 5)}: measured / law {parts}",
        verdict,
        f"Fitted on the grid only; supported when every held-out run's measured median period / "
        f"the law's lies within [{CLOSE_BAND[0]:g}, {CLOSE_BAND[1]:g}], partly within "
        f"[{NEAR_BAND[0]:g}, {NEAR_BAND[1]:g}], not supported otherwise.",
        "Delta = ln(v_after/v_crit) ~ (1/(1-beta2))^"
        f"{fmt(delta['exponent_beta2']) if delta else 'n/a'}, so the decay time "
        "Delta/-ln(beta2) grows like (1/(1-beta2))^"
        f"{fmt(1 + delta['exponent_beta2']) if delta else 'n/a'}.",
    )


def claims(ctx) -> list[dict]:
    m = _measurements(ctx)
    return [_onset_claim(m), _interval_claim(m), _law_claim(m)]


def figures(ctx, outdir) -> list:
    """``mechanism_run.png`` (one grid run) and ``mechanism_intervals.png`` (all grid runs)."""
    from geomtraj.analysis import mechanism

    try:
        ds, result = _analyse(ctx, "grid")
    except FileNotFoundError:
        return []
    return mechanism.figures(ds, result, outdir, max_runs=1)
