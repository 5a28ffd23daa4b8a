"""One registry for every environment preset: ``envs.make(name, **overrides)``.

A preset is a constructor plus the keyword arguments that define it. Overrides replace those
arguments; unknown keys and bad values are refused with one line that names them, so a typo in
a config never silently trains on a different task.

Besides the presets, ``make("jaxmarl:NAME", **kwargs)`` wraps any discrete-action environment
that ``jaxmarl.make(NAME, **kwargs)`` builds (``envs/jaxmarl_env.py``); those names are not listed
by ``preset_names()`` (JaxMARL's own list is ``jaxmarl.registration.registered_envs``).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from envs.base import CromacEnv, EnvConfigError


@dataclass(frozen=True)
class Preset:
    """A named constructor call; ``factory`` may be ``"module:Class"`` so modules load lazily."""

    name: str
    factory: Callable[..., Any] | str
    kwargs: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    def resolve(self) -> Callable[..., Any]:
        if isinstance(self.factory, str):
            module, _, attr = self.factory.partition(":")
            return getattr(importlib.import_module(module), attr)
        return self.factory


_PRESETS: dict[str, Preset] = {}

#: ``make("jaxmarl:NAME")`` wraps JaxMARL's own environment ``NAME``.
JAXMARL_PREFIX = "jaxmarl:"


def is_jaxmarl(name: Any) -> bool:
    return isinstance(name, str) and name.startswith(JAXMARL_PREFIX)


def register(name: str, factory: Callable[..., Any] | str, description: str = "", **kwargs: Any) -> None:
    """Add a preset. Later issues (SMAX stand-ins, JaxMARL envs) register theirs here too."""
    if name in _PRESETS:
        raise EnvConfigError(f"environment preset {name!r} is already registered")
    _PRESETS[name] = Preset(name, factory, dict(kwargs), description)


def preset_names() -> list[str]:
    return sorted(_PRESETS)


def get_preset(name: str) -> Preset:
    if name not in _PRESETS:
        close = difflib.get_close_matches(name, _PRESETS, n=3, cutoff=0.4)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise EnvConfigError(
            f"unknown environment {name!r}{hint}; valid choices: {', '.join(preset_names())}, "
            f"or {JAXMARL_PREFIX}NAME for a JaxMARL environment"
        )
    return _PRESETS[name]


def check_name(name: str) -> None:
    """Refuse (one ``EnvConfigError`` line) a name that ``make`` cannot resolve, building nothing:
    a preset, or ``jaxmarl:NAME`` with NAME one of JaxMARL's registered environments."""
    if is_jaxmarl(name):
        from envs.jaxmarl_env import check_registered

        check_registered(name[len(JAXMARL_PREFIX):])
    else:
        get_preset(name)


def make(name: str, **overrides: Any) -> CromacEnv:
    """Build the preset ``name`` with its defaults replaced by ``overrides``; for
    ``"jaxmarl:NAME"``, wrap ``jaxmarl.make(NAME, **overrides)`` (``envs/jaxmarl_env.py``)."""
    if is_jaxmarl(name):
        from envs.jaxmarl_env import make_jaxmarl

        return make_jaxmarl(name[len(JAXMARL_PREFIX):], **overrides)
    preset = get_preset(name)
    factory = preset.resolve()
    params = inspect.signature(factory).parameters
    accepted = [p for p in params if p != "self"]
    unknown = sorted(set(overrides) - set(accepted))
    if unknown:
        raise EnvConfigError(
            f"unknown override {', '.join(map(repr, unknown))} for environment {name!r}; "
            f"valid keys: {', '.join(accepted)}"
        )
    return factory(**{**preset.kwargs, **overrides})


def _register_builtin() -> None:
    Hallway = "envs.hallway:Hallway"
    LevelBasedForaging = "envs.lbf:LevelBasedForaging"
    TrafficJunction = "envs.traffic_junction:TrafficJunction"
    SmaxComm = "envs.smax_comm:SmaxComm"

    register("hallway_4x5x6", Hallway, "hallway, corridors 4,5,6 (3 agents)", state_numbers=(4, 5, 6))
    register(
        "hallway_3x3x4x4", Hallway, "hallway, corridors 3,3,4,4 (4 agents)", state_numbers=(3, 3, 4, 4)
    )
    register("lbf_3p1f", LevelBasedForaging, "LBF 8x8, 3 players, 1 food, T=25", n_players=3, time_limit=25)
    register("lbf_4p1f", LevelBasedForaging, "LBF 8x8, 4 players, 1 food, T=15", n_players=4, time_limit=15)
    register("tj_slow", TrafficJunction, "traffic junction easy, 5 cars, arrival 0.3", n_cars=5, arrival_rate=0.3)
    register("tj_fast", TrafficJunction, "traffic junction easy, 4 cars, arrival 0.4", n_cars=4, arrival_rate=0.4)
    register("smax_1o2r_vs_4r", SmaxComm, "SMAX stand-in for SMAC 1o_2r_vs_4r (3 agents)", map_name="1o_2r_vs_4r")
    register("smax_1o10b_vs_1r", SmaxComm, "SMAX stand-in for SMAC 1o_10b_vs_1r (11 agents)", map_name="1o_10b_vs_1r")


_register_builtin()
