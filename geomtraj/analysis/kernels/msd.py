"""JIT-compiled kernels of the diffusion analysis (:mod:`geomtraj.analysis.diffusion`).

Pure arrays in, arrays out; the public wrappers in ``geomtraj.analysis.diffusion`` validate and
allocate. The slow NumPy twin lives in ``tests/naive_dynamics.py``.
"""

from __future__ import annotations

import numba
import numpy as np

from geomtraj.constants import ANALYSIS_JIT


@numba.njit(**ANALYSIS_JIT)
def _msd_block_sums(x, lags, edges, S, N):
    """Sums ``S[b, i]`` of ``||x_{t+lags[i]} - x_t||^2`` over start times ``t`` in block ``b``
    (``edges[b] <= t < edges[b+1]``, ``t + lags[i] < n``) and their counts ``N[b, i]``, summed
    directly in a fixed order (JIT-compiled).

    At the few dozen lags an analysis reads this costs ``n * p`` per lag, less than the FFT over
    all lags, and it has no cancellation between ``||x||^2`` terms and the cross-correlation.
    """
    n, p = x.shape
    n_lags = lags.shape[0]
    acc = np.empty(n_lags)
    for b in range(edges.shape[0] - 1):
        a, e = edges[b], edges[b + 1]
        acc[:] = 0.0
        # lags innermost: their sums are independent chains the processor overlaps; each sum
        # still adds its terms in order of t, so the result does not depend on the loop order
        for t in range(a, e):
            for i in range(n_lags):
                k = lags[i]
                if t + k < n:
                    d2 = 0.0
                    for j in range(p):
                        d = x[t + k, j] - x[t, j]
                        d2 += d * d
                    acc[i] += d2
        for i in range(n_lags):
            S[b, i] = acc[i]
            N[b, i] = max(min(e, n - lags[i]) - a, 0)
