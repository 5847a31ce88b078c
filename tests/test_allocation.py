"""Allocated but unused, and DRA: kubelet's allocation placed on this host's GPUs (device-plugin ids, time-slicing
replicas, MIG, GKE names, DRA claims through CDI specs), each allocated device's use and idle time across runs,
and bad input that must never turn into a flag."""

from __future__ import annotations

import json
import uuid as uuidlib
from typing import Any, Optional

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector import state
from collector.attribution.allocation import AllocationIndex, ClaimResolver, History, view
from collector.attribution.cdi import CdiUnresolved
from collector.attribution.join import unallocated
from collector.attribution.podresources import ContainerAllocation, DeviceRef, parse_device_id
from collector.model import (
    AllocationTarget,
    Device,
    GpuProcess,
    HostProcess,
    MigInfo,
    Owner,
    OwnerKind,
    ProcessRecord,
)
from tests.conftest import Host, Result
from tests.support.cdisim import (
    DRA_KIND,
    claim_spec_path,
    gpu_device,
    mig_device,
    qualified,
    spec,
    write_mig_caps,
    write_spec,
)
from tests.support.podsim import Claim, PodHost, pod_resources_server
from tests.support.simhost import GIB, Gpu, gpu_uuid, mig_instance, mig_uuid, proc, scenario

# ---- the pure part: placing ids, use and idle time ----

PARENT = "GPU-aaaaaaaa-0000-0000-0000-000000000002"


def _mig(label: str, gi: int, ci: int, slot: int) -> Device:
    return Device(label=label, index=2, uuid=f"MIG-{slot}", name="H100", memory_total=1, memory_used=0, minor=2,
                  mig=MigInfo(gpu_instance_id=gi, compute_instance_id=ci, profile="1g.10gb", parent_uuid=PARENT))


DEVICES = [
    Device(label="0", index=0, uuid=gpu_uuid(0), name="H100", memory_total=1, memory_used=0, minor=0),
    Device(label="1", index=1, uuid=gpu_uuid(1), name="H100", memory_total=1, memory_used=0, minor=1),
    _mig("2_1_0", 1, 0, 0), _mig("2_2_0", 2, 0, 1), _mig("2_2_1", 2, 1, 2),
]


def _allocation(pod: str, *ids: str, resource: str = "nvidia.com/gpu") -> ContainerAllocation:
    refs = tuple((parse_device_id(raw) or DeviceRef(raw=raw))._replace(resource=resource) for raw in ids)
    return ContainerAllocation("ml", pod, "main", refs)


def _record(pid: int, unit: str, pod: str = "", container: str = "main", kind: str = OwnerKind.POD) -> ProcessRecord:
    device = next(d for d in DEVICES if d.label == unit)
    owner = Owner(kind=kind, name=f"ml/{pod}" if pod else "x", pod=pod, namespace="ml" if pod else "",
                  container=container if pod else "", pod_uid=f"uid-{pod}" if pod else "")
    return ProcessRecord(gpu=GpuProcess(pid=pid, device=device, used_memory=GIB, sm_utilization=None, active=None),
                         host=HostProcess(pid=pid, name="python3", start_time=1.0, cgroup=""), owner=owner)


def test_ids_are_placed_on_the_units_they_stand_for_and_replicas_are_one_device() -> None:
    index = AllocationIndex([
        _allocation("nb", f"{gpu_uuid(0)}::0", f"{gpu_uuid(0)}::3", resource="nvidia.com/gpu.shared"),
        _allocation("whole-mig-gpu", PARENT),
        _allocation("small", "MIG-0", resource="nvidia.com/mig-1g.10gb"),
        _allocation("gke", "nvidia2/gi2", "nvidia1/vgpu3"),
        _allocation("elsewhere", gpu_uuid(1), "GPU-not-here", "fpga-0"),
    ], DEVICES)
    targets = {key[1]: sorted((t.label, t.uuid, sorted(t.units)) for t in found.values())
               for key, found in index.targets.items()}
    assert targets == {
        "nb": [("0", gpu_uuid(0), ["0"])],
        "whole-mig-gpu": [("2", PARENT, ["2_1_0", "2_2_0", "2_2_1"])],
        "small": [("2_1_0", "MIG-0", ["2_1_0"])],
        "gke": [("1", gpu_uuid(1), ["1"]), ("2_2", PARENT, ["2_2_0", "2_2_1"])],
        "elsewhere": [("1", gpu_uuid(1), ["1"])],
    }
    assert index.devices[("ml", "nb", "main", "nvidia.com/gpu.shared")] == {(gpu_uuid(0),)}  # two replicas, one GPU
    assert len(index.devices[("ml", "elsewhere", "main", "nvidia.com/gpu")]) == 3  # kubelet's count, placed or not
    assert index.incomplete == {("ml", "elsewhere", "main")}
    assert index.allowed(Owner(kind="pod", pod="elsewhere", namespace="ml", container="main")) == ({"1"}, False)
    assert index.allowed(Owner(kind="pod", pod="nb", namespace="ml", container="main")) == ({"0"}, True)


def test_use_and_idle_time_across_runs_with_a_clock() -> None:
    index = AllocationIndex([_allocation("busy", gpu_uuid(0)), _allocation("reserved", gpu_uuid(1))], DEVICES)
    key = ("ml", "reserved", "main", gpu_uuid(1))
    first, kept = view(index, [_record(1, "0", "busy")], (), previous={}, now=1000.0, uids={})
    assert [(u.pod, u.in_use, u.idle_seconds) for u in first.uses] == [("busy", True, 0.0), ("reserved", False, 0.0)]
    second, kept = view(index, [_record(1, "0", "busy")], (), previous=kept, now=1060.0, uids={})
    assert [(u.pod, u.idle_seconds) for u in second.uses] == [("busy", 0.0), ("reserved", 60.0)]
    # a process of its container appears: in use, the count starts again
    third, kept = view(index, [_record(2, "1", "reserved")], (), previous=kept, now=1120.0, uids={})
    assert [(u.pod, u.in_use, u.idle_seconds) for u in third.uses] == [("busy", False, 60.0),
                                                                       ("reserved", True, 0.0)]
    assert kept[key] == History(1120.0)
    # kubelet no longer lists it: gone from the view and from the state
    fourth, kept = view(AllocationIndex([_allocation("busy", gpu_uuid(0))], DEVICES), [], (), previous=kept,
                        now=1180.0, uids={})
    assert [u.pod for u in fourth.uses] == ["busy"]
    assert key not in kept


def test_a_new_pod_under_an_old_name_does_not_inherit_its_idle_time_and_the_clock_may_step_back() -> None:
    index = AllocationIndex([_allocation("job", gpu_uuid(1))], DEVICES)
    _, kept = view(index, [], (), previous={}, now=1000.0, uids={("ml", "job"): "uid-a"})
    same, _ = view(index, [], (), previous=kept, now=1500.0, uids={("ml", "job"): "uid-a"})
    unknown_uid, _ = view(index, [], (), previous=kept, now=1500.0, uids={})
    replaced, _ = view(index, [], (), previous=kept, now=1500.0, uids={("ml", "job"): "uid-b"})
    stepped_back, _ = view(index, [], (), previous=kept, now=900.0, uids={("ml", "job"): "uid-a"})
    assert [u.idle_seconds for u in (same.uses[0], unknown_uid.uses[0], replaced.uses[0], stepped_back.uses[0])] == [
        500.0, 500.0, 0.0, 0.0]


def test_a_process_of_unknown_owner_on_the_device_makes_its_use_unknown_not_unused() -> None:
    index = AllocationIndex([_allocation("a", gpu_uuid(0)), _allocation("b", gpu_uuid(1)),
                             _allocation("c", "MIG-1")], DEVICES)
    previous = {("ml", "a", "main", gpu_uuid(0)): History(10.0), ("ml", "b", "main", gpu_uuid(1)): History(10.0)}
    records = [_record(1, "0", ""),  # a pod's process whose runtime metadata was missing: no names
               _record(2, "2_2_0", "c", container="")]  # c's pod, container unknown
    found, kept = view(index, records, {"1"}, previous=previous, now=100.0, uids={})  # a dropped PID on GPU 1
    assert found.uses == ()
    assert kept == {}  # unknown use: the count starts again once it is known


def test_an_allocation_not_placed_this_run_keeps_its_history() -> None:
    previous = {("ml", "gone-gpu", "main", gpu_uuid(5)): History(10.0)}
    index = AllocationIndex([_allocation("gone-gpu", gpu_uuid(5))], DEVICES)  # its GPU failed this run
    found, kept = view(index, [], (), previous=previous, now=100.0, uids={})
    assert found.uses == ()
    assert kept == previous


_IDS = [gpu_uuid(0), f"{gpu_uuid(0)}::1", gpu_uuid(1), PARENT, "MIG-0", "MIG-1", "MIG-2", "nvidia1", "nvidia2/gi1",
        "GPU-elsewhere", "fpga-0", f"MIG-{PARENT}/2/1",
        gpu_uuid(0)[:20], f"MIG-{gpu_uuid(1)}", f"GPU-{PARENT}", "MIG-1::x", "nvidia", "nvidia2/gi", "::3", "MIG-0/1/2"]
_UNITS = [d.label for d in DEVICES]
_ALL_OF_2 = frozenset({"2_1_0", "2_2_0", "2_2_1"})
# What each id stands for on DEVICES, written out from the id shapes of docs/allocation.md: (label, UUID, units).
_PLACED: dict[str, Optional[AllocationTarget]] = {
    gpu_uuid(0): AllocationTarget("0", gpu_uuid(0), frozenset({"0"})),
    f"{gpu_uuid(0)}::1": AllocationTarget("0", gpu_uuid(0), frozenset({"0"})),  # a time-slicing replica of GPU 0
    gpu_uuid(1): AllocationTarget("1", gpu_uuid(1), frozenset({"1"})),
    PARENT: AllocationTarget("2", PARENT, _ALL_OF_2),  # a whole GPU in MIG mode: all its instances
    "MIG-0": AllocationTarget("2_1_0", "MIG-0", frozenset({"2_1_0"})),
    "MIG-1": AllocationTarget("2_2_0", "MIG-1", frozenset({"2_2_0"})),
    "MIG-2": AllocationTarget("2_2_1", "MIG-2", frozenset({"2_2_1"})),
    "nvidia1": AllocationTarget("1", gpu_uuid(1), frozenset({"1"})),  # GKE: /dev/nvidia1
    "nvidia2/gi1": AllocationTarget("2_1_0", "MIG-0", frozenset({"2_1_0"})),  # GKE: GPU instance 1 of /dev/nvidia2
    "GPU-elsewhere": None,
    "fpga-0": None,
    f"MIG-{PARENT}/2/1": AllocationTarget("2_2_1", "MIG-2", frozenset({"2_2_1"})),  # R450: <parent>/<gi>/<ci>
    gpu_uuid(0)[:20]: None,
    f"MIG-{gpu_uuid(1)}": None,
    f"GPU-{PARENT}": None,
    "MIG-1::x": AllocationTarget("2_2_0", "MIG-1", frozenset({"2_2_0"})),  # not a replica number: the id itself
    "nvidia": None,
    "nvidia2/gi": None,
    "::3": None,
    "MIG-0/1/2": None,
}
# The device under an id, where it is not the id itself: replicas of one GPU are one device.
_DEVICE = {f"{gpu_uuid(0)}::1": gpu_uuid(0), "MIG-1::x": "MIG-1", "::3": ""}
# Arbitrary ids of no known shape (no GPU-, MIG- or nvidia prefix, no sharing suffix): never placed.
_ODD_ID = st.text(st.characters(codec="ascii", exclude_characters=":/"), min_size=1, max_size=12).filter(
    lambda raw: not raw.startswith(("GPU-", "MIG-", "nvidia")))
_ANY_ID = st.sampled_from(_IDS) | _ODD_ID


def test_the_hand_written_placements_cover_every_sampled_id() -> None:
    assert set(_PLACED) == set(_IDS)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), st.lists(_ANY_ID, max_size=4), max_size=4),
       st.lists(st.tuples(st.sampled_from(_UNITS), st.sampled_from(["a", "b", "c", "e", "", "host"]),
                          st.sampled_from(["main", ""])), max_size=8),
       st.sets(st.sampled_from(_UNITS), max_size=2),
       st.floats(0, 10**6))
def test_the_allocation_view_claims_only_what_it_knows(allocated: dict[str, list[str]],
                                                       processes: list[tuple[str, str, str]], unplaced: set[str],
                                                       now: float) -> None:
    index = AllocationIndex([_allocation(pod, *ids) for pod, ids in allocated.items() if ids], DEVICES)
    records = [_record(n, unit, "" if pod == "host" else pod, container,
                       kind=OwnerKind.HOST if pod == "host" else OwnerKind.POD)
               for n, (unit, pod, container) in enumerate(processes)]
    found, kept = view(index, records, unplaced, previous={}, now=now, uids={})
    placed = {pod: [_PLACED.get(raw) for raw in ids] for pod, ids in allocated.items() if ids}
    for use in found.uses:
        mine = [r for r in records if r.owner.pod == use.pod and r.owner.container == "main"
                and r.gpu.device.label in use.target.units]
        assert use.in_use == bool(mine)
        assert use.idle_seconds == 0.0  # first sight
        strangers = [r for r in records if r.gpu.device.label in use.target.units and r.owner.kind == OwnerKind.POD
                     and (not r.owner.pod or (r.owner.pod == use.pod and not r.owner.container))]
        assert use.in_use or not (strangers or use.target.units & unplaced)  # unknown is never reported as 0
        assert use.target in placed[use.pod]
        assert (use.namespace, use.container) == ("ml", "main")
    for pod, targets in placed.items():  # every placed device has a series unless its use is unknown
        reported = {u.target for u in found.uses if u.pod == pod}
        for each in filter(None, targets):
            assert each in reported or each.units & (unplaced | {r.gpu.device.label for r in records
                                                               if r.owner.kind == OwnerKind.POD})
        # kubelet's count of devices, placed or not: replicas of one GPU are one device
        devices = {_DEVICE.get(raw, raw) for raw in allocated[pod]}
        assert len(index.devices[("ml", pod, "main", "nvidia.com/gpu")]) == len(devices)
        assert (("ml", pod, "main") in index.incomplete) == (None in targets)
    assert set(kept) == {(u.namespace, u.pod, u.container, u.target.uuid) for u in found.uses}
    # the process flag: 1 only off an allocation placed in full, 0 only on it, unknown otherwise; a process whose
    # container is not known is held to its pod's (here: its one container's) allocation
    for r in records:
        if r.owner.kind != OwnerKind.POD or not r.owner.pod:
            continue
        targets = placed.get(r.owner.pod, [])
        on = any(t is not None and r.gpu.device.label in t.units for t in targets)
        expected = False if on else (True if all(targets) else None)
        assert unallocated(index, r.owner, r.gpu.device.label) is expected


_claim_names = st.sampled_from([f"{DRA_KIND}=aa11-gpu-0", f"{DRA_KIND}=aa11-gpu-1", "nvidia.com/gpu=0",
                                 "nvidia.com/gpu=all", "bad", "", "x/y=z"]) | st.text(max_size=20)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.text(max_size=8), st.sampled_from(["gpu.nvidia.com", "", "nic.example.com"]),
                          st.text(max_size=8), st.lists(_claim_names, max_size=3)), max_size=4))
def test_any_dra_answer_is_placed_or_unknown_never_an_exception(tmp_path_factory: Any,
                                                                 claims: list[tuple[str, str, str, list[str]]]) -> None:
    """Random claims through a real protobuf round trip, against a host with one good spec and one broken one."""
    from collector.attribution import podresources_v1_pb2 as api  # noqa: PLC0415
    from collector.attribution.podresources import allocations  # noqa: PLC0415
    from tests.support.simhost import HostTree  # noqa: PLC0415

    root = tmp_path_factory.mktemp("dra")
    tree = HostTree(root)
    write_spec(tree, claim_spec_path("aa11"), spec(DRA_KIND, [gpu_device("aa11", 0), gpu_device("aa11", 9)]))
    tree.write("etc/cdi/nvidia.yaml", "cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices: [&a x]\n")
    response = api.ListPodResourcesResponse()
    container = response.pod_resources.add(name="p", namespace="ml").containers.add(name="main")
    for name, driver, device, cdi in claims:
        resource = container.dynamic_resources.add(claim_name=name, claim_namespace="ml").claim_resources.add(
            driver_name=driver, device_name=device)
        for each in cdi:
            resource.cdi_devices.add(name=each)
    wire = api.ListPodResourcesResponse.FromString(response.SerializeToString())
    index = AllocationIndex(allocations(wire), DEVICES, ClaimResolver(str(root), DEVICES))
    placed = index.by_container.get(("ml", "p", "main"), set())
    assert placed <= {"0"}  # aa11-gpu-0 is GPU 0; aa11-gpu-1 and the broken spec's names are never placed
    names = [n for _, _, _, cdi in claims for n in cdi]
    if any(n == f"{DRA_KIND}=aa11-gpu-0" for n in names):
        assert placed == {"0"}
    broken = {n for n in names if n != f"{DRA_KIND}=aa11-gpu-0"}
    assert (("ml", "p", "main") in index.incomplete) == bool(broken or any(
        d == "gpu.nvidia.com" and not cdi for _, d, _, cdi in claims))
    assert sum(index.cdi_unresolved.values()) >= len(broken) > 0 or not broken


# ---- end to end: the CLI, the stand-in NVML, a real gRPC server ----


def allocation(result: Result, family: str, pod: str, **labels: str) -> Optional[float]:
    found = result.series(family, pod=pod, **labels)
    assert len(found) <= 1, found
    return found[0][1] if found else None


def test_an_allocated_gpu_without_a_process_is_unused_and_its_idle_time_survives_runs(host: Host) -> None:
    k8s = PodHost(host.tree)
    busy, reserved = k8s.add_pod("ml", "busy"), k8s.add_pod("ml", "reserved")
    busy.containers[0].devices.append(("nvidia.com/gpu", [gpu_uuid(0)]))
    reserved.containers[0].devices.append(("nvidia.com/gpu", [gpu_uuid(1)]))
    k8s.add_process(100, busy)
    document = scenario([Gpu(0, compute=[proc(100)]), Gpu(1)])
    with pod_resources_server(host.socket, k8s.pods):
        first = host.run(document)
        assert first.returncode == 0, first.stderr
        assert allocation(first, "gpu_allocation_in_use", "busy", gpu="0", gpu_uuid=gpu_uuid(0),
                          namespace="ml", container="main") == 1
        assert allocation(first, "gpu_allocation_in_use", "reserved", gpu="1", gpu_uuid=gpu_uuid(1)) == 0
        assert allocation(first, "gpu_allocation_idle_seconds", "reserved") == 0
        assert allocation(first, "gpu_pod_allocated_devices", "reserved", resource="nvidia.com/gpu") == 1
        saved = json.loads((host.state_dir / "state.json").read_text())
        assert saved["version"] == state.STATE_VERSION
        entry, = (e for e in saved["allocations"] if e["pod"] == "reserved")
        assert entry["device"] == gpu_uuid(1)
        assert entry["pod_uid"] == reserved.uid  # from kubelet's log directory: the pod has no process

        entry["idle_since"] -= 7200  # two hours ago, as a run then would have written it
        (host.state_dir / "state.json").write_text(json.dumps(saved))
        later = host.run(document)
        assert allocation(later, "gpu_allocation_idle_seconds", "reserved") >= 7200
        assert allocation(later, "gpu_allocation_idle_seconds", "busy") == 0

        k8s.add_process(101, reserved)
        used = host.run(scenario([Gpu(0, compute=[proc(100)]), Gpu(1, compute=[proc(101)])]))
        assert allocation(used, "gpu_allocation_in_use", "reserved") == 1
        assert allocation(used, "gpu_allocation_idle_seconds", "reserved") == 0

    k8s.pods.remove(reserved)
    host.tree.remove_process(101)
    with pod_resources_server(host.socket, k8s.pods):
        gone = host.run(document)
    assert allocation(gone, "gpu_allocation_in_use", "reserved") is None
    assert allocation(gone, "gpu_pod_allocated_devices", "reserved") is None
    pods = {e["pod"] for e in json.loads((host.state_dir / "state.json").read_text())["allocations"]}
    assert pods == {"busy"}


def test_allocations_are_seen_on_a_node_without_any_gpu_process(host: Host) -> None:
    k8s = PodHost(host.tree)
    k8s.add_pod("ml", "waiting").containers[0].devices.append(("nvidia.com/gpu", [gpu_uuid(0)]))
    with pod_resources_server(host.socket, k8s.pods) as calls:
        result = host.run(scenario([Gpu(0)]))
    assert len(calls) == 1
    assert allocation(result, "gpu_allocation_in_use", "waiting") == 0
    assert result.value("gpu_proc_collector_pod_resources_up") == 1
    bare = host.run(scenario([Gpu(0)]))  # no socket at all: nothing asked, nothing claimed
    assert "gpu_allocation_in_use" not in bare.metrics
    assert bare.series("gpu_proc_collector_pod_resources_up") == []


def test_replicas_mig_instances_and_the_label_prefix(host: Host) -> None:
    k8s = PodHost(host.tree)
    shared = k8s.add_pod("ml", "shared")
    shared.containers[0].devices.append(("nvidia.com/gpu.shared", [f"{gpu_uuid(0)}::0", f"{gpu_uuid(0)}::4"]))
    small = k8s.add_pod("ml", "small")
    small.containers[0].devices.append(("nvidia.com/mig-1g.10gb", [mig_uuid(1, 2), mig_uuid(1, 3)]))
    k8s.add_process(200, shared)
    k8s.add_process(201, small)
    instances = [mig_instance(1, slot=2, gi=9, ci=0, profile="1g.10gb", total_gib=10, compute=[proc(201)]),
                 mig_instance(1, slot=3, gi=10, ci=0, profile="1g.10gb", total_gib=10)]
    with pod_resources_server(host.socket, k8s.pods):
        result = host.run(scenario([Gpu(0, compute=[proc(200)]), Gpu(1, mig=instances)]), "--label-prefix", "k8s_")
    devices = {(lab["k8s_pod"], lab["resource"]): v for lab, v in result.metrics["gpu_pod_allocated_devices"]}
    assert devices == {("shared", "nvidia.com/gpu.shared"): 1, ("small", "nvidia.com/mig-1g.10gb"): 2}
    uses = {(lab["k8s_pod"], lab["gpu"], lab["gpu_uuid"]): v for lab, v in result.metrics["gpu_allocation_in_use"]}
    assert uses == {("shared", "0", gpu_uuid(0)): 1, ("small", "1_9_0", mig_uuid(1, 2)): 1,
                    ("small", "1_10_0", mig_uuid(1, 3)): 0}
    labels = result.metrics["gpu_allocation_idle_seconds"][0][0]
    assert {"k8s_pod", "k8s_namespace", "k8s_container"} <= set(labels)
    assert "pod" not in labels


def test_allocations_get_the_series_the_processes_leave_unused_first(host: Host) -> None:
    k8s = PodHost(host.tree)
    pods = []
    for n in range(4):
        pod = k8s.add_pod("ml", f"p{n}")
        pod.containers[0].devices.append(("nvidia.com/gpu", [gpu_uuid(n)]))
        pods.append(pod)
    k8s.add_process(300, pods[0])
    k8s.add_process(301, pods[1])
    document = scenario([Gpu(0, compute=[proc(300)]), Gpu(1, compute=[proc(301)]), Gpu(2), Gpu(3)])
    with pod_resources_server(host.socket, k8s.pods):
        tight = host.run(document, "--max-process-series", "3")
        loose = host.run(document)
    assert len(tight.series("gpu_process_info")) == 2
    assert {lab["pod"] for lab, _ in tight.metrics["gpu_allocation_in_use"]} == {"p2"}  # 3 - 2 processes: 1 left
    assert tight.value("gpu_allocation_in_use", pod="p2") == 0
    assert tight.value("gpu_proc_collector_allocation_series_dropped") == 3
    assert len(tight.metrics["gpu_pod_allocated_devices"]) == 4  # one per container, always
    assert loose.value("gpu_proc_collector_allocation_series_dropped") == 0
    assert len(loose.metrics["gpu_allocation_in_use"]) == 4


def test_devices_not_on_this_host_and_ids_of_no_known_shape_flag_nothing_they_cannot_know(host: Host) -> None:
    k8s = PodHost(host.tree)
    odd = k8s.add_pod("ml", "odd")
    odd.containers[0].devices.append(("nvidia.com/gpu", [gpu_uuid(0), "GPU-ffffffff-not-on-this-host", "weird:id"]))
    strict = k8s.add_pod("ml", "strict")
    strict.containers[0].devices.append(("nvidia.com/gpu", [gpu_uuid(0)]))
    k8s.add_process(400, odd)
    k8s.add_process(401, odd)
    k8s.add_process(402, strict)
    with pod_resources_server(host.socket, k8s.pods):
        result = host.run(scenario([Gpu(0, compute=[proc(400)]), Gpu(1, compute=[proc(401), proc(402)])]))
    assert result.returncode == 0, result.stderr
    assert result.value("gpu_process_unallocated", pid="400") == 0  # on the part that is known
    assert result.series("gpu_process_unallocated", pid="401") == []  # maybe on the part that is not
    assert result.value("gpu_process_unallocated", pid="402") == 1  # a fully known allocation
    assert result.value("gpu_pod_allocated_devices", pod="odd") == 3
    assert {lab["gpu"] for lab, _ in result.series("gpu_allocation_in_use", pod="odd")} == {"0"}
    assert "no known shape" in result.stderr


def test_gke_ids_name_gpus_by_their_minor_number(host: Host) -> None:
    k8s = PodHost(host.tree)
    pod = k8s.add_pod("ml", "gke")
    pod.containers[0].devices.append(("nvidia.com/gpu", ["nvidia5"]))  # /dev/nvidia5: NVML's GPU 1 here
    k8s.add_process(500, pod)
    with pod_resources_server(host.socket, k8s.pods):
        result = host.run(scenario([Gpu(0, minor=4), Gpu(1, compute=[proc(500)], minor=5)]))
    assert result.value("gpu_process_unallocated", pid="500") == 0
    assert result.value("gpu_allocation_in_use", pod="gke", gpu="1") == 1


# ---- DRA ----

def claim_uid(seed: str) -> str:
    return str(uuidlib.uuid5(uuidlib.NAMESPACE_OID, seed))


def test_dra_claims_are_placed_through_their_cdi_specs(host: Host) -> None:
    """NVIDIA's DRA driver: a whole GPU and a MIG instance, by minor number (not NVML's index) and MIG capability."""
    k8s = PodHost(host.tree)
    train, infer = claim_uid("train"), claim_uid("infer")
    gpu = gpu_device(train, 7)  # /dev/nvidia7 is NVML's GPU 1 on this host
    mig = mig_device(infer, 4, 5, 0)  # GPU instance 5 of the GPU with minor 4 (NVML's GPU 2)
    write_spec(host.tree, claim_spec_path(train), spec(DRA_KIND, [gpu]))
    write_spec(host.tree, claim_spec_path(infer, "json"), spec(DRA_KIND, [mig]))  # JSON specs work the same
    write_mig_caps(host.tree, 4, [(1, 0), (5, 0)])
    trainer, server = k8s.add_pod("ml", "trainer"), k8s.add_pod("ml", "server")
    trainer.containers[0].claims.append(Claim("gpu", [qualified(gpu)], device="gpu-7"))
    server.containers[0].claims.append(Claim("mig", [qualified(mig)], device="gpu-4-mig-1g10gb-19-0"))
    k8s.add_process(600, trainer)
    k8s.add_process(601, trainer)  # also on a GPU it was not given
    k8s.add_process(602, server)
    instances = [mig_instance(2, slot=0, gi=1, ci=0, profile="3g.40gb", total_gib=40),
                 mig_instance(2, slot=1, gi=5, ci=0, profile="1g.10gb", total_gib=10, compute=[proc(602)])]
    document = scenario([Gpu(0, compute=[proc(601)], minor=0), Gpu(1, compute=[proc(600)], minor=7),
                         Gpu(2, mig=instances, minor=4)])
    with pod_resources_server(host.socket, k8s.pods):
        result = host.run(document)
    assert result.returncode == 0, result.stderr
    assert result.value("gpu_process_unallocated", pid="600") == 0
    assert result.value("gpu_process_unallocated", pid="601") == 1
    assert result.value("gpu_process_unallocated", pid="602") == 0
    assert result.value("gpu_allocation_in_use", pod="trainer", gpu="1", gpu_uuid=gpu_uuid(1)) == 1
    assert result.value("gpu_allocation_in_use", pod="server", gpu="2_5_0", gpu_uuid=mig_uuid(2, 1)) == 1
    assert result.value("gpu_pod_allocated_devices", pod="trainer", resource="gpu.nvidia.com") == 1
    assert {lab["reason"]: v for lab, v in result.metrics["gpu_proc_collector_cdi_unresolved"]} == dict.fromkeys(
        ["not_found", "unreadable", "malformed", "yaml_unsupported", "conflict", "unknown_device", "no_gpu_node",
         "no_cdi_device", "bad_name"], 0.0)


@pytest.mark.parametrize(("spec_text", "reason"), [
    (None, "not_found"),
    ("---\ncdiVersion: 0.5.0\nkind: k8s.gpu.nvidia.com/claim\ndevices:\n    - name: {uid}-gpu-0\n      contai",
     "malformed"),
    ("---\ncdiVersion: 0.5.0\nkind: k8s.gpu.nvidia.com/claim\ndevices:\n    - &dev\n      name: {uid}-gpu-0\n",
     "yaml_unsupported"),
    ("---\ncdiVersion: 0.5.0\nkind: k8s.gpu.nvidia.com/claim\ndevices:\n    - name: {uid}-gpu-0\n      containerEdits:"
     "\n        deviceNodes:\n            - path: /dev/nvidia9\n", "unknown_device"),
    ("---\ncdiVersion: 0.5.0\nkind: k8s.gpu.nvidia.com/claim\ndevices:\n    - name: {uid}-gpu-0\n      containerEdits:"
     "\n        env: [A=1]\n", "no_gpu_node"),
])
def test_a_claim_whose_spec_cannot_be_read_is_unknown_counted_and_never_flagged(host: Host, spec_text: Optional[str],
                                                                                reason: str) -> None:
    k8s = PodHost(host.tree)
    uid = claim_uid("lost")
    if spec_text is not None:
        host.tree.write(claim_spec_path(uid), spec_text.replace("{uid}", uid))
    pod = k8s.add_pod("ml", "lost", containers=["main", "sidecar"])
    for container in pod.containers:  # one claim shared by two containers
        container.claims.append(Claim("gpu", [f"{DRA_KIND}={uid}-gpu-0"]))
    k8s.add_process(700, pod)
    with pod_resources_server(host.socket, k8s.pods):
        result = host.run(scenario([Gpu(0, compute=[proc(700)])]))
    assert result.returncode == 0, result.stderr
    assert result.series("gpu_process_unallocated", pid="700") == []
    assert result.series("gpu_allocation_in_use", pod="lost") == []
    assert result.value("gpu_proc_collector_cdi_unresolved", reason=reason) == 1  # one name, however many users
    assert sum(v for _, v in result.metrics["gpu_proc_collector_cdi_unresolved"]) == 1
    assert result.value("gpu_pod_allocated_devices", pod="lost", container="main") == 1  # a GPU driver's device
    assert result.stderr.count(f"{uid}-gpu-0") == 1  # logged once


def test_claims_of_other_drivers_are_not_gpus(host: Host) -> None:
    k8s = PodHost(host.tree)
    write_spec(host.tree, "var/run/cdi/example.com-nic.yaml", spec("example.com/nic", [
        {"name": "vf0", "containerEdits": {"deviceNodes": [{"path": "/dev/vfio/7"}]}}], common={}))
    pod = k8s.add_pod("ml", "netted")
    pod.containers[0].devices.append(("nvidia.com/gpu", [gpu_uuid(0)]))
    pod.containers[0].claims.append(Claim("nic", ["example.com/nic=vf0"], driver="nic.example.com", device="vf0"))
    k8s.add_process(800, pod)
    with pod_resources_server(host.socket, k8s.pods):
        result = host.run(scenario([Gpu(0, compute=[proc(800)]), Gpu(1)]))
    assert result.value("gpu_pod_allocated_devices", pod="netted") == 1
    assert result.series("gpu_pod_allocated_devices", resource="nic.example.com") == []
    assert result.value("gpu_process_unallocated", pid="800") == 0


def test_an_older_state_file_loads_with_a_log_line_and_bad_entries_are_dropped(tmp_path: Any,
                                                                              caplog: Any) -> None:
    (tmp_path / "state.json").write_text(json.dumps({"version": 1, "last_success": 5.0, "last_seen_us": {"G": 1},
                                                     "last_active": {"G/1/1.00": 2.0}}))
    with caplog.at_level("INFO"):
        old = state.load(str(tmp_path))
    assert (old.last_success, old.last_seen_us, old.last_active, old.allocations) == (5.0, {"G": 1},
                                                                                     {"G/1/1.00": 2.0}, {})
    assert "no allocation history" in caplog.text
    good = {"namespace": "ml", "pod": "a", "container": "main", "device": "GPU-1", "idle_since": 3.5, "pod_uid": "u"}
    (tmp_path / "state.json").write_text(json.dumps({"version": 1, "allocations": [
        good, {**good, "idle_since": "x"}, {**good, "pod": 3}, "junk", {**good, "pod_uid": None}]}))
    assert state.load(str(tmp_path)).allocations == {("ml", "a", "main", "GPU-1"): History(3.5, "u")}
    full = state.State(last_success=1.0, allocations={("ml", "a", "main", "GPU-1"): History(3.5, "u")})
    state.save(str(tmp_path / "new"), full)
    assert state.load(str(tmp_path / "new")) == full


def test_claim_resolver_refuses_an_unknown_capability(host: Host) -> None:
    uid = claim_uid("caps")
    mig = mig_device(uid, 0, 3, 0)
    write_spec(host.tree, claim_spec_path(uid), spec(DRA_KIND, [mig]))
    devices = [Device(label="0_3_0", index=0, uuid="MIG-x", name="H100", memory_total=1, memory_used=0, minor=0,
                      mig=MigInfo(gpu_instance_id=3, compute_instance_id=0, profile="1g.10gb", parent_uuid="GPU-p"))]
    with pytest.raises(CdiUnresolved) as err:  # no capability files under the host root
        ClaimResolver(str(host.tree.root), devices).targets(qualified(mig))
    assert err.value.reason == "unknown_device"
    write_mig_caps(host.tree, 0, [(3, 0)], listing=False)
    found, = ClaimResolver(str(host.tree.root), devices).targets(qualified(mig))
    assert (found.label, found.uuid) == ("0_3_0", "MIG-x")
