"""Regression tests: every analysis on every fixture against its stored result.

``fixtures/expected/<fixture>__<analysis>.json`` holds the ``report`` of each analysis in
:data:`geomtraj.analysis.ANALYSES` on each fixture of :data:`datafiles.FIXTURES`. This
test recomputes it and compares every value with a tolerance chosen per quantity
(:data:`TOLERANCES`). A difference means the analysis's numbers changed: if that is intended, run
the one update command (:data:`datafiles.UPDATE_COMMAND`) and commit the reviewed diff of
``fixtures/expected``. The expected files are never rewritten by a test.

An analysis that appears in ``ANALYSES`` without expected files fails here, loudly, with the
update command in the message: new analyses join the regression suite by running that command.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

import datafiles
import pytest

from geomtraj.analysis import ANALYSES
from geomtraj.errors import GeomtrajError


@dataclass(frozen=True)
class Tolerance:
    """How closely one kind of floating-point quantity must match its stored value.

    Attributes
    ----------
    pattern : str
        Regular expression matched (``re.fullmatch``) against the name of the innermost dict key
        that holds the value (``"ci"`` for ``{"slow": {"ci": [lo, hi]}}``).
    rtol, atol : float
        A value passes when ``|actual - expected| <= atol + rtol * |expected|``.
    why : str
        The justification, printed with a failure.
    """

    pattern: str
    rtol: float
    atol: float
    why: str


#: Per-quantity tolerances, first match wins; :data:`DEFAULT` applies to every other float.
#:
#: What sets the scale. The fixtures are fixed bytes on disk, so every analysis reads bit-identical
#: input, and on one machine its output is bit-identical too (checked: two updates give the same
#: files). On another machine, only the order of floating-point operations inside libraries can
#: change: BLAS/LAPACK kernels (least squares, PCA, eigensolvers), pocketfft's SIMD paths (Welch
#: spectra, FFT MSD) and libm (log, exp). Each contributes relative errors of order 1e-16 times the
#: conditioning of the computation; fits and medians on these short series stay far below 1e-9.
#: Any real change to an analysis (a threshold, a window, a formula) moves its outputs by 1e-4 or
#: more, and usually changes a count. So floats match to 1e-9 relative by default: seven orders of
#: magnitude above rounding noise and five below the smallest meaningful change.
TOLERANCES: tuple[Tolerance, ...] = (
    Tolerance(
        r"sharpness.*|lambda.*",
        rtol=1e-6,
        atol=0.0,
        why="eigenvalues from an iterative solver stopped at a relative tolerance of 1e-8 "
        "(StabilityParams.eig_tol); another BLAS can change the iterates, and so the "
        "converged value, by about that tolerance times a modest condition factor",
    ),
    Tolerance(
        r"probability_current.*|velocity_current.*|rotation_per_step|plateau_slope",
        rtol=1e-9,
        atol=1e-12,
        why="signed means of many terms of both signs (currents, rotation, a post-saturation "
        "slope): the result can be much smaller than its terms, so the absolute floor is set "
        "by the terms' rounding (~1e-16 x their size, <= 1e-4 here), not by the result",
    ),
    Tolerance(
        r"p_value.*",
        rtol=1e-9,
        atol=1e-15,
        why="p-values far in a tail are tiny; an absolute floor of 1e-15 keeps a value of "
        "1e-300 against 0 from failing while every p-value that could change a verdict "
        "(> 1e-6) is still held to 1e-9 relative",
    ),
)

#: Every float not matched above: bootstrap CIs (their generators are seeded, so resamples are
#: identical), periods, e-folding times, slopes and exponents of least-squares fits, spectral peaks.
DEFAULT = Tolerance(
    r".*",
    rtol=1e-9,
    atol=0.0,
    why="deterministic computation on bit-identical input; only library-internal operation order "
    "can differ between machines (see TOLERANCES)",
)

# Everything that is not a float is compared exactly: integers (counts of bursts, runs, spirals;
# steps such as saturation_step and window bounds), booleans, None (not measurable) and strings
# (verdicts, notes). They are outcomes of threshold decisions on identical input, and a change in
# any of them is a change of behaviour. Notes quote numbers with at most 4 significant digits,
# which rounding noise cannot move.


def tolerance_for(key: str) -> Tolerance:
    """The :class:`Tolerance` of the quantity stored under dict key ``key``."""
    for tol in TOLERANCES:
        if re.fullmatch(tol.pattern, key):
            return tol
    return DEFAULT


def _is_float(x) -> bool:
    return isinstance(x, float)


def _same_float(a: float, b: float, tol: Tolerance) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= tol.atol + tol.rtol * abs(b)


def compare(actual, expected, path: str = "", key: str = "") -> list[str]:
    """Every difference between ``actual`` and ``expected`` JSON data, one line each.

    Structure (dict keys, list lengths, value types) must match exactly; floats match within
    :func:`tolerance_for` of the innermost dict key; everything else matches exactly.
    """
    where = path or "<root>"
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{where}: expected an object, got {actual!r}"]
        problems = []
        missing, extra = sorted(set(expected) - set(actual)), sorted(set(actual) - set(expected))
        if missing:
            problems.append(f"{where}: keys missing from the result: {missing}")
        if extra:
            problems.append(f"{where}: keys not in the expected result: {extra}")
        for k in sorted(set(expected) & set(actual)):
            problems += compare(actual[k], expected[k], f"{path}.{k}" if path else k, k)
        return problems
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            return [f"{where}: expected a list of {len(expected)}, got {actual!r}"]
        problems = []
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            problems += compare(a, e, f"{path}[{i}]", key)
        return problems
    if _is_float(expected) and _is_float(actual):
        tol = tolerance_for(key)
        if _same_float(actual, expected, tol):
            return []
        rel = abs(actual - expected) / abs(expected) if expected else math.inf
        return [
            f"{where}: {actual!r} != expected {expected!r} (relative difference {rel:.3g}; "
            f"tolerance rtol={tol.rtol:g}, atol={tol.atol:g}, pattern {tol.pattern!r})"
        ]
    if type(actual) is not type(expected) or actual != expected:
        return [f"{where}: {actual!r} != expected {expected!r} (compared exactly)"]
    return []


# ------------------------------------------------------------------------------------ the tests

FIXTURE_NAMES = list(datafiles.FIXTURES)
ANALYSIS_NAMES = list(ANALYSES)


def _expected_or_error(fixture: str, analysis: str):
    try:
        return datafiles.read_expected(fixture, analysis), None
    except GeomtrajError as exc:
        return None, str(exc)


@pytest.mark.parametrize("analysis", ANALYSIS_NAMES)
@pytest.mark.parametrize("fixture", FIXTURE_NAMES)
def test_analysis_matches_expected(fixture: str, analysis: str):
    expected, missing = _expected_or_error(fixture, analysis)
    if missing:
        pytest.fail(missing)
    actual = datafiles.analysis_report(fixture, analysis)
    # JSON round trip: the stored form (str keys, lists) is what is compared
    actual = json.loads(json.dumps(actual))
    problems = compare(actual, expected)
    if problems:
        shown = "\n".join(problems[:25])
        more = f"\n... and {len(problems) - 25} more" if len(problems) > 25 else ""
        pytest.fail(
            f"{analysis} on fixture {fixture} changed ({len(problems)} difference(s)):\n"
            f"{shown}{more}\nIf the change is intended, run `{datafiles.UPDATE_COMMAND}` and "
            "commit the reviewed diff of fixtures/expected/."
        )


def test_no_stale_expected_files():
    """Every expected file belongs to a registered fixture and an available analysis."""
    stale = []
    for path in sorted(datafiles.EXPECTED_DIR.glob("*.json")):
        fixture, _, analysis = path.stem.partition("__")
        if fixture not in datafiles.FIXTURES or analysis not in ANALYSES:
            stale.append(path.name)
    assert not stale, (
        f"expected results for unknown fixtures or analyses: {stale}; delete them, or register "
        "the fixture in fixtures/datafiles.py"
    )


def test_expected_files_record_what_they_hold():
    for path in sorted(datafiles.EXPECTED_DIR.glob("*.json")):
        doc = json.loads(path.read_text())
        assert f"{doc['fixture']}__{doc['analysis']}" == path.stem
        assert isinstance(doc["report"], dict) and doc["report"]


# ------------------------------------------------------------ the comparison itself, on toy data


def test_compare_accepts_identical_and_rounding_level_differences():
    doc = {"runs": {"0": {"n": 3, "period": 111.0, "ci": [99.0, 129.05], "note": "x"}}}
    assert compare(doc, doc) == []
    nudged = {"runs": {"0": {"n": 3, "period": 111.0 * (1 + 1e-12), "ci": [99.0, 129.05],
                             "note": "x"}}}  # fmt: skip
    assert compare(nudged, doc) == []


def test_compare_flags_every_kind_of_change():
    doc = {"a": 1, "b": 2.0, "c": [1.0, None], "d": "ok", "e": True}
    assert compare({**doc, "a": 2}, doc)  # an integer count
    assert compare({**doc, "b": 2.0 * (1 + 1e-6)}, doc)  # a float beyond 1e-9
    assert compare({**doc, "c": [1.0, 0.5]}, doc)  # None -> a number
    assert compare({**doc, "c": [1.0]}, doc)  # list length
    assert compare({**doc, "d": "changed"}, doc)  # a verdict
    assert compare({**doc, "e": 1}, doc)  # type change bool -> int
    assert compare({k: v for k, v in doc.items() if k != "a"}, doc)  # missing key
    assert compare({**doc, "z": 0}, doc)  # extra key
    assert compare({**doc, "a": 1.0}, doc)  # int -> float is a schema change


def test_compare_nan_and_tolerance_lookup():
    assert compare({"x": math.nan}, {"x": math.nan}) == []
    assert compare({"x": 1.0}, {"x": math.nan})
    assert tolerance_for("sharpness_ratio_median").rtol == 1e-6
    assert tolerance_for("probability_current").atol > 0
    assert tolerance_for("slow_period") is DEFAULT
    # a tiny signed current passes at its absolute floor, a real change does not
    assert compare({"velocity_current": 1e-13}, {"velocity_current": -1e-13}) == []
    assert compare({"velocity_current": 1e-3}, {"velocity_current": 2e-3})


def test_missing_expected_file_names_the_update_command(tmp_path, monkeypatch):
    monkeypatch.setattr(datafiles, "EXPECTED_DIR", tmp_path)
    with pytest.raises(GeomtrajError, match=re.escape(datafiles.UPDATE_COMMAND)):
        datafiles.read_expected("quiet", "periods")
