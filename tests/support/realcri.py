"""A real containerd, driven through the CRI gRPC API the way kubelet drives it, for tests that attribute processes
a real container runtime started, in the cgroups it made, with the metadata files it wrote.

Pods are made as kubelet makes them (`Cri`): RunPodSandbox with the pod's name, namespace, UID and kubelet's cgroup
parent for its QoS class, CreateContainer and StartContainer with the container's name, and kubelet's labels.
`Containerd` starts its own containerd for tests/test_runtime_containerd.py: a config of its own (CRI plugin, the
local pause image as `sandbox_image`, runc with the cgroupfs or the systemd cgroup driver), its root in a temporary
directory, its state at its default, /run/containerd, the first state dir the collector reads, but in a mount
namespace of its own where a temporary directory is bound there: another containerd on the host keeps its
/run/containerd, and the collector, started in the same namespace (`nsenter_mount`), reads this one's at the path
it reads on a node. /proc and the cgroup hierarchies are the host's. Everything it starts or creates is stopped
and removed when the block ends, whatever happened inside it. The command line (`main`) drives a containerd that
runs as a service, in molecule/cri's guest.

Nothing is installed here: scripts/test.sh installs containerd, runc and busybox-static.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import grpc

from tests.support import cri_runtime_v1_pb2 as cri
from tests.support import cri_runtime_v1_pb2_grpc as cri_grpc
from tests.support.ociimage import build_archive

WORKLOAD_IMAGE = "localhost/gpc-busybox:test"
PAUSE_IMAGE = "localhost/gpc-pause:test"
STATE_DIR = "/run/containerd"  # containerd's default state dir, the first the collector looks in
TASKS = "io.containerd.runtime.v2.task/k8s.io"
QOS_CLASSES = ("guaranteed", "burstable", "besteffort")


def cgroup_parent(qos: str, uid: str, driver: str) -> str:
    """The pod cgroup kubelet passes as LinuxPodSandboxConfig.cgroup_parent (pkg/kubelet/cm: /kubepods for
    guaranteed pods, /kubepods/<qos> for the others; the systemd driver writes the same path as nested slices and
    passes the innermost slice's name, the UID's dashes as underscores)."""
    if driver == "systemd":
        qos_part = "" if qos == "guaranteed" else f"-{qos}"
        return f"kubepods{qos_part}-pod{uid.replace('-', '_')}.slice"
    return "/kubepods" + ("" if qos == "guaranteed" else f"/{qos}") + f"/pod{uid}"


@dataclass
class Container:
    name: str
    id: str
    attempt: int = 0


@dataclass
class Pod:
    name: str
    namespace: str
    uid: str
    qos: str
    sandbox_id: str
    config: Any  # cri.PodSandboxConfig
    containers: list[Container] = field(default_factory=list)

    def container(self, name: str) -> Container:
        return next(c for c in self.containers if c.name == name)


@dataclass
class Owner:
    """Who owns a container, in containerd's own words (Cri.owner)."""

    pod: str
    namespace: str
    container: str
    pod_uid: str
    container_id: str

    @property
    def labels(self) -> dict[str, str]:
        """The collector's labels for a process of this container."""
        return {"pod": self.pod, "namespace": self.namespace, "container": self.container, "owner_kind": "pod",
                "owner": f"{self.namespace}/{self.pod}"}


def config_toml(*, root: str, socket: str, driver: str, cni_dir: str) -> str:
    """containerd's config: the CRI plugin with the local pause image, runc with the cgroup driver asked for."""
    systemd = "true" if driver == "systemd" else "false"
    cri_plugin = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{root}"
state = "{STATE_DIR}"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs",
                    "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper",
                    "io.containerd.snapshotter.v1.zfs"]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[{cri_plugin}]
  sandbox_image = "{PAUSE_IMAGE}"
  # No lower oom_score_adj than containerd's own: lowering it needs CAP_SYS_RESOURCE, which a runner that is
  # itself a container may lack (runc: "failed to update /proc/self/oom_score_adj: Permission denied").
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

  [{cri_plugin}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [{cri_plugin}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [{cri_plugin}.containerd.runtimes.runc.options]
        SystemdCgroup = {systemd}

  [{cri_plugin}.cni]
    bin_dir = "{cni_dir}/bin"
    conf_dir = "{cni_dir}/net.d"
"""


class Cri:
    """A CRI client that makes pods as kubelet does, on a containerd already listening (connect)."""

    def __init__(self, *, driver: str) -> None:
        if driver not in ("cgroupfs", "systemd"):
            raise ValueError(driver)
        self.driver = driver
        self.pods: list[Pod] = []
        self.channel: Optional[grpc.Channel] = None
        self._made_logs: list[Path] = []

    def connect(self, socket: str) -> None:
        self.channel = grpc.insecure_channel(f"unix://{socket}")
        self.runtime = cri_grpc.RuntimeServiceStub(self.channel)
        self.images = cri_grpc.ImageServiceStub(self.channel)

    def _note_cgroup(self, parent: str) -> None:
        """Told of each pod cgroup parent before the pod is made (Containerd removes them at the end)."""

    def wait_ready(self, deadline: float, alive: Callable[[], bool] = lambda: True) -> None:
        """Waits for CRI's RuntimeReady condition (NetworkReady stays false: no CNI, host-network pods only)."""
        while True:
            try:
                status = self.runtime.Status(cri.StatusRequest(), timeout=5)
                if any(c.type == "RuntimeReady" and c.status for c in status.status.conditions):
                    return
            except grpc.RpcError:
                pass
            if not alive() or time.monotonic() > deadline:
                raise RuntimeError("containerd's CRI plugin did not become ready")
            time.sleep(0.2)

    def import_images(self, workdir: Path, socket: str) -> None:
        """Builds the pause and workload images and imports them into the k8s.io namespace with ctr (CRI has no
        import call), then checks that CRI sees them."""
        for name, cmd in ((PAUSE_IMAGE, ["/bin/sleep", "2147483647"]), (WORKLOAD_IMAGE, ["/bin/sleep", "100000"])):
            archive = build_archive(workdir / (name.rsplit("/", 1)[1].replace(":", "_") + ".tar"), name, cmd)
            result = subprocess.run(["ctr", "--address", socket, "-n", "k8s.io", "images", "import",
                                     "--snapshotter", "overlayfs", str(archive)],
                                    capture_output=True, text=True, timeout=120, check=False)
            if result.returncode != 0:
                raise RuntimeError(f"ctr images import {archive}: {result.stderr.strip()}")
            if not self.images.ImageStatus(cri.ImageStatusRequest(image=cri.ImageSpec(image=name)),
                                           timeout=10).image.id:
                raise RuntimeError(f"CRI does not see the imported image {name}")


    # ---- pods, as kubelet makes them ----

    def run_pod(self, name: str, namespace: str, uid: str, qos: str, containers: Sequence[str] = ("main",)) -> Pod:
        if qos not in QOS_CLASSES:
            raise ValueError(qos)
        labels = {"io.kubernetes.pod.name": name, "io.kubernetes.pod.namespace": namespace,
                  "io.kubernetes.pod.uid": uid}
        log_dir = Path(f"/var/log/pods/{namespace}_{name}_{uid}")
        log_dir.mkdir(parents=True, exist_ok=True)
        self._made_logs.append(log_dir)
        self._note_cgroup(cgroup_parent(qos, uid, self.driver))
        config = cri.PodSandboxConfig(
            metadata=cri.PodSandboxMetadata(name=name, uid=uid, namespace=namespace, attempt=0),
            # no hostname: a host-network pod has no UTS namespace of its own to set one in (runc: "unable to set
            # hostname without a private UTS namespace")
            log_directory=str(log_dir), labels=labels,
            annotations={"kubernetes.io/config.source": "api", "kubernetes.io/config.seen": "2026-01-01T00:00:00Z"},
            linux=cri.LinuxPodSandboxConfig(
                cgroup_parent=cgroup_parent(qos, uid, self.driver),
                # host network: no CNI plugin is needed (kubelet does the same for hostNetwork pods)
                security_context=cri.LinuxSandboxSecurityContext(namespace_options=cri.NamespaceOption(
                    network=cri.NODE, pid=cri.CONTAINER, ipc=cri.POD))),
        )
        sandbox_id = self.runtime.RunPodSandbox(cri.RunPodSandboxRequest(config=config), timeout=60).pod_sandbox_id
        pod = Pod(name, namespace, uid, qos, sandbox_id, config)
        self.pods.append(pod)
        for container in containers:
            self.start_container(pod, container)
        return pod

    def start_container(self, pod: Pod, name: str, attempt: int = 0) -> Container:
        labels = {"io.kubernetes.pod.name": pod.name, "io.kubernetes.pod.namespace": pod.namespace,
                  "io.kubernetes.pod.uid": pod.uid, "io.kubernetes.container.name": name}
        resources = cri.LinuxContainerResources(cpu_shares=2 if pod.qos == "besteffort" else 102,
                                                memory_limit_in_bytes=256 << 20 if pod.qos == "guaranteed" else 0)
        config = cri.ContainerConfig(
            metadata=cri.ContainerMetadata(name=name, attempt=attempt),
            image=cri.ImageSpec(image=WORKLOAD_IMAGE),
            command=["/bin/sleep", "100000"],
            log_path=f"{name}/{attempt}.log",
            labels=labels,
            annotations={"io.kubernetes.container.restartCount": str(attempt),
                         "io.kubernetes.container.terminationMessagePath": "/dev/termination-log"},
            linux=cri.LinuxContainerConfig(
                resources=resources,
                security_context=cri.LinuxContainerSecurityContext(namespace_options=cri.NamespaceOption(
                    network=cri.NODE, pid=cri.CONTAINER, ipc=cri.POD))),
        )
        container_id = self.runtime.CreateContainer(cri.CreateContainerRequest(
            pod_sandbox_id=pod.sandbox_id, config=config, sandbox_config=pod.config), timeout=60).container_id
        self.runtime.StartContainer(cri.StartContainerRequest(container_id=container_id), timeout=60)
        container = Container(name, container_id, attempt)
        pod.containers.append(container)
        return container

    def restart_container(self, pod: Pod, name: str) -> Container:
        """What kubelet does when a container exits: stop and remove it, create the next attempt (a new id)."""
        old = pod.container(name)
        self.runtime.StopContainer(cri.StopContainerRequest(container_id=old.id, timeout=0), timeout=60)
        self.runtime.RemoveContainer(cri.RemoveContainerRequest(container_id=old.id), timeout=60)
        pod.containers.remove(old)
        return self.start_container(pod, name, old.attempt + 1)

    def remove_pod(self, pod: Pod) -> None:
        """StopPodSandbox then RemovePodSandbox, as kubelet does when a pod is deleted."""
        self.runtime.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod.sandbox_id), timeout=60)
        self.runtime.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod.sandbox_id), timeout=60)
        self.pods.remove(pod)

    def exec_sync(self, container_id: str, cmd: list[str]) -> Any:
        return self.runtime.ExecSync(cri.ExecSyncRequest(container_id=container_id, cmd=cmd, timeout=20), timeout=30)

    # ---- what the runtime answers ----

    def container_status(self, container_id: str) -> Any:
        return self.runtime.ContainerStatus(cri.ContainerStatusRequest(container_id=container_id, verbose=True),
                                            timeout=10)

    def sandbox_status(self, sandbox_id: str) -> Any:
        return self.runtime.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id, verbose=True),
                                             timeout=10)

    def container_pid(self, container_id: str) -> int:
        """The host PID of the container's main process: containerd's verbose ContainerStatus info."""
        return int(json.loads(self.container_status(container_id).info["info"])["pid"])

    def cgroups_path(self, container_id: str) -> str:
        """linux.cgroupsPath of the container's OCI spec, as the verbose ContainerStatus returns it."""
        info = json.loads(self.container_status(container_id).info["info"])
        return str(info["runtimeSpec"]["linux"]["cgroupsPath"])

    def owner(self, container_id: str) -> Owner:
        """Who owns container_id, as containerd answers: the container's name from ContainerStatus, its sandbox's
        name, namespace and UID from PodSandboxStatus (the sandbox id from the verbose ContainerStatus). kubelet's
        labels, which containerd keeps, must say the same."""
        status = self.container_status(container_id)
        sandbox = self.sandbox_status(json.loads(status.info["info"])["sandboxID"]).status
        labels = status.status.labels
        if (labels["io.kubernetes.pod.uid"], labels["io.kubernetes.container.name"]) != \
                (sandbox.metadata.uid, status.status.metadata.name):
            raise AssertionError(f"containerd's labels and metadata disagree: {dict(labels)}, {sandbox.metadata}")
        return Owner(sandbox.metadata.name, sandbox.metadata.namespace, status.status.metadata.name,
                     sandbox.metadata.uid, container_id)

    def remove_everything(self) -> list[str]:
        """Stops and removes every pod made here, then any other sandbox containerd lists (one a failed run
        left), and kubelet's log directories made here. Returns the errors."""
        errors: list[str] = []
        if self.channel is not None:
            for pod in list(self.pods):
                try:
                    self.remove_pod(pod)
                except grpc.RpcError as err:
                    errors.append(f"removing pod {pod.namespace}/{pod.name}: {err}")
            with contextlib.suppress(grpc.RpcError):
                for sandbox in self.runtime.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=10).items:
                    meta = sandbox.metadata
                    self._made_logs.append(Path(f"/var/log/pods/{meta.namespace}_{meta.name}_{meta.uid}"))
                    with contextlib.suppress(grpc.RpcError):
                        self.runtime.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=sandbox.id), timeout=60)
                        self.runtime.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=sandbox.id),
                                                      timeout=60)
        for log_dir in self._made_logs:
            shutil.rmtree(log_dir, ignore_errors=True)
            with contextlib.suppress(OSError):
                log_dir.parent.rmdir()  # /var/log/pods, when nothing else is in it
        return errors


class Containerd(Cri):
    """One containerd process with the CRI plugin; see the module docstring. Use as a context manager."""

    def __init__(self, *, driver: str = "cgroupfs") -> None:
        super().__init__(driver=driver)
        # Short: the socket path must fit a unix address (108 bytes).
        self.base = Path(tempfile.mkdtemp(prefix="gpc-cri-", dir="/tmp"))
        self.state = self.base / "state"  # seen as STATE_DIR inside containerd's mount namespace
        self.root = self.base / "root"
        self.socket = self.base / "containerd.sock"
        self.log = self.base / "containerd.log"
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self._made_state_dir = False  # whether STATE_DIR, the mount point, was created here
        self._made_cgroups: list[Path] = []  # cgroup directories to remove at the end, deepest last

    # ---- life ----

    def __enter__(self) -> Containerd:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        self.root.mkdir()
        self.state.mkdir()
        if not os.path.isdir(STATE_DIR):
            os.makedirs(STATE_DIR)
            self._made_state_dir = True
        config = self.base / "config.toml"
        config.write_text(config_toml(root=str(self.root), socket=str(self.socket), driver=self.driver,
                                      cni_dir=str(self.base / "cni")))
        script = f'mount --bind "{self.state}" {STATE_DIR} && exec containerd --config "{config}"'
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"containerd did not start:\n{self.log_tail()}")
            time.sleep(0.1)
        self.connect(str(self.socket))
        try:
            self.wait_ready(deadline, alive=lambda: self.proc is not None and self.proc.poll() is None)
        except RuntimeError as err:
            raise RuntimeError(f"{err}:\n{self.log_tail()}") from None
        self.import_images(self.base, str(self.socket))

    def nsenter_mount(self) -> list[str]:
        """The command prefix that runs a command in containerd's mount namespace (its /run/containerd)."""
        if self.proc is None:
            raise RuntimeError("containerd is not running")
        return ["nsenter", f"--mount=/proc/{self.proc.pid}/ns/mnt", "--"]

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # ---- cleanup ----

    def _note_cgroup(self, parent: str) -> None:
        """Remembers the pod cgroup kubelet would own (and its QoS parents, where this run creates them) in every
        mounted hierarchy, to remove at the end: runc removes the container's own cgroup, not its parents."""
        if self.driver == "systemd":
            return  # systemd removes the slices it made once they are empty
        parts = Path(parent).parts[1:]
        for mount in cgroup_mounts():
            for depth in range(1, len(parts) + 1):
                path = mount.joinpath(*parts[:depth])
                if not path.exists() and path not in self._made_cgroups:
                    self._made_cgroups.append(path)

    def close(self) -> None:
        errors = self.remove_everything()
        if self.channel is not None:
            self.channel.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._kill_leftovers()
        self._unmount_under(self.base)
        for path in reversed(self._made_cgroups):
            try:
                path.rmdir()
            except FileNotFoundError:
                pass
            except OSError as err:
                errors.append(f"cgroup {path}: {err}")
        if self._made_state_dir:
            with contextlib.suppress(OSError):
                os.rmdir(STATE_DIR)  # only when empty: nothing else came to use it meanwhile
        shutil.rmtree(self.base, ignore_errors=True)
        if errors:
            raise RuntimeError("cleanup: " + "; ".join(errors))

    def _kill_leftovers(self) -> None:
        """Container processes and shims still alive after containerd went (a failed StopPodSandbox): the tasks'
        init PIDs under the state dir, then the shims that name this containerd's socket."""
        tasks = self.state / TASKS
        if tasks.is_dir():
            for task in tasks.iterdir():
                with contextlib.suppress(OSError, ValueError):
                    os.kill(int((task / "init.pid").read_text()), signal.SIGKILL)
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmdline[0].endswith(b"containerd-shim-runc-v2") and str(self.socket).encode() in cmdline:
                with contextlib.suppress(OSError):
                    os.kill(int(entry.name), signal.SIGKILL)

    @staticmethod
    def _unmount_under(directory: Path) -> None:
        prefix = str(directory).rstrip("/") + "/"
        mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
        for mount in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
            subprocess.run(["umount", "-l", mount], check=False, capture_output=True)


def cgroup_mounts() -> list[Path]:
    """Every mounted cgroup hierarchy (v1 controllers, name=systemd, the unified one)."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split(" - ")
        if len(fields) == 2 and fields[1].split()[0] in ("cgroup", "cgroup2"):
            out.append(Path(line.split()[4]))
    return out


# ---- the pods the tests make, on the host (tests/test_runtime_containerd.py) or in a guest (molecule/cri) ----

CHILD_SECONDS = "7771"  # the forked child's sleep, to find it among the host's processes


def child_pid(parent: int) -> Optional[int]:
    """The PID of the `sleep CHILD_SECONDS` in the same cgroup as parent, the container's main process."""
    cgroup = Path(f"/proc/{parent}/cgroup").read_text()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == parent:
            continue
        try:
            if (entry / "cmdline").read_bytes().split(b"\0")[:2] == [b"sleep", CHILD_SECONDS.encode()] and \
                    (entry / "cgroup").read_text() == cgroup:
                return int(entry.name)
        except OSError:
            continue
    return None


def fork_child(client: Cri, container_id: str) -> int:
    """Runs `sh -c 'sleep ... &'` in the container (CRI ExecSync): the shell exits, its child lives on in the
    container. Returns the child's PID."""
    response = client.exec_sync(container_id, ["/bin/sh", "-c", f"sleep {CHILD_SECONDS} </dev/null >/dev/null 2>&1 &"])
    if response.exit_code != 0:
        raise RuntimeError(f"ExecSync: {response.stderr!r}")
    parent = client.container_pid(container_id)
    deadline = time.monotonic() + 10
    while (pid := child_pid(parent)) is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no forked child in the cgroup of {parent}")
        time.sleep(0.1)
    return pid


@dataclass
class Cluster:
    client: Cri
    trainer: Pod  # burstable, one container, with a child process forked in it
    server: Pod  # best-effort
    pair: Pod  # guaranteed, two containers
    child: int

    @property
    def pods(self) -> list[Pod]:
        return [self.trainer, self.server, self.pair]

    def pids(self) -> dict[int, str]:
        """Every container's main process (PID -> container id), and the forked child."""
        out = {self.client.container_pid(c.id): c.id for pod in self.pods for c in pod.containers}
        out[self.child] = self.trainer.container("main").id
        return out


def make_cluster(client: Cri) -> Cluster:
    """A pod of each QoS class, one of them with two containers, and a child forked in a container."""
    trainer = client.run_pod("trainer", "ml", str(uuidlib.uuid4()), "burstable", ["main"])
    server = client.run_pod("server", "serving", str(uuidlib.uuid4()), "besteffort", ["server"])
    pair = client.run_pod("pair", "ml", str(uuidlib.uuid4()), "guaranteed", ["main", "sidecar"])
    return Cluster(client, trainer, server, pair, fork_child(client, trainer.container("main").id))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """For a containerd that runs as a service (molecule/cri): `images WORKDIR` imports the images, `pods OUT`
    makes the cluster and writes, per PID, the owner labels containerd answers, the container's recorded
    cgroupsPath and the process's /proc cgroup; `remove` removes every pod."""
    parser = argparse.ArgumentParser(prog="python -m tests.support.realcri")
    parser.add_argument("--socket", default=f"{STATE_DIR}/containerd.sock")
    parser.add_argument("--driver", choices=("cgroupfs", "systemd"), default="systemd")
    parser.add_argument("action", choices=("images", "pods", "remove"))
    parser.add_argument("path", nargs="?", default="")
    args = parser.parse_args(argv)
    client = Cri(driver=args.driver)
    client.connect(args.socket)
    client.wait_ready(time.monotonic() + 60)
    if args.action == "images":
        client.import_images(Path(args.path), args.socket)
    elif args.action == "pods":
        cluster = make_cluster(client)
        answers = {str(pid): {"labels": client.owner(cid).labels, "container_id": cid,
                              "cgroups_path": client.cgroups_path(cid),
                              "cgroup": Path(f"/proc/{pid}/cgroup").read_text()}
                   for pid, cid in cluster.pids().items()}
        Path(args.path).write_text(json.dumps(answers, indent=1, sort_keys=True))
    else:
        errors = client.remove_everything()
        if errors:
            print("\n".join(errors), file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
