"""The run's settings: one frozen, typed record with one default per value, built from the config file and the
command line (which wins). Every other module reads a `Settings` (or a part of it), never a raw dict.

The config file is a JSON object whose keys are the field names below; `CONFIG_TYPES` says which JSON types each
accepts, and an unknown key or a wrong type is a usage error, so a typo never passes silently.
"""

# No `from __future__ import annotations`: a NamedTuple's string annotations cost a compile() each at
# import (docs/performance.md).

import os
import re
from collections.abc import Mapping
from typing import Any, NamedTuple, Optional, Union

TEXTFILE_NAME = "gpu_processes.prom"
POD_RESOURCES_SOCKET = "var/lib/kubelet/pod-resources/kubelet.sock"  # under the host root


class UsageError(Exception):
    """Bad command line or configuration (exit 2)."""


class Settings(NamedTuple):
    textfile_dir: Optional[str] = None  # None: print the metrics instead of writing TEXTFILE_NAME there
    host_root: str = "/"
    state_dir: str = "/var/lib/gpu-proc-collector"
    devices: Optional[frozenset[int]] = None  # None: every GPU
    pod_resources_socket: Optional[str] = None  # None: POD_RESOURCES_SOCKET under the host root
    pod_resources_timeout: float = 10.0
    resource_names: tuple[str, ...] = ()  # extra extended-resource names that carry GPUs
    # Cgroups of nested kubelets (kind, minikube: the node container's, "/docker/<id>"; "*" is any one segment):
    # a kubepods tree directly below one is a pod. Below any other container it is not (docs/runtimes-and-cgroups.md).
    cgroup_roots: tuple[str, ...] = ()
    # Native metrics name the Kubernetes labels with this prefix ("k8s_" -> k8s_pod), for scrapes that would
    # otherwise rename pod to exported_pod. The compatible metrics keep their names.
    label_prefix: str = ""
    command_args: bool = False  # export redacted command lines (gpu_process_command_info)
    # Per-process series per node (8 GPUs x 7 MIG instances with dozens of processes each); beyond it, aggregated.
    max_process_series: int = 2000
    # Owners with accounting series of their own (gpu_owner_*_total); the rest share owner_kind="overflow"
    # (docs/accounting.md, "Owner budget").
    max_owner_series: int = 1000
    deadline: float = 40.0  # below the unit's TimeoutStartSec=50, so the run, not systemd, writes the failed file
    interval: Optional[float] = None  # None: one collection, then exit; else the long-running mode's write period
    sample_interval: float = 5.0  # long-running mode: seconds between per-process utilisation samples
    # Seconds between a timer's runs (the role writes its schedule's period): a gap of more than three is not
    # filled by accounting. The long-running mode uses its interval.
    nominal_interval: float = 60.0
    log_level: str = "info"
    # --check only: where node_exporter serves its metrics; None: from the running node_exporter's flags
    # (collector/check_node_exporter.py). For one behind TLS or a password, or one --check cannot see as a process.
    node_exporter_url: Optional[str] = None

    @property
    def textfile(self) -> Optional[str]:
        return os.path.join(self.textfile_dir, TEXTFILE_NAME) if self.textfile_dir else None

    @property
    def socket(self) -> str:
        return self.pod_resources_socket or os.path.join(self.host_root, POD_RESOURCES_SOCKET)


DEFAULTS = Settings()
_NUMBER = (int, float)
CONFIG_TYPES: dict[str, Union[type, tuple[type, ...]]] = {
    "textfile_dir": str,
    "host_root": str,
    "state_dir": str,
    "devices": list,
    "pod_resources_socket": str,
    "pod_resources_timeout": _NUMBER,
    "resource_names": list,
    "cgroup_roots": list,
    "label_prefix": str,
    "command_args": bool,
    "max_process_series": int,
    "max_owner_series": int,
    "deadline": _NUMBER,
    "interval": _NUMBER,
    "sample_interval": _NUMBER,
    "nominal_interval": _NUMBER,
    "log_level": str,
    "node_exporter_url": str,
}
LOG_LEVELS = ("debug", "info", "warning", "error")


def parse_devices(text: str) -> frozenset[int]:
    """`0,1,3` -> {0, 1, 3}; empty means every GPU."""
    try:
        devices = frozenset(int(part) for part in text.replace(" ", "").split(",") if part != "")
    except ValueError:
        raise UsageError(f"--devices takes GPU indices separated by commas, e.g. 0,1 (got {text!r})") from None
    if any(d < 0 for d in devices):
        raise UsageError(f"--devices takes non-negative GPU indices (got {text!r})")
    return devices


def check_types(config: Mapping[str, Any], source: str) -> None:
    for key, value in config.items():
        if key not in CONFIG_TYPES:
            raise UsageError(f"{source}: unknown key {key!r} (known: {', '.join(CONFIG_TYPES)})")
        wrong_bool = isinstance(value, bool) and CONFIG_TYPES[key] is not bool
        if value is not None and (wrong_bool or not isinstance(value, CONFIG_TYPES[key])):
            raise UsageError(f"{source}: {key} has the wrong type ({type(value).__name__})")


def _devices(value: Any) -> Optional[frozenset[int]]:
    if isinstance(value, str):
        return parse_devices(value) or None
    if value is None:
        return None
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value):
        raise UsageError("devices must list non-negative GPU indices")
    return frozenset(value) or None


def _positive(value: Any, option: str) -> float:
    if value <= 0:
        raise UsageError(f"{option} must be a positive number of seconds")
    return float(value)


def build(values: Mapping[str, Any]) -> Settings:
    """Settings from merged config and command-line values (None or absent: the default). Raises UsageError."""
    v = {key: value for key, value in values.items() if value is not None}
    label_prefix = v.get("label_prefix", DEFAULTS.label_prefix)
    if label_prefix and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", label_prefix):
        raise UsageError(f"--label-prefix must be letters, digits and underscores (got {label_prefix!r})")
    resource_names = tuple(v.get("resource_names", ()))
    if not all(isinstance(name, str) and name for name in resource_names):
        raise UsageError("resource_names must list extended-resource names")
    cgroup_roots = tuple(v.get("cgroup_roots", ()))
    if not all(isinstance(root, str) and root.startswith("/") and root.strip("/") for root in cgroup_roots):
        raise UsageError("cgroup_roots must list cgroup paths below the root, each starting with /")
    max_series = v.get("max_process_series", DEFAULTS.max_process_series)
    if max_series < 0:
        raise UsageError("--max-process-series must be 0 or more")
    max_owners = v.get("max_owner_series", DEFAULTS.max_owner_series)
    if max_owners < 0:
        raise UsageError("--max-owner-series must be 0 or more")
    log_level = str(v.get("log_level", DEFAULTS.log_level)).lower()
    if log_level not in LOG_LEVELS:
        raise UsageError(f"log_level must be one of {', '.join(LOG_LEVELS)} (got {log_level!r})")
    node_exporter_url = v.get("node_exporter_url") or None
    if node_exporter_url is not None and not re.match(r"https?://[^/?#\s]+", node_exporter_url):
        raise UsageError(f"--node-exporter-url must be an http:// or https:// URL (got {node_exporter_url!r})")
    return Settings(
        textfile_dir=v.get("textfile_dir") or None,
        host_root=v.get("host_root") or DEFAULTS.host_root,
        state_dir=v.get("state_dir") or DEFAULTS.state_dir,
        devices=_devices(v.get("devices")),
        pod_resources_socket=v.get("pod_resources_socket") or None,
        pod_resources_timeout=_positive(v.get("pod_resources_timeout", DEFAULTS.pod_resources_timeout),
                                        "--pod-resources-timeout"),
        resource_names=resource_names,
        cgroup_roots=cgroup_roots,
        label_prefix=label_prefix,
        command_args=bool(v.get("command_args", DEFAULTS.command_args)),
        max_process_series=max_series,
        max_owner_series=max_owners,
        deadline=_positive(v.get("deadline", DEFAULTS.deadline), "--deadline"),
        interval=_positive(v["interval"], "--interval") if "interval" in v else None,
        sample_interval=_positive(v.get("sample_interval", DEFAULTS.sample_interval), "--sample-interval"),
        nominal_interval=_positive(v.get("nominal_interval", DEFAULTS.nominal_interval), "nominal_interval"),
        log_level=log_level,
        node_exporter_url=node_exporter_url,
    )
