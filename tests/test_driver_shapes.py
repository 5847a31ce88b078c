"""The collector against the shapes a real driver answers in (docs/nvml-driver.md), played by the stand-in NVML:
per-process utilisation entries as the driver returns them (one per process, several, a fixed size answer,
garbage), MIG compute instances that share their GPU instance, and driver-reserved memory."""

from __future__ import annotations

import json
import time

import pytest

from tests.conftest import Host
from tests.support.simhost import GIB, Gpu, compute_instance, gpu_instance, gpu_uuid, mig_instance, proc, scenario


def _ago(seconds: float) -> int:
    return int((time.time() - seconds) * 1e6)


def test_the_documented_shape_one_entry_per_process_is_its_value(host: Host) -> None:
    host.tree.add_process(701)
    samples = [{"pid": 701, "age_s": 3, "sm": 20}, {"pid": 701, "age_s": 1, "sm": 60}]
    result = host.run(scenario([Gpu(0, compute=[proc(701)], samples=samples)]))  # the stand-in's default: latest
    assert result.value("gpu_process_utilization", pid="701") == 60
    assert result.value("gpu_process_info", pid="701", status="active") == 1


def test_several_entries_per_process_are_weighted_by_the_time_they_cover(host: Host) -> None:
    """The driver samples the GPU at instants -3.0, -2.0 and -1.5 s: an entry covers the time since the previous
    instant (the first one: the typical spacing). 60 % for 1 s then 30 % for 0.5 s is 50 %, not the plain 45."""
    host.tree.add_process(711)
    host.tree.add_process(712)
    samples = [{"pid": 712, "timestamp_us": _ago(3.0), "sm": 10},
               {"pid": 711, "timestamp_us": _ago(2.0), "sm": 60},
               {"pid": 711, "timestamp_us": _ago(1.5), "sm": 30}]
    result = host.run(scenario([Gpu(0, compute=[proc(711), proc(712)], samples=samples,
                                    utilization_shape="buffered")]))
    assert abs(result.value("gpu_process_utilization", pid="711") - 50.0) < 0.5
    assert result.value("gpu_process_utilization", pid="712") == 10


def test_garbage_entries_never_yield_a_value_outside_0_to_100_nor_blind_later_runs(host: Host) -> None:
    """nvtop #110: entries of PIDs in no list, SM above 100 (even 2^32-1), timestamps in the future or at or
    before the one asked for. A future timestamp saved as 'last seen' would hide every sample for as long."""
    host.tree.add_process(721)
    host.tree.add_process(722)
    garbage = [{"pid": 721, "sm": 4294967295, "age_s": 1}, {"pid": 721, "sm": 101, "age_s": 1},
               {"pid": 99999, "sm": 50, "age_s": 1},  # not in any process list
               {"pid": 722, "sm": 80, "future_s": 3600},  # an hour ahead
               {"pid": 722, "sm": 70, "timestamp_us": 0}]  # at or before any lastSeen
    gpu = Gpu(0, compute=[proc(721), proc(722)], samples=[{"pid": 721, "age_s": 2, "sm": 40}],
              utilization_garbage=garbage)
    result = host.run(scenario([gpu]))
    assert result.returncode == 0, result.stderr
    assert result.value("gpu_process_utilization", pid="721") == 40
    assert result.value("gpu_process_utilization", pid="722") == 0
    assert result.value("gpu_process_info", pid="722", status="idle") == 1
    saved = json.loads((host.state_dir / "state.json").read_text())["last_seen_us"]
    assert saved[f"{gpu_uuid(0)}/721"] < time.time() * 1e6
    assert all(ts <= time.time() * 1e6 for ts in saved.values()), saved
    assert f"{gpu_uuid(0)}/722" not in saved  # its only plausible-looking entry was in the future

    # The next run sees a sample taken after the first run: it was not hidden behind the future timestamp.
    time.sleep(0.05)
    gpu.samples = [{"pid": 722, "age_s": 0.01, "sm": 55}]
    result = host.run(scenario([gpu]))
    assert result.value("gpu_process_utilization", pid="722") == 55
    assert all(0 <= v <= 100 for _, v in result.series("gpu_process_utilization"))


def test_a_fixed_size_answer_and_an_untouched_count_leave_empty_slots_out(host: Host) -> None:
    """go-nvml #11: the size query answers 100 whatever the load; nvtop #110: the fill leaves the count at 100,
    so the unwritten slots come back as PID 0 at time 0."""
    host.tree.add_process(731)
    gpu = Gpu(0, compute=[proc(731)], samples=[{"pid": 731, "age_s": 1, "sm": 35}], utilization_size_answer=100,
              utilization_fill_count="unchanged")
    result = host.run(scenario([gpu]))
    assert result.returncode == 0, result.stderr
    assert result.value("gpu_process_utilization", pid="731") == 35
    assert result.value("gpu_process_count", gpu="0") == 1


def test_compute_instances_of_one_gpu_instance_report_its_memory_once(host: Host) -> None:
    """GPU instance 1 (40 GiB, 12 GiB used) split into compute instances 0 and 1: each handle reports all 12 GiB.
    Memory and unattributed memory are the GPU instance's, once; each process is on its own compute instance."""
    for pid in (741, 742, 743):
        host.tree.add_process(pid)
    instances = [compute_instance(0, slot=0, gi=1, ci=0, profile="3g.40gb", compute=[proc(741, 4 * GIB)]),
                 compute_instance(0, slot=1, gi=1, ci=1, profile="3g.40gb",
                                  compute=[proc(742, 3 * GIB), proc(743, 1 * GIB)])]
    for lists_all in (False, True):
        gpu = Gpu(0, mig=instances, gpu_instances=[gpu_instance(1, total_gib=40, used=12 * GIB)],
                  ci_lists_gi_processes=lists_all)
        result = host.run(scenario([gpu]))
        assert result.returncode == 0, result.stderr
        assert {lab["pid"]: lab["gpu"] for lab, _ in result.series("gpu_process_info")} == {
            "741": "0_1_0", "742": "0_1_1", "743": "0_1_1"}, lists_all
        assert result.value("gpu_process_count", gpu="0_1_0") == 1
        assert result.value("gpu_process_count", gpu="0_1_1") == 2
        assert result.series("gpu_device_memory_used_bytes") == [({"gpu": "0_1_0", "gpu_uuid": result.series(
            "gpu_device_info", gpu="0_1_0")[0][0]["gpu_uuid"]}, 12 * GIB)]
        assert [v for _, v in result.series("gpu_device_unattributed_memory_bytes")] == [4 * GIB]
        assert result.value("gpu_process_memory_utilization", pid="741") == 10  # 4 of the instance's 40 GiB


def test_single_compute_instances_keep_their_own_memory(host: Host) -> None:
    host.tree.add_process(751)
    instances = [mig_instance(0, slot=0, gi=1, ci=0, profile="1g.10gb", total_gib=10, compute=[proc(751, GIB)]),
                 mig_instance(0, slot=1, gi=2, ci=0, profile="1g.10gb", total_gib=10)]
    result = host.run(scenario([Gpu(0, mig=instances)]))
    assert {lab["gpu"] for lab, _ in result.series("gpu_device_memory_total_bytes")} == {"0_1_0", "0_2_0"}


def test_driver_reserved_memory_is_not_unattributed(host: Host) -> None:
    """nvmlDeviceGetMemoryInfo_v2's used leaves out what the driver reserves; v1's includes it, and it would show
    as memory no process holds. Drivers without v2 (R470) still report, from v1."""
    host.tree.add_process(761)
    gpu = Gpu(0, compute=[proc(761, 4 * GIB)], memory_reserved=GIB, extra_used=0)
    result = host.run(scenario([gpu]))
    assert result.value("gpu_device_memory_used_bytes", gpu="0") == 4 * GIB
    assert result.value("gpu_device_unattributed_memory_bytes", gpu="0") == 0

    older = host.run(scenario([gpu]), lib=host.lib / "r470")
    assert older.returncode == 0, older.stderr
    assert older.value("gpu_device_memory_used_bytes", gpu="0") == 5 * GIB


@pytest.mark.parametrize("refusal", ["NVML_ERROR_NOT_SUPPORTED", "NVML_ERROR_ARGUMENT_VERSION_MISMATCH",
                                     "NVML_ERROR_NO_PERMISSION"])
def test_memory_v2_refused_on_a_mig_handle_falls_back_to_v1_there_only(host: Host, refusal: str) -> None:
    """What drivers answer nvmlDeviceGetMemoryInfo_v2 on a MIG device handle is not documented: where it is
    refused, the instance reports v1's figures (reserved memory included) rather than none, and the whole GPU
    beside it keeps v2's."""
    host.tree.add_process(771)
    host.tree.add_process(772)
    refusing = mig_instance(0, slot=0, gi=1, ci=0, profile="1g.10gb", total_gib=10, compute=[proc(771, GIB)])
    refusing["memory"]["reserved"] = GIB // 4
    refusing["errors"] = {"nvmlDeviceGetMemoryInfo_v2": refusal}
    whole = Gpu(1, compute=[proc(772, 4 * GIB)], memory_reserved=GIB, extra_used=0)
    result = host.run(scenario([Gpu(0, mig=[refusing]), whole]))
    assert result.returncode == 0, result.stderr
    assert result.value("gpu_device_memory_total_bytes", gpu="0_1_0") == 10 * GIB
    assert result.value("gpu_device_memory_used_bytes", gpu="0_1_0") == GIB + GIB // 4
    assert result.value("gpu_device_memory_used_bytes", gpu="1") == 4 * GIB
    assert result.value("gpu_process_memory_utilization", pid="771") == 10
