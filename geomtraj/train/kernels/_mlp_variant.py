FMT, ACTIVATION, LOSS = "float64", "tanh", "mse"  # rewritten for each variant; see mlp.py
# ruff: noqa: E402, F821  (the first line must stay the variant assignment; mlp.py appends the
# generated loops _run_affine, _lane_affine and _lane_dots, and RUN_VECTOR)
# One compiled variant of the training kernel (template).
#
# :mod:`geomtraj.train.kernels.mlp` writes a copy of this file per ``(FMT, ACTIVATION, LOSS)``,
# with the
# first line replaced, and imports it; numba then caches the compiled functions on disk next to that
# copy. Every constant below is a module global of the run's dtype, which numba freezes into the
# compiled code, so a float32 variant contains no float64 arithmetic. The arithmetic order is
# documented in :mod:`geomtraj.train.kernels.mlp`.

import math

import numpy as np
from numba import njit, prange

from geomtraj.constants import TRAIN_JIT, TRAIN_JIT_PARALLEL
from geomtraj.formats import get_format
from geomtraj.runtable import KERNEL_COLUMNS
from geomtraj.train.kernels.adam import make_adam_update
from geomtraj.train.kernels.fpmath import make_fpmath
from geomtraj.train.kernels.rounding import get_rounder

_JIT = {**TRAIN_JIT, "cache": True}
_JIT_PARALLEL = {**TRAIN_JIT_PARALLEL, "cache": True}

dtype = get_format(FMT).compute_dtype
fp = make_fpmath(dtype)
rnd = get_rounder(FMT)
adam_update = make_adam_update(FMT)  # the one Adam update of every kernel below
fp_tanh, fp_sigmoid, fp_exp_pos = fp.tanh, fp.sigmoid, fp.exp_pos
ZERO, ONE, TWO = dtype(0), dtype(1), dtype(2)
# Columns of the per-run hyper-parameter array ``hyper``, by name, from the run table's
# declaration (geomtraj.runtable); numba freezes these module globals into the compiled code.
H_BETA1, H_BETA2, H_LR, H_EPS, H_WEIGHT_DECAY, H_KSCALE = (
    KERNEL_COLUMNS[name] for name in ("beta1", "beta2", "lr", "eps", "weight_decay", "kscale")
)
if len(KERNEL_COLUMNS) != 6:
    raise ValueError(f"the kernel reads 6 hyper-parameter columns, the run table declares "
                     f"{list(KERNEL_COLUMNS)}")  # fmt: skip

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
def _forward(theta, sizes, n_layers, w_off, b_off, a_off, A, n):
    """Fill the activation rows of ``A`` for the first ``n`` points (input rows preset).

    Each element sums ``b + sum_i w_i a_i`` in ``i`` order (:func:`_run_affine`, which also fills
    the padding columns of ``A`` up to a whole vector of points; nothing reads them).
    """
    for layer in range(n_layers):
        fan_in, fan_out = sizes[layer], sizes[layer + 1]
        a_out = a_off[layer + 1]
        _run_affine(theta, w_off[layer], 1, fan_out, A, a_off[layer], fan_in, n, A, a_out,
                    fan_out, b_off[layer], True)  # fmt: skip
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
        _run_affine(theta, wo, fan_out, 1, D, d_out, fan_out, n, D, a_in, fan_in, 0, False)
        for r in range(a_in, a_in + fan_in):
            for p in range(n):
                D[r, p] = rnd(D[r, p] * dact(A[r, p]))


@njit(**_JIT)
def _adam(theta, m, v, G, S, n_params, b1, b2, omb1, omb2, bc1, bc2, lrk, eps, wd, kscale):
    """One Adam update (:func:`adam_update`) in place; ``G`` ends as ``g``, ``S`` as
    ``theta_t - theta_{t-1}``."""
    for k in range(n_params):
        th = theta[k]
        new, mk, vk, g = adam_update(
            th, m[k], v[k], G[k], b1, b2, omb1, omb2, bc1, bc2, lrk, eps, wd, kscale
        )
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
    n_pad = -(-n_data // RUN_VECTOR) * RUN_VECTOR  # whole vectors of points (_run_affine)
    A = np.zeros((units, n_pad), dtype)
    D = np.zeros((units, n_pad), dtype)
    AT = np.zeros((n_data, width), dtype)  # transposed copies for the gradient sums
    DT = np.zeros((n_data, width), dtype)
    GS = np.zeros((2, n_params), dtype)  # row 0: gradient g, row 1: theta_t - theta_{t-1}
    G, S = GS[0], GS[1]
    scratch = np.zeros((1, n_data), dtype)
    yb = np.empty(n_b, dtype)
    for i in range(d_in):
        for p in range(n_data):
            A[i, p] = X[i, p]
    b1, b2, lr = hyper[H_BETA1], hyper[H_BETA2], hyper[H_LR]
    eps, wd, kscale = hyper[H_EPS], hyper[H_WEIGHT_DECAY], hyper[H_KSCALE]
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
#
# Activations and deltas are 2-D: row ``unit*ns + point``, one column per lane. The two inner
# loops that carry the matrix products, ``_lane_affine`` and ``_lane_dots``, are unrolled over the
# lanes and over a register tile of independent sums (mlp.LANE_TILES); geomtraj.train.kernels.mlp
# generates them and appends them to each variant. What makes LLVM vectorise without fastmath
# (each was measured):
# * hot loops index with unsigned integers or run from 0 over a slice: a signed index that may be
#   negative costs numba's wraparound select on every access and blocks vectorisation;
# * a loop stores into one array and loads only from it and from arrays it never writes in that
#   loop, or loads first into locals; otherwise LLVM must assume the arrays overlap;
# * per-lane choices are selects between loaded values (``x if keep else old``), not branches.

#: Runs per lane block: two (float32) or four (float64) 256-bit vectors.
LANES = 16
#: Column offsets of m, v, g and the step in the lane kernel's per-parameter rows (theta: 0).
COL_M, COL_V, COL_G, COL_S = LANES, 2 * LANES, 3 * LANES, 4 * LANES
ONE_U = np.uint64(1)


@njit(**_JIT)
def _lane_forward(theta, sizes, n_layers, w_off, b_off, a_off, A, n, ns):
    """Activation rows of ``A`` (``(unit*ns + point, lane)``) for the preset input rows."""
    for layer in range(n_layers):
        fan_in, fan_out = sizes[layer], sizes[layer + 1]
        a_out = a_off[layer + 1]
        _lane_affine(theta, w_off[layer], 1, fan_out, A, a_off[layer], fan_in, n, ns, A, a_out,
                     fan_out, theta, b_off[layer], 1)  # fmt: skip
        for u in range(a_out, a_out + fan_out):
            z = A.reshape(A.size)[u * ns * LANES : (u * ns + n) * LANES]
            if layer < n_layers - 1:
                for e in range(z.size):
                    z[e] = rnd(act(z[e]))
            else:
                for e in range(z.size):
                    z[e] = rnd(z[e])


@njit(**_JIT)
def _lane_copy(src, s0, dst, d0, rows):
    """``rows`` rows of ``src`` from row ``s0`` into ``dst`` from row ``d0`` (both ``(rows,
    LANES)``), as one flat loop."""
    s = src.reshape(src.size)[s0 * LANES : (s0 + rows) * LANES]
    d = dst.reshape(dst.size)[d0 * LANES : (d0 + rows) * LANES]
    for e in range(s.size):  # (from 0: no negative-index wraparound, so it vectorises)
        d[e] = s[e]


@njit(**_JIT)
def _lane_scale_dact(A, D, r0, rows):
    """``D = rnd(D * act'(A))`` on ``rows`` rows from ``r0``, as one flat loop (it vectorises)."""
    a = A.reshape(A.size)[r0 * LANES : (r0 + rows) * LANES]
    d = D.reshape(D.size)[r0 * LANES : (r0 + rows) * LANES]
    for e in range(a.size):
        d[e] = rnd(d[e] * dact(a[e]))


@njit(**_JIT)
def _lane_backward(theta, sizes, n_layers, w_off, b_off, a_off, A, D, y, n, ns, zeros, ones_row):
    """Gradient of the mean loss into columns ``COL_G:`` of ``theta`` (the per-parameter rows).

    ``A`` unit ``ones_row`` holds ones: the bias gradient ``sum_p 1*delta_p`` is then the same
    loop as the weights', and bit-identical to the plain sum because ``1*x == x`` exactly.
    """
    out_row = a_off[n_layers]
    c = DELTA_NUMERATOR / dtype(n)
    _lane_copy(A, out_row * ns, D, out_row * ns, n)  # then in place: no loads from A
    for p in range(n):
        e = out_row * ns + p
        for w in range(LANES):
            D[e, w] = rnd(c * point_delta(D[e, w], y[p]))
    for layer in range(n_layers - 1, -1, -1):
        fan_in, fan_out = sizes[layer], sizes[layer + 1]
        d_out, a_in, wo = a_off[layer + 1], a_off[layer], w_off[layer]
        _lane_dots(A, a_in, fan_in, ones_row, D, d_out, fan_out, n, ns, theta, wo, b_off[layer])
        if layer == 0:
            break
        _lane_affine(theta, wo, fan_out, 1, D, d_out, fan_out, n, ns, D, a_in, fan_in, zeros, 0,
                     0)  # fmt: skip
        for u in range(a_in, a_in + fan_in):
            _lane_scale_dact(A, D, u * ns, n)


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
    # (unit*ns + point, lane); last unit: ones. Units are ns rows apart, ns odd: with float32
    # rows of 64 bytes, a stride that is a multiple of 4096 bytes (n = 64) would put every
    # unit's row of one point in the same cache set (measured: the products ran 10-20% slower)
    ns = n_data | 1
    A = np.zeros(((units + 1) * ns, LANES), dtype)
    D = np.zeros((units * ns, LANES), dtype)
    A[units * ns :] = ONE
    # One row per parameter: theta | m | v | g | theta_t - theta_{t-1}, LANES columns each. In one
    # array, at fixed column offsets, LLVM can tell that the Adam update's loads and stores never
    # overlap, and vectorises it across the lanes.
    ST = np.zeros((n_params, 5 * LANES), dtype)
    for k in range(n_params):
        for w in range(LANES):
            ST[k, w] = theta[k, w]
            ST[k, COL_M + w] = m[k, w]
            ST[k, COL_V + w] = v[k, w]
    PL = np.zeros((n_data, LANES), dtype)  # per-point losses
    zeros = np.zeros((1, LANES), dtype)
    acc16 = np.zeros((16, LANES), dtype)  # partial sums of the 16-way loss and norm order
    ones = A[units * ns :]  # (ns, LANES) of ones: sum_p 1*loss_p is the plain sum
    lsum = np.empty(LANES, dtype)
    gsq = np.empty(LANES, dtype)
    usq = np.empty(LANES, dtype)
    for i in range(sizes[0]):
        for p in range(n_data):
            for w in range(LANES):
                A[i * ns + p, w] = X[i, p]
    # per-lane Adam constants, one row each (read from an array, the update loop vectorises)
    CO = np.empty((11, LANES), dtype)
    for w in range(LANES):
        CO[0, w] = hyper[H_BETA1, w]
        CO[1, w] = hyper[H_BETA2, w]
        CO[2, w] = ONE - hyper[H_BETA1, w]
        CO[3, w] = ONE - hyper[H_BETA2, w]
        CO[4, w] = hyper[H_EPS, w]
        CO[5, w] = hyper[H_WEIGHT_DECAY, w]
        CO[6, w] = hyper[H_LR, w] * hyper[H_KSCALE, w]  # lr*k
        CO[7, w] = hyper[H_KSCALE, w]  # k
    n_rec = rec_idx.shape[0]
    out_row = a_off[n_layers]
    active = np.empty(LANES, np.bool_)
    for t in range(t_begin + 1, t_end + 1):
        _lane_forward(ST, sizes, n_layers, w_off, b_off, a_off, A, n_data, ns)
        _lane_copy(A, out_row * ns, PL, 0, n_data)  # then in place: no loads from A
        for p in range(n_data):
            for w in range(LANES):
                PL[p, w] = point_loss(PL[p, w], y[p])
        _lane_dot16(PL, 0, ones, 0, n_data, acc16, lsum)
        u = t - upd_base - 1
        n_active = 0
        for w in range(LANES):
            active[w] = diverged[w] < 0
            if not active[w]:
                continue
            loss = lsum[w] / dtype(n_data)
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
            break
        _lane_backward(ST, sizes, n_layers, w_off, b_off, a_off, A, D, y, n_data, ns, zeros,
                       units)  # fmt: skip
        for w in range(LANES):
            powers[0, w] = powers[0, w] * hyper[H_BETA1, w]
            powers[1, w] = powers[1, w] * hyper[H_BETA2, w]
            CO[8, w] = ONE - powers[0, w]
            CO[9, w] = ONE - powers[1, w]
            CO[10, w] = ONE if active[w] else ZERO
        for k in range(n_params):
            for w in range(LANES):
                th = ST[k, w]
                mo = ST[k, COL_M + w]
                vo = ST[k, COL_V + w]
                new, mk, vk, g = adam_update(th, mo, vo, ST[k, COL_G + w], CO[0, w], CO[1, w],
                                             CO[2, w], CO[3, w], CO[8, w], CO[9, w], CO[6, w],
                                             CO[4, w], CO[5, w], CO[7, w])  # fmt: skip
                keep = CO[10, w] != ZERO  # a select on loaded values: the loop vectorises
                ST[k, w] = new if keep else th
                ST[k, COL_M + w] = mk if keep else mo
                ST[k, COL_V + w] = vk if keep else vo
                ST[k, COL_G + w] = g
                ST[k, COL_S + w] = new - th
        _lane_dot16(ST, COL_G, ST, COL_G, n_params, acc16, gsq)
        _lane_dot16(ST, COL_S, ST, COL_S, n_params, acc16, usq)
        for w in range(LANES):
            if not active[w]:
                continue
            gn = math.sqrt(gsq[w])
            un = math.sqrt(usq[w])
            grad_norm[w, u] = gn
            update_norm[w, u] = un
            if t % rec_every == 0:
                row = t // rec_every - 1 - row_base
                for q in range(n_rec):
                    k = rec_idx[q]
                    if k >= 0:
                        rec_theta[w, row, q] = ST[k, w]
                        rec_m[w, row, q] = ST[k, COL_M + w]
                        rec_v[w, row, q] = ST[k, COL_V + w]
            if not (math.isfinite(gn) and math.isfinite(un)):
                diverged[w] = t
    for k in range(n_params):
        for w in range(LANES):
            theta[k, w] = ST[k, w]
            m[k, w] = ST[k, COL_M + w]
            v[k, w] = ST[k, COL_V + w]


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
