"""The long-running mode (--interval): systemd's notify protocol, signals, configuration reload, and a hung
collection, with the real CLI in a subprocess against the stand-in NVML."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import REPO, Host, promtool_check, samples
from tests.simhost import GIB, Gpu, proc, scenario, write_scenario


class Notifications:
    """A stand-in for systemd's notify socket: the datagrams the service sends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.received: list[str] = []

    def wait_for(self, message: str, timeout: float = 60) -> None:
        """Reads datagrams until one holds `message` (a line such as READY=1)."""
        deadline = time.monotonic() + timeout
        while not any(message in m.splitlines() for m in self.received):
            left = deadline - time.monotonic()
            assert left > 0, f"no {message} in {self.received}"
            self.sock.settimeout(left)
            self.received.append(self.sock.recv(4096).decode())

    def close(self) -> None:
        self.sock.close()


@contextmanager
def service(host: Host, document: dict[str, object],
            *args: str) -> Iterator[tuple[subprocess.Popen[str], Notifications]]:
    scenario_path = write_scenario(host.base / "scenario.json", document)
    notifications = Notifications(Path(host.tree.root) / "notify.sock")
    env = {**os.environ, "LD_LIBRARY_PATH": str(host.lib), "FAKE_NVML_SCENARIO": str(scenario_path),
           "NOTIFY_SOCKET": str(notifications.path)}
    cmd = [sys.executable, "-m", "collector", "--textfile-dir", str(host.textfile_dir), "--host-root",
           str(host.tree.root), "--state-dir", str(host.state_dir), *args]
    process = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield process, notifications
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()
        notifications.close()


def wait_for_writes(host: Host, count: int, timeout: float = 60) -> None:
    """Waits until the file has been replaced `count` times (each atomic write is a new file: another inode or
    modification time; inode numbers alone can be reused)."""
    deadline = time.monotonic() + timeout

    def version() -> tuple[int, int]:
        st = host.prom.stat()
        return st.st_ino, st.st_mtime_ns

    seen = {version()}
    while len(seen) <= count:
        assert time.monotonic() < deadline, f"fewer than {count} writes"
        time.sleep(0.05)
        seen.add(version())


def metrics(host: Host) -> dict[str, list[tuple[dict[str, str], float]]]:
    text = host.prom.read_text()
    promtool_check(text)
    return samples(text)


def test_ready_after_the_first_write_watchdog_pings_and_a_clean_stop(host: Host) -> None:
    host.tree.add_process(901)
    document = scenario([Gpu(0, compute=[proc(901, GIB)])])
    with service(host, document, "--interval", "0.5", "--sample-interval", "0.1") as (process, notes):
        notes.wait_for("READY=1")
        assert host.prom.exists()  # READY only once the first file is there
        assert metrics(host)["gpu_proc_collector_up"] == [({}, 1.0)]
        watchdogs = sum("WATCHDOG=1" in m.splitlines() for m in notes.received)
        notes.wait_for("WATCHDOG=1")
        while sum("WATCHDOG=1" in m.splitlines() for m in notes.received) < watchdogs + 3:
            notes.received.append(notes.sock.recv(4096).decode())  # pings keep coming between writes
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 0, stderr
        notes.wait_for("STOPPING=1")
    assert metrics(host)["gpu_proc_collector_up"] == [({}, 1.0)]  # the last good file stays


def test_sighup_reloads_the_configuration_and_a_bad_one_is_refused(host: Host) -> None:
    host.tree.add_process(911)
    config = host.base / "config.json"
    config.write_text(json.dumps({"interval": 0.3}))
    document = scenario([Gpu(0, compute=[proc(911, GIB)])])
    with service(host, document, "--config", str(config)) as (process, notes):
        notes.wait_for("READY=1")
        assert "gpu_process_memory_bytes" in metrics(host)
        assert all("pod" in lab for lab, _ in metrics(host)["gpu_process_memory_bytes"])

        config.write_text(json.dumps({"interval": 0.3, "label_prefix": "k8s_"}))
        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        while not all("k8s_pod" in lab for lab, _ in metrics(host)["gpu_process_memory_bytes"]):
            assert time.monotonic() < deadline, "the new label prefix never showed"
            time.sleep(0.1)

        config.write_text(json.dumps({"interval": 0.3, "no_such_key": 1}))
        process.send_signal(signal.SIGHUP)
        wait_for_writes(host, 2)  # the reload is tried before the next collection
        assert all("k8s_pod" in lab for lab, _ in metrics(host)["gpu_process_memory_bytes"])  # still running
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0
    assert "SIGHUP: configuration not reloaded, keeping the running one" in stderr
    assert "unknown key 'no_such_key'" in stderr


def test_sigterm_abandons_a_hung_collection_and_keeps_the_last_good_file(host: Host) -> None:
    """An NVML call hangs in the driver (300 s here). SIGTERM must not wait for it: the service exits 0 (not the
    watchdog's 4 after the 50 s deadline, nor after the hung call) and the previous file stays as it was."""
    host.tree.add_process(921)
    good = host.run(scenario([Gpu(0, compute=[proc(921, GIB)])]))
    assert good.returncode == 0
    before = host.prom.read_bytes()
    hung = scenario([Gpu(0, compute=[proc(921, GIB)])], delays={"nvmlDeviceGetProcessUtilization": 300})
    with service(host, hung, "--interval", "60", "--deadline", "50") as (process, _):
        time.sleep(0.5)  # let it reach the hung call; if it has not yet, SIGTERM stops it before collecting
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=45)
    assert process.returncode == 0
    assert host.prom.read_bytes() == before


def test_a_second_service_or_run_is_refused_while_one_holds_the_lock(host: Host) -> None:
    host.tree.add_process(931)
    document = scenario([Gpu(0, compute=[proc(931, GIB)])])
    with service(host, document, "--interval", "5") as (process, notes):
        notes.wait_for("READY=1")
        second = host.run(document)
        assert second.returncode == 75
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
