"""Command line: options and config file into one Settings record, one collection (or one per --interval), the
file, exit codes.

Exit codes: 0 collected and written; 1 collection failed (the file says gpu_proc_collector_up 0); 2 bad usage or
configuration; 3 the file could not be written (the previous one is untouched); 4 the run passed its deadline (the
file says gpu_proc_collector_up 0); 75 another run holds the lock.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import IO, Any, Optional

from collector import __version__, state
from collector.metrics import render_failure
from collector.run import collect
from collector.settings import (
    CONFIG_TYPES,
    DEFAULTS,
    LOG_LEVELS,
    POD_RESOURCES_SOCKET,
    TEXTFILE_NAME,
    Settings,
    UsageError,
    build,
    check_types,
    parse_devices,
)
from collector.textfile import WriteError, atomic_write

log = logging.getLogger("gpu-proc-collector")

EXIT_OK, EXIT_COLLECTION_FAILED, EXIT_USAGE, EXIT_WRITE_FAILED, EXIT_DEADLINE, EXIT_LOCKED = 0, 1, 2, 3, 4, 75

__all__ = ["UsageError", "main", "parse_devices", "settings"]


def build_parser() -> argparse.ArgumentParser:
    d = DEFAULTS
    parser = argparse.ArgumentParser(
        prog="gpu-proc-collector",
        description="List every GPU process through NVML, find its pod, container or other owner from local "
        "sources, and write the metrics for node_exporter's textfile collector.",
    )
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--textfile-dir", metavar="DIR",
                     help=f"write DIR/{TEXTFILE_NAME} atomically (node_exporter's --collector.textfile.directory)")
    out.add_argument("--stdout", action="store_true", help="print the metrics instead of writing a file "
                     "(the default when no --textfile-dir is given)")
    parser.add_argument("--host-root", metavar="DIR", help=f"read every host path under DIR (default {d.host_root})")
    parser.add_argument("--state-dir", metavar="DIR", help=f"where runs keep state (default {d.state_dir})")
    parser.add_argument("--devices", metavar="LIST", help="only these GPU indices, e.g. 0,1 (default: all)")
    parser.add_argument("--pod-resources-socket", metavar="PATH",
                        help=f"kubelet pod-resources socket (default <host-root>/{POD_RESOURCES_SOCKET})")
    parser.add_argument("--pod-resources-timeout", metavar="SECONDS", type=float,
                        help=f"deadline of the pod-resources call (default {d.pod_resources_timeout:g})")
    parser.add_argument("--resource-name", metavar="NAME", action="append", dest="resource_names",
                        help="extra extended-resource name that carries GPUs (repeatable); nvidia.com/gpu, "
                        "nvidia.com/gpu.shared and nvidia.com/mig-* are always recognised")
    parser.add_argument("--label-prefix", metavar="PREFIX",
                        help="prefix for the pod/namespace/container labels of the native metrics, e.g. k8s_")
    parser.add_argument("--command-args", action="store_true", default=None,
                        help="export each process's command line, secrets redacted, as gpu_process_command_info "
                        "(off by default: command lines can hold secrets)")
    parser.add_argument("--max-process-series", metavar="N", type=int,
                        help=f"per-process series per node (default {d.max_process_series}); beyond it the largest "
                        "memory holders keep theirs and the rest are summed per device and owner")
    parser.add_argument("--deadline", metavar="SECONDS", type=float,
                        help=f"a run that takes longer writes gpu_proc_collector_up 0 and exits 4 "
                        f"(default {d.deadline:g})")
    parser.add_argument("--interval", metavar="SECONDS", type=float,
                        help="keep running, one collection per interval (default: one collection, then exit)")
    parser.add_argument("--config", metavar="FILE", help="JSON file with any of: " + ", ".join(CONFIG_TYPES))
    parser.add_argument("--log-level", choices=LOG_LEVELS, help=f"default {d.log_level}")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def load_config(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except OSError as err:
        raise UsageError(f"cannot read config {path}: {err.strerror}") from None
    except ValueError as err:
        raise UsageError(f"config {path} is not valid JSON: {err}") from None
    if not isinstance(config, dict):
        raise UsageError(f"config {path} must be a JSON object")
    check_types(config, f"config {path}")
    return config


def settings(argv: Optional[Sequence[str]]) -> Settings:
    """The config file's values, overridden by the command line's. Raises UsageError."""
    args = build_parser().parse_args(argv)
    values: dict[str, Any] = load_config(args.config) if args.config else {}
    for key in CONFIG_TYPES:
        value = getattr(args, key, None)
        if value is not None:
            values[key] = value
    if args.stdout:
        values["textfile_dir"] = None
    return build(values)


class RunLock:
    """An exclusive flock in the state directory: a manual run and the timer's never overlap."""

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
        atomic_write(settings.textfile, text)
    except WriteError as err:
        log.error("%s (the previous file is left as it was)", err)
        return EXIT_WRITE_FAILED
    return EXIT_OK


class Watchdog:
    """Bounds a whole run: NVML calls are C calls no Python timeout can interrupt, so past the deadline another
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


def run_once(settings: Settings) -> int:
    lock = RunLock(settings.state_dir)
    if not lock.acquire():
        log.error("another gpu-proc-collector run holds %s; this one exits without collecting", lock.path)
        return EXIT_LOCKED
    try:
        previous = state.load(settings.state_dir)
        with Watchdog(settings.deadline, settings, previous) as watchdog:
            outcome = collect(settings, previous)
            code = watchdog.publish(outcome.text)
        if code != EXIT_OK:
            return code
        if not outcome.ok:
            return EXIT_COLLECTION_FAILED
        state.save(settings.state_dir, outcome.state)
        return EXIT_OK
    finally:
        lock.release()


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(stream=sys.stderr, format="gpu-proc-collector: %(levelname)s: %(message)s")
    try:
        current = settings(argv)
    except UsageError as err:
        print(f"gpu-proc-collector: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    logging.getLogger().setLevel(current.log_level.upper())
    if current.interval is None:
        return run_once(current)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    code = EXIT_OK
    while not stop.is_set():
        code = run_once(current)
        stop.wait(current.interval)
    return code
