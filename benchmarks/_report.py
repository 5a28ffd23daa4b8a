"""Shared pieces of the benchmark scripts: hardware description, timing, tables and JSON.

Not a benchmark itself. ``env_throughput.py`` and ``update_cost.py`` import it as a sibling
module (each script puts its own folder on ``sys.path``), so both are run as plain scripts from
the repository root::

    python benchmarks/env_throughput.py
    python benchmarks/update_cost.py

Timing rule used by both: the first call of a jitted function (tracing + XLA compilation + one
execution) is reported on its own as the compile time; run time is measured on later calls
only, each ended with ``jax.block_until_ready`` so asynchronous dispatch cannot hide work.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import socket
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import jax

RESULTS_DIR = Path(__file__).resolve().parent / "results"


# ---------------------------------------------------------------------------------- hardware
def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (falls back to ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask, which containers restrict)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (as ``uptime`` prints them), or None."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def hardware_info() -> dict[str, Any]:
    """What the numbers were measured on: CPU, cores, jax version, backend and device, date."""
    devices = jax.devices()
    try:
        import jaxlib

        jaxlib_version = getattr(jaxlib, "__version__", None) or jaxlib.version.__version__
    except Exception:  # pragma: no cover - informational only
        jaxlib_version = None
    return {
        "hostname": socket.gethostname(),
        "cpu_model": cpu_model(),
        "cpu_cores": usable_cores(),
        "cpu_count_os": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "jax_version": jax.__version__,
        "jaxlib_version": jaxlib_version,
        "jax_backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def describe_hardware(hw: dict[str, Any]) -> str:
    """One line for the top of a printed report."""
    return (
        f"{hw['cpu_model']}, {hw['cpu_cores']} cores; jax {hw['jax_version']} "
        f"backend={hw['jax_backend']} device={hw['device_kind']} x{hw['device_count']}; {hw['date']}"
    )


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def machine_tag() -> str:
    """Names a results file after the machine class: ``<backend>-<cpu model>-<cores>c``.

    The CPU model (not the hostname, which containers randomise) keeps reruns on the same kind
    of machine in one file, e.g. ``cpu-amd-epyc-2c``.
    """
    return f"{_slug(jax.default_backend())}-{_slug(cpu_model())}-{usable_cores()}c"


def default_out(benchmark: str) -> Path:
    return RESULTS_DIR / f"{benchmark}_{machine_tag()}.json"


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
def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table; numbers are expected to be formatted by the caller."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), sep] + [line(r) for r in cells[1:]])


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
