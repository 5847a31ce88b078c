"""GPM, GPU Performance Monitoring (Hopper and newer): device activity per GPU and per MIG GPU instance.

Why it exists: GPM is the one NVML reading made of two samples taken apart in time, so it has its own timing (a
timer run takes the pairs around the process lists, the long-running mode carries each second sample over as the
next first one) and its own memory to free (each sample is allocated by NVML). docs/nvml-driver.md, "GPM (GPU
Performance Monitoring)".

Its error policy is its own, not collector.nvml.query's: GPM is an extra measured outside any one GPU's read, so
every error, a lost GPU included, leaves that GPU's activity out (logged at debug level) and fails nothing; the
GPU's own reads report it when it is lost.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple, Optional

import pynvml

from collector.model import DeviceActivity
from collector.nvml.query import note_missing

log = logging.getLogger(__name__)

# nvml.h: the two samples "should be greater than 100ms" apart, the driver's internal refresh period; a window right at
# it can straddle no refresh. 20 ms of margin (docs/nvml-driver.md, "GPM").
GPM_INTERVAL_S = 0.12
GPM_METRICS = (  # DeviceActivity field, NVML metric id
    ("sm_util", 2),  # NVML_GPM_METRIC_SM_UTIL
    ("sm_occupancy", 3),  # NVML_GPM_METRIC_SM_OCCUPANCY
    ("tensor_active", 5),  # NVML_GPM_METRIC_ANY_TENSOR_UTIL
    ("dram_bw_util", 10),  # NVML_GPM_METRIC_DRAM_BW_UTIL
)


class Target(NamedTuple):
    key: str  # the GPU's UUID, or "<GPU UUID>/gi<id>" for a MIG GPU instance
    label: str  # the device label its activity is reported under
    handle: Any  # the physical GPU's handle
    gpu_instance: Optional[int]  # None: the whole GPU


def supported(handle: Any) -> bool:
    try:
        return bool(pynvml.nvmlGpmQueryDeviceSupport(handle).isSupportedDevice)
    except pynvml.NVMLError_FunctionNotFound:
        note_missing("nvmlGpmQueryDeviceSupport")
    except pynvml.NVMLError as err:
        log.debug("GPM support query: %s", err)
    return False


class Sampler:
    """Pairs of GPM samples. In a one-shot run both are taken inside the run, GPM_INTERVAL_S apart at least:
    the first ones before the process lists are read (start), the second ones once everything else is (measure),
    which sleeps only what is left of the interval (wall time, no CPU). In the long-running mode each
    measurement's second sample is the next one's first, so the activity spans the whole interval between two
    writes."""

    def __init__(self, keep: bool) -> None:
        self.keep = keep
        self.previous: dict[str, tuple[float, Any]] = {}  # target key -> (monotonic time, sample)
        self.firsts: dict[str, tuple[float, Any]] = {}  # the same, for the measurement in progress

    def start(self, targets: Iterable[Target]) -> None:
        """Each target's first sample: the one kept from the last measurement, or one taken now."""
        for target in targets:
            first = self.previous.pop(target.key, None) or self._sample(target)
            if first is not None:
                self.firsts[target.key] = first
        _drop(self.previous)  # samples of targets gone since the last measurement

    def measure(self, targets: Sequence[Target]) -> dict[str, DeviceActivity]:
        """The activity of each target since its first sample (taken now where start() did not take one)."""
        self.start([target for target in targets if target.key not in self.firsts])
        firsts = {target.key: self.firsts.pop(target.key) for target in targets if target.key in self.firsts}
        _drop(self.firsts)  # targets not measured: their GPU failed after its first sample
        if firsts:
            time.sleep(max(0.0, max(t for t, _ in firsts.values()) + GPM_INTERVAL_S - time.monotonic()))
        out: dict[str, DeviceActivity] = {}
        for target in targets:
            if target.key not in firsts:
                continue
            started, first = firsts[target.key]
            second = self._sample(target)
            if second is not None:
                activity = _metrics(first, second[1], second[0] - started)
                if activity is not None:
                    out[target.label] = activity
                if self.keep:
                    self.previous[target.key] = second
                else:
                    _free(second[1])
            _free(first)
        return out

    @staticmethod
    def _sample(target: Target) -> Optional[tuple[float, Any]]:
        try:
            sample = pynvml.nvmlGpmSampleAlloc()
        except pynvml.NVMLError as err:
            log.debug("GPM sample allocation: %s", err)
            return None
        try:
            if target.gpu_instance is None:
                pynvml.nvmlGpmSampleGet(target.handle, sample)
            else:
                pynvml.nvmlGpmMigSampleGet(target.handle, target.gpu_instance, sample)
        except pynvml.NVMLError as err:
            log.debug("GPM sample of %s: %s", target.key, err)
            _free(sample)
            return None
        return time.monotonic(), sample

    def release(self) -> None:
        _drop(self.previous)
        _drop(self.firsts)


def _drop(samples: dict[str, tuple[float, Any]]) -> None:
    for _, sample in samples.values():
        _free(sample)
    samples.clear()


def _free(sample: Any) -> None:
    try:
        pynvml.nvmlGpmSampleFree(sample)
    except pynvml.NVMLError as err:
        log.debug("GPM sample free: %s", err)


def _metrics(first: Any, second: Any, seconds: float) -> Optional[DeviceActivity]:
    """The GPM metrics between two samples; None when the call fails. A metric with its own error, a NaN (what
    samples taken too close together can yield) or a value outside 0..100 is None: never a made-up number."""
    request = pynvml.c_nvmlGpmMetricsGet_t()
    request.version = pynvml.NVML_GPM_METRICS_GET_VERSION
    request.numMetrics = len(GPM_METRICS)
    request.sample1 = first
    request.sample2 = second
    for i, (_, metric_id) in enumerate(GPM_METRICS):
        request.metrics[i].metricId = metric_id
    try:
        pynvml.nvmlGpmMetricsGet(request)
    except pynvml.NVMLError as err:
        log.debug("GPM metrics: %s", err)
        return None
    values: dict[str, Optional[float]] = {}
    for i, (name, _) in enumerate(GPM_METRICS):
        metric = request.metrics[i]
        value = float(metric.value)
        ok = metric.nvmlReturn == pynvml.NVML_SUCCESS and 0.0 <= value <= 100.0  # NaN compares False
        values[name] = value if ok else None
    return DeviceActivity(seconds=round(seconds, 6), **values)
