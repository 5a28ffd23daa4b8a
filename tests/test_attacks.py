"""Message attacks and certificates on random models and random states (no training): attacks
stay in the eps-ball and change nothing at eps = 0, respect the teammates-only mask, FGSM is the
official one-step attack and PGD generalises it, both lower the attacked agent's clean-action
margin (exactly optimally on a hand-set linear network; PGD at least as much as FGSM on average
on random networks) while random noise uses no gradient, qmix ignores every attack, and a
certified decision is never flipped.

Compilation dominates on a small CPU, so each (method, own-channel flag) compiles ONE function
that runs every attack on a batch of states (eps is traced: one compile serves every budget).
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cromac_jax import attacks as A
from cromac_jax import config as C
from cromac_jax.config import ConfigError
from cromac_jax.evaluate import certified_decisions
from cromac_jax.networks import CromacModel, EnvDims

DIMS = EnvDims(n_agents=3, obs_dim=2, state_dim=3, n_actions=4, episode_limit=10)
B = 256  # random states per check
H = 8
ALL = {"natural": A.natural, "random": A.random_noise, "fgsm": A.fgsm, "pgd": A.pgd}


def model_for(method):
    cfg = C.from_dict({"train": {"method": method}, "model": {"rnn_hidden": H, "z_dim": 4, "vae_hidden": 8, "q_hidden": 16}})
    m = CromacModel(cfg, DIMS)
    return m, numpy_params(m)


def numpy_params(m, seed=0):
    """Random parameters of the model's structure, uniform in +-1/sqrt(fan_in) like the torch
    default init, drawn with NumPy: compiling ``m.init`` costs seconds per method on a small
    CPU, and any random model serves these checks."""
    rng = np.random.default_rng(seed)

    def fill(x):
        bound = 1.0 / np.sqrt(x.shape[0])
        return jnp.asarray(rng.uniform(-bound, bound, x.shape).astype(np.float32))

    return jax.tree.map(fill, jax.eval_shape(m.init, jax.random.PRNGKey(0)))


@functools.cache
def random_states(seed=1):
    """GRU-like hidden states in [-1, 1] and random availability (at least one action each);
    drawn with NumPy (compiling JAX's random bit generators costs seconds on a small CPU)."""
    rng = np.random.default_rng(seed)
    h = rng.uniform(-1, 1, (B, DIMS.n_agents, H)).astype(np.float32)
    avail = rng.random((B, DIMS.n_agents, DIMS.n_actions)) < 0.7
    avail[np.arange(B)[:, None], np.arange(DIMS.n_agents)[None], rng.integers(0, DIMS.n_actions, (B, DIMS.n_agents))] = True
    return jnp.asarray(h), jnp.asarray(avail)


class Harness:
    """One method's random model with jitted, batched attacks, decisions and certificates."""

    def __init__(self, method, own=True):
        m, p = model_for(method)
        self.m, self.p = m, p
        mask = None if own else A.teammates_only_mask(DIMS.n_agents)
        def q_fn(hh, mm):
            return m.q_values(p, hh, mm)

        self.q_fn = q_fn

        def attack_all(h, avail, eps, key):
            msgs = m.broadcast_messages(h)
            keys = jax.random.split(key, h.shape[0])
            out = {}
            for name, attack in ALL.items():
                out[name] = jax.vmap(lambda k, hh, mm, aa, f=attack: f(k, q_fn, hh, mm, aa, eps, mask))(keys, h, msgs, avail)
            return msgs, out

        self.attack_all = jax.jit(attack_all)
        self.greedy = jax.jit(lambda h, msgs, avail: m.greedy(p, h, msgs, avail))
        self.q = jax.jit(lambda h, msgs: m.q_values(p, h, msgs))
        self.cert = jax.jit(lambda h, avail, eps: certified_decisions(m, p, h, avail, eps, own))

    def attacks(self, h, avail, eps, seed=2):
        msgs, out = self.attack_all(h, avail, jnp.float32(eps), jax.random.PRNGKey(seed))
        return np.asarray(msgs), {k: np.asarray(v) for k, v in out.items()}


@functools.cache
def harness(method, own=True):
    return Harness(method, own)


def test_attacks_stay_in_the_eps_ball_and_fgsm_uses_all_of_it():
    hn = harness("cromac")
    h, avail = random_states()
    eps = 0.05
    msgs, adv = hn.attacks(h, avail, eps)
    for name, a in adv.items():
        assert np.max(np.abs(a - msgs)) <= eps + 1e-6, name
    assert np.array_equal(adv["natural"], msgs)
    assert np.abs(adv["random"] - msgs).max() > 0.9 * eps and np.abs(adv["pgd"] - msgs).max() > 0.9 * eps
    # FGSM: exactly eps where the gradient of the objective is non-zero, 0 where it is zero
    grad_fn = jax.grad(lambda mm, hh, aa, clean: A.greedy_ce(hn.q_fn, hh, clean, aa, mm))
    grad = np.asarray(jax.jit(jax.vmap(grad_fn))(jnp.asarray(msgs), h, avail, jnp.asarray(msgs)))
    delta = adv["fgsm"] - msgs
    nz = grad != 0
    assert nz.mean() > 0.5
    np.testing.assert_allclose(np.abs(delta[nz]), eps, rtol=1e-5)
    assert np.all(delta[~nz] == 0)
    assert np.array_equal(np.sign(delta[nz]), np.sign(grad[nz]))


def test_pgd_one_step_without_random_start_is_fgsm_and_bad_knobs_are_refused():
    hn = harness("cromac")
    h, avail = random_states()
    msgs, adv = hn.attacks(h, avail, 0.05)
    pgd1 = A.make_pgd(steps=1, step_frac=1.0, random_start=False)
    keys = jax.random.split(jax.random.PRNGKey(2), B)
    one = jax.jit(jax.vmap(lambda k, hh, mm, aa: pgd1(k, hn.q_fn, hh, mm, aa, 0.05)))(keys, h, jnp.asarray(msgs), avail)
    np.testing.assert_allclose(np.asarray(one), adv["fgsm"], atol=1e-7)
    with pytest.raises(ConfigError, match="steps >= 1"):
        A.make_pgd(steps=0)


def test_teammates_only_leaves_the_own_channel_untouched():
    hn = harness("cromac", own=False)
    h, avail = random_states()
    msgs, adv = hn.attacks(h, avail, 0.1)
    idx = np.arange(DIMS.n_agents)
    off = ~np.eye(DIMS.n_agents, dtype=bool)
    for name in ("random", "fgsm", "pgd"):
        delta = adv[name] - msgs
        assert np.all(delta[:, idx, idx, :] == 0), name  # m_ii: the receiver's own hidden state
        assert np.abs(delta[:, off, :]).max() > 0, name  # the teammates' channels are attacked
        assert np.max(np.abs(delta)) <= 0.1 + 1e-6, name


def test_fgsm_and_pgd_raise_the_objective_more_than_natural_or_random():
    hn = harness("cromac")
    h, avail = random_states()
    msgs, adv = hn.attacks(h, avail, 0.05)
    ce = jax.jit(jax.vmap(lambda hh, mm, aa, a: A.greedy_ce(hn.q_fn, hh, mm, aa, a)))
    values = {name: np.asarray(ce(h, jnp.asarray(msgs), avail, jnp.asarray(a))) for name, a in adv.items()}
    assert values["fgsm"].mean() > values["natural"].mean()
    assert values["fgsm"].mean() > values["random"].mean()
    assert values["pgd"].mean() >= values["fgsm"].mean() - 1e-6
    assert np.mean(values["fgsm"] >= values["natural"] - 1e-6) > 0.9  # per state, almost always


def _margins(q, avail, actions):
    """Clean-action margin per agent: Q of ``actions`` minus the best other available Q."""
    q, avail = np.asarray(q), np.asarray(avail, bool)
    qa = np.take_along_axis(q, actions[..., None], -1)[..., 0]
    others = np.where(avail & (np.arange(q.shape[-1]) != actions[..., None]), q, -np.inf)
    return qa - others.max(-1)


def test_every_attack_leaves_the_messages_unchanged_at_eps_zero():
    for own in (True, False):
        h, avail = random_states()
        msgs, adv = harness("cromac", own).attacks(h, avail, 0.0)
        for name, a in adv.items():
            assert np.array_equal(a, msgs), (name, own)


def test_fgsm_and_pgd_optimally_lower_the_margin_of_a_hand_set_linear_network():
    """Q_i = W m_i (two actions): the worst l-inf perturbation of receiver i's row lowers its
    clean-action margin by exactly eps * ||w_a - w_b||_1; FGSM finds it in one step, PGD (any
    random start, 10 steps of eps/4) ends there too; random noise lowers it by less."""
    n, h_dim, eps = 3, 4, 0.1
    w = jnp.asarray(np.random.default_rng(0).normal(size=(2, n * h_dim)).astype(np.float32))

    def q_fn(hidden, messages):
        return messages.reshape(n, -1) @ w.T

    rng = np.random.default_rng(1)
    hs = jnp.asarray(rng.uniform(-1, 1, (64, n, h_dim)).astype(np.float32))
    avail = jnp.ones((64, n, 2), bool)
    msgs = jax.vmap(lambda hh: jnp.broadcast_to(hh[None], (n, n, h_dim)))(hs)
    keys = jax.random.split(jax.random.PRNGKey(3), 64)
    clean_q = np.asarray(jax.vmap(q_fn)(hs, msgs))
    a = clean_q.argmax(-1)
    m0 = _margins(clean_q, avail, a)
    w_np = np.asarray(w)
    best_drop = eps * np.abs(w_np[a] - w_np[1 - a]).sum(-1)  # [64, n]
    drops = {}
    for name in ("fgsm", "pgd", "random"):
        adv = jax.jit(jax.vmap(lambda k, hh, mm, aa, f=ALL[name]: f(k, q_fn, hh, mm, aa, eps)))(keys, hs, msgs, avail)
        drops[name] = m0 - _margins(jax.vmap(q_fn)(hs, adv), avail, a)
    np.testing.assert_allclose(drops["fgsm"], best_drop, rtol=1e-4)
    np.testing.assert_allclose(drops["pgd"], best_drop, rtol=1e-4)
    assert np.all(drops["random"] < best_drop) and abs(drops["random"].mean()) < 0.5 * best_drop.mean()


@pytest.mark.parametrize("method", ["cromac", "full_comm"])
def test_fgsm_and_pgd_lower_the_clean_action_margin_pgd_at_least_as_much(method):
    """On a small random network (nonlinear message path), per receiver: FGSM and PGD lower the
    margin of its clean greedy action almost always, PGD by at least as much as FGSM on average;
    random noise leaves it unchanged on average."""
    hn = harness(method)
    h, avail = random_states()
    multi = np.asarray(avail).sum(-1) >= 2  # a single available action has no margin to lower
    for eps in (0.05, 0.2):
        msgs, adv = hn.attacks(h, avail, eps)
        a = np.asarray(hn.greedy(h, msgs, avail))
        m0 = _margins(hn.q(h, msgs), avail, a)[multi]
        drop = {name: m0 - _margins(hn.q(h, adv[name]), avail, a)[multi] for name in ("fgsm", "pgd", "random")}
        assert np.mean(drop["fgsm"] > 0) > 0.95 and np.mean(drop["pgd"] > 0) > 0.95, (method, eps)
        assert drop["pgd"].mean() >= drop["fgsm"].mean() > 0, (method, eps)
        assert abs(drop["random"].mean()) < 0.1 * drop["fgsm"].mean(), (method, eps)


def test_random_noise_does_not_use_gradients():
    """``random`` never calls (so never differentiates) the Q-function: the same key gives the
    same noise whatever the network and the availability."""
    h, avail = random_states()
    h, avail = h[0], avail[0]
    msgs = jnp.broadcast_to(h[None], (DIMS.n_agents,) + h.shape)

    def no_q(hidden, messages):
        raise AssertionError("the random attack called the Q-function")

    key = jax.random.PRNGKey(5)
    out = A.random_noise(key, no_q, h, msgs, avail, 0.1)
    q_fn = harness("cromac").q_fn
    np.testing.assert_array_equal(out, A.random_noise(key, q_fn, h, msgs, ~avail, 0.1))
    jaxpr = str(jax.make_jaxpr(lambda m: A.random_noise(key, q_fn, h, m, avail, 0.1))(msgs))
    assert "dot_general" not in jaxpr and "transpose" not in jaxpr  # no network, no backward pass
    assert "dot_general" in str(jax.make_jaxpr(lambda m: A.fgsm(key, q_fn, h, m, avail, 0.1))(msgs))


def test_qmix_ignores_every_attack():
    hn = harness("qmix")
    h, avail = random_states()
    msgs, adv = hn.attacks(h, avail, 1.0)
    q_clean, a_clean = np.asarray(hn.q(h, msgs)), np.asarray(hn.greedy(h, msgs, avail))
    for name, a in adv.items():
        assert np.array_equal(np.asarray(hn.q(h, a)), q_clean), name
        assert np.array_equal(np.asarray(hn.greedy(h, a, avail)), a_clean), name
    assert np.array_equal(adv["fgsm"], msgs)  # zero gradient: FGSM does not even move them
    assert bool(jnp.all(hn.cert(h, avail, 1.0)))  # certified by definition


@pytest.mark.parametrize("method,own", [("cromac", True), ("cromac", False), ("full_comm", True), ("ame", True)])
def test_certificate_is_complete_at_zero_shrinks_with_eps_and_is_never_broken(method, own):
    hn = harness(method, own)
    h, avail = random_states()
    # eps = 0: every greedy action is certified (random Q-values have strict margins)
    assert bool(jnp.all(hn.cert(h, avail, 0.0)))
    rates = [float(jnp.mean(hn.cert(h, avail, e))) for e in (0.0, 0.005, 0.02, 0.05, 0.2, 1.0)]
    assert all(a >= b for a, b in itertools.pairwise(rates)), rates
    assert rates[-1] < rates[0]
    # soundness: a certified decision is never flipped by FGSM, PGD or random noise at that eps
    certified_some = flipped_some = False
    for eps in (0.05, 0.2, 0.5):
        c = np.asarray(hn.cert(h, avail, eps))
        certified_some |= bool(c.any())
        for seed in (2, 3):
            msgs, adv = hn.attacks(h, avail, eps, seed)
            clean = np.asarray(hn.greedy(h, msgs, avail))
            for name in ("random", "fgsm", "pgd"):
                flipped = np.asarray(hn.greedy(h, adv[name], avail)) != clean
                assert not np.any(flipped & c), (eps, name, int(np.sum(flipped & c)))
                flipped_some |= bool(flipped.any())
    assert certified_some and flipped_some  # the check is not vacuous
    eps = 0.05
    c = np.asarray(hn.cert(h, avail, eps))
    if not own:  # the own channel exact: bounds no wider, so at least as many certified, and more at some eps
        every = harness(method, True)
        assert c.mean() >= float(jnp.mean(every.cert(h, avail, eps)))
        assert any(float(jnp.mean(hn.cert(h, avail, e))) > float(jnp.mean(every.cert(h, avail, e)))
                   for e in (0.02, 0.05, 0.2, 0.5))


def test_unknown_attack_name_is_refused_naming_the_choices():
    with pytest.raises(ConfigError, match="unknown attack 'fgs'; choose from natural, random, fgsm, pgd"):
        A.get_attack("fgs")
    assert A.get_attack("pgd") is A.pgd
    assert A.DEFAULT_BUDGETS == (0.25, 0.5, 1.0, 2.0, 4.0)
