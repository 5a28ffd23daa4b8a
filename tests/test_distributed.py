"""Several processes joined by ``jax.distributed`` train one run's seeds as one process would.

The processes are real: two ``cromac train --distributed`` CLIs on localhost, one CPU device
each, a coordinator on a port picked free at test time, gloo for the CPU collectives.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml

from cromac_jax import checkpoint, distributed, runner
from cromac_jax.config import ConfigError
from tests.test_train import tiny

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    env.pop("JAX_COORDINATOR_ADDRESS", None)
    # one CPU device per process, whatever the parent was given
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f)
    return env


def _launch(cfg_path: Path, run_dir: Path | None, n: int = 2, extra: tuple = (), stagger: float = 0.0) -> list[subprocess.Popen]:
    """``n`` processes of one run; ``run_dir=None`` leaves it to the default (under the config's
    ``train.run_dir``); ``stagger`` seconds between starts."""
    port = distributed.free_port()
    base = [sys.executable, "-m", "cromac_jax.cli", "train", "--config", str(cfg_path),
            *(["--run-dir", str(run_dir)] if run_dir is not None else []),
            "--distributed", "--coordinator", f"127.0.0.1:{port}", "--num-processes", str(n),
            "--init-timeout", "60", "--heartbeat-timeout", "10", *extra]
    procs = []
    for i in range(n):
        if i:
            time.sleep(stagger)
        procs.append(subprocess.Popen(base + ["--process-id", str(i)], cwd=ROOT, env=_env(), text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    return procs


def _write_cfg(tmp_path: Path, cfg) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    return path


def _records(run_dir: Path, kind: str) -> list[dict]:
    import json

    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


@pytest.mark.timeout(600)
def test_two_processes_train_the_same_seeds_as_one_process(tmp_path):
    # no --run-dir, started 1.5 s apart: both processes must still write process 0's default run dir
    cfg = tiny(num_seeds=4, slot_buckets=2, run_dir=str(tmp_path / "runs"))
    procs = _launch(_write_cfg(tmp_path, cfg), None, stagger=1.5)
    outs = [p.communicate(timeout=540)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    assert "done in" in outs[0] and "done in" not in outs[1]  # only process 0 reports
    [two] = list((tmp_path / "runs").iterdir())
    two.rename(tmp_path / "two")

    one = runner.train(cfg, run_dir=tmp_path / "one", out=None)
    two_train, one_train = _records(tmp_path / "two", "train"), _records(tmp_path / "one", "train")
    assert len(two_train) == len(one_train) == one.chunks  # metrics written once, not per process
    assert len(_records(tmp_path / "two", "test")) == len(_records(tmp_path / "one", "test"))
    csv_rows = (tmp_path / "two" / "metrics.csv").read_text().splitlines()
    assert len(csv_rows) == 1 + 4 * one.chunks
    for a, b in zip(two_train, one_train, strict=True):
        assert a["t_env"] == b["t_env"] and a["updates"] == b["updates"]
        for key in ("loss", "td", "return_mean", "q_taken"):
            # Each process compiles the vmapped program for its 2 seeds instead of 4: XLA may
            # reassociate float sums differently, so equal up to rounding, not bit for bit.
            # A seed past its budget has no train metrics (None) in both layouts.
            assert [v is None for v in a[key]] == [v is None for v in b[key]], key
            np.testing.assert_allclose(np.asarray(a[key], dtype=float), np.asarray(b[key], dtype=float),
                                       rtol=1e-3, atol=1e-4, err_msg=key)
    assert (tmp_path / "two" / "summary.txt").is_file()

    # the 2-process checkpoint restores in 1 process (another process count) to the same state
    steps = checkpoint.all_steps(tmp_path / "two")
    assert steps == checkpoint.all_steps(tmp_path / "one")
    abstract = runner.SeedRunner(cfg).abstract_state()
    _, s2 = checkpoint.restore(tmp_path / "two", abstract)
    _, s1 = checkpoint.restore(tmp_path / "one", abstract)
    for x, y in zip(jax.tree.leaves(s2.params), jax.tree.leaves(s1.params), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-3, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(s2.t_env), np.asarray(s1.t_env))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("victim", [1])
def test_a_killed_process_stops_the_other_with_a_clear_message(tmp_path, victim):
    cfg = tiny(num_seeds=2, t_max=10**6)
    run_dir = tmp_path / "run"
    procs = _launch(_write_cfg(tmp_path, cfg), run_dir)
    seen = []
    deadline = time.monotonic() + 240
    for line in procs[0].stdout:  # wait until both processes joined and training started
        seen.append(line)
        if line.startswith("training ") or time.monotonic() > deadline:
            break
    assert any(line.startswith("training ") for line in seen), "".join(seen)[-2000:]
    procs[victim].kill()
    t0 = time.monotonic()
    survivor = procs[1 - victim]
    out = survivor.communicate(timeout=180)[0]
    elapsed = time.monotonic() - t0
    assert survivor.returncode != 0
    assert elapsed < 150, elapsed
    # our own line when a collective fails, or JAX's when the heartbeat notices first
    assert "lost contact with the other processes" in out or "another task died" in out, out[-3000:]
    assert not (run_dir / "summary.txt").exists()  # an interrupted run is never presented as complete


def test_unreachable_coordinator_fails_fast_with_one_line(tmp_path):
    port = distributed.free_port()  # nobody listens there
    cmd = [sys.executable, "-m", "cromac_jax.cli", "train", "--run-dir", str(tmp_path / "run"), "--distributed",
           "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", "1", "--init-timeout", "2"]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert time.monotonic() - t0 < 60
    assert f"coordinator 127.0.0.1:{port} could not be reached" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_no_coordinator_and_no_cluster_says_what_to_pass(tmp_path):
    env = {k: v for k, v in _env().items()
           if not k.startswith(("SLURM_", "OMPI_", "PMI_", "JAX_COORDINATOR", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"))}
    cmd = [sys.executable, "-m", "cromac_jax.cli", "train", "--run-dir", str(tmp_path / "run"), "--distributed"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last == ("cromac: error: --distributed found no cluster (SLURM, Open MPI, ...) to take the coordinator from: "
                    "pass --coordinator HOST:PORT --num-processes N --process-id I (or set JAX_COORDINATOR_ADDRESS, "
                    "JAX_NUM_PROCESSES and JAX_PROCESS_ID)"), proc.stderr[-2000:]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (distributed.DistributedSettings("127.0.0.1:5000", 2, 2), "process id 2 is out of range"),
        (distributed.DistributedSettings("127.0.0.1:5000", 2, -1), "process id -1 is out of range"),
        (distributed.DistributedSettings("127.0.0.1:5000", 0, 0), "number of processes 0 is invalid"),
        (distributed.DistributedSettings(None, 2, 0), "missing: coordinator address"),
        (distributed.DistributedSettings("nohostport", 2, 0), "must look like HOST:PORT"),
        (distributed.DistributedSettings(None, None, None, init_timeout=-3), "--init-timeout -3 is invalid: must be >= 1 second"),
    ],
)
def test_bad_distributed_settings_are_refused_before_joining(settings, message, monkeypatch):
    for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ConfigError, match=message):
        distributed.resolve_settings(settings)


def test_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
    monkeypatch.setenv("JAX_PROCESS_ID", "3")
    s = distributed.resolve_settings(distributed.DistributedSettings())
    assert (s.coordinator, s.num_processes, s.process_id) == ("10.0.0.1:1234", 4, 3)
    monkeypatch.setenv("JAX_PROCESS_ID", "x")
    with pytest.raises(ConfigError, match="JAX_PROCESS_ID='x' must be an integer"):
        distributed.resolve_settings(distributed.DistributedSettings())


def test_seed_count_that_does_not_divide_over_processes_is_refused(monkeypatch):
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    devices = jax.devices() * 2
    with pytest.raises(ConfigError, match="train.num_seeds=3 does not divide over the 2 devices"):
        runner.seed_sharding(3, devices)


LAUNCH_VARS = ("JAX_PROCESS_ID", "JAX_NUM_PROCESSES", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_NODEID",
               "SLURM_STEP_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE", "OMPI_COMM_WORLD_RANK",
               "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE")


def test_sweep_share_comes_from_the_launcher(monkeypatch):
    for var in LAUNCH_VARS:
        monkeypatch.delenv(var, raising=False)
    assert distributed.host_share_from_environment() == (0, 1, 1)
    monkeypatch.setenv("SLURM_PROCID", "2")
    monkeypatch.setenv("SLURM_NTASKS", "3")
    assert distributed.host_share_from_environment() == (2, 3, 3)
    monkeypatch.setenv("SLURM_PROCID", "3")
    with pytest.raises(ConfigError, match="SLURM_PROCID=3 is out of range"):
        distributed.host_share_from_environment()


def test_host_share_counts_the_processes_on_this_host_from_the_same_launcher(monkeypatch):
    for var in LAUNCH_VARS:
        monkeypatch.delenv(var, raising=False)
    assert distributed.host_share_from_environment() == (0, 1, 1)
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "1")  # no launcher share: its local size is ignored
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_SIZE", "1")
    monkeypatch.setenv("JAX_PROCESS_ID", "5")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "8")
    assert distributed.host_share_from_environment() == (5, 8, 8)  # JAX's variables say nothing about hosts
    for var in ("JAX_PROCESS_ID", "JAX_NUM_PROCESSES"):
        monkeypatch.delenv(var)
    monkeypatch.setenv("SLURM_PROCID", "6")
    monkeypatch.setenv("SLURM_NTASKS", "7")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "4")
    assert distributed.host_share_from_environment() == (6, 7, 4)
    monkeypatch.setenv("SLURM_STEP_TASKS_PER_NODE", "2(x3),1")  # nodes 0-2 run 2 tasks, node 3 one
    monkeypatch.setenv("SLURM_NODEID", "3")
    assert distributed.host_share_from_environment() == (6, 7, 1)
    monkeypatch.setenv("SLURM_NODEID", "1")
    assert distributed.host_share_from_environment() == (6, 7, 2)
    for var in ("SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(var)
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "0")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_SIZE", "4")  # never more than the processes there are
    assert distributed.host_share_from_environment() == (0, 2, 2)
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_SIZE", "two")
    with pytest.raises(ConfigError, match="OMPI_COMM_WORLD_LOCAL_SIZE='two' must be an integer"):
        distributed.host_share_from_environment()


def test_sweep_divides_the_cores_among_the_processes_on_this_host(monkeypatch, tmp_path):
    from cromac_jax import cli

    for var in LAUNCH_VARS:
        monkeypatch.delenv(var, raising=False)
    seen = []

    def stop(args, num_seeds, processes_here=1):
        seen.append(processes_here)
        raise ConfigError("stop here")

    monkeypatch.setattr(cli, "_host_devices", stop)
    argv = ["sweep", "--envs", "hallway_4x5x6", "--methods", "qmix", "--out", str(tmp_path)]
    assert cli.main([*argv, "--share", "1/4"]) == 2  # an explicit share: all four on this host
    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "2")
    assert cli.main([*argv, "--share", "auto"]) == 2
    assert cli.main([*argv, "--share", "1/8"]) == 2  # the launcher's count is not this share's
    assert seen == [4, 2, 8]


def test_sweep_summary_marks_runs_still_training_elsewhere(tmp_path):
    from cromac_jax import sweep

    runs = sweep.plan(["hallway_4x5x6"], ["qmix", "cromac"], ["qmix"])
    for r, t_env in zip(runs, (600, 300), strict=True):  # qmix finished, cromac still in another process's hands
        cfg = tiny(method=r.method)
        (tmp_path / r.name).mkdir()
        runner.write_config(tmp_path / r.name, cfg)
        runner.append_record(tmp_path / r.name / "metrics.jsonl",
                             {"kind": "test", "t_env": [t_env], "test_won_mean": [1.0], "test_return_mean": [1.0]})
    rows = sweep.summarise(tmp_path, runs, out=None)
    assert [r["status"] for r in rows] == ["ok", "partial"]
    assert "300 (partial)" in (tmp_path / "summary.md").read_text()


def test_default_run_dir_takes_process_0s_start_time_in_a_multi_process_run(monkeypatch):
    from jax.experimental import multihost_utils

    cfg = tiny()
    sent = []

    def broadcast(x):  # what process 0 would send: its own start time
        sent.append(np.asarray(x).tolist())
        return np.array([20260102, 30405], np.int32)

    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(multihost_utils, "broadcast_one_to_all", broadcast)
    path = runner.default_run_dir(cfg)
    assert path.name == "hallway_4x5x6_cromac_qmix_20260102-030405" and len(sent) == 1
    assert len(sent[0]) == 2 and 2026_00_00 < sent[0][0] < 2100_00_00  # this process's date, as int32-safe parts
    monkeypatch.setattr(jax, "process_count", lambda: 1)
    assert runner.default_run_dir(cfg).name.startswith("hallway_4x5x6_cromac_qmix_") and len(sent) == 1
