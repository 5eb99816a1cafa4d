"""Every notebook in ``notebooks/`` runs without an error, and is stored without outputs.

Notebooks are executed with nbclient in a fresh IPython kernel (the ``python3`` kernel of the
interpreter running the tests), each in a temporary working directory. A cell that raises fails the
test with the cell's traceback.
"""

from __future__ import annotations

import time
from pathlib import Path

import nbclient  # test dependencies (pyproject's `test` extra): a missing one must fail, not skip
import nbformat
import pytest

NOTEBOOKS_DIR = Path(__file__).resolve().parents[1] / "notebooks"
FIXTURES = NOTEBOOKS_DIR.parent / "fixtures"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))

#: Wall-clock limit for a whole notebook: each must run in under 3 minutes on 2 cores.
NOTEBOOK_LIMIT_S = 180


def _ids(paths):
    return [p.stem for p in paths]


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 4


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_is_stored_without_outputs(path: Path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, (
                f"{path.name} is stored with outputs; clear them (Jupyter: Edit > Clear Outputs "
                f"of All Cells, or `jupyter nbconvert --clear-output --inplace {path}`)"
            )


def test_first_cell_says_how_to_run_at_full_scale():
    for path in NOTEBOOKS:
        first = nbformat.read(path, as_version=4).cells[0]
        assert first.cell_type == "markdown" and "Full scale" in first.source, path.name


# each takes 7-11 s here (under the 20 s mark for `slow`), most of it the kernel start and imports
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_runs(path: Path, tmp_path: Path):
    nb = nbformat.read(path, as_version=4)
    # a scratch copy of the source tree's shape: notebooks open ../fixtures, as from notebooks/
    (tmp_path / "fixtures").symlink_to(FIXTURES)
    (tmp_path / "notebooks").mkdir()
    client = nbclient.NotebookClient(
        nb,
        timeout=NOTEBOOK_LIMIT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path / "notebooks")}},
    )
    t0 = time.perf_counter()
    client.execute()  # raises CellExecutionError, with the cell and traceback, if a cell fails
    elapsed = time.perf_counter() - t0
    assert elapsed < NOTEBOOK_LIMIT_S, f"{path.name} took {elapsed:.0f} s"
