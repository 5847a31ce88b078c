"""kubelet's allocation on this host's GPUs: which GPU or MIG instance each allocated device id or DRA claim device
stands for, which containers' allocations are not fully known, and (per run) whether each allocated device was
used by its container, with how long it has gone unused.

Device-plugin ids are read in every shape NVIDIA's device plugin and GKE's write (attribution.podresources); DRA
claim devices through their CDI specs (attribution.cdi). Whatever cannot be placed for certain (an id of no known
shape, a device not on this host's monitored GPUs, a claim whose CDI spec is missing or unreadable) makes that
container's allocation incomplete: a process of it outside what is known is then not flagged either way.
docs/allocation.md has the sources and the choices.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple, Optional

from collector import safeio
from collector.attribution.cdi import (
    CdiUnresolved,
    MigCap,
    SpecIndex,
    log_once,
    node_refs,
    parse_qualified,
    read_mig_caps,
)
from collector.attribution.podresources import GPU_DRA_DRIVERS, ClaimDevice, ContainerAllocation, DeviceRef
from collector.model import (
    CDI_UNRESOLVED_REASONS,
    AllocationTarget,
    AllocationUse,
    AllocationView,
    Device,
    Owner,
    OwnerKind,
    ProcessRecord,
)

log = logging.getLogger(__name__)

POD_LOGS = "var/log/pods"  # kubelet's <namespace>_<pod>_<uid> directories, under the host root
MAX_POD_LOG_DIRS = 10_000  # collector.attribution.runtimes' bound (a node's pods, with room to spare)

Container = tuple[str, str, str]  # namespace, pod, container


def whole_gpu(units: Sequence[Device]) -> AllocationTarget:
    """A physical GPU: its one unit, or all of its MIG instances."""
    first = units[0]
    if len(units) == 1 and first.mig is None:
        return AllocationTarget(first.label, first.uuid, frozenset({first.label}))
    return AllocationTarget(str(first.index), first.gpu_uuid, frozenset(d.label for d in units))


def gpu_instance(units: Sequence[Device]) -> AllocationTarget:
    """A MIG GPU instance: its one compute instance, or all of them."""
    first = units[0]
    if len(units) == 1:
        return AllocationTarget(first.label, first.uuid, frozenset({first.label}))
    assert first.mig is not None
    return AllocationTarget(f"{first.index}_{first.mig.gpu_instance_id}", first.gpu_uuid,
                            frozenset(d.label for d in units))


def _by_minor(devices: Sequence[Device], minor: int, or_index: bool = False) -> list[Device]:
    """The units of the GPU with this minor number. Where NVML told no minor numbers, or_index takes the NVML
    index instead (GKE's ids were read so before minors were known; the two agree on most hosts, not on all)."""
    if or_index and all(d.minor is None for d in devices):
        return [d for d in devices if d.index == minor]
    return [d for d in devices if d.minor == minor]


def target(ref: DeviceRef, devices: Sequence[Device]) -> Optional[AllocationTarget]:
    """What a device-plugin id stands for on this host; None when it is not one of the monitored GPUs."""
    if ref.uuid:
        if ref.gpu_instance is not None:  # R450/R460 MIG-GPU-<uuid>/<gi>/<ci>
            units = [d for d in devices if d.mig and d.gpu_uuid == ref.uuid
                     and d.mig.gpu_instance_id == ref.gpu_instance
                     and ref.compute_instance in (None, d.mig.compute_instance_id)]
            return gpu_instance(units) if units else None
        exact = [d for d in devices if d.uuid == ref.uuid]
        if exact:
            return AllocationTarget(exact[0].label, exact[0].uuid, frozenset({exact[0].label}))
        parent = [d for d in devices if d.gpu_uuid == ref.uuid]
        return whole_gpu(parent) if parent else None
    if ref.index is not None:  # GKE: nvidia<minor>[/gi<gpu instance>]
        units = _by_minor(devices, ref.index, or_index=True)
        if ref.gpu_instance is not None:
            units = [d for d in units if d.mig is not None and d.mig.gpu_instance_id == ref.gpu_instance]
            return gpu_instance(units) if units else None
        return whole_gpu(units) if units else None
    return None


class ClaimResolver:
    """DRA claim devices -> targets, through the CDI specs and MIG capability files under the host root (each
    read once, on first use)."""

    def __init__(self, host_root: str, devices: Sequence[Device]) -> None:
        self.host_root = host_root
        self.devices = devices
        self.specs = SpecIndex(host_root)
        self._caps: Optional[Mapping[int, Optional[MigCap]]] = None

    def targets(self, name: str) -> list[AllocationTarget]:
        """The GPUs and MIG instances one CDI device grants ([] when it grants none: not a GPU device). Raises
        CdiUnresolved when that cannot be told for certain."""
        found = node_refs(self.specs.device(name).nodes)
        per_gpu: dict[int, list[MigCap]] = {minor: [] for minor in found.gpus}
        if found.caps:
            if self._caps is None:
                self._caps = read_mig_caps(self.host_root)
            for minor in sorted(found.caps):
                if minor not in self._caps:
                    raise CdiUnresolved("unknown_device", f"CDI device {name}: /dev/nvidia-caps/nvidia-cap{minor} "
                                                          "is in no MIG capability file of this host")
                cap = self._caps[minor]
                if cap is not None:
                    per_gpu.setdefault(cap.gpu_minor, []).append(cap)
        out = []
        for minor, caps in sorted(per_gpu.items()):
            units = _by_minor(self.devices, minor)
            if not units:
                raise CdiUnresolved("unknown_device", f"CDI device {name}: GPU /dev/nvidia{minor} is not among "
                                                      "the GPUs this run read")
            compute = {(c.gpu_instance, c.compute_instance) for c in caps if c.compute_instance is not None}
            instances = {c.gpu_instance for c in caps} - {gi for gi, _ in compute}
            if not caps:
                out.append(whole_gpu(units))
                continue
            for gi, ci in sorted(compute):
                unit = [d for d in units if d.mig and (d.mig.gpu_instance_id, d.mig.compute_instance_id) == (gi, ci)]
                if not unit:
                    raise CdiUnresolved("unknown_device", f"CDI device {name}: MIG instance {gi}/{ci} of GPU "
                                                          f"/dev/nvidia{minor} is not among the units this run read")
                out.append(gpu_instance(unit))
            for gi in sorted(instances):
                unit = [d for d in units if d.mig and d.mig.gpu_instance_id == gi]
                if not unit:
                    raise CdiUnresolved("unknown_device", f"CDI device {name}: MIG GPU instance {gi} of GPU "
                                                          f"/dev/nvidia{minor} is not among the units this run read")
                out.append(gpu_instance(unit))
        return out


class AllocationIndex:
    """kubelet's GPU allocation, placed on this host's units."""

    def __init__(self, containers: Iterable[ContainerAllocation], devices: Sequence[Device],
                 claims: Optional[ClaimResolver] = None, gpu_drivers: Iterable[str] = ()) -> None:
        self.by_container: dict[Container, set[str]] = {}
        self.by_pod: dict[tuple[str, str], set[str]] = {}
        self.incomplete: set[Container] = set()  # containers with a GPU allocation this host cannot place
        self.allocated: set[str] = set()
        self.targets: dict[Container, dict[str, AllocationTarget]] = {}  # by target UUID
        self.devices: dict[tuple[str, str, str, str], set[tuple[str, ...]]] = {}
        self._unresolved_names: dict[str, set[str]] = {reason: set() for reason in CDI_UNRESOLVED_REASONS}
        self._gpu_drivers = set(GPU_DRA_DRIVERS) | set(gpu_drivers)
        self._claims = claims
        for c in containers:
            key = (c.namespace, c.pod, c.container)
            self.by_container.setdefault(key, set())
            self.targets.setdefault(key, {})
            for ref in c.devices:
                self.devices.setdefault((*key, ref.resource), set()).add((ref.device,))
                found = target(ref, devices)
                if found is None:
                    log.debug("pod %s/%s: device %s is not on this host's monitored GPUs", c.namespace, c.pod,
                              ref.raw)
                    self.incomplete.add(key)
                else:
                    self._add(key, found)
            for claim in c.claims:
                self._claim(key, claim)
        self.cdi_unresolved = {reason: len(names) for reason, names in self._unresolved_names.items()}

    def _add(self, key: Container, found: AllocationTarget) -> None:
        self.targets[key].setdefault(found.uuid, found)
        self.by_container[key] |= found.units
        self.by_pod.setdefault(key[:2], set()).update(found.units)
        self.allocated |= found.units

    def _claim(self, key: Container, claim: ClaimDevice) -> None:
        """A DRA claim device: its targets, or why its container's allocation is unknown. A device of a driver not
        known to hand out GPUs counts as a GPU allocation only where its CDI spec names a GPU."""
        gpu_driver = claim.driver in self._gpu_drivers
        kinds = [q[0] for q in map(parse_qualified, claim.cdi_devices) if q]
        resource = claim.driver or (kinds[0] if kinds else "")
        if not claim.cdi_devices:
            if gpu_driver:
                self._unresolved(key, f"{claim.claim}/{claim.device}", "no_cdi_device",
                                 f"claim {claim.claim}: {claim.driver} device {claim.device!r} has no CDI device")
                self.devices.setdefault((*key, resource), set()).add(claim.key)
            return
        found: list[AllocationTarget] = []
        failed = False
        for name in claim.cdi_devices:
            try:
                if self._claims is None:
                    raise CdiUnresolved("not_found", "no CDI specs to read")
                found += self._claims.targets(name)
            except CdiUnresolved as err:
                self._unresolved(key, name, err.reason, f"claim {claim.claim}: {err}")
                failed = True
        if not found and not failed and gpu_driver:
            names = ", ".join(claim.cdi_devices)
            self._unresolved(key, names, "no_gpu_node",
                             f"claim {claim.claim}: CDI device {names} of {claim.driver} names no GPU device node")
            failed = True
        if found or gpu_driver:
            self.devices.setdefault((*key, resource), set()).add(claim.key)
        for each in found:
            self._add(key, each)

    def _unresolved(self, key: Container, name: str, reason: str, message: str) -> None:
        self._unresolved_names[reason].add(name)
        self.incomplete.add(key)
        log_once(name, reason, f"pod {key[0]}/{key[1]} container {key[2]}: {message}; its allocation is unknown "
                               f"({reason})")

    def allowed(self, owner: Owner) -> tuple[set[str], bool]:
        """The units kubelet allocated to the owner's container (to any container of its pod when the container
        is not known), and whether that is all of its allocation."""
        if owner.container:
            key = (owner.namespace, owner.pod, owner.container)
            return self.by_container.get(key, set()), key not in self.incomplete
        pod = (owner.namespace, owner.pod)
        complete = not any(k[:2] == pod for k in self.incomplete)
        return self.by_pod.get(pod, set()), complete


class History(NamedTuple):
    """What the state keeps per allocated device: since when it has gone unused, and the pod's UID when known
    (kubelet's List has no UID; a new pod under an old name must not inherit the old one's idle time)."""

    idle_since: float
    pod_uid: str = ""


HistoryKey = tuple[str, str, str, str]  # namespace, pod, container, device UUID


def pod_uids(host_root: str, records: Iterable[ProcessRecord]) -> dict[tuple[str, str], str]:
    """namespace/pod -> UID, from the pods' processes (their cgroups) and kubelet's log directories; a name with
    two log directories (a pod replaced under the same name, the old one's logs not yet removed) gets none."""
    found: dict[tuple[str, str], set[str]] = {}
    entries, _ = safeio.list_dir(os.path.join(host_root, POD_LOGS), MAX_POD_LOG_DIRS)
    for entry in entries:
        parts = entry.name.split("_")
        if len(parts) == 3:  # namespace and pod names cannot hold "_" (DNS-1123)
            found.setdefault((parts[0], parts[1]), set()).add(parts[2])
    uids = {key: next(iter(values)) for key, values in found.items() if len(values) == 1}
    for r in records:
        if r.owner.kind == OwnerKind.POD and r.owner.pod and r.owner.pod_uid:
            uids[(r.owner.namespace, r.owner.pod)] = r.owner.pod_uid
    return uids


def view(index: AllocationIndex, records: Sequence[ProcessRecord], unplaced: Iterable[str], *,
         previous: Mapping[HistoryKey, History], now: float,
         uids: Mapping[tuple[str, str], str]) -> tuple[AllocationView, dict[HistoryKey, History]]:
    """Each allocated device's use this run, and the history to keep. `unplaced`: units with a process NVML listed
    that this run could not describe (its owner is unknown).

    An allocated device counts as used when a process of its container runs on it. When it does not, but a process
    whose container is not known runs there, its use is unknown: no series, and its history starts again. The
    history of a container whose allocation could not be placed this run is kept as it was."""
    running: set[tuple[str, str, str, str]] = set()
    unsure: set[str] = set(unplaced)  # units with a process of unknown owner
    unsure_pod: set[tuple[str, str, str]] = set()  # (namespace, pod, unit): a pod's process, container unknown
    for r in records:
        o, unit = r.owner, r.gpu.device.label
        if o.kind == OwnerKind.UNVERIFIED:  # a pod's process, which pod not known for sure
            unsure.add(unit)
        if o.kind != OwnerKind.POD:
            continue
        if not o.pod:
            unsure.add(unit)
        elif not o.container:
            unsure_pod.add((o.namespace, o.pod, unit))
        else:
            running.add((o.namespace, o.pod, o.container, unit))
    uses = []
    kept: dict[HistoryKey, History] = {}
    unknown: set[HistoryKey] = set()
    for key, targets in sorted(index.targets.items()):
        namespace, pod, container = key
        uid = uids.get((namespace, pod), "")
        for found in sorted(targets.values(), key=lambda t: t.label):
            history_key = (namespace, pod, container, found.uuid)
            used = any((namespace, pod, container, unit) in running for unit in found.units)
            if not used and any(u in unsure or (namespace, pod, u) in unsure_pod for u in found.units):
                unknown.add(history_key)
                continue
            history = previous.get(history_key)
            if history is not None and history.pod_uid and uid and history.pod_uid != uid:
                history = None  # another pod under the same name
            since = now if used or history is None else min(history.idle_since, now)
            kept[history_key] = History(since, uid or (history.pod_uid if history else ""))
            uses.append(AllocationUse(namespace, pod, container, found, used, now - since))
    for history_key, history in previous.items():
        if history_key[:3] in index.incomplete and history_key not in kept and history_key not in unknown:
            kept[history_key] = history
    devices = {key: len(ids) for key, ids in sorted(index.devices.items())}
    return AllocationView(devices=devices, uses=tuple(uses), cdi_unresolved=dict(index.cdi_unresolved)), kept
