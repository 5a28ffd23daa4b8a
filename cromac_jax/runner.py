"""The thin Python loop around the compiled chunks: progress, metrics, tests, checkpoints.

Everything expensive happens inside ``jit(seeds_chunk)`` (over several devices,
``device_parallel``: each device its own seeds); between chunks this loop pulls
a few scalars per seed to the host, writes one JSON line per chunk, runs the periodic test
episodes (clean and under FGSM at the config's eps), saves checkpoints, and stops with one clear
line if a loss turns NaN — after the last good checkpoint, never overwriting it.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, TextIO

import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec
import numpy as np

from cromac_jax import attacks, checkpoint, stopping, tensorboard
from cromac_jax.checkpoint import read_config, write_config
from cromac_jax.config import Config, ConfigError, differing_keys
from cromac_jax.distributed import DistributedError
from cromac_jax.train import Trainer, make_train, seed_keys


class TrainingError(RuntimeError):
    """Training cannot continue (e.g. non-finite loss); saved work is kept."""


@dataclass
class RunResult:
    run_dir: Path
    t_env: np.ndarray  # [S]
    last_test: dict[str, Any]
    chunks: int
    seconds: float


def default_run_dir(cfg: Config) -> Path:
    """``<train.run_dir>/<env>_<method>_<mixer>_<start time>``. In a multi-process run every process
    takes process 0's start time: they write one run dir (orbax saves each process's shards into
    it), and processes rarely start within the same second."""
    date, clock = (int(x) for x in time.strftime("%Y%m%d %H%M%S").split())
    if jax.process_count() > 1:
        date, clock = (int(x) for x in multihost_utils.broadcast_one_to_all(np.array([date, clock], np.int32)))
    stamp = f"{date:08d}-{clock:06d}"
    return Path(cfg.train.run_dir) / f"{cfg.env.name}_{cfg.train.method}_{cfg.model.mixer}_{stamp}"


def seed_sharding(num_seeds: int, devices: list | None = None) -> NamedSharding | None:
    """Lay the seed axis over the devices (a 1-D mesh, axis type Auto), or None on one device.

    Seeds never exchange gradients or data: each device runs its own (``device_parallel``). In one
    process, when the seed count does not divide evenly, the largest device count that divides it
    is used. Across processes (``cromac_jax.distributed``) every process must hold seeds, so a seed
    count that does not divide over all devices is refused rather than leaving a process idle.
    """
    devices = list(jax.devices() if devices is None else devices)
    if jax.process_count() > 1:
        if num_seeds % len(devices):
            raise ConfigError(
                f"train.num_seeds={num_seeds} does not divide over the {len(devices)} devices of this "
                f"{jax.process_count()}-process run; use a multiple of {len(devices)}"
            )
        n = len(devices)
    else:
        n = math.gcd(num_seeds, len(devices))
    if n <= 1:
        return None
    mesh = Mesh(np.array(devices[:n]), ("seeds",), axis_types=(AxisType.Auto,))
    return NamedSharding(mesh, PartitionSpec("seeds"))


def device_parallel(seeds_chunk: Callable, sharding: NamedSharding) -> Callable:
    """``seeds_chunk`` with each device running its own seeds (``shard_map``), jitted to return
    the state sharded and the metrics replicated. Inside, the seed vmap's named reductions (the
    batch trim's longest episode, the learner's readiness) cover the device's own seeds only, so
    devices, and the processes holding them, never wait on each other within a chunk; left to the
    partitioner, the same program would all-reduce across devices at every learner update."""
    spec = PartitionSpec(*sharding.spec)
    body = jax.shard_map(seeds_chunk, mesh=sharding.mesh, in_specs=spec, out_specs=(spec, spec), check_vma=False)
    replicated = NamedSharding(sharding.mesh, PartitionSpec())
    return jax.jit(body, donate_argnums=0, out_shardings=(sharding, replicated))


@jax.jit
def _take_seeds(state: Any, idx: jax.Array) -> Any:
    return jax.tree.map(lambda x: x[idx], state)


@partial(jax.jit, donate_argnums=0)
def _put_seeds(state: Any, sub: Any, idx: jax.Array) -> Any:
    return jax.tree.map(lambda x, y: x.at[idx].set(y), state, sub)


def to_host(tree: Any) -> Any:
    """Numpy copies of (possibly sharded, possibly multi-process) arrays: every process gets all seeds."""
    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree.map(one, tree)


class SeedRunner:
    """Holds the compiled functions of one configured run over all its seeds."""

    def __init__(self, cfg: Config, trainer: Trainer | None = None):
        self.cfg = cfg
        self.trainer = trainer or make_train(cfg)
        tr = self.trainer
        self.sharding = seed_sharding(cfg.train.num_seeds)
        # Metrics and test results come back replicated, so each process can read every seed
        # (a few scalars per seed and chunk: with checkpoints, all that crosses between devices).
        if self.sharding is None:
            state_out = {}
            self._chunk = jax.jit(tr.seeds_chunk, donate_argnums=0)
        else:
            state_out = {"out_shardings": self.sharding}
            tests_out = {"out_shardings": NamedSharding(self.sharding.mesh, PartitionSpec())}
            self._chunk = device_parallel(tr.seeds_chunk, self.sharding)
        # Seed keys are made inside the program: no host array has to be laid over processes.
        self._init = jax.jit(lambda: jax.vmap(tr.init)(seed_keys(cfg)), **state_out)
        n_test = cfg.train.test_nepisode
        eps = cfg.cromac.eps
        base_test_key = jax.random.PRNGKey(cfg.train.seed + 1_000_003)

        def tests(state, t):
            keys = jax.random.split(jax.random.fold_in(base_test_key, t), state.key.shape[0])

            def one(params, run, k):
                clean, _ = tr.test(params, run, k, n_test)
                out = {"test": clean}
                if tr.model.method.reads_messages:
                    attacked, _ = tr.test(params, run, k, n_test, attacks.fgsm, eps)
                    out["test_fgsm"] = attacked
                return out

            return jax.vmap(one)(state.params, state.env_run, keys)

        self._tests = jax.jit(tests, **({} if self.sharding is None else tests_out))
        self._device_chunks: dict[tuple[int, ...], Any] = {}  # chunks over a subset of the devices

    def init_state(self) -> Any:
        return self._init()

    def abstract_state(self) -> Any:
        return jax.eval_shape(self._init)

    def chunk(self, state: Any) -> tuple[Any, Any]:
        """One compiled chunk of every seed still under its budget.

        Seeds use their env steps at different rates (a seed whose episodes are short needs more
        iterations: in the hallway reproduction one seed was at 0.5M steps when another was at
        1.4M), and a vmapped program computes every seed in every iteration, so a seed that has
        used its budget would keep costing a full share of each chunk only for ``budgeted_iteration``
        to throw the result away. Such seeds are left out: on one device the chunk runs on the
        other seeds (compiled once per number of seeds left); with the seeds laid over several
        devices, on the devices that still hold a training seed (their shards are used in place).
        The left-out seeds' state is kept as it is and their metrics are NaN, except the counters.
        A multi-process run keeps the full program (its processes would have to agree on it)."""
        t = self.cfg.train
        if t.num_seeds > 1 and jax.process_count() == 1:
            active = np.asarray(state.t_env) < t.t_max
            if 0 < active.sum() < t.num_seeds:
                if self.sharding is None:
                    return self._chunk_of(state, np.flatnonzero(active))
                return self._chunk_on_devices(state, active)
        return self._chunk(state)

    def _chunk_of(self, state: Any, seeds: np.ndarray) -> tuple[Any, Any]:
        idx = jnp.asarray(seeds)
        sub, metrics = self._chunk(_take_seeds(state, idx))
        state = _put_seeds(state, sub, idx)
        return state, self._full_metrics(metrics, seeds, state)

    def _chunk_on_devices(self, state: Any, active: np.ndarray) -> tuple[Any, Any]:
        devices = list(self.sharding.mesh.devices.flat)
        per = self.cfg.train.num_seeds // len(devices)  # device i holds seeds [i*per, (i+1)*per)
        busy = [i for i in range(len(devices)) if active[i * per:(i + 1) * per].any()]
        if len(busy) == len(devices):
            return self._chunk(state)
        if tuple(busy) not in self._device_chunks:
            mesh = Mesh(np.array([devices[i] for i in busy]), ("seeds",), axis_types=(AxisType.Auto,))
            sub_sh = NamedSharding(mesh, PartitionSpec("seeds"))
            self._device_chunks[tuple(busy)] = (device_parallel(self.trainer.seeds_chunk, sub_sh), sub_sh)
        fn, sub_sh = self._device_chunks[tuple(busy)]

        def shards(x: jax.Array) -> dict[Any, jax.Array]:
            return {s.device: s.data for s in x.addressable_shards}

        # Every shard is taken out before the chunk runs: the chunk donates the busy devices'
        # buffers, which the full arrays share, so afterwards the full arrays count as deleted.
        leaves, treedef = jax.tree.flatten(state)
        parts = [shards(x) for x in leaves]
        sub = treedef.unflatten([jax.make_array_from_single_device_arrays(
            (len(busy) * per,) + x.shape[1:], sub_sh, [p[devices[i]] for i in busy]) for x, p in zip(leaves, parts, strict=True)])
        sub, metrics = fn(sub)
        state = treedef.unflatten([jax.make_array_from_single_device_arrays(
            x.shape, self.sharding, [new[devices[i]] if i in busy else p[devices[i]] for i in range(len(devices))])
            for x, p, new in zip(leaves, parts, (shards(y) for y in jax.tree.leaves(sub)), strict=True)])
        seeds = np.concatenate([np.arange(i * per, (i + 1) * per) for i in busy])
        return state, self._full_metrics(metrics, seeds, state)

    def _full_metrics(self, metrics: Any, seeds: np.ndarray, state: Any) -> Any:
        """[S, K] metrics from a chunk of the seeds ``seeds``: the others' counters, NaN elsewhere."""
        t_env = jnp.asarray(np.asarray(state.t_env))
        counters = {"t_env": t_env, "episodes": state.episodes, "updates": state.updates,
                    "epsilon": self.trainer.epsilon(t_env), "robust_on": self.trainer.robust_on(t_env)}
        full = {}
        for name, arr in metrics._asdict().items():
            arr = np.asarray(arr)
            if name in counters:
                out = np.repeat(np.asarray(counters[name]).astype(arr.dtype)[:, None], arr.shape[1], axis=1)
            else:
                out = np.full((self.cfg.train.num_seeds, arr.shape[1]), np.nan, dtype=np.float64)
            out[seeds] = arr
            full[name] = out
        return type(metrics)(**full)

    def tests(self, state: Any, t_env: int) -> dict[str, Any]:
        """Greedy test episodes of every seed, clean and under FGSM; keyed by the env step."""
        return self._tests(state, np.uint32(t_env))


def _summarise(metrics: Any, trained: np.ndarray | None = None) -> dict[str, list[float | None]]:
    """Per-seed means over the chunk's iterations (counters: last value). A seed that did not
    train in the chunk (``trained`` False: it had used its budget) has None (JSON null) for
    everything but counters, whether it was left out of the chunk or computed and thrown away
    (a multi-process run), so the records do not depend on how the seeds were laid out."""
    out = {}
    for name, arr in metrics._asdict().items():
        a = np.asarray(arr, dtype=np.float64)  # [S, K]
        if name in ("t_env", "episodes", "updates", "epsilon", "robust_on"):
            out[name] = a[:, -1].tolist()
        else:
            means = a.mean(axis=1)
            if trained is not None:
                means = np.where(np.asarray(trained, dtype=bool), means, np.nan)
            out[name] = [None if math.isnan(v) else v for v in means.tolist()]
    return out


def seed_mean(values: list[float | None]) -> float:
    """The mean over the seeds that have a value (seeds past their budget have None)."""
    a = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(a)) if np.any(np.isfinite(a)) else float("nan")


def _test_summary(tests: dict[str, Any]) -> dict[str, list[float]]:
    out = {}
    for prefix, m in tests.items():
        for field, arr in m._asdict().items():
            out[f"{prefix}_{field}"] = np.asarray(arr, dtype=np.float64).tolist()
    return out


def _fmt_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def train(
    cfg: Config,
    run_dir: str | Path | None = None,
    resume: bool = False,
    out: TextIO | None | str = "stdout",
    max_chunks: int | None = None,
    on_chunk: Callable[[dict], None] | None = None,
    restart: bool = False,
    new_budget: bool = False,
) -> RunResult:
    """Train every seed of ``cfg`` to ``t_max`` env steps, writing into ``run_dir``.

    ``resume=True`` continues from the latest checkpoint in ``run_dir`` (its config must match).
    ``new_budget=True`` lets ``cfg`` differ from it in ``train.t_max`` alone, above the env steps
    the checkpoint reached: training a finished run on, or giving an unfinished one a smaller budget.
    The seeds are independent of the budget (it only says when each stops), so a run extended from
    ``t_max`` A to B ends where a run trained to B from the start does.
    A fresh run refuses a ``run_dir`` that already holds a run (its checkpoints, or its config and
    metrics from an attempt stopped before the first checkpoint), so nothing is overwritten or
    mixed into another run's history; ``restart=True`` (sweeps, which own their run dirs) starts
    such a checkpoint-less attempt over, replacing its metrics.
    ``max_chunks`` stops early (used by tests to interrupt a run). In a multi-process run, a
    collective that fails because a peer died becomes one ``DistributedError`` line.
    """
    if jax.process_count() == 1:
        return _train(cfg, run_dir, resume, out, max_chunks, on_chunk, restart, new_budget)
    try:
        return _train(cfg, run_dir, resume, out, max_chunks, on_chunk, restart, new_budget)
    except jax.errors.JaxRuntimeError as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DistributedError(
            f"process {jax.process_index()} of {jax.process_count()} lost contact with the other processes "
            f"(did one die?); stopped, the last checkpoint in {str(run_dir)!r} is kept: {first[:200]}"
        ) from None


def _train(
    cfg: Config,
    run_dir: str | Path | None,
    resume: bool,
    out: TextIO | None | str,
    max_chunks: int | None,
    on_chunk: Callable[[dict], None] | None,
    restart: bool = False,
    new_budget: bool = False,
) -> RunResult:
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(cfg)
    out = sys.stdout if out == "stdout" else out  # resolved per call (tests replace sys.stdout)
    primary = jax.process_index() == 0  # in a multi-process run only process 0 writes files and logs
    if not primary:
        out = None
    t = cfg.train
    start = time.time()
    runner = SeedRunner(cfg)
    if resume:
        saved = read_config(run_dir)
        latest = checkpoint.latest_step(run_dir)
        trained = checkpoint.trained_config(run_dir, latest)
        edited = [k for k in differing_keys(trained, saved) if k != "train.t_max"] if trained is not None else []
        if edited:
            raise ConfigError(f"cannot resume {str(run_dir)!r}: its config.yaml was edited after its latest checkpoint "
                              f"was saved ({', '.join(edited)}); a run resumes with the settings it trained with: undo "
                              "the edit, or start a new run (--t-max alone sets a new budget)")
        diff = differing_keys(saved, cfg)
        if diff and not (new_budget and diff == ["train.t_max"]):
            raise ConfigError(f"cannot resume {str(run_dir)!r}: config differs from the saved one in {', '.join(diff)}"
                              + (" (only train.t_max may change)" if new_budget else ""))
        # a checkpoint's step is its slowest seed's env step: a budget at or under it would train nothing
        before = (trained or saved).train.t_max
        if latest is not None and t.t_max != before and t.t_max <= latest:
            raise ConfigError(f"cannot give {str(run_dir)!r} t_max {t.t_max:,}: its latest checkpoint has every seed at "
                              f"{latest:,} env steps or more; a new budget must be larger")
        step, state = checkpoint.restore(run_dir, runner.abstract_state())
        if step >= t.t_max:  # training on would add nothing but a second final test record
            _log(out, f"{run_dir} is already trained to its t_max {t.t_max:,} (checkpoint at {step:,} env steps); "
                      "nothing to do (--t-max N trains it on)")
            return RunResult(run_dir, to_host(state.t_env), {}, 0, time.time() - start)
        _log(out, f"resumed {run_dir} from checkpoint at {step} env steps")
    else:
        if run_dir.exists() and checkpoint.all_steps(run_dir):
            raise ConfigError(f"run directory {str(run_dir)!r} already holds checkpoints; pass --resume or choose another")
        found = sum(1 << i for i, name in enumerate(RUN_FILES) if (run_dir / name).exists())
        if jax.process_count() > 1:  # as process 0 found it: it writes config.yaml below, maybe before others look
            found = int(multihost_utils.broadcast_one_to_all(np.int32(found)))
        earlier = [name for i, name in enumerate(RUN_FILES) if found >> i & 1]
        if earlier and not restart:
            raise ConfigError(f"run directory {str(run_dir)!r} already holds a run ({', '.join(earlier)}; no checkpoint "
                              "yet): choose another --run-dir, or delete it to start over")
        if primary:
            for name in earlier:  # restart: the abandoned attempt's records would mix into this run's
                if name != "config.yaml":
                    (run_dir / name).unlink()
            run_dir.mkdir(parents=True, exist_ok=True)
            write_config(run_dir, cfg)
        state = runner.init_state()
    mgr = checkpoint.manager(run_dir)
    t_env = to_host(state.t_env)
    sink = _MetricsSink(run_dir, primary, cfg.train.tensorboard, t_env if resume else None)
    if resume and t.t_max != before:  # once the run's records are known good, so a refusal changes nothing
        if primary and diff:  # the run dir's config is the run's record: from here on it trains to the new budget
            write_config(run_dir, cfg)
        _log(out, f"budget of {run_dir}: t_max {before:,} -> {t.t_max:,} env steps per seed")
    next_test = (int(t_env.min()) // t.test_interval + 1) * t.test_interval if resume else 0
    next_ckpt = (int(t_env.min()) // t.checkpoint_interval + 1) * t.checkpoint_interval
    last_test: dict[str, Any] = {}
    chunks = 0
    layout = "" if runner.sharding is None else f" over {runner.sharding.mesh.size} {jax.devices()[0].platform} devices"
    _log(out, f"training {cfg.train.method} ({cfg.model.mixer} mixer) on {cfg.env.name}: "
              f"{t.num_seeds} seed(s){layout}, {t.num_envs} envs each, t_max {t.t_max:,}; run dir {run_dir}")

    def test_now() -> None:
        nonlocal last_test, next_test
        last_test = _test_summary(runner.tests(state, int(np.min(t_env))))
        sink.write({"kind": "test", "t_env": t_env.tolist(), **last_test})
        next_test = (int(np.min(t_env)) // t.test_interval + 1) * t.test_interval

    # A test that falls due is run before the checkpoint that follows it is saved, so a process
    # killed after a checkpoint has already written every test up to it and a resumed run's
    # records are the uninterrupted run's.
    compile_t0 = time.time()
    # Multi-process runs save collectively: one process stopping alone would strand its peers.
    with stopping.StopRequest(lambda line: _log(out, line), enabled=jax.process_count() == 1) as stop:
        if int(np.min(t_env)) >= next_test:
            test_now()
        while int(np.min(t_env)) < t.t_max:
            c0 = time.time()
            prev = t_env
            state, metrics = runner.chunk(state)
            summary = _summarise(metrics, trained=prev < t.t_max)
            chunks += 1
            t_env = np.asarray(summary["t_env"], dtype=np.int64)
            dt = time.time() - c0
            if chunks == 1:
                _log(out, f"first chunk (compile + run) took {time.time() - compile_t0:.1f}s")
            _check_finite(metrics, run_dir, trained=prev < t.t_max)
            record = {"kind": "train", "chunk_seconds": dt, **summary}
            sink.write(record)
            if on_chunk:
                on_chunk(record)
            rate = float(np.sum(t_env - prev)) / max(dt, 1e-9)
            slowest = int(np.argmin(t_env))  # the run ends when its slowest seed does
            eta = max(0.0, t.t_max - float(t_env[slowest])) / max(float(t_env[slowest] - prev[slowest]) / max(dt, 1e-9), 1e-9)
            test_txt = ""
            if last_test:
                test_txt = f" | test won {np.mean(last_test['test_won_mean']):.2f} ret {np.mean(last_test['test_return_mean']):.3g}"
                if "test_fgsm_won_mean" in last_test:
                    test_txt += (f" | fgsm won {np.mean(last_test['test_fgsm_won_mean']):.2f}"
                                 f" ret {np.mean(last_test['test_fgsm_return_mean']):.3g}")
            _log(out, f"t_env {int(np.min(t_env)):>9,}/{t.t_max:,} ({100 * min(1.0, np.min(t_env) / t.t_max):5.1f}%) "
                      f"| {rate:,.0f} steps/s | return {seed_mean(summary['return_mean']):.3f} "
                      f"won {seed_mean(summary['won_mean']):.2f} | eps {np.mean(summary['epsilon']):.2f} "
                      f"| loss {seed_mean(summary['loss']):.3f}{test_txt} | eta {_fmt_eta(eta)}")
            step = int(np.min(t_env))
            if t.t_max > step >= next_test:  # the final test, after the loop, covers t_max
                test_now()
            out_of_chunks = max_chunks is not None and chunks >= max_chunks
            if step >= next_ckpt or out_of_chunks or stop.requested:
                with stop.saving():
                    checkpoint.save(mgr, step, state, cfg)
                next_ckpt = (step // t.checkpoint_interval + 1) * t.checkpoint_interval
            if stop.requested:
                line = (f"stopped by {stop.signal_name} at {step:,} env steps; checkpoint saved in "
                        f"{str(run_dir / checkpoint.CHECKPOINT_DIR)!r} (continue with: cromac train --resume {run_dir})")
                _log(out, line)
                raise stopping.TrainingStopped(line, stop.exit_code)
            if out_of_chunks:
                return RunResult(run_dir, t_env, last_test, chunks, time.time() - start)
    tests = runner.tests(state, int(np.min(t_env)))
    last_test = _test_summary(tests)
    sink.write({"kind": "test", "t_env": t_env.tolist(), **last_test})
    checkpoint.save(mgr, int(np.min(t_env)), state, cfg)

    def pm(key: str, fmt: str) -> str:
        return f"{np.mean(last_test[key]):{fmt}} ± {np.std(last_test[key]):{fmt}}"

    # return too: for envs without a win condition (e.g. JaxMARL's MPE) it is the metric
    line = (f"{cfg.train.method} on {cfg.env.name}, {t.num_seeds} seed(s), {int(np.min(t_env)):,} env steps: "
            f"test won {pm('test_won_mean', '.3f')} (return {pm('test_return_mean', '.3g')})")
    if "test_fgsm_won_mean" in last_test:
        line += (f", under FGSM (eps {cfg.cromac.eps}) {pm('test_fgsm_won_mean', '.3f')}"
                 f" (return {pm('test_fgsm_return_mean', '.3g')})")
    if primary:
        (run_dir / "summary.txt").write_text(line + "\n")
    _log(out, f"done in {_fmt_eta(time.time() - start)}: {line}; run dir {run_dir}")
    return RunResult(run_dir, t_env, last_test, chunks, time.time() - start)


LOSS_PARTS = ("td", "vae", "poe", "robust", "loss", "grad_norm")


def _check_finite(metrics: Any, run_dir: Path, trained: np.ndarray | None = None) -> None:
    """Stop at the first iteration whose loss is not finite, naming the loss, seed and step.
    ``trained`` [S]: the seeds that trained in the chunk (the others' losses are NaN or thrown away).

    The state that produced it is never saved; the last checkpoint on disk stays loadable."""
    for part in LOSS_PARTS:
        values = np.asarray(getattr(metrics, part))  # [S, K]
        bad = ~np.isfinite(values)
        if trained is not None:
            bad &= np.asarray(trained, dtype=bool)[:, None]
        if bad.any():
            seed, k = (int(i[0]) for i in np.nonzero(bad))
            step = int(np.asarray(metrics.t_env)[seed, k])
            raise TrainingError(
                f"non-finite {part} loss ({values[seed, k]}) in seed {seed} at env step {step:,}; training "
                f"stopped, last good checkpoint kept in {str(run_dir / checkpoint.CHECKPOINT_DIR)!r}"
            )


CSV_FIELDS = ("t_env", "episodes", "updates", "epsilon", "return_mean", "won_mean", "ep_length_mean",
              "loss", "td", "vae", "poe", "robust", "q_taken", "grad_norm")


def _write_csv(path: Path, record: dict) -> None:
    """One row per chunk and seed: the same numbers as metrics.jsonl, for spreadsheets and pandas."""
    new = not path.exists()
    with path.open("a") as f:
        if new:
            f.write("seed," + ",".join(CSV_FIELDS) + "\n")
        for seed in range(len(record["t_env"])):  # an empty cell: the seed did not train (None)
            f.write(f"{seed}," + ",".join("" if record[k][seed] is None else repr(float(record[k][seed]))
                                          for k in CSV_FIELDS) + "\n")


def _record(path: Path, number: int, line: str) -> dict:
    """One metrics record, or one line naming the bad one: the files are left as they are."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        record = e
    if not isinstance(record, dict):
        raise checkpoint.CheckpointError(
            f"cannot resume: {str(path)!r} line {number} is not a JSON record "
            f"({str(record)[:80]}); nothing was changed: fix or delete that line")
    return record


#: What a run writes before its first checkpoint (besides TensorBoard events).
RUN_FILES = ("config.yaml", "metrics.jsonl", "metrics.csv")


def drop_records_after(run_dir: Path, t_env: np.ndarray) -> int:
    """Before a resumed run writes, remove the records a stopped process wrote after the
    checkpoint it resumes from (any seed past ``t_env``, the restored per-seed steps): the resumed
    run writes those steps again, and the files must hold one history, the one that continues.
    Files are replaced atomically (a crash here keeps the old ones). Returns how many were dropped."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return 0
    lines = path.read_text().splitlines()
    limit = np.asarray(t_env)

    def before(record: dict) -> bool:
        steps = np.asarray(record.get("t_env", []))
        return steps.shape != limit.shape or bool(np.all(steps <= limit))

    keep = [(ln, rec) for i, ln in enumerate(lines, 1) if ln.strip() for rec in [_record(path, i, ln)] if before(rec)]
    if len(keep) == len(lines):
        return 0
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(ln + "\n" for ln, _ in keep))
    csv_path, csv_tmp = run_dir / "metrics.csv", run_dir / "metrics.csv.tmp"
    csv_tmp.unlink(missing_ok=True)
    for _, record in keep:
        if record.get("kind") == "train":
            _write_csv(csv_tmp, record)
    os.replace(tmp, path)
    if csv_tmp.exists():
        os.replace(csv_tmp, csv_path)
    return len(lines) - len(keep)


def append_record(path: Path, record: dict) -> None:
    """One JSON line of ``metrics.jsonl`` (train records per chunk, test records per test)."""
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


class _MetricsSink:
    """Where each record goes: ``metrics.jsonl`` (the record of the run), ``metrics.csv`` (train
    records, one row per seed) and, if tensorboardX is installed, TensorBoard events. Only process 0
    of a multi-process run writes."""

    def __init__(self, run_dir: Path, primary: bool, tensorboard_on: bool, resumed_t_env: np.ndarray | None = None):
        self.run_dir = run_dir if primary else None
        purge = None
        if primary and resumed_t_env is not None:
            drop_records_after(run_dir, resumed_t_env)
            purge = int(np.min(resumed_t_env)) + 1
        self.tb = tensorboard.open_writer(run_dir, tensorboard_on, purge) if primary else None

    def write(self, record: dict) -> None:
        if self.run_dir is None:
            return
        append_record(self.run_dir / "metrics.jsonl", record)
        if record["kind"] == "train":
            _write_csv(self.run_dir / "metrics.csv", record)
        if self.tb is not None:
            self.tb.record(record)
            self.tb.flush()


def _log(out: TextIO | None, line: str) -> None:
    if out is not None:
        print(line, file=out, flush=True)

