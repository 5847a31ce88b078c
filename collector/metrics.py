"""Metric families from records (no I/O): the only module that knows which metrics exist, their names, help texts
and labels. The text format itself is collector.exposition's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Callable, NamedTuple, Optional, Union

from collector import __version__
from collector.accounting import OVERFLOW_KEY, Ledger, owner_key
from collector.exposition import COUNTER, Family, Series, render
from collector.model import (
    ATTRIBUTION_CONFLICT_REASONS,
    CDI_UNRESOLVED_REASONS,
    EMPTY,
    METADATA_MISS_REASONS,
    AllocationUse,
    AllocationView,
    AttributionFacts,
    Device,
    DeviceActivity,
    FailedGpu,
    Owner,
    ProcessRecord,
    safe_name,
)
from collector.settings import DEFAULTS

MIB = 1024 * 1024

# The compatible label sets (docs/compatibility.md): unchanged, so existing PromQL and panels work.
SEED_INFO_LABELS = ["gpu", "pid", "command", "pod", "namespace", "container", "status", "gpu_memory"]
SEED_UTIL_LABELS = ["gpu", "pid", "command", "pod", "namespace"]


class Report(NamedTuple):
    """Everything one successful run exposes."""

    driver_version: str
    devices: Sequence[Device]
    failed_gpus: Sequence[FailedGpu]
    records: Sequence[ProcessRecord]
    dropped: Mapping[str, int]
    timestamp: float
    duration: float
    label_prefix: str = DEFAULTS.label_prefix
    command_args: bool = DEFAULTS.command_args
    # Processes beyond this many get no series of their own: the largest memory holders keep theirs, the rest
    # are summed per device and owner (cardinality budget of one node).
    # Allocated devices share that budget: they get the series the processes leave (unused ones first).
    max_process_series: int = DEFAULTS.max_process_series
    attribution: Optional[AttributionFacts] = None
    activity: Mapping[str, DeviceActivity] = EMPTY  # GPM, by device label
    energy_mj: Mapping[str, int] = EMPTY  # since the driver loaded, by GPU UUID
    ledger: Optional[Ledger] = None  # accounting counters
    allocations: Optional[AllocationView] = None  # None: kubelet's pod-resources API did not answer this run


def status(record: ProcessRecord) -> str:
    """active: SM activity in the interval; idle: holds memory, no activity; unknown: NVML cannot tell (MIG)."""
    if record.gpu.active is None:
        return "unknown"
    return "active" if record.gpu.active else "idle"


def gpu_memory_label(used: Optional[int]) -> str:
    return "N/A" if used is None else f"{used // MIB}MiB"


def memory_percent(used: Optional[int], total: Optional[int]) -> Optional[float]:
    """Unrounded: gpu_process_memory_utilization's samples are added with 4 digits."""
    if used is None or not total:
        return None
    return 100.0 * used / total


def label_value(value: str) -> str:
    """A name from a runtime file, kubelet or a cgroup as a label value: model.safe_name (surrogates replaced, cut
    to MAX_LABEL_CHARS with a suffix that keeps two names apart). Escaping is the exposition's job. Names from
    /proc are cleaned where they are read (procfs.printable, which maps undecodable bytes one for one). A safe
    name is its own: the accounting keys (accounting.owner_key) need not pass here again."""
    return safe_name(value)


def _self_families(up: bool, last_success: Optional[float], duration: float, driver_version: str) -> list[Family]:
    up_family = Family("gpu_proc_collector_up", "1 if the last collection succeeded, 0 if it failed.")
    up_family.add((), 1.0 if up else 0.0)
    families = [up_family]
    if last_success is not None:
        last = Family("gpu_proc_collector_last_success_timestamp_seconds",
                      "Unix time at which the last successful collection started.")
        last.add((), last_success)
        families.append(last)
    took = Family("gpu_proc_collector_duration_seconds", "Seconds the last collection took.")
    took.add((), round(duration, 6))
    build = Family("gpu_proc_collector_build_info", "Collector version and NVIDIA driver version.",
                   ["version", "driver_version"])
    build.add((__version__, label_value(driver_version)), 1.0)
    return [*families, took, build]


def render_failure(last_success: Optional[float], duration: float, driver_version: str = "") -> bytes:
    """The file of a failed collection: no process series, so nothing stale looks alive."""
    return render(_self_families(False, last_success, duration, driver_version))


def render_report(report: Report, cache: Optional[SeriesCache] = None) -> bytes:
    """The file of a successful run. cache: the long-running mode's series from the last write, updated."""
    return render(_report_families(report, cache))


class _ReportFamilies:
    """The families of a successful run, each declared once here and rendered in the order declared (a family
    cannot be declared and left out), filled record by record."""

    def __init__(self, label_prefix: str, command_args: bool) -> None:
        self.declared: list[Family] = []
        gauge = self._gauge
        k8s = [label_prefix + name for name in ("pod", "namespace", "container")]
        self.count = gauge("gpu_process_count", "Processes on the GPU or MIG instance.", ["gpu"])
        self.total = gauge("gpu_total_processes", "Processes on all monitored GPUs and MIG instances.")
        self.info = gauge("gpu_process_info", "A process using a GPU or MIG instance (value 1).", SEED_INFO_LABELS)
        self.util = gauge(
            "gpu_process_utilization",
            "SM utilisation of the process in percent, from the NVML samples newer than the previous run's: the "
            "time-weighted mean of the entries the driver returned for it (current drivers return one per process: "
            "its latest sample period); 0 when it had none; absent where NVML cannot measure it (MIG).",
            SEED_UTIL_LABELS)
        self.mem_util = gauge(
            "gpu_process_memory_utilization",
            "GPU memory held by the process, as percent of its GPU's or MIG instance's total.", SEED_UTIL_LABELS)
        self.mem_bytes = gauge("gpu_process_memory_bytes", "GPU memory held by the process.",
                               ["gpu", "gpu_uuid", "pid", "command", *k8s, "owner_kind", "owner"])
        self.idle = gauge(
            "gpu_process_idle_seconds",
            "Seconds since the process last showed SM activity while holding GPU memory (0 when active).",
            ["gpu", "gpu_uuid", "pid", "command", *k8s])
        self.unallocated = gauge(
            "gpu_process_unallocated",
            "1 if the process runs on a GPU or MIG instance that kubelet did not allocate to its container.",
            ["gpu", "gpu_uuid", "pid", *k8s])
        self.allocated = gauge(
            "gpu_pod_allocated_devices",
            "GPUs and MIG instances kubelet allocated to the container, per extended resource or DRA driver: "
            "distinct devices, so time-slicing or MPS replicas of one GPU (<id>::<n>) count as one device.",
            [*k8s, "resource"])
        self.in_use = gauge(
            "gpu_allocation_in_use",
            "1 if a process of the container ran on the GPU or MIG instance kubelet allocated to it this run, 0 if "
            "none did; absent where that cannot be told (a process of unknown owner on it).",
            ["gpu", "gpu_uuid", *k8s])
        self.allocation_idle = gauge(
            "gpu_allocation_idle_seconds",
            "Seconds the allocated GPU or MIG instance has gone without a process of its container, counted from "
            "the first run that saw it so (0 while in use).",
            ["gpu", "gpu_uuid", *k8s])
        self.device_info = gauge("gpu_device_info", "A monitored GPU or MIG instance (value 1).",
                                 ["gpu", "gpu_uuid", "name", "mig_profile", "parent_gpu_uuid"])
        self.device_total = gauge("gpu_device_memory_total_bytes", "Memory of the GPU or MIG instance.",
                                  ["gpu", "gpu_uuid"])
        self.device_used = gauge("gpu_device_memory_used_bytes", "Memory in use on the GPU or MIG instance.",
                                 ["gpu", "gpu_uuid"])
        self.unattributed = gauge(
            "gpu_device_unattributed_memory_bytes",
            "Memory in use on the GPU or MIG instance that no listed process accounts for.", ["gpu", "gpu_uuid"])
        ids = ["gpu", "gpu_uuid"]
        in_percent = "of the GPU's or MIG GPU instance's own"
        self.activity = {
            "sm_util": gauge("gpu_device_sm_utilization_percent",
                             f"Percent of the time {in_percent} SMs were busy (NVML GPM; Hopper and newer).", ids),
            "sm_occupancy": gauge("gpu_device_sm_occupancy_percent",
                                  f"Active warps as percent of the theoretical maximum {in_percent} SMs (NVML GPM).",
                                  ids),
            "tensor_active": gauge("gpu_device_tensor_active_percent",
                                   f"Percent of the time {in_percent} SMs ran any tensor operation (NVML GPM).", ids),
            "dram_bw_util": gauge("gpu_device_dram_bandwidth_utilization_percent",
                                  f"DRAM bandwidth used as percent {in_percent} maximum (NVML GPM).", ids),
        }
        self.energy = self._declare(Family(
            "gpu_device_energy_joules_total", "Energy the GPU used since the driver loaded (NVML; Volta and newer).",
            ids, COUNTER))
        self.sm_seconds = self._declare(Family(
            "gpu_process_sm_seconds_total",
            "SM-busy seconds of the process, in whole-GPU seconds, since the collector first saw it.",
            ["gpu", "gpu_uuid", "pid", "command", *k8s], COUNTER))
        usage = ["owner_kind", "owner", k8s[1], k8s[0]]  # the ledger keys: namespace, then pod
        self.usage = {
            "gpu_seconds": self._declare(Family(
                "gpu_owner_gpu_seconds_total", "Seconds a GPU or MIG instance was held by at least one of the "
                "owner's processes, weighted by the instance's share of its GPU.", usage, COUNTER)),
            "sm_seconds": self._declare(Family(
                "gpu_owner_sm_seconds_total", "SM-busy seconds of the owner's processes, in whole-GPU seconds.",
                usage, COUNTER)),
            "memory_byte_seconds": self._declare(Family(
                "gpu_owner_memory_byte_seconds_total", "GPU memory the owner's processes held, times how long.",
                usage, COUNTER)),
            "energy_joules": self._declare(Family(
                "gpu_owner_energy_joules_total", "GPU energy split between owners by their share of each GPU's "
                "SM activity; owner_kind=\"unattributed\" is what no owner accounts for.", usage, COUNTER)),
        }
        self.gap = self._declare(Family(
            "gpu_proc_collector_accounting_gap_seconds_total",
            "Seconds between runs that accounting did not fill (gaps over three intervals, clock steps).",
            (), COUNTER))
        owner_labels = ["gpu", "gpu_uuid", "owner_kind", "owner", *k8s[:2]]
        self.aggregated_memory = gauge(
            "gpu_process_aggregated_memory_bytes",
            "GPU memory of the processes beyond the per-node series budget, summed per device and owner.",
            owner_labels)
        self.aggregated_count = gauge(
            "gpu_process_aggregated_count",
            "Processes beyond the per-node series budget, counted per device and owner.", owner_labels)
        self.command = gauge(
            "gpu_process_command_info", "The process's command line, secrets redacted (opt-in; value 1).",
            ["gpu", "pid", "command", "args"]) if command_args else None
        self.gpu_up = gauge("gpu_proc_collector_gpu_up", "1 if the GPU was read this run, 0 if it failed.",
                            ["gpu", "gpu_uuid"])
        self.dropped = gauge("gpu_proc_collector_processes_dropped",
                             "PIDs NVML listed that this run could not report, by reason.", ["reason"])
        self.series_dropped = gauge(
            "gpu_proc_collector_series_dropped",
            "Processes that got no series of their own this run (over the per-node budget; see the aggregates).")
        self.owners_folded = gauge(
            "gpu_proc_collector_owner_series_folded",
            "Owners that got no gpu_owner_* series of their own this run (over the owner budget): their usage is "
            "counted under owner_kind=\"overflow\".")
        self.pod_resources_up = gauge(
            "gpu_proc_collector_pod_resources_up",
            "1 if kubelet's pod-resources List answered this run, 0 if not (allocation not cross-checked).")
        self.metadata_misses = gauge(
            "gpu_proc_collector_metadata_misses",
            "Container lookups this run that found no usable runtime metadata file, by reason.", ["reason"])
        self.conflicts = gauge(
            "gpu_proc_collector_attribution_conflicts",
            "Processes this run whose cgroup named a pod or container that the cgroup's position, the runtime's files "
            "or kubelet did not back, by reason (docs/runtimes-and-cgroups.md, Trust).", ["reason"])
        self.allocation_series_dropped = gauge(
            "gpu_proc_collector_allocation_series_dropped",
            "Allocated devices that got no gpu_allocation_* series this run (the per-node series budget was spent "
            "on processes first).")
        self.cdi_unresolved = gauge(
            "gpu_proc_collector_cdi_unresolved",
            "CDI devices of DRA claims that this run could not place on this host's GPUs, by reason (their "
            "containers' allocation is then unknown, never flagged).", ["reason"])

    def _gauge(self, name: str, help_text: str, labels: Sequence[str] = ()) -> Family:
        return self._declare(Family(name, help_text, labels))

    def _declare(self, family: Family) -> Family:
        self.declared.append(family)
        return family

    def add_accounting(self, report: Report) -> None:
        gpus = {d.gpu_uuid: str(d.index) for d in report.devices}
        for uuid, millijoules in sorted(report.energy_mj.items()):
            if uuid in gpus:
                self.energy.add((gpus[uuid], uuid), millijoules / 1000.0)
        if report.ledger is None:
            return
        for key, usage in sorted(report.ledger.owners.items()):  # safe names already (accounting.owner_key)
            for name, family in self.usage.items():
                family.add(key, getattr(usage, name), 6)
        self.gap.add((), round(report.ledger.gap_seconds, 6))
        self.owners_folded.add((), float(report.ledger.folded))

    def add_aggregate(self, records: Sequence[ProcessRecord], ledger: Optional[Ledger]) -> None:
        """The processes over the process budget, summed per device and owner; the owners the ledger folded into
        the overflow owner (over the owner budget) summed as that one, so neither budget is a way round the
        other."""
        memory: dict[tuple[str, str, str, str, str, str], float] = {}
        count: dict[tuple[str, str, str, str, str, str], float] = {}
        for record in records:
            d = record.gpu.device
            kind, name, namespace, pod = owner_key(record)
            if ledger is not None and (kind, name, namespace, pod) not in ledger.owners:
                kind, name, namespace, pod = OVERFLOW_KEY
            key = (d.label, d.uuid, kind, name, pod, namespace)
            memory[key] = memory.get(key, 0.0) + float(record.gpu.used_memory or 0)
            count[key] = count.get(key, 0.0) + 1
        for key in sorted(count):
            self.aggregated_memory.add(key, memory[key])
            self.aggregated_count.add(key, count[key])

    def add_process(self, record: ProcessRecord, cache: Optional[SeriesCache] = None) -> None:
        """The process's samples: from its label values, or, given the long-running mode's cache, from its series
        as an earlier write rendered them."""
        proc = record.gpu
        labels: Union[_ProcessLabels, _ProcessSeries] = _ProcessLabels(record) if cache is None else \
            cache.series(record, self)
        add: Callable[..., None] = Family.add if cache is None else Family.add_series
        add(self.info, labels.info(self.info, record), 1.0)
        if proc.sm_utilization is not None:
            add(self.util, labels.util, proc.sm_utilization, 4)
        percent = memory_percent(proc.used_memory, proc.device.memory_total)
        if percent is not None:
            add(self.mem_util, labels.mem_util, percent, 4)
        if proc.used_memory is not None:
            add(self.mem_bytes, labels.mem_bytes, float(proc.used_memory))
        if record.idle_seconds is not None:
            add(self.idle, labels.idle, record.idle_seconds, 3)
        if record.sm_seconds_total is not None:
            add(self.sm_seconds, labels.sm_seconds, record.sm_seconds_total, 6)
        if record.unallocated is not None:
            add(self.unallocated, labels.unallocated, 1.0 if record.unallocated else 0.0)

    def add_allocations(self, allocations: AllocationView, budget: int) -> None:
        """The allocation families. budget: how many allocated devices may have series of their own."""
        for (namespace, pod, container, resource), count in allocations.devices.items():
            self.allocated.add([label_value(v) for v in (pod, namespace, container, resource)], float(count))
        ranked = sorted(allocations.uses, key=_unused_first)
        for use in sorted(ranked[:budget], key=_by_labels):
            labels = [use.target.label, use.target.uuid, *(label_value(v) for v in (use.pod, use.namespace,
                                                                                    use.container))]
            self.in_use.add(labels, 1.0 if use.in_use else 0.0)
            self.allocation_idle.add(labels, round(use.idle_seconds, 3))
        self.allocation_series_dropped.add((), float(max(0, len(ranked) - budget)))
        for reason in CDI_UNRESOLVED_REASONS:
            self.cdi_unresolved.add((reason,), float(allocations.cdi_unresolved.get(reason, 0)))

    def add_device(self, device: Device, processes: int, accounted: int) -> None:
        ids = [device.label, device.uuid]
        self.count.add([device.label], float(processes))
        self.device_info.add([*ids, device.name, device.mig.profile if device.mig else "",
                              device.mig.parent_uuid if device.mig else ""], 1.0)
        if not device.reports_memory:  # a compute instance whose GPU instance's memory another one reports
            return
        if device.memory_total is not None:
            self.device_total.add(ids, float(device.memory_total))
        if device.memory_used is not None:
            self.device_used.add(ids, float(device.memory_used))
            self.unattributed.add(ids, float(max(0, device.memory_used - accounted)))


    def add_run_facts(self, report: Report) -> None:
        """The run's own health: GPUs read or failed, PIDs dropped, what attribution's sources answered."""
        for index, uuid in sorted({(d.index, d.gpu_uuid) for d in report.devices}):
            self.gpu_up.add((str(index), uuid), 1.0)
        for failed in report.failed_gpus:
            self.gpu_up.add((str(failed.index), failed.uuid), 0.0)
        for reason, n in sorted(report.dropped.items()):
            self.dropped.add((reason,), float(n))
        facts = report.attribution
        if facts is not None:
            if facts.pod_resources_up is not None:
                self.pod_resources_up.add((), 1.0 if facts.pod_resources_up else 0.0)
            for reason in METADATA_MISS_REASONS:
                self.metadata_misses.add((reason,), float(facts.metadata_misses.get(reason, 0)))
            for reason in ATTRIBUTION_CONFLICT_REASONS:
                self.conflicts.add((reason,), float(facts.conflicts.get(reason, 0)))

    def add_activity(self, device: Device, activity: DeviceActivity) -> None:
        for name, family in self.activity.items():
            value = getattr(activity, name)
            if value is not None:
                family.add([device.label, device.uuid], round(value, 4))


class _ProcessLabels:
    """One process's label values, family by family (families with the same label names share one list)."""

    __slots__ = ("idle", "info_head", "mem_bytes", "mem_util", "sm_seconds", "unallocated", "util")

    def __init__(self, record: ProcessRecord) -> None:
        proc, device, owner = record.gpu, record.gpu.device, record.owner
        gpu, pid, command = device.label, str(proc.pid), record.host.name  # cleaned by procfs.printable
        # four calls, not a generator over them (a generator a process was a tenth of the families' time)
        pod, namespace = label_value(owner.pod), label_value(owner.namespace)
        container, owner_name = label_value(owner.container), label_value(owner.name)
        self.info_head = [gpu, pid, command, pod, namespace, container]
        self.util = self.mem_util = [gpu, pid, command, pod, namespace]
        self.idle = self.sm_seconds = [gpu, device.uuid, pid, command, pod, namespace, container]
        self.mem_bytes = [*self.idle, owner.kind, owner_name]
        self.unallocated = [gpu, device.uuid, pid, pod, namespace, container]

    def info(self, _family: Family, record: ProcessRecord) -> list[str]:
        return _info_labels(self.info_head, record)


def _info_labels(head: list[str], record: ProcessRecord) -> list[str]:
    """gpu_process_info's label values: the process's, then its status and memory."""
    return [*head, status(record), gpu_memory_label(record.gpu.used_memory)]


class _ProcessSeries:
    """One process's series, rendered (Family.series) when first reported with these label values."""

    __slots__ = ("_info", "_info_head", "_info_key", "idle", "mem_bytes", "mem_util", "sm_seconds", "unallocated",
                 "util")

    def __init__(self, labels: _ProcessLabels, families: _ReportFamilies) -> None:
        self.util = families.util.series(labels.util)
        self.mem_util = families.mem_util.series(labels.mem_util)
        self.mem_bytes = families.mem_bytes.series(labels.mem_bytes)
        self.idle = families.idle.series(labels.idle)
        self.sm_seconds = families.sm_seconds.series(labels.sm_seconds)
        self.unallocated = families.unallocated.series(labels.unallocated)
        self._info_head = labels.info_head
        self._info_key: Optional[tuple[Optional[bool], Optional[int]]] = None
        self._info = Series("")

    def info(self, family: Family, record: ProcessRecord) -> Series:
        """gpu_process_info's series, whose status and gpu_memory labels change while the process lives: rendered
        again when what they are made of (status: whether active; gpu_memory: the memory held) changes."""
        key = (record.gpu.active, record.gpu.used_memory)
        if key != self._info_key:
            self._info_key = key
            self._info = family.series(_info_labels(self._info_head, record))
        return self._info


class SeriesCache:
    """The long-running mode's rendered process series, kept from one write to the next (docs/performance.md): a
    process keeps its label values interval after interval, so its series are rendered once, not at every write.

    An entry is keyed by everything its text is made of: the unit, the PID, the command and the whole owner (and,
    for all entries, the label prefix). A process with a new command, a new owner (moved to another cgroup) or a
    PID now another process's with other labels gets series of its own, never the old ones. A write keeps only
    the entries it used: nothing stays for processes gone."""

    __slots__ = ("_earlier", "label_prefix", "processes")

    def __init__(self) -> None:
        self.label_prefix: Optional[str] = None
        self.processes: dict[tuple[str, str, int, str, Owner], _ProcessSeries] = {}  # the last write's
        self._earlier: dict[tuple[str, str, int, str, Owner], _ProcessSeries] = {}

    def begin(self, label_prefix: str) -> None:
        """A new write: the last one's entries may be used, those of another label prefix may not."""
        self._earlier = self.processes if label_prefix == self.label_prefix else {}
        self.label_prefix = label_prefix
        self.processes = {}

    def series(self, record: ProcessRecord, families: _ReportFamilies) -> _ProcessSeries:
        device = record.gpu.device
        key = (device.label, device.uuid, record.gpu.pid, record.host.name, record.owner)
        entry = self._earlier.get(key)
        if entry is None:
            entry = _ProcessSeries(_ProcessLabels(record), families)
        self.processes[key] = entry
        return entry

    def end(self) -> None:
        self._earlier = {}


def _by_memory(record: ProcessRecord) -> tuple[int, int]:
    return (-(record.gpu.used_memory or 0), record.gpu.pid)


def _by_labels(use: AllocationUse) -> tuple[str, str, str, str]:
    return (use.namespace, use.pod, use.container, use.target.label)


def _unused_first(use: AllocationUse) -> tuple[bool, float, tuple[str, str, str, str]]:
    """Over the budget, the unused allocations keep their series, the longest unused first."""
    return (use.in_use, -use.idle_seconds, _by_labels(use))


def _report_families(report: Report, cache: Optional[SeriesCache] = None) -> list[Family]:
    f = _ReportFamilies(report.label_prefix, report.command_args)
    if cache is not None:
        cache.begin(report.label_prefix)
    per_device: dict[str, int] = {d.label: 0 for d in report.devices}
    accounted: dict[str, int] = {d.label: 0 for d in report.devices}
    records = list(report.records)
    if len(records) > report.max_process_series:
        ranked = sorted(records, key=_by_memory)
        kept = set(map(id, ranked[: report.max_process_series]))
        over = [r for r in ranked if id(r) not in kept]
        records = [r for r in records if id(r) in kept]
        f.add_aggregate(over, report.ledger)
        f.series_dropped.add((), float(len(over)))
    else:
        f.series_dropped.add((), 0.0)
    if f.command is not None:
        # only here: its rules (five regular expressions) are compiled at import, and command lines are opt-in
        from collector.redact import args_label  # noqa: PLC0415
    for record in records:
        f.add_process(record, cache)
        if f.command is not None:
            f.command.add((record.gpu.device.label, str(record.gpu.pid), record.host.name,
                           args_label(record.host.cmdline)), 1.0)
    if cache is not None:
        cache.end()
    for record in report.records:
        device = record.gpu.device
        per_device[device.label] += 1
        accounted[device.memory_pool or device.label] += record.gpu.used_memory or 0
    for device in report.devices:
        f.add_device(device, per_device[device.label], accounted[device.label])
    f.total.add((), float(sum(per_device.values())))
    by_label = {d.label: d for d in report.devices}
    for label, activity in sorted(report.activity.items()):
        if label in by_label:
            f.add_activity(by_label[label], activity)
    f.add_run_facts(report)
    f.add_accounting(report)
    if report.allocations is not None:
        f.add_allocations(report.allocations, max(0, report.max_process_series - len(records)))
    return [*_self_families(True, report.timestamp, report.duration, report.driver_version), *f.declared]
