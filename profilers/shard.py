"""Measuring on several devices of one model at once: one worker thread per device, all drawing from one queue.

Devices of one model are interchangeable, so the jobs (op configurations, whole networks) form a single queue
that every device's thread takes from until it is empty: a faster device takes more, and when a device fails
(a phone unplugged mid-profile) the others carry on with what is left. Each result is handed to `record`
under one lock as soon as it is measured, so the caller persists every finished entry (an atomic table save);
a failed device's job in flight is reported unmeasured, not retried (it may be what broke the device).

A phone's thread mostly waits on adb, so threads suit phones. GPUs are timed with CUDA events, which a
launch-bound op's Python overhead reaches: with several GPUs in one process the threads take turns at the GIL
between launches, so tiny ops may read slower than on one GPU alone.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from hwnas.errors import HwnasError
from hwnas.profilers.base import Profiler
from hwnas.profilers.protocol import Measurement

log = logging.getLogger(__name__)
Job = TypeVar("Job")


@dataclass(frozen=True)
class DeviceFailure:
    device: str  # the profiler's label (adb serial, cuda:1)
    error: str
    measured: int  # jobs it finished before failing


@dataclass
class ShardReport(Generic[Job]):
    measured: dict[str, int]  # label -> jobs measured there
    failures: list[DeviceFailure] = field(default_factory=list)
    unmeasured: list[Job] = field(default_factory=list)  # in flight on a failed device, or left when all failed

    def failed(self, profiler: Profiler) -> bool:
        return any(f.device == profiler.label for f in self.failures)

    def describe_failures(self) -> str:
        return "; ".join(f"device {f.device} failed after {f.measured} measured ({f.error})" for f in self.failures)


@contextlib.contextmanager
def open_devices(options: Sequence[dict]) -> Iterator[list[Profiler]]:
    """Profilers for `options` (get_profiler keyword arguments, one dict per device), refusing devices of
    different models; closed on exit, a close that fails (a device gone) only logged."""
    from hwnas.profilers import get_profiler

    profilers: list[Profiler] = []
    try:
        for device_options in options:
            profilers.append(get_profiler(**device_options))
        models = {p.label: p.device_name() for p in profilers}
        if len(set(models.values())) > 1:
            listing = ", ".join(f"{label}: {model}" for label, model in models.items())
            raise HwnasError(
                f"the devices are of different models ({listing}); a table holds one model: choose devices of "
                "one model (--serial, --gpu-ids) and profile each model into its own --out"
            )
        yield profilers
    finally:
        for profiler in profilers:
            try:
                profiler.close()
            except HwnasError as err:
                log.warning("could not clean up %s: %s", profiler.label, err)


def measure_sharded(
    profilers: Sequence[Profiler],
    jobs: Sequence[Job],
    measure: Callable[[Profiler, Job], Measurement],
    record: Callable[[Profiler, Job, Measurement], None],
    desc: str | None,
) -> ShardReport[Job]:
    """Measure every job on whichever device is free; `record` (called under one lock) keeps each result;
    a progress bar labelled `desc` (None: none).

    A device whose `measure` raises HwnasError stops; any other exception stops every device and is re-raised.
    """
    from tqdm import tqdm

    queue = collections.deque(jobs)
    lock = threading.Lock()
    report: ShardReport[Job] = ShardReport({p.label: 0 for p in profilers})
    crashed: list[BaseException] = []
    bar = tqdm(total=len(jobs), desc=desc, unit="job", file=sys.stderr, disable=not jobs or desc is None)

    def work(profiler: Profiler) -> None:
        while True:
            with lock:
                if not queue or crashed:
                    return
                job = queue.popleft()
            try:
                m = measure(profiler, job)
            except HwnasError as err:
                with lock:
                    report.failures.append(DeviceFailure(profiler.label, str(err), report.measured[profiler.label]))
                    report.unmeasured.append(job)
                log.warning("%s failed: %s", profiler.label, err)
                return
            except BaseException as err:  # a bug, or an interrupt: stop every device
                with lock:
                    crashed.append(err)
                return
            with lock:
                try:
                    record(profiler, job, m)
                except BaseException as err:
                    crashed.append(err)
                    return
                report.measured[profiler.label] += 1
                bar.update()

    if len(profilers) == 1:
        work(profilers[0])
    else:
        threads = [threading.Thread(target=work, args=(p,), name=f"profile-{p.label}", daemon=True) for p in profilers]
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                thread.join()
        except BaseException:
            with lock:
                crashed.append(KeyboardInterrupt())  # stop the workers after their job in flight
            raise
    bar.close()
    if crashed:
        raise crashed[0]
    report.unmeasured.extend(queue)
    return report
