"""collector.nvml.query's error policy, call by call, through the real pynvml and the stand-in NVML (a subprocess
started with LD_LIBRARY_PATH, as tests/test_fake_nvml.py does): a function missing from the loaded library is
logged once and answered with the default, NOT_SUPPORTED is answered with the default, a lost GPU (GPU_IS_LOST,
UNKNOWN) is raised as GpuLost whatever the default, an error the caller tolerates is defaulted, and any other error
(and every error of a required read but a lost GPU) reaches the caller as pynvml raised it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from tests.conftest import REPO
from tests.support.simhost import Gpu, scenario, write_scenario

SCRIPT = """
import json, logging, pynvml
from collector.nvml.query import GpuFailed, GpuLost, query

lines = []
class Keep(logging.Handler):
    def emit(self, record):
        lines.append([record.levelname, record.getMessage()])
logging.getLogger().addHandler(Keep())
logging.getLogger().setLevel(logging.DEBUG)

def outcome(*args, **kwargs):
    try:
        return ["value", repr(query(*args, **kwargs))]
    except GpuLost as err:
        return ["GpuLost", str(err), isinstance(err, GpuFailed), type(err.__cause__).__name__]
    except Exception as err:
        return ["raised", type(err).__name__]

pynvml.nvmlInit()
good, lost, broken = (pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(3))
got = {}
"""


def run(lib: Path, document: dict[str, Any], tmp_path: Path, body: str) -> dict[str, Any]:
    env = {**os.environ, "LD_LIBRARY_PATH": str(lib), "PYTHONPATH": str(REPO),
           "FAKE_NVML_SCENARIO": str(write_scenario(tmp_path / "scenario.json", document))}
    script = textwrap.dedent(SCRIPT) + textwrap.dedent(body) + "\nprint(json.dumps({'got': got, 'log': lines}))\n"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, env=env, cwd=REPO, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr.decode()
    answer: dict[str, Any] = json.loads(result.stdout.decode().splitlines()[-1])
    return answer


def three_gpus() -> dict[str, Any]:
    """GPU 0 answers, GPU 1 is lost (after its handle was taken), GPU 2 answers some calls with an error each."""
    lost = "NVML_ERROR_GPU_IS_LOST"
    return scenario([
        Gpu(0),
        Gpu(1, errors={"nvmlDeviceGetUUID": lost, "nvmlDeviceGetTotalEnergyConsumption": lost}),
        Gpu(2, errors={"nvmlDeviceGetName": "NVML_ERROR_UNKNOWN",
                       "nvmlDeviceGetMinorNumber": "NVML_ERROR_NOT_SUPPORTED",
                       "nvmlDeviceGetTotalEnergyConsumption": "NVML_ERROR_NO_PERMISSION",
                       "nvmlDeviceGetMigMode": "NVML_ERROR_FUNCTION_NOT_FOUND"}),
    ])


def test_a_function_missing_from_the_library_is_logged_once_and_answered_with_the_default(
        tmp_path: Path, fake_nvml: Path) -> None:
    """The r470 build lacks nvmlDeviceGetMemoryInfo_v2 (FUNCTION_NOT_FOUND from pynvml's symbol lookup) and the
    *_v3 process lists (pynvml's unversioned wrapper raises NVMLLibraryMismatchError); the default build's GPU 2
    answers FUNCTION_NOT_FOUND for nvmlDeviceGetMigMode. Each is defaulted every time and logged once."""
    body = """
    for n in range(3):
        got[f"v2 {n}"] = outcome(pynvml.nvmlDeviceGetMemoryInfo, good, pynvml.nvmlMemory_v2, default="v1 instead",
                                 name="nvmlDeviceGetMemoryInfo_v2")
        got[f"lists {n}"] = outcome(pynvml.nvmlDeviceGetComputeRunningProcesses, good, default=[])
    got["required"] = outcome(pynvml.nvmlDeviceGetMemoryInfo, good, pynvml.nvmlMemory_v2)
    """
    answer = run(fake_nvml / "r470", three_gpus(), tmp_path, body)
    for n in range(3):
        assert answer["got"][f"v2 {n}"] == ["value", "'v1 instead'"]
        assert answer["got"][f"lists {n}"] == ["value", "[]"]
    assert answer["got"]["required"] == ["raised", "NVMLError_FunctionNotFound"]  # a required read: the caller's
    assert answer["log"] == [
        ["INFO", "NVML function nvmlDeviceGetMemoryInfo_v2 is not available on this driver; going on without it"],
        ["INFO", "NVML function nvmlDeviceGetComputeRunningProcesses is not available on this driver; going on "
                 "without it"],
    ]

    body = """
    got["mig"] = [outcome(pynvml.nvmlDeviceGetMigMode, broken, default=None) for _ in range(2)]
    """
    answer = run(fake_nvml, three_gpus(), tmp_path, body)
    assert answer["got"]["mig"] == [["value", "None"]] * 2
    assert answer["log"] == [["INFO", "NVML function nvmlDeviceGetMigMode is not available on this driver; going on "
                                      "without it"]]


def test_not_supported_is_answered_with_the_default_and_a_required_read_raises_it(
        tmp_path: Path, fake_nvml: Path) -> None:
    body = """
    got["defaulted"] = outcome(pynvml.nvmlDeviceGetMinorNumber, broken, default=None)
    got["required"] = outcome(pynvml.nvmlDeviceGetMinorNumber, broken)
    got["answered"] = outcome(pynvml.nvmlDeviceGetMinorNumber, good, default=None)
    """
    answer = run(fake_nvml, three_gpus(), tmp_path, body)
    assert answer["got"]["defaulted"] == ["value", "None"]
    assert answer["got"]["required"] == ["raised", "NVMLError_NotSupported"]
    assert answer["got"]["answered"] == ["value", "0"]
    assert answer["log"] == []  # NOT_SUPPORTED is an answer, not news


def test_a_lost_gpu_is_raised_as_gpu_lost_whatever_the_default(tmp_path: Path, fake_nvml: Path) -> None:
    """GPU_IS_LOST and UNKNOWN, on a read with a default and on a required one: GpuLost (a GpuFailed, the type the
    reader records as a failed GPU), with NVML's own message."""
    body = """
    got["lost, defaulted"] = outcome(pynvml.nvmlDeviceGetTotalEnergyConsumption, lost, default=None,
                                     tolerate=(pynvml.NVMLError,))
    got["lost, required"] = outcome(pynvml.nvmlDeviceGetUUID, lost)
    got["unknown, defaulted"] = outcome(pynvml.nvmlDeviceGetName, broken, default="")
    got["unknown, required"] = outcome(pynvml.nvmlDeviceGetName, broken)
    """
    got = run(fake_nvml, three_gpus(), tmp_path, body)["got"]
    assert got["lost, defaulted"] == got["lost, required"] == ["GpuLost", "GPU is lost", True, "NVMLError_GpuIsLost"]
    assert got["unknown, defaulted"] == got["unknown, required"] == ["GpuLost", "Unknown Error", True,
                                                                     "NVMLError_Unknown"]


def test_an_error_the_caller_tolerates_is_defaulted_any_other_reaches_it(tmp_path: Path, fake_nvml: Path) -> None:
    body = """
    got["tolerated"] = outcome(pynvml.nvmlDeviceGetTotalEnergyConsumption, broken, default=None,
                               tolerate=(pynvml.NVMLError_NoPermission,))
    got["not tolerated"] = outcome(pynvml.nvmlDeviceGetTotalEnergyConsumption, broken, default=None)
    """
    answer = run(fake_nvml, three_gpus(), tmp_path, body)
    assert answer["got"]["tolerated"] == ["value", "None"]
    assert answer["got"]["not tolerated"] == ["raised", "NVMLError_NoPermission"]
    assert answer["log"] == [["DEBUG", "nvmlDeviceGetTotalEnergyConsumption: Insufficient Permissions"]]
