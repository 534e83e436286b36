"""Runs triton_interpreted.py with TRITON_INTERPRET=1 in a new interpreter (kernels are jitted at import)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")


def test_triton_kernels_under_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    target = Path(__file__).with_name("triton_interpreted.py")
    cmd = [sys.executable, "-m", "pytest", str(target), "-o", "addopts=", "-q", "-p", "no:cacheprovider"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-2000:]
    summary = done.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "skipped" not in summary, summary  # the kernels really ran
