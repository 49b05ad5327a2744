"""Curvature margin: the loss's sharpness against the edge of stability of the optimizer that trains it.

Gradient descent with learning rate ``η`` on a quadratic of curvature ``λ``
diverges once ``λ > 2/η``; full-batch training of a network drifts up to that
edge and hovers there ("edge of stability", Cohen et al. 2021).  The top
eigenvalue ``λ_max`` of the training loss's Hessian (the *sharpness*), measured
at a few read-backs of the run, divided by the optimizer's limit at that
step's learning rate, is the **edge-of-stability ratio**; its inverse is the
**curvature margin**.  Limits, on the linearised update of a quadratic
(:class:`Rule`):

* ``SGD``: ``2/η``;
* ``SGD(momentum=β)`` (Keras' heavy-ball form): ``2(1+β)/η``;
* ``SGD(momentum=β, nesterov=True)``: ``(2+2β)/((1+2β)η)`` (the same recurrence,
  Keras' Nesterov form has the same characteristic polynomial);
* ``Adam`` / ``AdamW`` (``amsgrad`` too): ``(2+2β₁)/((1-β₁)η)`` (38/η at β₁ = 0.9)
  on the *preconditioned* sharpness ``λ_max(P⁻¹H)`` (Cohen et al. 2022,
  "Adaptive Gradient Methods at the Edge of Stability"), with ``P`` the
  preconditioner exactly as Keras' Adam applies it after ``t`` steps:
  ``P = (1-β₁ᵗ)/sqrt(1-β₂ᵗ) · (sqrt(v)+ε)`` (``v`` the second-moment slot;
  Keras adds ε to ``sqrt(v)``, not to ``sqrt(v̂)``);
* ``RMSprop(momentum=μ)``: ``2(1+μ)/η`` on ``λ_max(P⁻¹H)``, ``P = sqrt(v+ε)``
  (centered: ``sqrt(v - ḡ² + ε)``);
* any other optimizer: the plain ``λ_max`` is reported, no limit (ratio None).

Weight decay (it adds ``η·wd`` to the step's contraction) and gradient clipping
are not modelled.

``λ_max`` comes from Lanczos iterations (:func:`lanczos_top`, a fixed seed,
at most ``curvature_iterations`` Hessian-vector products, stopped once the
residual bound puts an eigenvalue within 0.1% of the top Ritz value; every measurement after the first
starts from the previous one's top Ritz vector, plus 5% of the seeded random start) on backend-native
Hessian-vector products of the model's own training loss (``model(x,
training=True)`` then ``model.compute_loss``, regularisation and ``add_loss``
losses included, BatchNorm in training mode; updates of BatchNorm statistics,
seed generators and metrics are discarded, so one dropout mask is fixed per
measurement) on a fixed batch: TensorFlow nested ``GradientTape`` inside a
``tf.function``, JAX ``jax.jvp`` of ``jax.value_and_grad`` (jitted), PyTorch
double backward (``create_graph=True``, the gradient's graph reused by every
product of a measurement).  The preconditioned sharpness is the top eigenvalue
of the symmetric ``P^-1/2 H P^-1/2`` (same spectrum as ``P⁻¹H``).

Also reported, cheaply (one more product): the *batch sharpness* of the same
batch, ``gᵀHg / |g|²`` (preconditioned: the same Rayleigh quotient at
``P^-1/2 g``), the curvature along the step's own direction (Andreyev &
Beneventano 2024, "Edge of Stochastic Stability", who average it over
minibatches; here it is one batch).

The measurement runs at read-backs, after ``_sync`` (under JAX, ``fit`` holds
the state), in a ``StatelessScope``: it changes no variable and no random
state, so the run's trace is the same with and without it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, NamedTuple, cast

import numpy as np

from ..framework_types import Data, Model, Optimizer, Tensor, Variable
from .isolation import kept_random_state
from .model_facts import optimizer_config_silently
from .recorders import host_numpy

#: the relative residual bound of the top Ritz value that ends a measurement (an eigenvalue within 0.1%)
TOL = 1e-3
#: the Lanczos basis is kept (full reorthogonalisation) while it holds at most this many float64 numbers
REORTH_MAX_FLOATS = 1 << 25


# -- pure numerics ----------------------------------------------------------------------------------------


class TopEigen(NamedTuple):
    """:func:`lanczos_top`'s answer."""

    #: the top Ritz value (NaN when a product was not finite)
    value: float
    #: matrix-vector products used
    products: int
    #: the residual bound fell below the tolerance, or the Krylov space became invariant (then exact)
    converged: bool
    #: ``|A s - value s| / |value|`` for the Ritz vector ``s``: some eigenvalue lies within
    #: ``residual * |value|`` of ``value`` (0 when exact)
    residual: float
    #: the Ritz vector (unit length), to start the next measurement from; None when the basis was not kept
    vector: np.ndarray | None = None


#: the weight of the random part of a warm start (the rest is the previous Ritz vector)
WARM_NOISE = 0.05


def lanczos_top(
    matvec: Callable[[np.ndarray], np.ndarray],
    n: int,
    *,
    iterations: int = 20,
    tol: float = TOL,
    seed: int = 0,
    start: np.ndarray | None = None,
) -> TopEigen:
    """The largest (algebraic) eigenvalue of a symmetric operator, by Lanczos iteration.

    Lanczos rather than power iteration: the same number of products gives the top eigenvalue far more
    accurately, and the largest *algebraic* one (power iteration finds the largest in magnitude, which
    in a non-convex region can be a negative one).

    Args:
        matvec: ``v -> A v`` for a float64 vector of length ``n``.
        n: the dimension.
        iterations: at most this many products.
        tol: stop once the residual bound is at most ``tol`` (relative): an eigenvalue lies within
            ``tol * |value|`` of the top Ritz value (in practice the top eigenvalue, and the error of the
            value is of the order of the residual squared over the spectral gap).  A stop on the change of
            the Ritz value between iterations would be cheaper and is not safe: it stalls for a few
            iterations while still 0.2% short (seen on a least-squares Hessian under Adam).
        seed: of the random start vector.
        start: a warm start (the previous measurement's Ritz vector): the start vector is it plus
            :data:`WARM_NOISE` of the seeded random one, so every direction stays in the Krylov space.

    Raises:
        ValueError: for ``n < 1`` or ``iterations < 1``, or a ``start`` of another length.
    """
    if n < 1 or iterations < 1:
        raise ValueError(f"lanczos_top needs n >= 1 and iterations >= 1, received n={n}, iterations={iterations}")
    rng = np.random.default_rng(seed)
    q = rng.standard_normal(n)
    q /= np.linalg.norm(q)
    if start is not None:
        start = np.asarray(start, dtype=np.float64).reshape(-1)
        if start.shape != (n,):
            raise ValueError(f"lanczos_top: start has {start.size} entries, the operator's dimension is {n}")
        if np.all(np.isfinite(start)) and np.linalg.norm(start) > 0:
            q = start / np.linalg.norm(start) + WARM_NOISE * q
            q /= np.linalg.norm(q)
    keep = n * (min(iterations, n) + 1) <= REORTH_MAX_FLOATS
    basis = [q] if keep else []
    alphas: list[float] = []
    betas: list[float] = []
    q_prev = np.zeros(n)
    beta = 0.0
    top = math.nan

    def ritz_vector(s: np.ndarray) -> np.ndarray | None:
        return np.stack(basis[: len(s)], axis=1) @ s if keep else None

    for k in range(min(iterations, n)):
        w = np.asarray(matvec(q), dtype=np.float64).reshape(n)
        if not np.all(np.isfinite(w)):
            return TopEigen(math.nan, k + 1, False, math.nan)
        alpha = float(q @ w)
        w = w - alpha * q - beta * q_prev
        if keep:  # twice is enough (Kahan): keeps the basis orthogonal to working precision
            for _ in range(2):
                for b in basis:
                    w -= (b @ w) * b
        alphas.append(alpha)
        ritz, vectors = np.linalg.eigh(np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1))
        top = float(ritz[-1])
        beta = float(np.linalg.norm(w))
        residual = beta * abs(float(vectors[-1, -1])) / max(abs(top), 1e-300)
        scale = max(abs(top), max(abs(a) for a in alphas), 1e-300)
        if beta <= 1e-10 * scale or k + 1 == n:  # invariant subspace: the Ritz values are eigenvalues
            return TopEigen(top, k + 1, True, 0.0, ritz_vector(vectors[:, -1]))
        if residual <= tol:
            return TopEigen(top, k + 1, True, residual, ritz_vector(vectors[:, -1]))
        betas.append(beta)
        q_prev, q = q, w / beta
        if keep:
            basis.append(q)
    return TopEigen(top, min(iterations, n), False, residual, ritz_vector(vectors[:, -1]))


@dataclass(frozen=True)
class Rule:
    """An optimizer's edge of stability: ``limit = constant / η`` on the (preconditioned) sharpness.

    Attributes:
        optimizer: the optimizer's class name.
        kind: ``gd``, ``heavy_ball``, ``nesterov``, ``adam``, ``rmsprop``, or ``unknown`` (no limit).
        beta: the momentum (``beta_1`` for Adam), 0 without.
        constant: ``limit * η`` (None for ``unknown``).
        preconditioned: whether the sharpness is ``λ_max(P⁻¹H)`` (Adam, RMSprop).
        text: the limit as a formula, e.g. ``2(1+β)/η, β=0.9``.
    """

    optimizer: str
    kind: str
    beta: float
    constant: float | None
    preconditioned: bool
    text: str

    def limit(self, lr: float | None) -> float | None:
        """The largest stable sharpness at learning rate ``lr`` (None when unknown or ``lr`` is not > 0)."""
        if self.constant is None or lr is None or not math.isfinite(lr) or lr <= 0:
            return None
        return self.constant / lr


def rule_for(optimizer: str, config: Mapping[str, Any]) -> Rule:
    """The :class:`Rule` of an optimizer, from its class name and ``get_config()`` (see the module docstring)."""

    def num(key: str, default: float = 0.0) -> float:
        value = config.get(key, default)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default

    if optimizer == "SGD":
        beta = num("momentum")
        if beta == 0:
            return Rule(optimizer, "gd", 0.0, 2.0, False, "2/η")
        if config.get("nesterov"):
            return Rule(
                optimizer,
                "nesterov",
                beta,
                (2 + 2 * beta) / (1 + 2 * beta),
                False,
                f"(2+2β)/((1+2β)η), β={beta:g} (Nesterov momentum)",
            )
        return Rule(optimizer, "heavy_ball", beta, 2 * (1 + beta), False, f"2(1+β)/η, β={beta:g} (heavy-ball momentum)")
    if optimizer in ("Adam", "AdamW"):
        beta = num("beta_1", 0.9)
        return Rule(
            optimizer,
            "adam",
            beta,
            (2 + 2 * beta) / (1 - beta),
            True,
            f"(2+2β₁)/((1-β₁)η), β₁={beta:g}, on the preconditioned sharpness",
        )
    if optimizer == "RMSprop":
        beta = num("momentum")
        text = "2/η" if beta == 0 else f"2(1+μ)/η, μ={beta:g}"
        return Rule(optimizer, "rmsprop", beta, 2 * (1 + beta), True, f"{text}, on the preconditioned sharpness")
    return Rule(optimizer, "unknown", 0.0, None, False, f"no edge-of-stability limit is known for {optimizer}")


def measurement_steps(steps: int, points: int) -> list[int]:
    """The steps the curvature is due at: ``points`` evenly spaced targets, the last at ``steps``."""
    points = max(1, min(int(points), int(steps)))
    return sorted({max(1, math.ceil(k * steps / points)) for k in range(1, points + 1)})


def _clean(value: float | None) -> float | None:
    """A finite float, else None (trace.info is builtins and strict JSON)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def summarize(
    points: Sequence[Mapping[str, Any]],
    lr: np.ndarray | None,
    rule: Rule,
    *,
    batch_size: int | None,
    notes: Sequence[str] = (),
) -> dict[str, Any]:
    """The builtins-only ``trace.info["curvature"]`` of a run's measurements.

    Args:
        points: one mapping per measurement: ``step`` (steps done), ``sharpness``, ``batch_sharpness``,
            ``iterations``, ``converged``, ``residual``, ``seconds``.
        lr: the trace's learning rate per step; a point after ``k`` steps uses ``lr[k-1]``.
        rule: the optimizer's :class:`Rule`.
        batch_size: samples in the fixed batch.
    """
    steps = [int(p["step"]) for p in points]
    sharp = [_clean(p.get("sharpness")) for p in points]
    bsharp = [_clean(p.get("batch_sharpness")) for p in points]
    lrs = [_clean(lr[s - 1]) if lr is not None and 1 <= s <= len(lr) else None for s in steps]
    limits = [_clean(rule.limit(v)) for v in lrs]
    ratio = [s / lim if s is not None and lim else None for s, lim in zip(sharp, limits, strict=True)]
    bratio = [s / lim if s is not None and lim else None for s, lim in zip(bsharp, limits, strict=True)]
    seconds = [float(p.get("seconds", 0.0)) for p in points]
    known = [(r, -s) for r, s in zip(ratio, steps, strict=True) if r is not None]
    max_ratio, at = max(known) if known else (None, None)  # the earliest of equal ratios
    at = -at if at is not None else None
    margin = 1.0 / max_ratio if max_ratio is not None and max_ratio > 0 else None
    what = "preconditioned sharpness" if rule.preconditioned else "sharpness"
    total = float(sum(seconds))
    tail = f"{len(points)} point{'s' if len(points) != 1 else ''} in {total:.1f} s"
    if not points:
        text = "curvature not measured" + (f": {notes[0]}" if notes else "")
    elif max_ratio is None:
        last = next((s for s in reversed(sharp) if s is not None), None)
        text = (
            f"{what} {last:.4g} at step {steps[-1]}; {rule.text}, so no edge-of-stability ratio; {tail}"
            if last is not None
            else f"{what} not finite; {tail}"
        )
    else:
        assert at is not None  # found with max_ratio
        k = steps.index(at)
        text = (
            f"edge-of-stability ratio {max_ratio:.3g} at step {at} ({what} {sharp[k]:.4g} vs limit "
            f"{limits[k]:.4g} = {rule.text} at lr {lrs[k]:.3g}); curvature margin "
            f"{margin:.3g}x; {tail}"
            if margin is not None
            else f"edge-of-stability ratio {max_ratio:.3g} (no positive curvature); {tail}"
        )
    return {
        "kind": "preconditioned" if rule.preconditioned else "hessian",
        "optimizer": rule.optimizer,
        "rule": rule.kind,
        "limit_text": rule.text,
        "steps": steps,
        "sharpness": sharp,
        "batch_sharpness": bsharp,
        "lr": lrs,
        "limit": limits,
        "ratio": ratio,
        "batch_ratio": bratio,
        "iterations": [int(p.get("iterations", 0)) for p in points],
        "converged": [bool(p.get("converged", False)) for p in points],
        "residual": [_clean(p.get("residual")) for p in points],
        "seconds": seconds,
        "seconds_total": total,
        "batch_size": batch_size,
        "max_ratio": max_ratio,
        "max_ratio_step": at,
        "margin": margin,
        "notes": list(notes),
        "text": text,
    }


# -- the measurement (framework code: imports stay inside the functions) ----------------------------------


def _host(keras: ModuleType, value: Tensor) -> np.ndarray:
    """A backend tensor (or variable) as a float64 numpy array (torch directly: Keras' np.array(tensor) warns)."""
    value = getattr(value, "value", value)
    if keras.backend.backend() == "torch":
        return np.asarray(value.detach().cpu().double().numpy())
    return np.asarray(host_numpy(value), np.float64)


def _loss_fn(
    keras: ModuleType, model: Model
) -> Callable[[Sequence[Tensor], Sequence[Tensor], Data, Data, Data], Tensor]:
    """The model's training loss as a function of its variables' values (no variable is changed)."""
    from .keras_internals import load

    StatelessScope = load("StatelessScope")

    trainable, others = list(model.trainable_variables), list(model.non_trainable_variables)

    def loss(tv: Sequence[Tensor], ntv: Sequence[Tensor], x: Data, y: Data, w: Data) -> Tensor:
        mapping = list(zip(trainable, tv, strict=True)) + list(zip(others, ntv, strict=True))
        with StatelessScope(state_mapping=mapping, collect_losses=True):
            y_pred = model(x, training=True) if model._call_has_training_arg else model(x)
            value = model._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=w, training=True)
        return keras.ops.cast(value, "float32")

    return loss


class _Products:
    """Hessian-vector products of the training loss on one batch at the model's current weights (host float64)."""

    def __init__(self, keras: ModuleType, model: Model) -> None:
        self.keras = keras
        self.model = model
        self.backend = keras.backend.backend()
        self.vars = list(model.trainable_variables)
        self.shapes = [tuple(int(d) for d in v.shape) for v in self.vars]
        self.sizes = [int(np.prod(s)) for s in self.shapes]
        self.dtypes = [str(v.dtype) for v in self.vars]
        self.n = int(sum(self.sizes))
        self._compiled: Callable[..., tuple[Tensor, list[Tensor], list[Tensor]]] | None = None
        self._loss = _loss_fn(keras, model)
        self._loss_compiled: Callable[..., Tensor] | None = None

    # flat host vectors <-> per-variable backend tensors
    def split(self, flat: np.ndarray) -> list[Tensor]:
        out, at = [], 0
        for shape, size, dtype in zip(self.shapes, self.sizes, self.dtypes, strict=True):
            out.append(self.keras.ops.convert_to_tensor(flat[at : at + size].reshape(shape).astype(dtype)))
            at += size
        return out

    def join(self, tensors: Sequence[Tensor | None]) -> np.ndarray:
        parts = [
            np.zeros(size) if t is None else _host(self.keras, t).reshape(-1)
            for t, size in zip(tensors, self.sizes, strict=True)
        ]
        return np.concatenate(parts) if parts else np.zeros(0)

    def at(self, batch: tuple[Data, Data, Data]) -> _Session:
        """Products ``v -> H v`` on ``batch`` at the current weights (and the loss and gradient there)."""
        ops = self.keras.ops
        tv = [ops.convert_to_tensor(v.value) for v in self.vars]
        ntv = [ops.convert_to_tensor(v.value) for v in self.model.non_trainable_variables]
        x, y, w = batch
        session = _Session(self)
        if self.backend == "torch":
            self._torch(session, tv, ntv, x, y, w)
            return session
        fn = self._compiled or self._compile()

        def hvp(flat: np.ndarray) -> np.ndarray:
            loss, g, hv = fn(tv, ntv, self.split(flat), x, y, w)
            if session.grad is None:  # the same with every product: kept from the first
                session.loss, session.grad = float(_host(self.keras, loss)), self.join(g)
            return self.join(hv)

        session.hvp = hvp
        return session

    def loss_at(self, batch: tuple[Data, Data, Data]) -> float:
        """The training loss on ``batch`` at the current weights, without its gradient: one compiled function
        for every batch of the same shapes (a batch replay's loss weighted to one sample at a time)."""
        ops = self.keras.ops
        tv = [ops.convert_to_tensor(v.value) for v in self.vars]
        ntv = [ops.convert_to_tensor(v.value) for v in self.model.non_trainable_variables]
        x, y, w = batch
        if self.backend == "torch":
            import torch

            with torch.no_grad():
                return float(self._loss(tv, ntv, x, y, w).detach().cpu())
        if self._loss_compiled is None:
            if self.backend == "tensorflow":
                import tensorflow as tf

                self._loss_compiled = tf.function(self._loss, reduce_retracing=True)
            else:
                import jax

                self._loss_compiled = jax.jit(self._loss)
        return float(_host(self.keras, self._loss_compiled(tv, ntv, x, y, w)))

    def _compile(self) -> Any:
        loss_fn = self._loss
        if self.backend == "tensorflow":
            import tensorflow as tf

            zero = tf.UnconnectedGradients.ZERO

            @tf.function(reduce_retracing=True)  # type: ignore[untyped-decorator]
            def fn(
                tv: list[Tensor], ntv: list[Tensor], vec: list[Tensor], x: Data, y: Data, w: Data
            ) -> tuple[Tensor, list[Tensor], list[Tensor]]:
                with tf.GradientTape() as outer:
                    outer.watch(tv)
                    with tf.GradientTape() as inner:
                        inner.watch(tv)
                        loss = loss_fn(tv, ntv, x, y, w)
                    g = inner.gradient(loss, tv, unconnected_gradients=zero)
                    gv = tf.add_n(
                        [
                            tf.reduce_sum(tf.cast(a, tf.float32) * tf.cast(b, tf.float32))
                            for a, b in zip(g, vec, strict=True)
                        ]
                    )
                return loss, g, outer.gradient(gv, tv, unconnected_gradients=zero)
        else:
            import jax

            value_and_grad = jax.value_and_grad(loss_fn)

            @jax.jit  # type: ignore[untyped-decorator]
            def fn(
                tv: list[Tensor], ntv: list[Tensor], vec: list[Tensor], x: Data, y: Data, w: Data
            ) -> tuple[Tensor, list[Tensor], list[Tensor]]:
                (loss, g), (_, hv) = jax.jvp(lambda p: value_and_grad(p, ntv, x, y, w), (list(tv),), (list(vec),))
                return loss, g, hv

        self._compiled = fn
        return fn

    def _torch(self, session: _Session, tv: list[Tensor], ntv: list[Tensor], x: Data, y: Data, w: Data) -> None:
        import torch

        params = [t.detach().requires_grad_(True) for t in tv]
        with torch.enable_grad():
            loss = self._loss(params, [t.detach() for t in ntv], x, y, w)
            grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
        session.loss = float(loss.detach().cpu())
        session.grad = self.join([None if g is None else g.detach() for g in grads])

        def hvp(flat: np.ndarray) -> np.ndarray:
            with torch.enable_grad():  # callbacks may run under no_grad
                terms = [
                    (g * v.to(g.dtype)).sum()
                    for g, v in zip(grads, self.split(flat), strict=True)
                    if g is not None and g.requires_grad
                ]
                if not terms:  # the loss is linear in every weight
                    return np.zeros(self.n)
                hv = torch.autograd.grad(sum(terms), params, retain_graph=True, allow_unused=True)
            return self.join(hv)

        session.hvp = hvp


class _Session:
    """One measurement's products: ``hvp``, and the loss and gradient (known after the first product)."""

    def __init__(self, products: _Products) -> None:
        self.n = products.n
        self.loss: float | None = None
        self.grad: np.ndarray | None = None
        self.hvp: Callable[[np.ndarray], np.ndarray] = lambda v: v


def _optimizer(keras: ModuleType, model: Model) -> Optimizer:
    opt = model.optimizer
    return opt.inner_optimizer if isinstance(opt, keras.optimizers.LossScaleOptimizer) else opt


def optimizer_rule(keras: ModuleType, model: Model) -> Rule:
    """The :class:`Rule` of the model's optimizer (its exact class: a subclass may change the update)."""
    inner = _optimizer(keras, model)
    known = {getattr(keras.optimizers, name, None): name for name in ("SGD", "Adam", "AdamW", "RMSprop")}
    name = known.get(type(inner), type(inner).__name__)
    if name not in ("SGD", "Adam", "AdamW", "RMSprop") and type(inner).__name__ in ("SGD", "Adam", "AdamW", "RMSprop"):
        name = f"{type(inner).__module__}.{type(inner).__name__}"  # a subclass or lookalike: its update is unknown
    return rule_for(name, optimizer_config_silently(inner))


def preconditioner(keras: ModuleType, model: Model, rule: Rule) -> np.ndarray | None:
    """The diagonal of ``P`` (flat, in trainable-variable order) the optimizer's last step divided by, or None."""
    if not rule.preconditioned:
        return None
    inner = _optimizer(keras, model)

    def slot(name: str, v: Variable) -> np.ndarray:
        values = getattr(inner, name)
        return _host(keras, values[inner._get_variable_index(v)]).reshape(-1)

    eps = float(inner.epsilon)
    parts = []
    for v in model.trainable_variables:
        if rule.kind == "adam":
            second = slot("_velocity_hats" if getattr(inner, "amsgrad", False) else "_velocities", v)
            t = float(_host(keras, inner.iterations))
            b1, b2 = float(inner.beta_1), float(inner.beta_2)
            scale = (1 - b1**t) / math.sqrt(1 - b2**t) if t >= 1 else 1.0
            parts.append(scale * (np.sqrt(np.maximum(second, 0.0)) + eps))
        else:  # RMSprop
            second = slot("_velocities", v)
            if getattr(inner, "centered", False):
                second = second - slot("_average_gradients", v) ** 2
            parts.append(np.sqrt(np.maximum(second + eps, 0.0)))
    return np.concatenate(parts) if parts else np.zeros(0)


def _scaled(hvp: Callable[[np.ndarray], np.ndarray], d: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """The products of ``D H D`` (``d`` the diagonal of ``D``) from those of ``H``."""
    return lambda u: d * hvp(d * u)


def sharpness(
    keras: ModuleType,
    model: Model,
    batch: tuple[Data, Data, Data],
    *,
    rule: Rule | None = None,
    iterations: int = 20,
    tol: float = TOL,
    seed: int = 0,
    products: _Products | None = None,
    start: np.ndarray | None = None,
) -> dict[str, Any]:
    """Measure the (preconditioned) sharpness of ``model``'s training loss on ``batch`` at its current weights.

    Args:
        batch: ``(x, y, sample_weight)`` as backend tensors or numpy arrays.
        rule: the optimizer's rule (default: :func:`optimizer_rule`); ``preconditioned`` rules read ``P``
            from the optimizer's slots.

    Returns:
        ``{"sharpness", "batch_sharpness", "loss", "iterations", "converged", "residual", "seconds", "vector"}``
        (floats may be NaN; ``vector`` is the top Ritz vector, in the ``P^-1/2``-scaled basis when
        preconditioned, or None).
        ``start``: a warm start for Lanczos (the previous measurement's ``vector``).
    """
    started = time.perf_counter()
    rule = rule if rule is not None else optimizer_rule(keras, model)
    products = products if products is not None else _Products(keras, model)
    session = products.at(batch)
    p = preconditioner(keras, model, rule)
    d = None if p is None else 1.0 / np.sqrt(p)
    matvec = session.hvp if d is None else _scaled(session.hvp, d)
    top = lanczos_top(matvec, products.n, iterations=iterations, tol=tol, seed=seed, start=start)
    # batch sharpness: the Rayleigh quotient at the (preconditioned) gradient, one more product
    grad = session.grad
    assert grad is not None  # known after the first product
    direction = grad if d is None else d * grad
    gnorm2 = float(direction @ direction)
    batch_sharp = float(direction @ matvec(direction)) / gnorm2 if gnorm2 > 0 and np.isfinite(gnorm2) else math.nan
    loss = session.loss
    return {
        "sharpness": top.value,
        "batch_sharpness": batch_sharp,
        "loss": loss,
        "iterations": top.products,
        "converged": top.converged,
        "residual": top.residual,
        "seconds": time.perf_counter() - started,
        "vector": top.vector,
    }


class Meter:
    """Measures the sharpness at planned read-backs of one ``fit`` (see the module docstring).

    Args:
        batch: the fixed batch ``(x, y, sample_weight)`` (numpy).
        targets: the steps it is due at (:func:`measurement_steps`); a read-back at or past a target
            measures once.
    """

    def __init__(
        self,
        keras: ModuleType,
        model: Model,
        batch: tuple[Data, Data, Data],
        *,
        targets: Sequence[int],
        iterations: int,
        seed: int,
    ) -> None:
        self.keras = keras
        self.model = model
        ops = keras.ops
        self.batch = cast(
            "tuple[Data, Data, Data]",
            tuple(None if part is None else keras.tree.map_structure(ops.convert_to_tensor, part) for part in batch),
        )
        leaves = [leaf for leaf in keras.tree.flatten(batch[0]) if leaf is not None]
        self.batch_size = int(np.shape(leaves[0])[0]) if leaves and np.ndim(leaves[0]) else None
        self.targets = list(targets)
        self.iterations = int(iterations)
        self.seed = int(seed)
        self.rule = optimizer_rule(keras, model)
        self.points: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.failed = False
        self._products: _Products | None = None
        self._start: np.ndarray | None = None

    def due(self, done: int) -> bool:
        return (
            not self.failed
            and done > 0
            and any(t <= done for t in self.targets)
            and (not self.points or self.points[-1]["step"] != done)
        )

    def measure(self, done: int) -> None:
        """Measure at ``done`` steps (the model's variables must hold the current values: ``_sync`` first)."""
        self.targets = [t for t in self.targets if t > done]
        try:
            with kept_random_state():
                if self._products is None:
                    self._products = _Products(self.keras, self.model)
                point = sharpness(
                    self.keras,
                    self.model,
                    self.batch,
                    rule=self.rule,
                    iterations=self.iterations,
                    seed=self.seed,
                    products=self._products,
                    start=self._start,
                )
        except Exception as exc:  # informational: never fail the run on it
            self.failed = True
            self.notes.append(
                f"the curvature could not be measured with the model's compute_loss "
                f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]})"
            )
            return
        # the top eigenvector moves little between read-backs: the next measurement starts from it
        self._start = point.pop("vector", None)
        point["step"] = int(done)
        self.points.append(point)

    def summary(self, lr: np.ndarray | None) -> dict[str, Any]:
        return summarize(self.points, lr, self.rule, batch_size=self.batch_size, notes=self.notes)


def fixed_batch(
    keras: ModuleType, kind: str, x: Data, y: Data, fit_kwargs: Mapping[str, Any], size: int
) -> tuple[tuple[Data, Data, Data] | None, str]:
    """The batch the curvature is measured on: the first ``size`` training samples (numpy), or None and why."""

    def head(obj: Data, n: int) -> Data:
        return None if obj is None else keras.tree.map_structure(lambda a: np.asarray(a)[:n], obj)

    if kind == "arrays":
        return (head(x, size), head(y, size), head(fit_kwargs.get("sample_weight"), size)), ""
    if kind not in ("dataset", "pydataset"):
        return None, (
            f"the curvature needs a fixed batch, and the training data ({kind}) cannot be read again; "
            "pass arrays, a tf.data.Dataset or a keras.utils.PyDataset"
        )
    from .keras_internals import load

    data_adapter_utils = load("data_adapter_utils")

    batches: list[tuple[Data, Data, Data]] = []
    count = 0
    source = iter(x) if kind == "dataset" else (x[i] for i in range(len(x)))
    for batch in source:
        bx, by, bw = data_adapter_utils.unpack_x_y_sample_weight(batch if isinstance(batch, tuple) else (batch,))
        part = cast(
            "tuple[Data, Data, Data]",
            tuple(None if p is None else keras.tree.map_structure(lambda a: host_numpy(a), p) for p in (bx, by, bw)),
        )
        batches.append(part)
        leaves = keras.tree.flatten(part[0])
        count += int(np.shape(leaves[0])[0]) if leaves else 0
        if count >= size:
            break
    if not batches:
        return None, "the curvature needs a fixed batch, and the training data yielded none"

    def cat(i: int) -> Data:
        if batches[0][i] is None:
            return None
        return head(keras.tree.map_structure(lambda *a: np.concatenate(a), *[b[i] for b in batches]), size)

    return (cat(0), cat(1), cat(2)), ""


__all__ = [
    "Meter",
    "Rule",
    "TOL",
    "TopEigen",
    "fixed_batch",
    "lanczos_top",
    "measurement_steps",
    "optimizer_rule",
    "preconditioner",
    "rule_for",
    "sharpness",
    "summarize",
]
