"""report.html opens in headless Chromium: the page renders, its figures load, the table sorts.

Skipped where no Chromium is installed (``make test`` installs the Debian package where it can).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import fake_analysis
import numpy as np
import pytest
from report_stores import N_RUNS, small_store

from geomtraj.report import make_report

BROWSER = next(
    (
        shutil.which(b)
        for b in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
        if shutil.which(b)
    ),
    None,
)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="headless Chromium is not installed")
WIDTH, HEIGHT = 1280, 2400


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("html")
    return make_report(small_store(), out, registry={"periods": fake_analysis}, progress=False)


def _chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        BROWSER,
        "--headless",
        "--no-sandbox",  # running as root in containers
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        f"--user-data-dir={tmp / 'profile'}",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def test_screenshot_shows_the_page(report, tmp_path) -> None:
    from matplotlib.image import imread

    shot = tmp_path / "shot.png"
    url = (report.out / "report.html").as_uri()
    proc = _chromium(tmp_path, f"--window-size={WIDTH},{HEIGHT}", f"--screenshot={shot}", url)
    assert shot.is_file(), proc.stderr[-2000:]
    img = imread(shot)[..., :3]
    assert img.shape[:2] == (HEIGHT, WIDTH)
    # the header band has the stylesheet's colour (#1d2330), the page below is light, and the
    # table and the figures give far more than a few colours
    header = np.median(img[3:10, 600:1200].reshape(-1, 3), axis=0)
    np.testing.assert_allclose(header, np.array([0x1D, 0x23, 0x30]) / 255, atol=0.02)
    assert img[200:260].mean() > 0.8
    assert len(np.unique((img * 255).astype(np.uint8).reshape(-1, 3), axis=0)) > 200


def test_figures_load_and_table_sorts(report, tmp_path) -> None:
    url = (report.out / "report.html").as_uri() + "#sort=final%20loss:desc"
    proc = _chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", url)
    dom = proc.stdout
    n_fig = len(report.doc["figures"])
    assert f'data-images-ok="{n_fig}/{n_fig}"' in dom, proc.stderr[-2000:]
    table = dom[dom.index('id="run-table"') :]
    rows = re.findall(r'<tr class="[a-z]+">(.*?)</tr>', table)[:N_RUNS]
    assert len(rows) == N_RUNS
    col = 5  # "final loss"
    cells = [re.findall(r"<td([^>]*)>(.*?)</td>", r)[col] for r in rows]
    # the sort key: data-v where the cell has one, else its text
    values = [m.group(1) if (m := re.search(r'data-v="([^"]*)"', a)) else t for a, t in cells]
    finite = [float(v) for v in values if v]
    assert finite == sorted(finite, reverse=True) and len(finite) == N_RUNS - 1
    assert values[-1] == ""  # the run without a finite loss goes last


def test_all_columns_toggle(report, tmp_path) -> None:
    """Extra columns are hidden by default; #columns=all (or the checkbox) shows them."""
    url = (report.out / "report.html").as_uri()
    dom = _chromium(tmp_path, "--virtual-time-budget=3000", "--dump-dom", url).stdout
    assert '<table id="run-table" class="sortable">' in dom
    dom = _chromium(
        tmp_path, "--virtual-time-budget=3000", "--dump-dom", url + "#columns=all"
    ).stdout
    assert '<table id="run-table" class="sortable all">' in dom
