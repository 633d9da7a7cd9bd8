"""Fresh processes for the tests that need them (trainer resumes, device counts, hosts),
started together: each is mostly single-threaded compiling, so two run in about the time of
one on a 2-core machine."""

import subprocess
import tempfile


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
    logs, procs = [], []
    try:
        for cmd in commands:
            log = tempfile.TemporaryFile()  # not a pipe: a full pipe would stall a process
            logs.append(log)
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env))
        for cmd, proc, log in zip(commands, procs, logs, strict=True):
            proc.wait(timeout=timeout)
            if proc.returncode:
                log.seek(0)
                tail = log.read().decode(errors="replace")[-4000:]
                raise AssertionError(f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n{tail}")
    finally:
        for proc in procs:
            proc.kill()
        for log in logs:
            log.close()
