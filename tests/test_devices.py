"""The seed axis sharded over several devices gives the same per-seed results as one device.

CPU tests force two host devices in a subprocess (XLA_FLAGS must be set before jax starts).
"""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from cromac_jax import runner
from tests.test_train import tiny

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np
    from cromac_jax import runner
    from tests.test_train import tiny
    cfg = tiny(num_seeds=2)
    sr = runner.SeedRunner(cfg)
    state = sr.init_state()
    state, metrics = sr.chunk(state)
    leaf = jax.tree.leaves(state.params)[0]
    out = {
        "devices": len(jax.devices()),
        "sharded_over": len(leaf.sharding.device_set),
        "params": [np.asarray(x).ravel().tolist() for x in jax.tree.leaves(state.params)],
        "updates": np.asarray(metrics.updates).tolist(),
    }
    sys.stdout.write("RESULT" + json.dumps(out))
    """
)


@pytest.mark.timeout(600)
def test_two_forced_cpu_devices_shard_seeds_and_match_one_device():
    flags = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=root, capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert res["devices"] == 2 and res["sharded_over"] == 2, res["devices"]
    sr = runner.SeedRunner(tiny(num_seeds=2))
    assert sr.sharding is None  # this process has one device
    state, metrics = sr.chunk(sr.init_state())
    assert np.asarray(metrics.updates).tolist() == res["updates"]
    for mine, theirs in zip(jax.tree.leaves(state.params), res["params"]):
        np.testing.assert_allclose(np.asarray(mine).ravel(), np.asarray(theirs), rtol=1e-4, atol=1e-5)
