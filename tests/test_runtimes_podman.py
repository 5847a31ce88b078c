"""podman container names from containers/storage's containers.json (rootful, rootless and transient stores); an
unusable file gives the short id, never a failed run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from collector.attribution.cgroups import parse_cgroup
from collector.attribution.runtimes import RuntimeMetadata
from tests.support.simhost import HostTree, write_podman_store

VLLM = "9687bac58d5c4d1606aa46af33d1a21c1d1652e0ac9fb3fc0fc86e3495f42869"
REDIS = "e8c29da1a2f6c4bb032304f7dfbc5a767e026092c4a2fcbc830e58565f972f54"


@pytest.fixture
def tree(tmp_path: Path) -> HostTree:
    return HostTree(tmp_path / "host")


def test_rootful_podman_name_from_containers_json(tree: HostTree) -> None:
    write_podman_store(tree, {VLLM: "vllm", REDIS: "redis"})
    owner = parse_cgroup(f"0::/system.slice/vllm.service/libpod-payload-{VLLM}\n")
    assert RuntimeMetadata(str(tree.root)).podman_name(owner.container_id, owner.user_uid) == "vllm"


def test_rootless_podman_name_from_the_users_home(tree: HostTree) -> None:
    tree.write("etc/passwd", "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000:Alice:/home/alice:/bin/bash\n")
    write_podman_store(tree, {REDIS: "redis"}, root="home/alice/.local/share/containers/storage")
    write_podman_store(tree, {REDIS: "someone-elses"})  # the rootful store is not the user's
    owner = parse_cgroup(f"0::/user.slice/user-1000.slice/user@1000.service/app.slice/redis.service/"
                         f"libpod-payload-{REDIS}\n")
    assert owner.user_uid == "1000"
    assert RuntimeMetadata(str(tree.root)).podman_name(owner.container_id, owner.user_uid) == "redis"


def test_rootless_user_missing_from_passwd_found_by_home_owner(tree: HostTree) -> None:
    # a directory (LDAP, SSSD) user: no etc/passwd line; the home directory the uid owns is theirs
    write_podman_store(tree, {REDIS: "redis"}, root="home/bob/.local/share/containers/storage")
    uid = str(os.stat(tree.root / "home" / "bob").st_uid)
    assert RuntimeMetadata(str(tree.root)).podman_name(REDIS, uid) == "redis"


def test_transient_store_and_other_drivers(tree: HostTree) -> None:
    write_podman_store(tree, {VLLM: "vllm"}, root="run/containers/storage", listing="volatile-containers.json")
    write_podman_store(tree, {REDIS: "redis"}, driver="vfs")
    metadata = RuntimeMetadata(str(tree.root))
    assert (metadata.podman_name(VLLM), metadata.podman_name(REDIS)) == ("vllm", "redis")


def test_graphroot_from_storage_conf(tree: HostTree) -> None:
    tree.write("etc/containers/storage.conf", '[storage]\ndriver = "overlay"\ngraphroot = "/data/containers"\n')
    write_podman_store(tree, {VLLM: "vllm"}, root="data/containers")
    assert RuntimeMetadata(str(tree.root)).podman_name(VLLM) == "vllm"


def test_name_from_metadata_when_names_is_empty(tree: HostTree) -> None:
    path = write_podman_store(tree, {VLLM: "vllm"})
    entries = json.loads(path.read_text())
    entries[0]["names"] = []
    path.write_text(json.dumps(entries))
    assert RuntimeMetadata(str(tree.root)).podman_name(VLLM) == "vllm"


@pytest.mark.parametrize("content", ["", "{not json", "{}", '[{"id": 7}, "x", {"id": "' + VLLM + '", "names": [3]}]'])
def test_unusable_store_gives_the_short_id(tree: HostTree, content: str) -> None:
    tree.write("var/lib/containers/storage/overlay-containers/containers.json", content)
    assert RuntimeMetadata(str(tree.root)).podman_name(VLLM) == VLLM[:12]


def test_no_store_gives_the_short_id(tree: HostTree) -> None:
    metadata = RuntimeMetadata(str(tree.root))
    assert (metadata.podman_name(VLLM), metadata.podman_name(VLLM, "1000")) == (VLLM[:12], VLLM[:12])


def test_store_read_once_per_run(tree: HostTree) -> None:
    path = write_podman_store(tree, {VLLM: "vllm"})
    metadata = RuntimeMetadata(str(tree.root))
    assert metadata.podman_name(VLLM) == "vllm"
    path.unlink()
    assert metadata.podman_name(VLLM) == "vllm"
