"""Atomic file replacement: readers see the old file or the new one, never a part of either.

prometheus_client's write_to_textfile renames too, but neither fsyncs nor sets a mode (client_python's
exposition.py, `write_to_textfile`): after a
crash the renamed file could be empty, and under a strict umask node_exporter (user nobody) could not read it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile


class WriteError(Exception):
    """The file could not be replaced; the previous one is untouched."""


def atomic_write(path: str, data: bytes, mode: int = 0o644) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    # The temporary name does not end in .prom, so node_exporter never reads it half-written.
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
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
    _fsync_directory(directory)


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
