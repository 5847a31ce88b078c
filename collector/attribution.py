"""Joins a GPU process to its owner, from local sources only, and cross-checks it against kubelet's allocation.

cgroup path -> (pod UID, container id) -> runtime metadata -> (namespace, pod, container) -> pod-resources
allocation. A pod's process on a GPU or MIG instance kubelet did not allocate to its container is flagged
(`NVIDIA_VISIBLE_DEVICES=all` and similar escapes), and so is any non-pod process on a device kubelet handed to a
container.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import NamedTuple, Optional

from collector.cgroups import parse_cgroup
from collector.model import AttributionFacts, Device, HostProcess, Owner, OwnerKind
from collector.podresources import (
    ContainerAllocation,
    DeviceRef,
    PodResourcesUnavailable,
    allocations,
    list_pod_resources,
)
from collector.runtimes import RuntimeMetadata

log = logging.getLogger(__name__)


def resolve(ref: DeviceRef, devices: Sequence[Device]) -> set[str]:
    """The labels of this host's units a device id stands for (a whole GPU allocated on a MIG GPU: all of it)."""
    if ref.uuid:
        if ref.gpu_instance is not None:  # old-style MIG-GPU-<uuid>/<gi>/<ci>
            return {d.label for d in devices if d.mig and d.gpu_uuid == ref.uuid
                    and d.mig.gpu_instance_id == ref.gpu_instance
                    and ref.compute_instance in (None, d.mig.compute_instance_id)}
        exact = {d.label for d in devices if d.uuid == ref.uuid}
        return exact or {d.label for d in devices if d.gpu_uuid == ref.uuid}
    if ref.index is not None:
        return {d.label for d in devices if d.index == ref.index
                and (ref.gpu_instance is None or (d.mig is not None and d.mig.gpu_instance_id == ref.gpu_instance))}
    return set()


class AllocationIndex:
    def __init__(self, containers: Iterable[ContainerAllocation], devices: Sequence[Device]) -> None:
        self.by_container: dict[tuple[str, str, str], set[str]] = {}
        self.by_pod: dict[tuple[str, str], set[str]] = {}
        self.allocated: set[str] = set()
        for c in containers:
            labels: set[str] = set()
            for ref in c.devices:
                found = resolve(ref, devices)
                if not found:
                    log.debug("pod %s/%s: device %s is not on this host's monitored GPUs", c.namespace, c.pod, ref.raw)
                labels |= found
            self.by_container.setdefault((c.namespace, c.pod, c.container), set()).update(labels)
            self.by_pod.setdefault((c.namespace, c.pod), set()).update(labels)
            self.allocated |= labels

    def allowed(self, owner: Owner) -> set[str]:
        if owner.container:
            return self.by_container.get((owner.namespace, owner.pod, owner.container), set())
        return self.by_pod.get((owner.namespace, owner.pod), set())


class AttributionSettings(NamedTuple):
    host_root: str  # runtime metadata and kubelet's files are read under it
    pod_resources_socket: str  # "" when there is none to call
    pod_resources_timeout: float  # seconds
    resource_names: tuple[str, ...] = ()  # extended-resource names that carry GPUs, beyond NVIDIA's own


class Attributor:
    def __init__(self, settings: AttributionSettings, devices: Sequence[Device]) -> None:
        self.settings = settings
        self.devices = devices
        self.metadata = RuntimeMetadata(settings.host_root)
        self._index: Optional[AllocationIndex] = None
        self._api_called = False

    @property
    def index(self) -> Optional[AllocationIndex]:
        """kubelet's allocation, from one List call made the first time it is needed; None if unavailable."""
        if not self._api_called:
            self._api_called = True
            socket = self.settings.pod_resources_socket
            try:
                if not socket:
                    raise PodResourcesUnavailable("no pod-resources socket configured")
                response = list_pod_resources(socket, self.settings.pod_resources_timeout)
                self._index = AllocationIndex(allocations(response, self.settings.resource_names), self.devices)
            except PodResourcesUnavailable as err:
                log.info("kubelet pod-resources API unavailable, allocation not cross-checked: %s", err)
        return self._index

    def attribute(self, host: HostProcess, device: Device) -> tuple[Owner, Optional[bool]]:
        """The owner of the process, and whether it runs on a device kubelet did not give it (None: unknown)."""
        cg = parse_cgroup(host.cgroup)
        index = self.index
        if cg.kind != OwnerKind.POD:
            name = self._container_name(cg.kind, cg.container_id, cg.user_uid) or cg.name
            owner = Owner(kind=cg.kind, name=name, container_id=cg.container_id)
            if index is None:
                return owner, None
            return owner, True if device.label in index.allocated else None
        meta = self.metadata.lookup(cg.container_id, cg.runtime, cg.pod_uid)
        if meta is None:
            log.info("pid %d: pod %s container %s not found in any runtime's metadata", host.pid, cg.pod_uid,
                     cg.container_id[:12] or "-")
            return Owner(kind=OwnerKind.POD, name=cg.pod_uid, pod_uid=cg.pod_uid, container_id=cg.container_id), None
        owner = Owner(
            kind=OwnerKind.POD,
            name=f"{meta.namespace}/{meta.pod}",
            pod=meta.pod,
            namespace=meta.namespace,
            container="" if cg.name == "crio-conmon" else meta.container,  # conmon supervises, it is not the workload
            pod_uid=cg.pod_uid or meta.pod_uid,
            container_id=cg.container_id,
        )
        return owner, None if index is None else device.label not in index.allowed(owner)

    def _container_name(self, kind: str, container_id: str, user_uid: str) -> str:
        if kind == OwnerKind.DOCKER:
            return self.metadata.docker_name(container_id)
        if kind == OwnerKind.PODMAN:
            return self.metadata.podman_name(container_id, user_uid)
        return container_id[:12]

    def facts(self) -> AttributionFacts:
        return AttributionFacts(
            pod_resources_up=(self._index is not None) if self._api_called else None,
            metadata_misses=dict(self.metadata.misses),
        )
