"""What a timer run imports: nothing it does not use (docs/performance.md says what each import costs)."""

from __future__ import annotations

from tests.conftest import Host
from tests.support.simhost import Gpu, proc, scenario


def imported(stderr: str) -> set[str]:
    """Module names from -X importtime's lines ("import time: self | cumulative | name")."""
    return {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines() if line.startswith("import time:")}


def test_a_run_imports_neither_its_test_references_nor_grpc_without_a_socket(host: Host) -> None:
    """psutil and prometheus_client are the tests' references only (collector.procfs and collector.exposition do
    their work); grpc and the protobuf module are for kubelet's socket, which this host does not have; the
    records are NamedTuples and plain classes, so dataclasses (with inspect, ast and dis) is not imported; PyYAML
    is for CDI specs written as YAML, which this host does not have."""
    host.tree.add_process(5100)
    result = host.run(scenario([Gpu(0, compute=[proc(5100)])]), env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert result.returncode == 0, result.stderr
    assert result.value("gpu_process_info", pid="5100") == 1
    modules = imported(result.stderr)
    assert "collector.cli" in modules  # the lines were read
    assert "collector.check" not in modules  # --check's, imported only for it
    assert "collector.redact" not in modules  # for command lines, which are opt-in
    top = {name.split(".")[0] for name in modules}
    assert not top & {"psutil", "prometheus_client", "grpc", "google", "dataclasses", "yaml"}, sorted(top)
