"""What trimming the learner's batch (``train.slot_buckets``) buys on a trained run's buffer.

Run from the repository root::

    python benchmarks/slot_trim.py RUN_DIR                    # its latest checkpoint, buckets 1 vs 4
    python benchmarks/slot_trim.py RUN_DIR --buckets 1 2 4 8 --chunks 3

Trimming only pays once episodes end well before the time limit, i.e. on the buffer of a team
that has learned, which a benchmark from a fresh state never sees; so this one restores a run's
checkpoint (its config, seeds, buffer and all) and, for each bucket count, compiles the training
chunk (timed apart) and runs ``--chunks`` chunks from that same state. A finished run's budget is
lifted so the chunks train. Reported per bucket count: compile seconds, env steps/s and updates/s
(sums over seeds), the speedup over ``--buckets``' first entry, and the slot lengths the buffer
holds (mean filled slots per episode, and how often a batch of ``batch_size`` episodes would fit
each length), so a user can see why a run gains or does not. Writes a JSON report naming the
hardware (default ``benchmarks/results/slot_trim_<machine>.json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, Sequence

_HERE = Path(__file__).resolve().parent
for _p in (str(_HERE), str(_HERE.parent)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import jax  # noqa: E402
import numpy as np  # noqa: E402

import _report  # noqa: E402
from cromac_jax import checkpoint  # noqa: E402
from cromac_jax.config import STEP_LIMIT  # noqa: E402
from cromac_jax.runner import SeedRunner  # noqa: E402
from cromac_jax.train import slot_buckets  # noqa: E402


def buffer_lengths(state: Any, batch_size: int, seeds_per_device: int | None = None, draws: int = 2000,
                   seed: int = 0) -> dict[str, Any]:
    """Filled slots per stored episode, and per seed the share of random batches whose longest
    episode fits each length (what decides the trimmed length of an update). An update is trimmed
    to the longest episode over the batches of the seeds on its device (``seeds_per_device``,
    default all: one device), so that is the length averaged as ``batch_max_trimmed_mean``."""
    filled = np.asarray(state.buffer.experience.filled)
    per_seed = filled.reshape(filled.shape[0], -1, filled.shape[-1]).sum(axis=-1)
    rng = np.random.default_rng(seed)
    slots = filled.shape[-1]
    batch_max = []
    for lengths in per_seed:
        stored = lengths[lengths > 0]
        batch_max.append(stored[rng.integers(0, len(stored), (draws, batch_size))].max(axis=1))
    batch_max = np.stack(batch_max)  # [seeds, draws]
    per = seeds_per_device or len(batch_max)
    trimmed = batch_max.reshape(-1, per, draws).max(axis=1)  # [devices, draws]: each device's length
    stored_all = per_seed[per_seed > 0]
    return {
        "slots": int(slots),
        "mean_filled": float(stored_all.mean()),
        "max_filled": int(stored_all.max()),
        "share_at_limit": float((stored_all == slots).mean()),
        "batch_max_median_per_seed": [float(np.median(b)) for b in batch_max],
        "seeds_per_device": int(per),
        "batch_max_trimmed_mean": float(trimmed.mean()),
    }


def measure(run_dir: Path, buckets: int, chunks: int, step: int | None) -> dict[str, Any]:
    cfg = checkpoint.read_config(run_dir)
    # a budget no seed reaches while measuring (the largest the config allows)
    train = dataclasses.replace(cfg.train, slot_buckets=buckets, t_max=max(cfg.train.t_max, STEP_LIMIT - 1))
    cfg = dataclasses.replace(cfg, train=train)
    runner = SeedRunner(cfg)
    restored_step, state = checkpoint.restore(run_dir, runner.abstract_state(), step)
    devices = 1 if runner.sharding is None else len(runner.sharding.device_set)
    lengths = buffer_lengths(state, cfg.train.batch_size, cfg.train.num_seeds // devices)
    t0 = time.perf_counter()
    compiled = runner._chunk.lower(state).compile()
    compile_s = time.perf_counter() - t0
    steps0, updates0 = np.asarray(state.t_env).sum(), np.asarray(state.updates).sum()
    times = []
    for _ in range(chunks):
        t0 = time.perf_counter()
        state, metrics = compiled(state)
        jax.block_until_ready(state)
        times.append(time.perf_counter() - t0)
    run_s = sum(times)
    env_steps = float(np.asarray(state.t_env).sum() - steps0)
    updates = float(np.asarray(state.updates).sum() - updates0)
    return {
        "slot_buckets": buckets,
        "lengths": list(runner.trainer.slot_buckets),
        "checkpoint_step": int(restored_step),
        "seeds": cfg.train.num_seeds,
        "compile_s": compile_s,
        "chunk_times_s": times,
        "run_s": run_s,
        "env_steps": env_steps,
        "updates": updates,
        "env_steps_per_s": env_steps / run_s,
        "updates_per_s": updates / run_s,
        "loss_last_chunk": float(np.nanmean(np.asarray(metrics.loss))),
        "buffer": lengths,
    }


def table(rows: list[dict[str, Any]]) -> str:
    base = rows[0]["updates_per_s"]
    body = [
        [
            str(r["slot_buckets"]),
            " ".join(map(str, r["lengths"])),
            f"{r['compile_s']:.1f}",
            _report.fmt_rate(r["env_steps_per_s"]),
            f"{r['updates_per_s']:.0f}",
            f"{r['updates_per_s'] / base:.2f}x",
        ]
        for r in rows
    ]
    return _report.markdown_table(
        ["slot_buckets", "lengths", "compile s", "env steps/s", "updates/s", f"vs buckets={rows[0]['slot_buckets']}"],
        body,
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, help="a training run directory with a checkpoint")
    p.add_argument("--buckets", type=int, nargs="+", default=[1, 4], help="slot_buckets values to compare (first = baseline)")
    p.add_argument("--chunks", type=int, default=2, help="timed chunks per value, each from the restored state")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    p.add_argument("--out", type=Path, default=None, help="JSON report (default: benchmarks/results/slot_trim_<machine>.json)")
    args = p.parse_args(argv)
    if min(args.buckets) < 1 or args.chunks < 1:
        p.error("--buckets values and --chunks must be >= 1")
    if checkpoint.latest_step(args.run_dir) is None:
        p.error(f"no checkpoint in {args.run_dir} (train a run first, e.g. cromac train --run-dir {args.run_dir})")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    hw, load_start = _report.start(f"Learner batch trimming on {args.run_dir}")
    rows = []
    for b in args.buckets:
        row = measure(args.run_dir, b, args.chunks, args.step)
        rows.append(row)
        print(f"  slot_buckets={b}: compile {row['compile_s']:.1f}s, {row['env_steps_per_s']:,.0f} env steps/s, "
              f"{row['updates_per_s']:.0f} updates/s", flush=True)
    buf = rows[0]["buffer"]
    load_end = _report.load_average()
    print()
    print(table(rows))
    print(
        f"\nCheckpoint at {rows[0]['checkpoint_step']:,} env steps, {rows[0]['seeds']} seed(s); its buffer: "
        f"{buf['mean_filled']:.1f} of {buf['slots']} slots filled per episode on average (max {buf['max_filled']}, "
        f"{buf['share_at_limit']:.1%} at the limit); the length an update is trimmed to (a batch's longest "
        f"episode, max over the {buf['seeds_per_device']} seed(s) of a device) "
        f"{buf['batch_max_trimmed_mean']:.1f} slots on average (for 1 bucket: {slot_buckets(buf['slots'], 1)[0]}). "
        f"Each value: compile (timed apart), then {args.chunks} chunk(s) from the same restored state. "
        f"Load average start {load_start}, end {load_end}."
    )
    settings = {"run_dir": str(args.run_dir), "buckets": args.buckets, "chunks": args.chunks, "step": args.step}
    return _report.finish("slot_trim", hw, load_start, settings, rows, args.out, load_end=load_end)


if __name__ == "__main__":
    main()
