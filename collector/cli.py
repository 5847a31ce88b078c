"""Command line: options and config file, one collection (or one per --interval), the file, exit codes.

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
import re
import signal
import sys
import threading
from collections.abc import Sequence
from typing import IO, Any, Optional, Union

from collector import __version__, state
from collector.metrics import render_failure
from collector.run import Options, collect
from collector.textfile import WriteError, atomic_write

log = logging.getLogger("gpu-proc-collector")

TEXTFILE_NAME = "gpu_processes.prom"
DEFAULT_STATE_DIR = "/var/lib/gpu-proc-collector"
POD_RESOURCES_SOCKET = "var/lib/kubelet/pod-resources/kubelet.sock"

EXIT_OK, EXIT_COLLECTION_FAILED, EXIT_USAGE, EXIT_WRITE_FAILED, EXIT_DEADLINE, EXIT_LOCKED = 0, 1, 2, 3, 4, 75
DEFAULT_DEADLINE = 40.0  # below the unit's TimeoutStartSec=50, so the run, not systemd, writes the failed file

# Config file keys (JSON object) and the option each one sets; the command line wins over the file.
CONFIG_KEYS: dict[str, Union[type, tuple[type, ...]]] = {
    "textfile_dir": str,
    "host_root": str,
    "state_dir": str,
    "devices": list,
    "pod_resources_socket": str,
    "pod_resources_timeout": (int, float),
    "resource_names": list,
    "label_prefix": str,
    "interval": (int, float),
    "log_level": str,
    "command_args": bool,
    "max_process_series": int,
    "deadline": (int, float),
}


class UsageError(Exception):
    pass


def parse_devices(text: str) -> frozenset[int]:
    """`0,1,3` (the seed's gpu.devices) -> {0, 1, 3}; empty means every GPU."""
    try:
        devices = frozenset(int(part) for part in text.replace(" ", "").split(",") if part != "")
    except ValueError:
        raise UsageError(f"--devices takes GPU indices separated by commas, e.g. 0,1 (got {text!r})") from None
    if any(d < 0 for d in devices):
        raise UsageError(f"--devices takes non-negative GPU indices (got {text!r})")
    return devices


def build_parser() -> argparse.ArgumentParser:
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
    parser.add_argument("--host-root", metavar="DIR", help="read every host path under DIR (default /)")
    parser.add_argument("--state-dir", metavar="DIR", help=f"where runs keep state (default {DEFAULT_STATE_DIR})")
    parser.add_argument("--devices", metavar="LIST", help="only these GPU indices, e.g. 0,1 (default: all)")
    parser.add_argument("--pod-resources-socket", metavar="PATH",
                        help=f"kubelet pod-resources socket (default <host-root>/{POD_RESOURCES_SOCKET})")
    parser.add_argument("--pod-resources-timeout", metavar="SECONDS", type=float,
                        help="deadline of the pod-resources call (default 10)")
    parser.add_argument("--resource-name", metavar="NAME", action="append", dest="resource_names",
                        help="extra extended-resource name that carries GPUs (repeatable); nvidia.com/gpu, "
                        "nvidia.com/gpu.shared and nvidia.com/mig-* are always recognised")
    parser.add_argument("--label-prefix", metavar="PREFIX",
                        help="prefix for the pod/namespace/container labels of the native metrics, e.g. k8s_")
    parser.add_argument("--command-args", action="store_true", default=None,
                        help="export each process's command line, secrets redacted, as gpu_process_command_info "
                        "(off by default: command lines can hold secrets)")
    parser.add_argument("--max-process-series", metavar="N", type=int,
                        help="per-process series per node (default 2000); beyond it the largest memory holders keep "
                        "theirs and the rest are summed per device and owner")
    parser.add_argument("--deadline", metavar="SECONDS", type=float,
                        help="a run that takes longer writes gpu_proc_collector_up 0 and exits 4 (default 40)")
    parser.add_argument("--interval", metavar="SECONDS", type=float,
                        help="keep running, one collection per interval (default: one collection, then exit)")
    parser.add_argument("--config", metavar="FILE", help="JSON file with any of: " + ", ".join(CONFIG_KEYS))
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="default info")
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
    for key, value in config.items():
        if key not in CONFIG_KEYS:
            raise UsageError(f"config {path}: unknown key {key!r} (known: {', '.join(CONFIG_KEYS)})")
        wrong_bool = isinstance(value, bool) and CONFIG_KEYS[key] is not bool
        if value is not None and (wrong_bool or not isinstance(value, CONFIG_KEYS[key])):
            raise UsageError(f"config {path}: {key} has the wrong type ({type(value).__name__})")
    return config


def _device_set(devices: Any) -> Optional[frozenset[int]]:
    """The --devices option or the config's list; None (every GPU) when empty or absent."""
    if isinstance(devices, list):
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in devices):
            raise UsageError("devices must list non-negative GPU indices")
        return frozenset(devices) or None
    if isinstance(devices, str):
        return parse_devices(devices) or None
    return None


def _check_values(merged: dict[str, Any]) -> None:
    for key, option in (("interval", "--interval"), ("pod_resources_timeout", "--pod-resources-timeout"),
                        ("deadline", "--deadline")):
        if merged.get(key) is not None and merged[key] <= 0:
            raise UsageError(f"{option} must be a positive number of seconds")
    if merged.get("max_process_series") is not None and merged["max_process_series"] < 0:
        raise UsageError("--max-process-series must be 0 or more")
    label_prefix = merged.get("label_prefix") or ""
    if label_prefix and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", label_prefix):
        raise UsageError(f"--label-prefix must be letters, digits and underscores (got {label_prefix!r})")
    if not all(isinstance(name, str) and name for name in merged.get("resource_names") or ()):
        raise UsageError("resource_names must list extended-resource names")


def settings(argv: Optional[Sequence[str]]) -> tuple[Options, dict[str, Any]]:
    args = build_parser().parse_args(argv)
    merged: dict[str, Any] = load_config(args.config) if args.config else {}
    for key in CONFIG_KEYS:
        value = getattr(args, key, None)
        if value is not None:
            merged[key] = value
    merged["stdout"] = args.stdout or not merged.get("textfile_dir")
    if args.stdout:
        merged.pop("textfile_dir", None)

    device_set = _device_set(merged.get("devices"))
    _check_values(merged)
    timeout = merged.get("pod_resources_timeout")
    label_prefix = merged.get("label_prefix") or ""
    max_series = merged.get("max_process_series")
    merged["deadline"] = float(merged.get("deadline") or DEFAULT_DEADLINE)
    host_root = merged.get("host_root") or "/"
    options = Options(
        host_root=host_root,
        state_dir=merged.get("state_dir") or DEFAULT_STATE_DIR,
        devices=device_set,
        pod_resources_socket=merged.get("pod_resources_socket") or os.path.join(host_root, POD_RESOURCES_SOCKET),
        pod_resources_timeout=Options.pod_resources_timeout if timeout is None else float(timeout),
        resource_names=tuple(merged.get("resource_names") or ()),
        label_prefix=label_prefix,
        command_args=bool(merged.get("command_args")),
        max_process_series=Options.max_process_series if max_series is None else max_series,
    )
    return options, merged


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


def write_output(text: bytes, merged: dict[str, Any]) -> int:
    if merged["stdout"]:
        sys.stdout.buffer.write(text)
        sys.stdout.flush()
        return EXIT_OK
    try:
        atomic_write(os.path.join(merged["textfile_dir"], TEXTFILE_NAME), text)
    except WriteError as err:
        log.error("%s (the previous file is left as it was)", err)
        return EXIT_WRITE_FAILED
    return EXIT_OK


class Watchdog:
    """Bounds a whole run: NVML calls are C calls no Python timeout can interrupt, so past the deadline another
    thread writes the failed-run file (up 0, no process series) and ends the process. It never overwrites a
    file the run itself is already writing."""

    def __init__(self, seconds: float, merged: dict[str, Any], previous: state.State) -> None:
        self.seconds = seconds
        self.merged = merged
        self.previous = previous
        self.publishing = threading.Lock()
        self._timer = threading.Timer(seconds, self._expired)
        self._timer.daemon = True

    def __enter__(self) -> Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()

    def _expired(self) -> None:
        if not self.publishing.acquire(blocking=False):
            return  # the run is writing its own result
        log.error("the run exceeded its %g s deadline (an NVML call hung?); writing gpu_proc_collector_up 0",
                  self.seconds)
        write_output(render_failure(self.previous.last_success, self.seconds), self.merged)
        sys.stderr.flush()
        os._exit(EXIT_DEADLINE)


def run_once(options: Options, merged: dict[str, Any]) -> int:
    lock = RunLock(options.state_dir)
    if not lock.acquire():
        log.error("another gpu-proc-collector run holds %s; this one exits without collecting", lock.path)
        return EXIT_LOCKED
    try:
        previous = state.load(options.state_dir)
        with Watchdog(merged["deadline"], merged, previous) as watchdog:
            outcome = collect(options, previous)
            with watchdog.publishing:
                code = write_output(outcome.text, merged)
        if code != EXIT_OK:
            return code
        if not outcome.ok:
            return EXIT_COLLECTION_FAILED
        state.save(options.state_dir, outcome.state)
        return EXIT_OK
    finally:
        lock.release()


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(stream=sys.stderr, format="gpu-proc-collector: %(levelname)s: %(message)s")
    try:
        options, merged = settings(argv)
    except UsageError as err:
        print(f"gpu-proc-collector: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    logging.getLogger().setLevel((merged.get("log_level") or "info").upper())
    interval = merged.get("interval")
    if interval is None:
        return run_once(options, merged)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    code = EXIT_OK
    while not stop.is_set():
        code = run_once(options, merged)
        stop.wait(float(interval))
    return code
