"""The stand-in NVML library, driven through the real pynvml in a subprocess started with LD_LIBRARY_PATH."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from tests.conftest import require_tool
from tests.support.simhost import (
    GIB,
    Gpu,
    compute_instance,
    gpu_instance,
    mig_instance,
    mig_uuid,
    proc,
    scenario,
    set_fault,
    update_scenario,
    write_scenario,
)

PRELUDE = """
import ctypes, json, pynvml
from pynvml import *
def out(x): print(json.dumps(x))
def code(fn, *a):
    try:
        fn(*a)
        return 0
    except NVMLError as e:
        return e.value
"""


def pynvml_run(tmp_path: Path, lib: Path, document: Optional[dict[str, Any]], body: str) -> Any:
    path = write_scenario(tmp_path / "scenario.json", document) if document is not None else None
    return pynvml_run_file(lib, path, body)


def pynvml_run_file(lib: Path, path: Optional[Path], body: str) -> Any:
    """body run by the real pynvml in a new process (so a new nvmlInit) against the scenario file at path."""
    env = {**os.environ, "LD_LIBRARY_PATH": str(lib)}
    if path is not None:
        env["FAKE_NVML_SCENARIO"] = str(path)
    else:
        env.pop("FAKE_NVML_SCENARIO", None)
    script = PRELUDE + textwrap.dedent(body)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, env=env, timeout=60, check=False)
    assert result.returncode == 0, result.stderr.decode()
    return json.loads(result.stdout.decode().strip().splitlines()[-1])


def two_gpus() -> dict[str, Any]:
    instances = [mig_instance(1, slot=0, gi=1, ci=0, profile="3g.40gb", total_gib=40, compute=[proc(30, 2 * GIB)]),
                 mig_instance(1, slot=4, gi=7, ci=2, profile="1g.10gb", total_gib=10, compute=[proc(31, None)])]
    return scenario([
        Gpu(0, compute=[proc(10, GIB), proc(11, 2 * GIB)], graphics=[proc(10, GIB)],
            samples=[{"pid": 10, "timestamp_us": 1000, "sm": 5}, {"pid": 11, "timestamp_us": 2000, "sm": 7}]),
        Gpu(1, mig=instances),
    ])


def test_process_lists_follow_the_count_then_fill_protocol(tmp_path: Path, fake_nvml: Path) -> None:
    got = pynvml_run(tmp_path, fake_nvml, two_gpus(), """
        nvmlInit()
        h = nvmlDeviceGetHandleByIndex(0)
        fn = pynvml._nvmlGetFunctionPointer("nvmlDeviceGetComputeRunningProcesses_v3")
        count = ctypes.c_uint(0)
        first = fn(h, ctypes.byref(count), None)
        small = (pynvml.c_nvmlProcessInfo_v3_t * 1)()
        one = ctypes.c_uint(1)
        too_small = fn(h, ctypes.byref(one), small)
        procs = [(p.pid, p.usedGpuMemory, p.gpuInstanceId) for p in nvmlDeviceGetComputeRunningProcesses(h)]
        empty = nvmlDeviceGetMPSComputeRunningProcesses(h)
        out([first, count.value, too_small, procs, empty, ctypes.sizeof(pynvml.c_nvmlProcessInfo_v3_t)])
    """)
    assert got == [7, 2, 7, [[10, GIB, 0xFFFFFFFF], [11, 2 * GIB, 0xFFFFFFFF]], [], 24]


def test_utilisation_samples_newer_than_last_seen_else_not_found(tmp_path: Path, fake_nvml: Path) -> None:
    got = pynvml_run(tmp_path, fake_nvml, two_gpus(), """
        nvmlInit()
        h = nvmlDeviceGetHandleByIndex(0)
        all_ = [(s.pid, s.timeStamp, s.smUtil) for s in nvmlDeviceGetProcessUtilization(h, 0)]
        newer = [(s.pid, s.smUtil) for s in nvmlDeviceGetProcessUtilization(h, 1000)]
        out([all_, newer, code(nvmlDeviceGetProcessUtilization, h, 2000)])
    """)
    assert got == [[[10, 1000, 5], [11, 2000, 7]], [[11, 7]], 6]  # 6: NVML_ERROR_NOT_FOUND


def test_the_newer_utilisation_call_checks_its_struct_version(tmp_path: Path, fake_nvml: Path) -> None:
    got = pynvml_run(tmp_path, fake_nvml, two_gpus(), """
        nvmlInit()
        h = nvmlDeviceGetHandleByIndex(0)
        samples = [(s.pid, s.smUtil) for s in nvmlDeviceGetProcessesUtilizationInfo(h, 0)]
        info = pynvml.c_nvmlProcessesUtilizationInfo_v1_t()
        info.version = 1
        wrong = pynvml._nvmlGetFunctionPointer("nvmlDeviceGetProcessesUtilizationInfo")(h, ctypes.byref(info))
        out([samples, wrong])
    """)
    assert got == [[[10, 5], [11, 7]], 25]


def test_mig_handles_sparse_slots_aggregate_lists_and_no_utilisation(tmp_path: Path, fake_nvml: Path) -> None:
    got = pynvml_run(tmp_path, fake_nvml, two_gpus(), """
        nvmlInit()
        h = nvmlDeviceGetHandleByIndex(1)
        mode = nvmlDeviceGetMigMode(h)
        n = nvmlDeviceGetMaxMigDeviceCount(h)
        slots = [code(nvmlDeviceGetMigDeviceHandleByIndex, h, i) for i in range(n)]
        m = nvmlDeviceGetMigDeviceHandleByIndex(h, 4)
        ids = [nvmlDeviceIsMigDeviceHandle(m).value, nvmlDeviceGetGpuInstanceId(m), nvmlDeviceGetComputeInstanceId(m)]
        parent = nvmlDeviceGetUUID(nvmlDeviceGetDeviceHandleFromMigDeviceHandle(m))
        agg = [(p.pid, p.usedGpuMemory, p.gpuInstanceId, p.computeInstanceId)
               for p in nvmlDeviceGetComputeRunningProcesses(h)]
        own = [p.pid for p in nvmlDeviceGetComputeRunningProcesses(m)]
        util = [code(nvmlDeviceGetProcessUtilization, h, 0), code(nvmlDeviceGetProcessUtilization, m, 0)]
        by_uuid = nvmlDeviceGetName(nvmlDeviceGetHandleByUUID(nvmlDeviceGetUUID(m)))
        plain = code(nvmlDeviceGetMigMode, nvmlDeviceGetHandleByIndex(0))
        out([mode, n, slots, ids, parent, agg, own, util, by_uuid, nvmlDeviceGetMemoryInfo(m).total, plain])
    """)
    mode, n, slots, ids, parent, agg, own, util, by_uuid, total, plain = got
    assert mode == [1, 1]
    assert n == 7
    assert slots == [0, 6, 6, 6, 0, 6, 6]  # NOT_FOUND for empty slots
    assert ids == [1, 7, 2]
    assert parent == "GPU-00000001-1111-2222-3333-000000000001"
    assert agg == [[30, 2 * GIB, 1, 0], [31, None, 7, 2]]
    assert own == [31]
    assert util == [3, 3]  # NOT_SUPPORTED on the MIG parent and on the instance
    assert by_uuid == "NVIDIA H100 80GB HBM3 MIG 1g.10gb"
    assert total == 10 * GIB
    assert plain == 3


def test_is_mig_device_handle_returns_a_c_uint_as_in_pynvml(tmp_path: Path, fake_nvml: Path) -> None:
    got = pynvml_run(tmp_path, fake_nvml, two_gpus(), """
        nvmlInit()
        m = nvmlDeviceGetMigDeviceHandleByIndex(nvmlDeviceGetHandleByIndex(1), 0)
        r = nvmlDeviceIsMigDeviceHandle(m)
        out([type(r).__name__, r.value, nvmlDeviceGetUUID(m)])
    """)
    assert got == ["c_uint", 1, mig_uuid(1, 0)]


def test_injected_errors_top_level_per_device_and_a_lost_parent(tmp_path: Path, fake_nvml: Path) -> None:
    doc = two_gpus()
    doc["errors"] = {"nvmlSystemGetDriverVersion": "NVML_ERROR_NO_PERMISSION"}
    doc["devices"][1]["errors"] = {"*": "NVML_ERROR_GPU_IS_LOST"}
    doc["devices"][0]["errors"] = {"nvmlDeviceGetMemoryInfo": 999}
    got = pynvml_run(tmp_path, fake_nvml, doc, """
        nvmlInit()
        h0, h1 = nvmlDeviceGetHandleByIndex(0), code(nvmlDeviceGetHandleByIndex, 1)
        out([code(nvmlSystemGetDriverVersion), code(nvmlDeviceGetMemoryInfo, h0), code(nvmlDeviceGetName, h0), h1,
             str(NVMLError(15))])
    """)
    assert got == [4, 999, 0, 15, "GPU is lost"]


def test_init_fails_without_a_scenario_or_when_told_to(tmp_path: Path, fake_nvml: Path) -> None:
    missing = pynvml_run(tmp_path, fake_nvml, None, "out(code(nvmlInit))")
    told = pynvml_run(tmp_path, fake_nvml, scenario([], errors={"nvmlInitWithFlags": "NVML_ERROR_NO_PERMISSION"}),
                      "out(code(nvmlInit))")
    assert (missing, told) == (9, 4)


@pytest.mark.parametrize("build", ["", "r470", "r535"])
def test_every_build_loads_on_the_glibc_the_real_driver_supports(fake_nvml: Path, build: str) -> None:
    """The real library needs glibc 2.17 (the R550 README); a build on a newer glibc must not ask for more, or it
    would not load on Debian 11 (glibc 2.31), where Molecule runs it (fake_nvml.c, GLIBC_FIRST)."""
    dynamic = subprocess.run([require_tool("objdump"), "-T", "-p", str(fake_nvml / build / "libnvidia-ml.so.1")],
                             capture_output=True, text=True, check=True).stdout
    versions = {tuple(int(n) for n in v.split(".")) for v in re.findall(r"\(GLIBC_([0-9.]+)\)", dynamic)}
    assert versions
    assert max(versions) <= (2, 17), sorted(versions)
    assert "NEEDED               libpthread.so.0" in dynamic


def test_the_r470_variant_lacks_the_v3_symbols(tmp_path: Path, fake_nvml: Path) -> None:
    got = pynvml_run(tmp_path, fake_nvml / "r470", two_gpus(), """
        nvmlInit()
        h = nvmlDeviceGetHandleByIndex(0)
        try:
            nvmlDeviceGetComputeRunningProcesses(h)
            unversioned = "no error"
        except NVMLLibraryMismatchError:
            unversioned = "NVMLLibraryMismatchError"
        out([unversioned, code(nvmlDeviceGetComputeRunningProcesses_v3, h),
             [p.pid for p in nvmlDeviceGetComputeRunningProcesses_v2(h)],
             code(nvmlDeviceGetProcessesUtilizationInfo, h, 0)])
    """)
    assert got == ["NVMLLibraryMismatchError", 13, [10, 11], 13]


def test_a_process_starting_between_count_and_fill_fits_pynvmls_spare_room(tmp_path: Path, fake_nvml: Path) -> None:
    doc = scenario([Gpu(0, compute=[proc(10)])])
    doc["devices"][0]["processes_started_after_count"] = [proc(12), proc(13)]
    got = pynvml_run(tmp_path, fake_nvml, doc, """
        nvmlInit()
        out([p.pid for p in nvmlDeviceGetComputeRunningProcesses(nvmlDeviceGetHandleByIndex(0))])
    """)
    assert got == [10, 12, 13]


@pytest.mark.parametrize("bad", ["{", '{"devices": [1, 2', "[]", "null", '{"devices": "x"}'])
def test_a_malformed_scenario_fails_init_or_reads_as_no_gpus(tmp_path: Path, fake_nvml: Path, bad: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(bad)
    env = {**os.environ, "LD_LIBRARY_PATH": str(fake_nvml), "FAKE_NVML_SCENARIO": str(path)}
    script = PRELUDE + "out([code(nvmlInit), nvmlDeviceGetCount() if code(nvmlInit) == 0 else -1])"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, env=env, timeout=60, check=False)
    init, count = json.loads(result.stdout)
    assert (init, count) in ((9, -1), (0, 0))


def test_the_r535_variant_garbles_pynvmls_24_byte_entries(tmp_path: Path, fake_nvml: Path) -> None:
    """What the collector works around: through plain pynvml the second entry on is shifted by 8 bytes."""
    doc = scenario([Gpu(0, compute=[proc(10, 1000), proc(11, 2000), proc(12, 3000)])])
    got = pynvml_run(tmp_path, fake_nvml / "r535", doc, """
        nvmlInit()
        h = nvmlDeviceGetHandleByIndex(0)
        out([[p.pid, p.usedGpuMemory] for p in nvmlDeviceGetComputeRunningProcesses(h)])
    """)
    assert got[0] == [10, 1000]
    assert got[1] != [11, 2000]  # the shuffle docs/nvml-driver.md describes


# ---- per-process utilisation shapes (docs/nvml-driver.md, "Per-process utilisation") ----

UTIL_CALLS = ["nvmlDeviceGetProcessUtilization", "nvmlDeviceGetProcessesUtilizationInfo"]
SEVERAL_PER_PID = [{"pid": 10, "timestamp_us": 1000, "sm": 5}, {"pid": 10, "timestamp_us": 3000, "sm": 9},
                   {"pid": 11, "timestamp_us": 2000, "sm": 7}, {"pid": 10, "timestamp_us": 2500, "sm": 6}]


def utilisation(tmp_path: Path, fake_nvml: Path, gpu: Gpu, call: str, last_seen: int) -> Any:
    """[[pid, timeStamp, smUtil], ...] from the pynvml call, or the NVML error code it raised."""
    return pynvml_run(tmp_path, fake_nvml, scenario([gpu]), f"""
        nvmlInit()
        try:
            out([[s.pid, s.timeStamp, s.smUtil] for s in {call}(nvmlDeviceGetHandleByIndex(0), {last_seen})])
        except NVMLError as e:
            out(e.value)
    """)


@pytest.mark.parametrize("call", UTIL_CALLS)
def test_the_default_shape_gives_each_pid_once_with_its_newest_sample(tmp_path: Path, fake_nvml: Path,
                                                                      call: str) -> None:
    got = utilisation(tmp_path, fake_nvml, Gpu(0, compute=[proc(10), proc(11)], samples=SEVERAL_PER_PID), call, 0)
    assert Counter(pid for pid, _, _ in got) == {10: 1, 11: 1}
    assert sorted(got) == [[10, 3000, 9], [11, 2000, 7]]


@pytest.mark.parametrize("call", UTIL_CALLS)
def test_the_latest_shape_still_filters_on_last_seen(tmp_path: Path, fake_nvml: Path, call: str) -> None:
    got = utilisation(tmp_path, fake_nvml, Gpu(0, compute=[proc(10), proc(11)], samples=SEVERAL_PER_PID), call, 2000)
    assert got == [[10, 3000, 9]]


@pytest.mark.parametrize("call", UTIL_CALLS)
def test_the_buffered_shape_gives_every_sample_newer_than_last_seen(tmp_path: Path, fake_nvml: Path,
                                                                    call: str) -> None:
    gpu = Gpu(0, compute=[proc(10), proc(11)], samples=SEVERAL_PER_PID, utilization_shape="buffered")
    got = utilisation(tmp_path, fake_nvml, gpu, call, 1000)
    assert Counter(pid for pid, _, _ in got) == {10: 2, 11: 1}
    assert all(ts > 1000 for _, ts, _ in got)


def test_a_fixed_size_answer_whatever_the_load(tmp_path: Path, fake_nvml: Path) -> None:
    """go-nvml #11: the size query answers 100; the fill then reports the entries it wrote."""
    gpu = Gpu(0, compute=[proc(10), proc(11)], samples=SEVERAL_PER_PID, utilization_size_answer=100)
    got = pynvml_run(tmp_path, fake_nvml, scenario([gpu]), """
        nvmlInit()
        h = nvmlDeviceGetHandleByIndex(0)
        fn = pynvml._nvmlGetFunctionPointer("nvmlDeviceGetProcessUtilization")
        sizes = []
        for last_seen in (0, 10**18):  # with entries, and with none newer
            count = ctypes.c_uint(0)
            sizes.append([fn(h, None, ctypes.byref(count), ctypes.c_ulonglong(last_seen)), count.value])
        out([sizes, len(nvmlDeviceGetProcessUtilization(h, 0)), code(nvmlDeviceGetProcessUtilization, h, 10**18)])
    """)
    sizes, entries, nothing_newer = got
    assert sizes == [[7, 100], [7, 100]]  # INSUFFICIENT_SIZE, 100, both times
    assert entries == 2
    assert nothing_newer == 6  # the fill: NOT_FOUND


def test_a_fill_that_leaves_the_count_gives_pynvml_zeroed_slots(tmp_path: Path, fake_nvml: Path) -> None:
    """nvtop #110: Count=100 after the fill, the entries past the written ones all zero."""
    gpu = Gpu(0, compute=[proc(10), proc(11)], samples=SEVERAL_PER_PID, utilization_size_answer=100,
              utilization_fill_count="unchanged")
    got = utilisation(tmp_path, fake_nvml, gpu, "nvmlDeviceGetProcessUtilization", 0)
    assert len(got) == 100
    assert sorted(got)[-2:] == [[10, 3000, 9], [11, 2000, 7]]
    assert sorted(got)[:98] == [[0, 0, 0]] * 98


@pytest.mark.parametrize("call", UTIL_CALLS)
def test_garbage_entries_come_back_whatever_last_seen_says(tmp_path: Path, fake_nvml: Path, call: str) -> None:
    garbage = [{"pid": 50554, "sm": 4294967295, "timestamp_us": 49936}, {"pid": 10, "sm": 37100, "future_s": 3600}]
    gpu = Gpu(0, compute=[proc(10)], samples=[{"pid": 10, "age_s": 5, "sm": 40}], utilization_garbage=garbage)
    now_us = int(time.time() * 1e6)
    got = utilisation(tmp_path, fake_nvml, gpu, call, now_us)
    assert sorted((pid, sm) for pid, _, sm in got) == [(10, 37100), (50554, 4294967295)]
    stamps = {pid: ts for pid, ts, _ in got}
    assert stamps[50554] == 49936  # far older than lastSeenTimeStamp
    assert stamps[10] > now_us + 10**9  # in the future


# ---- memory ----

def test_memory_v1_used_includes_reserved_memory_v2_reports_it_apart(tmp_path: Path, fake_nvml: Path) -> None:
    doc = scenario([Gpu(0)])
    doc["devices"][0]["memory"] = {"total": 80 * GIB, "used": 2 * GIB, "reserved": GIB // 2}
    got = pynvml_run(tmp_path, fake_nvml, doc, """
        nvmlInit()
        h = nvmlDeviceGetHandleByIndex(0)
        v1, v2 = nvmlDeviceGetMemoryInfo(h), nvmlDeviceGetMemoryInfo(h, version=nvmlMemory_v2)
        out([[v1.total, v1.used, v1.free], [v2.version, v2.total, v2.reserved, v2.used, v2.free]])
    """)
    v1, v2 = got
    assert v1 == [80 * GIB, 2 * GIB + GIB // 2, 80 * GIB - 2 * GIB - GIB // 2]
    assert v2 == [0x02000028, 80 * GIB, GIB // 2, 2 * GIB, v1[2]]


def test_the_r470_variant_lacks_memory_v2_and_gpm(tmp_path: Path, fake_nvml: Path) -> None:
    got = pynvml_run(tmp_path, fake_nvml / "r470", scenario([Gpu(0, gpm={"supported": True})]), """
        nvmlInit()
        h = nvmlDeviceGetHandleByIndex(0)
        out([code(nvmlDeviceGetMemoryInfo, h, nvmlMemory_v2), code(nvmlGpmQueryDeviceSupport, h),
             code(nvmlGpmSampleAlloc), code(nvmlDeviceGetMemoryInfo, h)])
    """)
    assert got == [13, 13, 13, 0]  # FUNCTION_NOT_FOUND; v1 memory answers


# ---- MIG compute instances sharing a GPU instance ----

def shared_gpu_instance(ci_lists_gi_processes: bool) -> dict[str, Any]:
    """GPU 0: GPU instance 1 (40 GiB) with compute instances 0 and 1, and GPU instance 2 with one of its own."""
    cis = [compute_instance(0, slot=0, gi=1, ci=0, profile="1c.3g.40gb", compute=[proc(40, 3 * GIB)]),
           compute_instance(0, slot=1, gi=1, ci=1, profile="2c.3g.40gb", compute=[proc(41, 5 * GIB)]),
           mig_instance(0, slot=4, gi=2, ci=0, profile="1g.10gb", total_gib=10, compute=[proc(42, GIB)])]
    return scenario([Gpu(0, mig=cis, gpu_instances=[gpu_instance(1, total_gib=40, used=8 * GIB)],
                         ci_lists_gi_processes=ci_lists_gi_processes)])


def test_each_compute_instance_reports_its_gpu_instances_memory(tmp_path: Path, fake_nvml: Path) -> None:
    got = pynvml_run(tmp_path, fake_nvml, shared_gpu_instance(False), """
        nvmlInit()
        h = nvmlDeviceGetHandleByIndex(0)
        rows = []
        for slot in (0, 1, 4):
            m = nvmlDeviceGetMigDeviceHandleByIndex(h, slot)
            v1, v2 = nvmlDeviceGetMemoryInfo(m), nvmlDeviceGetMemoryInfo(m, version=nvmlMemory_v2)
            rows.append([v1.total, v1.used, v2.total, v2.used])
        out(rows)
    """)
    ci0, ci1, other = got
    assert ci0 == ci1 == [40 * GIB, 8 * GIB, 40 * GIB, 8 * GIB]
    assert other[0] == 10 * GIB


@pytest.mark.parametrize("ci_lists_gi", [False, True])
def test_a_compute_instance_lists_its_own_or_its_gpu_instances_processes(tmp_path: Path, fake_nvml: Path,
                                                                        ci_lists_gi: bool) -> None:
    got = pynvml_run(tmp_path, fake_nvml, shared_gpu_instance(ci_lists_gi), """
        nvmlInit()
        h = nvmlDeviceGetHandleByIndex(0)
        def ids(d):
            procs = nvmlDeviceGetComputeRunningProcesses(d)
            return sorted([p.pid, p.gpuInstanceId, p.computeInstanceId] for p in procs)
        out([ids(h), ids(nvmlDeviceGetMigDeviceHandleByIndex(h, 0)), ids(nvmlDeviceGetMigDeviceHandleByIndex(h, 4))])
    """)
    parent, ci0, other = got
    assert parent == [[40, 1, 0], [41, 1, 1], [42, 2, 0]]  # every process once, with the ids it runs on
    assert ci0 == ([[40, 1, 0], [41, 1, 1]] if ci_lists_gi else [[40, 1, 0]])
    assert other == [[42, 2, 0]]


# ---- GPM ----

GPM_VALUES = {"supported": True, "sm_util": 63.5, "sm_occupancy": 20.0, "any_tensor_util": 10.0, "dram_bw_util": 30.0}

GPM_PRELUDE = """
def metrics(first, second, ids, sample=nvmlGpmSampleGet, wait=0.15):
    s1, s2 = nvmlGpmSampleAlloc(), nvmlGpmSampleAlloc()
    sample(*first, s1)
    time.sleep(wait)
    sample(*second, s2)
    mg = c_nvmlGpmMetricsGet_t()
    mg.version = NVML_GPM_METRICS_GET_VERSION
    mg.numMetrics = len(ids)
    mg.sample1, mg.sample2 = s1, s2
    for i, metric in enumerate(ids):
        mg.metrics[i].metricId = metric
    try:
        nvmlGpmMetricsGet(mg)
        got = [[m.metricId, m.nvmlReturn, m.value] for m in mg.metrics[:len(ids)]]
    except NVMLError as e:
        got = e.value
    nvmlGpmSampleFree(s1)
    nvmlGpmSampleFree(s2)
    return got
"""


def gpm_run(tmp_path: Path, fake_nvml: Path, document: dict[str, Any], body: str) -> Any:
    return pynvml_run(tmp_path, fake_nvml, document, "import time\n" + GPM_PRELUDE + textwrap.dedent(body))


def test_gpm_support_is_reported_not_raised(tmp_path: Path, fake_nvml: Path) -> None:
    doc = scenario([Gpu(0, gpm=GPM_VALUES), Gpu(1), Gpu(2, gpm={"supported": False})])
    got = gpm_run(tmp_path, fake_nvml, doc, """
        nvmlInit()
        rows = []
        for i in range(3):
            h = nvmlDeviceGetHandleByIndex(i)
            support = nvmlGpmQueryDeviceSupport(h).isSupportedDevice
            rows.append([support, code(nvmlGpmSampleGet, h, nvmlGpmSampleAlloc())])
        out(rows)
    """)
    assert got == [[1, 0], [0, 3], [0, 3]]  # pre-Hopper: isSupportedDevice 0, then NOT_SUPPORTED to sample


def test_gpm_metrics_from_two_samples_100ms_apart(tmp_path: Path, fake_nvml: Path) -> None:
    got = gpm_run(tmp_path, fake_nvml, scenario([Gpu(0, gpm=GPM_VALUES)]), """
        nvmlInit()
        h = nvmlDeviceGetHandleByIndex(0)
        out([metrics([h], [h], [2, 3, 5, 10, 1, 14, 477]), NVML_GPM_METRIC_MAX, ctypes.sizeof(c_nvmlGpmMetricsGet_t)])
    """)
    values, metric_max, size = got
    assert values[:4] == [[2, 0, 63.5], [3, 0, 20.0], [5, 0, 10.0], [10, 0, 30.0]]
    assert values[4] == [1, 0, 0.0]  # a defined metric the scenario leaves out
    assert [v[1] for v in values[5:]] == [2, 2]  # ids nvml.h does not define: an error in the metric's entry
    assert (metric_max, size) == (477, 24 + 40 * 477)  # the array the stand-in's layout assumes


def test_gpm_samples_closer_than_100ms_are_refused(tmp_path: Path, fake_nvml: Path) -> None:
    got = gpm_run(tmp_path, fake_nvml, scenario([Gpu(0, gpm=GPM_VALUES)]), """
        nvmlInit()
        h = nvmlDeviceGetHandleByIndex(0)
        out(metrics([h], [h], [2], wait=0))
    """)
    assert got == 2  # INVALID_ARGUMENT: the stand-in's choice, nvml.h does not say (docs/nvml-driver.md)


def test_gpm_samples_closer_than_100ms_can_give_nan_instead(tmp_path: Path, fake_nvml: Path) -> None:
    got = gpm_run(tmp_path, fake_nvml, scenario([Gpu(0, gpm={**GPM_VALUES, "too_close": "nan"})]), """
        nvmlInit()
        h = nvmlDeviceGetHandleByIndex(0)
        out([[m, r, str(v)] for m, r, v in metrics([h], [h], [2], wait=0)])
    """)
    assert got == [[2, 0, "nan"]]


def test_gpm_on_mig_samples_a_compute_instance_or_a_gpu_instance(tmp_path: Path, fake_nvml: Path) -> None:
    cis = [compute_instance(0, slot=0, gi=1, ci=0, profile="1c.3g.40gb"),
           compute_instance(0, slot=1, gi=1, ci=1, profile="2c.3g.40gb")]
    cis[0]["gpm"] = {"sm_util": 10.0}
    cis[1]["gpm"] = {"sm_util": 30.0}
    gis = [gpu_instance(1, total_gib=40, gpm={"sm_util": 40.0})]
    doc = scenario([Gpu(0, mig=cis, gpu_instances=gis, gpm={"supported": True})])
    got = gpm_run(tmp_path, fake_nvml, doc, """
        nvmlInit()
        h = nvmlDeviceGetHandleByIndex(0)
        m0, m1 = nvmlDeviceGetMigDeviceHandleByIndex(h, 0), nvmlDeviceGetMigDeviceHandleByIndex(h, 1)
        sm = lambda rows: rows if isinstance(rows, int) else rows[0][2]
        out([sm(metrics([m0], [m0], [2])), sm(metrics([m1], [m1], [2])),
             sm(metrics([h, 1], [h, 1], [2], sample=nvmlGpmMigSampleGet)),
             nvmlGpmQueryDeviceSupport(m0).isSupportedDevice,
             code(nvmlGpmMigSampleGet, h, 9, nvmlGpmSampleAlloc()),
             code(nvmlGpmMigSampleGet, m0, 1, nvmlGpmSampleAlloc())])
    """)
    assert got == [10.0, 30.0, 40.0, 1, 6, 2]  # unknown GPU instance: NOT_FOUND; a MIG handle: INVALID_ARGUMENT


# ---- energy ----

READ_ENERGY = "nvmlInit(); out(nvmlDeviceGetTotalEnergyConsumption(nvmlDeviceGetHandleByIndex(0)))"


def test_energy_is_one_counter_across_inits(tmp_path: Path, fake_nvml: Path) -> None:
    epoch = time.time() - 10
    doc = scenario([Gpu(0, energy_mj=1_000_000, energy_mj_per_s=1000.0, energy_epoch_s=epoch)])
    path = write_scenario(tmp_path / "energy.json", doc)
    first = pynvml_run_file(fake_nvml, path, READ_ENERGY)
    time.sleep(0.2)
    second = pynvml_run_file(fake_nvml, path, READ_ENERGY)
    assert first >= 1_000_000 + 10 * 1000  # ten seconds after the epoch
    assert second > first


def test_energy_counts_from_the_scenario_files_mtime_by_default(tmp_path: Path, fake_nvml: Path) -> None:
    path = write_scenario(tmp_path / "energy.json", scenario([Gpu(0, energy_mj=5000, energy_mj_per_s=10.0)]))
    an_hour_ago = time.time() - 3600
    os.utime(path, (an_hour_ago, an_hour_ago))
    got = pynvml_run_file(fake_nvml, path, READ_ENERGY)
    assert got >= 5000 + 3600 * 10


def test_energy_is_not_supported_on_mig_devices_or_without_a_reading(tmp_path: Path, fake_nvml: Path) -> None:
    doc = scenario([Gpu(0, energy_mj=1, mig=[mig_instance(0, slot=0, gi=1, ci=0, profile="1g.10gb", total_gib=10)]),
                    Gpu(1)])
    got = pynvml_run(tmp_path, fake_nvml, doc, """
        nvmlInit()
        h0, h1 = nvmlDeviceGetHandleByIndex(0), nvmlDeviceGetHandleByIndex(1)
        out([code(nvmlDeviceGetTotalEnergyConsumption, h0),
             code(nvmlDeviceGetTotalEnergyConsumption, nvmlDeviceGetMigDeviceHandleByIndex(h0, 0)),
             code(nvmlDeviceGetTotalEnergyConsumption, h1)])
    """)
    assert got == [0, 3, 3]



@pytest.mark.parametrize("build", ["", "r470", "r535"])
def test_persistence_mode_is_the_gpus_on_every_driver(tmp_path: Path, fake_nvml: Path, build: str) -> None:
    doc = scenario([Gpu(0), Gpu(1, persistence_mode=0,
                                mig=[mig_instance(1, slot=0, gi=1, ci=0, profile="1g.10gb", total_gib=10)]),
                    Gpu(2, errors={"nvmlDeviceGetPersistenceMode": "NVML_ERROR_NOT_SUPPORTED"})])
    got = pynvml_run(tmp_path, fake_nvml / build, doc, """
        nvmlInit()
        h0, h1, h2 = (nvmlDeviceGetHandleByIndex(i) for i in range(3))
        out([nvmlDeviceGetPersistenceMode(h0), nvmlDeviceGetPersistenceMode(h1),
             nvmlDeviceGetPersistenceMode(nvmlDeviceGetMigDeviceHandleByIndex(h1, 0)),
             code(nvmlDeviceGetPersistenceMode, h2)])
    """)
    assert got == [1, 0, 0, 3]  # NVML_FEATURE_ENABLED, NVML_FEATURE_DISABLED (on its MIG device too), NOT_SUPPORTED

# ---- a long-running caller: live scenario, faults (README.md, "Under a running caller") ----

SERVE = PRELUDE + """
import sys
def handle_value(h):
    return ctypes.cast(h, ctypes.c_void_p).value
for line in sys.stdin:
    try:
        exec(json.loads(line), globals())
    except Exception as e:
        print(json.dumps({"exception": repr(e)}))
    sys.stdout.flush()
"""


class LongRunning:
    """The real pynvml in one process that lives across scenario rewrites: each call runs a body in it."""

    def __init__(self, lib: Path, path: Path, tmp_path: Path, fault: Optional[Path] = None) -> None:
        env = {**os.environ, "LD_LIBRARY_PATH": str(lib), "FAKE_NVML_SCENARIO": str(path)}
        if fault is not None:
            env["FAKE_NVML_FAULT_FILE"] = str(fault)
        self.stderr_path = tmp_path / "stderr"
        self._stderr = self.stderr_path.open("wb")
        self.proc = subprocess.Popen([sys.executable, "-c", SERVE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._stderr, env=env)

    def __call__(self, body: str) -> Any:
        assert self.proc.stdin
        assert self.proc.stdout
        self.proc.stdin.write(json.dumps(textwrap.dedent(body)).encode() + b"\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, self.stderr_path.read_text()
        got = json.loads(line)
        assert not (isinstance(got, dict) and "exception" in got), got
        return got

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def close(self) -> None:
        assert self.proc.stdin
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
        self._stderr.close()


@pytest.fixture
def long_running(tmp_path: Path, fake_nvml: Path) -> Iterator[Callable[..., LongRunning]]:
    started: list[LongRunning] = []

    def start(path: Path, fault: Optional[Path] = None) -> LongRunning:
        started.append(LongRunning(fake_nvml, path, tmp_path, fault))
        return started[-1]

    yield start
    for caller in started:
        caller.close()


LISTS = """
def lists(h):
    return [[p.pid for p in nvmlDeviceGetComputeRunningProcesses(h)],
            [p.pid for p in nvmlDeviceGetGraphicsRunningProcesses(h)],
            [p.pid for p in nvmlDeviceGetMPSComputeRunningProcesses(h)]]
out(0)
"""


def live_gpus(gpu0: Gpu, instance_procs: list[dict[str, Any]]) -> dict[str, Any]:
    return scenario([gpu0, Gpu(1, mig=[mig_instance(1, slot=0, gi=1, ci=0, profile="3g.40gb", total_gib=40,
                                                    compute=instance_procs)])])


def test_a_running_caller_sees_processes_start_and_exit_under_the_handles_it_holds(
        tmp_path: Path, long_running: Callable[..., LongRunning]) -> None:
    path = update_scenario(tmp_path / "scenario.json", live_gpus(Gpu(0, compute=[proc(10)]), [proc(30)]))
    nvml = long_running(path)
    nvml(LISTS)
    first = nvml("""
        nvmlInit()
        h0, h1 = nvmlDeviceGetHandleByIndex(0), nvmlDeviceGetHandleByIndex(1)
        m = nvmlDeviceGetMigDeviceHandleByIndex(h1, 0)
        out([lists(h0), lists(h1), lists(m), nvmlDeviceGetMemoryInfo(h0).used])
    """)
    assert first == [[[10], [], []], [[30], [], []], [[30], [], []], GIB + 512 * 1024**2]

    update_scenario(path, live_gpus(Gpu(0, compute=[proc(10), proc(11, 2 * GIB)], graphics=[proc(11)],
                                        mps=[proc(12)]), [proc(31)]))
    second = nvml("""
        again = [handle_value(nvmlDeviceGetHandleByIndex(i)) == handle_value(h) for i, h in enumerate([h0, h1])]
        out([lists(h0), lists(h1), lists(m), nvmlDeviceGetMemoryInfo(h0).used, again,
             nvmlDeviceGetUUID(m) == nvmlDeviceGetUUID(nvmlDeviceGetMigDeviceHandleByIndex(h1, 0))])
    """)
    assert second == [[[10, 11], [11], [12]], [[31], [], []], [[31], [], []], 5 * GIB + 512 * 1024**2,
                      [True, True], True]

    update_scenario(path, live_gpus(Gpu(0), []))
    assert nvml("out([lists(h0), lists(m), nvmlDeviceGetCount()])") == [[[], [], []], [[], [], []], 2]


def test_a_reloaded_sample_with_age_s_is_new_to_a_caller_that_saw_the_old_ones(
        tmp_path: Path, long_running: Callable[..., LongRunning]) -> None:
    path = update_scenario(tmp_path / "scenario.json",
                           scenario([Gpu(0, compute=[proc(10)], samples=[{"pid": 10, "age_s": 1, "sm": 5}])]))
    nvml = long_running(path)
    first = nvml("""
        nvmlInit()
        h = nvmlDeviceGetHandleByIndex(0)
        seen = max(s.timeStamp for s in nvmlDeviceGetProcessUtilization(h, 0))
        out([code(nvmlDeviceGetProcessUtilization, h, seen)])
    """)
    assert first == [6]  # NOT_FOUND: nothing newer
    update_scenario(path, scenario([Gpu(0, compute=[proc(10)], samples=[{"pid": 10, "age_s": 0.5, "sm": 9}])]))
    assert nvml("out([[s.pid, s.smUtil] for s in nvmlDeviceGetProcessUtilization(h, seen)])") == [[10, 9]]



def test_persistence_mode_switched_under_a_running_caller(tmp_path: Path,
                                                          long_running: Callable[..., LongRunning]) -> None:
    """nvidia-smi -pm 0 while a caller holds NVML: its handle reads the new mode."""
    path = update_scenario(tmp_path / "scenario.json", scenario([Gpu(0)]))
    nvml = long_running(path)
    assert nvml("nvmlInit(); h = nvmlDeviceGetHandleByIndex(0); out(nvmlDeviceGetPersistenceMode(h))") == 1
    update_scenario(path, scenario([Gpu(0, persistence_mode=0)]))
    assert nvml("out(nvmlDeviceGetPersistenceMode(h))") == 0

def test_a_scenario_that_changes_the_devices_is_refused_until_nvml_restarts(
        tmp_path: Path, long_running: Callable[..., LongRunning]) -> None:
    path = update_scenario(tmp_path / "scenario.json", scenario([Gpu(0, compute=[proc(10)])]))
    nvml = long_running(path)
    nvml(LISTS)
    assert nvml("nvmlInit(); h = nvmlDeviceGetHandleByIndex(0); out(lists(h))") == [[10], [], []]
    update_scenario(path, scenario([Gpu(0, compute=[proc(11)]), Gpu(1)]))
    assert nvml("out([nvmlDeviceGetCount(), lists(h), lists(h)])") == [1, [[10], [], []], [[10], [], []]]
    message = "fake-nvml: scenario changed its devices; restart NVML to see them\n"
    assert nvml.stderr == message  # once per rewrite, not once per call
    got = nvml("""
        nvmlShutdown()
        nvmlInit()
        out([nvmlDeviceGetCount(), lists(nvmlDeviceGetHandleByIndex(0)), code(nvmlDeviceGetName, h)])
    """)
    assert got == [2, [[11], [], []], 2]  # a handle from before the devices changed is an invalid argument


def test_a_mig_layout_change_is_refused_and_a_broken_rewrite_keeps_the_last_scenario(
        tmp_path: Path, long_running: Callable[..., LongRunning]) -> None:
    path = update_scenario(tmp_path / "scenario.json", live_gpus(Gpu(0), [proc(30)]))
    nvml = long_running(path)
    nvml(LISTS)
    nvml("nvmlInit(); m = nvmlDeviceGetMigDeviceHandleByIndex(nvmlDeviceGetHandleByIndex(1), 0); out(0)")
    moved = live_gpus(Gpu(0), [proc(31)])
    moved["devices"][1]["mig"]["instances"][0]["gpu_instance_id"] = 2
    update_scenario(path, moved)
    assert nvml("out([lists(m), nvmlDeviceGetGpuInstanceId(m)])") == [[[30], [], []], 1]
    path.write_text('{"devices": [')
    os.utime(path, ns=(time.time_ns(), time.time_ns()))
    assert nvml("out(lists(m))") == [[30], [], []]
    assert "keeping the last one" in nvml.stderr
    update_scenario(path, live_gpus(Gpu(0), [proc(32)]))
    assert nvml("out(lists(m))") == [[32], [], []]


def test_energy_stays_one_counter_across_live_reloads(tmp_path: Path,
                                                       long_running: Callable[..., LongRunning]) -> None:
    path = update_scenario(tmp_path / "scenario.json", scenario([Gpu(0, energy_mj=1000, energy_mj_per_s=1e6)]))
    hour_ago = time.time_ns() - 3600 * 10**9
    os.utime(path, ns=(hour_ago, hour_ago))  # the counter is 3600 s of 1e6 mJ/s past energy_mj by now
    nvml = long_running(path)
    before = nvml("nvmlInit(); h = nvmlDeviceGetHandleByIndex(0); out(nvmlDeviceGetTotalEnergyConsumption(h))")
    update_scenario(path, scenario([Gpu(0, energy_mj=1000, energy_mj_per_s=2e6)]))
    after = nvml("out(nvmlDeviceGetTotalEnergyConsumption(h))")
    assert before >= 3600 * 10**6
    assert before <= after < before + 10**6 * 60  # continued from where it was, not restarted at energy_mj
    epoch = time.time() - 10
    update_scenario(path, scenario([Gpu(0, energy_mj=5000, energy_mj_per_s=10.0, energy_epoch_s=epoch)]))
    assert 5000 + 100 <= nvml("out(nvmlDeviceGetTotalEnergyConsumption(h))") < 5000 + 200  # an epoch is re-read


def test_a_fault_fails_every_call_and_init_until_it_is_removed(tmp_path: Path,
                                                              long_running: Callable[..., LongRunning]) -> None:
    path = update_scenario(tmp_path / "scenario.json", scenario([Gpu(0, compute=[proc(10)])]))
    fault = tmp_path / "fault"
    nvml = long_running(path, fault)
    nvml(LISTS)
    assert nvml("nvmlInit(); h = nvmlDeviceGetHandleByIndex(0); out(lists(h))") == [[10], [], []]
    set_fault(fault, "NVML_ERROR_GPU_IS_LOST")
    calls = """
        out([code(nvmlDeviceGetComputeRunningProcesses, h), code(nvmlDeviceGetCount), code(nvmlSystemGetDriverVersion),
             code(nvmlDeviceGetHandleByIndex, 0), code(nvmlInit), str(NVMLError(15))])
    """
    assert nvml(calls) == [15, 15, 15, 15, 15, "GPU is lost"]
    update_scenario(path, scenario([Gpu(0, compute=[proc(11)])]))
    assert nvml("out([code(nvmlShutdown), code(nvmlInit), code(nvmlDeviceGetCount)])") == [0, 15, 1]
    set_fault(fault, "NVML_ERROR_LIB_RM_VERSION_MISMATCH")
    assert nvml("out(code(nvmlInit))") == 18
    set_fault(fault, None)
    assert nvml("nvmlInit(); out(lists(nvmlDeviceGetHandleByIndex(0)))") == [[11], [], []]


def test_a_fault_on_one_gpu_fails_its_calls_and_its_mig_devices_only(
        tmp_path: Path, long_running: Callable[..., LongRunning]) -> None:
    path = update_scenario(tmp_path / "scenario.json", live_gpus(Gpu(0, compute=[proc(10)]), [proc(30)]))
    fault = tmp_path / "fault"
    nvml = long_running(path, fault)
    nvml(LISTS)
    nvml("""
        nvmlInit()
        h0, h1 = nvmlDeviceGetHandleByIndex(0), nvmlDeviceGetHandleByIndex(1)
        m = nvmlDeviceGetMigDeviceHandleByIndex(h1, 0)
        out(0)
    """)
    set_fault(fault, "NVML_ERROR_GPU_IS_LOST", device=1)
    calls = """
        out([lists(h0), code(nvmlDeviceGetComputeRunningProcesses, h1), code(nvmlDeviceGetMemoryInfo, m),
             code(nvmlDeviceGetHandleByIndex, 1), code(nvmlDeviceGetHandleByUUID, nvmlDeviceGetUUID(h0)),
             nvmlDeviceGetCount(), code(nvmlShutdown), code(nvmlInit)])
    """
    assert nvml(calls) == [[[10], [], []], 15, 15, 15, 15, 2, 0, 0]
    set_fault(fault, None)
    assert nvml("out(lists(m))") == [[30], [], []]


def test_threads_calling_while_the_scenario_is_rewritten_see_one_scenario_per_call(
        tmp_path: Path, long_running: Callable[..., LongRunning]) -> None:
    """pynvml releases the GIL in its C calls: a reload must never show a thread half of one list and half of
    another, nor free what a call is reading."""
    def lists_of(n: int) -> dict[str, Any]:
        return scenario([Gpu(0, compute=[proc(100 + k) for k in range(n)], samples=[{"pid": 100, "age_s": 0.1}])])

    path = update_scenario(tmp_path / "scenario.json", lists_of(0))
    nvml = long_running(path)
    nvml("""
        import threading
        nvmlInit()
        h = nvmlDeviceGetHandleByIndex(0)
        seen, errors, stop = set(), [], threading.Event()
        def poll():
            while not stop.is_set():
                try:
                    seen.add(tuple(p.pid for p in nvmlDeviceGetComputeRunningProcesses(h)))
                    nvmlDeviceGetProcessUtilization(h, 0)
                except Exception as e:
                    errors.append(repr(e))
        threads = [threading.Thread(target=poll) for _ in range(3)]
        for t in threads:
            t.start()
        out(0)
    """)
    for i in range(1, 80):
        update_scenario(path, lists_of(i % 7))
    seen, errors = nvml("stop.set(); [t.join() for t in threads]; out([sorted(seen), errors])")
    assert errors == []
    assert {tuple(s) for s in seen} <= {tuple(range(100, 100 + n)) for n in range(7)}
    assert len(seen) > 1


def test_init_is_reference_counted(tmp_path: Path, fake_nvml: Path) -> None:
    """nvml.h: "A reference count of the number of initializations is maintained. Shutdown only occurs when the
    reference count reaches zero." """
    got = pynvml_run(tmp_path, fake_nvml, scenario([Gpu(0)]), """
        nvmlInit()
        nvmlInit()
        nvmlShutdown()
        still = code(nvmlDeviceGetCount)
        nvmlShutdown()
        out([still, code(nvmlDeviceGetCount)])
    """)
    assert got == [0, 1]
