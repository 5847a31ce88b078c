"""The stand-in NVML library, driven through the real pynvml in a subprocess started with LD_LIBRARY_PATH."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Optional

import pytest

from tests.simhost import GIB, Gpu, mig_instance, mig_uuid, proc, scenario, write_scenario

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
    env = {**os.environ, "LD_LIBRARY_PATH": str(lib)}
    if document is not None:
        env["FAKE_NVML_SCENARIO"] = str(write_scenario(tmp_path / "scenario.json", document))
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
    assert got[1] != [11, 2000]  # the shuffle REFERENCE fact 13 describes
