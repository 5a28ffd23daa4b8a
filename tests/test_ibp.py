"""Interval bound propagation: every bound is checked against sampled points (DESIGN.md: certificates
are sound or they are nothing).

Soundness tests draw random networks and random boxes with hypothesis, then push thousands of
points from the box -- uniform draws, box corners (all 2^d of them for small d) and the centre --
through the concrete forward pass and require every output inside the bounds, up to float32
rounding (``RTOL`` times the output's scale).
"""

from __future__ import annotations

import itertools
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cromac_jax import ibp
from cromac_jax.ibp import Interval

RTOL = 1e-5
N_UNIFORM = 2000
SETTINGS = settings(
    max_examples=30,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# name -> (interval rule, concrete function)
ACTIVATIONS = {
    "relu": (ibp.relu, jax.nn.relu),
    "tanh": (ibp.tanh, jnp.tanh),
    "sigmoid": (ibp.sigmoid, jax.nn.sigmoid),
    "elu": (ibp.elu, jax.nn.elu),
    "leaky_relu": (ibp.leaky_relu, jax.nn.leaky_relu),
}
ALL_ELEMENTWISE = {
    **ACTIVATIONS,
    "exp": (ibp.exp, jnp.exp),
    "clip": (partial(ibp.clip, lo=-0.5, hi=0.7), partial(jnp.clip, min=-0.5, max=0.7)),
}

seeds = st.integers(0, 2**31 - 1)
radius_kinds = st.sampled_from(["zero", "scalar", "per_coord"])

# jitted rules (activations are static: they select the program)
j_dense = jax.jit(ibp.dense)
j_mlp = jax.jit(ibp.mlp, static_argnums=2)
j_mlp_apply = jax.jit(ibp.mlp_apply, static_argnums=2)
j_enc = jax.jit(ibp.gaussian_encoder)
j_enc_apply = jax.jit(ibp.gaussian_encoder_apply)
j_poe = jax.jit(ibp.poe, static_argnames=("prior", "tight"))
j_poe_apply = jax.jit(ibp.poe_apply, static_argnames=("prior",))


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------


def make_radius(rng: np.random.Generator, kind: str, shape: tuple[int, ...], scale: float = 1.0):
    """A radius of the given kind: 0, a scalar, or per coordinate (with some exact zeros)."""
    if kind == "zero":
        return 0.0
    if kind == "scalar":
        return float(rng.uniform(0, scale))
    r = rng.uniform(0, scale, shape)
    return np.where(rng.random(shape) < 0.2, 0.0, r).astype(np.float32)


def box_samples(rng: np.random.Generator, lower, upper, n: int = N_UNIFORM, n_corners: int = 256):
    """Points of the box ``[lower, upper]`` (shape ``S = (..., d)``), stacked as ``(K, *S)``.

    Uniform draws; ``n_corners`` corners over the last axis, shared across leading dims (all
    ``2^d`` of them when ``2^d <= n_corners``, i.e. ``d <= 8``, topped up with random ones);
    ``n_corners`` independent random corners per element; the centre. ``K`` depends only on
    ``n`` and ``n_corners``, so the jitted forward pass is not recompiled for every ``d``.
    """
    lower, upper = np.asarray(lower, np.float64), np.asarray(upper, np.float64)
    shape = lower.shape
    d = shape[-1]
    bits = rng.integers(0, 2, (n_corners, d)).astype(np.float64)
    if 2**d <= n_corners:
        bits[: 2**d] = np.array(list(itertools.product([0.0, 1.0], repeat=d)))
    shared = np.broadcast_to(bits.reshape((len(bits),) + (1,) * (len(shape) - 1) + (d,)), (len(bits),) + shape)
    t = np.concatenate(
        [
            rng.random((n,) + shape),
            shared,
            rng.integers(0, 2, (n_corners,) + shape).astype(np.float64),
            np.full((1,) + shape, 0.5),
        ]
    )
    return (lower + t * (upper - lower)).astype(np.float32)


def assert_sound(bounds: Interval, samples, name: str = "", rtol: float = RTOL) -> None:
    """Every sample (``(K, *bounds.shape)``) lies in the bounds up to ``rtol`` times the scale."""
    lo, hi, s = np.asarray(bounds.lower), np.asarray(bounds.upper), np.asarray(samples)
    assert s.shape[1:] == lo.shape, (name, s.shape, lo.shape)
    assert np.all(np.isfinite(lo)) and np.all(np.isfinite(hi)), name
    assert np.all(lo <= hi), f"{name}: inverted bounds"
    scale = 1.0 + max(np.abs(lo).max(initial=0.0), np.abs(hi).max(initial=0.0))
    viol = np.maximum(lo - s, s - hi).max(initial=-np.inf)
    assert viol <= rtol * scale, f"{name}: sample outside bounds by {viol:.3g} (scale {scale:.3g})"


def assert_sound_var(bounds: Interval, samples, name: str = "var") -> None:
    """Variances span e^-20..e^20, so compare in log space, where float error is relative."""
    assert np.all(np.asarray(bounds.lower) > 0), name
    assert_sound(
        Interval(jnp.log(bounds.lower), jnp.log(bounds.upper)), np.log(np.asarray(samples)), name
    )


def random_layers(rng: np.random.Generator, sizes: list[int], scale: float):
    """Dense ``(kernel (in, out), bias (out,))`` pairs with weights of the given scale."""
    return [
        (
            jnp.asarray(rng.normal(0, scale / np.sqrt(i), (i, o)), jnp.float32),
            jnp.asarray(rng.normal(0, scale, (o,)), jnp.float32),
        )
        for i, o in zip(sizes[:-1], sizes[1:], strict=True)
    ]


def random_encoder(rng: np.random.Generator, d_in: int, hidden: int, d_z: int, scale: float, logvar_scale: float):
    """Params in flax's layout for submodules hidden / mean / logvar."""
    (w1, b1), = random_layers(rng, [d_in, hidden], scale)
    (wm, bm), = random_layers(rng, [hidden, d_z], scale)
    (wv, bv), = random_layers(rng, [hidden, d_z], logvar_scale)
    return {
        "hidden": {"kernel": w1, "bias": b1},
        "mean": {"kernel": wm, "bias": bm},
        "logvar": {"kernel": wv, "bias": bv},
    }


def random_experts(rng: np.random.Generator, lead: tuple[int, ...], m: int, d: int):
    """Boxes of expert means and variances ``[*lead, m, d]``; some boxes are degenerate."""
    shape = lead + (m, d)
    mu_c = rng.normal(0, 2, shape)
    mu_r = np.where(rng.random(shape) < 0.2, 0.0, rng.uniform(0, 2, shape))
    logv_lo = rng.uniform(-3, 3, shape)
    logv_hi = logv_lo + np.where(rng.random(shape) < 0.2, 0.0, rng.uniform(0, 3, shape))
    f32 = partial(jnp.asarray, dtype=jnp.float32)
    return Interval(f32(mu_c - mu_r), f32(mu_c + mu_r)), Interval(f32(np.exp(logv_lo)), f32(np.exp(logv_hi)))


def expert_samples(rng: np.random.Generator, box: Interval, n: int, log: bool = False):
    """Points of an expert box: each coordinate at its lower end, upper end, or uniform inside
    (uniform in log space for variances), so vertices -- where PoE extremes sit -- are hit often."""
    lo, hi = np.asarray(box.lower, np.float64), np.asarray(box.upper, np.float64)
    if log:
        lo, hi = np.log(lo), np.log(hi)
    shape = (n,) + lo.shape
    choice = rng.integers(0, 3, shape)
    t = np.where(choice == 0, 0.0, np.where(choice == 1, 1.0, rng.random(shape)))
    x = lo + t * (hi - lo)
    return (np.exp(x) if log else x).astype(np.float32)


# ------------------------------------------------------------------------------------------
# the Interval pytree
# ------------------------------------------------------------------------------------------


def test_interval_is_a_pytree_and_helpers_work():
    x = jnp.arange(6.0).reshape(2, 3)
    box = Interval.ball(x, 0.5)
    np.testing.assert_allclose(box.center, x)
    np.testing.assert_allclose(box.radius, 0.5)
    assert box.shape == (2, 3)

    doubled = jax.jit(lambda b: Interval(2 * b.lower, 2 * b.upper))(box)
    assert isinstance(doubled, Interval)
    np.testing.assert_allclose(doubled.upper, 2 * (x + 0.5))
    rows = jax.vmap(lambda b: Interval(b.lower.sum(), b.upper.sum()))(box)
    np.testing.assert_allclose(rows.lower, (x - 0.5).sum(-1))
    assert len(jax.tree.leaves(box)) == 2
    shifted = jax.tree.map(lambda a: a + 1, box)
    np.testing.assert_allclose(shifted.center, x + 1)

    both = ibp.concat([box, Interval.point(jnp.zeros((2, 1)))], axis=-1)
    assert both.shape == (2, 4)
    np.testing.assert_allclose(both.radius[:, -1], 0.0)
    assert bool(box.contains(x).all()) and bool(box.contains(x + 0.5).all())
    assert not bool(box.contains(x + 0.6).all())
    assert bool(box.contains(x + 0.6, tol=0.11).all())

    radii = jnp.array([0.0, 1.0, 2.0])
    per_coord = Interval.ball(jnp.zeros(3), radii)
    np.testing.assert_allclose(per_coord.upper, radii)


@pytest.mark.parametrize(
    "radius,shown",
    [(-0.1, "-0.1"), (-1, "-1"), (np.float32(-2.5), "-2.5"), (np.array([0.1, -0.3]), "-0.3"), (float("nan"), "nan")],
)
def test_ball_rejects_negative_radius_naming_it(radius, shown):
    with pytest.raises(ValueError, match="radius must be >= 0") as err:
        Interval.ball(jnp.zeros(2), radius)
    assert shown in str(err.value)


def test_ball_under_jit_cannot_check_but_works():
    # Inside jit the radius is a tracer: no check is possible (documented), valid radii still work.
    box = jax.jit(Interval.ball)(jnp.ones(3), 0.25)
    np.testing.assert_allclose(box.lower, 0.75)
    np.testing.assert_allclose(box.upper, 1.25)


# ------------------------------------------------------------------------------------------
# soundness of each rule
# ------------------------------------------------------------------------------------------


@SETTINGS
@given(
    seed=seeds,
    shapes=st.sampled_from([((), 1, 1), ((3,), 4, 2), ((2, 3), 10, 6), ((2,), 7, 3)]),
    scale=st.sampled_from([0.01, 0.3, 1.0, 5.0]),
    kind=radius_kinds,
)
def test_dense_sound(seed, shapes, scale, kind):
    lead, d_in, d_out = shapes
    rng = np.random.default_rng(seed)
    (w, b), = random_layers(rng, [d_in, d_out], scale)
    x = rng.normal(0, 2, lead + (d_in,)).astype(np.float32)
    box = Interval.ball(x, make_radius(rng, kind, x.shape))
    bounds = j_dense(box, w, b)
    assert bounds.shape == lead + (d_out,)
    pts = box_samples(rng, box.lower, box.upper)
    assert_sound(bounds, np.asarray(pts @ w + b), "dense")
    # and exact: output j reaches its upper (lower) bound at the corner c + r sign(W[:, j]) (c - r sign)
    c, r = np.asarray(x, np.float64), np.asarray(box.upper, np.float64) - np.asarray(x, np.float64)
    sign = np.sign(np.asarray(w, np.float64))  # [d_in, d_out]
    for s, bound in ((1.0, bounds.upper), (-1.0, bounds.lower)):
        corner = c[..., :, None] + s * r[..., :, None] * sign  # [..., d_in, d_out]: one corner per output
        reached = np.einsum("...io,io->...o", corner, np.asarray(w, np.float64)) + np.asarray(b, np.float64)
        np.testing.assert_allclose(np.asarray(bound), reached, rtol=1e-4, atol=1e-4 * (1 + np.abs(reached).max()))


@SETTINGS
@given(seed=seeds, name=st.sampled_from(sorted(ALL_ELEMENTWISE)), kind=radius_kinds)
def test_elementwise_rules_sound(seed, name, kind):
    rule, fn = ALL_ELEMENTWISE[name]
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 3, (4, 5)).astype(np.float32)
    box = Interval.ball(x, make_radius(rng, kind, x.shape, scale=3.0))
    pts = box_samples(rng, box.lower, box.upper)
    out = rule(box)
    if name == "exp":
        assert_sound_var(out, np.asarray(fn(pts)), name)
    else:
        assert_sound(out, np.asarray(fn(pts)), name)
    # and exact: each rule is monotone, so its bounds are the function at the box's ends
    np.testing.assert_allclose(np.asarray(out.upper), np.asarray(fn(box.upper)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(out.lower), np.asarray(fn(box.lower)), rtol=1e-5, atol=1e-6)


@SETTINGS
@given(
    seed=seeds,
    sizes=st.sampled_from([(1, 4, 2), (5, 8, 8, 3)]),
    scale=st.sampled_from([0.1, 1.0, 3.0]),
    act=st.sampled_from(sorted(ACTIVATIONS)),
    kind=radius_kinds,
)
def test_mlp_sound(seed, sizes, scale, act, kind):
    rule, fn = ACTIVATIONS[act]
    rng = np.random.default_rng(seed)
    layers = random_layers(rng, list(sizes), scale)
    x = rng.normal(0, 1, (2, sizes[0])).astype(np.float32)
    box = Interval.ball(x, make_radius(rng, kind, x.shape))
    bounds = j_mlp(box, layers, rule)
    pts = box_samples(rng, box.lower, box.upper)
    assert_sound(bounds, j_mlp_apply(pts, layers, fn), f"mlp/{act}")


@SETTINGS
@given(
    seed=seeds,
    shapes=st.sampled_from([(1, 1, 1, 1), (2, 4, 8, 3), (3, 8, 2, 4)]),  # (M, in, hidden, z)
    scale=st.sampled_from([0.1, 1.0, 3.0]),
    logvar_scale=st.sampled_from([0.3, 3.0, 30.0]),  # 30 drives log-variances into the clip
    kind=radius_kinds,
)
def test_gaussian_encoder_sound(seed, shapes, scale, logvar_scale, kind):
    m, d_in, hidden, d_z = shapes
    rng = np.random.default_rng(seed)
    params = random_encoder(rng, d_in, hidden, d_z, scale, logvar_scale)
    x = rng.normal(0, 1, (m, d_in)).astype(np.float32)
    box = Interval.ball(x, make_radius(rng, kind, x.shape))
    mean_b, var_b = j_enc(box, params)
    assert mean_b.shape == var_b.shape == (m, d_z)
    pts = box_samples(rng, box.lower, box.upper)
    mean, var = j_enc_apply(pts, params)
    assert_sound(mean_b, mean, "encoder mean")
    assert_sound_var(var_b, var, "encoder var")
    assert np.all(np.asarray(var_b.lower) >= np.exp(-20.0) * (1 - 1e-6))


@partial(jax.jit, static_argnums=2)
def j_raw_upper(means: Interval, vars_: Interval, prior: bool):
    """The linear-fractional maximum before poe() pads it and intersects it with the hull."""
    mu, t_lo, t_hi = means.upper, 1.0 / vars_.upper, 1.0 / vars_.lower
    if prior:
        pad = lambda a, v: jnp.concatenate([a, jnp.full_like(a[..., :1, :], v)], -2)  # noqa: E731
        mu, t_lo, t_hi = pad(mu, 0.0), pad(t_lo, 1.0), pad(t_hi, 1.0)
    return ibp._max_weighted_mean(mu, t_lo, t_hi)


@SETTINGS
@given(
    seed=seeds,
    lead=st.sampled_from([(), (2,)]),
    m=st.sampled_from([1, 3, 11]),
    prior=st.booleans(),
)
def test_poe_sound_and_tight_within_hull(seed, lead, m, prior):
    d = 3
    rng = np.random.default_rng(seed)
    means, vars_ = random_experts(rng, lead, m, d)
    mean_b, var_b = j_poe(means, vars_, prior=prior)
    hull_b, hull_var = j_poe(means, vars_, prior=prior, tight=False)
    assert mean_b.shape == var_b.shape == lead + (d,)
    n = 4000
    mu, var = j_poe_apply(expert_samples(rng, means, n), expert_samples(rng, vars_, n, log=True), prior=prior)
    assert_sound(mean_b, mu, "poe mean")
    assert_sound_var(var_b, var, "poe var")
    # the exact bound never loosens the convex hull; poe() also intersects with the hull (a float
    # safeguard), so check the raw linear-fractional maximum too; the variance bound is shared
    assert np.all(np.asarray(mean_b.lower) >= np.asarray(hull_b.lower))
    assert np.all(np.asarray(mean_b.upper) <= np.asarray(hull_b.upper))
    raw = j_raw_upper(means, vars_, prior)
    hull_hi = np.asarray(hull_b.upper)
    assert np.all(np.asarray(raw) <= hull_hi + RTOL * (1 + np.abs(hull_hi).max()))
    np.testing.assert_array_equal(var_b.lower, hull_var.lower)
    # the hull bound is sound too
    assert_sound(hull_b, mu, "poe hull mean")


@settings(max_examples=25, deadline=None, database=None)
@given(seed=seeds, m=st.integers(1, 6), prior=st.booleans())
def test_poe_mean_bound_is_exact(seed, m, prior):
    """The bound equals the true extreme: brute force over all precision vertices (float64).

    For fixed precisions the fused mean increases in every mu_j, so its max takes mu_upper; as a
    function of the precisions it is linear-fractional, whose max over a box is at a vertex.
    """
    rng = np.random.default_rng(seed)
    means, vars_ = random_experts(rng, (), m, 3)
    mean_b, _ = j_poe(means, vars_, prior=prior)
    t_lo = 1.0 / np.asarray(vars_.upper, np.float64)
    t_hi = 1.0 / np.asarray(vars_.lower, np.float64)
    vertices = np.array(list(itertools.product([0, 1], repeat=m)))[:, :, None]  # (2^m, m, 1)
    t = np.where(vertices == 1, t_hi, t_lo)  # (2^m, m, d)
    den = t.sum(1) + (1.0 if prior else 0.0)
    best_hi = ((t * np.asarray(means.upper, np.float64)).sum(1) / den).max(0)
    best_lo = ((t * np.asarray(means.lower, np.float64)).sum(1) / den).min(0)
    np.testing.assert_allclose(mean_b.upper, best_hi, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(mean_b.lower, best_lo, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("prior", [False, True])
def test_poe_point_boxes_never_invert_and_hold_the_float_forward_pass(prior):
    # (mu / var) / (1 / var) != mu in float32 for many values: without poe()'s few-ulp widening a
    # point box came out inverted (lower > upper by an ulp). The float forward pass itself is off
    # by an ulp or so (for one expert the bound is exactly [mu, mu], poe_apply is not), hence tol.
    rng = np.random.default_rng(0)
    for m in (1, 2, 3):
        mu = jnp.asarray(rng.normal(0, 2, (500, m, 2)), jnp.float32)
        var = jnp.asarray(np.exp(rng.uniform(-3, 3, (500, m, 2))), jnp.float32)
        mean_b, _ = j_poe(Interval.point(mu), Interval.point(var), prior=prior)
        assert np.all(np.asarray(mean_b.lower) <= np.asarray(mean_b.upper))
        ulps = 2 * np.finfo(np.float32).eps * float(jnp.abs(mu).max())
        assert bool(mean_b.contains(j_poe_apply(mu, var, prior=prior)[0], tol=ulps).all())


def test_poe_tight_bound_strictly_tighter_than_hull():
    # two exact-variance experts with means in [0, 1] and [10, 11]: fused mean in [5, 6], hull [0, 11]
    means = Interval(jnp.array([[0.0], [10.0]]), jnp.array([[1.0], [11.0]]))
    vars_ = Interval.point(jnp.ones((2, 1)))
    tight, _ = j_poe(means, vars_, prior=False)
    hull, _ = j_poe(means, vars_, prior=False, tight=False)
    np.testing.assert_allclose(tight.lower, [5.0], rtol=RTOL)  # up to the few-ulp widening
    np.testing.assert_allclose(tight.upper, [6.0], rtol=RTOL)
    np.testing.assert_allclose(hull.lower, [0.0])
    np.testing.assert_allclose(hull.upper, [11.0])
    # with the prior (mean 0, var 1) and uncertain variances
    vars_ = Interval(jnp.array([[0.5], [0.5]]), jnp.array([[2.0], [2.0]]))
    tight, _ = j_poe(means, vars_, prior=True)
    hull, _ = j_poe(means, vars_, prior=True, tight=False)
    assert float(tight.upper[0]) < float(hull.upper[0]) - 1.0
    assert float(tight.lower[0]) > float(hull.lower[0]) + 0.5


# ------------------------------------------------------------------------------------------
# the concrete PoE is the product of Gaussians
# ------------------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None, database=None)
@given(seed=seeds, m=st.integers(1, 4), prior=st.booleans())
def test_poe_apply_is_product_of_densities(seed, m, prior):
    rng = np.random.default_rng(seed)
    mu = rng.uniform(-3, 3, (m, 2))
    var = rng.uniform(0.2, 3.0, (m, 2))
    got_mean, got_var = ibp.poe_apply(jnp.asarray(mu, jnp.float32), jnp.asarray(var, jnp.float32), prior=prior)
    grid = np.linspace(-15, 15, 60001)
    for k in range(2):  # each latent dim is an independent 1-D product
        logp = (-0.5 * (grid[:, None] - mu[None, :, k]) ** 2 / var[None, :, k]).sum(1)
        if prior:
            logp += -0.5 * grid**2
        p = np.exp(logp - logp.max())
        p /= p.sum()
        mean = (p * grid).sum()
        np.testing.assert_allclose(got_mean[k], mean, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(got_var[k], (p * (grid - mean) ** 2).sum(), rtol=1e-4, atol=1e-5)


def test_poe_apply_two_experts_closed_form():
    mu = jnp.array([[1.0], [4.0]])
    var = jnp.array([[2.0], [0.5]])
    mean, v = ibp.poe_apply(mu, var, prior=False)
    np.testing.assert_allclose(v, [2.0 * 0.5 / 2.5], rtol=1e-6)
    np.testing.assert_allclose(mean, [(1.0 * 0.5 + 4.0 * 2.0) / 2.5], rtol=1e-6)
    mean, v = ibp.poe_apply(mu, var)  # prior adds precision 1 at mean 0
    np.testing.assert_allclose(v, [1 / (0.5 + 2 + 1)], rtol=1e-6)
    np.testing.assert_allclose(mean, [(0.5 * 1 + 2 * 4) / 3.5], rtol=1e-6)


# ------------------------------------------------------------------------------------------
# the full message path
# ------------------------------------------------------------------------------------------


def _q_bounds(msgs: Interval, h: Interval, onehot, enc_params, q_layers):
    mean, var = ibp.gaussian_encoder(msgs, enc_params)  # [..., M, z]
    z, _ = ibp.poe(mean, var, prior=True)
    return ibp.mlp(ibp.concat([z, h, Interval.point(onehot)]), q_layers, ibp.relu)


def _q_apply(msgs, h, onehot, enc_params, q_layers):
    mean, var = ibp.gaussian_encoder_apply(msgs, enc_params)
    z, _ = ibp.poe_apply(mean, var, prior=True)
    onehot = jnp.broadcast_to(onehot, h.shape[:-1] + onehot.shape[-1:])
    return ibp.mlp_apply(jnp.concatenate([z, h, onehot], -1), q_layers)


j_q_bounds = jax.jit(_q_bounds)
j_q_apply = jax.jit(_q_apply)


@SETTINGS
@given(
    seed=seeds,
    shapes=st.sampled_from([(2, 1, 2, 1, 2), (3, 3, 8, 3, 5), (4, 2, 4, 2, 3)]),
    eps=st.sampled_from([0.0, 0.01, 0.1, 0.5]),
    logvar_scale=st.sampled_from([0.3, 3.0]),
)
def test_full_message_path_sound(seed, shapes, eps, logvar_scale):
    """M perturbed messages -> encoder -> PoE with prior -> [z, perturbed h_i, onehot(i)] -> Q head.

    Shapes: (M messages, message dim = hidden-state dim, encoder hidden, z dim, actions).
    """
    m, d_msg, hidden, d_z, n_actions = shapes
    rng = np.random.default_rng(seed)
    enc = random_encoder(rng, d_msg, hidden, d_z, 1.0, logvar_scale)
    q_layers = random_layers(rng, [d_z + d_msg + m, 16, n_actions], 1.0)
    msgs = rng.normal(0, 1, (m, d_msg)).astype(np.float32)
    h = msgs[0]  # the agent's own hidden state is also one of the messages
    onehot = jnp.eye(m)[0]
    q_b = j_q_bounds(Interval.ball(msgs, eps), Interval.ball(h, eps), onehot, enc, q_layers)

    flat = np.concatenate([msgs.ravel(), h])  # one box over every perturbed input
    pts = box_samples(rng, flat - eps, flat + eps, n_corners=512)
    q = j_q_apply(pts[:, : m * d_msg].reshape(-1, m, d_msg), pts[:, m * d_msg :], onehot, enc, q_layers)
    assert_sound(q_b, q, "Q")

    # a certificate is a promise about every sample: the greedy action never changes
    q0 = np.asarray(j_q_apply(msgs[None], h[None], onehot, enc, q_layers))[0]
    a = int(np.argmax(q0))
    certified = bool(ibp.certified(q_b.lower, q_b.upper, a))
    if eps == 0.0:  # radius 0 bounds are the point itself: a strict argmax is always certified
        assert certified or np.sort(q0)[-2] >= q0[a] - RTOL * (1 + np.abs(q0).max())
    if certified:
        others = np.delete(np.asarray(q), a, axis=1).max(1)
        assert np.all(np.asarray(q)[:, a] >= others - RTOL * (1 + np.abs(q).max()))


# ------------------------------------------------------------------------------------------
# radius 0 collapses to the forward pass
# ------------------------------------------------------------------------------------------


def _assert_point(bounds: Interval, value, rtol: float = RTOL):
    """Both ends equal the forward pass up to float rounding (relative to the output's scale)."""
    atol = rtol * (1.0 + np.abs(np.asarray(value)).max())
    np.testing.assert_allclose(bounds.lower, value, rtol=rtol, atol=atol)
    np.testing.assert_allclose(bounds.upper, value, rtol=rtol, atol=atol)


@settings(max_examples=5, deadline=None, database=None)
@given(seed=seeds)
def test_radius_zero_collapses_to_forward_pass(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (3, 5)).astype(np.float32)
    pt = Interval.ball(x, 0.0)

    (w, b), = random_layers(rng, [5, 4], 1.0)
    _assert_point(j_dense(pt, w, b), x @ w + b)
    for rule, fn in ALL_ELEMENTWISE.values():
        _assert_point(rule(pt), fn(x))
    layers = random_layers(rng, [5, 7, 6, 2], 1.0)
    for rule, fn in ACTIVATIONS.values():
        _assert_point(j_mlp(pt, layers, rule), j_mlp_apply(x, layers, fn))

    enc = random_encoder(rng, 5, 6, 3, 1.0, 3.0)
    mean_b, var_b = j_enc(pt, enc)
    mean, var = j_enc_apply(x, enc)
    _assert_point(mean_b, mean)
    _assert_point(var_b, var)

    mean_p, var_p = j_poe(Interval.point(mean), Interval.point(var), prior=True)
    mu, v = j_poe_apply(mean, var, prior=True)
    _assert_point(mean_p, mu)
    _assert_point(var_p, v)

    q_layers = random_layers(rng, [3 + 5 + 3, 16, 4], 1.0)
    onehot = jnp.eye(3)[1]
    _assert_point(
        j_q_bounds(pt, Interval.point(x[1]), onehot, enc, q_layers),
        j_q_apply(x[None], x[1][None], onehot, enc, q_layers)[0],
    )


# ------------------------------------------------------------------------------------------
# certificates
# ------------------------------------------------------------------------------------------


def test_certified_hand_examples():
    lo = jnp.array([1.0, -1.0, 0.0])
    hi = jnp.array([2.0, 0.5, 0.9])
    assert bool(ibp.certified(lo, hi, 0))  # 1.0 >= max(0.5, 0.9)
    assert not bool(ibp.certified(lo, hi, 2))  # 0.0 < 2.0: overlap with action 0
    hi_overlap = hi.at[2].set(1.2)
    assert not bool(ibp.certified(lo, hi_overlap, 0))
    # the overlapping competitor is unavailable: ignored
    assert bool(ibp.certified(lo, hi_overlap, 0, avail=jnp.array([True, True, False])))
    # a tie is certified (lower bound equals the best competing upper bound)
    assert bool(ibp.certified(jnp.array([1.0, 0.0]), jnp.array([3.0, 1.0]), 0))
    # only one available action: trivially certified, however wide the bounds
    assert bool(ibp.certified(lo, hi + 10, 1, avail=jnp.array([False, True, False])))


def test_certified_vectorised_and_jittable():
    q_lo = jnp.array([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 2.0], [0.0, 5.0]]])  # [2, 2, A=2]
    q_hi = q_lo + jnp.array([[[0.5, 0.5], [3.0, 0.1]], [[0.1, 0.1], [9.0, 0.1]]])
    action = jnp.array([[0, 0], [1, 1]])
    avail = jnp.array([[[1, 1], [1, 1]], [[1, 1], [0, 1]]], bool)
    # [0,0]: 1 >= 0.5; [0,1]: 0 < 0.1; [1,0]: 2 >= 0.1; [1,1]: 5 < 9 unless action 0 is unavailable
    got = jax.jit(ibp.certified)(q_lo, q_hi, action, avail)
    np.testing.assert_array_equal(got, [[True, False], [True, True]])
    got = jax.jit(ibp.certified)(q_lo, q_hi, action)
    np.testing.assert_array_equal(got, [[True, False], [True, False]])
    assert got.shape == (2, 2) and got.dtype == jnp.bool_


# ------------------------------------------------------------------------------------------
# gradients flow through the bounds (the robust loss differentiates them)
# ------------------------------------------------------------------------------------------


def test_bounds_are_differentiable():
    rng = np.random.default_rng(0)
    enc = random_encoder(rng, 3, 5, 2, 1.0, 1.0)
    msgs = jnp.asarray(rng.normal(0, 1, (4, 3)), jnp.float32)

    def width(params):
        mean, var = ibp.gaussian_encoder(Interval.ball(msgs, 0.1), params)
        z, zv = ibp.poe(mean, var)
        return jnp.sum(z.upper - z.lower) + jnp.sum(zv.upper - zv.lower)

    grads = jax.jit(jax.grad(width))(enc)
    leaves = jax.tree.leaves(grads)
    assert all(np.all(np.isfinite(g)) for g in leaves)
    assert any(np.abs(g).max() > 0 for g in leaves)
