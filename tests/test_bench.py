"""Smoke tests of ``cromac bench`` (cromac_jax/bench.py) and benchmarks/reproduce_table1.py on tiny
settings: the reports have their documented fields, ratios are taken against the official reference
numbers, and the Table-1 reproduction writes the paper's columns and resumes without redoing work.
Speed is measured by the tools themselves and never asserted here."""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import math
import shutil
import sys
from pathlib import Path

import jax
import pytest

from cromac_jax import bench

ROOT = Path(__file__).resolve().parents[1]
PAPER_TEXT = ROOT.parent / "shared" / "seeds" / "cromac_paper.txt"

#: A 2-corridor hallway and tiny networks: what makes a training measurement take seconds.
TINY = [
    "env.overrides={state_numbers: [2, 2]}",
    "model.rnn_hidden=8", "model.z_dim=4", "model.vae_hidden=8", "model.mixer_embed=8", "model.hypernet_hidden=8",
    "train.num_envs=4", "train.buffer_size=64", "train.batch_size=4", "train.learning_starts=4",
    "train.updates_per_iteration=2", "train.slot_buckets=1",
]


def _table1():
    name = "reproduce_table1"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def _parser():
    parser = argparse.ArgumentParser(prog="cromac")
    bench.add_bench_parser(parser.add_subparsers(dest="command", required=True))
    return parser


# ---------------------------------------------------------------------------------- cromac bench
def test_bench_parser_is_cheap_and_quick_settings_resolve():
    args = _parser().parse_args(["bench", "--quick", "--chunks", "5"])
    s = bench.resolve_settings(args)
    assert s["quick"] and s["chunks"] == 5 and s["parts"] == list(bench.PARTS)
    assert s["seed_counts"] == bench.QUICK["seed_counts"] and s["presets"] == bench.QUICK["presets"]
    full = bench.resolve_settings(_parser().parse_args(["bench"]))
    assert full["seed_counts"] == [1, 2, 4, 8, 16] and full["device_counts"] == [1, 2]
    assert set(bench.DEFAULT_TRAIN_ENVS) == {"hallway_4x5x6", "lbf_3p1f", "tj_slow", "smax_1o2r_vs_4r"} <= set(full["envs"])
    assert bench.resolve_settings(_parser().parse_args(["bench", "--scaling-env", "lbf_3p1f"]))["scaling_env"] == "lbf_3p1f"
    for bad, says in ((["bench", "--envs", "no_such_env"], "unknown environment 'no_such_env'"),
                      (["bench", "--scaling-env", "tj_nowhere"], "unknown environment 'tj_nowhere'"),
                      (["bench", "--methods", "dqn"], "unknown method 'dqn'"),
                      (["bench", "--chunks", "0"], "chunks and seeds must be >= 1"),
                      (["bench", "--timeout", "0"], "--timeout 0.0 is invalid"),
                      (["bench", "--timeout", "-5"], "--timeout -5.0 is invalid"),
                      (["bench", "--timeout", "inf"], r"--timeout inf is invalid: seconds per isolated measurement, in \(0, 2000000\]"),
                      (["bench", "--timeout", "nan"], "--timeout nan is invalid")):
        with pytest.raises(SystemExit, match=says):
            bench.resolve_settings(_parser().parse_args(bad))


def test_plan_measures_a_shared_configuration_once():
    s = bench.resolve_settings(_parser().parse_args(["bench", "--quick"]))
    plan = bench.build_plan(s, default_devices=1)
    train = [p for p in plan if p["kind"] == "train"]
    keys = [(p["env"], p["method"], p["seeds"], p["devices"]) for p in train]
    assert len(keys) == len(set(keys))
    one_seed = next(p for p in train if (p["env"], p["method"], p["seeds"]) == ("hallway_4x5x6", "cromac", 1))
    assert one_seed["parts"] == ["train", "seeds"] and one_seed["updates"] == s["updates"]
    # 1 device = this machine's own count: shares the seeds-part run with as many seeds; 2 forced devices: its own
    devs = [p for p in train if "devices" in p["parts"]]
    assert [(p["seeds"], p["devices"]) for p in devs] == [(4, None), (4, 2)]


def test_ratios_use_the_official_reference_numbers():
    ref = bench.REFERENCE
    assert ref["train_env_steps_per_s"]["hallway_4x5x6"] == {"cromac": 140.0, "qmix": 520.0}
    assert ref["ms_per_update"]["hallway_4x5x6"] == {"cromac": 41.5, "qmix": 9.3}
    assert ref["env_steps_per_s"] == {"hallway": 111_000.0, "tj": 6_500.0, "lbf": 6_100.0}
    assert "only meaningful" in bench.REFERENCE_NOTE and "2-core CPU" in bench.REFERENCE_NOTE
    env_rows = [{"part": "env", "preset": p, "api": "array", "num_envs": 8, "env_steps_per_s": 1.0e6}
                for p in ("hallway_4x5x6", "tj_fast", "lbf_4p1f", "smax_1o2r_vs_4r")]
    for r in env_rows:
        bench.add_ratios(r)
    assert env_rows[0]["ratio_env_steps_per_s"] == pytest.approx(1e6 / 111_000)
    assert env_rows[1]["ratio_env_steps_per_s"] == pytest.approx(1e6 / 6_500)
    assert env_rows[2]["ratio_env_steps_per_s"] == pytest.approx(1e6 / 6_100)
    assert env_rows[3]["ratio_env_steps_per_s"] is None
    cromac = {"part": "train", "env": "hallway_4x5x6", "method": "cromac", "seeds": 1, "devices": 1,
              "env_steps_per_s": 1400.0, "ms_per_update": 8.3}
    lbf = {"part": "train", "env": "lbf_3p1f", "method": "cromac", "seeds": 1, "devices": 1, "env_steps_per_s": 900.0}
    for r in (cromac, lbf):
        bench.add_ratios(r)
    assert cromac["ratio_env_steps_per_s"] == pytest.approx(10.0)
    assert cromac["ratio_ms_per_update"] == pytest.approx(41.5 / 8.3)  # > 1: faster than the official code
    assert lbf["ratio_env_steps_per_s"] is None and lbf["ratio_ms_per_update"] is None
    figures = {c["figure"]: c for c in bench.comparisons(env_rows + [cromac, lbf])}
    assert figures["ms per learner update (batch 32), hallway_4x5x6 cromac"]["better"] == "lower"
    assert len(figures) == 3 + 2  # 3 env presets with a numpy reference, cromac's steps/s and ms/update


def test_seed_cost_is_relative_to_the_fewest_seeds():
    rows = [{"part": "train", "env": "e", "method": "m", "devices": 1, "seeds": s, "env_steps_per_s": v,
             "env_steps_per_s_per_seed": v / s} for s, v in ((1, 100.0), (4, 200.0))]
    bench.add_seed_costs(rows)
    assert rows[0]["cost_vs_fewest_seeds"] == pytest.approx(1.0)
    assert rows[1]["cost_vs_fewest_seeds"] == pytest.approx(2.0)  # 4x the work in 2x the time


@pytest.mark.timeout(600)
def test_bench_smoke_writes_json_and_markdown(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["cromac", "bench"])
    out = tmp_path / "bench_smoke"
    argv = ["bench", "--parts", "env", "train", "seeds", "devices", "--presets", "hallway_4x5x6", "--num-envs", "4",
            "--env-steps", "5", "--repeats", "1", "--apis", "array", "jaxmarl", "--envs", "hallway_4x5x6", "--methods", "qmix",
            "--chunk-iterations", "2", "--chunks", "1", "--updates", "2", "--seed-counts", "1", "2",
            "--scaling-methods", "qmix", "--device-counts", "2", "--device-seeds", "2", "--device-method", "qmix",
            "--no-isolate", "--out", str(out), *[f"--set={o}" for o in TINY]]
    args = _parser().parse_args(argv)
    assert args.func(args) == 0
    data = json.loads((tmp_path / "bench_smoke.json").read_text())
    md = (tmp_path / "bench_smoke.md").read_text()

    hw = data["hardware"]
    assert hw["jax_version"] == jax.__version__ and hw["device_kind"] and hw["jax_backend"] == jax.default_backend()
    assert hw["tag"] == bench.hardware_tag() and hw["cpu_model"] and hw["cpu_cores"] >= 1
    assert "load_average_start" in data and "load_average_end" in data
    assert data["reference"]["train_env_steps_per_s"]["hallway_4x5x6"]["cromac"] == 140.0
    assert data["settings"]["overrides"] == TINY and data["warnings"]

    rows = data["results"]
    assert not [r for r in rows if "error" in r], rows
    env_rows = [r for r in rows if r["part"] == "env"]
    assert [(r["api"], r["num_envs"]) for r in env_rows] == [("array", 4), ("jaxmarl", 4)]
    for r in env_rows:
        for key in ("env_steps_per_s", "compile_s", "state_bytes", "rss_peak_mib", "ratio_env_steps_per_s"):
            assert _positive(r[key]), (key, r[key])
        assert r["reference_env_steps_per_s"] == 111_000.0
        assert r["ratio_env_steps_per_s"] == pytest.approx(r["env_steps_per_s"] / 111_000)
        assert r["peak_scope"] == "cumulative"

    train = [r for r in rows if r["part"] == "train"]
    one = next(r for r in train if r["seeds"] == 1)
    assert one["parts"] == ["train", "seeds"] and one["devices"] == 1
    for key in ("env_steps_per_s", "updates_per_s", "ms_per_update", "compile_s", "first_chunk_s", "rss_peak_mib",
                "buffer_bytes_per_seed"):
        assert _positive(one[key]), (key, one[key])
    assert one["ratio_env_steps_per_s"] == pytest.approx(one["env_steps_per_s"] / 520.0)
    assert one["ratio_ms_per_update"] == pytest.approx(9.3 / one["ms_per_update"])
    two = next(r for r in train if r["seeds"] == 2 and r["requested_devices"] == 1)
    assert two["cost_vs_fewest_seeds"] > 0 and "ms_per_update" not in two
    # forced host devices run in a subprocess of their own: its peak is that measurement's
    dev = next(r for r in train if r["requested_devices"] == 2)
    assert dev["parts"] == ["devices"] and dev["peak_scope"] == "measurement" and _positive(dev["env_steps_per_s"])
    if jax.default_backend() == "cpu":
        assert dev["devices"] == 2
    assert {c["reference"] for c in data["comparisons"]} == {111_000.0, 520.0, 9.3}

    for text in (f"# cromac bench: {hw['tag']}", f"jax {jax.__version__}", f"device kind `{hw['device_kind']}`",
                 "Load average", "only meaningful", "## Versus the official code", "## Environments", "## Training",
                 "## Seed scaling", "## Device scaling", "vs official numpy", "vs official ms/update"):
        assert text in md, text
    assert f"{one['ratio_env_steps_per_s']:.2f}x" in md or f"{one['ratio_env_steps_per_s']:.0f}x" in md


@pytest.mark.timeout(300)
def test_bench_timeout_stops_an_isolated_measurement_and_reports_it(tmp_path, monkeypatch):
    """A measurement that outlives ``--timeout`` is killed; the report names it under "Not
    measured" and the other measurements still run (nothing here finishes: importing jax and
    compiling take longer than 1 s)."""
    monkeypatch.setattr(sys, "argv", ["cromac", "bench"])
    out = tmp_path / "bench_timeout"
    argv = ["bench", "--parts", "env", "--presets", "hallway_4x5x6", "lbf_3p1f", "--num-envs", "4", "--env-steps", "5",
            "--repeats", "1", "--apis", "array", "--timeout", "1", "--out", str(out)]
    args = _parser().parse_args(argv)
    assert args.func(args) == 0
    rows = json.loads((tmp_path / "bench_timeout.json").read_text())["results"]
    assert [r["error"] for r in rows] == ["timed out after 1s"] * 2
    md = (tmp_path / "bench_timeout.md").read_text()
    assert "## Not measured" in md and md.count(": timed out after 1s") == 2


# ---------------------------------------------------------------------------------- Table 1
def test_paper_rows_are_the_papers_text():
    t1 = _table1()
    for env, rows in t1.PAPER_ROWS.items():
        for method, row in rows.items():
            cells = [t1.parse_cell(c) for c in row.split()]
            assert len(cells) == len(t1.COLUMNS) and all(0 <= m <= 1 and 0 <= s <= 1 for m, s in cells), (env, method)
    assert t1.paper_row("hallway_4x5x6", "cromac")[0] == (0.93, 0.06)
    assert t1.paper_row("lbf_3p1f", "ame")[2] == (0.58, 0.11)
    assert t1.paper_row("hallway_4x5x6", "qmix") is None and t1.paper_row("tj_fast", "cromac") is None
    if not PAPER_TEXT.is_file():
        pytest.skip(f"the paper's text is not at {PAPER_TEXT}")
    text = PAPER_TEXT.read_text()
    for env, rows in t1.PAPER_ROWS.items():
        for method, row in rows.items():
            assert f"{method} {row}" in text, (env, method)


def test_plan_adds_figure5a_mixers_on_lbf_only():
    t1 = _table1()
    lbf = [r.name for r in t1.plan_runs("lbf_3p1f", t1.DEFAULT_METHODS)]
    assert lbf[-2:] == ["lbf_3p1f_cromac_vdn", "lbf_3p1f_cromac_qplex"] and len(lbf) == 7
    assert len(t1.plan_runs("lbf_3p1f", t1.DEFAULT_METHODS, figure5a=False)) == 5
    assert [r.mixer for r in t1.plan_runs("hallway_4x5x6", t1.DEFAULT_METHODS)] == ["qmix"] * 5


def test_checks_report_the_papers_ordering_and_targets():
    t1 = _table1()

    def row(nat, pgd, fgsm):
        return {"cells": {"Natural": (nat, 0.0, []), "PGD": (pgd, 0.0, []), "FGSM": (fgsm, 0.0, [])}}

    table = {"cromac": row(0.95, 0.91, 0.9), "cromac_no_robust": row(0.97, 0.2, 0.95), "ame": row(0.9, 0.5, 0.6)}
    runs = [{"method": "cromac", "mixer": "qmix", "train_s": 1500.0, "eval_s": 60.0}]
    got = {c["check"]: c for c in t1.checks("hallway_4x5x6", table, runs, paper_budget=True, seeds=5)}
    assert got["CroMAC natural win rate >= the paper's 0.93"]["status"] == "pass"
    assert got["CroMAC win rate under PGD >= 0.9"]["status"] == "pass"
    assert got["ordering: CroMAC above CroMAC w/o robust under PGD"]["status"] == "pass"
    miss = got["ordering: CroMAC above CroMAC w/o robust under FGSM"]
    assert miss["status"] == "MISS" and miss["margin"] == pytest.approx(-0.05)
    timing = next(c for k, c in got.items() if k.startswith("the paper's protocol"))
    assert timing["status"] == "pass" and timing["ours"] == pytest.approx(26.0)
    short = {c["check"]: c for c in t1.checks("hallway_4x5x6", table, runs, paper_budget=False, seeds=2)}
    assert next(c for k, c in short.items() if k.startswith("the paper's protocol"))["status"].startswith("n/a")
    assert not any("PGD >= 0.9" in c["check"] for c in t1.checks("lbf_3p1f", table, [], True, 5))
    # an unfinished run's wall time so far can confirm a miss, never a pass
    for train_s, status in ((1500.0, "in progress"), (2000.0, "MISS")):
        partial = [{"method": "cromac", "mixer": "qmix", "train_s": train_s, "eval_s": None, "status": "partial"}]
        c = next(c for c in t1.checks("hallway_4x5x6", table, partial, True, 5) if c["check"].startswith("the paper's protocol"))
        assert c["status"] == status and c["check"].endswith("so far (run unfinished)")


@pytest.mark.timeout(900)
def test_reproduce_table1_tiny_writes_the_table_and_resumes(tmp_path, monkeypatch):
    t1 = _table1()
    overrides = TINY + ["train.chunk_iterations=3", "train.test_interval=300", "train.test_nepisode=4",
                        "cromac.robust_start=100"]
    argv = ["--envs", "hallway_4x5x6", "--methods", "cromac", "qmix", "--seeds", "2", "--t-max", "600",
            "--episodes", "3", "--budgets", "0.5", "1", "--runs-dir", str(tmp_path / "runs"),
            "--results-dir", str(tmp_path / "results"), *overrides]
    # an interrupted run: qmix stopped after two chunks, as a killed process leaves it
    from cromac_jax import runner, sweep

    qmix = sweep.SweepRun("hallway_4x5x6", "qmix", "qmix")
    cfg = sweep.run_config(qmix, overrides + ["train.t_max=600"], 2)
    runner.train(cfg, run_dir=tmp_path / "runs" / qmix.name, out=None, max_chunks=2)
    # --table-only on runs in progress: their status and latest in-training test, nothing trained
    interim = t1.main(argv + ["--table-only"], out=None)["hallway_4x5x6"]
    by_run = {r["method"]: r for r in interim["runs"]}
    assert by_run["cromac"]["status"] == "not started" and by_run["cromac"]["last_test"] is None
    assert by_run["qmix"]["status"] == "partial" and by_run["qmix"]["last_test"]["seeds"] == 2
    started = tmp_path / "started"
    started.mkdir()
    assert t1.run_status(started, False, False) == "not started"
    (started / "metrics.jsonl").write_text("")  # training, before its first checkpoint
    assert t1.run_status(started, False, False) == "started, no checkpoint yet"
    assert 0.0 <= by_run["qmix"]["last_test"]["test_won_mean"] <= 1.0 and interim["ours"] == {}
    tag = bench.hardware_tag()
    interim_md = (tmp_path / "results" / f"table1_hallway_4x5x6_{tag}.md").read_text()
    assert "latest test: natural / FGSM" in interim_md and f"at {by_run['qmix']['last_test']['t_env']:,}" in interim_md
    assert not (tmp_path / "runs" / "hallway_4x5x6_cromac_qmix").exists()
    first = io.StringIO()
    report = t1.main(argv, out=first)["hallway_4x5x6"]
    log = first.getvalue()
    # each run is evaluated, and the report rebuilt, as soon as it is trained, before the next trains
    order = [log.index(s) for s in ("hallway_4x5x6_cromac_qmix: starting", "hallway_4x5x6_cromac_qmix: evaluating",
                                    "hallway_4x5x6_qmix_qmix: resuming from", "hallway_4x5x6_qmix_qmix: evaluating")]
    assert order == sorted(order), order
    wrote = [line for line in log.splitlines() if line.startswith("wrote ") and f"table1_hallway_4x5x6_{bench.hardware_tag()}.md" in line]
    assert len(wrote) == 3  # after each run, and at the end
    tag = bench.hardware_tag()
    stem = tmp_path / "results" / f"table1_hallway_4x5x6_{tag}"
    md = Path(f"{stem}.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| method"))
    assert [c.strip() for c in header.strip("|").split("|")][2:] == list(t1.COLUMNS)
    assert "| paper " in md and "0.93 ± 0.06" in md and "ours − paper" in md and "REC (not implemented here)" in md
    assert "Sci China Inf Sci" in md and "NOT the paper's" in md and "Wall time" in md
    assert Path(f"{stem}_curves.png").stat().st_size > 0 and Path(f"{stem}_budget.png").stat().st_size > 0
    data = json.loads(Path(f"{stem}.json").read_text())
    assert data["protocol"]["t_max"] == 600 and not data["protocol"]["paper_budget"]
    assert [r["status"] for r in report["runs"]] == ["evaluated", "evaluated"]
    by_run = {r["method"]: r for r in report["runs"]}
    assert 0.0 <= by_run["cromac"]["state_latent"] <= 1.0 and by_run["qmix"]["state_latent"] is None
    assert "natural on state latent" in md
    cromac = data["ours"]["cromac"]
    assert set(cromac["cells"]) >= {"Natural", "Random", "PGD", "FGSM (2)", "FGSM"} and cromac["seeds"] == 2
    assert "FGSM (4)" not in cromac["cells"]  # budgets 0.5 and 1 only
    assert all(_positive(r["train_s"]) and _positive(r["eval_s"]) for r in data["runs"])
    assert "[table1 " in first.getvalue()  # the overall progress bar
    assert (tmp_path / "runs" / "summary.md").is_file()  # the sweep's own summary

    rec_root = tmp_path / "results" / "table1_runs" / tag / "runs"
    recorded = _files(rec_root)
    shutil.copyfile(f"{stem}.json", tmp_path / "report.json")
    evals = {p: p.stat().st_mtime for p in (tmp_path / "runs").rglob("eval_*.json")}
    ckpts = sorted(p.name for p in (tmp_path / "runs").glob("*/checkpoints/*"))
    second = io.StringIO()
    again = t1.main(argv, out=second)["hallway_4x5x6"]
    log = second.getvalue()
    assert log.count("already finished, skipped") == 2 and log.count("already there, reused") == 2
    assert ": starting" not in log and ": resuming" not in log and "evaluating" not in log
    assert {p: p.stat().st_mtime for p in evals} == evals and len(evals) == 2
    assert sorted(p.name for p in (tmp_path / "runs").glob("*/checkpoints/*")) == ckpts
    assert again["ours"] == data["ours"]
    walls = [t1.read_wall(tmp_path / "runs" / r) for r in ("hallway_4x5x6_cromac_qmix", "hallway_4x5x6_qmix_qmix")]
    assert all(w["train_sessions"] == 1 and w["eval_sessions"] == 1 for w in walls)  # the partial run was not timed
    # one method alone (as when evaluating a finished run beside the trainers) keeps the others' rows
    alone = [a for a in argv if a != "cromac"]
    assert alone[alone.index("--methods") + 1] == "qmix"
    merged = t1.main(alone + ["--table-only"], out=None)["hallway_4x5x6"]
    assert [r["method"] for r in merged["runs"]] == ["cromac", "qmix"] and merged["ours"] == data["ours"]
    assert "--methods cromac qmix" in merged["command"]
    assert [r.name for r in t1.report_runs("hallway_4x5x6", tmp_path / "nothing", ["qmix"])] == [qmix.name]

    # every evaluated run is recorded beside the report, so a checkout without the run directories
    # (a fresh clone: checkpoints are not committed) rebuilds the same table from the records
    assert sorted(p.name for p in rec_root.iterdir()) == sorted(["hallway_4x5x6_cromac_qmix", qmix.name])
    assert _files(rec_root) == recorded  # the rebuilds since wrote nothing: git stays clean
    assert not any("checkpoint" in str(p.relative_to(rec_root)) for p in recorded)
    rec_tests = (rec_root / qmix.name / "metrics.jsonl").read_text().splitlines()
    assert rec_tests and all('"kind": "test"' in line for line in rec_tests)
    record = json.loads((rec_root / qmix.name / "record.json").read_text())
    assert record["protocol"]["t_max"] == 600 and record["protocol"]["budgets"] == [0.5, 1.0]
    # protocols compare as the config reads overrides: order does not matter, the last of a key wins
    assert t1.records._protocol({"overrides": ["a=1", "b=2"]}) == t1.records._protocol({"overrides": ["b=2", "a=0", "a=1"]})
    # a run directory that is not evaluated at its step (training or evaluating again) defers to its record
    for p in (tmp_path / "runs" / qmix.name).glob("eval_*"):
        p.unlink()
    again_qmix = t1.main(alone + ["--table-only"], out=None)["hallway_4x5x6"]
    assert [(r["method"], r["source"], r["status"]) for r in again_qmix["runs"]] == [
        ("cromac", "run dir", "evaluated"), ("qmix", "record", "evaluated (record)")]
    unevaluated_qmix = tmp_path / "unevaluated_qmix"
    shutil.copytree(tmp_path / "runs" / qmix.name, unevaluated_qmix)
    shutil.rmtree(tmp_path / "runs")
    from_records = t1.main(alone + ["--table-only"], out=None)["hallway_4x5x6"]

    def cells(ours):  # the table, not where it was read from
        return {k: {f: v for f, v in row.items() if f != "eval_json"} for k, row in ours.items()}

    assert cells(from_records["ours"]) == cells(data["ours"])
    assert all(str(rec_root) in row["eval_json"] for row in from_records["ours"].values())
    assert [(r["method"], r["status"], r["source"]) for r in from_records["runs"]] == [
        ("cromac", "evaluated (record)", "record"), ("qmix", "evaluated (record)", "record")]
    assert [r["train_s"] for r in from_records["runs"]] == [r["train_s"] for r in data["runs"]]
    assert set(from_records["figures"]) == {"curves", "budget"}
    assert "evaluated (record): trained and evaluated in another checkout" in Path(f"{stem}.md").read_text()
    # ... and the same command in that checkout trains none of them again
    fresh = io.StringIO()
    assert cells(t1.main(alone, out=fresh)["hallway_4x5x6"]["ours"]) == cells(data["ours"])
    assert fresh.getvalue().count("not trained again") == 1  # --methods qmix: its own run
    assert "starting" not in fresh.getvalue() and "evaluating" not in fresh.getvalue()
    assert not (tmp_path / "runs" / qmix.name / "checkpoints").exists()
    # records of another protocol (here: other episodes) in the same folder are neither used nor replaced
    other_episodes = [a if a != "3" else "4" for a in alone]
    assert other_episodes != alone
    with pytest.raises(SystemExit, match="holds records of another protocol .*pass --results-dir"):
        t1.main(other_episodes, out=None)
    assert _files(rec_root) == recorded and not (tmp_path / "runs" / qmix.name / "checkpoints").exists()
    # ... while another env's runs, of their own protocol, share the folder with them
    t1.main(["--envs", "lbf_3p1f", *other_episodes[other_episodes.index("--methods"):], "--table-only"], out=None)
    assert _files(rec_root) == recorded
    # the report of this protocol as it was before records existed: no sources, no budgets in its protocol
    old = json.loads((tmp_path / "report.json").read_text())
    del old["protocol"]["budgets"]
    old["runs"] = [{k: v for k, v in row.items() if k != "source"} for row in old["runs"]]
    Path(f"{stem}.json").write_text(json.dumps(old))
    # a report from before records were kept: its evaluated rows are carried over, not dropped,
    # also while a run trains or evaluates again, until it has a new evaluation
    shutil.rmtree(tmp_path / "results" / "table1_runs")
    fresh = io.StringIO()
    t1.main(alone, out=fresh)  # a carried-over run is not trained again either
    assert "not trained again (kept in its row in" in fresh.getvalue() and "starting" not in fresh.getvalue()
    shutil.rmtree(tmp_path / "runs")
    shutil.copytree(unevaluated_qmix, tmp_path / "runs" / qmix.name)
    monkeypatch.setattr(t1, "ROOT", tmp_path)  # as if the run dirs had been in the repository: paths shown from it
    carried = t1.main(alone + ["--table-only"], out=None)["hallway_4x5x6"]
    assert cells(carried["ours"]) == cells(data["ours"]) and "curves" not in carried["figures"]
    assert [r["run_dir"] for r in carried["runs"]] == [f"runs/{r}" for r in ("hallway_4x5x6_cromac_qmix", qmix.name)]
    assert all(not Path(row["eval_json"]).is_absolute() for row in carried["ours"].values())
    assert [r["status"] for r in carried["runs"]] == ["evaluated (carried over)"] * 2
    assert "its curves are only in the figures drawn when it was trained" in Path(f"{stem}.md").read_text()
    # their figures, which cannot be drawn again, are kept under another name and shown
    assert carried["figures"] == {"curves_earlier": f"{stem.name}_curves_earlier.png",
                                  "budget_earlier": f"{stem.name}_budget_earlier.png"}
    assert Path(f"{stem}_curves_earlier.png").is_file() and not Path(f"{stem}_curves.png").exists()
    assert t1.main(alone + ["--table-only"], out=None)["hallway_4x5x6"]["figures"] == carried["figures"]
    # a report of another protocol over it would lose those rows, kept nowhere else: one error line first
    other_budget = [a if a != "600" else "700" for a in alone]
    with pytest.raises(SystemExit, match=r"holds 2 evaluated run\(s\) of another protocol \(t_max=600, .*pass --results-dir"):
        t1.main(other_budget, out=None)  # refused before anything trains
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [qmix.name]
    assert cells(json.loads(Path(f"{stem}.json").read_text())["ours"]) == cells(data["ours"])
    elsewhere = t1.main(other_budget + ["--table-only", "--results-dir", str(tmp_path / "other")], out=None)
    assert elsewhere["hallway_4x5x6"]["ours"] == {}


def test_table1_record_of_before_budgets_takes_them_from_its_eval_table(tmp_path):
    records = _table1().records
    rec = tmp_path / "run"
    rec.mkdir()
    protocol = {"t_max": 5, "seeds": 1, "episodes_per_seed": 2, "overrides": ["a=1"]}
    (rec / "record.json").write_text(json.dumps({"step": 5, "protocol": protocol}))
    (rec / "eval_5.json").write_text(json.dumps({"budgets": [1, 2]}))
    assert records.recorded_step(rec, {**protocol, "budgets": [1.0, 2.0]}) == 5
    assert records.recorded_step(rec, {**protocol, "budgets": [1.0]}) is None
    assert records.recorded_step(rec, {**protocol, "budgets": [1.0, 2.0], "seeds": 2}) is None
    assert records.recorded_step(tmp_path / "nothing") is None
    # recorded before cromac.loss_reduction existed: those runs trained with "episode_limit"
    earlier = {**protocol, "budgets": [1.0, 2.0]}
    assert records.recorded_step(rec, {**earlier, "loss_reduction": "official"}) is None
    assert records.recorded_step(rec, {**earlier, "loss_reduction": "episode_limit",
                                       "overrides": ["a=1", "cromac.loss_reduction=episode_limit"]}) == 5


def _files(root: Path) -> dict[Path, tuple[bytes, int]]:
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def test_reproduce_table1_bad_cpu_devices_is_one_line_before_anything_runs(tmp_path):
    t1 = _table1()
    with pytest.raises(SystemExit, match="reproduce_table1: error: --cpu-devices must be auto, off or a positive"):
        t1.main(["--cpu-devices", "many", "--runs-dir", str(tmp_path / "runs")], out=None)
    with pytest.raises(SystemExit, match="does not divide train.num_seeds=5"):
        t1.main(["--cpu-devices", "2", "--runs-dir", str(tmp_path / "runs")], out=None)
    assert not (tmp_path / "runs").exists()


def test_reproduce_table1_any_share_skips_a_held_run(tmp_path, monkeypatch):
    from cromac_jax import runner, sweep

    fake_train = []  # the claim logic is under test, not training
    monkeypatch.setattr(runner, "train", lambda cfg, run_dir, **kw: fake_train.append(run_dir.name))
    t1 = _table1()
    args = t1.parse_args(["--share", "any/2", "--envs", "hallway_4x5x6"])
    assert (args.share_index, args.share_count) == (sweep.ANY, 2)
    runs = t1.plan_runs("hallway_4x5x6", ["cromac", "qmix"])
    out = io.StringIO()
    with sweep.claim(tmp_path / runs[0].name):
        t1.train_runs(tmp_path, runs, 1, [], out, progress_every=1e9)
    assert fake_train == [runs[1].name]
    assert f"{runs[0].name}: held by another process, skipped" in out.getvalue()
    with pytest.raises(SystemExit):
        t1.parse_args(["--share", "any/x"])


def test_progress_counts_restored_steps_as_done_but_not_towards_the_rate(tmp_path, monkeypatch):
    t1 = _table1()
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    records = [{"kind": "train", "t_env": [100, 150]},  # the chunk the checkpoint at 100 was saved after
               {"kind": "test", "t_env": [100, 150]},
               {"kind": "train", "t_env": [120, 190]}]  # written by a process killed before its next checkpoint
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    monkeypatch.setattr(t1, "saved_steps", lambda d: [100] if d == run_dir else [])
    assert t1.resumed_steps(run_dir, t_max=1000, seeds=2) == 250  # not 2 x 100 (the slowest seed's)
    assert t1.resumed_steps(run_dir, t_max=120, seeds=2) == 220
    assert t1.resumed_steps(tmp_path / "fresh", t_max=1000, seeds=2) == 0
    out = io.StringIO()
    p = t1.Progress(total=4000, out=out, every=0.0, processes=2)
    p.count_steps("r", 250, this_session=False)
    p.start_run("r", 1, 2, 250)
    p.chunk({"t_env": [200, 250]}, t_max=1000)
    assert p.done == 450 and p.session == 200
    line = out.getvalue().splitlines()[-1]
    assert "11.2% of 4,000 env steps | run 1/2 r" in line and "over 2 processes" in line
