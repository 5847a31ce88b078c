"""Per-PID reads of /proc under the host root, through psutil (its PROCFS_PATH points at the host's /proc)."""

from __future__ import annotations

import contextlib
import logging
import os

import psutil

from collector.model import HostProcess

log = logging.getLogger(__name__)

MAX_NAME_CHARS = 256  # a label value, not a document: longer names are cut


def use_host_root(host_root: str) -> None:
    """Points psutil at <host_root>/proc (node_exporter's --path.rootfs model)."""
    psutil.PROCFS_PATH = os.path.join(host_root, "proc")


def printable(text: str) -> str:
    """Text fit for a label value: undecodable bytes (kept by psutil as surrogates) become U+FFFD, long text is cut.

    Quotes, backslashes and newlines stay: the exposition library escapes them.
    """
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")[:MAX_NAME_CHARS]


def read_cgroup(pid: int) -> str:
    try:
        with open(os.path.join(psutil.PROCFS_PATH, str(pid), "cgroup"), encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


class ProcessUnavailable(Exception):
    """/proc cannot describe the PID. reason: pid_not_found (no such process: it exited, or NVML listed garbage)
    or access_denied (/proc hides it, e.g. mounted with hidepid=)."""

    def __init__(self, pid: int, reason: str) -> None:
        super().__init__(f"pid {pid}: {reason}")
        self.reason = reason


def describe(pid: int, with_cmdline: bool = False) -> HostProcess:
    """What /proc says about pid; raises ProcessUnavailable. The command line is read only when asked for (it can
    hold secrets; see collector.redact)."""
    if pid <= 0:
        raise ProcessUnavailable(pid, "pid_not_found")
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            start = proc.create_time()
            name = proc.name()
            cmdline: tuple[str, ...] = ()
            if with_cmdline:
                with contextlib.suppress(psutil.AccessDenied):
                    cmdline = tuple(printable(arg) for arg in proc.cmdline())
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        raise ProcessUnavailable(pid, "pid_not_found") from None
    except psutil.AccessDenied as err:
        log.debug("pid %d: %s", pid, err)
        raise ProcessUnavailable(pid, "access_denied") from None
    return HostProcess(
        pid=pid,
        name=printable(name),
        start_time=start,
        cgroup=read_cgroup(pid),
        cmdline=cmdline,
    )

