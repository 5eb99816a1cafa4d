"""Cost of TorchRecorder against the same PyTorch training loop without it.

The issue's bar: recording costs at most 25% of the training loop on a small model. Both loops run
here, in one process, on the same models and data, trained with ``torch.optim.Adam`` in float32 on
one CPU thread:

* ``digits``: an MLP 64-32-32-10 classifier of scikit-learn's 8x8 digits (1,797 images, full
  batch, cross-entropy; 3,466 parameters);
* ``tiny``: geomtraj's own toy, an MLP 2-12-24-1 on 64 points of ``sincos`` (MSE; 373
  parameters), where a training step is cheapest and recording weighs most.

The recorder keeps 16 coordinates of theta/m/v at every update and the per-update series, and
appends a chunk to a zarr store every ``--chunk`` updates (store writes included). Times are the
process's CPU time (the machine may be shared; one thread makes CPU time the work done); loops
alternate (plain, recorded, plain, ...) and the median of ``--repeats`` is reported. The
recorded loop includes the store's creation at the first chunk (about 0.13 s of CPU, mostly
zarr's per-array metadata writes) and each chunk's append (about 0.02-0.03 s): fixed costs that
weigh more the shorter the run.

    .venv/bin/python benchmarks/bench_record.py [--steps 1000] [--repeats 3] [--record-params 16]
        [--compare OLD_RECORD_PY]

``--compare`` also times the ``TorchRecorder`` of another copy of ``geomtraj/store/record.py``
(e.g. the
previous commit's, ``git show HEAD~1:geomtraj/store/record.py > /tmp/old.py``) in the same
alternation,
so before/after figures come from one run on one machine load.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits

from geomtraj.store.record import TorchRecorder


def _setup(model_name: str, seed: int = 0):
    torch.manual_seed(seed)
    if model_name == "digits":
        digits = load_digits()
        X = torch.tensor(digits.data / 16.0, dtype=torch.float32)
        y = torch.tensor(digits.target, dtype=torch.long)
        model = torch.nn.Sequential(
            torch.nn.Linear(64, 32), torch.nn.Tanh(), torch.nn.Linear(32, 32), torch.nn.Tanh(),
            torch.nn.Linear(32, 10),
        )  # fmt: skip
        loss_fn = torch.nn.functional.cross_entropy
    else:
        from geomtraj.train.data import make_dataset

        Xn, yn = make_dataset("sincos", 64, 0)
        X, y = torch.tensor(Xn, dtype=torch.float32), torch.tensor(yn, dtype=torch.float32)
        model = torch.nn.Sequential(
            torch.nn.Linear(2, 12), torch.nn.Tanh(), torch.nn.Linear(12, 24), torch.nn.Tanh(),
            torch.nn.Linear(24, 1), torch.nn.Flatten(0),
        )  # fmt: skip
        loss_fn = torch.nn.functional.mse_loss
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return X, y, model, opt, loss_fn


def _recorder_from(file: str) -> type:
    """``TorchRecorder`` of another copy of ``geomtraj/store/record.py`` (the baseline)."""
    spec = importlib.util.spec_from_file_location("record_compared", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TorchRecorder


def loop(
    model_name: str, steps: int, path: Path | None, record_params: int, chunk: int,
    recorder: type = TorchRecorder,
) -> tuple[float, float]:  # fmt: skip
    """CPU seconds for ``steps`` Adam updates, recorded into ``path`` when given, and of them the
    seconds in ``close()`` (the last chunk's write; the store's creation when the run is shorter
    than a chunk)."""
    X, y, model, opt, loss_fn = _setup(model_name)
    rec = None
    if path is not None:
        rec = recorder(path, opt, model=model, record_params=record_params,
                            chunk_updates=chunk, overwrite=True)  # fmt: skip
    t0 = time.process_time()
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(model(X), y)
        loss.backward()
        opt.step()
        if rec is not None:
            rec.step(loss)
    t_close = time.process_time()
    if rec is not None:
        rec.close()
    t_end = time.process_time()
    return t_end - t0, t_end - t_close


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--record-params", type=int, default=16)
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--compare", metavar="RECORD_PY", help="also time this copy's TorchRecorder")
    args = ap.parse_args()
    recorders = {"TorchRecorder": TorchRecorder}
    if args.compare:
        recorders = {f"{args.compare}": _recorder_from(args.compare), **recorders}
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="bench_record_"))
    print(
        f"torch {torch.__version__}, float32, 1 thread, {args.steps} full-batch Adam steps, "
        f"{args.record_params} recorded coordinates, CPU seconds, median of {args.repeats}"
    )
    try:
        for name in ("digits", "tiny"):
            for recorder in recorders.values():  # imports, first write
                loop(name, 50, tmp / "warm.zarr", args.record_params, args.chunk, recorder)
            plain: list[float] = []
            recorded: dict[str, list[float]] = {label: [] for label in recorders}
            closing: dict[str, list[float]] = {label: [] for label in recorders}
            for k in range(args.repeats):
                plain.append(loop(name, args.steps, None, args.record_params, args.chunk)[0])
                for label, recorder in recorders.items():
                    total, at_close = loop(name, args.steps, tmp / f"r{k}.zarr",
                                           args.record_params, args.chunk, recorder)  # fmt: skip
                    recorded[label].append(total)
                    closing[label].append(at_close)
            p = float(np.median(plain))
            n = sum(x.numel() for x in _setup(name)[2].parameters())
            print(f"{name} ({n} parameters)")
            print(f"  training loop alone  {p:7.3f} s  ({args.steps / p:7.0f} steps/s)")
            for label in recorders:
                r, c = float(np.median(recorded[label])), float(np.median(closing[label]))
                print(f"  with {label}")
                print(f"    loop               {r:7.3f} s  ({args.steps / r:7.0f} steps/s)")
                print(f"    of which close()   {c:7.3f} s  (store creation, last chunk's write)")
                print(f"    per update         {1e6 * (r - c - p) / args.steps:7.1f} us")
                print(f"    recording overhead {100 * (r - p) / p:6.1f} %  (bar: 25 %)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
