"""NVML initialised, read, and shut down: once for a timer run, for days in the long-running mode.

Why it exists: initialising NVML is the one step whose failure means no GPU can be read at all (`NvmlUnavailable`),
and a process that keeps NVML open must notice when its handles went stale (a lost GPU, a library that no longer
matches the driver) and start afresh. The session owns that life cycle, and what outlives one read: GPM samples,
GPM support per GPU, the long-running mode's utilisation sampling. A read and `--check`'s inventory
(collector.nvml.inventory) both go through it. docs/nvml-driver.md, "A long-running caller".
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Mapping
from typing import Optional

import pynvml

from collector.model import NvmlSnapshot
from collector.nvml import gpm
from collector.nvml.devices import Options, Reader
from collector.nvml.mig_nodes import MissingNode, describe_missing_nodes, missing_capability_nodes
from collector.nvml.query import text
from collector.nvml.sampling import Integrator, carried_last_seen

log = logging.getLogger(__name__)


class NvmlUnavailable(Exception):
    """NVML cannot be used at all: library missing, driver not loaded, no permission."""


class Session:
    """NVML initialised once, for one read (a timer run) or for many (the long-running mode, where GPM samples
    carry over from one read to the next). After a read that met a broken NVML (not initialised, a lost GPU, a
    library mismatch, any failed GPU), the session shuts NVML down so that the next read initialises it afresh
    instead of reporting from a stale handle forever."""

    def __init__(self, long_running: bool = False) -> None:
        self._initialised = False
        self._gpm = gpm.Sampler(keep=long_running)
        self._gpm_support: dict[str, bool] = {}
        self._long_running = long_running
        self.integrator: Optional[Integrator] = None
        # The library this process mapped no longer matches the loaded driver (upgraded, module reloaded while
        # NVML was shut down): only a new process, which maps the new library, can use NVML again.
        self.needs_restart = False
        self._missing_nodes: list[MissingNode] = []

    def tick(self) -> None:
        """Samples per-process utilisation between writes (long-running mode)."""
        if self.integrator is not None and self._initialised:
            self.integrator.tick()

    def gpus(self) -> tuple[str, int]:
        """NVML initialised (if it is not yet) and what it lists: (driver version, GPU count). Raises
        NvmlUnavailable when NVML itself cannot be used."""
        self._init()
        try:  # not collector.nvml.query's policy: an error here is NVML's as a whole, not one GPU's
            return text(pynvml.nvmlSystemGetDriverVersion()), int(pynvml.nvmlDeviceGetCount())
        except pynvml.NVMLError as err:
            raise NvmlUnavailable(f"NVML cannot list GPUs: {err}") from None

    def read(self, devices: Optional[Collection[int]], last_seen_us: Mapping[str, int], now_us: int) -> NvmlSnapshot:
        """Reads every (selected) GPU once. Raises NvmlUnavailable when NVML itself cannot be used."""
        healthy = False
        try:
            snapshot = self._read(devices, last_seen_us, now_us)
            healthy = not snapshot.failed_gpus
            return snapshot
        finally:
            if not healthy:
                self.close()

    def _report_missing_nodes(self) -> None:
        """A warning per read while MIG capability nodes are missing (once per change in the long-running mode)."""
        _, missing = missing_capability_nodes()
        if missing and missing != self._missing_nodes:
            log.warning(describe_missing_nodes(missing))
        self._missing_nodes = missing if self._long_running else []

    def _init(self) -> None:
        if self._initialised:
            return
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as err:
            self.needs_restart = isinstance(err, pynvml.NVMLError_LibRmVersionMismatch)
            raise NvmlUnavailable(f"NVML init failed: {err}") from None
        self._initialised = True
        self._gpm_support.clear()
        self.integrator = Integrator() if self._long_running else None

    def _read(self, devices: Optional[Collection[int]], last_seen_us: Mapping[str, int], now_us: int) -> NvmlSnapshot:
        driver, count = self.gpus()
        reader = Reader(Options(devices=devices, last_seen_us=last_seen_us, now_us=now_us), self._gpm_support,
                        self.integrator)
        opened = [reader.open_gpu(index) for index in range(count) if devices is None or index in devices]
        gpus = [gpu for gpu in opened if gpu is not None]
        if any(gpu.mig_units is not None for gpu in gpus):
            self._report_missing_nodes()
        # The first GPM samples before any process list, the second ones after every other read (measure below):
        # a timer run's GPM_INTERVAL_S between the two passes while the GPUs are read, not after.
        self._gpm.start([target for gpu in gpus for target in gpu.gpm_targets])
        for gpu in gpus:
            reader.read_gpu(gpu)
        listed_at = time.time()  # every process list has been read by now
        if self.integrator is not None:
            self.integrator.new_window(now_us / 1_000_000)
        missing = sorted(set(devices or ()) - set(range(count)))
        if missing:
            log.warning("--devices names GPUs this host does not have: %s", ",".join(map(str, missing)))
        return NvmlSnapshot(
            driver_version=driver,
            devices=tuple(reader.devices),
            processes=tuple(reader.processes),
            failed_gpus=tuple(reader.failed),
            listed_at=listed_at,
            last_seen_us={**carried_last_seen(last_seen_us, reader.read_uuids), **reader.last_seen_us},
            activity=self._gpm.measure(reader.gpm_targets),
            energy_mj=reader.energy_mj,
        )

    def close(self) -> None:
        self._gpm.release()
        self.integrator = None
        if self._initialised:
            self._initialised = False
            try:
                pynvml.nvmlShutdown()
            except pynvml.NVMLError as err:
                log.debug("nvmlShutdown: %s", err)


def read_snapshot(
    devices: Optional[Collection[int]], last_seen_us: Mapping[str, int], now_us: int
) -> NvmlSnapshot:
    """One read in a session of its own (the timer's run): NVML initialised, read, shut down."""
    session = Session()
    try:
        return session.read(devices, last_seen_us, now_us)
    finally:
        session.close()
