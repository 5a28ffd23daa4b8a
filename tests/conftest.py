"""Shared test setup: quiet imports and small helpers for scripted rollouts."""

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
