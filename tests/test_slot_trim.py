"""The learner trims a batch to the slots its episodes fill: the loss, the gradients and the
update are those of the full batch, and under the seed vmap the trimmed update is a real
branch (computed alone), not a select over every length."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cromac_jax import config as C
from cromac_jax import losses, runner
from cromac_jax.train import make_train, slot_buckets, trim_slots
from tests.test_train import tiny


def test_slot_buckets_are_increasing_and_end_at_the_full_length():
    assert slot_buckets(17, 4) == (5, 9, 13, 17)
    assert slot_buckets(17, 1) == (17,)
    assert slot_buckets(3, 8) == (2, 3)  # never fewer than the two slots of one transition
    for slots in (2, 13, 51, 201):
        for count in (1, 2, 4, 7):
            b = slot_buckets(slots, count)
            assert b[-1] == slots and list(b) == sorted(set(b)) and b[0] >= 2 and len(b) <= count


def test_zero_buckets_is_refused_clearly():
    with pytest.raises(C.ConfigError, match="train.slot_buckets"):
        tiny(slot_buckets=0)


@pytest.fixture(scope="module")
def filled_runner():
    """A two-seed runner whose buffers hold short episodes (hallway with corridors of 2); QMIX,
    the cheapest to compile: the buffers are the same for every method."""
    r = runner.SeedRunner(tiny("qmix", num_seeds=2, slot_buckets=4))
    state = r.init_state()
    for _ in range(3):
        state, _ = r.chunk(state)
    return r, state


def _short_batch(state, seed=0, size=8):
    """The ``size`` shortest stored episodes of one seed (random play times out often)."""
    exp = jax.tree.map(lambda x: np.asarray(x)[seed, 0], state.buffer.experience)
    lengths = exp.filled.sum(axis=1)
    pick = np.argsort(np.where(lengths > 0, lengths, 10**6), kind="stable")[:size]
    exp = jax.tree.map(lambda x: x[pick], exp)
    longest = int(exp.filled.sum(axis=1).max())
    return jax.tree.map(jnp.asarray, exp), longest


@pytest.mark.parametrize("method", ["cromac", "cromac_no_robust", "ame", "full_comm", "qmix"])
@pytest.mark.timeout(300)
def test_trimmed_loss_and_gradients_equal_the_full_batch(filled_runner, method):
    """No normaliser depends on the trim (the official one is the longest episode's filled
    slots) and every random draw (the state VAE's and AME's subsets) is the full batch's, so
    trimming changes nothing but the cost."""
    r, state = filled_runner
    tr = make_train(tiny(method, slot_buckets=4))
    batch, longest = _short_batch(state)
    T1 = batch.reward.shape[1]
    assert longest < T1 - 2, "the test needs episodes shorter than the time limit"
    params = tr.model.init(jax.random.PRNGKey(3))
    target = tr.model.init(jax.random.PRNGKey(4))
    stats = losses.RewardStats.create()

    def value_and_grad(b, slots):
        f = lambda p: losses.loss_fn(tr.model, p, target, b, stats, jnp.array(True), jax.random.PRNGKey(5), tr.weights, slots)  # noqa: E731
        return jax.jit(jax.value_and_grad(f, has_aux=True))(params)

    (full_loss, full_aux), full_g = value_and_grad(batch, None)
    (cut_loss, cut_aux), cut_g = value_and_grad(trim_slots(batch, longest), T1)
    np.testing.assert_allclose(cut_loss, full_loss, rtol=1e-5, atol=1e-7)
    for a, b in zip(jax.tree.leaves(cut_aux), jax.tree.leaves(full_aux), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    for a, b in zip(jax.tree.leaves(cut_g), jax.tree.leaves(full_g), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert float(full_loss) > 0
    # cut into a filled slot and the loss changes: the check above can fail
    (short_loss, _), _ = value_and_grad(trim_slots(batch, longest - 1), T1)
    assert not np.isclose(float(short_loss), float(full_loss), rtol=1e-6)


@pytest.mark.timeout(300)
def test_trimmed_update_equals_the_untrimmed_one(filled_runner):
    r, state = filled_runner
    key = jax.random.PRNGKey(11)
    trimmed = make_train(tiny(slot_buckets=4))
    plain = make_train(tiny(slot_buckets=1))
    one = trimmed.init(jax.random.PRNGKey(2))  # CroMAC, with the runner's filled buffer of seed 0
    one = one.replace(buffer=jax.tree.map(lambda x: x[0], state.buffer),
                      t_env=jnp.asarray(10**6, one.t_env.dtype))  # robust loss and clamp on
    assert len(trimmed.slot_buckets) > 1 and plain.slot_buckets == (plain.model.dims.episode_limit + 1,)
    a, (loss_a, _, _) = jax.jit(trimmed.update)(one, key)
    b, (loss_b, _, _) = jax.jit(plain.update)(one, key)
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-5)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)
    assert int(a.updates) == int(b.updates) == int(one.updates) + 1


def _conds(jaxpr):
    """Branch counts of every ``cond`` in a jaxpr, nested ones included."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "cond":
            found.append(len(eqn.params["branches"]))
        for v in eqn.params.values():
            for sub in v if isinstance(v, (tuple, list)) else (v,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    found.extend(_conds(inner))
    return found


def test_the_seed_vmap_keeps_the_switch_a_branch(filled_runner):
    """Under ``seeds_chunk`` the trimmed length is one value for all seeds, so the switch stays a
    ``cond`` with one branch per length; a per-seed length would have become a select."""
    r, state = filled_runner
    n = len(r.trainer.slot_buckets)
    assert n == 4
    assert n in _conds(jax.make_jaxpr(r.trainer.seeds_chunk)(state).jaxpr)
    assert n not in _conds(jax.make_jaxpr(jax.vmap(r.trainer.train_chunk))(state).jaxpr)
