"""Real Debian `prometheus` and `prometheus-node-exporter` processes on loopback ports, for the end-to-end tests
(tests/test_monitoring.py, tests/test_federation.py): free ports, starting processes that are stopped in every
path, promtool-checked configs, and the HTTP API."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

import pytest
import requests

from tests.conftest import require_tool

LOOPBACK = "127.0.0.1"
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    """Polls condition until it holds; fails the test with `what` past the (generous) deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.25)
    pytest.fail(f"timed out waiting for {what}")


def wait_equal(read: Callable[[], T], expected: T, what: str, timeout: float = 90) -> T:
    """Polls read() until it returns expected and returns it; fails the test with `what` and the last answer past
    the (generous) deadline. For what Prometheus builds in steps (a scrape, then each rule group's evaluation, then
    a federation scrape): an answer read once can be one step behind another read just before or after it."""
    deadline = time.monotonic() + timeout
    while True:
        found = read()
        if found == expected:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}: expected {expected!r}, last answer {found!r}")
        time.sleep(0.25)


class Processes:
    """The processes a test starts; each is registered as soon as it exists, and stop() ends them all."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{name}.log"
        with log.open("wb") as out:  # a file, not a pipe nobody reads: a chatty process never blocks on it
            proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=out)
        self.procs.append((proc, log))
        return proc

    def log(self, proc: subprocess.Popen[bytes]) -> str:
        return next(log.read_text(errors="replace")[-4000:] for p, log in self.procs if p is proc)

    def wait_http(self, url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"{proc.args} exited {proc.returncode}: {self.log(proc)}")
            try:
                if requests.get(url, timeout=1).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        pytest.fail(f"{url} did not come up: {self.log(proc)}")

    def stop(self) -> None:
        for proc, _ in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc, _ in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextmanager
def processes(logs: Path) -> Iterator[Processes]:
    procs = Processes(logs)
    try:
        yield procs
    finally:
        procs.stop()


def check_config(path: Path) -> None:
    """`promtool check config` (which checks the rule files it names too) passes on path."""
    promtool = require_tool("promtool")
    result = subprocess.run([promtool, "check", "config", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def start_node_exporter(procs: Processes, textfile_dir: Optional[Path], name: str = "node-exporter",
                        collectors: Sequence[str] = ("--collector.textfile",)) -> str:
    """node_exporter with only these collectors (its textfile collector), reading textfile_dir (None: no
    directory flag); returns its host:port."""
    binary = require_tool("prometheus-node-exporter")
    address = f"{LOOPBACK}:{free_port()}"
    directory = [] if textfile_dir is None else [f"--collector.textfile.directory={textfile_dir}"]
    proc = procs.start(name, [binary, "--collector.disable-defaults", *collectors, *directory,
                              f"--web.listen-address={address}"])
    procs.wait_http(f"http://{address}/metrics", proc)
    return address


@dataclass
class Prometheus:
    url: str

    def query(self, expr: str) -> list[dict[str, Any]]:
        response = requests.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = response.json()
        assert body["status"] == "success", (expr, body)
        return list(body["data"]["result"])

    def by(self, expr: str, label: str) -> dict[str, float]:
        return {r["metric"].get(label, ""): float(r["value"][1]) for r in self.query(expr)}

    def names(self) -> set[str]:
        """Every metric name this Prometheus holds."""
        body = requests.get(f"{self.url}/api/v1/label/__name__/values", timeout=10).json()
        assert body["status"] == "success", body
        return set(body["data"])

    def wait(self, condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
        wait_for(condition, what, timeout)


def start_prometheus(procs: Processes, work: Path, config: dict[str, Any], *flags: str,
                     name: str = "prometheus") -> Prometheus:
    """Prometheus with config (written to work/<name>.yml and checked by promtool first), its TSDB under work."""
    binary = require_tool("prometheus")
    path = work / f"{name}.yml"
    path.write_text(json.dumps(config, indent=1))  # JSON is YAML
    check_config(path)
    address = f"{LOOPBACK}:{free_port()}"
    proc = procs.start(name, [binary, f"--config.file={path}", f"--storage.tsdb.path={work / name}-tsdb",
                              f"--web.listen-address={address}", "--log.level=warn", *flags])
    procs.wait_http(f"http://{address}/-/ready", proc)
    return Prometheus(f"http://{address}")
