"""The compiled trainer: it learns, seeds are independent and vmapped, resume is exact, and the
CLI speaks in one clear line on bad input."""

import io
import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

from cromac_jax import checkpoint, cli, runner, stopping
from cromac_jax import config as C
from cromac_jax.train import seed_keys


def tiny(method="cromac", **train):
    base = {
        "env": {"name": "hallway_4x5x6", "overrides": {"state_numbers": [2, 2]}},
        "model": {"rnn_hidden": 8, "z_dim": 4, "vae_hidden": 8, "mixer_embed": 8, "hypernet_hidden": 8},
        "train": {"method": method, "t_max": 600, "num_envs": 4, "buffer_size": 64, "batch_size": 4,
                  "learning_starts": 4, "updates_per_iteration": 2, "chunk_iterations": 3,
                  "test_interval": 300, "test_nepisode": 4, "checkpoint_interval": 10**9,
                  "slot_buckets": 1, **train},  # untrimmed: tests of trimming itself, seeds, resume and devices ask for 2
        "cromac": {"robust_start": 100},
    }
    return C.resolve(base)


def leaves_equal(a, b):
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


@pytest.fixture(scope="module")
def two_seeds():
    """One compiled two-seed runner shared by the tests below (compiling it is most of their time)."""
    return runner.SeedRunner(tiny(num_seeds=2, slot_buckets=2))


@pytest.mark.timeout(300)
def test_two_seeds_vmapped_are_independent_and_match_single_seed_runs(two_seeds):
    """Multi-seed training must not hang (QR-under-vmap trap) and seed s of an S-seed run is
    the same run as seed s alone."""
    r2 = two_seeds
    cfg2 = r2.cfg
    s2, m2 = r2.chunk(r2.init_state())
    # every seed stops at exactly its own budget, even though seeds run at different rates
    done = jax.tree.map(lambda x: x.copy(), s2)
    for _ in range(40):
        done, _ = r2.chunk(done)
        if np.min(np.asarray(done.t_env)) >= cfg2.train.t_max:
            break
    t_done = np.asarray(done.t_env)
    one_iteration = cfg2.train.num_envs * 12  # num_envs episodes of at most episode_limit steps
    assert np.all(t_done >= cfg2.train.t_max) and np.all(t_done <= cfg2.train.t_max + one_iteration)
    cfg1 = tiny(num_seeds=1, slot_buckets=2)
    r1 = runner.SeedRunner(cfg1)
    s1, m1 = r1.chunk(r1.init_state())
    first = jax.tree.map(lambda x: x[0], s2.params)
    only = jax.tree.map(lambda x: x[0], s1.params)
    for x, y in zip(jax.tree.leaves(first), jax.tree.leaves(only), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)
    p0 = jax.tree.map(lambda x: x[0], s2.params)
    p1 = jax.tree.map(lambda x: x[1], s2.params)
    assert not leaves_equal(p0, p1)
    assert np.asarray(m2.updates).shape == (2, 3)
    assert np.asarray(seed_keys(cfg2)).shape[0] == 2


@pytest.mark.timeout(300)
def test_a_seed_past_its_budget_is_left_out_of_the_chunk(tmp_path, two_seeds):
    """On one device a finished seed is not computed again: its state stays as it was, its train
    metrics are NaN (None in the records), and the other seeds train as in the full program."""
    r = two_seeds
    cfg = r.cfg
    assert r.sharding is None
    state, _ = r.chunk(r.init_state())
    state = state.replace(t_env=state.t_env.at[0].set(cfg.train.t_max))  # seed 0 has used its budget
    before = jax.tree.map(np.asarray, state)
    full_state, full_m = r._chunk(jax.tree.map(jnp.copy, state))  # every seed, seed 0 frozen in-program
    new, m = r.chunk(state)
    seed = lambda tree, i: jax.tree.map(lambda x: np.asarray(x)[i], tree)  # noqa: E731
    assert leaves_equal(seed(new, 0), seed(before, 0)) and leaves_equal(seed(full_state, 0), seed(before, 0))
    for x, y in zip(jax.tree.leaves(seed(new.params, 1)), jax.tree.leaves(seed(full_state.params, 1)), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    assert int(new.t_env[1]) > int(before.t_env[1]) and int(new.updates[1]) == int(full_state.updates[1])
    loss = np.asarray(m.loss)
    assert np.all(np.isnan(loss[0])) and np.all(np.isfinite(loss[1]))
    np.testing.assert_allclose(loss[1], np.asarray(full_m.loss)[1], rtol=1e-4)
    assert np.all(np.asarray(m.t_env)[0] == cfg.train.t_max) and np.all(np.asarray(m.updates)[0] == int(before.updates[0]))
    record = runner._summarise(m)
    assert record["loss"][0] is None and record["loss"][1] is not None and record["t_env"][0] == cfg.train.t_max
    assert runner.seed_mean(record["loss"]) == pytest.approx(record["loss"][1])
    runner._check_finite(m, tmp_path, trained=np.array([False, True]))  # seed 0's NaNs are not an error
    runner._write_csv(tmp_path / "m.csv", {"kind": "train", **record})
    rows = (tmp_path / "m.csv").read_text().splitlines()
    assert rows[1].startswith("0,") and ",," in rows[1] and ",," not in rows[2]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The uninterrupted run both resume tests compare against (trained once per module)."""
    cfg = tiny(t_max=500, slot_buckets=2)
    root = tmp_path_factory.mktemp("uninterrupted")
    return cfg, root, runner.train(cfg, run_dir=root / "full", out=None)


@pytest.mark.timeout(600)
def test_resume_from_checkpoint_matches_uninterrupted_run(tmp_path, uninterrupted):
    cfg, root, full = uninterrupted
    full_dir = root / "full"
    part = runner.train(cfg, run_dir=tmp_path / "part", out=None, max_chunks=2)
    assert part.chunks == 2 and np.all(part.t_env < full.t_env)
    # a process killed after its checkpoint leaves records the resumed run will write again
    full_lines = [json.loads(x) for x in (full_dir / "metrics.jsonl").read_text().splitlines()]
    dead = [ln for ln in full_lines if np.any(np.asarray(ln["t_env"]) > part.t_env)][:3]
    assert dead
    for ln in dead:
        runner.append_record(tmp_path / "part" / "metrics.jsonl", ln)
    resumed = runner.train(cfg, run_dir=tmp_path / "part", resume=True, out=None)
    assert np.array_equal(resumed.t_env, full.t_env)
    part_lines = [json.loads(x) for x in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert [(ln["kind"], ln["t_env"]) for ln in part_lines] == [(ln["kind"], ln["t_env"]) for ln in full_lines]
    csv_rows = [(d / "metrics.csv").read_text().splitlines() for d in (full_dir, tmp_path / "part")]
    assert len(csv_rows[0]) == len(csv_rows[1]) and [r.split(",")[:3] for r in csv_rows[0]] == [r.split(",")[:3] for r in csv_rows[1]]
    sr = runner.SeedRunner(cfg)
    _, a = checkpoint.restore(full_dir, sr.abstract_state())
    _, b = checkpoint.restore(tmp_path / "part", sr.abstract_state())
    assert leaves_equal(a.params, b.params)
    assert leaves_equal(a.buffer, b.buffer)
    assert int(a.updates[0]) == int(b.updates[0]) > 0
    # metrics: one train line per chunk, test lines with clean and FGSM results
    lines = [json.loads(x) for x in (full_dir / "metrics.jsonl").read_text().splitlines()]
    assert {ln["kind"] for ln in lines} == {"train", "test"}
    test = [ln for ln in lines if ln["kind"] == "test"][-1]
    assert "test_won_mean" in test and "test_fgsm_won_mean" in test
    # the run dir's config is data, and resuming with another config is refused
    assert yaml.safe_load((full_dir / "config.yaml").read_text())["train"]["method"] == "cromac"
    with pytest.raises(C.ConfigError, match="config differs.*train.t_max"):
        runner.train(tiny(t_max=900, slot_buckets=2), run_dir=full_dir, resume=True, out=None)
    with pytest.raises(C.ConfigError, match="already holds checkpoints"):
        runner.train(cfg, run_dir=full_dir, out=None)
    _check_tensorboard_events(full_dir, lines)  # last: it skips where tensorboardX is not installed


@pytest.mark.timeout(600)
def test_sigterm_stops_at_a_chunk_boundary_with_a_checkpoint_and_resume_matches(tmp_path, uninterrupted):
    """A stop requested mid-run (SIGTERM here; Ctrl-C is the same) saves the state it reached,
    between the interval checkpoints, and the resumed run is the uninterrupted one."""
    cfg, root, full = uninterrupted
    full_dir = root / "full"
    seen = []

    def stop_after_two_chunks(record):
        seen.append(int(min(record["t_env"])))
        if len(seen) == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    lines = io.StringIO()
    with pytest.raises(stopping.TrainingStopped) as stopped:
        runner.train(cfg, run_dir=tmp_path / "part", out=lines, on_chunk=stop_after_two_chunks)
    assert stopped.value.exit_code == 128 + signal.SIGTERM and len(seen) == 2
    assert checkpoint.all_steps(tmp_path / "part") == [seen[-1]]  # checkpoint_interval is 10**9: the stop's own
    assert f"stopped by SIGTERM at {seen[-1]:,} env steps" in lines.getvalue()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    resumed = runner.train(cfg, run_dir=tmp_path / "part", resume=True, out=None)
    assert np.array_equal(resumed.t_env, full.t_env)
    records = [[(r["kind"], r["t_env"]) for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())]
               for d in (full_dir, tmp_path / "part")]
    assert records[0] == records[1]
    sr = runner.SeedRunner(cfg)
    _, a = checkpoint.restore(full_dir, sr.abstract_state())
    _, b = checkpoint.restore(tmp_path / "part", sr.abstract_state())
    assert leaves_equal(a.params, b.params) and leaves_equal(a.buffer, b.buffer)


def _test_steps(run_dir):
    return [ln["t_env"] for ln in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if ln["kind"] == "test"]


@pytest.mark.timeout(600)
def test_a_finished_run_trained_on_to_a_new_budget_matches_one_trained_to_it(tmp_path, uninterrupted, capsys):
    """``cromac train --resume RUN --t-max N``: the budget only says when each seed stops, so a run
    trained to 250 and then on to 500 is the run trained to 500 from the start."""
    cfg, root, full = uninterrupted
    short = tmp_path / "short"
    runner.train(C.replace(cfg, train={"t_max": 250}), run_dir=short, out=None)
    first = _test_steps(short)
    assert cli.main(["train", "--resume", str(short), "--t-max", str(cfg.train.t_max)]) == 0
    assert "t_max 250 -> 500 env steps per seed" in capsys.readouterr().out
    assert checkpoint.read_config(short) == cfg  # the run dir's config now says what it was trained to
    sr = runner.SeedRunner(cfg)
    _, a = checkpoint.restore(root / "full", sr.abstract_state())
    _, b = checkpoint.restore(short, sr.abstract_state())
    assert np.array_equal(np.asarray(a.t_env), np.asarray(b.t_env)) and np.all(np.asarray(b.t_env) >= 500)
    assert leaves_equal(a.params, b.params) and leaves_equal(a.buffer, b.buffer)
    # its records keep the test at the old budget's end; the final test is the uninterrupted run's
    tests, full_tests = _test_steps(short), _test_steps(root / "full")
    assert tests[:len(first)] == first and first[-1][0] < 300 and first[-1] not in full_tests
    assert tests[-1] == full_tests[-1] and len(tests) == len(full_tests) + 1
    assert (short / "summary.txt").read_text() == (root / "full" / "summary.txt").read_text()
    # trained to its budget, a plain resume has nothing to do and writes nothing
    before = (short / "metrics.jsonl").read_text()
    assert cli.main(["train", "--resume", str(short)]) == 0
    assert "already trained to its t_max 500" in capsys.readouterr().out
    # a budget the run has already used (given, or edited into config.yaml), or any other setting, is
    # refused in one line before anything is restored or written
    assert cli.main(["train", "--resume", str(short), "--t-max", "400"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot give" in err[0] and "t_max 400" in err[0] and "must be larger" in err[0], err
    with pytest.raises(C.ConfigError, match=r"differs from the saved one in train.t_max, train.lr \(only train.t_max"):
        runner.train(C.replace(cfg, train={"t_max": 900, "lr": 0.1}), run_dir=short, resume=True, out=None, new_budget=True)
    assert (short / "metrics.jsonl").read_text() == before and checkpoint.read_config(short) == cfg
    steps = checkpoint.all_steps(short)
    for key, value, needle in (("t_max", 400, "cannot give"), ("lr", 0.1, "config.yaml was edited after its latest "
                                                                         "checkpoint was saved (train.lr)")):
        edited = cfg.to_dict()
        edited["train"][key] = value
        (short / "config.yaml").write_text(yaml.safe_dump(edited, sort_keys=False))
        assert cli.main(["train", "--resume", str(short)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
        assert checkpoint.all_steps(short) == steps and (short / "metrics.jsonl").read_text() == before


@pytest.mark.timeout(600)
def test_a_new_budget_with_several_seeds_ends_where_the_longer_run_does(tmp_path):
    """Seeds reach a budget at different times (the early ones wait, left out of the chunk): trained
    on, each seed still ends where it would have, to the float rounding of batch trimming."""
    cfg = tiny(num_seeds=2, t_max=400, slot_buckets=2)
    runner.train(cfg, run_dir=tmp_path / "full", out=None)
    runner.train(C.replace(cfg, train={"t_max": 170}), run_dir=tmp_path / "short", out=None)
    runner.train(cfg, run_dir=tmp_path / "short", resume=True, out=None, new_budget=True)
    sr = runner.SeedRunner(cfg)
    (_, a), (_, b) = (checkpoint.restore(tmp_path / d, sr.abstract_state()) for d in ("full", "short"))
    assert np.array_equal(np.asarray(a.t_env), np.asarray(b.t_env)) and np.array_equal(a.updates, b.updates)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-5)


def _check_tensorboard_events(run_dir, lines):
    """The TensorBoard events hold the same numbers as metrics.jsonl (mean over seeds, per seed)."""
    pytest.importorskip("tensorboardX", reason="TensorBoard output is optional (pip install tensorboardX)")
    import struct

    from tensorboardX.proto import event_pb2

    scalars: dict[str, list] = {}
    for path in (run_dir / "tensorboard").glob("events.out.tfevents.*"):
        data = path.read_bytes()
        i = 0
        while i < len(data):  # TFRecord framing: u64 length, u32 crc, payload, u32 crc
            (n,) = struct.unpack("<Q", data[i:i + 8])
            event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
            i += 16 + n
            for v in event.summary.value:
                scalars.setdefault(v.tag, []).append((event.step, v.simple_value))
    assert {"train/loss", "train/won_mean", "test/won_mean", "test_fgsm/won_mean", "seed0/train/loss"} <= set(scalars)
    train = [ln for ln in lines if ln["kind"] == "train"]
    assert [s for s, _ in scalars["train/loss"]] == [min(ln["t_env"]) for ln in train]
    np.testing.assert_allclose([v for _, v in scalars["train/loss"]], [np.mean(ln["loss"]) for ln in train], rtol=1e-6)


def test_mismatched_checkpoint_is_refused_clearly(tmp_path):
    cfg = tiny()
    runner.train(cfg, run_dir=tmp_path / "a", out=None, max_chunks=1)
    other = runner.SeedRunner(tiny(method="qmix"))
    with pytest.raises(checkpoint.CheckpointError, match="does not match this config"):
        checkpoint.restore(tmp_path / "a", other.abstract_state())
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint at step 7"):
        checkpoint.restore(tmp_path / "a", runner.SeedRunner(cfg).abstract_state(), step=7)
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint in"):
        checkpoint.restore(tmp_path / "missing", other.abstract_state())


def _train_short_hallway(tmp_path, method, corridors, t_max, anneal, test_interval, robust_start):
    """Train a hallway with the given corridors; (final test results, train records)."""
    cfg = C.resolve({
        "env": {"name": "hallway_4x5x6", "overrides": {"state_numbers": corridors}},
        "train": {"method": method, "t_max": t_max, "num_envs": 8, "epsilon_anneal_time": anneal,
                  "test_interval": test_interval, "test_nepisode": 64, "buffer_size": 500,
                  "checkpoint_interval": 10**9},
        "cromac": {"robust_start": robust_start},
    })
    res = runner.train(cfg, run_dir=tmp_path / method, out=None)
    lines = [json.loads(x) for x in (tmp_path / method / "metrics.jsonl").read_text().splitlines()]
    return res.last_test, [ln for ln in lines if ln["kind"] == "train"]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("method", ["qmix", "cromac"])
def test_learns_a_short_hallway_to_a_high_win_rate(tmp_path, method):
    """Hallway with corridors [1, 1]: both agents start next to the goal and win only by stepping
    in on the same step (one alone fails the episode). Random play wins about 20% of episodes.
    Measured here: the greedy test win rate is 1.0 for both methods by 2,000 env steps (qmix 80 s,
    cromac 150 s of a loaded 2-core CPU for 6,000 steps)."""
    test, train = _train_short_hallway(tmp_path, method, [1, 1], 3_000, 1500, 1000, robust_start=2000)
    assert np.mean(train[0]["won_mean"]) < 0.4  # it starts near random
    assert np.mean(test["test_won_mean"]) >= 0.9
    if method == "cromac":  # robust training is on by the end and keeps the policy
        assert np.mean(test["test_fgsm_won_mean"]) >= 0.9


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("method", ["qmix", "cromac"])
def test_learns_small_hallway_on_a_small_budget(tmp_path, method):
    """Hallway with corridors [2, 2]. Random play wins about 7% of episodes (both agents must
    step onto the goal together). Measured here: greedy test win rate 0.5-0.64 after 16-24k env
    steps for both qmix and cromac (the "both walk in" policy wins whenever they start equally
    far; beating it needs timing from the GRU or messages, which takes longer)."""
    test, train = _train_short_hallway(tmp_path, method, [2, 2], 8_000, 3000, 4000, robust_start=4000)
    assert np.mean(train[0]["won_mean"]) < 0.2
    assert np.mean([np.mean(ln["won_mean"]) for ln in train[-5:]]) >= 0.3
    assert np.mean(test["test_won_mean"]) >= 0.3


def test_cli_train_runs_and_bad_input_is_one_line(tmp_path, capsys):
    rc = cli.main(["train", "--run-dir", str(tmp_path / "r"), "--t-max", "200", "--num-envs", "2",
                   "train.buffer_size=16", "train.batch_size=2", "train.learning_starts=2",
                   "train.chunk_iterations=2", "train.test_nepisode=2", "model.rnn_hidden=4",
                   "model.z_dim=4", "model.vae_hidden=4", "--env", "hallway_3x3x4x4"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "training cromac" in out and "done in" in out
    summary = (tmp_path / "r" / "summary.txt").read_text()
    assert summary.startswith("cromac on hallway_3x3x4x4, 1 seed(s)") and "under FGSM" in summary
    metrics = (tmp_path / "r" / "metrics.jsonl").read_text()
    assert cli.main(["train", "--resume", str(tmp_path / "r")]) == 0  # already finished: nothing lost, nothing added
    assert "already trained to its t_max 200" in capsys.readouterr().out
    assert (tmp_path / "r" / "metrics.jsonl").read_text() == metrics
    assert yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())["cromac"]["kappa"] == 10.0
    from cromac_jax import sweep

    with sweep.claim(tmp_path / "r") as mine:  # as a sweep training it holds it
        assert mine and cli.main(["train", "--resume", str(tmp_path / "r"), "--t-max", "300"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is being trained by another process" in err[0], err
    assert (tmp_path / "r" / "metrics.jsonl").read_text() == metrics
    # a run dir holding a run's config and metrics but no checkpoint yet is neither overwritten nor appended to
    other = tmp_path / "other"
    other.mkdir()
    for name in ("config.yaml", "metrics.jsonl"):
        (other / name).write_bytes((tmp_path / "r" / name).read_bytes())
    kept = {p.name: p.read_bytes() for p in other.iterdir()}
    for argv, needle in [
        (["train", "--run-dir", str(other), "--t-max", "100"], "already holds a run (config.yaml, metrics.jsonl; no checkpoint yet)"),
        (["train", "--resume", str(tmp_path / "r"), "--t-max", "5", "train.lr=0.1"],
         "config saved in it; overrides cannot change it (start a new run for other settings; --t-max alone"),
        (["train", "train.t_maxx=1"], "unknown config key 'train.t_maxx' (did you mean train.t_max?)"),
        (["train", "train.t_max=abc"], "train.t_max='abc' has the wrong type"),
        (["train", "--env", "hallway_5"], "unknown environment 'hallway_5'"),
        (["train", "--method", "qmx"], "train.method='qmx' is invalid"),
        (["train", "cromac.eps=-1"], "cromac.eps=-1.0 is invalid"),
        (["train", "--config", str(tmp_path / "nope.yaml")], "does not exist"),
        (["train", "--resume", str(tmp_path / "none")], "is not a run directory"),
    ]:
        rc = cli.main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and needle in err[0], (argv, err)
    assert {p.name: p.read_bytes() for p in other.iterdir()} == kept
    # a damaged metrics file stops a resume with its line named, and is left as it was
    metrics = tmp_path / "r" / "metrics.jsonl"
    damaged = metrics.read_text() + "{garbage\n"
    metrics.write_text(damaged)
    config = (tmp_path / "r" / "config.yaml").read_text()
    assert cli.main(["train", "--resume", str(tmp_path / "r"), "--t-max", "300"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"line {damaged.count(chr(10))} is not a JSON record" in err[0], err
    assert metrics.read_text() == damaged and (tmp_path / "r" / "config.yaml").read_text() == config


def test_env_presets_defaults_match_configs_dir():
    """configs/<preset>.yaml mirror the embedded official hyperparameters, key for key (loading both
    would merge the embedded table under the file and hide a key missing from it), and every
    shipped config file loads."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    for name, table in C.ENV_DEFAULTS.items():
        path = root / f"{name}.yaml"
        assert path.is_file(), f"configs/{name}.yaml is missing"
        data = C.read_yaml_mapping(path)
        assert data.pop("env") == {"name": name}, name
        assert data == table, name
    shipped = sorted(root.rglob("*.yaml"))
    assert len(shipped) >= len(C.ENV_DEFAULTS) + 7  # the presets, the MPE examples, configs/methods/*
    for path in shipped:
        C.load(path)
    methods = {C.load(p).train.method for p in (root / "methods").glob("*.yaml")}
    assert methods == set(C.METHODS)


def test_sweep_trains_each_combination_is_resumable_and_summarises(tmp_path, capsys):
    base = ["env.overrides={state_numbers: [2, 2]}", "model.rnn_hidden=4", "model.z_dim=4", "model.vae_hidden=4",
            "train.buffer_size=16", "train.batch_size=2", "train.learning_starts=2", "train.chunk_iterations=2",
            "train.test_nepisode=2", "train.num_envs=2", "train.t_max=60"]
    argv = ["sweep", "--out", str(tmp_path), "--envs", "hallway_4x5x6", "--methods", "qmix", "cromac", "--seeds", "2"] + base
    assert cli.main(argv + ["--share", "1/2"]) == 0  # the second process's share: cromac only
    out = capsys.readouterr().out
    assert "[1/1] hallway_4x5x6_cromac_qmix: starting" in out and "| hallway_4x5x6_qmix_qmix | - | - | missing" in out
    # qmix's run dir as an attempt stopped before its first checkpoint leaves it: the sweep starts it over
    stale = tmp_path / "hallway_4x5x6_qmix_qmix"
    stale.mkdir()
    (stale / "config.yaml").write_text((tmp_path / "hallway_4x5x6_cromac_qmix" / "config.yaml").read_text())
    (stale / "metrics.jsonl").write_text('{"kind": "test", "t_env": [0, 0], "stale": true}\n')
    assert cli.main(argv) == 0  # one process, the whole sweep: cromac is skipped, qmix trained
    assert "stale" not in (stale / "metrics.jsonl").read_text()
    out = capsys.readouterr().out
    assert "hallway_4x5x6_cromac_qmix: already finished, skipped" in out
    rows = json.loads((tmp_path / "summary.json").read_text())
    assert [r["status"] for r in rows] == ["ok", "ok"] and all(r["seeds"] == 2 for r in rows)
    assert "test_fgsm_won_mean" in rows[1] and "test_fgsm_won_mean" not in rows[0]
    assert (tmp_path / "summary.md").read_text().count("\n") == 4
    # the same sweep with a larger budget trains every run on to it; any other change is refused
    assert cli.main(argv + ["--t-max", "90"]) == 0
    out = capsys.readouterr().out
    assert out.count("t_max 60 -> 90 env steps per seed") == 2
    rows = json.loads((tmp_path / "summary.json").read_text())
    assert [r["status"] for r in rows] == ["ok", "ok"] and all(r["t_env"] >= 90 and r["t_max"] == 90 for r in rows)
    # a rerun without a budget of its own (here: the smaller one of base) extends nothing
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.count("already finished, skipped") == 2
    assert all(checkpoint.read_config(tmp_path / r["run"]).train.t_max == 90 for r in rows)
    # ... and one that forgot its budget (the env's official 2.05M) is refused, not trained on for hours
    assert cli.main([a for a in argv if a != "train.t_max=60"]) == 2
    assert "config differs from the saved one in train.t_max" in capsys.readouterr().err
    assert cli.main(argv + ["train.lr=0.1", "--t-max", "120"]) == 2
    assert "config differs from the saved one in train.t_max, train.lr (only train.t_max may change)" in capsys.readouterr().err


def test_nan_loss_stops_with_the_loss_and_step_named_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    cfg = tiny(checkpoint_interval=1)
    real_chunk = runner.SeedRunner.chunk
    calls = {"n": 0}

    def poisoned(self, state):
        state, metrics = real_chunk(self, state)
        calls["n"] += 1
        if calls["n"] == 2:  # the second chunk's last iteration of seed 0 goes NaN in the PoE loss
            poe = np.asarray(metrics.poe).copy()
            poe[0, -1] = np.nan
            metrics = metrics._replace(poe=poe)
        return state, metrics

    monkeypatch.setattr(runner.SeedRunner, "chunk", poisoned)
    with pytest.raises(runner.TrainingError, match=r"non-finite poe loss \(nan\) in seed 0 at env step [\d,]+; training stopped"):
        runner.train(cfg, run_dir=tmp_path / "r", out=None)
    steps = checkpoint.all_steps(tmp_path / "r")
    assert len(steps) == 1  # the first chunk's checkpoint, nothing from the poisoned one
    step, state = checkpoint.restore(tmp_path / "r", runner.SeedRunner(cfg).abstract_state())
    assert step == steps[0] and np.all(np.isfinite(np.asarray(jax.tree.leaves(state.params)[0])))
    csv = (tmp_path / "r" / "metrics.csv").read_text().splitlines()
    assert csv[0].startswith("seed,t_env,") and len(csv) == 2  # one chunk x one seed before the NaN


def test_cli_envs_lists_every_preset_with_its_sizes(capsys):
    import envs

    assert cli.main(["envs"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:6] == ["preset", "agents", "obs", "state", "actions", "limit"]
    rows = {line.split()[0]: line.split()[1:6] for line in out[1:]}
    assert set(rows) == set(envs.preset_names())
    assert rows["hallway_4x5x6"] == ["3", "1", "3", "3", "16"] and rows["tj_slow"] == ["5", "15", "75", "2", "50"]


def test_plain_cromac_train_uses_the_quick_default_and_named_runs_the_paper_values():
    def cfg_of(*argv):
        ns = cli.build_parser().parse_args(["train", *argv])
        return cli._config_from_args(ns)

    quick = cfg_of()
    assert (quick.env.name, quick.train.method, quick.train.num_seeds, quick.train.t_max) == ("hallway_4x5x6", "cromac", 3, 450_000)
    assert quick.cromac.robust_start == 250_000 and quick.cromac.kappa == 5.0
    assert cfg_of("--seeds", "1").train.num_seeds == 1 and cfg_of("--seeds", "1").train.t_max == 450_000
    paper = cfg_of("--env", "hallway_4x5x6")
    assert paper.train.t_max == 2_050_000 and paper.cromac.robust_start == 700_000 and paper.train.num_seeds == 1
    # every shortcut flag lands on its key, --set and key=value are the same overrides, and the
    # flags win over both (the documented precedence)
    every = cfg_of("--env", "lbf_3p1f", "--method", "ame", "--mixer", "qplex", "--seeds", "2", "--seed", "9",
                   "--t-max", "1234", "--num-envs", "3", "--set", "cromac.eps=0.2", "--set", "train.lr=0.01",
                   "train.gamma=0.5", "model.mixer=vdn", "train.seed=1")
    assert (every.env.name, every.train.method, every.model.mixer) == ("lbf_3p1f", "ame", "qplex")
    assert (every.train.num_seeds, every.train.seed, every.train.t_max, every.train.num_envs) == (2, 9, 1234, 3)
    assert (every.cromac.eps, every.train.lr, every.train.gamma) == (0.2, 0.01, 0.5)
    assert every.cromac.robust_start == 800_000  # the env's official values under the user's
    quick_mixer = cfg_of("--mixer", "vdn", "--set", "train.t_max=1000")  # no env or method: still the quick default
    assert (quick_mixer.model.mixer, quick_mixer.train.t_max, quick_mixer.train.num_seeds) == ("vdn", 1000, 3)


# orbax's background I/O thread reports the failed read once more after the error is raised
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_corrupt_checkpoint_is_refused_clearly_and_older_ones_stay_usable(tmp_path):
    cfg = tiny(checkpoint_interval=1)
    runner.train(cfg, run_dir=tmp_path / "r", out=None, max_chunks=2)
    steps = checkpoint.all_steps(tmp_path / "r")
    assert len(steps) == 2
    abstract = runner.SeedRunner(cfg).abstract_state()
    newest = tmp_path / "r" / "checkpoints" / str(steps[-1]) / "default"
    for f in newest.rglob("*"):
        if f.is_file() and f.parent.name == "d":  # the array data files
            f.write_bytes(b"\0" * 16)
    with pytest.raises(checkpoint.CheckpointError, match=f"checkpoint {steps[-1]} in .* (is unreadable|or is damaged)"):
        checkpoint.restore(tmp_path / "r", abstract)
    step, _ = checkpoint.restore(tmp_path / "r", abstract, step=steps[0])
    assert step == steps[0]
