"""Compiled training kernels: MLP forward/backward passes and the Adam update.

Every function here is JIT-compiled with :data:`geomtraj.constants.TRAIN_JIT` (never ``fastmath``).
Kernels are built per ``(dtype, fmt, activation, loss)`` by :func:`get_train_kernel`, so that every
constant is a typed closure constant: a float32 run never sees a float64 literal.

Arithmetic order, fixed for every run and independent of thread count:

* Forward, layer ``l``, unit ``j``: ``z = b[j]``, then ``z = z + W[i,j]*a_in[i]`` for ``i = 0..``;
  hidden layers apply the activation; the output layer is linear.
* Loss: MSE ``sum_p (f_p - y_p)^2 / n``; BCE ``sum_p (max(f,0) - f*y + log1p(exp(-|f|))) / n``.
  The sum over points and the gradient/update norms use 16 interleaved partial sums
  (index mod 16, each in index order; the tail joins the first) combined by a fixed pairwise tree.
* Output delta: MSE ``(2/n) * (f - y)``; BCE ``(1/n) * (sigmoid(f) - y)``.
* Gradients: ``gb[j] = sum_p delta[j,p]`` and ``gW[i,j] = sum_p a_in[i,p]*delta[j,p]``, each a
  sequential sum over ``p = 0..n-1``;
  ``delta_in[i,p] = (sum_j W[i,j]*delta[j,p]) * act'(a_in[i,p])`` summed in ``j`` order, with the
  derivative taken from the activation value (``1-a^2``, ``a*(1-a)``, ``a>0``).
* Adam (textbook, as ``torch.optim.Adam`` with ``amsgrad=False``), per parameter: the one
  function :func:`geomtraj.train.kernels.adam.make_adam_update`, which both kernels call, with
  ``beta^t`` kept as a running product in the run dtype. Its hyper-parameters come from the
  per-run array ``hyper``, whose columns the run table declares (:data:`HYPER_COLUMNS`).

Emulated ``bfloat16``/``float16`` runs compute in float32 and round to the format (round to nearest
even) at these points: every activation (including the network output), every back-propagated
delta, and in the Adam update the gradient ``g`` after weight decay, ``m`` and ``v``, the step
``(lr*k)*(u/k)`` and ``theta`` (docs/formats.md). Hyper-parameters, bias corrections, the loss and
the norms stay in float32.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
from functools import cache
from pathlib import Path

import llvmlite
import numba

from geomtraj import __version__
from geomtraj.constants import LANES, SLP_VECTORIZE
from geomtraj.runtable import KERNEL_COLUMNS

#: Columns of the per-run hyper-parameter array passed to the kernel, from the run table.
HYPER_COLUMNS = tuple(KERNEL_COLUMNS)

_HERE = Path(__file__).resolve().parent
_TEMPLATE = _HERE / "_mlp_variant.py"
#: Sources whose change must invalidate compiled kernels (numba does not track callees).
_SOURCES = (
    "_mlp_variant.py",
    "mlp.py",
    "adam.py",
    "fpmath.py",
    "rounding.py",
    "../../constants.py",
    "../../formats.py",
    "../../runtable.py",
)

#: Register tiles of the lane kernel's matrix products, ``(points, rows, inputs)`` per precision
#: (bfloat16 and float16 compute in float32). ``_lane_affine`` computes ``rows`` output rows at
#: ``points`` points in each pass over its inputs; ``_lane_dots`` the gradients of ``inputs``
#: input rows and ``points`` output rows in each pass over the data points. Every value is one
#: running sum per lane, so a tile keeps ``points * rows`` (``points * inputs``) vectors of sums
#: in registers and loads each operand once for all of them. Measured on widths (12, 24), 1024
#: runs, 2 threads, network-step time per core: float32 (4, 1, 1) 6.20 us, (4, 2, 2) 5.79,
#: (4, 3, 2) 5.62, (4, 3, 3) 5.36-5.41, (4, 3, 4) 6.15, (3, 3, 4) 6.02, (2, 3, 6) 5.81, and
#: (4, 4, 1) 7.10 (registers spill); float64, whose lane rows are twice as wide, (4, 1, 1)
#: 14.37, (2, 2, 2) 14.08, (2, 3, 3) 14.33.
LANE_TILES = {"float64": (2, 2, 2), "float32": (4, 3, 3)}
#: Points per vector and output rows per pass of the per-run kernel's products (``_run_affine``):
#: float32 (24,24) on 64 points went from 22.1 to 14.6 us per step; vectors of 8, 16 and 32 points
#: gave 28.0, 26.8 and 26.8 us at (40,40), so 16.
RUN_VECTOR, RUN_GROUP = 16, 4


def cache_dir() -> Path:
    """Where generated kernel modules and numba's compiled code live.

    ``$GEOMTRAJ_CACHE_DIR`` if set, else ``~/.cache/geomtraj``; a temporary directory when neither
    is writable (then nothing persists between processes).
    """
    env = os.environ.get("GEOMTRAJ_CACHE_DIR")
    root = Path(env) if env else Path.home() / ".cache" / "geomtraj"
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / ".write-test"
        probe.touch()
        probe.unlink()
        return root
    except OSError:
        return Path(tempfile.mkdtemp(prefix="geomtraj-kernels-"))


def _fingerprint() -> str:
    h = hashlib.sha256()
    for name in _SOURCES:
        h.update((_HERE / name).read_bytes())
    h.update(
        f"{__version__} {numba.__version__} {llvmlite.__version__} slp={SLP_VECTORIZE}".encode()
    )
    return h.hexdigest()[:16]


@cache
def get_kernels(fmt: str, activation: str, loss: str):
    """The compiled kernel module for one precision format, activation and loss.

    Its ``_train_block`` advances runs one per thread (any architectures); its ``_train_lanes``
    advances blocks of ``LANES`` runs of one architecture with the run as the vector axis. Both
    perform the same operations in the same order for every run. The first call in a fresh cache
    compiles (10-20 s per kernel); later processes load the compiled code from disk.
    """
    name = f"mlp_{fmt}_{activation}_{loss}_{_fingerprint()}"
    path = cache_dir() / "kernels" / f"{name}.py"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = _TEMPLATE.read_text().splitlines(keepends=True)
        first = f"FMT, ACTIVATION, LOSS = {fmt!r}, {activation!r}, {loss!r}  # generated\n"
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tile = LANE_TILES["float64" if fmt == "float64" else "float32"]
        generated = run_loops_source(RUN_VECTOR, RUN_GROUP) + lane_loops_source(LANES, *tile)
        tmp.write_text(first + "".join(lines[1:]) + generated)
        os.replace(tmp, path)  # atomic: concurrent processes see a whole file or none
    module_name = f"geomtraj._kernels.{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


def get_train_kernel(fmt: str, activation: str, loss: str):
    """The per-run block kernel ``_train_block`` of :func:`get_kernels`."""
    return get_kernels(fmt, activation, loss)._train_block


def _block(indent: int, lines) -> str:
    return "".join(" " * indent + line + "\n" for line in lines)


def run_loops_source(vec: int, group: int) -> str:
    """Source of the per-run kernel's matrix-product loop ``_run_affine``, unrolled.

    ``out[r0 + o, p] = (theta[b0 + o] if bias else 0) + sum_i theta[k0 + o*kstep + i*kstride]
    * S[q0 + i, p]`` (``i = 0 .. count-1`` in order) for every row ``o < rows`` and point
    ``p < n``: the forward pass (``bias`` true) and back-propagation (``kstep = fan_out``,
    ``kstride = 1``). Points go in vectors of ``vec``, so the arrays need columns up to ``n``
    rounded up to ``vec`` (``RUN_VECTOR``, defined here); the extra columns get values nothing
    reads. ``group`` rows share each load of ``S``; a short last group repeats its last row.
    """
    g, lane = range(group), range(vec)
    block = _block
    return (
        "\n\n# ---- generated by geomtraj.train.kernels.mlp.run_loops_source"
        f"(vec={vec}, group={group})"
        f" ----\nRUN_VECTOR = {vec}\n\n\n"
        "@njit(**_JIT)\n"
        "def _run_affine(theta, k0, kstep, kstride, S, q0, count, n, out, r0, rows, b0, bias):\n"
        + block(4, ["ks = np.uint64(kstride)", f"for o in range(0, rows, {group}):"])
        + block(8, [f"o{j} = min(o + {j}, rows - 1)" for j in g])
        + block(8, [f"z{j} = theta[b0 + o{j}] if bias else ZERO" for j in g])
        + block(8, [f"for p in range(0, n, {vec}):"])
        + block(12, ["pu = np.uint64(p)", "q = np.uint64(q0)"])
        + block(12, [f"w{j} = np.uint64(k0 + o{j} * kstep)" for j in g])
        + block(12, [" = ".join(f"s{j}_{w}" for w in lane) + f" = z{j}" for j in g])
        + block(12, ["for _ in range(count):"])
        + block(16, [f"c{w} = S[q, pu + np.uint64({w})]" for w in lane])
        + block(16, [f"t{j} = theta[w{j}]" for j in g])
        + block(16, [f"s{j}_{w} += t{j} * c{w}" for j in g for w in lane])
        + block(16, ["q += ONE_U"] + [f"w{j} += ks" for j in g])
        + block(12, [f"out[r0 + o{j}, pu + np.uint64({w})] = s{j}_{w}" for j in g for w in lane])
    )


def lane_loops_source(lanes: int, points: int, rows: int, inputs: int) -> str:
    """Source of the lane kernel's two product loops, unrolled over ``lanes`` and a register tile.

    Written out as scalar statements, one per lane, that LLVM's SLP vectoriser packs into vectors:
    the sums stay in registers, each in the order of the per-run kernel. Activation and delta rows
    are ``unit*ns + point`` (``ns >= n``, the row stride of a unit).

    * ``_lane_affine``: ``out[(r0+o)*ns + p] = init[i0 + o*istep]
      + sum_i theta[k0 + o*kstep + i*kstride] * S[(q0+i)*ns + p]`` (``i`` in order) for every
      row ``o < rows``, point ``p < n`` and lane. The forward pass passes the biases as ``init``;
      back-propagation a row of zeros. A tile is ``rows`` output rows at ``points`` points.
    * ``_lane_dots``: the weight and bias gradients of one layer,
      ``G[wo + i*rows + j, COL_G + w] = sum_p A[(a_in+i)*ns + p, w] * D[(d0+j)*ns + p, w]`` and
      ``G[bo + j, COL_G + w]`` likewise with the row ``ones_row`` of ones (``p`` in order), for
      every input ``i < fan_in``, output row ``j < rows`` and lane ``w``. A tile is ``inputs``
      input rows (the ones row first) by ``points`` output rows.

    Output rows and input rows that do not fill a whole tile take a pass of one row each. A last,
    short group of points (output rows of ``_lane_dots``) repeats its last one: the same sums
    again, stored again.
    """
    g, lane = range(points), range(lanes)
    block = _block

    def tile_loop(R, trips: str, c_load: str, d_load: str, steps: list[str]) -> str:
        """The loop of one register tile: ``s{r}_{j} += c{r} * d{j}`` for every row ``r`` in
        ``R``, point (or output row) ``j`` and lane, ``trips`` times; ``c_load``/``d_load`` give
        the loaded element from ``r``/``j`` and the lane, ``steps`` advance the indices."""
        return (
            block(12, [f"for _ in range({trips}):"])
            + block(16, [f"c{r}_{w} = " + c_load.format(r=r, w=w) for r in R for w in lane])
            + block(16, [f"d{j}_{w} = " + d_load.format(j=j, w=w) for j in g for w in lane])
            + block(
                16, [f"s{r}_{j}_{w} += c{r}_{w} * d{j}_{w}" for r in R for j in g for w in lane]
            )
            + block(16, steps)
        )

    def rows_pass(nrows: int, o_range: str) -> str:
        """A pass of ``_lane_affine`` over output rows ``o_range``, ``nrows`` at a time."""
        R = range(nrows)
        inits = [
            " = ".join(f"s{r}_{j}_{w}" for j in g) + f" = init[ib{r}, {w}]" for r in R for w in lane
        ]
        return (
            block(8, [f"for o in {o_range}:"])
            + block(12, [f"ib{r} = np.uint64(i0 + (o + {r}) * istep)" for r in R])
            + block(12, [f"kk{r} = np.uint64(k0 + (o + {r}) * kstep)" for r in R])
            + block(12, [f"x{j} = x{j}0" for j in g] + inits)
            + tile_loop(
                R,
                "count",
                "theta[kk{r}, {w}]",
                "S[x{j}, {w}]",
                [f"kk{r} += ks" for r in R] + [f"x{j} += nn" for j in g],
            )
            + block(12, [f"e{r}_{j} = e{j}0 + np.uint64((o + {r}) * ns)" for r in R for j in g])
            + block(12, [f"out[e{r}_{j}, {w}] = s{r}_{j}_{w}" for r in R for j in g for w in lane])
        )

    affine = (
        "@njit(**_JIT)\n"
        "def _lane_affine(theta, k0, kstep, kstride, S, q0, count, n, ns, out, r0, rows, init, i0,"
        " istep):\n"
        + block(4, ["ks = np.uint64(kstride)", "nn = np.uint64(ns)"])
        + block(4, [f"full = rows - rows % {rows}", f"for p in range(0, n, {points}):"])
        + block(8, [f"x{j}0 = np.uint64(q0 * ns + min(p + {j}, n - 1))" for j in g])
        + block(8, [f"e{j}0 = np.uint64(r0 * ns + min(p + {j}, n - 1))" for j in g])
        + rows_pass(rows, f"range(0, full, {rows})")
        + rows_pass(1, "range(full, rows)")
    )

    def inputs_pass(nin: int, i_range: str) -> str:
        """A pass of ``_lane_dots`` over input rows ``i_range`` (0: the ones row), ``nin`` at a
        time."""
        R = range(nin)
        zeros = [" = ".join(f"s{r}_{j}_{w}" for r in R for j in g) + " = ZERO" for w in lane]
        stores = [
            f"G[kg{r} + j{j}, COL_G + {w}] = s{r}_{j}_{w}" for r in R for j in g for w in lane
        ]
        return (
            block(8, [f"for ii in {i_range}:"])
            + block(12, [f"qa{r} = ones_row if ii + {r} == 0 else a_in + ii + {r} - 1" for r in R])
            + block(12, [f"kg{r} = bo if ii + {r} == 0 else wo + (ii + {r} - 1) * rows" for r in R])
            + block(12, zeros)
            + block(12, [f"a{r} = np.uint64(qa{r} * ns)" for r in R] + [f"y{j} = y{j}0" for j in g])
            + tile_loop(
                R,
                "n",
                "A[a{r}, {w}]",
                "D[y{j}, {w}]",
                [f"a{r} += ONE_U" for r in R] + [f"y{j} += ONE_U" for j in g],
            )
            + block(12, stores)
        )

    dots = (
        "@njit(**_JIT)\n"
        "def _lane_dots(A, a_in, fan_in, ones_row, D, d0, rows, n, ns, G, wo, bo):\n"
        + block(4, [f"full = (fan_in + 1) - (fan_in + 1) % {inputs}"])
        + block(4, [f"for j in range(0, rows, {points}):"])
        + block(8, [f"j{j} = min(j + {j}, rows - 1)" for j in g])
        + block(8, [f"y{j}0 = np.uint64((d0 + j{j}) * ns)" for j in g])
        + inputs_pass(inputs, f"range(0, full, {inputs})")
        + inputs_pass(1, "range(full, fan_in + 1)")
    )
    tree = "(((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))) + (((a8 + a9) + (a10 + a11))"
    tree += " + ((a12 + a13) + (a14 + a15)))"
    h = range(4)  # partial sums per pass: 4 x lanes in registers
    dot16 = (
        "@njit(**_JIT)\n"
        "def _lane_dot16(X, xc, Y, yc, n, acc, out):\n"
        + block(4, ["xo = np.uint64(xc)", "yo = np.uint64(yc)", "n16 = n - n % 16"])
        + block(4, ["for l0 in range(0, 16, 4):"])
        + block(8, [" = ".join(f"s{j}_{w}" for j in h) + " = ZERO" for w in lane])
        + block(8, ["for k in range(0, n16, 16):"])
        + block(12, [f"r{j} = np.uint64(k + l0 + {j})" for j in h])
        + block(
            12,
            [
                f"s{j}_{w} += X[r{j}, xo + np.uint64({w})] * Y[r{j}, yo + np.uint64({w})]"
                for j in h
                for w in lane
            ],
        )
        + block(8, [f"acc[l0 + {j}, {w}] = s{j}_{w}" for j in h for w in lane])
        + block(4, [f"t{w} = acc[0, {w}]" for w in lane])
        + block(4, ["for k in range(n16, n):", "    r = np.uint64(k)"])
        + block(8, [f"t{w} += X[r, xo + np.uint64({w})] * Y[r, yo + np.uint64({w})]" for w in lane])
        + block(4, [f"acc[0, {w}] = t{w}" for w in lane])
        + block(4, [f"for w in range({lanes}):"])
        + block(8, [f"a{i} = acc[{i}, w]" for i in range(16)] + [f"out[w] = {tree}"])
    )
    header = (
        "\n\n# ---- generated by geomtraj.train.kernels.mlp.lane_loops_source"
        f"(lanes={lanes}, points={points}, rows={rows}, inputs={inputs}) ----\n"
        f"assert LANES == {lanes}, 'the template and constants.LANES disagree'\n\n\n"
    )
    return header + affine + "\n\n" + dots + "\n\n" + dot16
