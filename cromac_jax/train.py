"""``make_train(config)``: the whole training run as pure functions, compiled in chunks.

The scan hierarchy, each level a named function of (state, x) -> (state, metrics):

    train_chunk   lax.scan over K iterations                    (one jitted call, vmapped over seeds)
      iteration   collect ``num_envs`` episodes (vmap envs, scan time) -> buffer -> U updates
        update    sample 32 episodes -> loss (eq. 17) -> Adam -> clamp -> target sync

A thin Python loop (``runner.py``) calls ``train_chunk``, logs the returned metrics (scalars
per iteration, never per step), runs test episodes, and checkpoints; because every random draw
comes from the key in ``TrainState``, resuming from a checkpoint continues bit-for-bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import struct

import envs as envs_registry
from cromac_jax import attacks
from cromac_jax.buffer import make_episode_buffer, stored_episodes
from cromac_jax.config import Config, ConfigError
from cromac_jax.losses import (
    EpisodeBatch,
    LossWeights,
    RewardStats,
    clamp_message_encoder,
    loss_fn,
    weights_from_config,
)
from cromac_jax.networks import CromacModel, EnvDims, Params, masked_argmax
from cromac_jax.rollout import EpisodeStats, collect_episodes, epsilon_greedy


@struct.dataclass
class TrainState:
    """Everything one seed's run needs to continue: learner, buffer, counters and key."""

    params: Params
    target_params: Params
    opt_state: Any
    buffer: Any
    rew_stats: RewardStats
    env_run: Any
    key: jax.Array
    t_env: jax.Array
    episodes: jax.Array
    updates: jax.Array
    iteration: jax.Array


class IterMetrics(NamedTuple):
    """Scalars of one iteration (stacked to [K] by a chunk, [S, K] over seeds)."""

    t_env: jax.Array
    episodes: jax.Array
    updates: jax.Array
    epsilon: jax.Array
    robust_on: jax.Array
    return_mean: jax.Array
    won_mean: jax.Array
    ep_length_mean: jax.Array
    loss: jax.Array
    td: jax.Array
    vae: jax.Array
    poe: jax.Array
    robust: jax.Array
    q_taken: jax.Array
    grad_norm: jax.Array


class TestMetrics(NamedTuple):
    return_mean: jax.Array
    return_std: jax.Array
    won_mean: jax.Array
    ep_length_mean: jax.Array


@dataclass(frozen=True)
class Trainer:
    """The compiled pieces of one configured run. All methods are pure; none mutate ``self``."""

    cfg: Config
    env: Any
    model: CromacModel
    buffer: Any
    optimiser: optax.GradientTransformation
    weights: LossWeights
    updates_per_iteration: int
    chunk_iterations: int

    # ------------------------------------------------------------------ setup
    def init(self, key: jax.Array) -> TrainState:
        """One seed's initial state (vmap it over seed keys)."""
        k_params, k_run, k_state = jax.random.split(key, 3)
        params = self.model.init(k_params)
        env_run = self.env.init_run(k_run)
        example = self._example_episode()
        return TrainState(
            params=params,
            target_params=params,
            opt_state=self.optimiser.init(params),
            buffer=self.buffer.init(example),
            rew_stats=RewardStats.create(),
            env_run=env_run,
            key=k_state,
            t_env=jnp.zeros((), jnp.int32),
            episodes=jnp.zeros((), jnp.int32),
            updates=jnp.zeros((), jnp.int32),
            iteration=jnp.zeros((), jnp.int32),
        )

    def _example_episode(self) -> EpisodeBatch:
        d = self.model.dims
        T1 = d.episode_limit + 1
        return EpisodeBatch(
            obs=jnp.zeros((T1, d.n_agents, d.obs_dim)),
            state=jnp.zeros((T1, d.state_dim)),
            avail=jnp.zeros((T1, d.n_agents, d.n_actions), bool),
            actions=jnp.zeros((T1, d.n_agents), jnp.int32),
            reward=jnp.zeros((T1,)),
            terminated=jnp.zeros((T1,), bool),
            filled=jnp.zeros((T1,), bool),
        )

    # ------------------------------------------------------------------ schedules
    def epsilon(self, t_env: jax.Array) -> jax.Array:
        t = self.cfg.train
        frac = jnp.minimum(1.0, t_env / max(1, t.epsilon_anneal_time))
        return t.epsilon_start + frac * (t.epsilon_finish - t.epsilon_start)

    def robust_on(self, t_env: jax.Array) -> jax.Array:
        return jnp.logical_and(self.model.method.robust, t_env >= self.cfg.cromac.robust_start)

    def clamp_on(self, t_env: jax.Array) -> jax.Array:
        """Whether the message-encoder clamp applies (``cromac.clamp_start``; -1: with robust training)."""
        start = self.cfg.cromac.clamp_start
        return self.robust_on(t_env) if start < 0 else jnp.logical_and(self.model.method.robust, t_env >= start)

    # ------------------------------------------------------------------ acting
    def _train_act(self, params: Params, epsilon: jax.Array) -> Callable:
        """Epsilon-greedy on training-time Q (CroMAC: z sampled from the state encoder)."""
        model = self.model

        def act(key, h, ts):
            k_z, k_q, k_eps = jax.random.split(key, 3)
            z = None
            if model.method.state_vae:
                mean, logvar = model.encode_state(params, ts.world_state)
                z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(k_z, mean.shape)
            q = model.q_train(params, h, z, k_q)
            return epsilon_greedy(k_eps, q, ts.avail, epsilon)

        return act

    def test_act(self, params: Params, attack: Callable = attacks.natural, eps: float = 0.0, own_mask=None) -> Callable:
        """Greedy decentralised execution on (possibly attacked) messages."""
        model = self.model

        def q_fn(hidden, messages):
            return model.q_values(params, hidden, messages)

        def act(key, h, ts):
            messages = model.broadcast_messages(h)
            messages = attack(key, q_fn, h, messages, ts.avail.astype(bool), eps, own_mask)
            return model.greedy(params, h, messages, ts.avail)

        return act

    def state_latent_act(self, params: Params) -> Callable:
        """Greedy on the Q head fed the state latent's mean instead of the PoE of messages: how
        the team would play if the message encoder recovered the centralised latent exactly.
        Its gap to the natural test is what the PoE distillation costs (CroMAC methods only)."""
        model = self.model
        if not model.method.state_vae:
            raise ConfigError(f"{self.cfg.train.method} has no state latent: only the CroMAC methods train one")

        def act(key, h, ts):
            mean, _ = model.encode_state(params, ts.world_state)
            return masked_argmax(model.q_train(params, h, mean, key), ts.avail)

        return act

    def _agent_step(self, params: Params) -> Callable:
        return lambda h, obs: self.model.agent_step(params, h, obs)

    # ------------------------------------------------------------------ learning
    def update(self, state: TrainState, key: jax.Array) -> tuple[TrainState, tuple]:
        """One learner update on a uniformly sampled batch of episodes."""
        batch: EpisodeBatch = self.buffer.sample(state.buffer, key).experience
        k_loss = jax.random.fold_in(key, 1)
        trans_mask = jnp.concatenate([batch.filled[:, 1:], jnp.zeros_like(batch.filled[:, :1])], axis=1)
        rew_stats = state.rew_stats.update(batch.reward, trans_mask.astype(jnp.float32))
        robust_on = self.robust_on(state.t_env)

        def objective(p):
            return loss_fn(self.model, p, state.target_params, batch, rew_stats, robust_on, k_loss, self.weights)

        (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        updates, opt_state = self.optimiser.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        c = self.cfg.cromac
        params = clamp_message_encoder(params, c.weight_clamp, self.clamp_on(state.t_env), c.clamp_layers)
        n_updates = state.updates + 1
        sync = n_updates % self.cfg.train.target_update_interval == 0
        target = jax.tree.map(lambda new, old: jnp.where(sync, new, old), params, state.target_params)
        state = state.replace(
            params=params, target_params=target, opt_state=opt_state, rew_stats=rew_stats, updates=n_updates
        )
        return state, (loss, aux, optax.tree.norm(grads))

    def iteration(self, state: TrainState, _: Any = None) -> tuple[TrainState, IterMetrics]:
        """Collect ``num_envs`` episodes, store them, then run the learner updates."""
        t = self.cfg.train
        key, k_collect, k_updates = jax.random.split(state.key, 3)
        eps = self.epsilon(state.t_env)
        episodes, stats = collect_episodes(
            self.env,
            self._agent_step(state.params),
            self._train_act(state.params, eps),
            self.model.initial_hidden(),
            state.env_run,
            k_collect,
            t.num_envs,
            timeout_is_terminal=not t.bootstrap_on_truncation,
        )
        buffer = self.buffer.add(state.buffer, episodes)
        state = state.replace(
            key=key,
            buffer=buffer,
            t_env=state.t_env + jnp.sum(stats.lengths),
            episodes=state.episodes + t.num_envs,
        )
        ready = stored_episodes(buffer, t.buffer_size) >= max(t.learning_starts, t.batch_size)

        def learn(s):
            s, (loss, aux, gnorm) = jax.lax.scan(self.update, s, jax.random.split(k_updates, self.updates_per_iteration))
            return s, (jnp.mean(loss), jax.tree.map(jnp.mean, aux), jnp.mean(gnorm))

        def skip(s):
            zero = jnp.zeros(())
            aux = jax.tree.map(lambda _: zero, jax.eval_shape(lambda: learn(s)[1][1]))
            return s, (zero, aux, zero)

        state, (loss, aux, gnorm) = jax.lax.cond(ready, learn, skip, state)
        state = state.replace(iteration=state.iteration + 1)
        metrics = IterMetrics(
            t_env=state.t_env,
            episodes=state.episodes,
            updates=state.updates,
            epsilon=eps,
            robust_on=self.robust_on(state.t_env),
            return_mean=jnp.mean(stats.returns),
            won_mean=jnp.mean(stats.won.astype(jnp.float32)),
            ep_length_mean=jnp.mean(stats.lengths.astype(jnp.float32)),
            loss=loss,
            td=aux.td,
            vae=aux.vae,
            poe=aux.poe,
            robust=aux.robust,
            q_taken=aux.q_taken_mean,
            grad_norm=gnorm,
        )
        return state, metrics

    def budgeted_iteration(self, state: TrainState, _: Any = None) -> tuple[TrainState, IterMetrics]:
        """An iteration that leaves a seed untouched once it has used its ``t_max`` env steps.

        Seeds run at different env-step rates (episode lengths differ), and a vmapped chunk
        steps them together; freezing the finished ones keeps every seed's budget exact.
        """
        new_state, metrics = self.iteration(state)
        active = state.t_env < self.cfg.train.t_max
        state = jax.tree.map(lambda n, o: jnp.where(active, n, o), new_state, state)
        return state, metrics._replace(t_env=state.t_env, episodes=state.episodes, updates=state.updates)

    def train_chunk(self, state: TrainState) -> tuple[TrainState, IterMetrics]:
        """K iterations under ``lax.scan``: the unit the Python loop calls (per seed)."""
        return jax.lax.scan(self.budgeted_iteration, state, None, length=self.chunk_iterations)

    # ------------------------------------------------------------------ testing
    def test(
        self,
        params: Params,
        env_run: Any,
        key: jax.Array,
        n_episodes: int,
        attack: Callable = attacks.natural,
        eps: float = 0.0,
        own_mask=None,
        act: Callable | None = None,
    ) -> tuple[TestMetrics, EpisodeStats]:
        """Greedy test episodes (vmapped), optionally with attacked messages; ``act`` replaces
        the decentralised test policy (e.g. :meth:`state_latent_act`)."""
        _, stats = collect_episodes(
            self.env,
            self._agent_step(params),
            self.test_act(params, attack, eps, own_mask) if act is None else act,
            self.model.initial_hidden(),
            env_run,
            key,
            n_episodes,
        )
        metrics = TestMetrics(
            return_mean=jnp.mean(stats.returns),
            return_std=jnp.std(stats.returns),
            won_mean=jnp.mean(stats.won.astype(jnp.float32)),
            ep_length_mean=jnp.mean(stats.lengths.astype(jnp.float32)),
        )
        return metrics, stats


def make_env(cfg: Config) -> Any:
    return envs_registry.make(cfg.env.name, **dict(cfg.env.overrides))


def make_train(cfg: Config, env: Any | None = None) -> Trainer:
    """Build the pure functions of a configured run (nothing is compiled yet)."""
    cfg.validate()
    env = make_env(cfg) if env is None else env
    dims = EnvDims.of(env)
    model = CromacModel(cfg, dims)
    t = cfg.train
    if t.batch_size > t.buffer_size:
        raise ConfigError(f"config train.batch_size={t.batch_size} exceeds train.buffer_size={t.buffer_size}")
    optimiser = optax.chain(optax.clip_by_global_norm(t.grad_clip), optax.adam(t.lr))
    updates = t.updates_per_iteration or t.num_envs
    chunk = t.chunk_iterations or max(1, round(t.test_interval / (t.num_envs * dims.episode_limit)))
    return Trainer(
        cfg=cfg,
        env=env,
        model=model,
        buffer=make_episode_buffer(t.buffer_size, t.batch_size, t.learning_starts),
        optimiser=optimiser,
        weights=weights_from_config(cfg),
        updates_per_iteration=updates,
        chunk_iterations=chunk,
    )


def seed_keys(cfg: Config) -> jax.Array:
    """One key per seed; seed s of a run with base seed b is independent of how many seeds run."""
    base = jax.random.PRNGKey(cfg.train.seed)
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.arange(cfg.train.num_seeds))
