"""SMAX stand-ins for the SMAC maps (envs/smax_comm.py, ENV_SPEC.md 4.7).

Each stand-in compiles a handful of functions, shared by the tests through module-scoped
fixtures: one jitted ``vmap`` over 1024 whole episodes that plays either a scripted policy
(knows where the enemy is) or uniformly random available actions, ``jit(reset_arrays)`` /
``jit(step_arrays)`` and the dict API's own jitted ``reset`` / ``step``. The trainer compiles
and runs one chunk on 1o10b; on 1o2r it is traced (``eval_shape``), compiled in a slow test.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from envs import smax_comm
from envs.smax_comm import BANELING, OVERLORD, SIZES, SMAC_SIZES, UNIT_ATTACKS, UNIT_HEALTH

NAMES = ["smax_1o2r_vs_4r", "smax_1o10b_vs_1r"]
N_EPISODES = 1024


@pytest.fixture(scope="module", params=NAMES)
def env(request):
    return envs.make(request.param)


# ------------------------------------------------------------------ policies
def scripted_actions(env, state, avail):
    """Fighters walk to the closest living enemy (read from the state: this policy knows the
    corner) and attack the closest enemy in range when they can; the overlord stops."""
    s, st = env.smax, state.smax
    na = s.num_allies
    pos = st.unit_positions
    dist = jnp.linalg.norm(pos[na:][None] - pos[:na][:, None], axis=-1)  # [A, E]
    can_attack = avail[:, s.num_movement_actions :]
    attack = jnp.argmin(jnp.where(can_attack, dist, jnp.inf), axis=1) + s.num_movement_actions
    target = jnp.argmin(jnp.where(st.unit_alive[na:][None], dist, jnp.inf), axis=1)
    heading = pos[na:][target] - pos[:na]
    move = jnp.argmax(heading @ jnp.array([[0.0, 1.0], [1.0, 0.0], [0.0, -1.0], [-1.0, 0.0]]).T, axis=-1)
    act = jnp.where(jnp.any(can_attack, 1), attack, move)
    return jnp.where(jnp.asarray(s.is_scout) | ~st.unit_alive[:na], 4, act).astype(jnp.int32)


def random_actions(key, avail):
    return jax.random.categorical(key, jnp.where(avail, 0.0, -jnp.inf)).astype(jnp.int32)


def make_episodes(env):
    """jit(vmap) over episodes of ``env`` (array API, no reset): per-episode summaries."""
    s = env.smax
    na, F = s.num_allies, len(s.unit_features)
    is_suicide = jnp.asarray(np.asarray(s.scenario)[:na] == BANELING)
    bane_damage = UNIT_ATTACKS[BANELING]

    def one(key, scripted):
        k_reset, k_steps = jax.random.split(key)
        ts, st = env.reset_arrays(k_reset)
        enemy_feats = ts.obs[:, (na - 1) * F : (na - 1 + s.num_enemies) * F].reshape(na, s.num_enemies, F)
        sees_enemy = jnp.any(enemy_feats[..., 0] > 0, axis=-1)  # [N]

        def body(c, key):
            ts, st, alive, ret, won, L, stats = c
            k_act, k_env = jax.random.split(key)
            a = jnp.where(scripted, scripted_actions(env, st, ts.avail), random_actions(k_act, ts.avail))
            nts, nst = env.step_arrays(k_env, st, a)
            hp_lost = jnp.sum(st.smax.unit_health[na:] - nst.smax.unit_health[na:])
            banes_died = jnp.sum(is_suicide & st.smax.unit_alive[:na] & ~nst.smax.unit_alive[:na])
            r = jnp.where(alive, nts.reward, 0.0)
            stats = dict(
                scout_hp_min=jnp.minimum(stats["scout_hp_min"], nst.smax.unit_health[env.scout_index]),
                r_min=jnp.minimum(stats["r_min"], jnp.where(alive, nts.reward, jnp.inf)),
                r_max=jnp.maximum(stats["r_max"], jnp.where(alive, nts.reward, -jnp.inf)),
                obs_absmax=jnp.maximum(stats["obs_absmax"], jnp.max(jnp.abs(nts.obs))),
                # damage dealt without a baneling dying with it (only meaningful for 1o10b)
                unpaid_hits=stats["unpaid_hits"] + (alive & (hp_lost > bane_damage * banes_died + 1e-3)),
                end_terminated=jnp.where(alive & nts.done, nts.terminated, stats["end_terminated"]),
                end_truncated=jnp.where(alive & nts.done, nts.truncated, stats["end_truncated"]),
            )
            won = jnp.where(alive & nts.done, nts.won, won)
            L = L + alive
            alive = alive & ~nts.done
            return (nts, nst, alive, ret + r, won, L, stats), None

        stats = dict(
            scout_hp_min=st.smax.unit_health[env.scout_index],
            r_min=jnp.inf,
            r_max=-jnp.inf,
            obs_absmax=jnp.max(jnp.abs(ts.obs)),
            unpaid_hits=jnp.zeros((), jnp.int32),
            end_terminated=jnp.zeros((), bool),
            end_truncated=jnp.zeros((), bool),
        )
        init = (ts, st, jnp.ones((), bool), jnp.zeros(()), jnp.zeros((), bool), jnp.zeros((), jnp.int32), stats)
        (_, _, _, ret, won, L, stats), _ = jax.lax.scan(body, init, jax.random.split(k_steps, env.episode_limit))
        return dict(ret=ret, won=won, length=L, sees_enemy=sees_enemy, **stats)

    run = jax.jit(jax.vmap(one, in_axes=(0, None)))
    return lambda key, scripted: jax.tree.map(np.asarray, run(jax.random.split(key, N_EPISODES), scripted))


@pytest.fixture(scope="module")
def rollouts(env):
    run = make_episodes(env)
    return {"scripted": run(jax.random.PRNGKey(0), True), "random": run(jax.random.PRNGKey(1), False)}


@pytest.fixture(scope="module")
def jitted(env):
    return jax.jit(env.reset_arrays), jax.jit(env.step_arrays)


# ------------------------------------------------------------------ sizes and registry
def test_sizes_match_documented_table(env):
    name = env.map_name
    preset = {"1o_2r_vs_4r": "smax_1o2r_vs_4r", "1o_10b_vs_1r": "smax_1o10b_vs_1r"}[name]
    expected = {"smax_1o2r_vs_4r": (3, 74, 56, 9, 50), "smax_1o10b_vs_1r": (11, 129, 96, 6, 50)}[preset]
    d = env.describe()
    got = (d["n_agents"], d["obs_dim"], d["state_dim"], d["n_actions"], d["episode_limit"])
    assert got == SIZES[preset] == expected
    assert (env.n_agents, env.obs_dim, env.state_dim, env.n_actions, env.episode_limit) == got
    # SMAC's sizes differ and are documented next to ours (same agents and limit)
    assert SMAC_SIZES[preset][0] == got[0] and SMAC_SIZES[preset][4] == got[4]
    assert SMAC_SIZES[preset][1:4] != got[1:4]
    assert env.reward_range == (0.0, 20.0)
    # the overlord is SMAC's agent 0 (1o2r) / 10 (1o10b)
    assert env.scout_index == {"smax_1o2r_vs_4r": 0, "smax_1o10b_vs_1r": 10}[preset]
    assert env.smax.ally_types[env.scout_index] == OVERLORD


def test_shapes_and_dtypes_of_both_apis(env, jitted):
    reset, _ = jitted
    ts, state = reset(jax.random.PRNGKey(0))
    n, o, s, a = env.n_agents, env.obs_dim, env.state_dim, env.n_actions
    assert ts.obs.shape == (n, o) and ts.obs.dtype == jnp.float32
    assert ts.world_state.shape == (s,) and ts.world_state.dtype == jnp.float32
    assert ts.avail.shape == (n, a) and ts.avail.dtype == jnp.bool_
    assert ts.reward.shape == () and ts.reward.dtype == jnp.float32
    assert int(state.step) == 0
    obs, _ = env.reset(jax.random.PRNGKey(0))
    assert set(obs) == set(env.agents) | {"world_state"}
    assert obs["agent_0"].shape == (o,) and obs["world_state"].shape == (s,)
    # alive units: moves and stop available; the overlord can never attack
    assert bool(jnp.all(ts.avail[:, :5]))
    assert not bool(jnp.any(ts.avail[env.scout_index, 5:]))


def test_presets_registered_and_overrides_checked():
    assert set(NAMES) <= set(envs.preset_names())
    e = envs.make("smax_1o2r_vs_4r", fighter_sight=5.0, scout_sight=16.0)
    assert float(e.smax.unit_type_sight_ranges[smax_comm.ROACH]) == 5.0
    assert float(e.smax.unit_type_sight_ranges[OVERLORD]) == 16.0
    with pytest.raises(envs.EnvConfigError, match="fighter_sight"):
        envs.make("smax_1o2r_vs_4r", fighter_sight=-1.0)
    with pytest.raises(envs.EnvConfigError, match="map_name"):
        envs.make("smax_1o2r_vs_4r", map_name="3m")
    with pytest.raises(envs.EnvConfigError, match="unknown override"):
        envs.make("smax_1o10b_vs_1r", sight=3.0)


# ------------------------------------------------------------------ rollouts (1024 envs, jit + vmap)
def test_jit_vmap_over_1024_envs(env, rollouts):
    for r in rollouts.values():
        assert r["ret"].shape == (N_EPISODES,) and np.all(np.isfinite(r["ret"]))
        assert r["length"].min() >= 1 and r["length"].max() <= env.episode_limit
        # every episode ended, by a terminal event or by the 50-step time limit
        assert np.all(r["end_terminated"] ^ r["end_truncated"])
        assert np.all(r["length"][r["end_truncated"]] == env.episode_limit)
        assert not np.any(r["won"] & ~r["end_terminated"])


def test_overlord_is_never_attacked(env, rollouts):
    for r in rollouts.values():
        assert np.all(r["scout_hp_min"] == UNIT_HEALTH[OVERLORD])


def test_fighters_cannot_see_the_enemy_at_spawn(env, rollouts):
    sees = rollouts["random"]["sees_enemy"]  # [episodes, agents] at reset
    fighters = env.smax.is_fighter
    blind = 1.0 - sees[:, fighters].mean()
    # measured 0.88 (1o2r) and 0.92 (1o10b); the overlord always sees the enemy
    assert blind >= 0.8, blind
    assert np.all(sees[:, env.scout_index])


def test_scripted_policy_wins_random_policy_does_not(env, rollouts):
    scripted = rollouts["scripted"]["won"].mean()
    random = rollouts["random"]["won"].mean()
    # measured: scripted 0.86 (1o2r) / 0.61 (1o10b); random 0.03 / 0.00
    floor = {"1o_2r_vs_4r": 0.7, "1o_10b_vs_1r": 0.45}[env.map_name]
    assert scripted >= floor, scripted
    assert random <= 0.1, random


def test_rewards_stay_in_documented_range(env, rollouts):
    lo, hi = env.reward_range
    for r in rollouts.values():
        assert r["r_min"].min() >= lo and r["r_max"].max() <= hi
        assert r["ret"].min() >= 0.0 and r["ret"].max() <= hi + 1e-4
        # a win includes the 200-point bonus; the best episodes reach the full 20
        if r["won"].any():
            assert r["ret"][r["won"]].min() >= 200.0 * env.reward_scale - 1e-4
        assert r["obs_absmax"].max() <= 1.0 + 1e-6
    assert rollouts["scripted"]["ret"].max() == pytest.approx(20.0, abs=1e-4)


def test_banelings_pay_for_every_hit(env, rollouts):
    if env.map_name == "1o_10b_vs_1r":
        for r in rollouts.values():
            assert r["unpaid_hits"].sum() == 0


# ------------------------------------------------------------------ one-step rules
def _placed(env, state, ally_pos, enemy_pos):
    pos = jnp.concatenate([jnp.asarray(ally_pos, jnp.float32), jnp.asarray(enemy_pos, jnp.float32)])
    return state.replace(smax=state.smax.replace(unit_positions=pos))


def test_only_banelings_die_when_they_attack(env, jitted):
    reset, step = jitted
    _, state = reset(jax.random.PRNGKey(2))
    na, ne = env.n_agents, env.smax.num_enemies
    far = [(2.0 + 2.5 * i, 30.0) for i in range(na)]
    if env.map_name == "1o_10b_vs_1r":
        ally = [(17.1, 16.0)] + far[1:10] + [(16.0, 16.0)]  # baneling 0 touching the roach
        enemy = [(16.0, 16.0)]
        fighter, target = 0, na
    else:
        ally = [(16.0, 16.0), (19.5, 16.0), (2.0, 2.0)]  # roach 1 at 3.5 from reaper 0
        enemy = [(16.0, 16.0), (30.0, 30.0), (30.0, 27.0), (27.0, 30.0)]
        fighter, target = 1, na
    state = _placed(env, state, ally, enemy)
    assert bool(env.get_avail_actions(state)[env.agents[fighter]][5])
    actions = jnp.full((na,), 4, jnp.int32).at[fighter].set(5)
    ts, new = step(jax.random.PRNGKey(3), state, actions)
    hp, alive = np.asarray(new.smax.unit_health), np.asarray(new.smax.unit_alive)
    fighter_type = int(env.smax.ally_types[fighter])
    assert hp[target] == pytest.approx(UNIT_HEALTH[int(env.smax.scenario[target])] - UNIT_ATTACKS[fighter_type])
    assert float(ts.reward) == pytest.approx(UNIT_ATTACKS[fighter_type] * env.reward_scale, rel=1e-5)
    if fighter_type == BANELING:
        assert hp[fighter] == 0.0 and not alive[fighter]
        assert np.asarray(ts.avail[fighter]).tolist() == [False] * 4 + [True] + [False] * ne
    else:
        assert alive[fighter] and hp[fighter] > 0.5 * UNIT_HEALTH[fighter_type]
    assert not bool(ts.done)


def test_losing_every_fighter_ends_the_episode_without_a_win(env, jitted):
    reset, step = jitted
    _, state = reset(jax.random.PRNGKey(4))
    fighters = jnp.asarray(np.r_[env.smax.is_fighter, np.zeros(env.smax.num_enemies, bool)])
    smax_state = state.smax.replace(unit_health=jnp.where(fighters, 0.0, state.smax.unit_health))
    smax_state = smax_state.replace(unit_alive=smax_state.unit_health > 0)
    ts, _ = step(jax.random.PRNGKey(5), state.replace(smax=smax_state), jnp.full((env.n_agents,), 4, jnp.int32))
    assert bool(ts.terminated) and not bool(ts.won) and not bool(ts.truncated)
    assert float(ts.reward) == 0.0


def test_array_and_dict_api_agree(env, jitted):
    reset, step = jitted
    key = jax.random.PRNGKey(7)
    obs_d, st_d = env.reset(key)
    ts, st = reset(key)
    np.testing.assert_array_equal(np.stack([obs_d[a] for a in env.agents]), ts.obs)
    np.testing.assert_array_equal(obs_d["world_state"], ts.world_state)
    rng = np.random.default_rng(0)
    for t in range(6):
        avail = np.asarray(ts.avail)
        np.testing.assert_array_equal(np.stack([env.get_avail_actions(st_d)[a] for a in env.agents]), avail)
        acts = np.array([rng.choice(np.flatnonzero(row)) for row in avail], np.int32)
        k = jax.random.PRNGKey(100 + t)
        obs_d, st_d, rew_d, done_d, info_d = env.step(k, st_d, {a: jnp.int32(acts[i]) for i, a in enumerate(env.agents)})
        ts, st = step(jax.random.split(k)[0], st, jnp.asarray(acts))
        assert not bool(ts.done)
        np.testing.assert_allclose(np.stack([obs_d[a] for a in env.agents]), ts.obs, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(obs_d["world_state"], ts.world_state, rtol=1e-6, atol=1e-6)
        assert float(rew_d["agent_0"]) == pytest.approx(float(ts.reward), abs=1e-6)
        assert bool(done_d["__all__"]) == bool(ts.done) and bool(info_d["won"]) == bool(ts.won)


# ------------------------------------------------------------------ trainer
def _trainer_cfg(name):
    from cromac_jax import config as C

    return C.resolve(
        {
            "env": {"name": name},
            "train": {
                "t_max": 200,
                "num_envs": 2,
                "buffer_size": 8,
                "batch_size": 2,
                "learning_starts": 2,
                "updates_per_iteration": 1,
                "chunk_iterations": 1,
                "test_nepisode": 2,
            },
            "model": {"rnn_hidden": 8, "z_dim": 4, "vae_hidden": 8},
        }
    )


def test_trainer_traces_one_chunk():
    """The whole training chunk traces over 1o2r (shapes and dtypes; no XLA compile, ~5 s);
    its full compile is the slow case below."""
    name = "smax_1o2r_vs_4r"
    from cromac_jax import runner

    sr = runner.SeedRunner(_trainer_cfg(name))
    state, metrics = jax.eval_shape(sr.chunk, sr.abstract_state())
    assert jax.tree.leaves(metrics)


@pytest.mark.parametrize("name", [pytest.param("smax_1o2r_vs_4r", marks=pytest.mark.slow), "smax_1o10b_vs_1r"])
def test_trainer_compiles_and_runs_one_chunk(name):
    """35-60 s each on 2 shared CPU cores (mostly compile); one map runs by default."""
    from cromac_jax import runner

    sr = runner.SeedRunner(_trainer_cfg(name))
    state, metrics = sr.chunk(sr.init_state())
    for leaf in jax.tree.leaves(metrics):
        assert np.all(np.isfinite(np.asarray(leaf, np.float64)))
