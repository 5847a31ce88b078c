"""Past one cluster, with real processes (monitoring/federation/README.md): two simulated clusters, each a node
whose node_exporter serves the collector's file for its own scenario and a Prometheus run from the example
cluster-prometheus-remote-write.yml (the rules, external label cluster="a" / "b"); a global Prometheus run from
global-prometheus.yml federates them, and a receiver Prometheus gets their remote write. Both must answer GPU memory
per namespace and per cluster with the exact values the scenarios imply, carry only the namespace- and cluster-level
recording series, and lose a namespace that ended in one cluster."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.conftest import REPO, Host, samples
from tests.support.podsim import pod_resources_server
from tests.support.promstack import Prometheus, check_config, processes, start_node_exporter, start_prometheus
from tests.support.simhost import GIB, HostTree, gpu_uuid, mig_uuid
from tests.test_monitoring import RULES, WORKLOADS, Workload, build

pytestmark = pytest.mark.slow  # real Prometheus servers and node_exporter (tests/support/promstack.py)

FEDERATION = REPO / "monitoring/federation"
CLUSTER_CONFIG = FEDERATION / "cluster-prometheus.yml"
REMOTE_WRITE_CONFIG = FEDERATION / "cluster-prometheus-remote-write.yml"
GLOBAL_CONFIG = FEDERATION / "global-prometheus.yml"
TRAVELS = ("namespace:gpu_", "cluster:gpu_")  # what the examples' selectors let out of a cluster
# What Prometheus records about each of its own scrapes: the global one's federation scrapes have them.
SCRAPE_META = {"up", "scrape_duration_seconds", "scrape_samples_scraped", "scrape_samples_post_metric_relabeling",
               "scrape_series_added"}
# Node-level and per-process series that must stay in their cluster.
STAY = ["gpu_process_info", "gpu_process_memory_bytes", "gpu_device_memory_used_bytes",
        "namespace_pod:gpu_process_memory_bytes:sum", "instance:gpu_device_unattributed_memory_bytes:sum"]

# Cluster a: test_monitoring's node (ml, vision, a host process, MIG). Cluster b: the same namespace ml, one of its
# own (nlp: two time-sliced pods), vision on a MIG instance, a host process.
SCENARIOS: dict[str, list[Workload]] = {
    "a": WORKLOADS,
    "b": [
        Workload(200, "0", "ml", "train-b", 72, (90,), gpu_uuid(0)),
        Workload(201, "1", "nlp", "llm-0", 40, (50,), f"{gpu_uuid(1)}::0"),
        Workload(202, "1", "nlp", "llm-1", 30, (), f"{gpu_uuid(1)}::1"),
        Workload(203, "4_5_0", "vision", "ocr-b", 4, (), mig_uuid(4, 3)),
        Workload(210, "2", "", "", 3),
    ],
}


def namespace_memory(workloads: dict[str, list[Workload]]) -> dict[tuple[str, ...], float]:
    """(cluster, namespace) -> bytes held by the namespace's pods' processes."""
    out: dict[tuple[str, ...], float] = {}
    for cluster, ws in workloads.items():
        for w in ws:
            if w.pod:
                out[(cluster, w.namespace)] = out.get((cluster, w.namespace), 0.0) + w.used_gib * GIB
    return out


def namespace_utilization(workloads: dict[str, list[Workload]]) -> dict[tuple[str, ...], float]:
    """(cluster, namespace) -> mean SM % of the namespace's pods' processes where it can be measured (not MIG)."""
    out: dict[tuple[str, ...], list[float]] = {}
    for cluster, ws in workloads.items():
        for w in ws:
            if w.pod and not w.mig:
                out.setdefault((cluster, w.namespace), []).append(sum(w.sm) / len(w.sm) if w.sm else 0.0)
    return {key: sum(v) / len(v) for key, v in out.items()}


def device_memory(document: dict[str, Any], key: str) -> float:
    """The scenario's device memory (used or total): each whole GPU's, and each MIG instance's, not its GPU's."""
    total = 0
    for device in document["devices"]:
        if "mig" in device:
            total += sum(instance["memory"][key] for instance in device["mig"]["instances"])
        else:
            total += device["memory"][key]
    return float(total)


@dataclass
class Cluster:
    name: str
    host: Host
    prometheus: Prometheus
    document: dict[str, Any]

    def collect(self, workloads: list[Workload]) -> None:
        """One collector run on the cluster's node, writing the file its node_exporter serves."""
        self.document, k8s = build(self.host, workloads)
        with pod_resources_server(self.host.socket, k8s.pods):
            result = self.host.run(self.document)
        assert result.returncode == 0, result.stderr


@dataclass
class Fleet:
    clusters: dict[str, Cluster]
    federated: Prometheus  # the global Prometheus (federation)
    receiver: Prometheus  # the remote-write receiver


def load(path: Path) -> dict[str, Any]:
    return dict(yaml.safe_load(path.read_text()))


def cluster_config(cluster: str, node_exporter: str, receiver: Prometheus) -> dict[str, Any]:
    """The example as it is, but for this test's cluster name, target, receiver, and 1 s intervals."""
    config = load(REMOTE_WRITE_CONFIG)
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["global"]["external_labels"]["cluster"] = cluster
    config["rule_files"] = [str((FEDERATION / f).resolve()) for f in config["rule_files"]]
    [job] = config["scrape_configs"]
    job["static_configs"] = [{"targets": [node_exporter]}]
    [remote] = config["remote_write"]
    remote["url"] = f"{receiver.url}/api/v1/write"
    remote["queue_config"] = {"batch_send_deadline": "1s"}
    return config


def global_config(clusters: list[Prometheus]) -> dict[str, Any]:
    config = load(GLOBAL_CONFIG)
    config["global"]["scrape_interval"] = "1s"
    [job] = config["scrape_configs"]
    job["scrape_timeout"] = "1s"
    job["static_configs"] = [{"targets": [p.url.removeprefix("http://") for p in clusters]}]
    return config


@pytest.fixture(scope="module")
def fleet(fake_nvml: Path) -> Iterator[Fleet]:
    work = Path(tempfile.mkdtemp(prefix="gpc-fed-"))
    roots = []
    try:
        with processes(work / "logs") as procs:
            receiver = start_prometheus(procs, work, {"global": {}}, "--web.enable-remote-write-receiver",
                                        name="receiver")
            clusters = {}
            for name, workloads in SCENARIOS.items():
                base = work / name
                (base / "textfile").mkdir(parents=True)
                # A short host root: the pod-resources socket under it must fit a unix socket path (108 bytes).
                roots.append(Path(tempfile.mkdtemp(prefix="gpc-", dir="/tmp")))
                host = Host(base=base, lib=fake_nvml, tree=HostTree(roots[-1]), textfile_dir=base / "textfile",
                            state_dir=base / "state")
                node_exporter = start_node_exporter(procs, host.textfile_dir, name=f"node-exporter-{name}")
                prometheus = start_prometheus(procs, work, cluster_config(name, node_exporter, receiver),
                                              name=f"prometheus-{name}")
                clusters[name] = Cluster(name, host, prometheus, {})
                clusters[name].collect(workloads)
            federated = start_prometheus(procs, work, global_config([c.prometheus for c in clusters.values()]),
                                         name="global")
            yield Fleet(clusters, federated, receiver)
    finally:
        for root in roots:
            shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def by(prometheus: Prometheus, expr: str, *labels: str) -> dict[tuple[str, ...], float]:
    return {tuple(r["metric"].get(label, "") for label in labels): float(r["value"][1])
            for r in prometheus.query(expr)}


def travelling(prometheus: Prometheus) -> set[str]:
    return {n for n in prometheus.names() if n.startswith(TRAVELS)}


def wait_for_clusters(fleet: Fleet) -> set[str]:
    """Waits until each cluster holds its per-process series and its rules' results; returns the names of the
    recording series that should travel (every namespace:gpu_ and cluster:gpu_ one either cluster has)."""
    names: set[str] = set()
    for cluster in fleet.clusters.values():
        p = cluster.prometheus
        p.wait(lambda p=p: set(STAY) <= p.names() and "cluster:gpu_processes:sum" in p.names()
               and "namespace:gpu_allocation_unused:count" in p.names(), f"cluster {cluster.name}'s rules")
        names |= travelling(p)
    assert names >= {"namespace:gpu_process_memory_bytes:sum", "cluster:gpu_process_memory_bytes:sum",
                     "cluster:gpu_device_memory_used_bytes:sum", "cluster:gpu_device_memory_total_bytes:sum"}
    return names


def federated(cluster: Cluster, params: dict[str, Any], timeout: float = 90) -> dict[str, Any]:
    """The cluster's /federate answer once it names exactly the recording series the cluster holds. A rule group
    evaluated between the two reads adds a series to the one read second only, so both are read again until they
    agree (bounded), and the failure says what differed."""
    deadline = time.monotonic() + timeout
    while True:
        held = travelling(cluster.prometheus)
        exposed = samples(requests.get(f"{cluster.prometheus.url}/federate", params=params, timeout=10).text)
        if set(exposed) == held == travelling(cluster.prometheus):
            return exposed
        if time.monotonic() > deadline:
            pytest.fail(f"cluster {cluster.name}'s /federate never answered the recording series it holds: "
                        f"missing {sorted(held - set(exposed))}, not held {sorted(set(exposed) - held)}")
        time.sleep(0.25)


def arrived(fleet: Fleet, view: Prometheus, name: str) -> bool:
    """Whether every cluster that holds a series of this name has it in the global view too (a name can arrive
    from one cluster before the other)."""
    holding = {c for c, cluster in fleet.clusters.items() if cluster.prometheus.query(name)}
    return holding <= {s["metric"].get("cluster") for s in view.query(name)}


def assert_global_view(fleet: Fleet, view: Prometheus, names: set[str], extra_labels: set[str]) -> None:
    """The exact answers of the global queries (monitoring/federation/README.md) for both scenarios."""
    view.wait(lambda: names <= view.names(), "every recording series from both clusters", timeout=90)
    view.wait(lambda: all(arrived(fleet, view, name) for name in names),
              "each cluster's own series of every recording rule", timeout=90)
    expected = namespace_memory(SCENARIOS)
    assert expected == {("a", "ml"): 140 * GIB, ("a", "vision"): 38 * GIB,
                        ("b", "ml"): 72 * GIB, ("b", "nlp"): 70 * GIB, ("b", "vision"): 4 * GIB}
    assert namespace_utilization(SCENARIOS) == {("a", "ml"): 25.0, ("b", "ml"): 90.0, ("b", "nlp"): 25.0}
    per_namespace = "sum by (cluster, namespace) (namespace:gpu_process_memory_bytes:sum)"
    view.wait(lambda: set(by(view, per_namespace, "cluster", "namespace")) == set(expected),
              "GPU memory per namespace of both clusters", timeout=90)
    assert by(view, per_namespace, "cluster", "namespace") == expected
    assert by(view, f"topk(10, {per_namespace})", "cluster", "namespace") == expected
    # The same namespace in two clusters: apart by cluster, and added up across them.
    assert by(view, "sum by (namespace) (namespace:gpu_process_memory_bytes:sum)", "namespace") == {
        ("ml",): 212 * GIB, ("vision",): 42 * GIB, ("nlp",): 70 * GIB}

    processes = {c: sum(w.used_gib for w in ws) * GIB for c, ws in SCENARIOS.items()}  # host processes too
    assert by(view, "sum by (cluster) (cluster:gpu_process_memory_bytes:sum)", "cluster") == {
        (c,): float(v) for c, v in processes.items()}
    clusters = {c: cluster.document for c, cluster in fleet.clusters.items()}
    for key in ("used", "total"):
        assert by(view, f"sum by (cluster) (cluster:gpu_device_memory_{key}_bytes:sum)", "cluster") == {
            (c,): device_memory(doc, key) for c, doc in clusters.items()}
    # Unattributed memory per cluster: the stand-in's 512 MiB of driver memory on each of GPUs 0-3.
    assert by(view, "sum by (cluster) (cluster:gpu_device_memory_used_bytes:sum)"
                    " - sum by (cluster) (cluster:gpu_process_memory_bytes:sum)", "cluster") == {
        ("a",): 4 * 512 * 1024**2, ("b",): 4 * 512 * 1024**2}
    assert by(view, "cluster:gpu_device_memory_used_bytes:sum / cluster:gpu_device_memory_total_bytes:sum",
              "cluster") == pytest.approx({(c,): device_memory(doc, "used") / device_memory(doc, "total")
                                           for c, doc in clusters.items()})
    assert by(view, "namespace:gpu_process_utilization:avg", "cluster", "namespace") == pytest.approx(
        namespace_utilization(SCENARIOS))
    assert by(view, "sum by (cluster) (cluster:gpu_processes:sum)", "cluster") == {
        (c,): float(len(ws)) for c, ws in SCENARIOS.items()}
    assert by(view, "sum by (cluster, namespace) (namespace:gpu_allocation_unused:count)", "cluster", "namespace") \
        == {("a", "ml"): 1.0, ("a", "research"): 1.0, ("b", "research"): 1.0}

    # Only what the selectors let through, and with only the labels of its level.
    names_there = view.names()
    # The clusters' rules may have produced more recording series since (hourly usage ones start later): what
    # arrived is at least what was waited for, and nothing the clusters do not hold themselves.
    in_clusters = set().union(*(travelling(c.prometheus) for c in fleet.clusters.values()))
    assert names <= names_there - SCRAPE_META <= in_clusters
    for name in STAY:
        assert name not in names_there
        assert view.query(f'{{__name__="{name}"}}') == []
    for series in view.query('{__name__=~"namespace:gpu_.*"}'):
        assert set(series["metric"]) == {"__name__", "cluster", "namespace"} | extra_labels, series
    for series in view.query('{__name__=~"cluster:gpu_.*"}'):
        assert set(series["metric"]) == {"__name__", "cluster"} | extra_labels, series


def test_examples_pass_promtool_and_the_remote_write_one_only_adds_remote_write() -> None:
    for path in sorted(FEDERATION.glob("*.yml")):
        check_config(path)
    plain, remote = load(CLUSTER_CONFIG), load(REMOTE_WRITE_CONFIG)
    [writer] = remote.pop("remote_write")
    assert remote == plain
    assert writer["write_relabel_configs"] == [
        {"source_labels": ["__name__"], "regex": "(namespace|cluster):gpu_.*", "action": "keep"}]
    assert [(FEDERATION / f).resolve() for f in plain["rule_files"]] == [RULES.resolve()]
    [job] = load(GLOBAL_CONFIG)["scrape_configs"]
    assert job["metrics_path"] == "/federate"
    assert job["params"] == {"match[]": ['{__name__=~"(namespace|cluster):gpu_.*"}']}
    assert job["honor_labels"] is True
    assert job["honor_timestamps"] is False
    assert "cluster" not in load(GLOBAL_CONFIG)["global"].get("external_labels", {})


def test_global_prometheus_federates_namespace_and_cluster_series_of_both_clusters(fleet: Fleet) -> None:
    names = wait_for_clusters(fleet)
    # The federation scrape's job; no instance: /federate gives every series without one instance="", which
    # honor_labels keeps, so a cluster-level series does not take the address of the Prometheus it came from.
    assert_global_view(fleet, fleet.federated, names, {"job"})
    assert {s["metric"]["job"] for s in fleet.federated.query('{__name__=~"(namespace|cluster):gpu_.*"}')} == {
        "gpu-federate"}
    [job] = load(GLOBAL_CONFIG)["scrape_configs"]
    for cluster in fleet.clusters.values():
        exposed = federated(cluster, job["params"])
        for name, series in exposed.items():
            for labels, _ in series:
                assert labels["cluster"] == cluster.name, (name, labels)
                assert labels["instance"] == "", (name, labels)


def test_receiver_gets_the_same_by_remote_write(fleet: Fleet) -> None:
    names = wait_for_clusters(fleet)
    assert_global_view(fleet, fleet.receiver, names, set())


def test_a_namespace_that_ends_in_one_cluster_leaves_the_global_views(fleet: Fleet) -> None:
    """Runs last: cluster b's nlp pods end. Federation and remote write both carry the end (staleness)."""
    wait_for_clusters(fleet)
    per_namespace = "sum by (cluster, namespace) (namespace:gpu_process_memory_bytes:sum)"
    for view in (fleet.federated, fleet.receiver):
        view.wait(lambda view=view: ("b", "nlp") in by(view, per_namespace, "cluster", "namespace"),
                  "nlp in cluster b", timeout=90)
    b = fleet.clusters["b"]
    remaining = [w for w in SCENARIOS["b"] if w.namespace != "nlp"]
    for w in SCENARIOS["b"]:
        if w.namespace == "nlp":
            b.host.tree.remove_process(w.pid)
    b.collect(remaining)
    expected = namespace_memory({"a": SCENARIOS["a"], "b": remaining})
    assert ("b", "nlp") not in expected
    processes = {("a",): float(len(SCENARIOS["a"])), ("b",): float(len(remaining))}
    # Well inside the 5-minute lookback, so a series kept to its last value (federation honouring the clusters'
    # timestamps, which Prometheus never marks stale) fails this.
    for view in (fleet.federated, fleet.receiver):
        view.wait(lambda view=view: by(view, per_namespace, "cluster", "namespace") == expected,
                  "nlp to leave cluster b's global view", timeout=90)
        # The cluster: rules are another group, evaluated on their own schedule.
        view.wait(lambda view=view: by(view, "sum by (cluster) (cluster:gpu_processes:sum)", "cluster") == processes,
                  "cluster b's process count to follow", timeout=90)
