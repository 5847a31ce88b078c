"""`gpu-proc-collector --check`: can this host run the collector, and will its metrics be served?

Why it exists: a run reports trouble after the fact, one journal line per problem, and some trouble never fails a
run at all: node_exporter reading another textfile directory, persistence mode off (every timer run then pays the
driver's initialisation), a kubelet socket that stopped answering. The file is written and nobody looks. The check
asks each question a run depends on, now: for an operator on a new host, and for the Ansible role's verification
after an install (`--check --expect-gpus N`).

Output: one line per finding on stdout, `ok: ...`, `warning: ...` or `error: ...`; exit 1 if any is an error, else
0 (warnings do not fail). It uses the run's settings (config file and options) and leaves a running service alone:
no metrics file, no run lock, no state; its only writes are a temporary file created and removed in the textfile
and state directories. Past the run's deadline (a hung NVML call) it says so and exits 1.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from collections.abc import Collection, Iterable, Sequence
from typing import NamedTuple, Optional

from collector import check_node_exporter, nvml
from collector.attribution import podresources, runtimes
from collector.nvml import inventory
from collector.settings import Settings

EXIT_OK, EXIT_FAILED = 0, 1
PROBE_PREFIX = ".gpu-proc-collector-check."  # not *.prom: node_exporter never reads it
RUNTIME_NAMES = {"containerd": "containerd", "k3s": "k3s containerd", "microk8s": "microk8s containerd",
                 "crio": "CRI-O", "docker": "docker", "pod-logs": "kubelet pod log"}


class Finding(NamedTuple):
    level: str  # ok, warning, error
    message: str

    def __str__(self) -> str:
        return f"{self.level}: {self.message}"


def ok(message: str) -> Finding:
    return Finding("ok", message)


def warning(message: str) -> Finding:
    return Finding("warning", message)


def error(message: str) -> Finding:
    return Finding("error", message)


def _count(n: int, singular: str, plural: str = "") -> str:
    return f"{n} {singular if n == 1 else plural or singular + 's'}"


# ---- NVML and the GPUs ----


def gpus(devices: Optional[Collection[int]], expect_gpus: Optional[int]) -> list[Finding]:
    try:
        found = inventory.read()
    except nvml.NvmlUnavailable as err:
        return [error(str(err))]  # "NVML init failed: Driver Not Loaded", as a run says it
    out = [ok(f"NVML initialised, driver version {found.driver_version}")]
    summary = f"{_count(len(found.gpus), 'GPU')} and {_count(sum(g.mig_devices for g in found.gpus), 'MIG device')}"
    if expect_gpus is not None and len(found.gpus) != expect_gpus:
        out.append(error(f"{summary}, expected {_count(expect_gpus, 'GPU')} (--expect-gpus {expect_gpus})"))
    elif expect_gpus is None and not found.gpus:
        out.append(warning(f"{summary}: NVML lists no GPU"))
    else:
        out.append(ok(summary + (f", as expected (--expect-gpus {expect_gpus})" if expect_gpus is not None else "")))
    for gpu in found.gpus:
        if gpu.error:
            out.append(error(f"GPU {gpu.index}{f' ({gpu.uuid})' if gpu.uuid else ''} cannot be read: {gpu.error}"))
            continue
        mig = f"MIG enabled, {_count(gpu.mig_devices, 'MIG device')}" if gpu.mig_enabled else "MIG disabled"
        skipped = "" if devices is None or gpu.index in devices else ", not monitored (--devices)"
        out.append(ok(f"GPU {gpu.index}: {gpu.name}, {gpu.uuid}, {mig}{skipped}"))
    missing = sorted(set(devices or ()) - {gpu.index for gpu in found.gpus})
    if missing:
        out.append(warning(f"--devices names GPUs this host does not have: {','.join(map(str, missing))}"))
    return out + persistence([gpu for gpu in found.gpus if not gpu.error])


def mig_capability_nodes(host_root: str) -> list[Finding]:
    """Read before NVML is initialised: this process's own NVML (root, without the unit's NoNewPrivileges=) would
    create the missing nodes while listing the MIG devices, and hide what the unit will meet."""
    instances, missing = nvml.missing_capability_nodes(host_root)
    if missing:
        return [warning(nvml.describe_missing_nodes(missing))]
    if instances:
        return [ok(f"MIG capability device nodes present for {_count(instances, 'GPU or compute instance')} "
                   "(/dev/nvidia-caps)")]
    return []


def persistence(readable: Sequence[inventory.GpuInventory]) -> list[Finding]:
    out = [warning(f"GPU {gpu.index}: persistence mode is off: every timer run pays the driver's initialisation "
                   "(seconds on some hosts); enable it (nvidia-persistenced, or nvidia-smi -pm 1)")
           for gpu in readable if gpu.persistence_mode is False]
    out += [ok(f"GPU {gpu.index}: persistence mode is not supported on this platform (nothing to enable)")
            for gpu in readable if gpu.persistence_mode is None]
    enabled = [str(gpu.index) for gpu in readable if gpu.persistence_mode]
    if enabled:
        where = "every GPU" if len(enabled) == len(readable) else f"GPU{'s' if len(enabled) > 1 else ''} " + \
            ", ".join(enabled)
        out.insert(0, ok(f"persistence mode enabled on {where}"))
    return out


# ---- kubelet and the container runtimes ----


def pod_resources(settings: Settings) -> Finding:
    path = settings.socket
    if not os.path.lexists(path):
        return ok(f"not a Kubernetes node: no pod-resources socket at {path}")
    try:
        response = podresources.list_pod_resources(path, settings.pod_resources_timeout)
    except podresources.PodResourcesUnavailable as err:
        return warning(f"kubelet's pod-resources socket {path} does not answer: {err} (runs then attribute pods "
                       "without kubelet's allocations)")
    with_gpus = len(podresources.allocations(response, settings.resource_names))
    return ok(f"kubelet's pod-resources socket {path} answered: {_count(len(response.pod_resources), 'pod')}, "
              f"{_count(with_gpus, 'container')} with GPUs")


def _present(path: str) -> bool:
    """False only when nothing is there; a path that cannot even be looked at is present (and unreadable)."""
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True
    return True


def runtime_dirs(host_root: str) -> list[Finding]:
    out = []
    for source, relative in runtimes.METADATA_DIRS:
        path = os.path.join(host_root, relative)
        if not _present(path):
            continue
        name = RUNTIME_NAMES.get(source, source)
        try:
            with os.scandir(path) as entries:
                count = sum(1 for _ in entries)
        except OSError as err:
            out.append(error(f"{name} directory {path} cannot be listed: {err.strerror or err}"))
        else:
            out.append(ok(f"{name} directory {path} readable ({_count(count, 'entry', 'entries')})"))
    if not out:
        names = ", ".join(dict.fromkeys(RUNTIME_NAMES.get(source, source) for source, _ in runtimes.METADATA_DIRS))
        out.append(ok(f"no container runtime directory under {host_root} ({names}): owners come from cgroups only"))
    return out


# ---- the textfile and state directories ----


def _probe(directory: str, what: str) -> Finding:
    """Creates and removes a temporary file in directory: whether a run could write there, on any filesystem and
    as any user (root ignores mode bits, not a read-only mount)."""
    if not os.path.isdir(directory):
        return error(f"{what} {directory} {'is not a directory' if os.path.lexists(directory) else 'does not exist'}")
    try:
        fd, tmp = tempfile.mkstemp(prefix=PROBE_PREFIX, suffix=".tmp", dir=directory)
        os.close(fd)
        os.unlink(tmp)
    except OSError as err:
        return error(f"{what} {directory} is not writable: {err.strerror or err}")
    return ok(f"{what} {directory} is writable")


def state_dir(directory: str) -> Finding:
    if _present(directory):
        return _probe(directory, "state directory")
    parent = os.path.dirname(os.path.abspath(directory))
    while not os.path.isdir(parent) and parent != os.path.dirname(parent):
        parent = os.path.dirname(parent)
    if os.access(parent, os.W_OK):  # access(2) answers EROFS for a read-only mount, even to root
        return ok(f"state directory {directory} does not exist yet: the first run creates it")
    return error(f"state directory {directory} does not exist and cannot be created: {parent} is not writable")


def textfile(settings: Settings) -> list[Finding]:
    """The textfile directory, then what node_exporter reads and serves (collector/check_node_exporter.py)."""
    out = [] if settings.textfile_dir is None else [_probe(settings.textfile_dir, "textfile directory")]
    return out + [Finding(*finding) for finding in check_node_exporter.findings(settings)]


# ---- the whole check ----


class _Output:
    """Prints findings as they come; past the deadline (a hung NVML or kubelet call) it prints an error and ends
    the process with exit 1, as nothing can interrupt a C call."""

    def __init__(self, deadline: float) -> None:
        self.failed = False
        self._lock = threading.Lock()
        self._timer = threading.Timer(deadline, self._expired, (deadline,))
        self._timer.daemon = True

    def __enter__(self) -> _Output:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()

    def emit(self, findings: Iterable[Finding]) -> None:
        for finding in findings:
            with self._lock:
                self.failed = self.failed or finding.level == "error"
                print(finding, flush=True)

    def _expired(self, deadline: float) -> None:
        self._lock.acquire()  # held until the process ends: nothing prints after this line
        print(f"error: the check did not finish within {deadline:g} s (--deadline): an NVML or kubelet call hangs",
              flush=True)
        os._exit(EXIT_FAILED)


def run_check(settings: Settings, expect_gpus: Optional[int] = None) -> int:
    """Prints one line per finding; 1 if any is an error, else 0."""
    with _Output(settings.deadline) as output:
        mig_nodes = mig_capability_nodes(settings.host_root)
        output.emit(gpus(settings.devices, expect_gpus))
        output.emit(mig_nodes)
        output.emit([pod_resources(settings)])
        output.emit(runtime_dirs(settings.host_root))
        output.emit(textfile(settings))
        output.emit([state_dir(settings.state_dir)])
    sys.stdout.flush()
    return EXIT_FAILED if output.failed else EXIT_OK
