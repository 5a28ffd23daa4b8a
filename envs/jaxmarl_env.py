"""Any discrete-action JaxMARL environment as a ``CromacEnv``: ``envs.make("jaxmarl:NAME", **kw)``.

``JaxMARLEnv`` wraps the environment that ``jaxmarl.make(NAME, **kw)`` builds and gives the
trainer the array core it calls (``reset_arrays`` / ``step_arrays`` returning a ``Timestep`` with
agents on the leading axis), on top of which ``CromacEnv`` provides the JaxMARL dict API again.
How each piece of the ``Timestep`` is made:

* **obs** ``[N, O]``: every agent's observation flattened (image observations become vectors),
  cast to float32 and zero-padded at the end to the largest size ``O`` (MPE speaker-listener:
  the speaker's 3 values are padded to the listener's 11). With ``agent_id=True`` a one-hot
  agent index is appended after the padding (``O + N``), which lets the shared agent network
  tell heterogeneous roles apart; it is off by default so the wrapped observations are the raw
  ones.
* **world_state** ``[S]``: the env's own global state where it provides one: an observation
  entry ``"world_state"`` (SMAX) or ``"state"``, else a ``get_world_state(state)`` method; for
  every other env the concatenation of the agents' flattened, unpadded observations.
* **avail** ``[N, A]``: ``get_avail_actions`` where the env implements it (SMAX), else
  ``get_legal_moves`` (Hanabi), else all ones. Agents with fewer actions than the largest action
  space ``A`` have their extra actions marked unavailable (and an out-of-range action is clipped
  to the agent's last one before the env sees it).
* **reward**: the mean of the agents' rewards (the shared reward itself where all agents get the
  same one, as in speaker-listener; the global reward in simple_reference).
* **won**: an info entry ``won`` / ``battle_won`` / ``success`` / ``is_success`` where the env's
  ``step_env`` returns one; for SMAX-family envs (whose info is empty) the battle outcome from
  the state: every enemy dead and at least one ally alive. Other envs report ``won = False``:
  judge them by the return.
* **terminated / truncated**: JaxMARL signals both with ``dones["__all__"]``. An end before the
  env's time limit is a termination; an end at or after it is a truncation, except for
  SMAX-family envs, where a team wiped out is a termination at any step. For other envs a genuine
  terminal event on the very last allowed step is therefore reported as a truncation (switch
  riddle's "tell" on its last day, say); this only matters with
  ``train.bootstrap_on_truncation`` (the paper stores both as terminal).
* **episode_limit**: from the env's ``max_steps`` (or ``max_episode_steps``, ``max_cycles``,
  ``episode_limit``, ``time_limit``, or ``num_inner_steps * num_outer_steps``), plus one. JaxMARL
  envs differ in whether the step that reaches ``max_steps`` ends the episode (Overcooked,
  switch riddle) or one more step is taken (MPE and SMAX test ``step >= max_steps`` before
  counting the step, so an MPE episode has 26 steps with ``max_steps=25``): one spare slot
  covers both and costs one padded buffer slot. ``episode_limit=N`` (a wrapper option) sets the
  limit instead, for envs without one (Hanabi) or to cut long ones short. Either way the wrapper
  ends (truncates) an episode that reaches ``episode_limit`` steps, so the trainer's fixed
  episode length always holds.

Continuous (``Box``) action spaces are refused with one line, as are envs that do not follow
JaxMARL's dict-of-agents API (STORM). Keyword arguments are checked against what the env's
constructor reads (its signature and the ``**kwargs`` keys it looks up, following what it
forwards to), so a typo is refused with the bad key named instead of being silently ignored.
Within an episode the wrapped env steps exactly as the raw one: same keys, same observations,
rewards and ``__all__`` done flags (``tests/test_jaxmarl_env.py`` checks this).
"""

from __future__ import annotations

import ast
import difflib
import inspect
import math
import numbers
import textwrap
from typing import Any

import chex
import jax
import jax.numpy as jnp
from flax import struct

from envs._quiet import quiet_import
from envs.base import CromacEnv, EnvConfigError, Timestep

with quiet_import():
    import jaxmarl
    from jaxmarl.environments.multi_agent_env import MultiAgentEnv
    from jaxmarl.registration import registered_envs

PREFIX = "jaxmarl:"
#: Keyword arguments the wrapper takes itself (never passed to the JaxMARL env).
WRAPPER_OPTIONS = ("episode_limit", "agent_id")
#: Attributes that name an env's time limit, in the order they are looked for.
TIME_LIMIT_ATTRS = ("max_steps", "max_episode_steps", "max_cycles", "episode_limit", "time_limit")
#: ``info`` entries of ``step_env`` read as the episode's success flag, first found wins.
WON_INFO_KEYS = ("won", "battle_won", "success", "is_success")


def registered_names() -> list[str]:
    """The environment names ``jaxmarl.make`` knows (``jaxmarl.registration.registered_envs``)."""
    return list(registered_envs)


# ---------------------------------------------------------------------------------- kwargs
def _accepted_by(func: Any, owner: type, mro: tuple[type, ...], depth: int = 0) -> set[str] | None:
    """Keyword arguments a constructor reads: its named parameters, plus, if it takes
    ``**kwargs``, the keys it looks up there and what the callees it forwards them to accept.
    ``None`` when that cannot be told from the source (then nothing is refused)."""
    if depth > 8:
        return None
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return None
    named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"self"}
    var_kw = next((p.name for p in params if p.kind == p.VAR_KEYWORD), None)
    if var_kw is None:
        return named
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
    except (OSError, TypeError, SyntaxError):
        return None
    fn = tree.body[0]
    if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return None

    def is_kw(node: Any) -> bool:
        return isinstance(node, ast.Name) and node.id == var_kw

    uses = sum(1 for stmt in fn.body for n in ast.walk(stmt) if is_kw(n))
    explained = 0
    for n in (n for stmt in fn.body for n in ast.walk(stmt)):
        if isinstance(n, ast.Subscript) and is_kw(n.value) and isinstance(n.slice, ast.Constant):
            named.add(str(n.slice.value))
            explained += 1
        elif (
            isinstance(n, ast.Compare) and len(n.comparators) == 1 and is_kw(n.comparators[0])
            and isinstance(n.left, ast.Constant) and isinstance(n.ops[0], (ast.In, ast.NotIn))
        ):
            named.add(str(n.left.value))
            explained += 1
        elif (
            isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and is_kw(n.func.value)
            and n.func.attr in ("get", "pop", "setdefault") and n.args and isinstance(n.args[0], ast.Constant)
        ):
            named.add(str(n.args[0].value))
            explained += 1
        elif isinstance(n, ast.Call) and any(k.arg is None and is_kw(k.value) for k in n.keywords):
            explained += 1
            target = n.func
            if (
                isinstance(target, ast.Attribute) and target.attr == "__init__"
                and isinstance(target.value, ast.Call) and isinstance(target.value.func, ast.Name)
                and target.value.func.id == "super"
            ):
                later = mro[mro.index(owner) + 1:] if owner in mro else ()
                nxt = next((c for c in later if "__init__" in c.__dict__), None)
                if nxt is None:
                    return None
                sub = _accepted_by(nxt.__init__, nxt, mro, depth + 1)
            elif isinstance(target, ast.Name) and isinstance(func.__globals__.get(target.id), type):
                cls = func.__globals__[target.id]
                sub = _accepted_by(cls.__init__, cls, cls.__mro__, depth + 1)
            else:
                return None
            if sub is None:
                return None
            named |= sub
    return named if explained == uses else None


def accepted_kwargs(cls: type) -> set[str] | None:
    """What ``cls(**kw)`` reads, or ``None`` if that cannot be told (see ``_accepted_by``)."""
    return _accepted_by(cls.__init__, cls, cls.__mro__)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _check_kwargs(name: str, cls: type, kwargs: dict[str, Any]) -> None:
    accepted = accepted_kwargs(cls)
    if accepted is None:
        return
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        hints = [m for k in unknown for m in difflib.get_close_matches(k, accepted, n=1)]
        hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
        raise EnvConfigError(
            f"unknown keyword argument {', '.join(map(repr, unknown))} for jaxmarl env {name!r}{hint}; "
            f"it takes: {', '.join(sorted(accepted))}; the wrapper takes: {', '.join(WRAPPER_OPTIONS)}"
        )


def check_registered(name: str) -> None:
    """Refuse a name ``jaxmarl.make`` does not know, with the close matches (or the whole list)."""
    names = registered_names()
    if name not in names:
        lower = {n.lower(): n for n in names}
        close = difflib.get_close_matches(name.lower(), list(lower), n=3, cutoff=0.6)
        if close:
            listing = f"did you mean {', '.join(PREFIX + lower[c] for c in close)}?"
        else:
            listing = f"jaxmarl registers: {', '.join(names)}"
        raise EnvConfigError(f"unknown JaxMARL environment {name!r} ({listing})")


def build_raw(name: str, **kwargs: Any) -> MultiAgentEnv:
    """``jaxmarl.make(name, **kwargs)`` with a known name and keyword arguments it reads, or
    one ``EnvConfigError`` line saying why not."""
    check_registered(name)
    try:
        with quiet_import():
            env = jaxmarl.make(name, **kwargs)
    except Exception as e:  # noqa: BLE001  any failure (bad value, missing package) is reported in one line
        if kwargs:
            try:
                with quiet_import():
                    default = jaxmarl.make(name)
            except Exception:  # noqa: BLE001  then only jaxmarl's own error is reported
                default = None
            if default is not None:
                _check_kwargs(name, type(default), kwargs)
        raise EnvConfigError(f"jaxmarl env {name!r} could not be built: {_first_line(e)}") from None
    _check_kwargs(name, type(env), kwargs)
    return env


def make_jaxmarl(name: str, **kwargs: Any) -> JaxMARLEnv:
    """``envs.make("jaxmarl:NAME", **kwargs)``: wrapper options out, the rest to ``jaxmarl.make``."""
    options = {k: kwargs.pop(k) for k in WRAPPER_OPTIONS if k in kwargs}
    return JaxMARLEnv(build_raw(name, **kwargs), name=name, **options)


# ---------------------------------------------------------------------------------- wrapper
@struct.dataclass
class JaxMARLState:
    inner: Any  # the JaxMARL env's own state
    obs: chex.Array  # [N, O] float32, as the last reset/step returned them
    world_state: chex.Array  # [S] float32
    step: chex.Array  # [] int32, steps taken in this episode
    run: chex.Array  # unused run-level draw


def _space_kind(space: Any) -> str:
    return type(space).__name__


def _overrides(env: Any, method: str) -> bool:
    """Whether ``env`` implements ``method`` (not just JaxMARL's ``NotImplementedError`` stub)."""
    impl = getattr(type(env), method, None)
    if impl is None:
        impl = getattr(env, method, None)  # forwarded by __getattr__ (EnemySMAX wraps SMAX)
        return impl is not None and getattr(impl, "__func__", None) is not getattr(MultiAgentEnv, method, None)
    return impl is not getattr(MultiAgentEnv, method, None)


class JaxMARLEnv(CromacEnv):
    """A JaxMARL ``MultiAgentEnv`` with discrete actions, seen through ``CromacEnv``'s array core."""

    def __init__(self, env: MultiAgentEnv, name: str | None = None, episode_limit: int | None = None, agent_id: bool = False):
        name = name or type(env).__name__
        self.env_name = name
        self.env = env
        if not isinstance(agent_id, bool):
            raise EnvConfigError(f"jaxmarl wrapper option agent_id must be true or false, got {agent_id!r}")
        if episode_limit is not None and (
            not isinstance(episode_limit, int) or isinstance(episode_limit, bool) or episode_limit < 1
        ):
            raise EnvConfigError(f"jaxmarl wrapper option episode_limit must be an integer >= 1, got {episode_limit!r}")
        raw_agents = list(getattr(env, "agents", []) or [])
        if not raw_agents:
            raise EnvConfigError(f"jaxmarl env {name!r} lists no agents")

        # Actions: one Discrete space per agent; padded to the largest, extras masked.
        sizes = []
        for a in raw_agents:
            space = env.action_space(a)
            kind = _space_kind(space)
            if kind == "Box":
                hint = ""
                if "action_type" in inspect.signature(type(env).__init__).parameters:
                    hint = "; pass action_type='Discrete' (in a config: env.overrides.action_type: Discrete)"
                raise EnvConfigError(
                    f"jaxmarl env {name!r} has continuous actions (a Box action space for agent {a!r}); "
                    f"the CroMAC trainer needs discrete actions{hint}"
                )
            if kind != "Discrete" or not isinstance(getattr(space, "n", None), numbers.Integral):
                raise EnvConfigError(
                    f"jaxmarl env {name!r} has a {kind} action space for agent {a!r}; the wrapper supports Discrete only"
                )
            sizes.append(int(space.n))
        self.action_sizes = tuple(sizes)

        # Observations: traced once (no compile) to read the shapes the env really returns.
        key = jax.random.PRNGKey(0)
        try:
            obs, state = jax.eval_shape(env.reset, key)
        except Exception as e:  # noqa: BLE001  reported in one line
            raise EnvConfigError(f"jaxmarl env {name!r} cannot be reset: {_first_line(e)}") from None
        if not isinstance(obs, dict) or any(a not in obs for a in raw_agents):
            raise EnvConfigError(
                f"jaxmarl env {name!r} does not return observations keyed by agent name "
                f"(got {type(obs).__name__}); the wrapper needs JaxMARL's dict-of-agents API"
            )
        for a in raw_agents:
            if not isinstance(obs[a], jax.ShapeDtypeStruct):
                raise EnvConfigError(f"jaxmarl env {name!r} returns a structured observation for agent {a!r}; the wrapper needs arrays")
        self.obs_sizes = tuple(int(math.prod(obs[a].shape)) for a in raw_agents)
        self.agent_id = agent_id
        self._pad_obs_dim = max(self.obs_sizes)
        n = len(raw_agents)
        obs_dim = self._pad_obs_dim + (n if agent_id else 0)

        # Global state: the env's own where it has one, else the concatenated observations.
        if "world_state" in obs and "world_state" not in raw_agents:
            self.state_source = "obs:world_state"
            state_dim = int(math.prod(obs["world_state"].shape))
        elif "state" in obs and "state" not in raw_agents:
            self.state_source = "obs:state"
            state_dim = int(math.prod(obs["state"].shape))
        elif _overrides(env, "get_world_state"):
            self.state_source = "get_world_state"
            try:
                ws = jax.eval_shape(env.get_world_state, state)
                state_dim = int(math.prod(ws.shape))
            except Exception:  # noqa: BLE001  no usable world state: fall back to the observations
                self.state_source = "concat"
                state_dim = sum(self.obs_sizes)
        else:
            self.state_source = "concat"
            state_dim = sum(self.obs_sizes)

        # Available actions.
        self.avail_source = None
        for method in ("get_avail_actions", "get_legal_moves"):
            if method == "get_avail_actions" and not _overrides(env, method):
                continue
            if not hasattr(env, method):
                continue
            try:
                avail = jax.eval_shape(getattr(env, method), state)
                fits = all(math.prod(avail[a].shape) == n_i for a, n_i in zip(raw_agents, sizes, strict=True))
            except Exception:  # noqa: BLE001  a stub or another layout: not an avail mask we can use
                fits = False
            if fits:
                self.avail_source = method
                break

        # SMAX family: the battle outcome from the units alive (info is empty there).
        self._smax = hasattr(env, "num_allies") and (
            hasattr(state, "unit_alive") or hasattr(getattr(state, "state", None), "unit_alive")
        )

        # Time limit.
        self.time_limit = self._find_time_limit(env)
        if episode_limit is None:
            if self.time_limit is None:
                raise EnvConfigError(
                    f"jaxmarl env {name!r} has no time limit the wrapper can find (looked for "
                    f"{', '.join(TIME_LIMIT_ATTRS)}, num_inner_steps * num_outer_steps); pass episode_limit=N "
                    f"(env.overrides.episode_limit in a config) to end its episodes after N steps"
                )
            episode_limit = self.time_limit + 1

        super().__init__(
            n_agents=n,
            obs_dim=obs_dim,
            state_dim=state_dim,
            n_actions=max(sizes),
            episode_limit=episode_limit,
        )
        # JaxMARL users index by the env's own agent names.
        self.agents = raw_agents
        self.observation_spaces = {a: self.observation_spaces[f"agent_{i}"] for i, a in enumerate(raw_agents)}
        self.action_spaces = {a: self.action_spaces[f"agent_{i}"] for i, a in enumerate(raw_agents)}
        valid = jnp.arange(self.n_actions)[None, :] < jnp.asarray(sizes)[:, None]
        self._valid_actions = valid  # [N, A] bool: the actions each agent has at all
        self._last_action = jnp.asarray(sizes, jnp.int32) - 1

    @staticmethod
    def _find_time_limit(env: Any) -> int | None:
        for attr in TIME_LIMIT_ATTRS:
            v = getattr(env, attr, None)
            if isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1:
                return int(v)
        inner, outer = getattr(env, "num_inner_steps", None), getattr(env, "num_outer_steps", None)
        if all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1 for v in (inner, outer)):
            return int(inner) * int(outer)
        return None

    def __repr__(self) -> str:
        return f"JaxMARLEnv({self.env_name!r})"

    # ------------------------------------------------------------------ conversions
    def _stack_obs(self, obs: dict[str, chex.Array]) -> chex.Array:
        rows = []
        for a in self.agents:
            x = jnp.ravel(obs[a]).astype(jnp.float32)
            rows.append(jnp.pad(x, (0, self._pad_obs_dim - x.shape[0])))
        out = jnp.stack(rows)
        if self.agent_id:
            out = jnp.concatenate([out, jnp.eye(self.n_agents, dtype=jnp.float32)], axis=1)
        return out

    def _state_from(self, obs: dict[str, chex.Array], inner: Any) -> chex.Array:
        if self.state_source == "obs:world_state":
            ws = obs["world_state"]
        elif self.state_source == "obs:state":
            ws = obs["state"]
        elif self.state_source == "get_world_state":
            ws = self.env.get_world_state(inner)
        else:
            ws = jnp.concatenate([jnp.ravel(obs[a]).astype(jnp.float32) for a in self.agents])
        return jnp.ravel(ws).astype(jnp.float32)

    def _wrap(self, obs: dict[str, chex.Array], inner: Any, step: chex.Array, run: Any) -> JaxMARLState:
        return JaxMARLState(
            inner=inner,
            obs=self._stack_obs(obs),
            world_state=self._state_from(obs, inner),
            step=jnp.asarray(step, jnp.int32),
            run=run,
        )

    def _smax_outcome(self, inner: Any) -> tuple[chex.Array, chex.Array]:
        """(won, a team wiped out) of a SMAX-family state."""
        s = inner if hasattr(inner, "unit_alive") else inner.state
        allies = self.env.num_allies
        ally_alive = jnp.any(s.unit_alive[:allies])
        enemy_alive = jnp.any(s.unit_alive[allies:])
        return ally_alive & ~enemy_alive, ~(ally_alive & enemy_alive)

    # ------------------------------------------------------------------ array core
    def _reset(self, key: chex.PRNGKey, run: Any) -> JaxMARLState:
        obs, inner = self.env.reset(key)
        return self._wrap(obs, inner, 0, run)

    def _obs(self, state: JaxMARLState) -> chex.Array:
        return state.obs

    def _world_state(self, state: JaxMARLState) -> chex.Array:
        return state.world_state

    def _avail(self, state: JaxMARLState) -> chex.Array:
        if self.avail_source is None:
            return self._valid_actions
        d = getattr(self.env, self.avail_source)(state.inner)
        rows = [
            jnp.pad(jnp.ravel(d[a]).astype(bool), (0, self.n_actions - n_i))
            for a, n_i in zip(self.agents, self.action_sizes, strict=True)
        ]
        return jnp.stack(rows)

    def reset_arrays(self, key: chex.PRNGKey, run: Any = None) -> tuple[Timestep, Any]:
        """Start an episode with ``env.reset(key)``: the same key gives the raw env's episode."""
        if run is None:
            run = self.init_run(key)  # nothing random: the key goes to the env unchanged
        state = self._reset(key, run)
        false = jnp.zeros((), bool)
        return self._timestep(state, 0.0, false, false, false), state

    def step_arrays(self, key: chex.PRNGKey, state: JaxMARLState, actions: chex.Array) -> tuple[Timestep, Any]:
        """One ``env.step_env`` (no auto-reset); ``actions`` int32 [N]. See the module docstring
        for how ``dones["__all__"]`` becomes terminated / truncated."""
        actions = jnp.minimum(jnp.asarray(actions, jnp.int32), self._last_action)
        act = {a: actions[i] for i, a in enumerate(self.agents)}
        obs, inner, rewards, dones, info = self.env.step_env(key, state.inner, act)
        step = state.step + 1
        new = self._wrap(obs, inner, step, state.run)
        reward = jnp.mean(jnp.stack([jnp.asarray(rewards[a], jnp.float32).reshape(()) for a in self.agents]))
        env_done = jnp.asarray(dones["__all__"], bool).reshape(())
        limit = self.episode_limit if self.time_limit is None else min(self.time_limit, self.episode_limit)
        if self._smax:
            won, wiped_out = self._smax_outcome(inner)
            terminated = env_done & wiped_out
        else:
            terminated = env_done & (step < limit)
            won = jnp.zeros((), bool)
            for k in WON_INFO_KEYS:
                if isinstance(info, dict) and k in info:
                    won = jnp.any(jnp.asarray(info[k]).astype(bool))
                    break
        done = env_done | (step >= self.episode_limit)
        truncated = done & ~terminated
        ts = Timestep(
            obs=new.obs,
            world_state=new.world_state,
            avail=self._avail(new),
            reward=reward,
            terminated=terminated,
            truncated=truncated,
            won=won,
        )
        return ts, new
