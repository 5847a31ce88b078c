"""The collector end to end: the real CLI in a subprocess, the real pynvml, the stand-in NVML, a fake host tree."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import Host, Result
from tests.demo import demo
from tests.support.simhost import GIB, H100_MEMORY, Gpu, gpu_uuid, mig_instance, mig_uuid, proc, scenario

SEED_FAMILIES = ["gpu_process_count", "gpu_total_processes", "gpu_process_info", "gpu_process_utilization",
                 "gpu_process_memory_utilization"]
PROCESS_FAMILIES = ["gpu_process_info", "gpu_process_utilization", "gpu_process_memory_utilization",
                    "gpu_process_memory_bytes", "gpu_process_idle_seconds"]


def test_plain_gpus_report_each_process_with_the_seed_labels(host: Host) -> None:
    host.tree.add_process(101, "python3")
    host.tree.add_process(102, "torchrun")
    gpus = [
        Gpu(0, compute=[proc(101, 4 * GIB)], samples=[{"pid": 101, "age_s": 5, "sm": 90}]),
        Gpu(1, compute=[proc(102, 8 * GIB)]),
        Gpu(2),
    ]
    result = host.run(scenario(gpus))

    assert result.returncode == 0, result.stderr
    assert {g: result.value("gpu_process_count", gpu=g) for g in "012"} == {"0": 1, "1": 1, "2": 0}
    assert result.value("gpu_total_processes") == 2
    (labels, value), = result.series("gpu_process_info", pid="101")
    assert value == 1
    assert labels == {"gpu": "0", "pid": "101", "command": "python3", "pod": "", "namespace": "", "container": "",
                      "status": "active", "gpu_memory": "4096MiB"}
    assert result.value("gpu_process_utilization", pid="101") == 90
    assert result.value("gpu_process_utilization", pid="102") == 0  # measured: no sample means no SM activity
    assert result.value("gpu_process_info", pid="102", status="idle") == 1
    assert result.value("gpu_process_memory_utilization", pid="102") == pytest.approx(100 * 8 / 80)
    assert result.value("gpu_process_memory_bytes", pid="102", gpu_uuid=gpu_uuid(1)) == 8 * GIB
    assert set(result.series("gpu_process_utilization")[0][0]) == {"gpu", "pid", "command", "pod", "namespace"}
    assert result.value("gpu_proc_collector_up") == 1
    assert result.value("gpu_proc_collector_build_info", driver_version="580.95.05") == 1


def test_mig_instances_are_labelled_gpu_gi_ci_and_idle_instances_count_zero(host: Host) -> None:
    for pid in (201, 202, 203):
        host.tree.add_process(pid, "tritonserver")
    instances = [
        mig_instance(0, slot=0, gi=1, ci=0, profile="3g.40gb", total_gib=40, compute=[proc(201, 10 * GIB)]),
        mig_instance(0, slot=2, gi=2, ci=0, profile="2g.20gb", total_gib=20,
                     compute=[proc(202, 5 * GIB), proc(203, 5 * GIB)]),
        mig_instance(0, slot=5, gi=13, ci=0, profile="1g.10gb", total_gib=10),  # sparse slot, no process
    ]
    result = host.run(scenario([Gpu(0, mig=instances)]))

    assert result.returncode == 0, result.stderr
    counts = {lab["gpu"]: v for lab, v in result.series("gpu_process_count")}
    assert counts == {"0_1_0": 1, "0_2_0": 2, "0_13_0": 0}
    assert result.value("gpu_total_processes") == 3
    assert result.value("gpu_process_memory_utilization", pid="201") == pytest.approx(25.0)  # of its 40 GiB
    assert result.value("gpu_process_memory_bytes", pid="202", gpu_uuid=mig_uuid(0, 2)) == 5 * GIB
    assert result.series("gpu_process_utilization") == []  # NVML cannot measure per-process on MIG
    assert {lab["status"] for lab, _ in result.series("gpu_process_info")} == {"unknown"}
    assert result.value("gpu_device_info", gpu="0_13_0", mig_profile="1g.10gb", parent_gpu_uuid=gpu_uuid(0)) == 1
    assert result.value("gpu_device_memory_total_bytes", gpu="0_1_0") == 40 * GIB


def test_a_pid_in_the_graphics_and_compute_lists_is_one_process(host: Host) -> None:
    host.tree.add_process(301, "Xorg-render")
    gpus = [Gpu(0, compute=[proc(301, 2 * GIB)], graphics=[proc(301, 2 * GIB)], mps=[])]
    result = host.run(scenario(gpus))

    assert result.value("gpu_process_count", gpu="0") == 1
    assert len(result.series("gpu_process_info")) == 1
    assert result.value("gpu_process_memory_bytes", pid="301") == 2 * GIB


def test_memory_not_available_is_absent_not_zero(host: Host) -> None:
    host.tree.add_process(401)
    result = host.run(scenario([Gpu(0, compute=[proc(401, None)])]))

    assert result.value("gpu_process_info", pid="401", gpu_memory="N/A") == 1
    assert result.series("gpu_process_memory_bytes") == []
    assert result.series("gpu_process_memory_utilization") == []
    assert result.value("gpu_process_count", gpu="0") == 1


def test_utilisation_is_averaged_over_the_samples_since_the_previous_run(host: Host) -> None:
    host.tree.add_process(501)
    now_us = int(time.time() * 1e6)
    first = [{"pid": 501, "timestamp_us": now_us - 30_000_000, "sm": 20},
             {"pid": 501, "timestamp_us": now_us - 20_000_000, "sm": 40},
             {"pid": 501, "timestamp_us": now_us - 90_000_000, "sm": 100}]  # older than a minute: not the first run's
    # A driver that keeps several entries per process (equally spaced here, so weighting by time is the plain mean).
    result = host.run(scenario([Gpu(0, compute=[proc(501)], samples=first, utilization_shape="buffered")]))
    assert result.value("gpu_process_utilization", pid="501") == 30

    later = [*first, {"pid": 501, "timestamp_us": now_us - 1_000_000, "sm": 70},
             {"pid": 501, "timestamp_us": now_us - 500_000, "sm": 90}]
    result = host.run(scenario([Gpu(0, compute=[proc(501)], samples=later, utilization_shape="buffered")]))
    assert result.value("gpu_process_utilization", pid="501") == 80  # only the two newer than the persisted stamp

    result = host.run(scenario([Gpu(0, compute=[proc(501)], samples=later, utilization_shape="buffered")]))
    assert result.value("gpu_process_utilization", pid="501") == 0  # NOT_FOUND: nothing newer
    assert result.value("gpu_process_info", pid="501", status="idle") == 1


def test_idle_seconds_count_from_the_last_active_run_and_reset_for_a_reused_pid(host: Host) -> None:
    host.tree.add_process(601, start_ticks=1000)
    active = scenario([Gpu(0, compute=[proc(601)], samples=[{"pid": 601, "age_s": 1, "sm": 50}])])
    idle = scenario([Gpu(0, compute=[proc(601)])])
    assert host.run(active).value("gpu_process_idle_seconds", pid="601") == 0
    time.sleep(1.1)
    assert host.run(idle).value("gpu_process_idle_seconds", pid="601") >= 1.0
    host.tree.add_process(601, start_ticks=2000)  # same PID, another process
    assert host.run(idle).value("gpu_process_idle_seconds", pid="601") < 1.0


def test_a_lost_gpu_is_marked_failed_and_the_others_are_reported(host: Host) -> None:
    host.tree.add_process(701)
    host.tree.add_process(702)
    gpus = [Gpu(0, compute=[proc(701)]),
            Gpu(1, compute=[proc(702)], errors={"nvmlDeviceGetProcessUtilization": "NVML_ERROR_GPU_IS_LOST"}),
            Gpu(2, errors={"*": "NVML_ERROR_GPU_IS_LOST"})]
    result = host.run(scenario(gpus))

    assert result.returncode == 0, result.stderr
    assert result.value("gpu_proc_collector_gpu_up", gpu="0") == 1
    assert result.value("gpu_proc_collector_gpu_up", gpu="1", gpu_uuid=gpu_uuid(1)) == 0
    assert result.value("gpu_proc_collector_gpu_up", gpu="2") == 0
    assert [lab["gpu"] for lab, _ in result.series("gpu_process_count")] == ["0"]
    assert [lab["pid"] for lab, _ in result.series("gpu_process_info")] == ["701"]
    assert "GPU 1" in result.stderr
    assert "GPU is lost" in result.stderr


def test_every_gpu_lost_writes_up_0_without_process_series(host: Host) -> None:
    host.tree.add_process(801)
    result = host.run(scenario([Gpu(0, compute=[proc(801)], errors={"*": "NVML_ERROR_GPU_IS_LOST"})]))
    assert result.returncode == 1
    assert result.value("gpu_proc_collector_up") == 0
    assert not any(result.series(name) for name in [*PROCESS_FAMILIES, "gpu_process_count"])


def test_nvml_init_failure_keeps_the_last_success_and_drops_stale_processes(host: Host) -> None:
    host.tree.add_process(901)
    good = host.run(scenario([Gpu(0, compute=[proc(901)])]))
    last_success = good.value("gpu_proc_collector_last_success_timestamp_seconds")
    assert good.series("gpu_process_info")

    broken = scenario([Gpu(0, compute=[proc(901)])], errors={"nvmlInitWithFlags": "NVML_ERROR_DRIVER_NOT_LOADED"})
    failed = host.run(broken)

    assert failed.returncode == 1
    assert "NVML init failed" in failed.stderr
    assert "Driver Not Loaded" in failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1
    assert failed.value("gpu_proc_collector_up") == 0
    assert failed.value("gpu_proc_collector_last_success_timestamp_seconds") == last_success
    assert not any(failed.series(name) for name in [*PROCESS_FAMILIES, "gpu_process_count", "gpu_total_processes"])


def test_no_nvml_library_at_all_is_a_failed_run_with_a_clear_reason(host: Host, tmp_path: Path) -> None:
    result = host.run(scenario([]), lib=tmp_path / "empty")
    assert result.returncode == 1
    assert "NVML" in result.stderr
    assert result.value("gpu_proc_collector_up") == 0
    assert result.series("gpu_proc_collector_last_success_timestamp_seconds") == []


def test_a_driver_without_the_v3_process_calls_falls_back_to_v2(host: Host, fake_nvml: Path) -> None:
    """R470..R495 drivers lack *_RunningProcesses_v3; pynvml then raises NVMLLibraryMismatchError."""
    host.tree.add_process(1001)
    result = host.run(scenario([Gpu(0, compute=[proc(1001, 3 * GIB)])]), lib=fake_nvml / "r470")

    assert result.returncode == 0, result.stderr
    assert result.value("gpu_process_memory_bytes", pid="1001") == 3 * GIB
    assert "nvmlDeviceGetComputeRunningProcesses_v3 is not available" in result.stderr


def test_pids_missing_from_proc_are_dropped_and_counted(host: Host) -> None:
    """A PID that exited between NVML and /proc, or one garbled by a driver bug, is never reported."""
    host.tree.add_process(1101)
    result = host.run(scenario([Gpu(0, compute=[proc(1101), proc(1102), proc(0)])]))

    assert result.returncode == 0, result.stderr
    assert [lab["pid"] for lab, _ in result.series("gpu_process_info")] == ["1101"]
    assert result.value("gpu_process_count", gpu="0") == 1
    assert result.value("gpu_proc_collector_processes_dropped", reason="pid_not_found") == 2


def test_the_r535_32_byte_process_entries_are_read_as_such(host: Host, fake_nvml: Path) -> None:
    """Early R535 drivers write 32-byte entries into pynvml's 24-byte array (docs/nvml-driver.md); recognised as
    nvitop does, they are read with the driver's layout: every process, with its own memory."""
    for pid in (1201, 1202, 1203):
        host.tree.add_process(pid)
    gpus = [Gpu(0, compute=[proc(1201, GIB), proc(1202, 2 * GIB), proc(1203, 3 * GIB)])]
    result = host.run(scenario(gpus), lib=fake_nvml / "r535")

    assert result.returncode == 0, result.stderr
    memory = {lab["pid"]: v for lab, v in result.series("gpu_process_memory_bytes")}
    assert memory == {"1201": GIB, "1202": 2 * GIB, "1203": 3 * GIB}
    assert result.value("gpu_proc_collector_processes_dropped", reason="pid_not_found") == 0
    assert "32-byte process entries" in result.stderr


def test_devices_option_filters_gpus(host: Host) -> None:
    host.tree.add_process(1301)
    result = host.run(scenario([Gpu(0), Gpu(1, compute=[proc(1301)]), Gpu(2)]), "--devices", "1,2")
    assert sorted(lab["gpu"] for lab, _ in result.series("gpu_process_count")) == ["1", "2"]


def test_stdout_prints_the_exposition(host: Host) -> None:
    result = host.run(scenario([Gpu(0)]), stdout=True)
    assert result.returncode == 0
    assert result.value("gpu_process_count", gpu="0") == 0
    assert not host.prom.exists()


def test_the_file_is_world_readable_and_has_no_timestamps_or_created_series(host: Host) -> None:
    host.tree.add_process(1401)
    result = host.run(scenario([Gpu(0, compute=[proc(1401)])]))
    assert host.prom.stat().st_mode & 0o777 == 0o644
    for line in result.text.splitlines():
        if not line.startswith("#"):
            assert len(line.rsplit(" ", 2)) == 2 or not line.rsplit(" ", 1)[-1].isdigit(), line
    assert not any(name.endswith("_created") for name in result.metrics)
    for family in SEED_FAMILIES:
        assert f"# HELP {family} " in result.text
        assert f"# TYPE {family} gauge" in result.text
    assert [p.name for p in host.textfile_dir.iterdir()] == ["gpu_processes.prom"]  # no temp file left


@pytest.fixture
def read_only_dir(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A read-only filesystem (root ignores mode bits, so a mode-0555 directory proves nothing as root)."""
    d = tmp_path / "ro"
    d.mkdir()
    if os.geteuid() != 0:
        d.chmod(0o555)
        yield d
        d.chmod(0o755)
        return
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(d)], check=True)
    yield d
    subprocess.run(["umount", str(d)], check=True)


def test_a_read_only_textfile_dir_keeps_the_previous_file_and_fails_clearly(host: Host, read_only_dir: Path) -> None:
    host.tree.add_process(1501)
    host.textfile_dir = read_only_dir
    good = host.run(scenario([Gpu(0, compute=[proc(1501)])]))
    assert good.returncode == 0, good.stderr
    before = host.prom.read_bytes()
    if os.geteuid() == 0:
        subprocess.run(["mount", "-o", "remount,ro", str(read_only_dir)], check=True)

    result = host.run(scenario([Gpu(0)]))

    assert result.returncode == 3
    assert "cannot create a file in" in result.stderr
    assert "previous file is left as it was" in result.stderr
    assert host.prom.read_bytes() == before
    assert len(result.stderr.strip().splitlines()) == 1


def test_hostile_process_names_yield_a_valid_file(host: Host) -> None:
    names: list[bytes] = [b'quo"te', b"back\\slash", b"new\nline", b"\xff\xfe not utf-8 \xc3", b"x" * 4096, b"",
                          b"}{=,", "ünï©ødé 🚀".encode()]
    gpus = [Gpu(0, compute=[proc(2000 + i) for i in range(len(names))])]
    for i, name in enumerate(names):
        host.tree.add_process(2000 + i, name, cmdline=[b"/bin/" + name])

    result = host.run(scenario(gpus))  # promtool checks the file inside run()

    assert result.returncode == 0, result.stderr
    commands = {lab["pid"]: lab["command"] for lab, _ in result.series("gpu_process_info")}
    assert commands["2000"] == 'quo"te'
    assert commands["2001"] == "back\\slash"
    assert commands["2002"] == "new\nline"
    assert commands["2003"] == "\ufffd\ufffd not utf-8 \ufffd"
    assert len(commands["2004"]) == 256
    assert commands["2005"] == ""
    assert commands["2007"] == "ünï©ødé 🚀"
    assert result.value("gpu_total_processes") == len(names)


def test_bad_usage_exits_2_with_one_line(host: Host) -> None:
    result = host.run(scenario([]), "--devices", "zero", check_file=False)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "--devices" in result.stderr


def test_config_file_sets_options_and_rejects_unknown_keys(host: Host, tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text('{"devices": [1]}')
    result = host.run(scenario([Gpu(0), Gpu(1)]), "--config", str(config))
    assert [lab["gpu"] for lab, _ in result.series("gpu_process_count")] == ["1"]

    config.write_text('{"schedule": "*/1 * * * *"}')
    result = host.run(scenario([Gpu(0)]), "--config", str(config), check_file=False)
    assert result.returncode == 2
    assert "unknown key 'schedule'" in result.stderr


def test_a_second_run_while_one_holds_the_lock_exits_at_once(host: Host) -> None:
    host.state_dir.mkdir()
    with open(host.state_dir / "lock", "a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        started = time.monotonic()
        result = host.run(scenario([Gpu(0)]), check_file=False)
    assert result.returncode == 75
    assert "another gpu-proc-collector run holds" in result.stderr
    assert time.monotonic() - started < 10
    assert not host.prom.exists()


def test_memory_utilisation_is_against_the_whole_gpu(host: Host) -> None:
    host.tree.add_process(1601)
    result = host.run(scenario([Gpu(0, compute=[proc(1601, H100_MEMORY * 9 // 10)])]))
    assert result.value("gpu_process_memory_utilization", pid="1601") == pytest.approx(90.0)
    assert result.value("gpu_device_unattributed_memory_bytes", gpu="0") == 512 * 1024**2


def test_the_readme_demo_host(host: Host, tmp_path: Path) -> None:
    """What ./scripts/demo.sh runs: the bundled 8-GPU scenario with pods, MIG GPUs and a host process."""
    scenario_path = demo(tmp_path / "demo")
    env = {**os.environ, "LD_LIBRARY_PATH": str(host.lib), "FAKE_NVML_SCENARIO": str(scenario_path)}
    run = subprocess.run([sys.executable, "-m", "collector", "--stdout", "--host-root", str(tmp_path / "demo/host"),
                          "--state-dir", str(tmp_path / "state")], capture_output=True, env=env, check=False)
    assert run.returncode == 0, run.stderr
    result = Result(0, run.stdout.decode(), "", run.stdout.decode())
    assert result.value("gpu_total_processes") == 12
    assert len(result.series("gpu_process_count")) == 6 + 7 + 3  # 6 whole GPUs, 7 + 3 MIG instances
    assert {lab["namespace"] for lab, _ in result.series("gpu_process_info")} == {"ml-team", "inference", ""}
