"""Hallway (pymarl's ``join1``): agents on separate corridors must reach the goal together.

Rules (ENV_SPEC.md section 1, faithful to the official code):
- agent i lives on cells ``0..n_i`` of its own corridor; cell 0 is the goal;
- actions: 0 stay, 1 toward the goal (``max(0, s-1)``), 2 away (``min(n_i, s+1)``), always available;
- reset: ``s_i ~ U{1..n_i}`` independently (never at the goal);
- after the simultaneous move: all at 0 -> reward ``reward_win`` (1), terminated, won;
  some but not all at 0 -> terminated, reward 0 (failure);
- ``episode_limit = max(n_i) + 10``; the limit ends the episode with reward 0;
- obs_i = ``[s_i]`` (raw position as float, no time, no id); state = all positions.

An agent can only learn when to step onto the goal from its teammates' messages (or by
counting time), which is why the paper uses it.
"""

from __future__ import annotations

from typing import Sequence

import chex
import jax
import jax.numpy as jnp
from flax import struct

from envs.base import CromacEnv, require


@struct.dataclass
class HallwayState:
    pos: chex.Array  # [N] int32, 0 = goal
    step: chex.Array  # [] int32
    run: chex.Array  # unused run-level draw


class Hallway(CromacEnv):
    reward_range = (0.0, 1.0)

    def __init__(self, state_numbers: Sequence[int] = (4, 5, 6), reward_win: float = 1.0):
        require(
            isinstance(state_numbers, (list, tuple)) and len(state_numbers) >= 1,
            f"hallway state_numbers must be a non-empty list of corridor lengths, got {state_numbers!r}",
        )
        require(
            all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in state_numbers),
            f"hallway state_numbers must be integers >= 1, got {list(state_numbers)!r}",
        )
        require(
            isinstance(reward_win, (int, float)) and reward_win == reward_win and abs(reward_win) < float("inf"),
            f"hallway reward_win must be a finite number, got {reward_win!r}",
        )
        lengths = tuple(int(n) for n in state_numbers)
        self.lengths = jnp.asarray(lengths, jnp.int32)
        self.reward_win = float(reward_win)
        self.reward_range = (0.0, max(0.0, self.reward_win))
        super().__init__(
            n_agents=len(lengths),
            obs_dim=1,
            state_dim=len(lengths),
            n_actions=3,
            episode_limit=max(lengths) + 10,
            obs_low=0.0,
            obs_high=float(max(lengths)),
        )

    def _reset(self, key: chex.PRNGKey, run) -> HallwayState:
        # One draw of raw bits, reduced modulo each length (bias < 2^-28): the reset runs on every
        # auto-reset step, and hallway's step is so cheap that randint's extra work would dominate.
        bits = jax.random.bits(key, (self.n_agents,), jnp.uint32)
        pos = (bits % self.lengths.astype(jnp.uint32)).astype(jnp.int32) + 1
        return HallwayState(pos=pos, step=jnp.zeros((), jnp.int32), run=run)

    def _transition(self, key, state: HallwayState, actions: chex.Array):
        del key
        delta = jnp.where(actions == 1, -1, jnp.where(actions == 2, 1, 0))
        pos = jnp.clip(state.pos + delta, 0, self.lengths)
        at_goal = pos == 0
        won = jnp.all(at_goal)
        terminated = jnp.any(at_goal)
        reward = jnp.where(won, self.reward_win, 0.0)
        state = state.replace(pos=pos, step=state.step + 1)
        return state, reward, terminated, won

    def _obs(self, state: HallwayState) -> chex.Array:
        return state.pos[:, None].astype(jnp.float32)

    def _world_state(self, state: HallwayState) -> chex.Array:
        return state.pos.astype(jnp.float32)
