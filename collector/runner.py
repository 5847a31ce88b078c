"""Runs collections: once (a timer's oneshot run) or one per interval for as long as the process lives (the
long-running service). Around each collection: the run lock, the state, a deadline watchdog, and the atomic
publication of the file; around the service: systemd's readiness and watchdog notifications and its signals
(collector.systemd), and per-process utilisation sampling between writes.

Exit codes: 0 collected and written (a service: stopped by SIGTERM/SIGINT); 1 collection failed (the file says
gpu_proc_collector_up 0); 3 the file could not be written (the previous one is untouched); 4 a collection passed
its deadline (the file says gpu_proc_collector_up 0); 75 another run holds the lock.
"""

from __future__ import annotations

import errno
import fcntl
import gc
import logging
import os
import sys
import threading
import time
from typing import IO, Callable, Optional

from collector import nvml, state
from collector.collection import collect
from collector.metrics import SeriesCache, render_failure
from collector.settings import Settings
from collector.systemd import Signals, notify
from collector.textfile import WriteError, atomic_write, remove_stale_temporaries

log = logging.getLogger("gpu-proc-collector")

EXIT_OK, EXIT_COLLECTION_FAILED, EXIT_WRITE_FAILED, EXIT_DEADLINE, EXIT_LOCKED = 0, 1, 3, 4, 75
GC_THRESHOLD = 10_000  # the first-generation threshold of the cyclic collector in a collection (Python's: 700)


class RunLock:
    """An exclusive flock in the state directory: a manual run, the timer's and the service never overlap."""

    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, "lock")
        self._file: Optional[IO[str]] = None

    def acquire(self) -> bool:
        """False when another run holds it. Without a usable state directory, runs go unlocked (logged)."""
        try:
            os.makedirs(os.path.dirname(self.path), mode=0o755, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - held for the run
        except OSError as err:
            log.warning("no state directory (%s): running without state or lock", err)
            return True
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return False
            raise
        return True

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def write_output(text: bytes, settings: Settings) -> int:
    if settings.textfile is None:
        sys.stdout.buffer.write(text)
        sys.stdout.flush()
        return EXIT_OK
    try:
        atomic_write(settings.textfile, text, durable=False)  # collector.textfile: why it need not be
    except WriteError as err:
        log.error("%s (the previous file is left as it was)", err)
        return EXIT_WRITE_FAILED
    return EXIT_OK


class Watchdog:
    """Bounds a collection: NVML calls are C calls no Python timeout can interrupt, so past the deadline another
    thread writes the failed-run file (up 0, no process series) and ends the process.

    Exactly one of the two publishes: the run and the watchdog each take `publishing` and look at `settled`
    under it. Whoever comes first writes and settles; the other does nothing. So the watchdog can never overwrite
    a file the run has written, even when it fires between the run's write and its cancel."""

    def __init__(self, seconds: float, settings: Settings, previous: state.State) -> None:
        self.seconds = seconds
        self.settings = settings
        self.previous = previous
        self._publishing = threading.Lock()
        self._settled = False
        self._timer = threading.Timer(seconds, self._expired)
        self._timer.daemon = True

    def __enter__(self) -> Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()

    def publish(self, text: bytes) -> int:
        """Writes the run's own file, unless the watchdog already wrote its own (then this process is ending)."""
        with self._publishing:
            if self._settled:  # not reached: the watchdog ends the process while it holds the lock
                return EXIT_DEADLINE
            self._settled = True
            return write_output(text, self.settings)

    def _expired(self) -> None:
        with self._publishing:
            if self._settled:
                return  # the run published its own result
            self._settled = True
            log.error("the run exceeded its %g s deadline (an NVML call hung?); writing gpu_proc_collector_up 0",
                      self.seconds)
            write_output(render_failure(self.previous.last_success, self.seconds), self.settings)
            sys.stderr.flush()
            os._exit(EXIT_DEADLINE)


def one_collection(settings: Settings, previous: Optional[state.State], session: Optional[nvml.Session] = None,
                   series: Optional[SeriesCache] = None) -> tuple[int, state.State]:
    """Collects, publishes and saves the state; returns the exit code and the state to carry on with. The
    long-running mode passes what it keeps between collections: its NVML session and its rendered series.
    previous None: the state file is read first, under the deadline like the rest of the run."""
    with Watchdog(settings.deadline, settings, previous or state.State()) as watchdog:
        if previous is None:
            previous = watchdog.previous = state.load(settings.state_dir)
        outcome = collect(settings, previous, session=session, series=series)
        code = watchdog.publish(outcome.text)
    if code != EXIT_OK:
        return code, previous
    if not outcome.ok:
        return EXIT_COLLECTION_FAILED, previous
    state.save(settings.state_dir, outcome.state)
    return EXIT_OK, outcome.state


def remove_leftovers(settings: Settings) -> None:
    """The temporary files of a run killed while it wrote its file or state (collector.textfile)."""
    if settings.textfile is not None:
        remove_stale_temporaries(settings.textfile, settings.deadline)
    remove_stale_temporaries(os.path.join(settings.state_dir, state.STATE_FILE), settings.deadline)


def run_once(settings: Settings) -> int:
    tune_gc()
    lock = RunLock(settings.state_dir)
    if not lock.acquire():
        log.error("another gpu-proc-collector run holds %s; this one exits without collecting", lock.path)
        return EXIT_LOCKED
    try:
        remove_leftovers(settings)
        code, _ = one_collection(settings, None)
        return code
    finally:
        lock.release()


def tune_gc() -> None:
    """The cyclic garbage collector of a run, the timer's and the long-running mode's. A collection builds
    thousands of records, label lists and samples that live until its file is written and then go by reference
    counting, not in cycles; at Python's threshold (700 new objects) the collector runs about 15 times per
    collection at 1,000 processes (about 30 in a timer run, which reads the state too) and walks them over and
    over: 1.5 to 3.5 ms of a cycle (docs/performance.md). At GC_THRESHOLD it runs about once in 30 cycles there,
    twice in a timer run, and what it is for, the few reference cycles a collection leaves (the watchdog and its
    timer thread), is still collected."""
    gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])


def serve(settings: Settings, reload: Callable[[], Settings]) -> int:
    """The long-running mode: one collection every settings.interval seconds, NVML kept initialised between them
    (a collection that meets a broken NVML writes up 0 and the next one initialises it again), per-process
    utilisation sampled every settings.sample_interval seconds in between. reload() re-reads the configuration
    on SIGHUP (a bad one is logged and the running one kept)."""
    lock = RunLock(settings.state_dir)
    if not lock.acquire():
        log.error("another gpu-proc-collector run holds %s; the service exits", lock.path)
        return EXIT_LOCKED
    signals = Signals()
    remove_leftovers(settings)
    tune_gc()
    session = nvml.Session(long_running=True)
    series = SeriesCache()
    previous: Optional[state.State] = None  # read by the first collection, under its deadline
    ready = False
    try:
        while not signals.stop.is_set():
            if signals.reload.is_set():
                signals.reload.clear()
                settings = _reloaded(settings, reload)
            signals.collecting.set()
            _, previous = one_collection(settings, previous, session, series)
            signals.collecting.clear()
            if session.needs_restart:
                log.error("the NVIDIA library this process loaded does not match the driver any more (upgraded?): "
                          "exiting so that systemd starts a new process with the new library")
                return EXIT_COLLECTION_FAILED
            if not ready:
                notify("READY=1")
                ready = True
            notify(f"WATCHDOG=1\nSTATUS=last collection {time.strftime('%H:%M:%S')}")
            _sample_until_next_write(settings, session, signals)
    finally:
        notify("STOPPING=1")
        session.close()
        lock.release()
    return EXIT_OK


def _sample_until_next_write(settings: Settings, session: nvml.Session, signals: Signals) -> None:
    assert settings.interval is not None
    next_write = time.monotonic() + settings.interval
    while not signals.stop.is_set() and not signals.reload.is_set():
        left = next_write - time.monotonic()
        if left <= 0:
            return
        if signals.stop.wait(min(settings.sample_interval, left)):
            return
        if next_write - time.monotonic() > 0:
            session.tick()
            notify("WATCHDOG=1")


def _reloaded(current: Settings, reload: Callable[[], Settings]) -> Settings:
    try:
        new = reload()
    except Exception as err:  # a usage error in the new file, or an unreadable one
        log.error("SIGHUP: configuration not reloaded, keeping the running one: %s", err)
        return current
    if new.interval is None:
        log.error("SIGHUP: the new configuration has no interval; keeping the running one")
        return current
    log.info("SIGHUP: configuration reloaded")
    return new
