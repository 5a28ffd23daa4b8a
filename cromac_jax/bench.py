"""``cromac bench``: how fast this machine runs the environments and the trainer, next to the
official PyTorch code's recorded numbers.

Typical use::

    cromac bench --quick                      # minute-scale smoke run of every part
    cromac bench                              # the full measurement (tens of minutes on a 2-core CPU)
    cromac bench --parts train seeds --envs hallway_4x5x6 --methods cromac --seed-counts 1 2 4 8 16
    python -m cromac_jax.bench --quick        # the same without the console script

Parts (``--parts``, default all):

* ``env``: env steps/s of every preset (``--presets``) at ``--num-envs`` parallel copies: one jitted
  ``lax.scan`` of ``--env-steps`` steps of ``vmap(step)`` with uniformly random available actions,
  through the array core the trainer calls (``step_arrays``, no reset inside an episode) and/or
  JaxMARL's dict API with auto-reset (``env.step``): ``--apis``.
* ``train``: the whole compiled trainer (``SeedRunner.chunk`` = ``jit(seeds_chunk)``, over several devices
  ``runner.device_parallel``; one
  learner update per collected episode as the official code, 8 envs per seed) per env
  (``--envs``: hallway 4x5x6, LBF 3p, TJ slow and the SMAX 1o2r stand-in by default) and method
  (``--methods``), one seed: env steps/s and learner updates/s over ``--chunks`` timed chunks of
  ``--chunk-iterations`` iterations, after the replay buffer has been warmed; plus the cost of one
  learner update alone (ms, a jitted ``lax.scan`` of ``--updates`` updates on the warmed buffer,
  batch 32 episodes). CroMAC runs with its robust (IBP) loss and weight clamp on
  (``cromac.robust_start=0``), the costlier half of its schedule.
* ``seeds``: the same training measurement with 1, 2, 4, 8, 16 vmapped seeds (``--seed-counts``),
  on ``--scaling-env`` for ``--scaling-methods``: env steps/s summed over seeds, and the wall-time
  cost of S seeds relative to one for the same steps per seed.
* ``devices``: the seeds laid over 1 and 2 devices (``--device-counts``, ``--device-seeds`` seeds,
  ``runner.seed_sharding``). On a CPU backend the devices are forced host devices
  (``XLA_FLAGS=--xla_force_host_platform_device_count=D``: the same cores split in D), on GPU the
  first D real devices (``CUDA_VISIBLE_DEVICES``); counts above the devices present are skipped.

Every row reports its compile time separately (``lower().compile()`` of the jitted program:
tracing + XLA compilation, nothing run) and its peak memory. By default each measurement runs
in a fresh subprocess (``python -m cromac_jax.bench --worker SPEC``), so compile times start cold
and the peaks are that measurement's: ``rss_peak_mib`` is the process's maximum resident set
(``getrusage``; ``rss_base_mib`` is the same right before the measurement, after the imports) and
``device_peak_mib`` the accelerator's ``memory_stats()['peak_bytes_in_use']`` summed over devices
(absent on CPU). ``--no-isolate`` measures in this process (faster, warm caches; the RSS peak is
then the process's peak so far, marked ``cumulative``); device scaling always uses subprocesses.

The report (``--out``, default ``benchmarks/results/bench_<hardware>.{json,md}`` in a source
checkout, else ``./bench_<hardware>.*``) names the hardware, the jax version, the device kind and
the load average, and gives the ratio of each figure to the official code's numbers on a 2-core
CPU (``REFERENCE``). Those ratios are only meaningful when measured on the same kind of machine.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import resource
import shlex
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from cromac_jax.reporting import (  # noqa: E402
    slug,
    cpu_model,
    fmt_rate,
    json_safe,
    load_average,
    markdown_table,
    usable_cores,
)

# jax, envs and the trainer are imported inside the functions that measure: building the `cromac`
# parser (add_bench_parser) must stay cheap.

#: The official code's numbers on a 2-core CPU, as recorded for this project (issue 7). Training and
#: update cost: the official PyTorch (PyMARL-based) CroMAC code on hallway 4x5x6, one seed; learner
#: update = one batch of 32 episodes. Environments: the official numpy environments, env steps/s
#: as the official training loop calls them (by preset family: hallway, tj, lbf).
REFERENCE: dict[str, Any] = {
    "hardware": "2-core CPU",
    "train_env_steps_per_s": {"hallway_4x5x6": {"cromac": 140.0, "qmix": 520.0}},
    "ms_per_update": {"hallway_4x5x6": {"cromac": 41.5, "qmix": 9.3}},
    "env_steps_per_s": {"hallway": 111_000.0, "tj": 6_500.0, "lbf": 6_100.0},
}
REFERENCE_NOTE = (
    "Ratios compare with the official PyTorch/numpy code's numbers recorded on a 2-core CPU "
    "(training CroMAC on hallway 4x5x6 at 140 env steps/s and 41.5 ms per learner update, QMIX at 520 "
    "and 9.3 ms; numpy envs 111k steps/s hallway, 6.5k traffic junction, 6.1k LBF). They are only "
    "meaningful when this report was measured on the same kind of machine (a 2-core CPU); on any other "
    "hardware they mix the speed of the code with the speed of the machine."
)

PARTS = ("env", "train", "seeds", "devices")
APIS = ("array", "jaxmarl")
DEFAULT_TRAIN_ENVS = ("hallway_4x5x6", "lbf_3p1f", "tj_slow", "smax_1o2r_vs_4r")
DEFAULT_METHODS = ("cromac", "qmix")
RESULT_TAG = "BENCH_RESULT "

#: Settings of a full run and of ``--quick`` (flags given explicitly win over both).
FULL = {
    "presets": None,  # every registered preset
    "num_envs": [1, 64, 1024, 8192],
    "env_steps": 100,
    "apis": list(APIS),
    "repeats": 3,
    "envs": list(DEFAULT_TRAIN_ENVS),
    "methods": list(DEFAULT_METHODS),
    "chunk_iterations": 20,
    "chunks": 3,
    "updates": 50,
    "seed_counts": [1, 2, 4, 8, 16],
    "scaling_env": "hallway_4x5x6",
    "scaling_methods": list(DEFAULT_METHODS),
    "device_counts": [1, 2],
    "device_seeds": 8,
    "device_method": "cromac",
}
QUICK = {
    **FULL,
    "presets": ["hallway_4x5x6", "lbf_3p1f", "tj_slow"],
    "num_envs": [1024],
    "env_steps": 20,
    "apis": ["array"],
    "repeats": 2,
    "envs": ["hallway_4x5x6"],
    "chunk_iterations": 5,
    "chunks": 2,
    "updates": 10,
    "seed_counts": [1, 4],
    "scaling_methods": ["cromac"],
    "device_seeds": 4,
}


# ============================================================================== the machine
def hardware_tag() -> str:
    """Names result files after the kind of machine: ``cpu-<cpu model>-<cores>c`` on a CPU backend
    (the same tag as ``benchmarks/_report.machine_tag``), ``<backend>-<device kind>[-xN]`` on an
    accelerator (e.g. ``gpu-nvidia-h200``)."""
    import jax

    backend = jax.default_backend()
    if backend == "cpu":
        return f"cpu-{slug(cpu_model())}-{usable_cores()}c"
    devices = jax.devices()
    count = f"-x{len(devices)}" if len(devices) > 1 else ""
    return f"{slug(backend)}-{slug(devices[0].device_kind)}{count}"


def hardware_info() -> dict[str, Any]:
    """What the numbers were measured on (the keys of ``benchmarks/_report.hardware_info`` plus the
    load average, the tag and the accelerator's memory)."""
    import jax

    devices = jax.devices()
    try:
        import jaxlib

        jaxlib_version = getattr(jaxlib, "__version__", None) or jaxlib.version.__version__
    except Exception:  # pragma: no cover - informational only
        jaxlib_version = None
    info: dict[str, Any] = {
        "tag": hardware_tag(),
        "hostname": socket.gethostname(),
        "cpu_model": cpu_model(),
        "cpu_cores": usable_cores(),
        "cpu_count_os": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "jax_version": jax.__version__,
        "jaxlib_version": jaxlib_version,
        "jax_backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "device_memory_gib": None,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "load_average": load_average(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    stats = _memory_stats(devices[0])
    if stats and stats.get("bytes_limit"):
        info["device_memory_gib"] = round(stats["bytes_limit"] / 2**30, 1)
    return info


def describe_hardware(hw: dict[str, Any]) -> str:
    """One line: CPU, cores, jax, backend, device, date."""
    return (f"{hw['cpu_model']}, {hw['cpu_cores']} cores; jax {hw['jax_version']} backend={hw['jax_backend']} "
            f"device={hw['device_kind']} x{hw['device_count']}; {hw['date']}")


def _memory_stats(device: Any) -> dict[str, Any] | None:
    try:
        return device.memory_stats()
    except Exception:  # noqa: BLE001 - backends without allocator statistics
        return None


def memory_now() -> dict[str, Any]:
    """This process's peak resident set so far (MiB) and the accelerators' peak bytes in use
    (MiB, summed over local devices; None on backends that report none, e.g. CPU)."""
    import jax

    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    if sys.platform == "darwin":  # bytes there
        rss_kib /= 1024
    peaks = [s.get("peak_bytes_in_use") for s in map(_memory_stats, jax.local_devices()) if s]
    peaks = [p for p in peaks if p is not None]
    return {"rss_peak_mib": round(rss_kib / 1024, 1), "device_peak_mib": round(sum(peaks) / 2**20, 1) if peaks else None}


# ============================================================================== measuring
def random_available_actions(key: Any, avail: Any) -> Any:
    """A uniformly random available action per row of ``avail`` [..., A] -> int32 [...] (one
    uniform draw per agent picks the k-th available action; as ``benchmarks/env_throughput.py``)."""
    import jax
    import jax.numpy as jnp

    avail = avail.astype(bool)
    count = jnp.sum(avail, axis=-1)
    k = jnp.floor(jax.random.uniform(key, count.shape) * count).astype(jnp.int32)
    k = jnp.minimum(k, jnp.maximum(count - 1, 0))
    rank = jnp.cumsum(avail, axis=-1) - 1
    return jnp.argmax(avail & (rank == k[..., None]), axis=-1).astype(jnp.int32)


def env_rollout(env: Any, num_envs: int, steps: int, api: str, avail: Any = None) -> tuple[Any, Any]:
    """``reset(key) -> states`` and ``rollout(states, key) -> (states, reward sum)``, un-jitted:
    ``steps`` steps of ``num_envs`` copies with random available actions, through the array core
    (``api="array"``, what the trainer's rollout calls) or JaxMARL's auto-resetting dict API.
    ``avail(state) -> bool [N, A]`` defaults to the array core's mask.

    The sum also depends (with weight 1e-30) on every observation, state and mask the step
    returns: a learner reads them every step, and a rollout that only summed rewards would let
    XLA drop their computation as dead code and time a cheaper env than the trainer runs."""
    import jax
    import jax.numpy as jnp

    agents = list(env.agents)
    avail = env._avail if avail is None else avail

    def used(*trees: Any) -> Any:
        return 1e-30 * sum(jnp.sum(x.astype(jnp.float32)) for t in trees for x in jax.tree.leaves(t))

    def reset(key):
        _, states = jax.vmap(env.reset)(jax.random.split(key, num_envs))
        return states

    def one_step(carry, key):
        states, total = carry
        k_act, k_env = jax.random.split(key)
        actions = random_available_actions(k_act, jax.vmap(avail)(states))  # [E, N]
        keys = jax.random.split(k_env, num_envs)
        if api == "array":
            ts, states = jax.vmap(env.step_arrays)(keys, states, actions)
            return (states, total + jnp.sum(ts.reward) + used(ts.obs, ts.world_state, ts.avail)), None
        act = {a: actions[:, i] for i, a in enumerate(agents)}
        obs, states, rewards, _, _ = jax.vmap(env.step)(keys, states, act)
        return (states, total + jnp.sum(rewards[agents[0]]) + used(obs)), None

    def rollout(states, key):
        (states, total), _ = jax.lax.scan(one_step, (states, jnp.zeros(())), jax.random.split(key, steps))
        return states, total

    return reset, rollout


def _aot(fn: Any, *args: Any) -> tuple[Any, float]:
    """Lower and compile a jitted function for ``args``: (compiled, seconds). Nothing is run."""
    t0 = time.perf_counter()
    compiled = fn.lower(*args).compile()
    return compiled, time.perf_counter() - t0


def _timed(fn: Any, *args: Any) -> tuple[Any, float]:
    import jax

    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - t0


def measure_env(preset: str, num_envs: Sequence[int], steps: int, repeats: int, apis: Sequence[str],
                seed: int = 0) -> list[dict[str, Any]]:
    """One row per (api, num_envs): env steps/s (median and best of ``repeats`` calls after a
    warm-up call), compile seconds, bytes of one env state."""
    import jax

    import envs

    env = envs.make(preset)
    _, one = env.reset(jax.random.PRNGKey(0))
    state_bytes = int(sum(getattr(x, "nbytes", 0) for x in jax.tree.leaves(one)))
    rows = []
    for api in apis:
        for n in num_envs:
            base = memory_now()
            reset, rollout = env_rollout(env, n, steps, api)
            k_reset, k_run = jax.random.split(jax.random.PRNGKey(seed))
            states = jax.block_until_ready(jax.jit(reset)(k_reset))
            compiled, compile_s = _aot(jax.jit(rollout), states, k_run)
            _, first_s = _timed(compiled, states, k_run)
            times = [_timed(compiled, states, k_run)[1] for _ in range(repeats)]
            total = n * steps
            rows.append({
                "part": "env", "preset": preset, "api": api, "num_envs": n, "steps": steps,
                "env_steps_per_s": total / statistics.median(times), "env_steps_per_s_best": total / min(times),
                "compile_s": compile_s, "first_run_s": first_s, "times_s": times, "state_bytes": state_bytes,
                "rss_base_mib": base["rss_peak_mib"], **memory_now(),
            })
    return rows


def _train_config(env: str, method: str, seeds: int, chunk_iterations: int, overrides: Sequence[str]) -> Any:
    from cromac_jax import config

    return config.load(None, [f"env.name={env}", f"train.method={method}", f"train.num_seeds={seeds}",
                              "cromac.robust_start=0", f"train.chunk_iterations={chunk_iterations}", *overrides])


def measure_train(env: str, method: str, seeds: int, chunk_iterations: int, chunks: int, updates: int = 0,
                  repeats: int = 3, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Training throughput of one configured run (all its seeds vmapped, laid over this process's
    devices): compile time, warm-up, then ``chunks`` timed chunks; with ``updates > 0`` also the
    ms of one learner update alone (seed 0's warmed state, ``lax.scan`` of ``updates`` updates)."""
    import jax
    import numpy as np

    from cromac_jax import runner

    cfg = _train_config(env, method, seeds, chunk_iterations, overrides)
    base = memory_now()
    sr = runner.SeedRunner(cfg)
    trainer, t = sr.trainer, cfg.train
    state, init_s = _timed(sr.init_state)
    # Compile ahead of time, so compilation is timed alone (SeedRunner keeps its jitted chunk as _chunk).
    chunk_fn, compile_s = _aot(sr._chunk, state)
    per_chunk_episodes = trainer.chunk_iterations * t.num_envs
    warm = max(1, math.ceil(max(t.learning_starts, t.batch_size) / per_chunk_episodes))
    warm_s = []
    for _ in range(warm):  # fill the replay buffer until every iteration runs its updates
        (state, _), dt = _timed(chunk_fn, state)
        warm_s.append(dt)
    steps0, upd0 = np.asarray(state.t_env).sum(), np.asarray(state.updates).sum()
    times = []
    for _ in range(chunks):
        (state, _), dt = _timed(chunk_fn, state)
        times.append(dt)
    run_s = sum(times)
    steps = float(np.asarray(state.t_env).sum() - steps0)
    n_updates = float(np.asarray(state.updates).sum() - upd0)
    row: dict[str, Any] = {
        "part": "train", "env": env, "method": method, "mixer": cfg.model.mixer, "seeds": seeds,
        "devices": len(sr.sharding.device_set) if sr.sharding is not None else 1,
        "num_envs": t.num_envs, "chunk_iterations": trainer.chunk_iterations, "chunks": chunks,
        "robust_on": bool(np.all(np.asarray(trainer.robust_on(state.t_env)))),
        "init_s": init_s, "compile_s": compile_s, "first_chunk_s": warm_s[0], "warm_chunks": warm,
        "chunk_times_s": times, "run_s": run_s, "env_steps": steps, "updates": n_updates,
        "env_steps_per_s": steps / run_s, "updates_per_s": n_updates / run_s,
        "env_steps_per_s_per_seed": steps / run_s / seeds,
        "buffer_bytes_per_seed": int(sum(x.nbytes for x in jax.tree.leaves(state.buffer)) // seeds),
        "overrides": list(overrides),
    }
    if updates > 0:
        row.update(_update_cost(trainer, jax.tree.map(lambda x: x[0], state), updates, repeats))
    row.update(rss_base_mib=base["rss_peak_mib"], **memory_now())
    return row


def _update_cost(trainer: Any, state: Any, updates: int, repeats: int) -> dict[str, Any]:
    import jax

    keys = jax.random.split(jax.random.PRNGKey(1), updates)
    scan = jax.jit(lambda s, ks: jax.lax.scan(trainer.update, s, ks))
    compiled, compile_s = _aot(scan, state, keys)
    _timed(compiled, state, keys)
    times = [_timed(compiled, state, keys)[1] for _ in range(max(1, repeats))]
    return {"ms_per_update": statistics.median(times) * 1e3 / updates, "ms_per_update_best": min(times) * 1e3 / updates,
            "update_compile_s": compile_s, "updates_per_call": updates,
            "update_robust_on": bool(trainer.robust_on(state.t_env))}


# ============================================================================== isolation
def run_spec(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Run one measurement spec in this process: ``{"kind": "env", ...}`` or ``{"kind": "train", ...}``."""
    if spec["kind"] == "env":
        return measure_env(spec["preset"], spec["num_envs"], spec["steps"], spec["repeats"], spec["apis"])
    if spec["kind"] == "train":
        row = measure_train(spec["env"], spec["method"], spec["seeds"], spec["chunk_iterations"], spec["chunks"],
                            spec.get("updates", 0), spec.get("repeats", 3), spec.get("overrides", ()))
        return [{**row, "part": spec.get("part", "train")}]
    raise ValueError(f"unknown measurement kind {spec['kind']!r}")


def _worker(spec_json: str) -> int:
    """``python -m cromac_jax.bench --worker SPEC``: one measurement, printed as one JSON line."""
    spec = json.loads(spec_json)
    try:
        rows = run_spec(spec)
        for r in rows:
            r["peak_scope"] = "measurement"
    except Exception as e:  # noqa: BLE001 - reported to the parent, which goes on with the next one
        rows = [{"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}]
    print(RESULT_TAG + json.dumps(rows), flush=True)
    return 0


def _child_env(devices: int | None, backend: str) -> tuple[dict[str, str] | None, str | None]:
    """The environment of a worker that must see ``devices`` devices (None: this machine's), or a
    reason why it cannot."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    if _CHILD_PREALLOCATE is None:
        env.pop("XLA_PYTHON_CLIENT_PREALLOCATE", None)
    elif _CHILD_PREALLOCATE is not _UNSET:
        env["XLA_PYTHON_CLIENT_PREALLOCATE"] = _CHILD_PREALLOCATE
    if devices is None:
        return env, None
    if backend == "cpu":
        flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
        env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"])
        env["JAX_PLATFORMS"] = "cpu"
        return env, None
    import jax

    if devices > jax.device_count():
        return None, f"only {jax.device_count()} {backend} device(s) here"
    if backend == "gpu":
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(devices))
        return env, None
    if devices == jax.device_count():
        return env, None
    return None, f"cannot restrict {backend} to {devices} device(s) from here"


def run_isolated(spec: dict[str, Any], devices: int | None, backend: str, timeout: float) -> list[dict[str, Any]]:
    """Run ``spec`` in a fresh Python process (cold compile caches, its own memory peak)."""
    env, why = _child_env(devices, backend)
    if env is None:
        return [{"skipped": why}]
    cmd = [sys.executable, "-m", "cromac_jax.bench", "--worker", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return [{"error": f"timed out after {timeout:g}s"}]
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return [{"error": f"worker exited with {proc.returncode}: {' | '.join(tail)[-500:]}"}]


_UNSET = object()
_CHILD_PREALLOCATE: Any = _UNSET  # XLA_PYTHON_CLIENT_PREALLOCATE as the user had it, for the workers


def prepare_parent() -> None:
    """Call before anything initialises a jax backend in a process that runs ``cromac bench``: the
    parent only orchestrates its measuring subprocesses, so it must not reserve most of an
    accelerator's memory (XLA's default); the workers get the user's setting back."""
    global _CHILD_PREALLOCATE
    if _CHILD_PREALLOCATE is _UNSET:
        _CHILD_PREALLOCATE = os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE")
        os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"


# ============================================================================== the plan
def build_plan(s: dict[str, Any], default_devices: int) -> list[dict[str, Any]]:
    """The measurement specs of the chosen parts, each with a ``key``; a training configuration
    that two parts share (e.g. the 1-seed run of ``train`` and of ``seeds``) is measured once."""
    plan: list[dict[str, Any]] = []
    seen: dict[tuple, dict[str, Any]] = {}

    def train(part: str, env: str, method: str, seeds: int, devices: int | None, updates: int) -> None:
        if devices == default_devices:
            devices = None  # this machine's own device count: a plain worker
        key = ("train", env, method, seeds, devices)
        if key in seen:
            seen[key]["parts"].append(part)
            seen[key]["updates"] = max(seen[key]["updates"], updates)
            return
        spec = {"kind": "train", "parts": [part], "env": env, "method": method, "seeds": seeds, "devices": devices,
                "chunk_iterations": s["chunk_iterations"], "chunks": s["chunks"], "updates": updates,
                "repeats": s["repeats"], "overrides": list(s["overrides"])}
        seen[key] = spec
        plan.append(spec)

    if "env" in s["parts"]:
        for preset in s["presets"]:
            plan.append({"kind": "env", "parts": ["env"], "preset": preset, "num_envs": s["num_envs"],
                         "steps": s["env_steps"], "repeats": s["repeats"], "apis": s["apis"], "devices": None})
    if "train" in s["parts"]:
        for env in s["envs"]:
            for method in s["methods"]:
                train("train", env, method, 1, None, s["updates"])
    if "seeds" in s["parts"]:
        for method in s["scaling_methods"]:
            for n in s["seed_counts"]:
                train("seeds", s["scaling_env"], method, n, None, 0)
    if "devices" in s["parts"]:
        for d in s["device_counts"]:
            train("devices", s["scaling_env"], s["device_method"], s["device_seeds"], d, 0)
    return plan


def _describe(spec: dict[str, Any]) -> str:
    if spec["kind"] == "env":
        return f"[env] {spec['preset']} ({'/'.join(spec['apis'])}, envs {','.join(map(str, spec['num_envs']))})"
    dev = "" if spec["devices"] is None else f", {spec['devices']} device(s)"
    return f"[{'/'.join(spec['parts'])}] {spec['env']} {spec['method']}, {spec['seeds']} seed(s){dev}"


def _short(row: dict[str, Any]) -> str:
    mem = f"peak RSS {row['rss_peak_mib']:,.0f} MiB" + (
        f", device {row['device_peak_mib']:,.0f} MiB" if row.get("device_peak_mib") is not None else "")
    if row["part"] == "env":
        return (f"{row['api']} x{row['num_envs']}: {fmt_rate(row['env_steps_per_s'])} env steps/s "
                f"(compile {row['compile_s']:.1f}s; {mem})")
    upd = f", {row['ms_per_update']:.2f} ms/update" if "ms_per_update" in row else ""
    return (f"{row['env_steps_per_s']:,.0f} env steps/s, {row['updates_per_s']:,.0f} updates/s{upd} "
            f"(compile {row['compile_s']:.1f}s; {mem})")


# ============================================================================== ratios
def env_reference(preset: str) -> float | None:
    return REFERENCE["env_steps_per_s"].get(preset.split("_", 1)[0])


def add_ratios(row: dict[str, Any]) -> None:
    """Attach the official reference of each figure of ``row`` and our ratio to it: throughputs
    ours / official (> 1: we are faster), per-update cost official ms / our ms (> 1: faster)."""
    if row.get("part") == "env":
        ref = env_reference(row["preset"])
        row["reference_env_steps_per_s"] = ref
        row["ratio_env_steps_per_s"] = row["env_steps_per_s"] / ref if ref else None
        return
    ref = REFERENCE["train_env_steps_per_s"].get(row["env"], {}).get(row["method"])
    row["reference_env_steps_per_s"] = ref
    row["ratio_env_steps_per_s"] = row["env_steps_per_s"] / ref if ref else None
    ref_ms = REFERENCE["ms_per_update"].get(row["env"], {}).get(row["method"])
    row["reference_ms_per_update"] = ref_ms
    row["ratio_ms_per_update"] = ref_ms / row["ms_per_update"] if ref_ms and row.get("ms_per_update") else None


def comparisons(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per official figure that a measured row can be compared with (the largest
    ``num_envs`` per env preset and API; every training row with a reference)."""
    out = []
    env_rows: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        if r.get("part") == "env" and r.get("reference_env_steps_per_s"):
            k = (r["preset"], r["api"])
            if k not in env_rows or r["num_envs"] > env_rows[k]["num_envs"]:
                env_rows[k] = r
    for r in env_rows.values():
        out.append({"figure": f"{r['preset']} env steps/s ({r['api']} API, {r['num_envs']} envs)", "unit": "env steps/s",
                    "ours": r["env_steps_per_s"], "reference": r["reference_env_steps_per_s"],
                    "ratio": r["ratio_env_steps_per_s"], "better": "higher"})
    for r in rows:
        if r.get("part") == "env" or "error" in r or "skipped" in r:
            continue
        where = f"{r['env']} {r['method']}, {r['seeds']} seed(s)" + (f" on {r['devices']} devices" if r["devices"] > 1 else "")
        if r.get("reference_env_steps_per_s"):
            out.append({"figure": f"training env steps/s, {where}", "unit": "env steps/s", "ours": r["env_steps_per_s"],
                        "reference": r["reference_env_steps_per_s"], "ratio": r["ratio_env_steps_per_s"], "better": "higher"})
        if r.get("ratio_ms_per_update"):
            out.append({"figure": f"ms per learner update (batch 32), {r['env']} {r['method']}", "unit": "ms",
                        "ours": r["ms_per_update"], "reference": r["reference_ms_per_update"],
                        "ratio": r["ratio_ms_per_update"], "better": "lower"})
    return out


def add_seed_costs(rows: list[dict[str, Any]]) -> None:
    """``cost_vs_1_seed``: wall time of S seeds relative to the fewest-seed run of the same env and
    method (same devices), for the same env steps per seed (S means S x the work)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("part") != "env" and "env_steps_per_s" in r:
            groups.setdefault((r["env"], r["method"], r["devices"]), []).append(r)
    for group in groups.values():
        base = min(group, key=lambda r: r["seeds"])
        for r in group:
            r["cost_vs_fewest_seeds"] = (base["env_steps_per_s_per_seed"] / r["env_steps_per_s_per_seed"])
            r["fewest_seeds"] = base["seeds"]


# ============================================================================== report
def _ratio(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}x" if x < 10 else f"{x:.0f}x"


def _mem(r: dict[str, Any]) -> str:
    text = f"{r['rss_peak_mib']:,.0f}"
    if r.get("peak_scope") == "cumulative":
        text += "*"
    if r.get("device_peak_mib") is not None:
        text += f" / {r['device_peak_mib']:,.0f}"
    return text


def _train_rows(rows: list[dict[str, Any]], part: str) -> list[dict[str, Any]]:
    return [r for r in rows if part in r.get("parts", [r.get("part")]) and "env_steps_per_s" in r and r.get("part") != "env"]


def render_markdown(payload: dict[str, Any]) -> str:
    hw, rows = payload["hardware"], payload["results"]
    s = payload["settings"]
    out = [f"# cromac bench: {hw['tag']}", ""]
    out.append(f"Measured {hw['date']} on {hw['cpu_model']}, {hw['cpu_cores']} usable cores ({hw['cpu_count_os']} on the OS), "
               f"{hw['machine']}; Python {hw['python']}, jax {hw['jax_version']} / jaxlib {hw['jaxlib_version']}, backend "
               f"`{hw['jax_backend']}`, device kind `{hw['device_kind']}` x{hw['device_count']}"
               + (f" (XLA allocator limit {hw['device_memory_gib']} GiB each)" if hw.get("device_memory_gib") else "") + ".")
    out.append(f"Load average (1/5/15 min) at the start {payload['load_average_start']}, at the end "
               f"{payload['load_average_end']}; XLA_FLAGS `{hw['xla_flags'] or '(none)'}`; wall time {payload['wall_s']:.0f} s"
               + (" (`--quick`)" if s.get("quick") else "") + ".")
    for w in payload["warnings"]:
        out.append(f"\n**Note:** {w}")
    out += ["", f"> {REFERENCE_NOTE}", ""]
    comp = payload["comparisons"]
    if comp:
        out += ["## Versus the official code", "",
                markdown_table(["figure", "ours", "official (2-core CPU)", "ratio"],
                               [[c["figure"], f"{c['ours']:,.2f}" if c["unit"] == "ms" else f"{c['ours']:,.0f}",
                                 f"{c['reference']:,.1f}" if c["unit"] == "ms" else f"{c['reference']:,.0f}",
                                 _ratio(c["ratio"]) + (" faster" if c["better"] == "lower" else "")] for c in comp]),
                "", "ratio: ours / official for throughputs, official / ours for ms per update (> 1: faster). Rows of several "
                "seeds sum the env steps over seeds and are set against the official single-seed rate.", ""]
    env_rows = [r for r in rows if r.get("part") == "env"]
    if env_rows:
        out += ["## Environments", "",
                f"`jit(lax.scan(vmap(step)))` over {s['env_steps']} steps with random available actions; steps/s from the "
                f"median of {s['repeats']} calls (best in brackets); compile = `lower().compile()`.", "",
                markdown_table(["preset", "API", "envs", "env steps/s", "compile s", "state bytes", "peak RSS MiB",
                                "vs official numpy"],
                               [[r["preset"], r["api"], r["num_envs"],
                                 f"{fmt_rate(r['env_steps_per_s'])} ({fmt_rate(r['env_steps_per_s_best'])})",
                                 f"{r['compile_s']:.2f}", r["state_bytes"], _mem(r), _ratio(r["ratio_env_steps_per_s"])]
                                for r in env_rows]), ""]
    train_headers = ["env", "method", "seeds", "devices", "env steps/s", "per seed", "updates/s", "ms/update",
                     "compile s", "first chunk s", "peak RSS MiB", "vs official steps/s", "vs official ms/update"]

    def train_line(r: dict[str, Any]) -> list[Any]:
        return [r["env"], r["method"], r["seeds"], r["devices"], f"{r['env_steps_per_s']:,.0f}",
                f"{r['env_steps_per_s_per_seed']:,.0f}", f"{r['updates_per_s']:,.0f}",
                f"{r['ms_per_update']:.2f}" if "ms_per_update" in r else "-", f"{r['compile_s']:.1f}",
                f"{r['first_chunk_s']:.1f}", _mem(r), _ratio(r.get("ratio_env_steps_per_s")),
                _ratio(r.get("ratio_ms_per_update"))]

    trained = _train_rows(rows, "train")
    if trained:
        out += ["## Training", "",
                f"The whole trainer (`SeedRunner.chunk`), {trained[0]['num_envs']} envs per seed, one learner update per "
                f"collected episode (unless overridden), "
                f"CroMAC's robust loss on; {s['chunks']} timed chunks of {s['chunk_iterations']} iterations after the buffer "
                f"was warmed. ms/update: one learner update alone (batch 32 episodes), median of {s['repeats']} jitted scans "
                f"of {s['updates']} updates.", "", markdown_table(train_headers, [train_line(r) for r in trained]), ""]
    scaled = _train_rows(rows, "seeds")
    if scaled:
        out += ["## Seed scaling", "",
                "Seeds vmapped in one program. cost vs fewest: wall time of S seeds / wall time of the fewest-seed run, for "
                "the same env steps per seed (S means S x the work; S x cost = no gain from batching).", "",
                markdown_table(["env", "method", "seeds", "env steps/s (all seeds)", "per seed", "cost vs fewest",
                                "compile s", "peak RSS MiB", "vs official (1 seed)"],
                               [[r["env"], r["method"], r["seeds"], f"{r['env_steps_per_s']:,.0f}",
                                 f"{r['env_steps_per_s_per_seed']:,.0f}", f"{r['cost_vs_fewest_seeds']:.2f}x",
                                 f"{r['compile_s']:.1f}", _mem(r), _ratio(r.get("ratio_env_steps_per_s"))] for r in scaled]), ""]
    dev = [r for r in rows if "devices" in r.get("parts", [])]
    if dev:
        base = next((r for r in dev if "env_steps_per_s" in r and r["devices"] == 1), None)
        kind = "forced host devices splitting the same cores" if hw["jax_backend"] == "cpu" else f"{hw['device_kind']} devices"
        lines = []
        for r in dev:
            if "env_steps_per_s" not in r:
                lines.append([r.get("requested_devices", "?"), "-", "-", "-", "-", "-", r.get("skipped") or r.get("error")])
                continue
            lines.append([r["devices"], r["seeds"], f"{r['env_steps_per_s']:,.0f}",
                          f"{r['env_steps_per_s'] / base['env_steps_per_s']:.2f}x" if base else "n/a",
                          f"{r['compile_s']:.1f}", _mem(r), ""])
        out += ["## Device scaling", "", f"{s['device_method']} on {s['scaling_env']}, seeds laid over the devices "
                f"(`runner.seed_sharding`); {kind}.", "",
                markdown_table(["devices", "seeds", "env steps/s", "vs 1 device", "compile s", "peak RSS MiB", "note"],
                               lines), ""]
    bad = [r for r in rows if "error" in r or ("skipped" in r and "devices" not in r.get("parts", []))]
    if bad:
        out += ["## Not measured", ""] + [f"- {r.get('what', '?')}: {r.get('error') or r.get('skipped')}" for r in bad] + [""]
    out += ["## How to read this", "",
            "- compile s: tracing + XLA compilation of the jitted program (`jit(...).lower(...).compile()`), nothing run; "
            "first chunk s: the first execution, which also warms the replay buffer.",
            "- peak RSS MiB: the measuring process's maximum resident set (`getrusage`), which includes the Python, "
            "jax and XLA runtime (~" + (f"{min(r['rss_base_mib'] for r in rows if 'rss_base_mib' in r):,.0f}"
                                         if any("rss_base_mib" in r for r in rows) else "?")
            + " MiB before any measurement); after a `/`, the accelerator's peak bytes in use. "
            + ("Each measurement ran in its own process, so each peak is that measurement's."
               if s.get("isolate") else "*: measured in one process, so a peak is the process's peak so far (cumulative)."),
            f"- Reproduce: `{payload['command']}`.", ""]
    return "\n".join(out)


def _warnings(hw: dict[str, Any], load_start: list[float] | None, load_end: list[float] | None,
              settings: dict[str, Any]) -> list[str]:
    out = []
    if "optimization_level" in hw["xla_flags"] or "backend_optimization_level" in hw["xla_flags"]:
        out.append("XLA_FLAGS changes XLA's optimisation level: these are not the default programs' speeds.")
    loads = [x for x in (load_start, load_end) if x]
    if loads and max(x[0] for x in loads) > 0.5 * hw["cpu_cores"]:
        out.append(f"the 1-minute load average reached {max(x[0] for x in loads)} on {hw['cpu_cores']} cores: other "
                   "processes shared the CPU, so the figures are pessimistic.")
    if settings["overrides"]:
        out.append(f"training configs were changed with {' '.join(settings['overrides'])}: the training figures are "
                   "not the paper's configurations and their ratios to the official code do not compare like with like.")
    if hw["jax_backend"] != "cpu" and settings["isolate"] and os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE") != "false":
        out.append("this process reserved accelerator memory before its measuring subprocesses ran (call "
                   "cromac_jax.bench.prepare_parent() before jax starts): they had less memory than the device has.")
    if hw["jax_backend"] != "cpu" or hw["cpu_cores"] != 2:
        out.append("this machine is not a 2-core CPU, the machine of the official reference numbers: the ratios below "
                   "mix the code's speed with the machine's.")
    return out


# ============================================================================== running it
#: The longest ``--timeout``: ``subprocess.run`` overflows its wait beyond about 2.1e6 s.
MAX_TIMEOUT_S = 2_000_000.0


def resolve_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Flags over ``QUICK`` (with ``--quick``) or ``FULL``; validated."""
    import envs

    base = QUICK if args.quick else FULL
    s = {k: (getattr(args, k) if getattr(args, k, None) is not None else v) for k, v in base.items()}
    s["presets"] = list(s["presets"] or envs.preset_names())
    s["parts"] = list(args.parts or PARTS)
    s["overrides"] = list(args.set or [])
    s["quick"] = bool(args.quick)
    s["isolate"] = bool(args.isolate)
    known = envs.preset_names()
    for name in s["presets"] + s["envs"] + [s["scaling_env"]]:
        if name not in known:
            raise SystemExit(f"cromac bench: error: unknown environment {name!r}; registered: {', '.join(known)}")
    from cromac_jax.config import METHODS

    for m in s["methods"] + s["scaling_methods"] + [s["device_method"]]:
        if m not in METHODS:
            raise SystemExit(f"cromac bench: error: unknown method {m!r}; choose from {', '.join(METHODS)}")
    counts = s["num_envs"] + s["seed_counts"] + s["device_counts"]
    sizes = [s["env_steps"], s["repeats"], s["chunk_iterations"], s["chunks"], s["device_seeds"]]
    if min(counts + sizes) < 1 or s["updates"] < 0:
        raise SystemExit("cromac bench: error: counts, steps, repeats, chunks and seeds must be >= 1 (--updates >= 0)")
    from cromac_jax.config import ConfigError, check_output_dir, load

    try:  # before any measurement: a typo would otherwise fail every training row, after minutes
        load(None, s["overrides"])
        if getattr(args, "out", None) is not None:
            check_output_dir(Path(args.out).parent, "--out")
    except ConfigError as e:
        raise SystemExit(f"cromac bench: error: {e}") from None
    timeout = getattr(args, "timeout", 1800.0)
    if not 0 < timeout <= MAX_TIMEOUT_S:  # also refuses nan; subprocess cannot wait longer (or inf)
        raise SystemExit(f"cromac bench: error: --timeout {timeout} is invalid: seconds per isolated measurement, "
                         f"in (0, {MAX_TIMEOUT_S:.0f}]")
    return s


def default_out(tag: str) -> Path:
    """``benchmarks/results/bench_<tag>`` in a source checkout, else ``./bench_<tag>``."""
    results = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    return (results if results.parent.is_dir() else Path.cwd()) / f"bench_{tag}"


def run_bench(s: dict[str, Any], out: Path | None = None, command: str = "cromac bench",
              timeout: float = 1800.0, log: Any = "stdout") -> dict[str, Any]:
    """Measure everything ``s`` asks for, write ``<out>.json`` and ``<out>.md``, return the payload."""
    import jax

    t_start = time.perf_counter()
    hw = hardware_info()
    backend = hw["jax_backend"]
    load_start = load_average()
    plan = build_plan(s, jax.device_count())
    _log(log, f"# cromac bench\n\n{describe_hardware(hw)}; load average {load_start}\n"
              f"{len(plan)} measurement(s){', each in its own process' if s['isolate'] else ''}:")
    rows: list[dict[str, Any]] = []
    for i, spec in enumerate(plan, 1):
        what = _describe(spec)
        _log(log, f"[{i}/{len(plan)}] {what} ...")
        t0 = time.perf_counter()
        worker = {k: v for k, v in spec.items() if k not in ("parts", "devices")}
        if spec["devices"] is not None or s["isolate"]:
            got = run_isolated(worker, spec["devices"], backend, timeout)
        else:
            try:
                got = run_spec(worker)
                for r in got:
                    r["peak_scope"] = "cumulative"
            except Exception as e:  # noqa: BLE001 - one failed measurement does not stop the others
                got = [{"error": f"{type(e).__name__}: {e}"}]
        for r in got:
            r.update(parts=list(spec["parts"]), what=what, wall_s=time.perf_counter() - t0,
                     requested_devices=spec["devices"] or 1, load_average=load_average())
            if "error" in r or "skipped" in r:
                _log(log, f"      {'skipped' if 'skipped' in r else 'FAILED'}: {r.get('skipped') or r.get('error')}")
                continue
            add_ratios(r)
            _log(log, f"      {_short(r)}")
        rows.extend(got)
    add_seed_costs(rows)
    load_end = load_average()
    payload = {
        "benchmark": "cromac_bench",
        "hardware": hw,
        "load_average_start": load_start,
        "load_average_end": load_end,
        "settings": s,
        "command": command,
        "reference": {**REFERENCE, "train_env_steps_per_s_note": "official code, one seed",
                      "note": REFERENCE_NOTE},
        "warnings": _warnings(hw, load_start, load_end, s),
        "results": rows,
        "comparisons": comparisons(rows),
        "wall_s": time.perf_counter() - t_start,
    }
    md = render_markdown(payload)
    out = Path(out) if out is not None else default_out(hw["tag"])
    if out.suffix in (".json", ".md"):
        out = out.with_suffix("")
    out.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out.parent / (out.name + ".json"), out.parent / (out.name + ".md")
    json_path.write_text(json.dumps(json_safe(payload), indent=1) + "\n", encoding="utf-8")
    md_path.write_text(md, encoding="utf-8")
    _log(log, "\n" + md)
    _log(log, f"wrote {json_path} and {md_path.name}")
    return payload


def _log(out: Any, line: str) -> None:
    out = sys.stdout if out == "stdout" else out  # resolved per call (tests replace sys.stdout)
    if out is not None:
        print(line, file=out, flush=True)


# ============================================================================== command line
def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true",
                   help="minute-scale smoke run: 3 env presets at 1024 envs, hallway training, seeds 1 and 4, devices 1 and 2")
    p.add_argument("--parts", nargs="+", choices=PARTS, help="what to measure (default: all)")
    p.add_argument("--out", type=Path, help="report path stem: writes STEM.json and STEM.md "
                   "(default: benchmarks/results/bench_<hardware>)")
    g = p.add_argument_group("env part")
    g.add_argument("--presets", nargs="+", help="env presets (default: every registered one; --quick: hallway, LBF 3p, TJ slow)")
    g.add_argument("--num-envs", dest="num_envs", nargs="+", type=int, help="parallel envs (default 1 64 1024 8192)")
    g.add_argument("--env-steps", dest="env_steps", type=int, help="steps per env in one timed call (default 100)")
    g.add_argument("--apis", nargs="+", choices=APIS, help="array: the trainer's step_arrays; jaxmarl: env.step (default both)")
    g = p.add_argument_group("training parts")
    g.add_argument("--envs", nargs="+", help=f"train part envs (default {' '.join(DEFAULT_TRAIN_ENVS)})")
    g.add_argument("--methods", nargs="+", help="train part methods (default cromac qmix)")
    g.add_argument("--chunk-iterations", dest="chunk_iterations", type=int, help="iterations per chunk (default 20)")
    g.add_argument("--chunks", type=int, help="timed chunks (default 3)")
    g.add_argument("--updates", type=int, help="updates per scan for the ms/update figure; 0 skips it (default 50)")
    g.add_argument("--repeats", type=int, help="timed calls per env rollout and update scan (default 3)")
    g.add_argument("--seed-counts", dest="seed_counts", nargs="+", type=int, help="seeds part (default 1 2 4 8 16)")
    g.add_argument("--scaling-env", dest="scaling_env", help="env of the seeds and devices parts (default hallway_4x5x6)")
    g.add_argument("--scaling-methods", dest="scaling_methods", nargs="+", help="seeds part methods (default cromac qmix)")
    g.add_argument("--device-counts", dest="device_counts", nargs="+", type=int, help="devices part (default 1 2)")
    g.add_argument("--device-seeds", dest="device_seeds", type=int, help="seeds in the devices part (default 8)")
    g.add_argument("--device-method", dest="device_method", help="method of the devices part (default cromac)")
    g.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="config override for every training measurement, e.g. --set train.num_envs=16 (repeatable)")
    p.add_argument("--no-isolate", dest="isolate", action="store_false",
                   help="measure in this process (faster; peak memory becomes cumulative, compile caches warm)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per isolated measurement (default 1800)")


def add_bench_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``cromac bench ...`` to a ``parser.add_subparsers()`` object."""
    p = subparsers.add_parser(
        "bench",
        help="measure env and training throughput, seed/device scaling, compile time and memory on this machine",
        description="Measure env steps/s per preset, training env steps/s and updates/s per method, seed and device "
                    "scaling, compile time and peak memory; write a JSON and a Markdown report with the ratio of each "
                    "figure to the official PyTorch code's numbers on a 2-core CPU.",
    )
    _add_arguments(p)
    p.set_defaults(func=_cmd_bench)
    return p


def _cmd_bench(args: argparse.Namespace) -> int:
    s = resolve_settings(args)
    command = shlex.join(["cromac", *sys.argv[1:]]) if sys.argv[1:2] == ["bench"] else "cromac bench"
    run_bench(s, args.out, command=command, timeout=args.timeout)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        return _worker(argv[1])
    prepare_parent()
    p = argparse.ArgumentParser(prog="python -m cromac_jax.bench", description=__doc__.split("\n\n")[0])
    _add_arguments(p)
    args = p.parse_args(argv)
    s = resolve_settings(args)
    run_bench(s, args.out, command=shlex.join(["python", "-m", "cromac_jax.bench", *argv]), timeout=args.timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
