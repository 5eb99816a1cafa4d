"""The package imports its heavy dependencies only where a command needs them.

``import geomtraj`` (which registers the ``ds.geomtraj`` accessor), ``geomtraj.cli`` and the
``geomtraj plot`` path must not import ``scipy.signal``, matplotlib, scikit-learn or any analysis
module: together they cost seconds per command. Each check runs in a fresh interpreter, because
this test process has long since imported everything.
"""

from __future__ import annotations

import json
import subprocess
import sys

import datafiles
import pytest

from geomtraj.analysis import _discovered

HEAVY = ("scipy.signal", "matplotlib", "sklearn")
# every module that declares an analysis, found as the registry finds them (read as text)
ANALYSIS_MODULES = tuple(_discovered().values())


def _fresh(code: str, watched=HEAVY + ANALYSIS_MODULES) -> list[str]:
    """Run ``code`` in a new interpreter and return which of ``watched`` it imported."""
    report = f"print(json.dumps([m for m in {list(watched)!r} if m in sys.modules]))"
    probe = f"import json, sys\n{code}\n{report}"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "code",
    [
        "import geomtraj",
        "import geomtraj.cli",
        "import geomtraj.analysis",
        "from geomtraj.analysis import ANALYSES; names = list(ANALYSES); assert len(names) == 7",
        "import geomtraj.report.plots, geomtraj.analysis.runner, geomtraj.store",
    ],
)
def test_imports_stay_light(code):
    assert _fresh(code) == []


def test_plot_loss_imports_no_analysis_nor_scipy_signal(tmp_path):
    out = tmp_path / "loss.png"
    code = (
        "from geomtraj.cli import main\n"
        f"assert main(['plot', {str(datafiles.BURSTS_F32)!r}, '--run', '0', '--kind', 'loss',"
        f" '--out', {str(out)!r}, '--quiet']) == 0"
    )
    # matplotlib draws this figure; nothing else heavy may come along, not even dask
    assert _fresh(code, HEAVY + ANALYSIS_MODULES + ("dask.array",)) == ["matplotlib"]
    assert out.stat().st_size > 0


@pytest.mark.parametrize("kind", ["spiral", "spectrum"])
def test_plot_arithmetic_imports_no_scipy_nor_sklearn(kind, tmp_path):
    """The spiral and spectrum looks do their PCA, moving average and Welch spectrum with NumPy:
    importing scikit-learn, scipy.ndimage or scipy.signal for them cost more than the look."""
    out = tmp_path / f"{kind}.png"
    code = (
        "from geomtraj.cli import main\n"
        f"assert main(['plot', {str(datafiles.BURSTS_F32)!r}, '--run', '0', '--kind', {kind!r},"
        f" '--out', {str(out)!r}, '--quiet']) == 0"
    )
    watched = HEAVY + ANALYSIS_MODULES + ("scipy.ndimage", "scipy.linalg")
    assert _fresh(code, watched) == ["matplotlib"]
    assert out.stat().st_size > 0


def test_registry_imports_on_access_and_modules_stay_callable():
    code = (
        "import geomtraj.analysis as a\n"
        "import geomtraj.analysis.twins\n"  # a plain submodule import binds it without __getattr__
        "assert callable(a.twins) and callable(a.ANALYSES['twins'])\n"
        "from geomtraj.analysis import diffusion\n"
        "assert callable(diffusion) and diffusion is a.ANALYSES['diffusion']\n"
        "assert callable(a.diffusion.analyze) and 'diffusion' in dir(a)\n"
        "assert 'nope' not in a.ANALYSES\n"
        "assert not hasattr(a, 'nope')\n"
    )
    assert _fresh(code, ANALYSIS_MODULES) == [
        "geomtraj.analysis.twins",
        "geomtraj.analysis.diffusion",
    ]


def test_accessor_imports_only_the_analysis_it_forwards_to():
    code = (
        "import geomtraj\n"
        "from geomtraj.store.zarrstore import open_store\n"
        f"ds = open_store({str(datafiles.BURSTS_F32)!r})\n"
        "assert callable(ds.geomtraj.diffusion)\n"
    )
    assert _fresh(code, ANALYSIS_MODULES) == ["geomtraj.analysis.diffusion"]


def test_accessor_unknown_name_lists_the_analyses():
    import geomtraj  # noqa: F401  (registers the accessor)
    from geomtraj.store.zarrstore import open_store

    ds = open_store(datafiles.BURSTS_F32)
    with pytest.raises(AttributeError, match="analyses: periods, spirals"):
        _ = ds.geomtraj.nope
    assert "early_warning" in ds.geomtraj.analyses


def test_missing_module_is_left_out_of_the_registry():
    from geomtraj.analysis import _Registry

    reg = _Registry({"periods": "geomtraj.analysis.periods", "ghost": "geomtraj.analysis.ghost"})
    assert list(reg) == ["periods"] and len(reg) == 1 and "ghost" not in reg
    with pytest.raises(KeyError):
        reg["ghost"]
    with pytest.raises(KeyError):
        reg["unheard_of"]
