"""The one way the collector reads a file: the host root's files, its own state file and its config file.

Many files under the host root are written by the people the collector reports on (a rootless runtime's store in a
user's home, files a container's runtime keeps for it), and a plain `open().read()` trusts them: a FIFO blocks the
open until a writer comes (past the run's deadline, or before it starts), a link to /dev/zero never ends, a 200 MB
file is 200 MB of memory, a link out of the host root reads the collector's own host. So every read here:

- opens with O_NONBLOCK (a FIFO opens at once, and is then refused) and O_CLOEXEC, and O_NOFOLLOW on the last
  component unless the caller expects a link there (an operator's config file may be one);
- under a host root, resolves the path as if the host root were `/`: `..` and absolute links stay inside it, as
  they do for the host's own processes, and magic links (/proc/<pid>/fd/...) are refused (openat2(2)
  RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS; without openat2, Linux before 5.6 or a seccomp filter that does not know
  it, the same walk component by component in Python);
- fstat()s what it opened and refuses anything but a regular file (FIFO, device, socket, directory);
- refuses a file larger than the caller's cap for that kind of file: never a silent truncation.

And JSON is parsed so that no document can crash the run: its nesting depth is checked before the standard parser
sees it (which raises RecursionError at about 1,000 levels), and as it parses, integers longer than MAX_INT_DIGITS
(Python's int() raises ValueError past 4,300 digits; float() of a 400-digit one, OverflowError) and non-finite
numbers (NaN, Infinity, 1e999) are refused. The caps, their reasons and the measured costs: docs/reading-files.md.
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import math
import os
import re
import stat
from collections.abc import Iterator
from typing import Any, Optional

log = logging.getLogger(__name__)

KIB, MIB = 1 << 10, 1 << 20
MAX_JSON_DEPTH = 64  # the deepest document the collector reads (an OCI config.json) nests about 8 levels
MAX_INT_DIGITS = 40  # a 128-bit integer has 39 digits; the collector's numbers are counters and timestamps

_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
_SYS_OPENAT2 = 437  # the same number on every architecture (the unified syscall table, Linux 5.6)
_RESOLVE_NO_MAGICLINKS, _RESOLVE_IN_ROOT = 0x02, 0x10
_MAX_LINKS = 40  # the kernel's own limit of links in one resolution (MAXSYMLINKS)


class Refused(Exception):
    """A file the collector will not read, and why (the message): not a regular file, too large, a link where none
    belongs, unreadable, or a document it will not parse."""


class _OpenHow(ctypes.Structure):
    _fields_ = (("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64))


_HOW_SIZE = ctypes.sizeof(_OpenHow)
_hows: dict[int, _OpenHow] = {}  # open flags -> the open_how that asks for them
_syscall: Any = None  # libc's syscall(2), once known to work; False once openat2 is known not to
_root_fds: dict[str, int] = {}  # host root -> an O_PATH descriptor of it, kept for the process's life
_cut_logged: set[str] = set()  # directories list_dir() read only part of, already logged


def _root_fd(root: str) -> int:
    fd = _root_fds.get(root)
    if fd is None:
        fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        _root_fds[root] = fd
    return fd


def _openat2(root_fd: int, relative: str, flags: int, path: str) -> Optional[int]:
    """The file opened by openat2(2) inside the root; None where the kernel or a seccomp filter has no openat2."""
    global _syscall  # noqa: PLW0603 - found out once per process
    if _syscall is False:
        return None
    if _syscall is None:
        libc = ctypes.CDLL(None, use_errno=True)
        _syscall = libc.syscall
        _syscall.restype = ctypes.c_long
        _syscall.argtypes = (ctypes.c_long, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t)
    how = _hows.get(flags)
    if how is None:
        how = _hows[flags] = _OpenHow(flags, 0, _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS)
    fd = int(_syscall(_SYS_OPENAT2, root_fd, os.fsencode(relative), ctypes.byref(how), _HOW_SIZE))
    if fd >= 0:
        return fd
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EPERM):  # EPERM: a seccomp filter's answer (the unit's SystemCallErrorNumber)
        _syscall = False
        return None
    raise OSError(code, os.strerror(code), path)


def _walk_in_root(root: str, relative: str, follow_last: bool) -> str:
    """The path relative names when root is `/`: each link read and resolved inside root, `..` never above it.
    The fallback of openat2's RESOLVE_IN_ROOT (racy where it is exact: a link changed between this walk and the
    open; the open's O_NOFOLLOW and the fstat's check still hold)."""
    parts = [p for p in relative.split("/") if p]
    done: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == ".":
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        here = os.path.join(root, *done, part)
        if (parts or follow_last) and os.path.islink(here):
            links += 1
            if links > _MAX_LINKS:
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), relative)
            target = os.readlink(here)
            if target.startswith("/"):
                done = []
            parts = [p for p in target.split("/") if p] + parts
            continue
        done.append(part)
    return os.path.join(root, *done)


def _open(path: str, root: Optional[str], follow_last: bool) -> int:
    flags = _FLAGS if follow_last else _FLAGS | os.O_NOFOLLOW
    if root is None:
        return os.open(path, flags)
    prefix = root if root.endswith("/") else root + "/"
    if not path.startswith(prefix):  # the callers join their paths to the root: a plain prefix test suffices
        raise Refused(f"{path} is not under the host root {root}")
    relative = path[len(prefix):]
    fd = _openat2(_root_fd(root), relative, flags, path)
    if fd is None:
        fd = os.open(_walk_in_root(root, relative, follow_last), flags)
    return fd


def read(path: str, limit: int, *, root: Optional[str] = None, follow_last: bool = False) -> bytes:
    """The whole file at path, at most limit bytes. root: the host root path is under (its links then resolve
    inside it). follow_last: the last component may be a link (its target is read). Raises FileNotFoundError
    (nothing there, so callers can tell absence from refusal) or Refused."""
    try:
        fd = _open(path, root, follow_last)
    except FileNotFoundError:
        raise
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise Refused(f"{path} is a symbolic link (not followed)") from None
        if err.errno == errno.ENOTDIR:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path) from None
        raise Refused(f"{path}: cannot read it: {err.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise Refused(f"{path} is not a regular file but {_kind(info.st_mode)}")
        if info.st_size > limit:
            raise Refused(f"{path} is larger than {_size(limit)} ({_size(info.st_size)})")
        # read(n) allocates n bytes up front: ask for the file's size (+1, to see one that grew meanwhile); files
        # of /proc say size 0 and are read in steps
        chunks = [os.read(fd, min(info.st_size, limit) + 1 if info.st_size else 64 * KIB)]
        total = len(chunks[0])
        while chunks[-1] and total <= limit:
            chunks.append(os.read(fd, min(64 * KIB, limit + 1 - total)))
            total += len(chunks[-1])
    except OSError as err:
        raise Refused(f"{path}: cannot read it: {err.strerror}") from None
    finally:
        os.close(fd)
    if total > limit:
        raise Refused(f"{path} is larger than {_size(limit)} (it grew while read)")
    return b"".join(chunks)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory")):
        if test(mode):
            return name
    return "something else"


def _size(n: int) -> str:
    return f"{n / MIB:.3g} MiB" if n >= MIB else f"{n / KIB:.3g} KiB" if n >= KIB else f"{n} bytes"


# ---- JSON ----

_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'[]{}"')
_STRING = rb'"[^"]*"'


def _depth_within(raw: bytes, limit: int) -> bool:
    """Whether no array or object of raw nests deeper than limit, at C speed: escaped backslashes and quotes go,
    then everything but brackets and quotes (one pass over the text); a document with no more brackets than the
    limit cannot nest deeper; else the strings go (brackets in strings are text), and each pass of replace()
    removes one level of bracket pairs (as many passes as the document is deep). Unbalanced brackets are not JSON
    and count as too deep."""
    if b"\\" in raw:  # the escapes' two passes over the whole text only where there is a backslash at all
        raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    reduced = raw.translate(None, _NOT_STRUCTURE)
    if reduced.count(b"[") + reduced.count(b"{") <= limit:
        return True
    # (`""` goes before the regex: a string without brackets, or two strings side by side, is no structure)
    reduced = reduced.replace(b'""', b"")
    if b'"' in reduced:
        reduced = re.sub(_STRING, b"", reduced)
    brackets = reduced.replace(b"{", b"[").replace(b"}", b"]")
    for _ in range(limit):
        if not brackets:
            return True
        brackets = brackets.replace(b"[]", b"")
    return not brackets


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(text)} digits (at most {MAX_INT_DIGITS})")
    return int(text)


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"a number out of range ({text[:20]}...)")
    return value


def _constant(name: str) -> Any:
    raise ValueError(f"{name} (a non-finite number)")


# Each number through a check (ints and floats alike cost about what the C parser's own conversion does)
_DECODER = json.JSONDecoder(parse_int=_int, parse_float=_float, parse_constant=_constant)
_NONFINITE_DECODER = json.JSONDecoder(parse_int=_int)


def parse_json(raw: bytes, what: str = "", *, finite: bool = True) -> Any:
    """The JSON value of raw: at most MAX_JSON_DEPTH deep, integers of at most MAX_INT_DIGITS digits, finite numbers
    only (finite=False: NaN, Infinity and overflowing floats are let through, for a reader that checks each value
    itself, as the state's does). Raises Refused, which says why (what: the file's name, for the message)."""
    where = f"{what}: " if what else ""
    if not _depth_within(raw, MAX_JSON_DEPTH):
        raise Refused(f"{where}not JSON this collector reads: nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        return (_DECODER if finite else _NONFINITE_DECODER).decode(raw.decode("utf-8"))
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError and the callbacks' refusals
        raise Refused(f"{where}not JSON: {err}") from None


def read_json(path: str, limit: int, *, root: Optional[str] = None, follow_last: bool = False,
              finite: bool = True) -> Any:
    """read() and parse_json() in one. Raises FileNotFoundError or Refused."""
    return parse_json(read(path, limit, root=root, follow_last=follow_last), path, finite=finite)


_SPACE = r"[ \t\n\r]*"


def iter_json_array(raw: bytes, what: str = "") -> Iterator[Any]:
    """Each element of the JSON array in raw, one at a time, under parse_json's bounds: a long list of large
    objects (a runtime's container list) costs the memory of its text and one element, not of the whole parsed
    list. Raises Refused (also part-way, for a fault after some elements)."""
    where = f"{what}: " if what else ""
    if not _depth_within(raw, MAX_JSON_DEPTH):
        raise Refused(f"{where}not JSON this collector reads: nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        text = raw.decode("utf-8")
        decoder = _DECODER
        space = re.compile(_SPACE)  # compiled the first time a run needs it, then from re's own cache
        index = space.match(text, 0).end()  # type: ignore[union-attr]  # it matches anything
        if text[index:index + 1] != "[":
            raise ValueError("not a JSON array")
        index = space.match(text, index + 1).end()  # type: ignore[union-attr]
        if text[index:index + 1] == "]":
            return
        while True:
            element, index = decoder.raw_decode(text, index)
            yield element
            index = space.match(text, index).end()  # type: ignore[union-attr]
            separator = text[index:index + 1]
            index = space.match(text, index + 1).end()  # type: ignore[union-attr]
            if separator == "]":
                break
            if separator != ",":
                raise ValueError(f"expected ',' or ']' at character {index}")
        if index != len(text):
            raise ValueError(f"extra data at character {index}")
    except ValueError as err:
        raise Refused(f"{where}not JSON: {err}") from None




def list_dir(path: str, limit: int) -> tuple[list[os.DirEntry[str]], bool]:
    """The first limit entries of a directory (in the directory's own order), and whether there were more (logged
    once per directory): a directory that holds 100,000 entries costs the reading of limit of them. A missing or
    unreadable directory is empty."""
    entries: list[os.DirEntry[str]] = []
    try:
        with os.scandir(path) as it:
            for entry in it:
                if len(entries) == limit:
                    if path not in _cut_logged:
                        _cut_logged.add(path)
                        log.warning("%s holds more than %d entries; only the first %d are read", path, limit, limit)
                    return entries, True
                entries.append(entry)
    except OSError:
        pass
    return entries, False
