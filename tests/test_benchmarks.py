"""Smoke tests of the benchmark scripts: they run end to end on tiny settings and report what
they should. Speed is measured by the benchmarks themselves and never asserted here."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    """Import a benchmark script by path (each script puts its folder on sys.path itself)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCH_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def env_throughput():
    return _load("env_throughput")


@pytest.fixture(scope="module")
def update_cost():
    return _load("update_cost")


@pytest.fixture(scope="module")
def report():
    _load("env_throughput")  # puts benchmarks/ on sys.path
    return _load("_report")


def _table_rows(text: str, first_cell: str) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if cells[0] == first_cell:
                rows.append(cells)
    return rows


def _check_hardware(hw: dict) -> None:
    for key in ("cpu_model", "cpu_cores", "jax_version", "jax_backend", "device_kind", "date"):
        assert hw[key], key
    assert hw["cpu_cores"] >= 1
    assert hw["jax_version"] == jax.__version__


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


# ---------------------------------------------------------------------------------- shared helpers
def test_markdown_table_aligns_columns(report):
    text = report.markdown_table(["a", "bb"], [[1, "x"], ["long", 2.5]])
    lines = text.splitlines()
    assert len(lines) == 4
    assert len({len(line) for line in lines}) == 1
    assert lines[1].replace("|", "").strip("-") == ""
    assert _table_rows(text, "long") == [["long", "2.5"]]


def test_time_jitted_separates_first_call(report):
    timing, out = report.time_jitted(jax.jit(lambda x: x * 2), jnp.ones(3), repeats=3)
    assert len(timing.times_s) == 3 and all(t > 0 for t in timing.times_s)
    assert timing.first_call_s > 0 and timing.best_s <= timing.median_s
    assert out.tolist() == [2.0, 2.0, 2.0]
    assert report.tree_nbytes({"a": jnp.zeros(3, jnp.float32), "b": jnp.zeros((), jnp.int32)}) == 16
    with pytest.raises(ValueError):
        report.time_jitted(jax.jit(lambda x: x), jnp.ones(1), repeats=0)


def test_hardware_info_and_default_names(report):
    _check_hardware(report.hardware_info())
    out = report.default_out("env_throughput")
    assert out.parent == BENCH_DIR / "results" and out.name.startswith("env_throughput_")
    assert out.suffix == ".json" and " " not in out.name


# ---------------------------------------------------------------------------------- env throughput
def test_env_throughput_smoke(env_throughput, tmp_path, capsys, monkeypatch):
    envs = env_throughput.envs
    real_make = envs.make

    def make(name, **kw):
        if name == "smax_not_built":
            raise NotImplementedError("SMAX stand-in not implemented yet")
        return real_make(name, **kw)

    # A preset the registry lists but cannot build must be skipped, with the reason printed.
    monkeypatch.setattr(envs, "preset_names", lambda: ["hallway_4x5x6", "smax_not_built"])
    monkeypatch.setattr(env_throughput, "JAXMARL_COMM_BENCHMARKS", ())  # default list; MPE rows tested below
    monkeypatch.setattr(envs, "make", make)
    out = tmp_path / "env.json"
    env_throughput.main(["--num-envs", "1", "4", "--steps", "5", "--repeats", "2", "--out", str(out)])
    printed = capsys.readouterr().out

    data = json.loads(out.read_text())
    assert data["benchmark"] == "env_throughput"
    _check_hardware(data["hardware"])
    assert data["skipped"] == [{"preset": "smax_not_built", "reason": "NotImplementedError: SMAX stand-in not implemented yet"}]
    assert "skip smax_not_built: NotImplementedError" in printed
    assert data["state_bytes"]["hallway_4x5x6"] > 0
    rows = data["results"]
    assert [(r["preset"], r["api"], r["num_envs"]) for r in rows] == [
        ("hallway_4x5x6", "jaxmarl", 1), ("hallway_4x5x6", "jaxmarl", 4),
        ("hallway_4x5x6", "array", 1), ("hallway_4x5x6", "array", 4),
    ]
    for r in rows:
        for key in ("steps_per_s", "steps_per_s_best", "compile_s", "median_s", "best_s", "state_bytes", "speedup_vs_reference"):
            assert _positive(r[key]), (key, r[key])
        assert r["env_steps_per_call"] == r["num_envs"] * 5 and len(r["times_s"]) == 2
        assert "meets_target" not in r  # the target is judged at 8192 envs only

    table = _table_rows(printed, "hallway_4x5x6")
    assert [(row[1], row[2]) for row in table] == [("jaxmarl", "1"), ("jaxmarl", "4"), ("array", "1"), ("array", "4")]
    assert all(row[-1] == "-" for row in table)


def test_env_throughput_rejects_unknown_preset(env_throughput, capsys):
    with pytest.raises(SystemExit):
        env_throughput.main(["--presets", "no_such_env"])
    assert "error: unknown environment 'no_such_env'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- update cost
def test_update_cost_smoke(update_cost, tmp_path, capsys):
    out = tmp_path / "update.json"
    update_cost.main(
        [
            "--envs", "hallway_4x5x6",
            "--methods", "qmix",
            "--updates", "2",
            "--repeats", "1",
            "--single-calls", "2",
            "--fill-episodes", "32",
            "--out", str(out),
        ]
    )
    printed = capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["benchmark"] == "update_cost"
    _check_hardware(data["hardware"])
    (row,) = data["results"]
    assert (row["env"], row["method"], row["batch_size"]) == ("hallway_4x5x6", "qmix", 32)
    assert row["buffer_episodes"] == 32 and row["loss_finite"]
    for key in ("ms_per_update", "ms_per_update_single_call", "compile_s_scan", "compile_s_single", "speedup_vs_reference"):
        assert _positive(row[key]), (key, row[key])
    assert len(row["scan_call_times_s"]) == 1 and len(row["single_call_times_s"]) == 2
    assert data["ratios"] == []  # one method: no CroMAC/QMIX ratio
    table = _table_rows(printed, "hallway_4x5x6")
    assert len(table) == 1 and table[0][1] == "qmix"


def test_update_cost_robust_loss_is_on_for_cromac(update_cost):
    """The benchmark state is past ``robust_start``, so CroMAC times its robust loss + clamp."""
    trainer, state, _ = update_cost.build("hallway_4x5x6", "cromac", 32, 0)
    assert bool(trainer.robust_on(state.t_env))
    assert int(state.t_env) > trainer.cfg.cromac.robust_start


def test_update_cost_ratio_table(update_cost):
    def row(env, method, ms, ref=None):
        r = {
            "env": env, "method": method, "robust_on": method == "cromac", "ms_per_update": ms,
            "ms_per_update_single_call": 2 * ms, "compile_s_scan": 1.0, "compile_s_single": 1.0,
            "reference_ms": ref, "speedup_vs_reference": ref / ms if ref else None,
        }
        if ref and method == "cromac":
            r["meets_target"] = ref / ms >= update_cost.TARGET_SPEEDUP
        return r

    rows = [
        row("hallway_4x5x6", "qmix", 1.0, 9.3),
        row("hallway_4x5x6", "cromac", 1.2, 41.5),
        row("lbf_3p1f", "qmix", 1.0),
        row("lbf_3p1f", "cromac", 2.0),
    ]
    ratio_rows = update_cost.ratios(rows)
    assert [(r["env"], r["meets_target"]) for r in ratio_rows] == [("hallway_4x5x6", True), ("lbf_3p1f", False)]
    assert ratio_rows[0]["cromac_over_qmix"] == pytest.approx(1.2)
    assert ratio_rows[0]["reference_cromac_over_qmix"] == pytest.approx(41.5 / 9.3)
    text = update_cost.tables(rows, ratio_rows)
    hallway = _table_rows(text, "hallway_4x5x6")
    assert len(hallway) == 3  # two method rows + one ratio row
    assert hallway[1][-1] == "pass" and hallway[2][-1] == "pass"
    assert _table_rows(text, "lbf_3p1f")[-1][-1] == "MISS"


def test_update_cost_rejects_bad_arguments(update_cost, capsys):
    with pytest.raises(SystemExit):
        update_cost.main(["--methods", "no_such_method"])
    assert "error: unknown method 'no_such_method'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        update_cost.main(["--fill-episodes", "8"])
    assert "error: --fill-episodes must be >= 32" in capsys.readouterr().err


def test_random_actions_are_uniform_over_available(env_throughput):
    avail = jnp.array([[True, False, True, True], [False, False, True, False], [True, True, True, True]])
    keys = jax.random.split(jax.random.PRNGKey(0), 6000)
    acts = jax.vmap(lambda k: env_throughput.random_available_actions(k, avail))(keys)  # [6000, 3]
    assert acts.dtype == jnp.int32
    assert bool(jnp.all(jnp.take_along_axis(jnp.broadcast_to(avail, (6000, 3, 4)), acts[..., None], -1)))
    for row, allowed in enumerate(([0, 2, 3], [2], [0, 1, 2, 3])):
        counts = jnp.bincount(acts[:, row], length=4)
        expected = 6000 / len(allowed)
        assert all(abs(int(counts[a]) - expected) < 0.1 * expected for a in allowed)


def test_train_throughput_smoke(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "train_throughput.py"
    spec = importlib.util.spec_from_file_location("train_throughput", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "t.json"
    data = mod.main(["--methods", "qmix", "--seeds", "1", "--chunks", "1", "--chunk-iterations", "1", "--out", str(out)])
    assert json.loads(out.read_text())["benchmark"] == "train_throughput"
    (row,) = data["results"]
    assert row["env_steps_per_s"] > 0 and row["compile_s"] > 0 and row["buffer_bytes_per_seed"] > 0
    import re

    assert re.search(r"\|\s*hallway_4x5x6\s*\|\s*qmix\s*\|\s*1\s*\|", capsys.readouterr().out)


# ---------------------------------------------------------------------------------- eval throughput
def test_eval_throughput_smoke(tmp_path, capsys):
    mod = _load("eval_throughput")
    out = tmp_path / "e.json"
    data = mod.main(["--seeds", "1", "--attacks", "natural", "--episodes", "2", "--repeats", "1",
                     "--grid-episodes", "1000", "--grid-fraction", "0.002", "--no-certified", "--out", str(out)])
    printed = capsys.readouterr().out
    assert json.loads(out.read_text())["benchmark"] == "eval_throughput"
    _check_hardware(data["hardware"])
    (row,) = data["results"]
    assert (row["attack"], row["seeds"], row["episodes_per_seed"], row["agents"]) == ("natural", 1, 2, 3)
    assert row["slot_decisions"] == 2 * (row["episode_limit"] + 1) * 3 >= row["decisions"] > 0
    for key in ("decisions_per_s", "slot_decisions_per_s", "first_call_s", "run_s"):
        assert _positive(row[key]), (key, row[key])
    grid = data["table1_grid"]
    assert grid["settings"] == ["Natural", "Random", "PGD", "FGSM (1)", "FGSM (2)", "FGSM", "FGSM (3)", "FGSM (4)"]
    assert grid["extrapolated"] and grid["measured_episodes"] == 2 and grid["grid_episodes"] == 1000
    assert grid["certified_warm_s"] is None and _positive(grid["total_warm_s"]) and _positive(grid["total_cold_s"])
    assert grid["total_warm_s"] == pytest.approx(grid["measured_warm"]["total_s"] * 500)
    assert [s["budget"] for s in grid["measured_warm"]["settings"]] == [0.0, 1.0, 1.0, 0.25, 0.5, 1.0, 2.0, 4.0]
    assert _table_rows(printed, "hallway_4x5x6")[0][1:3] == ["cromac", "natural"]
    assert "extrapolated from 2 episodes/seed" in printed
    capsys.readouterr()
    with pytest.raises(SystemExit):
        mod.main(["--attacks", "fgs"])
    assert "error: unknown attack 'fgs'" in capsys.readouterr().err


def test_env_throughput_takes_jaxmarl_envs_and_consumes_observations(env_throughput, capsys):
    """``jaxmarl:NAME`` rows run (issue 9's MPE tasks), and the timed program depends on every
    observation: a rollout that only summed rewards would let XLA drop the observation code."""
    env = env_throughput.envs.make("jaxmarl:MPE_simple_speaker_listener_v4")
    reset, rollout = env_throughput.make_rollout(env, 4, 3, api="array")
    states = reset(jax.random.PRNGKey(0))
    text = rollout.lower(states, jax.random.PRNGKey(1)).as_text()
    assert "1.000000e-30" in text  # the observation term is in the program
    _, total = rollout(states, jax.random.PRNGKey(1))
    assert np.isfinite(float(total))
    with pytest.raises(SystemExit):
        env_throughput.parse_args(["--presets", "jaxmarl:MPE_no_such_env"])
    assert "error: unknown JaxMARL environment 'MPE_no_such_env'" in capsys.readouterr().err


@pytest.mark.timeout(600)
def test_slot_trim_compares_bucket_counts_on_a_trained_runs_buffer(tmp_path, capsys):
    from cromac_jax import checkpoint, runner
    from tests.test_train import tiny

    slot_trim = _load("slot_trim")
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit):
        slot_trim.main([str(tmp_path / "nothing")])
    assert "no checkpoint in" in err.getvalue()
    run_dir = tmp_path / "run"
    cfg = tiny("qmix", num_seeds=2, t_max=100)  # a finished run: the benchmark lifts its budget
    sr = runner.SeedRunner(cfg)
    state, _ = sr.chunk(sr.init_state())
    run_dir.mkdir()
    checkpoint.write_config(run_dir, cfg)
    checkpoint.save(checkpoint.manager(run_dir), int(np.min(np.asarray(state.t_env))), state)
    payload = slot_trim.main([str(run_dir), "--buckets", "1", "2", "--chunks", "1", "--out", str(tmp_path / "t.json")])
    text = capsys.readouterr().out
    _check_hardware(payload["hardware"])
    rows = payload["results"]
    assert [r["slot_buckets"] for r in rows] == [1, 2] and rows[0]["lengths"] == [13] and rows[1]["lengths"] == [7, 13]
    for r in rows:
        assert r["env_steps"] > 0 and r["updates"] > 0 and r["compile_s"] > 0 and math.isfinite(r["loss_last_chunk"])
        assert r["checkpoint_step"] == rows[0]["checkpoint_step"] and r["seeds"] == 2
        buf = r["buffer"]
        assert 2 <= buf["mean_filled"] <= buf["max_filled"] <= buf["slots"] == 13
        assert len(buf["batch_max_median_per_seed"]) == 2 and 0 <= buf["share_at_limit"] <= 1
        assert buf["seeds_per_device"] == 2 and 2 <= buf["batch_max_trimmed_mean"] <= 13
    assert [c[0] for c in _table_rows(text, "2")] == ["2"] and json.loads((tmp_path / "t.json").read_text())["benchmark"] == "slot_trim"


@pytest.mark.timeout(600)
def test_distributed_scaling_times_one_and_two_processes(tmp_path, capsys):
    scaling = _load("distributed_scaling")
    tiny = ["train.buffer_size=16", "train.batch_size=2", "train.learning_starts=2", "train.chunk_iterations=2",
            "train.test_nepisode=2", "train.num_envs=2", "train.slot_buckets=1", "model.rnn_hidden=4",
            "model.z_dim=4", "model.vae_hidden=4"]
    with pytest.raises(SystemExit, match="does not divide over 2 processes"):
        scaling.main(["--seeds", "3", "--processes", "1", "2"])
    out = tmp_path / "d.json"
    assert scaling.main([*tiny, "--env", "hallway_3x3x4x4", "--method", "qmix", "--seeds", "2", "--t-max", "40",
                         "--out", str(out), "--processes", "1", "2"]) == 0
    text = capsys.readouterr().out
    data = json.loads(out.read_text())
    _check_hardware(data["hardware"])
    assert data["benchmark"] == "distributed_scaling" and data["settings"]["overrides"] == tiny
    rows = data["results"]
    assert [(r["processes"], r["seeds_per_process"]) for r in rows] == [(1, 2), (2, 1)]
    for r in rows:
        assert r["final_t_env_min"] >= 40 and r["wall_s"] > 0 and r["chunks"] >= 1
    assert rows[0]["wall_vs_first"] == 1.0
    assert [c[0] for c in _table_rows(text, "2")] == ["2"]
