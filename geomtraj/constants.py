"""Named constants and numba flag sets, in one place.

Nothing else in geomtraj hard-codes ``fastmath=``: kernels import their flag sets from here.
Training thresholds live here too; each analysis keeps its thresholds in one documented, frozen
``*Params`` dataclass at the top of its module (``geomtraj.analysis.events.BurstParams``, ...), so
that a reader finds every numerical choice of an analysis in one place.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

#: Flags for every kernel that touches training arithmetic. ``fastmath`` stays off: it allows
#: fused multiply-add, reassociation and approximate functions, which change rounding, and rounding
#: is what geomtraj studies. ``error_model="numpy"`` makes division by zero give inf/nan instead of
#: raising, as IEEE arithmetic does.
TRAIN_JIT = {"fastmath": False, "error_model": "numpy", "nogil": True}

#: Same as :data:`TRAIN_JIT` with run-level parallelism (``prange`` over independent runs only).
TRAIN_JIT_PARALLEL = {**TRAIN_JIT, "parallel": True}

#: Runs per lane block of the trainer's lane kernel (runs of one architecture, the run as the
#: vector axis); the kernel template checks its own ``LANES`` against it when a variant loads.
LANES = 16

#: Flags for analysis kernels. They read stored trajectories and never feed back into training, but
#: ``fastmath`` stays off here too: it would let the compiler assume no NaN/inf, and analyses must
#: handle the non-finite values of diverged runs exactly.
ANALYSIS_JIT = {"fastmath": False, "error_model": "numpy", "nogil": True, "cache": True}

#: A run counts as diverged when its full-batch loss exceeds this multiple of its initial loss
#: (or when the loss or any parameter is non-finite).
DIVERGENCE_LOSS_FACTOR = 1.0e4

#: Target size of one stored zarr chunk, in bytes (~1 MiB or more keeps dask task counts sane).
CHUNK_TARGET_BYTES = 4 * 2**20

#: Runs per stored chunk by default, and the most a default chunk takes when its arrays are small:
#: with little recorded per run (short runs, few or no coordinates), chunks of 8 runs hold a few
#: KiB each, and every chunk costs zarr about 1.5 ms to write whatever its size (1024 float32
#: runs of 2,000 updates: their four per-update series took 0.14 s in chunks of 64 runs, 0.115 s
#: in chunks of 128). The run chunk then doubles while a chunk of the largest array is below 3/4
#: of CHUNK_TARGET_BYTES (it ends between 3 and 6 MiB), which also bounds the memory of a block.
#: With 16 coordinates of 1024 runs recorded, growing to this rather than to 1 MiB took float32
#: training from 6.41 to 6.32 s (chunks of 32 runs, not 16) and float64 from 18.2 to 16.7 s (32,
#: not 8). Analyses and ``geomtraj train --scheduler`` work in blocks of one run chunk, so it
#: doubles only up to RUN_CHUNK_MAX runs, or up to a MIN_BLOCKS-th of the runs where that is
#: more, to keep blocks to hand out.
RUN_CHUNK, RUN_CHUNK_MAX, MIN_BLOCKS = 8, 64, 8

#: Memory budget for the recording buffers that ``train`` holds before writing a chunk, in bytes.
RECORD_BUFFER_BYTES = 512 * 2**20

#: Zarr consolidated metadata is not in the v3 spec; geomtraj never writes or reads it.
ZARR_CONSOLIDATED = False

#: Whether geomtraj's kernels compile with LLVM's SLP vectoriser (environment variable
#: ``GEOMTRAJ_SLP=0`` turns it off). Numba leaves SLP off by default; it packs independent scalar
#: operations into vector lanes and, without fastmath, never reorders or fuses floating-point
#: operations, so results are bit-identical either way (a test checks this) while the
#: eight-accumulator gradient sums run about 4x faster.
SLP_VECTORIZE = os.environ.get("GEOMTRAJ_SLP", "1") != "0"


@contextmanager
def kernel_compilation():
    """Compile geomtraj's kernels (lazily) with SLP as configured; numba's setting is restored."""
    import numba

    saved = numba.config.SLP_VECTORIZE
    numba.config.SLP_VECTORIZE = int(SLP_VECTORIZE)
    try:
        yield
    finally:
        numba.config.SLP_VECTORIZE = saved
