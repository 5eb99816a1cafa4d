"""Float64 kernel trajectories against textbook Adam (tests/naive.py) and torch.optim.Adam."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ADAM_HYPER, ADAM_STEPS, adam_float64
from naive import adam_reference, loss_and_grad

CASES = [("tanh", "mse"), ("sigmoid", "bce"), ("relu", "mse")]


def _rel_max(a, b):
    """max |a - b| / max |b|: a scale-aware error that tiny coordinates cannot inflate."""
    return np.abs(a - b).max() / np.abs(b).max()


@pytest.mark.parametrize(("activation", "loss"), CASES)
@pytest.mark.parametrize("run", range(len(ADAM_HYPER)))
def test_kernel_matches_naive_adam(activation, loss, run):
    spec, X, y, theta0, ds = adam_float64(activation, loss)
    n = spec.n_params
    ref = adam_reference(theta0[run], spec, X, y, ADAM_STEPS, **ADAM_HYPER[run])
    assert ds["diverged_step"].values[run] == -1
    np.testing.assert_array_equal(ds["step"].values, np.arange(1, ADAM_STEPS + 1))
    theta = ds["theta"].values[run, :, :n]
    # the run really moves: otherwise agreement would say little about the update
    assert _rel_max(ref["theta"][-1], theta0[run]) > 0.05
    # summation orders differ (kernel: fixed 8-way sums; numpy: BLAS), so rounding-level differences
    # of ~1e-16 per step are expected; 100 steps of Adam do not amplify them beyond 1e-12
    assert _rel_max(theta, ref["theta"]) < 1e-12
    assert _rel_max(ds["m"].values[run, :, :n], ref["m"]) < 1e-12
    assert _rel_max(ds["v"].values[run, :, :n], ref["v"]) < 1e-12
    # `loss` at row t is the full-batch loss at theta_{t-1}, the point update t started from
    np.testing.assert_allclose(ds["loss"].values[run], ref["losses"], rtol=1e-12, atol=0)
    np.testing.assert_allclose(ds["train_loss"].values[run], ref["losses"], rtol=1e-12, atol=0)
    assert ref["losses"][-1] < ref["losses"][0]  # and it trains
    # the recorded norms belong to the same updates: ||g_t|| (after weight decay) and the step
    starts = np.vstack([theta0[run], ref["theta"][:-1]])
    wd = ADAM_HYPER[run]["weight_decay"]
    g_norm = [np.linalg.norm(loss_and_grad(th, spec, X, y)[1] + wd * th) for th in starts]
    np.testing.assert_allclose(ds["grad_norm"].values[run], g_norm, rtol=1e-12)
    steps_taken = np.diff(np.vstack([theta0[run], ref["theta"]]), axis=0)
    np.testing.assert_allclose(
        ds["update_norm"].values[run], np.linalg.norm(steps_taken, axis=1), rtol=1e-9
    )


def _torch_adam(theta0, spec, X, y, steps, beta1, beta2, lr, eps, weight_decay, record=None):
    """torch.optim.Adam on the MLP; ``record``: a store path for a TorchRecorder of the loop."""
    torch = pytest.importorskip("torch")
    from naive import unflatten

    params = []
    for W, b in unflatten(theta0, spec):
        params += [torch.tensor(W, dtype=torch.float64, requires_grad=True),
                   torch.tensor(b, dtype=torch.float64, requires_grad=True)]  # fmt: skip
    act = {"tanh": torch.tanh, "sigmoid": torch.sigmoid, "relu": torch.relu}[spec.activation]
    Xt = torch.tensor(X, dtype=torch.float64)
    yt = torch.tensor(y, dtype=torch.float64)
    opt = torch.optim.Adam(params, lr=lr, betas=(beta1, beta2), eps=eps,
                           weight_decay=weight_decay)  # fmt: skip
    out = np.empty((steps, spec.n_params))
    rec = None
    if record is not None:
        from geomtraj.store.record import TorchRecorder

        rec = TorchRecorder(record, opt, record_params="all", chunk_updates=80)  # packs at 64
    for t in range(steps):
        opt.zero_grad()
        a = Xt
        for k in range(0, len(params), 2):
            z = a @ params[k] + params[k + 1]
            a = act(z) if k + 2 < len(params) else z
        f = a[:, 0]
        if spec.loss == "mse":
            loss = torch.mean((f - yt) ** 2)
        else:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(f, yt)
        loss.backward()
        opt.step()
        if rec is not None:
            rec.step(loss)
        out[t] = np.concatenate([p.detach().numpy().ravel() for p in params])
    if rec is not None:
        rec.close()
    return out


@pytest.mark.parametrize(("activation", "loss"), CASES)
@pytest.mark.parametrize("run", range(len(ADAM_HYPER)))
def test_kernel_matches_torch_adam(activation, loss, run):
    pytest.importorskip("torch")
    spec, X, y, theta0, ds = adam_float64(activation, loss)
    theta_torch = _torch_adam(theta0[run], spec, X, y, ADAM_STEPS, **ADAM_HYPER[run])
    theta = ds["theta"].values[run, :, : spec.n_params]
    err = _rel_max(theta, theta_torch)
    print(f"max relative deviation from torch: {err:.3g}")
    assert err < 1e-12


@pytest.mark.parametrize("run", range(len(ADAM_HYPER)))
def test_torch_recorder_store_matches_the_kernel_store(tmp_path, run):
    """A TorchRecorder store of torch.optim.Adam holds what the trainer's own store holds."""
    pytest.importorskip("torch")
    from geomtraj.store.zarrstore import open_store

    spec, X, y, theta0, ds = adam_float64("tanh", "mse")
    path = tmp_path / "torch.zarr"
    _torch_adam(theta0[run], spec, X, y, ADAM_STEPS, **ADAM_HYPER[run], record=path)
    rec = open_store(path)
    n = spec.n_params
    assert rec.sizes["param"] == n and str(rec["precision"].values[0]) == "float64"
    for key in ("beta1", "beta2", "lr", "eps", "weight_decay"):
        assert float(rec[key].values[0]) == ADAM_HYPER[run][key]
    np.testing.assert_array_equal(rec["step"].values, ds["step"].values)
    np.testing.assert_array_equal(rec["iteration"].values, ds["iteration"].values)
    for var in ("theta", "m", "v"):
        assert _rel_max(rec[var].values[0], ds[var].values[run, :, :n]) < 1e-12, var
    # loss, and the per-update series: the same quantities of the same updates (the recorder adds
    # Adam's coupled weight decay to the gradient, as torch and the kernel do)
    for var in ("loss", "train_loss", "grad_norm"):
        np.testing.assert_allclose(rec[var].values[0], ds[var].values[run], rtol=1e-12)
    np.testing.assert_allclose(rec["update_norm"].values[0], ds["update_norm"].values[run],
                               rtol=1e-9)  # fmt: skip
