"""Vectorised episode collection: ``vmap`` over environments, ``lax.scan`` over time.

One function collects whole episodes for both training (epsilon-greedy, CroMAC acting with the
state latent) and testing (greedy, acting on messages that an attack may perturb); what differs
is the ``act`` function passed in. Episodes are padded to T1 = episode_limit + 1 slots, the
layout of the replay buffer (ENV_SPEC.md 5.1): slot t holds the obs/state/avail seen at t and
the action taken there; the slot after the last step holds the final obs with one more action
that no loss uses. Envs keep stepping (without reset) after their episode ends; those slots are
marked unfilled and never reach a loss or a metric.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from cromac_jax.losses import EpisodeBatch

#: act(key, hidden [N, H], timestep) -> actions [N] int32
ActFn = Callable[[jax.Array, jax.Array, Any], jax.Array]


class EpisodeStats(NamedTuple):
    """Per-episode outcomes [E]: undiscounted team return, length, and the paper's win flag."""

    returns: jax.Array
    lengths: jax.Array
    won: jax.Array


def collect_episode(
    env: Any,
    agent_step: Callable[[jax.Array, jax.Array], jax.Array],
    act: ActFn,
    h0: jax.Array,
    run: Any,
    key: jax.Array,
    timeout_is_terminal: bool = True,
) -> tuple[EpisodeBatch, EpisodeStats]:
    """Play one episode of ``env`` (array API) and return it padded to T1 slots.

    ``agent_step(h, obs) -> h`` advances the recurrent agents; ``act`` chooses actions from the
    new hidden states. With ``timeout_is_terminal`` (the paper's choice) a time-limit end is
    stored as terminal; otherwise the learner bootstraps from the final slot.
    """
    T1 = env.episode_limit + 1
    k_reset, k_steps = jax.random.split(key)
    ts, env_state = env.reset_arrays(k_reset, run)

    def slot(carry, key):
        ts, env_state, h, alive, ret, length, won = carry
        k_act, k_env = jax.random.split(key)
        h = agent_step(h, ts.obs)
        actions = act(k_act, h, ts)
        nts, n_env_state = env.step_arrays(k_env, env_state, actions)
        terminal = nts.terminated | (nts.truncated & timeout_is_terminal)
        record = EpisodeBatch(
            obs=ts.obs,
            state=ts.world_state,
            avail=ts.avail,
            actions=actions,
            reward=jnp.where(alive, nts.reward, 0.0),
            terminated=alive & terminal,
            filled=alive,
        )
        ret = ret + jnp.where(alive, nts.reward, 0.0)
        length = length + alive.astype(jnp.int32)
        won = jnp.where(alive & nts.done, nts.won, won)
        alive = alive & ~nts.done
        return (nts, n_env_state, h, alive, ret, length, won), record

    init = (ts, env_state, h0, jnp.ones((), bool), jnp.zeros(()), jnp.zeros((), jnp.int32), jnp.zeros((), bool))
    (_, _, _, _, ret, length, won), ep = jax.lax.scan(slot, init, jax.random.split(k_steps, T1))
    # The slot right after the last step holds the final observation: mark it filled.
    idx = jnp.arange(T1)
    ep = ep.replace(filled=idx <= length, reward=jnp.where(idx < length, ep.reward, 0.0))
    ep = ep.replace(terminated=ep.terminated & (idx < length))
    return ep, EpisodeStats(ret, length, won)


def collect_episodes(
    env: Any,
    agent_step: Callable[[jax.Array, jax.Array], jax.Array],
    act: ActFn,
    h0: jax.Array,
    run: Any,
    key: jax.Array,
    n: int,
    timeout_is_terminal: bool = True,
) -> tuple[EpisodeBatch, EpisodeStats]:
    """``n`` episodes in parallel (vmap over environments): leading axis [n]."""
    keys = jax.random.split(key, n)
    return jax.vmap(lambda k: collect_episode(env, agent_step, act, h0, run, k, timeout_is_terminal))(keys)


def epsilon_greedy(key: jax.Array, q: jax.Array, avail: jax.Array, epsilon: jax.Array) -> jax.Array:
    """Per agent: a uniformly random available action with probability ``epsilon``, else the
    greedy available one. q, avail [N, A] -> [N]."""
    k_explore, k_rand = jax.random.split(key)
    avail = avail.astype(bool)
    greedy = jnp.argmax(jnp.where(avail, q, -jnp.inf), axis=-1)
    logits = jnp.where(avail, 0.0, -jnp.inf)
    random = jax.random.categorical(k_rand, logits, axis=-1)
    explore = jax.random.uniform(k_explore, greedy.shape) < epsilon
    return jnp.where(explore, random, greedy).astype(jnp.int32)
