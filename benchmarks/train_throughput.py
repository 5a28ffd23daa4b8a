"""Training throughput: env steps per second of the whole compiled trainer, per method and seed count.

Run from the repository root::

    python benchmarks/train_throughput.py                       # hallway_4x5x6, qmix + cromac, 1 and 5 seeds
    python benchmarks/train_throughput.py --env lbf_3p1f --seeds 1 2 4 8 16 --chunks 3

Each configuration is the paper's (``config.load`` with the environment's official
hyperparameters) at the official training ratio (one learner update per collected episode,
``num_envs`` episodes per iteration), with the robust loss ON for CroMAC (``robust_start=0``).
The replay buffer is warmed with one chunk, then ``--chunks`` chunks of ``jit(seeds_chunk)``
are timed. Reported: compile time (the first chunk call, trace + compile + run) separately from
run time; env steps/s summed over seeds; updates/s summed over seeds; the wall-time cost of S
seeds relative to one seed; and the bytes the replay buffers hold per seed. Reference: the
official PyTorch code trains hallway 4x5x6 at 140 env steps/s (CroMAC) and 520 (QMIX), single
seed, on a 2-core CPU. Ratios are only meaningful on the same kind of machine.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path
from typing import Any, Sequence

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

import jax  # noqa: E402
import numpy as np  # noqa: E402

import _report  # noqa: E402
from cromac_jax import config  # noqa: E402
from cromac_jax.runner import SeedRunner  # noqa: E402

REFERENCE_STEPS_PER_S = {"cromac": 140.0, "qmix": 520.0}  # official code, hallway 4x5x6, 1 seed


def bench(env: str, method: str, seeds: int, chunks: int, chunk_iterations: int) -> dict[str, Any]:
    cfg = config.load(None, [f"env.name={env}", f"train.method={method}", f"train.num_seeds={seeds}",
                             "cromac.robust_start=0", f"train.chunk_iterations={chunk_iterations}"])
    sr = SeedRunner(cfg)
    t0 = time.perf_counter()
    state = jax.block_until_ready(sr.init_state())
    init_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    state, m = sr.chunk(state)  # compile + warm the buffer
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    steps0, upd0 = np.asarray(state.t_env).sum(), np.asarray(state.updates).sum()
    t0 = time.perf_counter()
    for _ in range(chunks):
        state, m = sr.chunk(state)
    jax.block_until_ready(m)
    run_s = time.perf_counter() - t0
    steps = float(np.asarray(state.t_env).sum() - steps0)
    updates = float(np.asarray(state.updates).sum() - upd0)
    buffer_bytes = _report.tree_nbytes(state.buffer) // seeds
    return {
        "env": env, "method": method, "seeds": seeds, "chunks": chunks, "chunk_iterations": sr.trainer.chunk_iterations,
        "init_s": init_s, "compile_s": compile_s, "run_s": run_s,
        "env_steps_per_s": steps / run_s, "updates_per_s": updates / run_s,
        "buffer_bytes_per_seed": int(buffer_bytes),
        "reference_steps_per_s": REFERENCE_STEPS_PER_S.get(method) if env == "hallway_4x5x6" else None,
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--env", default="hallway_4x5x6")
    p.add_argument("--methods", nargs="+", default=["qmix", "cromac"])
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 5])
    p.add_argument("--chunks", type=int, default=2, help="timed chunks after the compiling one")
    p.add_argument("--chunk-iterations", type=int, default=40)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if min(args.seeds) < 1 or args.chunks < 1 or args.chunk_iterations < 1:
        p.error("--seeds, --chunks and --chunk-iterations must be >= 1")
    hw, load_start = _report.start("Training throughput")
    rows = []
    for method, seeds in itertools.product(args.methods, args.seeds):
        row = bench(args.env, method, seeds, args.chunks, args.chunk_iterations)
        rows.append(row)
        print(f"  {method:<8} seeds={seeds:<3} {row['env_steps_per_s']:>9,.0f} env steps/s  "
              f"(compile {row['compile_s']:.1f}s)", flush=True)
    base = {r["method"]: r for r in rows if r["seeds"] == min(args.seeds)}
    table = []
    for r in rows:
        b = base[r["method"]]
        # wall time of S seeds relative to one seed, for the same env steps per seed
        r["cost_vs_fewest_seeds"] = (b["env_steps_per_s"] / b["seeds"]) / (r["env_steps_per_s"] / r["seeds"])
        ref = r["reference_steps_per_s"]
        table.append([r["env"], r["method"], r["seeds"], f"{r['env_steps_per_s']:,.0f}", f"{r['updates_per_s']:,.0f}",
                      f"{r['compile_s']:.1f}", f"{r['cost_vs_fewest_seeds']:.2f}x",
                      f"{r['env_steps_per_s'] / ref:.1f}x" if ref else "n/a", f"{r['buffer_bytes_per_seed'] / 2**20:.1f}"])
    print()
    print(_report.markdown_table(
        ["env", "method", "seeds", "env steps/s (all seeds)", "updates/s", "compile s",
         f"wall cost vs {min(args.seeds)} seed", "vs official (1 seed)", "buffer MiB/seed"], table))
    load_end = _report.load_average()
    print(f"\nLoad average start {load_start}, end {load_end}. Official reference (hallway, 1 seed, 2-core CPU): "
          "CroMAC 140, QMIX 520 env steps/s.")
    return _report.finish("train_throughput", hw, load_start, vars(args) | {"out": str(args.out)}, rows, args.out,
                           load_end=load_end)


if __name__ == "__main__":
    main()
