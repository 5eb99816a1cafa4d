"""JIT-compiled float64 gradients, Hessian-vector products and a sharpness tracker for the MLPs.

The same definitions as :mod:`geomtraj.analysis.hessian` (contract-1 layout,
``tanh``/``sigmoid``/``relu``
hidden layers, a linear output, ``mse`` without a factor 1/2 or ``bce`` on the logit, weight decay
adding ``alpha*I``): Pearlmutter's R-operator, one product of a 12x24 net on 64 points in about
13 us against the ~100 us of the vectorised NumPy version (docs/mechanism.md, "Cost").
Everything is float64 whatever the run's format; the states read from a replay are converted on
the fly. Analysis flags (``config.ANALYSIS_JIT``): these kernels never feed back into training.

Layout of the work arrays: ``(units, n_points)`` with ``units = sum(sizes)``, layer ``k``'s
inputs in rows ``a_off[k]...`` and its outputs in rows ``a_off[k+1]...`` (``A`` activations with
the inputs first, ``Z`` pre-activations, ``DL`` the back-propagated ``dL/dz``). The layer
products are BLAS matrix products (``np.dot``, one thread under
``geomtraj.analysis.base.one_blas_thread`` as the tracker runs, so deterministic): written as
loops, their sums over points did not vectorise without fastmath and cost three times as much.
Points are the contiguous inner axis of the element-wise loops, which vectorise (no operation is
reordered), the activations through the branch-free tanh and sigmoid of
:mod:`geomtraj.train.kernels.fpmath` (within 2.6 ulp of libm's).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from geomtraj.constants import ANALYSIS_JIT
from geomtraj.train.kernels.fpmath import FP64

#: Activation and loss codes of the kernels.
ACTIVATIONS = {"tanh": 0, "sigmoid": 1, "relu": 2}
LOSSES = {"mse": 0, "bce": 1}

#: Branch-free float64 tanh and sigmoid (within 2.6 ulp): unlike ``math.tanh``, a libm call,
#: they let the loop over points vectorise.
_tanh, _sigmoid = FP64.tanh, FP64.sigmoid


@numba.njit(**ANALYSIS_JIT)
def _offsets(sizes, n_layers):
    """Flat ``W``/``b`` offsets per layer, unit offsets per layer boundary, ``n_params``."""
    w_off = np.empty(n_layers, np.int64)
    b_off = np.empty(n_layers, np.int64)
    a_off = np.empty(n_layers + 2, np.int64)
    n = 0
    for k in range(n_layers):
        w_off[k] = n
        b_off[k] = n + sizes[k] * sizes[k + 1]
        n = b_off[k] + sizes[k + 1]
    u = 0
    for k in range(n_layers + 1):
        a_off[k] = u
        u += sizes[k]
    a_off[n_layers + 1] = u
    return w_off, b_off, a_off, n


@numba.njit(**ANALYSIS_JIT)
def _sum_points(x, n):
    """``sum_p x[p]`` with eight partial sums."""
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
    m = n - n % 8
    for p in range(0, m, 8):
        s0 += x[p]
        s1 += x[p + 1]
        s2 += x[p + 2]
        s3 += x[p + 3]
        s4 += x[p + 4]
        s5 += x[p + 5]
        s6 += x[p + 6]
        s7 += x[p + 7]
    for p in range(m, n):
        s0 += x[p]
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))


@numba.njit(**ANALYSIS_JIT)
def _activate(act, Z, A, D1, D2, row, n_pts):
    """``A``, ``D1``, ``D2`` of unit ``row`` from ``Z``: one branch-free loop per activation."""
    if act == 0:
        for p in range(n_pts):
            a = _tanh(Z[row, p])
            d1 = 1.0 - a * a
            A[row, p] = a
            D1[row, p] = d1
            D2[row, p] = -2.0 * a * d1
    elif act == 1:
        for p in range(n_pts):
            a = _sigmoid(Z[row, p])
            d1 = a * (1.0 - a)
            A[row, p] = a
            D1[row, p] = d1
            D2[row, p] = d1 * (1.0 - 2.0 * a)
    else:
        for p in range(n_pts):
            z = Z[row, p]
            pos = z > 0.0
            A[row, p] = z if pos else 0.0
            D1[row, p] = 1.0 if pos else 0.0
            D2[row, p] = 0.0


@numba.njit(**ANALYSIS_JIT)
def linearise(theta, sizes, n_layers, act, loss_code, X, y, wd, A, Z, D1, D2, DL, CV, d2l, grad):
    """Forward and backward pass at ``theta``: fills the work arrays and ``grad``; returns the loss.

    ``X`` is ``(n_points, d_in)``; the work arrays are ``(units, n_points)``. ``grad`` includes
    weight decay ``wd*theta``; the loss does not (as the trainer records it). The layer products
    are BLAS matrix products (``np.dot``; one thread under ``one_blas_thread()``, so
    deterministic), the element-wise loops run over the points.
    """
    w_off, b_off, a_off, n_par = _offsets(sizes, n_layers)
    n_pts = X.shape[0]
    for i in range(sizes[0]):
        for p in range(n_pts):
            A[i, p] = X[p, i]
    for k in range(n_layers):
        fi, fo = sizes[k], sizes[k + 1]
        ai, ao, wo, bo = a_off[k], a_off[k + 1], w_off[k], b_off[k]
        W = theta[wo : wo + fi * fo].reshape((fi, fo))
        np.dot(W.T, A[ai : ai + fi], Z[ao : ao + fo])
        for j in range(fo):
            bj = theta[bo + j]
            for p in range(n_pts):
                Z[ao + j, p] += bj
        if k < n_layers - 1:
            for j in range(fo):
                _activate(act, Z, A, D1, D2, ao + j, n_pts)
    out = a_off[n_layers]
    total = 0.0
    for p in range(n_pts):
        f = Z[out, p]
        if loss_code == 0:
            r = f - y[p]
            total += r * r
            DL[out, p] = 2.0 * r / n_pts
            d2l[p] = 2.0 / n_pts
        else:
            if f >= 0:
                s = 1.0 / (1.0 + math.exp(-f))
                sp = f + math.log1p(math.exp(-f))
            else:
                e = math.exp(f)
                s = e / (1.0 + e)
                sp = math.log1p(e)
            total += sp - y[p] * f
            DL[out, p] = (s - y[p]) / n_pts
            d2l[p] = s * (1.0 - s) / n_pts
    for k in range(n_layers - 1, -1, -1):
        fi, fo = sizes[k], sizes[k + 1]
        ai, ao, wo, bo = a_off[k], a_off[k + 1], w_off[k], b_off[k]
        gW = grad[wo : wo + fi * fo].reshape((fi, fo))
        np.dot(A[ai : ai + fi], DL[ao : ao + fo].T, gW)
        for q in range(wo, wo + fi * fo):
            grad[q] += wd * theta[q]
        for j in range(fo):
            grad[bo + j] = wd * theta[bo + j] + _sum_points(DL[ao + j], n_pts)
        if k > 0:
            W = theta[wo : wo + fi * fo].reshape((fi, fo))
            np.dot(W, DL[ao : ao + fo], DL[ai : ai + fi])  # delta_k W_k^T
            for i in range(fi):
                for p in range(n_pts):
                    dw = DL[ai + i, p]
                    CV[ai + i, p] = dw * D2[ai + i, p]  # its sigma'' term, constant in R{delta}
                    DL[ai + i, p] = dw * D1[ai + i, p]
    return total / n_pts


@numba.njit(**ANALYSIS_JIT)
def rop(theta, vec, sizes, n_layers, wd, A, D1, DL, CV, d2l, RZ, RA, RD, out, TMP, TW):
    """``out = H @ vec`` at the point :func:`linearise` filled the work arrays for.

    ``R{z_k} = R{a_k} W_k + a_k dW_k + db_k`` with ``R{a_k} = sigma'(z_{k-1}) R{z_{k-1}}``;
    ``R{delta_L} = l''(f) R{f}``; ``R{delta_{k-1}} = (R{delta_k} W_k^T + delta_k dW_k^T)
    sigma'(z_{k-1}) + (delta_k W_k^T) sigma''(z_{k-1}) R{z_{k-1}}``; ``R{g_W} = R{a}^T delta +
    a^T R{delta}``, ``R{g_b} = sum R{delta}``; plus ``wd * vec``. Layer products are BLAS
    matrix products as in :func:`linearise`; ``TMP`` (``(units, n_points)``) and ``TW``
    (``n_params``) are scratch.
    """
    w_off, b_off, a_off, n_par = _offsets(sizes, n_layers)
    n_pts = A.shape[1]
    for k in range(n_layers):
        fi, fo = sizes[k], sizes[k + 1]
        ai, ao, wo, bo = a_off[k], a_off[k + 1], w_off[k], b_off[k]
        dW = vec[wo : wo + fi * fo].reshape((fi, fo))
        np.dot(dW.T, A[ai : ai + fi], RZ[ao : ao + fo])
        if k > 0:
            for i in range(ai, ai + fi):
                for p in range(n_pts):
                    RA[i, p] = D1[i, p] * RZ[i, p]
            W = theta[wo : wo + fi * fo].reshape((fi, fo))
            np.dot(W.T, RA[ai : ai + fi], TMP[ao : ao + fo])
            for j in range(fo):
                bj = vec[bo + j]
                for p in range(n_pts):
                    RZ[ao + j, p] += TMP[ao + j, p] + bj
        else:
            for j in range(fo):
                bj = vec[bo + j]
                for p in range(n_pts):
                    RZ[ao + j, p] += bj
    last = a_off[n_layers]
    for p in range(n_pts):
        RD[last, p] = d2l[p] * RZ[last, p]
    for k in range(n_layers - 1, -1, -1):
        fi, fo = sizes[k], sizes[k + 1]
        ai, ao, wo, bo = a_off[k], a_off[k + 1], w_off[k], b_off[k]
        gW = out[wo : wo + fi * fo].reshape((fi, fo))
        np.dot(A[ai : ai + fi], RD[ao : ao + fo].T, gW)
        if k > 0:
            tW = TW[wo : wo + fi * fo].reshape((fi, fo))
            np.dot(RA[ai : ai + fi], DL[ao : ao + fo].T, tW)
            for q in range(wo, wo + fi * fo):
                out[q] += TW[q] + wd * vec[q]
        else:
            for q in range(wo, wo + fi * fo):
                out[q] += wd * vec[q]
        for j in range(fo):
            out[bo + j] = wd * vec[bo + j] + _sum_points(RD[ao + j], n_pts)
        if k > 0:
            W = theta[wo : wo + fi * fo].reshape((fi, fo))
            dW = vec[wo : wo + fi * fo].reshape((fi, fo))
            np.dot(W, RD[ao : ao + fo], RD[ai : ai + fi])
            np.dot(dW, DL[ao : ao + fo], TMP[ai : ai + fi])
            for i in range(ai, ai + fi):
                for p in range(n_pts):
                    RD[i, p] = (RD[i, p] + TMP[i, p]) * D1[i, p] + CV[i, p] * RZ[i, p]


def work_arrays(n_points: int, sizes) -> dict[str, np.ndarray]:
    """The float64 work arrays of :func:`linearise`, :func:`rop` and :func:`track_block`."""
    units = int(sum(sizes))
    n_par = sum(sizes[i] * sizes[i + 1] + sizes[i + 1] for i in range(len(sizes) - 1))
    arr = {k: np.zeros((units, n_points)) for k in ("A", "Z", "D1", "D2", "DL", "CV", "RZ", "RA",
                                                     "RD")}  # fmt: skip
    arr["TMP"] = np.zeros((units, n_points))
    arr["TW"] = np.zeros(n_par)
    arr["d2l"] = np.zeros(n_points)
    arr["grad"] = np.zeros(n_par)
    return arr


@numba.njit(**ANALYSIS_JIT)
def _apply_s(theta, d, vec, sizes, n_layers, wd, A, D1, DL, CV, d2l, RZ, RA, RD, TMP, TW, x, out):
    """``out = S vec`` with ``S = diag(d) H diag(d)``: one Hessian-vector product."""
    n = vec.shape[0]
    for i in range(n):
        x[i] = d[i] * vec[i]
    rop(theta, x, sizes, n_layers, wd, A, D1, DL, CV, d2l, RZ, RA, RD, out, TMP, TW)
    for i in range(n):
        out[i] *= d[i]


@numba.njit(**ANALYSIS_JIT)
def _orthonormalise(r, basis, m, floor):
    """Orthogonalise ``r`` against ``basis[:m]`` (twice is enough) and normalise it into
    ``basis[m]``; False when what is left is at most ``floor`` (nothing new)."""
    n = r.shape[0]
    if m > 0:
        B = basis[:m]
        for _ in range(2):
            c = np.dot(B, r)
            r -= np.dot(c, B)
    b = math.sqrt(np.dot(r, r))
    if not (b > floor and math.isfinite(b)):
        return False
    for i in range(n):
        basis[m, i] = r[i] / b
    return True


@numba.njit(**ANALYSIS_JIT)
def _ritz_top(theta, d, u, wg, steps, tol, sizes, n_layers, wd, A, D1, DL, CV, d2l, RZ, RA, RD, TMP,
              TW, x, r, basis, SB):  # fmt: skip
    """Top Ritz value of ``S = diag(d) H diag(d)`` on the Krylov space of ``u`` plus ``wg``.

    ``steps`` Lanczos vectors from ``u`` (``u, S u, ...``, fully reorthogonalised), then
    ``wg`` (the preconditioned gradient ``P^-1/2 g``) joins the basis, and the Rayleigh-Ritz step
    runs on all of them: one HVP per basis vector (``SB`` holds ``S`` times each). The space holds
    the Krylov space, so the Ritz value is never below that of ``steps`` Lanczos steps alone (nor
    above ``lambda_max``), and it holds ``wg``, so ``wg^T S wg`` comes out of the same products.
    ``u`` is overwritten with the unit Ritz vector, the warm start of the next call.

    Returns ``(ritz value, wg^T S wg / wg^T wg or NaN when wg = 0, HVPs used)``.
    """
    n = u.shape[0]
    norm = 0.0
    for i in range(n):
        norm += u[i] * u[i]
    norm = math.sqrt(norm)
    for i in range(n):
        basis[0, i] = u[i] / norm
    m = 0
    for k in range(steps):
        _apply_s(theta, d, basis[k], sizes, n_layers, wd, A, D1, DL, CV, d2l, RZ, RA, RD, TMP,
                 TW, x, SB[k])  # fmt: skip
        m = k + 1
        if k == steps - 1:
            break
        r[:] = SB[k]
        floor = 1e-12 * math.sqrt(np.dot(r, r))
        if k == 0:  # u converged: its residual S u - (u^T S u) u is below tol * (u^T S u)
            floor = max(floor, tol * abs(np.dot(basis[0], r)))
        if not _orthonormalise(r, basis, m, floor):  # (or an invariant subspace)
            break
    r[:] = wg
    wn = np.dot(wg, wg)
    if wn > 0.0 and _orthonormalise(r, basis, m, 1e-12 * math.sqrt(wn)):
        _apply_s(theta, d, basis[m], sizes, n_layers, wd, A, D1, DL, CV, d2l, RZ, RA, RD, TMP,
                 TW, x, SB[m])  # fmt: skip
        m += 1
    n_hvp = m
    B = basis[:m]
    M = np.dot(B, SB[:m].T)
    M = 0.5 * (M + M.T)
    if not np.all(np.isfinite(M)):  # a non-finite state or preconditioner: nothing measured
        return np.nan, np.nan, n_hvp
    dir_curv = np.nan
    if wn > 0.0:
        c = np.dot(B, wg)
        dir_curv = np.dot(c, np.dot(M, c)) / wn
    w, V = np.linalg.eigh(M)
    u[:] = np.dot(V[:, m - 1].copy(), B)
    return w[m - 1], dir_curv, n_hvp


@numba.njit(**ANALYSIS_JIT)
def track_block(
    thetas,
    vs,
    t_first,
    t_step,
    sizes,
    n_layers,
    act,
    loss_code,
    X,
    y,
    hyper,
    threshold,
    u,
    carry,
    stride,
    dense_stride,
    dense_level,
    horizon,
    lanczos_steps,
    lanczos_tol,
    sharpness,
    dir_curv,
    loss,
    log_v,
    A,
    Z,
    D1,
    D2,
    DL,
    CV,
    d2l,
    RZ,
    RA,
    RD,
    grad,
    TMP,
    TW,
):
    """Track ``lambda_max(P^-1 H)`` along consecutive states, a few HVPs per evaluation.

    Row ``i`` of ``thetas``/``vs`` is the state after update ``t = t_first + i*t_step``; the
    curvature is the one update ``t+1`` sees: ``H(theta_t)`` and
    ``P = (1-beta1^(t+1)) (sqrt(v'/(1-beta2^(t+1))) + eps)``, ``v' = beta2 v_t + (1-beta2) g^2``
    (as ``geomtraj.analysis.stability.adam_preconditioner``). The eigenvalue is that of the
    symmetric ``S = P^-1/2 H P^-1/2`` (:func:`_ritz_top`): up to ``lanczos_steps`` Lanczos steps
    from ``u``, the top Ritz vector carried from the previous evaluation (updated in place), so
    the iteration continues along the run, stopping after the first when ``u``'s relative
    residual is at most ``lanczos_tol``; the preconditioned gradient ``P^-1/2 g`` joins the basis
    with one more HVP. ``sharpness`` is the top Ritz value (a lower bound of ``lambda_max``);
    ``dir_curv`` the curvature of ``P^-1 H`` along the preconditioned gradient,
    ``q^T H q / (g^T q)`` with ``q = P^-1 g`` (the Rayleigh quotient of ``S`` at
    ``P^-1/2 g``, exact since that vector lies in the basis). ``log_v`` (every row) is the mean
    of ``log v_t``.

    Spacing: with ``r`` the last measured ``sharpness/threshold`` and ``c = carry[1]`` the
    updates since the last evaluation, a row is evaluated when ``c >= dense_stride`` if
    ``r >= 1``, else when ``c >= clip(horizon * 2 ln(r) / ln(beta2), dense_stride, stride)``
    (a fraction of the decay forecast's time to the crossing); with ``horizon = 0`` when
    ``c >= dense_stride`` if ``r >= dense_level`` and ``c >= stride`` below it. Others stay NaN.
    ``carry = [r, c]`` continues across blocks. Hyper-parameters
    ``hyper = [beta1, beta2, lr, eps, weight_decay]``. Returns the number of HVPs used.
    """
    n_rows, n_par = thetas.shape
    b1, b2, eps, wd = hyper[0], hyper[1], hyper[3], hyper[4]
    log_b2 = math.log(b2)
    theta = np.empty(n_par)
    x = np.empty(n_par)
    hx = np.empty(n_par)
    d = np.empty(n_par)
    wg = np.empty(n_par)
    basis = np.empty((lanczos_steps + 1, n_par))
    SB = np.empty((lanczos_steps + 1, n_par))
    n_hvp = 0
    for r in range(n_rows):
        s = 0.0
        for i in range(n_par):
            s += math.log(vs[r, i]) if vs[r, i] > 0 else -745.0
        log_v[r] = s / n_par
        carry[1] += t_step
        gap = stride
        if carry[0] >= 1.0 or (horizon == 0.0 and carry[0] >= dense_level):
            gap = dense_stride
        elif horizon > 0.0:  # a fraction of the decay forecast's time to the crossing
            gap = min(stride, max(dense_stride, horizon * 2.0 * math.log(carry[0]) / log_b2))
        if carry[1] < gap:
            continue
        ok = True
        for i in range(n_par):
            theta[i] = thetas[r, i]
            if not math.isfinite(theta[i]):
                ok = False
        if not ok:
            continue
        carry[1] = 0.0
        loss[r] = linearise(theta, sizes, n_layers, act, loss_code, X, y, wd, A, Z, D1, D2, DL,
                            CV, d2l, grad)  # fmt: skip
        t1 = t_first + r * t_step + 1
        c1 = 1.0 - b1**t1
        c2 = 1.0 - b2**t1
        for i in range(n_par):
            vp = b2 * vs[r, i] + (1.0 - b2) * grad[i] * grad[i]
            P = c1 * (math.sqrt(vp / c2) + eps)
            d[i] = 1.0 / math.sqrt(P)
            wg[i] = grad[i] * d[i]  # P^-1/2 g: its Rayleigh quotient is q^T H q / g^T q
        lam, dc, used = _ritz_top(theta, d, u, wg, lanczos_steps, lanczos_tol, sizes, n_layers,
                                  wd, A, D1, DL, CV, d2l, RZ, RA, RD, TMP, TW, x, hx, basis,
                                  SB)  # fmt: skip
        n_hvp += used
        sharpness[r] = lam
        dir_curv[r] = dc
        carry[0] = lam / threshold
    return n_hvp
