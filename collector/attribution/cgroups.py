"""/proc/<pid>/cgroup text -> who owns the process. Pure: no I/O.

Handles cgroup v1, v2 and hybrid files; the systemd and cgroupfs drivers; kubelet's QoS levels (burstable,
besteffort, and Guaranteed pods directly under kubepods); pod UIDs with dashes, underscores (systemd escaping) or
as 32-hex static-pod hashes; containerd, CRI-O (and its conmon supervisor), cri-dockerd leaves, with or without
`.scope`; the systemd "slice:prefix:id" cgroupsPath that a runtime wrote verbatim; crun's trailing `/container`;
cgroup-namespace `/../` prefixes; nested kubelets (kind) under cgroup roots the operator names; docker under any
systemd slice or cgroupfs; podman scopes, cgroupfs leaves, pods and `--cgroups=split` payloads (Quadlet), rootful
or under a user's systemd; Slurm v1 and v2 job/step paths; systemd services; user sessions.

A name is taken only where the component that creates it puts it: the walk goes down from the top of the path and
stops at the first cgroup that may be delegated to someone else (a container's own cgroup, a systemd service, a
user's manager, a scope). Whatever stands below that point was made by whoever the cgroup is delegated to, so it
names nobody: a pod or container name found there is reported as a conflict, never as the owner
(docs/runtimes-and-cgroups.md, "Trust").

Which line of a hybrid file wins: a path that is an ancestor of another line's path is a shallower view of the same
cgroup (a v1 controller not delegated further down) and is ignored; of the rest, the most specific owner wins.
The layouts, where each comes from and the real hosts' paths the walk was checked against:
docs/runtimes-and-cgroups.md.
"""

# No `from __future__ import annotations`: a NamedTuple's string annotations cost a compile() each at
# import (docs/performance.md).

import functools
import re
from typing import NamedTuple, Optional

from collector.model import OwnerKind

H64 = r"[0-9a-f]{64}"
UID = r"[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}|[0-9a-f]{32}"
_VALID_UID = re.compile(UID)
_K8S_RUNTIME = r"(?P<runtime>cri-containerd|crio|docker)"

# kubelet's systemd pod slice, under any --cgroup-root prefix ("kubelet-kubepods-…" in kind): the pod part is
# checked to be a UID apart, so that a container in a pod slice with another kind of name is still found.
_POD_SLICE = re.compile(r"(?:[\w.]+-)?kubepods(?:-(?P<qos>besteffort|burstable))?-pod(?P<pod>[^/]*?)\.slice")
# the runtime's "slice:prefix:id" cgroupsPath, written as a directory name by a cgroupfs-driven runtime
_VERBATIM_POD = re.compile(r"(?:[\w.]+-)?kubepods(?:-(?P<qos>besteffort|burstable))?-pod(?P<pod>[^/:]*?)(?:\.slice)?"
                           r":" + _K8S_RUNTIME + r":(?P<container_id>[^/]*)")
# a container leaf inside a pod cgroup, either driver: "<prefix>-<id>[.scope]", CRI-O's "crio-conmon-<id>", a bare id
_POD_LEAF = re.compile(r"(?:(?P<conmon>crio-conmon-)|" + _K8S_RUNTIME + r"-)?(?P<container_id>" + H64 +
                       r")(?:\.scope)?")
_CGROUPFS_POD = re.compile(r"pod(?P<pod>.*)")
# One path segment naming a container outside Kubernetes: "<prefix>-<id>[.scope]" (systemd scope or cgroupfs
# leaf), the verbatim "<slice>:<prefix>:<id>", podman's split payload.
_RUNTIME_SEGMENT = re.compile(r"(?P<runtime>cri-containerd|crio|docker|libpod)-(?P<container_id>" + H64 +
                              r")(?:\.scope)?")
_VERBATIM_SEGMENT = re.compile(r"[^:]*:(?P<runtime>cri-containerd|crio|docker|libpod):(?P<container_id>" + H64 + ")")
_PAYLOAD_SEGMENT = re.compile(r"libpod-payload-(?P<container_id>" + H64 + ")")
_BARE_ID = re.compile(H64)
_USER_SLICE = re.compile(r"user-(?P<uid>\d+)\.slice")
_USER_MANAGER = re.compile(r"user@(?P<uid>\d+)\.service")
_SLURMSTEPD = re.compile(r"(?:[^/]+_)?slurmstepd\.scope")
_SLURM_V1 = re.compile(r"slurm(?:_[^/]+)?")
_JOB = re.compile(r"job_(?P<job>\d+)")
_STEP = re.compile(r"step_(?P<step>\d+|batch|extern|interactive)")
# What looks like a pod or a runtime's container name: found below a delegation point, it is a conflict. A bare id is
# not one: runtimes' own sub-cgroups use them (`ctr run`'s /default/<id>, docker-in-docker's /docker/<id>/docker/<id>).
_LOOKS_NAMED = re.compile(r"kubepods|(?:cri-containerd|crio|docker|libpod)(?:-conmon|-payload)?[-:]" + H64)
# The runtimes' own units, under which a cgroupfs-driven runtime writes the verbatim "slice:prefix:id" directory
# on the v1 controllers where the unit has a cgroup of its own (docs/runtimes-and-cgroups.md, 3.1).
RUNTIME_UNITS = frozenset({"containerd.service", "crio.service", "docker.service", "cri-docker.service",
                           "k3s.service", "k3s-agent.service", "rke2-server.service", "rke2-agent.service",
                           "snap.microk8s.daemon-containerd.service"})
# The same as plain directories at the top of a cgroupfs hierarchy (opentelemetry-go's fixture: containerd in
# /kuberuntime/containerd).
RUNTIME_DIRS = (("kuberuntime", "containerd"),)

_CGROUPNS_PREFIX = re.compile(r"^(?:/\.\.)+(?=/)")

_RUNTIMES = {"cri-containerd": "containerd", "crio": "crio", "docker": "docker", "libpod": "podman"}
_RUNTIME_KIND = {"docker": OwnerKind.DOCKER, "podman": OwnerKind.PODMAN}  # others: OwnerKind.CONTAINER
# How much an owner says, to choose between the lines of a hybrid file that are not ancestor and descendant
_KIND_RANK = {OwnerKind.POD: 5, OwnerKind.DOCKER: 4, OwnerKind.PODMAN: 4, OwnerKind.CONTAINER: 4,
              OwnerKind.SLURM: 3, OwnerKind.SYSTEMD: 2, OwnerKind.HOST: 1}

# Why a pod or container name in a cgroup path was not taken (gpu_proc_collector_attribution_conflicts{reason}):
NESTED_BELOW_CONTAINER = "nested_below_container"  # below another container's own cgroup
UNTRUSTED_POSITION = "untrusted_position"  # below a service, a user's manager or a scope: where no runtime puts it


class CgroupOwner(NamedTuple):
    """What the cgroup path alone tells. kind: one of OWNER_KINDS."""

    kind: str
    pod_uid: str = ""  # pods only, always a valid UID (dashed UUID or 32-hex static-pod hash)
    container_id: str = ""  # 64 hex; pods, docker, podman and container
    runtime: str = ""  # containerd, crio, docker (cri-dockerd), podman; "" when the path does not say
    qos: str = ""  # burstable, besteffort, guaranteed (pods only)
    name: str = ""  # systemd unit, slurm job, user; for conmon "crio-conmon"
    path: str = ""  # the cgroup path that matched (cgroup-namespace prefix dropped)
    user_uid: str = ""  # containers under user@<uid>.service (rootless podman/docker): whose storage holds them
    # The owner's own cgroup: the path up to the container's (or pod's) segment, from the top of the hierarchy the
    # runtime sees (below a configured cgroup root), for the check against the runtime's recorded cgroup.
    scope: str = ""
    anchored: bool = True  # False: the path was seen through a cgroup namespace (`/..`), its top is not the root
    verbatim: bool = False  # the container's segment is the "slice:prefix:id" string itself
    conflict: str = ""  # a pod or container name found where it is not trusted (the reasons above); "" if none


HOST = CgroupOwner(kind=OwnerKind.HOST)


def cgroup_paths(text: str) -> list[str]:
    """The paths of a cgroup file, the unified (v2) line first, then name=systemd, then the other v1 lines.
    A path seen through a cgroup namespace keeps its `/..` prefix (parse_path drops it)."""
    lines = text.splitlines()
    if len(lines) == 1:  # cgroup v2 alone, the usual file: what the loop below makes of a single line
        parts = lines[0].split(":", 2)
        path = parts[2].strip() if len(parts) == 3 else ""
        return [path] if path.startswith("/") else []
    unified, systemd, others = [], [], []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        hierarchy = hierarchy.strip()
        path = path.strip()
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


def parse_roots(roots: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    """Configured cgroup roots ("/docker/<id>", "/kubelet" ...) as segment tuples; "*" stands for any one segment."""
    return tuple(tuple(s for s in root.split("/") if s) for root in roots if root.strip("/"))


def _conflict(segments: list[str], below: int, reason: str) -> str:
    """reason when a segment after index below looks like a pod or container name, else ""."""
    if below + 1 >= len(segments):
        return ""
    for segment in segments[below + 1:]:
        if _LOOKS_NAMED.search(segment):
            return reason
    return ""


class _Walk(NamedTuple):
    segments: list[str]
    path: str
    base: int  # index of the first segment below the configured root that matched (0 without one)
    anchored: bool

    def scope(self, end: int) -> str:
        """The path from the root the runtime sees down to segment end (included)."""
        return "/" + "/".join(self.segments[self.base:end + 1])

    def owner(self, kind: str, end: int, **fields: object) -> CgroupOwner:
        """An owner whose own cgroup is segment end: names below it are not trusted."""
        reason = NESTED_BELOW_CONTAINER if fields.get("container_id") else UNTRUSTED_POSITION
        return CgroupOwner(kind=kind, path=self.path, scope=self.scope(end), anchored=self.anchored,
                           conflict=_conflict(self.segments, end, reason), **fields)  # type: ignore[arg-type]


def _uid(raw: Optional[str]) -> str:
    return raw.replace("_", "-") if raw and _VALID_UID.fullmatch(raw) else ""


def _pod_or_container(walk: _Walk, end: int, raw_pod: str, qos: str, leaf: Optional[re.Match[str]], *,
                      verbatim: bool = False) -> Optional[CgroupOwner]:
    """The pod (with its container when leaf names one), or, when the pod part is no UID, the container alone."""
    uid = _uid(raw_pod)
    groups = leaf.groupdict() if leaf else {}
    container_id = groups.get("container_id") or ""
    if verbatim and not _BARE_ID.fullmatch(container_id):  # the other patterns take 64 hex only
        container_id = ""
    conmon = bool(groups.get("conmon"))
    runtime = "crio" if conmon else _RUNTIMES.get(groups.get("runtime") or "", "")
    if uid:
        return walk.owner(OwnerKind.POD, end, pod_uid=uid, container_id=container_id,
                          runtime=runtime if container_id else "", qos=qos or "guaranteed",
                          name="crio-conmon" if conmon else "", verbatim=verbatim and bool(container_id))
    if container_id and not conmon:
        return walk.owner(_RUNTIME_KIND.get(runtime, OwnerKind.CONTAINER), end, container_id=container_id,
                          runtime=runtime, verbatim=verbatim)
    return None


def _verbatim(walk: _Walk, i: int) -> Optional[CgroupOwner]:
    """The runtime's "slice:prefix:id" directory at segment i, if it is one."""
    found = _VERBATIM_POD.fullmatch(walk.segments[i]) if i < len(walk.segments) else None
    if found is None:
        return None
    return _pod_or_container(walk, i, found["pod"], found["qos"] or "", found, verbatim=True)


def _pod_and_leaf(walk: _Walk, i: int, raw_pod: str, qos: str) -> Optional[CgroupOwner]:
    """The pod cgroup at segment i, with the container its next segment names, if any."""
    leaf = _POD_LEAF.fullmatch(walk.segments[i + 1]) if i + 1 < len(walk.segments) else None
    return _pod_or_container(walk, i + 1 if leaf else i, raw_pod, qos, leaf)


def _cgroupfs_pods(walk: _Walk) -> Optional[CgroupOwner]:
    """kubelet's cgroupfs tree at the top: kubepods[/kubepods…][/<qos>]/pod<uid>[/<leaf>], or a leaf directly
    under kubepods or a QoS level."""
    seg, i, n = walk.segments, walk.base, len(walk.segments)
    while i + 1 < n and seg[i + 1] == "kubepods":  # --cgroup-root=/kubepods (spire's fixture)
        i += 1
    qos = ""
    if i + 1 < n and seg[i + 1] in ("besteffort", "burstable"):
        i += 1
        qos = seg[i]
    if i + 1 >= n:
        return None
    pod = _CGROUPFS_POD.fullmatch(seg[i + 1])
    if pod is None:
        return _pod_or_container(walk, i + 1, "", "", _POD_LEAF.fullmatch(seg[i + 1]))
    return _pod_and_leaf(walk, i + 1, pod["pod"], qos)


def _kubernetes(walk: _Walk) -> Optional[CgroupOwner]:
    """A pod (or a container of kubelet's tree) where kubelet and the runtime put it: the kubepods hierarchy at the
    top (below a configured root), its systemd slices, or the runtime's verbatim "slice:prefix:id" directory at the
    top, below slices, or below a runtime's own unit or directory."""
    seg, i, n = walk.segments, walk.base, len(walk.segments)
    if i < n and seg[i] == "kubepods":
        return _cgroupfs_pods(walk)
    for runtime_dir in RUNTIME_DIRS:
        if tuple(seg[i:i + len(runtime_dir)]) == runtime_dir:
            return _verbatim(walk, i + len(runtime_dir))
    while i < n:  # systemd driver: slices down to the pod slice, or the verbatim directory
        s = seg[i]
        pod = _POD_SLICE.fullmatch(s) if "-pod" in s else None
        if pod:
            return _pod_and_leaf(walk, i, pod["pod"], pod["qos"] or "")
        if ":" in s:
            return _verbatim(walk, i)
        if not s.endswith(".slice"):
            return _verbatim(walk, i + 1) if s in RUNTIME_UNITS else None
        i += 1
    return None


def _container_at(walk: _Walk, i: int, user_uid: str = "") -> Optional[CgroupOwner]:
    """The container segment i names, if it names one."""
    s = walk.segments[i]
    if len(s) < 64:
        return None
    named = _RUNTIME_SEGMENT.fullmatch(s) or _VERBATIM_SEGMENT.fullmatch(s)
    if named:
        runtime = _RUNTIMES[named["runtime"]]
        return walk.owner(_RUNTIME_KIND.get(runtime, OwnerKind.CONTAINER), i, container_id=named["container_id"],
                          runtime=runtime, user_uid=user_uid, verbatim=named.re is _VERBATIM_SEGMENT)
    return None


def _payload(walk: _Walk, unit: int, user_uid: str = "") -> Optional[CgroupOwner]:
    """podman --cgroups=split: the payload directly below the unit that ran podman (segment unit)."""
    found = _PAYLOAD_SEGMENT.fullmatch(walk.segments[unit + 1]) if unit + 1 < len(walk.segments) else None
    if found is None:
        return None
    return walk.owner(OwnerKind.PODMAN, unit + 1, container_id=found["container_id"], runtime="podman",
                      user_uid=user_uid)


def _rootless(walk: _Walk, manager: int, uid: str) -> Optional[CgroupOwner]:
    """A container below user@<uid>.service only where rootless podman (or rootless docker) puts it: slices of the
    user's manager, then `libpod-<id>.scope` / `docker-<id>.scope`; a unit's split payload (Quadlet); or the
    `<scope>/<id>` that rootless podman's conmon makes in name=systemd on cgroup v1, where podman has no cgroup of
    its own (podman 1.x: `podman-<pid>.scope/<id>`; podman 4 started in a scope of the user's manager:
    `<unit>.scope/<id>`, docs/runtimes-and-cgroups.md section 11). The user names only their own containers: the
    name comes from that user's own store."""
    seg, n = walk.segments, len(walk.segments)
    i = manager + 1
    while i < n and seg[i].endswith(".slice"):
        i += 1
    if i >= n:
        return None
    found = _container_at(walk, i, uid) if i > manager + 1 else None
    if found is not None and found.runtime in ("podman", "docker") and not found.verbatim:
        return found
    if seg[i].endswith(".service"):
        return _payload(walk, i, uid)
    if seg[i].endswith(".scope") and i + 1 < n and _BARE_ID.fullmatch(seg[i + 1]):
        return walk.owner(OwnerKind.PODMAN, i + 1, container_id=seg[i + 1], runtime="podman", user_uid=uid)
    return None


def _cgroupfs_trees(walk: _Walk) -> Optional[CgroupOwner]:
    """Trees at the top that runtimes and Slurm make without systemd: docker's /docker/<id>, podman's
    /libpod_parent/[…/]libpod-<id>, Slurm v1's /slurm/uid_<uid>/job_<id>/…"""
    seg, n = walk.segments, len(walk.segments)
    if seg[0] == "docker" and n > 1 and _BARE_ID.fullmatch(seg[1]):
        return walk.owner(OwnerKind.DOCKER, 1, container_id=seg[1], runtime="docker")
    if seg[0] == "libpod_parent":
        for i in range(1, min(n, 3)):
            found = _container_at(walk, i)
            if found is not None:
                return found
        return walk.owner(OwnerKind.HOST, 0)
    if _SLURM_V1.fullmatch(seg[0]) and n > 2 and seg[1].startswith("uid_"):
        return _slurm(walk, 2)
    return None


def _user(walk: _Walk, i: int) -> Optional[CgroupOwner]:
    """Below /user.slice/user-<uid>.slice/ at segment i: the user's manager (and rootless containers below it) or
    a login session."""
    seg, n = walk.segments, len(walk.segments)
    user = _USER_SLICE.fullmatch(seg[1]) if i >= 2 and seg[0] == "user.slice" else None
    if user is None:
        return None
    manager = _USER_MANAGER.fullmatch(seg[i])
    if manager is not None and manager["uid"] == user["uid"]:
        if i + 1 == n:
            return walk.owner(OwnerKind.SYSTEMD, i, name=seg[i])  # the manager's own cgroup is its unit
        return _rootless(walk, i, user["uid"]) or walk.owner(OwnerKind.HOST, i, name=f"user-{user['uid']}")
    if seg[i].startswith("session-") and seg[i].endswith(".scope"):
        return walk.owner(OwnerKind.HOST, i, name=f"user-{user['uid']}")
    return None


def _outside_kubernetes(walk: _Walk) -> CgroupOwner:
    """Containers, Slurm, units and users, from the top of the path (configured roots do not apply): slices, then
    the first segment that is no slice says who owns everything below it."""
    seg, n = walk.segments, len(walk.segments)
    if n == 0:
        return HOST._replace(path=walk.path)
    found = _cgroupfs_trees(walk)
    if found is not None:
        return found
    i = 0
    while i < n - 1 and seg[i].endswith(".slice"):
        i += 1
    found = _container_at(walk, i) or _user(walk, i)
    if found is not None:
        return found
    if _SLURMSTEPD.fullmatch(seg[i]):
        return _slurm(walk, i + 1)
    if seg[i].endswith(".service"):  # its own sub-cgroups (.control, podman's runtime/) are the unit's too
        return _payload(walk, i) or walk.owner(OwnerKind.SYSTEMD, i, name=seg[i])
    return walk.owner(OwnerKind.HOST, i)


def _slurm(walk: _Walk, job_at: int) -> CgroupOwner:
    """A Slurm job step at job_<id>[/step_<s>] from segment job_at; the host when the path does not go that far."""
    seg, n = walk.segments, len(walk.segments)
    job = _JOB.fullmatch(seg[job_at]) if job_at < n else None
    if job is None:
        return walk.owner(OwnerKind.HOST, job_at - 1)
    step = _STEP.fullmatch(seg[job_at + 1]) if job_at + 1 < n else None
    name = f"job_{job['job']}" + (f"/step_{step['step']}" if step else "")
    return walk.owner(OwnerKind.SLURM, job_at + 1 if step else job_at, name=name)


def parse_path(path: str, roots: tuple[tuple[str, ...], ...] = ()) -> CgroupOwner:
    """The owner one cgroup path names (HOST when none), with a conflict where a name stood untrusted."""
    stripped = _CGROUPNS_PREFIX.sub("", path) if path.startswith("/..") else path
    segments = [s for s in stripped.split("/") if s]
    walk = _Walk(segments, stripped, 0, stripped == path)
    for root in roots:
        if len(root) < len(segments) and all(r in ("*", s) for r, s in zip(root, segments)):
            nested = _kubernetes(walk._replace(base=len(root)))
            if nested is not None:
                return nested
    return _kubernetes(walk) or _outside_kubernetes(walk)


def _specificity(owner: CgroupOwner) -> tuple[int, bool, bool]:
    return _KIND_RANK[owner.kind], bool(owner.container_id), bool(owner.name)


@functools.lru_cache(maxsize=4096)
def parse_cgroup(text: str, roots: tuple[tuple[str, ...], ...] = ()) -> CgroupOwner:
    """The owner the cgroup file names; HOST for anything it does not recognise. Never raises. roots: the cgroup
    roots of nested kubelets (parse_roots). Cached: the processes of one container share one cgroup file text."""
    paths = most_specific_paths(cgroup_paths(text))
    if len(paths) == 1:
        return parse_path(paths[0], roots)
    best, conflict = HOST, ""
    for path in paths:
        owner = parse_path(path, roots)
        conflict = conflict or owner.conflict
        if _specificity(owner) > _specificity(best):
            best = owner
    return best._replace(conflict=conflict) if conflict != best.conflict else best


def systemd_path(cgroups_path: str) -> str:
    """A "slice:prefix:name" cgroupsPath as runc's systemd driver lays it out: the slice expanded to its ancestors
    (`a-b.slice` -> `/a.slice/a-b.slice`, `-.slice` the root), then `<prefix>-<name>.scope` (runc
    libcontainer/cgroups/systemd `ExpandSlice`, specconv `CreateCgroupConfig`). "" when it is not of that form."""
    parts = cgroups_path.split(":")
    if len(parts) != 3 or not parts[0].endswith(".slice") or "/" in parts[0] or not parts[2]:
        return ""
    slice_name = parts[0][:-len(".slice")]
    path = ""
    if slice_name and slice_name != "-":
        if "--" in slice_name or slice_name.startswith("-") or slice_name.endswith("-"):
            return ""
        prefix = ""
        for word in slice_name.split("-"):
            prefix = f"{prefix}-{word}" if prefix else word
            path += f"/{prefix}.slice"
    return f"{path}/{parts[1]}-{parts[2]}.scope" if parts[1] else f"{path}/{parts[2]}"


def agrees(recorded: str, owner: CgroupOwner) -> bool:
    """Whether the cgroup a runtime recorded for the container (ContainerMeta.cgroup) is the owner's own cgroup or
    an ancestor of it: the only places a process of that container can be (docs/runtimes-and-cgroups.md, "Trust").
    CRI-O's conmon sits beside its container, in the same parent."""
    scope = owner.scope
    if not recorded.strip("/") or not scope:
        return False
    if owner.verbatim:  # a cgroupfs-driven runtime made the systemd-form string its directory, under its own cgroup
        return scope.endswith("/" + recorded.strip("/"))
    path = systemd_path(recorded) if ":" in recorded else recorded.rstrip("/")
    if owner.name == "crio-conmon":
        path, scope = path.rpartition("/")[0], scope.rpartition("/")[0]
    if not path.strip("/"):
        return False
    if path.startswith("/") and owner.anchored:
        return scope == path or scope.startswith(path + "/")
    theirs = [s for s in path.split("/") if s]
    mine = [s for s in scope.split("/") if s]
    # Seen through a cgroup namespace, the path starts below the root: a tail of the recorded path must begin it.
    # A relative recorded path (under the runtime's own cgroup) must appear in it whole.
    if path.startswith("/"):
        return any(theirs[k:] == mine[:len(theirs) - k] for k in range(len(theirs)))
    return any(mine[k:k + len(theirs)] == theirs for k in range(len(mine) - len(theirs) + 1))
