"""Joins a GPU process to its owner, from local sources only, and cross-checks it against kubelet's allocation.

cgroup path -> (pod UID, container id) -> runtime metadata -> (namespace, pod, container) -> pod-resources
allocation (device-plugin ids, and DRA claims through their CDI specs: attribution.allocation). A pod's process on a
GPU or MIG instance kubelet did not allocate to its container is flagged (`NVIDIA_VISIBLE_DEVICES=all` and similar
escapes), and so is any non-pod process on a device kubelet handed to a container; where a container's allocation
could not all be placed on this host, its processes off the known part are not flagged either way.

A pod is believed only where every source agrees: the cgroup names it where kubelet puts pods (attribution.cgroups),
the runtime recorded that cgroup for the container and the pod's UID in its file, and kubelet, where it answers,
lists the pod. Otherwise the owner is `unverified` (the cgroup's pod UID), never the pod the files name, and the
disagreement is counted (docs/runtimes-and-cgroups.md, "Trust").
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple, Optional

from collector.attribution import allocation
from collector.attribution.allocation import AllocationIndex, ClaimResolver, History, HistoryKey, target
from collector.attribution.cgroups import CgroupOwner, agrees, parse_cgroup, parse_roots
from collector.attribution.podresources import DeviceRef, PodResourcesUnavailable, allocations, list_pod_resources
from collector.attribution.runtimes import ContainerMeta, RuntimeMetadata
from collector.model import (
    EMPTY,
    AllocationView,
    AttributionFacts,
    Device,
    HostProcess,
    Owner,
    OwnerKind,
    ProcessRecord,
)

log = logging.getLogger(__name__)


_NOT_FOUND = "not_found"  # no runtime's file names the pod's container (Attributor._resolve)


def resolve(ref: DeviceRef, devices: Sequence[Device]) -> set[str]:
    """The labels of this host's units a device id stands for (a whole GPU allocated on a MIG GPU: all of it)."""
    found = target(ref, devices)
    return set(found.units) if found else set()


def unallocated(index: AllocationIndex, owner: Owner, unit: str) -> Optional[bool]:
    """Whether a pod's process on unit runs outside its container's allocation: None when that allocation could
    not all be placed on this host and the unit is not in the part that could."""
    allowed, complete = index.allowed(owner)
    if unit in allowed:
        return False
    return True if complete else None


class AttributionSettings(NamedTuple):
    host_root: str  # runtime metadata and kubelet's files are read under it
    pod_resources_socket: str  # "" when there is none to call
    pod_resources_timeout: float  # seconds
    resource_names: tuple[str, ...] = ()  # extended-resource names that carry GPUs, beyond NVIDIA's own
    cgroup_roots: tuple[str, ...] = ()  # nested kubelets' node cgroups (Settings.cgroup_roots)


class Attributor:
    def __init__(self, settings: AttributionSettings, devices: Sequence[Device],
                 known_containers: Mapping[str, ContainerMeta] = EMPTY) -> None:
        """known_containers: the pods the previous run found for container ids (kept in the state)."""
        self.settings = settings
        self.devices = devices
        self.metadata = RuntimeMetadata(settings.host_root, known_containers)
        self._index: Optional[AllocationIndex] = None
        self._listed: set[tuple[str, str]] = set()  # (namespace, pod) of every pod kubelet's List named
        self._api_called = False
        self._roots = parse_roots(settings.cgroup_roots)
        self.conflicts: Counter[str] = Counter()
        self._resolved: dict[str, tuple[CgroupOwner, Owner, str]] = {}  # cgroup text -> Attributor._resolve's answer

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
                self._listed = {(pod.namespace, pod.name) for pod in response.pod_resources}
                self._index = AllocationIndex(allocations(response, self.settings.resource_names), self.devices,
                                              ClaimResolver(self.settings.host_root, self.devices),
                                              self.settings.resource_names)
            except PodResourcesUnavailable as err:
                log.info("kubelet pod-resources API unavailable, allocation not cross-checked: %s", err)
        return self._index

    def attribute(self, host: HostProcess, device: Device) -> tuple[Owner, Optional[bool]]:
        """The owner of the process, and whether it runs on a device kubelet did not give it (None: unknown)."""
        index = self.index  # first: a pod unknown to kubelet is judged with its answer (_disagreement)
        resolved = self._resolved.get(host.cgroup)
        if resolved is None:
            resolved = self._resolved[host.cgroup] = self._resolve(host.cgroup)
        cg, owner, why = resolved
        if cg.conflict:
            self.conflicts[cg.conflict] += 1
            log.info("pid %d: a pod or container name in %s below its owner's cgroup %s is not taken (%s)",
                     host.pid, cg.path, cg.scope, cg.conflict)
        if cg.kind != OwnerKind.POD:
            if index is None:
                return owner, None
            return owner, True if device.label in index.allocated else None
        if why == _NOT_FOUND:
            log.info("pid %d: pod %s container %s not found in any runtime's metadata", host.pid, cg.pod_uid,
                     cg.container_id[:12] or "-")
            return owner, None
        if why:
            self.conflicts[why] += 1
            meta = self.metadata.lookup(cg.container_id, cg.runtime, cg.pod_uid)
            assert meta is not None  # a disagreement is found only with the runtime's record at hand
            log.warning("pid %d: cgroup %s names pod %s, but the evidence disagrees (%s): reported as unverified, not "
                        "as %s/%s", host.pid, cg.path, cg.pod_uid, why, meta.namespace, meta.pod)
            return owner, None if index is None else (True if device.label in index.allocated else None)
        return owner, None if index is None else unallocated(index, owner, device.label)

    def _resolve(self, cgroup: str) -> tuple[CgroupOwner, Owner, str]:
        """What a cgroup file's text says of its processes' owner, once per text and run (a pod's processes share
        one cgroup): the cgroup's owner, the owner to report, and why a pod is not reported as the one the files
        name (_NOT_FOUND, a conflict reason, or "" when it is). Every source is read within this run, so nothing
        outlives a runtime's files or kubelet's answer changing."""
        cg = parse_cgroup(cgroup, self._roots)
        if cg.kind != OwnerKind.POD:
            name = self._container_name(cg.kind, cg.container_id, cg.user_uid) or cg.name
            return cg, Owner(kind=cg.kind, name=name, container_id=cg.container_id), ""
        meta = self.metadata.lookup(cg.container_id, cg.runtime, cg.pod_uid)
        if meta is None:
            return cg, Owner(kind=OwnerKind.POD, name=cg.pod_uid, pod_uid=cg.pod_uid,
                             container_id=cg.container_id), _NOT_FOUND
        disagreement = self._disagreement(cg, meta)
        if disagreement:
            return cg, Owner(kind=OwnerKind.UNVERIFIED, name=cg.pod_uid, pod_uid=cg.pod_uid,
                             container_id=cg.container_id), disagreement
        return cg, Owner(
            kind=OwnerKind.POD,
            name=f"{meta.namespace}/{meta.pod}",
            pod=meta.pod,
            namespace=meta.namespace,
            container="" if cg.name == "crio-conmon" else meta.container,  # conmon supervises, it is not the workload
            pod_uid=cg.pod_uid or meta.pod_uid,
            container_id=cg.container_id,
        ), ""

    def _disagreement(self, cg: CgroupOwner, meta: ContainerMeta) -> str:
        """Why the pod meta names is not the cgroup's (an ATTRIBUTION_CONFLICT_REASONS value); "" when it is.
        kubelet's log directories are named by the cgroup's pod UID: nothing to cross-check but kubelet's list."""
        if meta.source != "pod-logs":
            if meta.pod_uid and meta.pod_uid != cg.pod_uid:
                return "pod_uid_mismatch"
            if not agrees(meta.cgroup, cg):
                return "cgroup_mismatch"
        if self._index is not None and (meta.namespace, meta.pod) not in self._listed:
            return "unknown_to_kubelet"
        return ""

    def allocation_view(self, records: Sequence[ProcessRecord], unplaced: Iterable[str],
                        previous: Mapping[HistoryKey, History], now: float
                        ) -> tuple[Optional[AllocationView], dict[HistoryKey, History]]:
        """Each allocated device's use this run and the history to keep. kubelet is asked even when no process
        needed it, where its socket exists: an allocated GPU with no process at all is the case to see. Without
        an answer, the history is kept as it was."""
        socket = self.settings.pod_resources_socket
        if not self._api_called and not (socket and os.path.exists(socket)):
            return None, dict(previous)
        index = self.index
        if index is None:
            return None, dict(previous)
        uids = allocation.pod_uids(self.settings.host_root, records)
        return allocation.view(index, records, unplaced, previous=previous, now=now, uids=uids)

    def _container_name(self, kind: str, container_id: str, user_uid: str) -> str:
        if kind == OwnerKind.DOCKER:
            return self.metadata.docker_name(container_id, user_uid)
        if kind == OwnerKind.PODMAN:
            return self.metadata.podman_name(container_id, user_uid)
        return container_id[:12]

    def containers(self) -> dict[str, ContainerMeta]:
        """The pods this run found for container ids in their runtimes' files, for the next run."""
        return self.metadata.remembered

    def facts(self) -> AttributionFacts:
        return AttributionFacts(
            pod_resources_up=(self._index is not None) if self._api_called else None,
            metadata_misses=dict(self.metadata.misses),
            conflicts=dict(self.conflicts),
        )
