"""The run directory: config, metrics (JSONL), α history, checkpoints, summary — all written atomically.

A run directory is either fresh, or holds a `config.json` and checkpoints from which `--resume` continues
exactly where the run stopped: checkpoints are taken at the end of each epoch, and within one every
`CheckpointClock.minutes` (a long epoch on a big dataset loses at most that much work to a kill). Every file is
written to a temporary name and renamed into place, so a run killed at any moment leaves either the previous or
the new version of each file, never half of one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import signal
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hwnas import distributed
from hwnas.errors import HwnasError, Interrupted, first_line_error, raise_if_ctrl_c

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give: mkstemp's files are private (0600)


def _write_atomic(path: str | Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, obj: Any) -> None:
    _write_atomic(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def write_text_atomic(path: str | Path, text: str) -> None:
    _write_atomic(path, lambda f: f.write(text.encode()))


def save_torch_atomic(path: str | Path, obj: Any) -> None:
    _write_atomic(path, lambda f: torch.save(obj, f))


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """The Python, NumPy and torch CPU generators' states, and `device`'s when it is a GPU (drop-path draws there)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Restore `rng_state`'s generators; the GPU's only when both runs are on one (a CPU resume ignores it)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class CheckpointClock:
    """Says, at each step of a training loop, whether to checkpoint now and whether to stop after it.

    A checkpoint is due `minutes` after the last one (0: at epoch ends only). SIGTERM (a cluster's preemption, a
    plain `kill`) asks for a checkpoint and a stop at the next step, where the default would kill the process
    mid-step; a second SIGTERM kills at once. With several ranks, rank 0's answer holds for all (one tiny
    broadcast per step), so that they checkpoint and stop at the same step: torchrun forwards a SIGTERM to every
    rank and gives them 30 s before it kills them.

    Use as a context manager around the loop: it holds the SIGTERM handler (main thread only) while the loop runs.
    """

    def __init__(self, minutes: float):
        self.minutes = minutes
        self.last = time.monotonic()
        self.stop_requested = False
        self._previous = None

    def __enter__(self) -> CheckpointClock:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _on_sigterm(self, signum, frame) -> None:
        if self.stop_requested:  # asked twice: stop now, as without the handler
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
        self.stop_requested = True
        log.warning("SIGTERM: stopping after a checkpoint at the next step (again: at once)")

    def poll(self) -> tuple[bool, bool]:
        """(checkpoint now, then stop): rank 0's answer on every rank. A Ctrl-C whose KeyboardInterrupt was dropped
        (`hwnas.errors.ctrl_c_recorded`) is raised here."""
        raise_if_ctrl_c()
        due = self.minutes > 0 and time.monotonic() - self.last >= 60.0 * self.minutes
        flags = distributed.broadcast_flags([due or self.stop_requested, self.stop_requested])
        return flags[0], flags[1]

    def reset(self) -> None:
        self.last = time.monotonic()

    @staticmethod
    def stopped() -> Interrupted:
        """What the loop raises after the checkpoint SIGTERM asked for (the CLI names the command to resume)."""
        return Interrupted(reason="stopped by SIGTERM after a checkpoint", exit_code=128 + signal.SIGTERM)


@dataclass
class EpochSoFar:
    """An epoch stopped at a mid-epoch checkpoint: what its loop needs to go on as if it never stopped."""

    epoch: int
    steps: int  # batches done; the resumed loaders skip them
    elapsed_s: float  # wall time so far, counted into the epoch's time
    totals: dict[str, Any]  # the loop's running metric sums (over the ranks: their average)
    extra: dict[str, Any] = field(default_factory=dict)  # a strategy's own state within the epoch

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any] | None) -> EpochSoFar | None:
        partial = (state or {}).get("epoch_so_far")
        return None if partial is None else cls(**partial)


class RunDir:
    """One run's directory. `kind` ("search" or "train") is recorded so a resume cannot mix them up."""

    def __init__(self, path: str | Path, kind: str):
        self.path = Path(path)
        self.kind = kind

    @classmethod
    def create(cls, path: str | Path, kind: str, config: dict[str, Any]) -> RunDir:
        run = cls(path, kind)
        if (run.path / CHECKPOINT).exists():
            raise HwnasError(f"run directory {run.path} already holds a run; pass --resume {run.path} to continue it")
        # a run that never reached its first checkpoint leaves these two; anything else is not ours to mix with
        if run.path.is_dir() and {p.name for p in run.path.iterdir()} - {"config.json", "log.txt"}:
            raise HwnasError(f"run directory {run.path} is not empty; give a new or empty one")
        try:
            write_json_atomic(run.path / "config.json", {"kind": kind, "config": config})
        except OSError as err:
            raise HwnasError(f"cannot write run directory {run.path}: {err.strerror or err}") from None
        run.attach_log()
        return run

    @classmethod
    def open(cls, path: str | Path, kind: str, log_to_file: bool = True) -> tuple[RunDir, dict[str, Any]]:
        """An existing run to resume: returns it and its stored config (read only unless `log_to_file`)."""
        run = cls(path, kind)
        if not run.path.is_dir():
            what = "is not a directory" if run.path.exists() else "does not exist"
            raise HwnasError(f"cannot resume: run directory {run.path} {what}")
        config_path = run.path / "config.json"
        try:
            stored = json.loads(config_path.read_text())
        except FileNotFoundError:
            raise HwnasError(f"cannot resume: {config_path} is missing") from None
        except json.JSONDecodeError as err:
            raise HwnasError(f"cannot resume: {config_path} is corrupt ({err})") from None
        if not isinstance(stored, dict) or stored.get("kind") != kind or "config" not in stored:
            raise HwnasError(f"cannot resume: {run.path} is not a {kind} run directory")
        if log_to_file:
            run.attach_log()
        return run, stored["config"]

    def attach_log(self) -> None:
        handler = logging.FileHandler(self.path / "log.txt")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        for old in [h for h in root.handlers if getattr(h, "_hwnas_run", False)]:
            root.removeHandler(old)
            old.close()
        handler._hwnas_run = True  # type: ignore[attr-defined]
        root.addHandler(handler)
        if root.level > logging.INFO or root.level == logging.NOTSET:
            root.setLevel(logging.INFO)

    # -- checkpoints -------------------------------------------------------------------------------------------
    def save_checkpoint(self, state: dict[str, Any]) -> None:
        save_torch_atomic(self.path / CHECKPOINT, {"kind": self.kind, **state})

    def load_checkpoint(self, mmap: bool = False) -> dict[str, Any] | None:
        """The run's checkpoint; `mmap`: its tensors left in the file, read when used (cheap for a look)."""
        path = self.path / CHECKPOINT
        if not path.exists():
            return None
        try:  # saved on any device, loaded anywhere
            state = torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
        except Exception as err:  # noqa: BLE001 - any unpickling failure means a corrupt file
            raise first_line_error(f"corrupt checkpoint {path}", err) from None
        if not isinstance(state, dict) or state.get("kind") != self.kind:
            raise HwnasError(f"checkpoint {path} is not a {self.kind} checkpoint")
        return state

    def check_epochs(self, epochs: int) -> None:
        """A resume may extend a run, not cut it short: `epochs` must cover the epochs its checkpoint has done."""
        state = self.load_checkpoint(mmap=True)
        done = 0 if state is None else state["epoch"] + 1
        if epochs < done:
            raise HwnasError(f"--epochs {epochs} is fewer than the {done} epochs {self.path} has done")

    # -- records -----------------------------------------------------------------------------------------------
    def write_json(self, name: str, obj: Any) -> None:
        write_json_atomic(self.path / name, obj)

    def write_metrics(self, rows: Iterable[dict[str, Any]]) -> None:
        """metrics.jsonl, rewritten whole from the checkpointed history (so a resume never duplicates rows)."""
        write_text_atomic(self.path / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
