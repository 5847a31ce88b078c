"""Attribution end to end: the CLI in a subprocess, the stand-in NVML, a fake host tree with runtime metadata, and
a real gRPC pod-resources server on a unix socket in the test process."""

from __future__ import annotations

import time

import pytest

from tests.conftest import Host, Result
from tests.support.podsim import PodHost, pod_resources_server, static_pod_uid
from tests.support.simhost import GIB, Gpu, gpu_uuid, mig_instance, mig_uuid, proc, scenario, write_podman_store


def owner_of(result: Result, pid: int) -> dict[str, str]:
    (labels, _), = result.series("gpu_process_memory_bytes", pid=str(pid))
    return {k: labels[k] for k in ("pod", "namespace", "container", "owner_kind", "owner")}


def info_of(result: Result, pid: int) -> dict[str, str]:
    (labels, _), = result.series("gpu_process_info", pid=str(pid))
    return {k: labels[k] for k in ("pod", "namespace", "container")}


def unallocated(result: Result, pid: int) -> float:
    return result.value("gpu_process_unallocated", pid=str(pid))


def test_containerd_systemd_cgroup_v2(host: Host) -> None:
    """containerd 1.7 + kubelet systemd driver + cgroup v2 (kubeadm on Ubuntu 22.04)."""
    k8s = PodHost(host.tree)
    train = k8s.add_pod("ml", "train-0", containers=["pytorch", "sidecar"])
    train.containers[0].devices.append(("nvidia.com/gpu", [gpu_uuid(0)]))
    k8s.add_process(100, train)
    with pod_resources_server(host.socket, k8s.pods) as calls:
        result = host.run(scenario([Gpu(0, compute=[proc(100, 4 * GIB)])]))

    assert result.returncode == 0, result.stderr
    assert owner_of(result, 100) == {"pod": "train-0", "namespace": "ml", "container": "pytorch",
                                     "owner_kind": "pod", "owner": "ml/train-0"}
    assert info_of(result, 100) == {"pod": "train-0", "namespace": "ml", "container": "pytorch"}
    assert result.value("gpu_process_utilization", pid="100", pod="train-0", namespace="ml") == 0
    assert unallocated(result, 100) == 0
    assert result.value("gpu_proc_collector_pod_resources_up") == 1
    assert len(calls) == 1


def test_containerd_cgroupfs_cgroup_v1(host: Host) -> None:
    """containerd 1.6 + kubelet cgroupfs driver + cgroup v1 (older CentOS 7 era nodes)."""
    k8s = PodHost(host.tree, driver="cgroupfs", version=1)
    pod = k8s.add_pod("ml", "infer", qos="besteffort")
    pod.containers[0].devices.append(("nvidia.com/gpu", [gpu_uuid(0)]))
    k8s.add_process(110, pod)
    with pod_resources_server(host.socket, k8s.pods):
        result = host.run(scenario([Gpu(0, compute=[proc(110)])]))
    assert owner_of(result, 110)["pod"] == "infer"
    assert unallocated(result, 110) == 0


def test_crio_workload_under_crun_and_its_conmon(host: Host) -> None:
    """CRI-O 1.29 + crun (`.../crio-<id>.scope/container`) with conmon in `crio-conmon-<id>.scope`."""
    k8s = PodHost(host.tree, runtime="crio")
    pod = k8s.add_pod("vision", "detector")
    pod.containers[0].devices.append(("nvidia.com/gpu", [gpu_uuid(0)]))
    k8s.add_process(120, pod, crun=True)
    k8s.add_process(121, pod, comm="conmon", conmon=True)
    with pod_resources_server(host.socket, k8s.pods):
        result = host.run(scenario([Gpu(0, compute=[proc(120), proc(121, GIB // 8)])]))
    assert owner_of(result, 120)["container"] == "main"
    conmon = owner_of(result, 121)
    assert (conmon["pod"], conmon["container"], conmon["owner_kind"]) == ("detector", "", "pod")


def test_cri_dockerd(host: Host) -> None:
    """cri-dockerd 0.3 on docker 24, systemd driver: kubelet labels in config.v2.json."""
    k8s = PodHost(host.tree, runtime="docker")
    pod = k8s.add_pod("legacy", "render", qos="guaranteed")
    k8s.add_process(130, pod)
    result = host.run(scenario([Gpu(0, compute=[proc(130)])]))
    assert owner_of(result, 130) == {"pod": "render", "namespace": "legacy", "container": "main",
                                     "owner_kind": "pod", "owner": "legacy/render"}


def test_k3s_state_dir(host: Host) -> None:
    """k3s / RKE2: containerd's state under /run/k3s/containerd."""
    k8s = PodHost(host.tree, state_dir="run/k3s/containerd")
    pod = k8s.add_pod("edge", "yolo")
    k8s.add_process(140, pod)
    result = host.run(scenario([Gpu(0, compute=[proc(140)])]))
    assert owner_of(result, 140)["pod"] == "yolo"


def test_guaranteed_pod(host: Host) -> None:
    k8s = PodHost(host.tree)
    pod = k8s.add_pod("prod", "llm", qos="guaranteed")
    pod.containers[0].devices.append(("nvidia.com/gpu", [gpu_uuid(0)]))
    k8s.add_process(150, pod)
    with pod_resources_server(host.socket, k8s.pods):
        result = host.run(scenario([Gpu(0, compute=[proc(150)])]))
    assert owner_of(result, 150)["pod"] == "llm"
    assert unallocated(result, 150) == 0


def test_static_pod_with_a_32_hex_uid(host: Host) -> None:
    k8s = PodHost(host.tree)
    pod = k8s.add_pod("kube-system", "gpu-burn-node1", uid=static_pod_uid("manifest"))
    k8s.add_process(160, pod)
    result = host.run(scenario([Gpu(0, compute=[proc(160)])]))
    assert owner_of(result, 160)["pod"] == "gpu-burn-node1"


def test_mig_instance_allocated_through_a_mig_resource(host: Host) -> None:
    k8s = PodHost(host.tree)
    small = k8s.add_pod("ml", "small")
    small.containers[0].devices.append(("nvidia.com/mig-1g.10gb", [mig_uuid(0, 2)]))
    k8s.add_process(170, small)
    instances = [mig_instance(0, slot=0, gi=1, ci=0, profile="3g.40gb", total_gib=40),
                 mig_instance(0, slot=2, gi=9, ci=0, profile="1g.10gb", total_gib=10, compute=[proc(170, 2 * GIB)])]
    with pod_resources_server(host.socket, k8s.pods):
        result = host.run(scenario([Gpu(0, mig=instances)]))
    assert result.value("gpu_process_count", gpu="0_9_0") == 1
    assert info_of(result, 170) == {"pod": "small", "namespace": "ml", "container": "main"}
    assert unallocated(result, 170) == 0


def test_three_pods_time_slicing_one_gpu_each_get_their_own_series(host: Host) -> None:
    k8s = PodHost(host.tree)
    pods = []
    for n in range(3):
        pod = k8s.add_pod("shared", f"notebook-{n}")
        pod.containers[0].devices.append(("nvidia.com/gpu.shared", [f"{gpu_uuid(0)}::{n}"]))
        k8s.add_process(180 + n, pod)
        pods.append(pod)
    samples = [{"pid": 180 + n, "age_s": 1, "sm": 10 * (n + 1)} for n in range(3)]
    with pod_resources_server(host.socket, k8s.pods):
        result = host.run(scenario([Gpu(0, compute=[proc(180 + n, (n + 1) * GIB) for n in range(3)],
                                        samples=samples)]))
    assert result.value("gpu_process_count", gpu="0") == 3
    for n in range(3):
        assert owner_of(result, 180 + n)["pod"] == f"notebook-{n}"
        assert result.value("gpu_process_utilization", pod=f"notebook-{n}") == 10 * (n + 1)
        assert result.value("gpu_process_memory_bytes", pod=f"notebook-{n}") == (n + 1) * GIB
        assert unallocated(result, 180 + n) == 0
    assert len(result.series("gpu_process_info")) == 3


def test_a_pod_on_a_gpu_it_was_not_allocated(host: Host) -> None:
    """NVIDIA_VISIBLE_DEVICES=all in a pod that asked for GPU 0 (or none) and runs on GPU 1."""
    k8s = PodHost(host.tree)
    honest = k8s.add_pod("ml", "honest")
    honest.containers[0].devices.append(("nvidia.com/gpu", [gpu_uuid(0)]))
    sneaky = k8s.add_pod("ml", "sneaky")
    sneaky.containers[0].devices.append(("nvidia.com/gpu", [gpu_uuid(0)]))
    stowaway = k8s.add_pod("ml", "stowaway")  # asked for no GPU at all
    k8s.add_process(190, honest)
    k8s.add_process(191, sneaky)
    k8s.add_process(192, stowaway)
    with pod_resources_server(host.socket, k8s.pods):
        result = host.run(scenario([Gpu(0, compute=[proc(190)]), Gpu(1, compute=[proc(191), proc(192)])]))
    assert unallocated(result, 190) == 0
    assert result.value("gpu_process_unallocated", pid="191", pod="sneaky", gpu="1", gpu_uuid=gpu_uuid(1)) == 1
    assert unallocated(result, 192) == 1


def test_host_process_and_slurm_job_on_gpus(host: Host) -> None:
    k8s = PodHost(host.tree)
    pod = k8s.add_pod("ml", "owner")
    pod.containers[0].devices.append(("nvidia.com/gpu", [gpu_uuid(0)]))
    host.tree.add_process(200, "nvidia-smi", cgroup="0::/user.slice/user-1000.slice/session-4.scope\n")
    host.tree.add_process(201, "python", cgroup="0::/system.slice/slurmstepd.scope/job_4242/step_0/user/task_0\n")
    with pod_resources_server(host.socket, k8s.pods):
        result = host.run(scenario([Gpu(0, compute=[proc(200)]), Gpu(1, compute=[proc(201)])]))
    assert owner_of(result, 200) == {"pod": "", "namespace": "", "container": "", "owner_kind": "host",
                                     "owner": "user-1000"}
    assert unallocated(result, 200) == 1  # a host process on a GPU kubelet handed to a pod
    assert owner_of(result, 201)["owner_kind"] == "slurm"
    assert owner_of(result, 201)["owner"] == "job_4242/step_0"
    assert result.series("gpu_process_unallocated", pid="201") == []


def test_systemd_service(host: Host) -> None:
    host.tree.add_process(210, "ollama", cgroup="0::/system.slice/ollama.service\n")
    result = host.run(scenario([Gpu(0, compute=[proc(210)])]))
    assert owner_of(result, 210)["owner_kind"] == "systemd"
    assert owner_of(result, 210)["owner"] == "ollama.service"


def test_pod_resources_socket_missing_still_attributes_from_local_files(host: Host) -> None:
    k8s = PodHost(host.tree)
    k8s.add_process(220, k8s.add_pod("ml", "train"))
    result = host.run(scenario([Gpu(0, compute=[proc(220)])]))
    assert result.returncode == 0
    assert owner_of(result, 220)["pod"] == "train"
    assert result.value("gpu_proc_collector_pod_resources_up") == 0
    assert result.series("gpu_process_unallocated") == []  # unknown, so not claimed either way
    assert "no socket at" in result.stderr


def test_server_hanging_past_the_deadline(host: Host) -> None:
    k8s = PodHost(host.tree)
    k8s.add_process(230, k8s.add_pod("ml", "train"))
    with pod_resources_server(host.socket, k8s.pods, behaviour="hang"):
        started = time.monotonic()
        result = host.run(scenario([Gpu(0, compute=[proc(230)])]), "--pod-resources-timeout", "1")
        elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert elapsed < 8
    assert owner_of(result, 230)["pod"] == "train"
    assert result.value("gpu_proc_collector_pod_resources_up") == 0
    assert "DEADLINE_EXCEEDED" in result.stderr


@pytest.mark.parametrize(("behaviour", "message"), [("unimplemented", "UNIMPLEMENTED"), ("garbage", "List failed"),
                                                    ("huge", "RESOURCE_EXHAUSTED")])
def test_server_answers_that_are_no_answer(host: Host, behaviour: str, message: str) -> None:
    k8s = PodHost(host.tree)
    k8s.add_process(240, k8s.add_pod("ml", "train"))
    with pod_resources_server(host.socket, k8s.pods, behaviour=behaviour):
        result = host.run(scenario([Gpu(0, compute=[proc(240)])]))
    assert result.returncode == 0, result.stderr
    assert owner_of(result, 240)["pod"] == "train"
    assert result.value("gpu_proc_collector_pod_resources_up") == 0
    assert message in result.stderr


def test_corrupt_config_json_is_a_counted_miss_and_the_pod_logs_still_name_the_pod(host: Host) -> None:
    k8s = PodHost(host.tree)
    pod = k8s.add_pod("ml", "train")
    k8s.write_metadata(pod, pod.containers[0]).write_text('{"annotations": {"io.kubernetes.cri.sandbox-na')
    k8s.add_process(250, pod)
    result = host.run(scenario([Gpu(0, compute=[proc(250)])]))
    assert result.returncode == 0
    assert owner_of(result, 250)["pod"] == "train"
    assert owner_of(result, 250)["container"] == "main"  # the only container directory in its log dir
    assert result.value("gpu_proc_collector_metadata_misses", reason="corrupt") == 1
    assert "not JSON" in result.stderr


def test_no_metadata_anywhere_leaves_the_pod_uid_as_owner(host: Host) -> None:
    k8s = PodHost(host.tree)
    pod = k8s.add_pod("ml", "ghost", write_metadata=False)
    for d in (host.tree.root / "var/log/pods").iterdir():
        for c in d.iterdir():
            for f in c.iterdir():
                f.unlink()
            c.rmdir()
        d.rmdir()
    k8s.add_process(260, pod)
    result = host.run(scenario([Gpu(0, compute=[proc(260)])]))
    assert owner_of(result, 260) == {"pod": "", "namespace": "", "container": "", "owner_kind": "pod",
                                     "owner": pod.uid}
    assert result.value("gpu_proc_collector_metadata_misses", reason="not_found") == 1


def test_label_prefix_renames_the_kubernetes_labels_of_native_metrics_only(host: Host) -> None:
    k8s = PodHost(host.tree)
    k8s.add_process(270, k8s.add_pod("ml", "train"))
    result = host.run(scenario([Gpu(0, compute=[proc(270)])]), "--label-prefix", "k8s_")
    (labels, _), = result.series("gpu_process_memory_bytes", pid="270")
    assert (labels["k8s_pod"], labels["k8s_namespace"], labels["k8s_container"]) == ("train", "ml", "main")
    assert "pod" not in labels
    assert info_of(result, 270)["pod"] == "train"  # the compatible metrics keep their names


def test_plain_docker_container(host: Host) -> None:
    """docker 24 with the systemd cgroup driver, no Kubernetes: the container's name from config.v2.json."""
    cid = "d" * 64
    host.tree.write(f"var/lib/docker/containers/{cid}/config.v2.json",
                    '{"ID": "' + cid + '", "Name": "/comfyui", "Config": {"Labels": {}}}')
    host.tree.add_process(280, "python3", cgroup=f"0::/system.slice/docker-{cid}.scope\n")
    host.tree.add_process(281, "python3", cgroup=f"0::/system.slice/docker-{'e' * 64}.scope\n")  # no config file
    result = host.run(scenario([Gpu(0, compute=[proc(280), proc(281)])]))
    assert owner_of(result, 280) == {"pod": "", "namespace": "", "container": "", "owner_kind": "docker",
                                     "owner": "comfyui"}
    assert owner_of(result, 281)["owner"] == "e" * 12


def test_podman_containers_rootful_and_rootless_get_their_names(host: Host) -> None:
    """podman 4 with Quadlet (--cgroups=split) as root, and a rootless user's container: names from
    containers/storage's containers.json, as docker owners get theirs from config.v2.json."""
    rootful, rootless = "a1" * 32, "b2" * 32
    write_podman_store(host.tree, {rootful: "vllm"})
    host.tree.write("etc/passwd", "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/bash\n")
    write_podman_store(host.tree, {rootless: "notebook"}, root="home/alice/.local/share/containers/storage")
    host.tree.add_process(290, "python3", cgroup=f"0::/system.slice/vllm.service/libpod-payload-{rootful}\n")
    host.tree.add_process(291, "python3", cgroup="0::/user.slice/user-1000.slice/user@1000.service/user.slice/"
                          f"libpod-{rootless}.scope/container\n")
    result = host.run(scenario([Gpu(0, compute=[proc(290), proc(291)])]))
    assert owner_of(result, 290) == {"pod": "", "namespace": "", "container": "", "owner_kind": "podman",
                                     "owner": "vllm"}
    assert owner_of(result, 291)["owner"] == "notebook"
    assert owner_of(result, 291)["owner_kind"] == "podman"


def test_a_container_named_once_is_not_read_again_but_a_new_one_is(host: Host) -> None:
    """The pod of a container id never changes: the next run takes it from the state instead of reading and
    parsing the runtime's bundle again (tens of KiB each on a real node). Here the bundle is made unreadable after
    the first run: the second still names the pod, and counts no miss. A container the first run did not see is
    read from its files."""
    k8s = PodHost(host.tree)
    train = k8s.add_pod("ml", "train-0")
    k8s.add_process(300, train)
    first = host.run(scenario([Gpu(0, compute=[proc(300, GIB)])]))
    assert info_of(first, 300)["pod"] == "train-0"
    for bundle in (host.tree.root / "run/containerd/io.containerd.runtime.v2.task/k8s.io").glob("*/config.json"):
        bundle.write_text("{corrupt")
    other = k8s.add_pod("ml", "eval-0")
    k8s.add_process(301, other)
    second = host.run(scenario([Gpu(0, compute=[proc(300, GIB), proc(301, GIB)])]))
    assert info_of(second, 300) == {"pod": "train-0", "namespace": "ml", "container": "main"}
    assert info_of(second, 301) == {"pod": "eval-0", "namespace": "ml", "container": "main"}
    assert second.value("gpu_proc_collector_metadata_misses", reason="corrupt") == 0
