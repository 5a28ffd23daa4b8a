"""Shared test setup.

The suite runs in parallel (pytest-xdist, ``-n auto --dist loadfile`` in pyproject.toml): one
worker per usable core, at most ``MAX_WORKERS``, each test file on one worker so its module-scoped
fixtures (trained runs) are built once. XLA's compiler is single-threaded, so on CI's 2 cores two
workers compile side by side. ``pytest -n 0`` runs everything in this process (for pdb).

Tests compile many tiny programs and run each briefly, so XLA's compile time dominates the suite.
Unless the caller set XLA_FLAGS, tests run XLA's CPU backend at optimisation level 0, which halves
compile time here; results are the same programs, only less optimised. Benchmarks and training
runs use XLA's defaults.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


MAX_WORKERS = 4  # more workers than this mostly re-compile the same programs and use more memory

# The test files that take longest go to the workers first, so no worker is left with one of them
# at the end while the others idle (the suite's slowest files, measured on CI's 2-core machine).
SLOW_FILES_FIRST = ("test_train.py", "test_bench.py", "test_devices.py", "test_distributed.py", "test_evaluate.py")


def pytest_xdist_auto_num_workers(config):
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_WORKERS))


def pytest_collection_modifyitems(config, items):
    def rank(item):
        name = item.path.name
        return SLOW_FILES_FIRST.index(name) if name in SLOW_FILES_FIRST else len(SLOW_FILES_FIRST)

    items.sort(key=rank)  # stable: the order within a file and among the others is kept
