"""Adam's update of one parameter, the step geomtraj studies, written once for every kernel.

:func:`make_adam_update` returns the ``@njit`` scalar function that both training kernels (the
per-run ``_train_block`` and the lane kernel ``_train_lanes`` of each compiled variant) call for
every parameter at every update. It is textbook Adam, as ``torch.optim.Adam`` with
``amsgrad=False`` and coupled (L2) weight decay::

    g     = grad + weight_decay * theta
    m     = beta1*m + (1-beta1)*g
    v     = beta2*v + (1-beta2)*(g*g)
    m_hat = m / (1 - beta1^t)
    v_hat = v / (1 - beta2^t)
    u     = m_hat / (sqrt(v_hat) + eps)
    theta = theta - (lr*k) * (u/k)       # k = 1 except for Sun's rescaling twins

Every operation is one IEEE operation in the run's dtype, in this order and grouping; the kernels
are compiled without fastmath, so nothing is fused or reassociated. For the emulated formats the
result is rounded to the format (round to nearest even, :mod:`geomtraj.train.kernels.rounding`) at
five
points: ``g``, ``m``, ``v``, the step ``(lr*k)*(u/k)`` and ``theta``; the bias corrections and
``u`` stay in the compute dtype (docs/formats.md).

The caller precomputes what does not change between parameters of one update: ``1 - beta1``,
``1 - beta2``, the bias corrections ``1 - beta^t`` (``beta^t`` a running product in the run
dtype) and ``lr*k``. The function is small, branch-free and has no calls other than the rounder
and ``sqrt``, so LLVM inlines it into the callers' loops and the lane kernel's loop over runs
still vectorises.
"""

from __future__ import annotations

import math
from functools import cache

from numba import njit

from geomtraj.constants import TRAIN_JIT
from geomtraj.train.kernels.rounding import get_rounder


@cache
def make_adam_update(fmt: str):
    """The Adam update of one parameter in number format ``fmt``.

    Parameters
    ----------
    fmt : str
        A number format of :data:`geomtraj.formats.FORMATS`; it chooses the rounding.

    Returns
    -------
    numba dispatcher
        ``adam_update(theta, m, v, grad, beta1, beta2, one_minus_beta1, one_minus_beta2,
        bias_correction1, bias_correction2, lr_k, eps, weight_decay, k)`` returning
        ``(theta_new, m_new, v_new, g)``; every argument a scalar of the run's dtype.
    """
    rnd = get_rounder(fmt)

    @njit(**TRAIN_JIT)
    def adam_update(
        theta,
        m,
        v,
        grad,
        beta1,
        beta2,
        one_minus_beta1,
        one_minus_beta2,
        bias_correction1,
        bias_correction2,
        lr_k,
        eps,
        weight_decay,
        k,
    ):
        g = rnd(grad + weight_decay * theta)
        m_new = rnd(beta1 * m + one_minus_beta1 * g)
        v_new = rnd(beta2 * v + one_minus_beta2 * (g * g))
        u = (m_new / bias_correction1) / (math.sqrt(v_new / bias_correction2) + eps)
        theta_new = rnd(theta - rnd(lr_k * (u / k)))
        return theta_new, m_new, v_new, g

    return adam_update
