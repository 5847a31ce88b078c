"""Simulated GPU hosts: a fake host tree shaped like the real files, and the stand-in NVML scenario that goes with it.

Used by the tests, the benchmark and the README's demo (tests/demo.py). The /proc files follow
proc(5) as the kernel writes them: `stat` with 52 fields and `starttime` in field 22, NUL-separated `cmdline`,
`comm` with a trailing newline, and `/proc/stat` with `btime`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

BTIME = 1764460000  # boot time of the simulated host (seconds since the epoch)
CLOCK_TICKS = 100
GIB = 1024**3
H100 = "NVIDIA H100 80GB HBM3"
H100_MEMORY = 80 * GIB

Name = Union[str, bytes]


def gpu_uuid(index: int) -> str:
    return f"GPU-{index:08x}-1111-2222-3333-{index:012x}"


def mig_uuid(index: int, slot: int) -> str:
    return f"MIG-{index:08x}-{slot:04x}-4444-5555-{index * 16 + slot:012x}"


def _bytes(text: Name) -> bytes:
    return text if isinstance(text, bytes) else text.encode()


@dataclass
class HostTree:
    """A directory laid out like a host's root: proc/, run/, var/ ..."""

    root: Path

    def __post_init__(self) -> None:
        (self.root / "proc").mkdir(parents=True, exist_ok=True)
        (self.root / "proc" / "stat").write_text(
            "cpu  100 0 100 1000 0 0 0 0 0 0\n"
            f"btime {BTIME}\nprocesses 4242\nprocs_running 1\nprocs_blocked 0\n"
        )

    def add_process(
        self,
        pid: int,
        comm: Name = "python3",
        cmdline: Optional[Sequence[Name]] = None,
        cgroup: str = "0::/user.slice/user-1000.slice/session-1.scope\n",
        start_ticks: int = 123456,
    ) -> None:
        d = self.root / "proc" / str(pid)
        d.mkdir(parents=True, exist_ok=True)
        name = _bytes(comm)
        args = [_bytes(a) for a in (cmdline if cmdline is not None else [comm])]
        fields = ["S", "1", str(pid), str(pid), "0", "-1", "4194304"] + ["0"] * 12
        fields += [str(start_ticks), "1000000", "100"] + ["0"] * 28  # starttime is field 22, after 19 others
        (d / "stat").write_bytes(b"%d (%s) " % (pid, name) + " ".join(fields).encode() + b"\n")
        (d / "comm").write_bytes(name[:15] + b"\n")
        (d / "cmdline").write_bytes(b"\0".join(args) + b"\0")
        (d / "cgroup").write_text(cgroup)
        (d / "status").write_bytes(b"Name:\t%s\nState:\tS (sleeping)\nPid:\t%d\nUid:\t0\t0\t0\t0\n" % (name, pid))

    def show_real_process(self, pid: int) -> None:
        """A real process in this host's /proc: its entry is the kernel's (a link to /proc/<pid>)."""
        (self.root / "proc").mkdir(parents=True, exist_ok=True)
        (self.root / "proc" / str(pid)).symlink_to(f"/proc/{pid}")

    def remove_process(self, pid: int) -> None:
        d = self.root / "proc" / str(pid)
        for f in d.iterdir():
            f.unlink()
        d.rmdir()

    def write(self, relative: str, content: Union[str, bytes]) -> Path:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        return path


def proc(pid: int, used: Optional[int] = GIB) -> dict[str, Any]:
    """A process list entry; used=None plays NVML's 'not available' memory."""
    return {"pid": pid, "used_memory": used}


@dataclass
class Gpu:
    index: int
    compute: list[dict[str, Any]] = field(default_factory=list)
    graphics: list[dict[str, Any]] = field(default_factory=list)
    mps: list[dict[str, Any]] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    mig: Optional[list[dict[str, Any]]] = None  # instances, see mig_instance()
    name: str = H100
    memory_total: int = H100_MEMORY
    extra_used: int = 512 * 1024**2  # driver and context memory no process accounts for
    # Optional driver shapes (tests/fake_nvml/README.md, docs/nvml-driver.md); None or empty: not in the scenario.
    memory_reserved: int = 0  # driver-reserved memory: in v1's used, apart in v2
    utilization_shape: Optional[str] = None  # "latest" (the stand-in's default) or "buffered"
    utilization_size_answer: Optional[int] = None  # a fixed answer to the size query (go-nvml #11: 100)
    utilization_fill_count: Optional[str] = None  # "written" (default) or "unchanged" (nvtop #110)
    utilization_garbage: list[dict[str, Any]] = field(default_factory=list)
    gpm: Optional[dict[str, Any]] = None  # {"supported": True, "sm_util": 63.5, ...}
    energy_mj: Optional[int] = None
    energy_mj_per_s: float = 0.0
    energy_epoch_s: Optional[float] = None  # None: the scenario file's mtime (moves whenever it is rewritten)
    gpu_instances: Optional[list[dict[str, Any]]] = None  # MIG GPU instances' shared memory, see gpu_instance()
    ci_lists_gi_processes: bool = False
    minor: Optional[int] = None  # /dev/nvidia<minor>; the stand-in's default is the index
    persistence_mode: Optional[int] = None  # 0: disabled; the stand-in's default is 1, enabled

    def scenario(self) -> dict[str, Any]:
        listed = [p.get("used_memory") or 0 for p in self.compute + self.graphics + self.mps]
        if self.mig is not None:
            listed += [i["memory"]["used"] for i in self.mig if "memory" in i]
        listed += [g["memory"]["used"] for g in self.gpu_instances or [] if "memory" in g]
        device: dict[str, Any] = {
            "index": self.index,
            "uuid": gpu_uuid(self.index),
            "name": self.name,
            "memory": {"total": self.memory_total, "used": sum(listed) + self.extra_used},
            "processes": {"compute": self.compute, "graphics": self.graphics, "mps": self.mps},
            "process_samples": self.samples,
        }
        if self.errors:
            device["errors"] = self.errors
        if self.mig is not None:
            device["mig"] = {"mode": 1, "instances": self.mig}
            if self.gpu_instances is not None:
                device["mig"]["gpu_instances"] = self.gpu_instances
            if self.ci_lists_gi_processes:
                device["mig"]["ci_lists_gi_processes"] = True
        if self.memory_reserved:
            device["memory"]["reserved"] = self.memory_reserved
        if self.minor is not None:
            device["minor"] = self.minor
        if self.persistence_mode is not None:
            device["persistence_mode"] = self.persistence_mode
        optional = {"utilization_shape": self.utilization_shape,
                    "utilization_size_answer": self.utilization_size_answer,
                    "utilization_fill_count": self.utilization_fill_count, "gpm": self.gpm}
        device.update({k: v for k, v in optional.items() if v is not None})
        if self.utilization_garbage:
            device["utilization_garbage"] = self.utilization_garbage
        if self.energy_mj is not None:
            device["energy_mj"] = self.energy_mj
            device["energy_mj_per_s"] = self.energy_mj_per_s
            if self.energy_epoch_s is not None:
                device["energy_epoch_s"] = self.energy_epoch_s
        return device


def mig_instance(
    index: int, *, slot: int, gi: int, ci: int, profile: str, total_gib: int, compute: Iterable[dict[str, Any]] = ()
) -> dict[str, Any]:
    procs = list(compute)
    return {
        "slot": slot,
        "gpu_instance_id": gi,
        "compute_instance_id": ci,
        "uuid": mig_uuid(index, slot),
        "profile": profile,
        "memory": {"total": total_gib * GIB, "used": sum(p.get("used_memory") or 0 for p in procs)},
        "processes": {"compute": procs},
    }


def gpu_instance(gi: int, *, total_gib: int, used: int = 0, gpm: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """A MIG GPU instance's shared part: the memory (and GPM values) all its compute instances report."""
    out: dict[str, Any] = {"gpu_instance_id": gi, "memory": {"total": total_gib * GIB, "used": used}}
    if gpm is not None:
        out["gpm"] = gpm
    return out


def compute_instance(
    index: int, *, slot: int, gi: int, ci: int, profile: str, compute: Iterable[dict[str, Any]] = ()
) -> dict[str, Any]:
    """A MIG device (compute instance) without memory of its own: it reports its GPU instance's, see gpu_instance()."""
    return {"slot": slot, "gpu_instance_id": gi, "compute_instance_id": ci, "uuid": mig_uuid(index, slot),
            "profile": profile, "processes": {"compute": list(compute)}}


def scenario(gpus: Iterable[Gpu], **top: Any) -> dict[str, Any]:
    return {"driver_version": "580.95.05", **top, "devices": [g.scenario() for g in gpus]}


def write_scenario(path: Path, document: dict[str, Any]) -> Path:
    path.write_text(json.dumps(document, indent=1))
    return path


def write_podman_store(tree: HostTree, containers: dict[str, str], *, root: str = "var/lib/containers/storage",
                       driver: str = "overlay", listing: str = "containers.json",
                       cgroup_parent: str = "machine.slice") -> Path:
    """podman's containers in a containers/storage store under tree: `<root>/<driver>-containers/<listing>` as
    go.podman.io/storage writes it (id, names, image, layer, metadata: libpod's RuntimeContainerMetadata as a JSON
    string), and each container's userdata/config.json, whose annotations carry no name.
    containers: container id -> name. root: rootful graph root, or a user's ~/.local/share/containers/storage.
    cgroup_parent: the slice podman passes to the runtime with the systemd manager, as linux.cgroupsPath
    `<slice>:libpod:<id>` (libpod getOCICgroupPath; rootless: user.slice)."""
    entries = []
    for cid, name in containers.items():
        metadata = {"image-name": "quay.io/vllm/vllm-openai:latest", "image-id": "f" * 64, "name": name,
                    "created-at": BTIME + 600}
        entries.append({"id": cid, "names": [name], "image": "f" * 64, "layer": cid[::-1],
                        "metadata": json.dumps(metadata), "created": "2025-12-01T10:00:00.000000000Z",
                        "flags": {"MountLabel": "", "ProcessLabel": ""}})
        spec = {"ociVersion": "1.2.0", "annotations": {"io.container.manager": "libpod",
                                                        "org.opencontainers.image.stopSignal": "15"},
                "linux": {"cgroupsPath": f"{cgroup_parent}:libpod:{cid}"}}
        tree.write(f"{root}/{driver}-containers/{cid}/userdata/config.json", json.dumps(spec))
    return tree.write(f"{root}/{driver}-containers/{listing}", json.dumps(entries))


def update_scenario(path: Path, document: dict[str, Any]) -> Path:
    """Rewrites the scenario under a caller that has NVML initialised (the stand-in reloads a changed file live,
    tests/fake_nvml/README.md): atomically, so no call reads half a file, and with an mtime at least 1 ns past the
    last one, so two rewrites within one tick of the filesystem's clock still differ."""
    previous = path.stat().st_mtime_ns if path.exists() else 0
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(document, indent=1))
    mtime = max(time.time_ns(), previous + 1)
    os.utime(tmp, ns=(mtime, mtime))
    os.replace(tmp, path)
    return path


def set_fault(path: Path, error: Optional[str], device: Optional[int] = None) -> None:
    """The stand-in's $FAKE_NVML_FAULT_FILE: every NVML call (or, with device, every call on that GPU and its MIG
    devices) fails with error, e.g. "NVML_ERROR_GPU_IS_LOST"; None removes the fault."""
    if error is None:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(error if device is None else f"{error} {device}\n")
    os.replace(tmp, path)
