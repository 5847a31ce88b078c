"""Starts podman and Docker containers in the molecule/cri guest and writes, per process, the owner labels the
runtime's own inspect answers for it, in the shape tests/support/realcri.py `pods` writes containerd's (verify.yml lists
both in the stand-in NVML; compare.py checks both). Run by verify.yml in the guest, as root, with the guest's
python3 (standard library only):

    runtimes.py start ANSWERS   build the busybox image, start the containers, write ANSWERS (JSON)
    runtimes.py remove          remove every container this script starts

The containers, each with the options docs/runtimes-and-cgroups.md section 9 explains (runc, a nofile limit
within the caller's, no network):
- `vllm`: rootful podman, systemd cgroup manager; a shell that forks a child (the child is listed too);
- `quadlet`: rootful podman with --cgroups=split, run by a transient unit with Delegate=yes;
- `notebook`: rootless podman of the unprivileged user prepare.yml made, started in a scope of that user's own
  systemd manager. On cgroup v1 rootless podman makes no cgroup of its own in the unified hierarchy: its
  container stays in the scope it was started in (`podman inspect` records that scope as its CgroupPath), and its
  conmon makes `<scope>/<id>` in name=systemd, which names the container; the unit reads its name from the user's
  own store (converge.yml lists the user in gpu_proc_collector_rootless_users);
- `trainer`: Docker, systemd cgroup driver (prepare.yml's daemon.json).
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

IMAGE = "localhost/gpc-busybox:test"
DOCKER_IMAGE = "gpc-busybox:test"
USER = "gpcuser"
WORK = Path("/opt/gpc-cri/runtimes")
RUN = ["--runtime", "runc", "run", "--network", "none", "--ulimit", "nofile=1024:1024", "--ulimit",
       "nproc=1024:1024"]
CHILD = "sleep 3600 & wait"


def sh(*argv: str, timeout: float = 180, check: bool = True) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)}: exit {proc.returncode}\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def as_user(*argv: str) -> list[str]:
    uid = pwd.getpwnam(USER).pw_uid
    return ["runuser", "-u", USER, "--", "env", f"HOME=/home/{USER}", f"XDG_RUNTIME_DIR=/run/user/{uid}",
            f"DBUS_SESSION_BUS_ADDRESS=unix:path=/run/user/{uid}/bus", *argv]


def image_tar() -> Path:
    """A root filesystem tar of Debian's static busybox, readable by the unprivileged user."""
    root = WORK / "rootfs"
    (root / "bin").mkdir(parents=True, exist_ok=True)
    busybox = root / "bin" / "busybox"
    busybox.write_bytes(Path("/bin/busybox").read_bytes())
    busybox.chmod(0o755)
    for applet in ("sh", "sleep", "cat"):
        link = root / "bin" / applet
        if not link.is_symlink():
            link.symlink_to("busybox")
    tar = WORK / "rootfs.tar"
    sh("tar", "-C", str(root), "-cf", str(tar), ".")
    tar.chmod(0o644)
    WORK.chmod(0o755)
    return tar


def wait_for_pid(inspect: list[str]) -> dict[str, Any]:
    for _ in range(300):
        found = subprocess.run(inspect, capture_output=True, text=True, timeout=60, check=False)
        if found.returncode == 0:
            answer: dict[str, Any] = json.loads(found.stdout)[0]
            if answer["State"]["Pid"]:
                return answer
        time.sleep(0.2)
    raise SystemExit(f"{' '.join(inspect)}: no running process in 60 s")


def first_child(pid: int) -> int:
    for _ in range(100):
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.05)
    raise SystemExit(f"process {pid} forked no child")


def answer(pid: int, owner: tuple[str, str], runtime: str, inspected: dict[str, Any], where: str) -> dict[str, Any]:
    """What compare.py reads for one process: the labels (owner: kind and name), the cgroup path the runtime
    recorded or implies (where), the process's cgroup file."""
    return {"labels": {"pod": "", "namespace": "", "container": "", "owner_kind": owner[0], "owner": owner[1]},
            "runtime": runtime, "id": inspected["Id"], "name": inspected["Name"].lstrip("/"),
            "cgroup_path": where, "cgroup": Path(f"/proc/{pid}/cgroup").read_text()}


def start(answers_path: str) -> int:
    WORK.mkdir(parents=True, exist_ok=True)
    tar = image_tar()
    sh("podman", "import", str(tar), IMAGE)
    sh("docker", "import", str(tar), DOCKER_IMAGE)
    sh(*as_user("podman", "import", str(tar), IMAGE))

    sh("podman", *RUN, "-d", "--name", "vllm", IMAGE, "sh", "-c", CHILD)
    # --cgroups=split: the unit's main process is podman itself (no -d), conmon and the container under the unit.
    sh("systemctl", "reset-failed", "gpc-split.service", check=False)  # a previous run's, failed once it ended
    sh("systemd-run", "--unit", "gpc-split.service", "-p", "Delegate=yes", "podman", *RUN, "--cgroups=split",
       "--name", "quadlet", IMAGE, "sleep", "3600")
    # Rootless: podman's default manager for a rootless user on cgroup v1 is cgroupfs, which it cannot use there
    # either; the scope is the user's manager's, as a login session's programs would be.
    sh(*as_user("systemd-run", "--user", "--scope", "--unit", "gpc-notebook", "--quiet", "podman",
                "--cgroup-manager", "cgroupfs", *RUN, "-d", "--name", "notebook", IMAGE, "sleep", "3600"))
    sh("docker", "run", "-d", "--network", "none", "--ulimit", "nofile=1024:1024", "--name", "trainer",
       DOCKER_IMAGE, "sleep", "3600")

    vllm = wait_for_pid(["podman", "inspect", "vllm"])
    quadlet = wait_for_pid(["podman", "inspect", "quadlet"])
    notebook = wait_for_pid(as_user("podman", "inspect", "notebook"))
    trainer = wait_for_pid(["docker", "inspect", "trainer"])
    answers: dict[str, Any] = {}
    for inspected in (vllm, quadlet):
        answers[str(inspected["State"]["Pid"])] = answer(
            inspected["State"]["Pid"], ("podman", inspected["Name"]), "podman", inspected,
            inspected["State"]["CgroupPath"])
    child = first_child(vllm["State"]["Pid"])
    answers[str(child)] = answer(child, ("podman", vllm["Name"]), "podman", vllm, vllm["State"]["CgroupPath"])
    # podman records the scope the container stayed in (its unified path); its conmon made one more cgroup in
    # the name=systemd hierarchy below it, named by the container's id (compare.py accepts either).
    answers[str(notebook["State"]["Pid"])] = answer(
        notebook["State"]["Pid"], ("podman", notebook["Name"]), "rootless podman", notebook,
        notebook["State"]["CgroupPath"])
    answers[str(trainer["State"]["Pid"])] = answer(
        trainer["State"]["Pid"], ("docker", trainer["Name"].lstrip("/")), "docker", trainer,
        f"/system.slice/docker-{trainer['Id']}.scope")
    Path(answers_path).write_text(json.dumps(answers, indent=1) + "\n")
    return 0


def remove() -> int:
    sh("podman", "rm", "-f", "-i", "-t", "0", "vllm", "quadlet", check=False)
    sh("systemctl", "stop", "gpc-split.service", check=False)
    sh("systemctl", "reset-failed", "gpc-split.service", check=False)  # failed once podman's container is gone
    sh(*as_user("podman", "rm", "-f", "-i", "-t", "0", "notebook"), check=False)
    sh("docker", "rm", "-f", "trainer", check=False)
    return 0


if __name__ == "__main__":
    os.chdir("/")  # the user's podman needs a working directory it may enter (verify.yml runs this from /root)
    if sys.argv[1:2] == ["start"] and len(sys.argv) == 3:
        sys.exit(start(sys.argv[2]))
    if sys.argv[1:] == ["remove"]:
        sys.exit(remove())
    sys.exit(__doc__)
