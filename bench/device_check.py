"""The real-GPU check: known GPU work, the collector's answer about it, and what NVML itself says.

    bench/device_check.sh [OUTDIR] [--stand-in]         (the wrapper: .venv's Python, a timeout, a cleanup trap)
    python bench/device_check.py run --out DIR [--stand-in] [--interval 10]
    python bench/device_check.py worker --duty 1.0 --mib 512 [--blocks 0] [--paused] [--stand-in]
    python bench/device_check.py probe discover | probe util --uuid GPU-... [--mig-uuid MIG-...] [--since-s 10]

`run` starts three workers (separate processes: one holding memory only, one busy ~100 % of the time, one ~30 %),
runs the collector twice per phase (the first run primes its per-GPU utilisation timestamp, the second measures
the interval since), checks its answer against what the workers are known to do and against nvidia-smi, once more
inside the systemd unit's own sandbox where systemd is PID 1, and records what NVML answers that no document
settles. It writes OUTDIR/device-check.md (the report), device-check.json and the raw outputs, prints one line,
and exits 1 if any check failed. It changes no GPU setting.

A worker drives the GPU through the driver's libcuda.so.1 with ctypes (no CUDA toolkit): the primary context, a
cuMemAlloc_v2 of --mib MiB, and a hand-written PTX kernel (JIT-compiled by the driver) that spins on %globaltimer
for a given number of nanoseconds. It prints one JSON line when ready and obeys lines on stdin: `run [DUTY
[BLOCKS]]`, `pause`, `stop` (or end of input). --stand-in workers touch no GPU: the stand-in NVML library
(tests/fake_nvml) is given a scenario listing their PIDs instead, and a fake nvidia-smi prints the same list, so
the same checks run end to end on a machine without a GPU. docs/real-gpu-check.md says what is asserted and why.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import queue
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parent.parent
UNIT_TEMPLATE = REPO / "roles" / "gpu_proc_collector" / "templates" / "gpu-proc-collector.service.j2"
FAKE_NVML = REPO / "tests" / "fake_nvml"
MIB = 1 << 20
TOLERANCE = 15.0  # utilisation points a measured duty cycle may be off
PERIOD_S = 0.100  # a duty-cycled worker runs the kernel for duty * PERIOD_S of every PERIOD_S
CHUNK_S = 0.050  # a 100 % worker launches kernels of this length back to back
PROBE_SINCE_S = 10.0  # the probe's lastSeenTimeStamp: this long ago
STAND_IN_OVERHEAD = 300 * MIB  # what a CUDA context adds to a process's memory, roughly, in the stand-in scenario
EXIT_NO_CUDA = 3

# spin(u64 ns): every thread spins on %globaltimer (ns) until ns have passed. Hand-written: no toolkit needed.
# PTX ISA 6.0 (CUDA 9, 2017) for sm_50: every driver since R384 JIT-compiles it for its own GPU (sm_90 on H100/H200).
# %globaltimer exists since PTX ISA 3.1; the loop has no memory access, so the JIT cannot drop it.
PTX = r"""//
// device_check.py: spin(u64 ns) spins on %globaltimer until ns nanoseconds have passed.
//
.version 6.0
.target sm_50
.address_size 64

.visible .entry spin(
	.param .u64 spin_param_0
)
{
	.reg .pred 	%p<2>;
	.reg .b64 	%rd<5>;

	ld.param.u64 	%rd1, [spin_param_0];
	mov.u64 	%rd2, %globaltimer;
	add.s64 	%rd3, %rd2, %rd1;
$L_spin:
	mov.u64 	%rd4, %globaltimer;
	setp.lt.u64 	%p1, %rd4, %rd3;
	@%p1 bra 	$L_spin;
	ret;
}
"""
KERNEL = "spin"
THREADS_PER_BLOCK = 32  # one warp per block: utilisation is time with a kernel running, not occupancy


# ---------------------------------------------------------------------------------------------------------------
# The worker: GPU load through libcuda.so.1


class CudaUnavailable(Exception):
    """No usable CUDA driver library (no NVIDIA driver, or a symbol missing)."""


class CudaError(Exception):
    """A CUDA driver call failed."""


_c_void_pp = ctypes.POINTER(ctypes.c_void_p)
_SIGNATURES: dict[str, list[Any]] = {
    "cuInit": [ctypes.c_uint],
    "cuDriverGetVersion": [ctypes.POINTER(ctypes.c_int)],
    "cuDeviceGet": [ctypes.POINTER(ctypes.c_int), ctypes.c_int],
    "cuDeviceGetName": [ctypes.c_char_p, ctypes.c_int, ctypes.c_int],
    "cuDeviceGetAttribute": [ctypes.POINTER(ctypes.c_int), ctypes.c_int, ctypes.c_int],
    "cuDevicePrimaryCtxRetain": [_c_void_pp, ctypes.c_int],
    "cuCtxSetCurrent": [ctypes.c_void_p],
    "cuMemAlloc_v2": [ctypes.POINTER(ctypes.c_uint64), ctypes.c_size_t],
    "cuMemsetD8_v2": [ctypes.c_uint64, ctypes.c_ubyte, ctypes.c_size_t],
    "cuModuleLoadDataEx": [_c_void_pp, ctypes.c_char_p, ctypes.c_uint, ctypes.POINTER(ctypes.c_int), _c_void_pp],
    "cuModuleGetFunction": [_c_void_pp, ctypes.c_void_p, ctypes.c_char_p],
    "cuLaunchKernel": [ctypes.c_void_p] + [ctypes.c_uint] * 7 + [ctypes.c_void_p, _c_void_pp, _c_void_pp],
    "cuCtxSynchronize": [],
    "cuGetErrorName": [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)],
}
CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT = 16
CU_JIT_ERROR_LOG_BUFFER = 5
CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES = 6


class GpuLoad:
    """One CUDA device (device 0 of CUDA_VISIBLE_DEVICES): memory held, and the spin kernel on demand."""

    def __init__(self, mib: int, library: str = "libcuda.so.1") -> None:
        try:
            self._lib = ctypes.CDLL(library)
        except OSError as err:
            raise CudaUnavailable(
                f"cannot load {library} (the NVIDIA driver's CUDA library; is the driver installed?): {err}"
            ) from None
        self._call("cuInit", 0)
        version = ctypes.c_int(0)
        self._call("cuDriverGetVersion", ctypes.byref(version))
        self.driver_version = version.value
        dev = ctypes.c_int(0)
        self._call("cuDeviceGet", ctypes.byref(dev), 0)
        name = ctypes.create_string_buffer(256)
        self._call("cuDeviceGetName", name, len(name), dev)
        self.name = name.value.decode(errors="replace")
        sms = ctypes.c_int(0)
        self._call("cuDeviceGetAttribute", ctypes.byref(sms), CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev)
        self.sms = sms.value
        self._ctx = ctypes.c_void_p()
        self._call("cuDevicePrimaryCtxRetain", ctypes.byref(self._ctx), dev)
        self._call("cuCtxSetCurrent", self._ctx)
        self.bytes = mib * MIB
        self._mem = ctypes.c_uint64(0)
        if self.bytes:
            self._call("cuMemAlloc_v2", ctypes.byref(self._mem), self.bytes)
            self._call("cuMemsetD8_v2", self._mem, 0, self.bytes)  # touched, not only reserved
        self._function = self._load_kernel()
        self._call("cuCtxSynchronize")

    def _fn(self, name: str) -> Any:
        try:
            fn = getattr(self._lib, name)
        except AttributeError:
            raise CudaUnavailable(f"the CUDA driver library has no {name} (driver too old?)") from None
        fn.restype = ctypes.c_int
        fn.argtypes = _SIGNATURES[name]
        return fn

    def _call(self, name: str, *args: Any) -> None:
        ret = self._fn(name)(*args)
        if ret != 0:
            raise CudaError(f"{name} failed: {self._error_name(ret)} ({ret})")

    def _error_name(self, ret: int) -> str:
        text = ctypes.c_char_p()
        try:
            if self._fn("cuGetErrorName")(ret, ctypes.byref(text)) == 0 and text.value:
                return text.value.decode()
        except CudaUnavailable:
            pass
        return "CUDA_ERROR"

    def _load_kernel(self) -> ctypes.c_void_p:
        module = ctypes.c_void_p()
        log = ctypes.create_string_buffer(8192)
        options = (ctypes.c_int * 2)(CU_JIT_ERROR_LOG_BUFFER, CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES)
        values = (ctypes.c_void_p * 2)(ctypes.cast(log, ctypes.c_void_p), ctypes.c_void_p(len(log)))
        try:
            self._call("cuModuleLoadDataEx", ctypes.byref(module), PTX.encode(), 2, options, values)
        except CudaError as err:
            raise CudaError(f"{err}; JIT log: {log.value.decode(errors='replace').strip()}") from None
        function = ctypes.c_void_p()
        self._call("cuModuleGetFunction", ctypes.byref(function), module, KERNEL.encode())
        return function

    def spin(self, seconds: float, blocks: int) -> None:
        """Runs the kernel for `seconds` on `blocks` blocks (0: one per SM) and waits for it."""
        ns = ctypes.c_uint64(int(seconds * 1e9))
        params = (ctypes.c_void_p * 1)(ctypes.addressof(ns))  # kernelParams: one pointer per parameter
        grid = blocks if blocks > 0 else max(self.sms, 1)
        self._call("cuLaunchKernel", self._function, grid, 1, 1, THREADS_PER_BLOCK, 1, 1, 0, None, params, None)
        self._call("cuCtxSynchronize")


class StandInLoad:
    """--stand-in: no GPU; the 'kernel' is a sleep, the stand-in NVML scenario plays the GPU's view."""

    name = "stand-in"
    sms = 0
    driver_version = 0

    def __init__(self, mib: int) -> None:
        self.bytes = mib * MIB

    def spin(self, seconds: float, blocks: int) -> None:
        time.sleep(seconds)


class _Lines:
    """Lines from a file descriptor, with a timeout per line (select), without Python's buffered readline."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = b""
        self.eof = False

    def next(self, timeout: Optional[float]) -> Optional[str]:
        """A line; None when none came in time; "" at end of input."""
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        while b"\n" not in self.buffer and not self.eof:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            ready, _, _ = select.select([self.fd], [], [], left)
            if not ready:
                return None
            chunk = os.read(self.fd, 4096)
            if chunk:
                self.buffer += chunk
            else:
                self.eof = True
        if b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            return line.decode(errors="replace").strip() or "noop"
        return ""


def _die_with_parent() -> None:
    """SIGTERM when the parent dies (even by SIGKILL): no GPU worker outlives the check."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG


def _emit(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def worker_main(args: argparse.Namespace) -> int:
    _die_with_parent()
    deadline = time.monotonic() + args.max_seconds
    try:
        load: Any = StandInLoad(args.mib) if args.stand_in else GpuLoad(args.mib, args.libcuda)
    except (CudaUnavailable, CudaError) as err:
        print(f"device_check worker: {err}", file=sys.stderr)
        _emit({"error": str(err)})
        return EXIT_NO_CUDA
    duty, blocks = (0.0 if args.paused else args.duty), args.blocks
    _emit({"ready": True, "pid": os.getpid(), "mib": args.mib, "bytes": load.bytes, "device": load.name,
           "sms": load.sms, "cuda_driver_version": load.driver_version, "duty": duty})
    commands = _Lines(sys.stdin.fileno())
    while time.monotonic() < deadline:
        if duty >= 1.0:
            load.spin(CHUNK_S, blocks)
            wait = 0.0
        elif duty > 0.0:
            start = time.monotonic()
            load.spin(duty * PERIOD_S, blocks)
            wait = PERIOD_S - (time.monotonic() - start)
        else:
            wait = deadline - time.monotonic()
        line = commands.next(wait)
        if line is None:
            continue
        words = line.split()
        if not words or words[0] == "stop":
            break
        if words[0] == "run":
            duty = float(words[1]) if len(words) > 1 else args.duty
            blocks = int(words[2]) if len(words) > 2 else args.blocks
        elif words[0] == "pause":
            duty = 0.0
        _emit({"ok": line, "duty": duty, "blocks": blocks})
    return 0


# ---------------------------------------------------------------------------------------------------------------
# The probe: what NVML answers, straight through pynvml (run in a subprocess: LD_LIBRARY_PATH is read at start)


def _nvml_error(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _discover(pynvml: Any) -> dict[str, Any]:
    found: dict[str, Any] = {"driver_version": _text(pynvml.nvmlSystemGetDriverVersion()), "devices": []}
    with contextlib.suppress(Exception):
        found["cuda_driver_version"] = int(pynvml.nvmlSystemGetCudaDriverVersion_v2())
    for index in range(int(pynvml.nvmlDeviceGetCount())):
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        dev: dict[str, Any] = {"index": index, "uuid": _text(pynvml.nvmlDeviceGetUUID(handle)),
                               "name": _text(pynvml.nvmlDeviceGetName(handle)), "mig_mode": None, "migs": []}
        try:
            current, pending = pynvml.nvmlDeviceGetMigMode(handle)
            dev["mig_mode"] = {"current": int(current), "pending": int(pending)}
        except Exception as err:
            dev["mig_mode"] = _nvml_error(err)
        if isinstance(dev["mig_mode"], dict) and dev["mig_mode"]["current"] == 1:
            for slot in range(int(pynvml.nvmlDeviceGetMaxMigDeviceCount(handle))):
                try:
                    mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
                except pynvml.NVMLError:
                    continue
                dev["migs"].append({"slot": slot, "uuid": _text(pynvml.nvmlDeviceGetUUID(mig)),
                                    "gi": int(pynvml.nvmlDeviceGetGpuInstanceId(mig)),
                                    "ci": int(pynvml.nvmlDeviceGetComputeInstanceId(mig)),
                                    "name": _text(pynvml.nvmlDeviceGetName(mig))})
        try:
            dev["gpm_supported"] = bool(pynvml.nvmlGpmQueryDeviceSupport(handle).isSupportedDevice)
        except Exception as err:
            dev["gpm_supported"] = _nvml_error(err)
        try:
            dev["compute_mode"] = int(pynvml.nvmlDeviceGetComputeMode(handle))
        except Exception as err:
            dev["compute_mode"] = _nvml_error(err)
        found["devices"].append(dev)
    return found


def _utilisation(pynvml: Any, handle: Any, since_us: int) -> dict[str, Any]:
    """The size query (NULL buffer) straight through the C function, then pynvml's own call."""
    answer: dict[str, Any] = {"last_seen_us": since_us}
    try:
        fn = pynvml._nvmlGetFunctionPointer("nvmlDeviceGetProcessUtilization")
        count = ctypes.c_uint(0)
        ret = int(fn(handle, None, ctypes.byref(count), ctypes.c_ulonglong(since_us)))
        answer["size_query"] = {"return": ret, "name": str(pynvml.NVMLError(ret)) if ret else "Success",
                                "count": int(count.value)}
    except Exception as err:
        answer["size_query"] = {"error": _nvml_error(err)}
    try:
        raw = pynvml.nvmlDeviceGetProcessUtilization(handle, since_us)
        answer["answered_us"] = int(time.time() * 1e6)  # each entry's age is measured from here
        answer["samples"] = [{"pid": int(s.pid), "ts_us": int(s.timeStamp), "sm": int(s.smUtil),
                              "mem": int(s.memUtil)} for s in raw]
    except Exception as err:
        answer["error"] = _nvml_error(err)
    try:
        answer["compute_processes"] = [
            {"pid": int(p.pid), "used_memory": None if p.usedGpuMemory is None else int(p.usedGpuMemory)}
            for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)]
    except Exception as err:
        answer["compute_processes"] = _nvml_error(err)
    return answer


def probe_main(args: argparse.Namespace) -> int:
    import pynvml  # noqa: PLC0415  (only the probe needs it; the worker runs without pynvml)

    pynvml.nvmlInit()
    try:
        if args.what == "discover":
            result = _discover(pynvml)
        else:
            since_us = int((time.time() - args.since_s) * 1e6)
            result = {}
            for where, uuid in (("gpu", args.uuid), ("mig", args.mig_uuid)):
                if uuid:
                    try:
                        result[where] = _utilisation(pynvml, pynvml.nvmlDeviceGetHandleByUUID(uuid), since_us)
                    except pynvml.NVMLError as err:
                        result[where] = {"error": f"nvmlDeviceGetHandleByUUID({uuid}): {_nvml_error(err)}"}
    finally:
        pynvml.nvmlShutdown()
    print(json.dumps(result, indent=1))
    return 0


# ---------------------------------------------------------------------------------------------------------------
# The unit's sandbox


HOME_PATHS = ("/home", "/root", "/run/user")  # what ProtectHome= hides
TMP_PATHS = ("/tmp", "/var/tmp")  # what PrivateTmp= replaces


SERVICE_MODE = "{% if gpu_proc_collector_mode == 'service' %}"  # the template's one branch on the mode
RESTART_KEYS = ("Restart", "RestartSec", "RestartPreventExitStatus", "RestartForceExitStatus", "RestartSteps",
                "RestartMaxDelaySec", "RestartMode")


def unit_properties(template: str) -> tuple[list[str], list[str]]:
    """The [Service] settings of the unit template's timer mode that are plain Key=value (no Jinja), in order, and
    the lines skipped (templated ones, the long-running mode's, and ExecStart*: systemd-run supplies the command).
    Whatever the template says, the run gets Restart=no: a transient unit that restarts on failure would never let
    `systemd-run --wait` return, and the check would report a timeout instead of the collector's exit and log."""
    props: list[str] = []
    skipped: list[str] = []
    section = ""
    pending = ""
    branches: list[bool] = []  # per open {% if %}: whether its current branch is taken (the timer mode's)
    comment = False
    for raw in template.splitlines():
        line = pending + raw.strip()
        pending = ""
        if comment or line.startswith("{#"):
            comment = "#}" not in line
            continue
        if line.endswith("\\"):
            pending = line[:-1].rstrip() + " "
            continue
        if line.startswith("{%"):
            tag = line.strip("{%-+ }").split()[0] if line.strip("{%-+ ") else ""
            if tag == "if":
                branches.append(line.replace(" ", "") != SERVICE_MODE.replace(" ", ""))
            elif tag in ("else", "elif") and branches:
                branches[-1] = not branches[-1] if tag == "else" else branches[-1]
            elif tag == "endif" and branches:
                branches.pop()
            if section == "Service":
                skipped.append(line)
            continue
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        if section != "Service":
            continue
        key = line.split("=", 1)[0].strip()
        if not all(branches) or "{{" in line or "=" not in line or key.startswith("ExecStart") \
                or key in RESTART_KEYS:
            skipped.append(line)
            continue
        props.append(line)
    return [*props, "Restart=no"], skipped


def _under(path: str, roots: Iterable[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


def sandbox_command(props: Sequence[str], *, python: str, state: str, textfile: str, unit: str,
                    needed_paths: Sequence[str], env: Optional[dict[str, str]] = None) -> tuple[list[str], list[str]]:
    """systemd-run's command line for one collector run under the unit's settings, and notes on what had to be
    added so the checkout and its Python are visible in there (a deployed unit runs from /opt instead)."""
    props = list(props)
    notes: list[str] = []
    binds: list[str] = []
    for path in sorted(set(needed_paths)):
        if _under(path, HOME_PATHS + TMP_PATHS) and not any(_under(path, [b]) for b in binds):
            binds.append(path)
    for i, prop in enumerate(props):
        key, _, value = prop.partition("=")
        if key == "ProtectHome" and value in ("yes", "true", "on", "1") and any(_under(b, HOME_PATHS) for b in binds):
            props[i] = "ProtectHome=tmpfs"
            notes.append(f"{prop} became ProtectHome=tmpfs so the bound paths below can be seen")
    for path in binds:
        props.append(f"BindReadOnlyPaths={path}")
        notes.append(f"BindReadOnlyPaths={path} (the checkout, its Python or the stand-in lies where the unit hides)")
    cmd = [systemd_tool("systemd-run"), "--wait", "--pipe", "--quiet", "--collect", f"--unit={unit}"]
    cmd += [f"--setenv={k}={v}" for k, v in {"PYTHONPATH": str(REPO), **(env or {})}.items()]
    for prop in [*props, f"ReadWritePaths={state} {textfile}", "TimeoutStartSec=90"]:
        cmd += ["-p", prop]
    cmd += ["--", python, "-m", "collector", "--textfile-dir", textfile, "--state-dir", state, "--log-level", "debug"]
    return cmd, notes


def systemd_is_pid1() -> bool:
    return os.path.isdir("/run/systemd/system")  # sd_booted()'s test


# Tests run the sandbox step without systemd: DEVICE_CHECK_SYSTEMD names a directory holding stand-ins for
# systemd-run and systemctl, which the step then uses whatever PID 1 is (tests/test_device_check.py).
SYSTEMD_STAND_IN = "DEVICE_CHECK_SYSTEMD"


def systemd_tool(name: str) -> str:
    stand_in = os.environ.get(SYSTEMD_STAND_IN)
    return os.path.join(stand_in, name) if stand_in else name


def stop_unit(unit: str, env: dict[str, str]) -> list[str]:
    """Stops the transient unit and clears its failed state, whatever happened to it (a timed-out systemd-run
    leaves it running): what systemctl answered, for the log. A unit already gone answers 'not loaded'."""
    said = []
    for verb in ("stop", "reset-failed"):
        res = _run([systemd_tool("systemctl"), verb, unit], env, 60)
        said.append(f"systemctl {verb} {unit}: exit {res.returncode} {res.stderr.strip()}".rstrip())
    return said


# ---------------------------------------------------------------------------------------------------------------
# The orchestrator


@dataclass
class Check:
    name: str
    ok: Optional[bool]  # None: skipped
    detail: str


@dataclass
class Target:
    index: int
    uuid: str  # the physical GPU
    name: str
    label: str  # the collector's gpu label: "0", or "0_1_0" on a MIG instance
    mig_uuid: str = ""  # the MIG instance the workers run on

    @property
    def mig(self) -> bool:
        return bool(self.mig_uuid)

    @property
    def cuda_visible(self) -> str:
        return self.mig_uuid or self.uuid


@dataclass
class WorkerSpec:
    name: str
    duty: float
    mib: int


WORKERS = (WorkerSpec("idle", 0.0, 256), WorkerSpec("busy100", 1.0, 512), WorkerSpec("busy30", 0.3, 768))


@dataclass
class Phase:
    name: str
    busy: dict[str, tuple[float, int]]  # worker -> (duty, blocks; 0 = one block per SM)
    asserted: bool
    about: str
    step: bool = False  # the busy workers pause halfway through the interval between the two collector runs


PHASES = (
    Phase("full", {"busy100": (1.0, 0)}, True, "busy100 runs ~100 %, busy30 paused, idle holds memory"),
    Phase("duty30", {"busy30": (0.3, 0)}, True, "busy30 runs 30 ms of every 100 ms, the others paused"),
    Phase("one-block", {"busy100": (1.0, 1)}, False,
          "busy100 runs ~100 % with ONE block of one warp: is per-process smUtil time or SM coverage?"),
    Phase("both", {"busy100": (1.0, 0), "busy30": (0.3, 0)}, False,
          "busy100 and busy30 at once: the GPU time-slices between their contexts"),
    Phase("step", {"busy100": (1.0, 0)}, False,
          "busy100 runs ~100 % for the first half of the interval, then pauses: ~100 says the one entry per process "
          "is the newest sample, ~50 an average since lastSeenTimeStamp, 0 that nothing from before the pause came "
          "back", step=True),
)
GPM_SERIES = {"gpu_device_sm_utilization_percent": "sm_util", "gpu_device_sm_occupancy_percent": "sm_occupancy",
              "gpu_device_tensor_active_percent": "tensor_active",
              "gpu_device_dram_bandwidth_utilization_percent": "dram_bw_util"}
CORRUPTIONS = ("drop-pid", "util-off", "idle-active", "gpm-off", "gpm-partial")


class Worker:
    def __init__(self, spec: WorkerSpec, cmd: list[str], env: dict[str, str], log: Path) -> None:
        self.spec = spec
        self.log = log.open("wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, env=env)
        self.lines: queue.Queue[Optional[str]] = queue.Queue()
        self.ready: dict[str, Any] = {}
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.put(raw.decode(errors="replace").strip())
        self.lines.put(None)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def expect(self, key: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise RuntimeError(f"worker {self.spec.name} said nothing within {timeout:.0f} s") from None
            if line is None:
                raise RuntimeError(f"worker {self.spec.name} exited ({self.proc.wait()}); see worker-{self.spec.name}"
                                   ".log")
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if "error" in record:
                    raise RuntimeError(f"worker {self.spec.name}: {record['error']}")
                if key in record:
                    return dict(record)

    def send(self, command: str, timeout: float = 15.0) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        self.proc.stdin.flush()
        self.expect("ok", timeout)

    def stop(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            assert self.proc.stdin is not None
            self.proc.stdin.write(b"stop\n")
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.log.close()


@dataclass
class Collected:
    """One collector run's answer, by PID."""

    rc: int
    up: Optional[float]
    info: dict[int, dict[str, str]] = field(default_factory=dict)
    util: dict[int, float] = field(default_factory=dict)
    memory: dict[int, float] = field(default_factory=dict)
    dropped: float = 0.0
    error: str = ""
    activity: dict[str, dict[str, float]] = field(default_factory=dict)  # gpu label -> GPM series -> value


def parse_exposition(text: str, rc: int) -> Collected:
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415

    result = Collected(rc=rc, up=None)
    try:
        families = list(text_string_to_metric_families(text))
    except Exception as err:
        result.error = f"unparsable output: {err}"
        return result
    for family in families:
        for s in family.samples:
            pid = int(s.labels["pid"]) if s.labels.get("pid", "").isdigit() else None
            if s.name == "gpu_proc_collector_up":
                result.up = s.value
            elif s.name in GPM_SERIES:
                result.activity.setdefault(s.labels.get("gpu", ""), {})[GPM_SERIES[s.name]] = s.value
            elif s.name == "gpu_proc_collector_processes_dropped":
                result.dropped += s.value
            elif pid is None:
                continue
            elif s.name == "gpu_process_info":
                result.info[pid] = dict(s.labels)
            elif s.name == "gpu_process_utilization":
                result.util[pid] = s.value
            elif s.name == "gpu_process_memory_bytes":
                result.memory[pid] = s.value
    return result


def _run(cmd: Sequence[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(list(cmd), env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as err:
        out = err.stdout.decode(errors="replace") if isinstance(err.stdout, bytes) else (err.stdout or "")
        return subprocess.CompletedProcess(list(cmd), 124, out, f"timed out after {timeout:.0f} s\n")
    except OSError as err:
        return subprocess.CompletedProcess(list(cmd), 127, "", f"{err}\n")


def _stats(values: Sequence[float]) -> str:
    if not values:
        return "-"
    return f"{min(values):g} / {statistics.median(values):g} / {max(values):g}"


class StandIn:
    """The stand-in GPU: a scenario for tests/fake_nvml naming the workers' PIDs, and a fake nvidia-smi."""

    GPU_UUID = "GPU-5ca1ab1e-0000-4000-8000-0000000000c8"
    MIG_UUID = "MIG-5ca1ab1e-0000-4000-8000-0000000001c8"

    def __init__(self, work: Path, mig: bool, corrupt: str) -> None:
        self.work = work
        self.mig = mig
        self.corrupt = corrupt
        self.scenario = work / "scenario.json"
        self.bin = work / "bin"
        self.bin.mkdir(parents=True, exist_ok=True)
        smi = self.bin / "nvidia-smi"
        smi.write_text(f"""#!/bin/sh
# device_check.py's stand-in nvidia-smi: prints what the stand-in scenario lists, in nvidia-smi's csv format.
case "$*" in
  *--query-compute-apps*) cat "{work}/apps.csv" ;;
  *-L*) echo "GPU 0: NVIDIA H200 (UUID: {self.GPU_UUID})" ;;
  *--query-gpu*) cat "{work}/gpu.csv" ;;
  *) echo "stand-in nvidia-smi (device_check.py --stand-in)" ;;
esac
""")
        smi.chmod(0o755)
        (work / "gpu.csv").write_text(f"0, {self.GPU_UUID}, NVIDIA H200, 580.95.05, {'Enabled' if mig else 'Disabled'}"
                                      ", 143771 MiB, 1024 MiB\n")

    def env(self) -> dict[str, str]:
        return {"LD_LIBRARY_PATH": str(FAKE_NVML), "FAKE_NVML_SCENARIO": str(self.scenario),
                "PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}"}

    def write(self, workers: Sequence[Worker], busy: dict[str, tuple[float, int]], interval: float,
              until: Optional[float] = None) -> None:
        """The scenario for workers running as busy says. With until (a time), the busy ones stopped then: their
        samples lie in the half interval before it (a step phase), and nothing is newer."""
        procs = []
        apps = []
        for w in workers:
            used = w.spec.mib * MIB + STAND_IN_OVERHEAD
            apps.append(f"{w.pid}, {used // MIB}, {self.GPU_UUID}")
            if not (self.corrupt == "drop-pid" and w.spec.name == "busy100"):
                procs.append({"pid": w.pid, "used_memory": used})
        samples = []
        ages = [min(interval, PROBE_SINCE_S) * (k + 0.5) / 5 for k in range(5)]
        for w in workers:
            sm = round(busy[w.spec.name][0] * 100) if w.spec.name in busy else 0
            if self.corrupt == "util-off" and w.spec.name == "busy30" and sm:
                sm += 40
            if self.corrupt == "idle-active" and w.spec.name == "idle":
                sm = 5
            if until is None:
                samples += [{"pid": w.pid, "age_s": age, "sm": sm, "mem": sm // 3} for age in ages if sm]
            else:
                samples += [{"pid": w.pid, "timestamp_us": int((until - age / 2) * 1e6), "sm": sm, "mem": sm // 3}
                            for age in ages if sm]
        gib = 1 << 30
        # GPM (an H200 has it): the SMs are as busy as the busiest worker keeps them, one block per SM.
        sm_util = 0.0 if until is not None else max([duty * 100 for duty, _ in busy.values()], default=0.0)
        gpm: dict[str, Any] = {"sm_util": sm_util, "sm_occupancy": sm_util / 64, "any_tensor_util": 0.0,
                               "dram_bw_util": 0.0}
        if self.corrupt == "gpm-partial":  # one of the four metrics fails: its series is missing
            gpm["metric_errors"] = {"10": "NVML_ERROR_NOT_SUPPORTED"}
        device: dict[str, Any] = {"uuid": self.GPU_UUID, "name": "NVIDIA H200",
                                  "memory": {"total": 143771 * MIB, "used": 4 * gib}, "mig": {"mode": 0},
                                  "gpm": {"supported": True, **gpm}}
        if self.corrupt == "gpm-off":  # supported, yet every sample fails: the collector reports no GPM series
            device["errors"] = {"nvmlGpmSampleGet": "NVML_ERROR_UNKNOWN", "nvmlGpmMigSampleGet": "NVML_ERROR_UNKNOWN"}
        if self.mig:
            device["mig"] = {"mode": 1, "max_count": 7, "instances": [
                {"slot": 0, "gpu_instance_id": 1, "compute_instance_id": 0, "uuid": self.MIG_UUID,
                 "profile": "1g.18gb", "memory": {"total": 18 * gib, "used": 2 * gib},
                 "processes": {"compute": procs}, "gpm": gpm}]}
        else:
            device["processes"] = {"compute": procs}
            device["process_samples"] = samples
        self.scenario.write_text(json.dumps({"driver_version": "580.95.05", "devices": [device]}, indent=1))
        (self.work / "apps.csv").write_text("".join(line + "\n" for line in apps))


def close_enough(value: Optional[float], expected: float) -> bool:
    return value is not None and abs(value - expected) <= TOLERANCE


class DeviceCheck:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.python = args.python or sys.executable
        self.stand_in_mode = args.stand_in or args.stand_in_mig or os.environ.get("DEVICE_CHECK_STAND_IN") == "1"
        self.checks: list[Check] = []
        self.records: dict[str, Any] = {"mode": "stand-in" if self.stand_in_mode else "real GPU", "phases": {}}
        self.workers: dict[str, Worker] = {}
        self.target: Optional[Target] = None
        self.stand_in: Optional[StandIn] = None
        self.started = time.monotonic()
        self.work = Path(tempfile.mkdtemp(prefix="device-check.", dir=self.out))
        if args.settle is None:
            args.settle = 0.2 if self.stand_in_mode else 1.5

    # ---- helpers

    def check(self, name: str, ok: Optional[bool], detail: str) -> None:
        self.checks.append(Check(name, ok, detail))

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        if self.stand_in:
            env.update(self.stand_in.env())
        return env

    def save(self, name: str, text: str) -> Path:
        path = self.out / name
        path.write_text(text)
        return path

    def self_cmd(self, *args: str) -> list[str]:
        return [self.python, str(Path(__file__).resolve()), *args]

    # ---- steps

    def setup(self) -> None:
        if self.stand_in_mode:
            built = subprocess.CompletedProcess([], 0, "", "")
            if shutil.which("make") or not (FAKE_NVML / "libnvidia-ml.so.1").exists():
                built = _run(["make", "-s", "-C", str(FAKE_NVML)], dict(os.environ), 120)
            if built.returncode != 0:
                raise RuntimeError(f"cannot build the stand-in NVML library: {built.stderr.strip()}")
            self.stand_in = StandIn(self.work, self.args.stand_in_mig, self.args.corrupt or "")
            self.stand_in.write([], {}, self.args.interval)
        smi = ""
        for cmd in (["nvidia-smi", "-L"], ["nvidia-smi", "--query-gpu=index,uuid,name,driver_version,mig.mode.current,"
                                          "memory.total,memory.used", "--format=csv,noheader"], ["nvidia-smi"]):
            res = _run(cmd, self.env(), 30)
            smi += f"== {' '.join(cmd)} (exit {res.returncode})\n{res.stdout}{res.stderr}\n"
        self.save("nvidia-smi.txt", smi)
        found = _run(self.self_cmd("probe", "discover"), self.env(), 60)
        self.save("discover.json", found.stdout + found.stderr)
        if found.returncode != 0:
            raise RuntimeError(f"NVML discovery failed: {(found.stderr.strip().splitlines() or ['?'])[-1]}")
        discovered = json.loads(found.stdout)
        self.records["discover"] = discovered
        devices = discovered["devices"]
        if not devices or self.args.gpu >= len(devices):
            raise RuntimeError(f"NVML lists {len(devices)} GPU(s); no GPU {self.args.gpu}")
        dev = devices[self.args.gpu]
        if dev.get("compute_mode") in (2, 3):  # PROHIBITED, EXCLUSIVE_PROCESS: three workers cannot share it
            mode = {2: "PROHIBITED", 3: "EXCLUSIVE_PROCESS"}[dev["compute_mode"]]
            raise RuntimeError(f"GPU {dev['index']} is in compute mode {mode}: the workers need DEFAULT, and this "
                               "check changes no GPU setting")
        if isinstance(dev["mig_mode"], dict) and dev["mig_mode"]["current"] == 1:
            if not dev["migs"]:
                raise RuntimeError(f"GPU {dev['index']} is in MIG mode with no instances (this check creates none)")
            mig = dev["migs"][0]
            self.target = Target(dev["index"], dev["uuid"], dev["name"], f"{dev['index']}_{mig['gi']}_{mig['ci']}",
                                 mig["uuid"])
        else:
            self.target = Target(dev["index"], dev["uuid"], dev["name"], str(dev["index"]))

    def start_workers(self) -> None:
        assert self.target is not None
        env = self.env()
        env["CUDA_VISIBLE_DEVICES"] = self.target.cuda_visible
        pids = self.out / "worker-pids"
        for spec in WORKERS:
            cmd = self.self_cmd("worker", "--duty", str(spec.duty), "--mib", str(spec.mib),
                                "--max-seconds", str(int(self.args.budget) + 30))
            if spec.duty > 0 and spec.name != "busy100":
                cmd.append("--paused")
            if self.stand_in_mode:
                cmd.append("--stand-in")
            worker = Worker(spec, cmd, env, self.out / f"worker-{spec.name}.log")
            self.workers[spec.name] = worker
            with pids.open("a") as f:
                f.write(f"{worker.pid}\n")
        for worker in self.workers.values():
            worker.ready = worker.expect("ready", 90)
        self.records["workers"] = {n: {**w.ready, "spec_duty": w.spec.duty} for n, w in self.workers.items()}

    def collector(self, state: Path, name: str) -> Collected:
        res = _run([self.python, "-m", "collector", "--stdout", "--state-dir", str(state), "--log-level", "debug"],
                   self.env(), 60)
        self.save(f"{name}.prom", res.stdout)
        self.save(f"{name}.log", f"exit {res.returncode}\n{res.stderr}")
        collected = parse_exposition(res.stdout, res.returncode)
        if res.returncode != 0 and not collected.error:
            collected.error = (res.stderr.strip().splitlines() or [f"exit {res.returncode}"])[-1]
        return collected

    def smi_apps(self, name: str) -> tuple[Optional[list[tuple[int, str, str]]], str]:
        res = _run(["nvidia-smi", "--query-compute-apps=pid,used_memory,gpu_uuid", "--format=csv,noheader,nounits"],
                   self.env(), 30)
        self.save(f"{name}.nvidia-smi.csv", res.stdout + res.stderr)
        if res.returncode != 0:
            return None, f"nvidia-smi exit {res.returncode}: {res.stderr.strip()}"
        apps = []
        for line in res.stdout.splitlines():
            cells = [c.strip() for c in line.split(",")]
            if len(cells) >= 3 and cells[0].isdigit():
                apps.append((int(cells[0]), cells[1], cells[2]))
        return apps, ""

    def set_phase(self, phase: Phase) -> None:
        for name, worker in self.workers.items():
            if name in phase.busy:
                duty, blocks = phase.busy[name]
                worker.send(f"run {duty} {blocks}")
            elif worker.spec.duty > 0:
                worker.send("pause")
        if self.stand_in:
            self.stand_in.write(list(self.workers.values()), phase.busy, self.args.interval)

    def run_phase(self, phase: Phase) -> None:
        assert self.target is not None
        self.set_phase(phase)
        time.sleep(self.args.settle)
        state = self.out / "state" / phase.name
        state.mkdir(parents=True, exist_ok=True)
        prime = self.collector(state, f"{phase.name}.prime")
        primed_at = time.monotonic()
        if phase.step:
            time.sleep(max(self.args.interval / 2 - (time.monotonic() - primed_at), 0.0))
            for name in phase.busy:
                self.workers[name].send("pause")
            if self.stand_in:
                self.stand_in.write(list(self.workers.values()), phase.busy, self.args.interval, until=time.time())
        time.sleep(max(self.args.interval - (time.monotonic() - primed_at), 0.0))
        measured = self.collector(state, f"{phase.name}.measure")
        interval = time.monotonic() - primed_at
        probe_cmd = self.self_cmd("probe", "util", "--uuid", self.target.uuid, "--since-s", str(PROBE_SINCE_S))
        if self.target.mig:
            probe_cmd += ["--mig-uuid", self.target.mig_uuid]
        probe = _run(probe_cmd, self.env(), 60)
        self.save(f"{phase.name}.probe.json", probe.stdout + probe.stderr)
        apps, smi_error = self.smi_apps(phase.name)
        record = self.record_phase(phase, prime, measured, interval, probe)
        smi_mib = {pid: mem for pid, mem, _uuid in apps or []}
        for entry in record["collector"].values():
            entry["nvidia_smi_mib"] = smi_mib.get(entry["pid"])
        self.records["phases"][phase.name] = record
        if phase.asserted:
            self.assert_phase(phase, prime, measured, apps, smi_error)

    def record_phase(self, phase: Phase, prime: Collected, measured: Collected, interval: float,
                     probe: subprocess.CompletedProcess[str]) -> dict[str, Any]:
        record: dict[str, Any] = {"about": phase.about, "interval_s": round(interval, 2), "collector": {}}
        for name, w in self.workers.items():
            info = measured.info.get(w.pid, {})
            record["collector"][name] = {"pid": w.pid, "status": info.get("status"), "gpu": info.get("gpu"),
                                         "utilization": measured.util.get(w.pid),
                                         "memory_bytes": measured.memory.get(w.pid)}
        record["collector_rc"] = [prime.rc, measured.rc]
        try:
            answer = json.loads(probe.stdout)
        except ValueError:
            record["probe_error"] = (probe.stderr.strip().splitlines() or [f"exit {probe.returncode}"])[-1]
            return record
        record["probe"] = {}
        for where, util in answer.items():
            per_pid: dict[str, Any] = {}
            by_pid: dict[int, list[dict[str, int]]] = {}
            for s in util.get("samples", []):
                by_pid.setdefault(s["pid"], []).append(s)
            names = {w.pid: n for n, w in self.workers.items()}
            answered = util.get("answered_us", 0)
            for pid, entries in sorted(by_pid.items()):
                stamps = sorted(e["ts_us"] for e in entries)
                spacing = [(b - a) / 1000 for a, b in zip(stamps, stamps[1:])]
                per_pid[names.get(pid, str(pid))] = {
                    "pid": pid, "entries": len(entries), "spacing_ms": [round(x, 1) for x in spacing],
                    # every entry's age when the call answered: newest sample, or an older one?
                    "age_ms": [round((answered - e["ts_us"]) / 1000, 1) for e in entries],
                    "sm": [e["sm"] for e in entries],
                    "sm_mean": round(statistics.mean(e["sm"] for e in entries), 1)}
            newest = [max(e["ts_us"] for e in entries) for entries in by_pid.values()]
            record["probe"][where] = {"size_query": util.get("size_query"), "error": util.get("error"),
                                      "total_entries": len(util.get("samples", [])), "per_pid": per_pid,
                                      "compute_processes": util.get("compute_processes"),
                                      # how far apart the PIDs' newest entries of one read lie (one lastSeen per
                                      # GPU would hide a process whose entry is older than another's)
                                      "newest_spread_ms": round((max(newest) - min(newest)) / 1000, 1)
                                      if newest else None}
        return record

    def assert_phase(self, phase: Phase, prime: Collected, measured: Collected,
                     apps: Optional[list[tuple[int, str, str]]], smi_error: str) -> None:
        assert self.target is not None
        t = self.target
        p = f"[{phase.name}]"
        runs_ok = all(c.rc == 0 and c.up == 1 and not c.error for c in (prime, measured))
        self.check(f"collector-runs{p}", runs_ok,
                   f"exit {prime.rc}/{measured.rc}, gpu_proc_collector_up {prime.up}/{measured.up}"
                   + (f"; {prime.error or measured.error}" if prime.error or measured.error else ""))
        if phase.name == "full":
            for name, w in self.workers.items():
                gpu = measured.info.get(w.pid, {}).get("gpu")
                self.check(f"pid-listed[{name}]", gpu == t.label,
                           f"PID {w.pid} on gpu={gpu!r}, expected {t.label!r}"
                           + (f" ({measured.dropped:g} PIDs dropped as not under /proc)" if measured.dropped else ""))
                mem = measured.memory.get(w.pid)
                want = w.spec.mib * MIB
                self.check(f"memory[{name}]", mem is not None and mem >= want,
                           f"gpu_process_memory_bytes {mem if mem is None else int(mem)}, allocated {want}")
        for name, (duty, _blocks) in phase.busy.items():
            self.assert_busy(phase, name, duty, measured)
        if phase.name == "full":
            self.assert_status("idle", measured, active=False, phase=phase)
        self.assert_gpm(phase, measured)
        self.assert_smi(phase, measured, apps, smi_error)

    def gpm_supported(self) -> Optional[bool]:
        assert self.target is not None
        devices = self.records.get("discover", {}).get("devices", [])
        found = [d.get("gpm_supported") for d in devices if d.get("index") == self.target.index]
        return found[0] if found and isinstance(found[0], bool) else None

    def assert_gpm(self, phase: Phase, measured: Collected) -> None:
        """Hopper and newer: the four GPM series on the target's label (a MIG instance's GPU instance reports on
        its first compute instance's), each 0..100, the SM one above 0 while a worker runs one block per SM.
        Elsewhere: none at all, never a made-up 0."""
        assert self.target is not None
        name = f"gpm[{phase.name}]"
        got = measured.activity.get(self.target.label, {})
        if self.gpm_supported() is not True:
            self.check(name, False if got else None,
                       f"GPM not supported here (NVML: {self.gpm_supported()}); series {got or 'absent'}")
            return
        complete = set(got) == set(GPM_SERIES.values()) and all(0 <= v <= 100 for v in got.values())
        busy = any(duty > 0 for duty, _ in phase.busy.values())
        self.check(name, complete and (got.get("sm_util", 0) > 0 or not busy),
                   f"GPM on gpu={self.target.label!r}: {got or 'no series'}")

    def assert_busy(self, phase: Phase, name: str, duty: float, measured: Collected, prefix: str = "") -> None:
        assert self.target is not None
        pid = self.workers[name].pid
        util = measured.util.get(pid)
        want = duty * 100
        if self.target.mig and util is None:
            self.check(f"{prefix}util[{name}]", None, "MIG instance: the collector reports no per-process "
                                                      "utilisation there (NVML answers NOT_SUPPORTED); not asserted")
        else:
            self.check(f"{prefix}util[{name}]", close_enough(util, want),
                       f"gpu_process_utilization {util}, duty cycle {want:g} % (+/- {TOLERANCE:g})")
        self.assert_status(name, measured, active=True, phase=phase, prefix=prefix)

    def assert_status(self, name: str, measured: Collected, active: bool, phase: Phase, prefix: str = "") -> None:
        assert self.target is not None
        status = measured.info.get(self.workers[name].pid, {}).get("status")
        want = "active" if active else "idle"
        allowed = {want, "unknown"} if self.target.mig else {want}
        self.check(f"{prefix}status[{name}]", status in allowed,
                   f"status={status!r} in phase {phase.name}, expected {' or '.join(sorted(allowed))}")

    def assert_smi(self, phase: Phase, measured: Collected, apps: Optional[list[tuple[int, str, str]]],
                   smi_error: str) -> None:
        assert self.target is not None
        name = f"nvidia-smi[{phase.name}]"
        if apps is None:
            self.check(name, False, smi_error)
            return
        t = self.target
        smi = {pid for pid, _mem, uuid in apps if uuid in (t.uuid, t.mig_uuid)}
        ours = {pid for pid, info in measured.info.items()
                if info.get("gpu") == str(t.index) or info.get("gpu", "").startswith(f"{t.index}_")}
        elsewhere = {pid for pid in smi if not os.path.exists(f"/proc/{pid}")}  # other PID namespaces
        workers = {w.pid for w in self.workers.values()}
        ok = workers <= smi and (smi - elsewhere) == ours
        detail = f"nvidia-smi {sorted(smi)}, collector {sorted(ours)}"
        if elsewhere:
            detail += f", not under /proc here (ignored) {sorted(elsewhere)}"
        self.check(name, ok, detail)

    def run_sandbox(self) -> None:
        """The collector twice under the unit's own settings (a transient unit each), around the interval of a
        phase like `full`: the second run's answer is asserted as the plain runs' are (status, utilisation), since
        the unit runs without admin capabilities and NVML gives some answers "only if the caller has appropriate
        privileges"."""
        why_not = ("" if os.environ.get(SYSTEMD_STAND_IN) else
                   "systemd is not PID 1" if not systemd_is_pid1() else
                   "systemd-run is not installed" if not shutil.which("systemd-run") else
                   "not root (systemd-run needs the system manager)" if os.geteuid() != 0 else "")
        names = ["sandbox-up", "sandbox-pids", "sandbox-status[busy100]", "sandbox-status[idle]",
                 "sandbox-util[busy100]"]
        if why_not:
            for name in names:
                self.check(name, None, why_not)
            return
        phase = PHASES[0]  # busy100 at ~100 %, idle holding memory
        self.set_phase(phase)
        time.sleep(self.args.settle)
        props, skipped = unit_properties(UNIT_TEMPLATE.read_text())
        base = Path(tempfile.mkdtemp(prefix="gpu-proc-collector-devcheck.", dir="/var/lib"))
        state, textfile = base / "state", base / "textfile"
        state.mkdir()
        textfile.mkdir(mode=0o755)
        needed = [str(REPO), os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix)]
        env = {}
        if self.stand_in:
            env = {k: v for k, v in self.stand_in.env().items() if k != "PATH"}
            needed.append(str(self.work))
        python = os.path.abspath(self.python)
        notes: list[str] = []
        dropped: list[str] = []
        stopped: list[str] = []
        runs: list[tuple[subprocess.CompletedProcess[str], str]] = []
        try:
            for run_name in ("prime", "measure"):
                if runs:
                    time.sleep(self.args.interval)
                kwargs = {"python": python, "state": str(state), "textfile": str(textfile), "needed_paths": needed,
                          "env": env}
                res, cmd, notes, props = self._sandboxed(run_name, props, dropped, stopped, kwargs)
                prom = textfile / "gpu_processes.prom"
                text = prom.read_text() if prom.exists() else ""
                suffix = "" if run_name == "measure" else ".prime"
                self.save(f"sandbox{suffix}.cmd", " ".join(cmd) + "\n")
                self.save(f"sandbox{suffix}.log", f"exit {res.returncode}\n{res.stdout}{res.stderr}")
                self.save(f"sandbox{suffix}.prom", text)
                runs.append((res, text))
        finally:
            shutil.rmtree(base, ignore_errors=True)
            self.save("sandbox.systemctl.log", "".join(f"{line}\n" for line in stopped))
        answers = [parse_exposition(text, res.returncode) for res, text in runs]
        prime, measured = answers[0], answers[-1]
        exits = [res.returncode for res, _ in runs]
        self.records["sandbox"] = {"properties": props, "skipped_lines": skipped, "notes": notes,
                                   "dropped_by_systemd_run": dropped, "exit": exits,
                                   "collector": {n: {"pid": w.pid, "status": measured.info.get(w.pid, {}).get("status"),
                                                     "utilization": measured.util.get(w.pid)}
                                                 for n, w in self.workers.items()}}
        self.check("sandbox-up", len(runs) == 2 and all(rc == 0 for rc in exits) and prime.up == measured.up == 1,
                   f"exit {'/'.join(map(str, exits))}, gpu_proc_collector_up {prime.up}/{measured.up}"
                   + (f"; {dropped} rejected by this systemd-run" if dropped else ""))
        missing = [n for n, w in self.workers.items() if w.pid not in measured.info]
        self.check("sandbox-pids", not missing and bool(runs[-1][1]), "every workload PID listed"
                   if not missing and runs[-1][1] else f"missing {missing}")
        self.assert_busy(phase, "busy100", phase.busy["busy100"][0], measured, prefix="sandbox-")
        self.assert_status("idle", measured, active=False, phase=phase, prefix="sandbox-")

    def _sandboxed(self, run_name: str, props: list[str], dropped: list[str], stopped: list[str],
                   kwargs: dict[str, Any]) -> tuple[subprocess.CompletedProcess[str], list[str], list[str], list[str]]:
        """One collector run in a transient unit, stopped and reset whatever happened; a property this
        systemd-run rejects (an older systemd) is dropped and the run tried again. (result, command, notes, the
        properties that passed)."""
        for attempt in range(6):
            unit = f"gpu-proc-collector-devcheck-{os.getpid()}-{run_name}-{attempt}"
            cmd, notes = sandbox_command(props, unit=unit, **kwargs)
            try:
                res = _run(cmd, self.env(), 120)
            finally:
                stopped += stop_unit(unit, self.env())
            bad = _rejected_property(res.stderr)
            if res.returncode == 0 or not bad or bad not in [p.split("=", 1)[0] for p in props]:
                break
            dropped.append(bad)
            props = [p for p in props if p.split("=", 1)[0] != bad]
        return res, cmd, notes, props

    def stop_workers(self) -> None:
        for worker in self.workers.values():
            with contextlib.suppress(Exception):
                worker.stop()

    def run(self) -> int:
        try:
            self.setup()
            self.start_workers()
            _pause_for_a_test("workers")
            for phase in PHASES:
                if self.args.phases and phase.name not in self.args.phases:
                    continue
                if time.monotonic() - self.started > self.args.budget:
                    self.check(f"time[{phase.name}]", False, f"over the {self.args.budget:g} s budget; not run")
                    continue
                self.run_phase(phase)
            self.run_sandbox()
        except (RuntimeError, OSError, ValueError) as err:
            self.check("setup", False, str(err))
        except KeyboardInterrupt:
            self.check("setup", False, "interrupted")
        finally:
            self.stop_workers()
            shutil.rmtree(self.work, ignore_errors=True)
        return self.report()

    # ---- the report

    def report(self) -> int:
        elapsed = time.monotonic() - self.started
        failed = [c for c in self.checks if c.ok is False]
        passed = [c for c in self.checks if c.ok]
        skipped = [c for c in self.checks if c.ok is None]
        verdict = "FAIL" if failed or not passed else "PASS"
        self.records.update(elapsed_s=round(elapsed, 1), verdict=verdict,
                            checks=[{"name": c.name, "ok": c.ok, "detail": c.detail} for c in self.checks])
        if self.target:
            self.records["target"] = self.target.__dict__
        (self.out / "device-check.json").write_text(json.dumps(self.records, indent=1, default=str))
        self.save("device-check.md", self.markdown(verdict, elapsed))
        counts = f"{len(passed)} passed, {len(failed)} failed, {len(skipped)} skipped"
        names = f": {', '.join(c.name for c in failed)}" if failed else ""
        print(f"device-check {self.records['mode']}: {verdict} ({counts}){names} in {elapsed:.0f} s; "
              f"report {self.out / 'device-check.md'}")
        return 1 if verdict == "FAIL" else 0

    def markdown(self, verdict: str, elapsed: float) -> str:
        t = self.target
        lines = [f"# Device check: {verdict}", "",
                 f"- mode: {self.records['mode']}; {elapsed:.0f} s; collector interval {self.args.interval:g} s"]
        if t:
            lines.append(f"- target: {t.name}, GPU {t.index} {t.uuid}, collector label gpu={t.label!r}"
                         + (f", MIG instance {t.mig_uuid}" if t.mig else ""))
        disc = self.records.get("discover", {})
        if disc:
            lines.append(f"- driver {disc.get('driver_version')}, CUDA driver API {disc.get('cuda_driver_version')}")
            for dev in disc.get("devices", []):
                lines.append(f"- GPU {dev['index']}: MIG mode {dev['mig_mode']}, GPM supported: {dev['gpm_supported']}"
                             f", compute mode {dev.get('compute_mode')}")
        for name, w in self.records.get("workers", {}).items():
            lines.append(f"- worker {name}: PID {w['pid']}, {w['mib']} MiB, duty {w['spec_duty']:g}, device "
                         f"{w['device']} ({w['sms']} SMs)")
        if self.stand_in_mode:
            lines.append("- stand-in mode: the workers touch no GPU (libcuda.so.1 and the PTX kernel are not "
                         "exercised); NVML is tests/fake_nvml with a scenario listing the workers, nvidia-smi a script "
                         "printing the same list; the recorded NVML facts below are the stand-in's, not a driver's; "
                         "the sandbox run is the unit's sandbox without its device policy mattering")
        lines += ["", "## Checks", "", "| check | result | detail |", "|---|---|---|"]
        for c in self.checks:
            result = "SKIP" if c.ok is None else "PASS" if c.ok else "FAIL"
            lines.append(f"| {c.name} | {result} | {c.detail.replace('|', '/')} |")
        lines += ["", "## Recorded, not asserted", ""]
        for name, rec in self.records["phases"].items():
            lines += self._phase_markdown(name, rec)
        sandbox = self.records.get("sandbox")
        if sandbox:
            lines += ["### Sandbox", "", f"- systemd-run exits {sandbox['exit']} (prime, measure); properties from the "
                      "unit template (its timer mode, Restart=no): "
                      + ", ".join(f"`{p}`" for p in sandbox["properties"]),
                      "- template lines not passed: " + ", ".join(f"`{p}`" for p in sandbox["skipped_lines"])]
            lines += [f"- {note}" for note in sandbox["notes"]]
            if sandbox["dropped_by_systemd_run"]:
                lines.append(f"- rejected by this systemd-run, dropped: {sandbox['dropped_by_systemd_run']}")
            lines.append("")
        lines += ["Raw outputs: nvidia-smi.txt, discover.json, <phase>.{prime,measure}.{prom,log}, <phase>.probe.json, "
                  "<phase>.nvidia-smi.csv, worker-*.log, sandbox.*, device-check.json.", ""]
        return "\n".join(lines)

    def _phase_markdown(self, name: str, rec: dict[str, Any]) -> list[str]:
        lines = [f"### Phase {name}: {rec['about']}", "", f"Collector interval {rec['interval_s']} s; its answer:",
                 "", "| worker | status | gpu | utilization | memory MiB | nvidia-smi MiB |",
                 "|---|---|---|---|---|---|"]
        for worker, c in rec["collector"].items():
            mem = "-" if c["memory_bytes"] is None else f"{c['memory_bytes'] / MIB:.0f}"
            lines.append(f"| {worker} (PID {c['pid']}) | {c['status']} | {c['gpu']} | {c['utilization']} | {mem} | "
                         f"{c.get('nvidia_smi_mib')} |")
        lines.append("")
        if "probe_error" in rec:
            lines += [f"NVML probe failed: {rec['probe_error']}", ""]
        for where, probe in rec.get("probe", {}).items():
            procs = probe["compute_processes"]
            listed = ", ".join(f"{p['pid']} ({'N/A' if p['used_memory'] is None else p['used_memory'] // MIB} MiB)"
                               for p in procs) if isinstance(procs, list) else procs
            lines += [f"nvmlDeviceGetComputeRunningProcesses on the {'MIG instance' if where == 'mig' else 'GPU'}: "
                      f"{listed or 'none'}", ""]
            lines += [f"nvmlDeviceGetProcessUtilization on the {'MIG instance' if where == 'mig' else 'GPU'}, "
                      f"lastSeenTimeStamp = {PROBE_SINCE_S:g} s ago: size query (NULL buffer) answered "
                      f"{probe['size_query']}; {probe['total_entries']} entries"
                      + (f"; error {probe['error']}" if probe["error"] else ""), ""]
            if probe["per_pid"]:
                lines += ["| PID | entries | spacing ms min/median/max | age ms min/median/max | "
                          "smUtil min/median/max | mean |", "|---|---|---|---|---|---|"]
                for who, p in probe["per_pid"].items():
                    lines.append(f"| {who} ({p['pid']}) | {p['entries']} | {_stats(p['spacing_ms'])} | "
                                 f"{_stats(p['age_ms'])} | {_stats(p['sm'])} | {p['sm_mean']} |")
                lines += ["", f"The PIDs' newest entries lie {probe['newest_spread_ms']} ms apart.", ""]
        return lines


def _rejected_property(stderr: str) -> str:
    """The property systemd-run refused (an older systemd), if that is why it failed."""
    for marker in ("Unknown assignment: ", "Cannot set property ", "Unknown property "):
        if marker in stderr:
            return stderr.split(marker, 1)[1].split(maxsplit=1)[0].split("=", 1)[0].rstrip(",.:")
    return ""


# ---------------------------------------------------------------------------------------------------------------


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="device_check.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="the whole check")
    run.add_argument("--out", default=os.environ.get("OUT", "/tmp/device-check"))
    run.add_argument("--stand-in", action="store_true", help="no GPU: stand-in NVML library and nvidia-smi")
    run.add_argument("--stand-in-mig", action="store_true", help="--stand-in, with the GPU in MIG mode")
    run.add_argument("--interval", type=float, default=10.0, help="seconds between the two collector runs")
    run.add_argument("--settle", type=float, default=None,
                     help="seconds after a phase starts before the first run (1.5; 0.2 in stand-in mode)")
    run.add_argument("--gpu", type=int, default=0, help="NVML index of the GPU to load")
    run.add_argument("--budget", type=float, default=240.0, help="seconds; phases after it are not started")
    run.add_argument("--python", default="", help="the Python that runs the collector (default: this one)")
    run.add_argument("--phases", type=lambda s: s.split(","), default=None, help=argparse.SUPPRESS)
    run.add_argument("--corrupt", choices=CORRUPTIONS, default=None, help=argparse.SUPPRESS)  # tests: a wrong answer
    worker = sub.add_parser("worker", help="one GPU load (prints a JSON line when ready; stdin: run/pause/stop)")
    worker.add_argument("--duty", type=float, required=True, help="fraction of time the kernel runs (0: idle)")
    worker.add_argument("--mib", type=int, required=True, help="device memory to allocate and hold")
    worker.add_argument("--blocks", type=int, default=0, help="blocks per launch (0: one per SM)")
    worker.add_argument("--paused", action="store_true", help="start paused (until 'run' on stdin)")
    worker.add_argument("--stand-in", action="store_true", help="touch no GPU")
    worker.add_argument("--max-seconds", type=float, default=300.0, help="exit after this long regardless")
    worker.add_argument("--libcuda", default=os.environ.get("DEVICE_CHECK_LIBCUDA", "libcuda.so.1"),
                        help=argparse.SUPPRESS)
    probe = sub.add_parser("probe", help="NVML's own answers, as JSON")
    probe.add_argument("what", choices=("discover", "util"))
    probe.add_argument("--uuid", default="")
    probe.add_argument("--mig-uuid", default="")
    probe.add_argument("--since-s", type=float, default=PROBE_SINCE_S)
    args = parser.parse_args(argv)
    if args.command == "worker":
        return worker_main(args)
    if args.command == "probe":
        return probe_main(args)
    signal.signal(signal.SIGTERM, _interrupted)  # timeout(1): stop the workers and write the report
    _pause_for_a_test("start")
    return DeviceCheck(args).run()


def _interrupted(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _pause_for_a_test(point: str) -> None:
    """A test's handle on a moment of the run (tests/test_device_check.py): with DEVICE_CHECK_PAUSE_AT=point, write
    this process's PID to $DEVICE_CHECK_PAUSE_FILE and wait there to be signalled, so that an interruption lands at
    a known point whatever the machine's speed."""
    if os.environ.get("DEVICE_CHECK_PAUSE_AT") != point:
        return
    Path(os.environ["DEVICE_CHECK_PAUSE_FILE"]).write_text(str(os.getpid()))
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
