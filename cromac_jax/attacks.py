"""Perturbations of the messages each agent receives, inside the compiled evaluation.

Every attack has the signature::

    attack(key, q_fn, hidden, messages, avail, eps, own_mask=None) -> messages

with ``hidden`` [N, H] the agents' own (clean) hidden states, ``messages`` [N, M, H] (row i: what
receiver i gets; unperturbed, ``messages[i, j] = hidden[j]``), ``avail`` [N, A] bool,
``q_fn(hidden, messages) -> q [N, A]`` the decentralised Q-values, and ``eps`` the l-inf radius
(a Python float or a traced scalar: one compiled attack serves every budget). Receiver i's
Q-values depend only on row i, so one gradient of the summed objective gives every receiver its
own worst case: each agent is attacked independently, as in the official code. By default every
row is perturbed, the receiver's own hidden state included (official behaviour, ENV_SPEC 5.4);
``own_mask`` [N, M, 1] (1 = may perturb; :func:`teammates_only_mask`) restricts attacks to the
teammates' channels. An attack must return messages inside the eps-ball around ``messages``.

Built-in attacks (``ATTACKS``; the names the evaluator and ``cromac eval`` accept):

* ``natural`` -- no perturbation.
* ``random``  -- uniform noise in the eps-ball.
* ``fgsm``    -- the official attack: one signed-gradient step of size eps that raises the
  cross-entropy of each agent's clean greedy action (over its available actions).
* ``pgd``     -- projected gradient descent on the same objective (Madry et al. 2018): a uniform
  random start in the ball, then ``PGD_STEPS = 10`` signed steps of ``alpha = eps / 4``, each
  projected back onto the eps-ball (``make_pgd`` builds other variants).

For AME, ``q_fn`` is the ensemble-mean Q (``CromacModel.q_values``): the gradient attacks
target that differentiable surrogate of its vote, and the vote decides the action.

Methods that read no messages (qmix) are unaffected by construction: their Q-values do not
depend on ``messages`` (the gradient is zero, FGSM leaves the messages as they are, and any
perturbation leaves the decisions unchanged).

Budgets (Table 1 of the paper). The paper's columns are ``Natural, Random, PGD, FGSM (1),
FGSM (2), FGSM, FGSM (3), FGSM (4)``, where "FGSM" is the training condition (eps =
``cromac.eps``) and "FGSM (n) refers to methods under FGSM attack with different budgets"; the
budget values live in its Appendix D, which is not part of the text we have. The column order
and the numbers (win rates fall from FGSM (1) to FGSM (4), e.g. AME on hallway 0.66 -> 0.10)
say that FGSM (1), (2) are budgets below the training eps and FGSM (3), (4) above it: the ``n``
is an index, not a multiplier (FGSM (1) is not FGSM). We therefore express budgets as
multiples of the config eps and default to a factor-of-two ladder around it::

    DEFAULT_BUDGETS = (0.25, 0.5, 1.0, 2.0, 4.0)   # FGSM (1), FGSM (2), FGSM, FGSM (3), FGSM (4)

Random and PGD in Table 1 are read at the training budget (multiple 1.0).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from cromac_jax.config import ConfigError

QFn = Callable[[jax.Array, jax.Array], jax.Array]
#: attack(key, q_fn, hidden [N, H], messages [N, M, H], avail [N, A], eps, own_mask) -> messages
AttackFn = Callable[..., jax.Array]

#: Budgets as multiples of the config eps: Table 1's FGSM (1), FGSM (2), FGSM, FGSM (3), FGSM (4).
DEFAULT_BUDGETS: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
#: The Table 1 column each default budget multiple stands for (for labels in reports).
TABLE1_FGSM_LABELS: dict[float, str] = {0.25: "FGSM (1)", 0.5: "FGSM (2)", 1.0: "FGSM", 2.0: "FGSM (3)", 4.0: "FGSM (4)"}
PGD_STEPS = 10
PGD_STEP_FRAC = 0.25


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


def greedy_ce(q_fn: QFn, hidden, messages, avail, attacked_messages) -> jax.Array:
    """The attack objective, for tests and custom attacks: the summed cross-entropy of every
    agent's greedy action on ``messages`` (clean), evaluated at ``attacked_messages``."""
    avail = avail.astype(bool)
    labels = _clean_labels(q_fn, hidden, messages, avail)
    return _greedy_ce(q_fn, hidden, avail, labels)(attacked_messages)


def natural(key, q_fn, hidden, messages, avail, eps, own_mask=None):
    """No perturbation."""
    del key, q_fn, hidden, avail, eps, own_mask
    return messages


def random_noise(key, q_fn, hidden, messages, avail, eps, own_mask=None):
    """Uniform noise in the l-inf ball of radius ``eps``."""
    del q_fn, hidden, avail
    delta = jax.random.uniform(key, messages.shape, messages.dtype, minval=-eps, maxval=eps)
    return messages + _restrict(delta, own_mask)


def fgsm(key, q_fn, hidden, messages, avail, eps, own_mask=None):
    """One signed-gradient step of size ``eps`` raising the CE of the clean greedy action
    (the official test-time attack). Entries with a zero gradient are left unperturbed."""
    del key
    avail = avail.astype(bool)
    labels = _clean_labels(q_fn, hidden, messages, avail)
    grad = jax.grad(_greedy_ce(q_fn, hidden, avail, labels))(messages)
    return messages + _restrict(eps * jnp.sign(grad), own_mask)


def make_pgd(steps: int = PGD_STEPS, step_frac: float = PGD_STEP_FRAC, random_start: bool = True) -> AttackFn:
    """PGD: (optionally) a uniform random start in the ball, ``steps`` signed steps of size
    ``alpha = step_frac * eps``, each projected back onto the eps-ball (Madry et al. 2018).
    Defaults: 10 steps, alpha = eps/4, random start. ``make_pgd(1, 1.0, False)`` is FGSM."""
    if steps < 1 or step_frac <= 0:
        raise ConfigError(f"pgd needs steps >= 1 and step_frac > 0, got steps={steps}, step_frac={step_frac}")

    def pgd(key, q_fn, hidden, messages, avail, eps, own_mask=None):
        avail = avail.astype(bool)
        labels = _clean_labels(q_fn, hidden, messages, avail)
        objective = _greedy_ce(q_fn, hidden, avail, labels)
        alpha = step_frac * eps
        if random_start:
            delta0 = jax.random.uniform(key, messages.shape, messages.dtype, minval=-eps, maxval=eps)
        else:
            delta0 = jnp.zeros_like(messages)
        delta0 = _restrict(delta0, own_mask)

        def step(delta, _):
            g = jax.grad(objective)(messages + delta)
            delta = jnp.clip(delta + alpha * jnp.sign(g), -eps, eps)
            return _restrict(delta, own_mask), None

        delta, _ = jax.lax.scan(step, delta0, None, length=steps)
        return messages + delta

    pgd.__doc__ = f"PGD: {steps} steps of {step_frac} * eps, {'random' if random_start else 'zero'} start."
    return pgd


def _restrict(delta, own_mask):
    return delta if own_mask is None else delta * own_mask


pgd = make_pgd()
ATTACKS: dict[str, AttackFn] = {"natural": natural, "random": random_noise, "fgsm": fgsm, "pgd": pgd}


def get_attack(name: str) -> AttackFn:
    """The built-in attack called ``name``; an unknown name is refused naming the choices."""
    if name not in ATTACKS:
        raise ConfigError(f"unknown attack {name!r}; choose from {', '.join(ATTACKS)}")
    return ATTACKS[name]


def teammates_only_mask(n_agents: int) -> jax.Array:
    """[N, M, 1] mask that leaves each receiver's own row unperturbed."""
    return (1.0 - jnp.eye(n_agents))[..., None]
