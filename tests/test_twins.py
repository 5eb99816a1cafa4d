"""Last-bit twins (ulp) and Sun's rescaling twins (scale) against their originals."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_spec, make_theta0

from geomtraj.train.trainer import Perturbation, train

STEPS = 300
T = 20  # the ulp twin's perturbation step
PARAM = "W1[0,3]"
HIDDEN = (6, 4)
TRAJ = ("theta", "m", "v", "loss")
PER_UPDATE = ("train_loss", "grad_norm", "update_norm")
FINAL = ("theta_final", "m_final", "v_final")


def _in_format(x: np.ndarray, fmt: str) -> np.ndarray:
    """float64 values of ``x`` rounded to ``fmt`` as the trainer does (via float32 for emulated)."""
    if fmt == "float64":
        return x.copy()
    x32 = x.astype(np.float32)
    if fmt == "float32":
        return x32.astype(np.float64)
    ml_dtypes = pytest.importorskip("ml_dtypes")
    return x32.astype(ml_dtypes.bfloat16).astype(np.float64)


def _next_up(x: float, fmt: str) -> float:
    """The next representable value above ``x``, computed without geomtraj."""
    if fmt == "float64":
        return float(np.nextafter(x, np.inf))
    if fmt == "float32":
        return float(np.nextafter(np.float32(x), np.float32(np.inf)))
    ml_dtypes = pytest.importorskip("ml_dtypes")
    bf = np.array([x], dtype=ml_dtypes.bfloat16)
    return float(np.nextafter(bf, np.array([np.inf], dtype=ml_dtypes.bfloat16))[0])


def _ulp(x: float, fmt: str) -> float:
    """Spacing of ``fmt`` just above |x| (x not a power of two): the unit in the last place."""
    mant = {"float64": 52, "float32": 23, "bfloat16": 7}[fmt]
    return 2.0 ** (np.floor(np.log2(abs(x))) - mant)


@pytest.fixture(scope="module", params=["float64", "float32", "bfloat16"])
def twins(request, sincos):
    """Run 0 original; 1 ulp twin at t=1; 2 original started one ulp up; 3 ulp twin at t=T;
    4 scale twin k=1; 5 scale twin k=3."""
    fmt = request.param
    X, y = sincos
    spec = make_spec("tanh", "mse", HIDDEN)
    idx = spec.param_index(PARAM)
    theta = _in_format(make_theta0(spec, seed=2), fmt)
    bumped = theta.copy()
    bumped[idx] = _next_up(theta[idx], fmt)
    theta0 = np.stack([theta, theta, bumped, theta, theta, theta])
    perts = [None, Perturbation("ulp", param=PARAM, ulps=1, step=1), None,
             Perturbation("ulp", param=PARAM, ulps=1, step=T),
             Perturbation("scale", k=1.0), Perturbation("scale", k=3.0)]  # fmt: skip
    ds = train(X, y, hidden=HIDDEN, activation="tanh", loss="mse", theta0=theta0, lr=1e-2,
               beta2=0.99, steps=STEPS, precision=fmt, twin_of=[-1, 0, -1, 0, 0, 0],
               perturbation=perts)  # fmt: skip
    return fmt, spec, idx, theta, bumped, ds


def _same(ds, a, b, names, rows=slice(None)):
    return {n: ds[n].values[a, rows].tobytes() == ds[n].values[b, rows].tobytes() for n in names}


def test_runs_are_healthy(twins):
    fmt, _, _, _, _, ds = twins
    assert (ds["diverged_step"].values == -1).all()
    assert ds["perturbation"].values.tolist()[1] == f"ulp:+1@{PARAM}@t=1"
    assert ds["perturbation"].values.tolist()[5] == "scale:k=3"
    loss = ds["train_loss"].values[0]
    assert loss[-1] < 0.5 * loss[0]  # the original trains, so the twins have something to follow


def test_one_ulp_is_one_unit_in_the_last_place(twins):
    fmt, _, idx, theta, bumped, ds = twins
    assert bumped[idx] - theta[idx] == _ulp(theta[idx], fmt)
    assert ds["theta_init"].values[2, idx] == bumped[idx]  # the trainer kept the bumped value


def test_ulp_twin_at_t1_is_the_run_started_one_ulp_up(twins):
    """The twin moves theta_0 by exactly one ulp of its format: it equals a run started there."""
    *_, ds = twins
    same = _same(ds, 1, 2, TRAJ + PER_UPDATE + FINAL)
    assert all(same.values()), same
    assert not all(_same(ds, 0, 1, ("theta",)).values())


def test_ulp_twin_matches_its_original_until_update_t(twins):
    fmt, _, idx, *_, ds = twins
    step = ds["step"].values
    row_t = int(np.flatnonzero(step == T)[0])
    before = _same(ds, 0, 3, TRAJ, rows=slice(0, row_t))
    assert all(before.values()), f"{fmt}: twin differs before update {T}: {before}"
    before_upd = _same(ds, 0, 3, PER_UPDATE, rows=slice(0, T - 1))
    assert all(before_upd.values()), before_upd
    # update T starts from the perturbed theta_{T-1}: its result already differs, at the
    # perturbed coordinate itself
    th0, th3 = ds["theta"].values[0, row_t], ds["theta"].values[3, row_t]
    assert th0[idx] != th3[idx], f"{fmt}: the perturbation left no trace in {PARAM} at t={T}"
    # and the twin does not rejoin its original
    assert not np.array_equal(ds["theta_final"].values[0], ds["theta_final"].values[3])


def test_scale_twin_k1_is_bit_identical(twins):
    *_, ds = twins
    same = _same(ds, 0, 4, TRAJ + PER_UPDATE + FINAL)
    assert all(same.values()), same


def test_scale_twin_k3_differs_eventually(twins):
    fmt, *_, ds = twins
    if fmt == "bfloat16":
        # (lr*3)*(u/3) and lr*u differ by ~1 float32 ulp, which rounding the step to bfloat16
        # (16 bits fewer) absorbs except within ~2**-15 of a tie: over 300 steps x 59 params that
        # happens about once, and in this run not at all (measured: identical for 300 steps)
        pytest.skip("bfloat16 rounding absorbs the float32-level difference of a scale twin")
    th0, th5 = ds["theta"].values[0], ds["theta"].values[5]
    differs = ~np.all(th0 == th5, axis=1)
    assert differs.any(), f"scale:k=3 stayed bit-identical to its original for {STEPS} steps"
    # exact arithmetic would make them equal: they stay close early on
    first = int(np.argmax(differs))
    assert np.abs(th0[first] - th5[first]).max() <= 4 * np.abs(np.spacing(th0[first])).max()
