"""bench/device_check.sh without a GPU: its stand-in mode end to end (the same checks as on a real GPU, against the
stand-in NVML library and a fake nvidia-smi), its failures when the collector's answer is wrong, and the GPU
worker's PTX and ctypes calls against a stand-in libcuda.so.1 built here."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import pytest

from bench import device_check
from tests.conftest import REPO, require_tool

SCRIPT = REPO / "bench" / "device_check.sh"
WORKER = [sys.executable, str(REPO / "bench" / "device_check.py"), "worker"]


SANDBOX_CHECKS = ("sandbox-up", "sandbox-pids", "sandbox-status[busy100]", "sandbox-status[idle]",
                  "sandbox-util[busy100]")


def run_check(out: Path, *args: str, env: Optional[dict[str, str]] = None,
              timeout: float = 120) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "DEVICE_CHECK_PYTHON": sys.executable, **(env or {})}
    return subprocess.run([str(SCRIPT), str(out), *args], capture_output=True, text=True, env=full_env,
                          timeout=timeout, check=False)


def checks(out: Path) -> dict[str, str]:
    """check name -> PASS / FAIL / SKIP, from the report's table."""
    report = (out / "device-check.md").read_text()
    return dict(re.findall(r"^\| (\S+) \| (PASS|FAIL|SKIP) \|", report, re.MULTILINE))


def workers_gone(out: Path) -> None:
    for pid in (out / "worker-pids").read_text().split():
        assert not Path(f"/proc/{pid}").exists() or b"device_check.py" not in Path(f"/proc/{pid}/cmdline").read_bytes()


@pytest.mark.slow
@pytest.mark.usefixtures("fake_nvml")
def test_stand_in_check_passes(tmp_path: Path) -> None:
    result = run_check(tmp_path, "--stand-in", "--interval", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.match(r"device-check stand-in: PASS \((17 passed, 0 failed, 5 skipped|22 passed, 0 failed, 0 skipped)\)",
                    result.stdout), result.stdout
    found = checks(tmp_path)
    for name in ("collector-runs[full]", "collector-runs[duty30]", "pid-listed[idle]", "pid-listed[busy100]",
                 "pid-listed[busy30]", "memory[idle]", "memory[busy100]", "memory[busy30]", "util[busy100]",
                 "util[busy30]", "status[busy100]", "status[busy30]", "status[idle]", "gpm[full]", "gpm[duty30]",
                 "nvidia-smi[full]", "nvidia-smi[duty30]"):
        assert found.pop(name) == "PASS", name
    # The sandbox run needs systemd as PID 1 and root: where it can run, it runs (and passes) in stand-in mode too.
    sandbox = "PASS" if device_check.systemd_is_pid1() and os.geteuid() == 0 else "SKIP"
    assert found == dict.fromkeys(SANDBOX_CHECKS, sandbox)
    report = (tmp_path / "device-check.md").read_text()
    assert report.startswith("# Device check: PASS")
    # What is recorded for a real GPU: entries per PID, the size query's answer, sample spacing, GPM, MIG mode.
    # The stand-in plays the documented shape: one entry per process with activity, the newest.
    assert "size query (NULL buffer) answered {'return': 7, 'name': 'Insufficient Size', 'count': 2}" in report
    assert re.search(r"\| busy30 \(\d+\) \| 1 \| ", report)
    assert "GPM supported: True" in report
    assert "MIG mode {'current': 0" in report
    record = json.loads((tmp_path / "device-check.json").read_text())
    assert set(record["phases"]) == {"full", "duty30", "one-block", "both", "step"}
    assert record["phases"]["both"]["probe"]["gpu"]["per_pid"]["busy30"]["entries"] == 1
    # The step phase: busy100 paused halfway; the stand-in's one entry per process is its newest sample, from
    # before the pause, so the collector reports ~100 and the entry's age is about half the interval.
    step = record["phases"]["step"]
    assert step["collector"]["busy100"]["utilization"] == 100
    probe = step["probe"]["gpu"]
    assert all(age > 0 for age in probe["per_pid"]["busy100"]["age_ms"])
    assert probe["newest_spread_ms"] == 0.0  # one busy process: nothing to spread
    assert re.search(r"\| busy100 \(\d+\) \| 1 \| - \| [0-9.]+ / [0-9.]+ / [0-9.]+ \| 100 / 100 / 100 \| 100 \|",
                     report)
    for raw in ("full.measure.prom", "duty30.prime.prom", "both.probe.json", "full.nvidia-smi.csv", "discover.json"):
        assert (tmp_path / raw).stat().st_size > 0, raw
    workers_gone(tmp_path)


@pytest.mark.slow
@pytest.mark.usefixtures("fake_nvml")
def test_stand_in_mig_asserts_the_instance_label_and_unknown_status(tmp_path: Path) -> None:
    result = run_check(tmp_path, "--stand-in-mig", "--interval", "1", "--phases", "full,duty30")
    assert result.returncode == 0, result.stdout + result.stderr
    found = checks(tmp_path)
    assert (found["pid-listed[busy100]"], found["status[idle]"]) == ("PASS", "PASS")
    assert (found["util[busy100]"], found["util[busy30]"]) == ("SKIP", "SKIP")
    report = (tmp_path / "device-check.md").read_text()
    assert "on gpu='0_1_0', expected '0_1_0'" in report
    assert "status='unknown' in phase full, expected active or unknown" in report


@pytest.mark.slow
@pytest.mark.usefixtures("fake_nvml")
@pytest.mark.parametrize(
    ("corruption", "phases", "failing"),
    [
        ("drop-pid", "full", {"pid-listed[busy100]", "memory[busy100]", "util[busy100]", "status[busy100]",
                              "nvidia-smi[full]"}),
        ("util-off", "duty30", {"util[busy30]"}),
        ("idle-active", "full", {"status[idle]"}),
        ("gpm-off", "full", {"gpm[full]"}),
        ("gpm-partial", "full", {"gpm[full]"}),
    ],
)
def test_a_wrong_answer_fails_the_check(tmp_path: Path, corruption: str, phases: str, failing: set[str]) -> None:
    result = run_check(tmp_path, "--stand-in", "--interval", "1", "--phases", phases, "--corrupt", corruption)
    assert result.returncode == 1, result.stdout + result.stderr
    found = checks(tmp_path)
    assert {name for name, verdict in found.items() if verdict == "FAIL"} == failing
    for name in failing:
        assert name in result.stdout  # the one-line summary names each failed check
    assert (tmp_path / "device-check.md").read_text().startswith("# Device check: FAIL")
    if corruption == "util-off":
        assert "gpu_process_utilization 70.0, duty cycle 30 % (+/- 15)" in (tmp_path / "device-check.md").read_text()
    workers_gone(tmp_path)


@pytest.mark.usefixtures("fake_nvml")
def test_a_timeout_ends_the_check_with_124_and_says_so(tmp_path: Path) -> None:
    """The check waits at its start (a test knob), so the 1 s limit always ends it, however slow the machine."""
    pause = tmp_path / "paused"
    result = run_check(tmp_path / "out", "--stand-in", env={"DEVICE_CHECK_TIMEOUT": "1", "DEVICE_CHECK_PAUSE_AT":
                                                             "start", "DEVICE_CHECK_PAUSE_FILE": str(pause)})
    assert result.returncode == 124, result.stdout + result.stderr
    assert "timed out after 1 s" in result.stderr


def test_an_interruption_stops_the_workers_and_still_reports(tmp_path: Path) -> None:
    """timeout(1) sends SIGTERM: here it arrives once the workers run (the check waits there for it, a test knob,
    so it lands at that point whatever the machine's speed). The workers are stopped and the report written."""
    pause = tmp_path / "paused"
    env = {**os.environ, "DEVICE_CHECK_PYTHON": sys.executable, "DEVICE_CHECK_PAUSE_AT": "workers",
           "DEVICE_CHECK_PAUSE_FILE": str(pause)}
    check = subprocess.Popen([str(SCRIPT), str(tmp_path), "--stand-in"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 300
        while not pause.exists() or not pause.read_text():
            assert check.poll() is None, check.communicate()
            assert time.monotonic() < deadline, "the check never started its workers"
            time.sleep(0.1)
        os.kill(int(pause.read_text()), signal.SIGTERM)
        check.communicate(timeout=300)
    finally:
        check.kill()
    assert checks(tmp_path)["setup"] == "FAIL"
    assert "interrupted" in (tmp_path / "device-check.md").read_text()
    assert len((tmp_path / "worker-pids").read_text().split()) == 3
    workers_gone(tmp_path)


def test_without_a_usable_python_it_says_so(tmp_path: Path) -> None:
    result = run_check(tmp_path, "--stand-in", env={"DEVICE_CHECK_PYTHON": str(tmp_path / "no-python")})
    assert result.returncode == 2
    assert "no Python here imports pynvml" in result.stderr
    assert "no Python here imports pynvml" in (tmp_path / "device-check.md").read_text()


# ---- the unit's sandbox


def test_unit_properties_are_the_templates_plain_service_lines() -> None:
    template = device_check.UNIT_TEMPLATE.read_text()
    props, skipped = device_check.unit_properties(template)
    assert not [p for p in props if "{" in p or p.startswith(("ExecStart", "CPUQuota", "MemoryMax"))]
    assert {"ProtectSystem=strict", "DevicePolicy=closed", "PrivateNetwork=yes"} <= set(props)
    # Whatever DeviceAllow= and capability lines the template has now, each plain one is passed, in order.
    plain = [line.strip() for line in template.splitlines()
             if line.startswith(("DeviceAllow=", "AmbientCapabilities=", "CapabilityBoundingSet=")) and "{" not in line]
    assert [p for p in props if p.startswith(("DeviceAllow=", "AmbientCapabilities=", "CapabilityBoundingSet="))] \
        == plain
    assert any(s.startswith("ExecStart=") for s in skipped)
    assert any(s.startswith("CPUQuota=") for s in skipped)
    assert any(s.startswith("MemoryMax=") for s in skipped)


def test_unit_properties_parsing() -> None:
    template = """{{ ansible_managed | comment }}
[Unit]
Description=not a service line
[Service]
Type=oneshot
ExecStart=/bin/true
# a comment
; another
SystemCallFilter=@system-service \\
    @basic-io
{% if gpu_proc_collector_uvm %}
DeviceAllow=char-nvidia-uvm rw
{% endif %}
{% if gpu_proc_collector_mode == 'service' %}
Type=notify
Restart=on-failure
{% else %}
TimeoutStartSec=5
{% endif %}
{# a comment
   over two lines #}
ReadWritePaths={{ a }} {{ b }}
AmbientCapabilities=
[Install]
WantedBy=multi-user.target
"""
    props, skipped = device_check.unit_properties(template)
    assert props == ["Type=oneshot", "SystemCallFilter=@system-service @basic-io", "DeviceAllow=char-nvidia-uvm rw",
                     "TimeoutStartSec=5", "AmbientCapabilities=", "Restart=no"]
    assert skipped == ["ExecStart=/bin/true", "{% if gpu_proc_collector_uvm %}", "{% endif %}",
                       "{% if gpu_proc_collector_mode == 'service' %}", "Type=notify", "Restart=on-failure",
                       "{% else %}", "{% endif %}", "ReadWritePaths={{ a }} {{ b }}"]


def test_sandbox_command_makes_the_checkout_visible() -> None:
    cmd, notes = device_check.sandbox_command(
        ["ProtectHome=yes", "PrivateTmp=yes", "DeviceAllow=/dev/nvidiactl rw"], python="/x/.venv/bin/python",
        state="/var/lib/d/s", textfile="/var/lib/d/t", unit="unit-1",
        needed_paths=["/root/.pyenv/versions/3.11.7", "/tmp/checkout", "/usr"])
    props = [cmd[i + 1] for i, word in enumerate(cmd) if word == "-p"]
    assert props == ["ProtectHome=tmpfs", "PrivateTmp=yes", "DeviceAllow=/dev/nvidiactl rw",
                     "BindReadOnlyPaths=/root/.pyenv/versions/3.11.7", "BindReadOnlyPaths=/tmp/checkout",
                     "ReadWritePaths=/var/lib/d/s /var/lib/d/t", "TimeoutStartSec=90"]
    assert cmd[:6] == ["systemd-run", "--wait", "--pipe", "--quiet", "--collect", "--unit=unit-1"]
    assert cmd[cmd.index("--"):] == ["--", "/x/.venv/bin/python", "-m", "collector", "--textfile-dir", "/var/lib/d/t",
                                     "--state-dir", "/var/lib/d/s", "--log-level", "debug"]
    assert len(notes) == 3
    plain, _ = device_check.sandbox_command(["ProtectHome=yes"], python="/opt/py", state="/s", textfile="/t", unit="u",
                                            needed_paths=["/opt", "/usr"])
    assert "ProtectHome=yes" in plain
    assert not [w for w in plain if w.startswith("BindReadOnlyPaths")]


def test_rejected_property_names_the_property() -> None:
    assert device_check._rejected_property("Unknown assignment: PrivateIPC=yes\n") == "PrivateIPC"
    assert device_check._rejected_property("Failed to start transient service unit: Cannot set property "
                                           "KeyringMode, or unknown property.") == "KeyringMode"
    assert device_check._rejected_property("Job failed") == ""


# ---- the GPU worker: PTX and ctypes


def test_ptx_is_well_formed() -> None:
    ptx = device_check.PTX
    assert re.search(r"^\.version 6\.0$", ptx, re.MULTILINE)
    assert re.search(r"^\.target sm_50$", ptx, re.MULTILINE)
    assert re.search(r"^\.address_size 64$", ptx, re.MULTILINE)
    assert re.search(rf"^\.visible \.entry {device_check.KERNEL}\(\s*\.param \.u64 \w+\s*\)", ptx, re.MULTILINE)
    assert ptx.count("{") == ptx.count("}") == 1
    assert "%globaltimer" in ptx
    assert "ret;" in ptx


def venv_ptxas() -> str:
    """NVIDIA's ptxas from nvidia-cuda-nvcc-cu12, installed into the virtualenv with the test extras (pyproject.toml):
    the one the suite pins, never whichever ptxas a PATH happens to offer."""
    spec = importlib.util.find_spec("nvidia.cuda_nvcc")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        tool = Path(folder) / "bin" / "ptxas"
        if os.access(tool, os.X_OK):
            return str(tool)
    pytest.fail("NVIDIA's ptxas is not installed (pyproject.toml's test extras bring nvidia-cuda-nvcc-cu12)")


# Turing (T4), Ampere (A100), Hopper (H100, H200), Blackwell (B200): what the driver's JIT does on each, this PTX
# compiled for its architecture (docs/real-gpu-check.md).
@pytest.mark.parametrize("arch", ["sm_75", "sm_80", "sm_90", "sm_100"])
def test_ptx_assembles_for_every_supported_architecture(tmp_path: Path, arch: str) -> None:
    ptxas = venv_ptxas()
    assert Path(ptxas).resolve().is_relative_to(Path(sys.prefix).resolve())
    source = tmp_path / "spin.ptx"
    source.write_text(device_check.PTX)
    result = subprocess.run([ptxas, f"-arch={arch}", "-v", str(source), "-o", str(tmp_path / "spin.cubin")],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert f"Compiling entry function 'spin' for '{arch}'" in result.stdout + result.stderr
    assert (tmp_path / "spin.cubin").stat().st_size > 0


def test_worker_without_libcuda_says_so(tmp_path: Path) -> None:
    result = subprocess.run([*WORKER, "--duty", "1.0", "--mib", "16", "--libcuda", str(tmp_path / "libcuda.so.1")],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == device_check.EXIT_NO_CUDA
    assert "cannot load" in result.stderr
    assert "libcuda.so.1 (the NVIDIA driver's CUDA library" in result.stderr
    assert "error" in json.loads(result.stdout)


# A stand-in libcuda.so.1: the driver API calls the worker makes, each logged with the arguments that matter.
FAKE_CUDA = r"""
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
typedef int CUresult;
static FILE *calls(void) {
    static FILE *f;
    if (!f) { f = fopen(getenv("FAKE_CUDA_LOG"), "a"); setvbuf(f, NULL, _IOLBF, 0); }
    return f;
}
static int fails(const char *name) { const char *f = getenv("FAKE_CUDA_FAIL"); return f && !strcmp(f, name); }
CUresult cuInit(unsigned int flags) { fprintf(calls(), "cuInit %u\n", flags); return fails("cuInit") ? 100 : 0; }
CUresult cuDriverGetVersion(int *v) { *v = 13000; return 0; }
CUresult cuDeviceGet(int *dev, int ordinal) { *dev = ordinal; return 0; }
CUresult cuDeviceGetName(char *name, int len, int dev) {
    (void)dev;
    snprintf(name, (size_t)len, "Fake H200");
    return 0;
}
CUresult cuDeviceGetAttribute(int *v, int attr, int dev) { (void)dev; *v = attr == 16 ? 132 : 0; return 0; }
CUresult cuDevicePrimaryCtxRetain(void **ctx, int dev) {
    *ctx = (void *)0x1234;
    fprintf(calls(), "retain %d\n", dev);
    return 0;
}
CUresult cuCtxSetCurrent(void *ctx) { fprintf(calls(), "current %p\n", ctx); return 0; }
CUresult cuMemAlloc_v2(unsigned long long *p, size_t n) {
    *p = 0x7f0000000000ULL;
    fprintf(calls(), "alloc %zu\n", n);
    return 0;
}
CUresult cuMemsetD8_v2(unsigned long long p, unsigned char v, size_t n) {
    fprintf(calls(), "memset %llx %u %zu\n", p, v, n);
    return 0;
}
CUresult cuModuleLoadDataEx(void **mod, const void *image, unsigned int n, int *opts, void **vals) {
    const char *ptx = image;
    fprintf(calls(), "load %s %u\n", strstr(ptx, ".entry spin(") ? "entry-spin" : "no-entry", n);
    if (fails("cuModuleLoadDataEx")) {
        for (unsigned int i = 0; i < n; i++)
            if (opts[i] == 5) snprintf((char *)vals[i], 64, "ptxas fatal : stand-in JIT refusal");
        return 218;
    }
    *mod = (void *)0x5678;
    return 0;
}
CUresult cuModuleGetFunction(void **f, void *mod, const char *name) {
    *f = (void *)0x9abc;
    fprintf(calls(), "function %p %s\n", mod, name);
    return 0;
}
CUresult cuLaunchKernel(void *f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned shared, void *stream, void **params, void **extra) {
    uint64_t ns = *(uint64_t *)params[0];
    fprintf(calls(), "launch %p grid=%u,%u,%u block=%u,%u,%u shared=%u stream=%p ns=%llu extra=%p\n", f, gx, gy, gz,
            bx, by, bz, shared, stream, (unsigned long long)ns, (void *)extra);
    struct timespec t = {0, (long)(ns / 10)};  /* a tenth of the time: the test needs no real spinning */
    nanosleep(&t, NULL);
    return 0;
}
CUresult cuCtxSynchronize(void) { return 0; }
CUresult cuGetErrorName(CUresult e, const char **s) {
    *s = e == 218 ? "CUDA_ERROR_INVALID_PTX" : "CUDA_ERROR_NO_DEVICE";
    return 0;
}
"""


@pytest.fixture(scope="module")
def fake_libcuda(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cc = require_tool("cc")
    base = tmp_path_factory.mktemp("fake_cuda")
    (base / "fake_cuda.c").write_text(FAKE_CUDA)
    lib = base / "libcuda.so.1"
    subprocess.run([cc, "-shared", "-fPIC", "-Wall", "-Werror", "-o", str(lib), str(base / "fake_cuda.c")], check=True)
    return lib


def _line(proc: subprocess.Popen[bytes], timeout: float = 10) -> dict[str, Any]:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "the worker said nothing"
    return dict(json.loads(proc.stdout.readline()))


def test_worker_drives_the_cuda_driver_api(tmp_path: Path, fake_libcuda: Path) -> None:
    log = tmp_path / "cuda.log"
    proc = subprocess.Popen([*WORKER, "--duty", "1.0", "--mib", "64", "--libcuda", str(fake_libcuda)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            env={**os.environ, "FAKE_CUDA_LOG": str(log)})
    assert proc.stdin is not None
    try:
        ready = _line(proc)
        assert ready == {"ready": True, "pid": proc.pid, "mib": 64, "bytes": 64 << 20, "device": "Fake H200",
                         "sms": 132, "cuda_driver_version": 13000, "duty": 1.0}
        time.sleep(0.3)
        for command, duty, blocks in (("run 0.3 1", 0.3, 1), ("pause", 0.0, 1), ("run", 1.0, 0)):
            proc.stdin.write(command.encode() + b"\n")
            proc.stdin.flush()
            assert _line(proc) == {"ok": command, "duty": duty, "blocks": blocks}
            time.sleep(0.3)
        proc.stdin.write(b"stop\n")
        proc.stdin.flush()
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()
    calls = log.read_text().splitlines()
    assert calls[:7] == ["cuInit 0", "retain 0", "current 0x1234", f"alloc {64 << 20}",
                         f"memset 7f0000000000 0 {64 << 20}", "load entry-spin 2", "function 0x5678 spin"]
    launches = [c for c in calls if c.startswith("launch")]
    full = "launch 0x9abc grid=132,1,1 block=32,1,1 shared=0 stream=(nil) ns=50000000 extra=(nil)"
    duty30 = "launch 0x9abc grid=1,1,1 block=32,1,1 shared=0 stream=(nil) ns=30000000 extra=(nil)"
    assert set(launches) == {full, duty30}
    assert (launches[0], launches[-1]) == (full, full)


def test_worker_stops_at_end_of_input(fake_libcuda: Path, tmp_path: Path) -> None:
    proc = subprocess.run([*WORKER, "--duty", "0.3", "--mib", "1", "--libcuda", str(fake_libcuda)], input=b"",
                          capture_output=True, timeout=30, check=False,
                          env={**os.environ, "FAKE_CUDA_LOG": str(tmp_path / "cuda.log")})
    assert proc.returncode == 0
    assert json.loads(proc.stdout.splitlines()[0])["ready"] is True


def test_worker_reports_the_jit_log(tmp_path: Path, fake_libcuda: Path) -> None:
    result = subprocess.run([*WORKER, "--duty", "1.0", "--mib", "1", "--libcuda", str(fake_libcuda)],
                            capture_output=True, text=True, timeout=30, check=False,
                            env={**os.environ, "FAKE_CUDA_LOG": str(tmp_path / "cuda.log"),
                                 "FAKE_CUDA_FAIL": "cuModuleLoadDataEx"})
    assert result.returncode == device_check.EXIT_NO_CUDA
    assert "cuModuleLoadDataEx failed: CUDA_ERROR_INVALID_PTX (218); JIT log: ptxas fatal : stand-in JIT refusal" \
        in result.stderr


# ---- the sandbox step, with stand-ins for systemd-run and systemctl (no systemd needed)

SYSTEMD_RUN = """#!{python}
# A stand-in systemd-run: logs its arguments, then runs the command after "--" with the --setenv variables (or,
# with STAND_IN_FAIL set, fails as a collector that cannot start would).
import json, os, subprocess, sys
args = sys.argv[1:]
with open(os.environ["STAND_IN_LOG"], "a") as log:
    log.write(json.dumps(["systemd-run", *args]) + "\\n")
if os.environ.get("STAND_IN_FAIL"):
    print("gpu-proc-collector: ERROR: collection failed: NVML init failed: Insufficient Permissions", file=sys.stderr)
    sys.exit(1)
split = args.index("--")
env = dict(os.environ)
for arg in args[:split]:
    if arg.startswith("--setenv="):
        key, _, value = arg[len("--setenv="):].partition("=")
        env[key] = value
sys.exit(subprocess.run(args[split + 1:], env=env, check=False).returncode)
"""
SYSTEMCTL = """#!{python}
import json, os, sys
with open(os.environ["STAND_IN_LOG"], "a") as log:
    log.write(json.dumps(["systemctl", *sys.argv[1:]]) + "\\n")
"""


def systemd_stand_ins(tmp_path: Path) -> tuple[Path, Path]:
    tools = tmp_path / "systemd"
    tools.mkdir()
    for name, text in (("systemd-run", SYSTEMD_RUN), ("systemctl", SYSTEMCTL)):
        (tools / name).write_text(text.format(python=sys.executable))
        (tools / name).chmod(0o755)
    return tools, tmp_path / "systemd.log"


def calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def properties(call: list[str]) -> list[str]:
    return [call[i + 1] for i, arg in enumerate(call) if arg == "-p"]


# The long-running mode's [Service] lines: none may reach the timer mode's transient unit.
SERVICE_ONLY = ("Type=notify", "NotifyAccess=", "ExecReload=", "WatchdogSec=", "RestartSec=",
                "RestartPreventExitStatus=", "TimeoutStopSec=")


@pytest.mark.slow
@pytest.mark.usefixtures("fake_nvml")
def test_the_sandbox_step_passes_the_timer_units_settings_and_asserts_as_the_plain_runs(tmp_path: Path) -> None:
    tools, log = systemd_stand_ins(tmp_path)
    result = run_check(tmp_path / "out", "--stand-in", "--interval", "1", "--phases", "full",
                       env={device_check.SYSTEMD_STAND_IN: str(tools), "STAND_IN_LOG": str(log)})
    assert result.returncode == 0, result.stdout + result.stderr
    found = checks(tmp_path / "out")
    assert {name: found[name] for name in SANDBOX_CHECKS} == dict.fromkeys(SANDBOX_CHECKS, "PASS")
    runs = [c for c in calls(log) if c[0] == "systemd-run"]
    assert len(runs) == 2  # prime, measure
    for run in runs:
        props = properties(run)
        assert "Type=oneshot" in props
        assert [p for p in props if p.startswith("Restart=")] == ["Restart=no"]
        assert not [p for p in props if p.startswith(SERVICE_ONLY)], props
        assert "--wait" in run
    # Every transient unit is stopped and reset afterwards.
    units = [arg.split("=", 1)[1] for run in runs for arg in run if arg.startswith("--unit=")]
    assert [c[1:] for c in calls(log) if c[0] == "systemctl"] == [
        [verb, unit] for unit in units for verb in ("stop", "reset-failed")]


@pytest.mark.slow
@pytest.mark.usefixtures("fake_nvml")
def test_a_failing_sandboxed_collector_is_reported_with_its_exit_and_its_unit_reset(tmp_path: Path) -> None:
    tools, log = systemd_stand_ins(tmp_path)
    out = tmp_path / "out"
    result = run_check(out, "--stand-in", "--interval", "1", "--phases", "full",
                       env={device_check.SYSTEMD_STAND_IN: str(tools), "STAND_IN_LOG": str(log), "STAND_IN_FAIL": "1"})
    assert result.returncode == 1, result.stdout + result.stderr
    found = checks(out)
    assert {name for name in SANDBOX_CHECKS if found[name] == "FAIL"} == set(SANDBOX_CHECKS)
    assert "exit 1/1, gpu_proc_collector_up None/None" in (out / "device-check.md").read_text()
    assert "Insufficient Permissions" in (out / "sandbox.log").read_text()
    units = [arg.split("=", 1)[1] for c in calls(log) if c[0] == "systemd-run" for arg in c
             if arg.startswith("--unit=")]
    assert len(units) == 2
    assert [c[1:] for c in calls(log) if c[0] == "systemctl"] == [
        [verb, unit] for unit in units for verb in ("stop", "reset-failed")]


def test_unit_properties_take_the_timer_mode_of_the_template_and_never_restart() -> None:
    props, skipped = device_check.unit_properties(device_check.UNIT_TEMPLATE.read_text())
    assert props[0] == "Type=oneshot"
    assert props[-1] == "Restart=no"
    assert [p for p in props if p.startswith("Restart")] == ["Restart=no"]
    assert not [p for p in props if p.startswith(SERVICE_ONLY)]
    assert "Restart=on-failure" in skipped
    assert "DevicePolicy=closed" in props
    # A template that grows a Restart= line of its own for the timer mode still gets Restart=no, once.
    template = device_check.UNIT_TEMPLATE.read_text().replace("Type=oneshot\n", "Type=oneshot\nRestart=always\n")
    props, _ = device_check.unit_properties(template)
    assert [p for p in props if p.startswith("Restart")] == ["Restart=no"]
