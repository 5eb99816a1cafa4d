"""Captions of the report's figures: what to look at, and why a run was chosen.

Each analysis draws its own figures, picks its own runs (the rule is in its ``figures``
docstring) and declares a caption per figure (:class:`geomtraj.analysis.declaration.Figure`),
found here by the figure's file name; the caption may read the numbers already in
``report.json``. This module adds the overview figure's caption and, for an analysis that is not
measurable, the reason. See ``docs/report.md`` ("Figures").
"""

from __future__ import annotations

from collections.abc import Mapping

from geomtraj.analysis.declaration import Analysis


def _status_words(doc: Mapping, analysis: str) -> str:
    st = (doc.get("analyses") or {}).get(analysis) or {}
    if st.get("status") == "not measurable":
        return f" NOT MEASURABLE on these runs: {st.get('note') or 'see the analyses table'}."
    return ""


OVERVIEW = (
    "Training loss of every analysed run against step. Look for runs that stop early "
    "(diverged) or plateau high; the spikes of a run are its bursts."
)


def figure_caption(
    entry: Mapping, doc: Mapping, declarations: Mapping[str, Analysis] | None = None
) -> str:
    """One or two sentences for the figure ``entry`` (``{"file", "analysis", ...}``) of ``doc``.

    Parameters
    ----------
    entry
        An item of ``doc["figures"]``.
    doc
        The ``report.json`` document (for the runs' settings and the analyses' status).
    declarations
        The analyses' declarations (those of :mod:`geomtraj.analysis` by default).

    Returns
    -------
    str
        The caption; a generic one for a figure no declaration covers.
    """
    name = str(entry["file"]).rsplit("/", 1)[-1].removesuffix(".png")
    analysis = str(entry.get("analysis", ""))
    tail = _status_words(doc, analysis)
    if name == "overview_loss":
        return OVERVIEW
    if declarations is None:
        from geomtraj.report.assemble import report_declarations

        declarations = report_declarations()
    decl = declarations.get(analysis)
    for fig in decl.figures if decl is not None else ():
        text = fig.caption_for(name, doc)
        if text is not None:
            return text + tail
    return f"{analysis}: {entry.get('title', name)}." + tail
