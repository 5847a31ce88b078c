"""The runtimes' files as names for a container id: an id that is not hex is never a path."""

from __future__ import annotations

from pathlib import Path

from collector.attribution.runtimes import RuntimeMetadata


def test_runtime_metadata_rejects_ids_that_are_not_hex(tmp_path: Path) -> None:
    metadata = RuntimeMetadata(str(tmp_path))
    assert metadata.lookup("../../etc") is None
    assert metadata.misses["not_found"] == 1
