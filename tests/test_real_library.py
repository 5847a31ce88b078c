"""The collector and the stand-in NVML held to NVIDIA's real libnvidia-ml.so.1, of drivers 535 (Debian bookworm's
libnvidia-ml1) and 550 (trixie's), which scripts/setup.sh fetches: every NVML symbol the collector calls, or falls
back from, is exported by both; every symbol a stand-in build exports exists in the real library of the driver
generation it plays; and on the real library without a kernel driver the collector fails as docs/operations.md says
(docs/nvml-driver.md, "The real library")."""

from __future__ import annotations

import ast
import inspect
import re
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pynvml
import pytest

from collector import nvml
from tests.conftest import FAKE_NVML, REPO, Host, require_tool

CACHE = REPO / ".venv" / "cache" / "libnvidia-ml"
REAL = {"535": "bookworm", "550": "trixie"}  # driver generation -> the Debian release whose libnvidia-ml1 it is
# Each stand-in build and the real generation it plays (tests/fake_nvml/README.md). The default build plays a
# current driver, 550 being the newest real library the suite holds; r535 plays early R535; r470 plays R470-R495,
# of which no library is held: its exports are checked against the oldest held (535), which has all of R470's.
PLAYS = {"": "550", "r535": "535", "r470": "535"}


def real_library(generation: str) -> Path:
    found = sorted(CACHE.glob(f"{REAL[generation]}/usr/lib/*/nvidia/current/libnvidia-ml.so.1"))
    if not found:
        pytest.fail(f"the real libnvidia-ml.so.1 of driver {generation} is not under {CACHE} "
                    "(scripts/setup.sh's fetch_real_nvml fetches it)")
    return found[0]


def exports(library: Path) -> set[str]:
    """The functions a shared library exports (defined, dynamic), without symbol versions."""
    out = subprocess.run([require_tool("nm"), "-D", "--defined-only", str(library)], capture_output=True, text=True,
                         check=True).stdout
    return {fields[2].split("@")[0] for fields in (line.split() for line in out.splitlines())
            if len(fields) == 3 and fields[1] in "TtWi"}


def _wrapper_symbols(name: str, seen: set[str]) -> set[str]:
    """The C symbols pynvml's wrapper `name` resolves, following the wrappers it calls."""
    if name in seen:
        return set()
    seen.add(name)
    source = inspect.getsource(getattr(pynvml, name))
    symbols = set(re.findall(r'_nvmlGetFunctionPointer\(\s*"(\w+)"', source))
    for called in set(re.findall(r"\b(nvml[A-Z]\w*)\s*\(", source)) - {name}:
        if inspect.isfunction(getattr(pynvml, called, None)):
            symbols |= _wrapper_symbols(called, seen)
    return symbols


def nvml_modules() -> list[Path]:
    """The modules of the collector.nvml package: every file of it, so a module added later is read too."""
    modules = sorted(Path(nvml.__file__).parent.glob("*.py"))
    assert {m.name for m in modules} >= {"__init__.py", "query.py", "compat.py", "devices.py", "sampling.py",
                                        "gpm.py", "session.py", "inventory.py"}
    return modules


def collector_symbols() -> set[str]:
    """Every NVML symbol the collector.nvml package calls or falls back from: through the pynvml wrappers it calls,
    the *_v3 symbols it resolves itself, and the ones it probes for."""
    nodes = [n for module in nvml_modules() for n in ast.walk(ast.parse(module.read_text()))]
    wrappers = {n.attr for n in nodes if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
                and n.value.id == "pynvml" and inspect.isfunction(getattr(pynvml, n.attr, None))
                and n.attr.startswith("nvml")}
    literals = {n.value for n in nodes if isinstance(n, ast.Constant) and isinstance(n.value, str)
                and re.fullmatch(r"nvml[A-Z]\w*", n.value)}
    symbols = set().union(*(_wrapper_symbols(w, set()) for w in wrappers))
    symbols |= {current + "_v3" for _, current, _ in nvml.PROCESS_LISTS}
    # A literal names a symbol, or a wrapper (the *_v2 fallbacks), or a function reported as missing.
    for literal in literals:
        symbols |= _wrapper_symbols(literal, set()) if inspect.isfunction(getattr(pynvml, literal, None)) \
            else {literal}
    return symbols


def test_the_collectors_symbols_are_found_in_the_nvml_package() -> None:
    """The derivation itself: the calls every collection makes, the *_v3 lists and their R470 fallbacks."""
    found = collector_symbols()
    for symbol in ("nvmlInitWithFlags", "nvmlShutdown", "nvmlDeviceGetHandleByIndex_v2", "nvmlDeviceGetUUID",
                   "nvmlDeviceGetComputeRunningProcesses_v3", "nvmlDeviceGetComputeRunningProcesses_v2",
                   "nvmlDeviceGetMPSComputeRunningProcesses_v3", "nvmlDeviceGetProcessUtilization",
                   "nvmlDeviceGetMemoryInfo", "nvmlDeviceGetMemoryInfo_v2", "nvmlGpmMetricsGet",
                   "nvmlGpmMigSampleGet", "nvmlDeviceGetMigDeviceHandleByIndex", "nvmlDeviceGetTotalEnergyConsumption",
                   "nvmlDeviceGetConfComputeMemSizeInfo", "nvmlDeviceGetRunningProcessDetailList"):
        assert symbol in found, symbol


@pytest.mark.parametrize("generation", sorted(REAL))
def test_every_symbol_the_collector_uses_is_exported_by_the_real_library(generation: str) -> None:
    missing = collector_symbols() - exports(real_library(generation))
    assert not missing, f"driver {generation}'s libnvidia-ml.so.1 lacks {sorted(missing)}"


@pytest.mark.usefixtures("fake_nvml")
@pytest.mark.parametrize("build", sorted(PLAYS))
def test_every_symbol_the_stand_in_exports_exists_in_the_real_library_it_plays(build: str) -> None:
    stand_in = exports(FAKE_NVML / build / "libnvidia-ml.so.1")
    assert len(stand_in) > 25  # the build's exports were read
    missing = stand_in - exports(real_library(PLAYS[build]))
    assert not missing, f"the {build or 'default'} stand-in exports {sorted(missing)}, which driver " \
                        f"{PLAYS[build]} does not"


@pytest.mark.usefixtures("fake_nvml")
def test_the_stand_in_builds_export_what_their_generations_lack_no_more() -> None:
    """What the older builds leave out, the real libraries have: the variants differ where the drivers do."""
    default, r470 = exports(FAKE_NVML / "libnvidia-ml.so.1"), exports(FAKE_NVML / "r470" / "libnvidia-ml.so.1")
    assert r470 < default
    assert "nvmlDeviceGetComputeRunningProcesses_v3" in exports(real_library("535")) - r470


def no_kernel_driver() -> None:
    if Path("/proc/driver/nvidia").exists():
        pytest.fail("an NVIDIA kernel module is loaded here: this test plays a host without one")


def _run(generation: str, host: Host, *args: str) -> subprocess.CompletedProcess[str]:
    no_kernel_driver()
    env = {"LD_LIBRARY_PATH": str(real_library(generation).parent), "PATH": "/usr/bin:/bin"}
    cmd = [sys.executable, "-m", "collector", "--textfile-dir", str(host.textfile_dir), "--state-dir",
           str(host.state_dir), "--host-root", str(host.tree.root), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=60, check=False)


def _lines(text: str) -> Iterable[str]:
    return [line for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize("generation", sorted(REAL))
def test_the_collector_on_the_real_library_without_a_driver_fails_as_documented(host: Host, generation: str) -> None:
    """docs/operations.md, "Exit codes": exit 1, the file says gpu_proc_collector_up 0, one line on stderr (NVML's
    own message)."""
    result = _run(generation, host)
    assert result.returncode == 1, result.stderr
    assert _lines(result.stderr) == ["gpu-proc-collector: ERROR: collection failed: NVML init failed: "
                                     "Driver Not Loaded"], result.stderr
    text = host.prom.read_text()
    assert re.search(r"^gpu_proc_collector_up 0(\.0)?$", text, re.MULTILINE), text
    assert "gpu_process_info" not in text


@pytest.mark.parametrize("generation", sorted(REAL))
def test_check_on_the_real_library_without_a_driver_says_it_is_not_loaded(host: Host, generation: str) -> None:
    result = _run(generation, host, "--check")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "error: NVML init failed: Driver Not Loaded" in _lines(result.stdout), result.stdout
