"""A function run in a fresh process: Ctrl-C as the process starts. (Stopping `hwnas profile`'s rounds, by
Ctrl-C, SIGTERM and SIGKILL, is tested in tests/latency/test_calibration.py.)"""

import os
import signal
import subprocess
import sys

from tests.conftest import ROOT

# Ctrl-C reaches the process group, so the fresh process too, just as it has started (and is importing), in a
# Python that has not yet started multiprocessing's resource tracker (the first spawn starts it).
CTRL_C_AS_IT_STARTS = """
import multiprocessing.context, os, signal, sys
from hwnas.fresh_process import in_fresh_process

start = multiprocessing.context.SpawnProcess.start
started = []

def start_then_ctrl_c(process):
    start(process)
    started.append(process)
    for pid in (process.pid, os.getpid()):
        os.kill(pid, signal.SIGINT)

multiprocessing.context.SpawnProcess.start = start_then_ctrl_c
try:
    in_fresh_process(os.getpid)
except KeyboardInterrupt:
    print(started[0].exitcode)  # it is stopped by then
else:
    sys.exit("the Ctrl-C was lost")
"""


def test_a_ctrl_c_as_the_process_starts_is_raised_here_and_dropped_there():
    """Raised in the caller once the process has started (an ignored SIGINT was lost, and the command went on
    measuring); the fresh process drops it (it was not killed by it) and is stopped without a traceback from the
    middle of its imports: it is terminated, or it finishes if it was quick."""
    done = subprocess.run([sys.executable, "-c", CTRL_C_AS_IT_STARTS], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert int(done.stdout) in (0, -signal.SIGTERM)
