"""Bit-for-bit reproducibility, thread-count independence and precision discipline."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import make_spec, make_theta0

import geomtraj.train.trainer as train_mod
from geomtraj.train.config import plan_from_config
from geomtraj.train.data import make_dataset
from geomtraj.train.kernels.rounding import STORAGE_DTYPE, round_to_format
from geomtraj.train.models import MLPSpec
from geomtraj.train.trainer import DataSource, Plan, Run, train, train_plan

REPO = Path(__file__).resolve().parents[1]

CONFIG = {
    "steps": 60,
    "record_every": 2,
    "chunk_rows": 8,  # several chunks, so region writes and resume checkpoints are exercised
    "data": {"name": "sincos", "n_points": 32, "seed": 3},
    "model": {"hidden": "6x4", "activation": "tanh", "loss": "mse"},
    "optimizer": {"beta1": 0.9, "beta2": [0.99, 0.999], "lr": 1e-2},
    "runs": {"seeds": [0, 1], "precision": ["float32", "float64"]},
    "twins": [{"kind": "ulp", "param": "W1[0,3]", "ulps": 1, "step": 7}, {"kind": "scale", "k": 3}],
}


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_same_config_gives_byte_identical_stores(tmp_path):
    stores = [tmp_path / "a.zarr", tmp_path / "b.zarr"]
    for path in stores:
        train_plan(plan_from_config(CONFIG), store=path)
    a, b = (_tree_bytes(p) for p in stores)
    assert len(a) > 20  # a real store: metadata plus many chunk files
    assert sorted(a) == sorted(b), set(a) ^ set(b)
    different = [name for name in a if a[name] != b[name]]
    assert not different, f"files differ between two identical trainings: {different}"


CHUNKED = {
    "steps": 48,
    "record_every": 2,
    "data": {"name": "sincos", "n_points": 32},
    "model": {"hidden": "6x4"},
    "optimizer": {"lr": 1e-2},
    "runs": {"precision": ["float32", "float64", "bfloat16"], "batch_size": 8, "seeds": [0, 1]},
    "twins": [
        {"kind": "ulp", "param": "W1[0,3]", "step": 17},  # T-1 = 16: a chunk edge for 8 rows
        {"kind": "ulp", "param": "b2[1]", "step": 16, "ulps": -2},
    ],
}


def test_chunking_does_not_change_trajectories():
    """The kernel is called chunk by chunk; where the chunks end must not matter, also for
    perturbations applied between calls and for the mini-batch shuffling state."""
    names = ("theta", "m", "v", "loss", "train_loss", "grad_norm", "update_norm", "theta_final")
    results = {}
    for rows in (None, 8, 5, 1):  # one chunk; 16, 10 and 2 updates per chunk
        cfg = CHUNKED if rows is None else {**CHUNKED, "chunk_rows": rows}
        ds = train_plan(plan_from_config(cfg))
        results[rows] = {k: ds[k].values.tobytes() for k in names}
    for rows, got in results.items():
        differ = [k for k in names if got[k] != results[None][k]]
        assert not differ, f"chunk_rows={rows} changes {differ}"


_THREAD_SCRIPT = textwrap.dedent(
    """
    import sys
    import numba
    import numpy as np
    from geomtraj.train.data import make_dataset
    from geomtraj.train.trainer import train, train_plan

    out, threads = sys.argv[1], int(sys.argv[2])
    assert numba.config.NUMBA_NUM_THREADS == threads, numba.config.NUMBA_NUM_THREADS
    assert numba.get_num_threads() == threads
    X, y = make_dataset("sincos", 64, 0)
    for prec in ("float32", "float64"):
        ds = train(X, y, hidden=(6, 5), activation="tanh", loss="mse", steps=150,
                   precision=prec, seed=[0, 1, 2, 3, 4], lr=[1e-3, 3e-3, 1e-2, 3e-2, 0.1],
                   beta2=0.99, batch_size=[0, 0, 16, 0, 16], record_every=3)
        for name in ("theta", "m", "v", "loss", "train_loss", "grad_norm", "update_norm",
                     "theta_final", "m_final", "v_final", "diverged_step"):
            np.save(f"{out}/{prec}_{name}.npy", ds[name].values)
    """
)


@pytest.mark.slow
def test_thread_count_does_not_change_trajectories(tmp_path):
    procs = {}
    for threads in (1, 2):
        out = tmp_path / f"threads{threads}"
        out.mkdir()
        env = {**os.environ, "NUMBA_NUM_THREADS": str(threads)}
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
        cmd = [sys.executable, "-c", _THREAD_SCRIPT, str(out), str(threads)]
        # both at once: compiling dominates and each process compiles on one core
        procs[threads] = subprocess.Popen(
            cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    for threads, proc in procs.items():
        log, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"NUMBA_NUM_THREADS={threads} failed:\n{log}"
    files = sorted(p.name for p in (tmp_path / "threads1").iterdir())
    assert len(files) == 22
    for name in files:
        a = np.load(tmp_path / "threads1" / name, allow_pickle=False)
        b = np.load(tmp_path / "threads2" / name, allow_pickle=False)
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert a.tobytes() == b.tobytes(), f"{name} differs between 1 and 2 numba threads"
    # the comparison is not vacuous: the runs trained and (mostly) did not diverge
    loss = np.load(tmp_path / "threads1" / "float32_train_loss.npy")
    assert np.isfinite(loss[:, :10]).all()
    assert (np.load(tmp_path / "threads1" / "float64_diverged_step.npy") == -1).sum() >= 3


# ------------------------------------------------------------------ float32 never computes in f64

_DOUBLE_ARITHMETIC = re.compile(
    r"\b(fadd|fsub|fmul|fdiv|frem|fneg)\b[^=]*?\s(<\d+ x )?double\b"
    r"|\bfcmp\b[^=]*?\s(<\d+ x )?double\b"
    r"|\b[su]itofp\b.*\bto (<\d+ x )?double\b"
    r"|@llvm\.[a-z0-9.]*\.(v\d+)?f64\b"
    r"|@(tanh|exp|expm1|log|log1p|log2|log10|sqrt|pow|sin|cos|atan2|erf|cbrt|hypot|fma)\("
)
_FPEXT = re.compile(r"^\s*(%[\w.$-]+)\s*=\s*fpext\b")
_FLOAT_ARITHMETIC = re.compile(r"\b(fadd|fmul|fdiv|fsub)\b[^=]*?\s(<\d+ x )?float\b")


def _functions(ir: str) -> list[list[str]]:
    """The bodies of the ``define``d functions (SSA names are local to them)."""
    bodies, cur = [], None
    for line in ir.splitlines():
        if line.startswith("define "):
            cur = [line]
        elif cur is not None:
            cur.append(line)
            if line.startswith("}"):
                bodies.append(cur)
                cur = None
    return bodies


def _double_arithmetic_lines(ir: str) -> list[str]:
    """Lines that compute in double, or widen a float for anything but storing it.

    Widening is allowed only where the value goes straight into a float64 array (a float32 run's
    recording buffers are float64 when the store also holds float64 runs) or is boxed into a Python
    float: both are exact. Arithmetic on the widened value would show up as another use.
    """
    bad = []
    for body in _functions(ir) or [ir.splitlines()]:
        for k, line in enumerate(body):
            if _DOUBLE_ARITHMETIC.search(line):
                bad.append(line.strip())
                continue
            m = _FPEXT.match(line)
            if not m:
                continue
            use = re.compile(re.escape(m.group(1)) + r"(?![\w.$-])")
            uses = [u for u in body[k + 1 :] if use.search(u)]
            name = re.escape(m.group(1))
            stored = re.compile(
                rf"\s*store (<\d+ x )?double {name},|.*@PyFloat_FromDouble\(double {name}\)"
            )
            if not uses or not all(stored.match(u) for u in uses):
                bad.append(line.strip() + "   <- used by: " + "; ".join(u.strip() for u in uses))
    return bad


def test_llvm_checker_detects_double_arithmetic():
    """The checker catches the instructions a stray float64 literal would produce."""
    bad = [
        "%y = fmul double %x, 2.000000e+00",
        "%z = fadd <4 x double> %p, %q",
        "%c = fcmp olt double %x, 0.0",
        "%r = call double @llvm.sqrt.f64(double %x)",
        "%s = call double @tanh(double %x)",
        "%w = sitofp i64 %n to double",
    ]
    good = [
        "%v = fmul float %a, %b",
        "%v = fadd <8 x float> %a, %b",
        "%r = call float @llvm.sqrt.f32(float %x)",
        "%d = call double @PyFloat_AsDouble(ptr %o)",
        "%f = fptrunc double %d to float",  # unboxing a Python float argument
    ]
    assert len(_double_arithmetic_lines("\n".join(bad))) == len(bad)
    assert _double_arithmetic_lines("\n".join(good)) == []
    widen = ["define void @f() {", "  %.5 = fpext float %.4 to double"]
    stored = [*widen, "  store double %.5, ptr %p, align 8", "}"]
    assert _double_arithmetic_lines("\n".join(stored)) == []
    used = [*widen, "  store double %.5, ptr %p, align 8", "  %.6 = fmul double %.5, %.5", "}"]
    found = _double_arithmetic_lines("\n".join(used))
    assert len(found) == 2 and "fpext" in found[0] and "fmul double" in found[1]
    # a name that merely starts like the widened one is not a use of it
    prefix = [*widen, "  store double %.5, ptr %p, align 8", "  %.7 = fadd float %.51, %.8", "}"]
    assert _double_arithmetic_lines("\n".join(prefix)) == []
    unused_for_store = [
        *widen,
        "  %.9 = fcmp olt float %.1, %.2",
        "  call void @g(double %.5)",
        "}",
    ]
    assert len(_double_arithmetic_lines("\n".join(unused_for_store))) == 1


def test_llvm_checker_flags_a_float64_literal_in_numba_code():
    """End to end: numba code with the classic mistake (a float64 literal) is caught."""
    from numba import njit

    @njit(fastmath=False)
    def leaky(x):
        return x * 0.1  # float32 * float64 literal promotes to double

    @njit(fastmath=False)
    def clean(x):
        return x * np.float32(0.1)

    for f in (leaky, clean):
        f(np.float32(1.0))
    assert _double_arithmetic_lines(leaky.inspect_llvm(leaky.signatures[0]))
    assert not _double_arithmetic_lines(clean.inspect_llvm(clean.signatures[0]))


_LLVM_SCRIPT = textwrap.dedent(
    """
    import sys
    import warnings

    from geomtraj.train.data import make_dataset
    from geomtraj.train.kernels.mlp import get_train_kernel
    from geomtraj.train.trainer import train

    fmt, out = sys.argv[1], sys.argv[2]
    X, y = make_dataset("sincos", 16, 0)
    # a float32-only store (float32 recording buffers); a mixed store's signature differs only in
    # widening the recorded values, and would cost two more compilations here
    train(X, y, hidden=(4, 3), activation="tanh", loss="mse", steps=3, precision=fmt)
    kernel = get_train_kernel(fmt, "tanh", "mse")
    warnings.simplefilter("error")  # numba warns (and returns nothing) for code loaded from cache
    for i, sig in enumerate(kernel.signatures):
        with open(f"{out}/{fmt}_{i}.ll", "w") as fh:
            fh.write(kernel.inspect_llvm(sig))
    """
)


@pytest.mark.slow
def test_float32_kernels_have_no_double_arithmetic(tmp_path):
    """The float32 and bfloat16 kernels, freshly compiled, contain no float64 computation.

    numba cannot show the IR of code loaded from its on-disk cache, so each kernel is compiled in
    a subprocess whose kernel caches point at empty directories.
    """
    procs = {}
    for fmt in ("float32", "bfloat16"):
        cache = tmp_path / f"cache-{fmt}"
        cache.mkdir()
        env = {**os.environ, "GEOMTRAJ_CACHE_DIR": str(cache), "NUMBA_CACHE_DIR": str(cache)}
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
        cmd = [sys.executable, "-c", _LLVM_SCRIPT, fmt, str(tmp_path)]
        procs[fmt] = subprocess.Popen(
            cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    for fmt, proc in procs.items():
        log, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{fmt}: compiling and inspecting failed:\n{log}"
    for fmt in procs:
        modules = sorted(tmp_path.glob(f"{fmt}_*.ll"))
        assert modules, f"{fmt}: no signature compiled"
        for module in modules:
            ir = module.read_text()
            # the module holds the real work (the outlined prange body with forward/backward/Adam)
            assert len(_FLOAT_ARITHMETIC.findall(ir)) > 50, f"{module.name}: no float32 code"
            offending = _double_arithmetic_lines(ir)
            assert not offending, f"{module.name} computes in double:\n" + "\n".join(offending[:40])


# ------------------------------------------------------------- stored values lie in their format


def test_stored_values_are_representable_in_their_format(sincos):
    precisions = ["float64", "float32", "bfloat16", "float16"]
    X, y = sincos
    spec = make_spec("tanh", "mse", hidden=(4, 3))
    theta0 = make_theta0(spec)
    ds = train(X, y, hidden=spec.hidden, activation="tanh", loss="mse", theta0=theta0[None],
               steps=40, precision=precisions, lr=1e-2, n_runs=4)  # fmt: skip
    assert ds["theta"].dtype == np.float64  # widest precision present
    n = spec.n_params
    for r, prec in enumerate(precisions):
        assert ds["precision"].values[r] == prec
        assert ds["diverged_step"].values[r] == -1
        arrays = {
            "theta_init": ds["theta_init"].values[r, :n],
            "theta": ds["theta"].values[r, :, :n],
            "m": ds["m"].values[r, :, :n],
            "v": ds["v"].values[r, :, :n],
            "theta_final": ds["theta_final"].values[r, :n],
            "m_final": ds["m_final"].values[r, :n],
            "v_final": ds["v_final"].values[r, :n],
        }
        for name, a in arrays.items():
            assert np.isfinite(a).all(), (prec, name)
            if prec == "float64":
                continue
            a32 = a.astype(np.float32)
            assert np.array_equal(a32.astype(np.float64), a), f"{prec} {name} is not float32"
            if prec != "float32":
                rounded = round_to_format(a32, prec)
                bad = np.flatnonzero(rounded != a32)
                assert bad.size == 0, f"{prec} {name}: {a32.ravel()[bad[:5]]} not in the format"
        # the loss and norms of emulated runs are float32 values (not rounded to the format)
        if prec != "float64":
            for name in ("loss", "train_loss", "grad_norm", "update_norm"):
                a = ds[name].values[r]
                assert np.array_equal(a.astype(np.float32).astype(np.float64), a), (prec, name)
        # and the runs did move: the checks above are about real trajectories
        assert not np.array_equal(arrays["theta_final"], arrays["theta_init"])
    # the emulated formats differ from float32 (they really round)
    th = ds["theta"].values[:, -1, :n]
    assert not np.array_equal(th[1], th[2]) and not np.array_equal(th[1], th[3])
    # a cross-check of the rounding against ml_dtypes/numpy, independent of geomtraj's bit tricks
    formats = [(3, np.float16)]
    try:
        import ml_dtypes

        formats.append((2, ml_dtypes.bfloat16))
    except ImportError:  # a test extra; float16 is still cross-checked with numpy
        pass
    for r, dt in formats:
        a32 = ds["theta"].values[r, :, :n].astype(np.float32)
        assert np.array_equal(a32.astype(dt).astype(np.float32), a32)


def test_in_memory_and_float32_storage(sincos):
    """Without float64 runs the storage is float32; repeated calls agree bit for bit, and
    training leaves its input arrays untouched."""
    X, y = sincos
    ds = train(X, y, hidden=(4, 3), steps=5, precision="float32", seed=[0, 1])
    assert ds["theta"].dtype == np.float32 and ds["loss"].dtype == np.float32
    again = train(X, y, hidden=(4, 3), steps=5, precision="float32", seed=[0, 1])
    for name in ("theta", "m", "v", "loss", "train_loss", "theta_final"):
        assert ds[name].values.tobytes() == again[name].values.tobytes(), name
    X2, y2 = make_dataset("sincos", 64, 0)
    assert np.array_equal(X, X2) and np.array_equal(y, y2)


# ------------------------------------------------- order of the runs in the per-run kernel call

#: Six architectures of different sizes, ordered from small to large as a width grid would be.
_MIXED_HIDDEN = [(3,), (4, 5), (7,), (9, 2), (6, 6, 3), (12, 8)]


def _mixed_width_plan(runs: list[Run], X, y) -> Plan:
    return Plan(runs, [DataSource("sincos", X, y)], steps=40, record_every=2, chunk_rows=8)


def test_order_of_runs_in_the_kernel_does_not_change_results(sincos, monkeypatch):
    """A grid of mixed widths and precisions, whose runs the trainer reorders to balance the
    threads, gives every run exactly what training it alone gives, for any order of the runs in
    the kernel call (the thread-balanced one, reversed, shuffled)."""
    X, y = sincos
    runs = [
        Run(MLPSpec(2, h), seed=k, precision=prec, lr=1e-2, batch_size=16 if k % 3 == 2 else 0)
        for prec in ("float32", "float64")
        for k, h in enumerate(_MIXED_HIDDEN)
    ]
    alone = [train_plan(_mixed_width_plan([run], X, y)) for run in runs]
    shuffled = np.random.default_rng(7).permutation
    orders = {
        "balanced": train_mod.balanced_order,
        "reversed": lambda cost, threads: np.arange(len(cost))[::-1].copy(),
        "shuffled": lambda cost, threads: shuffled(len(cost)),
    }
    names = ("theta", "m", "v", "loss", "train_loss", "grad_norm", "update_norm")
    finals = ("theta_final", "m_final", "v_final")
    for label, order in orders.items():
        monkeypatch.setattr(train_mod, "balanced_order", order)
        ds = train_plan(_mixed_width_plan(runs, X, y))
        assert ds["theta"].dtype == np.float64
        for r, (run, one) in enumerate(zip(runs, alone, strict=True)):
            n = run.spec.n_params
            where = f"{label} order, run {r} {run.precision} {run.spec.hidden}"
            assert one["theta"].dtype == np.dtype(STORAGE_DTYPE[run.precision])
            for name in names + finals:
                got, want = ds[name].values[r], one[name].values[0].astype(np.float64)
                got = got[..., :n] if name in names[:3] + finals else got
                assert np.array_equal(got, want, equal_nan=True), f"{where}: {name} differs"
            assert ds["diverged_step"].values[r] == one["diverged_step"].values[0] == -1
            # the parameters this run lacks stay NaN
            assert np.isnan(ds["theta"].values[r, :, n:]).all(), where


def test_balanced_order_fills_numbas_static_pieces():
    """prange(n) gives thread t a contiguous piece, the first n % threads pieces one run longer;
    the heaviest run goes first to the lightest piece with room."""
    cost = np.array([1, 2, 3, 4, 5, 6, 7, 8])  # a width grid: small nets first
    order = train_mod.balanced_order(cost, 2)
    assert sorted(order) == list(range(8))
    # 8 -> A, 7 -> B, 6 -> B, 5 -> A, 4 -> A (tie: first piece), 3 -> B, 2 -> B, 1 -> A
    assert order.tolist() == [7, 4, 3, 0, 6, 5, 2, 1]
    assert cost[order[:4]].sum() == cost[order[4:]].sum() == 18
    # 7 runs on 3 threads: pieces of 3, 2 and 2 runs, as numba splits prange(7)
    cost = np.array([1, 1, 1, 1, 1, 1, 10])
    order = train_mod.balanced_order(cost, 3)
    assert order.tolist() == [6, 4, 5, 0, 2, 1, 3]
    assert np.add.reduceat(cost[order], [0, 3, 5]).tolist() == [12, 2, 2]
    # one thread, or no more runs than threads: the order does not matter and stays as it is
    assert train_mod.balanced_order(np.arange(8), 1).tolist() == list(range(8))
    assert train_mod.balanced_order(np.arange(3), 4).tolist() == [0, 1, 2]
