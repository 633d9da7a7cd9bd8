"""Remote paths end to end (`jaxvrp.paths`): a `gs://` workdir, cache and dataset directory
on a fake GCS (tests/fake_gcs.py) get every file, nothing lands in a local `gs:` folder;
writes are atomic with per-process temporary names; the launch scripts pass arguments
through intact."""

import json
import os
import shlex
import subprocess
from pathlib import Path

import numpy as np
import pytest

from configs import vrp_sam
from jaxvrp import evaluate, loop, paths, train, trainer
from jaxvrp.data import episodes
from jaxvrp.learners import checkpoint
from tests import fake_gcs, toy_learner

ROOT = Path(__file__).resolve().parents[1]


def _local_gs_folders(*tops: Path) -> list[str]:
    """Any local directory named like a collapsed URL (`gs:`), the pathlib failure."""
    found = []
    for top in tops:
        for dirpath, dirnames, _ in os.walk(top):
            found += [os.path.join(dirpath, d) for d in dirnames if d.endswith(":")]
    return found


def test_gs_workdir_train_checkpoint_evaluate(tmp_path, monkeypatch):
    local = tmp_path / "local"
    local.mkdir()
    monkeypatch.chdir(local)  # a pathlib `gs:/...` would appear here
    config = toy_learner.get_config("runlocal")
    with config.unlocked():
        config.data.data_dir = str(tmp_path / "tfds")
        config.batch_size = 8  # the 8 simulated devices
        config.steps_per_epoch = 2
        config.checkpoint_every = 1
        config.log_every = 1
    with fake_gcs.mounted(tmp_path / "gcs") as root:
        workdir = "gs://bucket/runs/toy"
        train.train(config, workdir)
        run = root / "bucket" / "runs" / "toy"
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert [x["step"] for x in lines] == [1, 2]
        assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == [
            "1",
            "2",
        ]
        assert list((run / "tensorboard").glob("events.out.tfevents.*"))
        params, step = evaluate.restore_params(config, workdir + "/checkpoints")
        assert step == 2
        result = evaluate.evaluate(config, params)
        evaluate.write_results(workdir, {"toy": result})
        assert json.loads((run / "eval" / "results.json").read_text())["toy"]["episodes"] == 8
        ckpt = checkpoint.load(workdir + "/learner")
        np.testing.assert_array_equal(ckpt.params["margin"], params["margin"])
        # a resumed run in the remote workdir: the log is cut back and rewritten remotely
        loop.truncate_log(paths.as_path(workdir) / "metrics.jsonl", 1)
        assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
        leftovers = [p.name for p in run.rglob(".*") if ".tmp-" in p.name or ".partial-" in p.name]
        assert leftovers == []
    assert _local_gs_folders(local, tmp_path / "tfds", ROOT) == []
    assert list(local.iterdir()) == []


def test_gs_embedding_cache_and_dataset_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = vrp_sam.get_config("runlocal")
    with config.unlocked():
        config.data.embedding_cache = "gs://bucket/cache"
        config.data.data_dir = str(tmp_path / "tfds")  # the build the store's key hashes
    learner = trainer.learner_of(config)
    sam = learner.frozen(learner.make_config(**config.model.to_dict())).sam
    with fake_gcs.mounted(tmp_path / "gcs") as root:
        cache = evaluate.EmbeddingCache(config, sam)
        shape = cache.store.shape
        calls = []

        def embed(params, images):  # stands for the SAM encoder: record what it computes
            calls.append(len(images))
            return np.ones((len(images), *shape), np.float32) * images[:, :1, :1, :1] * 2.0

        cache._embed = embed
        images = np.random.default_rng(0).normal(size=(3, 4, 4, 3)).astype(np.float32)
        images[2] = images[0]  # record 5 twice: the same target
        batch = {"query_record": np.array([5, 9, 5]), "query_image": images}
        first = cache.lookup(batch, None)
        again = cache.lookup(batch, None)
        expected = np.ones((3, *shape), np.float32) * images[:, :1, :1, :1] * 2.0
        np.testing.assert_array_equal(first, expected)
        np.testing.assert_array_equal(again, first)
        assert calls == [3]  # the second lookup read every entry from the bucket
        entries = sorted(p.name for p in (root / "bucket" / "cache").rglob("*") if p.is_file())
        assert entries == ["5.npy", "9.npy", "key.json"]  # no temporary file left
        # a TFDS build directory on the bucket: built once its dataset_info.json exists
        assert not episodes.is_built("procedural", "gs://bucket/tfds")
        info = root / "bucket" / "tfds" / "procedural" / "1.0.0" / "dataset_info.json"
        info.parent.mkdir(parents=True)
        info.write_text("{}")
        assert episodes.is_built("procedural", "gs://bucket/tfds")
    assert _local_gs_folders(tmp_path) == []


def test_atomic_writes_use_unique_temporary_names(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    names = {paths.temp_sibling(target).name for _ in range(5)}
    assert len(names) == 5 and all(f"-{os.getpid()}-" in n for n in names)
    assert all(paths.temp_sibling(target).parent == paths.as_path(tmp_path) for _ in range(2))
    paths.write_atomic(target, "a")
    paths.write_atomic(target, b"bc")
    assert target.read_bytes() == b"bc" and sorted(os.listdir(tmp_path)) == ["results.json"]

    def broken(self, data):  # a kill or a full disk in the middle of the write
        Path(os.fspath(self)).write_bytes(data[:1])
        raise OSError("disk full")

    monkeypatch.setattr(type(paths.as_path(target)), "write_bytes", broken)
    with pytest.raises(OSError, match="disk full"):
        paths.write_atomic(target, b"new")
    assert target.read_bytes() == b"bc" and sorted(os.listdir(tmp_path)) == ["results.json"]
    # the remote form of the log keeps appending by atomic rewrites
    with fake_gcs.mounted(tmp_path / "gcs") as root:
        monkeypatch.undo()
        log = paths.JsonLines("gs://bucket/w/metrics.jsonl")
        with pytest.raises(FileNotFoundError):
            log.flush()  # the workdir does not exist yet, as for a local log
        paths.as_path("gs://bucket/w").mkdir(parents=True)
        log.write('{"step": 1}\n')
        log.flush()
        log.write('{"step": 2}\n')
        log.close()
        assert (root / "bucket/w/metrics.jsonl").read_text() == '{"step": 1}\n{"step": 2}\n'


def _stub(bin_dir: Path, name: str) -> Path:
    """An executable `name` on PATH that records its argv, one argument per line (NUL
    separated), in `bin_dir / name.argv`."""
    bin_dir.mkdir(exist_ok=True)
    stub = bin_dir / name
    stub.write_text(f'#!/usr/bin/env bash\nprintf "%s\\0" "$@" >> "{bin_dir / name}.argv"\n')
    stub.chmod(0o755)
    return bin_dir / f"{name}.argv"


def _argv(record: Path) -> list[list[str]]:
    """The recorded calls (a call ends where the next starts with its first argument)."""
    return record.read_text().split("\0")[:-1]


TRICKY = ["gs://b/my run", "--config.data.manual_dir=/data/with space/x", "--config.note=a'b"]


def test_tpu_pod_script_quotes_every_argument(tmp_path):
    record = _stub(tmp_path / "bin", "gcloud")
    env = dict(os.environ, PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}", TPU="pod", ZONE="z")
    config = "configs/vrp_sam.py:dataset=coco20i,fold=1"
    subprocess.run(
        ["bash", str(ROOT / "launch" / "tpu_pod.sh"), config, *TRICKY], env=env, check=True
    )
    argv = _argv(record)
    command = argv[argv.index("--command") + 1]
    assert argv[:5] == ["compute", "tpus", "tpu-vm", "ssh", "pod"]
    # what the worker's shell makes of the command line
    words = shlex.split(command)
    assert words[:6] == ["cd", "~/jaxvrp", "&&", "python", "-m", "jaxvrp.train"]
    assert words[6:] == [
        "--config",
        config,
        "--workdir",
        TRICKY[0],
        "--config.distributed=True",
        *TRICKY[1:],
    ]
    # and bash itself agrees (the worker runs bash): run it with a stub python
    python = _stub(tmp_path / "bin", "python")
    subprocess.run(["bash", "-c", command.replace("cd ~/jaxvrp && ", "")], env=env, check=True)
    assert _argv(python) == words[4:]


@pytest.mark.parametrize("script", ["local.sh", "multihost.sh", "slurm.sbatch"])
def test_other_launch_scripts_pass_arguments_through(tmp_path, script):
    record = _stub(tmp_path / "bin", "python")
    _stub(tmp_path / "bin", "srun")  # slurm: srun python ... (the stub records srun's argv)
    env = dict(
        os.environ,
        PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}",
        COORDINATOR="h:1",
        NUM_PROCESSES="2",
        PROCESS_ID="0",
    )
    workdir, *flags = TRICKY
    subprocess.run(
        ["bash", str(ROOT / "launch" / script), "configs/vrp_sam.py", workdir, *flags],
        env=env,
        check=True,
    )
    if script == "slurm.sbatch":
        record = tmp_path / "bin" / "srun.argv"
    argv = _argv(record)
    assert argv[argv.index("--workdir") + 1] == workdir
    assert all(f in argv for f in flags)
