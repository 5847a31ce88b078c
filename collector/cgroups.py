"""/proc/<pid>/cgroup text -> who owns the process. Pure: no I/O.

Handles cgroup v1, v2 and hybrid files; the systemd and cgroupfs drivers; kubelet's QoS levels (burstable,
besteffort, and Guaranteed pods directly under kubepods); pod UIDs with dashes, underscores (systemd escaping) or
as 32-hex static-pod hashes; containerd, CRI-O (and its conmon supervisor), cri-dockerd leaves, with or without
`.scope`; the systemd "slice:prefix:id" cgroupsPath that a runtime wrote verbatim, under any parent; crun's trailing
`/container`; cgroup-namespace `/../` prefixes; kind-style nesting under kubelet.slice or a docker container; docker
under any systemd slice or cgroupfs; podman scopes, cgroupfs leaves, pods and `--cgroups=split` payloads (Quadlet),
rootful or under a user's systemd; Slurm v1 and v2 job/step paths; systemd services; user sessions.

Which line of a hybrid file wins: a path that is an ancestor of another line's path is a shallower view of the same
cgroup (a v1 controller not delegated further down) and is ignored; of the rest, the most specific owner wins.
The layouts, where each comes from and the real hosts' paths the patterns were checked against:
docs/runtimes-and-cgroups.md.
"""

from __future__ import annotations

import functools
import re
from typing import NamedTuple, Optional

from collector.model import OwnerKind

H64 = r"[0-9a-f]{64}"
UID = (r"(?P<pod_uid>[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}"
       r"|[0-9a-f]{32})")
_END = r"(?:/|$)"
_K8S_PREFIX = r"(?P<runtime>cri-containerd|crio|docker)"

# Tried in this order on each path; each runs only on paths holding one of its needles. Conmon before the pod
# patterns (conmon is the supervisor, not the workload); the pod patterns before the container leaves their paths
# also hold; "container" is the leaf walk of _container_owner, not a regex.
PATTERNS: tuple[tuple[str, tuple[str, ...], Optional[re.Pattern[str]]], ...] = tuple(
    (name, needles, re.compile(rx) if rx else None) for name, needles, rx in (
        ("crio_conmon", ("crio-conmon-",),
         r"kubepods.*?pod" + UID + r".*?crio-conmon-(?P<container_id>" + H64 + r")(?:\.scope)?" + _END),
        # the runtime's "slice:prefix:id" cgroupsPath, written as a directory name by a cgroupfs-driven runtime
        ("k8s_systemd_verbatim", (":",), r"kubepods(?:-(?P<qos>besteffort|burstable))?-pod" + UID +
         r"(?:\.slice)?:(?:" + _K8S_PREFIX + r":(?P<container_id>" + H64 + r")" + _END + ")?"),
        ("k8s_systemd", ("kubepods",), r"kubepods(?:-(?P<qos>besteffort|burstable))?-pod" + UID + r"\.slice"
         r"(?:/" + _K8S_PREFIX + r"-(?P<container_id>" + H64 + r")(?:\.scope)?)?" + _END),
        ("k8s_cgroupfs", ("kubepods",), r"kubepods(?:/(?P<qos>besteffort|burstable))?/pod" + UID +
         r"(?:/(?:(?P<runtime>crio)-)?(?P<container_id>" + H64 + r"))?" + _END),
        ("container", ("cri-containerd", "crio", "docker", "libpod", "podman-", "kubepods"), None),
        ("slurm_v2", ("slurmstepd",), r"/(?:(?P<node>[^/]+)_)?slurmstepd\.scope/job_(?P<job>\d+)"
         r"(?:/step_(?P<step>\d+|batch|extern|interactive))?"),
        ("slurm_v1", ("/slurm",), r"/slurm(?:_(?P<node>[^/]+))?/uid_(?P<uid>\d+)/job_(?P<job>\d+)"
         r"(?:/step_(?P<step>\d+|batch|extern|interactive))?"),
        # below the user's systemd manager, or a login session; user@<uid>.service itself is the systemd unit
        ("user_session", ("/user.slice/",), r"^/user\.slice/user-(?P<uid>\d+)\.slice/"
         r"(?:session-[^/]+\.scope|user@\d+\.service/[^/])"),
        # a unit's own sub-cgroups (podman split's runtime/, .control) are still the unit's
        ("systemd_service", (".service",), r"^/(?:[^/]+\.slice/)*(?P<unit>[^/]+\.service)" + _END),
    ))

# One path segment naming a container: "<prefix>-<id>[.scope]" (systemd scope or cgroupfs leaf), the verbatim
# "<slice>:<prefix>:<id>", podman's split payload, or a bare id (under docker/, podman-<pid>.scope or a kubepods tree).
_RUNTIME_SEGMENT = re.compile(r"(?P<runtime>cri-containerd|crio|docker|libpod)-(?P<container_id>" + H64 +
                              r")(?:\.scope)?")
_VERBATIM_SEGMENT = re.compile(r"[^:]*:(?P<runtime>cri-containerd|crio|docker|libpod):(?P<container_id>" + H64 + ")")
_PAYLOAD_SEGMENT = re.compile(r"libpod-payload-(?P<container_id>" + H64 + ")")
_BARE_ID = re.compile(H64)
_PODMAN_PID_SCOPE = re.compile(r"podman-\d+\.scope")  # old rootless podman: podman-<pid>.scope/<id>
_USER_MANAGER = re.compile(r"/user@(\d+)\.service(?:/|$)")

_CGROUPNS_PREFIX = re.compile(r"^(?:/\.\.)+(?=/)")
_QOS = re.compile(r"kubepods[-/](besteffort|burstable)(?:[./]|$)")

_RUNTIMES = {"cri-containerd": "containerd", "crio": "crio", "docker": "docker", "libpod": "podman"}
_RUNTIME_KIND = {"docker": OwnerKind.DOCKER, "podman": OwnerKind.PODMAN}  # others: OwnerKind.CONTAINER
# How much an owner says, to choose between the lines of a hybrid file that are not ancestor and descendant
_KIND_RANK = {OwnerKind.POD: 5, OwnerKind.DOCKER: 4, OwnerKind.PODMAN: 4, OwnerKind.CONTAINER: 4,
              OwnerKind.SLURM: 3, OwnerKind.SYSTEMD: 2, OwnerKind.HOST: 1}


class CgroupOwner(NamedTuple):
    """What the cgroup path alone tells. kind: one of OWNER_KINDS."""

    kind: str
    pod_uid: str = ""  # pods only, always a valid UID (dashed UUID or 32-hex static-pod hash)
    container_id: str = ""  # 64 hex; pods, docker, podman and container
    runtime: str = ""  # containerd, crio, docker (cri-dockerd), podman; "" when the path does not say
    qos: str = ""  # burstable, besteffort, guaranteed (pods only)
    name: str = ""  # systemd unit, slurm job, user; for conmon "crio-conmon"
    path: str = ""  # the cgroup path that matched
    user_uid: str = ""  # containers under user@<uid>.service (rootless podman/docker): whose storage holds them


HOST = CgroupOwner(kind=OwnerKind.HOST)


def cgroup_paths(text: str) -> list[str]:
    """The paths of a cgroup file, the unified (v2) line first, then name=systemd, then the other v1 lines."""
    unified, systemd, others = [], [], []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        hierarchy = hierarchy.strip()
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


def most_specific_paths(paths: list[str]) -> list[str]:
    """paths without those that are an ancestor of another: on hybrid hosts a v1 controller that is not delegated
    further down (pids under user@<uid>.service, a Slurm job-level memory cgroup) shows a shallower path of the
    same cgroup."""
    if len(paths) < 2:
        return paths

    def is_ancestor(path: str) -> bool:
        prefix = path if path.endswith("/") else path + "/"
        return any(other != path and other.startswith(prefix) for other in paths)

    return [path for path in paths if not is_ancestor(path)]


def _qos(path: str) -> str:
    found = _QOS.search(path)
    return found.group(1) if found else "guaranteed"


def _container(runtime: str, container_id: str, path: str) -> CgroupOwner:
    user = _USER_MANAGER.search(path)
    return CgroupOwner(kind=_RUNTIME_KIND.get(runtime, OwnerKind.CONTAINER), container_id=container_id,
                       runtime=runtime, path=path, user_uid=user.group(1) if user else "")


def _container_owner(path: str) -> Optional[CgroupOwner]:
    """The deepest path segment that names a container (the innermost one, for kind nodes and nested engines)."""
    segments = path.split("/")
    for depth in range(len(segments) - 1, 0, -1):
        segment = segments[depth]
        if len(segment) < 64:
            continue
        named = _RUNTIME_SEGMENT.fullmatch(segment) or _VERBATIM_SEGMENT.fullmatch(segment)
        if named:
            return _container(_RUNTIMES[named["runtime"]], named["container_id"], path)
        payload = _PAYLOAD_SEGMENT.fullmatch(segment)
        if payload:
            return _container("podman", payload["container_id"], path)
        if _BARE_ID.fullmatch(segment):
            if segments[depth - 1] == "docker":
                return _container("docker", segment, path)
            if _PODMAN_PID_SCOPE.fullmatch(segments[depth - 1]):
                return _container("podman", segment, path)
            if any(s.startswith("kubepods") for s in segments[:depth]):
                return _container("", segment, path)  # a pod's cgroupfs leaf; the runtime is not in the path
    return None


def _owner(pattern: str, match: re.Match[str], path: str) -> Optional[CgroupOwner]:
    g = match.groupdict()
    if pattern in ("crio_conmon", "k8s_systemd_verbatim", "k8s_systemd", "k8s_cgroupfs"):
        runtime = "crio" if pattern == "crio_conmon" else _RUNTIMES.get(g.get("runtime") or "", "")
        return CgroupOwner(
            kind=OwnerKind.POD,
            pod_uid=g["pod_uid"].replace("_", "-"),
            container_id=g.get("container_id") or "",
            runtime=runtime,
            qos=g.get("qos") or _qos(path),
            name="crio-conmon" if pattern == "crio_conmon" else "",
            path=path,
        )
    if pattern in ("slurm_v2", "slurm_v1"):
        step = f"/step_{g['step']}" if g.get("step") else ""
        return CgroupOwner(kind=OwnerKind.SLURM, name=f"job_{g['job']}{step}", path=path)
    if pattern == "systemd_service":
        return CgroupOwner(kind=OwnerKind.SYSTEMD, name=g["unit"], path=path)
    if pattern == "user_session":
        return CgroupOwner(kind=OwnerKind.HOST, name=f"user-{g['uid']}", path=path)
    return None


def path_owner(path: str) -> Optional[CgroupOwner]:
    """The owner one cgroup path names; None when it names none."""
    for pattern, needles, regex in PATTERNS:
        for needle in needles:
            if needle in path:
                break
        else:
            continue
        if regex is None:
            owner = _container_owner(path)
            if owner is not None:
                return owner
            continue
        match = regex.search(path)
        if match:
            owner = _owner(pattern, match, path)
            if owner is not None:
                return owner
    return None


def _specificity(owner: CgroupOwner) -> tuple[int, bool, bool]:
    return _KIND_RANK[owner.kind], bool(owner.container_id), bool(owner.name)


@functools.lru_cache(maxsize=4096)
def parse_cgroup(text: str) -> CgroupOwner:
    """The owner the cgroup file names; HOST for anything it does not recognise. Never raises.
    Cached: the processes of one container share one cgroup file text."""
    paths = most_specific_paths(cgroup_paths(text))
    if len(paths) == 1:
        return path_owner(paths[0]) or HOST
    best = HOST
    for path in paths:
        owner = path_owner(path)
        if owner is not None and _specificity(owner) > _specificity(best):
            best = owner
    return best
