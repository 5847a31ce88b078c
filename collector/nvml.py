"""The only module that imports pynvml.

It turns NVML into frozen records: the monitored devices (whole GPUs and MIG instances), their processes with the
compute, graphics and MPS lists merged, and per-process SM utilisation from the samples newer than the previous
run's. Errors leave it in two shapes only: `NvmlUnavailable` when NVML as a whole cannot be used, and `FailedGpu`
records for GPUs that failed while the others were read.
"""

from __future__ import annotations

import ctypes
import glob
import logging
import os
import re
import stat
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, Optional

import pynvml

from collector.model import Device, DeviceActivity, FailedGpu, GpuProcess, MigInfo, NvmlSnapshot

log = logging.getLogger(__name__)

FIRST_RUN_WINDOW_US = 60_000_000  # with no previous timestamp, read the samples of the last minute
NA_MEMORY = 0xFFFFFFFFFFFFFFFF
NA_ID = 0xFFFFFFFF  # a process entry's GPU / compute instance id outside MIG, or for a caller NVML does not tell
MAX_SM_PERCENT = 100

# (list, the call whose *_v3 symbol current drivers have, the _v2 wrapper of R470..R495 drivers)
PROCESS_LISTS: tuple[tuple[str, str, str], ...] = (
    ("compute", "nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetComputeRunningProcesses_v2"),
    ("graphics", "nvmlDeviceGetGraphicsRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses_v2"),
    ("mps", "nvmlDeviceGetMPSComputeRunningProcesses", "nvmlDeviceGetMPSComputeRunningProcesses_v2"),
)

_reported_missing: set[str] = set()
_root = "/"  # where /proc/driver/nvidia and /dev/nvidia-caps are read (use_host_root)


def use_host_root(host_root: str) -> None:
    """Reads the driver's capability files and device nodes under host_root from now on (--host-root)."""
    global _root  # noqa: PLW0603  (one setting for the process, as collector.procfs keeps its own)
    _root = host_root


# ---- MIG capability device nodes (docs/nvml-driver.md, "MIG capability nodes") ----

CAPABILITIES = "proc/driver/nvidia/capabilities"
CAP_NODES = "dev/nvidia-caps"
_MINOR = re.compile(r"^DeviceFileMinor:\s*(\d{1,9})\s*$", re.MULTILINE)


class MissingNode(NamedTuple):
    access: str  # the capability's access file, as the driver names it: /proc/driver/nvidia/capabilities/...
    node: str  # the device node NVML opens for it: /dev/nvidia-caps/nvidia-cap<minor>


def _read_small(path: str, limit: int = 4096) -> str:
    """A driver file's text, at most limit bytes; '' when it cannot be read. Opened without blocking: a FIFO put
    there would otherwise hold the run until a writer came."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return ""
    try:
        return os.read(fd, limit).decode(errors="replace")
    except OSError:
        return ""
    finally:
        os.close(fd)


def missing_capability_nodes(root: Optional[str] = None) -> tuple[int, list[MissingNode]]:
    """The MIG GPU and compute instances the driver has (an access file each under
    /proc/driver/nvidia/capabilities/gpu<N>/mig/, naming the minor number of its node), and those whose node
    /dev/nvidia-caps/nvidia-cap<minor> is missing. NVML opens that node to reach the instance and, where it is
    missing, has the setuid nvidia-modprobe create it: under the unit (NoNewPrivileges=, no CAP_MKNOD) that
    fails, and the instance stays invisible. (instances found, those missing their node)."""
    base = root if root is not None else _root
    pattern = os.path.join(base, CAPABILITIES, "gpu*", "mig", "gi*")
    files = sorted(glob.glob(os.path.join(pattern, "access")) + glob.glob(os.path.join(pattern, "ci*", "access")))
    missing = []
    for path in files[:4096]:  # 8 GPUs x 7 GPU instances x 8 compute instances at most, by far
        found = _MINOR.search(_read_small(path))
        if not found:
            continue
        node = os.path.join(base, CAP_NODES, f"nvidia-cap{int(found.group(1))}")
        try:
            present = stat.S_ISCHR(os.stat(node).st_mode)
        except OSError:
            present = False
        if not present:
            missing.append(MissingNode("/" + os.path.relpath(path, base), "/" + os.path.relpath(node, base)))
    return len(files), missing


def describe_missing_nodes(missing: Sequence[MissingNode]) -> str:
    """One line: which nodes are missing, what it costs, and the command that creates them."""
    shown = ", ".join(m.node for m in missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
    return (f"{len(missing)} MIG capability device node{'s are' if len(missing) > 1 else ' is'} missing ({shown}): "
            "NVML cannot create them without privileges (the unit runs with NoNewPrivileges= and no CAP_MKNOD), so "
            "the collector does not see those MIG instances or their processes; create them as root with "
            f"nvidia-modprobe -f {missing[0].access}" + (" (and each other access file)" if len(missing) > 1 else ""))


class _ProcessInfoR535(ctypes.Structure):
    """The 32-byte process entry early R535 drivers (535.54.x) write for *_RunningProcesses_v3 without changing
    its version: pynvml's 24-byte array then comes back garbled from the second entry on (docs/nvml-driver.md)."""

    _fields_ = [
        ("pid", ctypes.c_uint),
        ("usedGpuMemory", ctypes.c_ulonglong),
        ("gpuInstanceId", ctypes.c_uint),
        ("computeInstanceId", ctypes.c_uint),
        ("usedGpuCcProtectedMemory", ctypes.c_ulonglong),
    ]


_PROCESS_INFO = pynvml.c_nvmlProcessInfo_v3_t  # the entry of the *_RunningProcesses_v3 calls, as pynvml reads it


class _Entry(NamedTuple):
    pid: int
    usedGpuMemory: Optional[int]  # the names pynvml's entries carry
    gpuInstanceId: int = NA_ID
    computeInstanceId: int = NA_ID


def _has_symbol(name: str) -> bool:
    try:
        pynvml._nvmlGetFunctionPointer(name)  # pynvml's own (private) symbol lookup, as nvitop uses it
    except pynvml.NVMLError_FunctionNotFound:
        return False
    return True


def _driver_writes_32_byte_entries() -> bool:
    """nvitop's test for those drivers: the confidential-computing call exists, the R535.104 fix does not."""
    if _has_symbol("nvmlDeviceGetConfComputeMemSizeInfo") and not _has_symbol("nvmlDeviceGetRunningProcessDetailList"):
        if "r535-struct" not in _reported_missing:
            _reported_missing.add("r535-struct")
            log.info("this driver writes 32-byte process entries (early R535); reading them as such")
        return True
    return False


def _running_processes(handle: Any, wrapper: str, entry: Any) -> list[_Entry]:
    """The count-then-fill call of pynvml's wrapper (its *_v3 symbol), with the given entry structure: pynvml's
    own, or the 32-byte one of early R535 drivers. pynvml's wrapper turns each entry into an object field by field,
    through its structures' Python __getattribute__, which costs more than the call itself; the fields are read
    here through the structure's descriptors instead (docs/performance.md)."""
    fn = pynvml._nvmlGetFunctionPointer(wrapper + "_v3")
    count = ctypes.c_uint(0)
    ret = fn(handle, ctypes.byref(count), None)
    if ret == pynvml.NVML_SUCCESS:
        return []
    if ret != pynvml.NVML_ERROR_INSUFFICIENT_SIZE:
        raise pynvml.NVMLError(ret)
    count.value = count.value * 2 + 5  # room for processes starting meanwhile, as pynvml allows
    entries = (entry * count.value)()
    ret = fn(handle, ctypes.byref(count), entries)
    if ret != pynvml.NVML_SUCCESS:
        raise pynvml.NVMLError(ret)
    pid, used, gi, ci = (entry.pid.__get__, entry.usedGpuMemory.__get__, entry.gpuInstanceId.__get__,
                         entry.computeInstanceId.__get__)
    return [_Entry(pid(e), None if used(e) == NA_MEMORY else used(e), gi(e), ci(e)) for e in entries[: count.value]]


class NvmlUnavailable(Exception):
    """NVML cannot be used at all: library missing, driver not loaded, no permission."""


class _GpuFailed(Exception):
    """One GPU failed (lost, no permission, an unexpected NVML error); the others are still read."""


def _is_missing_function(err: BaseException) -> bool:
    # NVMLLibraryMismatchError subclasses Exception, not NVMLError: the unversioned wrappers raise it when the
    # driver lacks the *_v3 symbol.
    return isinstance(err, (pynvml.NVMLError_FunctionNotFound, pynvml.NVMLLibraryMismatchError))


def _note_missing(function: str) -> None:
    if function not in _reported_missing:
        _reported_missing.add(function)
        log.info("NVML function %s is not available on this driver; going on without it", function)


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


class _Options(NamedTuple):
    devices: Optional[Collection[int]]
    last_seen_us: Mapping[str, int]
    now_us: int


class _GpmTarget(NamedTuple):
    key: str  # the GPU's UUID, or "<GPU UUID>/gi<id>" for a MIG GPU instance
    label: str  # the device label its activity is reported under
    handle: Any  # the physical GPU's handle
    gpu_instance: Optional[int]  # None: the whole GPU


class _OpenGpu(NamedTuple):
    """A GPU whose units are known and whose processes are not read yet."""

    number: int  # its NVML index
    handle: Any
    uuid: str
    name: str
    mig_units: Optional[list[tuple[Device, Any]]]  # (compute instance, its handle); None: not in MIG mode
    gpm_targets: tuple[_GpmTarget, ...]


class _Reader:
    def __init__(self, options: _Options, gpm_support: dict[str, bool],
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
        self.gpm_targets: list[_GpmTarget] = []
        self.energy_mj: dict[str, int] = {}

    def open_gpu(self, index: int) -> Optional[_OpenGpu]:
        """A GPU's handle, its MIG units and its GPM targets; None when it failed (recorded as failed)."""
        uuid = ""
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            uuid = _text(pynvml.nvmlDeviceGetUUID(handle))
            name = _text(pynvml.nvmlDeviceGetName(handle))
            mig_units = list(self._mig_units(index, handle, uuid, name)) if self._mig_enabled(handle) else None
            return _OpenGpu(index, handle, uuid, name, mig_units, self._gpm_targets(index, handle, uuid, mig_units))
        except (_GpuFailed, pynvml.NVMLError) as err:
            self._fail(index, uuid, str(err))
            return None

    def read_gpu(self, gpu: _OpenGpu) -> None:
        """An opened GPU's processes, utilisation, energy and minor number."""
        try:
            self._read_gpu(gpu)
        except (_GpuFailed, pynvml.NVMLError) as err:
            self._fail(gpu.number, gpu.uuid, str(err))

    def _fail(self, index: int, uuid: str, reason: str) -> None:
        log.warning("GPU %d%s skipped: %s", index, f" ({uuid})" if uuid else "", reason)
        self.failed.append(FailedGpu(index=index, uuid=uuid, reason=reason))

    def _read_gpu(self, gpu: _OpenGpu) -> None:
        index, handle, uuid = gpu.number, gpu.handle, gpu.uuid
        self.seen_now = {}
        if gpu.mig_units is not None:
            per_unit = _entries_by_instance([(unit, self._process_lists(h)) for unit, h in gpu.mig_units])
            activity: Optional[dict[int, Activity]] = None  # NVML: not supported on MIG
        else:
            total, used = _memory(handle)
            unit = Device(label=str(index), index=index, uuid=uuid, name=gpu.name, memory_total=total,
                          memory_used=used)
            entries = self._process_lists(handle)
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
                     mig_units: Optional[Sequence[tuple[Device, Any]]]) -> tuple[_GpmTarget, ...]:
        """The whole GPU, or each of its MIG GPU instances under the label of the unit that reports its memory;
        none where GPM is not supported."""
        if not self._gpm_supported(handle, uuid):
            return ()
        if mig_units is None:
            return (_GpmTarget(key=uuid, label=str(index), handle=handle, gpu_instance=None),)
        pools = {(u.mig.gpu_instance_id, u.memory_pool) for u, _ in mig_units if u.mig}
        return tuple(_GpmTarget(key=f"{uuid}/gi{gi}", label=pool, handle=handle, gpu_instance=gi)
                     for gi, pool in sorted(pools))

    def _gpm_supported(self, handle: Any, uuid: str) -> bool:
        if uuid not in self.gpm_support:
            self.gpm_support[uuid] = _gpm_supported(handle)
        return self.gpm_support[uuid]

    @staticmethod
    def _mig_enabled(handle: Any) -> bool:
        try:
            current, _pending = pynvml.nvmlDeviceGetMigMode(handle)
        except pynvml.NVMLError_NotSupported:
            return False
        except Exception as err:
            if _is_missing_function(err):
                _note_missing("nvmlDeviceGetMigMode")
                return False
            raise
        return bool(current == pynvml.NVML_DEVICE_MIG_ENABLE)

    def _mig_units(self, index: int, handle: Any, parent_uuid: str, parent_name: str) -> Iterable[tuple[Device, Any]]:
        """One unit per compute instance. The compute instances of one GPU instance share its memory, and each
        reports all of it (docs/nvml-driver.md): the first one read carries the pool, the others point to it."""
        pools: dict[int, str] = {}
        slots = int(pynvml.nvmlDeviceGetMaxMigDeviceCount(handle))
        for slot in range(slots):
            try:
                mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
            except (pynvml.NVMLError_NotFound, pynvml.NVMLError_InvalidArgument):
                continue  # MIG slots are sparse
            gi = int(pynvml.nvmlDeviceGetGpuInstanceId(mig))
            ci = int(pynvml.nvmlDeviceGetComputeInstanceId(mig))
            name = _text(pynvml.nvmlDeviceGetName(mig))
            total, used = _memory(mig)
            profile = name.rsplit(" MIG ", 1)[1] if " MIG " in name else ""
            label = f"{index}_{gi}_{ci}"
            yield (
                Device(
                    label=label,
                    index=index,
                    uuid=_text(pynvml.nvmlDeviceGetUUID(mig)),
                    name=parent_name,
                    memory_total=total,
                    memory_used=used,
                    mig=MigInfo(gpu_instance_id=gi, compute_instance_id=ci, profile=profile, parent_uuid=parent_uuid,
                                share=mig_share(profile, slots)),
                    memory_pool=pools.setdefault(gi, label),
                ),
                mig,
            )

    @staticmethod
    def _process_lists(handle: Any) -> list[Any]:
        """The entries of the compute, graphics and MPS lists together."""
        entries: list[Any] = []
        r535 = _driver_writes_32_byte_entries()
        for kind, current, older in PROCESS_LISTS:
            try:
                entries.extend(_running_processes(handle, current, _ProcessInfoR535 if r535 else _PROCESS_INFO))
                continue
            except pynvml.NVMLError_NotSupported:
                continue
            except Exception as err:
                if not _is_missing_function(err):
                    raise
                _note_missing(current + "_v3")
            try:
                entries.extend(getattr(pynvml, older)(handle))
            except pynvml.NVMLError_FunctionNotFound:
                _note_missing(older)
                if kind == "compute":
                    raise _GpuFailed("this driver offers no process list NVML call") from None
        return entries

    def _activity(self, handle: Any, uuid: str, listed: Collection[int]) -> Optional[dict[int, Activity]]:
        """SM activity per listed PID from the entries newer than that PID's last seen one; None where per-process
        utilisation cannot be measured. In the long-running mode, what the session integrated since the last
        write instead. Entries of one read can be seconds apart from PID to PID (docs/nvml-driver.md), so what
        was seen is kept per process: one timestamp per GPU would hide a busy process whose new entry is older
        than another process's last one."""
        now = self.options.now_us
        if self.integrator is not None:
            return self.integrator.take(uuid, handle, listed, now)
        saved = self.options.last_seen_us
        previous_read = saved.get(uuid, 0)  # when this GPU was last read (µs)
        # A PID with no entry seen yet (new, or idle so far) counts the entries since shortly before the last read,
        # as late as entries can come (docs/nvml-driver.md); on a first read, those of the last minute.
        unknown = (previous_read if 0 < previous_read <= now else now) - FIRST_RUN_WINDOW_US
        records = {pid: saved.get(seen_key(uuid, pid), 0) for pid in listed}
        records = {pid: ts for pid, ts in records.items() if 0 < ts <= now}  # past now: the clock stepped back
        floors = {pid: records.get(pid, unknown) for pid in listed}
        kept = query_samples(handle, uuid, min(floors.values(), default=unknown), now, floors)
        for pid, ts, _ in kept or ():
            records[pid] = max(records.get(pid, 0), ts)
        # Kept once the whole GPU is read (_read_gpu): the read's time, and each listed PID's newest entry.
        self.seen_now = {uuid: now, **{seen_key(uuid, pid): ts for pid, ts in records.items()}}
        if kept is None:
            return None
        return time_weighted(kept)


def seen_key(uuid: str, pid: int) -> str:
    """A process's key in the saved last-seen timestamps: "<GPU UUID>/<PID>"."""
    return f"{uuid}/{pid}"


def carried_last_seen(saved: Mapping[str, int], read: Collection[str]) -> dict[str, int]:
    """The saved timestamps of GPUs not read this time (failed, filtered out), for when they come back. A GPU that
    was read keeps only what this read recorded: its processes' entries, none of a process no longer listed."""
    return {key: ts for key, ts in saved.items() if key.split("/", 1)[0] not in read}


def query_samples(handle: Any, uuid: str, since_us: int, now_us: int,
                  floors: Optional[Mapping[int, int]]) -> Optional[list[Sample]]:
    """The plausible utilisation entries newer than since_us (and, with floors, only those of its PIDs, each newer
    than its own floor); [] when none; None where not measurable."""
    try:
        raw = pynvml.nvmlDeviceGetProcessUtilization(handle, since_us)
    except pynvml.NVMLError_NotFound:
        return []  # no process had SM activity since then: measured, all idle
    except pynvml.NVMLError_NotSupported:
        return None
    except pynvml.NVMLError_FunctionNotFound:
        _note_missing("nvmlDeviceGetProcessUtilization")
        return None
    except pynvml.NVMLError_GpuIsLost:
        raise
    except pynvml.NVMLError as err:
        log.warning("per-process utilisation of %s unavailable: %s", uuid, err)
        return None
    samples: list[Sample] = []
    if raw:
        # Through the structure's field descriptors: pynvml's structures read every attribute through a Python
        # __getattribute__ (which decodes text fields), four times slower, and a tick reads three per process.
        fields = type(raw[0])
        pid, stamp, sm = fields.pid.__get__, fields.timeStamp.__get__, fields.smUtil.__get__
        samples = [(pid(s), stamp(s), sm(s)) for s in raw]
    # "The future" is after this answer, not after the run began: under CPUQuota= a run's own reads can take long
    # enough for the driver to have taken fresh samples since it started, and those are real.
    kept = plausible_samples(samples, floors, since_us, max(now_us, int(time.time() * 1_000_000)))
    if len(kept) < len(samples):
        log.debug("%s: ignored %d of %d utilisation entries (unlisted PID, SM %% over 100, or a timestamp "
                  "outside (last seen, now])", uuid, len(samples) - len(kept), len(samples))
    return kept


class Integrator:
    """The long-running mode's per-process utilisation: sampled every few seconds between two writes and
    integrated per PID over the time each tick covers, so a write reports the SM % of the whole interval, not
    of the driver's last sample period. Each tick's entries (time-weighted per PID) stand for the time since
    the previous tick; a PID with no entry in a tick was idle in it (the driver lists only busy processes).
    What was seen is kept per process, as a timer run keeps it (_Reader._activity): each query reads from the
    oldest last-seen timestamp among the processes the last write listed, and each PID's entries count past its
    own."""

    def __init__(self) -> None:
        self.window_start = time.time()
        self.handles: dict[str, Any] = {}  # whole GPUs to sample, from the last read (valid until nvmlShutdown)
        self.busy: dict[str, dict[int, float]] = {}  # GPU UUID -> PID -> SM-busy seconds in this window
        self.last_tick: dict[str, float] = {}
        self.seen: dict[str, dict[int, int]] = {}  # GPU UUID -> PID -> its newest entry's timestamp
        self.listed: dict[str, frozenset[int]] = {}  # GPU UUID -> the PIDs the last write listed

    def tick(self, now: Optional[float] = None) -> None:
        now = time.time() if now is None else now
        for uuid, handle in list(self.handles.items()):
            try:
                self._sample(uuid, handle, now)
            except pynvml.NVMLError as err:  # the next write's read meets it and reports it
                log.debug("utilisation tick on %s: %s", uuid, err)

    def _sample(self, uuid: str, handle: Any, now: float, listed: Optional[Collection[int]] = None) -> None:
        start = self.last_tick.get(uuid, self.window_start)
        # A PID with no entry seen yet counts the entries since shortly before the previous tick, as late as
        # entries can come (docs/nvml-driver.md); a GPU's first query looks back as a timer run's first does.
        unknown = int(start * 1_000_000) - FIRST_RUN_WINDOW_US
        seen = self.seen.setdefault(uuid, {})
        listed = self.listed.get(uuid, frozenset()) if listed is None else listed
        floors = {pid: seen.get(pid, unknown) for pid in listed}
        # Processes that started since the last write are in no list yet, so the query starts at the unknown floor
        # at the latest; each entry counts past its own PID's newest, and none moves another PID's floor.
        kept = query_samples(handle, uuid, min([*floors.values(), unknown]), int(now * 1_000_000), None)
        self.last_tick[uuid] = now
        if kept is None:
            self.handles.pop(uuid, None)
            return
        kept = [(pid, ts, sm) for pid, ts, sm in kept if ts > floors.get(pid, max(seen.get(pid, 0), unknown))]
        for pid, ts, _ in kept:
            seen[pid] = max(seen.get(pid, 0), ts)
        for pid in [pid for pid, ts in seen.items() if ts <= unknown and pid not in listed]:
            del seen[pid]  # an unlisted PID's entry older than any floor: it can no longer count twice
        span = max(0.0, now - start)
        busy = self.busy.setdefault(uuid, {})
        for pid, activity in time_weighted(kept).items():
            busy[pid] = busy.get(pid, 0.0) + activity.sm_percent / 100.0 * span

    def take(self, uuid: str, handle: Any, listed: Collection[int], now_us: int) -> Optional[dict[int, Activity]]:
        """The window's activity of the listed PIDs (a last tick first), and a new window from now."""
        now = now_us / 1_000_000
        self.handles[uuid] = handle
        self._sample(uuid, handle, now, listed)
        if uuid not in self.handles:
            return None  # not measurable on this GPU
        self.listed[uuid] = frozenset(listed)
        busy = self.busy.pop(uuid, {})
        start = self.window_start
        self.last_tick[uuid] = now
        span = max(now - start, 1e-9)
        out = {}
        for pid in listed:
            seconds = busy.get(pid, 0.0)
            out[pid] = Activity(sm_percent=100.0 * seconds / span, active=seconds > 0, busy_seconds=seconds,
                                window_start=start)
        return out

    def new_window(self, now: float) -> None:
        self.window_start = now
        for uuid in self.last_tick:
            self.last_tick[uuid] = now


class Activity(NamedTuple):
    sm_percent: float  # time-weighted mean SM % over the process's kept entries
    active: bool  # some kept entry shows SM activity
    busy_seconds: Optional[float] = None  # the long-running mode's integral, and since when
    window_start: Optional[float] = None


Sample = tuple[int, int, int]  # (pid, timestamp in µs, SM %)


def plausible_samples(samples: Iterable[Sample], floors: Optional[Mapping[int, int]], since_us: int,
                      now_us: int) -> list[Sample]:
    """The entries worth believing. Real drivers return garbage entries too (docs/nvml-driver.md): PIDs in no
    process list, SM % above 100 (even 2^32-1), timestamps at or before the one asked for, or in the future. Only
    entries with 0 <= SM <= 100 and timestamp <= now are kept, and with floors only those of its PIDs whose
    timestamp is past the PID's floor (else past since_us), so one bad entry can neither yield a utilisation
    outside 0..100 nor move a saved timestamp past now (which would blind later runs), and an unlisted PID's
    entry moves nothing."""
    if floors is None:
        return [(pid, ts, sm) for pid, ts, sm in samples if 0 <= sm <= MAX_SM_PERCENT and since_us < ts <= now_us]
    return [(pid, ts, sm) for pid, ts, sm in samples
            if pid in floors and 0 <= sm <= MAX_SM_PERCENT and floors[pid] < ts <= now_us]


def time_weighted(samples: Iterable[Sample]) -> dict[int, Activity]:
    """Per PID, the mean of its entries weighted by the time each covers. The driver samples the whole GPU at
    instants; an entry stamped t covers the period since the previous instant seen on this GPU (the first
    instant: the typical spacing of the others). Where the driver returns one entry per process (the documented
    shape), that entry's value is the result."""
    samples = list(samples)
    if len({pid for pid, _, _ in samples}) == len(samples):
        # One entry per PID: its value, which is what the weighting yields, exactly, for plausible entries (an
        # integer SM % times an integer span, divided by that span), at half the cost: a tick at 1,000 processes
        # does this for every one of them.
        return {pid: Activity(sm_percent=float(sm), active=sm > 0) for pid, _, sm in samples}
    return _weighted(samples)


def _weighted(samples: Sequence[Sample]) -> dict[int, Activity]:
    stamps = sorted({ts for _, ts, _ in samples})
    gaps = [later - earlier for earlier, later in zip(stamps, stamps[1:])]
    covers = {stamps[0]: sorted(gaps)[len(gaps) // 2] if gaps else 1} if stamps else {}
    covers.update((later, gap) for later, gap in zip(stamps[1:], gaps))
    weighted: dict[int, list[float]] = {}
    for pid, ts, sm in samples:
        total = weighted.setdefault(pid, [0.0, 0.0, 0.0])
        total[0] += sm * covers[ts]
        total[1] += covers[ts]
        total[2] = max(total[2], sm)
    return {pid: Activity(sm_percent=w / t, active=peak > 0) for pid, (w, t, peak) in weighted.items()}


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


def _energy(handle: Any) -> Optional[int]:
    """Millijoules since the driver loaded (Volta and newer; NOT_SUPPORTED before, and on MIG handles)."""
    try:
        return int(pynvml.nvmlDeviceGetTotalEnergyConsumption(handle))
    except pynvml.NVMLError_FunctionNotFound:
        _note_missing("nvmlDeviceGetTotalEnergyConsumption")
    except (pynvml.NVMLError_NotSupported, pynvml.NVMLError_NoPermission):
        pass
    return None


# ---- GPM: GPU Performance Monitoring (Hopper and newer), per GPU and per MIG GPU instance ----

# nvml.h: the two samples "should be greater than 100ms" apart, the driver's internal refresh period; a window right at
# it can straddle no refresh. 20 ms of margin (docs/nvml-driver.md, "GPM").
GPM_INTERVAL_S = 0.12
GPM_METRICS = (  # DeviceActivity field, NVML metric id
    ("sm_util", 2),  # NVML_GPM_METRIC_SM_UTIL
    ("sm_occupancy", 3),  # NVML_GPM_METRIC_SM_OCCUPANCY
    ("tensor_active", 5),  # NVML_GPM_METRIC_ANY_TENSOR_UTIL
    ("dram_bw_util", 10),  # NVML_GPM_METRIC_DRAM_BW_UTIL
)


def _gpm_supported(handle: Any) -> bool:
    try:
        return bool(pynvml.nvmlGpmQueryDeviceSupport(handle).isSupportedDevice)
    except pynvml.NVMLError_FunctionNotFound:
        _note_missing("nvmlGpmQueryDeviceSupport")
    except pynvml.NVMLError as err:
        log.debug("GPM support query: %s", err)
    return False


class _Gpm:
    """Pairs of GPM samples. In a one-shot run both are taken inside the run, GPM_INTERVAL_S apart at least:
    the first ones before the process lists are read (start), the second ones once everything else is (measure),
    which sleeps only what is left of the interval (wall time, no CPU). In the long-running mode each
    measurement's second sample is the next one's first, so the activity spans the whole interval between two
    writes."""

    def __init__(self, keep: bool) -> None:
        self.keep = keep
        self.previous: dict[str, tuple[float, Any]] = {}  # target key -> (monotonic time, sample)
        self.firsts: dict[str, tuple[float, Any]] = {}  # the same, for the measurement in progress

    def start(self, targets: Iterable[_GpmTarget]) -> None:
        """Each target's first sample: the one kept from the last measurement, or one taken now."""
        for target in targets:
            first = self.previous.pop(target.key, None) or self._sample(target)
            if first is not None:
                self.firsts[target.key] = first
        _drop(self.previous)  # samples of targets gone since the last measurement

    def measure(self, targets: Sequence[_GpmTarget]) -> dict[str, DeviceActivity]:
        """The activity of each target since its first sample (taken now where start() did not take one)."""
        self.start([target for target in targets if target.key not in self.firsts])
        firsts = {target.key: self.firsts.pop(target.key) for target in targets if target.key in self.firsts}
        _drop(self.firsts)  # targets not measured: their GPU failed after its first sample
        if firsts:
            time.sleep(max(0.0, max(t for t, _ in firsts.values()) + GPM_INTERVAL_S - time.monotonic()))
        out: dict[str, DeviceActivity] = {}
        for target in targets:
            if target.key not in firsts:
                continue
            started, first = firsts[target.key]
            second = self._sample(target)
            if second is not None:
                activity = _gpm_metrics(first, second[1], second[0] - started)
                if activity is not None:
                    out[target.label] = activity
                if self.keep:
                    self.previous[target.key] = second
                else:
                    _free(second[1])
            _free(first)
        return out

    @staticmethod
    def _sample(target: _GpmTarget) -> Optional[tuple[float, Any]]:
        try:
            sample = pynvml.nvmlGpmSampleAlloc()
        except pynvml.NVMLError as err:
            log.debug("GPM sample allocation: %s", err)
            return None
        try:
            if target.gpu_instance is None:
                pynvml.nvmlGpmSampleGet(target.handle, sample)
            else:
                pynvml.nvmlGpmMigSampleGet(target.handle, target.gpu_instance, sample)
        except pynvml.NVMLError as err:
            log.debug("GPM sample of %s: %s", target.key, err)
            _free(sample)
            return None
        return time.monotonic(), sample

    def release(self) -> None:
        _drop(self.previous)
        _drop(self.firsts)


def _drop(samples: dict[str, tuple[float, Any]]) -> None:
    for _, sample in samples.values():
        _free(sample)
    samples.clear()


def _free(sample: Any) -> None:
    try:
        pynvml.nvmlGpmSampleFree(sample)
    except pynvml.NVMLError as err:
        log.debug("GPM sample free: %s", err)


def _gpm_metrics(first: Any, second: Any, seconds: float) -> Optional[DeviceActivity]:
    """The GPM metrics between two samples; None when the call fails. A metric with its own error, a NaN (what
    samples taken too close together can yield) or a value outside 0..100 is None: never a made-up number."""
    request = pynvml.c_nvmlGpmMetricsGet_t()
    request.version = pynvml.NVML_GPM_METRICS_GET_VERSION
    request.numMetrics = len(GPM_METRICS)
    request.sample1 = first
    request.sample2 = second
    for i, (_, metric_id) in enumerate(GPM_METRICS):
        request.metrics[i].metricId = metric_id
    try:
        pynvml.nvmlGpmMetricsGet(request)
    except pynvml.NVMLError as err:
        log.debug("GPM metrics: %s", err)
        return None
    values: dict[str, Optional[float]] = {}
    for i, (name, _) in enumerate(GPM_METRICS):
        metric = request.metrics[i]
        value = float(metric.value)
        ok = metric.nvmlReturn == pynvml.NVML_SUCCESS and 0.0 <= value <= 100.0  # NaN compares False
        values[name] = value if ok else None
    return DeviceActivity(seconds=round(seconds, 6), **values)


def _minor(handle: Any) -> Optional[int]:
    """The GPU's minor number (/dev/nvidia<minor>), which CDI specs and GKE's device ids name it by."""
    try:
        return int(pynvml.nvmlDeviceGetMinorNumber(handle))
    except pynvml.NVMLError as err:
        log.debug("minor number unavailable: %s", err)
        return None


def _memory(handle: Any) -> tuple[Optional[int], Optional[int]]:
    """(total, used) bytes. nvmlDeviceGetMemoryInfo_v2 where the driver has it: its `used` leaves out the memory
    the driver and firmware reserve, which v1's `used` includes and which would otherwise show up as memory no
    process accounts for (docs/nvml-driver.md). v1 on drivers without it, and wherever v2 is refused on one handle
    (what drivers answer v2 on a MIG device handle is not documented): v1's figures rather than none."""
    if "nvmlDeviceGetMemoryInfo_v2" not in _reported_missing:
        try:
            info = pynvml.nvmlDeviceGetMemoryInfo(handle, version=pynvml.nvmlMemory_v2)
            return int(info.total), int(info.used)
        except pynvml.NVMLError_FunctionNotFound:
            _note_missing("nvmlDeviceGetMemoryInfo_v2")
        except (pynvml.NVMLError_ArgumentVersionMismatch, pynvml.NVMLError_NotSupported,
                pynvml.NVMLError_NoPermission) as err:
            log.debug("memory info v2 refused, reading v1: %s", err)
    try:
        info = pynvml.nvmlDeviceGetMemoryInfo(handle)
    except pynvml.NVMLError_FunctionNotFound:
        _note_missing("nvmlDeviceGetMemoryInfo")
        return None, None
    except (pynvml.NVMLError_NotSupported, pynvml.NVMLError_NoPermission) as err:
        log.debug("memory info unavailable: %s", err)
        return None, None
    return int(info.total), int(info.used)


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


class Session:
    """NVML initialised once, for one read (a timer run) or for many (the long-running mode, where GPM samples
    carry over from one read to the next). After a read that met a broken NVML (not initialised, a lost GPU, a
    library mismatch, any failed GPU), the session shuts NVML down so that the next read initialises it afresh
    instead of reporting from a stale handle forever."""

    def __init__(self, long_running: bool = False) -> None:
        self._initialised = False
        self._gpm = _Gpm(keep=long_running)
        self._gpm_support: dict[str, bool] = {}
        self._long_running = long_running
        self.integrator: Optional[Integrator] = None
        # The library this process mapped no longer matches the loaded driver (upgraded, module reloaded while
        # NVML was shut down): only a new process, which maps the new library, can use NVML again.
        self.needs_restart = False
        self._missing_nodes: list[MissingNode] = []

    def tick(self) -> None:
        """Samples per-process utilisation between writes (long-running mode)."""
        if self.integrator is not None and self._initialised:
            self.integrator.tick()

    def read(self, devices: Optional[Collection[int]], last_seen_us: Mapping[str, int], now_us: int) -> NvmlSnapshot:
        """Reads every (selected) GPU once. Raises NvmlUnavailable when NVML itself cannot be used."""
        healthy = False
        try:
            self._init()
            snapshot = self._read(devices, last_seen_us, now_us)
            healthy = not snapshot.failed_gpus
            return snapshot
        finally:
            if not healthy:
                self.close()

    def _report_missing_nodes(self) -> None:
        """A warning per read while MIG capability nodes are missing (once per change in the long-running mode)."""
        _, missing = missing_capability_nodes()
        if missing and missing != self._missing_nodes:
            log.warning(describe_missing_nodes(missing))
        self._missing_nodes = missing if self._long_running else []

    def _init(self) -> None:
        if self._initialised:
            return
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as err:
            self.needs_restart = isinstance(err, pynvml.NVMLError_LibRmVersionMismatch)
            raise NvmlUnavailable(f"NVML init failed: {err}") from None
        self._initialised = True
        self._gpm_support.clear()
        self.integrator = Integrator() if self._long_running else None

    def _read(self, devices: Optional[Collection[int]], last_seen_us: Mapping[str, int], now_us: int) -> NvmlSnapshot:
        try:
            driver = _text(pynvml.nvmlSystemGetDriverVersion())
            count = int(pynvml.nvmlDeviceGetCount())
        except pynvml.NVMLError as err:
            raise NvmlUnavailable(f"NVML cannot list GPUs: {err}") from None
        reader = _Reader(_Options(devices=devices, last_seen_us=last_seen_us, now_us=now_us), self._gpm_support,
                         self.integrator)
        opened = [reader.open_gpu(index) for index in range(count) if devices is None or index in devices]
        gpus = [gpu for gpu in opened if gpu is not None]
        if any(gpu.mig_units is not None for gpu in gpus):
            self._report_missing_nodes()
        # The first GPM samples before any process list, the second ones after every other read (measure below):
        # a timer run's GPM_INTERVAL_S between the two passes while the GPUs are read, not after.
        self._gpm.start([target for gpu in gpus for target in gpu.gpm_targets])
        for gpu in gpus:
            reader.read_gpu(gpu)
        listed_at = time.time()  # every process list has been read by now
        if self.integrator is not None:
            self.integrator.new_window(now_us / 1_000_000)
        missing = sorted(set(devices or ()) - set(range(count)))
        if missing:
            log.warning("--devices names GPUs this host does not have: %s", ",".join(map(str, missing)))
        return NvmlSnapshot(
            driver_version=driver,
            devices=tuple(reader.devices),
            processes=tuple(reader.processes),
            failed_gpus=tuple(reader.failed),
            listed_at=listed_at,
            last_seen_us={**carried_last_seen(last_seen_us, reader.read_uuids), **reader.last_seen_us},
            activity=self._gpm.measure(reader.gpm_targets),
            energy_mj=reader.energy_mj,
        )

    def close(self) -> None:
        self._gpm.release()
        self.integrator = None
        if self._initialised:
            self._initialised = False
            try:
                pynvml.nvmlShutdown()
            except pynvml.NVMLError as err:
                log.debug("nvmlShutdown: %s", err)


def read_snapshot(
    devices: Optional[Collection[int]], last_seen_us: Mapping[str, int], now_us: int
) -> NvmlSnapshot:
    """One read in a session of its own (the timer's run): NVML initialised, read, shut down."""
    session = Session()
    try:
        return session.read(devices, last_seen_us, now_us)
    finally:
        session.close()


# ---- what `--check` reports (collector.check) ----


class GpuInventory(NamedTuple):
    index: int  # type: ignore[assignment]  # shadows tuple.index, as meant
    uuid: str = ""
    name: str = ""
    mig_enabled: bool = False
    mig_devices: int = 0  # MIG devices (compute instances) configured
    persistence_mode: Optional[bool] = None  # None: the platform does not support it (nothing to enable)
    error: str = ""  # NVML's message when the GPU could not be read (lost, no permission ...)


class Inventory(NamedTuple):
    driver_version: str
    gpus: tuple[GpuInventory, ...]  # every GPU NVML lists, whatever --devices selects


def inventory() -> Inventory:
    """The driver version and every GPU, in an NVML session of its own. Raises NvmlUnavailable."""
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as err:
        raise NvmlUnavailable(f"NVML init failed: {err}") from None
    try:
        try:
            driver = _text(pynvml.nvmlSystemGetDriverVersion())
            count = int(pynvml.nvmlDeviceGetCount())
        except pynvml.NVMLError as err:
            raise NvmlUnavailable(f"NVML cannot list GPUs: {err}") from None
        return Inventory(driver, tuple(_gpu_inventory(index) for index in range(count)))
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError as err:
            log.debug("nvmlShutdown: %s", err)


def _gpu_inventory(index: int) -> GpuInventory:
    uuid = ""
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        uuid = _text(pynvml.nvmlDeviceGetUUID(handle))
        name = _text(pynvml.nvmlDeviceGetName(handle))
        mig = _Reader._mig_enabled(handle)
        mig_devices = 0
        for slot in range(int(pynvml.nvmlDeviceGetMaxMigDeviceCount(handle)) if mig else 0):
            try:
                pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
                mig_devices += 1
            except (pynvml.NVMLError_NotFound, pynvml.NVMLError_InvalidArgument):
                continue  # MIG slots are sparse
        try:
            persistence: Optional[bool] = pynvml.nvmlDeviceGetPersistenceMode(handle) == pynvml.NVML_FEATURE_ENABLED
        except pynvml.NVMLError_NotSupported:
            persistence = None
        return GpuInventory(index, uuid, name, mig, mig_devices, persistence)
    except pynvml.NVMLError as err:
        return GpuInventory(index, uuid, error=str(err))
