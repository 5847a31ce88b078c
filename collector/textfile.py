"""Atomic file replacement: readers see the old file or the new one, never a part of either.

prometheus_client's write_to_textfile renames too, but neither fsyncs nor sets a mode (client_python's
exposition.py, `write_to_textfile`): after a
crash the renamed file could be empty, and under a strict umask node_exporter (user nobody) could not read it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time

log = logging.getLogger(__name__)

TEMPORARY_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC  # as tempfile.mkstemp


class WriteError(Exception):
    """The file could not be replaced; the previous one is untouched."""


def atomic_write(path: str, data: bytes, mode: int = 0o644, *, durable: bool = True) -> None:
    """Replaces path with data: a temporary file in its directory, written, fsynced, renamed over it. Whatever a
    crash interrupts, the path names the old file or the new one, each whole: the data reaches the disk before the
    rename can. durable: the directory is fsynced too, so that the rename itself survives a crash (the state
    file, whose counters must not go back). Without it, a crash soon after may bring back the previous whole file
    instead, which is enough for the textfile: a file from before a crash is out of date either way, and the
    first collection after it replaces it (docs/performance.md)."""
    directory = os.path.dirname(os.path.abspath(path))
    # The temporary name does not end in .prom, so node_exporter never reads it half-written.
    try:
        fd, tmp = _create_temporary(directory, "." + os.path.basename(path) + ".")
    except OSError as err:
        raise WriteError(f"cannot create a file in {directory}: {err.strerror or err}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise WriteError(f"cannot write {path}: {err.strerror or err}") from None
    if durable:
        _fsync_directory(directory)


TEMPORARY_HEX = 12  # the random part of a temporary name: os.urandom(6).hex()


def remove_stale_temporaries(path: str, older_than: float) -> None:
    """Removes the temporary files atomic_write left for path in a run that was killed while it wrote (SIGKILL,
    an OOM kill, a power loss): only names of this module's own pattern for this very path
    (`.<name>.<12 hex digits>.tmp`), only regular files, and only those last modified more than older_than
    seconds ago (longer than any run may take: its deadline), so a run still writing is never disturbed and
    another tool's files are never touched. Nothing is raised: a directory that cannot be listed is the write's
    problem, reported there."""
    directory = os.path.dirname(os.path.abspath(path))
    prefix = f".{os.path.basename(path)}."
    cutoff = time.time() - older_than
    try:
        with os.scandir(directory) as entries:
            stale = [e for e in entries if _is_temporary(e.name, prefix) and e.is_file(follow_symlinks=False)
                     and e.stat(follow_symlinks=False).st_mtime < cutoff]
    except OSError:
        return
    for entry in stale:
        try:
            os.unlink(entry.path)
        except OSError as err:
            log.warning("cannot remove %s, left by an interrupted run: %s", entry.path, err.strerror or err)
        else:
            log.info("removed %s, left by an interrupted run", entry.path)


_HEX = frozenset("0123456789abcdef")


def _is_temporary(name: str, prefix: str) -> bool:
    """Whether name is `<prefix><TEMPORARY_HEX lower-case hex digits>.tmp` (without a regular expression: compiling
    one costs a run more than the directory's few names)."""
    digits = name[len(prefix):-len(".tmp")]
    return (len(name) == len(prefix) + TEMPORARY_HEX + len(".tmp") and name.startswith(prefix)
            and name.endswith(".tmp") and _HEX.issuperset(digits))


def _create_temporary(directory: str, prefix: str) -> tuple[int, str]:
    """A new file only this process opened (mode 0600, O_EXCL), as tempfile.mkstemp makes one; without importing
    tempfile, which brings shutil, random and three compression modules into every run."""
    for _ in range(100):
        tmp = os.path.join(directory, f"{prefix}{os.urandom(TEMPORARY_HEX // 2).hex()}.tmp")
        try:
            return os.open(tmp, TEMPORARY_FLAGS, 0o600), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no unused temporary name in {directory}")


def _fsync_directory(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
