"""Stopping a long run cleanly: SIGINT (Ctrl-C) or SIGTERM asks the training loop to stop at the
next chunk boundary, after saving a checkpoint of the state it has reached.

Why: checkpoints come every ``train.checkpoint_interval`` env steps, and a run killed between two
of them loses all the work since the last one (for the paper's hallway protocol on a 2-core CPU,
up to ~20 minutes). A chunk is seconds, so waiting for its end loses nothing. A second signal
stops at once (the last saved checkpoint is kept), except while a checkpoint is being written.

Only the main thread of a single-process run installs the handlers: a multi-process run saves
collectively, and one process stopping on its own would leave its peers waiting for it.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any


class TrainingStopped(KeyboardInterrupt):
    """The run stopped on request after saving its checkpoint; ``exit_code`` is 128 + the signal."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class StopRequest:
    """A context manager: inside it, the first SIGINT/SIGTERM sets ``signal_name`` instead of
    killing the process; ``saving()`` marks the window in which even a second one is deferred."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, announce: Callable[[str], None] | None = None, enabled: bool = True):
        self.announce = announce
        self.enabled = enabled
        self.signum: int | None = None
        self._saving = False
        self._pending_second = False
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum or 0)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
            if self.announce:
                self.announce(f"{signal.Signals(signum).name} received: stopping after this chunk with a checkpoint "
                              "(send it again to stop now, keeping the last saved checkpoint)")
            return
        if self._saving:
            self._pending_second = True
            return
        raise KeyboardInterrupt

    def __enter__(self) -> "StopRequest":
        if self.enabled and threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def saving(self) -> "_Saving":
        return _Saving(self)


class _Saving:
    """While a checkpoint is written, a second signal waits until it is complete."""

    def __init__(self, stop: StopRequest):
        self.stop = stop

    def __enter__(self) -> None:
        self.stop._saving = True

    def __exit__(self, *exc: Any) -> None:
        self.stop._saving = False
        if self.stop._pending_second and exc[0] is None:
            self.stop._pending_second = False
            raise KeyboardInterrupt
