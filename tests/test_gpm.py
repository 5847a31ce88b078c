"""GPM activity (Hopper and newer) per GPU and per MIG GPU instance, through the stand-in NVML's GPM calls, and what
it tells about the processes of a MIG instance (docs/nvml-driver.md, docs/metrics.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from collector import nvml
from tests.conftest import FAKE_NVML, REPO, Host, Result
from tests.support.podsim import PodHost
from tests.support.simhost import GIB, Gpu, gpu_instance, mig_instance, proc, scenario, write_scenario

ACTIVITY = {"gpu_device_sm_utilization_percent": "sm_util", "gpu_device_sm_occupancy_percent": "sm_occupancy",
            "gpu_device_tensor_active_percent": "any_tensor_util",
            "gpu_device_dram_bandwidth_utilization_percent": "dram_bw_util"}


def gpm(sm: float, occupancy: float = 20.0, tensor: float = 10.0, dram: float = 30.0) -> dict[str, object]:
    return {"supported": True, "sm_util": sm, "sm_occupancy": occupancy, "any_tensor_util": tensor,
            "dram_bw_util": dram}


def activity(result: Result, gpu: str) -> dict[str, float]:
    return {ACTIVITY[name]: v for name in ACTIVITY for lab, v in result.series(name) if lab["gpu"] == gpu}


def test_whole_gpus_report_gpm_activity_and_older_gpus_none(host: Host) -> None:
    host.tree.add_process(801)
    result = host.run(scenario([Gpu(0, compute=[proc(801)], gpm=gpm(63.5)), Gpu(1)]))
    assert result.returncode == 0, result.stderr
    assert activity(result, "0") == {"sm_util": 63.5, "sm_occupancy": 20.0, "any_tensor_util": 10.0,
                                     "dram_bw_util": 30.0}
    assert activity(result, "1") == {}  # pre-Hopper: absent, never a made-up 0


def test_an_unsupported_gpm_query_leaves_no_series(host: Host) -> None:
    result = host.run(scenario([Gpu(0, gpm={"supported": False, "sm_util": 50.0})]))
    assert result.returncode == 0, result.stderr
    assert not any(result.series(name) for name in ACTIVITY)


def test_mig_instance_activity_gives_its_single_owner_a_status(host: Host) -> None:
    """GI 1: one pod's one process, busy -> active, utilisation = the instance's. GI 2: one pod, two processes,
    SMs idle -> idle, no per-process utilisation. GI 3: two pods share it -> unknown. GI 4: the scenario gives no
    values, so the driver measures nothing running -> idle, its zeros reported as measured."""
    k8s = PodHost(host.tree)
    solo, pair, a, b = (k8s.add_pod("ml", name) for name in ("solo", "pair", "a", "b"))
    for pid, pod in ((811, solo), (812, pair), (813, pair), (814, a), (815, b), (816, solo)):
        k8s.add_process(pid, pod)
    instances = [
        mig_instance(0, slot=0, gi=1, ci=0, profile="1g.10gb", total_gib=10, compute=[proc(811, GIB)]),
        mig_instance(0, slot=1, gi=2, ci=0, profile="1g.10gb", total_gib=10, compute=[proc(812, GIB), proc(813, GIB)]),
        mig_instance(0, slot=2, gi=3, ci=0, profile="1g.10gb", total_gib=10, compute=[proc(814, GIB), proc(815, GIB)]),
        mig_instance(0, slot=3, gi=4, ci=0, profile="1g.10gb", total_gib=10, compute=[proc(816, GIB)]),
    ]
    gis = [gpu_instance(1, total_gib=10, used=GIB, gpm=gpm(42.0)), gpu_instance(2, total_gib=10, used=2 * GIB,
           gpm=gpm(0.0, 0.0, 0.0, 0.0)), gpu_instance(3, total_gib=10, used=2 * GIB, gpm=gpm(70.0)),
           gpu_instance(4, total_gib=10, used=GIB)]
    result = host.run(scenario([Gpu(0, mig=instances, gpu_instances=gis, gpm={"supported": True})]))
    assert result.returncode == 0, result.stderr
    status = {lab["pid"]: lab["status"] for lab, _ in result.series("gpu_process_info")}
    assert status == {"811": "active", "812": "idle", "813": "idle", "814": "unknown", "815": "unknown",
                      "816": "idle"}
    assert {lab["pid"]: v for lab, v in result.series("gpu_process_utilization")} == {"811": 42.0, "816": 0.0}
    assert result.value("gpu_process_idle_seconds", pid="811") == 0
    assert result.value("gpu_process_idle_seconds", pid="812") == 0  # first run: idle since now
    assert not result.series("gpu_process_idle_seconds", pid="814")
    assert activity(result, "0_1_0")["sm_util"] == 42.0
    assert activity(result, "0_3_0")["sm_util"] == 70.0
    assert activity(result, "0_4_0") == {"sm_util": 0.0, "sm_occupancy": 0.0, "any_tensor_util": 0.0,
                                         "dram_bw_util": 0.0}  # measured by the driver, nothing ran


def test_mig_without_gpm_support_stays_unknown(host: Host) -> None:
    host.tree.add_process(821)
    instances = [mig_instance(0, slot=0, gi=1, ci=0, profile="1g.10gb", total_gib=10, compute=[proc(821, GIB)])]
    result = host.run(scenario([Gpu(0, mig=instances)]))
    assert result.value("gpu_process_info", pid="821", status="unknown") == 1
    assert not result.series("gpu_process_utilization")



def test_a_gpm_capable_gpu_in_mig_mode_without_instances_does_not_fail_the_run(host: Host) -> None:
    result = host.run(scenario([Gpu(0, mig=[], gpm={"supported": True}), Gpu(1, gpm=gpm(5.0))]))
    assert result.returncode == 0, result.stderr
    assert result.value("gpu_proc_collector_up") == 1
    assert activity(result, "1")["sm_util"] == 5.0


TRACED_READ = """
import json, time
from collector import nvml
from collector.nvml import compat, gpm

events, slept = [], []
sample, process_lists, pause = gpm.Sampler._sample, compat.process_lists, time.sleep

def traced_sample(target):
    events.append(("gpm", target.key, time.monotonic()))
    return sample(target)

def slow_process_lists(handle):  # 70 ms per list, as a busy driver might take
    events.append(("list", "", time.monotonic()))
    pause(0.07)
    return process_lists(handle)

gpm.Sampler._sample = staticmethod(traced_sample)
compat.process_lists = slow_process_lists
gpm.time.sleep = lambda seconds: slept.append(seconds)  # the GPM wait only: the lists above keep their pause
snapshot = nvml.read_snapshot(None, {}, int(time.time() * 1_000_000))
print(json.dumps({"events": events, "slept": slept, "activity": sorted(snapshot.activity)}))
"""


def test_a_timer_run_samples_gpm_around_the_process_lists_not_after_them(tmp_path: Path) -> None:
    """The first GPM samples come before any process list, the second ones after all of them; reads that take
    the interval between the samples (nvml.GPM_INTERVAL_S) leave nothing to sleep."""
    instances = [mig_instance(1, slot=0, gi=1, ci=0, profile="1g.10gb", total_gib=10, compute=[proc(831, GIB)])]
    document = scenario([Gpu(0, compute=[proc(830, GIB)], gpm=gpm(50.0)),
                         Gpu(1, mig=instances, gpu_instances=[gpu_instance(1, total_gib=10, used=GIB, gpm=gpm(20.0))],
                             gpm={"supported": True})])
    env = {**os.environ, "LD_LIBRARY_PATH": str(FAKE_NVML), "PYTHONPATH": str(REPO),
           "FAKE_NVML_SCENARIO": str(write_scenario(tmp_path / "scenario.json", document))}
    run = subprocess.run([sys.executable, "-c", textwrap.dedent(TRACED_READ)], capture_output=True, env=env,
                         timeout=60, check=False)
    assert run.returncode == 0, run.stderr.decode()
    got = json.loads(run.stdout.decode().splitlines()[-1])
    kinds = [kind for kind, _, _ in got["events"]]
    keys = [key for kind, key, _ in got["events"] if kind == "gpm"]
    assert kinds == ["gpm", "gpm", "list", "list", "gpm", "gpm"], got["events"]
    assert sorted(keys[:2]) == sorted(keys[2:]) == sorted(set(keys))  # each target: one sample before, one after
    assert got["slept"] == [0.0]  # 140 ms of lists already spaced the samples
    assert got["activity"] == ["0", "1_1_0"]


def test_a_timer_run_spaces_its_gpm_samples_past_the_refresh_period_with_a_margin(host: Host, tmp_path: Path) -> None:
    """nvml.h: the samples "should be greater than 100ms" apart (the driver's refresh period; NVIDIA/DCGM#310: a
    hard limit). A window right at 100 ms can straddle no refresh: the collector leaves a margin, so a driver whose
    refresh comes 10 ms late (the stand-in's refresh_s) still yields the metrics. The stand-in records each pair's
    distance."""
    assert nvml.GPM_INTERVAL_S > 0.1
    log = tmp_path / "gpm-intervals"
    host.tree.add_process(841)
    result = host.run(scenario([Gpu(0, compute=[proc(841)], gpm={**gpm(55.0), "refresh_s": 0.11})]),
                      env={"FAKE_NVML_GPM_LOG": str(log)})
    assert result.returncode == 0, result.stderr
    intervals = [float(line) for line in log.read_text().split()]
    assert intervals
    assert all(seconds >= nvml.GPM_INTERVAL_S for seconds in intervals), intervals
    assert activity(result, "0")["sm_util"] == 55.0
