"""Slow pure-NumPy twins of the training kernels (one run, float64).

These follow the definitions of docs/contracts.md (contracts 1 and 3), not the kernels' arithmetic
order, so tests compare them with the kernels to a tolerance (summation order differs), never bit
for bit.

* Parameters use the contract-1 flat layout: per layer ``W`` of shape ``(fan_in, fan_out)`` in
  row-major order, then ``b`` of shape ``(fan_out,)``.
* Hidden layers apply ``tanh``/``sigmoid``/``relu``; the output layer is linear.
* ``mse`` is ``mean((f - y)**2)`` (no 1/2); ``bce`` is ``mean(softplus(f) - y*f)`` of the
  logit ``f``.
* Adam is the textbook one (``torch.optim.Adam``, ``amsgrad=False``), weight decay added to ``g``.
"""

from __future__ import annotations

import numpy as np

from geomtraj.train.models import MLPSpec

__all__ = ["unflatten", "forward", "loss_value", "loss_and_grad", "adam_reference"]


def _act(name: str, z: np.ndarray) -> np.ndarray:
    if name == "tanh":
        return np.tanh(z)
    if name == "sigmoid":
        return 1.0 / (1.0 + np.exp(-z))
    if name == "relu":
        return np.maximum(z, 0.0)
    raise ValueError(f"unknown activation {name!r}")


def _act_deriv(name: str, z: np.ndarray) -> np.ndarray:
    """Derivative with respect to the pre-activation ``z`` (relu: 0 at the kink)."""
    if name == "tanh":
        return 1.0 - np.tanh(z) ** 2
    if name == "sigmoid":
        s = 1.0 / (1.0 + np.exp(-z))
        return s * (1.0 - s)
    if name == "relu":
        return (z > 0).astype(np.float64)
    raise ValueError(f"unknown activation {name!r}")


def unflatten(theta: np.ndarray, spec: MLPSpec) -> list[tuple[np.ndarray, np.ndarray]]:
    """``[(W1, b1), (W2, b2), ...]`` views of the flat contract-1 vector."""
    theta = np.asarray(theta, dtype=np.float64)
    assert theta.shape == (spec.n_params,), (theta.shape, spec.n_params)
    layers, off = [], 0
    sizes = spec.sizes
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        W = theta[off : off + fan_in * fan_out].reshape(fan_in, fan_out)
        off += fan_in * fan_out
        b = theta[off : off + fan_out]
        off += fan_out
        layers.append((W, b))
    assert off == spec.n_params
    return layers


def forward(theta, spec: MLPSpec, X) -> tuple[list[np.ndarray], np.ndarray]:
    """Activations ``[X, a_1, ..., a_L]`` of the hidden layers and the output ``f`` ``(n,)``."""
    a = np.asarray(X, dtype=np.float64)
    acts = [a]
    layers = unflatten(theta, spec)
    for k, (W, b) in enumerate(layers):
        z = a @ W + b
        if k < len(layers) - 1:
            a = _act(spec.activation, z)
            acts.append(a)
        else:
            f = z[:, 0]
    return acts, f


def _softplus(f: np.ndarray) -> np.ndarray:
    return np.maximum(f, 0.0) + np.log1p(np.exp(-np.abs(f)))


def _point_loss_and_dldf(loss: str, f: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    n = f.shape[0]
    if loss == "mse":
        r = f - y
        return float(np.mean(r * r)), 2.0 * r / n
    if loss == "bce":
        sig = 1.0 / (1.0 + np.exp(-f))
        return float(np.mean(_softplus(f) - y * f)), (sig - y) / n
    raise ValueError(f"unknown loss {loss!r}")


def loss_value(theta, spec: MLPSpec, X, y) -> float:
    """Full-batch loss at ``theta``."""
    _, f = forward(theta, spec, X)
    return _point_loss_and_dldf(spec.loss, f, np.asarray(y, dtype=np.float64))[0]


def loss_and_grad(theta, spec: MLPSpec, X, y) -> tuple[float, np.ndarray]:
    """Loss and its gradient (flat, contract-1 layout) by textbook back-propagation."""
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    layers = unflatten(theta, spec)
    # forward, keeping pre-activations for the derivative
    a, acts, zs = X, [X], []
    for k, (W, b) in enumerate(layers):
        z = a @ W + b
        zs.append(z)
        if k < len(layers) - 1:
            a = _act(spec.activation, z)
            acts.append(a)
    f = zs[-1][:, 0]
    loss, dldf = _point_loss_and_dldf(spec.loss, f, y)
    grads: list[tuple[np.ndarray, np.ndarray]] = [None] * len(layers)  # type: ignore[list-item]
    delta = dldf[:, None]  # dL/dz of the output layer, (n, 1)
    for k in range(len(layers) - 1, -1, -1):
        W, _ = layers[k]
        grads[k] = (acts[k].T @ delta, delta.sum(axis=0))
        if k > 0:
            delta = (delta @ W.T) * _act_deriv(spec.activation, zs[k - 1])
    flat = np.concatenate([np.concatenate([gW.ravel(), gb]) for gW, gb in grads])
    return loss, flat


def adam_reference(
    theta0,
    spec: MLPSpec,
    X,
    y,
    steps: int,
    beta1: float = 0.9,
    beta2: float = 0.999,
    lr: float = 1e-3,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> dict[str, np.ndarray]:
    """Textbook full-batch Adam (docs/contracts.md, contract 3).

    Returns ``theta``, ``m``, ``v`` of shape ``(steps, n_params)`` (row ``t-1`` holds the values
    after update ``t``) and ``losses`` ``(steps,)`` (row ``t-1`` is the loss at ``theta_{t-1}``).
    """
    theta = np.array(theta0, dtype=np.float64, copy=True)
    m = np.zeros_like(theta)
    v = np.zeros_like(theta)
    out = {k: np.empty((steps, theta.size)) for k in ("theta", "m", "v")}
    losses = np.empty(steps)
    for t in range(1, steps + 1):
        loss, grad = loss_and_grad(theta, spec, X, y)
        g = grad + weight_decay * theta
        m = beta1 * m + (1.0 - beta1) * g
        v = beta2 * v + (1.0 - beta2) * g * g
        m_hat = m / (1.0 - beta1**t)
        v_hat = v / (1.0 - beta2**t)
        theta = theta - lr * m_hat / (np.sqrt(v_hat) + eps)
        losses[t - 1] = loss
        out["theta"][t - 1], out["m"][t - 1], out["v"][t - 1] = theta, m, v
    out["losses"] = losses
    return out
