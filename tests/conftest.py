from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
from hypothesis import settings as hypothesis_settings
from prometheus_client.parser import text_string_to_metric_families

from tests.support.simhost import HostTree, write_scenario

REPO = Path(__file__).resolve().parent.parent

# Property tests draw the same examples on every run: a suite that CI runs on every landing must not pass or fail
# by the luck of a random draw. A new finding comes from running them with HYPOTHESIS_PROFILE=explore (random
# draws, many more examples), then goes in as an @example.
hypothesis_settings.register_profile("deterministic", derandomize=True, database=None)
hypothesis_settings.register_profile("explore", max_examples=2000, derandomize=False)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))
FAKE_NVML = REPO / "tests" / "fake_nvml"


def require_tool(name: str) -> str:
    """The tool's path. A missing tool fails the test that needs it, with the reason: never a silent skip
    (scripts/test.sh installs every tool the tests use)."""
    path = shutil.which(name)
    if not path:
        pytest.fail(f"{name} is not installed (scripts/test.sh installs it)")
    return path


@contextmanager
def mounted_tmpfs(directory: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at directory (created) for the block, with mount options such as "size=24k" (a full disk)
    or "ro" (a read-only one: root ignores mode bits, so a mode-0555 directory proves nothing as root)."""
    require_root(f"mounting a tmpfs ({options})")
    directory.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(directory)], check=True)
    try:
        yield directory
    finally:
        subprocess.run(["umount", str(directory)], check=True)


def require_root(why: str) -> None:
    """Fails the test, with the reason, when not run as root (scripts/test.sh and CI run as root)."""
    if os.geteuid() != 0:
        pytest.fail(f"this test needs root: {why}")


@pytest.fixture(scope="session")
def fake_nvml() -> Path:
    subprocess.run(["make", "-s", "-C", str(FAKE_NVML)], check=True)
    return FAKE_NVML


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Parsed exposition: metric name -> [(labels, value)]."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def assert_unique_series(text: str) -> None:
    """No two samples of one name with one label set. promtool accepts such a file; node_exporter logs "collected
    before with the same name and label values" and serves only one of them, silently."""
    seen: set[tuple[str, frozenset[tuple[str, str]]]] = set()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in seen, f"two series {s.name}{dict(s.labels)}"
            seen.add(key)


def promtool_check(text: str) -> None:
    promtool = require_tool("promtool")
    result = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True, check=False)
    # Exit 3 is lint advice only (promtool's own convention); 1 is a parse error.
    assert result.returncode in (0, 3), result.stdout.decode() + result.stderr.decode()
    lint = (result.stdout + result.stderr).decode()
    assert "error" not in lint.lower(), lint


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str
    text: str  # the exposition the run produced (stdout or the file)

    @property
    def metrics(self) -> dict[str, list[tuple[dict[str, str], float]]]:
        return samples(self.text)

    def series(self, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
        return [(lab, v) for lab, v in self.metrics.get(name, []) if all(lab.get(k) == x for k, x in labels.items())]

    def value(self, name: str, **labels: str) -> float:
        found = self.series(name, **labels)
        assert len(found) == 1, f"{name}{labels}: {found}"
        return found[0][1]


@dataclass
class Host:
    """A simulated GPU host: a fake host tree, a scenario for the stand-in NVML, a state and a textfile dir."""

    base: Path
    lib: Path
    tree: HostTree
    textfile_dir: Path
    state_dir: Path

    @property
    def socket(self) -> Path:
        return self.tree.root / "var/lib/kubelet/pod-resources/kubelet.sock"

    @property
    def prom(self) -> Path:
        return self.textfile_dir / "gpu_processes.prom"

    def run(
        self,
        document: dict[str, Any],
        *args: str,
        lib: Optional[Path] = None,
        stdout: bool = False,
        check_file: bool = True,
        timeout: float = 60,
        env: Optional[dict[str, str]] = None,
        preexec: Optional[Callable[[], None]] = None,
    ) -> Result:
        scenario = write_scenario(self.base / "scenario.json", document)
        full_env = {
            **os.environ,
            "LD_LIBRARY_PATH": str(lib or self.lib),
            "FAKE_NVML_SCENARIO": str(scenario),
            **(env or {}),
        }
        output = ["--stdout"] if stdout else ["--textfile-dir", str(self.textfile_dir)]
        cmd = [sys.executable, "-m", "collector", *output, "--host-root", str(self.tree.root),
               "--state-dir", str(self.state_dir), *args]
        proc = subprocess.run(cmd, capture_output=True, env=full_env, cwd=REPO, timeout=timeout, check=False,
                              preexec_fn=preexec)
        text = proc.stdout.decode() if stdout else (self.prom.read_text() if self.prom.exists() else "")
        if check_file and text:
            promtool_check(text)
            assert_unique_series(text)
        return Result(proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"),
                      text)


@pytest.fixture
def host(tmp_path: Path, fake_nvml: Path) -> Iterator[Host]:
    textfile_dir = tmp_path / "textfile"
    textfile_dir.mkdir()
    # A short host root: the pod-resources socket under it must fit a unix socket path (108 bytes).
    root = Path(tempfile.mkdtemp(prefix="gpc-", dir="/tmp"))
    yield Host(base=tmp_path, lib=fake_nvml, tree=HostTree(root), textfile_dir=textfile_dir,
               state_dir=tmp_path / "state")
    shutil.rmtree(root, ignore_errors=True)
