"""The seed axis sharded over several devices gives the same per-seed results as one device.

CPU tests force three host devices in a subprocess (XLA_FLAGS must be set before jax starts).
"""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from cromac_jax import runner
from tests.test_train import tiny

SCRIPT = textwrap.dedent(
    """
    import json, re, sys
    import jax, numpy as np
    from cromac_jax import runner
    from tests.test_train import tiny
    cfg = tiny(num_seeds=3, slot_buckets=2)
    sr = runner.SeedRunner(cfg)
    state = sr.init_state()

    def collectives(compiled):  # where a compiled program communicates: (computation, collective) pairs
        found, comp = [], None
        for line in compiled.as_text().splitlines():
            if line and not line.startswith(" ") and line.rstrip().endswith("{"):
                comp = "ENTRY" if line.startswith("ENTRY") else line.split()[0]
            m = re.search(r" (all-reduce|all-gather|collective-permute|all-to-all|reduce-scatter)(?:-start)?[(]", line)
            if m:
                found.append((comp, m.group(1)))
        return found

    full_collectives = collectives(sr._chunk.lower(state).compile())
    state, metrics = sr.chunk(state)
    leaf = jax.tree.leaves(state.params)[0]
    out = {
        "devices": len(jax.devices()),
        "sharded_over": len(leaf.sharding.device_set),
        "params": [np.asarray(x).ravel().tolist() for x in jax.tree.leaves(state.params)],
        "updates": np.asarray(metrics.updates).tolist(),
        "collectives": full_collectives,
    }
    # seed 0 has used its budget: the next chunk runs on the two devices holding seeds 1 and 2
    t_env = jax.device_put(state.t_env.at[0].set(cfg.train.t_max), state.t_env.sharding)
    state = state.replace(t_env=t_env)
    frozen = jax.tree.map(np.asarray, state)
    state, metrics = sr.chunk(state)
    leaf = jax.tree.leaves(state.params)[0]
    out.update({
        "after_sharded_over": len(leaf.sharding.device_set),
        "after_params": [np.asarray(x).ravel().tolist() for x in jax.tree.leaves(state.params)],
        "seed0_kept": all(np.array_equal(np.asarray(x)[0], np.asarray(y)[0])
                          for x, y in zip(jax.tree.leaves(state), jax.tree.leaves(frozen))),
        "loss_nan": np.isnan(np.asarray(metrics.loss)).all(axis=1).tolist(),
        "after_updates": np.asarray(state.updates).tolist(),
    })
    # and again: the arrays the last chunk put together from its devices' shards are chunked in turn
    # (this once failed: the chunk donated buffers the full arrays shared, "Array has been deleted")
    state, metrics = sr.chunk(state)
    out["again_updates"] = np.asarray(state.updates).tolist()
    (fn, sub_sh), = sr._device_chunks.values()
    sub = jax.tree.map(lambda x: jax.ShapeDtypeStruct((2,) + x.shape[1:], x.dtype, sharding=sub_sh), state)
    out["sub_collectives"] = collectives(fn.lower(sub).compile())
    sys.stdout.write("RESULT" + json.dumps(out))
    """
)


@pytest.mark.timeout(600)
def test_three_forced_cpu_devices_shard_seeds_and_match_one_device():
    flags = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=3").strip()
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=root, capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert res["devices"] == 3 and res["sharded_over"] == 3, res["devices"]
    # each device trains its own seeds: the only collectives gather the metrics, once per chunk
    # (at top level, not inside the scan over iterations and updates; before shard_map the trim's
    # longest episode and the learner's readiness were all-reduced in the loops)
    assert res["collectives"] and {c for c, _ in res["collectives"]} == {"ENTRY"}, res["collectives"]
    assert {op for _, op in res["collectives"]} == {"all-gather"}, res["collectives"]
    # so does the program over the devices that still train (2 of 3 below)
    assert res["sub_collectives"] and {c for c, _ in res["sub_collectives"]} == {"ENTRY"}, res["sub_collectives"]
    sr = runner.SeedRunner(tiny(num_seeds=3, slot_buckets=2))
    assert sr.sharding is None  # this process has one device
    state, metrics = sr.chunk(sr.init_state())
    assert np.asarray(metrics.updates).tolist() == res["updates"]
    for mine, theirs in zip(jax.tree.leaves(state.params), res["params"], strict=True):
        np.testing.assert_allclose(np.asarray(mine).ravel(), np.asarray(theirs), rtol=1e-4, atol=1e-5)
    # a finished seed is left out on two devices (its device idles) as on one (it is sliced out)
    assert res["seed0_kept"] and res["loss_nan"] == [True, False, False] and res["after_sharded_over"] == 3
    state, metrics = sr.chunk(state.replace(t_env=state.t_env.at[0].set(sr.cfg.train.t_max)))
    assert np.asarray(state.updates).tolist() == res["after_updates"]
    for mine, theirs in zip(jax.tree.leaves(state.params), res["after_params"], strict=True):
        np.testing.assert_allclose(np.asarray(mine).ravel(), np.asarray(theirs), rtol=1e-4, atol=1e-5)
    state, _ = sr.chunk(state)
    assert np.asarray(state.updates).tolist() == res["again_updates"] and res["again_updates"][0] == res["after_updates"][0]


# ------------------------------------------------------------------ --cpu-devices (host_devices)

from cromac_jax import host_devices  # noqa: E402
from cromac_jax.config import ConfigError  # noqa: E402


@pytest.mark.parametrize(
    "seeds, cores, devices",
    [(1, 2, 1), (2, 2, 2), (5, 2, 5), (8, 2, 2), (16, 2, 2), (3, 1, 1), (6, 4, 3), (64, 16, 16), (7, 16, 7)],
)
def test_plan_picks_the_divisor_with_fewest_rounds(seeds, cores, devices):
    assert host_devices.plan(seeds, cores) == devices
    assert seeds % devices == 0


@pytest.mark.parametrize("spec", ["x", "0", "-2", "2.5", ""])
def test_bad_cpu_devices_is_one_config_error(spec):
    with pytest.raises(ConfigError, match="--cpu-devices must be auto, off or a positive integer"):
        host_devices.parse(spec)


def test_apply_after_the_backend_started_changes_nothing_or_refuses():
    jax.devices()  # this test process's backend is running
    assert host_devices.apply("auto", 8, cores=2) is None  # a library caller: quietly unchanged
    assert host_devices.apply("off", 8) is None
    n = len(jax.devices("cpu"))
    assert host_devices.apply(str(n), n) == n  # asking for what runs already is fine
    with pytest.raises(ConfigError, match="already running"):
        host_devices.apply(str(n + 1), n + 1)


def test_user_count_reads_the_users_own_setting(monkeypatch):
    monkeypatch.delenv("JAX_NUM_CPU_DEVICES", raising=False)
    for flags, want in (("", None), ("--xla_backend_optimization_level=0", None),
                        ("--xla_backend_optimization_level=0 --xla_force_host_platform_device_count=6", 6),
                        ("--xla_force_host_platform_device_count=x", None)):
        monkeypatch.setenv("XLA_FLAGS", flags)
        assert host_devices.user_count() == want, flags
    # XLA keeps the last occurrence of a flag, and takes the value quoted
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2 --xla_force_host_platform_device_count=3")
    assert host_devices.user_count() == 3
    monkeypatch.setenv("XLA_FLAGS", '--xla_force_host_platform_device_count="5"')
    assert host_devices.user_count() == 5
    monkeypatch.setenv("JAX_NUM_CPU_DEVICES", "-1")  # jax's "unset": the XLA flag decides
    assert host_devices.user_count() == 5 and host_devices.user_has_chosen()
    monkeypatch.setenv("XLA_FLAGS", "")
    assert host_devices.user_count() is None and not host_devices.user_has_chosen()
    monkeypatch.setenv("JAX_NUM_CPU_DEVICES", "+4")  # jax's own setting (read with int()) wins
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=6")
    assert host_devices.user_count() == 4 and host_devices.user_has_chosen()


DEVICES_SCRIPT = textwrap.dedent(
    """
    import sys
    from cromac_jax import host_devices
    n = host_devices.apply(sys.argv[1], int(sys.argv[2]), cores=int(sys.argv[3]))
    import jax
    print("RESULT", n, len(jax.devices()))
    """
)


def _devices_run(spec, seeds, cores, xla_flags="", fails=False):
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags)
    proc = subprocess.run([sys.executable, "-c", DEVICES_SCRIPT, spec, str(seeds), str(cores)], env=env,
                          capture_output=True, text=True, timeout=120)
    if fails:
        assert proc.returncode != 0
        return proc.stderr
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.split("RESULT", 1)[1].split()


@pytest.mark.timeout(300)
def test_apply_sets_the_host_device_count_before_jax_starts():
    assert _devices_run("auto", 8, 2) == ["2", "2"]
    assert _devices_run("auto", 5, 2) == ["5", "5"]
    assert _devices_run("auto", 1, 2) == ["None", "1"]
    assert _devices_run("off", 8, 2) == ["None", "1"]
    assert _devices_run("4", 8, 2) == ["4", "4"]
    # the user's own XLA flag wins over auto
    assert _devices_run("auto", 8, 2, "--xla_force_host_platform_device_count=3") == ["None", "3"]
    # an explicit count must agree with the user's flag (jax_num_cpu_devices would silently override it)
    assert _devices_run("3", 6, 2, "--xla_force_host_platform_device_count=3") == ["3", "3"]
    err = _devices_run("2", 8, 2, "--xla_force_host_platform_device_count=3", fails=True)
    assert "--cpu-devices 2 contradicts the host device count set by XLA_FLAGS / JAX_NUM_CPU_DEVICES (3)" in err


@pytest.mark.timeout(600)
def test_cli_train_lays_seeds_over_cpu_devices(tmp_path):
    argv = ["train", "--run-dir", str(tmp_path / "r"), "--seeds", "2", "--cpu-devices", "2", "--t-max", "100",
            "--num-envs", "2", "train.buffer_size=16", "train.batch_size=2", "train.learning_starts=2",
            "train.chunk_iterations=2", "train.test_nepisode=2", "train.slot_buckets=2", "model.rnn_hidden=4", "model.z_dim=4",
            "model.vae_hidden=4", "--env", "hallway_3x3x4x4"]
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
    env["JAX_PLATFORMS"] = "cpu"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-m", "cromac_jax.cli", *argv], env=env, cwd=root,
                          capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "2 seed(s) over 2 CPU devices" in proc.stdout and "done in" in proc.stdout
    assert "2 seed(s) over 2 cpu devices, 2 envs each" in proc.stdout  # the runner's header: it took effect
    # a count that does not divide the seeds is one line, before anything is trained
    proc = subprocess.run([sys.executable, "-m", "cromac_jax.cli", "train", "--cpu-devices", "3", "--resume",
                           str(tmp_path / "r")], env=env, cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "does not divide train.num_seeds=2" in proc.stderr, proc.stderr[-500:]
    assert len(proc.stderr.strip().splitlines()) == 1
