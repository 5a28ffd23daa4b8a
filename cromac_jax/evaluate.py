"""Checkpoint evaluation under message attacks (the paper's Table 1) and certified-action rates.

Typical use::

    run = load_run("runs/my_run")                     # latest checkpoint, every seed
    res = evaluate(run, "fgsm", episodes=200)         # eps defaults to cromac.eps
    rows = eval_grid(run)                             # the Table 1 grid; writes eval_<step>.md/.csv/.json

or ``cromac eval RUN_DIR [--checkpoint latest|STEP] [--attacks ...] [--budgets ...]``.

One path for every attack. :func:`evaluate` plays greedy test episodes with ``Trainer.test``, the
function the training loop's periodic tests use, passing the attack through; built-in attacks
(``attacks.ATTACKS``) and custom ones are the same kind of argument, so they cannot drift apart.
An attack is ``attack(key, q_fn, hidden, messages, avail, eps, own_mask) -> messages`` (see
``attacks.py``); ``eps`` is a traced argument, so one compiled program serves every budget.
Seeds and episodes are vmapped inside one jitted call; seed ``s`` uses ``fold_in(key, s)``, and
every attack and budget sees the same episode keys (common random numbers: a method that ignores
messages, such as qmix, plays identical episodes under every attack).

Budgets are multiples of the config eps (``cromac.eps``); ``attacks.DEFAULT_BUDGETS`` and the
attacks module's docstring explain the default ladder (Table 1's FGSM (1), (2), FGSM, (3), (4)).

Certified actions. :func:`certified_rate` plays the clean greedy episodes (the ``natural`` ones,
same keys) and counts the decisions whose greedy action provably cannot change under any
perturbation of the received messages within eps (every channel, the agent's own hidden state
included, unless ``attack_own=False``). A *decision* is an (episode, step, agent) with the step
actually taken (``t < episode length``) and at least two available actions (an agent with a
single available action, e.g. a dead unit, has nothing an attacker can flip). Per method:

* ``cromac`` / ``cromac_no_robust`` / ``full_comm``: interval bound propagation through the
  message path (``CromacModel.q_bounds_messages``) and ``ibp.certified`` (lower bound of the
  greedy action >= upper bound of every other available action).
* ``qmix``: 1.0 by definition -- its Q-values do not read messages, so no message perturbation
  can change a decision.
* ``ame``: its decision is a vote over ensemble members. A member whose greedy pick is
  IBP-certified (bounds through its ablated Q-head input) keeps its vote; every other member may
  vote for anything. The decision is certified when the winner's sure votes beat every other
  available action's sure votes plus all the unsure members (ties broken towards the lower
  action index, as the vote does). Sound, and cheap; note that under this threat model every
  channel is perturbed, so AME's own certificate (a bounded number of corrupted channels) does
  not apply -- this IBP-per-member count is the honest replacement.

Ties between Q-values count as certified (``ibp.certified``); they have measure zero.

State latent. For the CroMAC methods :func:`evaluate_state_latent` plays the same keys with the
Q head fed the state latent's mean (what training acts on) instead of the PoE of the messages;
:func:`eval_grid` reports it next to the certified rate, so a failing message encoder shows as a
gap between it and ``natural``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence, TextIO

import jax
import jax.numpy as jnp
import numpy as np

from cromac_jax import attacks as A
from cromac_jax import ibp
from cromac_jax.config import Config, ConfigError
from cromac_jax.methods import get_method
from cromac_jax.reporting import json_safe
from cromac_jax.networks import masked_argmax

# checkpoint (orbax), runner/train (environments, jaxmarl) are imported inside the functions that
# need them: importing them costs ~5 s, and ``add_eval_parser`` is called to build the CLI parser.
if TYPE_CHECKING:
    from cromac_jax.networks import CromacModel
    from cromac_jax.train import Trainer

#: Test episodes per seed by default (Table 1: 1000 episodes over 5 seeds).
DEFAULT_EPISODES = 200
DEFAULT_ATTACKS: tuple[str, ...] = ("natural", "random", "fgsm", "pgd")
#: The default evaluation key is PRNGKey(train.seed + EVAL_KEY_OFFSET) (training tests use another).
EVAL_KEY_OFFSET = 2_000_003



# ============================================================================== the loaded run
@dataclass(frozen=True, eq=False)
class Run:
    """A configured run with the parameters of every seed at one checkpoint.

    ``params`` and ``env_run`` are stacked over seeds (leading axis S). The methods below are
    the pure, jit-able functions of one decision step for ONE seed's parameters
    (``run.seed_params(s)``); hidden states are [N, H], messages [N, M, H] (row i: what
    receiver i gets), avail [N, A] bool. The order inside a step is::

        hidden = run.agent_step(params, hidden, obs)      # the observation enters here
        messages = run.messages(hidden)                   # what an attacker perturbs
        q = run.q_values(params, obs, hidden, messages, avail)
        actions = run.greedy(params, hidden, messages, avail)
    """

    cfg: Config
    env: Any
    trainer: "Trainer"
    params: Any
    env_run: Any
    step: int
    run_dir: Path | None = None

    @property
    def model(self) -> "CromacModel":
        return self.trainer.model

    @property
    def n_seeds(self) -> int:
        return int(jax.tree.leaves(self.params)[0].shape[0])

    @property
    def eps(self) -> float:
        """The config's perturbation budget (``cromac.eps``): budget multiple 1."""
        return float(self.cfg.cromac.eps)

    def seed_params(self, seed: int) -> Any:
        return jax.tree.map(lambda x: x[seed], self.params)

    # ---------------------------------------------------------------- one decision step
    def agent_step(self, params: Any, hidden: jax.Array, obs: jax.Array) -> jax.Array:
        """Advance the recurrent agents: pre-step hidden [N, H], obs [N, O] -> hidden [N, H]."""
        return self.model.agent_step(params, hidden, obs)

    def messages(self, hidden: jax.Array) -> jax.Array:
        """The unperturbed messages [N, M, H] (every receiver gets every hidden state)."""
        return self.model.broadcast_messages(hidden)

    def q_values(self, params: Any, obs: jax.Array, hidden: jax.Array, messages: jax.Array, avail: jax.Array) -> jax.Array:
        """Decentralised Q-values [N, A] from the post-step hidden state and the (possibly
        attacked) messages. ``obs`` and ``avail`` are accepted for API completeness and not
        used: the observation is already in ``hidden`` (``agent_step``), and the values of
        unavailable actions are returned unmasked (AME: the ensemble mean). Decide with
        :meth:`greedy`, which masks unavailable actions and, for AME, votes."""
        del obs, avail
        return self.model.q_values(params, hidden, messages)

    def greedy(self, params: Any, hidden: jax.Array, messages: jax.Array, avail: jax.Array) -> jax.Array:
        """The greedy decentralised actions [N] (what the test episodes play)."""
        return self.model.greedy(params, hidden, messages, avail)

    def _cfg_key(self) -> str:
        return json.dumps(self.cfg.to_dict(), sort_keys=True, default=str)


def load_run(run_dir: str | Path, checkpoint: str | int = "latest") -> Run:
    """Load a run directory written by ``cromac train`` at ``checkpoint`` ('latest' or a step).

    Raises ``CheckpointError`` for a missing run directory, one without checkpoints, or an
    unknown step, and ``ConfigError`` for a checkpoint argument that is neither; each message
    names the value and the valid choices.
    """
    from cromac_jax import checkpoint as ckpt
    from cromac_jax import runner
    from cromac_jax.train import make_train

    path = Path(run_dir)
    if not path.is_dir():
        why = "is a file, not a run directory" if path.exists() else "does not exist"
        raise ckpt.CheckpointError(f"run directory {str(path)!r} {why}")
    cfg = runner.read_config(path)
    steps = ckpt.all_steps(path)
    if not steps:
        raise ckpt.CheckpointError(
            f"no checkpoints in {str(path / ckpt.CHECKPOINT_DIR)!r}: the run has saved none yet"
        )
    step = _parse_checkpoint(checkpoint, steps)
    if step not in steps:
        raise ckpt.CheckpointError(f"no checkpoint at step {step} in {str(path)!r}; available: 'latest' or {steps}")
    trainer = make_train(cfg)
    step, state = ckpt.restore(path, runner.SeedRunner(cfg, trainer).abstract_state(), step)
    return Run(cfg, trainer.env, trainer, state.params, state.env_run, int(step), path)


def untrained_run(cfg: Config) -> Run:
    """The freshly initialised parameters of every seed of ``cfg`` (the state training starts
    from): a baseline, and a way to test the evaluator without a checkpoint."""
    from cromac_jax.train import make_train, seed_keys

    trainer = make_train(cfg)

    def init(key):
        k_params, k_run, _ = jax.random.split(key, 3)  # as Trainer.init splits it
        return trainer.model.init(k_params), trainer.env.init_run(k_run)

    params, env_run = jax.jit(jax.vmap(init))(seed_keys(cfg))
    return Run(cfg, trainer.env, trainer, params, env_run, 0, None)


def _parse_checkpoint(checkpoint: str | int | None, steps: list[int]) -> int:
    if checkpoint is None or checkpoint == "latest":
        return steps[-1]
    if isinstance(checkpoint, (int, np.integer)) and not isinstance(checkpoint, bool) and checkpoint >= 0:
        return int(checkpoint)
    if isinstance(checkpoint, str) and checkpoint.strip().isdigit():
        return int(checkpoint)
    raise ConfigError(f"checkpoint {checkpoint!r} is invalid: use 'latest' or one of the saved steps {steps}")


# ============================================================================== compiled pieces
_COMPILED: dict[tuple, Callable] = {}


def _compiled(run: Run, key: tuple, build: Callable[[], Callable]) -> Callable:
    """Jitted functions depend only on the config (static structure) and the static arguments,
    so runs of the same config share them (loading a run twice does not recompile)."""
    k = (run._cfg_key(),) + key
    fn = _COMPILED.get(k)
    if fn is None:
        if len(_COMPILED) >= 64:
            _COMPILED.clear()
        fn = _COMPILED[k] = build()
    return fn


def _seed_keys(key: jax.Array, n: int) -> jax.Array:
    """Seed s uses fold_in(key, s): its episodes do not depend on how many seeds there are."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n))


def _default_key(run: Run, key: jax.Array | None) -> jax.Array:
    return jax.random.PRNGKey(run.cfg.train.seed + EVAL_KEY_OFFSET) if key is None else key


def _check_episodes(episodes: Any) -> int:
    if isinstance(episodes, bool) or not isinstance(episodes, (int, np.integer)) or episodes < 1:
        raise ConfigError(f"episodes={episodes!r} is invalid: the number of test episodes per seed must be an integer >= 1")
    return int(episodes)


def _check_eps(eps: Any) -> float:
    try:
        value = float(eps)
    except (TypeError, ValueError):
        raise ConfigError(f"eps={eps!r} is invalid: the perturbation radius must be a number >= 0") from None
    if not (math.isfinite(value) and value >= 0):
        raise ConfigError(f"eps={eps!r} is invalid: the perturbation radius must be a finite number >= 0")
    return value


def check_budgets(budgets: Sequence[Any]) -> list[float]:
    """Budgets are multiples of the config eps: finite numbers >= 0, at least one."""
    out = []
    for b in budgets:
        try:
            value = float(b)
        except (TypeError, ValueError):
            value = float("nan")
        if not (math.isfinite(value) and value >= 0):
            raise ConfigError(
                f"budget {b!r} is invalid: budgets are multiples of cromac.eps and must be finite numbers >= 0 "
                f"(default {list(A.DEFAULT_BUDGETS)})"
            )
        out.append(value)
    if not out:
        raise ConfigError(f"no budgets given; e.g. the default {list(A.DEFAULT_BUDGETS)}")
    return out


def resolve_attacks(attacks: Sequence[Any]) -> list[tuple[str, Callable]]:
    """Names of built-in attacks and/or ``(name, attack_fn)`` pairs -> ``[(name, fn)]``."""
    out = []
    for a in attacks:
        if isinstance(a, str):
            out.append((a, A.get_attack(a)))
        elif isinstance(a, tuple) and len(a) == 2 and isinstance(a[0], str) and callable(a[1]):
            out.append(a)
        elif callable(a):
            out.append((getattr(a, "__name__", "custom"), a))
        else:
            raise ConfigError(f"attack {a!r} is invalid: use one of {', '.join(A.ATTACKS)}, or a (name, attack_fn) pair")
    if not out:
        raise ConfigError(f"no attacks given; choose from {', '.join(A.ATTACKS)}")
    return out


# ============================================================================== evaluation
@dataclass(frozen=True)
class EvalResult:
    """Per-seed metrics of one attack at one eps (arrays [S]; per-episode arrays [S, E])."""

    attack: str
    eps: float
    episodes: int
    attack_own: bool
    win_rate: np.ndarray
    return_mean: np.ndarray
    return_std: np.ndarray
    ep_length: np.ndarray
    returns: np.ndarray
    lengths: np.ndarray
    won: np.ndarray

    def summary(self) -> dict[str, float]:
        """Mean and std over seeds (population std, as the per-seed spread of Table 1)."""
        out = {}
        for name in ("win_rate", "return_mean", "ep_length"):
            v = getattr(self, name)
            out[f"{name}_mean"], out[f"{name}_std"] = float(np.mean(v)), float(np.std(v))
        return out


def evaluate(
    run: Run,
    attack_fn: str | Callable,
    episodes: int = DEFAULT_EPISODES,
    eps: float | None = None,
    key: jax.Array | None = None,
    attack_own: bool = True,
) -> EvalResult:
    """Greedy test episodes of every seed under ``attack_fn`` (a built-in name or a function of
    the ``attacks.py`` signature) with radius ``eps`` (default: the config eps), all seeds and
    episodes in one jitted call. ``attack_own=False`` passes ``own_mask =
    teammates_only_mask(N)``: the receiver's own hidden state is left unperturbed."""
    if isinstance(attack_fn, str):
        name, attack = attack_fn, A.get_attack(attack_fn)
    elif callable(attack_fn):
        name, attack = getattr(attack_fn, "__name__", "custom"), attack_fn
    else:
        raise ConfigError(f"attack {attack_fn!r} is invalid: use one of {', '.join(A.ATTACKS)} or an attack function")
    episodes = _check_episodes(episodes)
    eps = run.eps if eps is None else _check_eps(eps)
    key = _default_key(run, key)

    def build():
        trainer = run.trainer
        own_mask = None if attack_own else A.teammates_only_mask(run.model.n)

        def one(params, env_run, k, e):
            _, stats = trainer.test(params, env_run, k, episodes, attack, e, own_mask)
            return stats

        return jax.jit(jax.vmap(one, in_axes=(0, 0, 0, None)))

    fn = _compiled(run, ("evaluate", attack, episodes, bool(attack_own)), build)
    stats = fn(run.params, run.env_run, _seed_keys(key, run.n_seeds), jnp.float32(eps))
    return _result(name, eps, episodes, bool(attack_own), stats)


def evaluate_state_latent(run: Run, episodes: int = DEFAULT_EPISODES, key: jax.Array | None = None) -> EvalResult:
    """Greedy episodes acting on the state latent's mean instead of the PoE of messages
    (``Trainer.state_latent_act``), with the same keys as :func:`evaluate`'s: the win rate the
    team would reach if the message encoder recovered the centralised latent exactly. A large
    gap to ``natural`` says the PoE distillation, not the Q head, is what fails. Nothing is
    attacked, so the result's ``attack_own`` carries no meaning."""
    episodes = _check_episodes(episodes)
    key = _default_key(run, key)
    run.trainer.state_latent_act(run.params)  # builds nothing yet; refuses runs without a state latent

    def build():
        trainer = run.trainer

        def one(params, env_run, k):
            _, stats = trainer.test(params, env_run, k, episodes, act=trainer.state_latent_act(params))
            return stats

        return jax.jit(jax.vmap(one))

    fn = _compiled(run, ("state_latent", episodes), build)
    stats = fn(run.params, run.env_run, _seed_keys(key, run.n_seeds))
    return _result("state_latent", 0.0, episodes, True, stats)


def _result(name: str, eps: float, episodes: int, attack_own: bool, stats: Any) -> EvalResult:
    returns = np.asarray(stats.returns, np.float64)
    lengths = np.asarray(stats.lengths)
    won = np.asarray(stats.won, bool)
    return EvalResult(
        attack=name,
        eps=eps,
        episodes=episodes,
        attack_own=attack_own,
        win_rate=won.mean(axis=1),
        return_mean=returns.mean(axis=1),
        return_std=returns.std(axis=1),
        ep_length=lengths.mean(axis=1),
        returns=returns,
        lengths=lengths,
        won=won,
    )


# ============================================================================== certificates
def certified_decisions(
    model: "CromacModel",
    params: Any,
    hidden: jax.Array,
    avail: jax.Array,
    eps: float | jax.Array,
    attack_own: bool = True,
) -> jax.Array:
    """Whether each agent's clean greedy action provably survives every perturbation of the
    messages it receives within ``eps`` (l-inf per channel): hidden [..., N, H], avail
    [..., N, A] -> bool [..., N]. See the module docstring for the per-method certificate."""
    avail = avail.astype(bool)
    messages = model.broadcast_messages(hidden)
    kind = model.method.messages
    if kind == "none":
        return jnp.ones(hidden.shape[:-1], bool)
    if kind == "ablated":
        return _ame_certified(model, params, messages, avail, eps, attack_own)
    actions = model.greedy(params, hidden, messages, avail)
    bounds = model.q_bounds_messages(params, messages, eps, attack_own)
    return ibp.certified(bounds.lower, bounds.upper, actions, avail)


def _radius(model: "CromacModel", messages: jax.Array, eps, attack_own: bool) -> jax.Array:
    radius = jnp.full(messages.shape, eps, messages.dtype)
    if not attack_own:
        radius = jnp.where(jnp.eye(model.n, dtype=bool)[..., None], 0.0, radius)
    return radius


def _ame_member_bounds(model: "CromacModel", params: Any, messages: jax.Array, eps, attack_own: bool) -> ibp.Interval:
    """IBP bounds [D, ..., N, A] of every AME ensemble member's Q-values (the head input is
    ``[m_ii, onehot(i), keep_j * m_ij, keep]``; the keep mask is exact)."""
    r = _radius(model, messages, eps, attack_own)
    lo, hi = messages - r, messages + r
    batch = messages.shape[:-3]
    n = model.n
    own = ibp.Interval(model.own_messages(lo), model.own_messages(hi))
    ids = ibp.Interval.point(model.ids(batch))
    tm_lo, tm_hi = model.teammate_messages(lo), model.teammate_messages(hi)
    head = params["q_head"]
    layers = [(head["hidden"]["kernel"], head["hidden"]["bias"]), (head["out"]["kernel"], head["out"]["bias"])]

    def member(mask):
        keep = jnp.broadcast_to(mask, batch + (n, mask.shape[-1]))
        flat = lambda a: (a * keep[..., None]).reshape(batch + (n, -1))  # noqa: E731  (keep >= 0)
        x = ibp.Interval.concat([own, ids, ibp.Interval(flat(tm_lo), flat(tm_hi)), ibp.Interval.point(keep)])
        return ibp.mlp(x, layers, ibp.relu)

    return jax.vmap(member)(jnp.asarray(model.ame_masks))


def _ame_certified(model: "CromacModel", params: Any, messages: jax.Array, avail: jax.Array, eps, attack_own: bool) -> jax.Array:
    """Vote-margin certificate with IBP-certified members (module docstring)."""
    member_q = model._ame_member_q(params, model.own_messages(messages), model.teammate_messages(messages))
    picks = masked_argmax(member_q, avail[None])  # [D, ..., N]
    bounds = _ame_member_bounds(model, params, messages, eps, attack_own)
    stable = ibp.certified(bounds.lower, bounds.upper, picks, avail[None])  # [D, ..., N]
    n_actions = model.n_actions
    onehot = jax.nn.one_hot(picks, n_actions)
    decision = masked_argmax(onehot.sum(axis=0), avail)  # exactly model.greedy's vote
    sure = jnp.sum(onehot * stable[..., None], axis=0)  # [..., N, A] votes that cannot move
    unsure = jnp.sum(~stable, axis=0)  # [..., N] members that may vote for anything
    s_star = jnp.take_along_axis(sure, decision[..., None], axis=-1)
    rival = sure + unsure[..., None]
    idx = jnp.arange(n_actions)
    beats = (s_star > rival) | ((s_star == rival) & (decision[..., None] < idx))
    others = avail & (idx != decision[..., None])
    return jnp.all(beats | ~others, axis=-1)


def certified_fraction(cert: jax.Array, avail: jax.Array, lengths: jax.Array) -> jax.Array:
    """The certified share of real decisions: cert [E, T1, N] over the slots each episode played
    (``lengths`` [E]) where the agent had at least two available actions (one action is no
    decision, and counting it would inflate the rate of envs with dead or blocked agents); NaN
    when there was none."""
    taken = jnp.arange(cert.shape[1])[None, :] < lengths[:, None]
    decision = taken[..., None] & (jnp.sum(avail.astype(bool), axis=-1) >= 2)
    count = jnp.sum(decision)
    return jnp.where(count > 0, jnp.sum(cert & decision) / jnp.maximum(count, 1), jnp.nan)


def certified_rate(
    run: Run,
    episodes: int = DEFAULT_EPISODES,
    eps: float | None = None,
    key: jax.Array | None = None,
    attack_own: bool = True,
) -> np.ndarray:
    """Per seed [S]: the fraction of decisions in the clean greedy test episodes (the
    ``natural`` episodes of :func:`evaluate` with the same key) whose action is certified
    against every message perturbation within ``eps`` (default: the config eps). qmix: 1.0 by
    definition. NaN for a seed without any decision (every agent had one available action)."""
    from cromac_jax.rollout import collect_episodes

    episodes = _check_episodes(episodes)
    eps = run.eps if eps is None else _check_eps(eps)
    key = _default_key(run, key)

    def build():
        trainer, model, env = run.trainer, run.model, run.env
        h0 = model.initial_hidden()

        def one(params, env_run, k, e):
            step = lambda h, obs: model.agent_step(params, h, obs)  # noqa: E731
            ep, stats = collect_episodes(env, step, trainer.test_act(params), h0, env_run, k, episodes)

            def replay(h, obs):  # the hidden states the agents acted on, slot by slot
                h = step(h, obs)
                return h, h

            _, hs = jax.vmap(lambda obs: jax.lax.scan(replay, h0, obs))(ep.obs)  # [E, T1, N, H]
            cert = certified_decisions(model, params, hs, ep.avail, e, attack_own)  # [E, T1, N]
            return certified_fraction(cert, ep.avail, stats.lengths)

        return jax.jit(jax.vmap(one, in_axes=(0, 0, 0, None)))

    fn = _compiled(run, ("certified", episodes, bool(attack_own)), build)
    return np.asarray(fn(run.params, run.env_run, _seed_keys(key, run.n_seeds), jnp.float32(eps)), np.float64)


# ============================================================================== the grid
def _table1_label(name: str, budget: float) -> str:
    if name == "natural":
        return "Natural"
    if name == "random":
        return "Random" if budget == 1.0 else f"Random ({budget:g}x)"
    if name == "pgd":
        return "PGD" if budget == 1.0 else f"PGD ({budget:g}x)"
    if name == "fgsm" and budget in A.TABLE1_FGSM_LABELS:
        return A.TABLE1_FGSM_LABELS[budget]
    return f"{name} ({budget:g}x)"


def report_paths(run: Run, attack_own: bool = True) -> dict[str, Path]:
    """Where :func:`eval_grid` writes: ``eval_<step>{,_teammates}.{md,csv,json}`` in the run dir."""
    if run.run_dir is None:
        raise ConfigError("this run has no run directory to write reports into (pass write=False)")
    stem = f"eval_{run.step}" + ("" if attack_own else "_teammates")
    return {ext: run.run_dir / f"{stem}.{ext}" for ext in ("md", "csv", "json")}


def eval_grid(
    run: Run,
    attacks: Sequence[Any] = DEFAULT_ATTACKS,
    budgets: Sequence[float] = A.DEFAULT_BUDGETS,
    episodes: int = DEFAULT_EPISODES,
    key: jax.Array | None = None,
    attack_own: bool = True,
    write: bool = True,
    out: TextIO | None | str = "stdout",
) -> list[dict[str, Any]]:
    """One row per (attack, budget) -- ``natural`` gets a single row -- with the win rate and
    the return (mean and std over seeds), the episode length, and the certified-action rate at
    the row's eps; plus the certified rate at the config eps in the header. Writes
    ``eval_<step>.md/.csv/.json`` into the run directory (``write``; suffix ``_teammates``
    when ``attack_own=False``) and prints the Markdown table to ``out``.

    For runs with a state latent (the CroMAC methods) the header and the JSON (``state_latent``)
    add :func:`evaluate_state_latent`'s win rate and return, with the same keys.

    ``attacks``: built-in names and/or ``(name, attack_fn)`` pairs. ``budgets``: multiples of
    the config eps. All rows use the same episode keys."""
    named = resolve_attacks(attacks)
    budgets = check_budgets(budgets)
    episodes = _check_episodes(episodes)
    key = _default_key(run, key)
    out = sys.stdout if out == "stdout" else out
    cert_cache: dict[float, np.ndarray] = {}

    def cert(eps: float) -> np.ndarray:
        if eps not in cert_cache:
            cert_cache[eps] = certified_rate(run, episodes, eps, key, attack_own)
        return cert_cache[eps]

    rows: list[dict[str, Any]] = []
    for name, fn in named:
        for budget in ([0.0] if fn is A.natural else budgets):
            eps = budget * run.eps
            res = evaluate(run, fn, episodes, eps, key, attack_own)
            c = None if fn is A.natural else cert(eps)
            rows.append({
                "attack": name,
                "table1": _table1_label(name, budget),
                "budget": budget,
                "eps": eps,
                "win_mean": float(np.mean(res.win_rate)),
                "win_std": float(np.std(res.win_rate)),
                "return_mean": float(np.mean(res.return_mean)),
                "return_std": float(np.std(res.return_mean)),
                "ep_length": float(np.mean(res.ep_length)),
                "certified_mean": None if c is None else float(np.mean(c)),
                "certified_std": None if c is None else float(np.std(c)),
                "per_seed": {
                    "win": res.win_rate.tolist(),
                    "return": res.return_mean.tolist(),
                    "ep_length": res.ep_length.tolist(),
                    "certified": None if c is None else c.tolist(),
                },
            })
    cfg_cert = cert(run.eps)
    latent = evaluate_state_latent(run, episodes, key) if get_method(run.cfg.train.method).state_vae else None
    header = _header(run, episodes, attack_own, cfg_cert, latent)
    table = _markdown(rows)
    if out is not None:
        print(header + "\n" + table, file=out, flush=True)
    if write and run.run_dir is not None:
        paths = report_paths(run, attack_own)
        paths["md"].write_text(header + "\n" + table)
        with paths["csv"].open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=[k for k in rows[0] if k != "per_seed"])
            w.writeheader()
            for r in rows:
                w.writerow({k: ("" if v is None else v) for k, v in r.items() if k != "per_seed"})
        paths["json"].write_text(json.dumps(json_safe({
            "run_dir": str(run.run_dir),
            "step": run.step,
            "env": run.cfg.env.name,
            "method": run.cfg.train.method,
            "mixer": run.cfg.model.mixer,
            "seeds": run.n_seeds,
            "episodes_per_seed": episodes,
            "config_eps": run.eps,
            "attack_own": bool(attack_own),
            "budgets": budgets,
            "certified_at_config_eps": {"mean": _nanfloat(np.mean(cfg_cert)), "std": _nanfloat(np.std(cfg_cert)),
                                        "per_seed": [_nanfloat(x) for x in cfg_cert]},
            "state_latent": None if latent is None else {
                "win_mean": float(np.mean(latent.win_rate)), "win_std": float(np.std(latent.win_rate)),
                "return_mean": float(np.mean(latent.return_mean)), "return_std": float(np.std(latent.return_mean)),
                "per_seed": {"win": latent.win_rate.tolist(), "return": latent.return_mean.tolist()}},
            "rows": rows,
        }), indent=1))
    return rows





def _nanfloat(x: Any) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _header(run: Run, episodes: int, attack_own: bool, cfg_cert: np.ndarray, latent: EvalResult | None = None) -> str:
    where = str(run.run_dir) if run.run_dir is not None else "(untrained)"
    who = "every channel attacked, own hidden state included" if attack_own else "teammates' channels attacked only"
    text = (
        f"## Evaluation of {where} at {run.step:,} env steps\n\n"
        f"{run.cfg.train.method} ({run.cfg.model.mixer} mixer) on {run.cfg.env.name}: {run.n_seeds} seed(s) x "
        f"{episodes} greedy episodes; config eps {run.eps:g}; {who}. Mean +- std over seeds.\n\n"
        f"Certified-action rate at the config eps: {_pm(cfg_cert, 3)}\n"
    )
    if latent is not None:
        text += (
            f"Acting on the state latent instead of the PoE of messages (no attack): win {_pm(latent.win_rate)}, "
            f"return {_pm(latent.return_mean, 3)} (natural far below this: the message encoder, not the "
            "policy, is what fails).\n"
        )
    return text


def _pm(values: np.ndarray, digits: int = 2) -> str:
    if values is None or not np.all(np.isfinite(values)):
        return "n/a"
    return f"{np.mean(values):.{digits}f} +- {np.std(values):.{digits}f}"


def _markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| attack | Table 1 | budget (x eps) | eps | win | return | length | certified |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        budget = "-" if r["attack"] == "natural" else f"{r['budget']:g}"
        cert = "-" if r["certified_mean"] is None else (
            "n/a" if not math.isfinite(r["certified_mean"]) else f"{r['certified_mean']:.3f}")
        lines.append(
            f"| {r['attack']} | {r['table1']} | {budget} | {r['eps']:.4g} | {r['win_mean']:.2f} +- {r['win_std']:.2f} "
            f"| {r['return_mean']:.3f} +- {r['return_std']:.3f} | {r['ep_length']:.1f} | {cert} |"
        )
    return "\n".join(lines) + "\n"


# ============================================================================== command line
def add_eval_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``cromac eval RUN_DIR ...`` to a ``parser.add_subparsers()`` object."""
    p = subparsers.add_parser(
        "eval",
        help="evaluate a checkpoint under message attacks (Table 1 grid) and its certified-action rate",
        description="Evaluate every seed of a run at one checkpoint under message attacks; budgets are "
                    "multiples of the run's cromac.eps. Writes eval_<step>.md/.csv/.json into RUN_DIR.",
    )
    p.add_argument("run_dir", help="a run directory written by cromac train")
    p.add_argument("--checkpoint", default="latest", help="'latest' (default) or the env step of a saved checkpoint")
    p.add_argument("--attacks", nargs="+", default=list(DEFAULT_ATTACKS),
                   help=f"attacks to run (default: {' '.join(DEFAULT_ATTACKS)}; natural runs once)")
    p.add_argument("--budgets", nargs="+", type=float, default=list(A.DEFAULT_BUDGETS),
                   help="budgets as multiples of cromac.eps (default: %(default)s = Table 1's "
                        "FGSM (1), FGSM (2), FGSM, FGSM (3), FGSM (4))")
    p.add_argument("--episodes", type=int, default=DEFAULT_EPISODES, help="test episodes per seed (default: %(default)s)")
    p.add_argument("--teammates-only", dest="teammates_only", action="store_true",
                   help="perturb only the teammates' messages (default: every channel, own hidden state included, as the official code)")
    p.add_argument("--seed", type=int, default=None, help="evaluation key seed (default: train.seed + %d)" % EVAL_KEY_OFFSET)
    p.set_defaults(func=_cmd_eval)
    return p


def _cmd_eval(args: argparse.Namespace) -> int:
    attacks = resolve_attacks(args.attacks)  # cheap checks first: bad input fails before loading
    budgets = check_budgets(args.budgets)
    episodes = _check_episodes(args.episodes)
    if args.seed is not None and not 0 <= args.seed < 2**32:
        raise ConfigError(f"--seed {args.seed} is invalid: evaluation keys take seeds in [0, 2**32)")
    run = load_run(args.run_dir, args.checkpoint)
    key = None if args.seed is None else jax.random.PRNGKey(args.seed)
    eval_grid(run, attacks, budgets, episodes, key=key, attack_own=not args.teammates_only)
    paths = report_paths(run, attack_own=not args.teammates_only)
    print(f"wrote {paths['md']}, {paths['csv'].name}, {paths['json'].name}")
    return 0


__all__ = [
    "Run", "EvalResult", "load_run", "untrained_run", "evaluate", "certified_decisions", "certified_fraction", "certified_rate",
    "eval_grid", "report_paths", "add_eval_parser", "check_budgets", "resolve_attacks",
    "DEFAULT_EPISODES", "DEFAULT_ATTACKS", "evaluate_state_latent",
]
