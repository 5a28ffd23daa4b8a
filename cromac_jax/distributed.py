"""Joining several processes (on one host or many) into one JAX runtime with ``jax.distributed``.

There is no launcher here: each process is started by whatever starts processes on the cluster
(``srun``, ``ssh``, a shell loop) and calls :func:`initialize` before any other JAX call. JAX's
coordination service then lists every process's devices in ``jax.devices()``; the trainer lays the
seed axis over all of them (``runner.seed_sharding``), so each process steps only its own seeds.
Seeds never exchange gradients or data (each device runs its own seeds: ``runner.device_parallel``):
what crosses the network per chunk is the metrics gather (a few scalars per seed), the periodic test
results and orbax's checkpoint barriers.

Where the settings come from, first match wins:

1. explicit arguments (``cromac train --distributed --coordinator HOST:PORT --num-processes N
   --process-id I``);
2. the environment: ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``
   (the first one is also read by JAX itself);
3. JAX's own cluster detection (SLURM, Open MPI, TPU pods) when none of the above is set.
"""

from __future__ import annotations

import os
import re
import socket
import sys
import time
from dataclasses import dataclass

import jax

from cromac_jax.config import ConfigError


class DistributedError(RuntimeError):
    """The processes could not be joined, or a peer was lost."""


@dataclass(frozen=True)
class DistributedSettings:
    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    #: seconds to wait for every process to join before giving up
    init_timeout: int = 120
    #: seconds without heartbeats after which a peer counts as dead and every process stops
    heartbeat_timeout: int = 30


def _env_int(name: str) -> int | None:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return None
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}={raw!r} must be an integer") from None


def resolve_settings(settings: DistributedSettings) -> DistributedSettings:
    """Fill unset fields from the environment and check them, one clear line per problem."""
    coord = settings.coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
    n = settings.num_processes if settings.num_processes is not None else _env_int("JAX_NUM_PROCESSES")
    pid = settings.process_id if settings.process_id is not None else _env_int("JAX_PROCESS_ID")
    explicit = [x is not None for x in (coord, n, pid)]
    if any(explicit) and not all(explicit):
        missing = [name for name, ok in zip(("coordinator address", "number of processes", "process id"), explicit, strict=True) if not ok]
        raise ConfigError(
            f"--distributed needs the coordinator address, the number of processes and this process's id "
            f"together (or none of them, under SLURM/Open MPI); missing: {', '.join(missing)}"
        )
    if n is not None and n < 1:
        raise ConfigError(f"number of processes {n} is invalid: must be >= 1")
    if pid is not None and not 0 <= pid < n:
        raise ConfigError(f"process id {pid} is out of range: with {n} processes it must be in 0..{n - 1}")
    if coord is not None:
        host, sep, port = coord.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"coordinator address {coord!r} must look like HOST:PORT")
    for flag, seconds in (("--init-timeout", settings.init_timeout), ("--heartbeat-timeout", settings.heartbeat_timeout)):
        if seconds < 1:
            raise ConfigError(f"{flag} {seconds} is invalid: must be >= 1 second")
    return DistributedSettings(coord, n, pid, settings.init_timeout, settings.heartbeat_timeout)


def initialize(settings: DistributedSettings = DistributedSettings()) -> DistributedSettings:
    """Join this process to the others. Must run before anything touches a JAX backend.

    On CPU, cross-process collectives need an implementation; gloo ships with jaxlib. Setting it
    is harmless on GPU/TPU, whose collectives do not use it.
    """
    s = resolve_settings(settings)
    if jax.distributed.is_initialized():
        return s
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if s.coordinator is not None and s.process_id != 0:
        # JAX's client aborts the interpreter (a C++ fatal log) when the coordinator never answers;
        # probing the port first turns the common case into one line and a clean exit code.
        _wait_for_coordinator(s.coordinator, s.init_timeout)
    where = s.coordinator or "the cluster's coordinator"
    print(f"cromac: process {s.process_id if s.process_id is not None else '?'} joining {where} "
          f"(waiting up to {s.init_timeout}s for {s.num_processes or 'all'} processes)", file=sys.stderr, flush=True)
    try:
        jax.distributed.initialize(
            coordinator_address=s.coordinator,
            num_processes=s.num_processes,
            process_id=s.process_id,
            initialization_timeout=s.init_timeout,
            heartbeat_timeout_seconds=s.heartbeat_timeout,
            shutdown_timeout_seconds=s.heartbeat_timeout,
        )
    except Exception as e:  # jaxlib raises XlaRuntimeError / RuntimeError / ValueError here
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if s.coordinator is None and "coordinator_address" in first:  # jax found no cluster to ask
            raise DistributedError(
                "--distributed found no cluster (SLURM, Open MPI, ...) to take the coordinator from: pass "
                "--coordinator HOST:PORT --num-processes N --process-id I (or set JAX_COORDINATOR_ADDRESS, "
                "JAX_NUM_PROCESSES and JAX_PROCESS_ID)") from None
        where = f"coordinator {s.coordinator}" if s.coordinator else "the cluster's coordinator"
        raise DistributedError(
            f"could not join the distributed run via {where} within {s.init_timeout}s "
            f"(is process 0 running and the address reachable?): {first[:300]}"
        ) from None
    return s


def _wait_for_coordinator(address: str, timeout: float) -> None:
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=2):
                return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise DistributedError(
                    f"coordinator {address} could not be reached within {timeout:g}s ({e.strerror or e}); "
                    f"start process 0 there first, or check the address and firewall"
                ) from None
            time.sleep(0.5)


def is_primary() -> bool:
    """Process 0 writes config, metrics and summaries; every process takes part in checkpoints."""
    return jax.process_index() == 0


def _slurm_tasks_here() -> int | None:
    """This node's task count: SLURM_STEP_TASKS_PER_NODE (e.g. ``2(x3),1``: 2, 2, 2, 1 tasks on
    nodes 0-3) at SLURM_NODEID, else SLURM_NTASKS_PER_NODE, else None."""
    spec, node = os.environ.get("SLURM_STEP_TASKS_PER_NODE"), _env_int("SLURM_NODEID")
    if spec and node is not None:
        counts: list[int] = []
        for part in spec.split(","):
            m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
            if m is None:
                counts = []
                break
            counts += [int(m.group(1))] * int(m.group(2) or 1)
        if 0 <= node < len(counts):
            return counts[node]
    return _env_int("SLURM_NTASKS_PER_NODE")


#: (process index, process count, this host's process count) of each launcher, first match wins.
_LAUNCHERS = (
    ("JAX_PROCESS_ID", "JAX_NUM_PROCESSES", lambda: None),
    ("SLURM_PROCID", "SLURM_NTASKS", _slurm_tasks_here),
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", lambda: _env_int("OMPI_COMM_WORLD_LOCAL_SIZE")),
)


def host_share_from_environment() -> tuple[int, int, int]:
    """This process's ``(index, count, on_this_host)`` for splitting independent runs (``cromac
    sweep --share auto``): index and count from ``JAX_PROCESS_ID``/``JAX_NUM_PROCESSES``, then
    SLURM (``SLURM_PROCID``/``SLURM_NTASKS``), then Open MPI; a lone process takes everything.
    ``on_this_host`` is how many of them share this host's cores (``--cpu-devices auto`` divides
    the cores among them), from the same launcher (SLURM's tasks per node, Open MPI's local size);
    where it does not say, all ``count``, the guess that can give a process fewer CPU devices
    than its cores allow but never more.
    """
    for idx, cnt, local in _LAUNCHERS:
        i, n = _env_int(idx), _env_int(cnt)
        if i is not None and n is not None:
            if n < 1 or not 0 <= i < n:
                raise ConfigError(f"{idx}={i} is out of range for {cnt}={n}")
            here = local()
            return i, n, min(here, n) if here is not None and here >= 1 else n
    return 0, 1, 1


def free_port() -> int:
    """A TCP port free right now on this host (for local multi-process tests and examples)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
