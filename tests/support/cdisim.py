"""CDI spec files and NVIDIA MIG capability files on a simulated host, shaped like the real ones.

- Specs are written as CDI's writer writes them (container-device-interface `pkg/cdi/spec.go` `Spec.write`: go-yaml
  v3 behind a `---` line; JSON for a `.json` name). The YAML layout is go-yaml v3's, as nvidia-container-toolkit's
  `cmd/nvidia-ctk/cdi/generate/generate_test.go` expects it: 4-space steps, sequences indented under their key, a
  mapping inside a sequence entry has its first key after the dash and its nested blocks 4 columns right of the
  dash.
- NVIDIA's DRA driver (k8s-dra-driver-gpu `cmd/gpu-kubelet-plugin/cdi.go`) writes one transient spec per claim,
  `/var/run/cdi/k8s.gpu.nvidia.com-claim_<claim UID>.yaml`, kind `k8s.gpu.nvidia.com/claim`, one device per
  allocated GPU named `<claim UID>-gpu-<minor>` (a MIG device: `<claim UID>-gpu-<minor>-mig-<profile>-<profile
  id>-<placement start>`): the GPU's `/dev/nvidia<minor>` node, and for MIG the GPU and compute instance's
  `/dev/nvidia-caps/nvidia-cap<M>` character nodes; the common edits carry nvidiactl, nvidia-uvm, hooks, mounts.
- The driver's capability files: `proc/driver/nvidia/capabilities/gpu<minor>/mig/gi<G>[/ci<C>]/access` with
  `DeviceFileMinor:`, `DeviceFileMode:`, `DeviceFileModify:` lines (k8s-dra-driver-gpu `internal/common/nvcaps.go`
  reads them), and `proc/driver/nvidia-caps/mig-minors`, whose numbering (config 1, monitor 2, then 135 minors per
  GPU: 9 per GPU instance, its own and 8 compute instances') is the one that file shows in nvcaps.go's comment.
"""

from __future__ import annotations

import json
from typing import Any, Optional

import yaml

from tests.support.simhost import HostTree

DRA_KIND = "k8s.gpu.nvidia.com/claim"
CAPS_MAJOR = 236


def gi_minor(gpu_minor: int, gi: int) -> int:
    return 3 + 135 * gpu_minor + 9 * gi


def ci_minor(gpu_minor: int, gi: int, ci: int) -> int:
    return gi_minor(gpu_minor, gi) + 1 + ci


def write_mig_caps(tree: HostTree, gpu_minor: int, instances: list[tuple[int, int]], listing: bool = True) -> None:
    """Access files for each (GPU instance, compute instance) of a GPU, and the mig-minors list."""
    for gi, ci in instances:
        base = f"proc/driver/nvidia/capabilities/gpu{gpu_minor}/mig/gi{gi}"
        tree.write(f"{base}/access", f"DeviceFileMinor: {gi_minor(gpu_minor, gi)}\nDeviceFileMode: 292\n"
                                     "DeviceFileModify: 1\n")
        tree.write(f"{base}/ci{ci}/access", f"DeviceFileMinor: {ci_minor(gpu_minor, gi, ci)}\nDeviceFileMode: 292\n"
                                            "DeviceFileModify: 1\n")
    if listing:
        lines = ["config 1", "monitor 2"]
        for gi in range(15):
            lines.append(f"gpu{gpu_minor}/gi{gi}/access {gi_minor(gpu_minor, gi)}")
            lines += [f"gpu{gpu_minor}/gi{gi}/ci{ci}/access {ci_minor(gpu_minor, gi, ci)}" for ci in range(8)]
        tree.write("proc/driver/nvidia-caps/mig-minors", "\n".join(lines) + "\n")


def gpu_node(minor: int, driver_root: str = "") -> dict[str, Any]:
    return {"path": f"/dev/nvidia{minor}", "hostPath": f"{driver_root}/dev/nvidia{minor}"}


def cap_node(minor: int) -> dict[str, Any]:
    return {"path": f"/dev/nvidia-caps/nvidia-cap{minor}", "type": "c", "major": CAPS_MAJOR, "minor": minor,
            "fileMode": 292}


COMMON_EDITS = {
    "env": ["NVIDIA_CTK_LIBCUDA_DIR=/lib/x86_64-linux-gnu", "NVIDIA_VISIBLE_DEVICES=void"],
    "deviceNodes": [{"path": "/dev/nvidiactl", "hostPath": "/dev/nvidiactl"},
                    {"path": "/dev/nvidia-uvm", "hostPath": "/dev/nvidia-uvm"},
                    {"path": "/dev/nvidia-uvm-tools", "hostPath": "/dev/nvidia-uvm-tools"}],
    "hooks": [{"hookName": "createContainer", "path": "/usr/bin/nvidia-cdi-hook",
               "args": ["nvidia-cdi-hook", "create-symlinks", "--link",
                        "libcuda.so.1::/lib/x86_64-linux-gnu/libcuda.so"],
               "env": ["NVIDIA_CTK_DEBUG=false"]},
              {"hookName": "createContainer", "path": "/usr/bin/nvidia-cdi-hook",
               "args": ["nvidia-cdi-hook", "update-ldcache", "--folder", "/lib/x86_64-linux-gnu"],
               "env": ["NVIDIA_CTK_DEBUG=false"]}],
    "mounts": [{"hostPath": "/lib/x86_64-linux-gnu/libcuda.so.580.95.05",
                "containerPath": "/lib/x86_64-linux-gnu/libcuda.so.580.95.05",
                "options": ["ro", "nosuid", "nodev", "rbind", "rprivate"]}],
}


def gpu_device(claim_uid: str, minor: int) -> dict[str, Any]:
    return {"name": f"{claim_uid}-gpu-{minor}", "containerEdits": {"deviceNodes": [gpu_node(minor)]}}


def mig_device(claim_uid: str, minor: int, gi: int, ci: int, *, profile: str = "1g10gb", profile_id: int = 19,
               placement: int = 0) -> dict[str, Any]:
    return {"name": f"{claim_uid}-gpu-{minor}-mig-{profile}-{profile_id}-{placement}",
            "containerEdits": {"deviceNodes": [gpu_node(minor), cap_node(gi_minor(minor, gi)),
                                               cap_node(ci_minor(minor, gi, ci))]}}


def spec(kind: str, devices: list[dict[str, Any]], common: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    return {"cdiVersion": "0.5.0", "kind": kind, "devices": devices,
            "containerEdits": COMMON_EDITS if common is None else common}


def claim_spec_path(claim_uid: str, ext: str = "yaml") -> str:
    return f"var/run/cdi/k8s.gpu.nvidia.com-claim_{claim_uid}.{ext}"


def qualified(device: dict[str, Any], kind: str = DRA_KIND) -> str:
    return f"{kind}={device['name']}"


# ---- go-yaml v3's layout ----

def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    text = str(value)
    plain_ok = (text and _plain_is_string(text) and text.strip() == text and ": " not in text
                and " #" not in text and not text.endswith(":") and text[0] not in "-?:,[]{}#&*!|>'\"%@`"
                and text.isprintable())
    return text if plain_ok else json.dumps(text)


def _plain_is_string(text: str) -> bool:
    """Whether text, written plain, reads back as that string (not a number, a boolean or null)."""
    return bool(yaml.resolver.Resolver().resolve(yaml.ScalarNode, text, (True, False)) == "tag:yaml.org,2002:str")


def go_yaml(document: dict[str, Any]) -> str:
    lines = ["---"]
    _mapping(document, key_column=0, base=0, lines=lines, first_prefix=None)
    return "\n".join(lines) + "\n"


def _mapping(mapping: dict[str, Any], key_column: int, base: int, lines: list[str],
             first_prefix: Optional[str]) -> None:
    for n, (key, value) in enumerate(mapping.items()):
        prefix = first_prefix if n == 0 and first_prefix is not None else " " * key_column
        if isinstance(value, dict) and value:
            lines.append(f"{prefix}{key}:")
            _mapping(value, key_column=base + 4, base=base + 4, lines=lines, first_prefix=None)
        elif isinstance(value, list) and value:
            lines.append(f"{prefix}{key}:")
            _sequence(value, dash=base + 4, lines=lines)
        elif isinstance(value, (dict, list)):
            lines.append(f"{prefix}{key}: {'{}' if isinstance(value, dict) else '[]'}")
        else:
            lines.append(f"{prefix}{key}: {_scalar(value)}")


def _sequence(items: list[Any], dash: int, lines: list[str]) -> None:
    for item in items:
        if isinstance(item, dict) and item:
            _mapping(item, key_column=dash + 2, base=dash, lines=lines, first_prefix=" " * dash + "- ")
        else:
            lines.append(" " * dash + "- " + _scalar(item))


def write_spec(tree: HostTree, path: str, document: dict[str, Any]) -> None:
    tree.write(path, json.dumps(document) if path.endswith(".json") else go_yaml(document))
