"""Docker's files where dockerd keeps them: the data root `/etc/docker/daemon.json` sets, else /var/lib/docker;
an unusable configuration file gives the default, never a failed lookup."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from collector.attribution.runtimes import RuntimeMetadata
from tests.support.simhost import HostTree

TRAINER = "c61f9194d7b00592f52457091a56c3a75acec249bb087617a23f95bbe8f1b0a1"


@pytest.fixture
def tree(tmp_path: Path) -> HostTree:
    return HostTree(tmp_path / "host")


def config_v2(tree: HostTree, data_root: str, name: str, labels: dict[str, str] | None = None) -> None:
    document = {"ID": TRAINER, "Name": f"/{name}", "Config": {"Labels": labels or {}}}
    tree.write(f"{data_root}/containers/{TRAINER}/config.v2.json", json.dumps(document))


def test_the_data_root_daemon_json_sets(tree: HostTree) -> None:
    tree.write("etc/docker/daemon.json", json.dumps({"data-root": "/data/docker", "log-level": "warn"}))
    config_v2(tree, "data/docker", "trainer", {"io.kubernetes.pod.name": "trainer-0",
                                                 "io.kubernetes.pod.namespace": "ml"})
    config_v2(tree, "var/lib/docker", "stale")  # left from before the data root moved: dockerd no longer reads it
    metadata = RuntimeMetadata(str(tree.root))
    assert metadata.docker_name(TRAINER) == "trainer"
    found = metadata.lookup(TRAINER, "docker")
    assert found is not None
    assert (found.pod, found.namespace, found.source) == ("trainer-0", "ml", "docker")


def test_a_data_root_cannot_leave_the_host_root(tree: HostTree) -> None:
    tree.write("etc/docker/daemon.json", json.dumps({"data-root": "/../../../docker"}))
    metadata = RuntimeMetadata(str(tree.root))
    assert metadata.docker_containers() == str(tree.root / "docker" / "containers")


@pytest.mark.parametrize("config", ['{"data-root": "relative/path"}', '{"data-root": 7}', '{"data-root": "/"}',
                                    '["data-root"]', "{not json", ""])
def test_an_unusable_daemon_json_gives_the_default(tree: HostTree, config: str) -> None:
    tree.write("etc/docker/daemon.json", config)
    config_v2(tree, "var/lib/docker", "trainer")
    assert RuntimeMetadata(str(tree.root)).docker_name(TRAINER) == "trainer"
