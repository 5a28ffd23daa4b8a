"""TensorBoard event files next to ``metrics.jsonl``, when ``tensorboardX`` is installed.

Optional on purpose: the JSONL/CSV files are the record of a run; TensorBoard is a viewer some
users already run. ``pip install 'cromac-jax[tensorboard]'`` (or any tensorboardX) turns it on;
``train.tensorboard=false`` turns it off. Scalars are the mean over seeds (``train/…``,
``test/…``, ``test_fgsm/…``) and each seed's own value (``seed<k>/…``), at the env step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

TB_DIR = "tensorboard"


def available() -> bool:
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        return False
    return True


class Writer:
    """A thin wrapper that turns one metrics record (lists over seeds) into scalars."""

    def __init__(self, run_dir: str | Path, purge_step: int | None = None):
        from tensorboardX import SummaryWriter

        self.path = Path(run_dir) / TB_DIR
        # purge_step: TensorBoard hides the earlier session's events from this step on (a resumed
        # run rewrites the steps after its checkpoint)
        self._w = SummaryWriter(logdir=str(self.path), flush_secs=30, purge_step=purge_step)

    def record(self, record: dict[str, Any]) -> None:
        kind = record.get("kind", "train")
        step = int(np.min(record["t_env"]))
        for name, values in record.items():
            if name in ("kind", "t_env") or not isinstance(values, list):
                continue
            arr = np.asarray(values, dtype=np.float64)
            if kind == "test":
                prefix, _, metric = name.partition("_")  # "test_fgsm_won_mean" -> test / fgsm_won_mean
                if metric.startswith("fgsm_"):
                    prefix, metric = "test_fgsm", metric[len("fgsm_"):]
            else:
                prefix, metric = "train", name
            if not np.any(np.isfinite(arr)):
                continue
            # seeds past their budget have no train metrics (NaN): the mean is over the others
            self._w.add_scalar(f"{prefix}/{metric}", float(np.nanmean(arr)), step)
            for seed, v in enumerate(arr):
                if np.isfinite(v):
                    self._w.add_scalar(f"seed{seed}/{prefix}/{metric}", float(v), step)

    def flush(self) -> None:
        """Per chunk, so a run killed at any point has its curves on disk."""
        self._w.flush()

    def close(self) -> None:
        self._w.close()


def open_writer(run_dir: str | Path, enabled: bool, purge_step: int | None = None) -> Writer | None:
    return Writer(run_dir, purge_step) if enabled and available() else None
