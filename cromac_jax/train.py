"""``make_train(config)``: the whole training run as pure functions, compiled in chunks.

The scan hierarchy, each level a named function of (state, x) -> (state, metrics):

    seeds_chunk   vmap over seeds (a named axis)                (one jitted call)
    train_chunk   lax.scan over K iterations
      iteration   collect ``num_envs`` episodes (vmap envs, scan time) -> buffer -> U updates
        update    sample 32 episodes -> trim to the filled slots -> loss (eq. 17) -> Adam
                  -> clamp -> target sync

A thin Python loop (``runner.py``) calls ``seeds_chunk``, logs the returned metrics (scalars
per iteration, never per step), runs test episodes, and checkpoints; because every random draw
comes from the key in ``TrainState``, resuming from a checkpoint continues bit-for-bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
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


SEED_AXIS = "seed"  # the vmap axis name of ``Trainer.seeds_chunk`` (not the device mesh's "seeds")


def slot_buckets(slots: int, count: int) -> tuple[int, ...]:
    """The slot counts a learner batch may be trimmed to: ``count`` steps up to ``slots``.

    Episodes end long before the time limit once a team has learned (hallway 4x5x6: 5 of 17
    slots filled on average, a sampled batch's longest 7-9), and every part of the update is
    linear in the slots it processes; a few fixed sizes keep shapes static and compile time
    bounded (one compiled update per size)."""
    return tuple(sorted({max(2, -(-slots * k // count)) for k in range(1, count + 1)}))


def trim_slots(batch: EpisodeBatch, slots: int) -> EpisodeBatch:
    """The first ``slots`` time slots of every episode of a [B, T1, ...] batch."""
    return jax.tree.map(lambda x: x[:, :slots], batch)


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
    @property
    def slot_buckets(self) -> tuple[int, ...]:
        return slot_buckets(self.model.dims.episode_limit + 1, self.cfg.train.slot_buckets)

    def update(self, state: TrainState, key: jax.Array, seed_axis: str | None = None) -> tuple[TrainState, tuple]:
        """One learner update on a uniformly sampled batch of episodes.

        The batch is trimmed to the smallest of ``slot_buckets`` that holds its longest episode
        (the loss is unchanged: ``loss_fn``'s ``slots``). ``lax.switch`` picks the trimmed
        update; its index must not vary across a vmapped seed axis, or vmap turns the switch
        into a select that computes every branch, so under ``seeds_chunk`` it is the longest
        episode over the vmapped seeds' batches (``seed_axis``): all seeds on one device, or a
        device's own seeds when ``runner.device_parallel`` lays them over several."""
        batch: EpisodeBatch = self.buffer.sample(state.buffer, key).experience
        k_loss = jax.random.fold_in(key, 1)
        trans_mask = jnp.concatenate([batch.filled[:, 1:], jnp.zeros_like(batch.filled[:, :1])], axis=1)
        rew_stats = state.rew_stats.update(batch.reward, trans_mask.astype(jnp.float32))
        robust_on = self.robust_on(state.t_env)
        full = batch.reward.shape[1]

        def grads_at(slots: int) -> Callable:
            def value_and_grad(params: Params):
                b = batch if slots == full else trim_slots(batch, slots)

                def objective(p):
                    return loss_fn(self.model, p, state.target_params, b, rew_stats, robust_on, k_loss, self.weights, full)

                return jax.value_and_grad(objective, has_aux=True)(params)

            return value_and_grad

        buckets = self.slot_buckets
        if len(buckets) == 1:
            (loss, aux), grads = grads_at(full)(state.params)
        else:
            longest = jnp.max(jnp.sum(batch.filled, axis=1, dtype=jnp.int32))
            if seed_axis is not None:
                longest = jax.lax.pmax(longest, seed_axis)
            index = jnp.searchsorted(jnp.asarray(buckets), longest)
            (loss, aux), grads = jax.lax.switch(index, [grads_at(n) for n in buckets], state.params)
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

    def iteration(self, state: TrainState, _: Any = None, seed_axis: str | None = None) -> tuple[TrainState, IterMetrics]:
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
        if seed_axis is not None:
            # Every seed stores num_envs episodes per iteration, so they agree; one unbatched
            # predicate keeps the cond (and the trimming switch inside it) real branches.
            ready = jax.lax.pmin(ready.astype(jnp.int32), seed_axis) > 0

        def learn(s):
            update = partial(self.update, seed_axis=seed_axis)
            s, (loss, aux, gnorm) = jax.lax.scan(update, s, jax.random.split(k_updates, self.updates_per_iteration))
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

    def budgeted_iteration(
        self, state: TrainState, _: Any = None, seed_axis: str | None = None
    ) -> tuple[TrainState, IterMetrics]:
        """An iteration that leaves a seed untouched once it has used its ``t_max`` env steps.

        Seeds run at different env-step rates (episode lengths differ), and a vmapped chunk
        steps them together; freezing the finished ones keeps every seed's budget exact.
        """
        new_state, metrics = self.iteration(state, seed_axis=seed_axis)
        active = state.t_env < self.cfg.train.t_max
        state = jax.tree.map(lambda n, o: jnp.where(active, n, o), new_state, state)
        return state, metrics._replace(t_env=state.t_env, episodes=state.episodes, updates=state.updates)

    def train_chunk(self, state: TrainState, seed_axis: str | None = None) -> tuple[TrainState, IterMetrics]:
        """K iterations under ``lax.scan`` for one seed."""
        step = partial(self.budgeted_iteration, seed_axis=seed_axis)
        return jax.lax.scan(step, state, None, length=self.chunk_iterations)

    def seeds_chunk(self, state: TrainState) -> tuple[TrainState, IterMetrics]:
        """``train_chunk`` over a leading seed axis: the unit the Python loop jits and calls.
        Use it rather than a bare ``vmap(train_chunk)``: the learner's trimming needs the named
        axis (see ``update``)."""
        return jax.vmap(partial(self.train_chunk, seed_axis=SEED_AXIS), axis_name=SEED_AXIS)(state)

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
