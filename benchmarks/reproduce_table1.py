"""Reproduce the paper's Table 1: train every method with the paper's protocol, evaluate it under
the Table-1 attacks, and put our numbers next to the paper's, row by row.

Run from the repository root (the script puts the repository root on ``sys.path``)::

    python benchmarks/reproduce_table1.py --envs hallway_4x5x6              # the paper's protocol
    python benchmarks/reproduce_table1.py --envs lbf_3p1f tj_slow --t-max 500000
    python benchmarks/reproduce_table1.py --envs hallway_4x5x6 --share 0/2 &  # two processes split the runs
    python benchmarks/reproduce_table1.py --envs hallway_4x5x6 --share 1/2
    python benchmarks/reproduce_table1.py --envs hallway_4x5x6 --table-only # rebuild the tables from the runs
    python benchmarks/reproduce_table1.py --envs hallway_4x5x6 --methods qmix # train/evaluate one method;
                                                                           # the table keeps the others' rows

Per env: methods ``cromac``, ``cromac_no_robust``, ``full_comm``, ``qmix``, ``ame`` (``--methods``)
with the QMIX mixer, plus on ``lbf_3p1f`` ``cromac`` with the VDN and QPLEX mixers (Figure 5a;
``--no-figure5a`` leaves them out); 5 seeds (``--seeds``) vmapped per run; the paper's budget of env
steps per seed, ``train.t_max`` of the env's resolved config (the official hyperparameters,
``configs/<env>.yaml``), or a smaller one stated with ``--t-max`` (the report says which).

Training goes through ``cromac_jax.sweep`` (its run plan, configs and run-directory names) and
``runner.train``: a finished run is skipped, an interrupted one resumes from its last checkpoint,
so the script can be killed and restarted at any time. Progress: every chunk prints the run's own
line (env steps, steps/s, returns, ETA) and, at most every ``--progress-every`` seconds, a bar over
every run of this invocation with the overall training ETA.

Each run is evaluated as soon as it finishes training, and the env's report rebuilt, so results
land while the other runs train (a finished run not yet evaluated, e.g. one whose process was
killed, is evaluated at the end); at its last checkpoint, with ``evaluate.eval_grid`` (what
``cromac eval`` runs): natural, random, PGD and FGSM at 0.25, 0.5, 1, 2 and 4 x ``cromac.eps`` (the
budget ladder ``attacks.DEFAULT_BUDGETS`` standing for Table 1's FGSM (1), FGSM (2), FGSM, FGSM (3),
FGSM (4)), ``--episodes`` greedy episodes per seed (200 x 5 seeds = the paper's 1000), every
message channel attacked; ``eval_<step>.{md,csv,json}`` land in the run directory, and an existing
one with the same episodes is reused.

Outputs, in ``--results-dir`` (default ``benchmarks/results``), per env, named after the hardware
(``cromac_jax.bench.hardware_tag``): ``table1_<env>_<hardware>.md`` (our rows next to the paper's,
the differences, the checks of issue 7 -- the paper's ordering, its targets -- the runs with their
wall times, the figures), ``table1_<env>_<hardware>.json`` (the same as data) and the learning
curves ``table1_<env>_<hardware>_curves.png`` and ``..._budget.png`` (``cromac_jax.plot``). Wall
times are kept per run in ``<run dir>/table1_wall.json``, summed over the sessions that
trained and evaluated it and written after every chunk (a killed process loses at most its last
chunk's time; runs trained before this ledger existed show "?"). The runs go to ``--runs-dir`` (default
``runs/table1_<hardware>/<paper | t<t_max>>``). Every evaluated run is also recorded, small and
committable, in ``<results dir>/table1_runs/<hardware>/<runs dir name>/<run>/`` (``_table1_records``),
so a checkout without the run directories rebuilds the same report and adds its own runs to it
(a run recorded, or carried over from a report of before records, is not trained again there).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable, Collection, Sequence, TextIO

ROOT = Path(__file__).resolve().parents[1]
for _p in (str(ROOT / "benchmarks"), str(ROOT)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from cromac_jax import attacks, host_devices, sweep  # noqa: E402
from cromac_jax import bench as B  # noqa: E402
from cromac_jax.config import EARLIER_LOSS_REDUCTION, METHODS, ConfigError  # noqa: E402

import _table1_records as records  # noqa: E402

# ================================================================================ the paper's Table 1
PAPER_CITATION = (
    "Yuan L, et al. Robust multi-agent communication via multi-view message certification. "
    "Sci China Inf Sci, April 2024, Vol. 67, Iss. 4, 142102, Table 1: \"Average test win rates for CroMAC and "
    "AME under different message perturbation conditions. The results are averaged from 1000 test episodes "
    "among 5 random seeds, where FGSM (n) refers to methods under FGSM attack with different budgets.\""
)
COLUMNS: tuple[str, ...] = ("Natural", "Random", "PGD", "FGSM (1)", "FGSM (2)", "FGSM", "FGSM (3)", "FGSM (4)")
#: Table 1 as printed (mean±std over 5 seeds per column of ``COLUMNS``), keyed by our preset names.
#: The strings are the paper's rows verbatim, so they can be checked against its text.
PAPER_ROWS: dict[str, dict[str, str]] = {
    "hallway_4x5x6": {
        "CroMAC": "0.93±0.06 0.91±0.11 0.92±0.13 0.97±0.03 0.86±0.04 0.91±0.10 0.60±0.31 0.66±0.39",
        "AME": "0.98±0.01 0.93±0.04 0.43±0.20 0.66±0.34 0.61±0.34 0.62±0.31 0.36±0.10 0.10±0.20",
        "REC": "1.00±0.00 0.95±0.08 0.90±0.20 0.96±0.06 0.62±0.38 0.82±0.23 0.68±0.40 0.41±0.43",
    },
    "lbf_3p1f": {
        "CroMAC": "0.71±0.05 0.72±0.03 0.61±0.09 0.71±0.07 0.67±0.09 0.64±0.13 0.43±0.15 0.30±0.08",
        "AME": "0.77±0.04 0.72±0.04 0.58±0.11 0.63±0.09 0.56±0.02 0.47±0.03 0.36±0.10 0.29±0.04",
    },
    "tj_slow": {
        "CroMAC": "0.31±0.07 0.46±0.20 0.31±0.23 0.29±0.12 0.31±0.09 0.37±0.14 0.42±0.16 0.32±0.18",
        "AME": "0.12±0.07 0.13±0.03 0.15±0.06 0.13±0.06 0.13±0.06 0.12±0.06 0.08±0.02 0.13±0.06",
    },
    "smax_1o10b_vs_1r": {
        "CroMAC": "0.65±0.10 0.64±0.12 0.53±0.07 0.56±0.04 0.52±0.18 0.59±0.08 0.41±0.14 0.34±0.03",
        "AME": "0.38±0.12 0.52±0.24 0.51±0.17 0.44±0.13 0.45±0.20 0.38±0.02 0.44±0.19 0.43±0.07",
    },
}
PAPER_ENV_TITLES = {
    "hallway_4x5x6": "Hallway 4x5x6",
    "lbf_3p1f": "LBF 3p-1f",
    "tj_slow": "TJ slow",
    "smax_1o10b_vs_1r": "SMAC 1o10b vs 1r (ours: the SMAX stand-in, not StarCraft II)",
}
#: Our method -> its Table-1 row; methods absent here have no row in Table 1 (REC is not implemented).
PAPER_METHOD = {"cromac": "CroMAC", "ame": "AME"}
METHOD_TITLES = {"cromac": "CroMAC", "cromac_no_robust": "CroMAC w/o robust", "full_comm": "Full-Comm",
                 "qmix": "QMIX", "ame": "AME"}
TABLE1_ATTACKS = ("natural", "random", "pgd", "fgsm")
DEFAULT_METHODS = ("cromac", "cromac_no_robust", "full_comm", "qmix", "ame")
FIGURE5A_ENV, FIGURE5A_MIXERS = "lbf_3p1f", ("vdn", "qplex")
#: Issue 7's targets: the paper's hallway protocol (one method, 5 seeds) in under 30 minutes here,
#: CroMAC's natural win rate >= the paper's, and on hallway under PGD >= 0.9.
TARGET_RUN_MINUTES = 30.0
TARGET_HALLWAY_PGD = 0.9
WALL_FILE = "table1_wall.json"


def parse_cell(text: str) -> tuple[float, float]:
    mean, std = text.split("±")
    return float(mean), float(std)


def paper_row(env: str, method: str) -> list[tuple[float, float]] | None:
    row = PAPER_ROWS.get(env, {}).get(PAPER_METHOD.get(method, ""))
    return None if row is None else [parse_cell(c) for c in row.split()]


# ================================================================================ plan
def plan_runs(env: str, methods: Sequence[str], figure5a: bool = True) -> list[sweep.SweepRun]:
    """The runs of one env: every method with the QMIX mixer, plus Figure 5a's mixers on LBF 3p."""
    runs = sweep.plan([env], list(methods), ["qmix"])
    if figure5a and env == FIGURE5A_ENV and "cromac" in methods:
        runs += sweep.plan([env], ["cromac"], list(FIGURE5A_MIXERS))
    return runs


def report_runs(env: str, runs_dir: Path, methods: Sequence[str], figure5a: bool = True,
                elsewhere: Collection[str] = ()) -> list[sweep.SweepRun]:
    """The runs an env's report covers: this invocation's, plus every other run of the full
    protocol that already has a directory in ``runs_dir`` or results kept ``elsewhere`` (a record,
    an earlier report), so evaluating one finished method beside the trainers (``--methods
    full_comm``) adds its row to the table instead of replacing the table."""
    mine = plan_runs(env, methods, figure5a)
    full = plan_runs(env, DEFAULT_METHODS, figure5a)
    names, in_full = {r.name for r in mine}, {r.name for r in full}
    return ([r for r in full if r.name in names or r.name in elsewhere or (runs_dir / r.name).is_dir()]
            + [r for r in mine if r.name not in in_full])


def run_label(run: sweep.SweepRun) -> str:
    title = METHOD_TITLES.get(run.method, run.method)
    return title if run.mixer == "qmix" else f"{title} ({run.mixer.upper()} mixer)"


# ================================================================================ bookkeeping
def read_wall(run_dir: Path) -> dict[str, float]:
    path = run_dir / WALL_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def add_wall(run_dir: Path, key: str, seconds: float, new_session: bool = True) -> None:
    """Add ``seconds`` to ``key`` (train_s / eval_s) of the run's wall-time ledger; ``new_session``
    counts one more session that worked on it."""
    wall = read_wall(run_dir)
    wall[key] = wall.get(key, 0.0) + seconds
    if new_session:
        wall[key.replace("_s", "_sessions")] = wall.get(key.replace("_s", "_sessions"), 0) + 1
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / WALL_FILE).write_text(json.dumps(wall, indent=1))


def saved_steps(run_dir: Path) -> list[int]:
    from cromac_jax import checkpoint

    return checkpoint.all_steps(run_dir) if (run_dir / checkpoint.CHECKPOINT_DIR).is_dir() else []


def _fmt_time(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Progress:
    """A bar over every run of this invocation: env steps (summed over seeds) done of the total,
    with the training ETA from this session's rate. Steps a run had before this session (restored
    from its checkpoint, or made by another process) count as done but not towards the rate; with
    ``--share any/N`` the total is every run, shared by N processes assumed to go at this one's rate."""

    def __init__(self, total: int, out: TextIO | None, every: float, processes: int = 1):
        self.total, self.out, self.every, self.processes = total, out, every, processes
        self.done = self.session = 0
        self.known: dict[str, int] = {}
        self.t0, self.last = time.time(), 0.0
        self.name, self.index, self.count = "", 0, 0

    def count_steps(self, name: str, steps: int, this_session: bool) -> None:
        delta = steps - self.known.get(name, 0)
        self.known[name] = steps
        self.done += delta
        if this_session:
            self.session += delta

    def start_run(self, name: str, index: int, count: int, already: int) -> None:
        self.name, self.index, self.count = name, index, count
        self.count_steps(name, already, this_session=False)
        self.show(force=True)

    def chunk(self, record: dict[str, Any], t_max: int) -> None:
        self.count_steps(self.name, steps_within_budget(record["t_env"], t_max), this_session=True)
        self.show()

    def show(self, force: bool = False) -> None:
        if self.out is None or (not force and time.time() - self.last < self.every):
            return
        self.last = time.time()
        frac = self.done / max(self.total, 1)
        elapsed = time.time() - self.t0
        rate = self.session / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / (rate * self.processes) if rate > 0 else float("nan")
        bar = "#" * int(round(30 * frac)) + "." * (30 - int(round(30 * frac)))
        where = f" | run {self.index}/{self.count} {self.name}" if self.name else ""
        approx = f" ~{_fmt_time(eta)} over {self.processes} processes" if self.processes > 1 else f" {_fmt_time(eta)}"
        print(f"[table1 {bar}] {100 * frac:5.1f}% of {self.total:,} env steps{where} | elapsed {_fmt_time(elapsed)} "
              f"| training ETA{approx}", file=self.out, flush=True)


def steps_within_budget(t_env: Sequence[float], t_max: int) -> int:
    """A record's env steps summed over seeds, each counted up to the budget it trains to."""
    return int(sum(min(int(t), t_max) for t in t_env))


def resumed_steps(run_dir: Path, t_max: int, seeds: int) -> int:
    """Env steps, summed over seeds, of the state a run resumes from: seeds run at different rates,
    so the checkpoint's name (the slowest seed's step) undercounts; the train record written with
    that checkpoint has every seed's."""
    steps = saved_steps(run_dir)
    if not steps:
        return 0
    path = run_dir / "metrics.jsonl"
    if path.is_file():
        for line in reversed(path.read_text().splitlines()):
            rec = json.loads(line) if '"kind": "train"' in line else None
            if rec is not None and int(min(rec["t_env"])) == steps[-1]:
                return steps_within_budget(rec["t_env"], t_max)
    return min(steps[-1], t_max) * seeds


# ================================================================================ train + evaluate
def train_runs(runs_dir: Path, runs: list[sweep.SweepRun], seeds: int, overrides: list[str],
               out: TextIO | None, progress_every: float, processes: int = 1,
               after_each: Callable[[sweep.SweepRun], None] | None = None) -> None:
    """Train (or resume) every run that has not reached its budget; finished runs are skipped.
    ``after_each(run)`` follows each run this process finished training (its evaluation and the
    report), so results land while the other runs still train rather than only at the end."""
    from cromac_jax import runner

    cfgs = {r: sweep.run_config(r, overrides, seeds) for r in runs}  # every config is checked first
    total = sum(c.train.t_max * c.train.num_seeds for c in cfgs.values())
    progress = Progress(total, out, progress_every, processes)
    for r in runs:
        progress.count_steps(r.name, resumed_steps(runs_dir / r.name, cfgs[r].train.t_max, seeds), this_session=False)
    for i, r in enumerate(runs, 1):
        cfg, run_dir = cfgs[r], runs_dir / r.name
        done = functools.partial(sweep.finished, run_dir, cfg)
        with sweep.claim_unless_done(run_dir, done, f"[{i}/{len(runs)}] {r.name}", out) as todo:
            if not todo:
                continue
            steps = saved_steps(run_dir)
            _log(out, f"[{i}/{len(runs)}] {r.name}: {'resuming from ' + format(steps[-1], ',') if steps else 'starting'}")
            progress.start_run(r.name, i, len(runs), resumed_steps(run_dir, cfg.train.t_max, seeds))
            _train_one(runner, cfg, run_dir, bool(steps), out, progress)
        if after_each is not None and done():  # the claim is released: evaluation claims the run anew
            after_each(r)
    if progress.name:
        progress.show(force=True)


def _train_one(runner: Any, cfg: Any, run_dir: Path, resume: bool, out: TextIO | None, progress: "Progress") -> None:
    # The ledger grows after every chunk, so a process killed outright (SIGKILL, the end of a
    # session) loses at most one chunk of wall time rather than all of it.
    add_wall(run_dir, "train_s", 0.0)
    last = [time.time()]

    def on_chunk(rec: dict[str, Any]) -> None:
        now = time.time()
        add_wall(run_dir, "train_s", now - last[0], new_session=False)
        last[0] = now
        progress.chunk(rec, cfg.train.t_max)

    try:
        runner.train(cfg, run_dir=run_dir, resume=resume, out=out, on_chunk=on_chunk, restart=not resume)
    finally:
        add_wall(run_dir, "train_s", time.time() - last[0], new_session=False)


def run_status(run_dir: Path, finished: bool, evaluated: bool) -> str:
    """A run's place in the protocol. A run that is training but has not reached its first
    checkpoint (the first 100k steps) already has test records, so it is not "not started"."""
    if evaluated:
        return "evaluated"
    if finished:
        return "trained"
    if saved_steps(run_dir):
        return "partial"
    return "started, no checkpoint yet" if (run_dir / "metrics.jsonl").is_file() else "not started"


def eval_path(run_dir: Path) -> Path | None:
    steps = saved_steps(run_dir)
    return run_dir / f"eval_{steps[-1]}.json" if steps else None


def has_table1_eval(path: Path | None, episodes: int, budgets: Sequence[float]) -> bool:
    """Whether ``path`` is an eval table of the Table-1 grid at these episodes and budgets."""
    if path is None or not path.is_file():
        return False
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    attacked = {r["attack"] for r in data.get("rows", [])}
    return (data.get("episodes_per_seed") == episodes and data.get("attack_own", True)
            and [float(b) for b in data.get("budgets", [])] == [float(b) for b in budgets]
            and set(TABLE1_ATTACKS) <= attacked)


def evaluate_runs(runs_dir: Path, runs: list[sweep.SweepRun], seeds: int, overrides: list[str], episodes: int,
                  budgets: Sequence[float], out: TextIO | None) -> None:
    """The Table-1 grid at the last checkpoint of every finished run (reused when already there)."""
    from cromac_jax import evaluate as ev

    for r in runs:
        run_dir = runs_dir / r.name
        cfg = sweep.run_config(r, overrides, seeds)
        if not sweep.finished(run_dir, cfg):
            continue
        done = functools.partial(has_table1_eval, eval_path(run_dir), episodes, budgets)
        note = f"Table-1 evaluation at step {saved_steps(run_dir)[-1]:,} already there, reused"
        with sweep.claim_unless_done(run_dir, done, r.name, out, note, "held by another process, not evaluated here") as todo:
            if not todo:
                continue
            _log(out, f"{r.name}: evaluating {episodes} episodes x {cfg.train.num_seeds} seeds under "
                      f"{', '.join(TABLE1_ATTACKS)} at budgets {', '.join(f'{b:g}' for b in budgets)} x eps")
            t0 = time.time()
            run = ev.load_run(run_dir)
            ev.eval_grid(run, TABLE1_ATTACKS, budgets, episodes, out=out)
            add_wall(run_dir, "eval_s", time.time() - t0)


# ================================================================================ the table
def our_row(path: Path | None) -> dict[str, Any] | None:
    """Our Table-1 cells of a run from an eval table (the newest, at its last checkpoint):
    {column: (mean, std, per-seed)}."""
    if path is None or not path.is_file():
        return None
    data = json.loads(path.read_text())
    cells = {r["table1"]: (r["win_mean"], r["win_std"], r["per_seed"]["win"]) for r in data["rows"]}
    return {"cells": cells, "step": data["step"], "seeds": data["seeds"], "episodes_per_seed": data["episodes_per_seed"],
            "config_eps": data["config_eps"], "certified": data.get("certified_at_config_eps", {}).get("mean"),
            "state_latent": (data.get("state_latent") or {}).get("win_mean"),
            "budgets": data.get("budgets"), "eval_json": _shown(path)}


def _cell(mean_std: tuple[float, float] | None) -> str:
    return "—" if mean_std is None else f"{mean_std[0]:.2f} ± {mean_std[1]:.2f}"


def _diff(ours: tuple | None, paper: tuple | None) -> str:
    return "—" if ours is None or paper is None else f"{ours[0] - paper[0]:+.2f}"


def checks(env: str, table: dict[str, dict[str, Any]], run_rows: list[dict[str, Any]], paper_budget: bool,
           seeds: int) -> list[dict[str, Any]]:
    """Issue 7's targets on this env: CroMAC natural >= the paper's; on hallway CroMAC under PGD >= 0.9;
    the paper's ordering (CroMAC above CroMAC w/o robust and above AME under PGD and under FGSM);
    the paper's hallway protocol (one method, 5 seeds) in under 30 minutes of wall time here."""
    out = []

    def mean(method: str, col: str) -> float | None:
        row = table.get(method)
        return None if row is None or col not in row["cells"] else row["cells"][col][0]

    paper = paper_row(env, "cromac")
    ours_nat = mean("cromac", "Natural")
    if paper is not None:
        target = paper[0][0]
        out.append(_check(f"CroMAC natural win rate >= the paper's {target:.2f}", ours_nat, target))
    if env == "hallway_4x5x6":
        out.append(_check(f"CroMAC win rate under PGD >= {TARGET_HALLWAY_PGD}", mean("cromac", "PGD"), TARGET_HALLWAY_PGD))
    for other in ("cromac_no_robust", "ame"):
        for col in ("PGD", "FGSM"):
            a, b = mean("cromac", col), mean(other, col)
            out.append(_check(f"ordering: CroMAC above {METHOD_TITLES[other]} under {col}", a, b,
                              strict=True, other=f"{METHOD_TITLES[other]} {b:.2f}" if b is not None else None))
    if env == "hallway_4x5x6":
        for r in run_rows:
            if r["method"] == "cromac" and r["mixer"] == "qmix":
                minutes = None if r["train_s"] is None else (r["train_s"] + (r["eval_s"] or 0.0)) / 60
                c = {"check": f"the paper's protocol for one method (CroMAC, 5 seeds) in < {TARGET_RUN_MINUTES:.0f} min "
                              "of wall time (training + evaluation), minutes",
                     "ours": minutes, "target": TARGET_RUN_MINUTES, "other": None,
                     "margin": None if minutes is None else TARGET_RUN_MINUTES - minutes,
                     "status": "not run yet" if minutes is None else "pass" if minutes < TARGET_RUN_MINUTES else "MISS"}
                if minutes is not None and not r.get("status", "evaluated").startswith("evaluated"):
                    # an unfinished run's time so far is a lower bound: it can only confirm a miss
                    c["check"] += ", so far (run unfinished)"
                    c["status"] = "MISS" if minutes >= TARGET_RUN_MINUTES else "in progress"
                if minutes is not None and not (paper_budget and seeds == 5):
                    c["status"] = "n/a: not the paper's budget and 5 seeds"
                out.append(c)
    return out


def _check(what: str, ours: float | None, target: float | None, strict: bool = False, other: str | None = None) -> dict[str, Any]:
    if ours is None or target is None:
        return {"check": what, "ours": ours, "target": target, "margin": None, "status": "not run yet"}
    ok = ours > target if strict else ours >= target
    return {"check": what, "ours": ours, "target": target, "margin": ours - target, "status": "pass" if ok else "MISS",
            "other": other}


def run_source(run_dir: Path, rec_dir: Path, protocol: dict[str, Any]) -> tuple[Path, list[int], str]:
    """Where a run's results are read from: ``(directory, checkpoint steps, source)``. The run
    directory where there is no record of this protocol, or where it is evaluated at least as far;
    else the record (trained in another checkout, or this run is training or evaluating again)."""
    steps = saved_steps(run_dir)
    rec_step = records.recorded_step(rec_dir, protocol)
    if rec_step is None or (steps and steps[-1] >= rec_step and has_table1_eval(
            run_dir / f"eval_{steps[-1]}.json", protocol["episodes_per_seed"], protocol["budgets"])):
        return run_dir, steps, "run dir"
    return rec_dir, [rec_step], "record"


def _shown(path: Path) -> str:
    """A path as a report shows it: relative to the repository where it is inside it, so a report
    rebuilt in another checkout reads the same."""
    return str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


def build_report(env: str, runs_dir: Path, runs: list[sweep.SweepRun], protocol: dict[str, Any],
                 results_dir: Path, tag: str, hw: dict[str, Any], session_s: float, out: TextIO | None,
                 command: str = "") -> dict[str, Any]:
    """Write ``table1_<env>_<tag>.{md,json}`` and the PNGs from whatever runs are finished now,
    recording each evaluated run (``_table1_records``) so the report can be rebuilt without it.
    ``protocol``: seeds, t_max, episodes_per_seed, budgets, overrides, paper_budget (``main``'s)."""
    from cromac_jax import plot

    stem = f"table1_{env}_{tag}"
    rec_root = records.records_root(results_dir, tag, runs_dir)
    seeds, overrides, t_max = protocol["seeds"], protocol["overrides"], protocol["t_max"]
    episodes, budgets, paper_budget = protocol["episodes_per_seed"], protocol["budgets"], protocol["paper_budget"]
    protocol = {**protocol, "env_label": plot.env_label(sweep.run_config(runs[0], overrides, seeds)) if runs else env,
                "attacks": list(TABLE1_ATTACKS), "runs_dir": _shown(runs_dir), "records_dir": _shown(rec_root)}
    carried = records.carried_rows(results_dir / f"{stem}.json", protocol)
    table: dict[str, dict[str, Any]] = {}
    run_rows = []
    sources: dict[str, Path] = {}
    for r in runs:
        run_dir, rec_dir = runs_dir / r.name, rec_root / r.name
        key = records.table_key(r.method, r.mixer, r.name)
        cfg = sweep.run_config(r, overrides, seeds)
        src, steps, source = run_source(run_dir, rec_dir, protocol)
        finished = sweep.at_budget(steps, cfg)
        evaluated = src / f"eval_{steps[-1]}.json" if finished else None
        ours = our_row(evaluated) if has_table1_eval(evaluated, episodes, budgets) else None
        if source == "run dir" and ours is not None:
            records.save(run_dir, rec_dir, steps[-1], evaluated, protocol)
        if ours is None and r.name in carried:  # until the run is evaluated again, here or in a record
            old_row, cells = carried[r.name]  # paths as this checkout shows them (older reports kept them absolute)
            table[key] = {**cells, **({"eval_json": _shown(Path(cells["eval_json"]))} if cells.get("eval_json") else {})}
            run_rows.append({**old_row, "status": "evaluated (carried over)", "source": "previous report",
                             **({"run_dir": _shown(Path(old_row["run_dir"]))} if old_row.get("run_dir") else {})})
            continue
        sources[r.name] = src
        wall = read_wall(src)
        if ours is not None:
            table[key] = ours
        run_rows.append({"run": r.name, "method": r.method, "mixer": r.mixer, "label": run_label(r),
                         "status": run_status(run_dir, finished, ours is not None) if source == "run dir"
                         else "evaluated (record)" if ours is not None else "trained (record)",
                         "source": source,
                         "env_steps": steps[-1] if steps else 0, "t_max": t_max, "seeds": cfg.train.num_seeds,
                         "certified": ours["certified"] if ours else None, "config_eps": cfg.cromac.eps,
                         "state_latent": ours.get("state_latent") if ours else None,
                         "robust_start": cfg.cromac.robust_start if r.method == "cromac" else None,
                         "train_s": wall.get("train_s"), "eval_s": wall.get("eval_s"), "run_dir": _shown(src),
                         "last_test": sweep.last_test(src)})

    # ---- figures (the carried-over runs' own, drawn when they trained, are kept before new ones replace them)
    results_dir.mkdir(parents=True, exist_ok=True)
    figures: dict[str, str] = (records.keep_earlier_figures(results_dir, results_dir / f"{stem}.json", stem)
                               if any(r.get("source") == "previous report" for r in run_rows) else {})
    curves, evals = [], []
    for src in sources.values():
        try:
            curves.append(plot.load_curves(src))
        except Exception:  # noqa: BLE001 - a run not started yet has nothing to draw
            continue
        e = plot.load_budget_curves(src)
        if e is not None:
            evals.append(e)
    if curves:
        figures["curves"] = plot.save_png(plot.learning_curves_figure(curves, "won"), results_dir / f"{stem}_curves.png").name
    if evals:
        figures["budget"] = plot.save_png(plot.budget_figure(evals, "won"), results_dir / f"{stem}_budget.png").name

    check_rows = checks(env, table, run_rows, paper_budget, seeds)
    payload = {
        "benchmark": "reproduce_table1", "env": env, "hardware": hw, "paper": {
            "citation": PAPER_CITATION, "columns": list(COLUMNS),
            "rows": {m: [parse_cell(c) for c in row.split()] for m, row in PAPER_ROWS.get(env, {}).items()}},
        "protocol": protocol,
        "ours": {k: {**v, "cells": {c: list(x) for c, x in v["cells"].items()}} for k, v in table.items()},
        "runs": run_rows, "checks": check_rows, "figures": figures, "command": command,
        "wall": {"train_s": _sum(r["train_s"] for r in run_rows), "eval_s": _sum(r["eval_s"] for r in run_rows),
                 "this_session_s": session_s},
    }
    md = render_markdown(payload, runs)
    (results_dir / f"{stem}.md").write_text(md, encoding="utf-8")
    (results_dir / f"{stem}.json").write_text(json.dumps(B.json_safe(payload), indent=1) + "\n", encoding="utf-8")
    _log(out, "\n" + md)
    _log(out, f"wrote {results_dir / (stem + '.md')}, {stem}.json" + "".join(f", {f}" for f in figures.values()))
    return payload


def _latest(test: dict[str, Any] | None) -> str:
    if not test:
        return "—"
    fgsm = f"{test['test_fgsm_won_mean']:.2f}" if "test_fgsm_won_mean" in test else "—"
    return f"{test['test_won_mean']:.2f} / {fgsm} at {test['t_env']:,}" if "test_won_mean" in test else "—"


def _sum(values: Any) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) if vals else None


def render_markdown(p: dict[str, Any], runs: list[sweep.SweepRun]) -> str:
    env, hw, proto = p["env"], p["hardware"], p["protocol"]
    reduction = proto.get("loss_reduction") or EARLIER_LOSS_REDUCTION  # a report written before the key
    title = PAPER_ENV_TITLES.get(env, env)
    eps = next((r["config_eps"] for r in p["runs"]), None)
    label = proto.get("env_label", env)
    changed = "" if label == env else f"; **env changed by overrides: `{label}`**, not the paper's"
    lines = [f"# Table 1 reproduction: {title} (`{env}`) on {hw['tag']}{changed}", ""]
    budget = (f"{proto['t_max']:,} env steps per seed (the paper's budget: `train.t_max` of the env's official config)"
              if proto["paper_budget"] else
              f"{proto['t_max']:,} env steps per seed (a budget stated with `--t-max`, NOT the paper's)")
    lines += [
        f"**Paper:** {PAPER_CITATION}", "",
        f"**Ours:** {proto['seeds']} seeds per method, {budget}; greedy test win rate over {proto['episodes_per_seed']} "
        f"episodes per seed ({proto['episodes_per_seed'] * proto['seeds']:,} per method), mean ± std over seeds, every "
        f"message channel attacked (the agent's own hidden state included, as the official code). Budgets are multiples "
        f"of `cromac.eps` = {eps:g}: FGSM (1), FGSM (2), FGSM, FGSM (3), FGSM (4) = 0.25, 0.5, 1, 2, 4 x eps; Random "
        f"and PGD (10 steps) at 1 x eps. The paper's FGSM (n) budgets are in its Appendix D, which we do not have: "
        f"this ladder is our reading (`cromac_jax/attacks.py`)." if eps is not None else "",
        "",
        f"Measured on {hw['cpu_model']} ({hw['cpu_cores']} cores), jax {hw['jax_version']}, backend `{hw['jax_backend']}`, "
        f"device `{hw['device_kind']}` x{hw['device_count']}, load average {hw['load_average']} at the report, "
        f"{hw['date']}."
        + (f" Config overrides on every run: `{' '.join(proto['overrides'])}`." if proto["overrides"] else "")
        + f" Auxiliary losses averaged as `cromac.loss_reduction={reduction}`"
        + (" (the runs trained before the official reduction became the default)." if reduction == EARLIER_LOSS_REDUCTION else "."),
        "",
    ]
    header = ["method", "", *COLUMNS]
    body = []
    shown_paper = set()
    for r in runs:
        key = records.table_key(r.method, r.mixer, r.name)
        ours = p["ours"].get(key)
        label = run_label(r) + ("" if r.mixer != "qmix" or r.method in PAPER_METHOD else " *")
        body.append([f"{label} (`{r.method}`{'' if r.mixer == 'qmix' else ', ' + r.mixer})", "ours",
                     *[_cell(ours["cells"].get(c)[:2] if ours and c in ours["cells"] else None) for c in COLUMNS]])
        paper = paper_row(env, r.method) if r.mixer == "qmix" else None
        if paper is not None:
            shown_paper.add(PAPER_METHOD[r.method])
            body.append(["", "paper", *[_cell(x) for x in paper]])
            body.append(["", "ours − paper",
                         *[_diff(ours["cells"].get(c) if ours else None, x) for c, x in zip(COLUMNS, paper, strict=True)]])
    for name, row in PAPER_ROWS.get(env, {}).items():
        if name not in shown_paper:
            body.append([f"{name} (not implemented here)" if name == "REC" else name, "paper",
                         *[_cell(parse_cell(c)) for c in row.split()]])
    lines += ["## Win rates", "", B.markdown_table(header, body), ""]
    if env not in PAPER_ROWS:
        lines += ["Table 1 has no row for this env: our numbers only.", ""]
    late = [r for r in p["runs"] if r["robust_start"] is not None and r["robust_start"] >= r["t_max"]]
    if late:
        lines += [f"**Warning:** CroMAC's robust training starts at `cromac.robust_start` = {late[0]['robust_start']:,} env "
                  f"steps, at or beyond this budget of {late[0]['t_max']:,}: its robust loss never ran, so these CroMAC rows "
                  "are CroMAC w/o robust training. Scale it with the budget (e.g. `cromac.robust_start=...`).", ""]
    lines += ["\\* not a row of Table 1 (the paper shows these methods in Figure 3 / Figure 5a as curves only; "
              "Full-Comm and QMIX there are tested without perturbation, here under the same attacks as the rest; "
              "QMIX reads no messages, so attacks cannot change it). \"—\": not run yet, or no paper number.", ""]
    lines += ["## Checks (issue 7 targets)", "",
              B.markdown_table(["check", "ours", "target / other", "margin", "result"],
                               [[c["check"], "—" if c["ours"] is None else f"{c['ours']:.2f}",
                                 c.get("other") or ("—" if c["target"] is None else f"{c['target']:.2f}"),
                                 "—" if c["margin"] is None else f"{c['margin']:+.2f}", c["status"]] for c in p["checks"]]),
              ""]
    lines += ["## Runs", "",
              B.markdown_table(["run", "status", "env steps", "seeds", "latest test: natural / FGSM", "certified @ eps",
                                "natural on state latent", "train wall", "eval wall"],
                               [[r["run"], r["status"], f"{r['env_steps']:,} / {r['t_max']:,}", r["seeds"], _latest(r.get("last_test")),
                                 "—" if r["certified"] is None else f"{r['certified']:.3f}",
                                 "—" if r.get("state_latent") is None else f"{r['state_latent']:.2f}",
                                 _fmt_time(r["train_s"]), _fmt_time(r["eval_s"])] for r in p["runs"]]),
              "",
              "latest test: the last in-training test (20 greedy episodes per seed, FGSM at eps), mean over seeds, at "
              "the env steps shown: progress of runs still training, not Table-1 numbers.",
              "",
              *([f"evaluated (record): trained and evaluated in another checkout; read from its record in "
                 f"`{proto['records_dir']}` (`benchmarks/_table1_records.py`).", ""]
                if any(r.get("source") == "record" for r in p["runs"]) else []),
              *(["evaluated (carried over): evaluated where no record of it is kept (before records existed); its row is the previous "
                 "report's, and its curves are only in the figures drawn when it was trained (`*_earlier.png`): its "
                 "metrics were not kept.", ""]
                if any(r.get("source") == "previous report" for r in p["runs"]) else []),
              f"Wall time: training {_fmt_time(p['wall']['train_s'])}, evaluation {_fmt_time(p['wall']['eval_s'])} (sums over "
              f"the sessions that ran them, compile included); this session {_fmt_time(p['wall']['this_session_s'])}. "
              f"certified @ eps: fraction of decisions whose greedy action IBP proves unchanged at the config eps. "
              f"natural on state latent (CroMAC methods): the win rate of the same Q head acting on the state latent "
              f"instead of the PoE of messages; far above Natural, the message encoder is what fails.", ""]
    if p["figures"]:
        lines += ["## Figures", ""]
        if "curves" in p["figures"]:
            lines += [f"![learning curves]({p['figures']['curves']})", "",
                      "Test win rate during training (natural solid, FGSM at eps dashed), mean ± standard error over seeds.", ""]
        if "budget" in p["figures"]:
            lines += [f"![win rate vs budget]({p['figures']['budget']})", "", "Win rate against the attack budget.", ""]
        for kind in ("curves", "budget"):
            if f"{kind}_earlier" in p["figures"]:
                lines += [f"![{kind} of the carried-over runs]({p['figures'][kind + '_earlier']})", "",
                          f"The {'learning curves' if kind == 'curves' else 'win rate against the attack budget'} of "
                          "the carried-over runs, as drawn when they were trained (their data was not kept).", ""]
    lines += [f"Runs: `{proto['runs_dir']}`. Reproduce (resumable): `{p['command']}`.", ""]
    return "\n".join(lines)


# ================================================================================ command line
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--envs", nargs="+", default=["hallway_4x5x6"],
                   help="env presets (Table 1 has hallway_4x5x6 lbf_3p1f tj_slow smax_1o10b_vs_1r)")
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), help="methods (default: %(default)s)")
    p.add_argument("--no-figure5a", dest="figure5a", action="store_false",
                   help="leave out cromac with the VDN and QPLEX mixers on lbf_3p1f (Figure 5a)")
    p.add_argument("--seeds", type=int, default=5, help="seeds per run, vmapped (default: 5, the paper's)")
    p.add_argument("--t-max", dest="t_max", type=int, default=None,
                   help="env steps per seed (default: the paper's budget, train.t_max of the env's config)")
    p.add_argument("--episodes", type=int, default=200, help="test episodes per seed (default 200: 1000 over 5 seeds)")
    p.add_argument("--budgets", nargs="+", type=float, default=list(attacks.DEFAULT_BUDGETS),
                   help="FGSM budgets as multiples of cromac.eps (default: %(default)s = FGSM (1), (2), FGSM, (3), (4))")
    p.add_argument("--runs-dir", dest="runs_dir", type=Path, default=None,
                   help="where the runs go (default: runs/table1_<hardware>/<paper | t<t_max>>)")
    p.add_argument("--results-dir", dest="results_dir", type=Path, default=ROOT / "benchmarks" / "results",
                   help="where the tables and figures go (default: benchmarks/results)")
    p.add_argument("--share", default="0/1", help="I/N: train and evaluate only every N-th run starting at I; "
                   "any/N: one of N processes that each take the next run no other process holds")
    p.add_argument("--table-only", dest="table_only", action="store_true", help="train and evaluate nothing: rebuild the tables")
    p.add_argument("--progress-every", dest="progress_every", type=float, default=60.0,
                   help="seconds between overall progress lines (default 60)")
    p.add_argument("--cpu-devices", dest="cpu_devices", default="auto", metavar="auto|off|N",
                   help="split a CPU host into devices for the seeds, as `cromac train --cpu-devices` (default auto: "
                        "from the seed count and this process's share of the cores, cores / N of --share I/N)")
    p.add_argument("overrides", nargs="*", help="section.key=value config overrides for every run (e.g. for a smoke test)")
    args = p.parse_args(argv)
    import envs

    for name in args.envs:
        if name not in envs.preset_names():
            p.error(f"unknown environment {name!r}; registered: {', '.join(envs.preset_names())}")
    for m in args.methods:
        if m not in METHODS:
            p.error(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
    if args.seeds < 1 or args.episodes < 1 or (args.t_max is not None and args.t_max < 1):
        p.error("--seeds, --episodes and --t-max must be >= 1")
    try:
        args.share_index, args.share_count = sweep.parse_share(args.share)
    except ConfigError as e:
        p.error(str(e))
    return args


def main(argv: Sequence[str] | None = None, out: TextIO | None = sys.stdout) -> dict[str, dict[str, Any]]:
    args = parse_args(argv)
    t0 = time.time()
    try:  # before anything starts a JAX backend (the hardware tag names the device)
        n = host_devices.apply(args.cpu_devices, args.seeds, processes=args.share_count)
    except ConfigError as e:
        raise SystemExit(f"reproduce_table1: error: {e}") from None
    if n is not None:
        _log(out, f"{args.seeds} seeds per run over {n} CPU devices (--cpu-devices {args.cpu_devices})")
    tag = B.hardware_tag()
    overrides = list(args.overrides) + ([f"train.t_max={args.t_max}"] if args.t_max is not None else [])
    runs_dir = args.runs_dir or ROOT / "runs" / f"table1_{tag}" / ("paper" if args.t_max is None else f"t{args.t_max}")
    rec_root = records.records_root(args.results_dir, tag, runs_dir)

    def report_json(env: str) -> Path:
        return args.results_dir / f"table1_{env}_{tag}.json"
    try:
        attacks_budgets = list(args.budgets)
        from cromac_jax.evaluate import check_budgets

        check_budgets(attacks_budgets)
        plans = {env: plan_runs(env, args.methods, args.figure5a) for env in args.envs}
        for runs in plans.values():  # every config is checked before anything trains
            for r in runs:
                sweep.run_config(r, overrides, args.seeds)
        first = {env: sweep.run_config(plans[env][0], overrides, args.seeds) for env in args.envs}
        protocols = {env: {"seeds": args.seeds, "t_max": first[env].train.t_max,
                           "paper_budget": args.t_max is None, "episodes_per_seed": args.episodes,
                           "budgets": attacks_budgets, "overrides": overrides,
                           "loss_reduction": first[env].cromac.loss_reduction}
                     for env in args.envs}
        for env in args.envs:  # before anything trains: results of another protocol may exist only here
            records.refuse_to_drop(report_json(env), protocols[env], args.results_dir / records.RECORDS_DIR / tag)
            records.refuse_to_replace(rec_root, protocols[env],
                                      [r.name for r in plan_runs(env, DEFAULT_METHODS, args.figure5a)])
    except ConfigError as e:
        raise SystemExit(f"reproduce_table1: error: {e}") from None
    for env in args.envs:
        cfg = sweep.run_config(sweep.SweepRun(env, "cromac", "qmix"), overrides, args.seeds)
        if "cromac" in args.methods and cfg.cromac.robust_start >= cfg.train.t_max:
            _log(out, f"WARNING: on {env} cromac.robust_start={cfg.cromac.robust_start:,} >= t_max={cfg.train.t_max:,}: "
                      "CroMAC's robust training would never start; pass cromac.robust_start=<fewer steps> to scale it")
    every = [r for env in args.envs for r in plans[env]]
    mine = sweep.my_share(every, args.share_index, args.share_count)
    _log(out, f"# Table 1 reproduction on {tag}: {', '.join(args.envs)}; {len(every)} runs"
              + (f", this process's share {args.share}: {len(mine)}" if args.share_count > 1 else "")
              + f"; {args.seeds} seeds each; runs in {runs_dir}")

    def kept(env: str) -> set[str]:
        return records.kept_runs(rec_root, report_json(env), protocols[env])

    # A run evaluated in another checkout (a record, or a row carried over) is not trained again
    # where this checkout has no run directory of it; one that has, resumes as any other.
    elsewhere = {env: {n for n in kept(env) if not saved_steps(runs_dir / n)} for env in args.envs}
    for r in mine if not args.table_only else []:
        if r.name in elsewhere[r.env]:
            how = (f"its record {_shown(rec_root / r.name)}: delete it to train the run anew"
                   if records.recorded_step(rec_root / r.name, protocols[r.env]) is not None else
                   f"its row in {_shown(report_json(r.env))}, carried over from before records")
            _log(out, f"{r.name}: evaluated in another checkout, not trained again (kept in {how})")
    mine = [r for r in mine if r.name not in elsewhere[r.env]]
    hw = B.hardware_info()

    def report(env: str) -> dict[str, Any]:
        runs = report_runs(env, runs_dir, args.methods, args.figure5a, elsewhere=kept(env))
        methods = list(dict.fromkeys(r.method for r in runs))
        return build_report(env, runs_dir, runs, protocols[env], args.results_dir, tag, hw, time.time() - t0, out,
                            command=reproduce_command(args, env, methods))

    def evaluate_and_report(run: sweep.SweepRun) -> None:
        evaluate_runs(runs_dir, [run], args.seeds, overrides, args.episodes, attacks_budgets, out)
        report(run.env)

    if not args.table_only:
        sharing = args.share_count if args.share_index is sweep.ANY else 1
        train_runs(runs_dir, mine, args.seeds, overrides, out, args.progress_every, sharing, evaluate_and_report)
        evaluate_runs(runs_dir, mine, args.seeds, overrides, args.episodes, attacks_budgets, out)
        sweep.summarise(runs_dir, every, out=None)  # the sweep's own summary.md / summary.json
    reports = {env: report(env) for env in args.envs}
    _log(out, f"done in {_fmt_time(time.time() - t0)}")
    return reports


def reproduce_command(args: argparse.Namespace, env: str, methods: Sequence[str]) -> str:
    """The command that trains, evaluates and tabulates the report's ``methods`` on ``env`` as this
    invocation does."""
    cmd = ["python", "benchmarks/reproduce_table1.py", "--envs", env]
    if list(methods) != list(DEFAULT_METHODS):
        cmd += ["--methods", *methods]
    if not args.figure5a and env == FIGURE5A_ENV:
        cmd.append("--no-figure5a")
    cmd += ["--seeds", str(args.seeds)]
    if args.t_max is not None:
        cmd += ["--t-max", str(args.t_max)]
    if args.episodes != 200:
        cmd += ["--episodes", str(args.episodes)]
    if [float(b) for b in args.budgets] != list(attacks.DEFAULT_BUDGETS):
        cmd += ["--budgets", *(f"{b:g}" for b in args.budgets)]
    return shlex.join(cmd + list(args.overrides))


def _log(out: TextIO | None, line: str) -> None:
    if out is not None:
        print(line, file=out, flush=True)


if __name__ == "__main__":
    from cromac_jax.stopping import TrainingStopped

    try:
        main()
    except TrainingStopped as e:  # Ctrl-C / SIGTERM: the run saved a checkpoint; the same command continues
        print("reproduce_table1: stopped; rerun the same command to continue", file=sys.stderr)
        sys.exit(e.exit_code)
