"""Saving and restoring the full learner state of every seed with orbax.

A run directory holds ``config.yaml`` (the resolved config, data only), ``metrics.jsonl`` and
``checkpoints/<env_steps>/`` written by orbax's ``CheckpointManager``. The checkpoint is the
whole ``TrainState`` of all seeds — parameters, optimiser, replay buffer, reward statistics,
counters and PRNG keys — so a resumed run continues exactly where it stopped. Nothing is
pickled: orbax stores arrays, and restoring needs the abstract state built from the config, so a
checkpoint from another env/method/seed count is refused before any array is read.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
import yaml

from cromac_jax.config import Config, ConfigError, from_saved, read_yaml_mapping

CHECKPOINT_DIR = "checkpoints"


class CheckpointError(ValueError):
    """A missing, unreadable or mismatched checkpoint."""


def write_config(run_dir: Path, cfg: Config) -> None:
    """Write ``config.yaml`` whole or not at all (a resumed run rewrites it with a new budget: a
    stop mid-write must not leave a truncated file that still parses)."""
    tmp = run_dir / "config.yaml.tmp"
    tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    os.replace(tmp, run_dir / "config.yaml")


def read_config(run_dir: str | Path) -> Config:
    """The resolved config a run directory was trained with (data only: ``yaml.safe_load``).
    Lives here, apart from the runner, so the CLI can read it before a JAX backend starts."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise CheckpointError(f"{str(run_dir)!r} is not a run directory (no config.yaml)")
    data = read_yaml_mapping(path, "run config", CheckpointError)
    try:
        return from_saved(data)
    except ConfigError as e:
        raise ConfigError(f"{str(path)!r}: {e}") from None


def _quiet_orbax() -> None:
    for name in ("absl", "orbax"):
        logging.getLogger(name).setLevel(logging.WARNING)


def manager(run_dir: str | Path, max_to_keep: int = 3) -> ocp.CheckpointManager:
    _quiet_orbax()
    path = Path(run_dir).absolute() / CHECKPOINT_DIR
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    # the handler named, so reading a step's metadata alone does not warn about the unread item
    return ocp.CheckpointManager(path, options=options, item_handlers=ocp.StandardCheckpointHandler())


def save(mgr: ocp.CheckpointManager, step: int, state: Any, cfg: Config | None = None) -> None:
    """Save synchronously (a run killed right after still has this checkpoint); a step that is
    already saved is the same state, so it is not written twice. ``cfg`` goes into the step's
    metadata (JSON), so a resumed run can tell an edited ``config.yaml`` from the one it trained with."""
    if int(step) in mgr.all_steps():
        return
    meta = {"config": cfg.to_dict()} if cfg is not None else None
    mgr.save(int(step), args=ocp.args.StandardSave(state), force=True, custom_metadata=meta)
    mgr.wait_until_finished()


def trained_config(run_dir: str | Path, step: int | None) -> Config | None:
    """The config checkpoint ``step`` (the latest: ``latest_step``) was saved with (its step
    metadata), to tell a hand edit of ``config.yaml`` from the settings the run trained with. None
    without a checkpoint, or for one saved before checkpoints carried their config (or by another
    version, whose keys differ)."""
    if step is None:
        return None
    try:
        saved = (manager(run_dir).metadata(step).custom_metadata or {}).get("config")
        return from_saved(saved) if isinstance(saved, dict) else None
    except (ConfigError, OSError, ValueError, AttributeError):
        return None


def latest_step(run_dir: str | Path) -> int | None:
    path = Path(run_dir) / CHECKPOINT_DIR
    if not path.is_dir():
        return None
    return manager(run_dir).latest_step()


def all_steps(run_dir: str | Path) -> list[int]:
    path = Path(run_dir) / CHECKPOINT_DIR
    if not path.is_dir():
        return []
    return sorted(manager(run_dir).all_steps())


def restore(run_dir: str | Path, abstract_state: Any, step: int | None = None) -> tuple[int, Any]:
    """Restore ``step`` (default: latest) into the structure and shapes of ``abstract_state``."""
    steps = all_steps(run_dir)
    if not steps:
        raise CheckpointError(f"no checkpoint in {str(Path(run_dir) / CHECKPOINT_DIR)!r}")
    if step is None:
        step = steps[-1]
    if step not in steps:
        raise CheckpointError(f"no checkpoint at step {step} in {str(run_dir)!r}; available: {steps}")
    mgr = manager(run_dir)
    target = jax.tree.map(_with_sharding, abstract_state)
    try:
        state = mgr.restore(step, args=ocp.args.StandardRestore(target))
    except (ValueError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"checkpoint {step} in {str(run_dir)!r} does not match this config or is damaged "
            f"(different env, method, sizes or seed count, or a corrupt file?): {first[:300]}"
        ) from None
    except Exception as e:  # orbax/tensorstore raise many types for damaged files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"checkpoint {step} in {str(run_dir)!r} is unreadable (corrupt or partially written?): "
            f"{type(e).__name__}: {first[:300]}"
        ) from None
    _check_shapes(state, abstract_state, run_dir, step)
    return step, state


def _with_sharding(x: Any) -> jax.ShapeDtypeStruct:
    """Orbax lays restored arrays out as the target says; a target without a sharding would make it
    reuse the saving run's device layout, so a checkpoint written by 2 processes could not be
    restored by 1. Unsharded leaves therefore go to this process's first device."""
    x = ocp.utils.to_shape_dtype_struct(x)
    if getattr(x, "sharding", None) is None:
        x = jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))
    return x


def _check_shapes(state: Any, abstract: Any, run_dir: Any, step: int) -> None:
    got = [getattr(x, "shape", None) for x in jax.tree.leaves(state)]
    want = [getattr(x, "shape", None) for x in jax.tree.leaves(abstract)]
    if got != want:
        raise CheckpointError(f"checkpoint {step} in {str(run_dir)!r} has shapes that do not match this config")


__all__ = ["CheckpointError", "ConfigError", "manager", "save", "restore", "latest_step", "all_steps"]
