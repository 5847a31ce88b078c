"""kubelet's pod-resources API as the collector reads it: the device-id shapes device plugins write, which
resource names are GPUs, how an id resolves to one of this host's GPUs or MIG instances, and the generated
module's field numbers against kubelet's api.proto."""

from __future__ import annotations

import pytest

from collector.attribution import podresources_v1_pb2 as api
from collector.attribution.join import resolve
from collector.attribution.podresources import DeviceRef, is_gpu_resource, parse_device_id
from collector.model import Device, MigInfo

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
