"""``envs.make("jaxmarl:NAME")``: JaxMARL's own environments under the CroMAC trainer.

Every name JaxMARL registers is sorted into one category below (a test fails when a new JaxMARL
release adds a name nobody has looked at). Discrete-action envs compile one training chunk
under the wrapper; the default suite runs three representative ones (heterogeneous obs/action
sizes, early termination, avail masks + world state) and ``pytest -m slow`` runs them all.
Wrapped trajectories are checked step by step against the raw JaxMARL env.
"""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from cromac_jax import config as C
from cromac_jax import runner
from envs.jaxmarl_env import JaxMARLEnv, registered_names

#: Discrete-action envs, with the keyword arguments that make them discrete / bounded.
DISCRETE = {
    "MPE_simple_v3": {},
    "MPE_simple_tag_v3": {},
    "MPE_simple_world_comm_v3": {"action_type": "Discrete"},  # continuous by default
    "MPE_simple_spread_v3": {},
    "MPE_simple_crypto_v3": {},
    "MPE_simple_speaker_listener_v4": {},
    "MPE_simple_push_v3": {},
    "MPE_simple_adversary_v3": {},
    "MPE_simple_reference_v3": {},
    "switch_riddle": {},
    "SMAX": {},
    "HeuristicEnemySMAX": {},
    "hanabi": {"episode_limit": 20},  # no time limit of its own: the wrapper needs one
    "overcooked": {},
    "overcooked_v2": {},
    "coin_game": {},
}
#: Continuous (Box) actions: refused with one line.
CONTINUOUS = ["MPE_simple_facmac_v1", "MPE_simple_facmac_3a_v1", "MPE_simple_facmac_6a_v1", "MPE_simple_facmac_9a_v1", "jaxnav"]
#: Not buildable here, with the reason (the wrapper reports jaxmarl's own error in one line).
NOT_BUILDABLE = {
    "LearnedPolicyEnemySMAX": "needs a trained enemy policy (policy, params) that jaxmarl does not ship",
    **{n: "MABrax: needs brax (not installed); continuous actions anyway" for n in ("ant_4x2", "halfcheetah_6x1", "hopper_3x1", "humanoid_9|8", "walker2d_2x3")},
    **{
        n: "needs the jaxrobotarium package (not installed)"
        for n in registered_names()
        if n.startswith("JaxRobotarium_")
    },
}
#: Not JaxMARL's dict-of-agents API (observations keyed by field, tuples, stacked arrays).
NOT_DICT_API = ["storm", "storm_2p", "storm_np"]

DEFAULT_CHUNKS = {"MPE_simple_speaker_listener_v4": "cromac", "switch_riddle": "full_comm", "HeuristicEnemySMAX": "qmix"}


def make(name, **kw):
    return envs.make("jaxmarl:" + name, **{**DISCRETE.get(name, {}), **kw})


def one_line_error(fn, match):
    with pytest.raises(envs.EnvConfigError, match=match) as info:
        fn()
    assert "\n" not in str(info.value)
    return str(info.value)


def test_every_registered_name_is_categorised():
    seen = list(DISCRETE) + CONTINUOUS + list(NOT_BUILDABLE) + NOT_DICT_API
    assert sorted(seen) == sorted(registered_names())


# ---------------------------------------------------------------------------------- training
def tiny_cfg(name, method):
    return C.resolve({
        "env": {"name": "jaxmarl:" + name, "overrides": DISCRETE[name]},
        "model": {"rnn_hidden": 4, "z_dim": 4, "vae_hidden": 4, "mixer_embed": 4, "hypernet_hidden": 4},
        "train": {"method": method, "num_envs": 2, "buffer_size": 8, "batch_size": 2, "learning_starts": 2,
                  "updates_per_iteration": 1, "chunk_iterations": 2, "test_nepisode": 2, "num_seeds": 1,
                  "slot_buckets": 1},  # one compiled update per chunk; trimming: tests/test_slot_trim.py
        "cromac": {"robust_start": 0},
    })


def run_chunk(name, method):
    sr = runner.SeedRunner(tiny_cfg(name, method))
    _, metrics = sr.chunk(sr.init_state())
    assert np.all(np.asarray(metrics.updates)[:, -1] >= 1)
    assert np.all(np.isfinite(np.asarray(metrics.loss)))
    assert np.all(np.asarray(metrics.ep_length_mean) <= sr.trainer.env.episode_limit)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", sorted(DEFAULT_CHUNKS))
def test_one_training_chunk(name):
    run_chunk(name, DEFAULT_CHUNKS[name])


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(DISCRETE) - set(DEFAULT_CHUNKS)))
def test_one_training_chunk_every_discrete_env(name):
    run_chunk(name, "cromac")


# ---------------------------------------------------------------------------------- trajectories
def rollout_both(raw, env, key, steps):
    """The raw env and the wrapper, JaxMARL dict API with auto-reset, same keys and actions."""
    agents = list(raw.agents)

    def run(key):
        k0, k_steps = jax.random.split(key)
        raw_obs, raw_state = raw.reset(k0)
        w_obs, w_state = env.reset(k0)

        def body(carry, key):
            raw_state, w_state = carry
            k_act, k_env = jax.random.split(key)
            logits = jnp.where(env._avail(w_state), 0.0, -jnp.inf)
            actions = jax.random.categorical(k_act, logits).astype(jnp.int32)
            act = {a: actions[i] for i, a in enumerate(agents)}
            r_obs, raw_state, r_rew, r_done, _ = raw.step(k_env, raw_state, act)
            o, w_state, w_rew, w_done, _ = env.step(k_env, w_state, act)
            out = (
                {a: r_obs[a] for a in agents}, jnp.mean(jnp.stack([r_rew[a] for a in agents])), r_done["__all__"],
                {a: o[a] for a in agents}, o["world_state"], w_rew[agents[0]], w_done["__all__"],
            )
            return (raw_state, w_state), out

        _, outs = jax.lax.scan(body, (raw_state, w_state), jax.random.split(k_steps, steps))
        return ({a: raw_obs[a] for a in agents}, {a: w_obs[a] for a in agents}), outs

    return jax.jit(run)(key)


@pytest.mark.parametrize("name,steps", [("MPE_simple_speaker_listener_v4", 60), ("switch_riddle", 30)])
def test_wrapped_trajectories_equal_the_raw_env(name, steps):
    raw = __import__("jaxmarl").make(name, **DISCRETE[name])
    env = make(name)
    assert isinstance(env, JaxMARLEnv) and list(env.agents) == list(raw.agents)
    (raw0, w0), (r_obs, r_rew, r_done, w_obs, w_state, w_rew, w_done) = rollout_both(raw, env, jax.random.PRNGKey(3), steps)
    for i, a in enumerate(raw.agents):
        n = env.obs_sizes[i]
        for raw_o, w_o in ((raw0[a][None], w0[a][None]), (r_obs[a], w_obs[a])):
            raw_o = np.asarray(raw_o).reshape(raw_o.shape[0], -1).astype(np.float32)
            np.testing.assert_array_equal(np.asarray(w_o)[:, :n], raw_o)
            assert np.all(np.asarray(w_o)[:, n:] == 0)  # padding
    np.testing.assert_allclose(np.asarray(w_rew), np.asarray(r_rew), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(w_done), np.asarray(r_done))
    assert np.any(np.asarray(r_done))  # the comparison crossed at least one episode end
    if env.state_source == "concat":
        flat = np.concatenate([np.asarray(r_obs[a]).reshape(steps, -1) for a in raw.agents], axis=1)
        np.testing.assert_array_equal(np.asarray(w_state), flat.astype(np.float32))


def test_array_core_flags_on_mpe_time_limit_and_a_shorter_wrapper_limit():
    """MPE ends by time only, 26 steps with max_steps=25: truncated, never terminated; a smaller
    ``episode_limit`` cuts the episode there (truncated)."""
    for kw, length in (({}, 26), ({"episode_limit": 5}, 5)):
        env = make("MPE_simple_speaker_listener_v4", **kw)
        assert env.episode_limit == length

        def run(key, env=env, length=length):
            _, state = env.reset_arrays(key)

            def body(state, key):
                ts, state = env.step_arrays(key, state, jnp.zeros(env.n_agents, jnp.int32))
                return state, (ts.terminated, ts.truncated, ts.won)

            return jax.lax.scan(body, state, jax.random.split(key, length))[1]

        term, trunc, won = map(np.asarray, jax.jit(run)(jax.random.PRNGKey(0)))
        assert not term.any() and not won.any()
        assert trunc[-1] and not trunc[:-1].any()


def test_switch_riddle_tell_terminates_before_the_limit():
    env = make("switch_riddle")
    ts, state = env.reset_arrays(jax.random.PRNGKey(0))
    tell = env.env.game_actions["TELL"]
    ts, state = env.step_arrays(jax.random.PRNGKey(1), state, jnp.full((env.n_agents,), tell, jnp.int32))
    assert bool(ts.terminated) and not bool(ts.truncated)


def test_padding_of_heterogeneous_agents_and_agent_ids():
    env = make("MPE_simple_speaker_listener_v4", agent_id=True)
    assert env.action_sizes == (3, 5) and env.n_actions == 5 and env.obs_sizes == (3, 11)
    assert env.describe() == {"n_agents": 2, "obs_dim": 13, "state_dim": 14, "n_actions": 5, "episode_limit": 26}
    ts, _ = env.reset_arrays(jax.random.PRNGKey(0))
    np.testing.assert_array_equal(np.asarray(ts.avail), [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(np.asarray(ts.obs)[:, 11:], np.eye(2))
    assert np.all(np.asarray(ts.obs)[0, 3:11] == 0)


def test_smax_world_state_avail_and_won_come_from_the_env():
    env = make("HeuristicEnemySMAX")
    assert (env.state_source, env.avail_source, env._smax) == ("obs:world_state", "get_avail_actions", True)
    key = jax.random.PRNGKey(0)
    ts, state = env.reset_arrays(key)
    raw_obs, raw_state = env.env.reset(key)
    np.testing.assert_array_equal(np.asarray(ts.world_state), np.asarray(raw_obs["world_state"]))
    raw_avail = env.env.get_avail_actions(raw_state)
    np.testing.assert_array_equal(np.asarray(ts.avail), np.stack([raw_avail[a] for a in env.agents]).astype(bool))
    # every enemy dead with allies alive is a won, terminated episode
    inner = state.inner.replace(state=state.inner.state.replace(unit_alive=state.inner.state.unit_alive.at[env.env.num_allies:].set(False)))
    won, wiped = env._smax_outcome(inner)
    assert bool(won) and bool(wiped)


# ---------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("name", CONTINUOUS)
def test_continuous_envs_are_refused_in_one_line(name):
    one_line_error(lambda: envs.make("jaxmarl:" + name), "continuous actions")


def test_discrete_option_is_suggested_for_mpe_world_comm():
    msg = one_line_error(lambda: envs.make("jaxmarl:MPE_simple_world_comm_v3"), "continuous actions")
    assert "action_type='Discrete'" in msg


@pytest.mark.parametrize("name", sorted(NOT_BUILDABLE))
def test_envs_that_cannot_be_built_here_say_why(name):
    one_line_error(lambda: envs.make("jaxmarl:" + name), f"jaxmarl env '{name}' could not be built")


@pytest.mark.parametrize("name", NOT_DICT_API)
def test_envs_outside_the_dict_api_are_refused(name):
    one_line_error(lambda: envs.make("jaxmarl:" + name), "dict-of-agents API")


def test_unknown_name_lists_close_matches():
    msg = one_line_error(lambda: envs.make("jaxmarl:MPE_simple_speaker_listner_v4"), "unknown JaxMARL environment")
    assert "jaxmarl:MPE_simple_speaker_listener_v4" in msg
    msg = one_line_error(lambda: envs.make("jaxmarl:nothing_like_it"), "unknown JaxMARL environment")
    assert "MPE_simple_reference_v3" in msg  # no close match: the whole list
    with pytest.raises(envs.EnvConfigError, match="unknown JaxMARL environment"):
        envs.check_name("jaxmarl:smax")
    envs.check_name("jaxmarl:SMAX")
    envs.check_name("hallway_4x5x6")


def test_unknown_keyword_arguments_are_named():
    msg = one_line_error(lambda: make("MPE_simple_speaker_listener_v4", max_step=10), r"unknown keyword argument 'max_step'")
    assert "did you mean max_steps" in msg
    # **kwargs forwarded through EnemySMAX to SMAX are followed
    one_line_error(lambda: make("HeuristicEnemySMAX", scenari=1), r"'scenari'.*did you mean scenario")
    one_line_error(lambda: make("overcooked", layout_name="x"), r"unknown keyword argument 'layout_name'")
    assert make("MPE_simple_speaker_listener_v4", max_steps=10).episode_limit == 11
    assert make("HeuristicEnemySMAX", enemy_shoots=False, max_steps=20).episode_limit == 21


def test_wrapper_options_are_checked():
    one_line_error(lambda: envs.make("jaxmarl:hanabi"), "no time limit")
    one_line_error(lambda: make("coin_game", episode_limit=0), "episode_limit must be an integer >= 1")
    one_line_error(lambda: make("coin_game", agent_id="yes"), "agent_id must be true or false")


def test_presets_are_unchanged_and_configs_load():
    assert not any(n.startswith("jaxmarl") for n in envs.preset_names())
    root = Path(__file__).resolve().parents[1] / "configs"
    for path, name in (("mpe_speaker_listener.yaml", "MPE_simple_speaker_listener_v4"),
                       ("mpe_reference.yaml", "MPE_simple_reference_v3")):
        cfg = C.load(root / path)
        assert cfg.env.name == "jaxmarl:" + name
        env = envs.make(cfg.env.name, **dict(cfg.env.overrides))
        assert env.describe()["n_agents"] == 2


def _countdown(key):
    """A minimal JaxMARL-API env (built on ``MultiAgentEnv``): two agents, two actions, three
    steps; it reports success under ``info[key]`` when agent_0's last action is 1, as envs
    outside the SMAX family do."""
    from jaxmarl.environments.multi_agent_env import MultiAgentEnv
    from jaxmarl.environments.spaces import Box, Discrete

    class Countdown(MultiAgentEnv):
        def __init__(self):
            super().__init__(num_agents=2)
            self.agents = ["agent_0", "agent_1"]
            self.max_steps = 10
            self.observation_spaces = {a: Box(0.0, 3.0, (1,)) for a in self.agents}
            self.action_spaces = {a: Discrete(2) for a in self.agents}

        def reset(self, rng):
            t = jnp.zeros((), jnp.int32)
            return self._obs(t), t

        def _obs(self, t):
            return {a: jnp.full((1,), t, jnp.float32) for a in self.agents}

        def step_env(self, rng, t, actions):
            t = t + 1
            done = t >= 3
            info = {key: done & (actions["agent_0"] == 1)} if key else {}
            return (self._obs(t), t, {a: jnp.float32(1.0) for a in self.agents},
                    {**{a: done for a in self.agents}, "__all__": done}, info)

    return Countdown()


@pytest.mark.parametrize("key", ["won", "battle_won", "success", "is_success", None])
def test_won_comes_from_the_env_info_outside_smax(key):
    env = JaxMARLEnv(_countdown(key), name="countdown")
    for action, expect in ((1, key is not None), (0, False)):
        ts, state = env.reset_arrays(jax.random.PRNGKey(0))
        for _ in range(3):
            ts, state = env.step_arrays(jax.random.PRNGKey(1), state, jnp.full((2,), action, jnp.int32))
        assert bool(ts.terminated) and not bool(ts.truncated) and float(ts.reward) == 1.0
        assert bool(ts.won) == expect, (key, action)
