"""The GPUs and their MIG instances, read into collector.model records.

Why it exists: one read of a GPU is several NVML calls (its handle, whether it is in MIG mode and its compute
instances, each unit's memory and process lists, its energy and minor number) that must succeed or fail
together: a GPU that fails half-way reports nothing but its failure (a `FailedGpu`), and the other GPUs are still
read. The `Reader` is that boundary; the calls themselves go through collector.nvml.query, so a lost GPU arrives
here as `GpuLost`, and the calls that differ from one driver to the next through collector.nvml.compat.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, Optional

import pynvml

from collector.model import Device, FailedGpu, GpuProcess, MigInfo
from collector.nvml import compat, gpm
from collector.nvml.compat import NA_ID
from collector.nvml.query import GpuFailed, query, text
from collector.nvml.sampling import Activity, Integrator, timer_activity

log = logging.getLogger(__name__)


class Options(NamedTuple):
    devices: Optional[Collection[int]]
    last_seen_us: Mapping[str, int]
    now_us: int


class OpenGpu(NamedTuple):
    """A GPU whose units are known and whose processes are not read yet."""

    number: int  # its NVML index
    handle: Any
    uuid: str
    name: str
    mig_units: Optional[list[tuple[Device, Any]]]  # (compute instance, its handle); None: not in MIG mode
    gpm_targets: tuple[gpm.Target, ...]


class Reader:
    """One read's GPUs: each opened (open_gpu), then read (read_gpu), into the records a snapshot is made of."""

    def __init__(self, options: Options, gpm_support: dict[str, bool],
                 integrator: Optional[Integrator] = None) -> None:
        self.options = options
        self.gpm_support = gpm_support  # by GPU UUID, kept by the session: support does not change while loaded
        self.integrator = integrator  # the long-running mode's utilisation sampling
        self.devices: list[Device] = []
        self.processes: list[GpuProcess] = []
        self.failed: list[FailedGpu] = []
        self.last_seen_us: dict[str, int] = {}  # seen_key(GPU, PID) -> the timestamp of its newest entry kept
        self.read_uuids: set[str] = set()  # the GPUs whose per-process utilisation was read
        self.seen_now: dict[str, int] = {}  # the GPU being read: what last_seen_us gets once all of it is
        self.gpm_targets: list[gpm.Target] = []
        self.energy_mj: dict[str, int] = {}

    def open_gpu(self, index: int) -> Optional[OpenGpu]:
        """A GPU's handle, its MIG units and its GPM targets; None when it failed (recorded as failed)."""
        uuid = ""
        try:
            handle = query(pynvml.nvmlDeviceGetHandleByIndex, index)
            uuid = text(query(pynvml.nvmlDeviceGetUUID, handle))
            name = text(query(pynvml.nvmlDeviceGetName, handle))
            mig_units = list(self._mig_units(index, handle, uuid, name)) if mig_enabled(handle) else None
            return OpenGpu(index, handle, uuid, name, mig_units, self._gpm_targets(index, handle, uuid, mig_units))
        except (GpuFailed, pynvml.NVMLError) as err:
            self._fail(index, uuid, str(err))
            return None

    def read_gpu(self, gpu: OpenGpu) -> None:
        """An opened GPU's processes, utilisation, energy and minor number."""
        try:
            self._read_gpu(gpu)
        except (GpuFailed, pynvml.NVMLError) as err:
            self._fail(gpu.number, gpu.uuid, str(err))

    def _fail(self, index: int, uuid: str, reason: str) -> None:
        log.warning("GPU %d%s skipped: %s", index, f" ({uuid})" if uuid else "", reason)
        self.failed.append(FailedGpu(index=index, uuid=uuid, reason=reason))

    def _read_gpu(self, gpu: OpenGpu) -> None:
        index, handle, uuid = gpu.number, gpu.handle, gpu.uuid
        self.seen_now = {}
        if gpu.mig_units is not None:
            per_unit = _entries_by_instance([(unit, compat.process_lists(h)) for unit, h in gpu.mig_units])
            activity: Optional[dict[int, Activity]] = None  # NVML: not supported on MIG
        else:
            total, used = compat.memory(handle)
            unit = Device(label=str(index), index=index, uuid=uuid, name=gpu.name, memory_total=total,
                          memory_used=used)
            entries = compat.process_lists(handle)
            per_unit = [(unit, entries)]
            activity = self._activity(handle, uuid, {int(e.pid) for e in entries})
        energy = _energy(handle)
        minor = _minor(handle)
        # Only once the whole GPU was read: a GPU that fails half-way reports nothing but its failure.
        for read, unit_entries in per_unit:
            unit = read._replace(minor=minor)
            self.devices.append(unit)
            self.processes.extend(_merge(unit, unit_entries, activity))
        if energy is not None:
            self.energy_mj[uuid] = energy
        if gpu.mig_units is None and self.integrator is None:
            self.last_seen_us.update(self.seen_now)
            self.read_uuids.add(uuid)
        self.gpm_targets.extend(gpu.gpm_targets)

    def _gpm_targets(self, index: int, handle: Any, uuid: str,
                     mig_units: Optional[Sequence[tuple[Device, Any]]]) -> tuple[gpm.Target, ...]:
        """The whole GPU, or each of its MIG GPU instances under the label of the unit that reports its memory;
        none where GPM is not supported."""
        if uuid not in self.gpm_support:  # support does not change while NVML is loaded
            self.gpm_support[uuid] = gpm.supported(handle)
        if not self.gpm_support[uuid]:
            return ()
        if mig_units is None:
            return (gpm.Target(key=uuid, label=str(index), handle=handle, gpu_instance=None),)
        pools = {(u.mig.gpu_instance_id, u.memory_pool) for u, _ in mig_units if u.mig}
        return tuple(gpm.Target(key=f"{uuid}/gi{gi}", label=pool, handle=handle, gpu_instance=gi)
                     for gi, pool in sorted(pools))

    def _mig_units(self, index: int, handle: Any, parent_uuid: str, parent_name: str) -> Iterable[tuple[Device, Any]]:
        """One unit per compute instance. The compute instances of one GPU instance share its memory, and each
        reports all of it (docs/nvml-driver.md): the first one read carries the pool, the others point to it."""
        pools: dict[int, str] = {}
        slots = int(query(pynvml.nvmlDeviceGetMaxMigDeviceCount, handle))
        for slot in range(slots):
            mig = mig_device(handle, slot)
            if mig is None:
                continue
            gi = int(query(pynvml.nvmlDeviceGetGpuInstanceId, mig))
            ci = int(query(pynvml.nvmlDeviceGetComputeInstanceId, mig))
            name = text(query(pynvml.nvmlDeviceGetName, mig))
            total, used = compat.memory(mig)
            profile = name.rsplit(" MIG ", 1)[1] if " MIG " in name else ""
            label = f"{index}_{gi}_{ci}"
            yield (
                Device(
                    label=label,
                    index=index,
                    uuid=text(query(pynvml.nvmlDeviceGetUUID, mig)),
                    name=parent_name,
                    memory_total=total,
                    memory_used=used,
                    mig=MigInfo(gpu_instance_id=gi, compute_instance_id=ci, profile=profile, parent_uuid=parent_uuid,
                                share=mig_share(profile, slots)),
                    memory_pool=pools.setdefault(gi, label),
                ),
                mig,
            )

    def _activity(self, handle: Any, uuid: str, listed: Collection[int]) -> Optional[dict[int, Activity]]:
        """SM activity per listed PID (collector.nvml.sampling); None where per-process utilisation cannot be
        measured. In the long-running mode, what the session integrated since the last write instead."""
        now = self.options.now_us
        if self.integrator is not None:
            return self.integrator.take(uuid, handle, listed, now)
        # Kept once the whole GPU is read (_read_gpu): the read's time, and each listed PID's newest entry.
        activity, self.seen_now = timer_activity(handle, uuid, listed, self.options.last_seen_us, now)
        return activity


def mig_enabled(handle: Any) -> bool:
    """Whether the GPU is in MIG mode (a GPU or driver without MIG is not)."""
    mode = query(pynvml.nvmlDeviceGetMigMode, handle, default=None)
    return mode is not None and bool(mode[0] == pynvml.NVML_DEVICE_MIG_ENABLE)


def mig_device(handle: Any, slot: int) -> Any:
    """The MIG device in a slot of the GPU, None for an empty slot.

    Its own policy, not query's default: NOT_FOUND and INVALID_ARGUMENT are answers here (MIG slots are sparse),
    and every other error, NOT_SUPPORTED included, is the GPU's failure, as for the calls around it."""
    try:
        return query(pynvml.nvmlDeviceGetMigDeviceHandleByIndex, handle, slot)
    except (pynvml.NVMLError_NotFound, pynvml.NVMLError_InvalidArgument):
        return None


_SLICES = re.compile(r"^(?:(\d+)c\.)?(\d+)g\.")


def mig_share(profile: str, gpu_slices: int) -> float:
    """The fraction of its GPU's compute a MIG profile holds: "2g.20gb" of 7 slices is 2/7, a compute instance
    "1c.3g.40gb" is 1/7. 0.0 when the profile does not say."""
    found = _SLICES.match(profile)
    if not found or gpu_slices <= 0:
        return 0.0
    return min(1.0, int(found.group(1) or found.group(2)) / gpu_slices)


def _entries_by_instance(per_handle: Sequence[tuple[Device, list[Any]]]) -> list[tuple[Device, list[Any]]]:
    """Each entry on the compute instance its gpuInstanceId/computeInstanceId name. A compute-instance handle can
    list every process of its GPU instance (driver-dependent), so the same entry may come from several handles;
    an entry without ids (NA: a caller NVML does not tell) stays with the handle that listed it."""
    by_ids = {(d.mig.gpu_instance_id, d.mig.compute_instance_id): d.label for d, _ in per_handle if d.mig}
    out: dict[str, list[Any]] = {d.label: [] for d, _ in per_handle}
    for unit, entries in per_handle:
        for entry in entries:
            ids = (int(getattr(entry, "gpuInstanceId", NA_ID)), int(getattr(entry, "computeInstanceId", NA_ID)))
            out[by_ids.get(ids, unit.label)].append(entry)
    return [(unit, out[unit.label]) for unit, _ in per_handle]


def _merge(unit: Device, entries: list[Any], activity: Optional[Mapping[int, Activity]]) -> list[GpuProcess]:
    """One record per PID on the unit: a PID in several lists (graphics + compute), or listed by several compute
    instances of one GPU instance, is one process."""
    memory: dict[int, Optional[int]] = {}
    for entry in entries:
        pid = int(entry.pid)
        used = None if entry.usedGpuMemory is None else int(entry.usedGpuMemory)
        previous = memory.get(pid)
        memory[pid] = used if previous is None else max(previous, used or 0)
    merged = []
    for pid in sorted(memory):
        sm: Optional[float] = None
        active: Optional[bool] = None
        seen = activity.get(pid) if activity is not None else None
        if activity is not None:
            sm, active = (seen.sm_percent, seen.active) if seen else (0.0, False)
        merged.append(GpuProcess(pid=pid, device=unit, used_memory=memory[pid], sm_utilization=sm, active=active,
                                 sm_busy_seconds=seen.busy_seconds if seen else None,
                                 window_start=seen.window_start if seen else None))
    return merged


def _energy(handle: Any) -> Optional[int]:
    """Millijoules since the driver loaded (Volta and newer; NOT_SUPPORTED before, and on MIG handles)."""
    energy = query(pynvml.nvmlDeviceGetTotalEnergyConsumption, handle, default=None,
                   tolerate=(pynvml.NVMLError_NoPermission,))
    return None if energy is None else int(energy)


def _minor(handle: Any) -> Optional[int]:
    """The GPU's minor number (/dev/nvidia<minor>), which CDI specs and GKE's device ids name it by.

    Its own policy, not query's: any error, a lost GPU included, leaves the minor number unknown (it only names
    the GPU to CDI and GKE ids); a GPU that is gone has failed on the reads before this one."""
    try:
        return int(pynvml.nvmlDeviceGetMinorNumber(handle))
    except pynvml.NVMLError as err:
        log.debug("minor number unavailable: %s", err)
        return None
