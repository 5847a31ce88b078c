"""Records passed between the pipeline's stages. Frozen: a stage never edits what an earlier one produced.

Records are typing.NamedTuple, not dataclasses: importing dataclasses and generating a class with it cost a timer
run far more than a NamedTuple does (docs/performance.md). The few mutable ones (accounting's counters, the
state) are plain classes with __slots__ on `Mutable`.

No `from __future__ import annotations` here: with it every field annotation of a NamedTuple is a string, which
typing.NamedTuple compiles (a ForwardRef) at import, about a hundred compile() calls in every run; evaluated, they
are checked at once (docs/performance.md). Every annotation here must therefore run on the oldest Python supported.
"""

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, NamedTuple, Optional

# The default of a record's mapping field: read-only, so the one instance every record shares cannot be changed
# through any of them (a record that needs entries is given a mapping of its own).
EMPTY: Mapping[Any, Any] = MappingProxyType({})


class Mutable:
    """Base of the mutable records: equal when of one class with equal fields, and shown field by field, as the
    dataclasses they replace were. A subclass names its fields in FIELDS, in its __init__'s order, and in
    __slots__."""

    __slots__ = ()
    FIELDS: tuple[str, ...] = ()

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.FIELDS)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, Mutable)
        return self._values() == other._values()

    __hash__ = None  # type: ignore[assignment]  # mutable: unhashable, as a dataclass with eq

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{n}={getattr(self, n)!r}' for n in self.FIELDS)})"


class OwnerKind:
    """Who a process can belong to: the `owner_kind` label's values, named once for the cgroup parser, the
    attribution and the metrics."""

    POD = "pod"  # a Kubernetes pod's container (containerd, CRI-O, cri-dockerd)
    DOCKER = "docker"  # a plain docker container
    PODMAN = "podman"  # a podman container (rootful or rootless)
    CONTAINER = "container"  # a containerd or CRI-O container whose pod its cgroup path does not validly name
    SYSTEMD = "systemd"  # a systemd service
    SLURM = "slurm"  # a Slurm job step
    HOST = "host"  # anything else: a user session, a shell, an unrecognised cgroup
    # The cgroup names a pod, but the runtime's files or kubelet disagree (ATTRIBUTION_CONFLICT_REASONS): the
    # owner is the cgroup's pod UID, never the pod the files name (docs/runtimes-and-cgroups.md, "Trust").
    UNVERIFIED = "unverified"


OWNER_KINDS = (OwnerKind.POD, OwnerKind.DOCKER, OwnerKind.PODMAN, OwnerKind.CONTAINER, OwnerKind.SYSTEMD,
               OwnerKind.SLURM, OwnerKind.HOST, OwnerKind.UNVERIFIED)


class MigInfo(NamedTuple):
    gpu_instance_id: int
    compute_instance_id: int
    profile: str
    parent_uuid: str
    # The instance's share of its GPU's compute: its compute slices ("3g" of "3g.40gb", "1c" of "1c.3g.40gb")
    # over the GPU's (nvmlDeviceGetMaxMigDeviceCount: 7 on A100/H100/H200, 4 on A30). 0 when unknown.
    share: float = 0.0


class Device(NamedTuple):
    """A unit processes run on: a whole GPU, or one MIG instance of a GPU."""

    # the `gpu` label (docs/compatibility.md): "0", or "0_1_2" for GPU 0, GPU instance 1, compute instance 2
    label: str
    index: int  # type: ignore[assignment]  # the physical GPU's NVML index (shadows tuple.index, as meant)
    uuid: str  # GPU-… or MIG-…
    name: str
    memory_total: Optional[int]
    memory_used: Optional[int]
    mig: Optional[MigInfo] = None
    # The physical GPU's minor number (its /dev/nvidia<minor> node; a MIG instance's: its parent's); None when
    # NVML cannot tell. CDI specs and GKE's device ids name GPUs by it.
    minor: Optional[int] = None
    # The label of the unit that reports this unit's memory: its own, or, for a compute instance of a GPU
    # instance split into several, the GPU instance's first compute instance (they share one memory pool).
    memory_pool: str = ""

    @property
    def reports_memory(self) -> bool:
        return self.memory_pool in ("", self.label)

    @property
    def gpu_uuid(self) -> str:
        """The physical GPU's UUID: its own, or a MIG instance's parent's."""
        return self.mig.parent_uuid if self.mig else self.uuid


class FailedGpu(NamedTuple):
    index: int  # type: ignore[assignment]  # shadows tuple.index, as meant
    uuid: str  # "" when NVML could not tell
    reason: str


class GpuProcess(NamedTuple):
    """One PID on one device as NVML lists it, its lists merged (compute, graphics, MPS)."""

    pid: int
    device: Device
    used_memory: Optional[int]  # bytes; None when NVML reports it as not available
    sm_utilization: Optional[float]  # mean SM % over the interval; None where not measurable
    active: Optional[bool]  # SM activity seen in the interval; None where not measurable
    # The long-running mode integrates samples through the interval: SM-busy seconds since window_start (wall
    # time), which the run turns into a percentage of the time the process existed. None in a timer run.
    sm_busy_seconds: Optional[float] = None
    window_start: Optional[float] = None


class DeviceActivity(NamedTuple):
    """What NVML's GPM measured on a whole GPU or one MIG GPU instance between two samples, in percent of that
    GPU's or instance's own resources; None where a metric could not be read."""

    seconds: float  # the interval between the two samples
    sm_util: Optional[float]
    sm_occupancy: Optional[float]
    tensor_active: Optional[float]
    dram_bw_util: Optional[float]


class NvmlSnapshot(NamedTuple):
    driver_version: str
    devices: tuple[Device, ...]
    processes: tuple[GpuProcess, ...]
    failed_gpus: tuple[FailedGpu, ...]
    # Wall-clock time (s) once every process list was read: a PID whose /proc start time is later is a reused PID.
    listed_at: float = 0.0
    # The newest utilisation sample timestamp (µs) per physical GPU UUID, for the next run's query.
    last_seen_us: Mapping[str, int] = EMPTY
    # GPM activity by device label: a whole GPU's, or a MIG GPU instance's under the label of the unit that
    # reports its memory (Device.memory_pool). Absent where GPM is not supported.
    activity: Mapping[str, DeviceActivity] = EMPTY
    # Energy since the driver loaded, in millijoules, by physical GPU UUID (Volta and newer).
    energy_mj: Mapping[str, int] = EMPTY


class HostProcess(NamedTuple):
    """What /proc says about a PID."""

    pid: int
    name: str
    start_time: float  # seconds since the epoch (stat starttime + btime); with the PID, names the process across runs
    cgroup: str  # raw /proc/<pid>/cgroup text (a process whose file cannot be read is dropped)
    cmdline: tuple[str, ...] = ()  # read only when the operator opts in to the args label


class Owner(NamedTuple):
    """Who a process belongs to. kind: one of OWNER_KINDS."""

    kind: str = OwnerKind.HOST
    name: str = ""
    pod: str = ""
    namespace: str = ""
    container: str = ""
    pod_uid: str = ""
    container_id: str = ""


class ProcessRecord(NamedTuple):
    """A GPU process described and attributed: what the metrics are rendered from."""

    gpu: GpuProcess
    host: HostProcess
    owner: Owner
    idle_seconds: Optional[float] = None
    # True: on a device kubelet did not allocate to it; None: not known (no pod-resources answer, not a pod's
    # process on an unallocated device)
    unallocated: Optional[bool] = None
    sm_seconds_total: Optional[float] = None  # SM-busy seconds since the collector first saw the process

    @property
    def key(self) -> str:
        return process_key(self.gpu.device.uuid, self.gpu.pid, self.host.start_time)


METADATA_MISS_REASONS = ("corrupt", "not_found")  # why a container's runtime metadata was not usable

# Why a pod or container name was not believed (gpu_proc_collector_attribution_conflicts{reason}), per process:
ATTRIBUTION_CONFLICT_REASONS = (
    "nested_below_container",  # the name stands below another container's own cgroup: that container is the owner
    "untrusted_position",  # below a service, a user's manager or a scope, where no runtime puts one: that unit is
    "cgroup_mismatch",  # the runtime recorded another cgroup for the container (or none): owner_kind unverified
    "pod_uid_mismatch",  # the runtime's file names another pod UID than the cgroup: owner_kind unverified
    "unknown_to_kubelet",  # kubelet's pod-resources answered and does not list the pod: owner_kind unverified
)


class AllocationTarget(NamedTuple):
    """What one allocated device stands for on this host: a whole GPU, one MIG instance, or a MIG GPU instance.

    label: the `gpu` label: the unit's own ("0", "4_1_0"); for a whole GPU in MIG mode its index ("4"); for a GPU
    instance split into several compute instances "<gpu>_<gpu instance>". uuid: the GPU's or MIG instance's UUID;
    the physical GPU's where the target spans several units. units: the labels of the units it covers.
    """

    label: str
    uuid: str
    units: frozenset[str]


# Why a CDI device of a DRA claim could not be placed on this host's GPUs (gpu_proc_collector_cdi_unresolved).
CDI_UNRESOLVED_REASONS = (
    "not_found",  # no spec file under etc/cdi or var/run/cdi defines it
    "unreadable",  # the spec file that would define it cannot be read
    "malformed",  # that spec file is not JSON / YAML, or not shaped like a CDI spec
    "yaml_unsupported",  # that spec file uses YAML the collector's reader does not take (docs/allocation.md)
    "conflict",  # two spec files of the same directory define it
    "unknown_device",  # it names a GPU or MIG capability this run did not read (not monitored, failed, unknown)
    "no_gpu_node",  # a GPU driver's device whose spec names no GPU device node
    "no_cdi_device",  # a GPU driver's claim device that kubelet lists without any CDI device
    "bad_name",  # not a fully qualified CDI name (vendor/class=name)
)


class AllocationUse(NamedTuple):
    """One device kubelet allocated to one container, and whether a process of that container used it this run."""

    namespace: str
    pod: str
    container: str
    target: AllocationTarget
    in_use: bool
    idle_seconds: float  # since the allocation was last seen in use (or first seen), 0 when in use


class AllocationView(NamedTuple):
    """kubelet's allocation as this run saw it: counts per container and resource, use per allocated device."""

    devices: Mapping[tuple[str, str, str, str], int]  # (namespace, pod, container, resource) -> distinct devices
    uses: tuple[AllocationUse, ...]
    cdi_unresolved: Mapping[str, int]  # distinct CDI device names of claims not placed, by reason


class AttributionFacts(NamedTuple):
    """What attribution learnt about its own sources this run, for the self metrics."""

    pod_resources_up: Optional[bool]  # kubelet's List answered; None when it was not needed (no process to check)
    metadata_misses: Mapping[str, int]  # container lookups with no usable runtime file, by reason
    conflicts: Mapping[str, int] = EMPTY  # processes whose cgroup named someone the evidence did not back, by reason


def process_key(gpu_uuid: str, pid: int, start_time: float) -> str:
    """Names a process on a device across runs: the PID with its start time, so a reused PID is a new process."""
    return f"{gpu_uuid}/{pid}/{start_time:.2f}"


MAX_LABEL_CHARS = 1024  # the longest name kept: a label value, and an owner's key in the state (docs/exposition.md)
NAME_SUFFIX_HEX = 16  # the suffix of an altered name: 64 bits of SHA-256, past any search for a second name
_SURROGATE = "[\ud800-\udfff]"


def safe_name(value: str) -> str:
    """Any name from a source the collector does not control (a runtime file, kubelet, a cgroup) as the collector
    keeps and exports it: encodable as UTF-8, at most MAX_LABEL_CHARS long, and apart from every other name
    (docs/exposition.md, "Names").

    A name that fits and holds no lone surrogate is kept as it is. Any other has its surrogates (undecodable
    bytes, JSON escapes in a hostile file) replaced by U+FFFD, is cut to leave room, and gets `~` and the first 16
    hex digits of the SHA-256 of the whole original: names that differ only past the limit, or only in their
    surrogates, stay two. What it returns fits and holds no surrogate, so it is its own safe name: a stage may
    apply it to a name an earlier stage made safe already, and nothing changes."""
    if len(value) <= MAX_LABEL_CHARS and (value.isascii() or not has_surrogates(value)):  # ASCII: no surrogate
        return value
    import hashlib  # noqa: PLC0415 - only for a name to alter: its OpenSSL library costs every run 3 MiB and ms

    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:NAME_SUFFIX_HEX]
    clean = re.sub(_SURROGATE, "\ufffd", value) if has_surrogates(value) else value
    return f"{clean[:MAX_LABEL_CHARS - 1 - NAME_SUFFIX_HEX]}~{digest}"


def has_surrogates(value: str) -> bool:
    """Whether the text holds lone surrogates, which UTF-8 cannot encode."""
    return not value.isascii() and re.search(_SURROGATE, value) is not None
