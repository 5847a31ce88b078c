"""Kubernetes on a simulated host: pod cgroups, container runtime metadata on disk, kubelet's pod log directories,
and a real gRPC pod-resources server on a unix socket.

Every layout names what it imitates; paths and annotation keys are those docs/runtimes-and-cgroups.md describes.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid as uuidlib
from collections.abc import Iterator, Sequence
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import grpc

from collector.attribution import podresources_v1_pb2 as api
from tests.support.simhost import HostTree


def container_id(seed: str) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()


def pod_uid(seed: str) -> str:
    return str(uuidlib.UUID(hashlib.md5(seed.encode()).hexdigest()))  # noqa: S324 - a fixture id, not security


def static_pod_uid(seed: str) -> str:
    """Static pods: kubelet's MD5 hex of the manifest, 32 characters, no dashes (kubelet's
    pkg/kubelet/config/common.go)."""
    return hashlib.md5(seed.encode()).hexdigest()  # noqa: S324


@dataclass
class Claim:
    """A DRA claim's device as kubelet lists it in ContainerResources.dynamic_resources (api.proto ClaimResource)."""

    name: str
    cdi_devices: list[str]
    driver: str = "gpu.nvidia.com"
    pool: str = "node-1"
    device: str = "gpu-0"
    namespace: str = ""  # "" -> the pod's


@dataclass
class Container:
    name: str
    id: str
    devices: list[tuple[str, list[str]]] = field(default_factory=list)  # (resource name, device ids)
    claims: list[Claim] = field(default_factory=list)


@dataclass
class Pod:
    namespace: str
    name: str
    uid: str
    qos: str = "burstable"  # burstable, besteffort, guaranteed
    containers: list[Container] = field(default_factory=list)


def cgroup_text(pod: Pod, container: Container, *, runtime: str, driver: str, version: int, crun: bool = False,
                conmon: bool = False) -> str:
    """/proc/<pid>/cgroup of a container process, as kubelet + runtime lay it out."""
    if driver == "systemd":
        uid = pod.uid.replace("-", "_")
        qos = "" if pod.qos == "guaranteed" else f"-{pod.qos}"
        parent = "/kubepods.slice" + ("" if not qos else f"/kubepods{qos}.slice") + f"/kubepods{qos}-pod{uid}.slice"
        prefix = {"containerd": "cri-containerd", "crio": "crio", "docker": "docker"}[runtime]
        if conmon:
            prefix = "crio-conmon"
        path = f"{parent}/{prefix}-{container.id}.scope" + ("/container" if crun else "")
    else:
        qos = "" if pod.qos == "guaranteed" else f"/{pod.qos}"
        leaf = {"containerd": container.id, "crio": f"crio-{container.id}", "docker": container.id}[runtime]
        if conmon:
            leaf = f"crio-conmon-{container.id}"
        path = f"/kubepods{qos}/pod{pod.uid}/{leaf}"
    if version == 2:
        return f"0::{path}\n"
    controllers = ["cpuset", "cpu,cpuacct", "memory", "devices", "pids", "blkio"]
    lines = [f"{12 - i}:{c}:{path}" for i, c in enumerate(controllers)]
    lines.append(f"1:name=systemd:{path}")
    lines.append("0::/")  # hybrid: the unified hierarchy holds nothing
    return "\n".join(lines) + "\n"


def pod_parent(pod: Pod, driver: str) -> str:
    """The cgroup parent kubelet hands the runtime for the pod (CRI LinuxPodSandboxConfig.cgroup_parent): the pod's
    slice name with the systemd driver, its path with cgroupfs."""
    if driver == "systemd":
        qos = "" if pod.qos == "guaranteed" else f"-{pod.qos}"
        return f"kubepods{qos}-pod{pod.uid.replace('-', '_')}.slice"
    return "/kubepods" + ("" if pod.qos == "guaranteed" else f"/{pod.qos}") + f"/pod{pod.uid}"


def cgroups_path(pod: Pod, container: Container, *, runtime: str, driver: str) -> str:
    """The OCI spec's linux.cgroupsPath the runtime writes for a pod's container: containerd's getCgroupsPath
    (`<parent slice>:cri-containerd:<id>`, else `<parent>/<id>`), CRI-O's ContainerCgroupPath (`<parent>:crio:<id>`,
    else `<parent>/crio-<id>`)."""
    parent = pod_parent(pod, driver)
    prefix = {"containerd": "cri-containerd", "crio": "crio"}[runtime]
    if driver == "systemd":
        return f"{parent}:{prefix}:{container.id}"
    return f"{parent}/{container.id}" if runtime == "containerd" else f"{parent}/crio-{container.id}"


class PodHost:
    """Adds pods to a HostTree: runtime metadata under the runtime's state dir, kubelet's log dirs, cgroup files."""

    def __init__(self, tree: HostTree, *, runtime: str = "containerd", driver: str = "systemd", version: int = 2,
                 state_dir: str = "run/containerd") -> None:
        self.tree = tree
        self.runtime = runtime
        self.driver = driver
        self.version = version
        self.state_dir = state_dir
        self.pods: list[Pod] = []
        self._bench_pods: dict[int, tuple[Pod, Container]] = {}

    def add_pod(self, namespace: str, name: str, *, containers: Sequence[str] = ("main",), qos: str = "burstable",
                uid: Optional[str] = None, write_metadata: bool = True) -> Pod:
        pod = Pod(namespace, name, uid or pod_uid(f"{namespace}/{name}"), qos,
                  [Container(c, container_id(f"{namespace}/{name}/{c}")) for c in containers])
        self.pods.append(pod)
        for c in pod.containers:
            self.tree.write(f"var/log/pods/{namespace}_{name}_{pod.uid}/{c.name}/0.log", "")
            if write_metadata:
                self.write_metadata(pod, c)
        return pod

    def write_metadata(self, pod: Pod, c: Container) -> Path:
        if self.runtime == "containerd":
            # containerd >= 1.7 task bundle: OCI spec with the CRI annotations (sandbox-uid since 1.7.0)
            annotations = {
                "io.kubernetes.cri.container-type": "container",
                "io.kubernetes.cri.container-name": c.name,
                "io.kubernetes.cri.image-name": "nvcr.io/nvidia/pytorch:24.05-py3",
                "io.kubernetes.cri.sandbox-id": container_id(f"sandbox/{pod.uid}"),
                "io.kubernetes.cri.sandbox-name": pod.name,
                "io.kubernetes.cri.sandbox-namespace": pod.namespace,
                "io.kubernetes.cri.sandbox-uid": pod.uid,
            }
            spec = {"ociVersion": "1.1.0", "process": {"args": ["python3"]}, "annotations": annotations,
                    "linux": {"cgroupsPath": cgroups_path(pod, c, runtime="containerd", driver=self.driver)}}
            path = f"{self.state_dir}/io.containerd.runtime.v2.task/k8s.io/{c.id}/config.json"
            self.tree.write(f"{self.state_dir}/io.containerd.runtime.v2.task/k8s.io/{c.id}/init.pid", "1")
            return self.tree.write(path, json.dumps(spec))
        if self.runtime == "crio":
            # CRI-O 1.29: kubelet labels copied as annotations, in the run root's userdata/config.json
            annotations = {
                "io.kubernetes.pod.name": pod.name, "io.kubernetes.pod.namespace": pod.namespace,
                "io.kubernetes.pod.uid": pod.uid, "io.kubernetes.container.name": c.name,
                "io.kubernetes.cri-o.ContainerType": "container", "io.kubernetes.cri-o.ContainerID": c.id,
            }
            path = f"run/containers/storage/overlay-containers/{c.id}/userdata/config.json"
            spec = {"ociVersion": "1.0.2-dev", "annotations": annotations,
                    "linux": {"cgroupsPath": cgroups_path(pod, c, runtime="crio", driver=self.driver)}}
            return self.tree.write(path, json.dumps(spec))
        # cri-dockerd 0.3 on docker 24: kubelet labels on the container, in config.v2.json
        labels = {"io.kubernetes.pod.name": pod.name, "io.kubernetes.pod.namespace": pod.namespace,
                  "io.kubernetes.pod.uid": pod.uid, "io.kubernetes.container.name": c.name,
                  "io.kubernetes.docker.type": "container"}
        doc = {"ID": c.id, "Name": f"/k8s_{c.name}_{pod.name}_{pod.namespace}_{pod.uid}_0",
               "Config": {"Labels": labels}}
        # cri-dockerd passes kubelet's parent as HostConfig.CgroupParent, which docker keeps in hostconfig.json
        host_config = {"CgroupParent": pod_parent(pod, self.driver), "NetworkMode": "none", "Privileged": False}
        self.tree.write(f"var/lib/docker/containers/{c.id}/hostconfig.json", json.dumps(host_config))
        return self.tree.write(f"var/lib/docker/containers/{c.id}/config.v2.json", json.dumps(doc))

    def add_process(self, pid: int, pod: Pod, container: Optional[Container] = None, comm: str = "python3",
                    **cgroup: Any) -> None:
        c = container or pod.containers[0]
        self.tree.add_process(pid, comm, [comm, "train.py"],
                              cgroup=cgroup_text(pod, c, runtime=self.runtime, driver=self.driver, version=self.version,
                                                 **cgroup),
                              start_ticks=1000 + pid)

    def add_pod_process(self, pid: int, pod_index: int, comm: str = "python3") -> None:
        """For the benchmark: the pod_index-th pod (created on first use), one container."""
        if pod_index not in self._bench_pods:
            pod = self.add_pod("bench", f"job-{pod_index}")
            self._bench_pods[pod_index] = (pod, pod.containers[0])
        pod, c = self._bench_pods[pod_index]
        self.add_process(pid, pod, c, comm)

    def finish(self) -> None:
        """Nothing to flush; kept so callers can build hosts the same way whatever they add."""


def list_response(pods: Sequence[Pod]) -> api.ListPodResourcesResponse:
    response = api.ListPodResourcesResponse()
    for pod in pods:
        p = response.pod_resources.add(name=pod.name, namespace=pod.namespace)
        for c in pod.containers:
            pc = p.containers.add(name=c.name)
            pc.cpu_ids.extend([0, 1])
            for resource, ids in c.devices:
                pc.devices.add(resource_name=resource, device_ids=ids)
            for claim in c.claims:
                dynamic = pc.dynamic_resources.add(claim_name=claim.name,
                                                   claim_namespace=claim.namespace or pod.namespace)
                resource = dynamic.claim_resources.add(driver_name=claim.driver, pool_name=claim.pool,
                                                       device_name=claim.device)
                for name in claim.cdi_devices:
                    resource.cdi_devices.add(name=name)
    return response


@contextmanager
def pod_resources_server(socket_path: Path, pods: Sequence[Pod] = (), behaviour: str = "ok",
                         hang_seconds: float = 30.0) -> Iterator[list[float]]:
    """A real gRPC server on a unix socket serving v1 List from pods.

    behaviour: ok; hang (answers after hang_seconds); unimplemented (no List method); garbage (bytes that are no
    ListPodResourcesResponse); huge (a response over 16 MiB). Yields the list of call times, one per List call.
    """
    calls: list[float] = []
    release = threading.Event()

    def list_(request: api.ListPodResourcesRequest, context: grpc.ServicerContext) -> Any:
        calls.append(time.monotonic())
        if behaviour == "hang":
            release.wait(hang_seconds)
        if behaviour == "garbage":
            return b"\xff\xff\xff\xff garbage"
        if behaviour == "huge":
            big = api.ListPodResourcesResponse()
            for n in range(20_000):
                big.pod_resources.add(name=f"pod-{n}-" + "x" * 900, namespace="ns")
            return big
        return list_response(pods)

    serializer = (lambda raw: raw) if behaviour == "garbage" else api.ListPodResourcesResponse.SerializeToString
    handlers = {}
    if behaviour != "unimplemented":
        handlers["List"] = grpc.unary_unary_rpc_method_handler(
            list_, request_deserializer=api.ListPodResourcesRequest.FromString, response_serializer=serializer)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("v1.PodResourcesLister", handlers)])
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    server.add_insecure_port(f"unix://{socket_path}")
    server.start()
    try:
        yield calls
    finally:
        release.set()
        server.stop(grace=None)
