"""The shared shape of every cromac-jax environment.

Each env is a JaxMARL ``MultiAgentEnv`` (dict-of-agents obs/actions, auto-reset ``step``,
``get_avail_actions``), because that is what JaxMARL users and tools expect. Internally the
rules are written once, on arrays with agents on a leading axis, and the trainer calls that
array core directly (``reset_arrays`` / ``step_arrays``) so the hot loop never builds dicts.

Shape legend: N agents, O obs dim, S global-state dim, A actions.

Run-level randomness (for example LBF's oracle agent, which the official code draws once per
run) lives in a small ``run`` pytree: ``init_run(key)`` draws it, every reset copies it into the
state, and the auto-reset of ``step`` keeps it. The trainer draws it once per seed.
"""

from __future__ import annotations

from functools import partial
from typing import Any, ClassVar

import chex
import jax
import jax.numpy as jnp
from flax import struct

from envs._quiet import quiet_import

with quiet_import():
    from jaxmarl.environments.multi_agent_env import MultiAgentEnv
    from jaxmarl.environments.spaces import Box, Discrete


class EnvConfigError(ValueError):
    """A preset name, override key or override value that cannot build an environment."""


def require(ok: bool, message: str) -> None:
    """Refuse a bad constructor argument with one line naming it."""
    if not ok:
        raise EnvConfigError(message)


@struct.dataclass
class Timestep:
    """What one reset or step shows the learner, as arrays (agents on the leading axis).

    ``terminated`` is a true end of the task (win, failure); ``truncated`` is the time limit
    reached without a terminal event. The paper stores both as terminal; the trainer decides.
    ``won`` is the paper's per-episode metric (hallway/SMAC win, LBF/TJ success), meaningful on
    the step that ends the episode.
    """

    obs: chex.Array  # [N, O] float32
    world_state: chex.Array  # [S] float32
    avail: chex.Array  # [N, A] bool
    reward: chex.Array  # [] float32, team reward of the step that led here (0 after reset)
    terminated: chex.Array  # [] bool
    truncated: chex.Array  # [] bool
    won: chex.Array  # [] bool

    @property
    def done(self) -> chex.Array:
        return jnp.logical_or(self.terminated, self.truncated)


class CromacEnv(MultiAgentEnv):
    """Base class: subclasses implement the array core, this class provides the JaxMARL API.

    Subclasses set ``n_agents, obs_dim, state_dim, n_actions, episode_limit`` and implement
    ``_reset(key, run) -> state``, ``_transition(key, state, actions) -> (state, reward,
    terminated, won)``, ``_obs(state)``, ``_world_state(state)`` and ``_avail(state)``. The state
    must have an int32 ``step`` field (steps taken in this episode) and a ``run`` field.
    """

    #: Extra keys of ``info`` beyond the standard ones, filled by ``_extra_info``.
    extra_info_keys: ClassVar[tuple[str, ...]] = ()
    #: Documented inclusive range of the team reward of one step (tested).
    reward_range: tuple[float, float] = (-float("inf"), float("inf"))

    def __init__(
        self,
        n_agents: int,
        obs_dim: int,
        state_dim: int,
        n_actions: int,
        episode_limit: int,
        obs_low: float = -jnp.inf,
        obs_high: float = jnp.inf,
    ) -> None:
        super().__init__(num_agents=n_agents)
        self.n_agents = n_agents
        self.obs_dim = obs_dim
        self.state_dim = state_dim
        self.n_actions = n_actions
        self.episode_limit = episode_limit
        self.observation_spaces = {
            a: Box(obs_low, obs_high, (obs_dim,), jnp.float32) for a in self.agents
        }
        self.action_spaces = {a: Discrete(n_actions) for a in self.agents}

    # ------------------------------------------------------------------ array core (subclass)
    def init_run(self, key: chex.PRNGKey) -> Any:
        """Draw what stays fixed for a whole run (default: nothing)."""
        del key
        return jnp.zeros((), jnp.int32)

    def _reset(self, key: chex.PRNGKey, run: Any) -> Any:
        raise NotImplementedError

    def _transition(self, key: chex.PRNGKey, state: Any, actions: chex.Array):
        raise NotImplementedError

    def _obs(self, state: Any) -> chex.Array:
        raise NotImplementedError

    def _world_state(self, state: Any) -> chex.Array:
        raise NotImplementedError

    def _avail(self, state: Any) -> chex.Array:
        return jnp.ones((self.n_agents, self.n_actions), dtype=bool)

    def _extra_info(self, state: Any) -> dict[str, chex.Array]:
        return {}

    # ------------------------------------------------------------------ array API (trainer)
    def _timestep(self, state, reward, terminated, truncated, won) -> Timestep:
        return Timestep(
            obs=self._obs(state),
            world_state=self._world_state(state),
            avail=self._avail(state),
            reward=jnp.asarray(reward, jnp.float32),
            terminated=jnp.asarray(terminated, bool),
            truncated=jnp.asarray(truncated, bool),
            won=jnp.asarray(won, bool),
        )

    def reset_arrays(self, key: chex.PRNGKey, run: Any = None) -> tuple[Timestep, Any]:
        """Start an episode; ``run`` defaults to a fresh ``init_run`` from the same key."""
        if run is None:
            key, run_key = jax.random.split(key)
            run = self.init_run(run_key)
        state = self._reset(key, run)
        false = jnp.zeros((), bool)
        return self._timestep(state, 0.0, false, false, false), state

    def step_arrays(
        self, key: chex.PRNGKey, state: Any, actions: chex.Array
    ) -> tuple[Timestep, Any]:
        """One step without auto-reset; ``actions`` is int32 [N].

        The time limit is applied here, once for every env: an episode that reaches
        ``episode_limit`` steps without a terminal event is truncated.
        """
        state, reward, terminated, won = self._transition(key, state, actions)
        truncated = jnp.logical_and(state.step >= self.episode_limit, ~terminated)
        return self._timestep(state, reward, terminated, truncated, won), state

    # ------------------------------------------------------------------ JaxMARL API (edge)
    def _to_dict(self, x: chex.Array) -> dict[str, chex.Array]:
        return {a: x[i] for i, a in enumerate(self.agents)}

    def get_obs(self, state: Any) -> dict[str, chex.Array]:
        obs = self._to_dict(self._obs(state))
        obs["world_state"] = self._world_state(state)
        return obs

    def get_world_state(self, state: Any) -> chex.Array:
        """The global state the mixer sees in centralised training."""
        return self._world_state(state)

    @partial(jax.jit, static_argnums=(0,))
    def get_avail_actions(self, state: Any) -> dict[str, chex.Array]:
        return self._to_dict(self._avail(state))

    @partial(jax.jit, static_argnums=(0,))
    def reset(self, key: chex.PRNGKey) -> tuple[dict[str, chex.Array], Any]:
        _, state = self.reset_arrays(key)
        return self.get_obs(state), state

    def _actions_array(self, actions: dict[str, chex.Array]) -> chex.Array:
        return jnp.stack([jnp.asarray(actions[a], jnp.int32) for a in self.agents])

    def _info(self, ts: Timestep, state: Any) -> dict[str, chex.Array]:
        info = {
            "won": ts.won,
            "terminated": ts.terminated,
            "truncated": ts.truncated,
        }
        info.update(self._extra_info(state))
        return info

    def step_env(self, key, state, actions):
        ts, state = self.step_arrays(key, state, self._actions_array(actions))
        rewards = {a: ts.reward for a in self.agents}
        done = ts.done
        dones = {a: done for a in self.agents}
        dones["__all__"] = done
        return self.get_obs(state), state, rewards, dones, self._info(ts, state)

    @partial(jax.jit, static_argnums=(0,))
    def step(self, key, state, actions, reset_state=None):
        """JaxMARL's auto-resetting step; the run-level draw survives the reset."""
        key, key_reset = jax.random.split(key)
        ts, state_st = self.step_arrays(key, state, self._actions_array(actions))
        state_re = self._reset(key_reset, state.run) if reset_state is None else reset_state
        done = ts.done
        state = jax.tree.map(lambda r, s: jax.lax.select(done, r, s), state_re, state_st)
        # Observations are built once, from the selected state (not for both branches).
        rewards = {a: ts.reward for a in self.agents}
        dones = {a: done for a in self.agents}
        dones["__all__"] = done
        return self.get_obs(state), state, rewards, dones, self._info(ts, state_st)

    @property
    def agent_classes(self) -> dict[str, list[str]]:
        return {"agent": list(self.agents)}

    def describe(self) -> dict[str, int]:
        """The sizes the trainer needs, as ``get_env_info`` reports them in pymarl."""
        return {
            "n_agents": self.n_agents,
            "obs_dim": self.obs_dim,
            "state_dim": self.state_dim,
            "n_actions": self.n_actions,
            "episode_limit": self.episode_limit,
        }
