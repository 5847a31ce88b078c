"""The metrics through the real Debian node_exporter and Prometheus: the compatible queries, the dashboard's panels and
the recording rules answer what the scenario implies; vanished processes vanish; the alert rules pass promtool."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pytest

from tests.conftest import REPO, Host, require_tool
from tests.support.podsim import PodHost, pod_resources_server
from tests.support.promstack import Prometheus, processes, start_node_exporter, start_prometheus, wait_equal
from tests.support.simhost import GIB, H100_MEMORY, Gpu, gpu_uuid, mig_instance, mig_uuid, proc, scenario

RULES = REPO / "monitoring/prometheus/gpu-proc-collector.rules.yml"
DASHBOARD = REPO / "monitoring/grafana/gpu-proc-collector.json"


@dataclass
class Stack(Prometheus):
    node_exporter: str
    textfile_dir: Path


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    work = Path(tempfile.mkdtemp(prefix="gpc-mon-"))
    textfile_dir = work / "textfile"
    textfile_dir.mkdir()
    try:
        with processes(work / "logs") as procs:
            node_exporter = start_node_exporter(procs, textfile_dir)
            prometheus = start_prometheus(procs, work, {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(RULES)],
                "scrape_configs": [{"job_name": "node", "honor_labels": True,
                                    "static_configs": [{"targets": [node_exporter]}]}],
            })
            yield Stack(prometheus.url, f"http://{node_exporter}", textfile_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@dataclass(frozen=True)
class Workload:
    pid: int
    unit: str  # the compatible gpu label
    namespace: str
    pod: str
    used_gib: int
    sm: tuple[int, ...] = ()  # SM % samples in the interval; () = none (idle)
    allocated_to: Optional[str] = None  # device id kubelet allocated to the pod

    @property
    def mig(self) -> bool:
        return "_" in self.unit


# A node: GPU 0 a training pod (and a pod that sneaked onto it), GPU 1 time-sliced by two notebooks, GPU 2 a host
# process, GPU 3 idle, GPU 4 in MIG mode with three instances, one idle.
MIG_UNITS = {"4_1_0": (0, 40, "3g.40gb"), "4_5_0": (3, 10, "1g.10gb"), "4_13_0": (5, 10, "1g.10gb")}
WORKLOADS = [
    Workload(100, "0", "ml", "train-a", 60, (80, 60), gpu_uuid(0)),
    Workload(101, "0", "ml", "sneaky", 2, (10,), gpu_uuid(2)),
    Workload(110, "1", "ml", "nb-0", 8, (20,), f"{gpu_uuid(1)}::0"),
    Workload(111, "1", "ml", "nb-1", 70, (), f"{gpu_uuid(1)}::1"),
    Workload(120, "2", "", "", 1),
    Workload(130, "4_1_0", "vision", "detector", 36, (), mig_uuid(4, 0)),
    Workload(131, "4_5_0", "vision", "ocr", 2, (), mig_uuid(4, 3)),
]
UNITS = ["0", "1", "2", "3", *MIG_UNITS]
# Pods kubelet gave a GPU that run no process: (namespace, pod, device id). GPU 3 is reserved and idle.
RESERVED = [("research", "reserved", gpu_uuid(3))]


def unit_total_gib(unit: str) -> int:
    return MIG_UNITS[unit][1] if unit in MIG_UNITS else H100_MEMORY // GIB


def build(host: Host, workloads: list[Workload]) -> tuple[dict[str, Any], PodHost]:
    k8s = PodHost(host.tree)
    for w in workloads:
        if not w.pod:
            host.tree.add_process(w.pid, "nvidia-smi", cgroup="0::/user.slice/user-1000.slice/session-2.scope\n")
            continue
        pod = k8s.add_pod(w.namespace, w.pod)
        if w.allocated_to:
            resource = "nvidia.com/mig-1g.10gb" if w.mig else "nvidia.com/gpu"
            pod.containers[0].devices.append((resource, [w.allocated_to]))
        k8s.add_process(w.pid, pod)
    for namespace, name, device in RESERVED:
        k8s.add_pod(namespace, name).containers[0].devices.append(("nvidia.com/gpu", [device]))
    gpus = []
    for index in range(4):
        mine = [w for w in workloads if w.unit == str(index)]
        samples = [{"pid": w.pid, "age_s": 1 + n, "sm": sm} for w in mine for n, sm in enumerate(w.sm)]
        gpus.append(Gpu(index, compute=[proc(w.pid, w.used_gib * GIB) for w in mine], samples=samples,
                        utilization_shape="buffered"))  # a driver that keeps every sample: the expected means hold
    instances = []
    for unit, (slot, size, profile) in MIG_UNITS.items():
        gi, ci = (int(x) for x in unit.split("_")[1:])
        mine = [proc(w.pid, w.used_gib * GIB) for w in workloads if w.unit == unit]
        instances.append(mig_instance(4, slot=slot, gi=gi, ci=ci, profile=profile, total_gib=size, compute=mine))
    gpus.append(Gpu(4, mig=instances))
    return scenario(gpus), k8s


def allocated_unit(w: Workload) -> Optional[str]:
    if w.allocated_to is None:
        return None
    base = w.allocated_to.split("::")[0]
    units = {gpu_uuid(i): str(i) for i in range(4)}
    units.update({mig_uuid(4, slot): unit for unit, (slot, _, _) in MIG_UNITS.items()})
    return units.get(base)


def expected_unallocated(workloads: list[Workload]) -> set[str]:
    """A pod's process off its allocated unit; a host process on a unit allocated to some pod."""
    allocated = {allocated_unit(w) for w in workloads} - {None}
    return {str(w.pid) for w in workloads
            if (w.pod and allocated_unit(w) != w.unit) or (not w.pod and w.unit in allocated)}


def expected_in_use(workloads: list[Workload]) -> dict[str, float]:
    """Per pod with an allocation: 1 if its process runs on the allocated unit; the reserved pods run none."""
    found = {w.pod: 1.0 if allocated_unit(w) == w.unit else 0.0 for w in workloads if w.allocated_to}
    return {**found, **{pod: 0.0 for _, pod, _ in RESERVED}}


def expected_unused(workloads: list[Workload]) -> dict[str, float]:
    unused: dict[str, float] = {}
    pods = {w.pod: w.namespace for w in workloads} | {pod: ns for ns, pod, _ in RESERVED}
    for pod, used in expected_in_use(workloads).items():
        if not used:
            unused[pods[pod]] = unused.get(pods[pod], 0.0) + 1
    return unused


def expected_counts(workloads: list[Workload]) -> dict[str, float]:
    return {u: float(sum(1 for w in workloads if w.unit == u)) for u in UNITS}


@pytest.mark.slow
def test_seed_queries_dashboard_and_rules_through_node_exporter_and_prometheus(host: Host, stack: Stack) -> None:
    host.textfile_dir = stack.textfile_dir
    document, k8s = build(host, WORKLOADS)
    with pod_resources_server(host.socket, k8s.pods):
        result = host.run(document)
    assert result.returncode == 0, result.stderr
    stack.wait(lambda: bool(stack.query("gpu_total_processes")), "the first scrape")

    assert stack.by("sum by (gpu) (gpu_process_count)", "gpu") == expected_counts(WORKLOADS)

    measurable = [w for w in WORKLOADS if not w.mig]
    namespaces = {w.namespace for w in measurable}
    expected_util = {ns: sum(sum(w.sm) / len(w.sm) if w.sm else 0.0 for w in measurable if w.namespace == ns)
                     / sum(1 for w in measurable if w.namespace == ns) for ns in namespaces}
    assert stack.by("avg by (namespace) (gpu_process_utilization)", "namespace") == pytest.approx(expected_util)

    active = {w.pod: 1.0 for w in WORKLOADS if any(w.sm)}
    assert stack.by('count by (pod) (gpu_process_info{status="active"})', "pod") == active

    high = {str(w.pid): 100.0 * w.used_gib / unit_total_gib(w.unit) for w in WORKLOADS
            if 100.0 * w.used_gib / unit_total_gib(w.unit) > 80}
    assert stack.by("gpu_process_memory_utilization > 80", "pid") == pytest.approx(high)
    assert len(high) == 2  # the scenario is built so that the threshold separates something

    assert set(stack.by("gpu_process_unallocated == 1", "pid")) == expected_unallocated(WORKLOADS) == {"101", "120"}

    assert stack.query("node_textfile_scrape_error")[0]["value"][1] == "0"
    assert stack.query('node_textfile_mtime_seconds{file=~".*gpu_processes.prom"}')

    ml_bytes = float(sum(w.used_gib for w in WORKLOADS if w.namespace == "ml") * GIB)
    # A rule's result comes an evaluation after the scrape it reads: waited for until it is the value asserted.
    wait_equal(lambda: stack.by("namespace:gpu_process_memory_bytes:sum", "namespace").get("ml"), ml_bytes,
               "the recording rule's GPU memory of namespace ml")

    # Allocated but unused: every allocated pod, its use, per namespace, and the dashboard's lists.
    allocated = {w.pod: 1.0 for w in WORKLOADS if w.allocated_to} | {pod: 1.0 for _, pod, _ in RESERVED}
    assert stack.by("gpu_pod_allocated_devices", "pod") == allocated
    assert stack.by("gpu_allocation_in_use", "pod") == expected_in_use(WORKLOADS)
    assert expected_in_use(WORKLOADS)["sneaky"] == 0  # its process runs on GPU 0, its GPU 2 has none of its own
    assert stack.by("gpu_allocation_in_use", "gpu") == {"0": 1.0, "1": 1.0, "2": 0.0, "3": 0.0, "4_1_0": 1.0,
                                                        "4_5_0": 1.0}
    assert expected_unused(WORKLOADS) == {"ml": 1.0, "research": 1.0}
    wait_equal(lambda: stack.by("namespace:gpu_allocation_unused:count", "namespace"), expected_unused(WORKLOADS),
               "the allocation rule's unused GPUs per namespace")
    panels = dict(dashboard_queries())
    assert set(stack.by(panels["Allocated but unused GPUs"], "pod")) == {"sneaky", "reserved"}
    assert stack.by(panels["Pods with active GPU processes"], "pod") == active

    for title, expr in dashboard_queries():  # increase() needs two scrapes of the counters: wait for them
        stack.wait(lambda expr=expr: bool(stack.query(expr)), f"panel {title!r}: {expr} to return series")

    # A second run with two processes gone: their series vanish from Prometheus at the next scrape.
    fewer = [w for w in WORKLOADS if w.pid not in (101, 111)]
    document, k8s = build(host, fewer)
    for pid in (101, 111):
        host.tree.remove_process(pid)
    with pod_resources_server(host.socket, k8s.pods):
        result = host.run(document)
    assert result.returncode == 0, result.stderr
    stack.wait(lambda: float(stack.query("gpu_total_processes")[0]["value"][1]) == len(fewer), "the second scrape")
    for pid in ("101", "111"):
        for family in ("gpu_process_info", "gpu_process_utilization", "gpu_process_memory_bytes"):
            assert stack.query(f'{family}{{pid="{pid}"}}') == []
    assert stack.by("sum by (gpu) (gpu_process_count)", "gpu") == expected_counts(fewer)
    assert set(stack.by("gpu_process_unallocated == 1", "pid")) == expected_unallocated(fewer) == set()
    # sneaky and nb-1 are gone from kubelet's answer too: their allocations vanish; reserved's idle time grew
    stack.wait(lambda: "sneaky" not in stack.by("gpu_allocation_in_use", "pod"), "the allocation series to go")
    assert stack.by("gpu_allocation_in_use", "pod") == expected_in_use(fewer)
    assert expected_unused(fewer) == {"research": 1.0}
    wait_equal(lambda: stack.by("namespace:gpu_allocation_unused:count", "namespace"), expected_unused(fewer),
               "the allocation rule's next evaluation")
    assert set(stack.by(panels["Allocated but unused GPUs"], "pod")) == {"reserved"}
    assert stack.by("gpu_allocation_idle_seconds", "pod")["reserved"] > 0  # kept in the state across the runs


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", ()):  # a row has none
            expr = target["expr"]
            for variable, value in (("$node", ".*"), ("$namespace", ".*"), ("$__range", "1h"),
                                    ("$price_per_gpu_hour", "2.5"), ("$price_per_kwh", "0.15")):
                expr = expr.replace(variable, value)
            queries.append((panel["title"], expr))
    return queries


def test_dashboard_has_the_seed_panels_and_template_variables() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", ())]
    assert any("gpu_process_count" in e for e in exprs)
    assert any(e.startswith("avg by (namespace) (gpu_process_utilization") for e in exprs)
    assert any(e.startswith("gpu_process_memory_utilization") for e in exprs)
    assert any(e.startswith("count by (pod) (gpu_process_info{") and 'status="active"' in e for e in exprs)
    assert {p["type"] for p in dashboard["panels"]} >= {"timeseries", "heatmap", "table"}
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert {"node", "namespace"} <= set(variables)
    assert all(p["datasource"]["uid"] == "${datasource}" for p in dashboard["panels"] if p["type"] != "row")


def test_alert_rules_pass_promtool_unit_tests() -> None:
    promtool = require_tool("promtool")
    check = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    tests = subprocess.run([promtool, "test", "rules", "gpu-proc-collector.rules.test.yml"], capture_output=True,
                           text=True, cwd=RULES.parent, check=False)
    assert tests.returncode == 0, tests.stdout + tests.stderr
