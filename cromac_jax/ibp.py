"""Interval bound propagation (IBP) for CroMAC's message path and Q head.

CroMAC certifies that an agent's greedy action cannot change while every received message (and its
own hidden state) moves anywhere inside an l-infinity ball. We get that by pushing a *box* (an
:class:`Interval`, elementwise ``lower <= x <= upper``) through each layer with a rule that is
**sound**: for every concrete input inside the input box, the concrete output lies inside the
output box. Soundness composes, so a chain of sound rules bounds the whole network.

The rules here, and why each is sound:

* :func:`dense` -- ``y = x @ W + b`` is affine. Writing the box as centre ``c`` and radius ``r``,
  ``y - (c @ W + b) = (x - c) @ W`` and ``|(x - c) @ W| <= |x - c| @ |W| <= r @ |W|``.
* :func:`monotone` activations (relu, tanh, sigmoid, elu, leaky_relu, exp) and :func:`clip` --
  an elementwise non-decreasing ``f`` maps ``[l, u]`` into ``[f(l), f(u)]``.
* :func:`poe` -- product-of-experts fusion (paper eq. 5). The paper (eqs. 10-11) argues loose
  harmonic-mean bounds and works them out only for the variance; we compute the exact extremes of
  both the fused variance and the fused mean instead; see :func:`poe`.

Everything is a pure ``jax.numpy`` function of arrays / :class:`Interval` pytrees, so it works under
``jit``, ``vmap`` and ``grad`` (the robust loss differentiates through these bounds). Bounds are exact
in real arithmetic; float32 rounding can move them by about 1e-7 relative (the tests allow for
that; :func:`poe` widens its mean bound by a few ulps, see there).

Shape legend: ``...`` leading batch dims, ``M`` experts (messages), ``D`` latent dim, ``A`` actions.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

Array = jax.Array
ArrayLike = Any  # jax/numpy array or Python scalar
Params = Mapping[str, Mapping[str, ArrayLike]]

LOGVAR_MIN = -20.0
LOGVAR_MAX = 20.0


# --------------------------------------------------------------------------------------------
# The box
# --------------------------------------------------------------------------------------------


@struct.dataclass
class Interval:
    """An elementwise box ``lower <= x <= upper``; a pytree, so it passes through jit/vmap/tree ops.

    Both ends have the same shape. Nothing checks ``lower <= upper`` (it cannot be checked under
    ``jit``); the constructors below produce valid boxes and every rule here preserves validity.
    """

    lower: Array
    upper: Array

    @staticmethod
    def point(x: ArrayLike) -> "Interval":
        """The degenerate box ``[x, x]`` (an unperturbed input such as the agent one-hot)."""
        x = jnp.asarray(x)
        return Interval(x, x)

    @staticmethod
    def ball(x: ArrayLike, radius: ArrayLike) -> "Interval":
        """The l-infinity ball ``[x - radius, x + radius]``; ``radius`` is a scalar or broadcasts.

        A negative (or NaN) radius would give an empty or inverted box, whose "bounds" certify
        nothing; when ``radius`` is a concrete Python/NumPy/JAX value we refuse it with a
        ``ValueError`` naming the value. Under ``jit`` the radius is a tracer and cannot be inspected,
        so there it is the caller's job to pass ``radius >= 0``.
        """
        if not isinstance(radius, jax.core.Tracer):
            r = np.asarray(radius)
            if np.any(~(r >= 0)):
                raise ValueError(f"Interval.ball: radius must be >= 0, got {radius!r}")
        x = jnp.asarray(x)
        radius = jnp.asarray(radius, dtype=x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else None)
        return Interval(x - radius, x + radius)

    @property
    def center(self) -> Array:
        """Midpoint ``(lower + upper) / 2`` (the paper's "average", eq. 6)."""
        return (self.lower + self.upper) / 2

    @property
    def radius(self) -> Array:
        """Half-width ``(upper - lower) / 2`` (the paper's "residual", eq. 6)."""
        return (self.upper - self.lower) / 2

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of either end."""
        return self.lower.shape

    @staticmethod
    def concat(intervals: Sequence["Interval"], axis: int = -1) -> "Interval":
        """Concatenate boxes; sound because each coordinate keeps its own bounds."""
        return Interval(
            jnp.concatenate([i.lower for i in intervals], axis=axis),
            jnp.concatenate([i.upper for i in intervals], axis=axis),
        )

    def contains(self, x: ArrayLike, tol: ArrayLike = 0.0) -> Array:
        """Elementwise ``lower - tol <= x <= upper + tol`` (a bool array; ``.all()`` it in tests)."""
        x = jnp.asarray(x)
        return (self.lower - tol <= x) & (x <= self.upper + tol)


concat = Interval.concat


# --------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------


def dense(x: Interval, kernel: ArrayLike, bias: ArrayLike | None = None) -> Interval:
    """Bounds of ``x @ kernel + bias`` (flax ``nn.Dense`` layout: kernel ``(in, out)``).

    Centre/radius form (paper eq. 7): ``c' = c @ W + b``, ``r' = r @ |W|``. Sound because
    ``|(x - c) @ W| <= |x - c| @ |W| <= r @ |W|`` for every ``x`` in the box. Exact per output
    coordinate (each output's extremes are attained at some corner). Any leading batch dims.
    """
    kernel = jnp.asarray(kernel)
    c = x.center @ kernel
    if bias is not None:
        c = c + jnp.asarray(bias)
    r = x.radius @ jnp.abs(kernel)
    return Interval(c - r, c + r)


def monotone(fn: Callable[[Array], Array]) -> Callable[[Interval], Interval]:
    """Lift an elementwise **non-decreasing** ``fn`` to boxes: ``[l, u] -> [fn(l), fn(u)]``.

    Sound because ``l <= x <= u`` implies ``fn(l) <= fn(x) <= fn(u)``; it is also exact. Only use it
    for functions that really are non-decreasing, elementwise.
    """

    def bound(x: Interval) -> Interval:
        return Interval(fn(x.lower), fn(x.upper))

    bound.__name__ = getattr(fn, "__name__", "monotone")
    bound.__doc__ = f"Interval bound of the non-decreasing elementwise {bound.__name__}."
    return bound


relu = monotone(jax.nn.relu)
tanh = monotone(jnp.tanh)
sigmoid = monotone(jax.nn.sigmoid)
exp = monotone(jnp.exp)  # variance from a log-variance head


def elu(x: Interval, alpha: float = 1.0) -> Interval:
    """Bounds of ``elu``; non-decreasing (so sound) for ``alpha >= 0``."""
    return monotone(lambda v: jax.nn.elu(v, alpha))(x)


def leaky_relu(x: Interval, negative_slope: float = 0.01) -> Interval:
    """Bounds of ``leaky_relu``; non-decreasing (so sound) for ``negative_slope >= 0``."""
    return monotone(lambda v: jax.nn.leaky_relu(v, negative_slope))(x)


def clip(x: Interval, lo: ArrayLike, hi: ArrayLike) -> Interval:
    """Bounds of ``jnp.clip(x, lo, hi)``: clipping is non-decreasing, so clip both ends."""
    return Interval(jnp.clip(x.lower, lo, hi), jnp.clip(x.upper, lo, hi))


def mlp(
    x: Interval,
    layers: Sequence[tuple[ArrayLike, ArrayLike]],
    activation: Callable[[Interval], Interval] = relu,
) -> Interval:
    """Bounds of a stack of ``(kernel, bias)`` Dense layers with ``activation`` between layers.

    No activation after the last layer (Q values are unbounded). ``activation`` is an interval
    rule such as :func:`relu`. Sound as a composition of sound rules.
    """
    for i, (kernel, bias) in enumerate(layers):
        x = dense(x, kernel, bias)
        if i < len(layers) - 1:
            x = activation(x)
    return x


def mlp_apply(
    x: ArrayLike,
    layers: Sequence[tuple[ArrayLike, ArrayLike]],
    activation: Callable[[Array], Array] = jax.nn.relu,
) -> Array:
    """Concrete forward pass matching :func:`mlp` (``activation`` is the concrete function)."""
    x = jnp.asarray(x)
    for i, (kernel, bias) in enumerate(layers):
        x = x @ jnp.asarray(kernel) + jnp.asarray(bias)
        if i < len(layers) - 1:
            x = activation(x)
    return x


# --------------------------------------------------------------------------------------------
# The Gaussian message encoder
# --------------------------------------------------------------------------------------------


def gaussian_encoder_apply(x: ArrayLike, params: Params) -> tuple[Array, Array]:
    """Concrete encoder: ``h = relu(Dense_hidden(x))``, ``mean = Dense_mean(h)``,
    ``var = exp(clip(Dense_logvar(h), -20, 20))``. ``params`` uses flax's submodule names
    ``{"hidden", "mean", "logvar"}``, each ``{"kernel": (in, out), "bias": (out,)}``.
    """
    x = jnp.asarray(x)
    h = jax.nn.relu(x @ params["hidden"]["kernel"] + params["hidden"]["bias"])
    mean = h @ params["mean"]["kernel"] + params["mean"]["bias"]
    logvar = jnp.clip(h @ params["logvar"]["kernel"] + params["logvar"]["bias"], LOGVAR_MIN, LOGVAR_MAX)
    return mean, jnp.exp(logvar)


def gaussian_encoder(x: Interval, params: Params) -> tuple[Interval, Interval]:
    """Bounds of :func:`gaussian_encoder_apply`: ``(mean Interval, var Interval)``.

    dense -> relu -> two dense heads; the log-variance is clipped (monotone) then exponentiated
    (monotone). The clip also keeps ``var`` in ``[e^-20, e^20]``, so precisions stay finite and
    positive for :func:`poe`. Any leading dims (e.g. ``[..., M, in]`` for M messages).
    """
    h = relu(dense(x, params["hidden"]["kernel"], params["hidden"]["bias"]))
    mean = dense(h, params["mean"]["kernel"], params["mean"]["bias"])
    logvar = clip(dense(h, params["logvar"]["kernel"], params["logvar"]["bias"]), LOGVAR_MIN, LOGVAR_MAX)
    return mean, exp(logvar)


# --------------------------------------------------------------------------------------------
# Product of experts
# --------------------------------------------------------------------------------------------


def poe_apply(means: ArrayLike, vars: ArrayLike, prior: bool = True) -> tuple[Array, Array]:
    """Concrete product of Gaussian experts (paper eq. 5) over axis ``-2``: ``[..., M, D] -> [..., D]``.

    With precisions ``T_j = 1 / var_j``: fused ``var = 1 / sum_j T_j`` and fused
    ``mean = sum_j mu_j T_j / sum_j T_j``. ``prior=True`` adds the N(0, I) expert (``mu = 0``, ``T = 1``).
    """
    means = jnp.asarray(means)
    prec = 1.0 / jnp.asarray(vars)
    total = jnp.sum(prec, axis=-2) + (1.0 if prior else 0.0)
    return jnp.sum(means * prec, axis=-2) / total, 1.0 / total


def _max_weighted_mean(mu: Array, t_lo: Array, t_hi: Array) -> Array:
    """``max sum_j T_j mu_j / sum_j T_j`` over ``T_j in [t_lo_j, t_hi_j]``, exactly, over axis -2.

    A linear-fractional program over a box. Let ``v*`` be the optimum. Raising ``T_j`` raises the
    ratio iff ``mu_j > v*`` and leaves it at ``v*`` if ``mu_j = v*``, so some optimum gives max
    precision to every expert with ``mu_j >= v*`` and min precision to the rest. That set is
    ``{j : mu_j >= mu_k}`` for the expert ``k`` with the smallest mean ``>= v*`` (one exists: ``v*``
    is a weighted average, so ``max_j mu_j >= v*``). We evaluate these ``M`` "cuts", one per
    threshold expert ``k``, and take the best: every cut is feasible (never above the true max) and
    one is optimal (never below it), so the result is exact. Pairwise ``[M, M]`` comparisons instead
    of a sort: M is small (<= ~12), the sums are direct (no cancellation), and it differentiates.
    """
    above = mu[..., None, :, :] >= mu[..., :, None, :]  # [..., k, j, D]: expert j at or above k
    t = jnp.where(above, t_hi[..., None, :, :], t_lo[..., None, :, :])
    num = jnp.sum(t * mu[..., None, :, :], axis=-2)  # [..., k, D]
    den = jnp.sum(t, axis=-2)
    # den == 0 only if every precision in a cut is 0 (infinite variances): no Gaussian, skip it.
    ratio = jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), -jnp.inf)
    return jnp.max(ratio, axis=-2)


def poe(means: Interval, vars: Interval, prior: bool = True, tight: bool = True) -> tuple[Interval, Interval]:
    """Sound bounds of :func:`poe_apply` for boxes of expert means and variances ``[..., M, D]``.

    Requires ``vars.lower > 0`` (guaranteed by :func:`gaussian_encoder`'s clip). Returns
    ``(mean Interval [..., D], var Interval [..., D])``. The N(0, I) prior (``prior=True``) is an
    exact expert, not a box.

    * Variance: ``1 / (sum_j 1/var_j + prior)`` is increasing in every ``var_j``, so its extremes are
      at all-lower and all-upper variances -- exact.
    * Mean: a convex combination of the expert means (prior's 0 included) with weights
      ``T_j / sum T``, ``T_j in [1/var_upper_j, 1/var_lower_j]``. For fixed weights it is increasing in
      every ``mu_j``, so the max uses ``mu_upper`` and the min ``mu_lower``; what is left is a
      linear-fractional program in the precisions, solved exactly by :func:`_max_weighted_mean`
      (``tight=True``, the default). Bounding mean and var separately is sound (each is a true
      range) though it ignores their coupling through ``T``. With ``tight=False`` we return the
      looser convex-hull bound ``[min_j mu_lower_j, max_j mu_upper_j]`` (with 0 for the prior).
      The exact bound is always inside the hull.

    Float rounding: a cut's ratio (precision reciprocals, two ``M``-term sums, one division) is
    off by at most about ``2M + 2`` ulps of ``max_j |mu_j|`` to first order; we widen the mean
    bound by that much and then intersect with the hull (min/max, no rounding). So the rounding of
    this step is covered, the bound is never looser than the hull, and a degenerate box (all
    experts exact) never comes out inverted.
    """
    mu_lo, mu_hi = means.lower, means.upper
    t_lo, t_hi = 1.0 / vars.upper, 1.0 / vars.lower  # precision range per expert
    if prior:  # append the exact N(0, 1) expert along the expert axis
        zero = jnp.zeros_like(mu_lo[..., :1, :])
        one = jnp.ones_like(zero)
        mu_lo, mu_hi = jnp.concatenate([mu_lo, zero], -2), jnp.concatenate([mu_hi, zero], -2)
        t_lo, t_hi = jnp.concatenate([t_lo, one], -2), jnp.concatenate([t_hi, one], -2)

    var = Interval(1.0 / jnp.sum(t_hi, axis=-2), 1.0 / jnp.sum(t_lo, axis=-2))

    hull_lo, hull_hi = jnp.min(mu_lo, axis=-2), jnp.max(mu_hi, axis=-2)
    if not tight:
        return Interval(hull_lo, hull_hi), var
    upper = _max_weighted_mean(mu_hi, t_lo, t_hi)
    lower = -_max_weighted_mean(-mu_lo, t_lo, t_hi)
    n_experts = mu_lo.shape[-2]
    ulp = jnp.finfo(upper.dtype).eps * jnp.maximum(jnp.abs(hull_lo), jnp.abs(hull_hi))
    pad = (2 * n_experts + 2) * ulp
    return Interval(jnp.maximum(lower - pad, hull_lo), jnp.minimum(upper + pad, hull_hi)), var


# --------------------------------------------------------------------------------------------
# Certificates
# --------------------------------------------------------------------------------------------


def certified(
    q_lower: ArrayLike, q_upper: ArrayLike, action: ArrayLike, avail: ArrayLike | None = None
) -> Array:
    """Whether ``action`` stays greedy for every input in the box: ``[...]`` bool.

    True iff ``q_lower[action] >= max`` of ``q_upper`` over the other *available* actions: then no
    perturbation can make another available action score strictly higher. Unavailable actions
    are ignored (the agent cannot pick them); with no other available action the result is
    trivially True. Ties count as certified, matching an argmax that breaks ties towards
    ``action``. ``q_lower``/``q_upper``/``avail``: ``[..., A]``; ``action``: ``[...]`` int.
    """
    q_lower, q_upper = jnp.asarray(q_lower), jnp.asarray(q_upper)
    action = jnp.asarray(action)
    n_actions = q_lower.shape[-1]
    others = jnp.arange(n_actions) != action[..., None]
    if avail is not None:
        others = others & jnp.asarray(avail, dtype=bool)
    best_other = jnp.max(jnp.where(others, q_upper, -jnp.inf), axis=-1)
    own = jnp.take_along_axis(q_lower, action[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return own >= best_other
