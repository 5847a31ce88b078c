"""/proc/<pid>/cgroup text -> who owns the process. Pure: no I/O.

Handles cgroup v1, v2 and hybrid files; the systemd and cgroupfs drivers; kubelet's QoS levels (burstable,
besteffort, and Guaranteed pods directly under kubepods); pod UIDs with dashes, underscores (systemd escaping) or
as 32-hex static-pod hashes; containerd, CRI-O (and its conmon supervisor), cri-dockerd leaves; crun's trailing
`/container`; cgroup-namespace `/../` prefixes; kind-style nesting under kubelet.slice; plain docker and podman;
Slurm v1 and v2 job/step paths; systemd services; user sessions. The patterns are REFERENCE.md §3 fact 39's.
"""

from __future__ import annotations

import functools
import re
from typing import NamedTuple, Optional

H64 = r"[0-9a-f]{64}"
UID = (r"(?P<pod_uid>[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}"
       r"|[0-9a-f]{32})")

# Order matters: conmon before the pod patterns (conmon is the supervisor, not the workload), pods before the
# generic docker/systemd shapes their paths also contain. Each pattern runs only on paths holding its needle.
PATTERNS: tuple[tuple[str, str, re.Pattern[str]], ...] = tuple((name, needle, re.compile(rx)) for name, needle, rx in (
    ("crio_conmon", "crio-conmon-",
     r"kubepods.*?pod" + UID + r".*?crio-conmon-(?P<container_id>" + H64 + r")(?:\.scope)?(?:/|$)"),
    ("k8s_systemd", "kubepods", r"kubepods(?:-(?P<qos>besteffort|burstable))?-pod" + UID + r"\.slice"
                    r"(?:/(?P<runtime>cri-containerd|crio|docker)-(?P<container_id>" + H64 + r")\.scope)?(?:/|$)"),
    ("k8s_cgroupfs", "kubepods", r"kubepods(?:/(?P<qos>besteffort|burstable))?/pod" + UID +
                     r"(?:/(?:(?P<runtime>crio)-)?(?P<container_id>" + H64 + r"))?(?:/|$)"),
    ("docker", "docker", r"(?:^|/)(?:system\.slice/docker-(?P<cid_systemd>" + H64 + r")\.scope|docker/(?P<cid_cgroupfs>"
               + H64 + r"))(?:/|$)"),
    ("podman", "libpod-", r"libpod-(?P<container_id>" + H64 + r")\.scope(?:/|$)"),
    ("slurm_v2", "slurmstepd", r"/(?:(?P<node>[^/]+)_)?slurmstepd\.scope/job_(?P<job>\d+)"
                 r"(?:/step_(?P<step>\d+|batch|extern|interactive))?"),
    ("slurm_v1", "/slurm", r"/slurm(?:_(?P<node>[^/]+))?/uid_(?P<uid>\d+)/job_(?P<job>\d+)"
                 r"(?:/step_(?P<step>\d+|batch|extern|interactive))?"),
    ("systemd_service", ".service", r"^/(?:system\.slice/)?(?:[^/]+\.slice/)*(?P<unit>[^/]+\.service)$"),
    ("user_session", "/user.slice/", r"^/user\.slice/user-(?P<uid>\d+)\.slice/"
                     r"(?:(?P<session>session-[^/]+\.scope)|user@\d+\.service(?:/.*)?)$"),
))

_CGROUPNS_PREFIX = re.compile(r"^(?:/\.\.)+(?=/)")
_QOS = re.compile(r"kubepods[-/](besteffort|burstable)(?:[./]|$)")


class CgroupOwner(NamedTuple):
    """What the cgroup path alone tells. kind: pod, docker, podman, systemd, slurm or host."""

    kind: str
    pod_uid: str = ""
    container_id: str = ""
    runtime: str = ""  # containerd, crio, docker (cri-dockerd); "" when the path does not say
    qos: str = ""  # burstable, besteffort, guaranteed (pods only)
    name: str = ""  # systemd unit, slurm job, user; for conmon "crio-conmon"
    path: str = ""  # the cgroup path that matched


HOST = CgroupOwner(kind="host")


def cgroup_paths(text: str) -> list[str]:
    """The paths of a cgroup file, the unified (v2) line first, then name=systemd, then the other v1 lines."""
    unified, systemd, others = [], [], []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        path = _CGROUPNS_PREFIX.sub("", path.strip())
        if not path.startswith("/"):
            continue
        if hierarchy == "0" and controllers == "":
            unified.append(path)
        elif controllers == "name=systemd":
            systemd.append(path)
        else:
            others.append(path)
    seen: dict[str, None] = dict.fromkeys(unified + systemd + others)  # ordered, unique
    return list(seen)


_RUNTIMES = {"cri-containerd": "containerd", "crio": "crio", "docker": "docker"}


def _qos(path: str) -> str:
    found = _QOS.search(path)
    return found.group(1) if found else "guaranteed"


def _owner(pattern: str, match: re.Match[str], path: str) -> Optional[CgroupOwner]:  # noqa: PLR0911 - one per kind
    g = match.groupdict()
    if pattern in ("crio_conmon", "k8s_systemd", "k8s_cgroupfs"):
        runtime = "crio" if pattern == "crio_conmon" else _RUNTIMES.get(g.get("runtime") or "", "")
        return CgroupOwner(
            kind="pod",
            pod_uid=g["pod_uid"].replace("_", "-"),
            container_id=g.get("container_id") or "",
            runtime=runtime,
            qos=g.get("qos") or _qos(path),
            name="crio-conmon" if pattern == "crio_conmon" else "",
            path=path,
        )
    if pattern == "docker":
        return CgroupOwner(kind="docker", container_id=g["cid_systemd"] or g["cid_cgroupfs"], runtime="docker",
                           path=path)
    if pattern == "podman":
        return CgroupOwner(kind="podman", container_id=g["container_id"], runtime="podman", path=path)
    if pattern in ("slurm_v2", "slurm_v1"):
        step = f"/step_{g['step']}" if g.get("step") else ""
        return CgroupOwner(kind="slurm", name=f"job_{g['job']}{step}", path=path)
    if pattern == "systemd_service":
        return CgroupOwner(kind="systemd", name=g["unit"], path=path)
    if pattern == "user_session":
        return CgroupOwner(kind="host", name=f"user-{g['uid']}", path=path)
    return None


@functools.lru_cache(maxsize=4096)
def parse_cgroup(text: str) -> CgroupOwner:
    """The owner the cgroup file names; HOST for anything it does not recognise. Never raises.
    Cached: the processes of one container share one cgroup file text."""
    paths = cgroup_paths(text)
    for pattern, needle, regex in PATTERNS:
        for path in paths:
            if needle not in path:
                continue
            match = regex.search(path)
            if match:
                owner = _owner(pattern, match, path)
                if owner is not None:
                    return owner
    return HOST
