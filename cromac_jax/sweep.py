"""Multi-seed sweeps: every (env, method, mixer) combination, each trained with all its seeds vmapped.

A sweep directory holds one run directory per combination plus ``summary.md`` / ``summary.json``.
It is resumable: a finished run is skipped, an interrupted one continues from its checkpoint. Runs
can be split across independent processes with ``--share I/N``: process I takes every N-th run in a
fixed order, so shares never overlap and any process can write the summary afterwards. Runs differ
in cost (a CroMAC run costs more than a QMIX one), so fixed shares can leave one process idle
while another has hours left: with ``--share any/N`` each of N processes takes the next run that
no other process holds, until none is left.

Whoever trains or evaluates a run here (and ``cromac train --resume``) holds its claim, an advisory
``flock`` on ``<run dir>/.claim``; the OS drops it when the process dies, so a killed run is free for
the next process at once, and two of these processes never write one run directory (with fixed
shares too, e.g. one share started twice).
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from cromac_jax import checkpoint, config
from cromac_jax.config import ConfigError


@dataclass(frozen=True)
class SweepRun:
    env: str
    method: str
    mixer: str

    @property
    def name(self) -> str:
        return f"{self.env}_{self.method}_{self.mixer}"


def plan(envs: list[str], methods: list[str], mixers: list[str]) -> list[SweepRun]:
    return [SweepRun(e, m, x) for e, m, x in itertools.product(envs, methods, mixers)]


ANY = None  # the share index of ``--share any/N``: every run, taken as claims allow


def parse_share(text: str, flag: str = "--share", forms: str = "I/N or any/N") -> tuple[int | None, int]:
    """``I/N`` -> (I, N); ``any/N`` -> (None, N): N processes taking runs as they come."""
    try:
        index, count = text.split("/")
        parsed = (ANY if index.strip() == "any" else int(index), int(count))
    except ValueError:
        raise ConfigError(f"{flag} must look like {forms}, got {text!r}") from None
    my_share([], *parsed)
    return parsed


def my_share(runs: list[SweepRun], index: int | None, count: int) -> list[SweepRun]:
    """The runs this process may take: every N-th from I, or with ``any/N`` all of them (each then
    taken only if no other process holds its claim)."""
    if count < 1 or (index is not ANY and not 0 <= index < count):
        raise ConfigError(f"--share {'any' if index is ANY else index}/{count} is invalid: need 0 <= index < count "
                          "(any/N: N >= 1)")
    return list(runs) if index is ANY else runs[index::count]


CLAIM_FILE = ".claim"


@contextmanager
def claim(run_dir: Path) -> Iterator[bool]:
    """Hold ``run_dir``'s claim while the block runs; yields False (and holds nothing) if another
    process has it. Creates ``run_dir``. Where ``fcntl`` is missing (Windows) every claim succeeds."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - POSIX only
        yield True
        return
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / CLAIM_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())  # who holds it, for a person looking
        yield True
    finally:
        os.close(fd)  # closing the descriptor releases the lock


@contextmanager
def claim_unless_done(
    run_dir: Path,
    done: Callable[[], bool],
    label: str,
    out: TextIO | None | str = "stdout",
    done_note: str | None = "already finished, skipped",
    held_note: str = "held by another process, skipped",
) -> Iterator[bool]:
    """Yields True, holding ``run_dir``'s claim, when work on it is still to do: False (and a line
    saying why, ``done_note=None`` for none) when ``done()`` already, or when another process holds
    the claim. ``done()`` is asked again once the claim is held, because the process that held it
    may have just finished the work."""
    if done():
        if done_note is not None:
            _log(out, f"{label}: {done_note}")
        yield False
        return
    with claim(run_dir) as mine:
        if not mine:
            _log(out, f"{label}: {held_note}")
            yield False
            return
        yield not done()


def run_config(run: SweepRun, base: list[str], seeds: int) -> config.Config:
    overrides = list(base) + [
        f"env.name={run.env}",
        f"train.method={run.method}",
        f"model.mixer={run.mixer}",
        f"train.num_seeds={seeds}",
    ]
    cfg = config.load(None, overrides)
    from envs.registry import check_name  # here: the envs package imports jax

    check_name(cfg.env.name)  # a misspelt env fails before any run of the sweep trains, not hours in
    return cfg


def finished(run_dir: Path, cfg: config.Config) -> bool:
    """Whether the run's last checkpoint is at its budget."""
    return at_budget(checkpoint.all_steps(run_dir), cfg)


def at_budget(steps: list[int], cfg: config.Config) -> bool:
    """Whether the last of a run's saved ``steps`` (ascending; from its checkpoints, or a record of
    them kept elsewhere) is at its budget."""
    return bool(steps) and steps[-1] >= cfg.train.t_max


def sweep(
    out_dir: str | Path,
    envs: list[str],
    methods: list[str],
    mixers: list[str],
    seeds: int,
    overrides: list[str] | None = None,
    share: tuple[int | None, int] = (0, 1),
    out: TextIO | None | str = "stdout",
    extend: bool = False,
) -> list[dict[str, Any]]:
    """Train this process's share of the sweep, then write the summary of every finished run.
    ``extend`` (the user gave ``--t-max``): a started run whose saved budget is smaller trains on to
    the sweep's; without it, or for a smaller budget, a changed ``t_max`` is refused like any other
    change (a rerun that forgot ``--t-max`` must not extend every run to the env's official budget)."""
    from cromac_jax import runner  # here, not at the top: importing it starts a JAX backend (jaxmarl)

    out_dir = Path(out_dir)
    runs = plan(envs, methods, mixers)
    cfgs = {r: run_config(r, overrides or [], seeds) for r in runs}  # validate everything first
    mine = my_share(runs, *share)
    for i, r in enumerate(mine, 1):
        run_dir = out_dir / r.name
        cfg = cfgs[r]
        done = functools.partial(finished, run_dir, cfg)
        with claim_unless_done(run_dir, done, f"[{i}/{len(mine)}] {r.name}", out) as todo:
            if not todo:
                continue
            resume = bool(checkpoint.all_steps(run_dir))
            _log(out, f"[{i}/{len(mine)}] {r.name}: {'resuming' if resume else 'starting'}")
            longer = resume and extend and cfg.train.t_max > checkpoint.read_config(run_dir).train.t_max
            runner.train(cfg, run_dir=run_dir, resume=resume, out=out, restart=not resume, new_budget=longer)
    return summarise(out_dir, runs, out)


def last_test(run_dir: Path) -> dict[str, Any] | None:
    """The latest test record of a run, reduced over seeds: ``t_env`` (the slowest seed's), ``seeds``,
    and the mean and std over seeds of the test win rate, return and FGSM win rate; None before
    the first test. A run still training reports where it is now."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    tests = [json.loads(line) for line in path.read_text().splitlines() if '"kind": "test"' in line]
    if not tests:
        return None
    test = tests[-1]
    row: dict[str, Any] = {"t_env": int(np.min(test["t_env"])), "seeds": len(test["t_env"])}
    for key in ("test_won_mean", "test_return_mean", "test_fgsm_won_mean"):
        if key in test:
            v = np.asarray(test[key], dtype=float)
            row[key] = float(v.mean())
            row[key + "_std"] = float(v.std())
    return row


def summarise(out_dir: Path, runs: list[SweepRun], out: TextIO | None | str = "stdout") -> list[dict[str, Any]]:
    """Final test results of every run in the sweep, mean ± std over seeds, as Markdown and JSON."""
    rows = []
    for r in runs:
        test = last_test(out_dir / r.name)
        if test is None:
            rows.append({"run": r.name, "env": r.env, "method": r.method, "mixer": r.mixer, "status": "missing"})
            continue
        t_max = checkpoint.read_config(out_dir / r.name).train.t_max
        # a run still training (here or in another process's share) is shown, never as finished
        status = "ok" if test["t_env"] >= t_max else "partial"
        rows.append({"run": r.name, "env": r.env, "method": r.method, "mixer": r.mixer, "status": status,
                     "t_max": t_max, **test})
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(rows, indent=2))
    lines = ["| run | seeds | env steps | won (clean) | won (FGSM) | return |", "|---|---|---|---|---|---|"]
    for row in rows:
        if row["status"] == "missing":
            lines.append(f"| {row['run']} | - | - | missing | - | - |")
            continue
        fg = f"{row['test_fgsm_won_mean']:.3f} ± {row['test_fgsm_won_mean_std']:.3f}" if "test_fgsm_won_mean" in row else "n/a"
        lines.append(
            f"| {row['run']} | {row['seeds']} | {row['t_env']:,}{'' if row['status'] == 'ok' else ' (partial)'} | {row['test_won_mean']:.3f} ± {row['test_won_mean_std']:.3f} "
            f"| {fg} | {row['test_return_mean']:.3f} ± {row['test_return_mean_std']:.3f} |"
        )
    table = "\n".join(lines) + "\n"
    (out_dir / "summary.md").write_text(table)
    _log(out, table)
    return rows


def _log(out: TextIO | None | str, line: str) -> None:
    out = sys.stdout if out == "stdout" else out  # resolved per call (tests replace sys.stdout)
    if out is not None:
        print(line, file=out, flush=True)
