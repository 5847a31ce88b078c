"""MIG capability device nodes (docs/nvml-driver.md, "MIG capability nodes"): NVML reaches a MIG GPU or compute
instance through /dev/nvidia-caps/nvidia-cap<minor>, the minor named by the instance's access file under
/proc/driver/nvidia/capabilities. Where a node is missing, the unit cannot create it: `--check` and every run that
meets a MIG-enabled GPU say so, naming the nodes and the command that creates them. Against a simulated host tree."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import threading

from collector import nvml
from tests.conftest import Host, require_root
from tests.support.simhost import GIB, Gpu, mig_instance, proc, scenario
from tests.test_service import service, wait_for_writes

CAPS = "proc/driver/nvidia/capabilities"
# gpu0: GPU instance 1 with compute instance 0, GPU instance 2 with compute instance 0; the minors as a driver
# numbers them (/proc/driver/nvidia-caps/mig-minors).
ACCESS = {f"{CAPS}/gpu0/mig/gi1/access": 12, f"{CAPS}/gpu0/mig/gi1/ci0/access": 13,
          f"{CAPS}/gpu0/mig/gi2/access": 21, f"{CAPS}/gpu0/mig/gi2/ci0/access": 22}


def driver_files(host: Host) -> None:
    host.tree.write(f"{CAPS}/mig/config", "DeviceFileMinor: 1\nDeviceFileMode: 256\nDeviceFileModify: 1\n")
    for path, minor in ACCESS.items():
        host.tree.write(path, f"DeviceFileMinor: {minor}\nDeviceFileMode: 292\nDeviceFileModify: 1\n")


def make_nodes(host: Host, minors: list[int]) -> None:
    require_root("creating character device nodes in the simulated /dev")
    caps = host.tree.root / "dev" / "nvidia-caps"
    caps.mkdir(parents=True, exist_ok=True)
    for minor in minors:
        os.mknod(caps / f"nvidia-cap{minor}", stat.S_IFCHR | 0o444, os.makedev(511, minor))


def mig_gpu() -> Gpu:
    return Gpu(0, mig=[mig_instance(0, slot=0, gi=1, ci=0, profile="1g.10gb", total_gib=10,
                                    compute=[proc(1201, GIB)])])


def test_check_names_the_missing_nodes_and_how_to_create_them(host: Host) -> None:
    driver_files(host)
    make_nodes(host, [12, 22])
    (host.tree.root / "dev" / "nvidia-caps" / "nvidia-cap21").write_text("")  # a file, not a device: missing
    result = host.run(scenario([mig_gpu()]), "--check", stdout=True, check_file=False)
    assert result.returncode == 0, result.stdout  # a warning: the instances exist, the unit only cannot see them
    line = next(line for line in result.stdout.splitlines() if "MIG capability device node" in line)
    assert line.startswith("warning: 2 MIG capability device nodes are missing (/dev/nvidia-caps/nvidia-cap13, "
                           "/dev/nvidia-caps/nvidia-cap21)"), line
    assert "nvidia-modprobe -f /proc/driver/nvidia/capabilities/gpu0/mig/gi1/ci0/access" in line


def test_check_says_ok_when_every_node_is_there_and_nothing_without_mig(host: Host) -> None:
    driver_files(host)
    make_nodes(host, sorted(ACCESS.values()))
    result = host.run(scenario([mig_gpu()]), "--check", stdout=True, check_file=False)
    assert "ok: MIG capability device nodes present for 4 GPU or compute instances (/dev/nvidia-caps)" \
        in result.stdout.splitlines()
    shutil.rmtree(host.tree.root / "proc" / "driver")  # no MIG instance: nothing to say
    bare = host.run(scenario([Gpu(0)]), "--check", stdout=True, check_file=False)
    assert "MIG capability" not in bare.stdout


def test_a_run_on_a_mig_gpu_warns_once_with_the_missing_nodes(host: Host) -> None:
    driver_files(host)
    make_nodes(host, [12, 13, 21])
    host.tree.add_process(1201)
    result = host.run(scenario([mig_gpu()]))
    assert result.returncode == 0, result.stderr
    warned = [line for line in result.stderr.splitlines() if "MIG capability device node" in line]
    assert len(warned) == 1, result.stderr
    assert "1 MIG capability device node is missing (/dev/nvidia-caps/nvidia-cap22)" in warned[0]
    assert result.value("gpu_proc_collector_up") == 1

    make_nodes(host, [22])
    assert "MIG capability" not in host.run(scenario([mig_gpu()])).stderr
    # A GPU outside MIG mode costs no look at the driver's files.
    os.unlink(host.tree.root / "dev" / "nvidia-caps" / "nvidia-cap22")
    assert "MIG capability" not in host.run(scenario([Gpu(0, compute=[proc(1201)])])).stderr


def test_a_fifo_or_garbage_for_an_access_file_neither_blocks_nor_counts(host: Host) -> None:
    fifo = host.tree.root / CAPS / "gpu0" / "mig" / "gi3" / "access"
    fifo.parent.mkdir(parents=True)
    os.mkfifo(fifo)
    host.tree.write(f"{CAPS}/gpu0/mig/gi4/access", "DeviceFileMinor: " + "9" * 5000 + "\n")
    host.tree.write(f"{CAPS}/gpu0/mig/gi5/access", "\x00garbage")
    answer: list[tuple[int, list[nvml.MissingNode]]] = []
    reader = threading.Thread(target=lambda: answer.append(nvml.missing_capability_nodes(str(host.tree.root))),
                              daemon=True)
    reader.start()
    reader.join(10)
    assert answer == [(3, [])]  # three access files, none naming a node


def test_the_long_running_mode_warns_once_per_change_of_the_missing_nodes(host: Host) -> None:
    driver_files(host)
    make_nodes(host, [12, 13, 21])
    host.tree.add_process(1201)
    with service(host, scenario([mig_gpu()]), "--interval", "0.3") as (process, notes):
        notes.wait_for("READY=1")
        wait_for_writes(host, 3)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    assert len([line for line in stderr.splitlines() if "MIG capability device node" in line]) == 1, stderr
