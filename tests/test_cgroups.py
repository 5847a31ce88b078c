"""cgroup parsing: every path shape docs/runtimes-and-cgroups.md lists, and a property test over arbitrary text."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.cgroups import CgroupOwner, parse_cgroup

CID = "4f7c1f2d9a8b" + "0123456789abcdef" * 3 + "0123"
UID = "1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901"
UID_ = UID.replace("-", "_")
STATIC = "6d2e1f0c9b8a7d6e5f4a3b2c1d0e9f8a"


def pod(uid: str = UID, cid: str = CID, runtime: str = "containerd", qos: str = "burstable", **kw: str) -> CgroupOwner:
    return CgroupOwner(kind="pod", pod_uid=uid, container_id=cid, runtime=runtime, qos=qos, **kw)


CASES = {
    # containerd, systemd driver, cgroup v2 (dcgm-exporter pidmapper_test.go form)
    "containerd systemd v2 burstable": (
        f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope\n",
        pod()),
    "containerd systemd v2 guaranteed": (
        f"0::/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope\n", pod(qos="guaranteed")),
    "containerd systemd v1 besteffort": (
        "".join(f"{n}:{c}:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/"
                f"cri-containerd-{CID}.scope\n" for n, c in ((12, "memory"), (4, "cpu,cpuacct"), (1, "name=systemd")))
        + "0::/\n",
        pod(qos="besteffort")),
    "containerd cgroupfs v1 (dcgm-exporter test)": (
        f"11:devices:/kubepods/besteffort/pod{UID}/{CID}\n10:memory:/kubepods/besteffort/pod{UID}/{CID}\n",
        pod(runtime="", qos="besteffort")),
    "containerd cgroupfs v2 guaranteed": (f"0::/kubepods/pod{UID}/{CID}\n", pod(runtime="", qos="guaranteed")),
    "static pod 32-hex uid": (
        f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{STATIC}.slice/cri-containerd-{CID}.scope",
        pod(uid=STATIC)),
    "cri-o systemd with crun /container": (
        f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-{CID}.scope/container\n",
        pod(runtime="crio")),
    "cri-o cgroupfs": (f"0::/kubepods/burstable/pod{UID}/crio-{CID}\n", pod(runtime="crio")),
    "cri-o conmon is the supervisor": (
        f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-conmon-{CID}.scope\n",
        pod(runtime="crio", name="crio-conmon")),
    "cri-o conmon cgroupfs": (f"0::/kubepods/burstable/pod{UID}/crio-conmon-{CID}\n",
                              pod(runtime="crio", name="crio-conmon")),
    "cri-dockerd systemd": (f"0::/kubepods.slice/kubepods-pod{UID_}.slice/docker-{CID}.scope\n",
                            pod(runtime="docker", qos="guaranteed")),
    "cgroup namespace prefix": (
        f"0::/../../kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope\n", pod()),
    "kind nesting under kubelet.slice": (
        f"0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/"
        f"kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope\n", pod(qos="besteffort")),
    "pod cgroup without a container": (f"0::/kubepods.slice/kubepods-pod{UID_}.slice\n",
                                       pod(cid="", runtime="", qos="guaranteed")),
    "plain docker systemd": (f"0::/system.slice/docker-{CID}.scope\n",
                             CgroupOwner(kind="docker", container_id=CID, runtime="docker")),
    "plain docker cgroupfs v1": (f"9:memory:/docker/{CID}\n1:name=systemd:/docker/{CID}\n",
                                 CgroupOwner(kind="docker", container_id=CID, runtime="docker")),
    "podman": (f"0::/machine.slice/libpod-{CID}.scope/container\n",
               CgroupOwner(kind="podman", container_id=CID, runtime="podman")),
    "slurm v2 step": ("0::/system.slice/slurmstepd.scope/job_4242/step_0/user/task_0\n",
                      CgroupOwner(kind="slurm", name="job_4242/step_0")),
    "slurm v2 batch, multiple slurmd": ("0::/system.slice/gpu07_slurmstepd.scope/job_77/step_batch/user/task_0\n",
                                        CgroupOwner(kind="slurm", name="job_77/step_batch")),
    "slurm v1": ("10:devices:/slurm/uid_2101171/job_280678/step_interactive/task_0\n",
                 CgroupOwner(kind="slurm", name="job_280678/step_interactive")),
    "systemd service": ("0::/system.slice/ollama.service\n", CgroupOwner(kind="systemd", name="ollama.service")),
    "systemd service in a slice": ("0::/system.slice/inference.slice/vllm.service\n",
                                   CgroupOwner(kind="systemd", name="vllm.service")),
    "user session": ("0::/user.slice/user-1000.slice/session-3.scope\n", CgroupOwner(kind="host", name="user-1000")),
    "user service": ("0::/user.slice/user-1000.slice/user@1000.service/app.slice/jupyter.service\n",
                     CgroupOwner(kind="host", name="user-1000")),
    "init scope": ("0::/init.scope\n", CgroupOwner(kind="host")),
    "empty": ("", CgroupOwner(kind="host")),
}


@pytest.mark.parametrize(("text", "expected"), list(CASES.values()), ids=list(CASES))
def test_cgroup_shapes(text: str, expected: CgroupOwner) -> None:
    got = parse_cgroup(text)
    assert (got.kind, got.pod_uid, got.container_id, got.runtime, got.qos, got.name) == (
        expected.kind, expected.pod_uid, expected.container_id, expected.runtime, expected.qos, expected.name)


def test_hybrid_prefers_the_line_that_names_a_pod() -> None:
    text = ("0::/system.slice/containerd.service\n"
            f"4:memory:/kubepods/burstable/pod{UID}/{CID}\n")
    assert parse_cgroup(text).pod_uid == UID


_path_part = st.text(alphabet=st.sampled_from("abcdef0123456789-_.:/ slicepodscopekubesystem\n\\\x00é"), max_size=40)


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=400))
def test_arbitrary_text_never_raises(text: str) -> None:
    parse_cgroup(text)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["0", "1", "12", "x"]), st.sampled_from(["", "memory", "name=systemd"]),
                          _path_part), max_size=6))
def test_paths_without_kubepods_are_never_a_pod(lines: list[tuple[str, str, str]]) -> None:
    text = "\n".join(f"{h}:{c}:/{p}" for h, c, p in lines)
    owner = parse_cgroup(text)
    if "kubepods" not in text:
        assert owner.kind != "pod"
        assert owner.pod_uid == ""
