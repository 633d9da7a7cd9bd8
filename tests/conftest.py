"""Test set-up: 8 simulated CPU devices, full-precision float32 matmuls, XLA compiling at
optimisation level 0, and one persistent XLA compilation cache for the session.

All must be set before JAX initialises its backend, hence at import time here.
"""

import atexit
import os
import shutil
import tempfile

# Compiling, not running, is most of the suite's time (JAX's compile-duration events: 60-90 %
# of the learner tests); XLA's backend optimisation level 0 compiles ~30 % faster and runs the
# few full-size parity tests ~10 % slower. Set JAXVRP_TEST_XLA_OPT=default to test as shipped.
_OPT = (
    ""
    if os.environ.get("JAXVRP_TEST_XLA_OPT") == "default"
    else " --xla_backend_optimization_level=0"
)
# the subprocesses that set their own device count add these (tests/train_runner.py, ...)
os.environ["JAXVRP_TEST_XLA_OPT_FLAGS"] = _OPT
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8" + _OPT
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# Many tests start fresh processes (trainer resumes, 1 vs 8 devices, the demo, sweeps, the
# command-line tools) that compile the same programs again; they inherit this environment, so
# with one on-disk cache each program compiles once per session. The cache is new for every
# session (nothing stale can be read) and removed at exit. Set JAX_COMPILATION_CACHE_DIR to
# keep one yourself.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _XLA_CACHE = tempfile.mkdtemp(prefix="jaxvrp-tests-xla-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _XLA_CACHE
    atexit.register(shutil.rmtree, _XLA_CACHE, ignore_errors=True)
# Every program, not only those compiling for over a second (JAX's default): the eager
# initialisers and small jits a fresh process compiles add up to ~8 s per VRP-SAM training
# process (measured: 39 -> 30 s for tests/train_runner.py's runlocal run, cache warm).
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


def rel_l2(actual, expected) -> float:
    """||actual - expected|| / ||expected|| in float64."""
    a = np.asarray(actual, np.float64)
    e = np.asarray(expected, np.float64)
    assert a.shape == e.shape, f"shape {a.shape} != {e.shape}"
    return float(np.linalg.norm(a - e) / np.linalg.norm(e))


@pytest.fixture(scope="session")
def devices():
    assert jax.device_count() == 8, "tests expect 8 simulated CPU devices"
    return jax.devices()
