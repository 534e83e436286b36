"""The exceptions the CLI turns into one line: `HwnasError` (a user's mistake, exit code 2) and `Interrupted`
(work stopped by Ctrl-C or SIGTERM, with the command that continues it)."""

import re
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # terminal colour codes


class HwnasError(Exception):
    """A problem with the user's input: a bad name, an inconsistent config, a malformed file.

    The message must name the problem in one line. Anything that is not a HwnasError is a bug.
    """


def error_message(err: HwnasError) -> str:
    """`err`'s one-line message, also where torch re-raised it from a DataLoader worker: torch makes a new error
    of the same type whose message is "Caught HwnasError in DataLoader worker process 0.", then the worker's whole
    traceback, which ends with the original's `hwnas.errors.HwnasError: <message>`."""
    text = str(err)
    original = f"\n{HwnasError.__module__}.{HwnasError.__qualname__}: "
    if text.startswith(f"Caught {HwnasError.__name__} ") and original in text:
        return text.rpartition(original)[2].strip()
    return text


def first_line_error(what: str, err: BaseException) -> HwnasError:
    """`what` failed, with the exception's type and the first line of its message (converters' and unpicklers'
    are long, and torch's coloured)."""
    lines = _ANSI.sub("", str(err)).strip().splitlines()
    return HwnasError(f"{what}: {type(err).__name__}: {lines[0] if lines else 'no message'}")


class Interrupted(KeyboardInterrupt):
    """Work stopped before its end that keeps what it has done: by Ctrl-C, or by SIGTERM after a checkpoint.
    `resume` is the command line that continues it, `exit_code` the process's (128 + the signal)."""

    def __init__(self, resume: str = "", reason: str = "interrupted", exit_code: int = 130):
        super().__init__(reason)
        self.resume, self.reason, self.exit_code = resume, reason, exit_code

    def message(self) -> str:
        return f"hwnas: {self.reason}{f'; continue with: {self.resume}' if self.resume else ''}"


@contextmanager
def resumable_by(resume: str) -> Iterator[None]:
    """Ctrl-C or a stop inside becomes an `Interrupted` naming `resume`, so the CLI's one line says how to
    continue."""
    try:
        yield
    except Interrupted as err:
        err.resume = err.resume or resume
        raise
    except KeyboardInterrupt:
        raise Interrupted(resume) from None


_ctrl_c_seen = False  # set by `ctrl_c_recorded`'s handler


@contextmanager
def ctrl_c_recorded() -> Iterator[None]:
    """Ctrl-C raises KeyboardInterrupt, as Python's own handler does, and is remembered for `raise_if_ctrl_c`:
    Python prints and drops an exception raised in a destructor or a garbage collector's callback (tqdm's, JAX's),
    and such a process went on (a rank of a search then reported the others lost instead of the Ctrl-C). Main
    thread only; SIGINT is left alone where Python's handler is not in place (ignored, as in a background job)."""
    global _ctrl_c_seen
    if threading.current_thread() is not threading.main_thread() or (
        signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return

    def record(signum, frame):
        global _ctrl_c_seen
        _ctrl_c_seen = True
        signal.default_int_handler(signum, frame)

    signal.signal(signal.SIGINT, record)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _ctrl_c_seen = False


def raise_if_ctrl_c() -> None:
    """KeyboardInterrupt if a Ctrl-C came while `ctrl_c_recorded` and its KeyboardInterrupt was dropped."""
    if _ctrl_c_seen:
        raise KeyboardInterrupt
