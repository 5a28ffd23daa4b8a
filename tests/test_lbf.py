"""Level-Based Foraging (modified lbforaging 1.1.0): ENV_SPEC.md section 2 and quirks 3-7.

Compiling anything that draws random numbers under vmap costs seconds on a small CPU, so each
env instance is built once and each jitted program is compiled once and shared between tests.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from envs.lbf import LbfState, LevelBasedForaging

NONE, NORTH, SOUTH, WEST, EAST = range(5)
PRESETS = {"lbf_3p1f": (3, 4, 12, 5, 25), "lbf_4p1f": (4, 4, 16, 5, 15)}


@functools.lru_cache(maxsize=None)
def _env(name, **overrides):
    return envs.make(name, **overrides)


@pytest.fixture(scope="module", params=sorted(PRESETS))
def preset(request):
    return request.param


@pytest.fixture(scope="module")
def env(preset):
    return _env(preset)


@pytest.fixture(scope="module")
def env3():
    return _env("lbf_3p1f")


@pytest.fixture(scope="module")
def env4():
    return _env("lbf_4p1f")


def _state(env, pos, level, food, food_level, oracle=0):
    """A fresh episode with the given layout (positions as (row, col)); no RNG, no compile."""
    return LbfState(
        pos=jnp.asarray(pos, jnp.int32),
        level=jnp.asarray(level, jnp.int32),
        food=jnp.asarray(food, jnp.int32),
        food_level=jnp.asarray(food_level, jnp.int32),
        food_alive=jnp.ones((), bool),
        oracle=jnp.asarray(oracle, jnp.int32),
        step=jnp.zeros((), jnp.int32),
        run=jnp.asarray(oracle, jnp.int32),
    )


@functools.lru_cache(maxsize=None)
def _step_fn(env):
    return jax.jit(env.step_arrays)


@functools.lru_cache(maxsize=None)
def _reset_fn(env):
    return jax.jit(env.reset_arrays)


@functools.lru_cache(maxsize=None)
def _batch_reset_fn(env):
    return jax.jit(jax.vmap(env.reset_arrays))


def _step(env, st, actions):
    return _step_fn(env)(jax.random.key(1), st, jnp.asarray(actions, jnp.int32))


# ---------------------------------------------------------------------------- interface
def test_dimensions_match_spec(env, preset):
    n, o, s, a, limit = PRESETS[preset]
    assert env.describe() == {
        "n_agents": n, "obs_dim": o, "state_dim": s, "n_actions": a, "episode_limit": limit
    }
    obs, st = env.reset(jax.random.key(0))
    assert set(obs) == {f"agent_{i}" for i in range(n)} | {"world_state"}
    for i in range(n):
        assert obs[f"agent_{i}"].shape == (o,) and obs[f"agent_{i}"].dtype == jnp.float32
    assert obs["world_state"].shape == (s,) and obs["world_state"].dtype == jnp.float32
    avail = env.get_avail_actions(st)
    assert all(bool(jnp.all(avail[f"agent_{i}"])) and avail[f"agent_{i}"].shape == (a,) for i in range(n))
    space = env.observation_space("agent_0")
    assert float(jnp.min(space.low)) == -1.0 and float(jnp.max(space.high)) == 7.0
    assert env.action_space("agent_0").n == 5
    assert LevelBasedForaging.reward_range == (0.0, 1.0)


# ---------------------------------------------------------------------------- reset
def test_reset_distribution(env):
    n, b = env.n_agents, 20000
    ts, st = _batch_reset_fn(env)(jax.random.split(jax.random.key(3), b))
    pos, level, food = np.asarray(st.pos), np.asarray(st.level), np.asarray(st.food)
    assert set(np.unique(level)) == {1, 2}
    np.testing.assert_array_equal(np.asarray(st.food_level), np.sort(level, axis=1)[:, :3].sum(1))
    assert ((pos >= 0) & (pos <= 7)).all()
    assert ((food >= 1) & (food <= 6)).all()
    cells = pos[..., 0] * 8 + pos[..., 1]
    fcell = food[:, 0] * 8 + food[:, 1]
    assert all(len(set(c)) == n for c in cells), "players must spawn on distinct cells"
    assert not (cells == fcell[:, None]).any(), "food never spawns on a player"
    assert np.asarray(st.food_alive).all() and (np.asarray(st.step) == 0).all()
    # Uniform marginals: every grid cell for the first and the last placed player, every
    # interior cell for the food, each within 25% of its expected count (about 4 sd).
    for counts, k in [
        (np.bincount(cells[:, 0], minlength=64), 64),
        (np.bincount(cells[:, -1], minlength=64), 64),
        (np.bincount((food[:, 0] - 1) * 6 + food[:, 1] - 1, minlength=36), 36),
    ]:
        assert len(counts) == k and np.all(np.abs(counts - b / k) < 0.25 * b / k), counts
    # Only the oracle sees the food; everyone sees its own position; state = concatenated obs.
    obs, oracle = np.asarray(ts.obs), np.asarray(st.oracle)
    assert set(oracle.tolist()) == set(range(n)), "the run-level oracle draw covers every agent"
    assert (np.asarray(st.run) == oracle).all()
    sees = np.arange(n)[None, :] == oracle[:, None]
    np.testing.assert_array_equal(obs[sees][:, :2], food)
    assert (obs[~sees][:, :2] == -1).all()
    np.testing.assert_array_equal(obs[..., 2:], pos)
    np.testing.assert_array_equal(np.asarray(ts.world_state), obs.reshape(b, -1))
    assert not np.asarray(ts.reward).any() and not np.asarray(ts.done).any()


def test_oracle_run_mode_is_the_run_draw(env):
    n = env.n_agents
    for run in range(n):
        for seed in range(3):
            _, st = _reset_fn(env)(jax.random.key(seed), jnp.int32(run))
            assert int(st.oracle) == run
    # Auto-reset keeping the oracle over many episodes: test_random_play_invariants.


def test_oracle_episode_and_fixed_modes():
    ep = _env("lbf_4p1f", oracle="episode")
    assert int(ep.init_run(jax.random.key(0))) == -1
    # Auto-reset (JaxMARL step) at the time limit redraws the oracle every episode.
    _, st = ep.reset(jax.random.key(1))
    st = st.replace(step=jnp.int32(ep.episode_limit - 1))
    acts = {a: jnp.int32(NONE) for a in ep.agents}
    oracles = []
    for seed in range(40):
        _, st_next, _, dones, _ = ep.step(jax.random.key(seed), st, acts)
        assert bool(dones["__all__"]) and int(st_next.step) == 0 and int(st_next.run) == -1
        oracles.append(int(st_next.oracle))
    assert set(oracles) == {0, 1, 2, 3}
    fixed = _env("lbf_3p1f", oracle=2)
    assert int(fixed.init_run(jax.random.key(0))) == 2
    for seed in range(5):
        _, st = _reset_fn(fixed)(jax.random.key(seed))
        assert int(st.oracle) == 2
        _, st = _reset_fn(fixed)(jax.random.key(seed), jnp.int32(0))
        assert int(st.oracle) == 2


# ---------------------------------------------------------------------------- rules
def test_team_surrounding_food_eats_it(env3):
    st = _state(env3, [(2, 3), (4, 3), (3, 2)], [1, 2, 1], (3, 3), 4, oracle=1)
    ts, st2 = _step(env3, st, [NONE, NONE, NONE])
    assert float(ts.reward) == 1.0 and ts.reward.dtype == jnp.float32
    assert bool(ts.terminated) and bool(ts.won) and not bool(ts.truncated)
    assert not bool(st2.food_alive) and int(st2.step) == 1
    assert (np.asarray(ts.obs)[:, :2] == -1).all(), "the oracle stops seeing an eaten food"
    # Arriving on the step itself counts (loading happens after the move).
    st = _state(env3, [(1, 3), (4, 3), (3, 2)], [1, 2, 1], (3, 3), 4)
    ts, _ = _step(env3, st, [SOUTH, NONE, NONE])
    assert float(ts.reward) == 1.0 and bool(ts.won)


def test_too_little_level_does_not_eat(env3):
    st = _state(env3, [(2, 3), (4, 3), (3, 2)], [1, 1, 1], (3, 3), 4)
    ts, st2 = _step(env3, st, [NONE, NONE, NONE])
    assert float(ts.reward) == 0.0 and not bool(ts.terminated) and not bool(ts.won)
    assert bool(st2.food_alive)
    assert (np.asarray(ts.obs)[0, :2] == [3, 3]).all() and (np.asarray(ts.obs)[1:, :2] == -1).all()
    # Diagonal neighbours do not count.
    st = _state(env3, [(2, 2), (4, 4), (3, 2)], [2, 2, 1], (3, 3), 4)
    ts, _ = _step(env3, st, [NONE, NONE, NONE])
    assert float(ts.reward) == 0.0


def test_joint_load_rule_subset_and_bystander(env4):
    # 4p: the two level-2 players suffice for food level 4 (sum of the 3 lowest of 1,1,2,2 = 4);
    # a bystander next to a loader but not to the food cannot cancel the load (quirk 4 decision).
    st = _state(env4, [(2, 3), (3, 4), (1, 3), (7, 7)], [2, 2, 1, 1], (3, 3), 4)
    ts, _ = _step(env4, st, [NONE] * 4)
    assert float(ts.reward) == 1.0 and bool(ts.won)


def test_invalid_moves_become_none(env3):
    st = _state(env3, [(2, 3), (0, 0), (7, 7)], [1, 1, 1], (3, 3), 3)
    ts, st2 = _step(env3, st, [SOUTH, NORTH, EAST])
    np.testing.assert_array_equal(np.asarray(st2.pos), [(2, 3), (0, 0), (7, 7)])
    _, st2 = _step(env3, st, [NONE, WEST, SOUTH])
    np.testing.assert_array_equal(np.asarray(st2.pos), [(2, 3), (0, 0), (7, 7)])
    _, st2 = _step(env3, st.replace(pos=jnp.asarray([(4, 4)] * 3)), [-1, 5, 99])  # unknown ids
    np.testing.assert_array_equal(np.asarray(st2.pos), [(4, 4)] * 3)
    assert float(ts.reward) == 0.0
    # Moves are otherwise free, and other players do not make a move invalid.
    _, st2 = _step(env3, st, [WEST, SOUTH, NORTH])
    np.testing.assert_array_equal(np.asarray(st2.pos), [(2, 2), (1, 0), (6, 7)])


def test_collisions_swaps_and_stacking(env3):
    food = (1, 1)
    # Two players claiming the same cell both stay.
    st = _state(env3, [(5, 2), (5, 4), (7, 7)], [1, 1, 1], food, 3)
    _, st2 = _step(env3, st, [EAST, WEST, NONE])
    np.testing.assert_array_equal(np.asarray(st2.pos), [(5, 2), (5, 4), (7, 7)])
    # Moving into a standing player fails (the stander claims its own cell).
    st = _state(env3, [(5, 5), (5, 6), (7, 7)], [1, 1, 1], food, 3)
    _, st2 = _step(env3, st, [EAST, NONE, NONE])
    np.testing.assert_array_equal(np.asarray(st2.pos), [(5, 5), (5, 6), (7, 7)])
    # Swapping works.
    _, st2 = _step(env3, st, [EAST, WEST, NONE])
    np.testing.assert_array_equal(np.asarray(st2.pos), [(5, 6), (5, 5), (7, 7)])
    # Stacking (quirk 5): A (5,5) and C (5,7) both claim (5,6) and stay; B moves into A's cell.
    st = _state(env3, [(5, 5), (4, 5), (5, 7)], [1, 1, 1], food, 3)
    ts, st2 = _step(env3, st, [EAST, SOUTH, WEST])
    np.testing.assert_array_equal(np.asarray(st2.pos), [(5, 5), (5, 5), (5, 7)])
    np.testing.assert_array_equal(np.asarray(ts.obs)[:, 2:], [(5, 5), (5, 5), (5, 7)])
    # A stacked pair can split again.
    _, st3 = _step(env3, st2, [NORTH, WEST, NONE])
    np.testing.assert_array_equal(np.asarray(st3.pos), [(4, 5), (5, 4), (5, 7)])


def test_time_limit_truncates(env3):
    st = _state(env3, [(6, 6), (0, 0), (7, 7)], [1, 1, 1], (3, 3), 3).replace(step=jnp.int32(24))
    ts, _ = _step(env3, st, [NONE] * 3)
    assert bool(ts.truncated) and not bool(ts.terminated) and float(ts.reward) == 0.0


# ---------------------------------------------------------------------------- random play
@functools.lru_cache(maxsize=None)
def _rollout_fn(env, b, t):
    """jit(key -> random-policy rollout of b auto-resetting envs for t steps), per-step outputs."""

    def run(key):
        k0, k1 = jax.random.split(key)
        _, st = jax.vmap(env.reset)(jax.random.split(k0, b))

        def body(carry, k):
            st, ret, length = carry
            ka, ks = jax.random.split(k)
            a = jax.random.randint(ka, (b, env.n_agents), 0, 5)
            acts = {ag: a[:, i] for i, ag in enumerate(env.agents)}
            obs, st, rew, dones, info = jax.vmap(env.step)(jax.random.split(ks, b), st, acts)
            r, d = rew["agent_0"], dones["__all__"]
            ret, length = ret + r, length + 1
            out = (obs, r, d, info["won"], ret, length, st.oracle)
            return (st, jnp.where(d, 0.0, ret), jnp.where(d, 0, length)), out

        zeros = jnp.zeros((b,))
        _, out = jax.lax.scan(body, (st, zeros, zeros.astype(jnp.int32)), jax.random.split(k1, t))
        return out

    return jax.jit(run)


def test_random_play_invariants(env):
    out = _rollout_fn(env, 1024, 200)(jax.random.key(7))
    obs, r, d, won, ret, length, oracle = jax.tree.map(np.asarray, out)
    stacked = np.stack([obs[f"agent_{i}"] for i in range(env.n_agents)], axis=2)  # [T, B, N, 4]
    assert np.isfinite(stacked).all() and np.isfinite(r).all()
    assert ((stacked[..., 2:] >= 0) & (stacked[..., 2:] <= 7)).all()
    food = stacked[..., :2]
    assert ((food == -1) | ((food >= 1) & (food <= 6))).all()
    np.testing.assert_array_equal(obs["world_state"], stacked.reshape(*stacked.shape[:2], -1))
    assert ((r >= 0.0) & (r <= 1.0)).all() and set(np.unique(r)) <= {0.0, 1.0}
    assert set(np.unique(ret[d])) <= {0.0, 1.0}, "an episode's return is its success, 0 or 1"
    assert d.sum() > 1024 * (200 // env.episode_limit) - 1, "episodes end and auto-reset"
    assert won.any(), "random play eats the food sometimes"
    assert (length <= env.episode_limit).all()
    assert (((length == env.episode_limit) | won) == d).all(), "episodes end by winning or at the limit"
    np.testing.assert_array_equal(won, r == 1.0)
    assert (oracle == oracle[:1]).all(), "oracle='run' keeps its oracle across auto-resets"


def test_jit_vmap_1024_and_determinism(env4):
    run = _rollout_fn(env4, 1024, 200)
    a, b, c = run(jax.random.key(11)), run(jax.random.key(11)), run(jax.random.key(12))
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert not np.array_equal(np.asarray(a[0]["world_state"]), np.asarray(c[0]["world_state"]))


# ---------------------------------------------------------------------------- config errors
@pytest.mark.parametrize(
    "override, needle",
    [
        ({"n_players": 0}, "n_players"),
        ({"n_players": 1}, "n_players"),
        ({"n_players": 36}, "n_players"),
        ({"n_players": True}, "n_players"),
        ({"oracle": 7}, "oracle"),
        ({"oracle": -1}, "oracle"),
        ({"oracle": "always"}, "oracle"),
        ({"time_limit": 0}, "time_limit"),
        ({"field_size": 3}, "field_size"),
        ({"max_player_level": 0}, "max_player_level"),
    ],
)
def test_bad_config_is_refused(override, needle):
    with pytest.raises(envs.EnvConfigError) as err:
        envs.make("lbf_3p1f", **override)
    (value,) = override.values()
    assert needle in str(err.value) and repr(value) in str(err.value)


def test_other_sizes_build():
    env = _env("lbf_3p1f", n_players=2, field_size=5, max_player_level=3, oracle=1)
    assert env.describe()["state_dim"] == 8 and env.episode_limit == 25
    states = [_reset_fn(env)(jax.random.key(seed))[1] for seed in range(300)]
    level = np.stack([np.asarray(st.level) for st in states])
    food = np.stack([np.asarray(st.food) for st in states])
    pos = np.stack([np.asarray(st.pos) for st in states])
    np.testing.assert_array_equal([int(st.food_level) for st in states], level.sum(1))
    assert set(np.unique(level).tolist()) == {1, 2, 3}
    assert ((food >= 1) & (food <= 3)).all() and ((pos >= 0) & (pos <= 4)).all()
    assert (pos[:, 0] != pos[:, 1]).any(-1).all() and (pos != food[:, None]).any(-1).all()
