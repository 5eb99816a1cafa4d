"""Captions of the report's figures: what to look at, and why a run was chosen.

Each analysis draws its own figures and picks its own runs (the rule is in its ``figures``
docstring); this module states that rule and the reading in words, from the figure's file name and
the numbers already in ``report.json``. See ``docs/report.md`` ("Figures").
"""

from __future__ import annotations

import re
from collections.abc import Mapping


def _run_entry(doc: Mapping, run: int) -> Mapping:
    return next((e for e in doc.get("runs", []) if e.get("run") == run), {})


def _describe(doc: Mapping, run: int) -> str:
    e = _run_entry(doc, run)
    if not e:
        return f"run {run}"
    return (
        f"run {run} ({e.get('precision')}, beta1={e.get('beta1')}, beta2={e.get('beta2')}, "
        f"lr={e.get('lr')})"
    )


def _status_words(doc: Mapping, analysis: str) -> str:
    st = (doc.get("analyses") or {}).get(analysis) or {}
    if st.get("status") == "not measurable":
        return f" NOT MEASURABLE on these runs: {st.get('note') or 'see the analyses table'}."
    return ""


def figure_caption(entry: Mapping, doc: Mapping) -> str:
    """One or two sentences for the figure ``entry`` (``{"file", "analysis", ...}``) of ``doc``.

    Parameters
    ----------
    entry
        An item of ``doc["figures"]``.
    doc
        The ``report.json`` document (for the runs' settings and the analyses' status).

    Returns
    -------
    str
        The caption; a generic one for a figure this module does not know.
    """
    name = str(entry["file"]).rsplit("/", 1)[-1].removesuffix(".png")
    analysis = str(entry.get("analysis", ""))
    tail = _status_words(doc, analysis)
    if name == "overview_loss":
        return (
            "Training loss of every analysed run against step. Look for runs that stop early "
            "(diverged) or plateau high; the spikes of a run are its bursts."
        )
    if name == "periods_grid":
        return (
            "Measured against predicted periods, log-log, one point per run with its CI. Points "
            "on the dashed line y = x agree with the prediction; a slope across the grid below 1 "
            "means the measured period grows more slowly than predicted." + tail
        )
    if m := re.fullmatch(r"periods_run0*(\d+)", name):
        e = _run_entry(doc, int(m.group(1)))
        return (
            f"{_describe(doc, int(m.group(1)))}: chosen as one of the runs with the most bursts "
            f"({e.get('n_bursts', '?')}). Top: loss with burst onsets (red), whose spacing is the "
            "slow period; middle: log v against the fitted slope and ln(beta2); bottom: the "
            "spectrum against the predicted periods." + tail
        )
    if m := re.fullmatch(r"spiral_run(\d+)_w(\d+)", name):
        e = _run_entry(doc, int(m.group(1)))
        n_spirals = (e.get("spirals") or {}).get("n_spirals", "?")
        return (
            f"{_describe(doc, int(m.group(1)))}, window {m.group(2)}: chosen because the run has "
            f"among the most spiral windows ({n_spirals}), and the window is its most coherent "
            "spiral (its title says so, or that the run has none). Left, the raw path zigzags: "
            "the period-2 flip puts consecutive steps on opposite sides of the centre. Second, "
            "the flip's two arms (even and odd steps, each joined in time order, coloured by "
            "step): a double spiral is two mirror-image arms turning steadily around the centre; "
            "arms that jump about without turning are not a spiral." + tail
        )
    if name == "spirals_gallery":
        return (
            "The best window of each of the runs with the most spiral windows: raw path, then the "
            "flip's even and odd arms coloured by step. Compare the arms across runs: steady "
            "turning around a centre is a spiral; the raw path's zigzag alone is the flip, not a "
            "spiral." + tail
        )
    if name == "spirals_counts":
        return "Spiral, double and twisted windows per run, out of the windows analysed." + tail
    if name.startswith("stability_"):
        what = (
            "around three consecutive bursts in the middle of the run"
            if name == "stability_zoom"
            else "over the whole checkpointed range"
        )
        return (
            f"Sharpness ratio (largest eigenvalue of the preconditioned Hessian over the "
            f"threshold) {what}, for the runs with the most burst onsets. Look whether the ratio "
            "crosses 1 (dashed) just before each burst onset (red). Checkpoints are joined by a "
            "line only where they are dense enough to match onsets; sparse checkpoints are drawn "
            "as separate markers, not as a measured curve." + tail
        )
    if name.startswith("twins_divergence"):
        return (
            "Distance between each twin and the run it copies, log scale, around the growth "
            "phase. Look for a straight rise (exponential growth, slope in the legend) before "
            "saturation (red)." + tail
        )
    if name == "twins_overview":
        return (
            "Relative distance of every twin over the whole run, by precision. Twins that "
            "saturate early lost their common trajectory quickly." + tail
        )
    if name.startswith("diffusion_msd"):
        return (
            "Mean squared displacement against lag, log-log, raw and detrended, with the fitted "
            "power law; runs spread evenly over the analysed runs. A slope of 1 is ordinary "
            "diffusion, above 1 superdiffusion." + tail
        )
    if name == "early_warning_auc":
        return (
            "ROC AUC of predicting divergence against lead time: local geometry, loss level and "
            "both. Geometry helps only where its curve and CI lie above the loss curve; 0.5 is "
            "chance." + tail
        )
    return f"{analysis}: {entry.get('title', name)}." + tail
