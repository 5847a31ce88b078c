"""The pure pieces and the small I/O edges: device ids, allocation resolution, textfile writer, state file."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from collector import nvml, state
from collector import podresources_v1_pb2 as api
from collector.attribution import resolve
from collector.cli import UsageError, parse_devices, settings
from collector.model import Device, MigInfo
from collector.podresources import DeviceRef, is_gpu_resource, parse_device_id
from collector.runner import write_output
from collector.runtimes import RuntimeMetadata
from collector.settings import Settings
from collector.textfile import WriteError, atomic_write
from tests.conftest import mounted_tmpfs

GPU0 = "GPU-3c2b7e0a-1111-2222-3333-444455556666"


@pytest.mark.parametrize(("raw", "expected"), [
    (GPU0, DeviceRef(raw=GPU0, uuid=GPU0)),
    (f"{GPU0}::3", DeviceRef(raw=f"{GPU0}::3", uuid=GPU0, replica=3)),
    ("MIG-ffda444c-c706-57c6-98c9-67c441a0b109",
     DeviceRef(raw="MIG-ffda444c-c706-57c6-98c9-67c441a0b109", uuid="MIG-ffda444c-c706-57c6-98c9-67c441a0b109")),
    ("MIG-ffda444c-c706-57c6-98c9-67c441a0b109::7",
     DeviceRef(raw="MIG-ffda444c-c706-57c6-98c9-67c441a0b109::7", uuid="MIG-ffda444c-c706-57c6-98c9-67c441a0b109",
               replica=7)),
    (f"MIG-{GPU0}/2/0", DeviceRef(raw=f"MIG-{GPU0}/2/0", uuid=GPU0, gpu_instance=2, compute_instance=0)),
    ("nvidia0", DeviceRef(raw="nvidia0", index=0)),
    ("nvidia3/gi5", DeviceRef(raw="nvidia3/gi5", index=3, gpu_instance=5)),
    ("nvidia1/vgpu2", DeviceRef(raw="nvidia1/vgpu2", index=1)),
    ("some-fpga-0", None),
])
def test_device_id_shapes(raw: str, expected: DeviceRef) -> None:
    assert parse_device_id(raw) == expected


def test_gpu_resource_names() -> None:
    assert is_gpu_resource("nvidia.com/gpu")
    assert is_gpu_resource("nvidia.com/gpu.shared")
    assert is_gpu_resource("nvidia.com/mig-1g.10gb")
    assert not is_gpu_resource("cpu")
    assert not is_gpu_resource("example.com/gpu")
    assert is_gpu_resource("example.com/gpu", ["example.com/gpu"])


MIG_PARENT = "GPU-aaaaaaaa-0000-0000-0000-000000000001"
DEVICES = [
    Device(label="0", index=0, uuid=GPU0, name="H100", memory_total=1, memory_used=0),
    Device(label="1_2_0", index=1, uuid="MIG-b", name="H100", memory_total=1, memory_used=0,
           mig=MigInfo(gpu_instance_id=2, compute_instance_id=0, profile="1g.10gb", parent_uuid=MIG_PARENT)),
    Device(label="1_3_0", index=1, uuid="MIG-c", name="H100", memory_total=1, memory_used=0,
           mig=MigInfo(gpu_instance_id=3, compute_instance_id=0, profile="1g.10gb", parent_uuid=MIG_PARENT)),
]


@pytest.mark.parametrize(("raw", "labels"), [
    (GPU0, {"0"}), (f"{GPU0}::2", {"0"}), ("MIG-c", {"1_3_0"}), ("MIG-c::1", {"1_3_0"}),
    (MIG_PARENT, {"1_2_0", "1_3_0"}), (f"MIG-{MIG_PARENT}/2/0", {"1_2_0"}), ("nvidia0", {"0"}),
    ("nvidia1/gi3", {"1_3_0"}), ("nvidia7", set()), ("GPU-elsewhere", set()),
])
def test_device_ids_resolve_to_this_hosts_units(raw: str, labels: set[str]) -> None:
    ref = parse_device_id(raw)
    assert ref is not None
    assert resolve(ref, DEVICES) == labels


def test_parse_devices() -> None:
    assert parse_devices("0, 2,3") == {0, 2, 3}
    assert parse_devices("") == frozenset()
    for bad in ("a", "-1", "1;2"):
        with pytest.raises(UsageError):
            parse_devices(bad)


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


@hypothesis_settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 40), st.integers(1, 10**10), st.integers(0, 100)), max_size=80))
def test_utilisation_entries_one_per_pid_give_what_weighting_them_gives(samples: list[tuple[int, int, int]]
                                                                         ) -> None:
    """nvml.time_weighted takes a short cut where each PID has one entry (the shape current drivers return): the
    same values to the bit as weighting the entries by the time each covers, which it does where a PID has
    several."""
    def exact(result: dict[int, nvml.Activity]) -> dict[int, tuple[str, bool]]:
        return {pid: (repr(a.sm_percent), a.active) for pid, a in result.items()}

    assert exact(nvml.time_weighted(samples)) == exact(nvml._weighted(samples))


def test_a_full_disk_keeps_the_previous_file_and_leaves_no_temp(tmp_path: Path) -> None:
    with mounted_tmpfs(tmp_path / "small", "size=64k") as d:
        target = d / "gpu_processes.prom"
        atomic_write(str(target), b"good\n")
        with pytest.raises(WriteError, match="No space left"):
            atomic_write(str(target), b"x" * (1 << 20))
        assert target.read_bytes() == b"good\n"
        assert [p.name for p in d.iterdir()] == ["gpu_processes.prom"]


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


def test_runtime_metadata_rejects_ids_that_are_not_hex(tmp_path: Path) -> None:
    metadata = RuntimeMetadata(str(tmp_path))
    assert metadata.lookup("../../etc") is None
    assert metadata.misses["not_found"] == 1


def test_the_generated_pod_resources_module_has_kubelets_field_numbers() -> None:
    def numbers(message: str) -> dict[str, int]:
        return {f.name: f.number for f in api.DESCRIPTOR.message_types_by_name[message].fields}

    assert numbers("ListPodResourcesResponse") == {"pod_resources": 1}
    assert numbers("PodResources") == {"name": 1, "namespace": 2, "containers": 3, "cpu_ids": 4, "memory": 5}
    assert numbers("ContainerResources") == {"name": 1, "devices": 2, "cpu_ids": 3, "memory": 4,
                                             "dynamic_resources": 5}
    assert numbers("ContainerDevices") == {"resource_name": 1, "device_ids": 2, "topology": 3}
    assert api.DESCRIPTOR.package == "v1"
    assert [m.name for m in api.DESCRIPTOR.services_by_name["PodResourcesLister"].methods] == [
        "List", "GetAllocatableResources", "Get"]


@pytest.mark.parametrize(("argv", "message"), [
    (["--pod-resources-timeout", "0"], "--pod-resources-timeout must be a positive"),
    (["--deadline", "-1"], "--deadline must be a positive"),
    (["--interval", "0"], "--interval must be a positive"),
    (["--max-process-series", "-5"], "--max-process-series must be 0 or more"),
    (["--label-prefix", "9x"], "--label-prefix must be"),
])
def test_bad_option_values_are_usage_errors(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        settings(argv)


def test_config_values_of_the_wrong_type_are_usage_errors(tmp_path: Path) -> None:
    config = tmp_path / "c.json"
    for document in ('{"resource_names": [1]}', '{"command_args": "yes"}', '{"devices": [true]}',
                     '{"pod_resources_timeout": 0}', '{"interval": true}'):
        config.write_text(document)
        with pytest.raises(UsageError):
            settings(["--config", str(config)])
