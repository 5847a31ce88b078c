"""Publishing a file: atomic replacement with the mode set, the data on disk before the rename, and a full disk
that keeps the previous file and leaves no temporary behind."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from collector import state
from collector.runner import write_output
from collector.settings import Settings
from collector.textfile import WriteError, atomic_write
from tests.conftest import mounted_tmpfs


def test_atomic_write_replaces_whole_and_sets_the_mode(tmp_path: Path) -> None:
    target = tmp_path / "x.prom"
    target.write_text("old\n")
    os.umask(0o077)
    try:
        atomic_write(str(target), b"new\n")
    finally:
        os.umask(0o022)
    assert target.read_text() == "new\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["x.prom"]


def test_data_reaches_the_disk_before_the_rename_and_only_the_state_waits_for_its_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Crash safety of both files (collector.textfile): each one's data is fsynced before the rename, so a crash
    leaves the old file or the new one, whole. Only the state's directory is fsynced after it: its counters must
    not go back after a crash, where a textfile from before one is replaced by the first collection after."""
    events: list[tuple[str, str]] = []
    fsync, replace = os.fsync, os.replace

    def fsynced(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def renamed(source: str, target: str) -> None:
        events.append(("rename", str(target)))
        replace(source, target)

    monkeypatch.setattr(os, "fsync", fsynced)
    monkeypatch.setattr(os, "replace", renamed)
    (tmp_path / "textfile").mkdir()
    write_output(b"x 1.0\n", Settings(textfile_dir=str(tmp_path / "textfile")))
    state.save(str(tmp_path / "state"), state.State(last_success=1.0))
    prom, saved = str(tmp_path / "textfile" / "gpu_processes.prom"), str(tmp_path / "state" / "state.json")
    temporary = [Path(path) for what, path in events if what == "fsync"][:2]  # each file's, in its directory
    assert [(p.parent, p.name.rsplit(".", 2)[0]) for p in temporary] == [
        (tmp_path / "textfile", ".gpu_processes.prom"), (tmp_path / "state", ".state.json")]
    assert events == [("fsync", str(temporary[0])), ("rename", prom),
                      ("fsync", str(temporary[1])), ("rename", saved), ("fsync", str(tmp_path / "state"))]


def test_a_full_disk_keeps_the_previous_file_and_leaves_no_temp(tmp_path: Path) -> None:
    with mounted_tmpfs(tmp_path / "small", "size=64k") as d:
        target = d / "gpu_processes.prom"
        atomic_write(str(target), b"good\n")
        with pytest.raises(WriteError, match="No space left"):
            atomic_write(str(target), b"x" * (1 << 20))
        assert target.read_bytes() == b"good\n"
        assert [p.name for p in d.iterdir()] == ["gpu_processes.prom"]
