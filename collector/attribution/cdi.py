"""CDI spec files on this host, and NVIDIA's MIG capability files: which device nodes a CDI device name stands for.

A DRA claim's devices reach a container as CDI device names (`vendor/class=name`, kubelet's
`ClaimResource.cdi_devices`); the runtime looks each up in the spec files of `/etc/cdi` and `/var/run/cdi`
(later directory wins; two files of one directory defining the same name are a conflict, and the name is not
defined) and applies its `containerEdits`. The collector reads the same files, under the host root, and keeps
only the device nodes: `/dev/nvidia<N>` is the GPU whose minor number is N, and
`/dev/nvidia-caps/nvidia-cap<M>` a MIG GPU or compute instance, which the driver's capability files map back
(`proc/driver/nvidia/capabilities/gpu<N>/mig/gi<G>[/ci<C>]/access` say `DeviceFileMinor: M`;
`proc/driver/nvidia-caps/mig-minors` lists `gpu<N>/gi<G>/ci<C>/access M`). Sources and shapes: docs/allocation.md.

Nothing here guesses: a device that cannot be read for certain raises `CdiUnresolved` with one of
model.CDI_UNRESOLVED_REASONS, and the caller treats its claim as unknown.
"""

# No `from __future__ import annotations`: a NamedTuple's string annotations cost a compile() each at
# import (docs/performance.md).

import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NamedTuple, Optional

from collector import safeio

log = logging.getLogger(__name__)

SPEC_DIRS = ("etc/cdi", "var/run/cdi")  # CDI's static and dynamic directories, lowest priority first
MAX_SPEC_BYTES = 1 << 20  # a spec for 8 GPUs with every MIG layout is about 100 KiB (docs/allocation.md)
MAX_MIG_MINORS_BYTES = 1 << 20  # 135 lines of about 25 bytes per GPU
MAX_ACCESS_FILE_BYTES = 4096  # three short lines
MAX_SPEC_FILES = 4096  # per directory; DRA drivers write one transient spec per prepared claim
CAPABILITIES = "proc/driver/nvidia/capabilities"
MIG_MINORS = "proc/driver/nvidia-caps/mig-minors"

_VENDOR_OR_CLASS = r"[A-Za-z](?:[A-Za-z0-9_.-]*[A-Za-z0-9])?"
_KIND = rf"({_VENDOR_OR_CLASS})/({_VENDOR_OR_CLASS})"
_DEVICE_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9_.:-]*[A-Za-z0-9])?"
# Numbers of at most 9 digits (a minor has 20 bits): a longer one is no device, and never reaches int()
_GPU_NODE = r"(?:^|/)dev/nvidia([0-9]{1,9})"
_CAP_NODE = r"(?:^|/)dev/nvidia-caps/nvidia-cap([0-9]{1,9})"
_CAP_FILE = r"gpu([0-9]{1,9})/gi([0-9]{1,9})(?:/ci([0-9]{1,9}))?/access"
_MINOR_LINE = r"(?m)DeviceFileMinor:[ \t]*([0-9]{1,9})[ \t]*$"
_NUMBER = r"[0-9]{1,9}"

_logged: set[tuple[str, str]] = set()  # (name or path, reason) already logged by this process


class CdiUnresolved(Exception):
    """A CDI device that cannot be placed. reason: one of model.CDI_UNRESOLVED_REASONS; the message says why."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def log_once(key: str, reason: str, message: str) -> None:
    """Each unresolved name (or bad file) is logged once per process, not once per run of --interval."""
    if (key, reason) not in _logged:
        _logged.add((key, reason))
        log.info("%s", message)


def parse_qualified(name: str) -> Optional[tuple[str, str]]:
    """(kind, device name) of `vendor/class=name` (CDI's parser.ParseQualifiedName rules), None otherwise."""
    kind, sep, device = name.partition("=")
    if not sep or not re.fullmatch(_KIND, kind) or not re.fullmatch(_DEVICE_NAME, device):
        return None
    return kind, device


class CdiDevice(NamedTuple):
    name: str  # fully qualified
    spec: str  # the file that defines it
    nodes: tuple[str, ...]  # host paths of its device nodes: its own and its spec's common ones


class NodeRefs(NamedTuple):
    """The GPU device nodes among a device's nodes: GPU minors, and MIG capability minors."""

    gpus: frozenset[int]
    caps: frozenset[int]


def node_refs(paths: Iterable[str]) -> NodeRefs:
    gpus, caps = set(), set()
    for path in paths:
        gpu = re.search(_GPU_NODE, path)
        cap = re.search(_CAP_NODE, path)
        if cap and cap.end() == len(path):
            caps.add(int(cap[1]))
        elif gpu and gpu.end() == len(path):
            gpus.add(int(gpu[1]))
    return NodeRefs(frozenset(gpus), frozenset(caps))


def spec_dirs(host_root: str) -> list[str]:
    """The two directories under the host root. /var/run is normally a link to /run, which would point out of
    the host root: then its cdi directory is read at <host root>/run/cdi."""
    out = [os.path.join(host_root, SPEC_DIRS[0])]
    var_run = os.path.join(host_root, "var/run")
    out.append(os.path.join(host_root, "run/cdi") if os.path.islink(var_run) else os.path.join(var_run, "cdi"))
    return out


class _Bad(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def _read_spec(path: str, host_root: str) -> Any:
    try:
        raw = safeio.read(path, MAX_SPEC_BYTES, root=host_root)
    except FileNotFoundError as err:
        raise _Bad("unreadable", f"cannot read it: {err.strerror}") from None
    except safeio.Refused as err:
        raise _Bad("unreadable", str(err)) from None
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _Bad("malformed", "not UTF-8") from None
    if path.endswith(".json"):
        try:
            return safeio.parse_json(raw)
        except safeio.Refused as err:
            raise _Bad("malformed", str(err)) from None
    from collector import strictyaml  # noqa: PLC0415 - PyYAML only for a host that has a YAML spec

    try:
        return strictyaml.load(raw)
    except strictyaml.YamlRefused as err:
        raise _Bad(err.reason, str(err)) from None


def _nodes(edits: Any, where: str) -> list[str]:
    """The host paths of a containerEdits object's device nodes (hostPath, or path where it has none)."""
    if edits is None:
        return []
    if not isinstance(edits, dict):
        raise _Bad("malformed", f"{where}containerEdits is not an object")
    nodes = edits.get("deviceNodes")
    if nodes is None:
        return []
    if not isinstance(nodes, list):
        raise _Bad("malformed", f"{where}deviceNodes is not a list")
    paths = []
    for node in nodes:
        path = node.get("path") if isinstance(node, dict) else None
        host = node.get("hostPath") if isinstance(node, dict) else None
        if not isinstance(path, str) or not path or not isinstance(host, (str, type(None))):
            raise _Bad("malformed", f"{where}a device node without a path")
        paths.append(host or path)
    return paths


def _devices(document: Any) -> Iterator[tuple[str, tuple[str, ...]]]:
    """(qualified name, device node paths) of each device of a spec, checked as CDI's validateSpec does the
    parts read here."""
    if not isinstance(document, dict):
        raise _Bad("malformed", "not a CDI spec (no top-level object)")
    version, kind, devices = document.get("cdiVersion"), document.get("kind"), document.get("devices")
    if not isinstance(version, str) or not version:
        raise _Bad("malformed", "no cdiVersion")
    if not isinstance(kind, str) or not re.fullmatch(_KIND, kind):
        raise _Bad("malformed", f"kind {kind!r} is not vendor/class")
    if not isinstance(devices, list) or not devices:
        raise _Bad("malformed", "no devices")
    common = _nodes(document.get("containerEdits"), "the spec's ")
    seen: set[str] = set()
    for device in devices:
        name = device.get("name") if isinstance(device, dict) else None
        if not isinstance(name, str) or not re.fullmatch(_DEVICE_NAME, name):
            raise _Bad("malformed", f"a device named {name!r}")
        if name in seen:
            raise _Bad("malformed", f"device {name!r} defined twice")
        seen.add(name)
        assert isinstance(device, dict)
        own = _nodes(device.get("containerEdits"), f"device {name!r}: ")
        yield f"{kind}={name}", tuple(own + common)


class SpecIndex:
    """Every CDI device defined under the host root's spec directories, read once (on first use)."""

    def __init__(self, host_root: str) -> None:
        self.host_root = host_root
        self._devices: Optional[dict[str, tuple[int, CdiDevice]]] = None
        self._conflicts: set[str] = set()
        self._bad: dict[str, tuple[str, str]] = {}  # path -> (reason, detail)

    def _load(self) -> dict[str, tuple[int, CdiDevice]]:
        devices: dict[str, tuple[int, CdiDevice]] = {}
        for priority, directory in enumerate(spec_dirs(self.host_root)):
            try:
                names = sorted(e.name for e in os.scandir(directory)
                               if e.name.endswith((".json", ".yaml")) and not e.is_dir())
            except OSError:
                continue  # no such directory: no specs there
            if len(names) > MAX_SPEC_FILES:
                log.warning("%s holds %d spec files; reading the first %d", directory, len(names), MAX_SPEC_FILES)
            for file_name in names[:MAX_SPEC_FILES]:
                path = os.path.join(directory, file_name)
                try:
                    found = list(_devices(_read_spec(path, self.host_root)))
                except _Bad as err:
                    self._bad[path] = (err.reason, str(err))
                    continue
                for name, nodes in found:
                    earlier = devices.get(name)
                    if earlier is not None and earlier[0] == priority:
                        self._conflicts.add(name)
                    devices[name] = (priority, CdiDevice(name, path, nodes))
        for name in self._conflicts:
            devices.pop(name, None)
        return devices

    def device(self, name: str) -> CdiDevice:
        """The device named name. Raises CdiUnresolved."""
        if self._devices is None:
            self._devices = self._load()
        qualified = parse_qualified(name)
        if qualified is None:
            raise CdiUnresolved("bad_name", f"CDI device {name!r} is not vendor/class=name")
        found = self._devices.get(name)
        if found is not None:
            return found[1]
        if name in self._conflicts:
            raise CdiUnresolved("conflict", f"CDI device {name} is defined by two spec files of one directory")
        bad = self._bad_spec_for(*qualified)
        if bad is not None:
            path, (reason, detail) = bad
            raise CdiUnresolved(reason, f"CDI device {name}: spec {path} unusable: {detail}")
        raise CdiUnresolved("not_found", f"CDI device {name} is defined by no spec under "
                                         f"{' or '.join(spec_dirs(self.host_root))}")

    def _bad_spec_for(self, kind: str, device: str) -> Optional[tuple[str, tuple[str, str]]]:
        """An unusable spec file named as the one that would define the device, by CDI's file naming
        (GenerateSpecName / GenerateTransientSpecName: `<vendor>-<class>[_<transient id>].<ext>`; NVIDIA's DRA
        driver names a claim's devices `<claim UID>-...` in `k8s.gpu.nvidia.com-claim_<claim UID>.yaml`)."""
        stem = kind.replace("/", "-")
        for path, why in self._bad.items():
            base = os.path.splitext(os.path.basename(path))[0]
            if base == stem or (base.startswith(stem + "_") and device.startswith(base[len(stem) + 1:])):
                return path, why
        return None


class MigCap(NamedTuple):
    gpu_minor: int
    gpu_instance: int
    compute_instance: Optional[int]  # None: the GPU instance's own capability


def read_mig_caps(host_root: str) -> Mapping[int, Optional[MigCap]]:
    """nvidia-cap minor -> the MIG GPU or compute instance it grants (None: a capability that grants none, MIG
    `config` or `monitor`), from the driver's mig-minors list and its access files (they agree; the access files
    win)."""
    caps: dict[int, Optional[MigCap]] = {}
    try:
        listing = safeio.read(os.path.join(host_root, MIG_MINORS), MAX_MIG_MINORS_BYTES, root=host_root)
    except (OSError, safeio.Refused):
        listing = b""
    for line in listing.decode("utf-8", "replace").splitlines():
        parts = line.split()
        if len(parts) != 2 or not re.fullmatch(_NUMBER, parts[1]):
            continue
        match = re.fullmatch(_CAP_FILE, parts[0])
        if match:
            caps[int(parts[1])] = _cap(match)
        elif parts[0] in ("config", "monitor"):
            caps[int(parts[1])] = None
    root = os.path.join(host_root, CAPABILITIES)
    for special in ("config", "monitor"):
        minor = _minor_of(os.path.join(root, "mig", special), host_root)
        if minor is not None:
            caps[minor] = None
    try:
        gpus = [e.name for e in os.scandir(root) if e.name.startswith("gpu")]
    except OSError:
        return caps
    for gpu in gpus:
        for directory, _dirs, files in os.walk(os.path.join(root, gpu, "mig")):
            if "access" not in files:
                continue
            relative = os.path.relpath(os.path.join(directory, "access"), root).replace("/mig/", "/", 1)
            match = re.fullmatch(_CAP_FILE, relative)
            minor = _minor_of(os.path.join(directory, "access"), host_root) if match else None
            if match and minor is not None:
                caps[minor] = _cap(match)
    return caps


def _minor_of(path: str, host_root: str) -> Optional[int]:
    """The `DeviceFileMinor:` of a capability file (the driver also writes DeviceFileMode and DeviceFileModify)."""
    try:
        text = safeio.read(path, MAX_ACCESS_FILE_BYTES, root=host_root).decode("utf-8", "replace")
    except (OSError, safeio.Refused):
        return None
    found = re.search(_MINOR_LINE, text)
    return int(found[1]) if found else None


def _cap(match: re.Match[str]) -> MigCap:
    return MigCap(int(match[1]), int(match[2]), int(match[3]) if match[3] is not None else None)
