"""Checkpoint evaluation: load a trained run, play it under built-in and custom attacks, the
certified-action rate, the Table 1 grid and its files, the ``eval`` command and its errors.

One tiny two-seed CroMAC run is trained once for the module (the compile is most of the cost);
every test evaluates it with the same episode count, so compiled evaluators are reused.
"""

import argparse
import csv
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cromac_jax import attacks as A
from cromac_jax import evaluate as ev
from cromac_jax import runner
from cromac_jax.checkpoint import CheckpointError
from cromac_jax.config import ConfigError
from tests.test_train import tiny

E = 8  # episodes per seed in every test (one compile per attack)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("eval") / "run"
    cfg = tiny(num_seeds=2, t_max=300)
    runner.train(cfg, run_dir=run_dir, out=None)
    return run_dir


@pytest.fixture(scope="module")
def run(trained):
    return ev.load_run(trained)


def test_load_run_holds_every_seed_and_the_decision_step_functions(trained, run):
    assert run.n_seeds == 2 and run.step > 0 and run.run_dir == trained
    assert run.cfg == runner.read_config(trained) and run.eps == 0.05
    assert ev.load_run(trained, checkpoint=str(run.step)).step == run.step
    # one decision step, by hand, agrees with the model and with what the episodes play
    p = run.seed_params(1)
    n, obs_dim = run.model.n, run.model.dims.obs_dim
    h = run.agent_step(p, run.model.initial_hidden(), jnp.ones((n, obs_dim)))
    msgs = run.messages(h)
    avail = jnp.ones((n, run.model.n_actions), bool)
    assert msgs.shape == (n, n, run.model.h_dim)
    q = jax.jit(run.q_values)(p, jnp.ones((n, obs_dim)), h, msgs, avail)
    np.testing.assert_allclose(q, run.model.q_values(p, h, msgs), rtol=1e-6)
    assert np.array_equal(run.greedy(p, h, msgs, avail), jnp.argmax(q, -1))


def test_evaluate_per_seed_metrics_same_keys_same_episodes(run):
    nat = ev.evaluate(run, "natural", episodes=E)
    assert nat.win_rate.shape == nat.return_mean.shape == nat.ep_length.shape == (2,)
    assert nat.returns.shape == (2, E)
    assert np.all((0 <= nat.win_rate) & (nat.win_rate <= 1))
    assert np.all((1 <= nat.lengths) & (nat.lengths <= run.env.episode_limit))
    np.testing.assert_allclose(nat.return_std, nat.returns.std(axis=1))
    again = ev.evaluate(run, ev.A.natural, episodes=E)
    assert np.array_equal(again.returns, nat.returns) and np.array_equal(again.lengths, nat.lengths)
    # the per-seed figures are those of the episodes: hallway pays 1 for a win and 0 otherwise
    np.testing.assert_array_equal(nat.win_rate, nat.won.mean(axis=1))
    np.testing.assert_allclose(nat.return_mean, nat.returns.mean(axis=1))
    np.testing.assert_array_equal(nat.ep_length, nat.lengths.mean(axis=1))
    # The key decides the episodes. A tiny run's greedy policy may time out every episode whatever
    # the start, so compare under large random noise on the messages, which makes play erratic.
    noisy = [ev.evaluate(run, "random", episodes=E, eps=20.0, key=jax.random.PRNGKey(k)) for k in (1, 1, 2)]
    assert np.array_equal(noisy[0].lengths, noisy[1].lengths) and np.array_equal(noisy[0].won, noisy[1].won)
    assert not np.array_equal(noisy[0].lengths, noisy[2].lengths)
    for r in (nat, *noisy):
        np.testing.assert_array_equal(r.returns, r.won.astype(float))
    s = ev.evaluate(run, "fgsm", episodes=E).summary()
    assert set(s) == {"win_rate_mean", "win_rate_std", "return_mean_mean", "return_mean_std", "ep_length_mean", "ep_length_std"}


def test_readme_custom_attack_runs_through_evaluate(run):
    # --- README example -------------------------------------------------------------------
    def sign_flip(key, q_fn, hidden, messages, avail, eps, own_mask=None):
        """Push every teammate's message by eps against its own sign (inside the eps-ball)."""
        teammates = A.teammates_only_mask(messages.shape[0])  # [N, M, 1], 0 on the own channel
        return messages - eps * jnp.sign(messages) * teammates

    res = ev.evaluate(run, sign_flip, episodes=E)  # eps defaults to the run's cromac.eps
    # ----------------------------------------------------------------------------------------
    assert res.attack == "sign_flip" and res.eps == run.eps and res.win_rate.shape == (2,)
    rows = ev.eval_grid(run, attacks=[("sign_flip", sign_flip)], budgets=[1], episodes=E, write=False, out=None)
    assert [(r["attack"], r["win_mean"]) for r in rows] == [("sign_flip", float(np.mean(res.win_rate)))]
    # a custom attack that IS fgsm gives exactly the built-in's episodes: one path, no drift
    def my_fgsm(*args, **kw):
        return A.fgsm(*args, **kw)

    a = ev.evaluate(run, my_fgsm, episodes=E, eps=0.1)
    b = ev.evaluate(run, "fgsm", episodes=E, eps=0.1)
    assert np.array_equal(a.returns, b.returns) and np.array_equal(a.lengths, b.lengths)


def test_certified_rate_complete_at_zero_and_shrinking(run):
    rates = [ev.certified_rate(run, episodes=E, eps=e) for e in (0.0, 0.005, 0.05, 0.5, 5.0)]
    np.testing.assert_array_equal(rates[0], [1.0, 1.0])
    for hi, lo in zip(rates[:-1], rates[1:], strict=True):
        assert np.all(lo <= hi), rates
    assert np.all(rates[-1] < 1.0)
    np.testing.assert_array_equal(ev.certified_rate(run, episodes=E), rates[2])  # default: config eps


def test_qmix_attacks_change_nothing_and_every_decision_is_certified():
    """qmix reads no messages: under the same keys FGSM plays exactly the natural episodes.
    (Completeness at eps = 0 for full_comm and AME is checked on random states in
    test_attacks.py, without another compile of the episode loop.)"""
    q = ev.untrained_run(tiny("qmix", num_seeds=2))
    nat = ev.evaluate(q, "natural", episodes=E)
    atk = ev.evaluate(q, "fgsm", episodes=E, eps=1.0)
    for field in ("returns", "lengths", "won"):
        assert np.array_equal(getattr(nat, field), getattr(atk, field)), field
    np.testing.assert_array_equal(ev.certified_rate(q, episodes=E, eps=1.0), [1.0, 1.0])


def test_state_latent_episodes_read_the_state_latent_not_the_messages(run):
    """The diagnostic of the collapse at robust start (README, Results): the same Q head fed the state
    latent's mean. Scrambling the message encoder changes none of its episodes, and one decision
    assembled by hand from the state latent matches it."""
    import dataclasses

    base = ev.evaluate_state_latent(run, episodes=E)
    assert base.win_rate.shape == (2,) and base.attack == "state_latent"

    def with_params(edit):
        params = jax.tree.map(lambda x: x, run.params)
        edit(params)
        return dataclasses.replace(run, params=params)

    def scramble_messages(p):
        p["msg_enc"] = jax.tree.map(lambda x: x + 3.0 * jax.random.normal(jax.random.PRNGKey(1), x.shape), p["msg_enc"])

    scrambled_run = with_params(scramble_messages)
    scrambled = ev.evaluate_state_latent(scrambled_run, episodes=E)
    for field in ("returns", "lengths", "won"):
        assert np.array_equal(getattr(base, field), getattr(scrambled, field)), field
    # one decision, assembled by hand: argmax of the head on [state-latent mean, h_i, one-hot i]
    tr, p = run.trainer, run.seed_params(0)
    ts, _ = tr.env.reset_arrays(jax.random.PRNGKey(5), jax.tree.map(lambda x: x[0], run.env_run))
    h = run.agent_step(p, run.model.initial_hidden(), ts.obs)
    mean, _ = run.model.encode_state(p, ts.world_state)
    n = run.model.n
    x = jnp.concatenate([jnp.broadcast_to(mean, (n, mean.shape[-1])), h, jnp.eye(n)], axis=-1)
    q = run.model.head(p, x)
    expected = jnp.argmax(jnp.where(ts.avail.astype(bool), q, -jnp.inf), axis=-1)
    assert np.array_equal(tr.state_latent_act(p)(jax.random.PRNGKey(6), h, ts), expected)
    # ... while the scramble does reach the message-based Q-values (the check above is not vacuous)
    msgs = run.messages(h)
    assert not np.allclose(run.model.q_values(p, h, msgs), run.model.q_values(scrambled_run.seed_params(0), h, msgs))
    with pytest.raises(ConfigError, match="qmix has no state latent"):
        ev.evaluate_state_latent(ev.untrained_run(tiny("qmix", num_seeds=2)), episodes=E)


def test_eval_grid_rows_and_files(run, trained, capsys):
    rows = ev.eval_grid(run, attacks=["natural", "random", "fgsm", "pgd"], budgets=[1, 2], episodes=E)
    got = [(r["attack"], r["budget"]) for r in rows]
    assert got == [("natural", 0.0), ("random", 1.0), ("random", 2.0), ("fgsm", 1.0), ("fgsm", 2.0), ("pgd", 1.0), ("pgd", 2.0)]
    assert [r["table1"] for r in rows][:4] == ["Natural", "Random", "Random (2x)", "FGSM"] and rows[4]["table1"] == "FGSM (3)"
    fgsm1 = rows[3]
    assert fgsm1["eps"] == pytest.approx(run.eps)
    np.testing.assert_allclose(fgsm1["win_mean"], np.mean(ev.evaluate(run, "fgsm", episodes=E).win_rate))
    np.testing.assert_allclose(fgsm1["certified_mean"], np.mean(ev.certified_rate(run, episodes=E)))
    assert rows[0]["certified_mean"] is None
    printed = capsys.readouterr().out
    assert "| attack | Table 1 |" in printed and "Certified-action rate at the config eps" in printed
    paths = ev.report_paths(run)
    assert paths["md"] == trained / f"eval_{run.step}.md"
    assert paths["md"].read_text().count("\n| ") == len(rows) + 1
    with paths["csv"].open() as f:
        table = list(csv.DictReader(f))
    assert [r["attack"] for r in table] == [a for a, _ in got] and table[0]["certified_mean"] == ""
    data = json.loads(paths["json"].read_text())
    assert data["step"] == run.step and data["seeds"] == 2 and len(data["rows"]) == len(rows)
    assert data["rows"][3]["per_seed"]["win"] == pytest.approx(list(ev.evaluate(run, "fgsm", episodes=E).win_rate))
    assert 0.0 <= data["certified_at_config_eps"]["mean"] <= 1.0
    latent = ev.evaluate_state_latent(run, episodes=E)
    assert data["state_latent"]["per_seed"]["win"] == pytest.approx(list(latent.win_rate))
    assert data["state_latent"]["return_mean"] == pytest.approx(float(np.mean(latent.return_mean)))
    assert "Acting on the state latent instead of the PoE" in printed


def _eval_parser():
    parser = argparse.ArgumentParser(prog="cromac")
    ev.add_eval_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_eval_teammates_only(trained, run, capsys):
    args = _eval_parser().parse_args(["eval", str(trained), "--attacks", "fgsm", "--budgets", "1",
                                      "--episodes", str(E), "--teammates-only"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "teammates' channels attacked only" in out and f"eval_{run.step}_teammates.md" in out
    data = json.loads((trained / f"eval_{run.step}_teammates.json").read_text())
    assert data["attack_own"] is False and [r["attack"] for r in data["rows"]] == ["fgsm"]
    defaults = _eval_parser().parse_args(["eval", str(trained)])
    assert defaults.attacks == ["natural", "random", "fgsm", "pgd"] and defaults.budgets == [0.25, 0.5, 1.0, 2.0, 4.0]
    assert defaults.checkpoint == "latest" and not defaults.teammates_only


def test_cli_eval_seed_chooses_the_evaluation_key(trained, run):
    """``--seed S`` evaluates with PRNGKey(S): the rows are those of ``evaluate`` with that key,
    and the default is the documented train.seed + EVAL_KEY_OFFSET. Under large random noise
    (eps 20, as in the per-seed test above), so that another key plays other episodes."""
    budget = 20.0 / run.eps

    def cli(*extra):
        args = _eval_parser().parse_args(["eval", str(trained), "--attacks", "random", "--budgets", str(budget),
                                          "--episodes", str(E), *extra])
        assert args.func(args) == 0
        return json.loads((trained / f"eval_{run.step}.json").read_text())["rows"][0]["per_seed"]

    got = {}
    for seed in (123, run.cfg.train.seed + ev.EVAL_KEY_OFFSET):
        got[seed] = cli("--seed", str(seed))
        want = ev.evaluate(run, "random", episodes=E, eps=budget * run.eps, key=jax.random.PRNGKey(seed))
        assert got[seed]["return"] == pytest.approx(list(want.return_mean))
        assert got[seed]["ep_length"] == pytest.approx(list(want.ep_length))
    default = cli()
    assert default["ep_length"] == pytest.approx(got[run.cfg.train.seed + ev.EVAL_KEY_OFFSET]["ep_length"])
    assert default["ep_length"] != pytest.approx(got[123]["ep_length"])  # --seed is not ignored


def test_bad_input_is_one_clear_error(trained, run, tmp_path):
    def fails(exc, needle, argv):
        args = _eval_parser().parse_args(["eval", *argv])
        with pytest.raises(exc) as info:
            args.func(args)
        msg = str(info.value)
        assert needle in msg and "\n" not in msg, msg

    fails(CheckpointError, "does not exist", [str(tmp_path / "missing")])
    (tmp_path / "empty").mkdir()
    fails(CheckpointError, "is not a run directory (no config.yaml)", [str(tmp_path / "empty")])
    (tmp_path / "fresh").mkdir()
    (tmp_path / "fresh" / "config.yaml").write_text((trained / "config.yaml").read_text())
    fails(CheckpointError, "no checkpoints in", [str(tmp_path / "fresh")])
    fails(CheckpointError, f"no checkpoint at step 7 in {str(trained)!r}; available: 'latest' or [{run.step}]",
          [str(trained), "--checkpoint", "7"])
    fails(ConfigError, f"checkpoint 'best' is invalid: use 'latest' or one of the saved steps [{run.step}]",
          [str(trained), "--checkpoint", "best"])
    fails(ConfigError, "unknown attack 'fgs'; choose from natural, random, fgsm, pgd", [str(trained), "--attacks", "fgs"])
    fails(ConfigError, "budget -1.0 is invalid", [str(trained), "--budgets", "1", "-1"])
    fails(ConfigError, "episodes=0 is invalid", [str(trained), "--episodes", "0"])
    fails(ConfigError, "--seed -1 is invalid: evaluation keys take seeds in [0, 2**32)", [str(trained), "--seed", "-1"])
    with pytest.raises(ConfigError, match="eps=-0.1 is invalid"):
        ev.evaluate(run, "fgsm", episodes=E, eps=-0.1)
    with pytest.raises(ConfigError, match="budget 'x' is invalid"):
        ev.eval_grid(run, budgets=["x"], episodes=E)
    with pytest.raises(ConfigError, match="attack 3 is invalid"):
        ev.evaluate(run, 3, episodes=E)


def test_certified_fraction_counts_only_real_decisions():
    # 2 episodes x 3 slots x 2 agents, 3 actions; episode 0 played 2 slots, episode 1 played 3
    cert = jnp.array([[[1, 0], [1, 1], [0, 0]],
                      [[0, 0], [1, 0], [1, 1]]], bool)
    avail = jnp.ones((2, 3, 2, 3), bool)
    avail = avail.at[1, 0, 1].set(jnp.array([True, False, False]))  # one action: no decision
    lengths = jnp.array([2, 3])
    # decisions: ep 0 slots 0-1 (4), ep 1 slots 0-2 less the one-action one (5); certified 3 + 3
    np.testing.assert_allclose(float(ev.certified_fraction(cert, avail, lengths)), 6 / 9, rtol=1e-6)
    only_one = jnp.zeros_like(avail).at[..., 0].set(True)
    assert np.isnan(float(ev.certified_fraction(cert, only_one, lengths)))
    assert np.isnan(float(ev.certified_fraction(cert, avail, jnp.array([0, 0]))))
