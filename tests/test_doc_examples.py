"""The documented examples (``docs/examples.md``) run as written; the README shows them verbatim.

``pycon`` blocks are doctests, one namespace per block. ``console`` blocks are shell sessions:
each ``$ command`` runs with bash in a scratch directory that links to the source tree's
``fixtures/`` and ``configs/``, and to the test interpreter's environment as ``.venv/`` (so
``.venv/bin/geomtraj`` is the installed command, as in the README); it must exit with status 0 and
print what the lines after it show (``...`` matches anything, whitespace is normalised, as in
doctests).
"""

from __future__ import annotations

import doctest
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "docs" / "examples.md"
README = ROOT / "README.md"

_FENCE = re.compile(r"^```(\w+)\n(.*?)^```$", re.M | re.S)
_FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _blocks(kind: str) -> list[tuple[int, str]]:
    """``(line number, body)`` of every fenced block of language ``kind`` in docs/examples.md."""
    text = EXAMPLES.read_text()
    return [
        (text.count("\n", 0, m.start()) + 1, m.group(2))
        for m in _FENCE.finditer(text)
        if m.group(1) == kind
    ]


PYCON = _blocks("pycon")
CONSOLE = _blocks("console")


def test_examples_exist():
    assert len(PYCON) >= 2 and len(CONSOLE) >= 1


@pytest.mark.parametrize("line, body", PYCON, ids=[f"line{n}" for n, _ in PYCON])
def test_python_example(line: int, body: str):
    test = doctest.DocTestParser().get_doctest(body, {}, f"examples.md:{line}", str(EXAMPLES), line)
    runner = doctest.DocTestRunner(optionflags=_FLAGS)
    out: list[str] = []
    runner.run(test, out=out.append)
    assert runner.failures == 0, "".join(out)


def _commands(body: str) -> list[tuple[str, str]]:
    """``(command, expected output)`` pairs of a console block."""
    pairs: list[tuple[str, list[str]]] = []
    for row in body.splitlines():
        if row.startswith("$ "):
            pairs.append((row[2:], []))
        elif pairs:
            pairs[-1][1].append(row)
        elif row.strip():
            raise AssertionError(f"console block starts with output, not a `$ ` command: {row!r}")
    return [(cmd, "\n".join(lines) + "\n") for cmd, lines in pairs]


@pytest.mark.parametrize("line, body", CONSOLE, ids=[f"line{n}" for n, _ in CONSOLE])
def test_console_example(line: int, body: str, tmp_path: Path):
    for name in ("fixtures", "configs"):
        (tmp_path / name).symlink_to(ROOT / name)
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))  # the environment running the tests
    env = {**os.environ, "MPLBACKEND": "Agg"}
    checker = doctest.OutputChecker()
    for cmd, expected in _commands(body):
        proc = subprocess.run(
            ["bash", "-c", cmd], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, f"`{cmd}` exited {proc.returncode}:\n{proc.stderr}"
        got = proc.stdout
        assert checker.check_output(expected, got, _FLAGS), (
            f"`{cmd}` (examples.md:{line}) printed:\n{got}\nexpected:\n{expected}"
        )


def test_readme_shows_every_example_verbatim():
    readme = README.read_text()
    missing = [
        f"examples.md:{line} ({kind})"
        for kind in ("pycon", "console")
        for line, body in _blocks(kind)
        if f"```{kind}\n{body}```" not in readme
    ]
    assert not missing, (
        f"README.md does not show the example(s) {missing} of docs/examples.md; the README's "
        "store, CLI and API sections must hold these blocks exactly, so that what users read is "
        "what this test runs"
    )
