import json
import os
import select
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from hwnas.config import DataConfig, SearchConfig, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
# One intra-op thread: the test tensors are tiny, and two OpenMP threads on a busy 2-core machine spin-wait
# each other into 10-50x slower steps (measured on the mobile supernet: 0.3 s vs 3-20 s per step).
torch.set_num_threads(1)


def tiny_search_config(**changes) -> SearchConfig:
    """A supernet small enough for a search epoch in a second or two on fake 8x8 data; on the CPU even where there
    is a GPU, since tests compare runs exactly (tests/test_device.py runs on CUDA)."""
    base = SearchConfig(data=DataConfig(dataset="fake", image_size=8), epochs=2, batch_size=16, init_channels=4,
                        layers=3, device="cpu")  # fmt: skip
    return base.replace(**changes)


def tiny_train_config(**changes) -> TrainConfig:
    base = TrainConfig(data=DataConfig(dataset="fake", image_size=8), epochs=2, batch_size=16, init_channels=4,
                       layers=3, device="cpu")  # fmt: skip
    return base.replace(**changes)


class StoppedHere(Exception):
    """What a test raises where a run is stopped, as a signal would stop it."""


def stop_when_metrics_reach(patch: pytest.MonkeyPatch, rows: int) -> None:
    """RunDir.write_metrics raises StoppedHere when asked for `rows` rows: the run stops after that epoch's
    checkpoint was saved and before its metrics were written."""
    from hwnas.run import RunDir

    write_metrics = RunDir.write_metrics

    def stopping(self, history):
        history = list(history)
        if len(history) == rows:
            raise StoppedHere
        write_metrics(self, history)

    patch.setattr(RunDir, "write_metrics", stopping)


_SESSION_PYTHONPATH = os.environ.get("PYTHONPATH", "")


def _cli_env() -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }


# A process that has imported hwnas.cli (and torch with it: 4 s on an AMD EPYC VM, most of a failing command's
# time), torch._dynamo (which a torch optimizer imports when it is made: 2.6 s) and the plots (matplotlib: 0.8 s),
# and runs each command in a fork of itself: a fresh process per command, as `python -m hwnas` gives, with the
# test's environment, working directory, stdout and stderr. These imports start no thread (checked here).
_FORK_SERVER = r"""
import json, os, sys, threading, traceback
import torch._dynamo, hwnas.plots
from hwnas.cli import build_parser, main
build_parser()  # imports every subcommand's module
assert threading.active_count() == 1, "a thread before fork"
for line in sys.stdin:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.environ.clear()
            os.environ.update(request["env"])
            os.chdir(request["cwd"])
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
                os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
            sys.argv = ["hwnas", *request["args"]]
            code = main(request["args"])
        except SystemExit as stop:  # as the interpreter exits on it
            if stop.code is None or isinstance(stop.code, int):
                code = stop.code or 0
            else:
                print(stop.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    print(json.dumps({"pid": pid}), flush=True)
    print(json.dumps({"returncode": os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])}), flush=True)
"""


class _ForkServer:
    def __init__(self):
        self.process = subprocess.Popen([sys.executable, "-c", _FORK_SERVER], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, env=_cli_env(), cwd=ROOT)  # fmt: skip
        self.pending = b""

    def _reply(self, timeout: float | None) -> dict:
        fd = self.process.stdout.fileno()
        while b"\n" not in self.pending:
            if not select.select([fd], [], [], timeout)[0]:
                raise TimeoutError
            chunk = os.read(fd, 4096)
            if not chunk:
                raise RuntimeError("the CLI fork server exited")
            self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        return json.loads(line)

    def run(self, args: tuple[str, ...], cwd, timeout: float) -> subprocess.CompletedProcess:
        with tempfile.TemporaryDirectory() as tmp:
            out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
            request = {"args": list(args), "env": _cli_env(), "cwd": str(cwd or os.getcwd()), "stdout": str(out),
                       "stderr": str(err)}  # fmt: skip
            self.process.stdin.write((json.dumps(request) + "\n").encode())
            self.process.stdin.flush()
            pid = self._reply(60)["pid"]
            try:
                code = self._reply(timeout)["returncode"]
            except TimeoutError:
                os.kill(pid, signal.SIGKILL)
                self._reply(60)
                raise subprocess.TimeoutExpired(["hwnas", *args], timeout) from None
            return subprocess.CompletedProcess(["hwnas", *args], code, out.read_text(), err.read_text())


_fork_server: _ForkServer | None = None


def run_cli(*args: str, cwd=None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m hwnas ARGS` as a user would run it: in a fresh process (a fork of one that has imported the CLI,
    where the platform forks and the test keeps the session's PYTHONPATH), with this process's environment."""
    global _fork_server
    # a PYTHONPATH of the test's own (a fake package) takes an interpreter started with it
    if not hasattr(os, "fork") or os.environ.get("PYTHONPATH", "") != _SESSION_PYTHONPATH:
        return subprocess.run([sys.executable, "-m", "hwnas", *args], capture_output=True, text=True, cwd=cwd,
                              timeout=timeout, env=_cli_env())  # fmt: skip
    if _fork_server is None or _fork_server.process.poll() is not None:
        _fork_server = _ForkServer()
    return _fork_server.run(args, cwd, timeout)


@pytest.fixture
def cli():
    return run_cli
