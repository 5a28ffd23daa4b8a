"""The CroMAC model: methods' inputs, PoE, losses, stop-gradients, clamp, mixers, bad input."""

import itertools

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cromac_jax import config as C
from cromac_jax import ibp
from cromac_jax import losses as L
from cromac_jax.config import ConfigError
from cromac_jax.networks import CromacModel, EnvDims, masked_argmax

DIMS = EnvDims(n_agents=3, obs_dim=1, state_dim=3, n_actions=3, episode_limit=16)


def model_for(method, mixer="qmix", dims=DIMS, **cromac):
    cfg = C.from_dict({"train": {"method": method}, "model": {"mixer": mixer}, "cromac": cromac})
    return CromacModel(cfg, dims), cfg


def random_batch(key, dims=DIMS, B=4, length=10):
    T1 = dims.episode_limit + 1
    ks = jax.random.split(key, 4)
    filled = jnp.arange(T1)[None].repeat(B, 0) <= length
    term = jnp.arange(T1)[None].repeat(B, 0) == length - 1
    return L.EpisodeBatch(
        obs=jax.random.normal(ks[0], (B, T1, dims.n_agents, dims.obs_dim)),
        state=jax.random.normal(ks[1], (B, T1, dims.state_dim)),
        avail=jnp.ones((B, T1, dims.n_agents, dims.n_actions), bool),
        actions=jax.random.randint(ks[2], (B, T1, dims.n_agents), 0, dims.n_actions),
        reward=jax.random.normal(ks[3], (B, T1)) * filled,
        terminated=term,
        filled=filled,
    )


@pytest.mark.parametrize("method", ["full_comm", "cromac", "cromac_no_robust", "ame"])
def test_message_methods_read_messages_and_qmix_does_not(method):
    key = jax.random.PRNGKey(0)
    h = jax.random.normal(key, (3, 16))
    msgs = jnp.broadcast_to(h[None], (3, 3, 16))
    noisy = msgs + 0.5 * jax.random.normal(jax.random.PRNGKey(1), msgs.shape)
    m, _ = model_for(method)
    p = m.init(key)
    assert not np.allclose(m.q_values(p, h, msgs), m.q_values(p, h, noisy))
    q_model, _ = model_for("qmix")
    pq = q_model.init(key)
    np.testing.assert_array_equal(q_model.q_values(pq, h, msgs), q_model.q_values(pq, h, noisy))


def test_head_inputs_have_the_documented_sizes():
    sizes = {"qmix": 16 + 3, "full_comm": 16 + 3 + 2 * 16, "ame": 16 + 3 + 2 * 17, "cromac": 16 + 16 + 3}
    for method, size in sizes.items():
        m, _ = model_for(method)
        assert m.head_in_dim == size
        p = m.init(jax.random.PRNGKey(0))
        assert p["q_head"]["hidden"]["kernel"].shape == (size, 16)
    m, _ = model_for("cromac")
    assert {"msg_enc", "state_enc", "state_dec"} <= set(m.init(jax.random.PRNGKey(0)))
    m, _ = model_for("qmix")
    assert not {"msg_enc", "state_enc"} & set(m.init(jax.random.PRNGKey(0)))


def test_cromac_execution_uses_the_poe_of_all_messages():
    m, _ = model_for("cromac")
    p = m.init(jax.random.PRNGKey(0))
    h = jax.random.normal(jax.random.PRNGKey(2), (3, 16))
    msgs = m.broadcast_messages(h)
    z, _ = m.encode_messages(p, h)
    expected = m.head(p, jnp.concatenate([jnp.broadcast_to(z, (3, 16)), h, jnp.eye(3)], -1))
    np.testing.assert_allclose(m.q_values(p, h, msgs), expected, rtol=1e-5, atol=1e-6)
    # PoE with the prior, in closed form
    mean, logvar = m.msg_enc.apply({"params": p["msg_enc"]}, h)
    prec = 1.0 + jnp.sum(jnp.exp(-logvar), 0)
    np.testing.assert_allclose(z, jnp.sum(mean * jnp.exp(-logvar), 0) / prec, rtol=1e-5, atol=1e-6)


def test_ame_votes_over_every_subset_and_breaks_ties_low():
    m, _ = model_for("ame")
    assert m.ame_masks.shape == (2, 2) and np.all(m.ame_masks.sum(1) == 1)
    big = CromacModel(C.from_dict({"train": {"method": "ame"}, "model": {"ame_k": 2, "ame_max_subsets": 16}}),
                      EnvDims(11, 4, 8, 5, 10))
    assert big.ame_masks.shape == (16, 10) and np.all(big.ame_masks.sum(1) == 2)
    assert len({tuple(r) for r in big.ame_masks}) == 16
    votes = jnp.array([[2.0, 2.0, 1.0]])
    assert int(masked_argmax(votes, jnp.ones((1, 3), bool))[0]) == 0
    assert int(masked_argmax(votes, jnp.array([[False, True, True]]))[0]) == 1


def test_kl_matches_distrax():
    mean = jax.random.normal(jax.random.PRNGKey(0), (5, 4))
    logvar = jax.random.normal(jax.random.PRNGKey(1), (5, 4))
    ours = L.gaussian_kl_std_normal(mean, logvar)
    ref = distrax.MultivariateNormalDiag(mean, jnp.exp(0.5 * logvar)).kl_divergence(
        distrax.MultivariateNormalDiag(jnp.zeros(4), jnp.ones(4))
    )
    np.testing.assert_allclose(ours, ref, rtol=1e-5)


def test_poe_loss_trains_only_the_message_encoder():
    m, _ = model_for("cromac")
    p = m.init(jax.random.PRNGKey(0))
    batch = random_batch(jax.random.PRNGKey(1))

    def poe_only(params):
        h = L.unroll(m, params, batch.obs)
        _, _, mean, logvar = L.state_vae_loss(m, params, batch.state, jax.random.PRNGKey(2))
        return jnp.sum(L.poe_distillation_loss(m, params, h, mean, logvar))

    g = jax.grad(poe_only)(p)
    norms = {k: float(optax_norm(v)) for k, v in g.items()}
    assert norms["msg_enc"] > 0
    for other in ("agent", "state_enc", "state_dec", "q_head", "mixer"):
        assert norms[other] == 0.0, other


def test_robust_loss_leaves_the_state_vae_alone():
    """The official code detaches the state-latent mean in the robust loss; the head and the
    trajectory encoder (through h) still learn from it."""
    m, _ = model_for("cromac")
    p = m.init(jax.random.PRNGKey(0))
    batch = random_batch(jax.random.PRNGKey(1))

    def robust_only(params):
        h = L.unroll(m, params, batch.obs)
        mean, _ = m.encode_state(params, batch.state)
        return jnp.sum(L.robust_overlap_loss(m, params, h, mean, batch.actions, batch.avail, 1.0))

    g = jax.grad(robust_only)(p)
    norms = {k: float(optax_norm(v)) for k, v in g.items()}
    assert norms["q_head"] > 0 and norms["agent"] > 0
    for other in ("state_enc", "state_dec", "msg_enc", "mixer"):
        assert norms[other] == 0.0, other


def optax_norm(tree):
    return jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree.leaves(tree)))


def test_robust_loss_zero_when_bounds_dominate_positive_when_they_overlap():
    m, _ = model_for("cromac")
    p = m.init(jax.random.PRNGKey(0))
    h = jax.random.normal(jax.random.PRNGKey(1), (8, 3, 16))
    z = jax.random.normal(jax.random.PRNGKey(2), (8, 16))
    q = m.head(p, m.head_input(h, z=z[:, None, :]))
    greedy = jnp.argmax(q, -1)
    avail = jnp.ones((8, 3, 3), bool)
    # radius 0: the bounds are points, the greedy action dominates, nothing overlaps
    zero = L.robust_overlap_loss(m, p, h, z, greedy, avail, 0.0)
    np.testing.assert_allclose(zero, 0.0, atol=1e-6)
    wide = L.robust_overlap_loss(m, p, h, z, greedy, avail, 1.0)
    assert float(jnp.sum(wide)) > 0
    # taking the worst action: every better action has q_diff 0, so the loss is 0 even when wide
    worst = jnp.argmin(q, -1)
    np.testing.assert_allclose(L.robust_overlap_loss(m, p, h, z, worst, avail, 1.0), 0.0, atol=1e-6)


def test_latent_bounds_are_sound_and_collapse_at_radius_zero():
    m, _ = model_for("cromac")
    p = m.init(jax.random.PRNGKey(0))
    h = jax.random.normal(jax.random.PRNGKey(1), (3, 16))
    z = jax.random.normal(jax.random.PRNGKey(2), (16,))
    b0 = m.q_bounds_latent(p, z, h, 0.0)
    q = m.head(p, m.head_input(h, z=z[None]))
    np.testing.assert_allclose(b0.lower, q, atol=1e-5)
    np.testing.assert_allclose(b0.upper, q, atol=1e-5)
    r = 0.3
    b = m.q_bounds_latent(p, z, h, r)
    k1, k2 = jax.random.split(jax.random.PRNGKey(3))
    dz = jax.random.uniform(k1, (2000, 16), minval=-r, maxval=r)
    dh = jax.random.uniform(k2, (2000, 3, 16), minval=-r, maxval=r)
    qs = jax.vmap(lambda a, c: m.head(p, m.head_input(h + c, z=(z + a)[None])))(dz, dh)
    assert bool(jnp.all(qs >= b.lower - 1e-5)) and bool(jnp.all(qs <= b.upper + 1e-5))


@pytest.mark.parametrize("method", ["cromac", "full_comm"])
def test_message_bounds_are_sound_for_the_model(method):
    m, _ = model_for(method)
    p = m.init(jax.random.PRNGKey(0))
    h = jax.random.normal(jax.random.PRNGKey(1), (3, 16))
    msgs = m.broadcast_messages(h)
    eps = 0.05
    b = m.q_bounds_messages(p, msgs, eps)
    deltas = jax.random.uniform(jax.random.PRNGKey(4), (2000,) + msgs.shape, minval=-eps, maxval=eps)
    signs = jnp.sign(jax.random.normal(jax.random.PRNGKey(5), (500,) + msgs.shape)) * eps  # corners
    # the corners a gradient attack would pick, one per (agent, action) and direction: they come
    # nearer the bounds than random corners of the 144-dim box (for full_comm they break bounds
    # computed at half the radius, which 500 random corners do not)
    n, a = b.lower.shape
    grads = jax.jacrev(lambda mm: m.q_values(p, h, mm))(msgs).reshape((n * a,) + msgs.shape)
    aimed = jnp.concatenate([jnp.sign(grads) * eps, -jnp.sign(grads) * eps])
    for d in (deltas, signs, aimed):
        qs = jax.vmap(lambda dd: m.q_values(p, h, msgs + dd))(d)
        assert bool(jnp.all(qs >= b.lower - 1e-5)) and bool(jnp.all(qs <= b.upper + 1e-5))
    q0 = m.q_values(p, h, msgs)
    pushed = jax.vmap(lambda dd: m.q_values(p, h, msgs + dd))(aimed[: n * a]).reshape(n, a, n, a)
    gained = jnp.einsum("ijij->ij", pushed) - q0  # each Q moved up by its own aimed corner
    assert bool(jnp.all(gained > 0))  # the aimed corners do reach towards the bounds
    b0 = m.q_bounds_messages(p, msgs, 0.0)
    np.testing.assert_allclose(b0.lower, m.q_values(p, h, msgs), atol=1e-5)
    # teammates-only: the own row is exact, so the bounds are no wider, and narrower somewhere
    bt = m.q_bounds_messages(p, msgs, eps, attack_own=False)
    assert bool(jnp.all(bt.upper - bt.lower <= b.upper - b.lower + 1e-6))
    assert bool(jnp.any(bt.upper - bt.lower < b.upper - b.lower - 1e-4))


def test_clamp_holds_after_a_training_update():
    from cromac_jax.train import make_train

    cfg = C.from_dict({"train": {"method": "cromac", "num_envs": 2, "batch_size": 2, "learning_starts": 2,
                                 "buffer_size": 8, "updates_per_iteration": 1, "chunk_iterations": 1},
                       "cromac": {"robust_start": 0, "weight_clamp": 0.05}})
    tr = make_train(cfg)
    state = tr.init(jax.random.PRNGKey(0))
    state, _ = jax.jit(tr.iteration)(state)
    leaves = jax.tree.leaves(state.params["msg_enc"])
    assert max(float(jnp.max(jnp.abs(x))) for x in leaves) <= 0.05 + 1e-7
    # other networks are not clamped
    assert max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(state.params["agent"])) > 0.05


@pytest.mark.parametrize("clamp_start, robust_start, clamped", [(-1, 10**9, False), (0, 10**9, True), (-1, 0, True),
                                                                 (10**9, 0, False)])
def test_clamp_starts_at_clamp_start_or_with_robust_training(clamp_start, robust_start, clamped):
    from cromac_jax.train import make_train

    cfg = C.from_dict({"train": {"method": "cromac", "num_envs": 2, "batch_size": 2, "learning_starts": 2,
                                 "buffer_size": 8, "updates_per_iteration": 1, "chunk_iterations": 1},
                       "cromac": {"robust_start": robust_start, "clamp_start": clamp_start, "weight_clamp": 0.05}})
    tr = make_train(cfg)
    state = tr.init(jax.random.PRNGKey(0))
    assert bool(tr.robust_on(state.t_env)) == (robust_start == 0)  # the robust loss keeps its own start
    state, _ = jax.jit(tr.iteration)(state)
    biggest = max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(state.params["msg_enc"]))
    assert (biggest <= 0.05 + 1e-7) == clamped
    with pytest.raises(C.ConfigError, match="cromac.clamp_start"):
        C.from_dict({"cromac": {"clamp_start": -2}})


def test_clamp_layers_first_bounds_only_the_weight_acting_on_messages():
    from cromac_jax.train import make_train

    cfg = C.from_dict({"train": {"method": "cromac", "num_envs": 2, "batch_size": 2, "learning_starts": 2,
                                 "buffer_size": 8, "updates_per_iteration": 1, "chunk_iterations": 1},
                       "cromac": {"robust_start": 0, "weight_clamp": 0.05, "clamp_layers": "first"}})
    tr = make_train(cfg)
    state, _ = jax.jit(tr.iteration)(tr.init(jax.random.PRNGKey(0)))
    enc = state.params["msg_enc"]
    assert float(jnp.max(jnp.abs(enc["hidden"]["kernel"]))) <= 0.05 + 1e-7
    rest = [enc["hidden"]["bias"], enc["mean"]["kernel"], enc["logvar"]["kernel"]]
    assert max(float(jnp.max(jnp.abs(x))) for x in rest) > 0.05
    with pytest.raises(C.ConfigError, match="cromac.clamp_layers"):
        C.from_dict({"cromac": {"clamp_layers": "last"}})


@pytest.mark.parametrize("mixer", ["qmix", "vdn", "qplex"])
def test_mixers_are_monotone_in_every_agent_utility(mixer):
    m, _ = model_for("qmix", mixer)
    p = m.init(jax.random.PRNGKey(0))
    k = jax.random.split(jax.random.PRNGKey(1), 3)
    q = jax.random.normal(k[0], (64, 3))
    s = jax.random.normal(k[1], (64, 3))
    a = jax.nn.one_hot(jax.random.randint(k[2], (64, 3), 0, 3), 3)
    qmax = q + jnp.abs(jax.random.normal(k[2], (64, 3)))
    grads = jax.vmap(jax.grad(lambda qq, ss, aa, mm: m.mix(p, qq, ss, aa, mm)))(q, s, a, qmax)
    assert bool(jnp.all(grads > 0))  # strictly: a mixer that ignored an agent's utility would give 0
    # QPLEX detaches its advantages (pymarl's DMAQ): the utilities' gradient is the value path's
    # weight w_i(s) alone, whatever the joint action and the greedy values
    other_a = jax.nn.one_hot(jax.random.randint(jax.random.PRNGKey(9), (64, 3), 0, 3), 3)
    grads_q, grads_max = jax.vmap(jax.grad(lambda qq, ss, aa, mm: m.mix(p, qq, ss, aa, mm), argnums=(0, 3)))(q, s, other_a, qmax * 2)
    np.testing.assert_allclose(grads_q, grads, rtol=1e-6)
    assert bool(jnp.all(grads_max == 0))
    if mixer == "vdn":
        np.testing.assert_allclose(m.mix(p, q, s, a, qmax), q.sum(-1), rtol=1e-6)
    # IGM: over every joint action, the mixed value is highest at the agents' own greedy actions
    q_all = jax.random.normal(jax.random.PRNGKey(7), (16, 3, 3))  # [B, N, A]
    joints = jnp.array(list(itertools.product(range(3), repeat=3)))  # [27, N]
    chosen = jnp.take_along_axis(q_all[:, None], joints[None, :, :, None], axis=-1)[..., 0]  # [B, 27, N]
    def mix_every_joint(c, state, qa):  # one batch row: [27, N], [S], [N, A] -> [27]
        return m.mix(p, c, jnp.broadcast_to(state, (27, 3)), jax.nn.one_hot(joints, 3), jnp.broadcast_to(qa.max(-1), (27, 3)))

    mixed = jax.vmap(mix_every_joint)(chosen, s[:16], q_all)
    best = joints[jnp.argmax(mixed, axis=-1)]
    assert bool(jnp.all(best == jnp.argmax(q_all, -1)))


def test_qplex_heads_sets_the_attention_heads():
    for heads in (1, 3):
        cfg = C.from_dict({"train": {"method": "qmix"}, "model": {"mixer": "qplex", "qplex_heads": heads}})
        mixer = CromacModel(cfg, DIMS).init(jax.random.PRNGKey(0))["mixer"]
        assert sorted(k for k in mixer if k.startswith("key_")) == [f"key_{k}" for k in range(heads)]


def test_grad_clip_bounds_the_gradient_the_optimiser_sees():
    """train.grad_clip is the global-norm clip before Adam: two updates equal Adam's on the
    clipped gradients. Adam's first step is sign-like, so the clip shows from the second, through
    the moments; a clip the gradients never reach changes nothing."""
    import optax

    from cromac_jax.train import make_train

    params = {"w": jnp.array([3.0, -4.0])}
    grads = [{"w": jnp.array([3.0, -4.0])}, {"w": jnp.array([0.3, 0.4])}]  # norms 5 and 0.5

    def two_steps(opt, gs):
        state, out = opt.init(params), []
        for g in gs:
            upd, state = opt.update(g, state, params)
            out.append(np.asarray(upd["w"]))
        return out

    seconds = {}
    for clip in (0.5, 100.0):
        cfg = C.load(None, ["env.name=hallway_3x3x4x4", "train.method=qmix", f"train.grad_clip={clip}", "train.lr=0.1"])
        got = two_steps(make_train(cfg).optimiser, grads)
        clipped = [{"w": g["w"] * min(1.0, clip / float(jnp.linalg.norm(g["w"])))} for g in grads]
        want = two_steps(optax.adam(0.1), clipped)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-6)
        seconds[clip] = got[1]
    assert not np.allclose(seconds[0.5], seconds[100.0], rtol=1e-3)


@pytest.mark.parametrize("method", ["qmix", "full_comm", "cromac", "cromac_no_robust", "ame"])
@pytest.mark.parametrize("mixer", ["qmix", "qplex"])
def test_loss_is_finite_and_differentiable_for_every_method(method, mixer):
    m, cfg = model_for(method, mixer)
    p = m.init(jax.random.PRNGKey(0))
    batch = random_batch(jax.random.PRNGKey(1))
    w = L.weights_from_config(cfg)
    (loss, aux), g = jax.value_and_grad(
        lambda pp: L.loss_fn(m, pp, p, batch, L.RewardStats.create(), jnp.array(True), jax.random.PRNGKey(2), w),
        has_aux=True,
    )(p)
    assert np.isfinite(float(loss)) and float(optax_norm(g)) > 0
    assert (float(aux.robust) > 0) == (method == "cromac")
    assert (float(aux.poe) != 0) == method.startswith("cromac")


def test_certified_decision_matches_bounds():
    assert bool(ibp.certified(jnp.array([1.0, 0.0]), jnp.array([1.5, 0.9]), jnp.array(0)))
    assert not bool(ibp.certified(jnp.array([1.0, 0.0]), jnp.array([1.5, 1.2]), jnp.array(0)))


def test_bad_model_input_is_refused_clearly():
    with pytest.raises(ConfigError, match="cromac.eps=-0.1"):
        C.from_dict({"cromac": {"eps": -0.1}})
    with pytest.raises(ConfigError, match="cromac.kappa=-1"):
        C.from_dict({"cromac": {"kappa": -1}})
    with pytest.raises(ConfigError, match="C_MAX must be > 0"):
        C.from_dict({"cromac": {"weight_clamp": 0}})
    with pytest.raises(ConfigError, match="train.method='comm'.*cromac"):
        C.from_dict({"train": {"method": "comm"}})
    with pytest.raises(ConfigError, match="model.mixer='qtran'"):
        C.from_dict({"model": {"mixer": "qtran"}})
    m, _ = model_for("cromac")
    p = m.init(jax.random.PRNGKey(0))
    with pytest.raises(ConfigError, match=r"observation has shape \(3, 4\)"):
        m.agent_step(p, m.initial_hidden(), jnp.zeros((3, 4)))
    with pytest.raises(ConfigError, match=r"messages has shape \(4, 4, 16\)"):
        m.q_values(p, jnp.zeros((3, 16)), jnp.zeros((4, 4, 16)))
    other = CromacModel(C.from_dict({}), EnvDims(4, 1, 4, 3, 14))
    with pytest.raises(ConfigError, match="parameters do not match"):
        other.check_params(p)
    with pytest.raises(ConfigError, match="n_agents=0"):
        EnvDims(0, 1, 1, 3, 10).validate()


def test_batched_unroll_equals_stepping_the_agent():
    m, _ = model_for("cromac")
    p = m.init(jax.random.PRNGKey(0))
    obs = jax.random.normal(jax.random.PRNGKey(1), (4, 17, 3, 1))
    hs = L.unroll(m, p, obs)
    h = m.initial_hidden((4,))
    for t in range(17):
        h = m.agent_step(p, h, obs[:, t])
        np.testing.assert_allclose(hs[:, t], h, rtol=1e-5, atol=1e-6)
