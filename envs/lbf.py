"""Level-Based Foraging, CroMAC's modified lbforaging 1.1.0: a team must meet at one food.

Rules (ENV_SPEC.md section 2; the official presets are ``Foraging-8x8-{3,4}p-1f-coop-v2``):
- an ``field_size`` x ``field_size`` grid (8), ``n_players`` players with levels drawn uniformly
  from ``{1..max_player_level}`` (the official ``randint(1, 3)`` gives ``{1, 2}``) and **one food**
  (the presets' ``max_food=1``; more foods are not supported);
- reset: players on distinct uniformly random cells (decision, quirk 7: the official spawn also
  avoids stale cells of the previous episode, a tiny bias we drop); food level = sum of the 3
  lowest player levels (``force_coop``; with 2 players the sum of both); food uniform over the
  interior cells (rows/cols ``1..field_size-2``) not holding a player;
- actions: 0 NONE, 1 NORTH (row-1), 2 SOUTH (row+1), 3 WEST (col-1), 4 EAST (col+1), always
  available (there is no LOAD action: loading is automatic). A move off the grid or onto the food
  becomes NONE (so does an out-of-range action id); other players never make a move invalid;
- movement: every player claims a target cell (its own for NONE); a cell claimed by exactly one
  player receives it, a cell claimed by 2+ players receives nobody and they all stay. So two
  players can swap, and a blocked mover can be joined on its cell by an incoming one: **two players
  stacked on one cell** (quirk 5, reproduced);
- loading (decision, quirk 4): the **intended joint-load rule**: after the move, the food is eaten
  iff the levels of all players orthogonally adjacent to it sum to >= its level. The official
  auto-load pops players in CPython set order and can let a non-adjacent neighbour cancel a load
  (only reachable with 4 players); we do not emulate that;
- reward: the team reward is 1.0 on the step the food is eaten (each adjacent player gets
  ``level_a / sum``, normalised rewards summing to 1), 0 otherwise, no step penalty; eating the
  food terminates the episode with ``won``; so an episode's return is 0 or 1 (its success);
- ``episode_limit = time_limit`` (25 for 3 players, 15 for 4), applied by the base class as a
  truncation; the official env's inner 50-step limit is not modelled (it is never reached there);
- obs_i = ``[food_row, food_col, own_row, own_col]``, raw integer grid coordinates as float32; the
  food entries are ``-1, -1`` for every agent but the **oracle**, and for the oracle too once the
  food is gone. Nobody observes levels or other players (quirk 6). state = all obs concatenated.
- oracle (decision, quirk 3): ``oracle="run"`` (default) draws the oracle index once per run from
  the run key (``init_run``; the official code draws it once per process from the seeded global
  NumPy RNG), so it survives resets; ``"episode"`` redraws it at every reset (an ablation; its
  ``run`` is -1, and a ``run`` of -1 means a per-episode draw in either mode); an int fixes it to
  that agent whatever ``run`` holds.
- sizes (decision): ``field_size >= 4`` and ``2 <= n_players <= (field_size-2)**2 - 1``, so an
  interior cell is always free for the food (the official spawn could silently fail).

Random draws use one ``jax.random.bits`` call per reset, reduced modulo the range size (bias
below 2**-26, far under sampling noise). Distinct cells are drawn without loops over the grid:
agent i takes the r-th free cell, found by a fixed-point count over the i cells already taken.
"""

from __future__ import annotations

import numbers

import chex
import jax
import jax.numpy as jnp
from flax import struct

from envs.base import CromacEnv, require

#: Row/col change of each action: NONE, NORTH, SOUTH, WEST, EAST.
_MOVES = ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))
_ORACLE_MODES = ("run", "episode")


@struct.dataclass
class LbfState:
    pos: chex.Array  # [N, 2] int32 (row, col)
    level: chex.Array  # [N] int32
    food: chex.Array  # [2] int32 (row, col)
    food_level: chex.Array  # [] int32
    food_alive: chex.Array  # [] bool
    oracle: chex.Array  # [] int32, the agent that sees the food
    step: chex.Array  # [] int32
    run: chex.Array  # [] int32, the run-level oracle draw (-1: draw per episode)


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _kth_free(r: chex.Array, taken: chex.Array) -> chex.Array:
    """The ``r``-th (0-based) index not in ``taken`` (distinct values; extra ones may be huge).

    The answer c is the least fixed point of ``c = r + #{t in taken: t <= c}``; iterating from
    ``r`` climbs to it monotonically, one step per taken value at most.
    """
    c = r
    for _ in range(taken.shape[0]):
        c = r + jnp.sum(taken <= c, dtype=jnp.int32)
    return c


class LevelBasedForaging(CromacEnv):
    reward_range = (0.0, 1.0)

    def __init__(
        self,
        n_players: int = 3,
        time_limit: int = 25,
        field_size: int = 8,
        max_player_level: int = 2,
        oracle: str | int = "run",
    ):
        require(
            _is_int(field_size) and field_size >= 4,
            f"lbf field_size must be an integer >= 4 (the food spawns on an interior cell free of "
            f"players), got {field_size!r}",
        )
        interior = (field_size - 2) ** 2
        require(
            _is_int(n_players) and 2 <= n_players <= interior - 1,
            f"lbf n_players must be an integer in 2..{interior - 1} (field_size={field_size} has "
            f"{interior} interior food cells, one must stay free), got {n_players!r}",
        )
        require(
            _is_int(time_limit) and time_limit >= 1,
            f"lbf time_limit must be an integer >= 1, got {time_limit!r}",
        )
        require(
            _is_int(max_player_level) and max_player_level >= 1,
            f"lbf max_player_level must be an integer >= 1 (levels are drawn from "
            f"1..max_player_level), got {max_player_level!r}",
        )
        if isinstance(oracle, str):
            valid_oracle = oracle in _ORACLE_MODES
        else:
            valid_oracle = _is_int(oracle) and 0 <= oracle < n_players
        require(
            valid_oracle,
            f"lbf oracle must be 'run', 'episode' or an agent index in 0..{n_players - 1}, got {oracle!r}",
        )
        self.n_players = int(n_players)
        self.time_limit = int(time_limit)
        self.field_size = int(field_size)
        self.max_player_level = int(max_player_level)
        self.oracle = oracle if isinstance(oracle, str) else int(oracle)
        self._moves = jnp.asarray(_MOVES, jnp.int32)
        super().__init__(
            n_agents=self.n_players,
            obs_dim=4,
            state_dim=4 * self.n_players,
            n_actions=len(_MOVES),
            episode_limit=self.time_limit,
            obs_low=-1.0,
            obs_high=float(self.field_size - 1),
        )

    # ------------------------------------------------------------------ array core
    def init_run(self, key: chex.PRNGKey) -> chex.Array:
        """The run's oracle index ("run"), the fixed index (int), or -1 ("episode")."""
        if self.oracle == "run":
            return jax.random.randint(key, (), 0, self.n_players, dtype=jnp.int32)
        if self.oracle == "episode":
            return jnp.full((), -1, jnp.int32)
        return jnp.full((), self.oracle, jnp.int32)

    def _reset(self, key: chex.PRNGKey, run) -> LbfState:
        n, fs = self.n_players, self.field_size
        inner = fs - 2
        run = jnp.asarray(run, jnp.int32)
        # One draw: n cell ranks, n levels, the food rank, the per-episode oracle.
        bits = jax.random.bits(key, (2 * n + 2,), jnp.uint32)
        # Players: agent i takes the r_i-th free cell among the fs*fs - i left.
        ranks = (bits[:n] % jnp.arange(fs * fs, fs * fs - n, -1, dtype=jnp.uint32)).astype(jnp.int32)
        cells = [ranks[0]]
        for i in range(1, n):
            cells.append(_kth_free(ranks[i], jnp.stack(cells)))
        cells = jnp.stack(cells)
        pos = jnp.stack([cells // fs, cells % fs], axis=-1)
        level = 1 + (bits[n : 2 * n] % jnp.uint32(self.max_player_level)).astype(jnp.int32)
        food_level = jnp.sum(jnp.sort(level)[:3])
        # Food: the r-th interior cell not holding a player (players off the interior never count).
        in_inner = jnp.all((pos >= 1) & (pos <= inner), axis=-1)
        inner_idx = jnp.where(in_inner, (pos[:, 0] - 1) * inner + pos[:, 1] - 1, inner * inner)
        n_free = (inner * inner - jnp.sum(in_inner)).astype(jnp.uint32)
        food_idx = _kth_free((bits[2 * n] % n_free).astype(jnp.int32), inner_idx)
        food = jnp.stack([food_idx // inner + 1, food_idx % inner + 1])
        if isinstance(self.oracle, int):
            oracle = jnp.full((), self.oracle, jnp.int32)
        else:  # the run's draw, or a fresh one per episode where the run holds -1
            oracle = jnp.where(run >= 0, run, (bits[2 * n + 1] % jnp.uint32(n)).astype(jnp.int32))
        return LbfState(
            pos=pos.astype(jnp.int32),
            level=level,
            food=food.astype(jnp.int32),
            food_level=food_level.astype(jnp.int32),
            food_alive=jnp.ones((), bool),
            oracle=oracle,
            step=jnp.zeros((), jnp.int32),
            run=run,
        )

    def _transition(self, key, state: LbfState, actions: chex.Array):
        del key
        fs = self.field_size
        actions = jnp.where((actions >= 0) & (actions < len(_MOVES)), actions, 0)  # unknown -> NONE
        target = state.pos + self._moves[actions]
        in_grid = jnp.all((target >= 0) & (target < fs), axis=-1)
        on_food = state.food_alive & jnp.all(target == state.food, axis=-1)
        target = jnp.where((in_grid & ~on_food)[:, None], target, state.pos)
        # A cell claimed by exactly one player receives it; 2+ claimants all stay.
        cell = target[:, 0] * fs + target[:, 1]
        claims = jnp.sum(cell[:, None] == cell[None, :], axis=1)
        pos = jnp.where((claims == 1)[:, None], target, state.pos)
        # Joint load: adjacent levels summing to the food level eat it.
        adjacent = jnp.sum(jnp.abs(pos - state.food), axis=-1) == 1
        load = jnp.sum(jnp.where(adjacent, state.level, 0))
        eaten = state.food_alive & (load >= state.food_level)
        reward = jnp.where(eaten, 1.0, 0.0).astype(jnp.float32)
        state = state.replace(pos=pos, food_alive=state.food_alive & ~eaten, step=state.step + 1)
        return state, reward, eaten, eaten

    def _obs(self, state: LbfState) -> chex.Array:
        sees = (jnp.arange(self.n_players) == state.oracle) & state.food_alive
        food = jnp.where(sees[:, None], state.food[None, :], -1)
        return jnp.concatenate([food, state.pos], axis=-1).astype(jnp.float32)

    def _world_state(self, state: LbfState) -> chex.Array:
        return self._obs(state).reshape(-1)
