"""Traffic Junction (IC3Net's env as modified by CroMAC): cars must cross one junction safely.

Rules (ENV_SPEC.md section 3 and quirks 8-12, faithful to the official code, "easy" layout):
- a 7x7 grid with two one-way roads: route 0 "TOP" runs down column 3, (0,3) -> (6,3); route 1
  "LEFT" runs along row 3, (3,0) -> (3,6). Both have 7 cells and meet only at the junction (3,3).
  Only the "easy" layout exists here (``layout`` must be ``"easy"``); the official wrapper turned
  any unknown key into easy_fast silently, this port refuses it (quirk 12);
- there are ``n_cars`` car *slots* (= agents = the most cars in the system at once). A slot is
  ``(alive, route, route_loc, wait)``; its cell is derived from ``(route, route_loc)``. A slot
  that never held a car has route 0 (the original's -1 is invisible: inactive obs are zeros);
- actions: 0 GAS (advance one cell along the own route), 1 BRAKE (stay); both always available,
  also to inactive slots, whose actions are ignored;
- reset: every slot inactive, ``has_failed = 0``, no car is spawned, so the first observation
  is all zeros (quirk 8);
- a step, in this order:
  1. every alive slot: ``wait += 1``; GAS moves it on; GAS from the last cell (route_loc 6)
     makes the car exit: ``alive = 0, wait = 0, route_loc = 0`` (cars_in_sys drops by one);
  2. arrivals, route 0 then route 1: if ``cars_in_sys < n_cars``, with probability
     ``arrival_rate`` a uniformly random inactive slot gets a car at the route's first cell,
     ``route_loc = 0``, ``wait = 0``. At most one arrival per route per step; route 1 sees the
     count and the inactive set after route 0's arrival. Slots are recycled: a slot whose car
     exited can receive a new car in the same episode, so agent != car (quirk 9). The test is
     ``u < arrival_rate`` with ``u ~ U[0, 1)`` (the original's ``<=`` differs on a null set;
     ``<`` makes rate 0 exactly "never" and rate 1 exactly "always"). The random slot is the
     argmax of uniform noise over the inactive slots; route 1 reuses the same noise with route
     0's pick removed, which is again uniform over the remaining inactive slots (exchangeability);
  3. reward per alive car ``r_i = time_penalty * wait_i`` (-0.01 * wait), plus ``crash_penalty``
     (-10) for every alive car that shares its cell with another alive car. Crashes are checked
     after arrivals, so a spawn onto an occupied entry cell is a crash; all co-located cars are
     penalised, again on every step they stay co-located, and crashed cars stay in the system
     (quirk 10). Any crash sets the sticky episode flag ``has_failed``. The observation shows
     the state after arrivals (the official step builds obs between arrivals and reward);
- team reward = sum over alive cars of ``r_i``. The official env returns the mean over all
  ``n_cars`` slots of ``alive_i * r_i``, repeated ``n_cars`` times, and the pymarl wrapper sums
  that list: ``n_cars * mean_i(alive_i r_i) = sum_i alive_i r_i``, i.e. this sum. A car that
  drives straight through without braking collects ``-0.01 * (1 + ... + 6) = -0.21``; its spawn
  step and its exit step cost 0;
- the env never terminates (``terminated`` is always False); the base class truncates every
  episode at ``episode_limit = time_limit`` (50) steps, so all episodes last exactly 50 steps
  (the official repo stores that end as terminal, quirk 1; the trainer decides);
- ``won`` = the paper's "success" = no crash so far in the episode (``1 - has_failed``), reported
  every step (the trainer reads it on the final step). ``info`` also carries ``success`` (same)
  and ``add_rate`` (the constant arrival rate, as the official info dict does);
- obs_i (dim 15, float32 0/1) = ``[route one-hot (2), location one-hot (13)]``, all zeros when
  slot i is inactive. Location index of cell (r, c): r == 3 -> c (0..6, junction = 3); r < 3 ->
  r + 7 (7..9); r > 3 -> r + 6 (10..12). A car sees only itself (vision 0): other cars are known
  only through messages. state = the n obs concatenated (15 n);
- one JAX key stream drives all randomness (quirk 11: the original used global ``np.random``).

Measured baselines of this port (20000 episodes each; ENV_SPEC's 500-episode numbers of the
original in brackets): always GAS, tj_slow success 4.0%, mean return -59.5 (3.2%, -59); tj_fast
8.1%, -53.5 (7.2%, -55). Always BRAKE -2172 / -1695 (-2176 / -1697) and never a success: braking
cars pile up on the entry cells and later arrivals crash into them. Uniform random -532 / -402
(-540 / -401). The gaps are within the original's sampling error.

``reward_range`` is the inclusive range of one step's team reward: at most ``n_cars`` alive cars,
each with ``time_penalty * wait`` (``wait <= time_limit``) and possibly ``crash_penalty``; with
the defaults ``(n_cars * (-10 - 0.01 * 50), 0)``, e.g. (-52.5, 0) for tj_slow. It is a bound,
not attained (a car's wait is at most ``time_limit - 1``).
"""

from __future__ import annotations

import math
import numbers

import chex
import jax
import jax.numpy as jnp
from flax import struct

from envs.base import CromacEnv, require

GAS, BRAKE = 0, 1
GRID = 7  # "easy": dim 6, made odd
N_ROUTES = 2
ROUTE_LEN = GRID
N_LOC = 2 * GRID - 1  # 13 road cells
OBS_DIM = N_ROUTES + N_LOC  # 15

#: Grid cells of each route, in driving order: route 0 "TOP" (down column 3), route 1 "LEFT"
#: (along row 3, left to right).
ROUTE_CELLS: tuple[tuple[tuple[int, int], ...], ...] = (
    tuple((r, GRID // 2) for r in range(GRID)),
    tuple((GRID // 2, c) for c in range(GRID)),
)


def location_index(row: int, col: int) -> int:
    """Index of road cell (row, col) in the 13-way location one-hot (the official encoding)."""
    mid = GRID // 2
    if row == mid:
        return col
    if col != mid:
        raise ValueError(f"cell ({row}, {col}) is not a road cell of the easy junction")
    return row + GRID if row < mid else row + GRID - 1


#: [2, 7] int32: location index of every (route, route_loc).
ROUTE_LOC_INDEX = tuple(tuple(location_index(r, c) for r, c in cells) for cells in ROUTE_CELLS)


@struct.dataclass
class TrafficJunctionState:
    alive: chex.Array  # [N] bool, slot holds a car in the system
    route: chex.Array  # [N] int32, 0 TOP / 1 LEFT (0 for slots that never held a car)
    route_loc: chex.Array  # [N] int32, 0..6 along the route (0 when inactive)
    wait: chex.Array  # [N] int32, steps since the car entered (0 when inactive)
    has_failed: chex.Array  # [] bool, a crash happened this episode (sticky)
    step: chex.Array  # [] int32
    run: chex.Array  # unused run-level draw


def _is_number(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


class TrafficJunction(CromacEnv):
    extra_info_keys = ("success", "add_rate")
    reward_range = (-52.5, 0.0)  # tj defaults; instances set their own (see __init__)

    def __init__(
        self,
        n_cars: int = 5,
        arrival_rate: float = 0.3,
        time_limit: int = 50,
        crash_penalty: float = -10.0,
        time_penalty: float = -0.01,
        layout: str = "easy",
    ):
        require(
            layout == "easy",
            f"traffic junction layout must be 'easy' (the only one the paper uses), got {layout!r}",
        )
        require(_is_int(n_cars) and n_cars >= 1, f"traffic junction n_cars must be an integer >= 1, got {n_cars!r}")
        require(
            _is_number(arrival_rate) and 0.0 <= arrival_rate <= 1.0,
            f"traffic junction arrival_rate must be a number in [0, 1], got {arrival_rate!r}",
        )
        require(
            _is_int(time_limit) and time_limit >= 1,
            f"traffic junction time_limit must be an integer >= 1, got {time_limit!r}",
        )
        require(
            _is_number(crash_penalty),
            f"traffic junction crash_penalty must be a finite number, got {crash_penalty!r}",
        )
        require(
            _is_number(time_penalty),
            f"traffic junction time_penalty must be a finite number, got {time_penalty!r}",
        )
        self.n_cars = int(n_cars)
        self.arrival_rate = float(arrival_rate)
        self.time_limit = int(time_limit)
        self.crash_penalty = float(crash_penalty)
        self.time_penalty = float(time_penalty)
        self.layout = layout
        self.route_loc_index = jnp.asarray(ROUTE_LOC_INDEX, jnp.int32)
        # Inclusive range of one step's team reward: each of at most n_cars alive cars gets
        # time_penalty * wait (wait in 0..time_limit) plus possibly crash_penalty. With the
        # defaults: every car crashed at the largest wait -> n (-10 - 0.5); no car -> 0.
        per_car_lo = min(0.0, self.time_penalty * self.time_limit) + min(0.0, self.crash_penalty)
        per_car_hi = max(0.0, self.time_penalty * self.time_limit) + max(0.0, self.crash_penalty)
        self.reward_range = (self.n_cars * per_car_lo, self.n_cars * per_car_hi)
        super().__init__(
            n_agents=self.n_cars,
            obs_dim=OBS_DIM,
            state_dim=OBS_DIM * self.n_cars,
            n_actions=2,
            episode_limit=self.time_limit,
            obs_low=0.0,
            obs_high=1.0,
        )

    # ------------------------------------------------------------------ helpers
    def _loc(self, state: TrafficJunctionState) -> chex.Array:
        """[N] int32 location index (0..12) of every slot (meaningless when inactive)."""
        return self.route_loc_index[state.route, state.route_loc]

    # ------------------------------------------------------------------ array core
    def _reset(self, key: chex.PRNGKey, run) -> TrafficJunctionState:
        del key
        n = self.n_cars
        zeros = jnp.zeros((n,), jnp.int32)
        return TrafficJunctionState(
            alive=jnp.zeros((n,), bool),
            route=zeros,
            route_loc=zeros,
            wait=zeros,
            has_failed=jnp.zeros((), bool),
            step=jnp.zeros((), jnp.int32),
            run=run,
        )

    def _transition(self, key, state: TrafficJunctionState, actions: chex.Array):
        n = self.n_cars
        # 1. move: every alive car waits one more step; GAS advances, past the last cell exits.
        alive = state.alive
        wait = state.wait + alive.astype(jnp.int32)
        route_loc = state.route_loc + jnp.logical_and(alive, actions == GAS).astype(jnp.int32)
        exited = route_loc >= ROUTE_LEN
        alive = jnp.logical_and(alive, ~exited)
        wait = jnp.where(exited, 0, wait)
        route_loc = jnp.where(exited, 0, route_loc)
        route = state.route

        # 2. arrivals, route 0 then route 1, at most one each, into a random inactive slot.
        u = jax.random.uniform(key, (n + N_ROUTES,))
        noise = u[N_ROUTES:]
        for r in range(N_ROUTES):
            inactive = ~alive
            room = jnp.sum(alive) < n  # cars_in_sys < n_cars  <=>  some slot is inactive
            arrive = jnp.logical_and(room, u[r] < self.arrival_rate)
            slot = jnp.argmax(jnp.where(inactive, noise, -1.0))
            new = jnp.logical_and(arrive, jnp.arange(n) == slot)
            alive = jnp.logical_or(alive, new)
            route = jnp.where(new, r, route)
            route_loc = jnp.where(new, 0, route_loc)  # wait is already 0 for inactive slots

        # 3. reward: time penalty of every alive car, crash penalty for co-located alive cars.
        loc = self.route_loc_index[route, route_loc]
        both = jnp.logical_and(alive[:, None], alive[None, :])
        same = jnp.logical_and(loc[:, None] == loc[None, :], both)
        crashed = jnp.sum(same, axis=1) > 1  # the diagonal always counts once for alive cars
        per_car = self.time_penalty * wait.astype(jnp.float32) + jnp.where(crashed, self.crash_penalty, 0.0)
        reward = jnp.sum(jnp.where(alive, per_car, 0.0))
        has_failed = jnp.logical_or(state.has_failed, jnp.any(crashed))

        state = state.replace(
            alive=alive,
            route=route,
            route_loc=route_loc,
            wait=wait,
            has_failed=has_failed,
            step=state.step + 1,
        )
        # never terminates; the base class truncates at time_limit.
        return state, reward, jnp.zeros((), bool), ~has_failed

    def _obs(self, state: TrafficJunctionState) -> chex.Array:
        loc = self._loc(state)
        route_hot = state.route[:, None] == jnp.arange(N_ROUTES)
        loc_hot = loc[:, None] == jnp.arange(N_LOC)
        hot = jnp.concatenate([route_hot, loc_hot], axis=1)
        return jnp.logical_and(hot, state.alive[:, None]).astype(jnp.float32)

    def _world_state(self, state: TrafficJunctionState) -> chex.Array:
        return self._obs(state).reshape(-1)

    def _extra_info(self, state: TrafficJunctionState) -> dict[str, chex.Array]:
        return {
            "success": ~state.has_failed,
            "add_rate": jnp.asarray(self.arrival_rate, jnp.float32),
        }
