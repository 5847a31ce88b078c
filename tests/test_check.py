"""`gpu-proc-collector --check`: the real CLI in a subprocess, against the stand-in NVML and fake host trees."""

from __future__ import annotations

import fcntl
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Host, Result, mounted_tmpfs
from tests.support.podsim import PodHost, pod_resources_server
from tests.support.promstack import LOOPBACK, free_port, processes, start_node_exporter
from tests.support.simhost import Gpu, compute_instance, gpu_instance, gpu_uuid, scenario

H100 = "NVIDIA H100 80GB HBM3"
FLAG = "--collector.textfile.directory"
NOT_WRITABLE = "is not writable: Read-only file system"


def two_gpus(**gpu0: Any) -> dict[str, Any]:
    """GPU 0 whole, GPU 1 in MIG mode with two compute instances of one GPU instance."""
    mig = [compute_instance(1, slot=0, gi=1, ci=0, profile="1c.3g.40gb"),
           compute_instance(1, slot=1, gi=1, ci=1, profile="2c.3g.40gb")]
    return scenario([Gpu(0, **gpu0), Gpu(1, mig=mig, gpu_instances=[gpu_instance(1, total_gib=40)])])


def check(host: Host, document: dict[str, Any], *args: str) -> Result:
    return host.run(document, "--check", *args)


def lines(result: Result) -> list[str]:
    return result.stdout.splitlines()


def node_exporter(host: Host, *args: str, pid: int = 900, argv0: str = "/usr/bin/prometheus-node-exporter") -> None:
    """A node_exporter as the host's /proc shows it, listening where nothing answers (a port just closed)."""
    listen = f"--web.listen-address={LOOPBACK}:{free_port()}"
    host.tree.add_process(pid, os.path.basename(argv0)[:15], cmdline=[argv0, listen, *args])


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path / "ro", "size=1m,ro") as d:
        yield d


@pytest.mark.slow
def test_a_healthy_host_passes_and_leaves_a_running_service_alone(host: Host) -> None:
    pods = PodHost(host.tree)
    pod = pods.add_pod("ml", "trainer")
    pod.containers[0].devices.append(("nvidia.com/gpu", [gpu_uuid(0)]))
    pods.add_pod("ml", "no-gpu")
    host.state_dir.mkdir()
    last = b"# HELP gpu_proc_collector_up 1 if the run succeeded\n# TYPE gpu_proc_collector_up gauge\n" \
        b"gpu_proc_collector_up 1\n"
    host.prom.write_bytes(last)  # the service's last file
    lock = (host.state_dir / "lock").open("a")
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the long-running service holds the run lock

    with processes(host.base / "logs") as procs, pod_resources_server(host.socket, pods.pods) as calls:
        address = start_node_exporter(procs, host.textfile_dir)  # the real one, reading the textfile directory
        exporter = procs.procs[-1][0]
        host.tree.show_real_process(exporter.pid)
        result = check(host, two_gpus(), "--expect-gpus", "2")
    lock.close()

    root = host.tree.root
    assert lines(result) == [
        "ok: NVML initialised, driver version 580.95.05",
        "ok: 2 GPUs and 2 MIG devices, as expected (--expect-gpus 2)",
        f"ok: GPU 0: {H100}, {gpu_uuid(0)}, MIG disabled",
        f"ok: GPU 1: {H100}, {gpu_uuid(1)}, MIG enabled, 2 MIG devices",
        "ok: persistence mode enabled on every GPU",
        f"ok: kubelet's pod-resources socket {host.socket} answered: 2 pods, 1 container with GPUs",
        f"ok: containerd directory {root}/run/containerd/io.containerd.runtime.v2.task/k8s.io readable (2 entries)",
        f"ok: kubelet pod log directory {root}/var/log/pods readable (2 entries)",
        f"ok: textfile directory {host.textfile_dir} is writable",
        f"ok: node_exporter reads {host.textfile_dir} ({FLAG} of the running {exporter.args[0]}, "
        f"PID {exporter.pid}): the textfile directory",
        f"ok: node_exporter at http://{address}/metrics serves the collector's series (gpu_proc_collector_up) with "
        "node_textfile_scrape_error 0",
        f"ok: state directory {host.state_dir} is writable",
    ], result.stderr
    assert result.returncode == 0
    assert len(calls) == 1
    # No metrics written, no state, no lock taken, and the probes removed.
    assert host.prom.read_bytes() == last
    assert sorted(p.name for p in host.textfile_dir.iterdir()) == ["gpu_processes.prom"]
    assert sorted(p.name for p in host.state_dir.iterdir()) == ["lock"]


def test_nvml_that_cannot_initialise_is_an_error_with_nvmls_message(host: Host) -> None:
    result = check(host, scenario([Gpu(0)], errors={"nvmlInitWithFlags": "NVML_ERROR_DRIVER_NOT_LOADED"}),
                   "--expect-gpus", "1")
    assert result.returncode == 1
    assert lines(result)[0] == "error: NVML init failed: Driver Not Loaded"
    assert [line for line in lines(result) if line.startswith("error:")] == [lines(result)[0]]
    assert f"ok: textfile directory {host.textfile_dir} is writable" in lines(result)  # the other checks ran


def test_persistence_mode_off_is_a_warning_and_not_supported_is_ok(host: Host) -> None:
    document = scenario([Gpu(0), Gpu(1, persistence_mode=0),
                         Gpu(2, errors={"nvmlDeviceGetPersistenceMode": "NVML_ERROR_NOT_SUPPORTED"})])
    result = check(host, document)
    assert result.returncode == 0, result.stdout
    assert lines(result)[5:8] == [
        "ok: persistence mode enabled on GPU 0",
        "warning: GPU 1: persistence mode is off: every timer run pays the driver's initialisation (seconds on some "
        "hosts); enable it (nvidia-persistenced, or nvidia-smi -pm 1)",
        "ok: GPU 2: persistence mode is not supported on this platform (nothing to enable)",
    ]
    assert not [line for line in lines(result) if line.startswith("error:")]


def test_a_gpu_count_other_than_expected_is_an_error(host: Host) -> None:
    result = check(host, two_gpus(), "--expect-gpus", "8")
    assert result.returncode == 1
    assert lines(result)[1] == "error: 2 GPUs and 2 MIG devices, expected 8 GPUs (--expect-gpus 8)"
    assert check(host, two_gpus(), "--expect-gpus", "2").returncode == 0
    none = check(host, scenario([]))
    assert (none.returncode, lines(none)[1]) == (0, "warning: 0 GPUs and 0 MIG devices: NVML lists no GPU")
    assert lines(check(host, scenario([]), "--expect-gpus", "0"))[1] == \
        "ok: 0 GPUs and 0 MIG devices, as expected (--expect-gpus 0)"


def test_gpus_outside_devices_are_listed_as_not_monitored(host: Host) -> None:
    result = check(host, two_gpus(), "--devices", "1,5")
    assert result.returncode == 0
    assert lines(result)[2:5] == [
        f"ok: GPU 0: {H100}, {gpu_uuid(0)}, MIG disabled, not monitored (--devices)",
        f"ok: GPU 1: {H100}, {gpu_uuid(1)}, MIG enabled, 2 MIG devices",
        "warning: --devices names GPUs this host does not have: 5",
    ]


def test_expect_gpus_is_valid_only_with_check(host: Host) -> None:
    result = host.run(two_gpus(), "--expect-gpus", "2")
    assert result.returncode == 2
    assert result.stderr.strip() == "gpu-proc-collector: error: --expect-gpus is valid only with --check"
    assert not host.prom.exists()


def test_a_lost_gpu_is_an_error(host: Host) -> None:
    document = scenario([Gpu(0), Gpu(1, errors={"*": "NVML_ERROR_GPU_IS_LOST"})])
    result = check(host, document)
    assert result.returncode == 1
    assert "error: GPU 1 cannot be read: GPU is lost" in lines(result)


@pytest.mark.parametrize("where", ["textfile", "state"])
def test_a_read_only_directory_is_an_error(host: Host, read_only_dir: Path, where: str) -> None:
    if where == "textfile":
        host.textfile_dir = read_only_dir
    else:
        host.state_dir = read_only_dir
    result = check(host, two_gpus())
    assert result.returncode == 1
    errors = [line for line in lines(result) if line.startswith("error:")]
    assert errors == [f"error: {where} directory {read_only_dir} {NOT_WRITABLE}"]


def test_a_state_directory_that_cannot_be_created_is_an_error(host: Host, read_only_dir: Path) -> None:
    host.state_dir = read_only_dir / "state"
    result = check(host, two_gpus())
    assert result.returncode == 1
    assert lines(result)[-1] == (f"error: state directory {host.state_dir} does not exist and cannot be created: "
                                 f"{read_only_dir} is not writable")
    host.state_dir = host.base / "new" / "state"
    assert lines(check(host, two_gpus()))[-1] == \
        f"ok: state directory {host.state_dir} does not exist yet: the first run creates it"


def test_a_missing_textfile_directory_is_an_error(host: Host) -> None:
    host.textfile_dir = host.base / "missing"
    result = check(host, two_gpus())
    assert result.returncode == 1
    assert f"error: textfile directory {host.textfile_dir} does not exist" in lines(result)


def node_exporter_line(result: Result) -> str:
    starts = ("node_exporter reads ", "cannot tell which directory node_exporter", "no textfile directory",
              "the running ")
    found = [line for line in lines(result) if line.split(": ", 1)[1].startswith(starts)]
    assert len(found) == 1, result.stdout
    return found[0]


@pytest.mark.parametrize("form", ["equals", "separate"])
def test_node_exporters_directory_from_its_running_command_line(host: Host, form: str) -> None:
    other = host.base / "other"
    args = [f"{FLAG}={other}"] if form == "equals" else [FLAG, str(other)]
    node_exporter(host, *args, pid=4321, argv0="/bin/node_exporter")
    host.tree.add_process(4000, "python3", cmdline=["python3", f"{FLAG}={host.textfile_dir}"])  # not node_exporter
    host.tree.write("etc/default/prometheus-node-exporter", f'ARGS="{FLAG}={host.textfile_dir}"\n')  # not read
    result = check(host, two_gpus())
    assert node_exporter_line(result) == (
        f"error: node_exporter reads {other} ({FLAG} of the running /bin/node_exporter, PID 4321), not the "
        f"textfile directory {host.textfile_dir}: it will not serve the metrics")
    assert result.returncode == 1


def test_node_exporter_in_a_container_reads_the_textfile_directory_through_its_own_root(host: Host) -> None:
    """A node_exporter pod with the host's directory mounted at /host/textfile: /proc/<pid>/root leads there."""
    container = host.base / "container-root"
    (container / "host").mkdir(parents=True)
    (container / "host" / "textfile").symlink_to(host.textfile_dir)  # what the bind mount shows
    node_exporter(host, f"{FLAG}=/host/textfile", pid=777, argv0="/bin/node_exporter")
    (host.tree.root / "proc" / "777" / "root").symlink_to(container)  # as the kernel's magic link
    assert node_exporter_line(check(host, two_gpus())) == (
        f"ok: node_exporter reads /host/textfile ({FLAG} of the running /bin/node_exporter, PID 777): the textfile "
        "directory")


def test_node_exporters_directory_from_debians_defaults_file(host: Host) -> None:
    """Where node_exporter is not running: what the package's unit will start it with."""
    host.tree.write("etc/default/prometheus-node-exporter",
                    "# Set the command-line arguments to pass to the server.\n"
                    f'ARGS="{FLAG}=/var/lib/prometheus/node-exporter"\n'
                    f"ARGS='--collector.systemd {FLAG}={host.textfile_dir}'  # the last one counts, as in sh\n")
    result = check(host, two_gpus())
    assert node_exporter_line(result) == (
        f"ok: node_exporter reads {host.textfile_dir} (ARGS in /etc/default/prometheus-node-exporter): the textfile "
        "directory")
    host.tree.write("etc/default/prometheus-node-exporter", f'ARGS="{FLAG} /srv/textfile"\n')
    assert node_exporter_line(check(host, two_gpus())) == (
        "warning: node_exporter reads /srv/textfile (ARGS in /etc/default/prometheus-node-exporter), not the "
        f"textfile directory {host.textfile_dir}: it will not serve the metrics")


def test_node_exporters_directory_is_debians_default_or_unknown(host: Host) -> None:
    result = check(host, two_gpus())
    assert node_exporter_line(result) == (
        "warning: cannot tell which directory node_exporter reads: no node_exporter is running, "
        f"/etc/default/prometheus-node-exporter sets no {FLAG}, and /var/lib/prometheus/node-exporter does not exist")
    assert result.returncode == 0
    (host.tree.root / "var/lib/prometheus/node-exporter").mkdir(parents=True)
    assert node_exporter_line(check(host, two_gpus())) == (
        "warning: node_exporter reads /var/lib/prometheus/node-exporter (the Debian package's default), not the "
        f"textfile directory {host.textfile_dir}: it will not serve the metrics")
    # The same directory under the host root (the collector in a container, the host mounted at --host-root).
    host.textfile_dir = host.tree.root / "var/lib/prometheus/node-exporter"
    assert node_exporter_line(check(host, two_gpus())) == (
        "ok: node_exporter reads /var/lib/prometheus/node-exporter (the Debian package's default): the textfile "
        "directory")


def test_without_a_textfile_directory_a_warning_names_node_exporters(host: Host) -> None:
    node_exporter(host, f"{FLAG}=/srv/textfile")
    result = host.run(two_gpus(), "--check", stdout=True, check_file=False)
    assert result.returncode == 0
    assert node_exporter_line(result) == (
        "warning: no textfile directory (--textfile-dir, or textfile_dir in --config): a run prints its metrics; "
        f"node_exporter reads /srv/textfile ({FLAG} of the running /usr/bin/prometheus-node-exporter, PID 900)")


def test_a_socket_that_refuses_is_a_warning_and_an_absent_one_is_ok(host: Host) -> None:
    result = check(host, two_gpus())
    assert f"ok: not a Kubernetes node: no pod-resources socket at {host.socket}" in lines(result)
    host.socket.parent.mkdir(parents=True)
    with socket.socket(socket.AF_UNIX) as stale:  # kubelet gone, its socket file left: connect() is refused
        stale.bind(str(host.socket))
    result = check(host, two_gpus())
    assert result.returncode == 0
    found = [line for line in lines(result) if "pod-resources" in line]
    assert len(found) == 1
    assert found[0].startswith(f"warning: kubelet's pod-resources socket {host.socket} does not answer: "
                               "List failed: UNAVAILABLE: ")
    assert "Connection refused" in found[0]


def test_a_runtime_directory_that_cannot_be_listed_is_an_error(host: Host) -> None:
    PodHost(host.tree, runtime="crio").add_pod("ml", "trainer")
    host.tree.write("var/lib/docker/containers", "")  # a file where docker's directory should be
    result = check(host, two_gpus())
    assert result.returncode == 1
    root = host.tree.root
    runtime = [line for line in lines(result) if " directory " + str(root) in line]
    assert runtime == [
        f"ok: CRI-O directory {root}/run/containers/storage/overlay-containers readable (1 entry)",
        f"error: docker directory {root}/var/lib/docker/containers cannot be listed: Not a directory",
        f"ok: kubelet pod log directory {root}/var/log/pods readable (1 entry)",
    ]


def test_no_runtime_directory_is_ok(host: Host) -> None:
    result = check(host, two_gpus())
    assert (f"ok: no container runtime directory under {host.tree.root} (containerd, k3s containerd, microk8s "
            "containerd, CRI-O, docker, podman, kubelet pod log): owners come from cgroups only") in lines(result)


def test_a_hung_nvml_call_ends_the_check_at_the_deadline(host: Host) -> None:
    document = two_gpus()
    document["delays"] = {"nvmlDeviceGetCount_v2": 30}
    started = time.monotonic()
    result = check(host, document, "--deadline", "1")
    assert time.monotonic() - started < 15
    assert result.returncode == 1
    assert lines(result) == ["error: the check did not finish within 1 s (--deadline): an NVML or kubelet call hangs"]
