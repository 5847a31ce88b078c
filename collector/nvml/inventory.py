"""What `--check` reports about NVML: the driver version and every GPU, whatever --devices selects.

Why it exists: the check asks what a run would meet, so it reads the GPUs through the run's own session
(collector.nvml.session) and the run's own calls (collector.nvml.devices), not a second init/shutdown path; and
it reads what only the check reports (persistence mode, how many MIG devices) without making a timer run import
it: collector.check imports this module, a run does not.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import pynvml

from collector.nvml.devices import mig_device, mig_enabled
from collector.nvml.query import GpuFailed, query, text
from collector.nvml.session import Session


class GpuInventory(NamedTuple):
    index: int  # type: ignore[assignment]  # shadows tuple.index, as meant
    uuid: str = ""
    name: str = ""
    mig_enabled: bool = False
    mig_devices: int = 0  # MIG devices (compute instances) configured
    persistence_mode: Optional[bool] = None  # None: the platform does not support it (nothing to enable)
    error: str = ""  # NVML's message when the GPU could not be read (lost, no permission ...)


class Inventory(NamedTuple):
    driver_version: str
    gpus: tuple[GpuInventory, ...]  # every GPU NVML lists, whatever --devices selects


def read() -> Inventory:
    """The driver version and every GPU, in an NVML session of its own. Raises NvmlUnavailable."""
    session = Session()
    try:
        driver, count = session.gpus()
        return Inventory(driver, tuple(_gpu(index) for index in range(count)))
    finally:
        session.close()


def _gpu(index: int) -> GpuInventory:
    uuid = ""
    try:
        handle = query(pynvml.nvmlDeviceGetHandleByIndex, index)
        uuid = text(query(pynvml.nvmlDeviceGetUUID, handle))
        name = text(query(pynvml.nvmlDeviceGetName, handle))
        mig = mig_enabled(handle)
        slots = int(query(pynvml.nvmlDeviceGetMaxMigDeviceCount, handle)) if mig else 0
        mig_devices = sum(1 for slot in range(slots) if mig_device(handle, slot) is not None)
        mode = query(pynvml.nvmlDeviceGetPersistenceMode, handle, default=None)
        persistence = None if mode is None else mode == pynvml.NVML_FEATURE_ENABLED
        return GpuInventory(index, uuid, name, mig, mig_devices, persistence)
    except (GpuFailed, pynvml.NVMLError) as err:
        return GpuInventory(index, uuid, error=str(err))
