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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import REPO, Host, promtool_check, samples
from tests.support.simhost import GIB, Gpu, proc, scenario, set_fault, update_scenario, write_scenario


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

    def wait_for_count(self, message: str, count: int, timeout: float = 120) -> None:
        """Reads datagrams until `count` of them hold `message`."""
        deadline = time.monotonic() + timeout
        while count_pings(self, message) < count:
            left = deadline - time.monotonic()
            assert left > 0, f"fewer than {count} {message}"
            self.sock.settimeout(left)
            self.received.append(self.sock.recv(4096).decode())

    def close(self) -> None:
        self.sock.close()


def count_pings(notes: Notifications, message: str = "WATCHDOG=1") -> int:
    return sum(message in m.splitlines() for m in notes.received)


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


def wait_until_it_takes_sigterm(process: subprocess.Popen[str], timeout: float = 60) -> None:
    """Waits until the service has blocked SIGTERM for its signal thread (SigBlk in /proc/<pid>/status, proc(5)):
    sent any earlier, the signal meets its default action and kills the process, however briefly the start took."""
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, "the service exited before it took its signals"
        status = Path(f"/proc/{process.pid}/status").read_text()
        blocked = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigBlk:")), 16)
        if blocked & (1 << (signal.SIGTERM - 1)):
            return
        assert time.monotonic() < deadline, "the service never took its signals"
        time.sleep(0.05)


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


def wait_until(host: Host, condition: Callable[[dict[str, list[tuple[dict[str, str], float]]]], bool],
               timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition(metrics(host)):
        assert time.monotonic() < deadline, "the file never showed what was expected"
        time.sleep(0.05)


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
        notes.wait_for_count("WATCHDOG=1", count_pings(notes) + 3)  # pings keep coming between writes
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
        # Once its signal thread takes SIGTERM: in the hung call, or, not there yet, stopping before collecting.
        wait_until_it_takes_sigterm(process)
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


def test_a_broken_nvml_writes_up_0_and_the_next_collection_initialises_it_again(host: Host) -> None:
    """NVML breaks under the running service (here: every call answers UNINITIALIZED, as after nvmlShutdown).
    That collection writes up 0; once NVML works again, a later one initialises it afresh and reports."""
    host.tree.add_process(941)
    fault = host.base / "fault"
    document = scenario([Gpu(0, compute=[proc(941, GIB)])])
    os.environ["FAKE_NVML_FAULT_FILE"] = str(fault)
    try:
        with service(host, document, "--interval", "0.3") as (process, notes):
            notes.wait_for("READY=1")
            set_fault(fault, "NVML_ERROR_UNINITIALIZED")
            wait_until(host, lambda m: m["gpu_proc_collector_up"] == [({}, 0.0)])
            assert "gpu_process_info" not in metrics(host)
            set_fault(fault, None)
            host.tree.add_process(942)  # and the driver now lists one more process
            update_scenario(host.base / "scenario.json", scenario([Gpu(0, compute=[proc(941, GIB), proc(942, GIB)])]))
            wait_until(host, lambda m: m["gpu_proc_collector_up"] == [({}, 1.0)])
            assert {lab["pid"] for lab, _ in metrics(host)["gpu_process_info"]} == {"941", "942"}
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=60)
    finally:
        del os.environ["FAKE_NVML_FAULT_FILE"]
    assert process.returncode == 0
    assert "NVML init failed" in stderr or "collection failed" in stderr


def test_a_library_that_no_longer_matches_the_driver_ends_the_service_for_a_restart(host: Host) -> None:
    """After NVML was shut down (a failure), the driver was upgraded: the library this process mapped answers
    LIB_RM_VERSION_MISMATCH at init forever. The service exits 1 so that systemd (Restart=on-failure) starts a
    new process, which loads the new library."""
    host.tree.add_process(951)
    fault = host.base / "fault"
    os.environ["FAKE_NVML_FAULT_FILE"] = str(fault)
    try:
        with service(host, scenario([Gpu(0, compute=[proc(951, GIB)])]), "--interval", "0.3") as (process, notes):
            notes.wait_for("READY=1")
            set_fault(fault, "NVML_ERROR_LIB_RM_VERSION_MISMATCH")
            _, stderr = process.communicate(timeout=60)
    finally:
        del os.environ["FAKE_NVML_FAULT_FILE"]
    assert process.returncode == 1
    assert "exiting so that systemd starts a new process" in stderr
    assert metrics(host)["gpu_proc_collector_up"] == [({}, 0.0)]


def test_utilisation_is_integrated_over_the_whole_interval(host: Host) -> None:
    """PID 962 is busy at 50 % all along, PID 961 at 80 % for the first part of the interval only (the stand-in's
    recurring samples: a fresh entry every 50 ms, as a driver samples a busy GPU). The write reports 962 at about 50
    and 961 strictly between 0 and 80: the interval's share, where one query at write time would say 0.

    Driven by events, not time: the test switches 961 off only after the service has sampled it busy twice
    (each sample is a watchdog ping), waits for a sample after the switch, then asks for a write with SIGHUP (the
    interval itself is 10 minutes). However slow the machine, the order of events is the same."""
    host.tree.add_process(961)
    host.tree.add_process(962)
    both = [{"pid": 961, "every_s": 0.05, "sm": 80}, {"pid": 962, "every_s": 0.05, "sm": 50}]
    one = [{"pid": 962, "every_s": 0.05, "sm": 50}]

    def document(samples: list[dict[str, object]]) -> dict[str, object]:
        return scenario([Gpu(0, compute=[proc(961, GIB), proc(962, GIB)], samples=samples)])

    path = host.base / "scenario.json"
    with service(host, document(both), "--interval", "600", "--sample-interval", "0.2") as (process, notes):
        notes.wait_for("READY=1")
        pings = count_pings(notes)
        notes.wait_for_count("WATCHDOG=1", pings + 2)
        update_scenario(path, document(one))
        notes.wait_for_count("WATCHDOG=1", pings + 4)  # a tick reads the new scenario, the next one samples it
        process.send_signal(signal.SIGHUP)
        wait_for_writes(host, 1)
        util = {lab["pid"]: v for lab, v in metrics(host)["gpu_process_utilization"]}
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    # Never above 50; a little under when a query came within one driver sample period of the previous one and
    # found no newer entry, which counts that short span as idle (the write's last query, right after a tick).
    assert 40 < util["962"] <= 50.0001, util
    assert 0 < util["961"] < 80, util
