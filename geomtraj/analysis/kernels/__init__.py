"""JIT-compiled kernels of the analyses: pure arrays in, arrays out.

One module per analysis need: :mod:`.winding` (spiral phase and surrogates), :mod:`.burst_scan`
(burst detection), :mod:`.msd` (diffusion's squared displacements) and :mod:`.hvp` (float64
Hessian-vector products for the edge-of-stability and mechanism analyses). The trainer's kernels
are in :mod:`geomtraj.train.kernels`.
"""
