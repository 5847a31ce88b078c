"""The MIG capability device nodes NVML needs, read from the driver's files without NVML.

Why it exists: NVML reaches a MIG instance through a device node under /dev/nvidia-caps and, where the node is
missing, has the setuid nvidia-modprobe create it; under the unit (NoNewPrivileges=, no CAP_MKNOD) that fails and
the instance stays invisible, with no NVML error to say so. A read that meets a GPU in MIG mode, and `--check`
before it initialises NVML, compare the driver's capability files with the nodes present and name what is
missing (docs/nvml-driver.md, "MIG capability nodes").
"""

from __future__ import annotations

import glob
import os
import re
import stat
from collections.abc import Sequence
from typing import NamedTuple, Optional

CAPABILITIES = "proc/driver/nvidia/capabilities"
CAP_NODES = "dev/nvidia-caps"
_MINOR = re.compile(r"^DeviceFileMinor:\s*(\d{1,9})\s*$", re.MULTILINE)

_root = "/"  # where /proc/driver/nvidia and /dev/nvidia-caps are read (use_host_root)


def use_host_root(host_root: str) -> None:
    """Reads the driver's capability files and device nodes under host_root from now on (--host-root)."""
    global _root  # noqa: PLW0603  (one setting for the process, as collector.procfs keeps its own)
    _root = host_root


class MissingNode(NamedTuple):
    access: str  # the capability's access file, as the driver names it: /proc/driver/nvidia/capabilities/...
    node: str  # the device node NVML opens for it: /dev/nvidia-caps/nvidia-cap<minor>


def _read_small(path: str, limit: int = 4096) -> str:
    """A driver file's text, at most limit bytes; '' when it cannot be read. Opened without blocking: a FIFO put
    there would otherwise hold the run until a writer came."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return ""
    try:
        return os.read(fd, limit).decode(errors="replace")
    except OSError:
        return ""
    finally:
        os.close(fd)


def missing_capability_nodes(root: Optional[str] = None) -> tuple[int, list[MissingNode]]:
    """The MIG GPU and compute instances the driver has (an access file each under
    /proc/driver/nvidia/capabilities/gpu<N>/mig/, naming the minor number of its node), and those whose node
    /dev/nvidia-caps/nvidia-cap<minor> is missing. NVML opens that node to reach the instance and, where it is
    missing, has the setuid nvidia-modprobe create it: under the unit (NoNewPrivileges=, no CAP_MKNOD) that
    fails, and the instance stays invisible. (instances found, those missing their node)."""
    base = root if root is not None else _root
    pattern = os.path.join(base, CAPABILITIES, "gpu*", "mig", "gi*")
    files = sorted(glob.glob(os.path.join(pattern, "access")) + glob.glob(os.path.join(pattern, "ci*", "access")))
    missing = []
    for path in files[:4096]:  # 8 GPUs x 7 GPU instances x 8 compute instances at most, by far
        found = _MINOR.search(_read_small(path))
        if not found:
            continue
        node = os.path.join(base, CAP_NODES, f"nvidia-cap{int(found.group(1))}")
        try:
            present = stat.S_ISCHR(os.stat(node).st_mode)
        except OSError:
            present = False
        if not present:
            missing.append(MissingNode("/" + os.path.relpath(path, base), "/" + os.path.relpath(node, base)))
    return len(files), missing


def describe_missing_nodes(missing: Sequence[MissingNode]) -> str:
    """One line: which nodes are missing, what it costs, and the command that creates them."""
    shown = ", ".join(m.node for m in missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
    return (f"{len(missing)} MIG capability device node{'s are' if len(missing) > 1 else ' is'} missing ({shown}): "
            "NVML cannot create them without privileges (the unit runs with NoNewPrivileges= and no CAP_MKNOD), so "
            "the collector does not see those MIG instances or their processes; create them as root with "
            f"nvidia-modprobe -f {missing[0].access}" + (" (and each other access file)" if len(missing) > 1 else ""))
