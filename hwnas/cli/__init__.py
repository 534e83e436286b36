"""`hwnas` command line: one module per command, each with `add_arguments(parser)` and `run(args) -> int`.

A user's mistake (HwnasError) prints one line `hwnas: error: ...` and exits with code 2.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import re
import signal
import sys
import threading

from hwnas.errors import HwnasError, Interrupted, ctrl_c_recorded, error_message

COMMANDS = {
    "search": "search an architecture (DARTS, PC-DARTS, GDAS, ProxylessNAS, random) on a supernet",
    "train": "train a derived network from scratch",
    "export": "export a network to ONNX / TFLite, check it numerically and time it",
    "profile": "measure per-op latency on a device into a lookup table",
    "targets": "list the latency tables available as search targets",
    "predict": "predict latency for op configurations a table lacks",
    "info": "versions, backends found and latency tables available",
}


class OneLineErrorParser(argparse.ArgumentParser):
    """Usage mistakes print one line `hwnas: error: ...` and exit with code 2, like every other user error.

    A value that starts with a minus and a digit (`--latency -5ms`) is taken as the option's value, as Python 3.13's
    argparse does, so the option's own check names what is wrong with it rather than "expected one argument".
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-\.?\d")

    def error(self, message: str):
        self.exit(2, f"hwnas: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="hwnas", description="Hardware-aware neural architecture search.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineErrorParser)
    for name, help_text in COMMANDS.items():
        module_name = f"hwnas.cli.{name}"
        try:
            if importlib.util.find_spec(module_name) is None:
                continue
        except ModuleNotFoundError:
            continue
        module = importlib.import_module(module_name)
        command = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(command)
        command.set_defaults(run=module.run, command_parser=command)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # named by the subcommand, whose --help lists what it takes
        args.command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    sigterm = _SigtermStop.install()
    try:
        with ctrl_c_recorded():
            try:
                return int(args.run(args) or 0)
            finally:
                sigterm.reporting = True
    except HwnasError as err:
        print(f"hwnas: error: {error_message(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        from hwnas.distributed import reports_interrupt

        stop = err if isinstance(err, Interrupted) else Interrupted()
        if reports_interrupt():
            print(stop.message(), file=sys.stderr)
        return stop.exit_code
    except BrokenPipeError:  # stdout closed early (`hwnas targets | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    finally:
        sigterm.restore()


class _SigtermStop:
    """SIGTERM raises `Interrupted` (exit code 143) instead of killing the process where it stands, so that what
    is open closes: the processes a command started, temporary files. A run's training loop asks for more
    (`hwnas.run.CheckpointClock`: a checkpoint first). Once the command has ended and `main` reports, a SIGTERM
    (a launcher stopping the others of a failed multi-process run) exits quietly with the same code: raised there,
    `Interrupted` printed a traceback beside the report. Off the main thread, nothing is installed."""

    def __init__(self, previous):
        self.previous, self.reporting = previous, False

    @classmethod
    def install(cls) -> _SigtermStop:
        stop = cls(None)
        if threading.current_thread() is threading.main_thread():
            stop.previous = signal.signal(signal.SIGTERM, stop)
        return stop

    def __call__(self, signum, frame):
        if self.reporting:
            raise SystemExit(128 + signum)
        raise Interrupted(reason="stopped by SIGTERM", exit_code=128 + signum)

    def restore(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


if __name__ == "__main__":
    sys.exit(main())
