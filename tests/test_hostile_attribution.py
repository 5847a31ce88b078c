"""A hostile tenant against attribution: the real CLI on simulated host trees, the stand-in NVML, and kubelet's
real gRPC pod-resources server. Each test names the reproduction it guards against: a process of pod A (or of a
user, or of a delegated service) that names pod B in its cgroup, runtime files that disagree with the cgroup, a pod
kubelet does not know, and a process whose cgroup vanished. None of them may be reported as pod B
(docs/runtimes-and-cgroups.md, "Trust")."""

from __future__ import annotations

import json
import shutil
import tempfile
import types
from pathlib import Path

import pytest

from collector import collection
from collector.model import Device, GpuProcess, NvmlSnapshot
from collector.settings import Settings
from collector.state import State
from tests.conftest import Host, Result, samples
from tests.support.podsim import Container, Pod, PodHost, cgroup_text, pod_resources_server
from tests.support.simhost import GIB, H100, H100_MEMORY, Gpu, HostTree, gpu_uuid, proc, scenario


def owner_of(result: Result, pid: int) -> dict[str, str]:
    (labels, _), = result.series("gpu_process_memory_bytes", pid=str(pid))
    return {k: labels[k] for k in ("pod", "namespace", "container", "owner_kind", "owner")}


def conflicts(result: Result) -> dict[str, float]:
    return {labels["reason"]: value for labels, value in result.series("gpu_proc_collector_attribution_conflicts")
            if value}


def container_path(k8s: PodHost, pod: Pod, container: Container, **kw: bool) -> str:
    """The cgroup path of a container's process as kubelet and the runtime lay it out (v2)."""
    return cgroup_text(pod, container, runtime=k8s.runtime, driver=k8s.driver, version=2, **kw)[3:].strip()


def two_pods(host: Host, runtime: str = "containerd") -> tuple[PodHost, Pod, Pod]:
    """Pod A (ml/tenant-a, GPU 0) and pod B (ml/victim-b, GPU 1), both running, both known to kubelet."""
    k8s = PodHost(host.tree, runtime=runtime)
    a = k8s.add_pod("ml", "tenant-a")
    a.containers[0].devices.append(("nvidia.com/gpu", [gpu_uuid(0)]))
    b = k8s.add_pod("ml", "victim-b")
    b.containers[0].devices.append(("nvidia.com/gpu", [gpu_uuid(1)]))
    return k8s, a, b


def forged_names(b: Pod) -> dict[str, str]:
    """The names a tenant gives a sub-cgroup to pass as pod B's container (containerd's verbatim systemd form,
    CRI-O's conmon scope under B's pod slice, the systemd driver's pod slice and scope)."""
    uid, cid = b.uid.replace("-", "_"), b.containers[0].id
    return {
        "verbatim": f"kubepods-burstable-pod{uid}.slice:cri-containerd:{cid}",
        "conmon": f"kubepods-burstable-pod{uid}.slice/crio-conmon-{cid}.scope",
        "slices": f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid}.slice/"
                  f"cri-containerd-{cid}.scope",
    }


@pytest.mark.parametrize("form", ["verbatim", "conmon", "slices"])
def test_a_sub_cgroup_of_pod_a_named_after_pod_b_stays_pod_a(host: Host, form: str) -> None:
    """Reproduction: a process of pod A moves into a sub-cgroup of its own container named
    `kubepods-pod<B uid>.slice:cri-containerd:<B id>` (or `…/crio-conmon-<B id>.scope`, or B's whole slice path)
    and runs on B's GPU: it was reported as pod B, and `gpu_process_unallocated 1` was blamed on B."""
    k8s, a, b = two_pods(host)
    own = container_path(k8s, a, a.containers[0])
    host.tree.add_process(500, "python3", cgroup=f"0::{own}/{forged_names(b)[form]}\n")
    with pod_resources_server(host.socket, k8s.pods):
        result = host.run(scenario([Gpu(0), Gpu(1, compute=[proc(500, 2 * GIB)])]))
    assert result.returncode == 0, result.stderr
    assert owner_of(result, 500) == {"pod": "tenant-a", "namespace": "ml", "container": "main",
                                     "owner_kind": "pod", "owner": "ml/tenant-a"}
    assert result.value("gpu_process_unallocated", pid="500", pod="tenant-a") == 1
    assert result.value("gpu_allocation_in_use", pod="victim-b", gpu="1") == 0
    assert conflicts(result) == {"nested_below_container": 1}


def test_crio_conmon_name_inside_pod_a_stays_pod_a(host: Host) -> None:
    """Reproduction: under CRI-O, a process of pod A in a sub-cgroup `crio-conmon-<B id>.scope` of its own container
    was taken for B's conmon, named after B's container, and reported as pod B."""
    k8s, a, b = two_pods(host, runtime="crio")
    own = container_path(k8s, a, a.containers[0], crun=True)
    host.tree.add_process(501, "python3", cgroup=f"0::{own}/crio-conmon-{b.containers[0].id}.scope\n")
    with pod_resources_server(host.socket, k8s.pods):
        result = host.run(scenario([Gpu(0), Gpu(1, compute=[proc(501)])]))
    assert (owner_of(result, 501)["owner"], owner_of(result, 501)["owner_kind"]) == ("ml/tenant-a", "pod")
    assert conflicts(result) == {"nested_below_container": 1}


DELEGATED = {
    # a user's systemd manager: systemd delegates its whole subtree to the user
    "user manager": ("/user.slice/user-1000.slice/user@1000.service/app.slice/evil.service",
                     {"owner_kind": "host", "owner": "user-1000"}),
    "user manager, directly": ("/user.slice/user-1000.slice/user@1000.service",
                               {"owner_kind": "host", "owner": "user-1000"}),
    # a Delegate=yes service that runs a tenant's jobs
    "delegated service": ("/system.slice/any.service", {"owner_kind": "systemd", "owner": "any.service"}),
}


@pytest.mark.parametrize("form", ["verbatim", "conmon", "slices"])
@pytest.mark.parametrize("where", list(DELEGATED))
def test_pod_b_names_below_a_user_manager_or_a_delegated_service_are_not_pod_b(host: Host, where: str,
                                                                            form: str) -> None:
    """Reproduction: the same names made under `/user.slice/user-1000.slice/user@1000.service/...` or
    `/system.slice/any.service/...` (subtrees systemd delegates) were reported as pod B."""
    k8s, _, b = two_pods(host)
    parent, expected = DELEGATED[where]
    host.tree.add_process(510, "python3", cgroup=f"0::{parent}/{forged_names(b)[form]}\n")
    with pod_resources_server(host.socket, k8s.pods):
        result = host.run(scenario([Gpu(1, compute=[proc(510)])]))
    assert owner_of(result, 510) == {"pod": "", "namespace": "", "container": "", **expected}
    assert result.value("gpu_process_unallocated", pid="510") == 1  # not B's process, on B's GPU
    assert conflicts(result) == {"untrusted_position": 1}


def test_a_docker_container_name_below_a_delegated_service_is_not_that_container(host: Host) -> None:
    """Reproduction: `/system.slice/any.service/docker-<id>.scope` was reported as the rootful docker container
    <id> (named from its config.v2.json), and under a user's manager as well."""
    cid = "d" * 64
    host.tree.write(f"var/lib/docker/containers/{cid}/config.v2.json",
                    json.dumps({"ID": cid, "Name": "/billing-db", "Config": {"Labels": {}}}))
    host.tree.add_process(520, "python3", cgroup=f"0::/system.slice/any.service/docker-{cid}.scope\n")
    host.tree.add_process(521, "python3", cgroup="0::/user.slice/user-1000.slice/user@1000.service/app.slice/"
                          f"x.service/docker-{cid}.scope\n")
    result = host.run(scenario([Gpu(0, compute=[proc(520), proc(521)])]))
    assert (owner_of(result, 520)["owner_kind"], owner_of(result, 520)["owner"]) == ("systemd", "any.service")
    assert (owner_of(result, 521)["owner_kind"], owner_of(result, 521)["owner"]) == ("host", "user-1000")
    assert conflicts(result) == {"untrusted_position": 2}


def test_runtime_file_naming_another_pod_uid_is_unverified(host: Host) -> None:
    """Reproduction: the runtime's file of the container in pod X's cgroup names pod B (B's name and UID in its
    annotations): the process was reported as pod B, the file's UID never compared with the cgroup's."""
    k8s, _, b = two_pods(host)
    x = k8s.add_pod("ml", "pod-x", write_metadata=False)
    forged = x.containers[0]
    k8s.write_metadata(Pod(b.namespace, b.name, b.uid, b.qos, [forged]), forged)  # B's pod, X's container id
    k8s.add_process(530, x)
    with pod_resources_server(host.socket, k8s.pods):
        result = host.run(scenario([Gpu(1, compute=[proc(530)])]))
    assert owner_of(result, 530) == {"pod": "", "namespace": "", "container": "", "owner_kind": "unverified",
                                     "owner": x.uid}
    assert result.series("gpu_allocation_in_use", pod="victim-b") == []  # a pod's process of unknown pod on it
    assert conflicts(result) == {"pod_uid_mismatch": 1}


def test_runtime_file_recording_another_cgroup_is_unverified(host: Host) -> None:
    """Reproduction: the runtime's file of the container in pod X's cgroup names pod B without a pod UID (as
    containerd before 1.7 writes it) and records B's cgroup: the process was reported as pod B, the recorded
    cgroupsPath never compared with the process's cgroup."""
    k8s, _, b = two_pods(host)
    x = k8s.add_pod("ml", "pod-x", write_metadata=False)
    forged = x.containers[0]
    path = k8s.write_metadata(Pod(b.namespace, b.name, b.uid, b.qos, [forged]), forged)
    spec = json.loads(path.read_text())
    del spec["annotations"]["io.kubernetes.cri.sandbox-uid"]
    path.write_text(json.dumps(spec))
    k8s.add_process(540, x)
    with pod_resources_server(host.socket, k8s.pods):
        result = host.run(scenario([Gpu(1, compute=[proc(540)])]))
    assert owner_of(result, 540)["owner_kind"] == "unverified"
    assert owner_of(result, 540)["owner"] == x.uid
    assert conflicts(result) == {"cgroup_mismatch": 1}


@pytest.mark.parametrize("runtime", ["containerd", "crio", "docker"])
def test_runtime_file_recording_no_cgroup_is_unverified(host: Host, runtime: str) -> None:
    """Reproduction: a runtime file with B's annotations but no recorded cgroup (no linux.cgroupsPath, no
    hostconfig.json) backs nothing: it was taken as is."""
    k8s = PodHost(host.tree, runtime=runtime)
    pod = k8s.add_pod("ml", "train")
    path = k8s.write_metadata(pod, pod.containers[0])
    if runtime == "docker":
        (path.parent / "hostconfig.json").unlink()
    else:
        spec = json.loads(path.read_text())
        del spec["linux"]
        path.write_text(json.dumps(spec))
    k8s.add_process(545, pod)
    result = host.run(scenario([Gpu(0, compute=[proc(545)])]))
    assert owner_of(result, 545)["owner_kind"] == "unverified"
    assert conflicts(result) == {"cgroup_mismatch": 1}


def test_a_pod_kubelet_does_not_list_is_unverified(host: Host) -> None:
    """Reproduction: a container whose cgroup and runtime file agree on pod B, while kubelet's pod-resources List
    (which answered) has no pod B on this node: it was reported as pod B."""
    k8s, a, b = two_pods(host)
    k8s.add_process(550, a)
    k8s.add_process(551, b)
    with pod_resources_server(host.socket, [a]):
        result = host.run(scenario([Gpu(0, compute=[proc(550)]), Gpu(1, compute=[proc(551)])]))
    assert owner_of(result, 550)["owner"] == "ml/tenant-a"
    assert owner_of(result, 551) == {"pod": "", "namespace": "", "container": "", "owner_kind": "unverified",
                                     "owner": b.uid}
    assert result.value("gpu_proc_collector_pod_resources_up") == 1
    assert conflicts(result) == {"unknown_to_kubelet": 1}


def test_a_pod_named_by_its_log_directory_that_kubelet_does_not_list_is_unverified(host: Host) -> None:
    """Reproduction: with no runtime file, kubelet's log directory named the cgroup's pod, and kubelet's List (which
    answered without it) was not asked."""
    k8s, a, _ = two_pods(host)
    ghost = k8s.add_pod("ml", "ghost", write_metadata=False)
    k8s.add_process(555, ghost)
    with pod_resources_server(host.socket, [a]):
        result = host.run(scenario([Gpu(1, compute=[proc(555)])]))
    assert (owner_of(result, 555)["owner_kind"], owner_of(result, 555)["owner"]) == ("unverified", ghost.uid)
    assert conflicts(result) == {"unknown_to_kubelet": 1}


def test_a_process_whose_cgroup_vanished_is_dropped_not_a_host_process(host: Host) -> None:
    """Reproduction: `/proc/<pid>/cgroup` cannot be read (the process exited after its stat was read): the process
    was reported as `owner_kind="host"`, flagged unallocated on its pod's own GPU, and the pod's allocation showed
    unused."""
    k8s, a, _ = two_pods(host)
    k8s.add_process(560, a)
    (host.tree.root / "proc/560/cgroup").unlink()
    with pod_resources_server(host.socket, k8s.pods):
        result = host.run(scenario([Gpu(0, compute=[proc(560)])]))
    assert result.returncode == 0, result.stderr
    assert result.series("gpu_process_memory_bytes", pid="560") == []
    assert result.series("gpu_process_unallocated", pid="560") == []
    assert result.value("gpu_proc_collector_processes_dropped", reason="pid_not_found") == 1
    assert result.series("gpu_allocation_in_use", pod="tenant-a") == []  # unknown: a process of unknown owner


def write_old_state(host: Host, containers: dict[str, list[str]]) -> None:
    """A state file as the previous version wrote it: five fields per remembered container, no recorded cgroup."""
    host.state_dir.mkdir(parents=True, exist_ok=True)
    document = {"version": 2, "last_success": None, "containers": containers}
    (host.state_dir / "state.json").write_text(json.dumps(document))


def test_a_remembered_container_from_an_old_state_is_checked_again(host: Host) -> None:
    """Reproduction: the state's remembered containers were taken without any check; one the previous version
    wrote naming pod B for the container in pod X's cgroup made it pod B. It loads, and its files are read again."""
    k8s, _, b = two_pods(host)
    x = k8s.add_pod("ml", "pod-x")
    write_old_state(host, {x.containers[0].id: [b.name, b.namespace, b.uid, "main", "containerd"]})
    k8s.add_process(570, x)
    with pod_resources_server(host.socket, k8s.pods):
        result = host.run(scenario([Gpu(1, compute=[proc(570)])]))
    assert result.returncode == 0, result.stderr
    assert owner_of(result, 570)["owner"] == "ml/pod-x"
    assert conflicts(result) == {}


def test_a_remembered_container_keeps_its_recorded_cgroup_and_its_check(host: Host) -> None:
    """Reproduction: once a container was remembered, any cgroup naming its id got its pod. The second run does not
    read the runtime's files (they are corrupt by then), and still refuses the container's id in another pod's
    cgroup."""
    k8s, a, b = two_pods(host)
    k8s.add_process(580, a)
    first = host.run(scenario([Gpu(0, compute=[proc(580)])]))
    assert owner_of(first, 580)["owner"] == "ml/tenant-a"
    for bundle in (host.tree.root / "run/containerd/io.containerd.runtime.v2.task/k8s.io").glob("*/config.json"):
        bundle.write_text("{corrupt")
    stolen = Container("main", a.containers[0].id)  # A's container id in B's pod slice
    host.tree.add_process(581, "python3", cgroup=cgroup_text(b, stolen, runtime="containerd", driver="systemd",
                                                             version=2))
    second = host.run(scenario([Gpu(0, compute=[proc(580), proc(581)])]))
    assert owner_of(second, 580)["owner"] == "ml/tenant-a"
    assert (owner_of(second, 581)["owner_kind"], owner_of(second, 581)["owner"]) == ("unverified", b.uid)
    assert second.value("gpu_proc_collector_metadata_misses", reason="corrupt") == 0
    assert conflicts(second) == {"pod_uid_mismatch": 1}


NODE = "93529524695bb00d91c1f6dba692ea8d3550c3b94fb2463af7bc9ec82f992d26"


def test_a_kind_node_is_a_cgroup_root_only_when_named(host: Host, tmp_path: Path) -> None:
    """A kubelet nested in a docker container (kind): its pods below `/docker/<node>/kubepods/...` are pods only
    under the configured cgroup root; without it, what any container with a writable cgroupfs can make is that
    container's."""
    uid = "a2830d0d-b0f0-4ff0-81b5-0ee4e299cf80"
    cid = "09bc3d7ade839efec32b6bec4ec79d099027a668ddba043083ec21d3c3b8f1e6"
    host.tree.add_process(590, "python3", cgroup=f"0::/docker/{NODE}/kubepods/besteffort/pod{uid}/{cid}\n")
    plain = host.run(scenario([Gpu(0, compute=[proc(590)])]))
    assert (owner_of(plain, 590)["owner_kind"], owner_of(plain, 590)["owner"]) == ("docker", NODE[:12])
    assert conflicts(plain) == {"nested_below_container": 1}
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"cgroup_roots": [f"/docker/{NODE}"]}))
    for option in (["--config", str(config)], ["--cgroup-root", f"/docker/{NODE}"]):
        nested = host.run(scenario([Gpu(0, compute=[proc(590)])]), *option)
        assert (owner_of(nested, 590)["owner_kind"], owner_of(nested, 590)["owner"]) == ("pod", uid)
        assert conflicts(nested) == {}


def test_a_bad_cgroup_root_is_a_usage_error(host: Host) -> None:
    result = host.run(scenario([Gpu(0)]), "--cgroup-root", "docker/x", check_file=False)
    assert result.returncode == 2
    assert "cgroup_roots" in result.stderr


LEGIT = {
    # kubelet's systemd driver, runc driving cgroupfs: the "slice:prefix:id" string became a directory under
    # containerd's own cgroup (docs/runtimes-and-cgroups.md, 3.1)
    "verbatim under containerd.service": "/system.slice/containerd.service/{verbatim}",
    "verbatim at the root": "/{verbatim}",
    # the collector in a cgroup namespace of its own: the path starts with /.. and below the root
    "through a cgroup namespace": "/../../kubepods-burstable-pod{uid}.slice/cri-containerd-{cid}.scope",
}


@pytest.mark.parametrize("layout", list(LEGIT))
def test_layouts_real_runtimes_make_still_resolve_to_the_pod(host: Host, layout: str) -> None:
    k8s = PodHost(host.tree)
    pod = k8s.add_pod("ml", "train")
    cid, uid = pod.containers[0].id, pod.uid.replace("-", "_")
    verbatim = f"kubepods-burstable-pod{uid}.slice:cri-containerd:{cid}"
    host.tree.add_process(600, "python3", cgroup="0::" + LEGIT[layout].format(verbatim=verbatim, uid=uid, cid=cid))
    with pod_resources_server(host.socket, k8s.pods):
        result = host.run(scenario([Gpu(0, compute=[proc(600)])]))
    assert owner_of(result, 600) == {"pod": "train", "namespace": "ml", "container": "main", "owner_kind": "pod",
                                     "owner": "ml/train"}
    assert conflicts(result) == {}


def test_a_rootless_cgroup_naming_a_rootful_docker_container_does_not_get_its_name(host: Host) -> None:
    """Reproduction: a user's `user@1000.service/user.slice/docker-<id>.scope`, <id> being a rootful docker
    container's, was named after that container (read from the rootful store). Rootless docker's names come from
    the user's own data root."""
    rootful, own = "d" * 64, "e" * 64
    host.tree.write(f"var/lib/docker/containers/{rootful}/config.v2.json",
                    json.dumps({"ID": rootful, "Name": "/billing-db", "Config": {"Labels": {}}}))
    host.tree.write("etc/passwd", "alice:x:1000:1000::/home/alice:/bin/bash\n")
    host.tree.write(f"home/alice/.local/share/docker/containers/{own}/config.v2.json",
                    json.dumps({"ID": own, "Name": "/notebook", "Config": {"Labels": {}}}))
    manager = "0::/user.slice/user-1000.slice/user@1000.service/user.slice"
    host.tree.add_process(610, "python3", cgroup=f"{manager}/docker-{rootful}.scope\n")
    host.tree.add_process(611, "python3", cgroup=f"{manager}/docker-{own}.scope\n")
    result = host.run(scenario([Gpu(0, compute=[proc(610), proc(611)])]))
    assert (owner_of(result, 610)["owner_kind"], owner_of(result, 610)["owner"]) == ("docker", rootful[:12])
    assert (owner_of(result, 611)["owner_kind"], owner_of(result, 611)["owner"]) == ("docker", "notebook")


def test_processes_sharing_a_cgroup_are_each_counted_and_judged_on_their_own_device(host: Host) -> None:
    """A cgroup's owner is resolved once per run (collector.attribution.join.Attributor._resolve) and shared by
    every process in it; what depends on the process stays per process: pod B, which kubelet does not list, has
    two processes (the first ones attribution sees, before any of pod A), each counted as a conflict; pod A's
    two processes run on its own GPU and on B's, and only the second is flagged unallocated."""
    k8s, a, b = two_pods(host)
    k8s.add_process(570, b)
    k8s.add_process(571, b)
    k8s.add_process(572, a)
    k8s.add_process(573, a)
    with pod_resources_server(host.socket, [a]):
        result = host.run(scenario([Gpu(0, compute=[proc(570), proc(571), proc(572)]), Gpu(1, compute=[proc(573)])]))
    assert owner_of(result, 570)["owner_kind"] == "unverified"
    assert owner_of(result, 571)["owner_kind"] == "unverified"
    assert conflicts(result) == {"unknown_to_kubelet": 2}
    assert owner_of(result, 572)["owner"] == owner_of(result, 573)["owner"] == "ml/tenant-a"
    assert result.value("gpu_process_unallocated", pid="572") == 0
    assert result.value("gpu_process_unallocated", pid="573") == 1


def test_a_cgroups_owner_is_not_kept_from_one_collection_to_the_next(tmp_path: Path) -> None:
    """The long-running mode collects in one process: a pod kubelet stopped listing since the last collection
    is unverified in this one, though its process's cgroup text is the same (nothing resolved for a cgroup
    outlives the collection that resolved it)."""
    tree = HostTree(Path(tempfile.mkdtemp(prefix="gpc-", dir="/tmp")))  # short: the socket's path must fit
    try:
        k8s = PodHost(tree)
        pod = k8s.add_pod("ml", "train")
        k8s.add_process(580, pod)
        socket = tree.root / "var/lib/kubelet/pod-resources/kubelet.sock"
        settings = Settings(textfile_dir=str(tmp_path), host_root=str(tree.root), state_dir=str(tmp_path / "state"),
                            pod_resources_socket=str(socket))
        device = Device(label="0", index=0, uuid=gpu_uuid(0), name=H100, memory_total=H100_MEMORY, memory_used=GIB)
        snapshot = NvmlSnapshot(driver_version="580.95.05", devices=(device,), failed_gpus=(),
                                processes=(GpuProcess(pid=580, device=device, used_memory=GIB, sm_utilization=None,
                                                      active=None),))
        session = types.SimpleNamespace(read=lambda *_: snapshot)
        listed = [pod]
        kinds = []
        with pod_resources_server(socket, listed):
            for _ in range(2):
                outcome = collection.collect(settings, State(), session=session)  # type: ignore[arg-type]
                (labels, _), = samples(outcome.text.decode())["gpu_process_memory_bytes"]
                kinds.append(labels["owner_kind"])
                listed.clear()
    finally:
        shutil.rmtree(tree.root, ignore_errors=True)
    assert kinds == ["pod", "unverified"]
