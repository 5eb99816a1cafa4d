"""Registry of the fixture stores shipped in ``fixtures/`` and of their expected analysis results.

The fixtures are small trajectory stores (a few MB in all) made by ``fixtures/make_fixtures.py``
from geomtraj's own trainer with fixed seeds. Tests, notebooks and documentation examples find them
here by name, as MDAnalysis's ``datafiles`` does for its test trajectories::

    from geomtraj import datafiles
    from geomtraj.store import open_store

    ds = open_store(datafiles.BURSTS_F32)

The stores live in the source tree, next to the package (an editable install, as ``make`` does,
finds them); :func:`fixture_path` raises a clear error when they are not there.

``fixtures/expected/<fixture>__<analysis>.json`` holds the report of every analysis in
:data:`geomtraj.analysis.ANALYSES` on every fixture, as computed by :func:`analysis_report`.
They change only through one explicit command, :data:`UPDATE_COMMAND`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from geomtraj.errors import GeomtrajError

#: The ``fixtures/`` directory of the source tree.
FIXTURES_DIR = Path(__file__).resolve().parents[1] / "fixtures"

#: Expected analysis results, one JSON file per (fixture, analysis).
EXPECTED_DIR = FIXTURES_DIR / "expected"

#: The one command that rewrites the expected results (never run automatically).
UPDATE_COMMAND = ".venv/bin/python fixtures/make_fixtures.py --update-expected"

#: Fixture name -> what it shows (one line each; ``fixtures/README.md`` repeats them).
FIXTURES: dict[str, str] = {
    "bursts_f32": (
        "one float32 run, beta2=0.999, lr=0.01, 5000 steps: regular bursts of Adam's "
        "relaxation oscillation (about 40, slow period about 110 steps); full snapshots of all "
        "373 parameters every 50 steps for the edge-of-stability analysis."
    ),
    "bursts_f64": ("the same run computed in float64: the same kind of bursts at other times."),
    "twins_ulp": (
        "a float32 run (beta2=0.999, lr=0.01, 4000 steps) and its twin moved by one ulp of "
        "`W1[0,3]` before update 500: last-bit divergence that grows and saturates."
    ),
    "diverging": (
        "beta1=0.999 with beta2=0.9 (beta1^2 > beta2) and lr=0.5, float32: the loss runs "
        "away and the run diverges at update 2086 (NaN after)."
    ),
    "quiet": (
        "the `bursts_f32` set-up with lr=3e-4: converges with no burst, then keeps diffusing."
    ),
    "beta_grid": (
        "beta1 in {0.8, 0.9} x beta2 in {0.99, 0.995, 0.999} x seeds {0, 1}, float32, "
        "lr=0.01, 3000 steps: the mini grid of the period scaling test."
    ),
}

BURSTS_F32 = FIXTURES_DIR / "bursts_f32.zarr"
BURSTS_F64 = FIXTURES_DIR / "bursts_f64.zarr"
TWINS_ULP = FIXTURES_DIR / "twins_ulp.zarr"
DIVERGING = FIXTURES_DIR / "diverging.zarr"
QUIET = FIXTURES_DIR / "quiet.zarr"
BETA_GRID = FIXTURES_DIR / "beta_grid.zarr"


def fixture_path(name: str) -> Path:
    """Path of fixture store ``name``; a clear error when the name or the store is unknown."""
    if name not in FIXTURES:
        raise GeomtrajError(f"fixture {name!r} unknown; choose from {sorted(FIXTURES)}")
    path = FIXTURES_DIR / f"{name}.zarr"
    if not (path / "zarr.json").is_file():
        raise GeomtrajError(
            f"fixture store {path} not found; run `.venv/bin/python fixtures/make_fixtures.py` "
            "from a source checkout of geomtraj"
        )
    return path


def expected_path(fixture: str, analysis: str) -> Path:
    """File holding the expected report of ``analysis`` on ``fixture``."""
    return EXPECTED_DIR / f"{fixture}__{analysis}.json"


def to_json(obj):
    """``obj`` with numpy scalars and arrays turned into plain Python, and dict keys into str.

    JSON has no integer keys and no numpy types; this is the form in which reports are stored and
    compared (``json.loads(json.dumps(to_json(r)))`` is ``to_json(r)``). Non-finite floats are
    kept as floats (the comparison treats NaN as equal to NaN) but a report should use ``None``.
    """
    if isinstance(obj, dict):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [to_json(v) for v in obj.tolist()]
    if isinstance(obj, np.bool_ | bool):
        return bool(obj)
    if isinstance(obj, np.integer | int):
        return int(obj)
    if isinstance(obj, np.floating | float):
        return float(obj)
    if isinstance(obj, np.str_ | str):
        return str(obj)
    if obj is None:
        return None
    raise GeomtrajError(
        f"report value of type {type(obj).__name__} ({obj!r}) is not JSON data; "
        "reports hold numbers, strings, None, lists and dicts"
    )


def analysis_report(fixture: str, analysis: str) -> dict:
    """Run ``analysis`` (a name in :data:`geomtraj.analysis.ANALYSES`) on ``fixture``, with its
    default parameters, and return its ``report`` as JSON data (:func:`to_json`)."""
    from geomtraj.analysis import ANALYSES
    from geomtraj.store import open_store

    if analysis not in ANALYSES:
        raise GeomtrajError(f"analysis {analysis!r} unknown; available: {sorted(ANALYSES)}")
    module = ANALYSES[analysis]
    ds = open_store(fixture_path(fixture))
    return to_json(module.report(module.analyze(ds)))


def _display(path: Path) -> str:
    """``path`` relative to the source tree when it lies inside it."""
    try:
        return str(path.relative_to(FIXTURES_DIR.parent))
    except ValueError:
        return str(path)


def read_expected(fixture: str, analysis: str) -> dict:
    """The stored expected report; a clear error naming :data:`UPDATE_COMMAND` when missing."""
    path = expected_path(fixture, analysis)
    if not path.is_file():
        raise GeomtrajError(
            f"no expected result {_display(path)} for analysis "
            f"{analysis!r} on fixture {fixture!r}; create it with `{UPDATE_COMMAND}` and review "
            "the diff before committing"
        )
    return json.loads(path.read_text())["report"]
