"""What a timer run and the service loop import: nothing they do not use (docs/dependencies.md says what each
import costs, and which only --check imports)."""

from __future__ import annotations

import signal

import pytest

from tests.conftest import Host
from tests.support.simhost import Gpu, proc, scenario
from tests.test_service import service, wait_for_writes, wait_until_it_takes_sigterm

# psutil, requests and its urllib3 are runtime dependencies for --check alone (collector/check_node_exporter.py);
# prometheus_client is the tests' reference (collector.exposition does its work); grpc and the protobuf module are
# for kubelet's socket, which this host does not have; the records are NamedTuples and plain classes, so
# dataclasses (with inspect, ast and dis) is not imported; PyYAML is for CDI specs written as YAML, which this host
# does not have.
NOT_IMPORTED = {"psutil", "requests", "urllib3", "idna", "charset_normalizer", "certifi", "prometheus_client",
                "grpc", "google", "dataclasses", "yaml"}
CHECK_ONLY = {"collector.check", "collector.check_node_exporter", "collector.nvml.inventory"}  # --check's own


def imported(stderr: str) -> set[str]:
    """Module names from -X importtime's lines ("import time: self | cumulative | name")."""
    return {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines() if line.startswith("import time:")}


def test_a_run_imports_neither_checks_dependencies_nor_test_references_nor_grpc_without_a_socket(host: Host) -> None:
    host.tree.add_process(5100)
    result = host.run(scenario([Gpu(0, compute=[proc(5100)])]), env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert result.returncode == 0, result.stderr
    assert result.value("gpu_process_info", pid="5100") == 1
    modules = imported(result.stderr)
    assert "collector.cli" in modules  # the lines were read
    assert not modules & CHECK_ONLY
    assert "collector.nvml.session" in modules
    assert "collector.redact" not in modules  # for command lines, which are opt-in
    top = {name.split(".")[0] for name in modules}
    assert not top & NOT_IMPORTED, sorted(top & NOT_IMPORTED)


def test_the_service_loop_imports_none_of_them_either(host: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    """Several collections and utilisation samples, a reload, then a clean stop: nothing imported on the way."""
    host.tree.add_process(5200)
    monkeypatch.setenv("PYTHONPROFILEIMPORTTIME", "1")
    with service(host, scenario([Gpu(0, compute=[proc(5200)])]), "--interval", "0.3",
                 "--sample-interval", "0.1") as (process, notes):
        notes.wait_for("READY=1")
        wait_until_it_takes_sigterm(process)
        wait_for_writes(host, 2)
        process.send_signal(signal.SIGHUP)
        wait_for_writes(host, 2)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert "SIGHUP: configuration reloaded" in stderr
    modules = imported(stderr)
    assert "collector.runner" in modules
    assert not modules & CHECK_ONLY
    top = {name.split(".")[0] for name in modules}
    assert not top & NOT_IMPORTED, sorted(top & NOT_IMPORTED)
