"""What differs from one driver, and one nvidia-ml-py, to the next: the calls with versions.

Why it exists: the process lists and the memory figures each have a current call and an older one, and which one
works depends on the driver the host loaded (docs/nvml-driver.md). Every reader wants the same thing (a GPU's
process entries, its memory total and use); this module picks the call that answers it on this driver, once:

- the process lists: the `*_RunningProcesses_v3` symbols, read with pynvml's entry structure or, on early R535
  drivers, the 32-byte one those write; the `_v2` wrappers on R470-R495 drivers, which lack `_v3`;
- the memory: `nvmlDeviceGetMemoryInfo_v2` where the driver has it, v1 elsewhere.

The nvidia-ml-py floor in pyproject.toml is set by what this module needs of pynvml at import
(`c_nvmlProcessInfo_v3_t`; `NVMLLibraryMismatchError` in collector.nvml.query), docs/nvml-driver.md.
"""

from __future__ import annotations

import ctypes
import logging
from typing import Any, NamedTuple, Optional

import pynvml

from collector.nvml.query import GpuFailed, is_missing_function, note_missing, note_once, noted, query

log = logging.getLogger(__name__)

NA_MEMORY = 0xFFFFFFFFFFFFFFFF
NA_ID = 0xFFFFFFFF  # a process entry's GPU / compute instance id outside MIG, or for a caller NVML does not tell

# (list, the call whose *_v3 symbol current drivers have, the _v2 wrapper of R470..R495 drivers)
PROCESS_LISTS: tuple[tuple[str, str, str], ...] = (
    ("compute", "nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetComputeRunningProcesses_v2"),
    ("graphics", "nvmlDeviceGetGraphicsRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses_v2"),
    ("mps", "nvmlDeviceGetMPSComputeRunningProcesses", "nvmlDeviceGetMPSComputeRunningProcesses_v2"),
)


class _ProcessInfoR535(ctypes.Structure):
    """The 32-byte process entry early R535 drivers (535.54.x) write for *_RunningProcesses_v3 without changing
    its version: pynvml's 24-byte array then comes back garbled from the second entry on (docs/nvml-driver.md)."""

    _fields_ = [
        ("pid", ctypes.c_uint),
        ("usedGpuMemory", ctypes.c_ulonglong),
        ("gpuInstanceId", ctypes.c_uint),
        ("computeInstanceId", ctypes.c_uint),
        ("usedGpuCcProtectedMemory", ctypes.c_ulonglong),
    ]


_PROCESS_INFO = pynvml.c_nvmlProcessInfo_v3_t  # the entry of the *_RunningProcesses_v3 calls, as pynvml reads it


class Entry(NamedTuple):
    """One process entry of a list, as read here (pynvml's _v2 wrappers answer their own objects, which carry
    the same names)."""

    pid: int
    usedGpuMemory: Optional[int]  # the names pynvml's entries carry
    gpuInstanceId: int = NA_ID
    computeInstanceId: int = NA_ID


def _has_symbol(name: str) -> bool:
    try:
        pynvml._nvmlGetFunctionPointer(name)  # pynvml's own (private) symbol lookup, as nvitop uses it
    except pynvml.NVMLError_FunctionNotFound:
        return False
    return True


def _driver_writes_32_byte_entries() -> bool:
    """nvitop's test for those drivers: the confidential-computing call exists, the R535.104 fix does not."""
    if _has_symbol("nvmlDeviceGetConfComputeMemSizeInfo") and not _has_symbol("nvmlDeviceGetRunningProcessDetailList"):
        note_once("r535-struct", "this driver writes 32-byte process entries (early R535); reading them as such")
        return True
    return False


def _running_processes(handle: Any, wrapper: str, entry: Any) -> list[Entry]:
    """The count-then-fill call of pynvml's wrapper (its *_v3 symbol), with the given entry structure: pynvml's
    own, or the 32-byte one of early R535 drivers. pynvml's wrapper turns each entry into an object field by field,
    through its structures' Python __getattribute__, which costs more than the call itself; the fields are read
    here through the structure's descriptors instead (docs/performance.md)."""
    fn = pynvml._nvmlGetFunctionPointer(wrapper + "_v3")
    count = ctypes.c_uint(0)
    ret = fn(handle, ctypes.byref(count), None)
    if ret == pynvml.NVML_SUCCESS:
        return []
    if ret != pynvml.NVML_ERROR_INSUFFICIENT_SIZE:
        raise pynvml.NVMLError(ret)
    count.value = count.value * 2 + 5  # room for processes starting meanwhile, as pynvml allows
    entries = (entry * count.value)()
    ret = fn(handle, ctypes.byref(count), entries)
    if ret != pynvml.NVML_SUCCESS:
        raise pynvml.NVMLError(ret)
    pid, used, gi, ci = (entry.pid.__get__, entry.usedGpuMemory.__get__, entry.gpuInstanceId.__get__,
                         entry.computeInstanceId.__get__)
    return [Entry(pid(e), None if used(e) == NA_MEMORY else used(e), gi(e), ci(e)) for e in entries[: count.value]]


def process_lists(handle: Any) -> list[Any]:
    """The entries of the compute, graphics and MPS lists together.

    Its own error policy, not query's: a missing `_v3` symbol is not answered with a default but with the `_v2`
    wrapper, and a driver with neither compute call fails the GPU (a GPU whose processes cannot be listed has
    nothing to report). `NOT_SUPPORTED` on a `_v3` call skips that list; on a `_v2` wrapper it fails the GPU, as
    any other error of these calls does."""
    entries: list[Any] = []
    r535 = _driver_writes_32_byte_entries()
    for kind, current, older in PROCESS_LISTS:
        try:
            entries.extend(_running_processes(handle, current, _ProcessInfoR535 if r535 else _PROCESS_INFO))
            continue
        except pynvml.NVMLError_NotSupported:
            continue
        except Exception as err:
            if not is_missing_function(err):
                raise
            note_missing(current + "_v3")
        try:
            entries.extend(getattr(pynvml, older)(handle))
        except pynvml.NVMLError_FunctionNotFound:
            note_missing(older)
            if kind == "compute":
                raise GpuFailed("this driver offers no process list NVML call") from None
    return entries


def memory(handle: Any) -> tuple[Optional[int], Optional[int]]:
    """(total, used) bytes. nvmlDeviceGetMemoryInfo_v2 where the driver has it: its `used` leaves out the memory
    the driver and firmware reserve, which v1's `used` includes and which would otherwise show up as memory no
    process accounts for (docs/nvml-driver.md). v1 on drivers without it, and wherever v2 is refused on one handle
    (what drivers answer v2 on a MIG device handle is not documented): v1's figures rather than none."""
    if not noted("nvmlDeviceGetMemoryInfo_v2"):  # once missing, always missing: v1 straight away
        info = query(pynvml.nvmlDeviceGetMemoryInfo, handle, pynvml.nvmlMemory_v2, default=None,
                     name="nvmlDeviceGetMemoryInfo_v2",
                     tolerate=(pynvml.NVMLError_ArgumentVersionMismatch, pynvml.NVMLError_NoPermission))
        if info is not None:
            return int(info.total), int(info.used)
    info = query(pynvml.nvmlDeviceGetMemoryInfo, handle, default=None, tolerate=(pynvml.NVMLError_NoPermission,))
    if info is None:
        return None, None
    return int(info.total), int(info.used)
