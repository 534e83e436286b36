"""A function run in a freshly spawned process, as `hwnas profile` measures each round: a process of its own that
never outlives the call, stops cleanly on Ctrl-C and SIGTERM, and stops by itself when its parent is killed."""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import threading
import time

from hwnas.errors import HwnasError


def in_fresh_process(fn, *args):
    """`fn(*args)` in a freshly spawned process (picklable arguments and result); its exception is raised here.

    The process never outlives this call: an exception here (Ctrl-C, SIGTERM) stops it, and it exits by itself
    once its parent is gone (killed outright), rather than go on measuring into a table, and timing against
    whatever runs next, as an orphan. It drops a Ctrl-C that comes during its imports, so as not to print a
    traceback from the middle of them: until its handlers are in place it is terminated instead. Here that Ctrl-C
    is raised once the process has started (it was held back meanwhile, not lost)."""
    import multiprocessing
    from multiprocessing import resource_tracker

    context = multiprocessing.get_context("spawn")
    resource_tracker.ensure_running()  # a spawn starts it otherwise, and unblocks SIGINT as it does
    results, sender = context.Pipe(duplex=False)
    process = context.Process(target=_send_result, args=(sender, os.getpid(), fn, args), daemon=True)
    started = False
    try:
        with _sigint_blocked():
            process.start()
        sender.close()
        results.recv()  # STARTED
        started = True
        ok, value = results.recv()
        process.join(STOP_GRACE_S)  # it exits by itself once it has sent its result (its exit handlers take a while)
    except EOFError:
        raise HwnasError(f"the measuring process died ({_exit_status(process)})") from None
    finally:
        sender.close()
        if process.pid is not None:  # it started
            if process.is_alive() and (started or results.poll()):  # as Ctrl-C would: it cleans up (locks, files)
                os.kill(process.pid, signal.SIGINT)
                process.join(STOP_GRACE_S)
            if process.is_alive():
                process.terminate()
            process.join()
        results.close()
    if not ok:
        raise value
    return value


STARTED = "started"  # what a fresh process sends first, once SIGINT raises KeyboardInterrupt in it


@contextlib.contextmanager
def _sigint_blocked():
    """SIGINT held back (blocked) in this thread meanwhile, and so in the processes started meanwhile: a Ctrl-C
    meanwhile is raised on leaving (in the main thread), where an ignored one would be lost."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def _exit_status(process) -> str:
    process.join()
    code = process.exitcode
    return f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"


def _send_result(sender, parent_pid: int, fn, args) -> None:
    """In the fresh process: `fn(*args)` or its exception into `sender`, while a thread watches the parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # drops a Ctrl-C held back since the start: the parent stops this
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.default_int_handler)  # how the parent stops it from now on
    sender.send(STARTED)
    threading.Thread(target=_exit_without, args=(parent_pid,), daemon=True).start()
    try:
        result = (True, fn(*args))
    except BaseException as err:  # noqa: BLE001 - raised again in the parent
        result = (False, err)
    try:
        sender.send(result)
    except (pickle.PicklingError, TypeError, AttributeError) as err:  # an unpicklable result or exception
        sender.send((False, HwnasError(f"{type(result[1]).__name__} from the measuring process: {err}")))
    sender.close()


PARENT_POLL_S = 0.5
STOP_GRACE_S = 10.0  # how long an interrupted measuring process has to stop before it is terminated


def _exit_without(parent_pid: int) -> None:
    """Exit this process once `parent_pid` is no longer its parent (the parent died; the process was adopted)."""
    while os.getppid() == parent_pid:
        time.sleep(PARENT_POLL_S)
    os._exit(1)
