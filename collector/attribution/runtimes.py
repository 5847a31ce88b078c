"""Container id -> pod name, namespace, UID and container name, from the container runtime's files on disk.

No API server, no runtime socket: the files every runtime already keeps under the host root.
- containerd: task bundles' OCI `config.json` annotations (io.kubernetes.cri.*), in every state dir that exists:
  `run/containerd` (kubeadm, most distributions), `run/k3s/containerd` (k3s, RKE2) and microk8s' snap path.
- CRI-O: `config.json` in its run and graph roots; kubelet's labels are copied there as annotations.
- docker (cri-dockerd, or plain docker): `var/lib/docker/containers/<id>/config.v2.json`, `Config.Labels` (the
  data root `etc/docker/daemon.json` sets, where it sets one).
- kubelet's `var/log/pods/<namespace>_<pod>_<uid>/<container>/`: names a pod from its UID when no runtime file has
  the container (any runtime; the directory names are DNS-1123 names, which have no `_`).
- podman: the container's name is in containers/storage's `<driver>-containers/containers.json` (podman keeps it
  there and renames it there); rootful under `var/lib/containers/storage` (or storage.conf's graphroot), rootless
  under the user's `~/.local/share/containers/storage`. Its OCI config.json carries no name.
See docs/runtimes-and-cgroups.md.
A missing, unreadable or corrupt file is a counted miss for that process, never a failed run.
"""

# No `from __future__ import annotations`: a NamedTuple's string annotations cost a compile() each at
# import (docs/performance.md).

import logging
import os
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple, Optional

from collector import safeio
from collector.model import EMPTY, safe_name

log = logging.getLogger(__name__)

CONTAINERD_STATE_DIRS = (
    "run/containerd",
    "run/k3s/containerd",
    "var/snap/microk8s/common/run/containerd",
)
CONTAINERD_TASKS = "io.containerd.runtime.v2.task/k8s.io"
CRIO_ROOTS = ("run/containers/storage/overlay-containers", "var/lib/containers/storage/overlay-containers")
DOCKER_CONTAINERS = "var/lib/docker/containers"
DOCKER_DAEMON_JSON = "etc/docker/daemon.json"  # its "data-root" moves var/lib/docker
DOCKER_ROOTLESS_CONTAINERS = ".local/share/docker/containers"  # under the user's home: rootless docker's data root
POD_LOGS = "var/log/pods"
# kubelet keeps a directory per pod on the node (110 by default, --max-pods) and removes a deleted pod's: more
# than this is no node's pod list (docs/reading-files.md)
MAX_POD_LOG_DIRS = 10_000
MAX_POD_CONTAINERS = 1_000  # per pod directory, where a pod's container name is looked up
# Size caps (docs/reading-files.md): an OCI config.json is a few KiB (tens with kubelet's service-link variables)
MAX_METADATA_BYTES = 4 << 20
# containers/storage's graph root (containers.json) and run root (volatile-containers.json of a transient store)
PODMAN_STORAGE = ("var/lib/containers/storage", "run/containers/storage")
PODMAN_STORAGE_CONF = "etc/containers/storage.conf"
PODMAN_ROOTLESS_STORAGE = ".local/share/containers/storage"  # under the user's home ($XDG_DATA_HOME unset)
PODMAN_CONTAINER_LISTS = ("containers.json", "volatile-containers.json")
MAX_CONTAINER_LIST_BYTES = 8 << 20  # about 900 bytes per container: some 9,000 containers in one store
MAX_CONFIG_BYTES = 1 << 20  # storage.conf: a few KiB
MAX_PASSWD_BYTES = 8 << 20  # etc/passwd: about 80 bytes per user
_STORAGE_ROOT = r'(?m)^\s*(graphroot|runroot)\s*=\s*"([^"]+)"'
_CONTAINER_ID = r"[0-9a-f]{1,64}"

# (pod name, namespace, pod UID, container name) annotation keys
CONTAINERD_KEYS = ("io.kubernetes.cri.sandbox-name", "io.kubernetes.cri.sandbox-namespace",
                   "io.kubernetes.cri.sandbox-uid", "io.kubernetes.cri.container-name")
KUBELET_KEYS = ("io.kubernetes.pod.name", "io.kubernetes.pod.namespace", "io.kubernetes.pod.uid",
                "io.kubernetes.container.name")


def _containerd_source(state_dir: str) -> str:
    return "k3s" if "k3s" in state_dir else "microk8s" if "microk8s" in state_dir else "containerd"


# (source, directory under the host root) of every directory lookups read container files from, for `--check`
# (collector.check), which checks that those present can be listed.
METADATA_DIRS: tuple[tuple[str, str], ...] = (
    *((_containerd_source(state), f"{state}/{CONTAINERD_TASKS}") for state in CONTAINERD_STATE_DIRS),
    *(("crio", root) for root in CRIO_ROOTS),
    ("docker", DOCKER_CONTAINERS),
    ("podman", PODMAN_STORAGE[0]),
    ("pod-logs", POD_LOGS),
)


class ContainerMeta(NamedTuple):
    pod: str
    namespace: str
    pod_uid: str
    container: str
    source: str  # containerd, k3s, crio, docker, pod-logs
    # The cgroup the runtime recorded for the container, as its OCI spec's linux.cgroupsPath has it ("slice:prefix:id"
    # with the systemd driver, a path with cgroupfs; docker's from hostconfig.json's CgroupParent): checked against
    # the process's cgroup (cgroups.agrees). "" when the runtime recorded none (pod-logs: none to record).
    # A state written before this field existed holds rows one field short: they are read again (state._containers).
    cgroup: str = ""


class _Corrupt(Exception):
    pass


def _read_json(path: str, root: str) -> Optional[dict[str, Any]]:
    """The JSON object in path (under the host root); None if the file does not exist. Raises _Corrupt for
    anything unusable (collector.safeio: not a regular file, a link, too large, not bounded JSON)."""
    try:
        document = safeio.read_json(path, MAX_METADATA_BYTES, root=root)
    except FileNotFoundError:
        return None
    except safeio.Refused as err:
        raise _Corrupt(str(err)) from None
    if not isinstance(document, dict):
        raise _Corrupt(f"{path}: not a JSON object")
    return document


def _strings(mapping: Any, keys: tuple[str, str, str, str]) -> Optional[tuple[str, str, str, str]]:
    if not isinstance(mapping, dict):
        return None
    pod, namespace, uid, container = (mapping.get(k) for k in keys)
    if not isinstance(pod, str) or not isinstance(namespace, str) or not pod or not namespace:
        return None
    # names made safe before they are kept (in this run's cache and the state): bounded, never two as one
    return (safe_name(pod), safe_name(namespace), uid if isinstance(uid, str) else "",
            safe_name(container) if isinstance(container, str) else "")


class RuntimeMetadata:
    """Looks containers up in one host's runtime files; results and the pod-log index are cached for the run."""

    def __init__(self, host_root: str, known: Mapping[str, ContainerMeta] = EMPTY) -> None:
        self.host_root = host_root
        self.known = known  # container id -> its pod, as the previous run found it in the runtime's files
        self.remembered: dict[str, ContainerMeta] = {}  # what this run found, for the next
        self.misses: Counter[str] = Counter()
        self._cache: dict[str, Optional[ContainerMeta]] = {}
        self._pod_logs: Optional[dict[str, tuple[str, str, str]]] = None
        self._docker_names: dict[str, str] = {}
        self._docker_containers: Optional[str] = None
        self._podman_names: dict[str, dict[str, str]] = {}  # user uid ("" rootful) -> container id -> name

    def _path(self, *parts: str) -> str:
        return os.path.join(self.host_root, *parts)

    def lookup(self, container_id: str, runtime: str = "", pod_uid: str = "") -> Optional[ContainerMeta]:
        """The container's pod; falls back to the pod-log directories by pod UID. None when nothing names it.
        A container the previous run found in its runtime's files is taken from `known` without reading them."""
        key = f"{container_id}/{runtime}/{pod_uid}"
        if key not in self._cache:
            meta = self.known.get(container_id) if container_id else None
            if meta is None:
                meta = self._lookup(container_id, runtime, pod_uid)
            if meta is not None and meta.source != "pod-logs":
                self.remembered[container_id] = meta
            self._cache[key] = meta
        return self._cache[key]

    def _lookup(self, container_id: str, runtime: str, pod_uid: str) -> Optional[ContainerMeta]:
        if re.fullmatch(_CONTAINER_ID, container_id):
            for source, path, keys in self._candidates(container_id, runtime):
                try:
                    document = _read_json(path, self.host_root)
                except _Corrupt as err:
                    log.warning("container %s: %s", container_id[:12], err)
                    self.misses["corrupt"] += 1
                    continue
                if document is None:
                    continue
                if source == "docker":
                    labels = (document.get("Config") or {}).get("Labels")
                    found = _strings(labels, keys)
                    recorded = self._docker_cgroup(container_id) if found else ""
                else:
                    found = _strings(document.get("annotations"), keys)
                    recorded = _cgroups_path(document)
                if found is None:
                    continue
                return ContainerMeta(pod=found[0], namespace=found[1], pod_uid=found[2], container=found[3],
                                     source=source, cgroup=recorded)
        if pod_uid:
            from_logs = self.pod_from_logs(pod_uid)
            if from_logs is not None:
                return from_logs
        self.misses["not_found"] += 1
        return None

    def _candidates(self, container_id: str, runtime: str) -> Iterator[tuple[str, str, tuple[str, str, str, str]]]:
        """Where each runtime would keep the container's file, the cgroup's runtime first; built lazily, as the
        first one usually exists."""
        def containerd() -> Iterator[tuple[str, str, tuple[str, str, str, str]]]:
            for state in CONTAINERD_STATE_DIRS:
                path = self._path(state, CONTAINERD_TASKS, container_id, "config.json")
                yield _containerd_source(state), path, CONTAINERD_KEYS

        def crio() -> Iterator[tuple[str, str, tuple[str, str, str, str]]]:
            for root in CRIO_ROOTS:
                yield "crio", self._path(root, container_id, "userdata", "config.json"), KUBELET_KEYS

        def docker() -> Iterator[tuple[str, str, tuple[str, str, str, str]]]:
            yield "docker", os.path.join(self.docker_containers(), container_id, "config.v2.json"), KUBELET_KEYS

        order = {"crio": (crio, containerd, docker), "docker": (docker, containerd, crio)}
        for source in order.get(runtime, (containerd, crio, docker)):
            yield from source()

    def _docker_cgroup(self, container_id: str) -> str:
        """The cgroup docker gave the container, in its OCI spec's form: moby's `<CgroupParent>:docker:<id>` with the
        systemd driver (a parent ending in .slice), `<CgroupParent>/<id>` with cgroupfs (daemon/oci_linux.go)."""
        try:
            document = _read_json(os.path.join(self.docker_containers(), container_id, "hostconfig.json"),
                                  self.host_root)
        except _Corrupt as err:
            log.warning("container %s: %s", container_id[:12], err)
            return ""
        parent = document.get("CgroupParent") if document else None
        if not isinstance(parent, str) or not parent:
            return ""
        return f"{parent}:docker:{container_id}" if parent.endswith(".slice") else f"{parent}/{container_id}"

    def pod_from_logs(self, pod_uid: str) -> Optional[ContainerMeta]:
        if self._pod_logs is None:
            self._pod_logs = self._index_pod_logs()
        entry = self._pod_logs.get(pod_uid)
        if entry is None:
            return None
        namespace, pod, path = entry
        # With one container the name is certain; with several, the log directories cannot say which.
        entries, _ = safeio.list_dir(path, MAX_POD_CONTAINERS)
        containers = [c.name for c in entries if c.is_dir()]
        container = containers[0] if len(containers) == 1 else ""
        return ContainerMeta(pod=pod, namespace=namespace, pod_uid=pod_uid, container=container, source="pod-logs")

    def _index_pod_logs(self) -> dict[str, tuple[str, str, str]]:
        """pod UID -> (namespace, pod, its directory) of the first MAX_POD_LOG_DIRS entries of var/log/pods: the
        names only (a pod's container directories are listed when its UID is looked up)."""
        index: dict[str, tuple[str, str, str]] = {}
        entries, _ = safeio.list_dir(self._path(POD_LOGS), MAX_POD_LOG_DIRS)
        for entry in entries:
            parts = entry.name.split("_")
            if len(parts) == 3 and entry.is_dir():
                index[parts[2]] = (parts[0], parts[1], entry.path)
        return index

    def docker_name(self, container_id: str, user_uid: str = "") -> str:
        """A plain docker container's name (`Name` without its leading slash), or its short id. user_uid: the uid
        whose user manager holds the container's cgroup, for rootless docker, whose data root is in that user's home
        (never the rootful store: a user cannot borrow a rootful container's name); "" for rootful."""
        key = f"{user_uid}/{container_id}"
        if key not in self._docker_names:
            if user_uid:
                home = self._home(user_uid)
                path = os.path.join(home, DOCKER_ROOTLESS_CONTAINERS, container_id, "config.v2.json") if home else ""
            else:
                path = os.path.join(self.docker_containers(), container_id, "config.v2.json")
            try:
                document = _read_json(path, self.host_root) if path else None
            except _Corrupt:
                document = None
            name = document.get("Name") if document else None
            found = safe_name(name.lstrip("/")) if isinstance(name, str) and name.strip("/") else container_id[:12]
            self._docker_names[key] = found
        return self._docker_names[key]

    def docker_containers(self) -> str:
        """Docker's containers directory: `<data-root>/containers`, with the data root dockerd's configuration file
        sets (docs/runtimes-and-cgroups.md section 10), else var/lib/docker; always under the host root."""
        if self._docker_containers is None:
            try:
                config = _read_json(self._path(DOCKER_DAEMON_JSON), self.host_root)
            except _Corrupt as err:
                log.warning("docker: %s", err)
                config = None
            root = config.get("data-root") if config else None
            if isinstance(root, str) and root.startswith("/") and os.path.normpath(root) != "/":
                self._docker_containers = self._path(os.path.normpath(root).lstrip("/"), "containers")
            else:
                self._docker_containers = self._path(DOCKER_CONTAINERS)
        return self._docker_containers

    def podman_name(self, container_id: str, user_uid: str = "") -> str:
        """A podman container's name, or its short id. user_uid: the uid whose user manager holds the container's
        cgroup (CgroupOwner.user_uid), for rootless podman; "" for rootful."""
        if user_uid not in self._podman_names:
            self._podman_names[user_uid] = self._podman_index(user_uid)
        return self._podman_names[user_uid].get(container_id) or container_id[:12]

    def _podman_index(self, user_uid: str) -> dict[str, str]:
        """Container id -> name from every containers/storage store of rootful podman, or of one user's."""
        names: dict[str, str] = {}
        for root in self._podman_roots(user_uid):
            try:
                stores = sorted((e.path for e in os.scandir(root) if e.name.endswith("-containers")),
                                key=lambda p: not p.endswith("/overlay-containers"))
            except OSError:
                continue
            for store in stores:
                for listing in PODMAN_CONTAINER_LISTS:
                    path = os.path.join(store, listing)
                    try:
                        for entry in safeio.iter_json_array(safeio.read(path, MAX_CONTAINER_LIST_BYTES,
                                                                        root=self.host_root), path):
                            found = _storage_name(entry)
                            if found:
                                names.setdefault(*found)
                    except FileNotFoundError:
                        continue
                    except safeio.Refused as err:
                        log.warning("podman: %s", err)
        return names

    def _podman_roots(self, user_uid: str) -> list[str]:
        if not user_uid:
            roots = [self._path(r) for r in PODMAN_STORAGE]
            try:
                text = safeio.read(self._path(PODMAN_STORAGE_CONF), MAX_CONFIG_BYTES, root=self.host_root)
                configured = [self._path(value.lstrip("/"))
                              for _, value in re.findall(_STORAGE_ROOT, text.decode("utf-8", "replace"))]
            except (OSError, safeio.Refused):
                configured = []
            return configured + [r for r in roots if r not in configured]
        home = self._home(user_uid)
        roots = [os.path.join(home, PODMAN_ROOTLESS_STORAGE)] if home else []
        return [*roots, self._path("run", "user", user_uid, "containers")]

    def _home(self, user_uid: str) -> str:
        """The user's home under the host root: from etc/passwd, else the home/* directory that uid owns (directory
        users, LDAP or SSSD, are not in etc/passwd)."""
        try:
            passwd = safeio.read(self._path("etc", "passwd"), MAX_PASSWD_BYTES, root=self.host_root)
        except (OSError, safeio.Refused):
            passwd = b""
        for line in passwd.decode("utf-8", "replace").splitlines():
            fields = line.split(":")
            if len(fields) >= 6 and fields[2] == user_uid and fields[5].startswith("/"):
                return self._path(fields[5].lstrip("/"))
        try:
            for entry in os.scandir(self._path("home")):
                if entry.is_dir(follow_symlinks=False) and str(entry.stat(follow_symlinks=False).st_uid) == user_uid:
                    return entry.path
        except OSError:
            pass
        return ""


def _cgroups_path(spec: dict[str, Any]) -> str:
    """An OCI spec's linux.cgroupsPath; "" when absent."""
    linux = spec.get("linux")
    path = linux.get("cgroupsPath") if isinstance(linux, dict) else None
    return path if isinstance(path, str) else ""


def _storage_name(entry: Any) -> Optional[tuple[str, str]]:
    """(id, name) of one containers.json entry: the first of `names`, else the name podman put in `metadata`."""
    if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
        return None
    names = entry.get("names")
    if isinstance(names, list) and names and isinstance(names[0], str) and names[0]:
        return entry["id"], safe_name(names[0])
    raw = entry.get("metadata")
    try:
        metadata = safeio.parse_json(raw.encode("utf-8", "surrogatepass")) if isinstance(raw, str) else None
    except safeio.Refused:
        return None
    name = metadata.get("name") if isinstance(metadata, dict) else None
    return (entry["id"], safe_name(name)) if isinstance(name, str) and name else None
