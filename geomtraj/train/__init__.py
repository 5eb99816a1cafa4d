"""Training: what to train (``config``, ``plan``), the toy data and networks, the trainer and its
kernels.

The first layer of the workflow (``docs/architecture.md``): a TOML config (:mod:`.config`) expands
to a :class:`~geomtraj.train.plan.Plan`, which :mod:`.trainer` runs with the compiled kernels of
:mod:`.kernels` and writes into a store (:mod:`geomtraj.store`). Analyses that need training again
call :func:`replay`, the one interface they use.

Names are loaded on first use, so importing a submodule (``geomtraj.train.plan``) does not load
the trainer and its kernels.
"""

from __future__ import annotations

from geomtraj._lazy import lazy_getattr

#: Public name -> the submodule that defines it.
_EXPORTS = {
    **dict.fromkeys(
        ("train", "train_plan", "replay", "run_blocks", "create_store", "plan_for_store",
         "train_block", "finish_store"),
        "trainer",
    ),
    **dict.fromkeys(("DataSource", "Perturbation", "Run", "Plan"), "plan"),
    "plan_from_config": "config",
    "load_config": "config",
}  # fmt: skip

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
