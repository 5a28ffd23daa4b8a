"""SMAX stand-ins for CroMAC's two SMAC maps, ``1o_2r_vs_4r`` and ``1o_10b_vs_1r``.

The originals (ENV_SPEC.md section 4) need StarCraft II; these run JaxMARL's SMAX instead, with
four custom unit types, two registered ``Scenario``s and a small ``SMAX`` subclass
(:class:`CommSMAX`) that adds only what SMAX lacks: corner spawns, a flying scout that nothing
collides with, suicide banelings. :class:`SmaxComm` wraps it in the project's array API
(``envs.base.CromacEnv``) and plays the enemy team with a fixed policy.

Presets: ``smax_1o2r_vs_4r`` (1 overlord + 2 roaches vs 4 reapers, agent 0 = overlord) and
``smax_1o10b_vs_1r`` (10 banelings + 1 overlord vs 1 roach, agent 10 = overlord); the agent
order is SMAC's (ENV_SPEC 4.3). The class names contain "smax" on purpose: JaxMARL's rollout
helpers (``CTRolloutManager``) use the avail masks, ``world_state`` and the team reward only
when ``"smax" in type(env).__name__.lower()`` (tested).

Overrides (``envs.make(preset, **overrides)``): ``scout_sight``, ``fighter_sight``,
``enemy_sight``, ``episode_limit``, ``n_fighters``, ``n_enemies``, ``corners`` ((x, y) spawn
points of the scout and the enemies) and ``fighter_regions`` ((x0, x1, y0, y1) rectangles).
:func:`check_config` refuses, with one ``EnvConfigError`` naming the value, an unknown map name;
a sight that is not a positive finite number, a scout sight below ``MIN_SCOUT_SIGHT`` (it would
not see the enemies it spawns with) or below the fighters' (nothing to communicate); zero
fighters or enemies; banelings whose total damage cannot kill the enemy (1o10b needs 10 x 15 >=
145); a corner or spawn region outside the 32 x 32 map.

The communication problem, kept
-------------------------------
- reset: corner k ~ U{4} of P1 (3.5, 2), P2 (3.5, 28.86), P3 (28.5, 28), P4 (28.5, 2); the
  overlord **and every enemy** spawn at that corner (+-0.25 jitter, then SMAX's push-apart;
  all of a reset's randomness comes from one uniform draw, since auto-reset runs every step).
  Fighters spawn away from it, in the map's regions (ENV_SPEC 4.2): 1o_2r_vs_4r both roaches at
  one point (+-0.25) of one of 4 edge regions; 1o_10b_vs_1r each baneling independently in one
  of 5 regions (4 edges + centre).
- sight: the scout (overlord) sees 12, fighters 6, the enemy AI 4. A fighter cannot see the
  enemy at spawn in ~88% (1o2r) / ~92% (1o10b) of cases; only the overlord, which cannot
  fight and barely moves, knows where the enemy is, so messages must tell the fighters.
  (Every unit observes its own absolute position, SMAX's own features, so "the enemy is at
  corner k" is a message the fighters can act on.)
- enemy policy (:meth:`CommSMAX.enemy_actions`, replacing SMAX's heuristic, whose default is to
  walk across the map): each enemy attacks the closest living **non-overlord** ally within its
  attack range, else moves toward the closest living non-overlord ally within its sight (4),
  else stops. Nobody ever targets the overlord (in SC2 reapers/roaches cannot hit air), so its
  health never drops and the team loses only by timeout or by losing every fighter.
- banelings: :meth:`CommSMAX._world_step` kills a baneling in the world step it attacks (its
  weapon cooldown rose); splash is not modelled (the only enemy is the target itself).
- the overlord flies: :meth:`CommSMAX._push_units_away` leaves it out of collisions (and keeps
  pushed units on the map, so every observation lies in [-1, 1]). It is SMAX's push-apart
  formula computed on x and y separately, which is what makes these maps fast (see Throughput).

Units (SMAX convention: centre-to-centre ranges; times in game seconds at "normal" speed, so one
env step = 8 world steps x 1/16 s = 0.5 game-s = SMAC's ``step_mul 8``, and per-step
displacements equal SMAC's). SC2 values from the maps' data (ENV_SPEC 4.2) or standard LotV:

| unit | field | SC2 / SMAC | stand-in | why |
|---|---|---|---|---|
| overlord (scout) | health | 200 | 200 | |
| | speed | 0.47 (map) | 0.47 | |
| | weapon | none | attack 0, range 0 (attack never available) | |
| | sight | 9 (SMAC, every unit) | 12 | a scout that sees farther than fighters |
| | collision | air, none | none (skipped in push-apart), radius 1.0 drawn | |
| roach (ally in 1o2r, enemy in 1o10b) | health / armor | 145 / 1 | 145 / no armor | SMAX has no armor: damage is pre-reduced |
| | speed | 2.25 | 2.25 | |
| | damage | 16 | 16 (targets: reapers, banelings, armor 0) | |
| | range | 4 (edge to edge); SMAC avail 6 | 5.0 = 4 + radii 0.625 + 0.375 | SMAX ranges are centre-to-centre |
| | cooldown | 1.0 (both maps; stock 2.0) | 1.0 as ally (1o2r), **2.0 as enemy (1o10b)** | see below |
| | sight | 9 (SMAC) as ally, 4 (map) as enemy | 6 as ally, 4 as enemy | fighters must not see far |
| | radius | 0.625 | 0.625 | |
| reaper (enemy) | health | 60 | 60 | |
| | speed | 3.75 | 3.75 | |
| | damage | 4 x 2 | 6 per attack = (4 - 1 armor) x 2 | only target is the armored roach |
| | range | 3 (map; edge to edge) | 4.0 = 3 + radii | centre-to-centre |
| | cooldown | 1.1 (0.79 at faster) | 1.1 | |
| | sight | 4 (map) | 4 | |
| | radius | 0.375 | 0.375 | |
| baneling | health | 30 | 30 | |
| | speed | 2.5 | 2.5 | |
| | damage | 16 (+19 light) splash, suicide | 15 = 16 - 1 armor vs roach, no splash, suicide | one enemy only |
| | range | 0.25 (edge to edge) | 1.25 = 0.25 + radii | units are kept >= 1.0 apart |
| | cooldown | none (dies) | 1.0 (placeholder, never reused) | SMAX divides by it |
| | sight | 9 (SMAC) | 6 | |
| | radius | 0.375 | 0.375 | |
| map | size | 32 x 32, cliffs (unverified) | 32 x 32 open, walls never kill | SMAX has no terrain |
| enemy AI | | SC2 built-in, difficulty 7 | fixed policy above | SC2 AI unverified |
| episode | limit | 50 steps | 50 steps (``episode_limit``) | |

The enemy roach of 1o_10b_vs_1r fires every 2.0 game-s (stock SC2) instead of the map's 1.0:
with 1.0 it lands the two shots that kill a 30-HP baneling in the ~1.5 s a baneling spends
crossing its range, so any baneling arriving alone dies, and since 9 x 15 < 145 all ten must
hit; an informed scripted charge then won 0 of 1024 episodes (0.03 with 1.43, 0.61 with 2.0).
SC2's attack delays and projectile flight, which SMAX lacks, are the presumable difference.

Sizes (``SIZES``; SMAC's in brackets). SMAX's unit-list layout with 4 type bits, per agent obs
``[other allies (N-1) x 11, enemies x 11, own 8]``, unit features ``[health frac, dx/sight,
dy/sight, last move x, last move y, last attack / (A-1), cooldown frac, type one-hot(4)]``
(zeros when not visible or dead; enemy last actions hidden), own ``[health frac, x/32, y/32,
cooldown frac, type one-hot(4)]``. State: every unit's ``[health frac, x/32, y/32, cooldown
frac, type one-hot(4)]`` (SMAX's world state with positions and cooldowns normalised and its
constant team/type tail dropped; no last actions, unlike SMAC). Actions (SMAX order):
``0 N(+y), 1 E(+x), 2 S, 3 W, 4 stop, 5+j attack enemy j`` (no SMAC no-op; dead agents: stop
only). obs/state/actions: 1o2r 74 [49] / 56 [68] / 9 [10]; 1o10b 129 [84] / 96 [148] / 6 [7].

Reward (team scalar): SMAC's formula, not SMAX's native ``(fraction lost)/n + 1``: per step
``20 * (enemy HP lost + 10 * enemies killed + 200 * won) / max_reward`` with ``max_reward =
10 * n_enemies + 200 + sum enemy max HP`` (480 and 355), so an episode returns at most 20 and a
step lies in ``reward_range = (0, 20)``. Ally losses are ignored (``reward_only_positive``).

End: ``terminated`` when every enemy is dead (``won``) or every fighter is dead (defeat; the
invulnerable overlord could not win alone); the base class truncates at 50 steps. ``won`` is
SMAC's ``battle_won``: all enemies dead while an ally is alive, which the overlord always is.
(Requiring a living *fighter* would make 1o_10b_vs_1r unwinnable: 9 x 15 < 145, so all ten
banelings must hit, and the last one dies with the roach.)

Measured (tests/test_smax_comm.py, 1024 episodes each, two seeds): a scripted policy that knows
where the enemy is (fighters walk to it and attack the closest enemy in range; the overlord
stops) wins 1o2r 0.87-0.89 (every loss a timeout: fighters spawned at the far side arrive too
late) and 1o10b 0.60 (every loss a defeat: the roach kills a baneling, then 9 hits cannot kill
it); uniformly random available actions win 0.03-0.05 (1o2r, fighters spawned next to the
enemy) and 0.00 (1o10b). A fighter cannot see the enemy at spawn in 0.88-0.89 (1o2r) / 0.92
(1o10b) of cases.
Throughput (benchmarks/env_throughput.py, jax 0.10.2 on the 2-core CPU shared with other jobs,
load average 4.6-7.2: jit(lax.scan(vmap(step))) over 1024 envs, random available actions, timed
round-robin with JaxMARL's own SMAX ``3m`` in the same run, compile excluded): 3m 29-61k env
steps/s; dict API with auto-reset 1o2r 62-99k (1.6-2.1x 3m) and 1o10b 34-44k (0.73-1.17x);
array API 66-99k and 33-59k. Per CPU-second of the process, which the other jobs disturb less:
1o2r 2.1x 3m, 1o10b 0.99-1.05x (0.87x at 8192 envs). The cost is SMAX's O(N^2) push-apart in
each of the 8 world steps: on an [N, N, 2] array, as SMAX computes it, it took ~70% of a 1o10b
step (12 units; 3m has 6) and 1o10b ran at 0.49-0.59x 3m (JaxMARL's own 11-unit ``5m_vs_6m``
runs at ~0.5x 3m); on x and y separately (:meth:`CommSMAX._push_units_away`) it is 1.7x faster.
Compile: 5-18 s per function.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from envs._quiet import quiet_import
from envs.base import CromacEnv, require

with quiet_import():
    from jaxmarl.environments.smax import SMAX, Scenario, register_scenario
    from jaxmarl.environments.smax.smax_env import State as SMAXState

# ------------------------------------------------------------------ unit catalogue
OVERLORD, ROACH, REAPER, BANELING = 0, 1, 2, 3
UNIT_NAMES = ["overlord", "roach", "reaper", "baneling"]
UNIT_SHORTHANDS = ["o", "r", "R", "b"]
UNIT_VELOCITIES = (0.47, 2.25, 3.75, 2.5)
UNIT_ATTACKS = (0.0, 16.0, 6.0, 15.0)
UNIT_ATTACK_RANGES = (0.0, 5.0, 4.0, 1.25)
UNIT_RADIUSES = (1.0, 0.625, 0.375, 0.375)
UNIT_HEALTH = (200.0, 145.0, 60.0, 30.0)
#: weapon periods of 1o_2r_vs_4r (its roaches are the map's Roach_RL, period 1.0)
UNIT_WEAPON_COOLDOWNS = (1.0, 1.0, 1.1, 1.0)
#: 1o_10b_vs_1r's enemy roach fires every 2.0 game-s (stock SC2), not the map's 1.0: see the docstring
ENEMY_ROACH_COOLDOWN = 2.0
#: per type: flies (no collisions), dies when it attacks
UNIT_AIR = (True, False, False, False)
UNIT_SUICIDE = (False, False, False, True)

MAP_SIZE = 32.0
CORNERS = ((3.5, 2.0), (3.5, 28.86), (28.5, 28.0), (28.5, 2.0))
#: fighter spawn rectangles (x0, x1, y0, y1), ENV_SPEC 4.2
REGIONS_1O2R = ((0.0, 32.0, 0.0, 5.0), (0.0, 32.0, 27.0, 32.0), (24.5, 31.5, 6.0, 26.0), (0.5, 7.5, 6.0, 26.0))
REGIONS_1O10B = (
    (0.0, 32.0, 0.0, 5.0),
    (0.0, 32.0, 27.0, 32.0),
    (26.0, 31.0, 6.0, 26.0),
    (1.0, 6.0, 6.0, 26.0),
    (12.0, 20.0, 14.0, 18.0),
)
SPAWN_JITTER = 0.25


@dataclasses.dataclass(frozen=True)
class MapSpec:
    """What defines one map: unit types, default counts, fighter spawns and weapon periods."""

    fighter: int  # unit type of the fighters (every agent but the scout)
    enemy: int  # unit type of every enemy
    scout_first: bool  # SMAC's agent order: the scout is agent 0 (True) or the last agent (False)
    n_fighters: int
    n_enemies: int
    regions: tuple[tuple[float, float, float, float], ...]  # fighter spawn rectangles
    shared_spawn: bool  # all fighters at one point (1o2r) or one point each (1o10b)
    weapon_cooldowns: tuple[float, ...]  # per unit type

    def unit_types(self, n_fighters: int, n_enemies: int) -> list[int]:
        """SMAX scenario types: allies in SMAC's agent order, then the enemies."""
        fighters = [self.fighter] * n_fighters
        allies = [OVERLORD, *fighters] if self.scout_first else [*fighters, OVERLORD]
        return allies + [self.enemy] * n_enemies


#: map name -> its spec; 1o_10b_vs_1r's enemy roach fires every 2.0 game-s (see the docstring)
MAPS = {
    "1o_2r_vs_4r": MapSpec(ROACH, REAPER, True, 2, 4, REGIONS_1O2R, True, UNIT_WEAPON_COOLDOWNS),
    "1o_10b_vs_1r": MapSpec(
        BANELING,
        ROACH,
        False,
        10,
        1,
        REGIONS_1O10B,
        False,
        (*UNIT_WEAPON_COOLDOWNS[:ROACH], ENEMY_ROACH_COOLDOWN, *UNIT_WEAPON_COOLDOWNS[ROACH + 1 :]),
    ),
}
for _name, _spec in MAPS.items():
    _types = jnp.array(_spec.unit_types(_spec.n_fighters, _spec.n_enemies), jnp.uint8)
    register_scenario(_name, Scenario(_types, 1 + _spec.n_fighters, _spec.n_enemies, False, False))

#: The scout must see the enemies it spawns with; they start at most ~1.7 from it (20k spawns of
#: each default map: corner jitter plus SMAX's push-apart of the enemy cluster).
MIN_SCOUT_SIGHT = 2.0


def _is_real(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and bool(np.isfinite(v))


def _is_count(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _as_rows(name: str, value, width: int) -> tuple[tuple[float, ...], ...]:
    """``value`` as a non-empty tuple of ``width``-tuples of finite numbers, else EnvConfigError."""
    try:
        rows = tuple(tuple(row) for row in value)
    except TypeError:
        rows = ()
    require(
        len(rows) > 0 and all(len(r) == width and all(_is_real(v) for v in r) for r in rows),
        f"smax {name} must be a non-empty sequence of {width}-tuples of finite numbers, got {value!r}",
    )
    return tuple(tuple(float(v) for v in r) for r in rows)


def check_config(
    map_name,
    scout_sight,
    fighter_sight,
    enemy_sight,
    episode_limit,
    n_fighters=None,
    n_enemies=None,
    corners=None,
    fighter_regions=None,
    limit_name: str = "episode_limit",
) -> tuple[MapSpec, int, int, tuple, tuple]:
    """Refuse a map that cannot be built or cannot be played, with one line naming the value.

    Returns ``(spec, n_fighters, n_enemies, corners, fighter_regions)`` with the map's defaults
    for ``None``. Refused: an unknown map name; a sight that is not a positive finite number; a
    scout that sees less than a fighter (nothing to communicate) or too little to see the enemies
    it spawns with (< ``MIN_SCOUT_SIGHT``); no fighter or no enemy; suicide fighters whose total
    damage cannot kill the enemy team; a corner or fighter spawn region outside the 32 x 32 map.
    """
    require(
        isinstance(map_name, str) and map_name in MAPS,
        f"smax map_name must be one of {sorted(MAPS)}, got {map_name!r}",
    )
    spec = MAPS[map_name]
    for name, v in (("scout_sight", scout_sight), ("fighter_sight", fighter_sight), ("enemy_sight", enemy_sight)):
        require(_is_real(v) and v > 0, f"smax {name} must be a positive finite number, got {v!r}")
    require(
        scout_sight >= MIN_SCOUT_SIGHT,
        f"smax scout_sight={scout_sight!r} is below {MIN_SCOUT_SIGHT}: the scout would not see the "
        "enemies it spawns with, so no agent could tell the fighters where they are",
    )
    require(
        fighter_sight <= scout_sight,
        f"smax fighter_sight={fighter_sight!r} exceeds scout_sight={scout_sight!r}: the scout must see at "
        "least as far as the fighters, or the map has nothing to communicate",
    )
    require(
        _is_count(episode_limit) and episode_limit >= 1,
        f"smax {limit_name} must be an integer >= 1, got {episode_limit!r}",
    )
    n_fighters = spec.n_fighters if n_fighters is None else n_fighters
    n_enemies = spec.n_enemies if n_enemies is None else n_enemies
    require(_is_count(n_fighters) and n_fighters >= 1, f"smax n_fighters must be an integer >= 1, got {n_fighters!r}")
    require(_is_count(n_enemies) and n_enemies >= 1, f"smax n_enemies must be an integer >= 1, got {n_enemies!r}")
    if UNIT_SUICIDE[spec.fighter]:
        damage, enemy_hp = n_fighters * UNIT_ATTACKS[spec.fighter], n_enemies * UNIT_HEALTH[spec.enemy]
        require(
            damage >= enemy_hp,
            f"smax n_fighters={n_fighters}: {n_fighters} {UNIT_NAMES[spec.fighter]}s deal at most {damage:g} "
            f"damage, less than the {n_enemies} {UNIT_NAMES[spec.enemy]}(s)' {enemy_hp:g} HP, so the map is unwinnable",
        )
    corners = CORNERS if corners is None else _as_rows("corners", corners, 2)
    for c in corners:
        require(
            all(0.0 <= v <= MAP_SIZE for v in c),
            f"smax spawn corner {c!r} is outside the {MAP_SIZE:g} x {MAP_SIZE:g} map",
        )
    regions = spec.regions if fighter_regions is None else _as_rows("fighter_regions", fighter_regions, 4)
    for r in regions:
        x0, x1, y0, y1 = r
        require(
            0.0 <= x0 <= x1 <= MAP_SIZE and 0.0 <= y0 <= y1 <= MAP_SIZE,
            f"smax fighter spawn region {r!r} (x0, x1, y0, y1) is outside the {MAP_SIZE:g} x {MAP_SIZE:g} "
            "map or has x0 > x1 or y0 > y1",
        )
    return spec, int(n_fighters), int(n_enemies), tuple(corners), tuple(regions)


#: (n_agents, obs_dim, state_dim, n_actions, episode_limit) of each preset, and SMAC's
#: (n_agents, obs, state, actions, limit) for comparison.
SIZES = {
    "smax_1o2r_vs_4r": (3, 74, 56, 9, 50),
    "smax_1o10b_vs_1r": (11, 129, 96, 6, 50),
}
SMAC_SIZES = {
    "smax_1o2r_vs_4r": (3, 49, 68, 10, 50),
    "smax_1o10b_vs_1r": (11, 84, 148, 7, 50),
}

# unit-vector of SMAX movement actions 0 N, 1 E, 2 S, 3 W
_MOVE_VECTORS = jnp.array([[0.0, 1.0], [1.0, 0.0], [0.0, -1.0], [-1.0, 0.0]])
_STOP = 4


def _pick(u: chex.Array, n: int) -> chex.Array:
    """Uniform [0, 1) numbers -> uniform indices in {0, ..., n - 1}."""
    return jnp.minimum((u * n).astype(jnp.int32), n - 1)


class CommSMAX(SMAX):
    """``SMAX`` with the maps' spawns, a non-colliding scout, suicide units and the enemy policy.

    A JaxMARL env in its own right (``reset`` uses the corner spawns; the caller drives both
    teams). Everything else is SMAX's. The arguments are checked by :func:`check_config`.
    """

    def __init__(
        self,
        map_name: str,
        scout_sight: float = 12.0,
        fighter_sight: float = 6.0,
        enemy_sight: float = 4.0,
        max_steps: int = 50,
        n_fighters: int | None = None,
        n_enemies: int | None = None,
        corners: tuple[tuple[float, float], ...] | None = None,
        fighter_regions: tuple[tuple[float, float, float, float], ...] | None = None,
    ) -> None:
        spec, n_fighters, n_enemies, corners, regions = check_config(
            map_name, scout_sight, fighter_sight, enemy_sight, max_steps, n_fighters, n_enemies, corners, fighter_regions, "max_steps"
        )
        types = spec.unit_types(n_fighters, n_enemies)
        super().__init__(
            scenario=Scenario(jnp.array(types, jnp.uint8), 1 + n_fighters, n_enemies, False, False),
            map_width=int(MAP_SIZE),
            map_height=int(MAP_SIZE),
            world_steps_per_env_step=8,
            time_per_step=1.0 / 16,
            unit_type_names=UNIT_NAMES,
            unit_type_shorthands=UNIT_SHORTHANDS,
            unit_type_velocities=jnp.array(UNIT_VELOCITIES),
            unit_type_attacks=jnp.array(UNIT_ATTACKS),
            unit_type_attack_ranges=jnp.array(UNIT_ATTACK_RANGES),
            unit_type_sight_ranges=jnp.array([scout_sight, fighter_sight, enemy_sight, fighter_sight], jnp.float32),
            unit_type_radiuses=jnp.array(UNIT_RADIUSES),
            unit_type_health=jnp.array(UNIT_HEALTH),
            unit_type_weapon_cooldowns=jnp.array(spec.weapon_cooldowns),
            see_enemy_actions=False,
            won_battle_bonus=1.0,
            walls_cause_death=False,
            max_steps=max_steps,
        )
        self.map_name = map_name
        self.enemy_sight = float(enemy_sight)
        self.corners, self.regions, self.shared_spawn = corners, regions, spec.shared_spawn
        self.ally_types = np.asarray(types[: self.num_allies])
        #: static masks over allies
        self.is_scout = self.ally_types == OVERLORD
        self.is_fighter = ~self.is_scout
        self._suicide = jnp.array(UNIT_SUICIDE)
        # push-apart constants (unit types never change)
        all_types = np.asarray(types)
        radius = np.asarray(UNIT_RADIUSES, np.float32)[all_types]
        self._ground = ~np.asarray(UNIT_AIR)[all_types]
        self._radius_sum = radius[:, None] + radius[None, :]
        self._eye_eps = np.identity(self.num_agents, np.float32) + np.float32(1e-6)
        # spawn tables: every unit copies one of n_points fighter points or the corner (last row)
        self._n_points = 1 if self.shared_spawn else n_fighters
        src = np.full(self.num_agents, self._n_points)
        src[np.flatnonzero(self.is_fighter)] = 0 if self.shared_spawn else np.arange(n_fighters)
        self._spawn_src = src
        r = np.asarray(regions, np.float32)
        self._region_lo, self._region_span = r[:, [0, 2]], r[:, [1, 3]] - r[:, [0, 2]]
        self._corner_xy = np.asarray(corners, np.float32)

    # ------------------------------------------------------------------ spawn
    def spawn(self, key: chex.PRNGKey) -> SMAXState:
        """A fresh battle: scout and enemies at a random corner, fighters in the spawn regions.

        All the randomness comes from one uniform draw (corner, regions, points, jitter): one
        PRNG call instead of six keeps the auto-reset that JaxMARL's ``step`` runs on every step
        cheap.
        """
        n_pts, n_units, n_corners, n_regions = self._n_points, self.num_agents, len(self.corners), len(self.regions)
        u = jax.random.uniform(key, (1 + 3 * n_pts + 2 * n_units,))
        corner = jnp.asarray(self._corner_xy)[_pick(u[0], n_corners)]
        region = _pick(u[1 : 1 + n_pts], n_regions)
        uv = u[1 + n_pts : 1 + 3 * n_pts].reshape(n_pts, 2)
        points = jnp.asarray(self._region_lo)[region] + uv * jnp.asarray(self._region_span)[region]
        pos = jnp.concatenate([points, corner[None]])[self._spawn_src]
        jitter = (2.0 * u[1 + 3 * n_pts :].reshape(n_units, 2) - 1.0) * SPAWN_JITTER
        pos = jnp.clip(pos + jitter, 0.0, MAP_SIZE)
        types = self.scenario
        state = SMAXState(
            unit_positions=pos,
            unit_alive=jnp.ones((n_units,), bool),
            unit_teams=jnp.asarray(self.teams, jnp.float32),
            unit_health=self.unit_type_health[types],
            unit_types=types,
            unit_weapon_cooldowns=jnp.zeros((n_units,)),
            prev_movement_actions=jnp.zeros((n_units, 2)),
            prev_attack_actions=jnp.zeros((n_units,), jnp.int32),
            step=jnp.zeros((), jnp.int32),
            done=jnp.zeros((), bool),
        )
        return self._push_units_away(state)

    @partial(jax.jit, static_argnums=(0,))
    def reset(self, key: chex.PRNGKey):
        state = self.spawn(key)
        obs = self.get_obs(state)
        obs["world_state"] = self.get_world_state(state)
        return obs, state

    # ------------------------------------------------------------------ rules SMAX lacks
    def _push_units_away(self, state: SMAXState, firmness: float = 1.0) -> SMAXState:
        """SMAX's push-apart (its formula, pairs of living units pushed apart by their overlap),
        among ground units only: flyers neither push nor get pushed; a unit pushed across the
        map's edge is put back on it (SMAX clips moves, not pushes).

        Computed on x and y separately ([N, N] arrays) instead of SMAX's [N, N, 2]: the push runs
        in every world step and XLA's CPU code handles a trailing axis of 2 badly; this alone
        makes 1o_10b_vs_1r (12 units) ~1.7x faster. Unit types never change, so the radius
        sums and the ground mask are constants. Same result as ``SMAX._push_units_away`` on the
        ground units, up to float rounding (tested)."""
        ground = state.unit_alive & self._ground
        pair = ground[:, None] & ground[None, :]
        x, y = state.unit_positions[:, 0], state.unit_positions[:, 1]
        dx, dy = x[:, None] - x[None, :], y[:, None] - y[None, :]
        dist = jnp.sqrt(dx * dx + dy * dy) + self._eye_eps
        overlap = jnp.where(pair, jax.nn.relu(self._radius_sum / dist - 1.0), 0.0)
        pushed = jnp.stack([x + firmness * jnp.sum(dx * overlap, 1) / 2, y + firmness * jnp.sum(dy * overlap, 1) / 2], -1)
        pos = jnp.where(ground[:, None], pushed, state.unit_positions)
        return state.replace(unit_positions=jnp.clip(pos, 0.0, MAP_SIZE))

    def _world_step(self, key, state: SMAXState, actions) -> SMAXState:
        """SMAX's world step, then every suicide unit that fired in it dies."""
        new = super()._world_step(key=key, state=state, actions=actions)
        fired = new.unit_weapon_cooldowns > state.unit_weapon_cooldowns
        dies = fired & self._suicide[state.unit_types]
        return new.replace(unit_health=jnp.where(dies, 0.0, new.unit_health))

    def enemy_actions(self, state: SMAXState) -> chex.Array:
        """The enemy team's discrete SMAX actions [n_enemies]: attack the closest non-scout ally in
        range, else move toward the closest non-scout ally in sight, else stop."""
        na = self.num_allies
        ally_pos, enemy_pos = state.unit_positions[:na], state.unit_positions[na:]
        target_ok = state.unit_alive[:na] & jnp.asarray(self.is_fighter)
        delta = ally_pos[None, :, :] - enemy_pos[:, None, :]  # [E, A, 2]
        dist = jnp.linalg.norm(delta, axis=-1)
        in_range = target_ok[None] & (dist < self.unit_type_attack_ranges[state.unit_types[na:]][:, None])
        in_sight = target_ok[None] & (dist < self.enemy_sight)
        closest_hit = jnp.argmin(jnp.where(in_range, dist, jnp.inf), axis=1)
        closest_seen = jnp.argmin(jnp.where(in_sight, dist, jnp.inf), axis=1)
        # enemies number their attack targets in reverse (SMAX's observation order)
        attack = self.num_movement_actions + na - 1 - closest_hit
        heading = jnp.take_along_axis(delta, closest_seen[:, None, None], axis=1)[:, 0]
        move = jnp.argmax(heading @ _MOVE_VECTORS.T, axis=-1)
        act = jnp.where(jnp.any(in_range, 1), attack, jnp.where(jnp.any(in_sight, 1), move, _STOP))
        return act.astype(jnp.int32)


@struct.dataclass
class SmaxCommState:
    smax: SMAXState
    run: chex.Array

    @property
    def step(self) -> chex.Array:
        return self.smax.step


class SmaxComm(CromacEnv):
    """A CroMAC SMAC map on SMAX, in the project's array API (see the module docstring)."""

    reward_range = (0.0, 20.0)

    def __init__(
        self,
        map_name: str = "1o_2r_vs_4r",
        scout_sight: float = 12.0,
        fighter_sight: float = 6.0,
        enemy_sight: float = 4.0,
        episode_limit: int = 50,
        n_fighters: int | None = None,
        n_enemies: int | None = None,
        corners: tuple[tuple[float, float], ...] | None = None,
        fighter_regions: tuple[tuple[float, float, float, float], ...] | None = None,
    ) -> None:
        """Overrides: the three sights; ``n_fighters`` / ``n_enemies`` (default: the map's 2 roaches
        and 4 reapers, or 10 banelings and 1 roach); ``corners`` ((x, y) points, the scout and the
        enemies spawn at one of them) and ``fighter_regions`` ((x0, x1, y0, y1) rectangles),
        default the map's (ENV_SPEC 4.2). A value that makes the map impossible raises
        ``EnvConfigError`` naming it (:func:`check_config`)."""
        args = (scout_sight, fighter_sight, enemy_sight, episode_limit, n_fighters, n_enemies, corners, fighter_regions)
        check_config(map_name, *args)
        self.smax = CommSMAX(map_name, *args)
        s = self.smax
        self.map_name = map_name
        self.scout_index = int(np.flatnonzero(s.is_scout)[0])
        enemy_hp = float(sum(UNIT_HEALTH[t] for t in np.asarray(s.scenario)[s.num_allies :]))
        #: SMAC's reward normaliser (ENV_SPEC 4.6): a perfect episode returns 20
        self.max_reward = 10.0 * s.num_enemies + 200.0 + enemy_hp
        self.reward_scale = 20.0 / self.max_reward
        super().__init__(
            n_agents=s.num_allies,
            obs_dim=s.obs_size,
            state_dim=len(s.own_features) * s.num_agents,
            n_actions=s.num_ally_actions,
            episode_limit=episode_limit,
            obs_low=-1.0,
            obs_high=1.0,
        )

    # ------------------------------------------------------------------ array core
    def _reset(self, key: chex.PRNGKey, run) -> SmaxCommState:
        return SmaxCommState(smax=self.smax.spawn(key), run=run)

    def _transition(self, key, state: SmaxCommState, actions: chex.Array):
        s, na = self.smax, self.smax.num_allies
        before = state.smax
        all_actions = jnp.concatenate([jnp.asarray(actions, jnp.int32), s.enemy_actions(before)])
        decoded = s._decode_discrete_actions(all_actions)
        _, after, _, _, _ = s.step_env_no_decode(key, before, decoded)
        hp_lost = jnp.sum(before.unit_health[na:] - after.unit_health[na:])
        kills = jnp.sum(before.unit_alive[na:] & ~after.unit_alive[na:])
        enemies_dead = ~jnp.any(after.unit_alive[na:])
        fighters_dead = ~jnp.any(after.unit_alive[:na] & jnp.asarray(s.is_fighter))
        won = enemies_dead & jnp.any(after.unit_alive[:na])
        reward = self.reward_scale * (hp_lost + 10.0 * kills + 200.0 * won)
        return state.replace(smax=after), reward, enemies_dead | fighters_dead, won

    def _obs(self, state: SmaxCommState) -> chex.Array:
        obs = self.smax.get_obs(state.smax)
        return jnp.stack([obs[f"ally_{i}"] for i in range(self.n_agents)]).astype(jnp.float32)

    def _world_state(self, state: SmaxCommState) -> chex.Array:
        s, st = self.smax, state.smax
        f = len(s.own_features)
        units = s.get_world_state(st)[: f * s.num_agents].reshape(s.num_agents, f)
        cd = jnp.clip(st.unit_weapon_cooldowns / s.unit_type_weapon_cooldowns[st.unit_types], 0.0, 1.0)
        units = units.at[:, 1:3].divide(MAP_SIZE).at[:, 3].set(jnp.where(st.unit_alive, cd, 0.0))
        return units.reshape(-1).astype(jnp.float32)

    def _avail(self, state: SmaxCommState) -> chex.Array:
        avail = self.smax.get_avail_actions(state.smax)
        return jnp.stack([avail[f"ally_{i}"] for i in range(self.n_agents)]).astype(bool)
