"""Fresh processes for the tests that need them (trainer resumes, device counts, hosts),
started together: each is mostly single-threaded compiling, so two run in about the time of
one on a 2-core machine."""

import subprocess
import tempfile
import threading
import time


def build_procedural(data_dir) -> None:
    """Build the runlocal procedural benchmark in `data_dir` once, before processes that
    share it start (they would otherwise race to build it)."""
    from configs import vrp_sam
    from jaxvrp.data import datasets

    config = vrp_sam.get_config("runlocal")
    config.data.data_dir = str(data_dir)
    for dataset, split, _ in datasets.plan(config):
        datasets.source(config, dataset, split)


def run_together(commands: list[list[str]], *, timeout: float = 900, env=None) -> None:
    """Run the commands at the same time; fail with the log tail of any that fails."""
    run_lanes([[cmd] for cmd in commands], timeout=timeout, env=env)


def run_lanes(lanes: list[list[list[str]]], *, timeout: float = 900, env=None) -> None:
    """Run the lanes at the same time, each lane's commands one after another (a command
    starts when the one before it in its lane succeeded); fail with the log tail of the
    first command that fails. `timeout`: seconds for each lane."""
    errors: list[str] = []
    procs: list[subprocess.Popen] = []
    lock = threading.Lock()

    def lane(commands):
        deadline = time.monotonic() + timeout
        for cmd in commands:
            with tempfile.TemporaryFile() as log:  # not a pipe: a full one stalls the process
                with lock:
                    if errors:  # another lane failed: start nothing more
                        return
                    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
                    procs.append(proc)
                try:
                    proc.wait(timeout=max(deadline - time.monotonic(), 0))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    errors.append(f"{' '.join(map(str, cmd))} ran past its lane's {timeout} s")
                    return
                if proc.returncode:
                    log.seek(0)
                    tail = log.read().decode(errors="replace")[-4000:]
                    errors.append(f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n{tail}")
                    return

    threads = [threading.Thread(target=lane, args=(cmds,)) for cmds in lanes]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        with lock:
            for proc in procs:
                proc.kill()
    if errors:
        raise AssertionError(errors[0])
