"""Shared test setup.

Tests compile many tiny programs and run each briefly, so XLA's compile time dominates the suite.
Unless the caller set XLA_FLAGS, tests run XLA's CPU backend at optimisation level 0, which halves
compile time here; results are the same programs, only less optimised. Benchmarks and training
runs use XLA's defaults.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
