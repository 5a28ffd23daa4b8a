"""Perturbations of the messages each agent receives, inside the compiled evaluation.

Every attack has the signature ``attack(key, q_fn, hidden, messages, avail, eps) -> messages``
with ``messages`` [N, M, H] (row i: what receiver i gets) and ``q_fn(hidden, messages) -> q
[N, A]``. Receiver i's Q-values depend only on row i, so one gradient of the summed objective
gives every receiver its own worst case: each agent is attacked independently, as in the
official code. By default every row is perturbed, the receiver's own hidden state included
(official behaviour); ``own_mask`` (1 = may perturb) restricts attacks to teammates' channels.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

QFn = Callable[[jax.Array, jax.Array], jax.Array]


def _greedy_ce(q_fn: QFn, hidden, avail, labels):
    """Summed cross-entropy of every agent's clean greedy action: what the attacker raises."""

    def objective(messages):
        q = q_fn(hidden, messages)
        logits = jnp.where(avail, q, -1e9)
        logp = jax.nn.log_softmax(logits, axis=-1)
        return -jnp.sum(jnp.take_along_axis(logp, labels[:, None], axis=-1))

    return objective


def _clean_labels(q_fn: QFn, hidden, messages, avail):
    q = q_fn(hidden, messages)
    return jnp.argmax(jnp.where(avail, q, -jnp.inf), axis=-1)


def natural(key, q_fn, hidden, messages, avail, eps, own_mask=None):
    """No perturbation."""
    del key, q_fn, hidden, avail, eps, own_mask
    return messages


def random_noise(key, q_fn, hidden, messages, avail, eps, own_mask=None):
    """Uniform noise in the l-inf ball of radius ``eps``."""
    del q_fn, hidden, avail
    delta = jax.random.uniform(key, messages.shape, minval=-eps, maxval=eps)
    return messages + _restrict(delta, own_mask)


def fgsm(key, q_fn, hidden, messages, avail, eps, own_mask=None):
    """One signed-gradient step of size ``eps`` raising the CE of the clean greedy action."""
    del key
    labels = _clean_labels(q_fn, hidden, messages, avail)
    grad = jax.grad(_greedy_ce(q_fn, hidden, avail, labels))(messages)
    return messages + _restrict(eps * jnp.sign(grad), own_mask)


def make_pgd(steps: int = 10, step_frac: float = 0.25):
    """PGD: a random start in the ball, ``steps`` signed steps of ``step_frac * eps``, each
    projected back onto the eps-ball (Madry et al. 2018). Defaults: 10 steps, alpha = eps/4."""

    def pgd(key, q_fn, hidden, messages, avail, eps, own_mask=None):
        labels = _clean_labels(q_fn, hidden, messages, avail)
        objective = _greedy_ce(q_fn, hidden, avail, labels)
        alpha = step_frac * eps
        delta0 = _restrict(jax.random.uniform(key, messages.shape, minval=-eps, maxval=eps), own_mask)

        def step(delta, _):
            g = jax.grad(objective)(messages + delta)
            delta = jnp.clip(delta + alpha * jnp.sign(g), -eps, eps)
            return _restrict(delta, own_mask), None

        delta, _ = jax.lax.scan(step, delta0, None, length=steps)
        return messages + delta

    return pgd


def _restrict(delta, own_mask):
    return delta if own_mask is None else delta * own_mask


ATTACKS = {"natural": natural, "random": random_noise, "fgsm": fgsm, "pgd": make_pgd()}


def teammates_only_mask(n_agents: int) -> jax.Array:
    """[N, M, 1] mask that leaves each receiver's own row unperturbed."""
    return (1.0 - jnp.eye(n_agents))[..., None]
