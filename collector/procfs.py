"""Per-PID reads of /proc under the host root, straight from the files proc(5) describes (no psutil).

Two reads per process: `/proc/<pid>/stat` (name and start time) and `/proc/<pid>/cgroup`; `/proc/<pid>/cmdline`
only for a name the kernel may have cut (15 characters or more) or when the operator asked for command lines;
`/proc/stat`'s boot time once per run. The values are exactly the ones psutil (7.2.2: psutil/_pslinux.py and
psutil/__init__.py, `Process.name`, `create_time`, `cmdline`) returned here before, so labels and process
identities (PID + start time, in the state file) carry over; tests/test_procfs.py holds the two together:

- start time: `btime` of /proc/stat + stat's `starttime` (field 22) / `SC_CLK_TCK`, computed in the same order;
- name: the text between stat's first `(` and last `)`, decoded as file names are; when it is 15 characters or
  more (the kernel keeps 15 of a longer one) and the basename of the first command-line argument starts with it,
  that basename (psutil's `name()`: "gnome-keyring-d" -> "gnome-keyring-daemon");
- command line: NUL-separated, or space-separated where a process rewrote it (setproctitle), read as text
  (universal newlines), as psutil's `cmdline()`;
- errors: no such file or ESRCH -> pid_not_found (gone, or never there); EACCES/EPERM -> access_denied (hidepid=,
  another PID namespace); an unreadable command line keeps the short name, a zombie's empty one too; an unreadable
  cgroup file drops the process like a vanished one (without its cgroup its owner is unknown, not the host).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Optional

from collector.model import HostProcess

log = logging.getLogger(__name__)

MAX_NAME_CHARS = 256  # a label value, not a document: longer names are cut
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
KERNEL_NAME_CHARS = 15  # TASK_COMM_LEN - 1: the kernel cuts longer names to this
_FS_ENCODING = sys.getfilesystemencoding()
_FS_ERRORS = sys.getfilesystemencodeerrors()
_CHUNK = 8192

_proc = "/proc"
_proc_fd: Optional[int] = None  # an O_PATH descriptor of _proc, the files of a collection opened relative to it
_boot_time: Optional[float] = None


def use_host_root(host_root: str) -> None:
    """Reads <host_root>/proc from now on (node_exporter's --path.rootfs model); the boot time is read again.
    Called once per collection: the directory is looked up afresh each time (a long-running process keeps no
    descriptor of a /proc that was mounted again), and each process's files are then opened relative to it, which
    spares every open the walk down to it (docs/performance.md). Where it cannot be opened, files are opened by
    their whole path, which then fail as they did."""
    global _proc, _proc_fd, _boot_time  # noqa: PLW0603 - one host per process, set once per collection
    _proc = os.path.join(host_root, "proc")
    _boot_time = None
    if _proc_fd is not None:
        os.close(_proc_fd)
        _proc_fd = None
    with contextlib.suppress(OSError):
        _proc_fd = os.open(_proc, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


def printable(text: str) -> str:
    """Text fit for a label value: undecodable bytes (kept as surrogates) become U+FFFD, long text is cut.

    Quotes, backslashes and newlines stay: the exposition writer escapes them.
    """
    if text.isascii():  # what the round trip below gives, without it
        return text[:MAX_NAME_CHARS]
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")[:MAX_NAME_CHARS]


def _read(name: str) -> bytes:
    """The whole file, by its name under /proc ("<pid>/stat"). A read that returns less than it asked for has
    reached the end: stat, cgroup and /proc/stat are single-record seq_files (single_open), whose read copies the
    record whole unless the buffer is full (Linux fs/seq_file.c, seq_read_iter), cmdline's read fills the buffer
    until the arguments end (fs/proc/base.c, get_mm_cmdline), and a regular file reads short only at its end. So a
    file takes one read, not two (psutil, like io, reads again until an empty read: one more system call per
    file)."""
    if _proc_fd is None:
        fd = os.open(f"{_proc}/{name}", os.O_RDONLY | os.O_CLOEXEC)
    else:
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=_proc_fd)
    try:
        data = os.read(fd, _CHUNK)
        if len(data) < _CHUNK:
            return data
        chunks = [data]
        while data:
            data = os.read(fd, _CHUNK)
            chunks.append(data)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _text(data: bytes, encoding: str, errors: str) -> str:
    """bytes as a text-mode open() reads them: decoded, with universal newlines."""
    text = data.decode(encoding, errors)
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text


def read_cgroup(pid: int) -> str:
    """The process's cgroup file. Raises ProcessUnavailable: a process whose cgroup cannot be read (it exited after
    its stat was read) is gone, never a process of the host (its owner would be made up)."""
    try:
        return _text(_read(f"{pid}/cgroup"), "utf-8", "replace")
    except OSError as err:
        reason = "access_denied" if isinstance(err, PermissionError) else "pid_not_found"
        raise ProcessUnavailable(pid, reason) from None


def boot_time() -> float:
    """/proc/stat's btime, read once per host root."""
    global _boot_time  # noqa: PLW0603
    if _boot_time is None:
        path = f"{_proc}/stat"
        for line in _read("stat").splitlines():
            if line.startswith(b"btime"):
                _boot_time = float(line.strip().split()[1])
                break
        else:
            raise RuntimeError(f"line 'btime' not found in {path}")
    return _boot_time


class ProcessUnavailable(Exception):
    """/proc cannot describe the PID. reason: pid_not_found (no such process: it exited, or NVML listed garbage)
    or access_denied (/proc hides it, e.g. mounted with hidepid=)."""

    def __init__(self, pid: int, reason: str) -> None:
        super().__init__(f"pid {pid}: {reason}")
        self.reason = reason


class _Zombie(Exception):
    """Its command line is empty because it is a zombie (psutil's ZombieProcess)."""


def _is_zombie(pid: int) -> bool:
    try:
        data = _read(f"{pid}/stat")
    except OSError:
        return False
    rpar = data.rfind(b")")
    return data[rpar + 2:rpar + 3] == b"Z"


def _gone(pid: int, err: OSError) -> ProcessUnavailable:
    """A file of the process could not be opened: what that means (psutil's wrap_exceptions). Raises _Zombie, or
    the error itself when the process is still there (a missing file of a live process)."""
    if isinstance(err, PermissionError):
        return ProcessUnavailable(pid, "access_denied")
    if isinstance(err, (ProcessLookupError, FileNotFoundError)):
        if _is_zombie(pid):
            raise _Zombie from None
        if isinstance(err, ProcessLookupError) or not os.path.exists(f"{_proc}/{pid}/stat"):
            return ProcessUnavailable(pid, "pid_not_found")
    raise err


def _cmdline(pid: int) -> list[str]:
    """The command line; raises ProcessUnavailable (access_denied, pid_not_found) or _Zombie."""
    try:
        data = _text(_read(f"{pid}/cmdline"), _FS_ENCODING, _FS_ERRORS)
    except OSError as err:
        raise _gone(pid, err) from None
    if not data:
        if _is_zombie(pid):
            raise _Zombie
        return []
    sep = "\x00" if data.endswith("\x00") else " "
    if data.endswith(sep):
        data = data[:-1]
    args = data.split(sep)
    if sep == "\x00" and len(args) == 1 and " " in data:  # NUL-terminated, but rewritten with spaces
        args = data.split(" ")
    return args


def _full_name(pid: int, name: str) -> tuple[str, Optional[list[str]]]:
    """A name the kernel may have cut, completed from the command line (psutil's `name()`), and the command line
    if it could be read. Raises ProcessUnavailable(pid_not_found)."""
    try:
        args = _cmdline(pid)
    except _Zombie:
        return name, None
    except ProcessUnavailable as err:
        if err.reason != "access_denied":
            raise
        return name, None
    if args:
        extended = os.path.basename(args[0])
        if extended.startswith(name):
            return extended, args
    return name, args


def _printable_args(pid: int, known: Optional[list[str]]) -> tuple[str, ...]:
    """The command line for the args label; () when /proc will not show it. Raises ProcessUnavailable
    (pid_not_found) or _Zombie."""
    try:
        args = _cmdline(pid) if known is None else known
    except ProcessUnavailable as err:
        if err.reason != "access_denied":
            raise
        return ()
    return tuple(printable(arg) for arg in args)


def describe(pid: int, with_cmdline: bool = False) -> HostProcess:
    """What /proc says about pid; raises ProcessUnavailable. The command line is read only when asked for (it can
    hold secrets; see collector.redact) or when the name may have been cut."""
    if pid <= 0:
        raise ProcessUnavailable(pid, "pid_not_found")
    try:
        stat = _read(f"{pid}/stat")
    except OSError as err:
        try:
            unavailable = _gone(pid, err)
        except _Zombie:  # stat unreadable, then readable as a zombie's: it is on its way out
            unavailable = ProcessUnavailable(pid, "pid_not_found")
        if unavailable.reason == "access_denied":
            log.debug("pid %d: %s", pid, err)
        raise unavailable from None
    rpar = stat.rfind(b")")
    name = stat[stat.find(b"(") + 1:rpar].decode(_FS_ENCODING, _FS_ERRORS)
    start = float(stat[rpar + 2:].split(None, 20)[19]) / CLOCK_TICKS + boot_time()  # split up to field 22 only
    args: Optional[list[str]] = None
    try:
        if len(name) >= KERNEL_NAME_CHARS:
            name, args = _full_name(pid, name)
        cmdline = _printable_args(pid, args) if with_cmdline else ()
    except _Zombie:
        raise ProcessUnavailable(pid, "pid_not_found") from None
    # positional (pid, name, start_time, cgroup, cmdline): a NamedTuple from keywords costs about twice as much
    return HostProcess(pid, printable(name), start, read_cgroup(pid), cmdline)
