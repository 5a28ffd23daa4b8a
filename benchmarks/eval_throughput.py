"""Evaluation throughput: agent decisions per second under message attacks, and the wall time
of the paper's Table-1 grid.

Run from the repository root::

    python benchmarks/eval_throughput.py                       # hallway_4x5x6, CroMAC, 5 seeds
    python benchmarks/eval_throughput.py --grid-fraction 0.1   # grid on 100 episodes/seed, extrapolated

Everything goes through the public evaluation API (``evaluate.untrained_run`` for freshly
initialised parameters of every seed, ``evaluate.evaluate`` and ``evaluate.certified_rate``),
the same code ``cromac eval`` runs; a trained checkpoint (``load_run``) has the same shapes and
costs the same, because episodes are padded to ``episode_limit + 1`` slots and every slot is
computed whether or not the episode is still running.

Reported, per attack (defaults natural, FGSM, PGD with 10 steps), for ``--seeds`` seeds x
``--episodes`` episodes in one jitted call:

* ``decisions/s``: agent decisions actually taken per second, episodes x steps x agents summed
  over seeds (steps = the episodes' real lengths, which depend on the policy: an untrained team
  ends hallway episodes early);
* ``slot decisions/s``: episodes x (episode_limit + 1) x agents per second, the work the padded
  scan does, independent of the policy (a policy whose episodes run to the limit gets this);
* compile time (the first call: trace + XLA compile + one run) separately from run time (the
  median of ``--repeats`` later calls).

The Table-1 grid: Natural, Random, PGD, FGSM (1), FGSM (2), FGSM, FGSM (3), FGSM (4) -- 8
attack settings (budgets 1, 1, 0.25, 0.5, 1, 2, 4 x cromac.eps) x ``--grid-episodes`` (1000)
episodes x 5 seeds, timed from scratch (compiled-function cache cleared: the 4 attack programs
compile once, eps is traced) and again warm, plus the certified-action rate at the 5 distinct
eps that ``cromac eval`` adds. With ``--grid-fraction f < 1`` the grid runs ``f x`` the episodes
and the run time is extrapolated linearly (labelled "extrapolated"; compile time is not scaled).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _report
import numpy as np

from cromac_jax import attacks as A
from cromac_jax import config
from cromac_jax import evaluate as ev

#: Table 1's eight attack settings: (column, attack, budget as a multiple of cromac.eps).
TABLE1_SETTINGS: tuple[tuple[str, str, float], ...] = (
    ("Natural", "natural", 0.0),
    ("Random", "random", 1.0),
    ("PGD", "pgd", 1.0),
    ("FGSM (1)", "fgsm", 0.25),
    ("FGSM (2)", "fgsm", 0.5),
    ("FGSM", "fgsm", 1.0),
    ("FGSM (3)", "fgsm", 2.0),
    ("FGSM (4)", "fgsm", 4.0),
)


def build_run(env: str, method: str, seeds: int) -> tuple[ev.Run, float]:
    cfg = config.load(None, [f"env.name={env}", f"train.method={method}", f"train.num_seeds={seeds}"])
    t0 = time.perf_counter()
    run = ev.untrained_run(cfg)
    return run, time.perf_counter() - t0


def _counts(run: ev.Run, res: ev.EvalResult) -> tuple[int, int]:
    """(decisions taken, slot decisions) of one evaluate call, summed over seeds."""
    n = run.model.n
    taken = int(np.sum(res.lengths)) * n
    slots = int(res.lengths.size) * (int(run.env.episode_limit) + 1) * n
    return taken, slots


def bench_attack(run: ev.Run, attack: str, episodes: int, repeats: int) -> dict[str, Any]:
    """Time ``evaluate(run, attack, episodes)``: first call (compile + run), then ``repeats``."""
    t0 = time.perf_counter()
    res = ev.evaluate(run, attack, episodes=episodes)  # returns NumPy arrays: the work is done
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = ev.evaluate(run, attack, episodes=episodes)
        times.append(time.perf_counter() - t0)
    run_s = statistics.median(times)
    taken, slots = _counts(run, res)
    return {
        "attack": attack, "eps": run.eps, "seeds": run.n_seeds, "episodes_per_seed": episodes,
        "first_call_s": first, "compile_s": max(first - run_s, 0.0), "run_s": run_s, "best_s": min(times), "times_s": times,
        "decisions": taken, "slot_decisions": slots,
        "decisions_per_s": taken / run_s, "slot_decisions_per_s": slots / run_s,
        "mean_episode_length": float(np.mean(res.lengths)), "episode_limit": int(run.env.episode_limit),
        "agents": int(run.model.n),
    }


def _grid_pass(run: ev.Run, episodes: int, certified: bool) -> dict[str, Any]:
    per_setting = []
    t_start = time.perf_counter()
    for column, attack, budget in TABLE1_SETTINGS:
        t0 = time.perf_counter()
        res = ev.evaluate(run, attack, episodes=episodes, eps=budget * run.eps)
        taken, slots = _counts(run, res)
        per_setting.append({"column": column, "attack": attack, "budget": budget, "seconds": time.perf_counter() - t0,
                            "decisions": taken, "slot_decisions": slots})
    attacks_s = time.perf_counter() - t_start
    cert_s = None
    if certified:
        t0 = time.perf_counter()
        for budget in sorted({b for _, a, b in TABLE1_SETTINGS if a != "natural"}):
            ev.certified_rate(run, episodes=episodes, eps=budget * run.eps)
        cert_s = time.perf_counter() - t0
    return {"attacks_s": attacks_s, "certified_s": cert_s, "total_s": attacks_s + (cert_s or 0.0), "settings": per_setting}


def bench_grid(run: ev.Run, grid_episodes: int, fraction: float, certified: bool) -> dict[str, Any]:
    """The Table-1 grid at ``round(grid_episodes * fraction)`` episodes per seed: cold (nothing
    compiled) and warm; run times extrapolated to ``grid_episodes`` when ``fraction < 1``."""
    episodes = max(1, round(grid_episodes * fraction))
    ev._COMPILED.clear()  # from scratch, as a fresh `cromac eval` process
    cold = _grid_pass(run, episodes, certified)
    warm = _grid_pass(run, episodes, certified)
    scale = grid_episodes / episodes
    compile_s = cold["total_s"] - warm["total_s"]
    out = {
        "settings": [c for c, _, _ in TABLE1_SETTINGS],
        "seeds": run.n_seeds, "grid_episodes": grid_episodes, "measured_episodes": episodes,
        "extrapolated": episodes != grid_episodes, "certified_included": certified,
        "measured_cold": cold, "measured_warm": warm, "compile_s": compile_s,
        "attacks_warm_s": warm["attacks_s"] * scale,
        "certified_warm_s": None if warm["certified_s"] is None else warm["certified_s"] * scale,
        "total_warm_s": warm["total_s"] * scale,
    }
    out["total_cold_s"] = out["total_warm_s"] + compile_s  # compile time does not depend on episodes
    decisions = sum(s["decisions"] for s in warm["settings"]) * scale
    out["grid_decisions"] = decisions
    out["grid_decisions_per_s"] = decisions / warm["attacks_s"] / scale if warm["attacks_s"] > 0 else None
    return out


def _fmt_s(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--env", default="hallway_4x5x6")
    p.add_argument("--method", default="cromac")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--attacks", nargs="+", default=["natural", "fgsm", "pgd"], help="attacks timed for decisions/s")
    p.add_argument("--episodes", type=int, default=1000, help="episodes per seed in each timed call")
    p.add_argument("--repeats", type=int, default=3, help="timed calls after the compiling one")
    p.add_argument("--grid-episodes", dest="grid_episodes", type=int, default=1000, help="Table 1: episodes per seed")
    p.add_argument("--grid-fraction", dest="grid_fraction", type=float, default=1.0,
                   help="run the grid on this fraction of --grid-episodes and extrapolate (default 1: measure it all)")
    p.add_argument("--no-grid", dest="grid", action="store_false", help="skip the Table-1 grid")
    p.add_argument("--no-certified", dest="certified", action="store_false",
                   help="leave the certified-action rates out of the grid time")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if min(args.seeds, args.episodes, args.repeats, args.grid_episodes) < 1 or not 0 < args.grid_fraction <= 1:
        p.error("--seeds, --episodes, --repeats, --grid-episodes must be >= 1 and 0 < --grid-fraction <= 1")
    for a in args.attacks:
        if a not in A.ATTACKS:
            p.error(f"unknown attack {a!r}; choose from {', '.join(A.ATTACKS)}")
    hw, load_start = _report.start("Evaluation throughput")
    run, init_s = build_run(args.env, args.method, args.seeds)
    print(f"  {args.method} on {args.env}: {run.n_seeds} seeds x {args.episodes} episodes per call, {run.model.n} agents, "
          f"episode limit {run.env.episode_limit}, eps {run.eps:g}; fresh parameters (init {init_s:.1f}s)", flush=True)
    rows = []
    for attack in args.attacks:
        row = bench_attack(run, attack, args.episodes, args.repeats)
        rows.append(row)
        print(f"  {attack:<8} {row['decisions_per_s']:>12,.0f} decisions/s  {row['slot_decisions_per_s']:>12,.0f} slot "
              f"decisions/s  (compile {row['compile_s']:.1f}s, run {row['run_s']:.2f}s)", flush=True)
    print()
    print(_report.markdown_table(
        ["env", "method", "attack", "seeds x episodes", "decisions/s", "slot decisions/s", "mean ep. length",
         "compile s", "run s (median)"],
        [[args.env, args.method, r["attack"], f"{r['seeds']} x {r['episodes_per_seed']}", _report.fmt_rate(r["decisions_per_s"]),
          _report.fmt_rate(r["slot_decisions_per_s"]), f"{r['mean_episode_length']:.1f} / {r['episode_limit']}",
          f"{r['compile_s']:.1f}", f"{r['run_s']:.2f}"] for r in rows]))
    grid = None
    if args.grid:
        grid = bench_grid(run, args.grid_episodes, args.grid_fraction, args.certified)
        label = (f"extrapolated from {grid['measured_episodes']} episodes/seed" if grid["extrapolated"] else "measured")
        print(f"\n## Table-1 grid: 8 attack settings x {args.grid_episodes} episodes x {run.n_seeds} seeds ({label})\n")
        table = [["8 attack settings", _fmt_s(grid["attacks_warm_s"]), label],
                 ["certified rate at 5 eps", _fmt_s(grid["certified_warm_s"]), label if args.certified else "skipped"],
                 ["compile (4 attack programs" + (" + certificate" if args.certified else "") + ")",
                  _fmt_s(grid["compile_s"]), f"measured at {grid['measured_episodes']} episodes/seed"],
                 ["total from scratch", _fmt_s(grid["total_cold_s"]), label],
                 ["total, compiled", _fmt_s(grid["total_warm_s"]), label]]
        print(_report.markdown_table(["part", "wall s", "how"], table))
    load_end = _report.load_average()
    print(f"\nLoad average start {load_start}, end {load_end} (other processes share this CPU).")
    return _report.finish("eval_throughput", hw, load_start, vars(args) | {"out": str(args.out)}, rows, args.out,
                           load_end=load_end, init_s=init_s, table1_grid=grid)


if __name__ == "__main__":
    main()
