"""Environment throughput: env steps per second of a compiled random-action rollout.

Run from the repository root (the script puts its own folder and the repository root on
``sys.path``, so it needs no install step beyond the project's dependencies)::

    python benchmarks/env_throughput.py                       # every preset, 1..8192 envs
    python benchmarks/env_throughput.py --presets hallway_4x5x6 --num-envs 1 1024

For each registered preset, ``num_envs`` copies of the environment are reset once, then one
jitted call runs ``lax.scan`` over ``--steps`` steps of ``vmap(env.step)`` (JaxMARL's dict API
with auto-reset), each agent taking a uniformly random *available* action (drawn from the
``_avail`` mask with one uniform number per agent: ``random_available_actions``). Steps/s
counts environment steps: ``num_envs * steps / seconds``.

Compile time is the first call (tracing + compilation + one run), reported separately; run time
is the median (and best) of ``--repeats`` later calls, each ended by ``block_until_ready``.
State bytes are the bytes of one environment's state pytree.

The ratio column compares with the official numpy environments on a 2-core CPU (hallway 111k,
traffic junction 6.5k, LBF 6.1k steps/s); the target is >= 100x at 8192 environments. Presets
that the registry lists but cannot build (for example SMAX stand-ins not yet implemented) are
skipped with the reason printed. A JSON report naming the hardware goes to ``--out``.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path
from typing import Any, Sequence

_HERE = Path(__file__).resolve().parent
for _p in (str(_HERE), str(_HERE.parent)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import _report  # noqa: E402
import envs  # noqa: E402

#: Official numpy environments, env steps/s on a 2-core CPU, by preset-name prefix.
REFERENCE_STEPS_PER_S = {"hallway": 111_000.0, "tj": 6_500.0, "lbf": 6_100.0}
TARGET_SPEEDUP = 100.0
TARGET_NUM_ENVS = 8192


def reference_for(preset: str) -> float | None:
    family = preset.split("_", 1)[0]
    return REFERENCE_STEPS_PER_S.get(family)


def random_available_actions(key: jax.Array, avail: jax.Array) -> jax.Array:
    """A uniformly random available action per row of ``avail`` [..., A] -> int32 [...].

    One uniform draw per agent picks the k-th available action (k < number available); this is
    the same distribution as a categorical over the mask but several times cheaper on CPU
    (no Gumbel noise per action), so the harness costs little next to the env step.
    """
    avail = avail.astype(bool)
    count = jnp.sum(avail, axis=-1)
    k = jnp.floor(jax.random.uniform(key, count.shape) * count).astype(jnp.int32)
    k = jnp.minimum(k, jnp.maximum(count - 1, 0))
    rank = jnp.cumsum(avail, axis=-1) - 1  # rank of each available action among the available
    return jnp.argmax(avail & (rank == k[..., None]), axis=-1).astype(jnp.int32)


API_LABELS = {
    "jaxmarl": "JaxMARL dict API, auto-reset env.step",
    "array": "array core step_arrays, as the trainer's rollout calls it (no reset inside an episode)",
}


def make_rollout(env: Any, num_envs: int, steps: int, api: str = "jaxmarl"):
    """Jitted ``(key) -> (reset states)`` and ``(states, key) -> (states, return sum)``.

    ``api="jaxmarl"``: the dict API with auto-reset, what a JaxMARL user calls. ``api="array"``:
    the array core without reset, what ``cromac_jax.rollout`` calls for every step of an episode
    (it resets once per episode, outside the per-step path).
    """
    agents = list(env.agents)

    def reset(key):
        _, states = jax.vmap(env.reset)(jax.random.split(key, num_envs))
        return states

    def one_step(carry, key):
        states, total = carry
        k_act, k_env = jax.random.split(key)
        actions = random_available_actions(k_act, jax.vmap(env._avail)(states))  # [E, N]
        if api == "array":
            ts, states = jax.vmap(env.step_arrays)(jax.random.split(k_env, num_envs), states, actions)
            return (states, total + jnp.sum(ts.reward)), None
        act_dict = {a: actions[:, i] for i, a in enumerate(agents)}
        _, states, rewards, _, _ = jax.vmap(env.step)(jax.random.split(k_env, num_envs), states, act_dict)
        return (states, total + jnp.sum(rewards[agents[0]])), None

    def rollout(states, key):
        (states, total), _ = jax.lax.scan(one_step, (states, jnp.zeros(())), jax.random.split(key, steps))
        return states, total

    return jax.jit(reset), jax.jit(rollout)


def check_buildable(name: str) -> tuple[Any | None, str | None]:
    """Build a preset and trace (not run) its reset and step; (env, None) or (None, reason)."""
    try:
        env = envs.make(name)
        key = jax.random.PRNGKey(0)
        _, state = jax.eval_shape(env.reset, key)
        acts = {a: jax.ShapeDtypeStruct((), jnp.int32) for a in env.agents}
        jax.eval_shape(env.step, key, state, acts)
        jax.eval_shape(env._avail, state)
    except Exception as e:  # an unimplemented or broken preset is reported, not fatal
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


def table(rows: list[dict[str, Any]], bytes_by_preset: dict[str, int]) -> str:
    out = []
    for r in rows:
        speedup = r["speedup_vs_reference"]
        verdict = "-"
        if "meets_target" in r:
            verdict = "pass" if r["meets_target"] else "MISS"
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
    ]
    return _report.markdown_table(headers, out)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=None, help="presets to run (default: every registered one)")
    p.add_argument("--num-envs", nargs="+", type=int, default=[1, 64, 1024, 8192], help="parallel environments")
    p.add_argument("--steps", type=int, default=100, help="steps per environment in one timed call")
    p.add_argument("--repeats", type=int, default=3, help="timed calls after the compiling one")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--apis", nargs="+", default=["jaxmarl", "array"], choices=sorted(API_LABELS), help="which step API to time")
    p.add_argument("--out", type=Path, default=None, help="JSON report (default: benchmarks/results/env_throughput_<machine>.json)")
    args = p.parse_args(argv)
    known = envs.preset_names()
    for name in args.presets or []:
        if name not in known:
            p.error(f"unknown preset {name!r}; registered: {', '.join(known)}")
    if any(n < 1 for n in args.num_envs) or args.steps < 1 or args.repeats < 1:
        p.error("--num-envs, --steps and --repeats must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    presets = args.presets or envs.preset_names()
    hw = _report.hardware_info()
    load_start = _report.load_average()
    print(f"# Environment throughput\n\n{_report.describe_hardware(hw)}; load average {load_start}\n", flush=True)

    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    bytes_by_preset: dict[str, int] = {}
    for name in presets:
        env, reason = check_buildable(name)
        if env is None:
            print(f"skip {name}: {reason}", flush=True)
            skipped.append({"preset": name, "reason": reason})
            continue
        bytes_by_preset[name] = state_bytes(env)
        for api, num_envs in itertools.product(args.apis, args.num_envs):
            row = bench_preset(env, name, num_envs, args.steps, args.repeats, args.seed, api)
            row["state_bytes"] = bytes_by_preset[name]
            rows.append(row)
            print(
                f"  {name:<18} {api:<8} envs={num_envs:<6} {_report.fmt_rate(row['steps_per_s']):>8} steps/s "
                f"(compile {row['compile_s']:.2f}s)",
                flush=True,
            )

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

    payload = {
        "benchmark": "env_throughput",
        "hardware": hw,
        "load_average_start": load_start,
        "load_average_end": load_end,
        "settings": {
            "presets": presets,
            "num_envs": args.num_envs,
            "steps": args.steps,
            "repeats": args.repeats,
            "seed": args.seed,
            "apis": {a: API_LABELS[a] for a in args.apis},
            "rollout": "jit(lax.scan(vmap(step))) with random available actions",
            "statistic": "steps_per_s from the median of repeats; steps_per_s_best from the best",
        },
        "reference": {
            "steps_per_s": REFERENCE_STEPS_PER_S,
            "hardware": "official numpy environments, 2-core CPU",
            "target_speedup": TARGET_SPEEDUP,
            "target_num_envs": TARGET_NUM_ENVS,
        },
        "state_bytes": bytes_by_preset,
        "results": rows,
        "skipped": skipped,
    }
    out = _report.write_json(args.out or _report.default_out("env_throughput"), payload)
    print(f"\nwrote {out}")
    return payload


if __name__ == "__main__":
    main()
