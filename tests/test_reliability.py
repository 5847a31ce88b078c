"""Faults injected everywhere a run reads or writes: after each, the file on disk is valid and either the new
truth, or `gpu_proc_collector_up 0` with no process series, or the untouched previous file."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.attribution import podresources_v1_pb2 as api
from collector.attribution.podresources import allocations, parse_device_id
from collector.attribution.runtimes import RuntimeMetadata
from collector.metrics import Report, render_report
from collector.model import Device, GpuProcess, HostProcess, Owner, ProcessRecord, safe_name
from collector.procfs import printable
from collector.redact import REDACTED, args_label, redact_args
from collector.state import STATE_VERSION
from tests.conftest import REPO, Host, Result, mounted_tmpfs, promtool_check, require_root, samples
from tests.support.podsim import PodHost
from tests.support.simhost import (
    BTIME,
    CLOCK_TICKS,
    GIB,
    Gpu,
    HostTree,
    gpu_uuid,
    mig_instance,
    proc,
    scenario,
    write_scenario,
)

PROCESS_FAMILIES = ("gpu_process_info", "gpu_process_utilization", "gpu_process_memory_utilization",
                    "gpu_process_memory_bytes", "gpu_process_idle_seconds", "gpu_process_count")


def assert_failed_file(result: Result, last_success: float | None = None) -> None:
    assert result.value("gpu_proc_collector_up") == 0
    assert not any(result.series(name) for name in PROCESS_FAMILIES)
    if last_success is not None:
        assert result.value("gpu_proc_collector_last_success_timestamp_seconds") == last_success


def eight_gpus(host: Host, **per_gpu_errors: dict[str, str]) -> dict[str, object]:
    gpus = []
    for index in range(8):
        host.tree.add_process(3000 + index)
        gpus.append(Gpu(index, compute=[proc(3000 + index)], errors=per_gpu_errors.get(f"gpu{index}", {}),
                        samples=[{"pid": 3000 + index, "age_s": 1, "sm": 40}]))
    return scenario(gpus)


@pytest.fixture
def good_run(host: Host) -> float:
    """A successful run first, so every failure below has a last success and a previous file to keep."""
    result = host.run(eight_gpus(host))
    assert result.returncode == 0, result.stderr
    return result.value("gpu_proc_collector_last_success_timestamp_seconds")


@pytest.mark.parametrize("error", ["NVML_ERROR_DRIVER_NOT_LOADED", "NVML_ERROR_NO_PERMISSION",
                                   "NVML_ERROR_LIB_RM_VERSION_MISMATCH", "NVML_ERROR_UNKNOWN"])
def test_nvml_init_failures(host: Host, good_run: float, error: str) -> None:
    result = host.run(scenario([Gpu(0)], errors={"nvmlInitWithFlags": error}))
    assert result.returncode == 1
    assert "NVML init failed" in result.stderr
    assert_failed_file(result, good_run)


def test_nvml_library_missing(host: Host, good_run: float, tmp_path: Path) -> None:
    result = host.run(scenario([Gpu(0)]), lib=tmp_path / "nowhere")
    assert result.returncode == 1
    assert "Library Not Found" in result.stderr
    assert_failed_file(result, good_run)


def test_one_of_eight_gpus_lost(host: Host) -> None:
    result = host.run(eight_gpus(host, gpu5={"*": "NVML_ERROR_GPU_IS_LOST"}))
    assert result.returncode == 0
    assert result.value("gpu_proc_collector_gpu_up", gpu="5") == 0
    assert sorted(lab["gpu"] for lab, _ in result.series("gpu_process_count")) == ["0", "1", "2", "3", "4", "6", "7"]
    assert result.value("gpu_total_processes") == 7


OPTIONAL_CALLS = ["nvmlDeviceGetProcessUtilization", "nvmlDeviceGetMemoryInfo", "nvmlDeviceGetMemoryInfo_v2",
                  "nvmlDeviceGetGraphicsRunningProcesses_v3", "nvmlDeviceGetMPSComputeRunningProcesses_v3",
                  "nvmlDeviceGetMigMode"]


@pytest.mark.parametrize("error", ["NVML_ERROR_NOT_SUPPORTED", "NVML_ERROR_FUNCTION_NOT_FOUND"])
def test_every_optional_call_unsupported(host: Host, error: str) -> None:
    host.tree.add_process(3100)
    errors = dict.fromkeys(OPTIONAL_CALLS, error)
    result = host.run(scenario([Gpu(0, compute=[proc(3100, 2 * GIB)], errors=errors)]))
    assert result.returncode == 0, result.stderr
    assert result.value("gpu_process_memory_bytes", pid="3100") == 2 * GIB
    assert result.series("gpu_process_utilization") == []  # not measurable: absent, never 0
    assert result.series("gpu_process_memory_utilization") == []  # no device total to divide by
    assert result.value("gpu_process_info", pid="3100", status="unknown") == 1


def test_mig_instance_calls_failing_fail_that_gpu_only(host: Host) -> None:
    host.tree.add_process(3150)
    host.tree.add_process(3151)
    broken = mig_instance(1, slot=0, gi=1, ci=0, profile="1g.10gb", total_gib=10, compute=[proc(3151)])
    broken["errors"] = {"nvmlDeviceGetComputeInstanceId": "NVML_ERROR_UNKNOWN"}
    result = host.run(scenario([Gpu(0, compute=[proc(3150)]), Gpu(1, mig=[broken])]))
    assert result.returncode == 0
    assert result.value("gpu_proc_collector_gpu_up", gpu="1") == 0
    assert [lab["pid"] for lab, _ in result.series("gpu_process_info")] == ["3150"]


def test_process_list_growing_between_count_and_fill(host: Host) -> None:
    for pid in (3200, 3201, 3202):
        host.tree.add_process(pid)
    document = scenario([Gpu(0, compute=[proc(3200)])])
    document["devices"][0]["processes_started_after_count"] = [proc(3201), proc(3202)]
    result = host.run(document)
    assert sorted(lab["pid"] for lab, _ in result.series("gpu_process_info")) == ["3200", "3201", "3202"]


def test_pod_resources_socket_refusing(host: Host) -> None:
    host.socket.parent.mkdir(parents=True)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(host.socket))  # bound, never listening: connections are refused
    try:
        k8s = PodHost(host.tree)
        k8s.add_process(3300, k8s.add_pod("ml", "train"))
        result = host.run(scenario([Gpu(0, compute=[proc(3300)])]))
    finally:
        listener.close()
    assert result.returncode == 0
    assert result.value("gpu_proc_collector_pod_resources_up") == 0
    assert result.value("gpu_process_info", pid="3300", pod="train") == 1


@pytest.mark.parametrize("content", [b"", b'{"annotations": {"io.kubernetes.cri.sandbox-name": "tr', b"\x00\xff\xfe",
                                     b"[]", b'{"annotations": "nope"}', b" " * (5 << 20)],
                         ids=["empty", "truncated", "binary", "array", "wrong-type", "huge"])
def test_corrupt_runtime_metadata(host: Host, content: bytes) -> None:
    k8s = PodHost(host.tree)
    pod = k8s.add_pod("ml", "train")
    k8s.write_metadata(pod, pod.containers[0]).write_bytes(content)
    k8s.add_process(3400, pod)
    result = host.run(scenario([Gpu(0, compute=[proc(3400)])]))
    assert result.returncode == 0
    assert result.value("gpu_process_info", pid="3400", pod="train") == 1  # named from kubelet's pod log dir


@pytest.mark.parametrize("content", ["{broken", '{"version": 99, "last_seen_us": {}}', "\x00" * 10, "[1, 2]"])
def test_corrupt_or_newer_state_file(host: Host, content: str) -> None:
    host.tree.add_process(3500)
    host.state_dir.mkdir()
    (host.state_dir / "state.json").write_text(content)
    result = host.run(scenario([Gpu(0, compute=[proc(3500)], samples=[{"pid": 3500, "age_s": 5, "sm": 60}])]))
    assert result.returncode == 0, result.stderr
    assert result.value("gpu_process_utilization", pid="3500") == 60
    assert "starting afresh" in result.stderr
    assert json.loads((host.state_dir / "state.json").read_text())["version"] == STATE_VERSION


def test_clock_stepped_backwards_between_runs(host: Host) -> None:
    """The previous run's clock was a day ahead: its saved sample timestamp and last-activity times lie in the
    future. Utilisation is read from the last minute (not "after tomorrow"), and an idle process's idle time is
    0, never negative."""
    host.tree.add_process(3600, start_ticks=5000)  # active
    host.tree.add_process(3601, start_ticks=5000)  # idle: no sample
    future = time.time() + 86_400
    host.state_dir.mkdir()
    gpu = gpu_uuid(0)
    (host.state_dir / "state.json").write_text(json.dumps({
        "version": 1, "last_success": future, "last_seen_us": {gpu: int(future * 1e6)},
        "last_active": {f"{gpu}/{pid}/1764460050.00": future for pid in (3600, 3601)}}))
    result = host.run(scenario([Gpu(0, compute=[proc(3600), proc(3601)],
                                    samples=[{"pid": 3600, "age_s": 5, "sm": 30}])]))
    assert result.returncode == 0
    assert result.value("gpu_process_utilization", pid="3600") == 30
    assert result.value("gpu_process_info", pid="3601", status="idle") == 1
    assert result.value("gpu_process_idle_seconds", pid="3601") == 0


def test_textfile_dir_missing(host: Host) -> None:
    host.textfile_dir = host.base / "does-not-exist"
    result = host.run(scenario([Gpu(0)]), check_file=False)
    assert result.returncode == 3
    assert "cannot create a file in" in result.stderr
    assert not host.textfile_dir.exists()


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path / "small", "size=24k") as d:
        yield d


def test_textfile_dir_full_keeps_the_previous_file(host: Host, small_fs: Path) -> None:
    host.textfile_dir = small_fs
    host.tree.add_process(3700)
    good = host.run(scenario([Gpu(0, compute=[proc(3700)])]))
    assert good.returncode == 0
    before = host.prom.read_bytes()
    many = [proc(4000 + n) for n in range(200)]
    for p in many:
        host.tree.add_process(p["pid"])
    result = host.run(scenario([Gpu(0, compute=many)]))
    assert result.returncode == 3
    assert "No space left on device" in result.stderr
    assert host.prom.read_bytes() == before
    assert sorted(p.name for p in small_fs.iterdir()) == ["gpu_processes.prom"]


def test_a_hung_nvml_call_is_bounded_by_the_deadline(host: Host, good_run: float) -> None:
    host.tree.add_process(3800)
    document = scenario([Gpu(0, compute=[proc(3800)])], delays={"nvmlDeviceGetProcessUtilization": 60})
    result = host.run(document, "--deadline", "2")
    assert result.returncode == 4  # only the watchdog exits 4: the hung call alone would have taken 60 s
    assert "deadline" in result.stderr
    assert_failed_file(result, good_run)


def test_atomic_replacement_under_a_reader_in_a_tight_loop(host: Host) -> None:
    """A reader parses the file as fast as it can while runs keep replacing it: every read is whole.

    No rate is assumed: the two sides run in lockstep on counts, not time. The writer starts first and keeps
    writing until the reader has made 300 reads and seen 20 different versions of the file (so every one of those
    reads overlapped the writing, and they straddled replacements); the reader keeps reading until the writer,
    done with at least 200 runs, says so. However slow or loaded the machine, both finish, and the property
    checked is the same."""
    for pid in range(5000, 5040):
        host.tree.add_process(pid)
    document = scenario([Gpu(0, compute=[proc(p) for p in range(5000, 5020)]),
                         Gpu(1, compute=[proc(p) for p in range(5020, 5040)])])
    host.run(document)  # the file exists before either side starts
    flags = host.base / "flags"
    flags.mkdir()
    writer_code = f"""
import os, sys
from collector import cli
flags = {str(flags)!r}
args = ["--textfile-dir", {str(host.textfile_dir)!r}, "--host-root", {str(host.tree.root)!r},
        "--state-dir", {str(host.state_dir)!r}, "--log-level", "error"]
runs = failed = 0
while runs < 200 or not os.path.exists(os.path.join(flags, "reader-satisfied")):
    failed += cli.main(args) != 0
    runs += 1
    if runs == 1:
        open(os.path.join(flags, "writer-started"), "w").close()
open(os.path.join(flags, "writer-done"), "w").close()
print(runs, failed)
"""
    reader_code = f"""
import os
from prometheus_client.parser import text_string_to_metric_families
path, flags = {str(host.prom)!r}, {str(flags)!r}
reads = bad = 0
versions = set()
while True:
    try:
        with open(path) as f:
            st = os.fstat(f.fileno())
            versions.add((st.st_ino, st.st_mtime_ns))  # inode numbers alone can be reused
            text = f.read()
        families = {{fam.name for fam in text_string_to_metric_families(text)}}
        if "gpu_proc_collector_up" not in families or "gpu_process_info" not in families or not text.endswith("\\n"):
            bad += 1
    except Exception:
        bad += 1
    reads += 1
    if reads >= 300 and len(versions) >= 20:
        open(os.path.join(flags, "reader-satisfied"), "w").close()
        if os.path.exists(os.path.join(flags, "writer-done")):
            break
print(reads, len(versions), bad)
"""
    env = {**os.environ, "LD_LIBRARY_PATH": str(host.lib), "FAKE_NVML_SCENARIO": str(host.base / "scenario.json")}
    writer = subprocess.Popen([sys.executable, "-c", writer_code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env, cwd=REPO)
    try:
        while not (flags / "writer-started").exists():
            assert writer.poll() is None, writer.communicate()
            time.sleep(0.05)
        reader = subprocess.run([sys.executable, "-c", reader_code], capture_output=True, text=True, cwd=REPO,
                                timeout=900, check=False)
        out, err = writer.communicate(timeout=900)
    finally:
        writer.kill()
    assert writer.returncode == 0, err
    runs, failed = map(int, out.split())
    assert runs >= 200
    assert failed == 0
    assert reader.returncode == 0, reader.stderr
    reads, versions, bad = map(int, reader.stdout.split())
    assert reads >= 300
    assert versions >= 20
    assert bad == 0
    promtool_check(host.prom.read_text())


# ---- hostile input, generated ----

_names = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=300) | st.binary(
    max_size=64).map(lambda b: b.decode("utf-8", "surrogateescape"))
DEVICE = Device(label="0", index=0, uuid="GPU-0", name="H100", memory_total=80 * GIB, memory_used=GIB)


def _record(pid: int, name: str, args: tuple[str, ...] = ()) -> ProcessRecord:
    gpu = GpuProcess(pid=pid, device=DEVICE, used_memory=GIB, sm_utilization=5.0,
                     active=True)
    host = HostProcess(pid=pid, name=printable(name), start_time=1.0, cgroup="",
                       cmdline=tuple(printable(a) for a in args))
    owner = Owner(kind="pod", name=f"ns/{name}", pod=printable(name), namespace="ns", container=printable(name))
    return ProcessRecord(gpu=gpu, host=host, owner=owner, idle_seconds=0.0, unallocated=False)


def _render(names: list[str], args: tuple[str, ...] = ()) -> str:
    records = [_record(1000 + n, name, args) for n, name in enumerate(names)]
    report = Report(driver_version="580", devices=[DEVICE], failed_gpus=[], records=records, dropped={},
                    timestamp=1.0, duration=0.1, command_args=bool(args))
    return render_report(report).decode()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_names, min_size=1, max_size=5))
def test_any_process_name_round_trips_through_the_exposition(names: list[str]) -> None:
    parsed = samples(_render(names))
    assert sorted(lab["command"] for lab, _ in parsed["gpu_process_info"]) == sorted(printable(n) for n in names)


def test_generated_hostile_files_pass_promtool() -> None:
    """promtool on a sample of generated files (each check is a subprocess, so not on all 200)."""
    corpus = st.lists(_names, min_size=1, max_size=4)
    found: list[str] = []

    @settings(max_examples=25, deadline=None, database=None)
    @given(corpus, st.lists(_names, max_size=4))
    def collect(names: list[str], args: list[str]) -> None:
        found.append(_render(names, tuple(args)))

    collect()
    for text in found:
        promtool_check(text)


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=40), inner,
                                                                                  max_size=6), max_leaves=20))
def test_any_config_json_is_a_miss_or_a_pod_never_an_exception(document: object) -> None:
    with tempfile.TemporaryDirectory() as root:
        cid = "a" * 64
        bundle = Path(root, "run/containerd/io.containerd.runtime.v2.task/k8s.io", cid)
        bundle.mkdir(parents=True)
        (bundle / "config.json").write_text(json.dumps(document))
        found = RuntimeMetadata(root).lookup(cid, "containerd", "")
        assert found is None or (found.pod and found.namespace)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_any_device_id_parses_or_is_skipped(raw: str) -> None:
    parse_device_id(raw)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.text(max_size=30), st.text(max_size=30), st.text(max_size=40),
                          st.lists(st.text(max_size=60), max_size=4)), max_size=5))
def test_any_pod_resources_message_yields_allocations(pods: list[tuple[str, str, str, list[str]]]) -> None:
    response = api.ListPodResourcesResponse()
    for name, namespace, resource, ids in pods:
        p = response.pod_resources.add(name=name, namespace=namespace)
        p.containers.add(name="c").devices.add(resource_name=resource or "nvidia.com/gpu", device_ids=ids)
    wire = api.ListPodResourcesResponse.FromString(response.SerializeToString())
    for allocation in allocations(wire):
        assert all(ref.raw for ref in allocation.devices)


# ---- secrets ----

@pytest.mark.parametrize(("args", "expected"), [
    (["python", "train.py", "--password=hunter2"], ["python", "train.py", f"--password={REDACTED}"]),
    (["app", "--api-key", "abc123", "--lr", "0.1"], ["app", "--api-key", REDACTED, "--lr", "0.1"]),
    (["env", "AWS_SECRET_ACCESS_KEY=wJalr", "HF_TOKEN=hf_x", "EPOCHS=3"],
     ["env", f"AWS_SECRET_ACCESS_KEY={REDACTED}", f"HF_TOKEN={REDACTED}", "EPOCHS=3"]),
    (["git", "clone", "https://bob:s3cret@example.com/r.git"], ["git", "clone", f"https://bob:{REDACTED}@example.com/r.git"]),
    (["mysql", "--credential-file=/x", "--db_passwd", "p"], ["mysql", f"--credential-file={REDACTED}", "--db_passwd",
                                                            REDACTED]),
    (["vllm", "serve", "--model", "llama"], ["vllm", "serve", "--model", "llama"]),
])
def test_secrets_are_redacted(args: list[str], expected: list[str]) -> None:
    assert redact_args(args) == expected


def test_command_lines_are_not_exported_by_default_and_redacted_when_asked(host: Host) -> None:
    host.tree.add_process(3900, "python3", ["python3", "train.py", "--token=abc", "--epochs", "3"])
    document = scenario([Gpu(0, compute=[proc(3900)])])
    default = host.run(document)
    assert "gpu_process_command_info" not in default.metrics
    assert "abc" not in default.text
    opted = host.run(document, "--command-args")
    assert opted.value("gpu_process_command_info", pid="3900",
                       args=f"python3 train.py --token={REDACTED} --epochs 3") == 1
    assert "--token=abc" not in opted.text
    assert args_label(["x" * 5000]) == "x" * 1024


# ---- cardinality ----

def test_series_over_the_budget_are_aggregated_per_owner(host: Host) -> None:
    k8s = PodHost(host.tree)
    big, small = k8s.add_pod("ml", "big"), k8s.add_pod("ml", "swarm")
    k8s.add_process(6000, big)
    procs = [proc(6000, 40 * GIB)]
    for n in range(1, 30):
        k8s.add_process(6000 + n, small)
        procs.append(proc(6000 + n, n * 1024**2))
    result = host.run(scenario([Gpu(0, compute=procs)]), "--max-process-series", "10")
    assert len(result.series("gpu_process_info")) == 10
    assert result.value("gpu_process_memory_bytes", pid="6000") == 40 * GIB  # the largest holder keeps its series
    assert result.value("gpu_proc_collector_series_dropped") == 20
    assert result.value("gpu_process_count", gpu="0") == 30  # counts stay whole
    assert result.value("gpu_process_aggregated_count", owner="ml/swarm", gpu="0") == 20
    assert result.value("gpu_process_aggregated_memory_bytes", owner="ml/swarm") == sum(range(1, 21)) * 1024**2


def test_lone_surrogates_in_runtime_metadata_cannot_break_the_file(host: Host) -> None:
    k8s = PodHost(host.tree)
    pod = k8s.add_pod("ml", "train")
    spec = k8s.write_metadata(pod, pod.containers[0])
    cgroups_path = json.loads(spec.read_text())["linux"]["cgroupsPath"]
    spec.write_text('{"annotations": {"io.kubernetes.cri.sandbox-name": "bad\\ud800name", '
                    '"io.kubernetes.cri.sandbox-namespace": "ml", "io.kubernetes.cri.container-name": "c\\udfff"}, '
                    '"linux": {"cgroupsPath": "' + cgroups_path + '"}}')
    k8s.add_process(3950, pod)
    result = host.run(scenario([Gpu(0, compute=[proc(3950)])]))  # promtool checks the file inside run()
    assert result.returncode == 0, result.stderr
    # U+FFFD where the surrogates were, and a suffix from the original name (model.safe_name)
    assert result.value("gpu_process_info", pid="3950", pod=safe_name("bad\ud800name"),
                        container=safe_name("c\udfff")) == 1
    assert safe_name("bad\ud800name").startswith("bad\ufffdname~")


# ---- a snapshot that cannot mix two processes ----

def test_a_pid_started_after_the_nvml_read_is_a_reused_pid(host: Host) -> None:
    """NVML listed PID 3900; by the time /proc is read, another process has that PID (its start time is later than
    NVML's read). Reporting it would put one process's owner and name on another's GPU memory."""
    future_ticks = int((time.time() + 3600 - BTIME) * CLOCK_TICKS)
    host.tree.add_process(3900, "bash", start_ticks=future_ticks)
    host.tree.add_process(3901, "python3")
    result = host.run(scenario([Gpu(0, compute=[proc(3900, GIB), proc(3901, GIB)])]))
    assert result.returncode == 0, result.stderr
    assert not result.series("gpu_process_info", pid="3900")
    assert result.value("gpu_process_info", pid="3901", command="python3") == 1
    assert result.value("gpu_proc_collector_processes_dropped", reason="pid_reused") == 1
    assert result.value("gpu_proc_collector_processes_dropped", reason="pid_not_found") == 0
    assert result.value("gpu_process_count", gpu="0") == 1


def test_a_pid_that_proc_hides_is_counted_as_access_denied(tmp_path: Path) -> None:
    """/proc/<pid> unreadable to the collector (hidepid=, another PID namespace): its own reason, not 'gone'."""
    require_root("dropping to another uid to meet a permission error")
    root = Path(tempfile.mkdtemp(prefix="gpc-hidden-", dir="/tmp"))  # pytest's own tmp root is 0700
    root.chmod(0o755)
    tree = HostTree(root)
    tree.add_process(4100)
    tree.add_process(4102)
    (root / "proc" / "4100").chmod(0o700)
    code = f"""
import os
from collector import procfs  # imported first: the interpreter's own files may not be readable to nobody
procfs.use_host_root({str(root)!r})
os.setgid(65534); os.setuid(65534)
for pid in (4100, 4101, 4102):
    try:
        procfs.describe(pid)
        print(pid, "described")
    except procfs.ProcessUnavailable as err:
        print(pid, err.reason)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False)
    shutil.rmtree(root)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["4100 access_denied", "4101 pid_not_found", "4102 described"]


def test_an_unexpected_exception_writes_the_failed_file_and_one_line(host: Host, good_run: float) -> None:
    """A bug anywhere in a collection (here: attribution raising) must not leave the previous file looking fresh
    nor print a traceback: up 0, one line on stderr, exit 1."""
    host.tree.add_process(4200)
    write_scenario(host.base / "scenario.json", scenario([Gpu(0, compute=[proc(4200)])]))
    code = f"""
import sys
from collector import cli
from collector.attribution import join
def boom(self, host, device):
    raise RuntimeError("simulated bug")
join.Attributor.attribute = boom
sys.exit(cli.main(["--textfile-dir", {str(host.textfile_dir)!r}, "--host-root", {str(host.tree.root)!r},
                   "--state-dir", {str(host.state_dir)!r}]))
"""
    env = {**os.environ, "LD_LIBRARY_PATH": str(host.lib), "FAKE_NVML_SCENARIO": str(host.base / "scenario.json")}
    proc_ = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO,
                           check=False)
    assert proc_.returncode == 1
    assert "Traceback" not in proc_.stderr
    assert proc_.stderr.strip().splitlines() == [
        "gpu-proc-collector: ERROR: collection failed: unexpected RuntimeError: simulated bug"]
    text = host.prom.read_text()
    promtool_check(text)
    assert_failed_file(Result(1, "", proc_.stderr, text), good_run)


def test_the_watchdog_never_overwrites_a_file_the_run_published(tmp_path: Path) -> None:
    """The deadline can pass between the run's write and the watchdog's cancel: the watchdog must then do
    nothing (before, it wrote gpu_proc_collector_up 0 over the good file and exited 4)."""
    code = f"""
from collector import runner, state
from collector.settings import Settings
settings = Settings(textfile_dir={str(tmp_path)!r}, state_dir={str(tmp_path / "state")!r})
watchdog = runner.Watchdog(3600, settings, state.State())
print(watchdog.publish(b"# the run's own file\\n"))
watchdog._expired()  # what the timer thread does when it fires right after the publish
print("still running")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0", "still", "running"]
    assert (tmp_path / "gpu_processes.prom").read_text() == "# the run's own file\n"
