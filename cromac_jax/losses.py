"""CroMAC's training objective (paper eq. 17) as pure functions of parameters and a batch.

L = L_TD + a1 L_VAE(psi) + a2 L_PoE(phi) + 1[t > T_r] a3 L_adv

Shape legend: B episodes, T1 = episode_limit + 1 slots, N agents, A actions, Z latent.
A transition t (slot t -> t+1) is valid iff slot t+1 was filled, so ``mask[t] = filled[t+1]``;
this one rule masks padding whether or not timeouts are stored as terminal.
The auxiliary losses are summed over the filled slots and divided by the batch's longest episode
(its filled slots), then averaged over episodes, as the official code does ("summed over time steps
/ max_seq_length" of a batch truncated to ``max_t_filled``); ``cromac.loss_reduction=episode_limit``
divides by T1 instead (and sums the robust loss over agents), as earlier versions did.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import distrax
import jax
import jax.numpy as jnp
from flax import struct

from cromac_jax.config import CLAMP_LAYERS, LOSS_REDUCTIONS
from cromac_jax.networks import CromacModel, Params, draw_for_slots, masked_argmax


@struct.dataclass
class EpisodeBatch:
    """Whole episodes padded to T1 = episode_limit + 1 slots (the replay buffer's item)."""

    obs: jax.Array  # [B, T1, N, O]
    state: jax.Array  # [B, T1, S]
    avail: jax.Array  # [B, T1, N, A] bool
    actions: jax.Array  # [B, T1, N] int32
    reward: jax.Array  # [B, T1] reward of the transition from slot t
    terminated: jax.Array  # [B, T1] no bootstrap from slot t+1
    filled: jax.Array  # [B, T1] slot holds real data


@struct.dataclass
class RewardStats:
    """Running mean/variance of rewards (pymarl's ``standardise_rewards``)."""

    mean: jax.Array
    var: jax.Array
    count: jax.Array

    @classmethod
    def create(cls) -> "RewardStats":
        return cls(jnp.zeros((), jnp.float32), jnp.ones((), jnp.float32), jnp.full((), 1e-4, jnp.float32))

    def update(self, x: jax.Array, mask: jax.Array) -> "RewardStats":
        """Parallel (Chan et al.) combination of the running moments with a masked batch."""
        n = jnp.sum(mask)
        safe_n = jnp.maximum(n, 1.0)
        b_mean = jnp.sum(x * mask) / safe_n
        b_var = jnp.sum(mask * (x - b_mean) ** 2) / safe_n
        tot = self.count + n
        delta = b_mean - self.mean
        mean = self.mean + delta * n / tot
        m2 = self.var * self.count + b_var * n + delta**2 * self.count * n / tot
        return RewardStats(mean, m2 / tot, tot)

    def standardise(self, x: jax.Array) -> jax.Array:
        return (x - self.mean) / jnp.sqrt(jnp.maximum(self.var, 1e-8))


class LossWeights(NamedTuple):
    gamma: float
    vae: float
    poe: float
    robust: float
    radius: float  # kappa * eps
    standardise_rewards: bool
    reduction: str = "official"  # cromac.loss_reduction


class LossAux(NamedTuple):
    td: jax.Array
    vae: jax.Array
    poe: jax.Array
    robust: jax.Array
    q_taken_mean: jax.Array
    target_mean: jax.Array


def unroll(model: CromacModel, params: Params, obs: jax.Array) -> jax.Array:
    """Hidden states after every slot: [B, T1, N, O] -> [B, T1, N, H].

    The same network as ``model.agent_step`` (flax's GRUCell equations and parameters), arranged
    for a whole batch of sequences: everything that does not depend on the previous hidden state —
    the input layer and the GRU's input projections — is computed for all time steps in three
    large matmuls before the scan, and the scan body does one fused [H, 3H] recurrent matmul.
    On CPU, where a learner update is dominated by per-op overhead inside the time loop, this
    makes the unroll several times cheaper. ``tests/test_model.py`` checks it equals stepping
    ``agent_step``.
    """
    model._check_shape("observation", obs, (model.n, model.dims.obs_dim))
    p = params["agent"]
    g = p["gru"]
    x = jax.nn.relu(obs @ p["fc"]["kernel"] + p["fc"]["bias"])  # [B, T1, N, H]
    xr = x @ g["ir"]["kernel"] + g["ir"]["bias"]
    xz = x @ g["iz"]["kernel"] + g["iz"]["bias"]
    xn = x @ g["in"]["kernel"] + g["in"]["bias"]
    w_h = jnp.concatenate([g["hr"]["kernel"], g["hz"]["kernel"], g["hn"]["kernel"]], axis=1)  # [H, 3H]
    b_hn = g["hn"]["bias"]

    def step(h, inputs):
        ir, iz, in_ = inputs
        hr, hz, hn = jnp.split(h @ w_h, 3, axis=-1)
        r = jax.nn.sigmoid(ir + hr)
        z = jax.nn.sigmoid(iz + hz)
        n = jnp.tanh(in_ + r * (hn + b_hn))
        h = (1.0 - z) * n + z * h
        return h, h

    h0 = model.initial_hidden(obs.shape[:1])
    time_major = tuple(jnp.swapaxes(a, 0, 1) for a in (xr, xz, xn))
    _, hs = jax.lax.scan(step, h0, time_major)
    return jnp.swapaxes(hs, 0, 1)


def gaussian_kl_std_normal(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """KL(N(mean, exp(logvar)) || N(0, I)), summed over the last axis."""
    return 0.5 * jnp.sum(mean**2 + jnp.exp(logvar) - 1.0 - logvar, axis=-1)


def slot_noise(key: jax.Array, shape: tuple[int, ...], slots: int | None = None) -> jax.Array:
    """Standard normal noise for [B, T, ...] slots as the full batch of ``slots`` slots draws it
    (``draw_for_slots``)."""
    return draw_for_slots(jax.random.normal, key, shape, slots)


def state_vae_loss(model: CromacModel, params: Params, state: jax.Array, key: jax.Array, slots: int | None = None):
    """Paper eq. 13 per slot: squared reconstruction error (a unit-variance Gaussian
    likelihood up to a constant) plus KL to the prior. Returns (loss [B,T1], z, mean, logvar);
    ``slots``: see ``slot_noise``."""
    mean, logvar = model.encode_state(params, state)
    z = mean + jnp.exp(0.5 * logvar) * slot_noise(key, mean.shape, slots)
    recon = model.decode_state(params, z)
    loss = jnp.sum((recon - state) ** 2, axis=-1) + gaussian_kl_std_normal(mean, logvar)
    return loss, z, mean, logvar


def poe_distillation_loss(model: CromacModel, params: Params, h: jax.Array, st_mean, st_logvar) -> jax.Array:
    """Paper eq. 16: KL[sg(z_st) || q_phi(z_msg | m)] per slot [B, T1].

    Both the state latent and the hidden states are detached, as in the official code, so
    this loss trains only the message encoder. In training every agent receives the same
    clean messages, so one PoE per slot serves all receivers.
    """
    msg = jax.lax.stop_gradient(h)  # [B, T1, N, H] = the N messages every receiver gets
    poe_mean, poe_var = model.encode_messages(params, msg)
    p = distrax.MultivariateNormalDiag(
        jax.lax.stop_gradient(st_mean), jax.lax.stop_gradient(jnp.exp(0.5 * st_logvar))
    )
    q = distrax.MultivariateNormalDiag(poe_mean, jnp.sqrt(poe_var))
    return p.kl_divergence(q)


def robust_overlap_loss(
    model: CromacModel, params: Params, h: jax.Array, z_mean: jax.Array, actions: jax.Array, avail: jax.Array, radius
) -> jax.Array:
    """Paper eqs. 14-15 per slot and agent [B, T1, N]: sum over available actions y of
    max(0, Q(a) - Q(y)) (detached) * max(0, upper Q(y) - lower Q(a)), with the bounds taken by
    IBP over an l-inf ball of ``radius`` = kappa*eps around (z_st mean, h_i).

    The state-latent mean is detached, as in the official code: the robust loss shapes the
    Q head and the trajectory encoder, never the state VAE (whose latent the PoE must follow)."""
    z_mean = jax.lax.stop_gradient(z_mean)
    bounds = model.q_bounds_latent(params, z_mean, h, radius)
    q_centre = model.head(params, model.head_input(h, z=z_mean[..., None, :]))
    q_a = jnp.take_along_axis(q_centre, actions[..., None], axis=-1)
    q_diff = jax.lax.stop_gradient(jnp.maximum(0.0, q_a - q_centre))
    low_a = jnp.take_along_axis(bounds.lower, actions[..., None], axis=-1)
    overlap = jnp.maximum(0.0, bounds.upper - low_a)
    per_action = q_diff * overlap * avail.astype(overlap.dtype)
    return jnp.sum(per_action, axis=-1)


def loss_fn(
    model: CromacModel,
    params: Params,
    target_params: Params,
    batch: EpisodeBatch,
    rew_stats: RewardStats,
    robust_on: jax.Array,
    key: jax.Array,
    w: LossWeights,
    slots: int | None = None,
) -> tuple[jax.Array, LossAux]:
    """The total loss of eq. 17 and its parts, for one batch of episodes.

    ``slots``: the episode's full slot count (episode_limit + 1) when ``batch`` was trimmed to
    fewer (``trim_slots``); the random draws are those of the full batch and the normalisers
    (``w.reduction``) do not depend on the trim, so the result equals the untrimmed loss."""
    method = model.method
    k_online, k_target, k_vae, k_tvae = jax.random.split(key, 4)
    B, T = batch.reward.shape
    T1 = T if slots is None else slots
    filled = batch.filled.astype(jnp.float32)
    mask = jnp.concatenate([filled[:, 1:], jnp.zeros((B, 1))], axis=1)  # transition t valid
    if w.reduction == "official":  # pymarl's max_seq_length of the batch truncated to max_t_filled
        per_slot = B * jnp.maximum(jnp.max(jnp.sum(filled, axis=1)), 1.0)
        over_agents = jnp.mean
    elif w.reduction == "episode_limit":
        per_slot = B * T1
        over_agents = jnp.sum
    else:
        raise ValueError(f"unknown loss reduction {w.reduction!r}: choose one of {', '.join(LOSS_REDUCTIONS)}")
    h = unroll(model, params, batch.obs)
    h_tgt = jax.lax.stop_gradient(unroll(model, target_params, batch.obs))

    zeros = jnp.zeros(())
    vae_l = poe_l = rob_l = zeros
    z = z_tgt = None
    if method.state_vae:
        vae_per, z, st_mean, st_logvar = state_vae_loss(model, params, batch.state, k_vae, T1)
        vae_l = jnp.sum(vae_per * filled) / per_slot
        t_mean, t_logvar = model.encode_state(target_params, batch.state)  # no decoder needed
        z_tgt = jax.lax.stop_gradient(t_mean + jnp.exp(0.5 * t_logvar) * slot_noise(k_tvae, t_mean.shape, T1))
        if method.messages == "poe":
            poe_l = jnp.sum(poe_distillation_loss(model, params, h, st_mean, st_logvar) * filled) / per_slot
        if method.robust:
            rob = robust_overlap_loss(model, params, h, st_mean, batch.actions, batch.avail, w.radius)
            rob_l = jnp.sum(over_agents(rob, axis=-1) * mask) / per_slot

    q = model.q_train(params, h, z, k_online, slots=T1)  # [B, T, N, A]
    q_tgt = jax.lax.stop_gradient(model.q_train(target_params, h_tgt, z_tgt, k_target, slots=T1))
    q_taken = jnp.take_along_axis(q, batch.actions[..., None], axis=-1)[..., 0]
    greedy_online = masked_argmax(jax.lax.stop_gradient(q), batch.avail)  # double Q
    q_tgt_at = jnp.take_along_axis(q_tgt, greedy_online[..., None], axis=-1)[..., 0]
    q_max_online = jnp.max(jnp.where(batch.avail, q, -jnp.inf), axis=-1)
    q_max_online = jnp.where(jnp.isfinite(q_max_online), q_max_online, 0.0)

    n_act = model.n_actions
    q_tot = model.mix(params, q_taken[:, :-1], batch.state[:, :-1], jax.nn.one_hot(batch.actions[:, :-1], n_act), q_max_online[:, :-1])
    # QPLEX's target advantage (pymarl's DMAQ learner): the target net's value at the online greedy
    # action against the target net's own best; QMIX and VDN ignore it
    q_max_tgt = jnp.max(jnp.where(batch.avail, q_tgt, -jnp.inf), axis=-1)
    q_max_tgt = jnp.where(jnp.isfinite(q_max_tgt), q_max_tgt, q_tgt_at)
    q_tot_tgt = model.mix(
        target_params, q_tgt_at[:, 1:], batch.state[:, 1:], jax.nn.one_hot(greedy_online[:, 1:], n_act), q_max_tgt[:, 1:]
    )
    reward = batch.reward[:, :-1]
    if w.standardise_rewards:
        reward = rew_stats.standardise(reward)
    term = batch.terminated[:, :-1].astype(jnp.float32)
    y = jax.lax.stop_gradient(reward + w.gamma * (1.0 - term) * q_tot_tgt)
    m = mask[:, :-1]
    td = jnp.sum(m * (q_tot - y) ** 2) / jnp.maximum(jnp.sum(m), 1.0)

    total = td + w.vae * vae_l + w.poe * poe_l + robust_on.astype(jnp.float32) * w.robust * rob_l
    aux = LossAux(
        td=td,
        vae=vae_l,
        poe=poe_l,
        robust=rob_l,
        q_taken_mean=jnp.sum(m * q_tot) / jnp.maximum(jnp.sum(m), 1.0),
        target_mean=jnp.sum(m * y) / jnp.maximum(jnp.sum(m), 1.0),
    )
    return total, aux


def clamp_message_encoder(params: Params, c_max: float, enabled: jax.Array, layers: str = "all") -> Params:
    """After an optimiser step, clip the message encoder's parameters to [-C, C] (paper section
    4.2: bounded W keeps the PoE integration error O(eps)). ``enabled`` is a traced bool (the
    clamp's start); ``layers``: "all" weights and biases (the official code) or the "first"
    layer's weight only (the W acting on the message in eq. 12)."""
    if "msg_enc" not in params:
        return params
    clip = lambda p: jnp.where(enabled, jnp.clip(p, -c_max, c_max), p)  # noqa: E731
    enc = params["msg_enc"]
    if layers == "all":
        clipped = jax.tree.map(clip, enc)
    elif layers == "first":
        clipped = {**enc, "hidden": {**enc["hidden"], "kernel": clip(enc["hidden"]["kernel"])}}
    else:
        raise ValueError(f"clamp layers {layers!r}: choose one of {', '.join(CLAMP_LAYERS)}")
    return {**params, "msg_enc": clipped}


def weights_from_config(cfg: Any) -> LossWeights:
    c, t = cfg.cromac, cfg.train
    return LossWeights(
        gamma=t.gamma,
        vae=c.vae_loss_weight,
        poe=c.poe_loss_weight,
        robust=c.robust_weight,
        radius=c.kappa * c.eps,
        standardise_rewards=t.standardise_rewards,
        reduction=c.loss_reduction,
    )
