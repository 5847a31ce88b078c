"""Metric families from records (no I/O). The exposition library writes and escapes every label value."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Optional

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from collector import __version__
from collector.model import Device, FailedGpu, ProcessRecord
from collector.redact import args_label

MIB = 1024 * 1024
DEFAULT_MAX_PROCESS_SERIES = 2000  # sized for 8 GPUs x 7 MIG instances with dozens of processes each

# Seed label sets (DESIGN.md §4): unchanged, so the seed's PromQL and panels work.
SEED_INFO_LABELS = ["gpu", "pid", "command", "pod", "namespace", "container", "status", "gpu_memory"]
SEED_UTIL_LABELS = ["gpu", "pid", "command", "pod", "namespace"]


@dataclass(frozen=True)
class Report:
    """Everything one successful run exposes."""

    driver_version: str
    devices: Sequence[Device]
    failed_gpus: Sequence[FailedGpu]
    records: Sequence[ProcessRecord]
    dropped: Mapping[str, int]
    timestamp: float
    duration: float
    # Native metrics name the Kubernetes labels with this prefix ("k8s_" -> k8s_pod), for scrapes that would
    # otherwise rename pod to exported_pod. The seed metrics always keep the seed names.
    label_prefix: str = ""
    command_args: bool = False
    # Processes beyond this many get no series of their own: the largest memory holders keep theirs, the rest
    # are summed per device and owner (cardinality budget of one node).
    max_process_series: int = DEFAULT_MAX_PROCESS_SERIES
    extra: Sequence[Metric] = field(default_factory=tuple)


def status(record: ProcessRecord) -> str:
    """active: SM activity in the interval; idle: holds memory, no activity; unknown: NVML cannot tell (MIG)."""
    if record.gpu.active is None:
        return "unknown"
    return "active" if record.gpu.active else "idle"


def gpu_memory_label(used: Optional[int]) -> str:
    return "N/A" if used is None else f"{used // MIB}MiB"


def memory_percent(used: Optional[int], total: Optional[int]) -> Optional[float]:
    if used is None or not total:
        return None
    return round(100.0 * used / total, 4)


class _Families(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


MAX_LABEL_CHARS = 1024
_SURROGATE = re.compile("[\ud800-\udfff]")


def label_value(value: str) -> str:
    """Any text as a label value: lone surrogates (from undecodable bytes, or JSON escapes in a hostile runtime
    file) become U+FFFD, which UTF-8 can encode; over-long values are cut. Escaping is the library's job.
    Applied to the names from runtime files and kubelet; names from /proc are cleaned where they are read
    (procfs.printable, which maps undecodable bytes one for one)."""
    if not value.isascii():
        value = _SURROGATE.sub("\ufffd", value)
    return value[:MAX_LABEL_CHARS]


def exposition(families: Iterable[Metric]) -> bytes:
    """Text exposition of the families, from a registry made for this run only."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))
    return generate_latest(registry)


def self_metrics(up: bool, last_success: Optional[float], duration: float, driver_version: str) -> list[Metric]:
    up_family = GaugeMetricFamily("gpu_proc_collector_up", "1 if the last collection succeeded, 0 if it failed.")
    up_family.add_metric([], 1.0 if up else 0.0)
    families: list[Metric] = [up_family]
    if last_success is not None:
        families.append(GaugeMetricFamily(
            "gpu_proc_collector_last_success_timestamp_seconds",
            "Unix time at which the last successful collection started.", value=last_success))
    families.append(GaugeMetricFamily(
        "gpu_proc_collector_duration_seconds", "Seconds the last collection took.", value=round(duration, 6)))
    build = GaugeMetricFamily("gpu_proc_collector_build_info", "Collector version and NVIDIA driver version.",
                              labels=["version", "driver_version"])
    build.add_metric([__version__, driver_version], 1.0)
    families.append(build)
    return families


def render_failure(last_success: Optional[float], duration: float, driver_version: str = "") -> bytes:
    """The file of a failed collection: no process series, so nothing stale looks alive."""
    return exposition(self_metrics(False, last_success, duration, driver_version))


def render(report: Report) -> bytes:
    return exposition(_report_families(report))


class _ReportFamilies:
    """The families of a successful run, filled record by record."""

    def __init__(self, label_prefix: str) -> None:
        k8s = [label_prefix + name for name in ("pod", "namespace", "container")]
        self.count = GaugeMetricFamily("gpu_process_count", "Processes on the GPU or MIG instance.", labels=["gpu"])
        self.total = GaugeMetricFamily("gpu_total_processes", "Processes on all monitored GPUs and MIG instances.")
        self.info = GaugeMetricFamily("gpu_process_info", "A process using a GPU or MIG instance (value 1).",
                                      labels=SEED_INFO_LABELS)
        self.util = GaugeMetricFamily(
            "gpu_process_utilization",
            "Percent of the interval since the previous run the process kept the GPU's SMs busy (absent on MIG).",
            labels=SEED_UTIL_LABELS)
        self.mem_util = GaugeMetricFamily(
            "gpu_process_memory_utilization",
            "GPU memory held by the process, as percent of its GPU's or MIG instance's total.",
            labels=SEED_UTIL_LABELS)
        self.mem_bytes = GaugeMetricFamily(
            "gpu_process_memory_bytes", "GPU memory held by the process.",
            labels=["gpu", "gpu_uuid", "pid", "command", *k8s, "owner_kind", "owner"])
        self.idle = GaugeMetricFamily(
            "gpu_process_idle_seconds",
            "Seconds since the process last showed SM activity while holding GPU memory (0 when active).",
            labels=["gpu", "gpu_uuid", "pid", "command", *k8s])
        self.unallocated = GaugeMetricFamily(
            "gpu_process_unallocated",
            "1 if the process runs on a GPU or MIG instance that kubelet did not allocate to its container.",
            labels=["gpu", "gpu_uuid", "pid", *k8s])
        self.device_info = GaugeMetricFamily(
            "gpu_device_info", "A monitored GPU or MIG instance (value 1).",
            labels=["gpu", "gpu_uuid", "name", "mig_profile", "parent_gpu_uuid"])
        self.device_total = GaugeMetricFamily(
            "gpu_device_memory_total_bytes", "Memory of the GPU or MIG instance.", labels=["gpu", "gpu_uuid"])
        self.device_used = GaugeMetricFamily(
            "gpu_device_memory_used_bytes", "Memory in use on the GPU or MIG instance.", labels=["gpu", "gpu_uuid"])
        self.unattributed = GaugeMetricFamily(
            "gpu_device_unattributed_memory_bytes",
            "Memory in use on the GPU or MIG instance that no listed process accounts for.",
            labels=["gpu", "gpu_uuid"])
        self.gpu_up = GaugeMetricFamily(
            "gpu_proc_collector_gpu_up", "1 if the GPU was read this run, 0 if it failed.", labels=["gpu", "gpu_uuid"])
        self.dropped = GaugeMetricFamily(
            "gpu_proc_collector_processes_dropped",
            "PIDs NVML listed that this run could not report, by reason.", labels=["reason"])
        self.command = GaugeMetricFamily(
            "gpu_process_command_info", "The process's command line, secrets redacted (opt-in; value 1).",
            labels=["gpu", "pid", "command", "args"])
        owner_labels = ["gpu", "gpu_uuid", "owner_kind", "owner", *k8s[:2]]
        self.aggregated_memory = GaugeMetricFamily(
            "gpu_process_aggregated_memory_bytes",
            "GPU memory of the processes beyond the per-node series budget, summed per device and owner.",
            labels=owner_labels)
        self.aggregated_count = GaugeMetricFamily(
            "gpu_process_aggregated_count",
            "Processes beyond the per-node series budget, counted per device and owner.", labels=owner_labels)
        self.series_dropped = GaugeMetricFamily(
            "gpu_proc_collector_series_dropped",
            "Processes that got no series of their own this run (over the per-node budget; see the aggregates).")

    def add_aggregate(self, records: Sequence[ProcessRecord]) -> None:
        memory: dict[tuple[str, ...], float] = {}
        count: dict[tuple[str, ...], float] = {}
        for record in records:
            o, d = record.owner, record.gpu.device
            key = tuple(label_value(v) for v in (d.label, d.uuid, o.kind, o.name, o.pod, o.namespace))
            memory[key] = memory.get(key, 0.0) + float(record.gpu.used_memory or 0)
            count[key] = count.get(key, 0.0) + 1
        for key in sorted(count):
            self.aggregated_memory.add_metric(list(key), memory[key])
            self.aggregated_count.add_metric(list(key), count[key])

    def add_process(self, record: ProcessRecord) -> None:
        proc, device, owner = record.gpu, record.gpu.device, record.owner
        gpu, pid, command = device.label, str(proc.pid), record.host.name  # cleaned by procfs.printable
        pod, namespace, container, owner_name = (label_value(v) for v in (owner.pod, owner.namespace,
                                                                           owner.container, owner.name))
        k8s = [pod, namespace, container]
        self.info.add_metric([gpu, pid, command, *k8s, status(record), gpu_memory_label(proc.used_memory)], 1.0)
        seed_labels = [gpu, pid, command, pod, namespace]
        if proc.sm_utilization is not None:
            self.util.add_metric(seed_labels, round(proc.sm_utilization, 4))
        percent = memory_percent(proc.used_memory, device.memory_total)
        if percent is not None:
            self.mem_util.add_metric(seed_labels, percent)
        if proc.used_memory is not None:
            self.mem_bytes.add_metric([gpu, device.uuid, pid, command, *k8s, owner.kind, owner_name],
                                      float(proc.used_memory))
        if record.idle_seconds is not None:
            self.idle.add_metric([gpu, device.uuid, pid, command, *k8s], round(record.idle_seconds, 3))
        if record.unallocated is not None:
            self.unallocated.add_metric([gpu, device.uuid, pid, *k8s], 1.0 if record.unallocated else 0.0)

    def add_device(self, device: Device, processes: int, accounted: int) -> None:
        ids = [device.label, device.uuid]
        self.count.add_metric([device.label], float(processes))
        self.device_info.add_metric([*ids, device.name, device.mig.profile if device.mig else "",
                                     device.mig.parent_uuid if device.mig else ""], 1.0)
        if device.memory_total is not None:
            self.device_total.add_metric(ids, float(device.memory_total))
        if device.memory_used is not None:
            self.device_used.add_metric(ids, float(device.memory_used))
            self.unattributed.add_metric(ids, float(max(0, device.memory_used - accounted)))


def _by_memory(record: ProcessRecord) -> tuple[int, int]:
    return (-(record.gpu.used_memory or 0), record.gpu.pid)


def _report_families(report: Report) -> Iterator[Metric]:
    f = _ReportFamilies(report.label_prefix)
    per_device: dict[str, int] = {d.label: 0 for d in report.devices}
    accounted: dict[str, int] = {d.label: 0 for d in report.devices}
    records = list(report.records)
    if len(records) > report.max_process_series:
        ranked = sorted(records, key=_by_memory)
        kept = set(map(id, ranked[: report.max_process_series]))
        over = [r for r in ranked if id(r) not in kept]
        records = [r for r in records if id(r) in kept]
        f.add_aggregate(over)
        f.series_dropped.add_metric([], float(len(over)))
    else:
        f.series_dropped.add_metric([], 0.0)
    for record in records:
        f.add_process(record)
        if report.command_args:
            f.command.add_metric([record.gpu.device.label, str(record.gpu.pid), record.host.name,
                                  args_label(record.host.cmdline)], 1.0)
    for record in report.records:
        per_device[record.gpu.device.label] += 1
        accounted[record.gpu.device.label] += record.gpu.used_memory or 0
    for device in report.devices:
        f.add_device(device, per_device[device.label], accounted[device.label])
    f.total.add_metric([], float(sum(per_device.values())))
    for index, uuid in sorted({(d.index, d.gpu_uuid) for d in report.devices}):
        f.gpu_up.add_metric([str(index), uuid], 1.0)
    for failed in report.failed_gpus:
        f.gpu_up.add_metric([str(failed.index), failed.uuid], 0.0)
    for reason, n in sorted(report.dropped.items()):
        f.dropped.add_metric([reason], float(n))

    yield from (f.count, f.total, f.info, f.util, f.mem_util, f.mem_bytes, f.idle, f.unallocated, f.device_info,
                f.device_total, f.device_used, f.unattributed, f.aggregated_memory, f.aggregated_count)
    if report.command_args:
        yield f.command
    yield from self_metrics(True, report.timestamp, report.duration, report.driver_version)
    yield from (f.gpu_up, f.dropped, f.series_dropped)
    yield from report.extra
