"""Both ends of the nvidia-ml-py range pyproject.toml allows: the oldest version (its floor) and the newest one,
each installed offline from the wheel scripts/setup.sh downloaded, run the real collector against the stand-in NVML
and report processes, their utilisation, MIG instances and GPM activity (docs/nvml-driver.md, "nvidia-ml-py")."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, Host
from tests.support.simhost import GIB, Gpu, mig_instance, proc, scenario

WHEELS = REPO / ".venv" / "cache" / "nvidia-ml-py"


def floor() -> str:
    found = re.search(r'"nvidia-ml-py>=([0-9.]+)"', (REPO / "pyproject.toml").read_text())
    assert found, "pyproject.toml declares no nvidia-ml-py floor"
    return found.group(1)


def wheel(end: str) -> Path:
    found = sorted((WHEELS / end).glob("nvidia_ml_py-*.whl"))
    if not found:
        pytest.fail(f"no {end} nvidia-ml-py wheel under {WHEELS} (scripts/setup.sh's fetch_pynvml_wheels downloads it)")
    return found[-1]


def install(end: str, target: Path) -> str:
    """The wheel installed into target, offline; the version pynvml reports from there."""
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target", str(target),
                    str(wheel(end))], check=True, capture_output=True)
    probe = subprocess.run([sys.executable, "-c", "import pynvml, importlib.metadata as m; "
                            "print(pynvml.__file__); print(m.version('nvidia-ml-py'))"],
                           env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                           check=True)
    location, version = probe.stdout.split()
    assert Path(location).parent == target  # the run below imports this pynvml, not the virtualenv's
    return version


def test_the_oldest_wheel_is_the_declared_floor() -> None:
    assert wheel("oldest").name.startswith(f"nvidia_ml_py-{floor()}-")


@pytest.mark.parametrize("end", ["oldest", "newest"])
def test_the_collector_runs_on_each_end_of_the_allowed_range(host: Host, tmp_path: Path, end: str) -> None:
    version = install(end, tmp_path / "pynvml")
    if end == "oldest":
        assert version == floor()
    for pid in (901, 902, 903):
        host.tree.add_process(pid)
    gpm = {"supported": True, "sm_util": 63.5, "sm_occupancy": 20.0, "any_tensor_util": 10.0, "dram_bw_util": 30.0}
    whole = Gpu(0, compute=[proc(901), proc(902)], samples=[{"pid": 901, "age_s": 1, "sm": 40}], gpm=gpm)
    mig = Gpu(1, mig=[mig_instance(1, slot=0, gi=1, ci=0, profile="1g.10gb", total_gib=10, compute=[proc(903, GIB)])])
    result = host.run(scenario([whole, mig]), env={"PYTHONPATH": str(tmp_path / "pynvml")})
    assert result.returncode == 0, result.stderr
    assert result.value("gpu_proc_collector_up") == 1
    assert {lab["pid"] for lab, _ in result.series("gpu_process_info")} == {"901", "902", "903"}
    assert result.value("gpu_process_utilization", pid="901") == 40
    assert result.value("gpu_process_utilization", pid="902") == 0
    assert result.value("gpu_device_sm_utilization_percent", gpu="0") == 63.5
