"""Pods a real containerd created through CRI, as kubelet creates them: the collector attributes their real
processes, in the cgroups runc made, from the files containerd wrote, and every label is compared with what
containerd itself answers (ContainerStatus, PodSandboxStatus), never with a table written here.

containerd runs with the cgroupfs driver on the host (tests/support/realcri.py); the stand-in NVML lists the host PIDs
of the containers' processes, and the collector reads the real /proc, cgroups and containerd state with host root /.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Optional

import pytest

from tests.conftest import REPO, Result, promtool_check, require_root, require_tool
from tests.support import podsim
from tests.support.realcri import TASKS, Cluster, Containerd, cgroup_parent, make_cluster
from tests.support.simhost import Gpu, gpu_uuid, proc, scenario, write_scenario

pytestmark = pytest.mark.slow  # real containerd and its CRI


@pytest.fixture(scope="module")
def containerd() -> Iterator[Containerd]:
    require_root("containerd and runc make cgroups and mounts")
    for tool in ("containerd", "containerd-shim-runc-v2", "runc", "ctr", "unshare", "nsenter"):
        require_tool(tool)
    with Containerd(driver="cgroupfs") as runtime:
        yield runtime


@pytest.fixture(scope="module")
def cluster(containerd: Containerd) -> Cluster:
    """A pod of each QoS class, one with two containers, a child forked in one (tests.support.realcri.make_cluster)."""
    return make_cluster(containerd)


def collect(runtime: Containerd, tmp: Path, gpus: Sequence[Gpu], *args: str, state: Optional[Path] = None,
            socket: Optional[Path] = None) -> Result:
    """One run of the real CLI in containerd's mount namespace, host root /, the stand-in NVML listing gpus."""
    document = write_scenario(tmp / "scenario.json", scenario(gpus))
    env = {**os.environ, "LD_LIBRARY_PATH": str(REPO / "tests" / "fake_nvml"), "FAKE_NVML_SCENARIO": str(document)}
    cmd = [*runtime.nsenter_mount(), sys.executable, "-m", "collector", "--stdout", "--host-root", "/",
           "--state-dir", str(state or tmp / "state"),
           "--pod-resources-socket", str(socket or tmp / "no-kubelet.sock"), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=120, check=False)
    if "--check" not in args:
        assert done.returncode == 0, done.stderr
        promtool_check(done.stdout)
    return Result(done.returncode, done.stdout, done.stderr, done.stdout)


def process_labels(result: Result) -> dict[int, dict[str, str]]:
    """pid -> the owner labels of its gpu_process_memory_bytes series."""
    keys = ("pod", "namespace", "container", "owner_kind", "owner")
    out = {}
    for labels, _ in result.series("gpu_process_memory_bytes"):
        assert int(labels["pid"]) not in out, f"two series for pid {labels['pid']}"
        out[int(labels["pid"])] = {k: labels[k] for k in keys}
    return out


def test_every_process_is_attributed_as_containerd_answers(containerd: Containerd, cluster: Cluster,
                                                           tmp_path: Path) -> None:
    pids = cluster.pids()
    assert len(pids) == 5
    result = collect(containerd, tmp_path, [Gpu(0, compute=[proc(pid) for pid in pids])])
    seen = process_labels(result)
    assert set(seen) == set(pids)
    for pid, container_id in pids.items():
        assert seen[pid] == containerd.owner(container_id).labels, pid
    # nothing unattributed: every process is a pod's
    assert all(labels["owner_kind"] == "pod" for labels in seen.values())
    for labels, _ in result.series("gpu_process_info"):
        assert all(labels[key] for key in ("pod", "namespace", "container")), labels
    # three QoS classes and a pod of two containers, as containerd answers them
    assert {containerd.owner(c.id).container for c in cluster.pair.containers} == {"main", "sidecar"}


def test_forked_child_belongs_to_its_container(containerd: Containerd, cluster: Cluster, tmp_path: Path) -> None:
    main = cluster.trainer.container("main")
    parent = containerd.container_pid(main.id)
    assert cluster.child != parent
    result = collect(containerd, tmp_path, [Gpu(0, compute=[proc(cluster.child)])])
    assert process_labels(result) == {cluster.child: containerd.owner(main.id).labels}


def test_cgroups_are_where_containerd_recorded_them(containerd: Containerd, cluster: Cluster) -> None:
    """Each container's processes sit, in every hierarchy, in the cgroup its bundle's config.json records
    (linux.cgroupsPath): kubelet's pod cgroup for the QoS class, then the container id (the cgroupfs driver)."""
    for pod in cluster.pods:
        assert containerd.sandbox_status(pod.sandbox_id).status.linux.namespaces.options.network == 2  # NODE
        for container in pod.containers:
            spec = json.loads((containerd.state / TASKS / container.id / "config.json").read_text())
            recorded = spec["linux"]["cgroupsPath"]
            assert recorded == f"{cgroup_parent(pod.qos, pod.uid, 'cgroupfs')}/{container.id}"
            pid = containerd.container_pid(container.id)
            paths = {line.split(":", 2)[2] for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines()}
            assert paths == {recorded}
            annotations = spec["annotations"]
            expected = containerd.owner(container.id)
            assert (annotations["io.kubernetes.cri.sandbox-name"], annotations["io.kubernetes.cri.sandbox-namespace"],
                    annotations["io.kubernetes.cri.sandbox-uid"], annotations["io.kubernetes.cri.container-name"]) \
                == (expected.pod, expected.namespace, expected.pod_uid, expected.container)


def test_restarted_container_is_the_same_pod(containerd: Containerd, cluster: Cluster, tmp_path: Path) -> None:
    pod = containerd.run_pod("restarts", "ml", str(uuid.uuid4()), "burstable", ["worker"])
    try:
        first = pod.container("worker")
        before = collect(containerd, tmp_path, [Gpu(0, compute=[proc(containerd.container_pid(first.id))])])
        second = containerd.restart_container(pod, "worker")
        assert second.id != first.id
        assert containerd.container_status(second.id).status.metadata.attempt == 1
        pid = containerd.container_pid(second.id)
        after = collect(containerd, tmp_path, [Gpu(0, compute=[proc(pid)])])
        assert process_labels(after) == {pid: containerd.owner(second.id).labels}
        assert list(process_labels(before).values()) == list(process_labels(after).values())
    finally:
        containerd.remove_pod(pod)


def test_removed_pods_series_are_gone_on_the_next_run(containerd: Containerd, cluster: Cluster, tmp_path: Path) -> None:
    """After StopPodSandbox and RemovePodSandbox, the next run (same state dir) has no series of the pod but the
    owner ledger's, which keep their last value for an hour (docs/accounting.md)."""
    pod = containerd.run_pod("finished", "batch", str(uuid.uuid4()), "besteffort", ["job"])
    job = containerd.container_pid(pod.container("job").id)
    stays = containerd.container_pid(cluster.trainer.container("main").id)
    state = tmp_path / "kept-state"
    first = collect(containerd, tmp_path, [Gpu(0, compute=[proc(job), proc(stays)])], state=state)
    assert process_labels(first)[job]["pod"] == "finished"
    containerd.remove_pod(pod)
    assert not Path(f"/proc/{job}").exists()
    second = collect(containerd, tmp_path, [Gpu(0, compute=[proc(stays)])], state=state)
    assert set(process_labels(second)) == {stays}

    def of_pod(result: Result) -> dict[str, list[tuple[dict[str, str], float]]]:
        return {name: found for name, series in result.metrics.items()
                if (found := [(labels, value) for labels, value in series if labels.get("pod") == "finished"])}

    ledger = {name for name in of_pod(first) if name.startswith("gpu_owner_")}
    assert ledger  # the first run counted the pod's use
    assert of_pod(second) == {name: series for name, series in of_pod(first).items() if name in ledger}


def test_pod_resources_name_the_real_pods(containerd: Containerd, cluster: Cluster, tmp_path: Path) -> None:
    """kubelet's stand-in (a real gRPC pod-resources server) allocates GPU 0 to trainer/main and GPU 1 to
    server/server, by the names containerd answers; both processes run on GPU 0."""
    trainer, server = cluster.trainer.container("main"), cluster.server.container("server")
    allocations = {trainer.id: gpu_uuid(0), server.id: gpu_uuid(1)}
    listed = []
    for container_id, device in allocations.items():
        owner = containerd.owner(container_id)
        listed.append(podsim.Pod(owner.namespace, owner.pod, owner.pod_uid, containers=[podsim.Container(
            owner.container, container_id, devices=[("nvidia.com/gpu", [device])])]))
    on_own, off_own = containerd.container_pid(trainer.id), containerd.container_pid(server.id)
    short = Path(tempfile.mkdtemp(prefix="gpc-kl-", dir="/tmp"))  # a unix socket's path: 108 bytes at most
    try:
        with podsim.pod_resources_server(short / "kubelet.sock", listed) as calls:
            result = collect(containerd, tmp_path, [Gpu(0, compute=[proc(on_own), proc(off_own)]), Gpu(1)],
                             socket=short / "kubelet.sock")
    finally:
        shutil.rmtree(short, ignore_errors=True)
    assert calls
    t, s = containerd.owner(trainer.id), containerd.owner(server.id)
    assert result.value("gpu_process_unallocated", pid=str(on_own)) == 0
    assert result.value("gpu_process_unallocated", pid=str(off_own)) == 1
    assert result.value("gpu_allocation_in_use", gpu="0", pod=t.pod, namespace=t.namespace, container=t.container) == 1
    assert result.value("gpu_allocation_in_use", gpu="1", pod=s.pod, namespace=s.namespace, container=s.container) == 0


def test_check_finds_containerds_directory(containerd: Containerd, cluster: Cluster, tmp_path: Path) -> None:
    result = collect(containerd, tmp_path, [Gpu(0)], "--check")
    tasks = len(list((containerd.state / TASKS).iterdir()))
    line = f"containerd directory /run/containerd/{TASKS} readable ({tasks} entries)"
    assert any(line in out for out in result.stdout.splitlines()), result.stdout
