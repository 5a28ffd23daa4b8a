"""Learner update cost: milliseconds of one jitted update (a batch of 32 episodes).

Run from the repository root (the script puts its own folder and the repository root on
``sys.path``)::

    python benchmarks/update_cost.py                          # hallway_4x5x6 + lbf_3p1f, qmix + cromac
    python benchmarks/update_cost.py --envs hallway_4x5x6 --methods cromac --updates 100

For each environment and method the run's config is the paper's (``config.load`` with the
environment's official hyperparameters), and ``Trainer.update`` is exactly one learner update:
sample 32 episodes from the replay buffer, loss (eq. 17), Adam, clamp, target sync. The buffer
is first filled with ``--fill-episodes`` episodes of uniformly random available actions collected
by ``rollout.collect_episodes`` from the real environment, and ``t_env`` is set past
``cromac.robust_start`` so that for CroMAC the robust (IBP) loss and the weight clamp are ON.

Two timings per configuration, each with its compile time (first call) reported separately:

* scan: one jitted call runs ``lax.scan`` over ``--updates`` updates (as training does); the
  per-update time is the call's time divided by ``--updates``, median over ``--repeats`` calls;
* single: one jitted call = one update (includes per-call dispatch), median over
  ``--single-calls`` calls.

Ratios: vs the official PyTorch code on a 2-core CPU on hallway (41.5 ms per CroMAC update,
9.3 ms per QMIX update; target CroMAC >= 20x faster, i.e. ~2 ms), and our CroMAC/QMIX cost
ratio (target <= 1.5x; the official code's is 4.5x). A JSON report naming the hardware goes to
``--out``.
"""

from __future__ import annotations

import argparse
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
from cromac_jax import config as config_lib  # noqa: E402
from cromac_jax.buffer import stored_episodes  # noqa: E402
from cromac_jax.rollout import collect_episodes, epsilon_greedy  # noqa: E402
from cromac_jax.train import Trainer, TrainState, make_train  # noqa: E402

#: The official PyTorch code, ms per learner update on a 2-core CPU (hallway 4x5x6).
REFERENCE_MS = {"hallway_4x5x6": {"cromac": 41.5, "qmix": 9.3}}
TARGET_SPEEDUP = 20.0  # CroMAC vs the official code
TARGET_CROMAC_OVER_QMIX = 1.5


def build(env_name: str, method: str, fill_episodes: int, seed: int) -> tuple[Trainer, TrainState, Any]:
    """A trainer with the paper's config, a state whose buffer holds random episodes, and the
    fill episodes' stats."""
    cfg = config_lib.load(None, [f"env.name={env_name}", f"train.method={method}"])
    trainer = make_train(cfg)
    k_init, k_fill = jax.random.split(jax.random.PRNGKey(seed))
    state = trainer.init(k_init)

    def random_act(key, h, ts):
        return epsilon_greedy(key, jnp.zeros(ts.avail.shape), ts.avail, jnp.ones(()))

    @jax.jit
    def fill(state, key):
        episodes, stats = collect_episodes(
            trainer.env,
            lambda h, obs: h,  # the policy is random, so the recurrent agent need not run
            random_act,
            trainer.model.initial_hidden(),
            state.env_run,
            key,
            fill_episodes,
            timeout_is_terminal=not cfg.train.bootstrap_on_truncation,
        )
        return state.replace(buffer=trainer.buffer.add(state.buffer, episodes)), stats

    state, stats = fill(state, k_fill)
    # Past the robust start: CroMAC's robust loss and the message-encoder clamp are ON.
    state = state.replace(t_env=jnp.asarray(cfg.cromac.robust_start + 1, jnp.int32))
    return trainer, state, stats


def bench_config(env_name: str, method: str, args: argparse.Namespace) -> dict[str, Any]:
    trainer, state, stats = build(env_name, method, args.fill_episodes, args.seed)
    cfg = trainer.cfg
    keys = jax.random.split(jax.random.PRNGKey(args.seed + 1), args.updates)

    scan_fn = jax.jit(lambda s, ks: jax.lax.scan(trainer.update, s, ks))
    single_fn = jax.jit(trainer.update)

    scan_t, (_, (loss, _, _)) = _report.time_jitted(scan_fn, state, keys, repeats=args.repeats)
    single_t, (_, (loss1, _, _)) = _report.time_jitted(single_fn, state, keys[0], repeats=args.single_calls)

    per_update_ms = [t * 1e3 / args.updates for t in scan_t.times_s]
    ms_scan = scan_t.median_s * 1e3 / args.updates
    ms_single = single_t.median_s * 1e3
    ref = REFERENCE_MS.get(env_name, {}).get(method)
    row: dict[str, Any] = {
        "env": env_name,
        "method": method,
        "batch_size": cfg.train.batch_size,
        "episode_limit": trainer.model.dims.episode_limit,
        "dims": trainer.env.describe(),
        "model": {"rnn_hidden": cfg.model.rnn_hidden, "z_dim": cfg.model.z_dim, "mixer": cfg.model.mixer},
        "robust_on": bool(trainer.robust_on(state.t_env)),
        "buffer_episodes": int(stored_episodes(state.buffer, cfg.train.buffer_size)),
        "fill_mean_length": float(jnp.mean(stats.lengths)),
        "updates_per_call": args.updates,
        "ms_per_update": ms_scan,
        "ms_per_update_best": min(per_update_ms),
        "ms_per_update_single_call": ms_single,
        "ms_per_update_single_call_best": single_t.best_s * 1e3,
        "compile_s_scan": scan_t.first_call_s,
        "compile_s_single": single_t.first_call_s,
        "scan_call_times_s": scan_t.times_s,
        "single_call_times_s": single_t.times_s,
        "loss_finite": bool(jnp.all(jnp.isfinite(loss)) and jnp.isfinite(loss1)),
        "reference_ms": ref,
        "speedup_vs_reference": ref / ms_scan if ref else None,
    }
    if ref and method == "cromac":
        row["target_speedup"] = TARGET_SPEEDUP
        row["meets_target"] = row["speedup_vs_reference"] >= TARGET_SPEEDUP
    return row


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """CroMAC/QMIX cost ratio for every env where both ran."""
    by = {(r["env"], r["method"]): r for r in rows}
    out = []
    for env_name in dict.fromkeys(r["env"] for r in rows):
        c, q = by.get((env_name, "cromac")), by.get((env_name, "qmix"))
        if c and q:
            ratio = c["ms_per_update"] / q["ms_per_update"]
            ref = REFERENCE_MS.get(env_name, {})
            out.append(
                {
                    "env": env_name,
                    "cromac_over_qmix": ratio,
                    "cromac_over_qmix_single_call": c["ms_per_update_single_call"] / q["ms_per_update_single_call"],
                    "reference_cromac_over_qmix": ref["cromac"] / ref["qmix"] if {"cromac", "qmix"} <= set(ref) else None,
                    "target": TARGET_CROMAC_OVER_QMIX,
                    "meets_target": ratio <= TARGET_CROMAC_OVER_QMIX,
                }
            )
    return out


def tables(rows: list[dict[str, Any]], ratio_rows: list[dict[str, Any]]) -> str:
    main_rows = []
    for r in rows:
        verdict = "-"
        if "meets_target" in r:
            verdict = "pass" if r["meets_target"] else "MISS"
        sp = r["speedup_vs_reference"]
        main_rows.append(
            [
                r["env"],
                r["method"],
                "on" if r["robust_on"] else "off",
                f"{r['ms_per_update']:.3f}",
                f"{r['ms_per_update_single_call']:.3f}",
                f"{r['compile_s_scan']:.1f}",
                f"{r['compile_s_single']:.1f}",
                f"{r['reference_ms']:.1f}" if r["reference_ms"] else "n/a",
                f"{sp:.1f}x" if sp is not None else "n/a",
                verdict,
            ]
        )
    headers = [
        "env",
        "method",
        "robust",
        "ms/update (scan)",
        "ms/update (single call)",
        "compile s (scan)",
        "compile s (single)",
        "PyTorch ms",
        "speedup",
        f"CroMAC >= {TARGET_SPEEDUP:.0f}x",
    ]
    text = _report.markdown_table(headers, main_rows)
    if ratio_rows:
        rr = [
            [
                r["env"],
                f"{r['cromac_over_qmix']:.2f}x",
                f"{r['cromac_over_qmix_single_call']:.2f}x",
                f"{r['reference_cromac_over_qmix']:.2f}x" if r["reference_cromac_over_qmix"] else "n/a",
                "pass" if r["meets_target"] else "MISS",
            ]
            for r in ratio_rows
        ]
        text += "\n\n" + _report.markdown_table(
            ["env", "CroMAC/QMIX (scan)", "CroMAC/QMIX (single call)", "PyTorch CroMAC/QMIX", f"<= {TARGET_CROMAC_OVER_QMIX}x"],
            rr,
        )
    return text


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--envs", nargs="+", default=["hallway_4x5x6", "lbf_3p1f"], help="environment presets")
    p.add_argument("--methods", nargs="+", default=["qmix", "cromac"], help=f"methods ({', '.join(config_lib.METHODS)})")
    p.add_argument("--updates", type=int, default=50, help="updates per scanned call")
    p.add_argument("--repeats", type=int, default=5, help="timed scanned calls after the compiling one")
    p.add_argument("--single-calls", type=int, default=50, help="timed single-update calls after the compiling one")
    p.add_argument("--fill-episodes", type=int, default=1024, help="random episodes put in the buffer first")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="JSON report (default: benchmarks/results/update_cost_<machine>.json)")
    args = p.parse_args(argv)
    for name in args.envs:
        try:
            envs.check_name(name)
        except envs.EnvConfigError as e:
            p.error(str(e))
    for m in args.methods:
        if m not in config_lib.METHODS:
            p.error(f"unknown method {m!r}; choose from {', '.join(config_lib.METHODS)}")
    if min(args.updates, args.repeats, args.single_calls) < 1:
        p.error("--updates, --repeats and --single-calls must be >= 1")
    if args.fill_episodes < 32:
        p.error("--fill-episodes must be >= 32 (one batch of episodes)")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    hw, load_start = _report.start("Learner update cost")

    rows = []
    for env_name in args.envs:
        for method in args.methods:
            row = bench_config(env_name, method, args)
            rows.append(row)
            print(
                f"  {env_name:<14} {method:<8} {row['ms_per_update']:.3f} ms/update (scan), "
                f"{row['ms_per_update_single_call']:.3f} ms (single call); compile {row['compile_s_scan']:.1f}s "
                f"/ {row['compile_s_single']:.1f}s",
                flush=True,
            )
    ratio_rows = ratios(rows)
    load_end = _report.load_average()
    print()
    print(tables(rows, ratio_rows))
    print(
        f"\nms/update (scan) = median over {args.repeats} calls of one jitted lax.scan of {args.updates} "
        f"updates, divided by {args.updates}; single call = median of {args.single_calls} jitted one-update "
        f"calls. compile s = first call (trace + compile + one run). Batch 32 episodes; reference: official "
        f"PyTorch code on a 2-core CPU, hallway. Load average start {load_start}, end {load_end}."
    )

    settings = {
        "envs": args.envs,
        "methods": args.methods,
        "updates_per_call": args.updates,
        "repeats": args.repeats,
        "single_calls": args.single_calls,
        "fill_episodes": args.fill_episodes,
        "seed": args.seed,
        "statistic": "ms_per_update: median scanned call / updates_per_call; single call: median",
    }
    reference = {
        "ms_per_update": REFERENCE_MS,
        "hardware": "official PyTorch code, 2-core CPU",
        "target_speedup_cromac": TARGET_SPEEDUP,
        "target_cromac_over_qmix": TARGET_CROMAC_OVER_QMIX,
    }
    return _report.finish("update_cost", hw, load_start, settings, rows, args.out, load_end=load_end,
                           reference=reference, ratios=ratio_rows)


if __name__ == "__main__":
    main()
