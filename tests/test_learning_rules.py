"""The learner's rules, checked against hand computations: the double-Q TD target, how the loss
terms add up, reward standardisation, epsilon-greedy exploration and its schedule, the episode
layout the rollout stores, target-network syncs and the wait for ``learning_starts``.

The other model tests check that the loss is finite and differentiable; these check that it is
the loss of eq. 17 (a wrong gamma, a missing terminal mask, plain instead of double Q, or a
weight applied to the wrong term would each fail here)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cromac_jax import config as C
from cromac_jax import losses as L
from cromac_jax.networks import CromacModel, EnvDims
from cromac_jax.rollout import collect_episode, epsilon_greedy
from cromac_jax.train import make_train

DIMS = EnvDims(n_agents=3, obs_dim=4, state_dim=5, n_actions=4, episode_limit=9)


def _model(method, mixer="vdn"):
    cfg = C.from_dict({"train": {"method": method}, "model": {"mixer": mixer}})
    return CromacModel(cfg, DIMS)


def _batch(key, B=5):
    """Episodes of different lengths, some terminal and some cut by the limit, with actions
    masked at random (every agent keeps at least one)."""
    T1 = DIMS.episode_limit + 1
    ks = jax.random.split(key, 6)
    lengths = jnp.array([3, 9, 5, 9, 1])[:B]
    idx = jnp.arange(T1)[None]
    filled = idx <= lengths[:, None]
    terminal_ep = jnp.array([True, False, True, True, True])[:B]
    terminated = (idx == lengths[:, None] - 1) & terminal_ep[:, None]
    avail = jax.random.bernoulli(ks[0], 0.6, (B, T1, DIMS.n_agents, DIMS.n_actions)).at[..., 0].set(True)
    actions = jax.random.randint(ks[1], (B, T1, DIMS.n_agents), 0, DIMS.n_actions)
    return L.EpisodeBatch(
        obs=jax.random.normal(ks[2], (B, T1, DIMS.n_agents, DIMS.obs_dim)),
        state=jax.random.normal(ks[3], (B, T1, DIMS.state_dim)),
        avail=avail,
        actions=actions,
        reward=jax.random.normal(ks[4], (B, T1)) * (idx < lengths[:, None]),
        terminated=terminated,
        filled=filled,
    )


def _weights(**kw):
    base = dict(gamma=0.9, vae=0.0, poe=0.0, robust=0.0, radius=0.1, standardise_rewards=False)
    return L.LossWeights(**{**base, **kw})


def test_td_loss_is_the_double_q_target_with_terminal_and_padding_masks():
    m = _model("qmix", "vdn")
    p, tp = m.init(jax.random.PRNGKey(0)), m.init(jax.random.PRNGKey(1))  # online != target
    batch = _batch(jax.random.PRNGKey(2))
    loss, aux = L.loss_fn(m, p, tp, batch, L.RewardStats.create(), jnp.array(False), jax.random.PRNGKey(3), _weights())

    q = np.asarray(m.q_train(p, L.unroll(m, p, batch.obs)))
    qt = np.asarray(m.q_train(tp, L.unroll(m, tp, batch.obs)))
    avail, acts = np.asarray(batch.avail), np.asarray(batch.actions)
    r, term, filled = map(np.asarray, (batch.reward, batch.terminated, batch.filled))
    num = den = 0.0
    plain_q_differs = False
    B, T1 = r.shape
    for b in range(B):
        for t in range(T1 - 1):
            if not filled[b, t + 1]:  # transition t needs the slot after it
                continue
            q_tot = sum(q[b, t, i, acts[b, t, i]] for i in range(DIMS.n_agents))
            nxt = []
            for i in range(DIMS.n_agents):
                online = np.where(avail[b, t + 1, i], q[b, t + 1, i], -np.inf)
                target = np.where(avail[b, t + 1, i], qt[b, t + 1, i], -np.inf)
                nxt.append(qt[b, t + 1, i, int(np.argmax(online))])  # the online net picks, the target net values
                plain_q_differs |= int(np.argmax(online)) != int(np.argmax(target))
            y = r[b, t] + 0.9 * (1.0 - term[b, t]) * sum(nxt)
            num += (q_tot - y) ** 2
            den += 1
    assert plain_q_differs  # the batch tells double Q from max over the target net
    np.testing.assert_allclose(float(aux.td), num / den, rtol=1e-5)
    np.testing.assert_allclose(float(loss), num / den, rtol=1e-5)  # no other term for qmix


def test_qplex_target_weighs_the_target_nets_value_at_the_online_greedy_action_against_its_own_best():
    """pymarl's DMAQ learner: Q_tot' = mixer(Q'(s', a*), s', a*, max_a Q'(s', a)) with a* the online
    net's greedy action, so the target's advantage is not zero where the two nets disagree."""
    m = _model("qmix", "qplex")
    p, tp = m.init(jax.random.PRNGKey(0)), m.init(jax.random.PRNGKey(1))
    batch = _batch(jax.random.PRNGKey(2))
    _, aux = L.loss_fn(m, p, tp, batch, L.RewardStats.create(), jnp.array(False), jax.random.PRNGKey(3), _weights())
    q = m.q_train(p, L.unroll(m, p, batch.obs))
    qt = m.q_train(tp, L.unroll(m, tp, batch.obs))
    greedy = L.masked_argmax(q, batch.avail)
    at = jnp.take_along_axis(qt, greedy[..., None], axis=-1)[..., 0]
    best = jnp.max(jnp.where(batch.avail, qt, -jnp.inf), axis=-1)
    assert bool(jnp.any(best > at + 1e-3))  # the nets disagree somewhere
    n_act = DIMS.n_actions
    q_tot = m.mix(p, jnp.take_along_axis(q, batch.actions[..., None], axis=-1)[..., 0][:, :-1], batch.state[:, :-1],
                  jax.nn.one_hot(batch.actions[:, :-1], n_act), jnp.max(jnp.where(batch.avail, q, -jnp.inf), -1)[:, :-1])
    y = batch.reward[:, :-1] + 0.9 * (1.0 - batch.terminated[:, :-1]) * m.mix(
        tp, at[:, 1:], batch.state[:, 1:], jax.nn.one_hot(greedy[:, 1:], n_act), best[:, 1:])
    mask = np.asarray(batch.filled[:, 1:], np.float32)
    by_hand = float(np.sum(mask * np.asarray(q_tot - y) ** 2) / mask.sum())
    np.testing.assert_allclose(float(aux.td), by_hand, rtol=1e-5)


def test_loss_terms_are_added_with_their_weights_and_robust_only_when_on():
    m = _model("cromac", "qmix")
    p = m.init(jax.random.PRNGKey(0))
    batch = _batch(jax.random.PRNGKey(2))
    w = _weights(vae=0.3, poe=0.07, robust=0.5)
    key = jax.random.PRNGKey(3)
    off, aux = L.loss_fn(m, p, p, batch, L.RewardStats.create(), jnp.array(False), key, w)
    on, aux_on = L.loss_fn(m, p, p, batch, L.RewardStats.create(), jnp.array(True), key, w)
    assert min(float(aux.td), float(aux.vae), float(aux.poe), float(aux.robust)) > 0
    np.testing.assert_allclose(float(off), float(aux.td + 0.3 * aux.vae + 0.07 * aux.poe), rtol=1e-6)
    np.testing.assert_allclose(float(on), float(off + 0.5 * aux.robust), rtol=1e-6)
    assert float(aux_on.robust) == float(aux.robust)  # reported either way, added only when on


def test_auxiliary_losses_are_normalised_by_the_longest_episode_in_the_batch_as_the_official_code():
    """The official learner truncates a sampled batch to its longest episode and divides the VAE,
    PoE and robust losses (each a batch mean per slot) by that length; its robust loss is a mean
    over agents. "episode_limit" (earlier cromac-jax runs) divides by episode_limit + 1 and sums
    the robust loss over agents."""
    m = _model("cromac", "qmix")
    p = m.init(jax.random.PRNGKey(0))
    batch = jax.tree.map(lambda x: x[jnp.array([0, 2, 4])], _batch(jax.random.PRNGKey(2)))  # lengths 3, 5, 1
    B, T1 = batch.reward.shape
    longest = 6  # the 5-step episode fills 6 slots, fewer than episode_limit + 1 = 10
    key = jax.random.PRNGKey(3)
    w = _weights(vae=0.3, poe=0.07, robust=0.5)
    _, aux = L.loss_fn(m, p, p, batch, L.RewardStats.create(), jnp.array(True), key, w)
    _, old = L.loss_fn(m, p, p, batch, L.RewardStats.create(), jnp.array(True), key, w._replace(reduction="episode_limit"))

    k_vae = jax.random.split(key, 4)[2]
    vae_per, _, mean, logvar = L.state_vae_loss(m, p, batch.state, k_vae, T1)
    h = L.unroll(m, p, batch.obs)
    rob = np.asarray(L.robust_overlap_loss(m, p, h, mean, batch.actions, batch.avail, w.radius))  # [B, T1, N]
    filled = np.asarray(batch.filled, np.float32)
    np.testing.assert_allclose(float(aux.vae), float(np.sum(np.asarray(vae_per) * filled)) / (B * longest), rtol=1e-5)
    by_hand = sum(rob[b, t].mean() for b in range(B) for t in range(T1 - 1) if filled[b, t + 1]) / (B * longest)
    np.testing.assert_allclose(float(aux.robust), by_hand, rtol=1e-5)
    assert float(aux.robust) > 0 and rob.shape[-1] == DIMS.n_agents
    # the earlier reduction: (episode_limit + 1) slots, robust summed over the agents
    np.testing.assert_allclose(float(old.vae), float(aux.vae) * longest / T1, rtol=1e-5)
    np.testing.assert_allclose(float(old.poe), float(aux.poe) * longest / T1, rtol=1e-5)
    np.testing.assert_allclose(float(old.robust), by_hand * DIMS.n_agents * longest / T1, rtol=1e-5)


def test_rewards_are_standardised_by_the_running_statistics():
    m = _model("qmix", "vdn")
    p = m.init(jax.random.PRNGKey(0))
    batch = _batch(jax.random.PRNGKey(2))
    stats = L.RewardStats(jnp.array(1.5), jnp.array(4.0), jnp.array(10.0))
    key = jax.random.PRNGKey(3)
    with_stats, _ = L.loss_fn(m, p, p, batch, stats, jnp.array(False), key, _weights(standardise_rewards=True))
    by_hand, _ = L.loss_fn(m, p, p, batch.replace(reward=(batch.reward - 1.5) / 2.0), stats, jnp.array(False), key, _weights())
    raw, _ = L.loss_fn(m, p, p, batch, stats, jnp.array(False), key, _weights())
    np.testing.assert_allclose(float(with_stats), float(by_hand), rtol=1e-6)
    assert abs(float(with_stats) - float(raw)) > 1e-3


def test_running_reward_statistics_match_the_moments_of_every_masked_reward_seen():
    rng = np.random.default_rng(0)
    stats, seen = L.RewardStats.create(), []
    for _ in range(3):
        x = rng.normal(2.0, 3.0, (6, 8)).astype(np.float32)
        mask = rng.random((6, 8)) < 0.7
        stats = stats.update(jnp.asarray(x), jnp.asarray(mask, jnp.float32))
        seen.append(x[mask])
    every = np.concatenate(seen)
    np.testing.assert_allclose(float(stats.mean), every.mean(), rtol=1e-4)
    np.testing.assert_allclose(float(stats.var), every.var(), rtol=1e-4)
    np.testing.assert_allclose(float(stats.standardise(jnp.asarray(every)).std()), 1.0, rtol=1e-3)


def test_epsilon_greedy_explores_only_available_actions_and_is_greedy_at_zero():
    n, a = 3, 5
    avail = jnp.array([[1, 0, 1, 1, 0], [0, 0, 0, 1, 0], [1, 1, 1, 1, 1]], bool)
    q = jax.random.normal(jax.random.PRNGKey(0), (n, a)).at[0, 1].set(100.0)  # best, but unavailable
    keys = jax.random.split(jax.random.PRNGKey(1), 3000)
    explored = np.asarray(jax.vmap(lambda k: epsilon_greedy(k, q, avail, jnp.array(1.0)))(keys))
    for i in range(n):
        assert set(np.unique(explored[:, i])) == set(np.flatnonzero(np.asarray(avail[i])))
    greedy = np.asarray(jax.vmap(lambda k: epsilon_greedy(k, q, avail, jnp.array(0.0)))(keys))
    expected = np.argmax(np.where(np.asarray(avail), np.asarray(q), -np.inf), axis=-1)
    assert (greedy == expected).all()
    half = np.asarray(jax.vmap(lambda k: epsilon_greedy(k, q, avail, jnp.array(0.5)))(keys))
    off_greedy = (half[:, 2] != expected[2]).mean()  # agent 2: 5 actions, a random one is greedy 1 time in 5
    assert 0.35 < off_greedy < 0.45  # 0.5 * 4/5


def test_epsilon_is_annealed_linearly_then_held():
    cfg = C.load(None, ["env.name=hallway_3x3x4x4", "train.method=qmix", "train.epsilon_start=0.8",
                        "train.epsilon_finish=0.1", "train.epsilon_anneal_time=1000"])
    tr = make_train(cfg)
    got = [float(tr.epsilon(jnp.array(t))) for t in (0, 250, 500, 1000, 50_000)]
    np.testing.assert_allclose(got, [0.8, 0.625, 0.45, 0.1, 0.1], rtol=1e-6)


@pytest.mark.parametrize("timeout_is_terminal", [True, False])
def test_an_episode_cut_by_the_limit_is_stored_with_its_final_slot(timeout_is_terminal):
    """Every agent stays put on hallway 3x3x4x4: nobody reaches the goal, so the episode runs to
    episode_limit = max(n_i) + 10 = 14 steps, 15 filled slots, reward 0, not won; the last step is
    terminal only when timeouts are stored as terminal."""
    cfg = C.load(None, ["env.name=hallway_3x3x4x4", "train.method=qmix"])
    tr = make_train(cfg)
    env, m = tr.env, tr.model
    p = m.init(jax.random.PRNGKey(0))
    stay = lambda key, h, ts: jnp.zeros((m.n,), jnp.int32)  # noqa: E731
    ep, stats = collect_episode(env, lambda h, o: m.agent_step(p, h, o), stay, m.initial_hidden(),
                                env.init_run(jax.random.PRNGKey(1)), jax.random.PRNGKey(2), timeout_is_terminal)
    assert env.episode_limit == 14 and ep.filled.shape == (15,)
    assert int(stats.lengths) == 14 and not bool(stats.won) and float(stats.returns) == 0.0
    assert bool(ep.filled.all())
    assert (np.asarray(ep.actions) == 0).all()
    terminated = np.asarray(ep.terminated)
    assert terminated[:13].sum() == 0 and bool(terminated[13]) == timeout_is_terminal and not terminated[14]


def test_no_update_before_learning_starts_then_targets_sync_every_interval():
    cfg = C.load(None, ["env.name=hallway_3x3x4x4", "train.method=qmix", "train.num_envs=2",
                        "train.updates_per_iteration=1", "train.batch_size=4", "train.learning_starts=6",
                        "train.target_update_interval=3", "train.buffer_size=64"])
    tr = make_train(cfg)
    step = jax.jit(tr.iteration)
    state = tr.init(jax.random.PRNGKey(0))
    first = state.params
    same = lambda a, b: all(bool(jnp.array_equal(x, y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))  # noqa: E731
    seen = []
    for it in range(1, 9):
        before_target = state.target_params
        state, metrics = step(state)
        updates = int(state.updates)
        seen.append(updates)
        if it < 3:  # 2 and 4 episodes stored: below learning_starts=6
            assert updates == 0 and same(state.params, first) and float(metrics.loss) == 0.0
            continue
        assert not same(state.params, first)
        if updates % 3 == 0:
            assert same(state.target_params, state.params)
        else:
            assert same(state.target_params, before_target) and not same(state.target_params, state.params)
    assert seen == [0, 0, 1, 2, 3, 4, 5, 6]
