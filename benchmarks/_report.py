"""Shared pieces of the benchmark scripts: hardware description, timing, tables and JSON.

Not a benchmark itself. The scripts of ``benchmarks/`` (``env_throughput.py``, ``update_cost.py``,
``train_throughput.py``, ``eval_throughput.py``, ``distributed_scaling.py``, ``slot_trim.py``,
``reproduce_table1.py``) import it as a sibling module (each puts its own folder on
``sys.path``), so they are run as plain scripts from the repository root::

    python benchmarks/env_throughput.py
    python benchmarks/update_cost.py

Timing rule used by all of them: the first call of a jitted function (tracing + XLA compilation + one
execution) is reported on its own as the compile time; run time is measured on later calls
only, each ended with ``jax.block_until_ready`` so asynchronous dispatch cannot hide work.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import jax

from cromac_jax.bench import describe_hardware, hardware_info  # noqa: F401  (one description of the machine)
from cromac_jax.reporting import (  # noqa: F401  (load_average, markdown_table: re-exported for the scripts)
    cpu_model,
    load_average,
    markdown_table,
    slug,
    usable_cores,
)

RESULTS_DIR = Path(__file__).resolve().parent / "results"


# ---------------------------------------------------------------------------------- hardware
def machine_tag() -> str:
    """Names a results file after the machine class: ``<backend>-<cpu model>-<cores>c``.

    The CPU model (not the hostname, which containers randomise) keeps reruns on the same kind
    of machine in one file, e.g. ``cpu-amd-epyc-2c``.
    """
    return f"{slug(jax.default_backend())}-{slug(cpu_model())}-{usable_cores()}c"


def default_out(benchmark: str) -> Path:
    return RESULTS_DIR / f"{benchmark}_{machine_tag()}.json"


def start(title: str) -> tuple[dict[str, Any], Any]:
    """Print a benchmark's heading, naming the machine and its load before the work starts (a
    loaded machine explains slow figures), and return both for the JSON report."""
    hw = hardware_info()
    load = load_average()
    print(f"# {title}\n\n{describe_hardware(hw)}; load average {load}\n", flush=True)
    return hw, load



def finish(
    name: str,
    hw: dict[str, Any],
    load_start: Any,
    settings: dict[str, Any],
    results: Any,
    out: str | Path | None = None,
    *,
    load_end: Any = None,
    merge: Callable[[dict[str, Any], Path], dict[str, Any]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Write a benchmark's JSON report and say where: every script's report carries the same
    header (benchmark, hardware, load at start and end), so runs on different machines or under
    different load can be compared field by field. ``extra`` goes between settings and results;
    ``load_end`` is the load a script already printed (measured now if omitted);
    ``merge(payload, path)`` may fold in an earlier report at the same path before writing.
    Returns the payload written."""
    payload: dict[str, Any] = {
        "benchmark": name,
        "hardware": hw,
        "load_average_start": load_start,
        "load_average_end": load_average() if load_end is None else load_end,
        "settings": settings,
        **extra,
        "results": results,
    }
    path = Path(out) if out else default_out(name)
    if merge is not None:
        payload = merge(payload, path)
    print(f"\nwrote {write_json(path, payload)}")
    return payload

# ---------------------------------------------------------------------------------- timing
@dataclass
class Timing:
    """Wall-clock seconds of one jitted call: the first (with compilation) and the rest."""

    first_call_s: float
    times_s: list[float] = field(default_factory=list)

    @property
    def best_s(self) -> float:
        return min(self.times_s)

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)

    def as_dict(self) -> dict[str, Any]:
        return {
            "compile_s": self.first_call_s,
            "best_s": self.best_s,
            "median_s": self.median_s,
            "times_s": list(self.times_s),
        }


def time_jitted(fn: Callable[..., Any], *args: Any, repeats: int = 3) -> tuple[Timing, Any]:
    """Call ``fn(*args)`` once (compile + run) and then ``repeats`` more times, each call ended
    by ``block_until_ready``. Returns the timing and the output of the last call.

    ``fn`` should be a fresh ``jax.jit`` so the first call really compiles.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    timing = Timing(first_call_s=time.perf_counter() - t0)
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        timing.times_s.append(time.perf_counter() - t0)
    return timing, out


def tree_nbytes(tree: Any) -> int:
    """Bytes held by the array leaves of a pytree."""
    return int(sum(getattr(x, "nbytes", 0) for x in jax.tree.leaves(tree)))


# ---------------------------------------------------------------------------------- output
def fmt_rate(x: float) -> str:
    """Steps per second with a k/M suffix."""
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    if x >= 1e3:
        return f"{x / 1e3:.1f}k"
    return f"{x:.0f}"


def write_json(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` as indented JSON, creating the folder; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return path
