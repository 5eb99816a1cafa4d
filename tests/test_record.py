"""geomtraj.store.record: TorchRecorder, write_store and combine_stores.

The recorder's values against the trainer's own store are checked in test_adam_reference.py;
here: what it reads from PyTorch, how it writes (chunks, crashes), and that its stores are
analysed like the trainer's.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.ndimage import uniform_filter1d
from scipy.signal import find_peaks

from geomtraj.cli import main
from geomtraj.errors import GeomtrajError, StoreError
from geomtraj.store.record import TorchRecorder, combine_stores, write_store
from geomtraj.store.zarrstore import open_store
from geomtraj.train.data import make_dataset

torch = pytest.importorskip("torch")


def _mlp(seed: int, dtype=torch.float64):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(2, 12), torch.nn.Tanh(), torch.nn.Linear(12, 24), torch.nn.Tanh(),
        torch.nn.Linear(24, 1),
    ).to(dtype)  # fmt: skip


def _train(rec_kw: dict, steps: int, *, seed: int = 0, opt_cls=None, opt_kw=None, path=None,
           dtype=torch.float64, crash_at: int | None = None):  # fmt: skip
    """An Adam loop on the sincos regression; returns the per-update states it saw."""
    X, y = make_dataset("sincos", 64, 0)
    X, y = torch.tensor(X, dtype=dtype), torch.tensor(y, dtype=dtype)
    model = _mlp(seed, dtype)
    opt = (opt_cls or torch.optim.Adam)(model.parameters(), **(opt_kw or {"lr": 0.01}))
    rec = TorchRecorder(path, opt, model=model, **rec_kw)
    seen = []
    for t in range(steps):
        if t == crash_at:
            return rec, seen  # the process dies: no close(), no __exit__
        opt.zero_grad()
        loss = torch.mean((model(X)[:, 0] - y) ** 2)
        loss.backward()
        opt.step()
        rec.step(loss)
        state = [opt.state[p] for p in model.parameters()]
        seen.append(
            {
                "theta": torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy(),
                "m": torch.cat([s["exp_avg"].reshape(-1) for s in state]).numpy().copy(),
                "v": torch.cat([s["exp_avg_sq"].reshape(-1) for s in state]).numpy().copy(),
                "loss": float(loss.detach()),
            }
        )
    rec.close()
    return rec, seen


def test_rows_are_the_optimizer_state_named_after_the_model(tmp_path) -> None:
    path = tmp_path / "r.zarr"
    rec, seen = _train({"record_params": 16, "chunk_updates": 32}, 100, path=path)
    ds = open_store(path)
    assert ds.sizes == {"run": 1, "step": 100, "iteration": 100, "param": 16}
    n = len(seen[0]["theta"])
    assert int(ds["n_params"].values[0]) == n == 373
    cols = np.unique(np.round(np.linspace(0, n - 1, 16)).astype(np.int64))  # trainer's rule
    np.testing.assert_array_equal(ds["param_index"].values, cols)
    names = [str(s) for s in ds["param_name"].values]
    assert names[0] == "0.weight[0,0]" and names[-1] == "4.bias[0]"
    for var in ("theta", "m", "v"):
        want = np.stack([s[var][cols] for s in seen])
        np.testing.assert_array_equal(ds[var].values[0], want)
    np.testing.assert_array_equal(ds["loss"].values[0], [s["loss"] for s in seen])
    theta_all = np.stack([s["theta"] for s in seen])
    np.testing.assert_allclose(
        ds["update_norm"].values[0, 1:], np.linalg.norm(np.diff(theta_all, axis=0), axis=1),
        rtol=1e-12,
    )  # fmt: skip
    assert str(ds["optimizer"].values[0]) == "Adam" and float(ds["lr"].values[0]) == 0.01
    assert ds.attrs["geomtraj_status"] == "complete" and ds.attrs["steps"] == 100
    # whole chunks of 32 updates on disk: the recorder buffers one chunk at a time
    meta = json.loads((path / "theta" / "zarr.json").read_text())
    assert meta["chunk_grid"]["configuration"]["chunk_shape"] == [1, 32, 16]


def test_a_crash_loses_at_most_the_current_chunk(tmp_path) -> None:
    path = tmp_path / "crash.zarr"
    _, seen = _train({"record_params": "all", "chunk_updates": 32}, 200, path=path, crash_at=150)
    with pytest.raises(StoreError, match="allow_incomplete=True") as err:
        open_store(path)
    assert "\n" not in str(err.value)
    ds = open_store(path, allow_incomplete=True)
    assert ds.sizes["step"] == ds.sizes["iteration"] == 128  # 4 whole chunks of 150 updates
    np.testing.assert_array_equal(ds["theta"].values[0], np.stack([s["theta"] for s in seen[:128]]))


def test_an_exception_in_the_loop_keeps_every_recorded_update(tmp_path) -> None:
    X, y = (torch.tensor(a) for a in make_dataset("sincos", 64, 0))
    model = _mlp(0)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    path = tmp_path / "exc.zarr"
    with pytest.raises(KeyboardInterrupt):
        with TorchRecorder(path, opt, model=model, chunk_updates=32) as rec:
            for t in range(50):
                opt.zero_grad()
                torch.mean((model(X)[:, 0] - y) ** 2).backward()
                opt.step()
                rec.step(0.0)
                if t == 39:
                    raise KeyboardInterrupt
    ds = open_store(path, allow_incomplete=True)
    assert ds.attrs["geomtraj_status"] == "training" and ds.sizes["step"] == 40


def test_record_every_snapshots_adamw_and_float32(tmp_path) -> None:
    path = tmp_path / "w.zarr"
    kw = {"lr": 0.01, "weight_decay": 0.1}
    _, seen = _train(
        {
            "record_params": 8,
            "record_every": 3,
            "snapshot_every": 25,
            "chunk_updates": 10,
        },  # fmt: skip
        100,
        path=path,
        opt_cls=torch.optim.AdamW,
        opt_kw=kw,
        dtype=torch.float32,
    )
    ds = open_store(path)
    np.testing.assert_array_equal(ds["step"].values, np.arange(3, 100, 3))
    assert ds.sizes["iteration"] == 100 and ds.attrs["record_every"] == 3
    assert str(ds["precision"].values[0]) == "float32" and ds["theta"].dtype == np.float32
    assert str(ds["optimizer"].values[0]) == "AdamW"
    assert float(ds["weight_decay"].values[0]) == 0.1
    np.testing.assert_array_equal(ds["snapshot"].values, [25, 50, 75, 100])
    np.testing.assert_array_equal(ds["v_snapshot"].values[0, 1], seen[49]["v"])
    np.testing.assert_array_equal(ds["theta"].values[0, -1], seen[98]["theta"][ds["param_index"]])


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda ps: torch.optim.SGD(ps, lr=0.1), "Adam or AdamW"),
        (lambda ps: torch.optim.Adam(ps, amsgrad=True), "amsgrad"),
        (lambda ps: torch.optim.Adam([{"params": ps[:2]}, {"params": ps[2:], "lr": 0.1}]),
         "differ in lr"),
    ],
)  # fmt: skip
def test_unsupported_optimizers_are_refused(tmp_path, make, match) -> None:
    model = _mlp(0)
    with pytest.raises(GeomtrajError, match=match):
        TorchRecorder(tmp_path / "x.zarr", make(list(model.parameters())), model=model)


def test_step_before_the_optimizer_has_state_is_a_clear_error(tmp_path) -> None:
    model = _mlp(0)
    rec = TorchRecorder(tmp_path / "x.zarr", torch.optim.Adam(model.parameters()), model=model)
    with pytest.raises(GeomtrajError, match="after optimizer.step"):
        rec.step(1.0)


def test_combined_recorders_form_one_store(tmp_path) -> None:
    parts = []
    for seed in (0, 1):
        p = tmp_path / f"s{seed}.zarr"
        _train({"record_params": 8, "chunk_updates": 16, "seed": seed}, 40, seed=seed, path=p)
        parts.append(p)
    out = combine_stores(parts, tmp_path / "both.zarr")
    ds = open_store(out)
    assert ds["seed"].values.tolist() == [0, 1]
    for k, p in enumerate(parts):
        np.testing.assert_array_equal(ds["m"].values[k], open_store(p)["m"].values[0])
    # a recorder with other parameters gets per-run names, padded
    odd = tmp_path / "odd.zarr"
    _train({"record_params": 5, "chunk_updates": 16}, 40, path=odd)
    ds = open_store(combine_stores([parts[0], odd], tmp_path / "mixed.zarr"))
    assert ds["param_name"].dims == ("run", "param")
    assert [str(s) for s in ds["param_name"].values[1, 5:]] == ["", "", ""]
    assert np.isnan(ds["theta"].values[1, :, 5:]).all()
    with pytest.raises(GeomtrajError, match="step coordinate differs"):
        short = tmp_path / "short.zarr"
        _train({"record_params": 8, "chunk_updates": 16}, 30, path=short)
        combine_stores([parts[0], short], tmp_path / "bad.zarr")


def test_write_store_round_trips_numpy_arrays(tmp_path) -> None:
    rng = np.random.default_rng(0)
    theta, m, v = rng.normal(size=(3, 2, 50, 4))
    loss = rng.random((2, 50))
    loss[1, 30] = np.inf
    path = write_store(tmp_path / "np.zarr", theta, m, np.abs(v), loss, beta1=0.9,
                       beta2=[0.99, 0.999], lr=1e-3, eps=1e-8, seed=[3, 4])  # fmt: skip
    ds = open_store(path)
    np.testing.assert_array_equal(ds["theta"].values, theta)
    assert ds["diverged_step"].values.tolist() == [-1, 31]
    assert ds["beta2"].values.tolist() == [0.99, 0.999] and ds.attrs["record_every"] == 1
    with pytest.raises(GeomtrajError, match="exists"):
        write_store(path, theta, m, v, loss, beta1=0.9, beta2=0.99, lr=1e-3, eps=1e-8)
    with pytest.raises(GeomtrajError, match="loss: expected shape"):
        write_store(tmp_path / "bad.zarr", theta, m, v, loss[:, :10], beta1=0.9, beta2=0.99,
                    lr=1e-3, eps=1e-8)  # fmt: skip


def _spike_spacing(update_norm: np.ndarray) -> float:
    """Median spacing of update spikes, found without geomtraj's burst detector.

    A spike is a peak of ``log ||theta_t - theta_{t-1}||`` averaged over 21 updates (about one
    burst, which flips with period 2) that stands at least a factor e above its surroundings.
    """
    envelope = uniform_filter1d(np.log(update_norm), 21)
    peaks, _ = find_peaks(envelope, prominence=1.0)
    return float(np.median(np.diff(peaks)))


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_recorded_torch_run_slow_period_matches_its_spike_spacing(tmp_path, seed) -> None:
    path = tmp_path / "adam.zarr"
    _train({"record_params": 16}, 3000, seed=seed, path=path)
    out = tmp_path / "report"
    assert main(["analyze", str(path), "--out", str(out), "--analyses", "periods"]) == 0
    entry = json.loads((out / "report.json").read_text())["runs"][0]
    assert entry["status"] == "ok" and entry["n_bursts"] >= 10, entry
    spacing = _spike_spacing(open_store(path)["update_norm"].values[0])
    assert abs(entry["slow"]["period"] - spacing) / spacing < 0.1, (entry["slow"], spacing)


def test_bfloat16_parameters_are_stored_exactly_in_float32(tmp_path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    model = model.to(torch.bfloat16)
    X, y = torch.randn(32, 2, dtype=torch.bfloat16), torch.randn(32, 1, dtype=torch.bfloat16)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    path = tmp_path / "bf16.zarr"
    with TorchRecorder(path, opt, model=model, record_params="all", chunk_updates=16) as rec:
        for _ in range(40):
            opt.zero_grad()
            loss = torch.mean((model(X) - y) ** 2)
            loss.backward()
            opt.step()
            rec.step(loss)
    ds = open_store(path)
    assert str(ds["precision"].values[0]) == "bfloat16" and ds["theta"].dtype == np.float32
    final = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).float().numpy()
    np.testing.assert_array_equal(ds["theta"].values[0, -1], final)
    v = torch.cat([opt.state[p]["exp_avg_sq"].reshape(-1) for p in model.parameters()])
    np.testing.assert_array_equal(ds["v"].values[0, -1], v.float().numpy())


def test_per_update_series_across_blocks_chunks_and_skipped_rows(tmp_path) -> None:
    """grad_norm (with Adam's coupled decay) and update_norm of every update, recorded in blocks
    of 64 updates that neither chunks of 50 nor rows every 3 updates align with."""
    X, y = (torch.tensor(a) for a in make_dataset("sincos", 64, 0))
    model = _mlp(1)
    params = list(model.parameters())
    wd = 0.05
    opt = torch.optim.Adam(params, lr=0.01, weight_decay=wd)
    path = tmp_path / "series.zarr"
    rec = TorchRecorder(path, opt, model=model, record_params="all", record_every=3,
                        snapshot_every=40, chunk_updates=50)  # fmt: skip
    flat = lambda ts: torch.cat([x.detach().reshape(-1) for x in ts]).numpy().copy()  # noqa: E731
    want_grad, want_update, want_theta, want_m = [], [], [], []
    for _ in range(150):
        prev = flat(params)
        opt.zero_grad()
        loss = torch.mean((model(X)[:, 0] - y) ** 2)
        loss.backward()
        want_grad.append(np.linalg.norm(flat(p.grad for p in params) + wd * prev))
        opt.step()
        rec.step(loss)
        want_update.append(np.linalg.norm(flat(params) - prev))
        want_theta.append(flat(params))
        want_m.append(flat(opt.state[p]["exp_avg"] for p in params))
    rec.close()
    ds = open_store(path)
    np.testing.assert_allclose(ds["grad_norm"].values[0], want_grad, rtol=1e-12)
    np.testing.assert_allclose(ds["update_norm"].values[0], want_update, rtol=1e-12)
    np.testing.assert_array_equal(ds["step"].values, np.arange(3, 151, 3))
    np.testing.assert_array_equal(ds["theta"].values[0], np.stack(want_theta)[2::3])
    np.testing.assert_array_equal(ds["m"].values[0], np.stack(want_m)[2::3])
    np.testing.assert_array_equal(ds["snapshot"].values, [40, 80, 120])
    np.testing.assert_array_equal(ds["m_snapshot"].values[0, 1], want_m[79])
    np.testing.assert_array_equal(ds["theta_snapshot"].values[0, 2], want_theta[119])
