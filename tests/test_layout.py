"""The package's layout (docs/architecture.md): layers as folders, names that say one thing each.

``geomtraj.train`` and ``geomtraj.store`` hand on their public names lazily; importing one of their
submodules must not load the trainer and its compiled kernels.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

PACKAGE = Path(importlib.import_module("geomtraj").__file__).parent


@pytest.mark.parametrize("face", ["geomtraj.train", "geomtraj.store"])
def test_every_name_a_package_face_hands_on_resolves(face):
    module = importlib.import_module(face)
    assert module.__all__
    for name in module.__all__:
        assert getattr(module, name) is not None, f"{face}.{name}"
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        module.not_a_name  # noqa: B018


def test_a_submodule_of_train_does_not_load_the_trainer():
    probe = (
        "import json, sys\nimport geomtraj.train.plan, geomtraj.store\n"
        "print(json.dumps([m for m in ('geomtraj.train.trainer', 'geomtraj.train.kernels.mlp',"
        " 'geomtraj.store.zarrstore', 'numba') if m in sys.modules]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_module_names_say_one_thing_each():
    stems = Counter(p.stem for p in PACKAGE.rglob("*.py") if p.stem != "__init__")
    assert [s for s, n in stems.items() if n > 1] == []


def test_the_package_holds_no_test_helper_that_points_into_the_source_tree():
    for p in PACKAGE.rglob("*.py"):
        assert '"fixtures"' not in p.read_text(encoding="utf-8"), p
