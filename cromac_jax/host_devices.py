"""Splitting a CPU host into several JAX devices so that vmapped seeds use every core.

XLA's CPU backend runs the small operations of a learner update (batch 32 episodes, GRUs of
16-64 units) on about one core: its intra-op threading only pays for large kernels. Laying the
seed axis over several host devices (``runner.seed_sharding``) gives each device its own
stream of work, which the OS spreads over the cores. Measured on a 2-core EPYC, CroMAC on
hallway 4x5x6: 8 seeds on 2 devices 1.46x the env steps/s of 1 device, 5 seeds on 5 devices
1.27x (``cromac bench --parts devices``, before ``runner.device_parallel`` let each device run its
seeds without waiting on the others, which added 1.14-1.49x on 5 devices). Per-seed results equal one device's to float
rounding (``tests/test_devices.py``).

The device count must be fixed before any JAX backend starts (``jax_num_cpu_devices``), so the
CLI decides it from the seed count before it trains. It never touches an accelerator: on a GPU
or TPU machine the default backend is the accelerator and the host devices stay unused.
"""

from __future__ import annotations

import math
import os

from cromac_jax.config import ConfigError
from cromac_jax.reporting import usable_cores

#: Where a user already chose the host device count; ``auto`` leaves it alone.
USER_SETTINGS = ("--xla_force_host_platform_device_count", "JAX_NUM_CPU_DEVICES")


def plan(num_seeds: int, cores: int) -> int:
    """The divisor d of ``num_seeds`` that minimises the wall time of d devices on ``cores``
    cores, ceil(d / cores) rounds of num_seeds / d seeds each; ties go to fewer devices (less
    partitioning, fewer threads). 8 seeds on 2 cores: 2 devices; 5 seeds: 5 (3 rounds of 1 seed
    beat 1 round of 5); 1 seed: 1."""
    if num_seeds < 1 or cores < 1:
        raise ValueError(f"need at least one seed and one core, got {num_seeds} seeds, {cores} cores")
    divisors = [d for d in range(1, num_seeds + 1) if num_seeds % d == 0]
    return min(divisors, key=lambda d: (math.ceil(d / cores) * (num_seeds // d), d))


def _jax_env_count() -> int | None:
    """JAX_NUM_CPU_DEVICES as jax reads it (``int()``; a negative value, jax's default, means
    unset); a value jax itself refuses is left for jax to refuse."""
    try:
        n = int(os.environ.get(USER_SETTINGS[1], ""))
    except ValueError:
        return None
    return n if n >= 0 else None


def _xla_flag_values() -> list[str]:
    """Every value XLA_FLAGS gives ``--xla_force_host_platform_device_count``, in order."""
    flags = (f.partition("=") for f in os.environ.get("XLA_FLAGS", "").split())
    return [value for name, _, value in flags if name == USER_SETTINGS[0]]


def user_has_chosen() -> bool:
    """Whether XLA_FLAGS or JAX_NUM_CPU_DEVICES already sets the host device count."""
    return bool(_xla_flag_values()) or _jax_env_count() is not None


def user_count() -> int | None:
    """The host device count the user set, as jax and XLA read it: JAX_NUM_CPU_DEVICES when it is
    set (non-negative), else the last ``--xla_force_host_platform_device_count`` in XLA_FLAGS
    (XLA keeps the last; quotes around the value are allowed); None when neither reads as a count."""
    n = _jax_env_count()
    if n is not None:
        return n
    values = _xla_flag_values()
    last = values[-1].strip("\"'") if values else ""
    return int(last) if last.isdigit() else None


def parse(spec: str) -> str | int:
    """``auto``, ``off`` or a positive device count, else one ConfigError naming the value."""
    if spec in ("auto", "off"):
        return spec
    try:
        n = int(spec)
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigError(f"--cpu-devices must be auto, off or a positive integer, got {spec!r}")
    return n


def apply(spec: str, num_seeds: int, cores: int | None = None, processes: int = 1) -> int | None:
    """Set ``jax_num_cpu_devices`` for a run of ``num_seeds`` seeds; returns the count set, or
    None when nothing was set. ``cores``: the cores to plan for (default: this process's share,
    the usable cores divided among ``processes`` sharing the host, e.g. ``--share I/N``).

    ``auto`` sets ``plan(num_seeds, cores)`` when that is more than one device, unless the user
    chose a count through XLA_FLAGS / JAX_NUM_CPU_DEVICES or a backend is already running (a
    library caller that imported and used jax first): then it quietly changes nothing, since
    the run is correct on any device count. An explicit count that differs from the user's own
    setting, or from the devices of a running backend, is an error.
    """
    import jax
    from jax._src import xla_bridge

    choice = parse(spec)
    if choice == "off":
        return None
    cores = cores or max(1, usable_cores() // max(1, processes))
    started = xla_bridge.backends_are_initialized()
    if choice == "auto":
        if user_has_chosen() or started:
            return None
        n = plan(num_seeds, cores)
        if n <= 1:
            return None
    else:
        n = choice
        if n > 1 and num_seeds % n:
            raise ConfigError(f"--cpu-devices {n} does not divide train.num_seeds={num_seeds}; "
                              f"use a divisor (auto picks {plan(num_seeds, cores)})")
        chosen = user_count()
        if user_has_chosen() and chosen != n:
            raise ConfigError(f"--cpu-devices {n} contradicts the host device count set by XLA_FLAGS / "
                              f"{USER_SETTINGS[1]} ({chosen if chosen is not None else 'unreadable'}); drop one of them")
        if started and len(jax.devices("cpu")) != n:
            raise ConfigError(f"--cpu-devices {n}: a JAX backend is already running with "
                              f"{len(jax.devices('cpu'))} CPU device(s); set it before anything uses jax")
    if not started:
        jax.config.update("jax_num_cpu_devices", n)
    return n
