"""One training chunk compiles and runs for every env preset and every method (tiny sizes).

The default suite covers every preset once and every method once (a diagonal of the matrix, so
CI stays fast); ``pytest -m slow tests/test_matrix.py`` runs the full preset x method matrix.
"""

import itertools

import numpy as np
import pytest

import envs
from cromac_jax import config as C
from cromac_jax import runner
from cromac_jax.config import METHODS

PRESETS = [p for p in envs.preset_names() if not p.startswith("smax")]  # SMAX: tests/test_smax_comm.py
DIAGONAL = {(p, METHODS[i % len(METHODS)]) for i, p in enumerate(PRESETS)}
DIAGONAL |= {(PRESETS[0], m) for m in METHODS if m not in {mm for _, mm in DIAGONAL}}


def tiny_cfg(preset, method, mixer="qmix"):
    return C.resolve({
        "env": {"name": preset},
        "model": {"rnn_hidden": 4, "z_dim": 4, "vae_hidden": 4, "mixer_embed": 4, "hypernet_hidden": 4, "mixer": mixer},
        "train": {"method": method, "num_envs": 2, "buffer_size": 8, "batch_size": 2, "learning_starts": 2,
                  "updates_per_iteration": 1, "chunk_iterations": 2, "test_nepisode": 2, "num_seeds": 1,
                  "slot_buckets": 1},  # one compiled update per chunk; trimming: tests/test_slot_trim.py
        "cromac": {"robust_start": 0},
    })


def run_one(preset, method, mixer="qmix"):
    sr = runner.SeedRunner(tiny_cfg(preset, method, mixer))
    state, metrics = sr.chunk(sr.init_state())
    assert np.all(np.asarray(metrics.updates)[:, -1] >= 1)
    assert np.all(np.isfinite(np.asarray(metrics.loss)))
    tests = sr.tests(state, 0)
    assert np.all(np.isfinite(np.asarray(tests["test"].return_mean)))


@pytest.mark.timeout(600)
@pytest.mark.parametrize("preset,method", sorted(DIAGONAL))
def test_chunk_runs_diagonal(preset, method):
    run_one(preset, method)


@pytest.mark.slow
@pytest.mark.parametrize("preset,method", sorted(set(itertools.product(PRESETS, METHODS)) - DIAGONAL))
def test_chunk_runs_full_matrix(preset, method):
    run_one(preset, method)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("mixer", ["vdn", "qplex"])
def test_chunk_runs_with_every_mixer(mixer):
    run_one("lbf_3p1f", "cromac", mixer)
