"""The state file between runs: a corrupt or foreign one starts afresh, a good one reads back as written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from collector import state


@pytest.mark.parametrize("content", ["{", "[]", '{"version": 99, "last_success": 5}', "\x00\xff",
                                     '{"version": 1, "last_seen_us": {"GPU-a": "x"}, "last_active": 3}'])
def test_a_corrupt_or_foreign_state_file_starts_afresh(tmp_path: Path, content: str) -> None:
    (tmp_path / "state.json").write_text(content)
    loaded = state.load(str(tmp_path))
    assert loaded.last_seen_us == {}
    assert loaded.last_active == {}
    assert loaded.last_success in (None, 5.0)


def test_state_round_trip(tmp_path: Path) -> None:
    saved = state.State(last_success=12.5, last_seen_us={"GPU-a": 99}, last_active={"GPU-a/1/2.00": 3.0})
    state.save(str(tmp_path / "new"), saved)
    assert state.load(str(tmp_path / "new")) == saved
    assert json.loads((tmp_path / "new" / "state.json").read_text())["version"] == state.STATE_VERSION


def test_only_well_formed_container_rows_are_kept(tmp_path: Path) -> None:
    """A container's remembered pod is six strings (ContainerMeta); a row of another shape (a state an older
    collector wrote, one field short; a hand edit with a number, null or a list in it) is left out, and that
    container's runtime file is read again."""
    good = ["train", "ml", "uid-1", "main", "containerd", "kubepods.slice:cri-containerd:a"]
    rows = {"a": good, "b": good[:5], "c": [*good[:5], 7], "d": [None, *good[1:]],
            "e": [*good[:3], ["main"], *good[4:]], "f": [*good, "x"], "g": "train!"}  # six characters, no row
    (tmp_path / "state.json").write_text(json.dumps({"version": state.STATE_VERSION, "containers": rows}))
    assert state.load(str(tmp_path)).containers == {"a": state.ContainerMeta(*good)}
