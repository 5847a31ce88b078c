"""Records passed between the pipeline's stages. Frozen: a stage never edits what an earlier one produced."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple, Optional


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


OWNER_KINDS = (OwnerKind.POD, OwnerKind.DOCKER, OwnerKind.PODMAN, OwnerKind.CONTAINER, OwnerKind.SYSTEMD,
               OwnerKind.SLURM, OwnerKind.HOST)


class MigInfo(NamedTuple):
    gpu_instance_id: int
    compute_instance_id: int
    profile: str
    parent_uuid: str


class Device(NamedTuple):
    """A unit processes run on: a whole GPU, or one MIG instance of a GPU."""

    # the `gpu` label (docs/seed-interface.md): "0", or "0_1_2" for GPU 0, GPU instance 1, compute instance 2
    label: str
    index: int  # type: ignore[assignment]  # the physical GPU's NVML index (shadows tuple.index, as meant)
    uuid: str  # GPU-… or MIG-…
    name: str
    memory_total: Optional[int]
    memory_used: Optional[int]
    mig: Optional[MigInfo] = None
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
    last_seen_us: dict[str, int] = {}  # noqa: RUF012 - records are never changed, so sharing it is safe
    # GPM activity by device label: a whole GPU's, or a MIG GPU instance's under the label of the unit that
    # reports its memory (Device.memory_pool). Absent where GPM is not supported.
    activity: dict[str, DeviceActivity] = {}  # noqa: RUF012
    # Energy since the driver loaded, in millijoules, by physical GPU UUID (Volta and newer).
    energy_mj: dict[str, int] = {}  # noqa: RUF012


class HostProcess(NamedTuple):
    """What /proc says about a PID."""

    pid: int
    name: str
    start_time: float  # seconds since the epoch (stat starttime + btime); with the PID, names the process across runs
    cgroup: str  # raw /proc/<pid>/cgroup text, "" when unreadable
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


METADATA_MISS_REASONS = ("corrupt", "not_found")  # why a container's runtime metadata was not usable


class AttributionFacts(NamedTuple):
    """What attribution learnt about its own sources this run, for the self metrics."""

    pod_resources_up: Optional[bool]  # kubelet's List answered; None when it was not needed (no process to check)
    metadata_misses: Mapping[str, int]  # container lookups with no usable runtime file, by reason
