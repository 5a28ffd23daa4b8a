"""Value-decomposition mixers: VDN, QMIX and QPLEX, behind one call signature.

Every mixer maps the chosen per-agent utilities to a team value and is monotone in each of them
(so decentralised greedy actions are the joint greedy action). One signature for all three —
``mixer(q_chosen [..., N], state [..., S], actions_onehot [..., N, A], q_max [..., N])`` — lets
the learner treat the mixer as a config choice; VDN and QMIX ignore what they do not need.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from cromac_jax.config import MIXERS, ConfigError
from cromac_jax.nn_init import torch_dense


class VDNMixer(nn.Module):
    """Q_tot = sum_i Q_i (Sunehag et al. 2018)."""

    @nn.compact
    def __call__(self, q, state, actions_onehot, q_max):
        del state, actions_onehot, q_max
        return jnp.sum(q, axis=-1)


class QMIXMixer(nn.Module):
    """Monotonic hypernetwork mixer (Rashid et al. 2018), pymarl's 2-layer hypernet variant.

    Weights come from the state through hypernetworks and pass through ``abs`` so that
    dQ_tot/dQ_i >= 0.
    """

    n_agents: int
    embed: int = 32
    hypernet_hidden: int = 64

    @nn.compact
    def __call__(self, q, state, actions_onehot, q_max):
        del actions_onehot, q_max
        n, e = self.n_agents, self.embed
        w1 = torch_dense(self.hypernet_hidden, "hyper_w1_0")(state)
        w1 = torch_dense(n * e, "hyper_w1_1")(nn.relu(w1))
        w1 = jnp.abs(w1).reshape(state.shape[:-1] + (n, e))
        b1 = torch_dense(e, "hyper_b1")(state)
        wf = torch_dense(self.hypernet_hidden, "hyper_wf_0")(state)
        wf = jnp.abs(torch_dense(e, "hyper_wf_1")(nn.relu(wf)))
        v = torch_dense(e, "v_0")(state)
        v = torch_dense(1, "v_1")(nn.relu(v))[..., 0]
        hidden = nn.elu(jnp.einsum("...n,...ne->...e", q, w1) + b1)
        return jnp.sum(hidden * wf, axis=-1) + v


class QPLEXMixer(nn.Module):
    """Duplex dueling mixer (Wang et al. 2021, pymarl's DMAQ without the Qatten stage).

    Individual utilities are first made state-dependent, Q'_i = w_i(s) Q_i + b_i(s) with
    w_i > 0, then split into V'_i = w_i max_a Q_i + b_i and A'_i = Q'_i - V'_i <= 0. The team
    value is Q_tot = sum_i Q'_i + sum_i (lambda_i(s, a) - 1) A'_i, with positive attention
    weights lambda_i = sum_k |key_k(s)| sigmoid(agent_k(s))_i sigmoid(action_k(s, a))_i over
    ``heads`` heads. Since A'_i <= 0 with equality at the greedy action, the greedy joint
    action maximises Q_tot (the IGM property QPLEX is built for). As in pymarl's DMAQ mixer, the
    advantages are detached: the TD error reaches the utilities through sum_i Q'_i alone and trains
    the attention weights through the advantage term.
    """

    n_agents: int
    n_actions: int
    heads: int = 4
    hypernet_hidden: int = 64

    @nn.compact
    def __call__(self, q, state, actions_onehot, q_max):
        n = self.n_agents
        w = torch_dense(self.hypernet_hidden, "hyper_w_0")(state)
        w = jnp.abs(torch_dense(n, "hyper_w_1")(nn.relu(w))) + 1e-10
        b = torch_dense(self.hypernet_hidden, "hyper_b_0")(state)
        b = torch_dense(n, "hyper_b_1")(nn.relu(b)) / n
        q_t = w * q + b
        v_t = w * q_max + b
        adv = jax.lax.stop_gradient(q_t - v_t)
        flat_a = actions_onehot.reshape(actions_onehot.shape[:-2] + (-1,))
        sa = jnp.concatenate([state, flat_a], axis=-1)
        lam = 0.0
        for k in range(self.heads):
            key = jnp.abs(torch_dense(1, f"key_{k}")(state)) + 1e-10
            agents = nn.sigmoid(torch_dense(n, f"agents_{k}")(state))
            action = nn.sigmoid(torch_dense(n, f"action_{k}")(sa))
            lam = lam + key * agents * action
        return jnp.sum(q_t, axis=-1) + jnp.sum((lam - 1.0) * adv, axis=-1)


def make_mixer(name: str, n_agents: int, n_actions: int, embed: int, hypernet_hidden: int, heads: int) -> nn.Module:
    if name == "vdn":
        return VDNMixer()
    if name == "qmix":
        return QMIXMixer(n_agents=n_agents, embed=embed, hypernet_hidden=hypernet_hidden)
    if name == "qplex":
        return QPLEXMixer(n_agents=n_agents, n_actions=n_actions, heads=heads, hypernet_hidden=hypernet_hidden)
    raise ConfigError(f"unknown mixer {name!r}; choose one of {', '.join(MIXERS)}")
