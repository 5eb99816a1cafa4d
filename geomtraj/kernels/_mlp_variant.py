FMT, ACTIVATION, LOSS = "float64", "tanh", "mse"  # rewritten for each variant; see mlp.py
# ruff: noqa: E402  (the first line must stay the variant assignment)
# One compiled variant of the training kernel (template).
#
# :mod:`geomtraj.kernels.mlp` writes a copy of this file per ``(FMT, ACTIVATION, LOSS)``, with the
# first line replaced, and imports it; numba then caches the compiled functions on disk next to that
# copy. Every constant below is a module global of the run's dtype, which numba freezes into the
# compiled code, so a float32 variant contains no float64 arithmetic. The arithmetic order is
# documented in :mod:`geomtraj.kernels.mlp`.

import math

import numpy as np
from numba import njit, prange

from geomtraj.config import TRAIN_JIT, TRAIN_JIT_PARALLEL
from geomtraj.kernels.fpmath import make_fpmath
from geomtraj.kernels.rounding import ROUNDERS, STORAGE_DTYPE

_JIT = {**TRAIN_JIT, "cache": True}
_JIT_PARALLEL = {**TRAIN_JIT_PARALLEL, "cache": True}

dtype = STORAGE_DTYPE[FMT]
fp = make_fpmath(dtype)
rnd = ROUNDERS[FMT]
fp_tanh, fp_sigmoid, fp_exp_pos = fp.tanh, fp.sigmoid, fp.exp_pos
ZERO, ONE, TWO = dtype(0), dtype(1), dtype(2)

if ACTIVATION == "tanh":

    @njit(**_JIT)
    def act(z):
        return fp_tanh(z)

    @njit(**_JIT)
    def dact(a):
        return ONE - a * a

elif ACTIVATION == "sigmoid":

    @njit(**_JIT)
    def act(z):
        return fp_sigmoid(z)

    @njit(**_JIT)
    def dact(a):
        return a * (ONE - a)

elif ACTIVATION == "relu":

    @njit(**_JIT)
    def act(z):
        # written so that NaN passes through instead of being clipped to zero
        return ZERO if z <= ZERO else z

    @njit(**_JIT)
    def dact(a):
        return ONE if a > ZERO else ZERO

else:
    raise ValueError(f"unknown activation {ACTIVATION!r}")

if LOSS == "mse":

    @njit(**_JIT)
    def point_loss(f, y):
        r = f - y
        return r * r

    @njit(**_JIT)
    def point_delta(f, y):
        return f - y

    DELTA_NUMERATOR = TWO
elif LOSS == "bce":

    @njit(**_JIT)
    def point_loss(f, y):
        af = f if f >= ZERO else -f
        pos = f if f > ZERO else ZERO
        return pos - f * y + math.log1p(ONE / fp_exp_pos(af))

    @njit(**_JIT)
    def point_delta(f, y):
        return fp_sigmoid(f) - y

    DELTA_NUMERATOR = ONE
else:
    raise ValueError(f"unknown loss {LOSS!r}")


@njit(**_JIT)
def _dot16(X, xr, Y, yr, n):
    """``sum_p X[xr,p]*Y[yr,p]`` over ``p < n`` in a fixed order: 16 interleaved partial sums
    (``p mod 16``, in ``p`` order), the tail added to the first, then a pairwise tree."""
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = ZERO
    s8 = s9 = s10 = s11 = s12 = s13 = s14 = s15 = ZERO
    p = 0
    while p + 16 <= n:
        s0 += X[xr, p] * Y[yr, p]
        s1 += X[xr, p + 1] * Y[yr, p + 1]
        s2 += X[xr, p + 2] * Y[yr, p + 2]
        s3 += X[xr, p + 3] * Y[yr, p + 3]
        s4 += X[xr, p + 4] * Y[yr, p + 4]
        s5 += X[xr, p + 5] * Y[yr, p + 5]
        s6 += X[xr, p + 6] * Y[yr, p + 6]
        s7 += X[xr, p + 7] * Y[yr, p + 7]
        s8 += X[xr, p + 8] * Y[yr, p + 8]
        s9 += X[xr, p + 9] * Y[yr, p + 9]
        s10 += X[xr, p + 10] * Y[yr, p + 10]
        s11 += X[xr, p + 11] * Y[yr, p + 11]
        s12 += X[xr, p + 12] * Y[yr, p + 12]
        s13 += X[xr, p + 13] * Y[yr, p + 13]
        s14 += X[xr, p + 14] * Y[yr, p + 14]
        s15 += X[xr, p + 15] * Y[yr, p + 15]
        p += 16
    while p < n:
        s0 += X[xr, p] * Y[yr, p]
        p += 1
    return (((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))) + (
        ((s8 + s9) + (s10 + s11)) + ((s12 + s13) + (s14 + s15))
    )


@njit(**_JIT)
def _sum16(X, xr, n):
    """``sum_p X[xr,p]`` over ``p < n`` in the fixed order of :func:`_dot16`."""
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = ZERO
    s8 = s9 = s10 = s11 = s12 = s13 = s14 = s15 = ZERO
    p = 0
    while p + 16 <= n:
        s0 += X[xr, p]
        s1 += X[xr, p + 1]
        s2 += X[xr, p + 2]
        s3 += X[xr, p + 3]
        s4 += X[xr, p + 4]
        s5 += X[xr, p + 5]
        s6 += X[xr, p + 6]
        s7 += X[xr, p + 7]
        s8 += X[xr, p + 8]
        s9 += X[xr, p + 9]
        s10 += X[xr, p + 10]
        s11 += X[xr, p + 11]
        s12 += X[xr, p + 12]
        s13 += X[xr, p + 13]
        s14 += X[xr, p + 14]
        s15 += X[xr, p + 15]
        p += 16
    while p < n:
        s0 += X[xr, p]
        p += 1
    return (((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))) + (
        ((s8 + s9) + (s10 + s11)) + ((s12 + s13) + (s14 + s15))
    )


# Hot loops index the 2-D work arrays directly: creating a numba array view inside a loop
# costs atomic reference counting, which dominated the step time when rows were sliced.


@njit(**_JIT)
def _outer8(X, xr, YT, yc, n):
    """``sum_p X[xr,p] * YT[p,yc+k]`` for ``k < 8``, each summed in ``p`` order.

    Eight independent accumulators share one ``X`` value per point, so LLVM packs them into one
    vector; every sum is still the sequential sum over points.
    """
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = ZERO
    for p in range(n):
        a = X[xr, p]
        s0 += a * YT[p, yc]
        s1 += a * YT[p, yc + 1]
        s2 += a * YT[p, yc + 2]
        s3 += a * YT[p, yc + 3]
        s4 += a * YT[p, yc + 4]
        s5 += a * YT[p, yc + 5]
        s6 += a * YT[p, yc + 6]
        s7 += a * YT[p, yc + 7]
    return s0, s1, s2, s3, s4, s5, s6, s7


@njit(**_JIT)
def _colsum8(YT, yc, n):
    """``sum_p YT[p,yc+k]`` for ``k < 8``, each summed in ``p`` order."""
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = ZERO
    for p in range(n):
        s0 += YT[p, yc]
        s1 += YT[p, yc + 1]
        s2 += YT[p, yc + 2]
        s3 += YT[p, yc + 3]
        s4 += YT[p, yc + 4]
        s5 += YT[p, yc + 5]
        s6 += YT[p, yc + 6]
        s7 += YT[p, yc + 7]
    return s0, s1, s2, s3, s4, s5, s6, s7


@njit(**_JIT)
def _outer4(X, xr, YT, yc, n):
    """:func:`_outer8` for four columns."""
    s0 = s1 = s2 = s3 = ZERO
    for p in range(n):
        a = X[xr, p]
        s0 += a * YT[p, yc]
        s1 += a * YT[p, yc + 1]
        s2 += a * YT[p, yc + 2]
        s3 += a * YT[p, yc + 3]
    return s0, s1, s2, s3


@njit(**_JIT)
def _colsum4(YT, yc, n):
    """:func:`_colsum8` for four columns."""
    s0 = s1 = s2 = s3 = ZERO
    for p in range(n):
        s0 += YT[p, yc]
        s1 += YT[p, yc + 1]
        s2 += YT[p, yc + 2]
        s3 += YT[p, yc + 3]
    return s0, s1, s2, s3


@njit(**_JIT)
def _dot1(X, xr, Y, yr, n):
    """``sum_p X[xr,p] * Y[yr,p]`` in ``p`` order."""
    s = ZERO
    for p in range(n):
        s += X[xr, p] * Y[yr, p]
    return s


@njit(**_JIT)
def _sum1(X, xr, n):
    s = ZERO
    for p in range(n):
        s += X[xr, p]
    return s


@njit(**_JIT)
def _axpy4(A, r, w0, w1, w2, w3, S, q, n):
    """``A[r+k, p] += w_k * S[q, p]`` for ``k < 4``: four rows per pass over the source row."""
    for p in range(n):
        a = S[q, p]
        A[r, p] = A[r, p] + w0 * a
        A[r + 1, p] = A[r + 1, p] + w1 * a
        A[r + 2, p] = A[r + 2, p] + w2 * a
        A[r + 3, p] = A[r + 3, p] + w3 * a


@njit(**_JIT)
def _axpy1(A, r, w, S, q, n):
    for p in range(n):
        A[r, p] = A[r, p] + w * S[q, p]


@njit(**_JIT)
def _forward(theta, sizes, n_layers, w_off, b_off, a_off, A, n):
    """Fill the activation rows of ``A`` for the first ``n`` points (input rows preset).

    Output rows are processed four at a time; each element still sums ``b + sum_i w_i a_i``
    in ``i`` order.
    """
    for layer in range(n_layers):
        fan_in, fan_out = sizes[layer], sizes[layer + 1]
        a_in, a_out, wo, bo = a_off[layer], a_off[layer + 1], w_off[layer], b_off[layer]
        for j in range(fan_out):
            bj = theta[bo + j]
            for p in range(n):
                A[a_out + j, p] = bj
        j = 0
        while j + 4 <= fan_out:
            for i in range(fan_in):
                k = wo + i * fan_out + j
                _axpy4(
                    A,
                    a_out + j,
                    theta[k],
                    theta[k + 1],
                    theta[k + 2],
                    theta[k + 3],
                    A,
                    a_in + i,
                    n,
                )
            j += 4
        while j < fan_out:
            for i in range(fan_in):
                _axpy1(A, a_out + j, theta[wo + i * fan_out + j], A, a_in + i, n)
            j += 1
        if layer < n_layers - 1:
            for r in range(a_out, a_out + fan_out):
                for p in range(n):
                    A[r, p] = rnd(act(A[r, p]))
        else:
            for r in range(a_out, a_out + fan_out):
                for p in range(n):
                    A[r, p] = rnd(A[r, p])


@njit(**_JIT)
def _loss(A, out_row, y, n, scratch):
    for p in range(n):
        scratch[0, p] = point_loss(A[out_row, p], y[p])
    return _sum16(scratch, 0, n) / dtype(n)


@njit(**_JIT)
def _backward(theta, sizes, n_layers, w_off, b_off, a_off, A, D, AT, DT, y, n, G):
    """Gradient of the mean loss over the first ``n`` points into ``G``."""
    out_row = a_off[n_layers]
    c = DELTA_NUMERATOR / dtype(n)
    for p in range(n):
        D[out_row, p] = rnd(c * point_delta(A[out_row, p], y[p]))
    for layer in range(n_layers - 1, -1, -1):
        fan_in, fan_out = sizes[layer], sizes[layer + 1]
        d_out, a_in, wo, bo = a_off[layer + 1], a_off[layer], w_off[layer], b_off[layer]
        # gb[j] = sum_p delta[j,p] and gW[i,j] = sum_p a_in[i,p]*delta[j,p], in p order,
        # eight (or four) weights per pass over j, then blocks of i for the last fan_out % 4
        for p in range(n):
            for j in range(fan_out):
                DT[p, j] = D[d_out + j, p]
        j8 = fan_out - fan_out % 8
        for j in range(0, j8, 8):
            s = _colsum8(DT, j, n)
            for k in range(8):
                G[bo + j + k] = s[k]
            for i in range(fan_in):
                s = _outer8(A, a_in + i, DT, j, n)
                for k in range(8):
                    G[wo + i * fan_out + j + k] = s[k]
        if j8 + 4 <= fan_out:  # a block of four more outputs
            s = _colsum4(DT, j8, n)
            for k in range(4):
                G[bo + j8 + k] = s[k]
            for i in range(fan_in):
                s = _outer4(A, a_in + i, DT, j8, n)
                for k in range(4):
                    G[wo + i * fan_out + j8 + k] = s[k]
            j8 += 4
        if j8 < fan_out:
            for p in range(n):
                for i in range(fan_in):
                    AT[p, i] = A[a_in + i, p]
            i8 = fan_in - fan_in % 8
            for j in range(j8, fan_out):
                G[bo + j] = _sum1(D, d_out + j, n)
                for i in range(0, i8, 8):
                    s = _outer8(D, d_out + j, AT, i, n)
                    for k in range(8):
                        G[wo + (i + k) * fan_out + j] = s[k]
                for i in range(i8, fan_in):
                    G[wo + i * fan_out + j] = _dot1(A, a_in + i, D, d_out + j, n)
        if layer == 0:
            break
        # delta_in[i] = (sum_j W[i,j] * delta[j]) * act'(a_in[i]), summed in j order
        for r in range(a_in, a_in + fan_in):
            for p in range(n):
                D[r, p] = ZERO
        i = 0
        while i + 4 <= fan_in:
            for j in range(fan_out):
                k = wo + i * fan_out + j
                _axpy4(
                    D,
                    a_in + i,
                    theta[k],
                    theta[k + fan_out],
                    theta[k + 2 * fan_out],
                    theta[k + 3 * fan_out],
                    D,
                    d_out + j,
                    n,
                )
            i += 4
        while i < fan_in:
            for j in range(fan_out):
                _axpy1(D, a_in + i, theta[wo + i * fan_out + j], D, d_out + j, n)
            i += 1
        for r in range(a_in, a_in + fan_in):
            for p in range(n):
                D[r, p] = rnd(D[r, p] * dact(A[r, p]))


@njit(**_JIT)
def _adam(theta, m, v, G, S, n_params, b1, b2, omb1, omb2, bc1, bc2, lrk, eps, wd, kscale):
    """One Adam update in place; ``G`` ends as ``g``, ``S`` as ``theta_t - theta_{t-1}``."""
    for k in range(n_params):
        th = theta[k]
        g = rnd(G[k] + wd * th)
        mk = rnd(b1 * m[k] + omb1 * g)
        vk = rnd(b2 * v[k] + omb2 * (g * g))
        u = (mk / bc1) / (math.sqrt(vk / bc2) + eps)
        new = rnd(th - rnd(lrk * (u / kscale)))
        m[k] = mk
        v[k] = vk
        theta[k] = new
        G[k] = g
        S[k] = new - th


@njit(**_JIT)
def _splitmix64(state):
    z = state + np.uint64(0x9E3779B97F4A7C15)
    x = z
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z, x ^ (x >> np.uint64(31))


@njit(**_JIT)
def _run(
    t_begin,
    t_end,
    row_base,
    upd_base,
    rec_every,
    sizes,
    n_layers,
    X,
    y,
    n_data,
    batch,
    rng,
    perm,
    pos,
    hyper,
    theta,
    m,
    v,
    powers,
    loss0,
    run_state,
    rec_idx,
    rec_theta,
    rec_m,
    rec_v,
    rec_loss,
    step_loss,
    grad_norm,
    update_norm,
    explode,
):
    """Advance one run from update ``t_begin+1`` to ``t_end``; returns the last update done."""
    n_params = 0
    w_off = np.empty(n_layers, np.int64)
    b_off = np.empty(n_layers, np.int64)
    a_off = np.empty(n_layers + 1, np.int64)
    units, width = 0, 0
    for layer in range(n_layers):
        w_off[layer] = n_params
        b_off[layer] = n_params + sizes[layer] * sizes[layer + 1]
        n_params = b_off[layer] + sizes[layer + 1]
    for layer in range(n_layers + 1):
        a_off[layer] = units
        units += sizes[layer]
        width = max(width, sizes[layer])
    d_in = sizes[0]
    minibatch = 0 < batch < n_data
    n_b = batch if minibatch else n_data
    A = np.zeros((units, n_data), dtype)
    D = np.zeros((units, n_data), dtype)
    AT = np.zeros((n_data, width), dtype)  # transposed copies for the gradient sums
    DT = np.zeros((n_data, width), dtype)
    GS = np.zeros((2, n_params), dtype)  # row 0: gradient g, row 1: theta_t - theta_{t-1}
    G, S = GS[0], GS[1]
    scratch = np.zeros((1, n_data), dtype)
    yb = np.empty(n_b, dtype)
    for i in range(d_in):
        for p in range(n_data):
            A[i, p] = X[i, p]
    b1, b2, lr, eps, wd, kscale = hyper[0], hyper[1], hyper[2], hyper[3], hyper[4], hyper[5]
    omb1, omb2, lrk = ONE - b1, ONE - b2, lr * kscale
    n_rec = rec_idx.shape[0]
    out_row = a_off[n_layers]
    for t in range(t_begin + 1, t_end + 1):
        # full-batch loss at theta_{t-1}, as contract 2 defines `loss`
        _forward(theta, sizes, n_layers, w_off, b_off, a_off, A, n_data)
        loss = _loss(A, out_row, y, n_data, scratch)
        if t == 1:
            loss0[0] = loss
        u = t - upd_base - 1
        step_loss[u] = loss
        exploded = loss0[0] > ZERO and loss > explode * loss0[0]
        if exploded or not math.isfinite(loss):
            run_state[0] = t
            return t
        if minibatch:
            if pos[0] == 0:
                state = rng[0]
                for i in range(n_data - 1, 0, -1):  # Fisher-Yates with a multiply-shift draw
                    state, r64 = _splitmix64(state)
                    j = np.int64(((r64 >> np.uint64(32)) * np.uint64(i + 1)) >> np.uint64(32))
                    tmp = perm[i]
                    perm[i] = perm[j]
                    perm[j] = tmp
                rng[0] = state
            nb = min(batch, n_data - pos[0])
            for p in range(nb):
                src = perm[pos[0] + p]
                for i in range(d_in):
                    A[i, p] = X[i, src]
                yb[p] = y[src]
            pos[0] = 0 if pos[0] + nb >= n_data else pos[0] + nb
            _forward(theta, sizes, n_layers, w_off, b_off, a_off, A, nb)
            _backward(theta, sizes, n_layers, w_off, b_off, a_off, A, D, AT, DT, yb, nb, G)
            for i in range(d_in):  # restore the full data for the next full-batch loss
                for p in range(nb):
                    A[i, p] = X[i, p]
        else:
            _backward(theta, sizes, n_layers, w_off, b_off, a_off, A, D, AT, DT, y, n_data, G)
        powers[0] = powers[0] * b1
        powers[1] = powers[1] * b2
        _adam(
            theta,
            m,
            v,
            G,
            S,
            n_params,
            b1,
            b2,
            omb1,
            omb2,
            ONE - powers[0],
            ONE - powers[1],
            lrk,
            eps,
            wd,
            kscale,
        )
        gn = math.sqrt(_dot16(GS, 0, GS, 0, n_params))
        un = math.sqrt(_dot16(GS, 1, GS, 1, n_params))
        grad_norm[u] = gn
        update_norm[u] = un
        if t % rec_every == 0:
            row = t // rec_every - 1 - row_base
            rec_loss[row] = loss
            for q in range(n_rec):
                k = rec_idx[q]
                if k >= 0:
                    rec_theta[row, q] = theta[k]
                    rec_m[row, q] = m[k]
                    rec_v[row, q] = v[k]
        if not (math.isfinite(gn) and math.isfinite(un)):
            run_state[0] = t
            return t
    return t_end


@njit(**_JIT_PARALLEL)
def _train_block(
    t_begin,
    t_end,
    row_base,
    upd_base,
    rec_every,
    sizes,
    n_layers,
    data_X,
    data_y,
    data_n,
    data_idx,
    batch,
    rng,
    perm,
    pos,
    hyper,
    theta,
    m,
    v,
    powers,
    loss0,
    diverged,
    rec_idx,
    rec_theta,
    rec_m,
    rec_v,
    rec_loss,
    step_loss,
    grad_norm,
    update_norm,
    explode,
):
    n_runs = theta.shape[0]
    for r in prange(n_runs):
        if diverged[r] >= 0 or t_end <= t_begin:
            continue
        d = data_idx[r]
        _run(
            t_begin,
            t_end,
            row_base,
            upd_base,
            rec_every,
            sizes[r],
            n_layers[r],
            data_X[d],
            data_y[d],
            data_n[d],
            batch[r],
            rng[r : r + 1],
            perm[r],
            pos[r : r + 1],
            hyper[r],
            theta[r],
            m[r],
            v[r],
            powers[r],
            loss0[r : r + 1],
            diverged[r : r + 1],
            rec_idx[r],
            rec_theta[r],
            rec_m[r],
            rec_v[r],
            rec_loss[r],
            step_loss[r],
            grad_norm[r],
            update_norm[r],
            explode,
        )


# --------------------------------------------------------------------------------------------
# Lane kernel: SIMD across runs. A block of LANES runs of the same architecture and data set
# (full batch) is laid out with the run as the innermost axis, so every operation is a whole
# vector and no sum is ever split. Each run performs exactly the operation sequence of the
# per-run kernel above (bias then inputs in i order; gradients summed sequentially over points;
# deltas summed in j order; loss and norms in the 16-way order of _sum16/_dot16), so the two
# kernels give bit-identical trajectories (tests/test_kernel_build.py checks this).

#: Runs per lane block: two (float32) or four (float64) 256-bit vectors.
LANES = 16


@njit(**_JIT)
def _lane_dot16(X, xr, Y, yr, n, out, k):
    """``out[k, w] = sum_p X[xr,p,w] * Y[yr,p,w]`` for every lane, summed in ``p`` order."""
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = s8 = s9 = s10 = s11 = s12 = s13 = s14 = s15 = ZERO
    for p in range(n):
        s0 += X[xr, p, 0] * Y[yr, p, 0]
        s1 += X[xr, p, 1] * Y[yr, p, 1]
        s2 += X[xr, p, 2] * Y[yr, p, 2]
        s3 += X[xr, p, 3] * Y[yr, p, 3]
        s4 += X[xr, p, 4] * Y[yr, p, 4]
        s5 += X[xr, p, 5] * Y[yr, p, 5]
        s6 += X[xr, p, 6] * Y[yr, p, 6]
        s7 += X[xr, p, 7] * Y[yr, p, 7]
        s8 += X[xr, p, 8] * Y[yr, p, 8]
        s9 += X[xr, p, 9] * Y[yr, p, 9]
        s10 += X[xr, p, 10] * Y[yr, p, 10]
        s11 += X[xr, p, 11] * Y[yr, p, 11]
        s12 += X[xr, p, 12] * Y[yr, p, 12]
        s13 += X[xr, p, 13] * Y[yr, p, 13]
        s14 += X[xr, p, 14] * Y[yr, p, 14]
        s15 += X[xr, p, 15] * Y[yr, p, 15]
    out[k, 0] = s0
    out[k, 1] = s1
    out[k, 2] = s2
    out[k, 3] = s3
    out[k, 4] = s4
    out[k, 5] = s5
    out[k, 6] = s6
    out[k, 7] = s7
    out[k, 8] = s8
    out[k, 9] = s9
    out[k, 10] = s10
    out[k, 11] = s11
    out[k, 12] = s12
    out[k, 13] = s13
    out[k, 14] = s14
    out[k, 15] = s15


@njit(**_JIT)
def _lane_sum16(X, xr, n, out, k):
    """``out[k, w] = sum_p X[xr,p,w]`` for every lane, summed in ``p`` order."""
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = s8 = s9 = s10 = s11 = s12 = s13 = s14 = s15 = ZERO
    for p in range(n):
        s0 += X[xr, p, 0]
        s1 += X[xr, p, 1]
        s2 += X[xr, p, 2]
        s3 += X[xr, p, 3]
        s4 += X[xr, p, 4]
        s5 += X[xr, p, 5]
        s6 += X[xr, p, 6]
        s7 += X[xr, p, 7]
        s8 += X[xr, p, 8]
        s9 += X[xr, p, 9]
        s10 += X[xr, p, 10]
        s11 += X[xr, p, 11]
        s12 += X[xr, p, 12]
        s13 += X[xr, p, 13]
        s14 += X[xr, p, 14]
        s15 += X[xr, p, 15]
    out[k, 0] = s0
    out[k, 1] = s1
    out[k, 2] = s2
    out[k, 3] = s3
    out[k, 4] = s4
    out[k, 5] = s5
    out[k, 6] = s6
    out[k, 7] = s7
    out[k, 8] = s8
    out[k, 9] = s9
    out[k, 10] = s10
    out[k, 11] = s11
    out[k, 12] = s12
    out[k, 13] = s13
    out[k, 14] = s14
    out[k, 15] = s15


@njit(**_JIT)
def _lane_comb16(theta, k0, stride, S, q0, count, p, out, r, init):
    """``out[r, p, w] = init[w] + sum_i theta[k0 + i*stride, w] * S[q0 + i, p, w]``, ``i`` in order.

    ``init`` is the bias row (forward pass) or a row of zeros (back-propagated deltas).
    """
    s0 = init[0]
    s1 = init[1]
    s2 = init[2]
    s3 = init[3]
    s4 = init[4]
    s5 = init[5]
    s6 = init[6]
    s7 = init[7]
    s8 = init[8]
    s9 = init[9]
    s10 = init[10]
    s11 = init[11]
    s12 = init[12]
    s13 = init[13]
    s14 = init[14]
    s15 = init[15]
    for i in range(count):
        k = k0 + i * stride
        q = q0 + i
        s0 += theta[k, 0] * S[q, p, 0]
        s1 += theta[k, 1] * S[q, p, 1]
        s2 += theta[k, 2] * S[q, p, 2]
        s3 += theta[k, 3] * S[q, p, 3]
        s4 += theta[k, 4] * S[q, p, 4]
        s5 += theta[k, 5] * S[q, p, 5]
        s6 += theta[k, 6] * S[q, p, 6]
        s7 += theta[k, 7] * S[q, p, 7]
        s8 += theta[k, 8] * S[q, p, 8]
        s9 += theta[k, 9] * S[q, p, 9]
        s10 += theta[k, 10] * S[q, p, 10]
        s11 += theta[k, 11] * S[q, p, 11]
        s12 += theta[k, 12] * S[q, p, 12]
        s13 += theta[k, 13] * S[q, p, 13]
        s14 += theta[k, 14] * S[q, p, 14]
        s15 += theta[k, 15] * S[q, p, 15]
    out[r, p, 0] = s0
    out[r, p, 1] = s1
    out[r, p, 2] = s2
    out[r, p, 3] = s3
    out[r, p, 4] = s4
    out[r, p, 5] = s5
    out[r, p, 6] = s6
    out[r, p, 7] = s7
    out[r, p, 8] = s8
    out[r, p, 9] = s9
    out[r, p, 10] = s10
    out[r, p, 11] = s11
    out[r, p, 12] = s12
    out[r, p, 13] = s13
    out[r, p, 14] = s14
    out[r, p, 15] = s15


@njit(**_JIT)
def _lane_forward(theta, sizes, n_layers, w_off, b_off, a_off, A, n):
    for layer in range(n_layers):
        fan_in, fan_out = sizes[layer], sizes[layer + 1]
        a_in, a_out, wo, bo = a_off[layer], a_off[layer + 1], w_off[layer], b_off[layer]
        for j in range(fan_out):
            r = a_out + j
            bias = theta[bo + j]
            for p in range(n):
                _lane_comb16(theta, wo + j, fan_out, A, a_in, fan_in, p, A, r, bias)
            if layer < n_layers - 1:
                for p in range(n):
                    for w in range(LANES):
                        A[r, p, w] = rnd(act(A[r, p, w]))
            else:
                for p in range(n):
                    for w in range(LANES):
                        A[r, p, w] = rnd(A[r, p, w])


@njit(**_JIT)
def _lane_backward(theta, sizes, n_layers, w_off, b_off, a_off, A, D, y, n, G, zeros):
    out_row = a_off[n_layers]
    c = DELTA_NUMERATOR / dtype(n)
    for p in range(n):
        for w in range(LANES):
            D[out_row, p, w] = rnd(c * point_delta(A[out_row, p, w], y[p]))
    for layer in range(n_layers - 1, -1, -1):
        fan_in, fan_out = sizes[layer], sizes[layer + 1]
        d_out, a_in, wo, bo = a_off[layer + 1], a_off[layer], w_off[layer], b_off[layer]
        for j in range(fan_out):
            _lane_sum16(D, d_out + j, n, G, bo + j)
        for i in range(fan_in):
            for j in range(fan_out):
                _lane_dot16(A, a_in + i, D, d_out + j, n, G, wo + i * fan_out + j)
        if layer == 0:
            break
        for i in range(fan_in):
            r = a_in + i
            for p in range(n):
                _lane_comb16(theta, wo + i * fan_out, 1, D, d_out, fan_out, p, D, r, zeros)
                for w in range(LANES):
                    D[r, p, w] = rnd(D[r, p, w] * dact(A[r, p, w]))


@njit(**_JIT)
def _lane_loss_sum(X, n, w, s):
    """Lane ``w`` of ``X[:n, w]`` summed in the order of :func:`_sum16` (``s``: 16 scratch)."""
    s[:] = ZERO
    p = 0
    while p + 16 <= n:
        for k in range(16):
            s[k] += X[p + k, w]
        p += 16
    while p < n:
        s[0] += X[p, w]
        p += 1
    return (((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]))) + (
        ((s[8] + s[9]) + (s[10] + s[11])) + ((s[12] + s[13]) + (s[14] + s[15]))
    )


@njit(**_JIT)
def _lane_block(t_begin, t_end, row_base, upd_base, rec_every, sizes, n_layers, X, y, n_data,
                hyper, theta, m, v, powers, loss0, diverged, rec_idx, rec_theta, rec_m, rec_v,
                rec_loss, step_loss, grad_norm, update_norm, explode):  # fmt: skip
    """Advance one lane block (arrays with runs as the last axis) from ``t_begin`` to ``t_end``."""
    n_params = 0
    w_off = np.empty(n_layers, np.int64)
    b_off = np.empty(n_layers, np.int64)
    a_off = np.empty(n_layers + 1, np.int64)
    units = 0
    for layer in range(n_layers):
        w_off[layer] = n_params
        b_off[layer] = n_params + sizes[layer] * sizes[layer + 1]
        n_params = b_off[layer] + sizes[layer + 1]
    for layer in range(n_layers + 1):
        a_off[layer] = units
        units += sizes[layer]
    A = np.zeros((units, n_data, LANES), dtype)
    D = np.zeros((units, n_data, LANES), dtype)
    G = np.zeros((n_params, LANES), dtype)
    S = np.zeros((n_params, LANES), dtype)
    PL = np.zeros((n_data, LANES), dtype)  # per-point losses
    zeros = np.zeros(LANES, dtype)
    acc16 = np.zeros(16, dtype)  # partial sums of the 16-way loss and norm order
    for i in range(sizes[0]):
        for p in range(n_data):
            for w in range(LANES):
                A[i, p, w] = X[i, p]
    omb1 = np.empty(LANES, dtype)
    omb2 = np.empty(LANES, dtype)
    lrk = np.empty(LANES, dtype)
    for w in range(LANES):
        omb1[w] = ONE - hyper[0, w]
        omb2[w] = ONE - hyper[1, w]
        lrk[w] = hyper[2, w] * hyper[5, w]
    n_rec = rec_idx.shape[0]
    out_row = a_off[n_layers]
    active = np.empty(LANES, np.bool_)
    for t in range(t_begin + 1, t_end + 1):
        _lane_forward(theta, sizes, n_layers, w_off, b_off, a_off, A, n_data)
        for p in range(n_data):
            for w in range(LANES):
                PL[p, w] = point_loss(A[out_row, p, w], y[p])
        u = t - upd_base - 1
        n_active = 0
        for w in range(LANES):
            active[w] = diverged[w] < 0
            if not active[w]:
                continue
            loss = _lane_loss_sum(PL, n_data, w, acc16) / dtype(n_data)
            if t == 1:
                loss0[w] = loss
            step_loss[w, u] = loss
            if t % rec_every == 0:
                rec_loss[w, t // rec_every - 1 - row_base] = loss
            exploded = loss0[w] > ZERO and loss > explode * loss0[w]
            if exploded or not math.isfinite(loss):
                diverged[w] = t
                active[w] = False
                if t % rec_every == 0:  # as the per-run kernel: no loss recorded for this row
                    rec_loss[w, t // rec_every - 1 - row_base] = np.nan
            else:
                n_active += 1
        if n_active == 0:
            return
        _lane_backward(theta, sizes, n_layers, w_off, b_off, a_off, A, D, y, n_data, G, zeros)
        for w in range(LANES):
            powers[0, w] = powers[0, w] * hyper[0, w]
            powers[1, w] = powers[1, w] * hyper[1, w]
        for k in range(n_params):
            for w in range(LANES):
                th = theta[k, w]
                g = rnd(G[k, w] + hyper[4, w] * th)
                mk = rnd(hyper[0, w] * m[k, w] + omb1[w] * g)
                vk = rnd(hyper[1, w] * v[k, w] + omb2[w] * (g * g))
                uu = (mk / (ONE - powers[0, w])) / (
                    math.sqrt(vk / (ONE - powers[1, w])) + hyper[3, w]
                )
                new = rnd(th - rnd(lrk[w] * (uu / hyper[5, w])))
                keep = active[w]  # select, not branch, so the loop vectorises
                m[k, w] = mk if keep else m[k, w]
                v[k, w] = vk if keep else v[k, w]
                theta[k, w] = new if keep else th
                G[k, w] = g
                S[k, w] = new - th
        for w in range(LANES):
            if not active[w]:
                continue
            gn = math.sqrt(_lane_norm_sq(G, n_params, w, acc16))
            un = math.sqrt(_lane_norm_sq(S, n_params, w, acc16))
            grad_norm[w, u] = gn
            update_norm[w, u] = un
            if t % rec_every == 0:
                row = t // rec_every - 1 - row_base
                for q in range(n_rec):
                    k = rec_idx[q]
                    if k >= 0:
                        rec_theta[w, row, q] = theta[k, w]
                        rec_m[w, row, q] = m[k, w]
                        rec_v[w, row, q] = v[k, w]
            if not (math.isfinite(gn) and math.isfinite(un)):
                diverged[w] = t


@njit(**_JIT)
def _lane_norm_sq(X, n, w, s):
    """Lane ``w`` of ``sum_k X[k,w]^2`` over ``k < n`` in the order of :func:`_dot16`."""
    s[:] = ZERO
    k = 0
    while k + 16 <= n:
        for l in range(16):
            s[l] += X[k + l, w] * X[k + l, w]
        k += 16
    while k < n:
        s[0] += X[k, w] * X[k, w]
        k += 1
    return (((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]))) + (
        ((s[8] + s[9]) + (s[10] + s[11])) + ((s[12] + s[13]) + (s[14] + s[15]))
    )


@njit(**_JIT_PARALLEL)
def _train_lanes(t_begin, t_end, row_base, upd_base, rec_every, sizes, n_layers, X, y, n_data,
                 hyper, theta, m, v, powers, loss0, diverged, rec_idx, rec_theta, rec_m, rec_v,
                 rec_loss, step_loss, grad_norm, update_norm, explode):  # fmt: skip
    """Advance lane blocks (first axis) in parallel; all blocks share architecture and data."""
    for b in prange(theta.shape[0]):
        _lane_block(t_begin, t_end, row_base, upd_base, rec_every, sizes, n_layers, X, y,
                    n_data, hyper[b], theta[b], m[b], v[b], powers[b], loss0[b], diverged[b],
                    rec_idx, rec_theta[b], rec_m[b], rec_v[b], rec_loss[b], step_loss[b],
                    grad_norm[b], update_norm[b], explode)  # fmt: skip
