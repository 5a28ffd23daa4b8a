"""Wall time of one run's seeds on 1 process vs N processes joined by ``jax.distributed``.

Run from the repository root::

    python benchmarks/distributed_scaling.py                        # 8 seeds, 1 vs 2 processes, hallway_4x5x6
    python benchmarks/distributed_scaling.py --seeds 8 --processes 1 2 4 --t-max 20000
    python benchmarks/distributed_scaling.py model.rnn_hidden=32 --seeds 4   # overrides for every run

Config overrides (``KEY=VALUE``) go to every ``cromac train``; put them before ``--processes``,
which takes every number after it.

Every configuration is the real ``cromac train`` CLI in subprocesses on this host (``--distributed``
with a localhost coordinator, one CPU device per process, gloo collectives), so what is timed is
what a user runs. Reported per process count: total wall time of the command (start-up, joining,
compile and training), the first chunk (trace + compile + one chunk) separately, and the steady
env-steps/s summed over seeds from the later chunks. On one host the processes share its cores, so
more processes cannot add compute here; this measures the overhead of the distributed path (joining,
per-chunk metric gathers, checkpoint barriers) that a multi-host run pays, next to the time it saves
when each process has cores or a GPU of its own.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

import _report  # noqa: E402
from cromac_jax.distributed import free_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _train_cmd(args: argparse.Namespace, run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "cromac_jax.cli", "train", "--env", args.env, "--method", args.method,
            "--seeds", str(args.seeds), "--t-max", str(args.t_max), "--run-dir", str(run_dir), "--cpu-devices", "off",
            f"train.test_interval={args.t_max}", f"train.checkpoint_interval={args.t_max}", *args.overrides]


def measure(args: argparse.Namespace, processes: int, workdir: Path) -> dict[str, Any]:
    run_dir = workdir / f"p{processes}"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f)
    cmd = _train_cmd(args, run_dir)
    t0 = time.perf_counter()
    if processes == 1:
        procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)]
    else:
        port = free_port()
        extra = ["--distributed", "--coordinator", f"127.0.0.1:{port}", "--num-processes", str(processes)]
        procs = [subprocess.Popen(cmd + extra + ["--process-id", str(i)], cwd=ROOT, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(processes)]
    outs = [p.communicate()[0] for p in procs]
    wall = time.perf_counter() - t0
    if any(p.returncode for p in procs):
        raise SystemExit(f"{processes}-process run failed:\n" + "\n".join(o[-2000:] for o in outs))
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    later = train[1:] or train
    steps = sum(sum(b - a for a, b in zip(r0["t_env"], r1["t_env"], strict=True)) for r0, r1 in zip(train, train[1:], strict=False))
    secs = sum(r["chunk_seconds"] for r in later)
    return {
        "processes": processes,
        "seeds": args.seeds,
        "seeds_per_process": args.seeds // processes,
        "wall_s": round(wall, 2),
        "first_chunk_s": round(train[0]["chunk_seconds"], 2),
        "steady_env_steps_per_s": round(steps / secs, 1) if secs > 0 and steps > 0 else None,
        "chunks": len(train),
        "final_t_env_min": min(train[-1]["t_env"]),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="hallway_4x5x6")
    p.add_argument("--method", default="cromac")
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    p.add_argument("--t-max", dest="t_max", type=int, default=20_000)
    p.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/distributed_scaling_<hardware>.json)")
    p.add_argument("overrides", nargs="*", help="config overrides KEY=VALUE passed to every cromac train")
    args = p.parse_args(argv)
    for n in args.processes:
        if args.seeds % n:
            raise SystemExit(f"--seeds {args.seeds} does not divide over {n} processes")
    hw, load_start = _report.start(f"Distributed scaling: {args.seeds} seeds of {args.method} on {args.env}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.processes:
            rows.append(measure(args, n, Path(tmp)))
            print(f"{n} process(es): {rows[-1]}", flush=True)
    base = rows[0]["wall_s"]
    for r in rows:
        r["wall_vs_first"] = round(r["wall_s"] / base, 3)
    headers = ["processes", "seeds/process", "wall s", "first chunk s", "steady steps/s", "wall vs first"]
    table = [[r["processes"], r["seeds_per_process"], r["wall_s"], r["first_chunk_s"], r["steady_env_steps_per_s"],
              r["wall_vs_first"]] for r in rows]
    print(_report.markdown_table(headers, table))
    settings = {"env": args.env, "method": args.method, "seeds": args.seeds, "processes": args.processes,
                "t_max": args.t_max, "overrides": args.overrides}
    _report.finish("distributed_scaling", hw, load_start, settings, rows, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
