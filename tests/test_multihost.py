"""Two processes (hosts) on this machine train like one process with all their devices."""

import os
import socket
import sys

import numpy as np

from tests import processes

RUNNER = os.path.join(os.path.dirname(__file__), "train_runner.py")
# With dropout on: two hosts order the same episodes differently in the global batch (host 0
# takes 0, 2, ..., host 1 takes 1, 3, ...), and each episode's dropout masks are keyed by its
# number (jaxvrp.learners.protocol), not its position, so the runs still agree.
# the test learner with dropout (tests/train_runner.py): the trainer's and the data pipeline's
# multi-host mechanics, rng streams included, at a fraction of VRP-SAM's compile time
COMMON = ["toy", "epochs=1", "steps_per_epoch=3", "batch_size=4"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_hosts_match_one_host(tmp_path):
    data = f"data.data_dir={tmp_path / 'tfds'}"
    processes.build_procedural(tmp_path / "tfds")
    single = tmp_path / "single.npz"
    port = _free_port()
    hosts = [
        [
            sys.executable,
            RUNNER,
            str(tmp_path / "two"),
            str(tmp_path / f"host{i}.npz"),
            "2",
            data,
            *COMMON,
            "distributed=True",
            f"coordinator_address=127.0.0.1:{port}",
            "num_processes=2",
            f"process_id={i}",
        ]
        for i in range(2)
    ]
    one_host = [sys.executable, RUNNER, str(tmp_path / "one"), str(single), "4", data, *COMMON]
    processes.run_together([*hosts, one_host], timeout=600)
    one = np.load(single)
    host0, host1 = np.load(tmp_path / "host0.npz"), np.load(tmp_path / "host1.npz")
    # only process 0 writes the shared workdir's log: 3 lines, not 6
    assert len(host0["losses"]) == 3
    np.testing.assert_array_equal(host0["losses"], host1["losses"])
    # each host fed half the global batch (other episodes, same set): same losses
    rel = np.abs(host0["losses"] - one["losses"]) / np.abs(one["losses"])
    assert rel.max() <= 1e-5, rel
    for k in host0.files:
        if k != "losses":
            np.testing.assert_array_equal(host0[k], host1[k])
            np.testing.assert_allclose(host0[k], one[k], rtol=1e-4, atol=1e-6)
