"""Hallway rules (ENV_SPEC.md section 1) checked with scripted policies."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs


@pytest.mark.parametrize(
    "name,dims",
    [("hallway_4x5x6", (3, 1, 3, 3, 16)), ("hallway_3x3x4x4", (4, 1, 4, 3, 14))],
)
def test_dimensions_match_spec(name, dims):
    env = envs.make(name)
    d = env.describe()
    assert (d["n_agents"], d["obs_dim"], d["state_dim"], d["n_actions"], d["episode_limit"]) == dims
    obs, state = env.reset(jax.random.PRNGKey(0))
    assert set(obs) == set(env.agents) | {"world_state"}
    assert obs["agent_0"].shape == (1,) and obs["agent_0"].dtype == jnp.float32
    assert obs["world_state"].shape == (dims[2],)
    avail = env.get_avail_actions(state)
    assert all(bool(jnp.all(avail[a])) for a in env.agents)


def test_reset_distribution_never_at_goal_and_covers_range():
    env = envs.make("hallway_4x5x6")
    keys = jax.random.split(jax.random.PRNGKey(1), 4000)
    ts, state = jax.vmap(env.reset_arrays)(keys)
    pos = np.asarray(state.pos)
    for i, n in enumerate((4, 5, 6)):
        assert pos[:, i].min() == 1 and pos[:, i].max() == n
        counts = np.bincount(pos[:, i], minlength=n + 1)[1:]
        # uniform over 1..n: every cell within 25% of the expected count
        assert np.all(np.abs(counts - 4000 / n) < 0.25 * 4000 / n)
    np.testing.assert_array_equal(np.asarray(ts.obs)[..., 0], pos.astype(np.float32))
    np.testing.assert_array_equal(np.asarray(ts.world_state), pos.astype(np.float32))


def _run(env, policy, key, steps=None):
    """Roll one episode with ``policy(t, pos) -> actions`` on the array API."""
    ts, state = env.reset_arrays(key)
    total, won, length = 0.0, False, 0
    for t in range(steps or env.episode_limit):
        ts, state = env.step_arrays(jax.random.PRNGKey(t), state, policy(t, state.pos))
        total += float(ts.reward)
        length += 1
        if bool(ts.done):
            won = bool(ts.won)
            break
    return total, won, length, ts


@pytest.mark.parametrize("reward_win", [None, 2.5])  # the default 1, then overridden
def test_arrive_together_wins_every_episode(reward_win):
    env = envs.make("hallway_4x5x6") if reward_win is None else envs.make("hallway_4x5x6", reward_win=reward_win)
    step = jax.jit(env.step_arrays)
    env_j = type("J", (), {})()
    env_j.reset_arrays, env_j.step_arrays, env_j.episode_limit = jax.jit(env.reset_arrays), step, 16

    def together(t, pos):
        # walk to cell 1, wait until everyone is there, then all step in at once
        all_at_one = jnp.all(pos == 1)
        return jnp.where(all_at_one, 1, jnp.where(pos > 1, 1, 0)).astype(jnp.int32)

    for k in range(20):
        total, won, length, ts = _run(env_j, together, jax.random.PRNGKey(k))
        assert won and total == (reward_win or 1.0) and bool(ts.terminated) and not bool(ts.truncated)
        assert length <= 6


def test_one_agent_early_never_wins():
    env = envs.make("hallway_4x5x6")
    env_j = type("J", (), {})()
    env_j.reset_arrays, env_j.step_arrays, env_j.episode_limit = (
        jax.jit(env.reset_arrays),
        jax.jit(env.step_arrays),
        16,
    )

    def early(t, pos):
        # agent 0 rushes in; the others wait at distance >= 1 until it has arrived
        a0 = jnp.array([1], jnp.int32)
        rest = jnp.zeros(pos.shape[0] - 1, jnp.int32)
        return jnp.concatenate([a0, rest])

    for k in range(20):
        total, won, length, ts = _run(env_j, early, jax.random.PRNGKey(k))
        assert not won and total == 0.0 and bool(ts.terminated)


def test_time_limit_truncates_with_zero_reward():
    env = envs.make("hallway_3x3x4x4")
    ts, state = env.reset_arrays(jax.random.PRNGKey(3))
    stay = jnp.zeros(4, jnp.int32)
    for t in range(14):
        assert not bool(ts.done)
        ts, state = env.step_arrays(jax.random.PRNGKey(t), state, stay)
        assert float(ts.reward) == 0.0
    assert bool(ts.truncated) and not bool(ts.terminated) and int(state.step) == 14


def test_moves_clip_at_corridor_ends():
    env = envs.make("hallway_4x5x6")
    _, state = env.reset_arrays(jax.random.PRNGKey(0))
    state = state.replace(pos=jnp.array([4, 5, 6], jnp.int32))
    _, state = env.step_arrays(jax.random.PRNGKey(0), state, jnp.array([2, 2, 2], jnp.int32))
    np.testing.assert_array_equal(np.asarray(state.pos), [4, 5, 6])
    state = state.replace(pos=jnp.array([1, 2, 3], jnp.int32))
    _, state = env.step_arrays(jax.random.PRNGKey(0), state, jnp.array([0, 1, 2], jnp.int32))
    np.testing.assert_array_equal(np.asarray(state.pos), [1, 1, 4])


def test_random_play_keeps_invariants_and_auto_resets():
    env = envs.make("hallway_4x5x6")
    n_envs, steps = 1024, 200

    def rollout(key):
        k0, key = jax.random.split(key)
        obs, state = env.reset(k0)

        def body(carry, key):
            obs, state = carry
            ka, ks = jax.random.split(key)
            acts = jax.random.randint(ka, (env.n_agents,), 0, 3)
            actions = {a: acts[i] for i, a in enumerate(env.agents)}
            obs, state, rew, dones, info = env.step(ks, state, actions)
            return (obs, state), (state.pos, rew["agent_0"], dones["__all__"], info["won"])

        _, out = jax.lax.scan(body, (obs, state), jax.random.split(key, steps))
        return out

    pos, rew, done, won = jax.jit(jax.vmap(rollout))(jax.random.split(jax.random.PRNGKey(0), n_envs))
    pos, rew, done, won = map(np.asarray, (pos, rew, done, won))
    # after an auto-reset the state is a fresh one (no agent at the goal)
    assert pos.min() >= 1 and np.all(pos <= np.array([4, 5, 6]))
    assert set(np.unique(rew)) <= {0.0, 1.0}
    assert np.all(rew[won] == 1.0) and np.all(rew[~won] == 0.0)
    assert np.all(done[won])
    assert done.sum() > n_envs  # many episodes ended and restarted


def test_same_key_same_trajectory():
    env = envs.make("hallway_3x3x4x4")

    def rollout(key):
        _, state = env.reset_arrays(key)

        def body(state, k):
            acts = jax.random.randint(k, (env.n_agents,), 0, 3)
            ts, state = env.step_arrays(k, state, acts)
            return state, ts.obs

        return jax.lax.scan(body, state, jax.random.split(key, 20))[1]

    f = jax.jit(rollout)
    np.testing.assert_array_equal(f(jax.random.PRNGKey(5)), f(jax.random.PRNGKey(5)))
    assert not np.array_equal(f(jax.random.PRNGKey(5)), f(jax.random.PRNGKey(6)))


def test_bad_overrides_are_refused_clearly():
    with pytest.raises(envs.EnvConfigError, match="unknown environment 'hallway_9'"):
        envs.make("hallway_9")
    with pytest.raises(envs.EnvConfigError, match="unknown override 'n_agents'.*valid keys"):
        envs.make("hallway_4x5x6", n_agents=3)
    with pytest.raises(envs.EnvConfigError, match=r"state_numbers must be integers >= 1, got \[4, 0\]"):
        envs.make("hallway_4x5x6", state_numbers=[4, 0])
    with pytest.raises(envs.EnvConfigError, match="non-empty"):
        envs.make("hallway_4x5x6", state_numbers=[])
