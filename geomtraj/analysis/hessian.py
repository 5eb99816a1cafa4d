"""Full-batch loss, gradient and exact Hessian-vector products of the MLPs of :mod:`.models`.

This is the model module's second derivative, used by the edge-of-stability analysis
(:mod:`geomtraj.analysis.stability`) to measure the curvature of a stored run at its checkpoints.
Everything is plain float64 NumPy, vectorised over data points (and over several direction vectors
at once), and follows the definitions of docs/contracts.md, not the trainer's arithmetic:

* parameters in the contract-1 flat layout (per layer ``W`` of shape ``(fan_in, fan_out)`` in
  row-major order, then ``b``), hidden layers ``tanh``/``sigmoid``/``relu``, a linear output;
* ``mse`` is ``mean((f - y)**2)`` (no factor 1/2) and ``bce`` is ``mean(softplus(f) - y*f)``,
  the binary cross-entropy of the logit ``f`` (contract 3);
* weight decay ``alpha``, where set, adds ``alpha*theta`` to the gradient as in contract 3, which is
  the gradient of ``alpha/2*||theta||^2``, so it adds ``alpha*I`` to the Hessian.

Hessian-vector products are exact (no finite differences): Pearlmutter's R-operator, i.e. forward-
mode differentiation of the back-propagation pass along the direction ``V``. For relu the second
derivative of the activation is taken as zero (the kinks have measure zero), so the product is the
Hessian of the piecewise-quadratic region the parameters lie in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import expit

from geomtraj.errors import GeomtrajError
from geomtraj.train.models import MLPSpec

__all__ = [
    "MLPObjective",
    "Linearisation",
    "KernelLinearisation",
    "loss_and_grad",
    "hvp",
    "hessian",
]


def _activation(name: str, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``sigma(z)``, ``sigma'(z)`` and ``sigma''(z)`` of a hidden activation."""
    if name == "tanh":
        a = np.tanh(z)
        d1 = 1.0 - a * a
        return a, d1, -2.0 * a * d1
    if name == "sigmoid":
        a = expit(z)
        d1 = a * (1.0 - a)
        return a, d1, d1 * (1.0 - 2.0 * a)
    if name == "relu":
        return np.maximum(z, 0.0), (z > 0.0).astype(np.float64), np.zeros_like(z)
    raise GeomtrajError(f"activation {name!r} unknown; expected tanh, sigmoid or relu")


def _point_loss(name: str, f: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Mean loss over points and its first and second derivatives with respect to each ``f_i``."""
    n = f.shape[0]
    if name == "mse":
        r = f - y
        return float(np.mean(r * r)), 2.0 * r / n, np.full(n, 2.0 / n)
    if name == "bce":
        s = expit(f)
        # softplus(f) = log(1 + e^f), written so that it never overflows
        value = float(np.mean(np.logaddexp(0.0, f) - y * f))
        return value, (s - y) / n, s * (1.0 - s) / n
    raise GeomtrajError(f"loss {name!r} unknown; expected mse or bce")


class Linearisation:
    """Forward and backward pass of one network at one ``theta``, kept for repeated HVPs.

    Built by :meth:`MLPObjective.at`. Calling it on directions returns their Hessian-vector
    products; :attr:`loss` and :attr:`grad` hold the loss and gradient at ``theta``.

    Attributes
    ----------
    theta : ndarray, shape (n_params,)
        The point, float64.
    loss : float
        Full-batch loss at ``theta`` (weight decay not included, as the trainer records it).
    grad : ndarray, shape (n_params,)
        Gradient at ``theta`` with weight decay added (the ``g`` Adam uses).
    """

    def __init__(self, objective: MLPObjective, theta: np.ndarray):
        spec = objective.spec
        self._objective = objective
        self.theta = theta
        self._layers = _unflatten(theta, spec)
        acts, d1s, d2s, zs = [objective.X], [], [], []
        a = objective.X
        n_layers = len(self._layers)
        for k, (W, b) in enumerate(self._layers):
            z = a @ W + b
            zs.append(z)
            if k < n_layers - 1:
                a, d1, d2 = _activation(spec.activation, z)
                acts.append(a)
                d1s.append(d1)
                d2s.append(d2)
        f = zs[-1][:, 0]
        self.loss, dldf, self._d2ldf2 = _point_loss(spec.loss, f, objective.y)
        # deltas[k] = dL/dz_k, shape (n_points, fan_out_k)
        deltas: list[np.ndarray] = [np.empty(0)] * n_layers
        delta = dldf[:, None]
        for k in range(n_layers - 1, -1, -1):
            deltas[k] = delta
            if k > 0:
                delta = (delta @ self._layers[k][0].T) * d1s[k - 1]
        self._acts, self._d1s, self._d2s, self._deltas = acts, d1s, d2s, deltas
        # constant parts of the R-backward pass, shared by every product at this point
        self._acts_T = [np.ascontiguousarray(a.T) for a in acts]
        self._curv = [(deltas[k] @ self._layers[k][0].T) * d2s[k - 1] for k in range(1, n_layers)]
        self._offsets = spec.layer_offsets()
        grads = [(acts[k].T @ deltas[k], deltas[k].sum(axis=0)) for k in range(n_layers)]
        self.grad = _flatten(grads) + objective.weight_decay * theta

    def __call__(self, vectors: np.ndarray) -> np.ndarray:
        """Hessian-vector products ``H @ v``, ``v`` of shape ``(n_params,)`` or ``(k, n_params)``.

        Pearlmutter's R-operator: with ``R{.}`` the directional derivative along ``V``,
        ``R{z_l} = R{a_{l-1}} W_l + a_{l-1} dW_l + db_l``, ``R{a_l} = sigma'(z_l) R{z_l}``,
        ``R{delta_L} = l''(f) R{f}``,
        ``R{delta_{l-1}} = (R{delta_l} W_l^T + delta_l dW_l^T) sigma'(z_{l-1})
        + (delta_l W_l^T) sigma''(z_{l-1}) R{z_{l-1}}``, and
        ``R{g_W} = R{a_{l-1}}^T delta_l + a_{l-1}^T R{delta_l}``, ``R{g_b} = sum R{delta_l}``.
        """
        spec = self._objective.spec
        V = np.asarray(vectors, dtype=np.float64)
        single = V.ndim == 1
        if single:
            V = V[None, :]
        if V.ndim != 2 or V.shape[1] != spec.n_params:
            raise GeomtrajError(
                f"HVP directions have shape {np.shape(vectors)}, expected ({spec.n_params},) or "
                f"(k, {spec.n_params}); pass vectors in the contract-1 flat layout"
            )
        if single:
            out1 = self._one(V[0])
            out1 += self._objective.weight_decay * V[0]
            return out1
        dirs = _unflatten_batch(V, spec)
        n_layers = len(self._layers)
        # R-forward: Rz[k] has shape (k_dirs, n_points, fan_out)
        Rzs, Ras = [], [None]  # R{a_0} = R{X} = 0
        for k, (W, _) in enumerate(self._layers):
            dW, db = dirs[k]
            Rz = self._acts[k] @ dW + db[:, None, :]
            if Ras[k] is not None:
                Rz = Rz + Ras[k] @ W
            Rzs.append(Rz)
            if k < n_layers - 1:
                Ras.append(self._d1s[k] * Rz)
        # R-backward
        Rdelta = self._d2ldf2[None, :, None] * Rzs[-1]
        out = []
        for k in range(n_layers - 1, -1, -1):
            delta = self._deltas[k]
            RgW = np.swapaxes(self._acts[k], -1, -2) @ Rdelta
            if Ras[k] is not None:
                RgW = RgW + np.swapaxes(Ras[k], -1, -2) @ delta
            out.append((RgW, Rdelta.sum(axis=1)))
            if k > 0:
                W = self._layers[k][0]
                dW = dirs[k][0]
                back = Rdelta @ W.T + delta @ np.swapaxes(dW, -1, -2)
                Rdelta = back * self._d1s[k - 1] + (delta @ W.T) * (self._d2s[k - 1] * Rzs[k - 1])
        out.reverse()
        Hv = np.concatenate(
            [np.concatenate([gW.reshape(V.shape[0], -1), gb], axis=1) for gW, gb in out], axis=1
        )
        Hv += self._objective.weight_decay * V
        return Hv

    def _one(self, v: np.ndarray) -> np.ndarray:
        """``H @ v`` for one direction with 2-D products (the batched path's arithmetic).

        Iterative eigensolvers call the product one vector at a time; without the batch axis and
        with the constant terms precomputed this costs about half as much.
        """
        out = np.empty(v.size)
        layers, acts, acts_T, d1s = self._layers, self._acts, self._acts_T, self._d1s
        n_layers = len(layers)
        dirs = [
            (v[w : w + fi * fo].reshape(fi, fo), v[b : b + fo]) for w, b, fi, fo in self._offsets
        ]
        Rzs, Ras = [], [None]
        for k, (W, _) in enumerate(layers):
            dW, db = dirs[k]
            Rz = acts[k] @ dW + db
            if Ras[k] is not None:
                Rz += Ras[k] @ W
            Rzs.append(Rz)
            if k < n_layers - 1:
                Ras.append(d1s[k] * Rz)
        Rdelta = self._d2ldf2[:, None] * Rzs[-1]
        for k in range(n_layers - 1, -1, -1):
            w, b, fi, fo = self._offsets[k]
            RgW = acts_T[k] @ Rdelta
            if Ras[k] is not None:
                RgW += Ras[k].T @ self._deltas[k]
            out[w : w + fi * fo] = RgW.ravel()
            out[b : b + fo] = Rdelta.sum(axis=0)
            if k > 0:
                back = Rdelta @ layers[k][0].T + self._deltas[k] @ dirs[k][0].T
                Rdelta = back * d1s[k - 1] + self._curv[k - 1] * Rzs[k - 1]
        return out


class KernelLinearisation(Linearisation):
    """A :class:`Linearisation` whose Hessian-vector products run in the JIT kernels.

    The same point, loss and gradient (this NumPy pass computes them, bit for bit as
    :class:`Linearisation`); the products come from :func:`geomtraj.analysis.kernels.hvp.rop`, the
    same R-operator compiled (BLAS layer products, element-wise loops over points), cheaper than
    :meth:`Linearisation._one` (docs/stability.md, "Hessian-vector products"). The two agree to
    rounding (the sums over points are ordered differently). Built by :meth:`MLPObjective.at`
    with ``kernel=True``.
    """

    def __init__(self, objective: MLPObjective, theta: np.ndarray):
        from geomtraj.analysis.kernels import hvp as kc

        super().__init__(objective, theta)
        spec = objective.spec
        self._theta_c = np.ascontiguousarray(theta, dtype=np.float64)
        self._sizes = np.array(spec.sizes, np.int64)
        self._work = w = kc.work_arrays(objective.X.shape[0], spec.sizes)
        self._rop = kc.rop
        kc.linearise(
            self._theta_c, self._sizes, spec.n_layers, kc.ACTIVATIONS[spec.activation],
            kc.LOSSES[spec.loss], objective.X, objective.y, float(objective.weight_decay),
            w["A"], w["Z"], w["D1"], w["D2"], w["DL"], w["CV"], w["d2l"], w["grad"],
        )  # fmt: skip
        self._args = (self._sizes, spec.n_layers, float(objective.weight_decay), w["A"], w["D1"],
                      w["DL"], w["CV"], w["d2l"], w["RZ"], w["RA"], w["RD"])  # fmt: skip
        self._scratch = (w["TMP"], w["TW"])

    def __call__(self, vectors: np.ndarray) -> np.ndarray:
        """``H @ v`` for ``v`` of shape ``(n_params,)`` or ``(k, n_params)``."""
        n = self._objective.spec.n_params
        V = np.asarray(vectors, dtype=np.float64)
        if V.ndim not in (1, 2) or V.shape[-1] != n:
            raise GeomtrajError(
                f"HVP directions have shape {np.shape(vectors)}, expected ({n},) or (k, {n}); "
                "pass vectors in the contract-1 flat layout"
            )
        rows = np.ascontiguousarray(V.reshape(-1, n))
        out = np.empty_like(rows)
        for i in range(rows.shape[0]):
            self._rop(self._theta_c, rows[i], *self._args, out[i], *self._scratch)
        return out[0] if V.ndim == 1 else out


@dataclass(frozen=True)
class MLPObjective:
    """The full-batch training loss of one network on one data set, in float64.

    Parameters
    ----------
    spec : MLPSpec
        Architecture, activation and loss.
    X : ndarray, shape (n_points, d_in)
        Inputs.
    y : ndarray, shape (n_points,)
        Targets (labels in {0, 1} for ``bce``).
    weight_decay : float
        Coefficient ``alpha`` added to the gradient as ``alpha*theta`` (contract 3).
    """

    spec: MLPSpec
    X: np.ndarray
    y: np.ndarray
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        X = np.ascontiguousarray(self.X, dtype=np.float64)
        y = np.ascontiguousarray(self.y, dtype=np.float64).ravel()
        if X.ndim != 2 or X.shape[1] != self.spec.d_in or X.shape[0] != y.shape[0]:
            raise GeomtrajError(
                f"data X {np.shape(self.X)} and y {np.shape(self.y)} do not fit a network with "
                f"d_in={self.spec.d_in}; expected X (n_points, {self.spec.d_in}) and y (n_points,)"
            )
        if X.shape[0] == 0 or not (np.isfinite(X).all() and np.isfinite(y).all()):
            raise GeomtrajError(
                f"data X {X.shape} is empty or holds non-finite values; pass the run's finite data"
            )
        if not np.isfinite(self.weight_decay):
            raise GeomtrajError(f"weight_decay={self.weight_decay} is not finite")
        object.__setattr__(self, "X", X)
        object.__setattr__(self, "y", y)

    def _theta(self, theta: np.ndarray) -> np.ndarray:
        th = np.asarray(theta, dtype=np.float64)
        if th.shape != (self.spec.n_params,):
            raise GeomtrajError(
                f"theta has shape {th.shape}, expected ({self.spec.n_params},) for hidden "
                f"{self.spec.hidden_str}; pass one run's parameters without NaN padding"
            )
        if not np.isfinite(th).all():
            raise GeomtrajError("theta holds non-finite values; curvature is undefined there")
        return th

    def at(self, theta: np.ndarray, *, kernel: bool = False) -> Linearisation:
        """The forward/backward pass at ``theta``; call the result for Hessian-vector products.

        With ``kernel`` the products run in the JIT kernels (:class:`KernelLinearisation`),
        worth it from a few products per point on.
        """
        th = self._theta(theta)
        return KernelLinearisation(self, th) if kernel else Linearisation(self, th)

    def loss_and_grad(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        """Loss (without weight decay) and gradient (with weight decay) at ``theta``."""
        lin = self.at(theta)
        return lin.loss, lin.grad

    def hvp(self, theta: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        """``H(theta) @ v`` for one ``(n_params,)`` or several ``(k, n_params)`` directions."""
        return self.at(theta)(vectors)

    def hessian(self, theta: np.ndarray, block: int = 256) -> np.ndarray:
        """The dense Hessian ``(n_params, n_params)``, from HVPs of unit vectors in blocks."""
        lin = self.at(theta)
        n = self.spec.n_params
        H = np.empty((n, n))
        eye = np.eye(n)
        for i in range(0, n, block):
            H[i : i + block] = lin(eye[i : i + block])
        # exact up to rounding; symmetrise the last-bit differences of the two orders
        return 0.5 * (H + H.T)


def loss_and_grad(
    spec: MLPSpec, theta: np.ndarray, X: np.ndarray, y: np.ndarray, weight_decay: float = 0.0
) -> tuple[float, np.ndarray]:
    """Full-batch loss and gradient of ``spec`` at ``theta`` (see :class:`MLPObjective`)."""
    return MLPObjective(spec, X, y, weight_decay).loss_and_grad(theta)


def hvp(
    spec: MLPSpec,
    theta: np.ndarray,
    X: np.ndarray,
    y: np.ndarray,
    vectors: np.ndarray,
    weight_decay: float = 0.0,
) -> np.ndarray:
    """Exact Hessian-vector products of the full-batch loss (see :class:`MLPObjective`)."""
    return MLPObjective(spec, X, y, weight_decay).hvp(theta, vectors)


def hessian(
    spec: MLPSpec, theta: np.ndarray, X: np.ndarray, y: np.ndarray, weight_decay: float = 0.0
) -> np.ndarray:
    """Dense Hessian of the full-batch loss (see :class:`MLPObjective`)."""
    return MLPObjective(spec, X, y, weight_decay).hessian(theta)


def _unflatten(theta: np.ndarray, spec: MLPSpec) -> list[tuple[np.ndarray, np.ndarray]]:
    return [
        (theta[w : w + fi * fo].reshape(fi, fo), theta[b : b + fo])
        for w, b, fi, fo in spec.layer_offsets()
    ]


def _unflatten_batch(V: np.ndarray, spec: MLPSpec) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per layer ``(dW (k, fan_in, fan_out), db (k, fan_out))`` views of ``k`` flat directions."""
    k = V.shape[0]
    return [
        (V[:, w : w + fi * fo].reshape(k, fi, fo), V[:, b : b + fo])
        for w, b, fi, fo in spec.layer_offsets()
    ]


def _flatten(grads: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    return np.concatenate([np.concatenate([gW.ravel(), gb]) for gW, gb in grads])
