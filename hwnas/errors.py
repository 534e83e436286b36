"""The exceptions the CLI turns into one line: `HwnasError` (a user's mistake, exit code 2) and `Interrupted`
(work stopped by Ctrl-C or SIGTERM, with the command that continues it)."""

import re
from collections.abc import Iterator
from contextlib import contextmanager

_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # terminal colour codes


class HwnasError(Exception):
    """A problem with the user's input: a bad name, an inconsistent config, a malformed file.

    The message must name the problem in one line. Anything that is not a HwnasError is a bug.
    """


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
