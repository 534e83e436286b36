"""Data-parallel search and training on CPU: two processes over gloo on loopback against one, faults, and the
up-front checks.

The two-process runs go through torchrun (`tests/distributed/worker.py` wraps `hwnas search` and `hwnas train`
to record gradients) and through `hwnas search --nproc 2` and `hwnas train --nproc 2`.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from hwnas.data import shard_loader
from tests.cli.test_cli import PLOTTED, TINY, _one_line_error
from tests.conftest import ROOT

WORKER = Path(__file__).with_name("worker.py")
RUN_FILES = ["alphas.json", "alphas.png", "cell_normal.png", "cell_reduce.png", "checkpoint.pt", "config.json",
             "genotype.json", "log.txt", "metrics.jsonl", "metrics.png", "summary.json"]  # fmt: skip
TRAIN_FILES = ["checkpoint.pt", "config.json", "genotype.json", "log.txt", "metrics.jsonl", "model.pt", "summary.json"]
# (TINY draws no plots: no metrics.png)
# 2 epochs of 4 steps (64 examples, batch 16), translated and cut out, with the auxiliary head
TRAINING = [*TINY, "--genotype", "DARTS_V1", "--epochs", "2", "--cutout", "3", "--auxiliary-weight", "0.4"]
SEARCHES = {  # name -> flags: every way a strategy reaches its gradients; 2 epochs of 2 steps on the tiny supernet
    "darts": [], "darts_unrolled": ["--unrolled"], "pcdarts": ["--strategy", "pcdarts", "--pc-k", "2"],
    "gdas": ["--strategy", "gdas"],
    "proxyless": ["--strategy", "proxyless"], "random": ["--strategy", "random", "--random-samples", "2"],
}  # fmt: skip


def _env() -> dict[str, str]:
    """One thread per process, as torchrun gives each: the 1- and 2-process runs compute alike, and contended
    cores do not slow OpenMP's spinning threads to a crawl."""
    pythonpath = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": pythonpath, "OMP_NUM_THREADS": "1"}


def _python(*args: str, nproc: int | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    """`python ARGS`, or under `torchrun --standalone --nproc_per_node NPROC` when `nproc` is given."""
    launcher = [] if nproc is None else ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return subprocess.run([sys.executable, *launcher, *args], capture_output=True, text=True, timeout=timeout,
                          env=_env(), cwd=ROOT)  # fmt: skip


@pytest.mark.parametrize("n", [32, 37])
@pytest.mark.parametrize("world", [2, 4])
def test_the_shards_of_a_step_make_up_its_global_batch(n, world):
    data = TensorDataset(torch.arange(n))
    whole = [x.tolist() for (x,) in shard_loader(data, 8, seed=3, epoch=1)]
    shards = [[x.tolist() for (x,) in shard_loader(data, 8, 3, 1, world, r)] for r in range(world)]
    assert sorted(i for batch in whole for i in batch) == list(range(n))
    assert whole != [x.tolist() for (x,) in shard_loader(data, 8, seed=3, epoch=2)]
    for step, batch in enumerate(whole):
        union = [i for shard in shards for i in shard[step]]
        assert len({len(shard[step]) for shard in shards}) == 1  # equal shards: a plain mean is the global mean
        if step < len(whole) - 1 or n % world == 0:
            assert sorted(union) == sorted(batch)
        else:  # DistributedSampler pads the last batch with examples from the start of the permutation
            assert set(batch) <= set(union) and len(union) - len(batch) == -n % world
    assert all(len(shard) == len(whole) for shard in shards)


def test_two_processes_step_with_the_one_process_gradients(tmp_path):
    """With BatchNorm isolated (`worker.py --isolate-bn`: normalisation by fixed statistics, so a shard and the
    whole batch are normalised alike), every optimiser step of a 2-process run uses the gradients of the 1-process
    run, both ranks stay one model, the genotypes agree and rank 1 writes nothing."""
    runs = {}
    for nproc in (1, 2):
        argv = [str(WORKER), str(tmp_path / f"out{nproc}"), "--isolate-bn"]
        tiny = TINY if nproc == 1 else PLOTTED  # rank 0 alone draws
        for name, flags in SEARCHES.items():
            argv += ["--", "search", *tiny, "--epochs", "2", *flags, "--run-dir", str(tmp_path / f"{name}-{nproc}")]
        result = _python(*argv, nproc=None if nproc == 1 else nproc)
        assert result.returncode == 0, result.stderr[-3000:]
        runs[nproc] = [torch.load(tmp_path / f"out{nproc}" / f"rank0-run{i}.pt") for i in range(len(SEARCHES))]
    for i, name in enumerate(SEARCHES):
        one, two = runs[1][i], runs[2][i]
        other_rank = torch.load(tmp_path / "out2" / f"rank1-run{i}.pt")
        assert len(one["grads"]) == len(two["grads"]) == 8, name
        for step, (a, b) in enumerate(zip(one["grads"], two["grads"])):
            assert a.shape == b.shape and (a - b).abs().max() <= 1e-5 * a.abs().max(), (name, step)
        assert all(torch.equal(a, b) for a, b in zip(two["grads"], other_rank["grads"])), name
        assert all(torch.equal(two["final"][k], other_rank["final"][k]) for k in two["final"]), name
        genotypes = [json.loads((tmp_path / f"{name}-{n}" / "genotype.json").read_text()) for n in (1, 2)]
        assert genotypes[0] == genotypes[1], name
        assert sorted(p.name for p in (tmp_path / f"{name}-2").iterdir()) == RUN_FILES
        summary = json.loads((tmp_path / f"{name}-2" / "summary.json").read_text())
        assert summary["world_size"] == 2
    assert json.loads((tmp_path / "out2" / "rank1-writes.json").read_text()) == []
    assert json.loads((tmp_path / "out2" / "rank0-writes.json").read_text())  # the audit sees rank 0's writes


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_train_with_the_one_process_gradients(tmp_path):
    """With BatchNorm isolated and drop-path off (its masks are drawn per process), every optimiser step of a
    2-process training run uses the 1-process run's gradients, each rank's shard augmented (translation, cutout) as
    its samples are in the whole batch; both ranks end as one model, the metrics and the test accuracy (each rank
    tests its share of the test split) agree, and rank 1 writes nothing."""
    grads = {}
    for nproc in (1, 2):
        result = _python(str(WORKER), str(tmp_path / f"out{nproc}"), "--isolate-bn", "--", "train", *TRAINING,
                         "--drop-path-prob", "0", "--run-dir", str(tmp_path / f"train-{nproc}"),
                         nproc=None if nproc == 1 else nproc)  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        grads[nproc] = torch.load(tmp_path / f"out{nproc}" / "rank0-run0.pt")["grads"]
    assert len(grads[1]) == len(grads[2]) == 8
    for step, (a, b) in enumerate(zip(grads[1], grads[2])):
        assert a.shape == b.shape and (a - b).abs().max() <= 1e-5 * a.abs().max(), step
    ranks = [torch.load(tmp_path / "out2" / f"rank{r}-run0.pt") for r in (0, 1)]
    assert all(torch.equal(a, b) for a, b in zip(ranks[0]["grads"], ranks[1]["grads"]))
    assert all(torch.equal(ranks[0]["final"][k], ranks[1]["final"][k]) for k in ranks[0]["final"])
    for one, two in zip(_metrics(tmp_path / "train-1"), _metrics(tmp_path / "train-2"), strict=True):
        for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
            assert two[key] == pytest.approx(one[key], rel=1e-4), (key, one, two)
    assert json.loads((tmp_path / "train-2" / "summary.json").read_text())["world_size"] == 2
    assert sorted(p.name for p in (tmp_path / "train-2").iterdir()) == TRAIN_FILES
    assert json.loads((tmp_path / "out2" / "rank1-writes.json").read_text()) == []


@pytest.mark.parametrize("command", ["search", "train"])
def test_batch_size_and_process_flags_are_checked_before_anything_starts(cli, tmp_path, command):
    run = tmp_path / "run"
    _one_line_error(cli(command, *TINY, "--batch-size", "15", "--nproc", "2", "--run-dir", str(run)),
                    "--batch-size 15", "2 processes")  # fmt: skip
    _one_line_error(cli(command, *TINY, "--nproc", "0", "--run-dir", str(run)), "--nproc")
    _one_line_error(cli(command, *TINY, "--dist-timeout", "0", "--run-dir", str(run)), "--dist-timeout")
    _one_line_error(cli(command, *TINY, "--sync-bn", "--nproc", "2", "--run-dir", str(run)), "--sync-bn needs CUDA")
    # under torchrun the world size is known from the environment before the process group is joined
    env = {**_env(), "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}
    result = subprocess.run([sys.executable, "-m", "hwnas", command, *TINY, "--batch-size", "15", "--run-dir",
                             str(run)], capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
    _one_line_error(result, "--batch-size 15")
    assert not run.exists()


def _rank_pid(parent: int, rank: int, timeout_s: float = 60) -> int:
    """The pid of the child of `parent` that runs as rank `rank` (from /proc/PID/environ)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for proc in Path("/proc").iterdir():
            try:
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
                if ppid == parent and f"RANK={rank}".encode() in (proc / "environ").read_bytes().split(b"\0"):
                    return int(proc.name)
            except (OSError, ValueError, IndexError):
                continue
        time.sleep(0.05)
    raise AssertionError(f"no rank {rank} process under {parent}")


def _wait_for(path: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank's process through /proc")
def test_a_killed_process_fails_the_job_and_resume_continues_with_any_world_size(cli, tmp_path):
    search = [*TINY, "--epochs", "3", "--nproc", "2"]
    reference = cli("search", *search, "--run-dir", str(tmp_path / "reference"))
    assert reference.returncode == 0, reference.stderr
    assert not list((tmp_path / "reference").glob("*.png"))  # --no-plots reaches the processes

    killed = tmp_path / "killed"
    job = subprocess.Popen([sys.executable, "-m", "hwnas", "search", *search, "--run-dir", str(killed)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())  # fmt: skip
    try:
        victim = _rank_pid(job.pid, 1)
        _wait_for(killed / "checkpoint.pt")
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        _stdout, stderr = job.communicate(timeout=120)
        assert time.monotonic() - killed_at < 30
    finally:
        if job.poll() is None:
            job.terminate()  # the launcher stops its processes on SIGTERM
            job.wait(60)
    # rank 0 may report the lost connection itself before the launcher stops it; the launcher has the last word
    assert job.returncode == 2 and "Traceback" not in stderr, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("hwnas: error: process 1 of 2 was killed by SIGKILL") and f"--resume {killed}" in last
    assert 1 <= len((killed / "metrics.jsonl").read_text().splitlines()) < 3

    resumed = cli("search", "--resume", str(killed), "--nproc", "2", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    for name in ("genotype.json", "alphas.json"):
        assert (killed / name).read_text() == (tmp_path / "reference" / name).read_text(), name
    assert len((killed / "metrics.jsonl").read_text().splitlines()) == 3

    # the checkpoint of 2 processes continues in 1 (the checkpoint holds no per-process state)
    result = cli("search", "--resume", str(killed), "--epochs", "4", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert len((killed / "metrics.jsonl").read_text().splitlines()) == 4
    assert json.loads((killed / "summary.json").read_text())["world_size"] == 1


def test_two_processes_killed_within_an_epoch_resume_from_its_checkpoint(tmp_path):
    """A 2-process random search checkpointing after every step, killed in its second epoch's second step (of 4),
    resumes there and ends as the run that never stopped: the epoch's metrics and the candidates' val counts so far
    were summed over the ranks into the checkpoint, and every rank goes on from them."""
    search = [*TINY, "--batch-size", "8", "--epochs", "2", "--strategy", "random", "--random-samples", "2",
              "--checkpoint-minutes", "1e-9"]  # fmt: skip
    killed = tmp_path / "killed"  # the run that never stops goes first, in the same launch
    died = _python(str(WORKER), str(tmp_path / "out"), "--exit-at", "5", "--", "search", *search, "--run-dir",
                   str(tmp_path / "reference"), "--", "search", *search, "--run-dir", str(killed), nproc=2)  # fmt: skip
    assert died.returncode != 0 and (tmp_path / "reference" / "summary.json").is_file(), died.stderr[-3000:]
    so_far = torch.load(killed / "checkpoint.pt", weights_only=False)["epoch_so_far"]
    assert (so_far["epoch"], so_far["steps"]) == (1, 1)
    resumed = _python(str(WORKER), str(tmp_path / "out"), "--", "search", "--resume", str(killed), "--no-progress",
                      nproc=2)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "after epoch 1 and 1 steps of the next" in (killed / "log.txt").read_text()
    for name in ("genotype.json", "alphas.json"):
        assert (killed / name).read_text() == (tmp_path / "reference" / name).read_text(), name
    metrics = [[{k: v for k, v in json.loads(line).items() if k != "epoch_s"}
                for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
               for run in ("reference", "killed")]  # fmt: skip
    assert metrics[0] == metrics[1]


def test_two_processes_training_killed_within_an_epoch_resumes_from_its_checkpoint(tmp_path):
    """A 2-process training run (cutout, auxiliary head, drop-path) checkpointing after every step, killed at its
    second epoch's second step, resumes there and ends as the run that never stopped: the same weights, bit for bit,
    and the same per-epoch metrics (the epoch's running sums were averaged over the ranks into the checkpoint); one
    process then continues it."""
    training = [*TRAINING, "--drop-path-prob", "0.3", "--checkpoint-minutes", "1e-9"]
    out, reference, killed = str(tmp_path / "out"), str(tmp_path / "reference"), tmp_path / "killed"
    # the run that never stops goes first, in the same launch
    died = _python(str(WORKER), out, "--exit-at", "5", "--", "train", *training, "--run-dir", reference, "--", "train",
                   *training, "--run-dir", str(killed), nproc=2)  # fmt: skip
    assert died.returncode != 0 and (tmp_path / "reference" / "summary.json").is_file(), died.stderr[-3000:]
    so_far = torch.load(killed / "checkpoint.pt", weights_only=False)["epoch_so_far"]
    assert (so_far["epoch"], so_far["steps"]) == (1, 1)
    resumed = _python(str(WORKER), out, "--", "train", "--resume", str(killed), "--no-progress", nproc=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "after epoch 1 and 1 steps of the next" in (killed / "log.txt").read_text()
    weights = [torch.load(tmp_path / run / "model.pt", weights_only=True)["state_dict"]
               for run in ("reference", "killed")]  # fmt: skip
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        torch.testing.assert_close(weights[1][key], weights[0][key], rtol=0, atol=0, msg=key)
    metrics = [[{k: v for k, v in row.items() if k != "epoch_s"} for row in _metrics(tmp_path / run)]
               for run in ("reference", "killed")]  # fmt: skip
    assert metrics[0] == metrics[1]
    # the checkpoint of 2 processes continues in 1 (the checkpoint holds no per-process state)
    more = _python("-m", "hwnas", "train", "--resume", str(killed), "--epochs", "3", "--no-progress")
    assert more.returncode == 0, more.stderr[-3000:]
    assert len(_metrics(killed)) == 3 and json.loads((killed / "summary.json").read_text())["world_size"] == 1


def test_a_stalled_process_fails_the_job_after_the_timeout(tmp_path):
    run = tmp_path / "run"
    started = time.monotonic()
    result = _python(str(WORKER), str(tmp_path / "out"), "--stall", "1", "1", "--timeout", "3", "--", "search", *TINY,
                     "--epochs", "3", "--run-dir", str(run), nproc=2, timeout=120)  # fmt: skip
    assert result.returncode != 0
    assert time.monotonic() - started < 90
    errors = [line for line in result.stderr.splitlines() if line.startswith("hwnas: error: ")]
    assert len(errors) == 1 and "process 0 of 2 lost the others" in errors[0] and "timeout" in errors[0], errors
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1


STOPPED_LAUNCH = """
import os, signal, sys, threading, time
from hwnas import distributed

def stop():  # once the agent has its own handlers in place, as when Ctrl-C reaches a running job
    while signal.getsignal(signal.{sig}) in (signal.default_int_handler, signal.SIG_DFL):
        time.sleep(0.05)
    time.sleep(1)
    os.kill(os.getpid(), signal.{sig})

threading.Thread(target=stop, daemon=True).start()
try:
    distributed.launch(2, ["-c", "import time; time.sleep(120)"])
except KeyboardInterrupt as err:
    kept = err  # as the CLI keeps it until it has said how to continue
    print(type(err).__name__, getattr(err, "exit_code", None))
print(sorted(t.name for t in threading.enumerate() if t.name.startswith("Rendezvous")))
"""


@pytest.mark.parametrize("sig,raised", [("SIGINT", "KeyboardInterrupt None"), ("SIGTERM", "Interrupted 143")])
def test_a_stopped_launch_leaves_no_rendezvous_heartbeat_behind(sig, raised):
    """torch leaves the rendezvous of a signalled agent open, and its keep-alive thread ran on into interpreter
    shutdown, where a heartbeat in flight aborted the launcher now and then (SIGABRT, `terminate called without an
    active exception`, after the line saying how to continue)."""
    result = _python("-c", STOPPED_LAUNCH.format(sig=sig), timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines() == [raised, "[]"], result.stdout + result.stderr[-3000:]
