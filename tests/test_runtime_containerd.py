"""Pods a real containerd created through CRI, as kubelet creates them: the collector attributes their real
processes, in the cgroups runc made, from the files containerd wrote, and every label is compared with what
containerd itself answers (ContainerStatus, PodSandboxStatus), never with a table written here.

containerd runs with the cgroupfs driver on the host (tests/realcri.py); the stand-in NVML lists the host PIDs of
the containers' processes, and the collector reads the real /proc, cgroups and containerd state with host root /.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

from tests import podsim
from tests.conftest import REPO, Result, promtool_check, require_root, require_tool
from tests.realcri import TASKS, Containerd, Pod, cgroup_parent
from tests.simhost import Gpu, gpu_uuid, proc, scenario, write_scenario

CHILD_SECONDS = "7771"  # the forked child's sleep, to find it among the host's processes


@dataclass
class Expected:
    """A process's owner as containerd answers it."""

    pod: str
    namespace: str
    container: str
    pod_uid: str
    container_id: str

    @property
    def labels(self) -> dict[str, str]:
        return {"pod": self.pod, "namespace": self.namespace, "container": self.container, "owner_kind": "pod",
                "owner": f"{self.namespace}/{self.pod}"}


def answered(runtime: Containerd, container_id: str) -> Expected:
    """Who owns container_id, in containerd's own words: the container's name from ContainerStatus, its sandbox's
    name, namespace and UID from PodSandboxStatus (the sandbox id from the verbose ContainerStatus)."""
    status = runtime.container_status(container_id)
    sandbox_id = json.loads(status.info["info"])["sandboxID"]
    sandbox = runtime.sandbox_status(sandbox_id).status
    # kubelet's labels, which containerd keeps, say the same
    assert status.status.labels["io.kubernetes.pod.uid"] == sandbox.metadata.uid
    assert status.status.labels["io.kubernetes.container.name"] == status.status.metadata.name
    return Expected(sandbox.metadata.name, sandbox.metadata.namespace, status.status.metadata.name,
                    sandbox.metadata.uid, container_id)


def child_pid(parent: int) -> int:
    """The host PID of the `sleep CHILD_SECONDS` forked inside the container whose main process is parent."""
    cgroup = Path(f"/proc/{parent}/cgroup").read_text()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == parent:
            continue
        try:
            if (entry / "cmdline").read_bytes().split(b"\0")[:2] == [b"sleep", CHILD_SECONDS.encode()] and \
                    (entry / "cgroup").read_text() == cgroup:
                return int(entry.name)
        except OSError:
            continue
    raise AssertionError(f"no forked child in the cgroup of {parent}")


def fork_child(runtime: Containerd, container_id: str) -> int:
    """Runs `sh -c 'sleep ... &'` in the container (CRI ExecSync): the shell exits, its child lives on."""
    response = runtime.exec_sync(container_id, ["/bin/sh", "-c", f"sleep {CHILD_SECONDS} </dev/null >/dev/null 2>&1 &"])
    assert response.exit_code == 0, response.stderr
    pid = runtime.container_pid(container_id)
    deadline = time.monotonic() + 10
    while True:
        try:
            return child_pid(pid)
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@dataclass
class Cluster:
    runtime: Containerd
    trainer: Pod  # burstable, one container, a child process forked in it
    server: Pod  # best-effort
    pair: Pod  # guaranteed, two containers
    child: int

    @property
    def pods(self) -> list[Pod]:
        return [self.trainer, self.server, self.pair]

    def pids(self) -> dict[int, str]:
        """Every container's main process (host PID -> container id), and the forked child."""
        out = {self.runtime.container_pid(c.id): c.id for pod in self.pods for c in pod.containers}
        out[self.child] = self.trainer.container("main").id
        return out


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    require_root("containerd and runc make cgroups and mounts")
    for tool in ("containerd", "containerd-shim-runc-v2", "runc", "ctr", "unshare", "nsenter"):
        require_tool(tool)
    with Containerd(driver="cgroupfs") as runtime:
        trainer = runtime.run_pod("trainer", "ml", str(uuid.uuid4()), "burstable", ["main"])
        server = runtime.run_pod("server", "serving", str(uuid.uuid4()), "besteffort", ["server"])
        pair = runtime.run_pod("pair", "ml", str(uuid.uuid4()), "guaranteed", ["main", "sidecar"])
        child = fork_child(runtime, trainer.container("main").id)
        yield Cluster(runtime, trainer, server, pair, child)


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


def test_every_process_is_attributed_as_containerd_answers(cluster: Cluster, tmp_path: Path) -> None:
    pids = cluster.pids()
    assert len(pids) == 5
    result = collect(cluster.runtime, tmp_path, [Gpu(0, compute=[proc(pid) for pid in pids])])
    seen = process_labels(result)
    assert set(seen) == set(pids)
    for pid, container_id in pids.items():
        assert seen[pid] == answered(cluster.runtime, container_id).labels, pid
    # nothing unattributed: every process is a pod's
    assert all(labels["owner_kind"] == "pod" for labels in seen.values())
    for labels, _ in result.series("gpu_process_info"):
        assert all(labels[key] for key in ("pod", "namespace", "container")), labels
    # three QoS classes and a pod of two containers, as containerd answers them
    assert {answered(cluster.runtime, c.id).container for c in cluster.pair.containers} == {"main", "sidecar"}


def test_forked_child_belongs_to_its_container(cluster: Cluster, tmp_path: Path) -> None:
    main = cluster.trainer.container("main")
    parent = cluster.runtime.container_pid(main.id)
    assert cluster.child != parent
    result = collect(cluster.runtime, tmp_path, [Gpu(0, compute=[proc(cluster.child)])])
    assert process_labels(result) == {cluster.child: answered(cluster.runtime, main.id).labels}


def test_cgroups_are_where_containerd_recorded_them(cluster: Cluster) -> None:
    """Each container's processes sit, in every hierarchy, in the cgroup its bundle's config.json records
    (linux.cgroupsPath): kubelet's pod cgroup for the QoS class, then the container id (the cgroupfs driver)."""
    for pod in cluster.pods:
        assert cluster.runtime.sandbox_status(pod.sandbox_id).status.linux.namespaces.options.network == 2  # NODE
        for container in pod.containers:
            spec = json.loads((cluster.runtime.state / TASKS / container.id / "config.json").read_text())
            recorded = spec["linux"]["cgroupsPath"]
            assert recorded == f"{cgroup_parent(pod.qos, pod.uid, 'cgroupfs')}/{container.id}"
            pid = cluster.runtime.container_pid(container.id)
            paths = {line.split(":", 2)[2] for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines()}
            assert paths == {recorded}
            annotations = spec["annotations"]
            expected = answered(cluster.runtime, container.id)
            assert (annotations["io.kubernetes.cri.sandbox-name"], annotations["io.kubernetes.cri.sandbox-namespace"],
                    annotations["io.kubernetes.cri.sandbox-uid"], annotations["io.kubernetes.cri.container-name"]) \
                == (expected.pod, expected.namespace, expected.pod_uid, expected.container)


def test_restarted_container_is_the_same_pod(cluster: Cluster, tmp_path: Path) -> None:
    runtime = cluster.runtime
    pod = runtime.run_pod("restarts", "ml", str(uuid.uuid4()), "burstable", ["worker"])
    try:
        first = pod.container("worker")
        before = collect(runtime, tmp_path, [Gpu(0, compute=[proc(runtime.container_pid(first.id))])])
        second = runtime.restart_container(pod, "worker")
        assert second.id != first.id
        assert runtime.container_status(second.id).status.metadata.attempt == 1
        pid = runtime.container_pid(second.id)
        after = collect(runtime, tmp_path, [Gpu(0, compute=[proc(pid)])])
        assert process_labels(after) == {pid: answered(runtime, second.id).labels}
        assert list(process_labels(before).values()) == list(process_labels(after).values())
    finally:
        runtime.remove_pod(pod)


def test_removed_pods_series_are_gone_on_the_next_run(cluster: Cluster, tmp_path: Path) -> None:
    """After StopPodSandbox and RemovePodSandbox, the next run (same state dir) has no series of the pod but the
    owner ledger's, which keep their last value for an hour (docs/accounting.md)."""
    runtime = cluster.runtime
    pod = runtime.run_pod("finished", "batch", str(uuid.uuid4()), "besteffort", ["job"])
    job = runtime.container_pid(pod.container("job").id)
    stays = runtime.container_pid(cluster.trainer.container("main").id)
    state = tmp_path / "kept-state"
    first = collect(runtime, tmp_path, [Gpu(0, compute=[proc(job), proc(stays)])], state=state)
    assert process_labels(first)[job]["pod"] == "finished"
    runtime.remove_pod(pod)
    assert not Path(f"/proc/{job}").exists()
    second = collect(runtime, tmp_path, [Gpu(0, compute=[proc(stays)])], state=state)
    assert set(process_labels(second)) == {stays}

    def of_pod(result: Result) -> dict[str, list[tuple[dict[str, str], float]]]:
        return {name: found for name, series in result.metrics.items()
                if (found := [(labels, value) for labels, value in series if labels.get("pod") == "finished"])}

    ledger = {name for name in of_pod(first) if name.startswith("gpu_owner_")}
    assert ledger  # the first run counted the pod's use
    assert of_pod(second) == {name: series for name, series in of_pod(first).items() if name in ledger}


def test_pod_resources_name_the_real_pods(cluster: Cluster, tmp_path: Path) -> None:
    """kubelet's stand-in (a real gRPC pod-resources server) allocates GPU 0 to trainer/main and GPU 1 to
    server/server, by the names containerd answers; both processes run on GPU 0."""
    runtime = cluster.runtime
    trainer, server = cluster.trainer.container("main"), cluster.server.container("server")
    allocations = {trainer.id: gpu_uuid(0), server.id: gpu_uuid(1)}
    listed = []
    for container_id, device in allocations.items():
        owner = answered(runtime, container_id)
        listed.append(podsim.Pod(owner.namespace, owner.pod, owner.pod_uid, containers=[podsim.Container(
            owner.container, container_id, devices=[("nvidia.com/gpu", [device])])]))
    on_own, off_own = runtime.container_pid(trainer.id), runtime.container_pid(server.id)
    short = Path(tempfile.mkdtemp(prefix="gpc-kl-", dir="/tmp"))  # a unix socket's path: 108 bytes at most
    try:
        with podsim.pod_resources_server(short / "kubelet.sock", listed) as calls:
            result = collect(runtime, tmp_path, [Gpu(0, compute=[proc(on_own), proc(off_own)]), Gpu(1)],
                             socket=short / "kubelet.sock")
    finally:
        shutil.rmtree(short, ignore_errors=True)
    assert calls
    t, s = answered(runtime, trainer.id), answered(runtime, server.id)
    assert result.value("gpu_process_unallocated", pid=str(on_own)) == 0
    assert result.value("gpu_process_unallocated", pid=str(off_own)) == 1
    assert result.value("gpu_allocation_in_use", gpu="0", pod=t.pod, namespace=t.namespace, container=t.container) == 1
    assert result.value("gpu_allocation_in_use", gpu="1", pod=s.pod, namespace=s.namespace, container=s.container) == 0


def test_check_finds_containerds_directory(cluster: Cluster, tmp_path: Path) -> None:
    result = collect(cluster.runtime, tmp_path, [Gpu(0)], "--check")
    tasks = len(list((cluster.runtime.state / TASKS).iterdir()))
    line = f"containerd directory /run/containerd/{TASKS} readable ({tasks} entries)"
    assert any(line in out for out in result.stdout.splitlines()), result.stdout
