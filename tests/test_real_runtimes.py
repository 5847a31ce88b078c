"""The collector meets real podman and Docker: containers the runtimes started, in the cgroups the runtimes made,
with the files the runtimes wrote. The stand-in NVML lists the containers' real PIDs; every owner the collector
reports is compared with what `podman inspect` / `docker inspect` answer, never with a table the test wrote.

On the host (cgroup v1, no systemd): rootful podman with the cgroupfs manager, rootless podman of a real user,
Docker with the cgroupfs driver. In a booted systemd guest on the unified hierarchy: podman's systemd manager,
`--cgroups=split` under a unit, rootless podman under the user's manager, Docker's systemd driver (its data root
moved in /etc/docker/daemon.json). What each wrote:
docs/runtimes-and-cgroups.md, "What real podman and Docker wrote".
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from collector.attribution.runtimes import RuntimeMetadata
from tests.conftest import require_root, require_tool
from tests.support.realruntime import (
    CHILD,
    IMAGE,
    PODMAN_RUN,
    ULIMITS,
    Collector,
    Guest,
    Podman,
    booted_guest,
    docker_daemon,
    first_child,
    guest_cgroups,
    image_tar,
    login_session_cgroup,
    parent_cgroups,
    rootless_podman,
    unprivileged_user,
)

pytestmark = pytest.mark.slow  # real podman and Docker, and a booted systemd-nspawn guest

TAG = f"gpc{os.getpid() % 100000}"


def owner(labels: dict[str, str]) -> tuple[str, str]:
    return labels["owner_kind"], labels["owner"]


def cgroup_lines(pid: int, root: str = "") -> str:
    return Path(f"{root}/proc/{pid}/cgroup").read_text()


def require_runtimes() -> None:
    require_root("running podman and dockerd as root, creating a user")
    for tool in ("podman", "runc", "newuidmap", "useradd"):
        require_tool(tool)


def test_rootful_podman_with_the_cgroupfs_manager(tmp_path: Path) -> None:
    require_runtimes()
    with parent_cgroups("libpod_parent"):
        rootful_podman_with_the_cgroupfs_manager(tmp_path)


def rootful_podman_with_the_cgroupfs_manager(tmp_path: Path) -> None:
    podman = Podman()
    podman("import", str(image_tar(tmp_path)), IMAGE)
    names = (f"{TAG}-vllm", f"{TAG}-forks")
    try:
        cgroupfs = ("--cgroup-manager", "cgroupfs", *PODMAN_RUN, "--network", "none")
        podman(*cgroupfs, "--name", names[0], IMAGE, "sleep", "3600")
        podman(*cgroupfs, "--name", names[1], IMAGE, "sh", "-c", CHILD)
        vllm, forks = podman.inspect(names[0]), podman.inspect(names[1])
        pid, child = vllm["State"]["Pid"], first_child(forks["State"]["Pid"])
        # podman's recorded cgroup is where its process is, in every hierarchy
        assert vllm["State"]["CgroupPath"] == f"/libpod_parent/libpod-{vllm['Id']}"
        assert all(line.endswith(vllm["State"]["CgroupPath"]) for line in cgroup_lines(pid).splitlines())

        collector = Collector("/", tmp_path / "state")
        found = collector.collect([pid, child])
        assert owner(found[pid]) == ("podman", vllm["Name"])
        assert owner(found[child]) == ("podman", forks["Name"])  # a child forked inside is the container's
        assert any(line.startswith("ok: podman directory /var/lib/containers/storage")
                   for line in collector.check())

        podman("rm", "-f", "-t", "0", names[0])
        found = collector.collect([child])
        assert vllm["Name"] not in {labels["owner"] for labels in found.values()}
        assert owner(found[child]) == ("podman", forks["Name"])
    finally:
        for name in names:
            Podman()("rm", "-f", "-i", "-t", "0", name)
        Podman()("rmi", "-i", IMAGE)


def test_docker_with_the_cgroupfs_driver(tmp_path: Path) -> None:
    require_runtimes()
    with parent_cgroups("docker"), docker_daemon("cgroupfs") as docker:
        docker("import", str(image_tar(tmp_path)), "gpc-busybox:test")
        names = (f"{TAG}-trainer", f"{TAG}-forks")
        docker("run", "-d", "--network", "none", *ULIMITS, "--name", names[0], "gpc-busybox:test", "sleep", "3600")
        docker("run", "-d", "--network", "none", *ULIMITS, "--name", names[1], "gpc-busybox:test", "sh", "-c",
               CHILD)
        trainer, forks = docker.inspect(names[0]), docker.inspect(names[1])
        pid, child = trainer["State"]["Pid"], first_child(forks["State"]["Pid"])
        assert trainer["HostConfig"]["CgroupParent"] == ""  # the driver's default parent: /docker
        assert f":/docker/{trainer['Id']}\n" in cgroup_lines(pid)
        assert Path(f"/var/lib/docker/containers/{trainer['Id']}/config.v2.json").is_file()

        collector = Collector("/", tmp_path / "state")
        found = collector.collect([pid, child])
        assert owner(found[pid]) == ("docker", trainer["Name"].lstrip("/"))
        assert owner(found[child]) == ("docker", forks["Name"].lstrip("/"))
        assert any(line.startswith("ok: docker directory /var/lib/docker/containers") for line in collector.check())

        docker("rm", "-f", names[0])
        found = collector.collect([child])
        assert trainer["Name"].lstrip("/") not in {labels["owner"] for labels in found.values()}
        assert owner(found[child]) == ("docker", forks["Name"].lstrip("/"))
    assert not [line for line in Path("/proc/self/mounts").read_text().splitlines()
                if str(docker.run_dir) in line or "/var/lib/docker/" in line]
    assert not docker.run_dir.exists()


def test_rootless_podman_on_cgroup_v1_stays_in_its_users_session(tmp_path: Path) -> None:
    """Rootless podman cannot make cgroups on cgroup v1: its container stays in the cgroup of the shell that ran
    podman (here a login session's, as pam_systemd makes it). The cgroup names no container, so the collector gives
    the user; the container's name is still resolved from the store in the user's home."""
    require_runtimes()
    with unprivileged_user(TAG) as user, login_session_cgroup(user.pw_uid, TAG) as session:
        tar = Path(user.pw_dir) / "rootfs.tar"
        tar.write_bytes(image_tar(tmp_path).read_bytes())
        podman = rootless_podman(user, session)
        podman("import", str(tar), IMAGE)
        podman("--cgroup-manager", "cgroupfs", *PODMAN_RUN, "--network", "none", "--name", f"{TAG}-notebook",
               IMAGE, "sh", "-c", CHILD)
        notebook = podman.inspect(f"{TAG}-notebook")
        pid = notebook["State"]["Pid"]
        child = first_child(pid)
        session_path = f"/user.slice/user-{user.pw_uid}.slice/session-{TAG}.scope"
        assert f"0::{session_path}\n" in cgroup_lines(pid)
        assert f"name=systemd:{session_path}\n" in cgroup_lines(child)

        found = Collector("/", tmp_path / "state").collect([pid, child])
        assert owner(found[pid]) == owner(found[child]) == ("host", f"user-{user.pw_uid}")
        # the store podman wrote under the home names the container
        stores = list(Path(user.pw_dir, ".local/share/containers/storage").glob("*-containers/containers.json"))
        assert [notebook["Id"] in store.read_text() for store in stores] == [True]
        assert RuntimeMetadata("/").podman_name(notebook["Id"], str(user.pw_uid)) == notebook["Name"]
        podman.remove_all()


# ---- the systemd cgroup managers, in a booted guest ----

GUEST_RUN = "--runtime runc run -d --network none --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 --pids-limit 0"
ROOTLESS = "runuser -u gpcuser -- env XDG_RUNTIME_DIR=/run/user/$(id -u gpcuser) " \
           "DBUS_SESSION_BUS_ADDRESS=unix:path=/run/user/$(id -u gpcuser)/bus"
DOCKER_IN_GUEST = "docker -H unix:///run/gpc-docker/docker.sock"
GUEST_SCRIPT = f"""
cd /tmp
podman import /tmp/rootfs.tar {IMAGE} >/dev/null
podman {GUEST_RUN} --name vllm {IMAGE} sh -c '{CHILD}' >/dev/null
podman --cgroup-manager cgroupfs {GUEST_RUN} --name legacy {IMAGE} sleep 3600 >/dev/null 2>&1
systemd-run --unit gpc-split.service -p Delegate=yes \\
    podman {GUEST_RUN.replace(" -d ", " ")} --cgroups=split --name quadlet {IMAGE} sleep 3600 >/dev/null 2>&1
useradd --create-home --shell /bin/sh gpcuser
loginctl enable-linger gpcuser
until systemctl is-active -q user@$(id -u gpcuser).service; do sleep 0.2; done
install -d -o gpcuser -g gpcuser /home/gpcuser/.config /home/gpcuser/.config/containers
printf '[storage]\\ndriver = "vfs"\\n' >/home/gpcuser/.config/containers/storage.conf
install -o gpcuser -m 0644 /tmp/rootfs.tar /home/gpcuser/rootfs.tar
cd /home/gpcuser
{ROOTLESS} podman import /home/gpcuser/rootfs.tar {IMAGE} >/dev/null
{ROOTLESS} podman {GUEST_RUN} --name notebook {IMAGE} sleep 3600 >/dev/null
mkdir -p /run/gpc-docker /etc/docker
echo '{{"data-root": "/srv/docker"}}' >/etc/docker/daemon.json
setsid dockerd --exec-root /run/gpc-docker/exec --pidfile /run/gpc-docker/docker.pid \\
    -H unix:///run/gpc-docker/docker.sock --storage-driver vfs --bridge none --iptables=false --ip6tables=false \\
    --ip-masq=false --exec-opt native.cgroupdriver=systemd </dev/null >/run/gpc-docker/log 2>&1 &
until {DOCKER_IN_GUEST} version >/dev/null 2>&1; do sleep 0.2; done
{DOCKER_IN_GUEST} import /tmp/rootfs.tar gpc-busybox:test >/dev/null
{DOCKER_IN_GUEST} run -d --network none --ulimit nofile=1024:1024 --name trainer gpc-busybox:test sleep 3600 >/dev/null
until podman inspect --format '{{{{.State.Pid}}}}' quadlet 2>/dev/null | grep -qv '^0$'; do sleep 0.2; done
echo '{{'
echo '"podman": '; podman inspect vllm legacy quadlet; echo ','
echo '"rootless": '; {ROOTLESS} podman inspect notebook; echo ','
echo '"docker": '; {DOCKER_IN_GUEST} inspect trainer
echo '}}'
"""


def unified_path(guest: Guest, pid: int) -> str:
    """The guest process's cgroup in the unified hierarchy, as the guest sees it. Read from outside, the file
    gives the path in the reader's cgroup namespace: the guest's cgroup, then the guest's own path."""
    line = cgroup_lines(pid, guest.root).splitlines()[-1]
    guest_cgroup = f"/gpc-guest-{guest.name}/payload/"
    assert line.startswith("0::/"), line
    assert guest_cgroup in line, line
    return "/" + line.split(guest_cgroup, 1)[1]


def test_systemd_cgroup_managers_in_a_booted_guest(tmp_path: Path) -> None:
    require_runtimes()
    for tool in ("systemd-nspawn", "debootstrap", "ssh"):
        require_tool(tool)
    with booted_guest(TAG, tmp_path) as guest:
        guest.copy_in(image_tar(tmp_path), "/tmp/rootfs.tar")
        answer: dict[str, list[dict[str, Any]]] = json.loads(guest(GUEST_SCRIPT))
        vllm, legacy, quadlet = answer["podman"]
        notebook, trainer = answer["rootless"][0], answer["docker"][0]
        uid = guest("id -u gpcuser").strip()
        pids = {c["Name"].lstrip("/"): c["State"]["Pid"] for c in (vllm, legacy, quadlet, notebook, trainer)}
        child = first_child_in(guest, vllm["State"]["Pid"])
        # where each runtime put its container, as its inspect says and as /proc shows
        assert vllm["State"]["CgroupPath"] == f"/machine.slice/libpod-{vllm['Id']}.scope"
        assert legacy["State"]["CgroupPath"] == f"/libpod_parent/libpod-{legacy['Id']}"
        assert quadlet["State"]["CgroupPath"] == f"/system.slice/gpc-split.service/libpod-payload-{quadlet['Id']}"
        assert notebook["State"]["CgroupPath"] == \
            f"/user.slice/user-{uid}.slice/user@{uid}.service/user.slice/libpod-{notebook['Id']}.scope"
        for container in (vllm, legacy, quadlet, notebook):
            assert unified_path(guest, container["State"]["Pid"]) == container["State"]["CgroupPath"]
        assert unified_path(guest, trainer["State"]["Pid"]) == f"/system.slice/docker-{trainer['Id']}.scope"

        collector = Collector(guest.root, tmp_path / "state")
        found = collector.collect([*pids.values(), child])
        for container in (vllm, legacy, quadlet, notebook):
            assert owner(found[container["State"]["Pid"]]) == ("podman", container["Name"])
        assert owner(found[trainer["State"]["Pid"]]) == ("docker", trainer["Name"].lstrip("/"))
        assert owner(found[child]) == ("podman", vllm["Name"])
        assert Path(f"{guest.root}/srv/docker/containers/{trainer['Id']}/config.v2.json").is_file()
        check = collector.check()
        assert any(line.startswith("ok: podman directory ") and "/var/lib/containers/storage readable" in line
                   for line in check), check

        guest("podman rm -f -t 0 vllm >/dev/null")
        del pids["vllm"]
        found = collector.collect([*pids.values()])
        assert vllm["Name"] not in {labels["owner"] for labels in found.values()}
        assert owner(found[pids["notebook"]]) == ("podman", notebook["Name"])
    assert guest_cgroups(TAG) == []  # the guest and everything it ran are gone


def first_child_in(guest: Guest, pid: int) -> int:
    for _ in range(100):
        children = Path(f"{guest.root}/proc/{pid}/task/{pid}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.05)
    raise AssertionError(f"process {pid} in the guest forked no child")
