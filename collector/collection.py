"""One collection: discover (NVML) -> describe (/proc) -> attribute -> render. Returns the file and the next state.

Nothing here writes: the caller writes the file, and saves the state only once the file is written. Whatever goes
wrong inside a collection, the outcome is a file: a failed one (gpu_proc_collector_up 0, no process series) when
NVML cannot be read or something unexpected happens, so an old file never outlives a broken run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Mapping
from typing import Callable, NamedTuple, Optional

from collector import accounting, nvml, procfs
from collector.attribution.join import AttributionSettings, Attributor
from collector.metrics import Report, SeriesCache, render_failure, render_report
from collector.model import DeviceActivity, GpuProcess, HostProcess, NvmlSnapshot, Owner, ProcessRecord, process_key
from collector.settings import Settings
from collector.state import State

log = logging.getLogger(__name__)

# Why a PID NVML listed gets no series (gpu_proc_collector_processes_dropped{reason}).
DROP_REASONS = (
    "pid_not_found",  # not under /proc: it exited between the two reads, or the driver's list was garbled
    "pid_reused",  # under /proc, but started after NVML's list was read: another process got the PID
    "access_denied",  # /proc hides it from us (hidepid=, a PID namespace we cannot read)
)


class Outcome(NamedTuple):
    text: bytes
    ok: bool
    state: State  # what to save once the file is written


def collect(settings: Settings, previous: State, clock: Callable[[], float] = time.time,
            session: Optional[nvml.Session] = None, series: Optional[SeriesCache] = None) -> Outcome:
    """One collection. A long-running caller passes its NVML session (kept initialised, sampling between
    collections) and the series its last write rendered (updated here); a timer run uses a session of its own and
    renders every series."""
    started = time.monotonic()

    def failed(reason: str, driver_version: str = "") -> Outcome:
        log.error("collection failed: %s", reason)
        text = render_failure(previous.last_success, time.monotonic() - started, driver_version)
        return Outcome(text=text, ok=False, state=previous)

    try:
        return _collect(settings, previous, clock(), started, failed=failed, session=session, series=series)
    except Exception as err:  # a bug or an input nobody foresaw: a failed file and one line, never a traceback
        log.debug("unexpected error", exc_info=True)
        return failed(f"unexpected {type(err).__name__}: {err}")


def _collect(settings: Settings, previous: State, now: float, started: float, *,
             failed: Callable[..., Outcome], session: Optional[nvml.Session],
             series: Optional[SeriesCache]) -> Outcome:
    nvml.use_host_root(settings.host_root)
    try:
        if session is None:
            snapshot = nvml.read_snapshot(settings.devices, previous.last_seen_us, int(now * 1_000_000))
        else:
            snapshot = session.read(settings.devices, previous.last_seen_us, int(now * 1_000_000))
    except nvml.NvmlUnavailable as err:
        return failed(str(err))
    if snapshot.failed_gpus and not snapshot.devices:
        reasons = "; ".join(f"GPU {f.index}: {f.reason}" for f in snapshot.failed_gpus)
        return failed(f"every GPU failed ({reasons})", snapshot.driver_version)

    procfs.use_host_root(settings.host_root)
    hosts, dropped = _describe(snapshot, settings.command_args)
    attributor = Attributor(AttributionSettings(
        host_root=settings.host_root,
        pod_resources_socket=settings.socket,
        pod_resources_timeout=settings.pod_resources_timeout,
        resource_names=settings.resource_names,
        cgroup_roots=settings.cgroup_roots,
    ), snapshot.devices, previous.containers)
    attributed = []
    for proc in snapshot.processes:
        host = hosts.get(proc.pid)
        if host is not None:
            attributed.append((_over_its_lifetime(proc, host, now), host, *attributor.attribute(host, proc.device)))
    attributed = _with_instance_activity(attributed, snapshot.activity)
    # Each process's name across runs (ProcessRecord.key), formatted once here for the idle times, accounting and
    # the SM seconds.
    keys = [process_key(proc.device.uuid, proc.pid, host.start_time) for proc, host, _, _ in attributed]
    last_active: dict[str, float] = {}
    # positional: a NamedTuple made from keywords costs about twice as much, and this is once per process
    records = [ProcessRecord(proc, host, owner, _idle_seconds(proc, key, now, previous.last_active, last_active),
                             unallocated)
               for key, (proc, host, owner, unallocated) in zip(keys, attributed)]

    ledger = accounting.account(
        previous.ledger, records, keys, snapshot.activity, snapshot.energy_mj,
        last_success=previous.last_success, now=now,
        nominal_interval=settings.interval or settings.nominal_interval, max_owners=settings.max_owner_series)
    totals = ledger.processes
    records = [ProcessRecord(r.gpu, r.host, r.owner, r.idle_seconds, r.unallocated, totals[key])  # not _replace
               for r, key in zip(records, keys)]
    unplaced = {proc.device.label for proc in snapshot.processes if proc.pid not in hosts}
    allocations, allocation_history = attributor.allocation_view(records, unplaced, previous.allocations, now)
    # The read's timestamps: what it saw, and those of GPUs it did not read (collector.nvml.carried_last_seen).
    last_seen = dict(snapshot.last_seen_us)
    report = Report(
        driver_version=snapshot.driver_version,
        devices=snapshot.devices,
        failed_gpus=snapshot.failed_gpus,
        records=records,
        dropped=dropped,
        timestamp=now,
        duration=time.monotonic() - started,
        label_prefix=settings.label_prefix,
        command_args=settings.command_args,
        max_process_series=settings.max_process_series,
        attribution=attributor.facts(),
        activity=snapshot.activity,
        energy_mj=snapshot.energy_mj,
        ledger=ledger,
        allocations=allocations,
    )
    return Outcome(
        text=render_report(report, series),
        ok=True,
        state=State(last_success=now, last_seen_us=last_seen, last_active=last_active, ledger=ledger,
                    containers=attributor.containers(),
                    allocations=allocation_history),
    )


def _describe(snapshot: NvmlSnapshot, with_cmdline: bool) -> tuple[dict[int, HostProcess], dict[str, int]]:
    """Reads /proc once per PID. A PID that cannot be the process NVML listed (gone, reused, hidden) is dropped and
    counted by reason: never a made-up process, never one process's owner on another's GPU memory."""
    hosts: dict[int, HostProcess] = {}
    unusable: dict[int, str] = {}
    processes: Collection[GpuProcess] = snapshot.processes
    for proc in processes:
        if proc.pid in hosts or proc.pid in unusable:
            continue
        try:
            host = procfs.describe(proc.pid, with_cmdline)
        except procfs.ProcessUnavailable as err:
            unusable[proc.pid] = err.reason
            continue
        if snapshot.listed_at and host.start_time > snapshot.listed_at:
            unusable[proc.pid] = "pid_reused"
        else:
            hosts[proc.pid] = host
    if unusable:
        log.info("PIDs listed by NVML that this run cannot report: %s",
                 ", ".join(f"{pid} ({why})" for pid, why in sorted(unusable.items())[:20]))
    dropped = dict.fromkeys(DROP_REASONS, 0)
    for proc in processes:
        if proc.pid in unusable:
            dropped[unusable[proc.pid]] += 1
    return hosts, dropped


Attributed = tuple[GpuProcess, HostProcess, Owner, Optional[bool]]


def _over_its_lifetime(proc: GpuProcess, host: HostProcess, now: float) -> GpuProcess:
    """The long-running mode's SM-busy seconds as a percentage of the part of the interval the process existed:
    a process that started mid-interval is averaged over its own time, not the whole interval's."""
    if proc.sm_busy_seconds is None or proc.window_start is None:
        return proc
    existed = now - max(proc.window_start, host.start_time)
    percent = 100.0 * proc.sm_busy_seconds / existed if existed > 0 else 0.0
    pid, device, used_memory, _, active, busy, start = proc  # a new GpuProcess: several times faster than _replace
    return GpuProcess(pid, device, used_memory, min(100.0, percent), active, busy, start)


def _with_instance_activity(attributed: list[Attributed], activity: Mapping[str, DeviceActivity]) -> list[Attributed]:
    """NVML cannot measure per-process activity on MIG; GPM measures each GPU instance's. When every process of a
    GPU instance belongs to one owner (one pod per MIG slice, the usual case), the instance's activity is that
    owner's: its processes are active when the instance's SMs were busy at all in the interval, idle otherwise,
    and a lone process's utilisation is the instance's SM utilisation. With several owners, or no GPM, they stay
    unknown: a shared instance's activity cannot be split between owners."""
    members: dict[str, list[int]] = {}
    for i, (proc, _, _, _) in enumerate(attributed):
        pool = proc.device.memory_pool or proc.device.label
        if proc.device.mig is not None and pool in activity:
            members.setdefault(pool, []).append(i)
    out = list(attributed)
    for pool, indices in members.items():
        sm = activity[pool].sm_util
        owners = {_owner_identity(attributed[i][2], attributed[i][0].pid) for i in indices}
        if sm is None or len(owners) != 1:
            continue
        for i in indices:
            proc, host, owner, unallocated = attributed[i]
            proc = proc._replace(active=sm > 0, sm_utilization=sm if len(indices) == 1 else None)
            out[i] = (proc, host, owner, unallocated)
    return out


def _owner_identity(owner: Owner, pid: int) -> tuple[str, str]:
    """Who a process belongs to, for "one owner": an owner with no name (an unrecognised host process) is only
    itself."""
    return (owner.kind, owner.name) if owner.name else (owner.kind, f"pid {pid}")


def _idle_seconds(
    proc: GpuProcess, key: str, now: float, before: Mapping[str, float], after: dict[str, float]
) -> Optional[float]:
    if proc.active is None:
        return None
    last = now if proc.active else before.get(key, now)
    last = min(last, now)  # the clock may have stepped back since that run
    after[key] = last
    return now - last
