"""Ctrl-C whose KeyboardInterrupt Python drops (raised in a destructor or a garbage collector's callback), and a SIGTERM
while the CLI reports an error."""

import signal

import pytest

from hwnas import distributed
from hwnas.errors import HwnasError, ctrl_c_recorded
from hwnas.run import CheckpointClock


class _CtrlCInDestructor:
    def __del__(self):
        signal.raise_signal(signal.SIGINT)  # its handler runs here: Python prints the KeyboardInterrupt and drops it


def _lost_others():
    with distributed._collective("a gradient all-reduce"):
        raise RuntimeError("Connection closed by peer")  # what gloo raises in a rank whose peer has left


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_dropped_ctrl_c_is_raised_at_the_next_step_and_explains_the_lost_others():
    with ctrl_c_recorded():
        _CtrlCInDestructor()
        with pytest.raises(KeyboardInterrupt):  # the training loops poll the clock at every step
            CheckpointClock(0).poll()
        with pytest.raises(KeyboardInterrupt):  # the other ranks stopped for the Ctrl-C: not an error of theirs
            _lost_others()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert CheckpointClock(0).poll() == (False, False)  # forgotten once the command is over
    with pytest.raises(HwnasError, match="process 0 of 1 lost the others during a gradient all-reduce"):
        _lost_others()


def test_a_sigterm_while_an_error_is_reported_exits_quietly(monkeypatch, capsys):
    """A launcher stops the other processes of a failed run with SIGTERM, maybe while one prints its own error:
    raised there, `Interrupted` printed a traceback beside the report. It exits with 143, the report printed."""
    import hwnas.cli

    def message_then_sigterm(err):
        signal.raise_signal(signal.SIGTERM)
        return str(err)

    monkeypatch.setattr(hwnas.cli, "error_message", message_then_sigterm)
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stop:
        hwnas.cli.main(["search", "--steps", "0"])
    assert stop.value.code == 128 + signal.SIGTERM and signal.getsignal(signal.SIGTERM) is previous
    assert capsys.readouterr().err == ""  # stopped before its one line, as a SIGTERM'd process is
