"""One collection: discover (NVML) -> describe (/proc) -> attribute -> render. Returns the file and the next state.

Nothing here writes: the caller writes the file, and saves the state only once the file is written.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Callable, Optional

from collector import nvml, procfs
from collector.attribution import Attributor
from collector.metrics import DEFAULT_MAX_PROCESS_SERIES, Report, render, render_failure
from collector.model import GpuProcess, HostProcess, ProcessRecord
from collector.state import State, process_key

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Options:
    host_root: str = "/"
    state_dir: str = "/var/lib/gpu-proc-collector"
    devices: Optional[frozenset[int]] = None
    pod_resources_socket: Optional[str] = None
    pod_resources_timeout: float = 10.0
    resource_names: tuple[str, ...] = ()
    label_prefix: str = ""
    command_args: bool = False  # export redacted command lines (gpu_process_command_info)
    max_process_series: int = DEFAULT_MAX_PROCESS_SERIES  # per-process series per node; beyond it, aggregated


@dataclass(frozen=True)
class Outcome:
    text: bytes
    ok: bool
    state: State  # what to save once the file is written


def collect(options: Options, previous: State, clock: Callable[[], float] = time.time) -> Outcome:
    started = time.monotonic()
    now = clock()

    def failed(reason: str, driver_version: str = "") -> Outcome:
        log.error("collection failed: %s", reason)
        text = render_failure(previous.last_success, time.monotonic() - started, driver_version)
        return Outcome(text=text, ok=False, state=previous)

    try:
        snapshot = nvml.read_snapshot(options.devices, previous.last_seen_us, int(now * 1_000_000))
    except nvml.NvmlUnavailable as err:
        return failed(str(err))
    if snapshot.failed_gpus and not snapshot.devices:
        reasons = "; ".join(f"GPU {f.index}: {f.reason}" for f in snapshot.failed_gpus)
        return failed(f"every GPU failed ({reasons})", snapshot.driver_version)

    procfs.use_host_root(options.host_root)
    hosts, dropped = _describe(snapshot.processes, options.command_args)
    attributor = Attributor(options, snapshot.devices)
    last_active: dict[str, float] = {}
    records = []
    for proc in snapshot.processes:
        host = hosts.get(proc.pid)
        if host is None:
            continue
        owner, unallocated = attributor.attribute(host, proc.device)
        idle = _idle_seconds(proc, host, now, previous.last_active, last_active)
        records.append(ProcessRecord(gpu=proc, host=host, owner=owner, idle_seconds=idle, unallocated=unallocated))

    # GPUs not read this run (failed, filtered out) keep their timestamps for when they come back.
    last_seen = {**previous.last_seen_us, **snapshot.last_seen_us}
    report = Report(
        driver_version=snapshot.driver_version,
        devices=snapshot.devices,
        failed_gpus=snapshot.failed_gpus,
        records=records,
        dropped=dropped,
        timestamp=now,
        duration=time.monotonic() - started,
        label_prefix=options.label_prefix,
        command_args=options.command_args,
        max_process_series=options.max_process_series,
        extra=attributor.self_metrics(),
    )
    return Outcome(
        text=render(report),
        ok=True,
        state=State(last_success=now, last_seen_us=last_seen, last_active=last_active),
    )


def _describe(processes: Collection[GpuProcess], with_cmdline: bool) -> tuple[dict[int, HostProcess], dict[str, int]]:
    """Reads /proc once per PID. A PID that is not there (it exited, or a driver bug garbled the list) is
    dropped and counted: never a made-up process."""
    hosts: dict[int, HostProcess] = {}
    missing: set[int] = set()
    for proc in processes:
        if proc.pid in hosts or proc.pid in missing:
            continue
        host = procfs.describe(proc.pid, with_cmdline)
        if host is None:
            missing.add(proc.pid)
        else:
            hosts[proc.pid] = host
    if missing:
        log.info("PIDs listed by NVML but not under /proc (exited, or a garbled list): %s",
                 ",".join(map(str, sorted(missing)[:20])))
    return hosts, {"pid_not_found": sum(1 for p in processes if p.pid in missing)}


def _idle_seconds(
    proc: GpuProcess, host: HostProcess, now: float, before: Mapping[str, float], after: dict[str, float]
) -> Optional[float]:
    if proc.active is None:
        return None
    key = process_key(proc.device.uuid, proc.pid, host.start_time)
    last = now if proc.active else before.get(key, now)
    last = min(last, now)  # the clock may have stepped back since that run
    after[key] = last
    return now - last
