"""Keep a Table-1 run's results after its run directory is gone.

A run directory holds checkpoints with the replay buffer (tens to hundreds of MB per run), so it is
not committed, and a fresh checkout has none: rebuilding a report there would drop every row
trained in an earlier session. What a report reads of a finished, evaluated run is small, so it is
kept beside the report as a *record* (``benchmarks/results/table1_runs/<hardware>/<paper |
t<t_max>>/<run>/``): ``config.yaml``, the test rows of ``metrics.jsonl``, the newest Table-1
``eval_<step>.{json,md}``, ``table1_wall.json`` and ``record.json`` (the step and the protocol it
was evaluated under). A record reads like a run directory to ``cromac_jax.plot`` and to the report,
so one code path draws and tabulates both.

Reports written before records existed keep their rows in their JSON only: ``carried_rows`` takes
those rows back for runs that have no evaluated run directory or record, so a rebuilt report keeps
them (without learning curves, whose data was not kept: their old figures are kept instead), and
``refuse_to_drop`` stops a report of another protocol from overwriting the only copy.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable

from cromac_jax.config import EARLIER_LOSS_REDUCTION, ConfigError  # what runs recorded before the key trained with

RECORD_FILE = "record.json"
RECORDS_DIR = "table1_runs"
#: The run-directory files a record copies whole; metrics.jsonl is filtered to its test rows.
COPIED = ("config.yaml", "table1_wall.json")
#: What makes two Table-1 results comparable: a record or a carried row of another protocol is not used.
PROTOCOL_KEYS = ("t_max", "seeds", "episodes_per_seed", "budgets", "overrides", "loss_reduction")


def table_key(method: str, mixer: str, run: str) -> str:
    """A run's key in a report's table (``ours``): its method with the paper's QMIX mixer, else its run name."""
    return method if mixer == "qmix" else run


def records_root(results_dir: Path, tag: str, runs_dir: Path) -> Path:
    """Where the records of the runs in ``runs_dir`` go: one folder per hardware and budget, as the runs."""
    return results_dir / RECORDS_DIR / tag / runs_dir.name


def _protocol(protocol: dict[str, Any]) -> dict[str, Any]:
    """The comparable part of a protocol: overrides as the config reads them (the last of a key
    wins, order does not matter), budgets as floats."""
    out = {k: protocol.get(k) for k in PROTOCOL_KEYS}
    out["loss_reduction"] = out["loss_reduction"] or EARLIER_LOSS_REDUCTION  # a protocol written before the key
    last = dict(str(o).split("=", 1) if "=" in str(o) else (str(o), "") for o in out["overrides"] or [])
    out["overrides"] = sorted(f"{k}={v}" for k, v in last.items() if k != "cromac.loss_reduction")  # its own key
    out["budgets"] = None if out["budgets"] is None else [float(b) for b in out["budgets"]]
    return out


def recorded_step(rec_dir: Path, protocol: dict[str, Any] | None = None) -> int | None:
    """The checkpoint step a record was taken at; None where there is no readable record, or
    (given ``protocol``) it was evaluated under another protocol."""
    try:
        data = json.loads((rec_dir / RECORD_FILE).read_text())
        step = int(data["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    recorded = dict(data.get("protocol") or {})
    if "budgets" not in recorded:  # records from before the budgets were part of the protocol
        try:
            recorded["budgets"] = json.loads((rec_dir / f"eval_{step}.json").read_text()).get("budgets")
        except (OSError, ValueError):
            pass
    if protocol is not None and _protocol(recorded) != _protocol(protocol):
        return None
    return step


def _files(run_dir: Path, eval_json: Path) -> dict[str, bytes]:
    files = {name: (run_dir / name).read_bytes() for name in COPIED if (run_dir / name).is_file()}
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        tests = [line for line in metrics.read_text().splitlines() if '"kind": "test"' in line]
        files["metrics.jsonl"] = "".join(line + "\n" for line in tests).encode()
    for src in (eval_json, eval_json.with_suffix(".md")):
        if src.is_file():
            files[src.name] = src.read_bytes()
    return files


def save(run_dir: Path, rec_dir: Path, step: int, eval_json: Path, protocol: dict[str, Any]) -> None:
    """Record a finished run evaluated in ``eval_json``.

    An unchanged record is left alone, so rebuilding a report leaves git clean and two ``--share``
    processes rebuilding at once write nothing. A new one is built in a folder of this process's own
    and renamed into place: a reader sees the old record, for an instant none, or the new one, never
    half of one (a process killed between the two renames leaves the old one in ``.<run>.old<pid>``)."""
    files = _files(run_dir, eval_json)
    files[RECORD_FILE] = (json.dumps({"step": int(step), "run": run_dir.name, "protocol": _protocol(protocol)},
                                     indent=1) + "\n").encode()
    if rec_dir.is_dir() and {p.name for p in rec_dir.iterdir()} == set(files) and \
            all((rec_dir / name).read_bytes() == data for name, data in files.items()):
        return
    rec_dir.parent.mkdir(parents=True, exist_ok=True)
    fresh, stale = (rec_dir.with_name(f".{rec_dir.name}.{kind}{os.getpid()}") for kind in ("new", "old"))
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.mkdir()
    for name, data in files.items():
        (fresh / name).write_bytes(data)
    try:
        if rec_dir.exists():
            rec_dir.rename(stale)
        fresh.rename(rec_dir)
    except OSError:  # another process put its record (of the same run) in place first
        if not rec_dir.exists() and stale.exists():
            stale.rename(rec_dir)
        shutil.rmtree(fresh, ignore_errors=True)
    shutil.rmtree(stale, ignore_errors=True)


def _read_report(path: Path) -> dict[str, Any]:
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return old if isinstance(old, dict) else {}


def _evaluated_rows(old: dict[str, Any], only_unrecorded: bool = True) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """The evaluated rows of a report; ``only_unrecorded``: those whose only copy is the report
    (evaluated before records existed, or carried over since), not those read from a run directory
    or a record, which the record stands for (deleting it means: train again)."""
    ours = old.get("ours") or {}
    rows = {}
    for row in old.get("runs") or []:
        key = table_key(row.get("method"), row.get("mixer"), row.get("run"))
        unrecorded = row.get("source", "previous report") == "previous report"
        if str(row.get("status", "")).startswith("evaluated") and key in ours and (unrecorded or not only_unrecorded):
            rows[row["run"]] = (row, ours[key])
    return rows


def _report_protocol(old: dict[str, Any]) -> dict[str, Any]:
    """A report's protocol; reports from before the budgets were part of it name them per row."""
    protocol = dict(old.get("protocol") or {})
    if "budgets" not in protocol:
        budgets = {tuple(row.get("budgets") or ()) for row in (old.get("ours") or {}).values()}
        protocol["budgets"] = list(budgets.pop()) if len(budgets) == 1 else None
    return protocol


def carried_rows(previous_report: Path, protocol: dict[str, Any]) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """``{run name: (run row, Table-1 cells)}`` of the evaluated runs an earlier report of the same
    protocol (budget, seeds, episodes, FGSM budgets, overrides) is the only copy of; empty where
    there is none or it differs."""
    old = _read_report(previous_report)
    if _protocol(_report_protocol(old)) != _protocol(protocol):
        return {}
    return _evaluated_rows(old)


def refuse_to_drop(previous_report: Path, protocol: dict[str, Any], records_base: Path) -> None:
    """Raise ConfigError when writing a report of ``protocol`` over ``previous_report`` would lose
    rows kept nowhere else: the report is of another protocol (a quick ``--t-max`` run into the
    default results dir, say) and some of its evaluated runs have no record."""
    old = _read_report(previous_report)
    old_protocol = _report_protocol(old)
    if not old or _protocol(old_protocol) == _protocol(protocol):
        return
    base = records_base / Path(str(old_protocol.get("runs_dir", ""))).name
    only_here = [run for run in _evaluated_rows(old, only_unrecorded=False)
                 if recorded_step(base / run, old_protocol) is None]
    if only_here:
        shown = ", ".join(f"{k}={v}" for k, v in _protocol(old_protocol).items())
        raise ConfigError(f"{previous_report} holds {len(only_here)} evaluated run(s) of another protocol ({shown}) "
                          f"kept nowhere else ({', '.join(only_here)}); writing this report would lose them: "
                          "pass --results-dir to write it elsewhere")


def refuse_to_replace(rec_root: Path, protocol: dict[str, Any], names: Iterable[str]) -> None:
    """Raise ConfigError where ``rec_root`` holds records of runs ``names`` (one env's runs) of another
    protocol (other seeds, episodes, budgets or overrides under the same budget folder): this
    invocation's records would replace them. Another env's records share the folder under their own
    names and protocol (its own ``cromac.robust_start``, say): they are left alone."""
    if not rec_root.is_dir():
        return
    other = sorted(n for n in set(names) if recorded_step(rec_root / n) is not None
                   and recorded_step(rec_root / n, protocol) is None)
    if other:
        raise ConfigError(f"{rec_root} holds records of another protocol ({', '.join(other)}); this run's records "
                          "would replace them: pass --results-dir (or --runs-dir) to keep them apart")


def kept_runs(rec_root: Path, previous_report: Path, protocol: dict[str, Any]) -> set[str]:
    """The names of the runs whose results are kept here without their run directory."""
    recorded = ({p.name for p in rec_root.iterdir()
                 if not p.name.startswith(".") and recorded_step(p, protocol) is not None}
                if rec_root.is_dir() else set())
    return recorded | set(carried_rows(previous_report, protocol))


def keep_earlier_figures(results_dir: Path, previous_report: Path, stem: str) -> dict[str, str]:
    """The figures of carried-over runs, which cannot be drawn again: the previous report's PNGs,
    renamed ``<stem>_<kind>_earlier.png`` before this report draws its own. Done once: an existing
    ``_earlier`` figure is kept as it is (so a second process rebuilding at the same time, or a
    rebuild after a crash between the rename and the report, never moves a new figure over it).
    Call it before drawing."""
    old = (_read_report(previous_report).get("figures") or {})
    kept = {}
    for kind in ("curves", "budget"):
        earlier, drawn = f"{stem}_{kind}_earlier.png", old.get(kind)
        if (results_dir / earlier).is_file():
            kept[f"{kind}_earlier"] = earlier
        elif drawn and (results_dir / drawn).is_file():
            shutil.move(results_dir / drawn, results_dir / earlier)
            kept[f"{kind}_earlier"] = earlier
    return kept
