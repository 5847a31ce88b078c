"""What the unit leaves the collector of the host's sockets and home directories, read from the unit as the role
renders it (tests/support/role_render.py): docs/systemd-sandbox.md, "Sockets" and "Home directories".

The unit runs as uid 0, and uid 0 may connect to any root-owned unix socket whatever its capabilities (connect(2)
needs write permission on the socket, and root owns these). So every control socket of a container runtime, of
systemd, of D-Bus and of kubelet's plugins is hidden with InaccessiblePaths=, while kubelet's pod-resources socket,
systemd's notify socket and everything the collector reads stays visible. Homes are hidden (ProtectHome=yes) unless
gpu_proc_collector_rootless_users names users, whose container lists, and nothing else of their homes, are bound
back in read-only. The Molecule scenario shows the same in booted guests (molecule/default/verify.yml).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from collector.attribution import allocation, cdi, runtimes
from collector.settings import POD_RESOURCES_SOCKET
from tests.conftest import require_tool
from tests.support.role_render import ROLE, ansible_playbook, render
from tests.support.simhost import HostTree, write_podman_store

pytestmark = pytest.mark.slow  # the role rendered and its preflight run by ansible-playbook

UNIT = "gpu-proc-collector.service"
# Where each runtime, systemd, D-Bus and kubelet's plugins listen (their defaults; k3s/RKE2 and MicroK8s ship
# containerd under their own state directories). A connection to any of them is a way out of the sandbox.
CONTROL_SOCKETS = (
    "/run/containerd/containerd.sock",  # containerd: create and exec containers
    "/run/containerd/containerd.sock.ttrpc",
    "/run/containerd/s/0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",  # a shim's task API
    "/run/k3s/containerd/containerd.sock",
    "/var/snap/microk8s/common/run/containerd.sock",
    "/run/docker.sock",
    "/var/run/docker.sock",
    "/run/docker/containerd/containerd.sock",  # docker's own containerd (docker 18-19)
    "/run/cri-dockerd.sock",
    "/run/podman/podman.sock",
    "/run/crio/crio.sock",
    "/var/run/crio/crio.sock",
    "/run/buildkit/buildkitd.sock",
    "/run/dbus/system_bus_socket",  # systemd, logind, machined ... over D-Bus
    "/run/systemd/private",  # systemctl's direct line to PID 1
    # systemd's varlink sockets in the Molecule guests (systemd 247 to 257), and resolved's (lookups leave the unit)
    "/run/systemd/io.system.ManagedOOM",
    "/run/systemd/io.systemd.ManagedOOM",
    "/run/systemd/io.systemd.Credentials",
    "/run/systemd/io.systemd.Hostname",
    "/run/systemd/io.systemd.sysext",
    "/run/systemd/journal/io.systemd.journal",
    "/run/systemd/resolve/io.systemd.Resolve",
    "/run/ssh-unix-local/socket",
    "/run/udev/control",
    "/var/lib/kubelet/device-plugins/kubelet.sock",  # device plugin registration
    "/var/lib/kubelet/device-plugins/nvidia-gpu.sock",
    "/var/lib/kubelet/plugins_registry/gpu.nvidia.com-reg.sock",
    "/var/lib/kubelet/plugins/gpu.nvidia.com/dra.sock",  # a DRA driver's kubelet plugin
    "/run/snapd.socket",
    "/run/libvirt/libvirt-sock",
)
# What must stay reachable: sd_notify(3) in service mode, the journal, kubelet's pod-resources API.
REACHABLE = ("/run/systemd/notify", "/run/systemd/journal/stdout", "/run/systemd/journal/socket",
             "/" + POD_RESOURCES_SOCKET)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    return render(tmp_path_factory.mktemp("role"))


def values(unit: str, key: str) -> list[str]:
    """Every value of one [Service] setting, in order, one per line as the role writes them."""
    return re.findall(rf"(?m)^{key}=(.*)$", unit)


def hidden(unit: str) -> list[str]:
    return [path.lstrip("-") for path in values(unit, "InaccessiblePaths")]


def covered(path: str, roots: list[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


def collector_reads() -> list[str]:
    """The host paths the collector reads for metadata (the module constants), absolute."""
    paths = [f"/{d}/{runtimes.CONTAINERD_TASKS}" for d in runtimes.CONTAINERD_STATE_DIRS]
    paths += [f"/{p}" for p in (*runtimes.CRIO_ROOTS, *runtimes.PODMAN_STORAGE, runtimes.PODMAN_STORAGE_CONF,
                                runtimes.DOCKER_CONTAINERS, allocation.POD_LOGS, *cdi.SPEC_DIRS)]
    return [*paths, "/run/cdi", "/etc/passwd", "/proc"]


@pytest.mark.parametrize("variant", ["default", "service", "systemd247"])
def test_every_control_socket_is_hidden(rendered: dict[str, dict[str, str]], variant: str) -> None:
    unit = rendered[variant][UNIT]
    assert [p for p in CONTROL_SOCKETS if not covered(p, hidden(unit))] == []


@pytest.mark.parametrize("variant", ["default", "service", "full"])
def test_a_path_the_host_lacks_is_skipped(rendered: dict[str, dict[str, str]], variant: str) -> None:
    """Without the "-", a host without docker (say) would fail every start: 226/NAMESPACE."""
    entries = values(rendered[variant][UNIT], "InaccessiblePaths") + values(rendered[variant][UNIT],
                                                                               "BindReadOnlyPaths")
    assert entries
    assert [e for e in entries if not e.startswith("-/")] == []


@pytest.mark.parametrize("variant", ["default", "service", "full"])
def test_the_pod_resources_socket_notify_and_what_the_collector_reads_stay_visible(
        rendered: dict[str, dict[str, str]], variant: str) -> None:
    unit = rendered[variant][UNIT]
    assert [p for p in (*REACHABLE, *collector_reads()) if covered(p, hidden(unit))] == []


def test_with_another_host_root_both_the_units_and_the_hosts_sockets_are_hidden(
        rendered: dict[str, dict[str, str]]) -> None:
    unit = rendered["full"][UNIT]  # gpu_proc_collector_host_root: /host
    for path in CONTROL_SOCKETS:
        assert covered(path, hidden(unit)), path
        assert covered("/host" + path, hidden(unit)), path
    assert not [p for p in REACHABLE if covered("/host" + p, hidden(unit))]


@pytest.mark.parametrize("variant", ["default", "service", "systemd247"])
def test_without_rootless_users_no_home_is_visible(rendered: dict[str, dict[str, str]], variant: str) -> None:
    unit = rendered[variant][UNIT]
    assert values(unit, "ProtectHome") == ["yes"]
    assert values(unit, "BindReadOnlyPaths") == values(unit, "BindPaths") == []


def test_rootless_users_show_only_their_container_lists(rendered: dict[str, dict[str, str]]) -> None:
    """gpu_proc_collector_rootless_users [alice (uid 1000, /home/alice), svc-infer (uid 990, /srv/infer)] under
    host root /host: an empty read-only tmpfs on /home, /root and /run/user, and of each user only the
    `<driver>-containers` directories of the graph root and the run root, read-only. Not the home, not the
    store's root (image layers, container file systems), not /run/user/<uid> (the user's D-Bus and systemd
    sockets, registry credentials in containers/auth.json)."""
    unit = rendered["full"][UNIT]
    assert values(unit, "ProtectHome") == ["tmpfs"]
    assert values(unit, "BindPaths") == []
    expected = {f"-/host{root}/{driver}-containers"
                for root in ("/home/alice/.local/share/containers/storage", "/run/user/1000/containers",
                             "/srv/infer/.local/share/containers/storage", "/run/user/990/containers")
                for driver in ("overlay", "vfs")}
    assert set(values(unit, "BindReadOnlyPaths")) == expected


def sandbox_view(host: Path, view: Path, unit: str, host_root: str) -> None:
    """What the unit shows of host's homes, as a tree: everything but /home, /root and /run/user, and of those only
    the bound paths (ProtectHome=tmpfs plus BindReadOnlyPaths=)."""
    shutil.copytree(host, view, symlinks=True, ignore=lambda d, names: [
        n for n in names if Path(d, n) in {host / "home", host / "root", host / "run" / "user"}])
    for bind in values(unit, "BindReadOnlyPaths"):
        relative = bind.lstrip("-")[len(host_root):].lstrip("/")
        if (host / relative).exists():
            shutil.copytree(host / relative, view / relative)


def test_the_collector_names_a_rootless_container_through_the_units_binds(
        rendered: dict[str, dict[str, str]], tmp_path: Path) -> None:
    """alice's store as podman writes it, her home with the things a compromised collector would want; the tree the
    unit shows holds her container's name and none of those."""
    host = HostTree(tmp_path / "host")
    container = "b2" * 32
    host.write("etc/passwd", "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/bash\n")
    write_podman_store(host, {container: "notebook"}, root="home/alice/.local/share/containers/storage")
    host.write("home/alice/.ssh/id_ed25519", "PRIVATE KEY")
    host.write("home/alice/.local/share/containers/storage/overlay/layer/diff/etc/shadow", "a layer's file")
    host.write("run/user/1000/containers/auth.json", json.dumps({"auths": {"registry.example": {"auth": "x"}}}))
    view = tmp_path / "view"
    sandbox_view(host.root, view, rendered["full"][UNIT], "/host")

    assert runtimes.RuntimeMetadata(str(view)).podman_name(container, "1000") == "notebook"
    assert runtimes.RuntimeMetadata(str(host.root)).podman_name(container, "1000") == "notebook"
    seen = {str(p.relative_to(view)) for p in view.rglob("*") if p.is_file()}
    assert not [p for p in seen if p.startswith(("home/alice/.ssh", "run/user/1000/containers/auth.json"))
                or "/overlay/" in p]


def test_without_the_binds_the_rootless_container_has_no_name(rendered: dict[str, dict[str, str]],
                                                              tmp_path: Path) -> None:
    """The guard of the test above: the default unit (ProtectHome=yes) leaves the collector the short id."""
    host = HostTree(tmp_path / "host")
    container = "b2" * 32
    host.write("etc/passwd", "alice:x:1000:1000::/home/alice:/bin/bash\n")
    write_podman_store(host, {container: "notebook"}, root="home/alice/.local/share/containers/storage")
    sandbox_view(host.root, tmp_path / "view", rendered["default"][UNIT], "")
    assert runtimes.RuntimeMetadata(str(tmp_path / "view")).podman_name(container, "1000") == container[:12]


def exposure(unit_text: str, directory: Path) -> float:
    """systemd-analyze security's overall exposure of a unit file (0 best, 10 worst)."""
    path = directory / UNIT
    path.write_text(unit_text)
    result = subprocess.run([require_tool("systemd-analyze"), "security", "--offline=yes", str(path)],
                            capture_output=True, text=True, check=False)
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout + result.stderr)
    assert found, result.stdout + result.stderr
    return float(found.group(1))


@pytest.mark.parametrize("variant", ["default", "full"])
def test_the_exposure_score_is_no_worse_than_without_these_settings(
        rendered: dict[str, dict[str, str]], variant: str, tmp_path: Path) -> None:
    """Offline, as the unit file reads. (The loaded unit with ProtectHome=tmpfs scores 0.1 more, which offline
    analysis does not see: docs/systemd-sandbox.md, "Home directories"; Molecule checks the loaded unit.)"""
    unit = rendered[variant][UNIT]
    without = re.sub(r"(?m)^(InaccessiblePaths|BindReadOnlyPaths)=.*\n", "", unit)
    without = re.sub(r"(?m)^ProtectHome=.*$", "ProtectHome=yes", without)
    assert without != unit
    assert exposure(unit, tmp_path) <= exposure(without, tmp_path) <= 2.5


def _preflight_socket_check(tmp_path: Path, extra: dict[str, object]) -> subprocess.CompletedProcess[str]:
    """preflight.yml's assertion that kubelet's socket is not hidden, run alone with the role's defaults and vars."""
    tasks = yaml.safe_load((ROLE / "tasks" / "preflight.yml").read_text())
    task = next(t for t in tasks if t["name"].startswith("Assert that the sandbox leaves kubelet's pod-resources"))
    play = [{"hosts": "localhost", "connection": "local", "gather_facts": False,
             "vars_files": [str(ROLE / "defaults" / "main.yml"), str(tmp_path / "extra.json"),
                            str(ROLE / "vars" / "main.yml")],
             "vars": {"ansible_python_interpreter": "{{ ansible_playbook_python }}", "role_path": str(ROLE)},
             "tasks": [task]}]
    (tmp_path / "extra.json").write_text(json.dumps(extra))
    (tmp_path / "play.yml").write_text(json.dumps(play))
    env = {**os.environ, "ANSIBLE_FILTER_PLUGINS": str(ROLE / "filter_plugins"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_LOCALHOST_WARNING": "false", "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false"}
    return subprocess.run([ansible_playbook(), "-i", "localhost,", str(tmp_path / "play.yml")], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=300, check=False)


@pytest.mark.parametrize(("extra", "passes"), [
    ({}, True),
    ({"gpu_proc_collector_host_root": "/host"}, True),
    ({"gpu_proc_collector_pod_resources_socket": "/run/kubelet/pod-resources.sock"}, True),
    ({"gpu_proc_collector_pod_resources_socket": "/var/lib/kubelet/plugins/pod-resources/kubelet.sock"}, False),
    ({"gpu_proc_collector_pod_resources_socket": "/run/crio/kubelet.sock"}, False),
    ({"gpu_proc_collector_host_root": "/host",
      "gpu_proc_collector_pod_resources_socket": "/host/var/lib/kubelet/device-plugins/kubelet.sock"}, False),
    ({"gpu_proc_collector_host_root": "/host",
      "gpu_proc_collector_pod_resources_socket": "/var/lib/kubelet/device-plugins/kubelet.sock"}, False),
])
def test_preflight_refuses_a_pod_resources_socket_the_unit_would_hide(tmp_path: Path, extra: dict[str, object],
                                                                      passes: bool) -> None:
    result = _preflight_socket_check(tmp_path, extra)
    assert (result.returncode == 0) == passes, result.stdout + result.stderr
    if not passes:
        assert "lies in a path the unit hides" in result.stdout
