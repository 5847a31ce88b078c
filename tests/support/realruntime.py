"""Real podman and Docker for the end-to-end tests (tests/test_real_runtimes.py): a busybox image built locally,
rootful and rootless podman, a Docker daemon started by hand, and a booted systemd guest for the systemd cgroup
managers. Everything they start is stopped and removed again, whatever happens: containers, the test's user,
the daemon, mounts, cgroups, the guest.

What each runtime writes, and why the options below are needed: docs/runtimes-and-cgroups.md, "What real podman
and Docker wrote".
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Optional

from tests.conftest import FAKE_NVML, REPO, promtool_check, samples

IMAGE = "localhost/gpc-busybox:test"
DOCKERD = "/usr/sbin/dockerd"
DOCKER = "/usr/bin/docker"  # Debian's client: another `docker` earlier on PATH may be any version
# Limits within the caller's own hard limits: podman asks for RLIMIT_NOFILE 1048576, which a root without
# CAP_SYS_RESOURCE (in a sandbox, in a guest) may not raise to ("setrlimit `RLIMIT_NOFILE`: Operation not permitted").
ULIMITS = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024")
# runc: crun 1.8 refuses a hybrid host whose unified hierarchy has a controller ("cgroups in hybrid mode not
# supported, drop all controllers from cgroupv2").
PODMAN_RUN = ("--runtime", "runc", "run", "-d", *ULIMITS)
CHILD = "sleep 3600 & wait"  # a shell that forks a child inside the container
GUEST_PACKAGES = "podman runc uidmap docker.io dbus-user-session"
GUEST_SH = REPO / "molecule" / "default" / "guest.sh"
HOST_ARCHIVES = "/var/cache/apt/archives"  # the packages the host downloaded, which the guest installs from
GUEST_ARCHIVES = "/run/gpc-host-archives"


def sh(*argv: str, timeout: float = 120, **kwargs: Any) -> str:
    """argv's stdout; a failure raises with its stderr."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: exit {proc.returncode}\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def image_tar(directory: Path) -> Path:
    """A root filesystem tar of Debian's static busybox with the applets the tests run."""
    busybox = Path("/bin/busybox")
    if not busybox.is_file():
        raise AssertionError("busybox-static is not installed (scripts/test.sh installs it)")
    root = directory / "rootfs"
    (root / "bin").mkdir(parents=True)
    shutil.copy2(busybox, root / "bin" / "busybox")
    for applet in ("sh", "sleep", "cat"):
        (root / "bin" / applet).symlink_to("busybox")
    tar = directory / "rootfs.tar"
    sh("tar", "-C", str(root), "-cf", str(tar), ".")
    tar.chmod(0o644)
    return tar


def first_child(pid: int) -> int:
    """The first child of pid (the process a container's shell forked)."""
    for _ in range(100):
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.05)
    raise AssertionError(f"process {pid} forked no child")


class Podman:
    """The podman CLI, as root or as a user (prefix: runuser ...), in the caller's cgroup."""

    def __init__(self, prefix: Sequence[str] = (), cwd: Optional[str] = None,
                 preexec: Optional[Callable[[], None]] = None) -> None:
        self.prefix = list(prefix)
        self.cwd = cwd
        self.preexec = preexec

    def __call__(self, *args: str, timeout: float = 120) -> str:
        return sh(*self.prefix, "podman", *args, timeout=timeout, cwd=self.cwd, preexec_fn=self.preexec)

    def inspect(self, name: str) -> dict[str, Any]:
        found: list[dict[str, Any]] = json.loads(self("inspect", name))
        return found[0]

    def remove_all(self) -> None:
        subprocess.run([*self.prefix, "podman", "rm", "-f", "-a", "-t", "0"], capture_output=True, timeout=120,
                       check=False, cwd=self.cwd)


class Collector:
    """The real CLI against the stand-in NVML, reading a real host (or a guest's root, /proc/<pid>/root, from inside
    the guest's cgroup namespace, as a collector running in the guest sees cgroups: seen from the host, the guest's
    cgroups sit below its nspawn cgroup, where attribution trusts no runtime's name)."""

    def __init__(self, host_root: str, state_dir: Path) -> None:
        self.host_root = host_root
        self.state_dir = state_dir
        leader = host_root.split("/")[2] if host_root.startswith("/proc/") else ""
        self.prefix = ["nsenter", f"--cgroup=/proc/{leader}/ns/cgroup"] if leader else []

    def env(self, pids: Sequence[int]) -> dict[str, str]:
        scenario = self.state_dir.parent / f"{self.state_dir.name}-scenario.json"
        processes = [{"pid": pid, "used_memory": 1 << 30} for pid in pids]
        scenario.write_text(json.dumps({"devices": [{"memory": {"total": 80 << 30, "used": len(pids) << 30},
                                                     "processes": {"compute": processes}}]}))
        return {**os.environ, "LD_LIBRARY_PATH": str(FAKE_NVML), "FAKE_NVML_SCENARIO": str(scenario)}

    def collect(self, pids: Sequence[int]) -> dict[int, dict[str, str]]:
        """pid -> labels of its gpu_process_memory_bytes series, after checking the run wrote a valid file that
        leaves no memory unattributed and missed no runtime file."""
        command = [*self.prefix, sys.executable, "-m", "collector", "--stdout", "--host-root", self.host_root,
                   "--state-dir", str(self.state_dir)]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=60,
                              env=self.env(pids), cwd=REPO, check=False)
        assert proc.returncode == 0, proc.stderr
        promtool_check(proc.stdout)
        metrics = samples(proc.stdout)
        assert all(value == 0 for _, value in metrics.get("gpu_device_unattributed_memory_bytes", [])), proc.stdout
        assert not [s for s in metrics.get("gpu_proc_collector_metadata_misses", []) if s[1]], proc.stdout
        return {int(labels["pid"]): labels for labels, _ in metrics.get("gpu_process_memory_bytes", [])}

    def check(self) -> list[str]:
        command = [*self.prefix, sys.executable, "-m", "collector", "--check", "--host-root", self.host_root,
                   "--state-dir", str(self.state_dir), "--textfile-dir", str(self.state_dir.parent)]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=60, env=self.env([]), cwd=REPO,
                              check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout.splitlines()


# ---- rootless podman: a real unprivileged user ----


@contextmanager
def unprivileged_user(name: str) -> Iterator[pwd.struct_passwd]:
    """A new user with a home and subordinate uid/gid ranges (newuidmap/newgidmap need them), removed afterwards
    with its home, after its containers and podman's pause process are gone."""
    sh("useradd", "--create-home", "--shell", "/bin/sh", name)
    try:
        user = pwd.getpwnam(name)
        for option in ("--add-subuids", "--add-subgids"):
            ranges = Path("/etc/subuid" if option == "--add-subuids" else "/etc/subgid").read_text()
            if not any(line.startswith(f"{name}:") for line in ranges.splitlines()):
                sh("usermod", option, "300000-365535", name)
        yield user
    finally:
        _end_user_processes(name)
        subprocess.run(["userdel", "--remove", name], capture_output=True, timeout=60, check=False)


def _end_user_processes(name: str) -> None:
    """Ends what rootless podman left running as the user (its pause process, a conmon), each by its id."""
    try:
        uid = pwd.getpwnam(name).pw_uid
    except KeyError:
        return
    def listed() -> list[int]:
        found = subprocess.run(["pgrep", "-u", str(uid)], capture_output=True, text=True, timeout=10, check=False)
        return [int(pid) for pid in found.stdout.split()]

    _end_each(listed)


def _end_each(listed: Callable[[], list[int]]) -> None:
    """Kills each process listed() names, by its id, until it names none."""
    for _ in range(50):
        pids = listed()
        if not pids:
            return
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def rootless_podman(user: pwd.struct_passwd, cgroups: Sequence[Path]) -> Podman:
    """podman as the user, its storage in its home (podman's default), its runtime directory in the home too (so
    removing the user removes it), started in cgroups (its login session's)."""
    runtime_dir = Path(user.pw_dir) / ".run"
    runtime_dir.mkdir(mode=0o700, exist_ok=True)
    os.chown(runtime_dir, user.pw_uid, user.pw_gid)
    prefix = ["runuser", "-u", user.pw_name, "--", "env", f"HOME={user.pw_dir}", f"XDG_RUNTIME_DIR={runtime_dir}"]
    return Podman(prefix, cwd=user.pw_dir, preexec=join_cgroups(cgroups))


@contextmanager
def login_session_cgroup(uid: int, session: str) -> Iterator[list[Path]]:
    """A login session's cgroup as pam_systemd makes it on a cgroup v1 host (name=systemd and unified
    hierarchies), for a process to move into; removed afterwards (once empty)."""
    made: list[Path] = []
    for mount in (Path("/sys/fs/cgroup/systemd"), Path("/sys/fs/cgroup/unified")):
        if (mount / "cgroup.procs").exists():
            group = mount / "user.slice" / f"user-{uid}.slice" / f"session-{session}.scope"
            group.mkdir(parents=True, exist_ok=True)
            made.append(group)
    try:
        yield made
    finally:
        for group in made:
            _end_cgroup_processes(group)
            for directory in (group, group.parent, group.parent.parent):
                try:
                    directory.rmdir()
                except OSError:
                    break


def _end_cgroup_processes(group: Path) -> None:
    """Ends the processes in group (what the test started in it: podman's pause process, conmon, containers), each
    by its id."""
    def listed() -> list[int]:
        try:
            return [int(pid) for pid in (group / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    _end_each(listed)


def join_cgroups(groups: Sequence[Path]) -> Callable[[], None]:
    """A preexec_fn that moves the child into groups."""
    def join() -> None:
        for group in groups:
            (group / "cgroup.procs").write_text(str(os.getpid()))
    return join


@contextmanager
def parent_cgroups(name: str) -> Iterator[None]:
    """Removes the parent cgroup a cgroupfs runtime makes at the root of each hierarchy (podman's libpod_parent,
    Docker's docker) and leaves behind, where the block made it."""
    mounts = [m for m in Path("/sys/fs/cgroup").iterdir() if (m / "cgroup.procs").exists()]
    new = [m / name for m in mounts if not (m / name).exists()]
    try:
        yield
    finally:
        for group in new:
            for directory, _, _ in sorted(os.walk(group), key=lambda entry: -len(entry[0])):  # deepest first
                with suppress(OSError):
                    os.rmdir(directory)


# ---- Docker: Debian's dockerd started by hand ----


class Docker:
    """A dockerd on its default data root (/var/lib/docker, where the collector reads config.v2.json), its socket,
    pid file and exec root in a temporary directory."""

    def __init__(self, run_dir: Path, cgroup_driver: str) -> None:
        self.run_dir = run_dir
        self.socket = run_dir / "docker.sock"
        self.cgroup_driver = cgroup_driver
        self.process: Optional[subprocess.Popen[bytes]] = None
        self.created_data_root = not os.path.exists("/var/lib/docker")

    def __call__(self, *args: str, timeout: float = 120) -> str:
        return sh(DOCKER, "-H", f"unix://{self.socket}", *args, timeout=timeout)

    def inspect(self, name: str) -> dict[str, Any]:
        found: list[dict[str, Any]] = json.loads(self("inspect", name))
        return found[0]

    def start(self) -> None:
        log = (self.run_dir / "dockerd.log").open("wb")
        self.process = subprocess.Popen(
            [DOCKERD, "--exec-root", str(self.run_dir / "exec"), "--pidfile", str(self.run_dir / "docker.pid"),
             "-H", f"unix://{self.socket}", "--bridge", "none", "--iptables=false", "--ip6tables=false",
             "--ip-masq=false", "--exec-opt", f"native.cgroupdriver={self.cgroup_driver}"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        for _ in range(120):
            if self.process.poll() is not None:
                raise AssertionError("dockerd exited:\n" + (self.run_dir / "dockerd.log").read_text()[-3000:])
            if self.socket.exists() and subprocess.run([DOCKER, "-H", f"unix://{self.socket}", "version"],
                                                       capture_output=True, check=False).returncode == 0:
                return
            time.sleep(0.25)
        raise AssertionError("dockerd did not answer in 30 s:\n" + (self.run_dir / "dockerd.log").read_text()[-3000:])

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            subprocess.run([DOCKER, "-H", f"unix://{self.socket}", "rm", "-f", "-v", *self._all()],
                           capture_output=True, timeout=120, check=False)
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        _end_pidfile(self.run_dir / "exec" / "containerd" / "containerd.pid")  # the containerd dockerd started
        if self.created_data_root:
            unmount_under(str(self.run_dir), "/var/lib/docker")
            shutil.rmtree("/var/lib/docker", ignore_errors=True)
        else:
            unmount_under(str(self.run_dir))

    def _all(self) -> list[str]:
        found = subprocess.run([DOCKER, "-H", f"unix://{self.socket}", "ps", "-a", "-q"], capture_output=True,
                               text=True, timeout=60, check=False)
        return found.stdout.split() if found.returncode == 0 else []


def _end_pidfile(pidfile: Path) -> None:
    """Ends the process pidfile names, if it still runs."""
    try:
        pid = int(pidfile.read_text())
    except (OSError, ValueError):
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        for _ in range(50):
            if not Path(f"/proc/{pid}").exists():
                return
            time.sleep(0.1)


@contextmanager
def docker_daemon(cgroup_driver: str = "cgroupfs") -> Iterator[Docker]:
    """A dockerd for the block; its run directory is short, for the unix sockets under it (108 bytes)."""
    if not os.access(DOCKERD, os.X_OK):
        raise AssertionError(f"{DOCKERD} is not installed (scripts/test.sh installs docker.io)")
    daemon = Docker(Path(tempfile.mkdtemp(prefix="gpc-docker-", dir="/tmp")), cgroup_driver)
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.stop()
        shutil.rmtree(daemon.run_dir, ignore_errors=True)


def unmount_under(*directories: str) -> None:
    """Unmounts every mount point at or under directories, deepest first (dockerd bind-mounts its data root on
    itself, to make it shared, and undoes it only when it shuts down cleanly)."""
    with open("/proc/self/mounts", encoding="utf-8") as f:
        points = [line.split()[1] for line in f]
    under = [p for p in points if any(p == d or p.startswith(d.rstrip("/") + "/") for d in directories)]
    for point in sorted(under, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


# ---- a booted systemd guest, for the systemd cgroup managers ----


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Guest:
    """A booted Debian guest (molecule/default/guest.sh) on the unified cgroup hierarchy, with podman and Docker
    installed in it; commands run over SSH as root. Its root as the collector sees it: /proc/<its PID 1>/root."""

    def __init__(self, name: str, work: Path) -> None:
        self.name = name
        self.work = work
        self.port = _free_port()
        self.key = work / "id_ed25519"
        self.settings = Path("/run/systemd/nspawn") / f"{name}.nspawn"

    def __call__(self, script: str, timeout: float = 300, check: bool = True) -> str:
        proc = subprocess.run(["ssh", "-q", "-i", str(self.key), "-p", str(self.port), "-o", "BatchMode=yes",
                               "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                               "root@127.0.0.1", "bash", "-euo", "pipefail", "-s"],
                              input=script, capture_output=True, text=True, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"in the guest: exit {proc.returncode}\n{script}\n{proc.stdout}{proc.stderr}")
        return proc.stdout

    @property
    def root(self) -> str:
        nspawn = int((Path(_guest_dir(self.name)) / "nspawn.pid").read_text())
        children = sh("pgrep", "-P", str(nspawn), timeout=10).split()
        return f"/proc/{children[0]}/root"

    def boot(self) -> None:
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key))
        # CAP_NET_ADMIN, which nspawn drops for a guest on the host's network, for the runtimes to bring up their
        # containers' loopback (docker "failed to create default sandbox: operation not permitted"; crun
        # "ioctl(SIOCSIFFLAGS): Operation not permitted"). The host's downloaded packages, to install from.
        self.settings.parent.mkdir(parents=True, exist_ok=True)
        self.settings.write_text(f"[Exec]\nCapability=CAP_NET_ADMIN\n[Files]\nBindReadOnly={HOST_ARCHIVES}:"
                                 f"{GUEST_ARCHIVES}\n" if os.path.isdir(HOST_ARCHIVES) else
                                 "[Exec]\nCapability=CAP_NET_ADMIN\n")
        # The unified hierarchy: on a v1 host nspawn mounts the guest's v1 controller hierarchies read-only
        # ("mkdir /sys/fs/cgroup/cpuset/machine.slice: read-only file system"). No system call filter: nspawn's
        # denies the session keyrings runc and crun make (runc "unable to join session keyring").
        env = {**os.environ, "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1", "SYSTEMD_SECCOMP": "0",
               "GPC_GUEST_RUNDIR": _RUNDIR}
        sh("bash", str(GUEST_SH), "create", self.name, str(self.port), f"{self.key}.pub", "bookworm", env=env,
           timeout=600)
        # No service starts at install: Debian's docker.service would make its bridge and iptables rules in the
        # host's network namespace, which the guest shares; the test starts dockerd by hand without them.
        # Storage: vfs, as overlayfs over the guest's overlay root is refused ("'overlay' is not supported over
        # overlayfs").
        install = ("DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "
                   f"-o Dpkg::Options::=--force-unsafe-io {GUEST_PACKAGES}")  # a throwaway root: no fsync
        self(f"""printf '#!/bin/sh\\nexit 101\\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
seed() {{
    [ -d {GUEST_ARCHIVES} ] || return 0
    apt-get install -qq --print-uris --no-install-recommends {GUEST_PACKAGES} | while read -r _ file _; do
        [ ! -f "{GUEST_ARCHIVES}/$file" ] || cp "{GUEST_ARCHIVES}/$file" /var/cache/apt/archives/
    done
}}
{{ seed && {install}; }} >/tmp/apt.log 2>&1 || {{ apt-get update -qq && seed && {install}; }}
printf '[storage]\\ndriver = "vfs"\\nrunroot = "/run/containers/storage"\\n' >/etc/containers/storage.conf
printf 'graphroot = "/var/lib/containers/storage"\\n' >>/etc/containers/storage.conf
""", timeout=600)

    def copy_in(self, source: Path, target: str) -> None:
        shutil.copyfile(source, f"{self.root}{target}")

    def destroy(self) -> None:
        """Kills the guest's PID 1 (and so everything in its PID namespace) before guest.sh stops nspawn: an
        orderly poweroff waits out the containers' stop timeouts, past guest.sh's patience, and a guest whose
        nspawn was killed keeps running, reparented to the host's init."""
        with suppress(OSError, ValueError, AssertionError, IndexError):
            leader = int(self.root.split("/")[2])
            os.kill(leader, signal.SIGKILL)
            for _ in range(100):
                if not Path(f"/proc/{leader}").exists():
                    break
                time.sleep(0.1)
        subprocess.run(["bash", str(GUEST_SH), "destroy", self.name], capture_output=True, timeout=120,
                       env={**os.environ, "GPC_GUEST_RUNDIR": _RUNDIR}, check=False)
        self.settings.unlink(missing_ok=True)


_RUNDIR = "/var/tmp/gpu-proc-collector-realruntimes"


def guest_cgroups(name: str) -> list[Path]:
    """The cgroups guest.sh made for the guest (under this process's own, as it makes them) that still exist."""
    found = []
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        mount = {"name=systemd": "/sys/fs/cgroup/systemd", "": "/sys/fs/cgroup/unified"}.get(controllers)
        group = Path(f"{mount}{path.rstrip('/')}/gpc-guest-{name}")
        if mount and group.exists():
            found.append(group)
    return found


def _guest_dir(name: str) -> str:
    return os.path.join(_RUNDIR, name)


@contextmanager
def booted_guest(name: str, work: Path) -> Iterator[Guest]:
    guest = Guest(name, work)
    try:
        guest.boot()
        yield guest
    finally:
        guest.destroy()
