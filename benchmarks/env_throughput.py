"""Environment throughput: env steps per second of a compiled random-action rollout.

Run from the repository root (the script puts its own folder and the repository root on
``sys.path``, so it needs no install step beyond the project's dependencies)::

    python benchmarks/env_throughput.py                       # every preset, 1..8192 envs
    python benchmarks/env_throughput.py --presets hallway_4x5x6 --num-envs 1 1024
    python benchmarks/env_throughput.py --presets smax_1o2r_vs_4r smax_1o10b_vs_1r \
        --num-envs 1024 --merge                               # SMAX rows, next to JaxMARL's 3m

For each registered preset, plus JaxMARL's two MPE communication tasks through
``envs.make("jaxmarl:NAME")`` (``JAXMARL_COMM_BENCHMARKS``), ``num_envs`` copies of the environment
are reset once, then one jitted call runs ``lax.scan`` over ``--steps`` steps of each API in
``--apis`` (default both): ``vmap(env.step)``, JaxMARL's dict API with auto-reset, and the array
core ``step_arrays`` as the trainer's rollout calls it; each agent takes a uniformly random *available* action (drawn from the
``_avail`` mask with one uniform number per agent: ``random_available_actions``). Steps/s
counts environment steps: ``num_envs * steps / seconds``.

Compile time is the first call (tracing + compilation + one run), reported separately; run time
is the median (and best) of ``--repeats`` later calls, each ended by ``block_until_ready``.
State bytes are the bytes of one environment's state pytree.

The ratio column compares with the official numpy environments on a 2-core CPU (hallway 111k,
traffic junction 6.5k, LBF 6.1k steps/s); the target is >= 100x at 8192 environments. Presets
that the registry lists but cannot build are skipped with the reason printed. A JSON report
naming the hardware goes to ``--out``; ``--merge`` keeps the rows it holds that are not measured again.

SMAX stand-ins (``smax_*``) have no numpy reference; they are compared with JaxMARL's own SMAX
``3m`` (``HeuristicEnemySMAX`` on scenario ``3m``, row ``jaxmarl_smax_3m``), measured in the
same run, at the same ``num_envs``, with the same random available actions and the same JaxMARL
dict API with auto-reset (its avail mask stacked from ``get_avail_actions``). Each stand-in row
reports ``vs_smax_3m`` = its steps/s / 3m's dict-API steps/s (array-API rows are divided by the
same 3m number: 3m has no array core); the target is >= 0.67x (issue 6). The SMAX cases are
compiled first and then timed round-robin (``bench_interleaved``), so load changes on a shared
machine hit them alike; they also report env steps per CPU-second of this process
(``steps_per_cpu_s``, ``vs_smax_3m_cpu``), a second opinion when other jobs share the CPU.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
for _p in (str(_HERE), str(_HERE.parent)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import _report  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import envs  # noqa: E402
from cromac_jax.bench import env_rollout, random_available_actions  # noqa: E402, F401  (used by tests, callers)

#: Official numpy environments, env steps/s on a 2-core CPU, by preset-name prefix.
REFERENCE_STEPS_PER_S = {"hallway": 111_000.0, "tj": 6_500.0, "lbf": 6_100.0}
TARGET_SPEEDUP = 100.0
TARGET_NUM_ENVS = 8192

#: JaxMARL's own SMAX map that the SMAX stand-ins are compared with, and the target ratio.
SMAX_BASELINE = "jaxmarl_smax_3m"
SMAX_BASELINE_LABEL = "JaxMARL HeuristicEnemySMAX, scenario 3m (3 marines vs 3 marines, heuristic enemy)"
SMAX_TARGET_RATIO = 0.67


def is_smax_standin(preset: str) -> bool:
    return preset.startswith("smax_")


def build_smax_3m() -> Any:
    """JaxMARL's SMAX ``3m`` as its users build it: ``make("HeuristicEnemySMAX", scenario=...)``."""
    from envs._quiet import quiet_import

    with quiet_import():
        import jaxmarl
        from jaxmarl.environments.smax import map_name_to_scenario

    return jaxmarl.make("HeuristicEnemySMAX", scenario=map_name_to_scenario("3m"))


def avail_fn(env: Any):
    """``state -> bool [N, A]``: the array core's mask, or JaxMARL's ``get_avail_actions`` stacked."""
    if isinstance(env, envs.CromacEnv):
        return env._avail
    agents = list(env.agents)

    def avail(state):
        d = env.get_avail_actions(state)
        return jnp.stack([d[a] for a in agents]).astype(bool)

    return avail


def reference_for(preset: str) -> float | None:
    family = preset.split("_", 1)[0]
    return REFERENCE_STEPS_PER_S.get(family)


API_LABELS = {
    "jaxmarl": "JaxMARL dict API, auto-reset env.step",
    "array": "array core step_arrays, as the trainer's rollout calls it (no reset inside an episode)",
}


#: JaxMARL's MPE communication tasks, run through ``envs.make("jaxmarl:NAME")`` (issue 9).
JAXMARL_COMM_BENCHMARKS = ("jaxmarl:MPE_simple_speaker_listener_v4", "jaxmarl:MPE_simple_reference_v3")


def make_rollout(env: Any, num_envs: int, steps: int, api: str = "jaxmarl"):
    """Jitted ``(key) -> (reset states)`` and ``(states, key) -> (states, return sum)``.

    ``api="jaxmarl"``: the dict API with auto-reset, what a JaxMARL user calls. ``api="array"``:
    the array core without reset, what ``cromac_jax.rollout`` calls for every step of an episode
    (it resets once per episode, outside the per-step path). The loop is ``cromac bench``'s
    (``cromac_jax.bench.env_rollout``), so both report the same work.
    """
    reset, rollout = env_rollout(env, num_envs, steps, api, avail=avail_fn(env))
    return jax.jit(reset), jax.jit(rollout)


def check_buildable(name: str) -> tuple[Any | None, str | None]:
    """Build a preset and trace (not run) its reset and step; (env, None) or (None, reason)."""
    try:
        env = build_smax_3m() if name == SMAX_BASELINE else envs.make(name)
        key = jax.random.PRNGKey(0)
        _, state = jax.eval_shape(env.reset, key)
        acts = {a: jax.ShapeDtypeStruct((), jnp.int32) for a in env.agents}
        jax.eval_shape(env.step, key, state, acts)
        jax.eval_shape(avail_fn(env), state)
    except Exception as e:  # noqa: BLE001 - an unimplemented or broken preset is reported, not fatal
        return None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")
    return env, None


def state_bytes(env: Any) -> int:
    _, state = env.reset(jax.random.PRNGKey(0))
    return _report.tree_nbytes(state)


def bench_preset(env: Any, name: str, num_envs: int, steps: int, repeats: int, seed: int, api: str = "jaxmarl") -> dict[str, Any]:
    reset, rollout = make_rollout(env, num_envs, steps, api)
    k_reset, k_run = jax.random.split(jax.random.PRNGKey(seed))
    states = jax.block_until_ready(reset(k_reset))
    timing, (_, total) = _report.time_jitted(rollout, states, k_run, repeats=repeats)
    return make_row(name, api, num_envs, steps, timing, total)


def bench_interleaved(
    cases: list[tuple[Any, str, str, int]], steps: int, repeats: int, seed: int
) -> list[dict[str, Any]]:
    """Time ``(env, name, api, num_envs)`` cases side by side: compile every case first, then
    run the timed calls round-robin (case 1, 2, ..., 1, 2, ...), so a change in the machine's
    load during the run hits every case alike and their ratios stay fair. Each call also records
    this process's CPU seconds (all threads), a load-robust second opinion when the CPU is shared.
    """
    prepared = []
    for env, name, api, num_envs in cases:
        reset, rollout = make_rollout(env, num_envs, steps, api)
        k_reset, k_run = jax.random.split(jax.random.PRNGKey(seed))
        states = jax.block_until_ready(reset(k_reset))
        t0 = time.perf_counter()
        out = jax.block_until_ready(rollout(states, k_run))
        timing = _report.Timing(first_call_s=time.perf_counter() - t0)
        print(f"  compiled {name:<18} {api:<8} envs={num_envs:<6} ({timing.first_call_s:.2f}s)", flush=True)
        prepared.append({"case": (name, api, num_envs), "fn": rollout, "args": (states, k_run), "timing": timing, "cpu_s": [], "out": out})
    for _ in range(repeats):
        for p in prepared:
            t0, c0 = time.perf_counter(), time.process_time()
            p["out"] = jax.block_until_ready(p["fn"](*p["args"]))
            p["timing"].times_s.append(time.perf_counter() - t0)
            p["cpu_s"].append(time.process_time() - c0)
    rows = []
    for p in prepared:
        name, api, num_envs = p["case"]
        row = make_row(name, api, num_envs, steps, p["timing"], p["out"][1])
        row["timing"] = "interleaved"
        row["cpu_s"] = p["cpu_s"]
        row["steps_per_cpu_s"] = num_envs * steps / statistics.median(p["cpu_s"])
        rows.append(row)
    return rows


def make_row(name: str, api: str, num_envs: int, steps: int, timing: Any, total: Any) -> dict[str, Any]:
    n = num_envs * steps
    ref = reference_for(name)
    row = {
        "preset": name,
        "api": api,
        "num_envs": num_envs,
        "steps": steps,
        "env_steps_per_call": n,
        "steps_per_s": n / timing.median_s,
        "steps_per_s_best": n / timing.best_s,
        "reward_sum_last_call": float(total),
        **timing.as_dict(),
        "reference_steps_per_s": ref,
        "speedup_vs_reference": (n / timing.median_s) / ref if ref else None,
    }
    if ref and num_envs == TARGET_NUM_ENVS:
        row["target_speedup"] = TARGET_SPEEDUP
        row["meets_target"] = row["speedup_vs_reference"] >= TARGET_SPEEDUP
    return row


def add_smax_ratios(rows: list[dict[str, Any]]) -> None:
    """Give every SMAX stand-in row its ratio to JaxMARL's 3m (dict API, same ``num_envs``)."""
    base = {r["num_envs"]: r for r in rows if r["preset"] == SMAX_BASELINE and r["api"] == "jaxmarl"}
    for r in rows:
        if not is_smax_standin(r["preset"]):
            continue
        b = base.get(r["num_envs"])
        r["smax_3m_steps_per_s"] = b["steps_per_s"] if b else None
        r["vs_smax_3m"] = r["steps_per_s"] / b["steps_per_s"] if b else None
        if b and "steps_per_cpu_s" in r and "steps_per_cpu_s" in b:
            r["vs_smax_3m_cpu"] = r["steps_per_cpu_s"] / b["steps_per_cpu_s"]
        r["smax_target_ratio"] = SMAX_TARGET_RATIO
        r["meets_smax_target"] = r["vs_smax_3m"] >= SMAX_TARGET_RATIO if b else None


def table(rows: list[dict[str, Any]], bytes_by_preset: dict[str, int]) -> str:
    out = []
    for r in rows:
        speedup = r["speedup_vs_reference"]
        verdict = "-"
        if "meets_target" in r:
            verdict = "pass" if r["meets_target"] else "MISS"
        vs3m = r.get("vs_smax_3m")
        smax_verdict = "-" if vs3m is None else f"{vs3m:.2f}x " + ("pass" if r["meets_smax_target"] else "MISS")
        if r.get("vs_smax_3m_cpu") is not None:
            smax_verdict += f" (CPU-time {r['vs_smax_3m_cpu']:.2f}x)"
        out.append(
            [
                r["preset"],
                r["api"],
                r["num_envs"],
                _report.fmt_rate(r["steps_per_s"]),
                _report.fmt_rate(r["steps_per_s_best"]),
                f"{r['compile_s']:.2f}",
                bytes_by_preset[r["preset"]],
                f"{speedup:.1f}x" if speedup is not None else "n/a",
                verdict,
                smax_verdict,
            ]
        )
    headers = [
        "preset",
        "api",
        "num_envs",
        "steps/s (median)",
        "steps/s (best)",
        "compile s",
        "state bytes",
        "vs numpy ref",
        f">= {TARGET_SPEEDUP:.0f}x @ {TARGET_NUM_ENVS}",
        f"vs SMAX 3m (>= {SMAX_TARGET_RATIO}x)",
    ]
    return _report.markdown_table(headers, out)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=None, help="presets (or jaxmarl:NAME) to run (default: every registered one and the two MPE communication tasks)")
    p.add_argument("--num-envs", nargs="+", type=int, default=[1, 64, 1024, 8192], help="parallel environments")
    p.add_argument("--steps", type=int, default=100, help="steps per environment in one timed call")
    p.add_argument("--repeats", type=int, default=3, help="timed calls after the compiling one")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--apis", nargs="+", default=["jaxmarl", "array"], choices=sorted(API_LABELS), help="which step API to time")
    p.add_argument("--out", type=Path, default=None, help="JSON report (default: benchmarks/results/env_throughput_<machine>.json)")
    p.add_argument(
        "--smax-baseline",
        choices=["auto", "on", "off"],
        default="auto",
        help=f"also time JaxMARL's SMAX 3m ({SMAX_BASELINE}, dict API only: it has no array core); "
        "auto: when a smax_* preset was built",
    )
    p.add_argument("--merge", action="store_true", help="keep the rows --out already holds that this run does not measure again")
    args = p.parse_args(argv)
    for name in args.presets or []:  # a preset, or jaxmarl:NAME for any JaxMARL env
        try:
            envs.check_name(name)
        except envs.EnvConfigError as e:
            p.error(str(e))
    if any(n < 1 for n in args.num_envs) or args.steps < 1 or args.repeats < 1:
        p.error("--num-envs, --steps and --repeats must be >= 1")
    return args


def merge_previous(payload: dict[str, Any], path: Path) -> dict[str, Any]:
    """``payload`` plus the rows of ``path`` it did not measure again (same preset, API and
    ``num_envs``), and their presets' state bytes.

    Kept rows get the old report's date and load averages (``measured_at``,
    ``load_average_start`` / ``_end``) if they lack them, so every row still says when and under what load it was measured; the
    top-level hardware, load and settings describe this run. Nothing is kept if ``path`` is
    missing or was measured on another jax version or backend.
    """
    import json

    path = Path(path)
    if not path.exists():
        return payload
    old = json.loads(path.read_text(encoding="utf-8"))
    hw, old_hw = payload["hardware"], old.get("hardware", {})
    if (old_hw.get("jax_version"), old_hw.get("jax_backend")) != (hw["jax_version"], hw["jax_backend"]):
        print(f"not merging {path}: measured on another jax version or backend", flush=True)
        return payload
    ran = set(payload["settings"]["presets"])
    measured = {(r["preset"], r["api"], r["num_envs"]) for r in payload["results"]}
    kept = []
    for r in old.get("results", []):
        if (r["preset"], r["api"], r["num_envs"]) in measured:
            continue
        r = dict(r)
        r.setdefault("measured_at", old_hw.get("date"))
        r.setdefault("load_average_start", old.get("load_average_start"))
        r.setdefault("load_average_end", old.get("load_average_end"))
        kept.append(r)
    merged = dict(payload)
    merged["results"] = kept + payload["results"]
    merged["state_bytes"] = {
        **{k: v for k, v in old.get("state_bytes", {}).items() if k not in ran},
        **payload["state_bytes"],
    }
    # the earlier runs the kept rows come from (each row also names its own date and load)
    runs: dict[str, set[str]] = {}
    for r in kept:
        runs.setdefault(str(r.get("measured_at")), set()).add(r["preset"])
    merged["merged_from"] = [{"measured_at": d, "presets": sorted(p)} for d, p in sorted(runs.items())]
    return merged


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    presets = args.presets or envs.preset_names() + list(JAXMARL_COMM_BENCHMARKS)
    hw, load_start = _report.start("Environment throughput")

    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    bytes_by_preset: dict[str, int] = {}
    smax_cases: list[tuple[Any, str, str, int]] = []  # timed together, interleaved, at the end

    def finish(row: dict[str, Any]) -> None:
        row["state_bytes"] = bytes_by_preset[row["preset"]]
        row["measured_at"] = hw["date"]
        row["load_average"] = _report.load_average()
        rows.append(row)
        print(
            f"  {row['preset']:<18} {row['api']:<8} envs={row['num_envs']:<6} {_report.fmt_rate(row['steps_per_s']):>8} "
            f"steps/s (compile {row['compile_s']:.2f}s)",
            flush=True,
        )

    for name in presets:
        env, reason = check_buildable(name)
        if env is None:
            print(f"skip {name}: {reason}", flush=True)
            skipped.append({"preset": name, "reason": reason})
            continue
        bytes_by_preset[name] = state_bytes(env)
        for api, num_envs in itertools.product(args.apis, args.num_envs):
            if is_smax_standin(name):
                smax_cases.append((env, name, api, num_envs))
            else:
                finish(bench_preset(env, name, num_envs, args.steps, args.repeats, args.seed, api))
    # JaxMARL's 3m joins the SMAX stand-ins that were built (auto) or runs alone (on)
    if args.smax_baseline == "on" or (args.smax_baseline == "auto" and smax_cases):
        env, reason = check_buildable(SMAX_BASELINE)
        if env is None:
            print(f"skip {SMAX_BASELINE}: {reason}", flush=True)
            skipped.append({"preset": SMAX_BASELINE, "reason": reason})
        else:
            bytes_by_preset[SMAX_BASELINE] = state_bytes(env)
            smax_cases = [(env, SMAX_BASELINE, "jaxmarl", n) for n in args.num_envs] + smax_cases
            presets = [*presets, SMAX_BASELINE]
    if smax_cases:
        print("  SMAX: compiling every case, then timing them round-robin", flush=True)
        for row in bench_interleaved(smax_cases, args.steps, args.repeats, args.seed):
            finish(row)
    add_smax_ratios(rows)

    load_end = _report.load_average()
    print()
    print(table(rows, bytes_by_preset))
    print(
        f"\nsteps/s = num_envs*steps / median run time of {args.repeats} calls after compile; "
        f"compile s = first call (trace + compile + one run). numpy reference (2-core CPU): "
        + ", ".join(f"{k} {_report.fmt_rate(v)}" for k, v in REFERENCE_STEPS_PER_S.items())
        + f". Load average start {load_start}, end {load_end}."
    )
    misses = [f"{r['preset']}/{r['api']} ({r['speedup_vs_reference']:.1f}x)" for r in rows if r.get("meets_target") is False]
    if misses:
        print(f"below the {TARGET_SPEEDUP:.0f}x target at {TARGET_NUM_ENVS} envs: {', '.join(misses)}")
    if any(r.get("vs_smax_3m") is not None for r in rows):
        print(
            f"vs SMAX 3m = steps/s / steps/s of {SMAX_BASELINE} ({SMAX_BASELINE_LABEL}; JaxMARL dict API with "
            f"auto-reset, same num_envs, same random available actions); target >= {SMAX_TARGET_RATIO}x."
        )
    smax_misses = [f"{r['preset']}/{r['api']}@{r['num_envs']} ({r['vs_smax_3m']:.2f}x)" for r in rows if r.get("meets_smax_target") is False]
    if smax_misses:
        print(f"below {SMAX_TARGET_RATIO}x SMAX 3m: {', '.join(smax_misses)}")

    settings = {
        "presets": presets,
        "num_envs": args.num_envs,
        "steps": args.steps,
        "repeats": args.repeats,
        "seed": args.seed,
        "apis": {a: API_LABELS[a] for a in args.apis},
        "rollout": "jit(lax.scan(vmap(step))) with random available actions",
        "smax_timing": "SMAX stand-ins and JaxMARL's 3m: all compiled, then timed round-robin",
        "smax_baseline": args.smax_baseline,
        "statistic": "steps_per_s from the median of repeats; steps_per_s_best from the best",
    }
    reference = {
        "steps_per_s": REFERENCE_STEPS_PER_S,
        "hardware": "official numpy environments, 2-core CPU",
        "target_speedup": TARGET_SPEEDUP,
        "target_num_envs": TARGET_NUM_ENVS,
        "smax_baseline": {
            "preset": SMAX_BASELINE,
            "env": SMAX_BASELINE_LABEL,
            "api": API_LABELS["jaxmarl"],
            "target_ratio": SMAX_TARGET_RATIO,
            "ratio_field": "vs_smax_3m (stand-in steps/s over 3m's at the same num_envs, same run)",
        },
    }
    return _report.finish(
        "env_throughput", hw, load_start, settings, rows, args.out, load_end=load_end,
        merge=merge_previous if args.merge else None,
        reference=reference, state_bytes=bytes_by_preset, skipped=skipped,
    )


if __name__ == "__main__":
    main()
