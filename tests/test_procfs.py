"""collector.procfs against psutil, the reference it replaced: for any /proc files (names with parentheses, spaces,
newlines or undecodable bytes; names the kernel cut at 15 characters; command lines NUL-separated, rewritten with
spaces, empty, with carriage returns; zombies; files missing), procfs.describe must give the same name, start time,
cgroup text and command line as the psutil-based describe did, or fail the same way."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Optional, Union

import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector import procfs
from tests.support.simhost import HostTree

PID = 4321
Outcome = Union[tuple[str, float, str, tuple[str, ...]], str]


def psutil_describe(pid: int, with_cmdline: bool) -> Outcome:
    """collector.procfs.describe as it was written with psutil (commit 5177441), as a plain outcome, but for one
    deliberate change since: a cgroup file that cannot be read drops the process (it was "", a host process)."""
    if pid <= 0:
        return "pid_not_found"
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            start = proc.create_time()
            name = proc.name()
            cmdline: tuple[str, ...] = ()
            if with_cmdline:
                with contextlib.suppress(psutil.AccessDenied):
                    cmdline = tuple(procfs.printable(arg) for arg in proc.cmdline())
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return "pid_not_found"
    except psutil.AccessDenied:
        return "access_denied"
    try:
        with open(os.path.join(psutil.PROCFS_PATH, str(pid), "cgroup"), encoding="utf-8", errors="replace") as f:
            cgroup = f.read()
    except PermissionError:
        return "access_denied"
    except OSError:
        return "pid_not_found"
    return procfs.printable(name), start, cgroup, cmdline


def procfs_describe(pid: int, with_cmdline: bool) -> Outcome:
    try:
        host = procfs.describe(pid, with_cmdline)
    except procfs.ProcessUnavailable as err:
        return err.reason
    return host.name, host.start_time, host.cgroup, host.cmdline


def outcome(describe: object, pid: int, with_cmdline: bool) -> Union[Outcome, type]:
    """The outcome, or the type of an unexpected exception (both implementations let some OSErrors through)."""
    try:
        return describe(pid, with_cmdline)  # type: ignore[operator,no-any-return]
    except OSError as err:
        return type(err)


@contextlib.contextmanager
def host() -> Iterator[HostTree]:
    root = Path(tempfile.mkdtemp(prefix="gpc-procfs-"))
    try:
        tree = HostTree(root)
        psutil.PROCFS_PATH = str(root / "proc")
        procfs.use_host_root(str(root))
        yield tree
    finally:
        shutil.rmtree(root)


def write_process(tree: HostTree, name: bytes, cmdline: Optional[bytes], state: bytes = b"S", *,
                  start_ticks: int = 123456, cgroup: Optional[bytes] = b"0::/user.slice\n") -> None:
    """/proc/<PID>/ as the kernel writes it, with raw bytes everywhere; None leaves a file out."""
    d = tree.root / "proc" / str(PID)
    d.mkdir(parents=True, exist_ok=True)
    fields = [state, b"1", b"1", b"1", b"0", b"-1", b"4194304"] + [b"0"] * 12 + [str(start_ticks).encode()]
    fields += [b"1000000", b"100"] + [b"0"] * 28
    (d / "stat").write_bytes(b"%d (%s) " % (PID, name) + b" ".join(fields) + b"\n")
    (d / "comm").write_bytes(name[:15] + b"\n")
    if cmdline is not None:
        (d / "cmdline").write_bytes(cmdline)
    if cgroup is not None:
        (d / "cgroup").write_bytes(cgroup)


def assert_same(with_cmdline: bool) -> None:
    for pid in (PID, PID + 1, 0, -1):
        assert outcome(procfs_describe, pid, with_cmdline) == outcome(psutil_describe, pid, with_cmdline)


_bytes = st.binary(max_size=40) | st.sampled_from(
    [b"", b"(", b")", b") (", b"a b", b"x\ny", b"\r", b"\r\n", b"\xff\xfe", b"\xc3(", b"\x00", b" ", b"/"])


@st.composite
def _processes(draw: st.DrawFn) -> tuple[bytes, Optional[bytes], bytes, int, Optional[bytes]]:
    args = draw(st.lists(_bytes, max_size=4))
    sep = draw(st.sampled_from([b"\x00", b" "]))
    cmdline = b"".join(a + sep for a in args) if draw(st.booleans()) else sep.join(args)
    if args and draw(st.booleans()):  # the kernel's cut of the program's own name: psutil extends it
        name = os.path.basename(args[0]).replace(b"\x00", b"")[: draw(st.integers(0, 20))]
    else:
        name = draw(_bytes).replace(b"\x00", b"")
    if draw(st.booleans()):
        name = name.ljust(15, b"x")[: draw(st.integers(15, 24))]
    return (name, draw(st.none() | st.just(cmdline)), draw(st.sampled_from([b"S", b"R", b"Z"])),
            draw(st.integers(0, 2**40)), draw(st.none() | _bytes))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_processes(), st.booleans())
def test_any_process_is_described_as_psutil_describes_it(
    process: tuple[bytes, Optional[bytes], bytes, int, Optional[bytes]], with_cmdline: bool
) -> None:
    name, cmdline, state, ticks, cgroup = process
    with host() as tree:
        write_process(tree, name, cmdline, state, start_ticks=ticks, cgroup=cgroup)
        assert_same(with_cmdline)


@pytest.mark.parametrize("with_cmdline", [False, True])
@pytest.mark.parametrize(("name", "cmdline", "state"), [
    (b"python3", b"python3\x00train.py\x00", b"S"),
    (b"gnome-keyring-d", b"/usr/bin/gnome-keyring-daemon\x00--start\x00", b"S"),  # cut name, extended
    (b"gnome-keyring-d", b"/usr/bin/other\x00", b"S"),  # cut name, another program: kept
    (b"pt_main_thread_", b"python3 train.py --lr 0.1\x00", b"S"),  # setproctitle: spaces, NUL-terminated
    (b"a-very-long-nam", b"", b"Z"),  # a zombie: empty command line
    (b"a-very-long-nam", b"", b"S"),  # a kernel thread: empty command line
    (b"a-very-long-nam", None, b"S"),  # command line file missing while stat is there
    (b"a-very-long-nam", None, b"Z"),
])
def test_known_shapes_are_described_as_psutil_describes_them(
    name: bytes, cmdline: Optional[bytes], state: bytes, with_cmdline: bool
) -> None:
    with host() as tree:
        write_process(tree, name, cmdline, state)
        assert_same(with_cmdline)


def test_a_process_whose_cgroup_cannot_be_read_is_gone_not_a_host_process() -> None:
    """The process exited between the reads of its stat and its cgroup: without its cgroup its owner is unknown."""
    with host() as tree:
        write_process(tree, b"python3", b"python3\x00", cgroup=None)
        with pytest.raises(procfs.ProcessUnavailable) as raised:
            procfs.describe(PID)
    assert raised.value.reason == "pid_not_found"


def test_the_start_time_is_boot_time_plus_ticks_and_names_come_from_stat() -> None:
    with host() as tree:
        write_process(tree, b"my (odd) name", b"x\x00", start_ticks=250)
        described = procfs.describe(PID)
    assert described.name == "my (odd) name"
    assert described.start_time == 1764460000 + 250 / os.sysconf("SC_CLK_TCK")


def test_each_collection_looks_proc_up_afresh() -> None:
    """The files are opened relative to a descriptor of <host root>/proc (collector.procfs.use_host_root), which a
    collection opens anew: a /proc mounted again, or another host root, is what the next collection reads, never
    the directory an earlier one opened."""
    with host() as tree:
        write_process(tree, b"first", b"first\x00")
        assert procfs.describe(PID).name == "first"
        proc = tree.root / "proc"
        proc.rename(tree.root / "proc.old")  # as an unmount and a fresh mount do
        HostTree(tree.root)
        write_process(tree, b"second", b"second\x00")
        procfs.use_host_root(str(tree.root))
        assert procfs.describe(PID).name == "second"
    with host() as other:
        write_process(other, b"third", b"third\x00")
        assert procfs.describe(PID).name == "third"
