"""PyTorch CPU peer: train N independent tiny MLPs with Adam, all batched.

PLACEHOLDER_RESULTS
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch

__all__ = ["run_peer", "main"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _make_data(n_points: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """sincos-like regression data: x ~ U[-1,1]^2, y = sin(3 x0) cos(2 x1)."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1.0, 1.0, size=(n_points, 2))
    y = np.sin(3.0 * X[:, 0]) * np.cos(2.0 * X[:, 1])
    return X, y


def _init_params(
    n_nets: int, sizes: tuple[int, ...], dtype: torch.dtype, seed: int
) -> list[torch.Tensor]:
    """Glorot-uniform weights (N, fan_in, fan_out) and zero biases (N, 1, fan_out)."""
    rng = np.random.default_rng(seed)
    params: list[torch.Tensor] = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        lim = math.sqrt(6.0 / (fan_in + fan_out))
        w = rng.uniform(-lim, lim, size=(n_nets, fan_in, fan_out))
        params.append(torch.tensor(w, dtype=dtype).requires_grad_(True))
        params.append(torch.zeros((n_nets, 1, fan_out), dtype=dtype, requires_grad=True))
    return params


def _make_optimizer(params: list[torch.Tensor], lr: float, impl: str) -> torch.optim.Adam:
    if impl == "fused":
        return torch.optim.Adam(params, lr=lr, fused=True)
    if impl == "foreach":
        return torch.optim.Adam(params, lr=lr, foreach=True)
    raise ValueError(f"unknown optimizer impl {impl!r}; valid choices: foreach, fused")


def run_peer(
    n_nets: int,
    widths: tuple[int, ...] = (12, 24),
    n_points: int = 64,
    steps: int = 2000,
    dtype: str = "float32",
    threads: int | None = None,
    warmup: int = 20,
    *,
    lr: float = 1e-3,
    impl: str = "fused",
    seed: int = 0,
) -> dict:
    """Train ``n_nets`` MLPs ``2 -> widths... -> 1`` (tanh) on one shared full batch.

    All networks are batched: weights are ``(N, fan_in, fan_out)`` tensors, the forward
    pass is one ``torch.baddbmm`` per layer, the loss is the per-network MSE
    ``mean((f - y)^2)`` summed over networks (so each network gets its own gradient),
    and one ``torch.optim.Adam`` (``fused=True`` by default, ``impl="foreach"`` for the
    multi-tensor path) steps all parameters.  Only the ``steps`` steady-state steps after
    ``warmup`` untimed steps are timed; the loss is read back once, after timing.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; valid choices: {', '.join(_DTYPES)}")
    if n_nets < 1 or steps < 1 or warmup < 0 or n_points < 1:
        raise ValueError("n_nets, steps, n_points must be >= 1 and warmup >= 0")
    if threads is not None:
        torch.set_num_threads(int(threads))
    tdtype = _DTYPES[dtype]
    sizes = (2, *tuple(int(w) for w in widths), 1)

    X_np, y_np = _make_data(n_points, seed)
    # Shared data, expanded (stride 0, no copy) to the batch dimension for bmm.
    X = torch.tensor(X_np, dtype=tdtype).expand(n_nets, n_points, 2)
    y = torch.tensor(y_np, dtype=tdtype).reshape(1, n_points, 1)
    inv_p = 1.0 / n_points

    params = _init_params(n_nets, sizes, tdtype, seed + 1)
    opt = _make_optimizer(params, lr, impl)
    n_layers = len(sizes) - 1

    def step() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        h = X
        for i in range(n_layers):
            w, b = params[2 * i], params[2 * i + 1]
            h = torch.baddbmm(b, h, w)
            if i < n_layers - 1:
                h = torch.tanh(h)
        # sum over networks of mean over points
        loss = (h - y).square().sum() * inv_p
        loss.backward()
        opt.step()
        return loss

    with torch.inference_mode(False):
        for _ in range(warmup):
            step()
        t0 = time.perf_counter()
        for _ in range(steps):
            loss = step()
        seconds = time.perf_counter() - t0

    final_loss = float(loss.detach()) / n_nets  # mean per-network MSE (read once)
    return {
        "network_steps_per_s": n_nets * steps / seconds,
        "seconds": seconds,
        "n_nets": n_nets,
        "dtype": dtype,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "widths": list(sizes[1:-1]),
        "n_points": n_points,
        "steps": steps,
        "warmup": warmup,
        "impl": impl,
        "final_mean_loss": final_loss,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nets", type=int, default=1024)
    p.add_argument("--widths", type=int, nargs="+", default=[12, 24])
    p.add_argument("--points", type=int, default=64)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--dtype", choices=sorted(_DTYPES), default="float32")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--impl", choices=["fused", "foreach"], default="fused")
    p.add_argument("--lr", type=float, default=1e-3)
    args = p.parse_args(argv)
    res = run_peer(
        args.nets,
        widths=tuple(args.widths),
        n_points=args.points,
        steps=args.steps,
        dtype=args.dtype,
        threads=args.threads,
        warmup=args.warmup,
        lr=args.lr,
        impl=args.impl,
    )
    print(json.dumps(res))


if __name__ == "__main__":
    main()
