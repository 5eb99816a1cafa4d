"""Stores: the zarr trajectory store (:mod:`.zarrstore`) and recording other trainers into one
(:mod:`.record`).

The second layer of the workflow (``docs/architecture.md``, ``docs/store-contract.md``). Names are
loaded on first use, so ``import geomtraj.store`` costs nothing until a store is opened.
"""

from __future__ import annotations

from geomtraj._lazy import lazy_getattr

#: Public name -> the submodule that defines it.
_EXPORTS = {
    **dict.fromkeys(
        ("open_store", "validate", "check_integrity", "create", "write_region", "set_attrs",
         "read_attrs", "read_run_chunk", "chunk_checksums", "strings", "resume_path",
         "remove_partial", "encoding_for", "unified_chunks", "run_table_as_coords",
         "SCHEMA_VERSION", "REQUIRED_VARIABLES", "DATA_VARIABLES", "PRECISIONS",
         "STATUS_TRAINING", "STATUS_COMPLETE"),
        "zarrstore",
    ),
    **dict.fromkeys(("TorchRecorder", "combine_stores", "dataset_from_arrays", "write_store"),
    "record"),
}  # fmt: skip

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
