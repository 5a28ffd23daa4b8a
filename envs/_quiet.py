"""Keep third-party import chatter out of the user's terminal and test logs."""

import contextlib
import io
import os
import sys
from typing import Iterator


@contextlib.contextmanager
def quiet_import() -> Iterator[None]:
    """Swallow what a package prints to stdout while importing.

    jaxmarl prints a line about "submoduled environments" on import; that line is not an error and
    would otherwise appear before every command's output. jaxmarl's mabrax module resets
    ``sys.stdout`` to ``sys.__stdout__`` while importing, so a Python-level redirect is not enough:
    the stdout file descriptor is pointed at /dev/null too. It resets ``sys.stderr`` the same way,
    which would send a caller's later error lines past any redirect of it (a test's capture): the
    caller's ``sys.stderr`` is put back. Errors still raise.
    """
    stderr = sys.stderr
    try:
        sys.stdout.flush()
        fd = sys.__stdout__.fileno() if sys.__stdout__ is not None else None
    except (AttributeError, OSError, ValueError):
        fd = None
    saved = os.dup(fd) if fd is not None else None
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        if fd is not None:
            os.dup2(devnull, fd)
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        try:
            if sys.__stdout__ is not None:
                sys.__stdout__.flush()
        except (OSError, ValueError):
            pass
        if saved is not None:
            os.dup2(saved, fd)
            os.close(saved)
        os.close(devnull)
        sys.stderr = stderr
