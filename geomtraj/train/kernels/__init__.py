"""The trainer's JIT-compiled kernels.

The MLP step loops (:mod:`.mlp` and its generated variants), Adam's update (:mod:`.adam`),
portable math (:mod:`.fpmath`) and emulated rounding (:mod:`.rounding`).
"""
