"""Keep a Table-1 run's results after its run directory is gone.

A run directory holds checkpoints with the replay buffer (hundreds of MB per run), so it is not
committed, and a fresh checkout has none: rebuilding a report there would drop every row trained
in an earlier session or on another machine. What a report reads of a finished, evaluated run is
small, so it is kept beside the report as a *record* (``benchmarks/results/table1_runs/<hardware>/
<paper | t<t_max>>/<run>/``): ``config.yaml``, the test rows of ``metrics.jsonl``, the newest
Table-1 ``eval_<step>.{json,md}``, ``table1_wall.json`` and ``record.json`` (the step and where it
came from). A record reads like a run directory to ``cromac_jax.plot`` and to the report, so one
code path draws and tabulates both; ``cromac plot <record>`` works on it too.

Reports written before records existed keep their rows in their JSON only: ``carried_rows`` takes
those rows back for runs that have neither a run directory nor a record, so a rebuilt report keeps
them (without learning curves, whose data was not kept).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

RECORD_FILE = "record.json"
RECORDS_DIR = "table1_runs"
#: The run-directory files a record copies whole; metrics.jsonl is filtered to its test rows.
COPIED = ("config.yaml", "table1_wall.json")


def records_root(results_dir: Path, tag: str, runs_dir: Path) -> Path:
    """Where the records of the runs in ``runs_dir`` go: one folder per hardware and budget, as the runs."""
    return results_dir / RECORDS_DIR / tag / runs_dir.name


def recorded_step(rec_dir: Path) -> int | None:
    """The checkpoint step a record was taken at, or None where there is no (readable) record."""
    try:
        return int(json.loads((rec_dir / RECORD_FILE).read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save(run_dir: Path, rec_dir: Path, step: int, eval_json: Path) -> None:
    """Copy what the report reads of a finished, evaluated run into ``rec_dir``, replacing an older
    record; the same run copied again gives the same bytes, so a rebuilt report leaves git clean.
    ``record.json`` is written last, so a record killed mid-copy is not taken for one."""
    if rec_dir.exists():
        shutil.rmtree(rec_dir)
    rec_dir.mkdir(parents=True)
    for name in COPIED:
        if (run_dir / name).is_file():
            shutil.copyfile(run_dir / name, rec_dir / name)
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        tests = [line for line in metrics.read_text().splitlines() if '"kind": "test"' in line]
        (rec_dir / "metrics.jsonl").write_text("".join(line + "\n" for line in tests))
    for suffix in (".json", ".md"):
        src = eval_json.with_suffix(suffix)
        if src.is_file():
            shutil.copyfile(src, rec_dir / src.name)
    (rec_dir / RECORD_FILE).write_text(json.dumps(
        {"step": int(step), "run_dir": str(run_dir)}, indent=1) + "\n")


def _same_protocol(old: dict[str, Any], new: dict[str, Any]) -> bool:
    keys = ("t_max", "seeds", "episodes_per_seed", "overrides")
    return all(old.get(k) == new.get(k) for k in keys)


def carried_rows(previous_report: Path, protocol: dict[str, Any]) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """``{run name: (run row, Table-1 cells)}`` of the evaluated runs in an earlier report of the
    same protocol (budget, seeds, episodes, overrides); empty where there is none or it differs."""
    try:
        old = json.loads(previous_report.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    if not isinstance(old, dict) or not _same_protocol(old.get("protocol") or {}, protocol):
        return {}
    ours = old.get("ours") or {}
    carried = {}
    for row in old.get("runs") or []:
        key = row.get("method") if row.get("mixer") == "qmix" else row.get("run")
        if str(row.get("status", "")).startswith("evaluated") and key in ours:
            carried[row["run"]] = (row, ours[key])
    return carried


def kept_runs(rec_root: Path, previous_report: Path, protocol: dict[str, Any]) -> set[str]:
    """The names of the runs whose results are kept here without their run directory."""
    recorded = {p.name for p in rec_root.iterdir() if recorded_step(p) is not None} if rec_root.is_dir() else set()
    return recorded | set(carried_rows(previous_report, protocol))


def keep_earlier_figures(results_dir: Path, previous_report: Path) -> dict[str, str]:
    """The figures of carried-over runs, which cannot be drawn again: the previous report's PNGs,
    renamed ``<name>_earlier.png`` before this report draws its own (once: an
    ``_earlier`` figure the previous report already showed is kept as it is). Call it before drawing."""
    try:
        old = json.loads(previous_report.read_text()).get("figures") or {}
    except (OSError, json.JSONDecodeError, AttributeError):
        return {}
    kept = {}
    for kind in ("curves", "budget"):
        earlier, drawn = old.get(f"{kind}_earlier"), old.get(kind)
        if earlier and (results_dir / earlier).is_file():
            kept[f"{kind}_earlier"] = earlier
        elif drawn and (results_dir / drawn).is_file():
            kept[f"{kind}_earlier"] = f"{Path(drawn).stem}_earlier.png"
            shutil.move(results_dir / drawn, results_dir / kept[f"{kind}_earlier"])
    return kept
