"""CroMAC's networks and the pure functions of parameters that the learner and evaluator call.

Shape legend: B batch, T time, N agents (and receivers), M messages per receiver (= N: every
agent's hidden state, the receiver's own included), H rnn_hidden, Z z_dim, A actions, S state.

Parameters are one plain dict ``{"agent", "q_head", "mixer", ["msg_enc"], ["state_enc",
"state_dec"]}`` of flax variables, so optax, orbax and ``jax.tree`` treat them as data. The
``CromacModel`` object only holds static structure (module definitions, index tables); every
method is a pure function of its array arguments and can be jitted, vmapped or differentiated.

What the Q head of agent i sees depends on the method (``methods.py``):
- qmix:      [h_i, onehot(i)]
- full_comm: [m_ii, onehot(i), m_ij for teammates j in agent order]
- ame:       [m_ii, onehot(i), keep_j * m_ij for teammates j, keep]
- cromac*:   [z_i, m_ii, onehot(i)] with z_i the PoE of enc(m_i1..m_iN) and the N(0, I) prior in
             execution, and the state-VAE latent in training (as the official code does).
m_ij is the message agent i receives from j; unperturbed, m_ij = h_j. An attacker perturbs m.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cromac_jax import ibp
from cromac_jax.config import Config, ConfigError
from cromac_jax.methods import Method, get_method
from cromac_jax.mixers import make_mixer
from cromac_jax.nn_init import torch_dense, torch_gru

Params = dict[str, Any]
LOGVAR_CLIP = 20.0


def draw_for_slots(
    draw: Callable[[jax.Array, tuple[int, ...]], jax.Array],
    key: jax.Array,
    shape: tuple[int, ...],
    slots: int | None = None,
) -> jax.Array:
    """``draw(key, shape)`` for a learner batch [B, T, ...] trimmed from ``slots`` >= T slots:
    drawn as for the full batch and cut to T, so a trimmed batch sees the same random values as
    the full one and trimming changes the cost of an update and nothing else. Without ``slots``
    (acting, untrimmed batches) ``shape`` is drawn as it is."""
    if slots is None or slots == shape[1]:
        return draw(key, tuple(shape))
    return draw(key, (shape[0], slots, *shape[2:]))[:, : shape[1]]


@dataclass(frozen=True)
class EnvDims:
    """The sizes a model is built for; a mismatch with the env is refused before compiling."""

    n_agents: int
    obs_dim: int
    state_dim: int
    n_actions: int
    episode_limit: int

    @classmethod
    def of(cls, env: Any) -> "EnvDims":
        return cls(**env.describe())

    def validate(self) -> "EnvDims":
        for name in ("n_agents", "obs_dim", "state_dim", "n_actions", "episode_limit"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"environment dimension {name}={v!r} must be an integer >= 1")
        return self


# ------------------------------------------------------------------------------------ modules
class AgentNet(nn.Module):
    """Trajectory encoder: obs -> Dense(H) ReLU -> GRUCell(H); shared by all agents."""

    hidden: int

    @nn.compact
    def __call__(self, h, obs):
        x = nn.relu(torch_dense(self.hidden, "fc")(obs))
        h, _ = torch_gru(self.hidden, "gru")(h, x)
        return h


class GaussianEncoder(nn.Module):
    """x -> Dense ReLU -> (mean, log-variance clipped to [-20, 20]).

    Submodule names match ``ibp.gaussian_encoder`` so the same params give certified bounds.
    """

    hidden: int
    z_dim: int

    @nn.compact
    def __call__(self, x):
        y = nn.relu(torch_dense(self.hidden, "hidden")(x))
        mean = torch_dense(self.z_dim, "mean")(y)
        logvar = jnp.clip(torch_dense(self.z_dim, "logvar")(y), -LOGVAR_CLIP, LOGVAR_CLIP)
        return mean, logvar


class Decoder(nn.Module):
    hidden: int
    out: int

    @nn.compact
    def __call__(self, z):
        return torch_dense(self.out, "out")(nn.relu(torch_dense(self.hidden, "hidden")(z)))


class QHead(nn.Module):
    """Dense(q_hidden) ReLU Dense(A); submodules named for ``ibp.mlp``."""

    hidden: int
    n_actions: int

    @nn.compact
    def __call__(self, x):
        return torch_dense(self.n_actions, "out")(nn.relu(torch_dense(self.hidden, "hidden")(x)))


def _dense_layers(p: Params) -> list[tuple[jax.Array, jax.Array]]:
    return [(p["hidden"]["kernel"], p["hidden"]["bias"]), (p["out"]["kernel"], p["out"]["bias"])]


# ------------------------------------------------------------------------------------ model
class CromacModel:
    """Static structure of one method's networks; all methods are pure in ``params``."""

    def __init__(self, cfg: Config, dims: EnvDims):
        self.cfg = cfg
        self.dims = dims.validate()
        self.method: Method = get_method(cfg.train.method)
        m = cfg.model
        n, a = dims.n_agents, dims.n_actions
        self.n, self.h_dim, self.z_dim, self.n_actions = n, m.rnn_hidden, m.z_dim, a
        self.agent = AgentNet(m.rnn_hidden)
        self.q_head = QHead(m.q_hidden, a)
        self.mixer = make_mixer(m.mixer, n, a, m.mixer_embed, m.hypernet_hidden, m.qplex_heads)
        if self.method.messages == "poe":
            self.msg_enc = GaussianEncoder(m.vae_hidden, m.z_dim)
        if self.method.state_vae:
            self.state_enc = GaussianEncoder(m.vae_hidden, m.z_dim)
            self.state_dec = Decoder(m.vae_hidden, dims.state_dim)
        # teammates[i] = the other agents in index order: the channels agent i receives on
        self.teammates = np.array([[j for j in range(n) if j != i] for i in range(n)], np.int32).reshape(n, n - 1)
        self.ame_masks = self._ame_masks(n - 1, m.ame_k, m.ame_max_subsets)

    # ---------------------------------------------------------------- construction
    @staticmethod
    def _ame_masks(channels: int, k: int, max_subsets: int) -> np.ndarray:
        """The k-subsets of channels AME votes over: all of them when there are at most
        ``max_subsets``, else ``max_subsets`` distinct ones drawn once with a fixed seed (so an
        evaluation is reproducible and every checkpoint votes over the same subsets)."""
        if channels == 0:
            return np.zeros((1, 0), np.float32)
        k = min(k, channels)
        total = math.comb(channels, k)
        if total <= max_subsets:
            subsets = list(itertools.combinations(range(channels), k))
        else:
            rng = np.random.default_rng(0)
            chosen: set[tuple[int, ...]] = set()
            while len(chosen) < max_subsets:
                chosen.add(tuple(sorted(rng.choice(channels, k, replace=False).tolist())))
            subsets = sorted(chosen)
        masks = np.zeros((len(subsets), channels), np.float32)
        for r, s in enumerate(subsets):
            masks[r, list(s)] = 1.0
        return masks

    @property
    def head_in_dim(self) -> int:
        n, h = self.n, self.h_dim
        extra = {"none": 0, "concat": (n - 1) * h, "ablated": (n - 1) * (h + 1), "poe": self.z_dim}
        return h + n + extra[self.method.messages]

    def init(self, key: jax.Array) -> Params:
        d, n = self.dims, self.n
        keys = jax.random.split(key, 6)
        h0 = jnp.zeros((n, self.h_dim))
        params: Params = {
            "agent": self.agent.init(keys[0], h0, jnp.zeros((n, d.obs_dim)))["params"],
            "q_head": self.q_head.init(keys[1], jnp.zeros((n, self.head_in_dim)))["params"],
        }
        mix_args = (jnp.zeros((n,)), jnp.zeros((d.state_dim,)), jnp.zeros((n, d.n_actions)), jnp.zeros((n,)))
        mixer_vars = self.mixer.init(keys[2], *mix_args)
        params["mixer"] = mixer_vars.get("params", {})
        if self.method.messages == "poe":
            params["msg_enc"] = self.msg_enc.init(keys[3], h0)["params"]
        if self.method.state_vae:
            params["state_enc"] = self.state_enc.init(keys[4], jnp.zeros((d.state_dim,)))["params"]
            params["state_dec"] = self.state_dec.init(keys[5], jnp.zeros((self.z_dim,)))["params"]
        return params

    def check_params(self, params: Params) -> None:
        """Refuse parameters built for another env or method (e.g. a mismatched checkpoint)."""
        expected = jax.eval_shape(self.init, jax.random.PRNGKey(0))
        got = jax.tree.map(lambda x: getattr(x, "shape", None), params)
        want = jax.tree.map(lambda x: x.shape, expected)
        if jax.tree.structure(got) != jax.tree.structure(want) or got != want:
            raise ConfigError(
                "parameters do not match this model (env dims "
                f"{self.dims}, method {self.method.name!r}, mixer {self.cfg.model.mixer!r})"
            )

    # ---------------------------------------------------------------- building blocks
    def initial_hidden(self, batch_shape: tuple[int, ...] = ()) -> jax.Array:
        return jnp.zeros(batch_shape + (self.n, self.h_dim))

    def _check_shape(self, what: str, x: jax.Array, tail: tuple[int, ...]) -> None:
        """Shapes are static under jit, so this check costs nothing at run time."""
        if tuple(x.shape[-len(tail):]) != tail:
            raise ConfigError(
                f"{what} has shape {tuple(x.shape)}, but the model was built for trailing dims {tail} "
                f"(env dims {self.dims})"
            )

    def agent_step(self, params: Params, h: jax.Array, obs: jax.Array) -> jax.Array:
        """[..., N, H], [..., N, O] -> [..., N, H] (parameters shared across agents)."""
        self._check_shape("observation", obs, (self.n, self.dims.obs_dim))
        self._check_shape("hidden state", h, (self.n, self.h_dim))
        return self.agent.apply({"params": params["agent"]}, h, obs)

    def head(self, params: Params, x: jax.Array) -> jax.Array:
        return self.q_head.apply({"params": params["q_head"]}, x)

    def ids(self, batch_shape: tuple[int, ...]) -> jax.Array:
        return jnp.broadcast_to(jnp.eye(self.n), batch_shape + (self.n, self.n))

    def encode_state(self, params: Params, state: jax.Array) -> tuple[jax.Array, jax.Array]:
        """State VAE encoder: [..., S] -> (mean, logvar) [..., Z]."""
        return self.state_enc.apply({"params": params["state_enc"]}, state)

    def decode_state(self, params: Params, z: jax.Array) -> jax.Array:
        return self.state_dec.apply({"params": params["state_dec"]}, z)

    def encode_messages(self, params: Params, messages: jax.Array) -> tuple[jax.Array, jax.Array]:
        """PoE of the encoded messages with the N(0, I) prior: [..., M, H] -> (mean, var) [..., Z]."""
        mean, logvar = self.msg_enc.apply({"params": params["msg_enc"]}, messages)
        return ibp.poe_apply(mean, jnp.exp(logvar), prior=True)

    def teammate_messages(self, messages: jax.Array) -> jax.Array:
        """[..., N, M, H] -> [..., N, N-1, H]: receiver i's channels from its teammates."""
        rows = np.arange(self.n)[:, None]
        return messages[..., rows, self.teammates, :]

    def own_messages(self, messages: jax.Array) -> jax.Array:
        """[..., N, M, H] -> [..., N, H]: m_ii, the receiver's own hidden state as it fuses it."""
        idx = np.arange(self.n)
        return messages[..., idx, idx, :]

    def broadcast_messages(self, h: jax.Array) -> jax.Array:
        """Unperturbed communication: every receiver gets every hidden state, [..., N, H] -> [..., N, N, H]."""
        return jnp.broadcast_to(h[..., None, :, :], h.shape[:-2] + (self.n, self.n, self.h_dim))

    def head_input(
        self,
        own: jax.Array,
        z: jax.Array | None = None,
        teammates: jax.Array | None = None,
        keep: jax.Array | None = None,
    ) -> jax.Array:
        """Assemble the Q-head input of ``methods.py``'s layout (own: [..., N, H])."""
        batch = own.shape[:-2]
        parts = []
        if self.method.messages == "poe":
            parts.append(jnp.broadcast_to(z, batch + (self.n, self.z_dim)))
        parts += [own, self.ids(batch)]
        if self.method.messages == "concat":
            parts.append(teammates.reshape(batch + (self.n, -1)))
        elif self.method.messages == "ablated":
            parts.append((teammates * keep[..., None]).reshape(batch + (self.n, -1)))
            parts.append(keep)
        return jnp.concatenate(parts, axis=-1)

    # ---------------------------------------------------------------- training-time values
    def sample_ame_keep(self, key: jax.Array, batch_shape: tuple[int, ...]) -> jax.Array:
        """One random k-subset of teammates per decision (AME's training distribution)."""
        rows = jax.random.randint(key, batch_shape + (self.n,), 0, self.ame_masks.shape[0])
        return jnp.asarray(self.ame_masks)[rows]

    def q_train(
        self,
        params: Params,
        h: jax.Array,
        z_state: jax.Array | None = None,
        key: jax.Array | None = None,
        slots: int | None = None,
    ) -> jax.Array:
        """Q-values as training sees them (acting in training episodes and in the learner).

        ``h`` [..., N, H] are the agents' hidden states, messages are unperturbed; CroMAC methods
        take ``z_state`` [..., Z], the state-VAE latent; AME draws its subsets from ``key`` (for a
        learner batch [B, T, N, H] trimmed from ``slots`` slots, as drawn for the full batch).
        """
        kind = self.method.messages
        if kind == "none":
            return self.head(params, self.head_input(h))
        if kind == "poe":
            return self.head(params, self.head_input(h, z=z_state[..., None, :]))
        tm = self.teammate_messages(self.broadcast_messages(h))
        if kind == "concat":
            return self.head(params, self.head_input(h, teammates=tm))
        keep = draw_for_slots(self.sample_ame_keep, key, h.shape[:-2], slots)
        return self.head(params, self.head_input(h, teammates=tm, keep=keep))

    # ---------------------------------------------------------------- execution-time values
    def q_values(self, params: Params, hidden: jax.Array, messages: jax.Array) -> jax.Array:
        """Decentralised Q-values [..., N, A] from what each agent holds and receives.

        ``hidden`` [..., N, H] is each agent's own clean hidden state (all that qmix reads);
        ``messages`` [..., N, M, H] is what each receiver gets (possibly attacked). AME's value
        for an action is the mean of its ensemble members' Q-values; its decision is the vote
        of ``ame_vote``.
        """
        kind = self.method.messages
        self._check_shape("hidden state", hidden, (self.n, self.h_dim))
        if kind == "none":
            return self.head(params, self.head_input(hidden))
        self._check_shape("messages", messages, (self.n, self.n, self.h_dim))
        own = self.own_messages(messages)
        if kind == "poe":
            z, _ = self.encode_messages(params, messages)
            return self.head(params, self.head_input(own, z=z))
        tm = self.teammate_messages(messages)
        if kind == "concat":
            return self.head(params, self.head_input(own, teammates=tm))
        return jnp.mean(self._ame_member_q(params, own, tm), axis=-3)

    def _ame_member_q(self, params: Params, own: jax.Array, tm: jax.Array) -> jax.Array:
        """Q of every ensemble member: [D, ..., N, A]."""
        masks = jnp.asarray(self.ame_masks)

        def member(mask):
            keep = jnp.broadcast_to(mask, own.shape[:-1] + (mask.shape[-1],))
            return self.head(params, self.head_input(own, teammates=tm, keep=keep))

        return jax.vmap(member)(masks)

    def greedy(self, params: Params, hidden: jax.Array, messages: jax.Array, avail: jax.Array) -> jax.Array:
        """Greedy decentralised actions [..., N] over available actions.

        AME votes: each member picks its greedy available action, the most-voted action wins,
        ties go to the lowest action index (``argmax`` order) — deterministic.
        """
        if self.method.messages == "ablated":
            own = self.own_messages(messages)
            q = self._ame_member_q(params, own, self.teammate_messages(messages))
            picks = masked_argmax(q, avail[None])
            votes = jax.nn.one_hot(picks, self.n_actions).sum(axis=0)
            return masked_argmax(votes, avail)
        return masked_argmax(self.q_values(params, hidden, messages), avail)

    # ---------------------------------------------------------------- IBP bounds
    def q_bounds_latent(self, params: Params, z_mean: jax.Array, h: jax.Array, radius: float | jax.Array) -> ibp.Interval:
        """Q bounds for the robust loss (paper eq. 14-15): z and h_i in an l-inf ball of
        ``radius`` (= kappa * eps) around the state latent mean and the hidden state; the agent
        id is exact. z_mean [..., Z], h [..., N, H] -> Interval [..., N, A]."""
        batch = h.shape[:-2]
        z = jnp.broadcast_to(z_mean[..., None, :], batch + (self.n, self.z_dim))
        x = ibp.Interval.concat(
            [ibp.Interval.ball(z, radius), ibp.Interval.ball(h, radius), ibp.Interval.point(self.ids(batch))]
        )
        return ibp.mlp(x, _dense_layers(params["q_head"]), ibp.relu)

    def q_bounds_messages(
        self, params: Params, messages: jax.Array, eps: float | jax.Array, attack_own: bool = True
    ) -> ibp.Interval:
        """Q bounds under every message perturbation within ``eps`` (l-inf, per row):
        through the encoder and the PoE into the head for CroMAC, through the concatenation
        for Full-Comm, and exactly the clean values for qmix. [..., N, M, H] -> [..., N, A].

        With ``attack_own=False`` the receiver's own row is exact (only teammates attacked).
        """
        kind = self.method.messages
        if kind == "none":
            raise ConfigError("qmix reads no messages: its Q-values do not depend on them")
        if kind == "ablated":
            raise ConfigError("AME's certificate is its vote margin, not an IBP bound")
        radius = jnp.full(messages.shape, eps, messages.dtype)
        if not attack_own:
            own_mask = jnp.eye(self.n, dtype=bool)[..., None]
            radius = jnp.where(own_mask, 0.0, radius)
        m = ibp.Interval(messages - radius, messages + radius)
        batch = messages.shape[:-3]
        own = ibp.Interval(self.own_messages(m.lower), self.own_messages(m.upper))
        ids = ibp.Interval.point(self.ids(batch))
        if kind == "poe":
            means, vars_ = ibp.gaussian_encoder(m, params["msg_enc"])
            z, _ = ibp.poe(means, vars_, prior=True)
            x = ibp.Interval.concat([z, own, ids])
        else:
            tm_lo, tm_hi = self.teammate_messages(m.lower), self.teammate_messages(m.upper)
            flat = lambda a: a.reshape(batch + (self.n, -1))  # noqa: E731
            x = ibp.Interval.concat([own, ids, ibp.Interval(flat(tm_lo), flat(tm_hi))])
        return ibp.mlp(x, _dense_layers(params["q_head"]), ibp.relu)

    # ---------------------------------------------------------------- mixing
    def mix(self, params: Params, q_chosen, state, actions_onehot, q_max) -> jax.Array:
        return self.mixer.apply({"params": params["mixer"]}, q_chosen, state, actions_onehot, q_max)


def masked_argmax(q: jax.Array, avail: jax.Array) -> jax.Array:
    """argmax over available actions (unavailable ones never win; ties -> lowest index)."""
    return jnp.argmax(jnp.where(avail.astype(bool), q, -jnp.inf), axis=-1).astype(jnp.int32)
