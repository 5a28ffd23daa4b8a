"""Typed, frozen run configuration: YAML in, validated dataclasses out.

A config file is data (``yaml.safe_load``), never code. Every key is checked against the
dataclasses below: an unknown key, a wrong type or an out-of-range value raises ``ConfigError``
with one line naming the key path, the value and what is allowed, before anything is compiled.
Defaults are the paper's official hyperparameters for hallway 4x5x6 (``HYPERPARAMS.md``); each
environment's official settings override what differs. Those are embedded here (``ENV_DEFAULTS``),
so an installed package needs no data files; ``configs/<preset>.yaml`` mirrors them for users to
read and copy (a test keeps the two equal).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import yaml


class ConfigError(ValueError):
    """A config key, type or value that cannot describe a run."""


METHODS = ("qmix", "full_comm", "cromac", "cromac_no_robust", "ame")
MIXERS = ("qmix", "vdn", "qplex")


@dataclass(frozen=True)
class EnvConfig:
    """Which environment preset, and overrides of its constructor arguments."""

    name: str = "hallway_4x5x6"
    overrides: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ModelConfig:
    """Network sizes (HYPERPARAMS.md: agent, encoders, Q head, mixers)."""

    rnn_hidden: int = 16
    z_dim: int = 16
    vae_hidden: int = 32
    q_hidden: int = 16
    mixer: str = "qmix"
    mixer_embed: int = 32
    hypernet_hidden: int = 64
    qplex_heads: int = 4
    #: AME: messages kept per decision (k) and the most subsets voted at test time (D).
    ame_k: int = 1
    ame_max_subsets: int = 16


CLAMP_LAYERS = ("all", "first")
LOSS_REDUCTIONS = ("official", "episode_limit")

#: Seeds become 32-bit PRNG keys (jax without x64 keeps the low 32 bits, so seeds 2**32 apart would
#: silently train the same run); runs add offsets of about 10**6 for their test and eval keys.
SEED_LIMIT = 2**31
#: Env-step counts are int32 on device (jax without x64) and a run overshoots its budget by up to
#: one chunk, so budgets and the points in a run they schedule stay well inside int32.
STEP_LIMIT = 2**30
_STEP_KEYS = ("train.t_max", "train.epsilon_anneal_time", "train.test_interval", "train.checkpoint_interval",
              "cromac.robust_start", "cromac.clamp_start")


@dataclass(frozen=True)
class CromacConfig:
    """The robustness knobs of CroMAC (paper eq. 17; HYPERPARAMS.md per-env table)."""

    eps: float = 0.05
    kappa: float = 5.0
    weight_clamp: float = 0.1
    robust_weight: float = 0.3
    vae_loss_weight: float = 0.1
    poe_loss_weight: float = 0.001
    robust_start: int = 700_000
    #: env steps from which the message encoder's weights are clamped to +-weight_clamp; -1 (the
    #: official code): together with robust training, at robust_start. An experiment knob for the
    #: PoE collapse at robust_start (README, Results): clamping from 0 keeps the encoder inside the
    #: certificate's box throughout, but on hallway it starved the PoE from the start (measured).
    clamp_start: int = -1
    #: which message-encoder parameters the clamp bounds: "all" weights and biases (the official
    #: code, HYPERPARAMS.md) or only the "first" layer's weight, the W acting on the message in the
    #: paper's eq. 12 ("only W bounded", section 4.2). An experiment knob for the same collapse.
    clamp_layers: str = "all"
    #: how the per-slot VAE, PoE and robust losses become one number each. "official" (the official
    #: code): summed over the batch's filled slots and divided by batch size x the longest episode's
    #: filled slots (pymarl's max_seq_length once a sampled batch is truncated to max_t_filled), the
    #: robust loss averaged over agents. "episode_limit": divided by batch size x (episode_limit + 1)
    #: and the robust loss summed over agents: what cromac-jax did before 2026-11-29, so what the
    #: recorded Table-1 runs trained with. Late in a run, when episodes are short, "official" weighs
    #: the VAE and PoE losses up to (episode_limit + 1) / longest episode times more, and the robust
    #: loss that over n_agents.
    loss_reduction: str = "official"


@dataclass(frozen=True)
class TrainConfig:
    """The run: budget, collection, replay and optimisation (HYPERPARAMS.md 'Common')."""

    method: str = "cromac"
    seed: int = 0
    num_seeds: int = 1
    t_max: int = 2_050_000
    num_envs: int = 8
    updates_per_iteration: int = 0  # 0 = one update per collected episode (the official ratio)
    batch_size: int = 32
    buffer_size: int = 5000
    learning_starts: int = 32  # episodes in the buffer before the first update
    lr: float = 5e-4
    grad_clip: float = 10.0
    gamma: float = 0.99
    target_update_interval: int = 200  # learner updates
    epsilon_start: float = 1.0
    epsilon_finish: float = 0.05
    epsilon_anneal_time: int = 150_000  # env steps
    standardise_rewards: bool = True
    bootstrap_on_truncation: bool = False  # the paper stores timeouts as terminal
    test_interval: int = 10_000  # env steps
    test_nepisode: int = 20
    chunk_iterations: int = 0  # 0 = choose from test_interval
    slot_buckets: int = 4  # learner batches are trimmed to one of this many lengths; 1 = never trim
    checkpoint_interval: int = 100_000  # env steps
    tensorboard: bool = True  # also write TensorBoard events when tensorboardX is installed
    run_dir: str = "runs"


@dataclass(frozen=True)
class Config:
    env: EnvConfig = field(default_factory=EnvConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    cromac: CromacConfig = field(default_factory=CromacConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> "Config":
        _validate(self)
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------- validation
def _check(ok: bool, path: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"config {path}={value!r} is invalid: {allowed}")


def _validate(cfg: Config) -> None:
    m, c, t = cfg.model, cfg.cromac, cfg.train
    _check(m.mixer in MIXERS, "model.mixer", m.mixer, f"choose one of {', '.join(MIXERS)}")
    _check(t.method in METHODS, "train.method", t.method, f"choose one of {', '.join(METHODS)}")
    for name in ("rnn_hidden", "z_dim", "vae_hidden", "q_hidden", "mixer_embed", "hypernet_hidden", "qplex_heads", "ame_k", "ame_max_subsets"):
        _check(getattr(m, name) >= 1, f"model.{name}", getattr(m, name), "must be >= 1")
    _check(c.eps >= 0, "cromac.eps", c.eps, "the perturbation budget must be >= 0")
    _check(c.kappa >= 0, "cromac.kappa", c.kappa, "must be >= 0")
    _check(c.weight_clamp > 0, "cromac.weight_clamp", c.weight_clamp, "C_MAX must be > 0")
    for name in ("robust_weight", "vae_loss_weight", "poe_loss_weight"):
        _check(getattr(c, name) >= 0, f"cromac.{name}", getattr(c, name), "must be >= 0")
    _check(c.robust_start >= 0, "cromac.robust_start", c.robust_start, "must be >= 0")
    _check(c.clamp_layers in CLAMP_LAYERS, "cromac.clamp_layers", c.clamp_layers, f"choose one of {', '.join(CLAMP_LAYERS)}")
    _check(c.loss_reduction in LOSS_REDUCTIONS, "cromac.loss_reduction", c.loss_reduction, f"choose one of {', '.join(LOSS_REDUCTIONS)}")
    _check(c.clamp_start >= -1, "cromac.clamp_start", c.clamp_start, "must be >= 0, or -1 for 'at robust_start'")
    for name in ("num_seeds", "t_max", "num_envs", "batch_size", "buffer_size", "target_update_interval", "test_interval", "checkpoint_interval", "slot_buckets"):
        _check(getattr(t, name) >= 1, f"train.{name}", getattr(t, name), "must be >= 1")
    for name in ("updates_per_iteration", "chunk_iterations", "test_nepisode", "epsilon_anneal_time", "learning_starts", "seed"):
        _check(getattr(t, name) >= 0, f"train.{name}", getattr(t, name), "must be >= 0")
    _check(t.seed < SEED_LIMIT, "train.seed", t.seed, f"must be < 2**31 ({SEED_LIMIT})")
    for path in _STEP_KEYS:
        sec, name = path.split(".")
        value = getattr(getattr(cfg, sec), name)
        _check(value < STEP_LIMIT, path, value, f"must be < 2**30 ({STEP_LIMIT:,}): env steps are counted in int32")
    for name, sec in (("model", m), ("train", t), ("cromac", c)):  # int32 arrays or shapes on device
        for f in fields(sec):
            value = getattr(sec, f.name)
            if type(value) is int:
                _check(value < SEED_LIMIT, f"{name}.{f.name}", value, "must be < 2**31")
    _check(t.batch_size <= t.buffer_size, "train.batch_size", t.batch_size, f"must be <= train.buffer_size ({t.buffer_size})")
    _check(t.lr > 0, "train.lr", t.lr, "must be > 0")
    _check(t.grad_clip > 0, "train.grad_clip", t.grad_clip, "must be > 0")
    _check(0 <= t.gamma <= 1, "train.gamma", t.gamma, "must be in [0, 1]")
    for name in ("epsilon_start", "epsilon_finish"):
        _check(0 <= getattr(t, name) <= 1, f"train.{name}", getattr(t, name), "must be in [0, 1]")


# ---------------------------------------------------------------------------------- loading
#: What a float field accepts as text: YAML 1.1 (PyYAML) reads ``1e-3`` (no dot) as a string.
_FLOAT_TEXT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _as_float(value: Any) -> Any:
    """A float field's number written as ``1e-3`` (a string to YAML 1.1) becomes that float."""
    if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
        return float(value)
    return value


def _type_problem(value: Any, annotation: Any) -> str | None:
    """Why ``value`` cannot fill a field of type ``annotation`` (None: it can). A number of the
    right kind that does not fit (an int past int64, one too large for a float) is out of range,
    not the wrong type."""
    tname = getattr(annotation, "__name__", str(annotation))
    wrong = f"has the wrong type: expected {tname}"
    integer = isinstance(value, int) and not isinstance(value, bool)
    if annotation is bool:
        return None if isinstance(value, bool) else wrong
    if annotation is int:
        if not integer:
            return wrong
        return None if -(2**63) <= value < 2**63 else f"is out of range for {tname}"
    if annotation is float:
        if not (integer or isinstance(value, float)):
            return wrong
        try:
            finite = math.isfinite(value)
        except OverflowError:  # an int too large for a float
            return f"is out of range for {tname}"
        return None if finite else "must be a finite number"
    if annotation is str:
        return None if isinstance(value, str) else wrong
    if annotation is dict:
        return None if isinstance(value, Mapping) else wrong
    return None


def _build(cls: type, data: Any, path: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"config {path or '<root>'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{path}.{key}" if path else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {path + '.' if path else ''}{close[0]}?)" if close else ""
            raise ConfigError(f"unknown config key {full!r}{hint}; valid keys: {', '.join(names)}")
        hint_t = hints[key]
        if dataclasses.is_dataclass(hint_t):
            kwargs[key] = _build(hint_t, value, full)
            continue
        if hint_t is float:
            value = _as_float(value)
        problem = _type_problem(value, hint_t)
        if problem is not None:
            raise ConfigError(f"config {full}={_short(value)} {problem}")
        kwargs[key] = float(value) if hint_t is float else value
    return cls(**kwargs)


def _short(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut: a 400-digit number in an error line helps nobody."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge two nested dicts (``update`` wins); lists and scalars are replaced."""
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) and k != "overrides":
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def from_dict(data: Mapping[str, Any]) -> Config:
    return _build(Config, data, "").validate()


#: Keys added to saved configs after runs existed, with what a run saved without them trained with
#: (not today's default): resuming, evaluating or plotting such a run must not change its settings.
EARLIER_LOSS_REDUCTION = "episode_limit"
_SAVED_BEFORE = {"cromac": {"loss_reduction": EARLIER_LOSS_REDUCTION}}


def from_saved(data: Mapping[str, Any]) -> Config:
    """A config a run saved (its ``config.yaml``, a checkpoint's metadata), keys it predates read
    as that run trained with them (``_SAVED_BEFORE``)."""
    data = dict(data)
    for sec, keys in _SAVED_BEFORE.items():
        saved = data.get(sec, {})
        if isinstance(saved, Mapping):
            data[sec] = {**{k: v for k, v in keys.items() if k not in saved}, **saved}
    return from_dict(data)


def check_output_dir(path: str | Path, what: str) -> Path:
    """Refuse, before anything runs, a directory to write into that cannot be one: it, or a
    directory above it, is a file (else the refusal is a traceback after training has started)."""
    p = Path(path)
    for q in (p, *p.parents):
        if q.exists():
            if not q.is_dir():
                raise ConfigError(f"{what} {str(path)!r} cannot be a directory: {str(q)!r} is a file")
            break
    return p


def differing_keys(a: Config, b: Config) -> list[str]:
    """The ``section.key`` names whose values differ between two configs (in ``b``'s order)."""
    da = a.to_dict()
    return [f"{sec}.{k}" for sec, d in b.to_dict().items() if isinstance(d, dict)
            for k in d if da.get(sec, {}).get(k) != d[k]]


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["train.t_max=1000", "model.mixer=vdn"]`` -> nested dict; values parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, _, raw = item.partition("=")
        parts = key.split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r} must look like section.key=value")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({str(e).splitlines()[0]})") from None
        node = out
        for i, p in enumerate(parts[:-1]):
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} reaches into {'.'.join(parts[: i + 1])}, which an earlier override set to a value")
        node[parts[-1]] = value
    return out


#: The official per-environment hyperparameters (HYPERPARAMS.md), applied under any user config
#: that names the environment. ``configs/<preset>.yaml`` mirror these (a test keeps them equal).
_COMMON_32 = {"model": {"rnn_hidden": 32, "z_dim": 32, "vae_hidden": 64}}
_SMAC = {"model": {"rnn_hidden": 64, "z_dim": 64, "vae_hidden": 128}, "train": {"test_nepisode": 10, "epsilon_anneal_time": 300_000}}
ENV_DEFAULTS: dict[str, dict[str, Any]] = {
    "hallway_4x5x6": {
        "cromac": {"eps": 0.05, "kappa": 5.0, "weight_clamp": 0.1, "robust_weight": 0.3, "vae_loss_weight": 0.1, "poe_loss_weight": 0.001, "robust_start": 700_000},
        "train": {"epsilon_anneal_time": 150_000},
    },
    "hallway_3x3x4x4": {
        "cromac": {"eps": 0.05, "kappa": 10.0, "weight_clamp": 0.2, "robust_weight": 0.3, "vae_loss_weight": 0.1, "poe_loss_weight": 0.001, "robust_start": 700_000},
        "train": {"epsilon_anneal_time": 150_000},
    },
    "lbf_3p1f": merge(_COMMON_32, {
        "cromac": {"eps": 0.03, "kappa": 5.0, "weight_clamp": 0.3, "robust_weight": 0.05, "vae_loss_weight": 0.01, "poe_loss_weight": 0.001, "robust_start": 800_000},
        "train": {"epsilon_anneal_time": 250_000},
    }),
    "lbf_4p1f": merge(_COMMON_32, {
        "cromac": {"eps": 0.05, "kappa": 10.0, "weight_clamp": 0.3, "robust_weight": 0.05, "vae_loss_weight": 0.01, "poe_loss_weight": 0.001, "robust_start": 800_000},
        "train": {"epsilon_anneal_time": 250_000},
    }),
    "tj_slow": merge(_COMMON_32, {
        "cromac": {"eps": 0.0005, "kappa": 10.0, "weight_clamp": 0.3, "robust_weight": 0.3, "vae_loss_weight": 0.01, "poe_loss_weight": 0.001, "robust_start": 1_000_000},
        "train": {"epsilon_anneal_time": 250_000},
    }),
    "tj_fast": merge(_COMMON_32, {
        "cromac": {"eps": 0.001, "kappa": 10.0, "weight_clamp": 0.6, "robust_weight": 0.3, "vae_loss_weight": 0.01, "poe_loss_weight": 0.001, "robust_start": 1_000_000},
        "train": {"epsilon_anneal_time": 250_000},
    }),
    "smax_1o10b_vs_1r": merge(_SMAC, {
        "cromac": {"eps": 0.0075, "kappa": 10.0, "weight_clamp": 0.3, "robust_weight": 0.3, "vae_loss_weight": 0.01, "poe_loss_weight": 0.01, "robust_start": 1_000_000},
    }),
    "smax_1o2r_vs_4r": merge(_SMAC, {
        "cromac": {"eps": 0.015, "kappa": 10.0, "weight_clamp": 0.2, "robust_weight": 0.1, "vae_loss_weight": 0.01, "poe_loss_weight": 0.01, "robust_start": 1_000_000},
    }),
}


#: What ``cromac train`` runs with no config, env or method given: CroMAC on hallway 4x5x6 with the
#: paper's hyperparameters but a short schedule (3 seeds x 450k env steps, epsilon annealed over
#: 50k, robust training from 250k), so a first run learns and shows the effect of robust training
#: in about 25 minutes on a 2-core CPU (a few on a GPU). The paper's own protocol (2.05M steps,
#: robust from 700k) is ``--config configs/hallway_4x5x6.yaml``.
QUICK_DEFAULT: dict[str, Any] = {
    "env": {"name": "hallway_4x5x6"},
    "train": {"method": "cromac", "num_seeds": 3, "t_max": 450_000, "epsilon_anneal_time": 50_000, "test_interval": 25_000},
    "cromac": {"robust_start": 250_000},
}


def resolve(data: Mapping[str, Any]) -> Config:
    """User data over the named environment's official defaults over the dataclass defaults."""
    env = data.get("env", {}) if isinstance(data.get("env", {}), Mapping) else {}
    name = env.get("name", EnvConfig().name)
    base = ENV_DEFAULTS.get(name, {}) if isinstance(name, str) else {}
    return from_dict(merge(base, data))


def read_yaml_mapping(path: Path, what: str = "config file", error: type[Exception] = ConfigError) -> dict[str, Any]:
    """The mapping a YAML file holds (``yaml.safe_load``: user files are data, never code), or one
    ``error`` line naming the file. The one reader of user config files and run dirs' config.yaml."""
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise error(f"{what} {str(path)!r} is not valid YAML: {str(e).splitlines()[0]}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"cannot read {what} {str(path)!r}: {e}".replace("\n", " ")) from None
    if loaded is None:
        return {}
    if not isinstance(loaded, Mapping):
        raise error(f"{what} {str(path)!r} must hold a mapping at the top level")
    return dict(loaded)


def load(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or the defaults), apply ``key=value`` overrides and validate.

    Precedence: dataclass defaults < the environment's official hyperparameters < the file <
    the overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} " + ("is a directory, not a file" if p.is_dir() else "does not exist"))
        data = read_yaml_mapping(p)
    if overrides:
        data = merge(data, parse_overrides(overrides))
    return resolve(data)


def replace(cfg: Config, **sections: Mapping[str, Any]) -> Config:
    """Return ``cfg`` with some fields of some sections replaced, validated (for tests and scripts)."""
    return from_dict(merge(cfg.to_dict(), sections))



