"""cgroup parsing: every layout of docs/runtimes-and-cgroups.md, cgroup files copied or adapted from other projects'
test fixtures (each says where from), negative cases, and property tests over arbitrary and cgroup-like text."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.attribution.cgroups import CgroupOwner, agrees, parse_cgroup, parse_roots, systemd_path
from collector.model import OWNER_KINDS, OwnerKind

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



# ---------------------------------------------------------------------------------------------------------------
# Layouts beyond the first release's: one test per layout, named after it.

CID2 = "d3d8ccf5cca91931c6285c1d7472c413dd5a7700fddc0aa9f89a9ac7008b003e"
UID2 = "2105e389-7471-476e-a50f-6074cef29bbd"
UID2_ = UID2.replace("-", "_")


def owner_fields(owner: CgroupOwner) -> tuple[str, ...]:
    return (owner.kind, owner.pod_uid, owner.container_id, owner.runtime, owner.qos, owner.name, owner.user_uid)


def same(text: str, expected: CgroupOwner) -> None:
    assert owner_fields(parse_cgroup(text)) == owner_fields(expected)


def container(kind: str, cid: str, runtime: str, user_uid: str = "") -> CgroupOwner:
    return CgroupOwner(kind=kind, container_id=cid, runtime=runtime, user_uid=user_uid)


def test_systemd_driver_verbatim_slice_prefix_id_containerd_v1() -> None:
    # neuvector share/system/cgroup_test.go TestK8sContainerd_v1_4_4 (containerd.io 1.4.4): kubelet's systemd
    # driver, runc driving cgroupfs, so "slice:cri-containerd:id" became a directory name, under containerd.service
    # on some controllers and at the root on others
    text = "".join(
        f"{n}:{c}:{'/system.slice/containerd.service' if under else ''}/kubepods-besteffort-pod{UID2_}.slice"
        f":cri-containerd:{CID2}\n"
        for n, c, under in ((11, "pids", True), (10, "freezer", False), (9, "perf_event", False),
                            (8, "cpu,cpuacct", True), (7, "cpuset", False), (6, "devices", True),
                            (5, "net_cls,net_prio", False), (4, "memory", True), (3, "hugetlb", False),
                            (2, "blkio", True), (1, "name=systemd", True)))
    same(text, pod(uid=UID2, cid=CID2, qos="besteffort"))


def test_systemd_driver_verbatim_without_slice_suffix_under_kuberuntime() -> None:
    # opentelemetry-go sdk/resource/container_test.go "with colon" (the line's leading space included)
    text = (" 13:name=systemd:/kuberuntime/containerd/kubepods-pod872d2066_00ef_48ea_a7d8_51b18b72d739:cri-containerd:"
            "e857a4bf05a69080a759574949d7a0e69572e27647800fa7faff6a05a8332aa1\n")
    same(text, pod(uid="872d2066-00ef-48ea-a7d8-51b18b72d739",
                   cid="e857a4bf05a69080a759574949d7a0e69572e27647800fa7faff6a05a8332aa1", qos="guaranteed"))


def test_systemd_driver_verbatim_on_cgroup_v2_line() -> None:
    # runc's cgroup v2 manager puts a relative cgroupsPath under the parent of its own cgroup
    # (opencontainers/cgroups fs2/defaultpath.go), so the shim in containerd.service lands in system.slice
    same(f"0::/system.slice/kubepods-burstable-pod{UID_}.slice:cri-containerd:{CID}\n", pod())
    same(f"0::/system.slice/containerd.service/kubepods-burstable-pod{UID_}.slice:cri-containerd:{CID}/container\n",
         pod())


def test_systemd_driver_verbatim_crio() -> None:
    # CRI-O's systemd manager: parent + ":crio:" + id (internal/config/cgmgr/systemd_linux.go), the parent being
    # kubelet's full slice path; written verbatim by a cgroupfs-driven runtime
    same(f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice:crio:{CID}\n",
         pod(runtime="crio"))
    same(f"1:name=systemd:/system.slice/crio.service/kubepods-besteffort-pod{UID_}.slice:crio:{CID}\n",
         pod(runtime="crio", qos="besteffort"))


def test_systemd_driver_verbatim_static_pod() -> None:
    # static pod UID and container id from containerd#4857 (etcd-k8smaster, kubeadm 1.20)
    static, cid = "89f4f2cb511c3b0b7e5272cff5ec37bf", "823b5a6d9aaa8da5c0ecda3e7cbcd6729673437965dc600ffcb0a2651960f945"
    same(f"4:memory:/system.slice/containerd.service/kubepods-burstable-pod{static}.slice:cri-containerd:{cid}\n",
         pod(uid=static, cid=cid))


def test_systemd_driver_verbatim_with_a_truncated_id_is_the_pod_only() -> None:
    same(f"0::/system.slice/containerd.service/kubepods-burstable-pod{UID}.slice:cri-containerd:1234567890abcdef\n",
         pod(cid="", runtime=""))


PODMAN_ID = "9687bac58d5c4d1606aa46af33d1a21c1d1652e0ac9fb3fc0fc86e3495f42869"


def test_podman_split_quadlet_payload() -> None:
    # podman --cgroups=split (Quadlet's default): <own cgroup>/libpod-payload-<id> (libpod getOCICgroupPath)
    same(f"0::/system.slice/vllm.service/libpod-payload-{PODMAN_ID}\n", container("podman", PODMAN_ID, "podman"))


def test_podman_split_conmon_is_the_unit() -> None:
    # conmon and rootlessport stay in the unit's runtime/ sub-cgroup: the unit is all the path says
    same("0::/system.slice/vllm.service/runtime\n", CgroupOwner(kind="systemd", name="vllm.service"))


def test_podman_split_under_user_manager() -> None:
    # rootless Quadlet: the unit runs under the user's systemd, app.slice
    text = f"0::/user.slice/user-1000.slice/user@1000.service/app.slice/redis.service/libpod-payload-{PODMAN_ID}\n"
    same(text, container("podman", PODMAN_ID, "podman", user_uid="1000"))


def test_podman_rootless_scope_under_user_manager() -> None:
    # rootless podman's default parent user.slice under user@<uid>.service (libpod SystemdDefaultRootlessCgroupParent)
    text = f"0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{PODMAN_ID}.scope/container\n"
    same(text, container("podman", PODMAN_ID, "podman", user_uid="1000"))


def test_podman_libpod_scope_with_and_without_scope() -> None:
    same(f"0::/machine.slice/libpod-{PODMAN_ID}.scope\n", container("podman", PODMAN_ID, "podman"))
    # the cgroupfs manager: CgroupfsDefaultCgroupParent /libpod_parent, leaf libpod-<id>
    same(f"7:memory:/libpod_parent/libpod-{PODMAN_ID}\n", container("podman", PODMAN_ID, "podman"))
    # a podman pod's slice (machine-libpod_pod_<pod id>.slice) with a member container
    same(f"0::/machine.slice/machine-libpod_pod_{CID}.slice/libpod-{PODMAN_ID}.scope\n",
         container("podman", PODMAN_ID, "podman"))


def test_podman_old_rootless_pid_scope() -> None:
    # podman 1.x rootless on cgroup v1: the container under podman-<pid>.scope in name=systemd
    # (falcosecurity/libs userspace/libsinsp/container_engine/docker/podman.cpp, detect_podman)
    text = ("4:memory:/user.slice\n"
            f"1:name=systemd:/user.slice/user-1000.slice/user@1000.service/user.slice/podman-4821.scope/{PODMAN_ID}\n")
    same(text, container("podman", PODMAN_ID, "podman", user_uid="1000"))


def test_podman_4_rootless_in_a_scope_of_the_users_manager_on_cgroup_v1() -> None:
    # podman 4.3 rootless on a hybrid host, started with `systemd-run --user --scope`: no cgroup of its own in the
    # unified hierarchy (the user's scope) or the v1 controllers (/), conmon's <scope>/<id> in name=systemd (seen
    # with real podman under the role's unit, docs/runtimes-and-cgroups.md section 11)
    scope = "/user.slice/user-1000.slice/user@1000.service/app.slice/gpc-notebook.scope"
    text = f"9:name=systemd:{scope}/{PODMAN_ID}\n4:memory:/\n0::{scope}\n"
    same(text, container("podman", PODMAN_ID, "podman", user_uid="1000"))


def test_podman_conmon_scope_is_not_the_container() -> None:
    same(f"0::/machine.slice/libpod-conmon-{PODMAN_ID}.scope\n", CgroupOwner(kind="host"))


def test_docker_custom_systemd_slice() -> None:
    same(f"0::/docker.slice/docker-{CID}.scope\n", container("docker", CID, "docker"))
    same(f"0::/docker.slice/docker-limiter.slice/docker-limiter-desktop.slice/docker-{CID}.scope\n",
         container("docker", CID, "docker"))
    same(f"0::/machine.slice/docker-{CID}.scope\n", container("docker", CID, "docker"))


def test_containerd_leaf_without_scope() -> None:
    same(f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}\n",
         pod())
    same(f"0::/kubepods.slice/kubepods-pod{UID_}.slice/crio-{CID}/container\n", pod(runtime="crio", qos="guaranteed"))


HYBRID_USER_FILES = {
    # snapcore/snapd userd/helpers_test.go mockCgroup (hybrid): pids stops at the user manager, systemd's own
    # hierarchies name the gnome-terminal unit below it
    "hybrid, snapd fixture": (
        "10:devices:/user.slice\n9:cpuset:/\n8:net_cls,net_prio:/\n7:freezer:/snap.hello-world\n6:perf_event:/\n"
        "5:pids:/user.slice/user-1000.slice/user@1000.service\n4:cpu,cpuacct:/\n3:memory:/\n2:blkio:/\n"
        "1:name=systemd:/user.slice/user-1000.slice/user@1000.service/gnome-terminal-server.service\n"
        "0::/user.slice/user-1000.slice/user@1000.service/gnome-terminal-server.service\n"),
    # Ubuntu 22.04 legacy hierarchy, a terminal's shell (a public cgroups walkthrough): memory and pids stop at
    # the user manager, name=systemd goes down to the vte-spawn scope
    "legacy v1, terminal shell": (
        "13:rdma:/\n12:blkio:/user.slice\n11:perf_event:/\n10:pids:/user.slice/user-1000.slice/user@1000.service\n"
        "9:freezer:/\n8:memory:/user.slice/user-1000.slice/user@1000.service\n7:cpu,cpuacct:/user.slice\n"
        "1:name=systemd:/user.slice/user-1000.slice/user@1000.service/apps.slice/apps-org.gnome.Terminal.slice/"
        "vte-spawn-8a2ac531-aa46-4222-aedf-2d9ef54b37af.scope\n"),
}


@pytest.mark.parametrize("text", list(HYBRID_USER_FILES.values()), ids=list(HYBRID_USER_FILES))
def test_hybrid_user_manager_line_is_shallower_than_unified(text: str) -> None:
    same(text, CgroupOwner(kind="host", name="user-1000"))


def test_the_user_manager_itself_is_its_unit() -> None:
    same("0::/user.slice/user-1000.slice/user@1000.service\n", CgroupOwner(kind="systemd", name="user@1000.service"))


def test_hybrid_slurm_job_level_controller_is_shallower() -> None:
    # Slurm's cgroup v1 plugins: the memory controller at job level, devices and freezer per step and task;
    # name=systemd stays in slurmd.service (slurm does not manage that hierarchy)
    text = ("11:memory:/slurm/uid_2101171/job_280678\n"
            "10:devices:/slurm/uid_2101171/job_280678/step_0/task_0\n"
            "4:freezer:/slurm/uid_2101171/job_280678/step_0\n"
            "1:name=systemd:/system.slice/slurmd.service\n")
    same(text, CgroupOwner(kind="slurm", name="job_280678/step_0"))


def test_pod_segment_that_is_not_a_uid_keeps_the_container_id() -> None:
    # the pod UID of a sandbox made with crictl (containerd/cri#290's example): not a UUID nor a static-pod hash
    text = (f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podhdishd83djaidwnduwk28bcsb.slice/"
            f"cri-containerd-{CID}.scope\n")
    same(text, container("container", CID, "containerd"))
    same(f"0::/kubepods/burstable/pod{UID[:-1]}/{CID}\n", container("container", CID, ""))  # 35-character UID
    same(f"0::/kubepods.slice/kubepods-podXYZ.slice/docker-{CID}.scope\n", container("docker", CID, "docker"))
    same(f"0::/system.slice/containerd.service/kubepods-burstable-pod1234abcd.slice:cri-containerd:{CID}\n",
         container("container", CID, "containerd"))


# ---------------------------------------------------------------------------------------------------------------
# cgroup files of real hosts: copied (or, where marked, adapted) from other projects' fixtures.

V1_CONTROLLERS = ("hugetlb", "devices", "pids", "perf_event", "net_cls,net_prio", "cpuset", "memory", "cpu,cpuacct",
                  "freezer", "blkio")


def v1(path: str, unified: str = "") -> str:
    """A v1 file with path on every controller line and name=systemd, and a unified line when given."""
    lines = [f"{12 - i}:{c}:{path}" for i, c in enumerate(V1_CONTROLLERS)] + [f"1:name=systemd:{path}"]
    return "\n".join(lines + ([f"0::{unified}"] if unified else [])) + "\n"


def ctr_pod(uid: str, cid: str, runtime: str, qos: str) -> CgroupOwner:
    return CgroupOwner(kind="pod", pod_uid=uid, container_id=cid, runtime=runtime, qos=qos)


SPIRE_CID = "09bc3d7ade839efec32b6bec4ec79d099027a668ddba043083ec21d3c3b8f1e6"
SPIRE_UID = "a2830d0d-b0f0-4ff0-81b5-0ee4e299cf80"
SPIRE_DOCKER_CID = "9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961"
NV = "neuvector share/system/cgroup_test.go"
SPIRE = "spiffe/spire pkg/agent/plugin/workloadattestor/k8s"

REAL_HOSTS: dict[str, tuple[str, str, CgroupOwner]] = {
    # --- Kubernetes + containerd
    "k8s 1.24 containerd 1.6 systemd driver cgroup v2": (NV + " TestContainerd_Container_Cgroupv2",
        "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod9493223b_520e_4a97_a45f_359dcf967006"
        ".slice/cri-containerd-25d057a4c6c9555f2a0eb106e8896968c28f1c44aca4754174851aca7f89ad26.scope\n",
        ctr_pod("9493223b-520e-4a97-a45f-359dcf967006",
                "25d057a4c6c9555f2a0eb106e8896968c28f1c44aca4754174851aca7f89ad26", "containerd", "besteffort")),
    "Bottlerocket containerd systemd driver cgroup v1": (NV + " TestK8sBottleRocket, adapted: one path on all lines",
        v1("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-poddd1bf9d1_241d_47f5_8e25_12de83135812"
           ".slice/cri-containerd-f45298cd514d1930c4fe3afc4412e59547f7e3148fddd22ca33cefce046eb830.scope"),
        ctr_pod("dd1bf9d1-241d-47f5-8e25-12de83135812",
                "f45298cd514d1930c4fe3afc4412e59547f7e3148fddd22ca33cefce046eb830", "containerd", "besteffort")),
    "containerd 1.2.13 cgroupfs driver cgroup v1": (NV + " TestK8sContainerd_v1_2_13, adapted",
        v1("/kubepods/besteffort/poda36d0c1d-0b26-4451-8d80-9c195e004afa/"
           "5dd96d5394ca930a854a390ea46f7515a8bc930123eb3251ba20f2708a38fc61"),
        ctr_pod("a36d0c1d-0b26-4451-8d80-9c195e004afa",
                "5dd96d5394ca930a854a390ea46f7515a8bc930123eb3251ba20f2708a38fc61", "", "besteffort")),
    "containerd systemd driver, runc cgroupfs: verbatim, Ubuntu v1 node": (
        "nginx/agent src/core/environment_test.go, the cgroup roots of a pod's mountinfo",
        "".join(f"{n}:{c}:{p}/kubepods-besteffort-pod214f3ba8_4b69_4bdb_a7d5_5ecc73f04ae9.slice:cri-containerd:"
                "d4e8e05a546c86b6443f101966c618e47753ed01fa9929cae00d3b692f7a9f80\n"
                for n, c, p in ((1, "name=systemd", "/system.slice/containerd.service"), (2, "net_cls,net_prio", ""),
                                (3, "memory", "/system.slice/containerd.service"), (4, "freezer", ""),
                                (5, "cpu,cpuacct", "/system.slice/containerd.service"), (6, "cpuset", "")))
        + "7:rdma:/\n",
        ctr_pod("214f3ba8-4b69-4bdb-a7d5-5ecc73f04ae9",
                "d4e8e05a546c86b6443f101966c618e47753ed01fa9929cae00d3b692f7a9f80", "containerd", "besteffort")),
    "containerd verbatim slice:prefix:id at the cgroup root": (SPIRE + "/k8s_posix_test.go \"cri-containerd\"",
        "1:name=systemd:/kubepods-besteffort-pod72f7f152_440c_66ac_9084_e0fc1d8a910c.slice:cri-containerd:"
        "b2a102854b4969b2ce98dc329c86b4fb2b06e4ad2cc8da9d8a7578c9cd2004a2\n",
        ctr_pod("72f7f152-440c-66ac-9084-e0fc1d8a910c",
                "b2a102854b4969b2ce98dc329c86b4fb2b06e4ad2cc8da9d8a7578c9cd2004a2", "containerd", "besteffort")),
    "kind node: v1 lines under /docker/<node>/kubepods, unified at containerd.service": (
        SPIRE + "/testdata/cgroups_pid_in_kind_pod.txt, adapted",
        v1(f"/docker/93529524695bb00d91c1f6dba692ea8d3550c3b94fb2463af7bc9ec82f992d26/kubepods/besteffort/"
           f"pod{SPIRE_UID}/{SPIRE_CID}",
           unified="/docker/93529524695bb00d91c1f6dba692ea8d3550c3b94fb2463af7bc9ec82f992d26/system.slice/"
                   "containerd.service"),
        ctr_pod(SPIRE_UID, SPIRE_CID, "", "besteffort")),
    "kubepods nested twice, cgroupfs": (SPIRE + "/k8s_posix_test.go",
        "4:memory:/kubepods/kubepods/besteffort/pod6bd2a4d3-a55a-4450-b6fd-2a7ecc72c904/"
        "a55d9ac3b312d8a2627824b6d6dd8af66fbec439bf4e0ec22d6d9945ad337a38\n",
        ctr_pod("6bd2a4d3-a55a-4450-b6fd-2a7ecc72c904",
                "a55d9ac3b312d8a2627824b6d6dd8af66fbec439bf4e0ec22d6d9945ad337a38", "", "besteffort")),
    "static pod's own cgroup, cgroupfs, Guaranteed": (SPIRE + "/k8s_posix_test.go",
        "4:memory:/kubepods/pod2732ca68f6358eba7703fb6f82a25c94\n",
        ctr_pod("2732ca68f6358eba7703fb6f82a25c94", "", "", "guaranteed")),
    "a pod's own cgroup, cgroupfs": (SPIRE + "/k8s_posix_test.go",
        f"4:memory:/kubepods/pod{SPIRE_UID}\n", ctr_pod(SPIRE_UID, "", "", "guaranteed")),
    "kind node in docker, single v1 line": (SPIRE + "/k8s_posix_test.go",
        f"4:memory:/docker/93529524695bb00d91c1f6dba692ea8d3550c3b94fb2463af7bc9ec82f992d26/kubepods/besteffort/"
        f"pod{SPIRE_UID}/{SPIRE_CID}\n",
        ctr_pod(SPIRE_UID, SPIRE_CID, "", "besteffort")),
    "containerd verbatim without .slice, /kuberuntime/containerd parent": (
        "open-telemetry/opentelemetry-go sdk/resource/container_test.go",
        "13:name=systemd:/kuberuntime/containerd/kubepods-pod872d2066_00ef_48ea_a7d8_51b18b72d739:cri-containerd:"
        "e857a4bf05a69080a759574949d7a0e69572e27647800fa7faff6a05a8332aa1\n",
        ctr_pod("872d2066-00ef-48ea-a7d8-51b18b72d739",
                "e857a4bf05a69080a759574949d7a0e69572e27647800fa7faff6a05a8332aa1", "containerd", "guaranteed")),
    # --- Kubernetes + CRI-O
    "OpenShift 4.6 CRI-O 1.19 systemd driver cgroup v1": (NV + " TestK8sCrio_v1_19, adapted",
        v1("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod8ca306fa_3c03_47fa_97dd_19979c345572"
           ".slice/crio-d6d725b909f37c3e232aadfbafa950a58bfe7baa579ba8c47a12be88bb921607.scope") + "6:rdma:/\n",
        ctr_pod("8ca306fa-3c03-47fa-97dd-19979c345572",
                "d6d725b909f37c3e232aadfbafa950a58bfe7baa579ba8c47a12be88bb921607", "crio", "besteffort")),
    "OpenShift 4.4 CRI-O 1.17 static pod, 32-hex UID": (NV + " TestK8sCrio_v1_17, adapted",
        v1("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod487a0dc6dccaeefbcfedba7a7ce1ca18.slice/"
           "crio-7a1fd6fe8cdfbd44dc78c4cc85dad7031eaab4365801684cad0aabdeaf863f9e.scope"),
        ctr_pod("487a0dc6dccaeefbcfedba7a7ce1ca18",
                "7a1fd6fe8cdfbd44dc78c4cc85dad7031eaab4365801684cad0aabdeaf863f9e", "crio", "burstable")),
    "CRI-O systemd v1, unified line at crio.service, 'systemd' not 'name=systemd'": (
        SPIRE + "/testdata/systemd_crio_cgroups_pid_in_pod.txt, adapted",
        v1(f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{SPIRE_UID.replace('-', '_')}.slice/"
           f"crio-{SPIRE_CID}.scope", unified="/system.slice/crio.service").replace("name=systemd", "systemd"),
        ctr_pod(SPIRE_UID, SPIRE_CID, "crio", "besteffort")),
    "CRI-O systemd driver cgroup v2": (NV + " TestCrio_Container_Cgroupv2",
        "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod042efd86_1f3b_4f2f_8736_f31c58e95bbc.slice/"
        "crio-f33f47b0db740bb647cb3e7ac62d96c74966dbb99cbfaf4563bfd42d387e8b44.scope\n",
        ctr_pod("042efd86-1f3b-4f2f-8736-f31c58e95bbc",
                "f33f47b0db740bb647cb3e7ac62d96c74966dbb99cbfaf4563bfd42d387e8b44", "crio", "burstable")),
    "CRI-O v1 devices line, systemd driver": (SPIRE + "/k8s_posix_test.go",
        "9:devices:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod561fd272_d131_47ef_a01b_"
        "46a997a778f3.slice/crio-030ded69d4c98fcf69c988f75a5eb3a1b4357e1432bd5510c936a40d7e9a1198.scope\n",
        ctr_pod("561fd272-d131-47ef-a01b-46a997a778f3",
                "030ded69d4c98fcf69c988f75a5eb3a1b4357e1432bd5510c936a40d7e9a1198", "crio", "besteffort")),
    "CRI-O seen from inside the pod's cgroup namespace: no pod in the path": (SPIRE + "/k8s_posix_test.go",
        "0::/../crio-45490e76e0878aaa4d9808f7d2eefba37f093c3efbba9838b6d8ab804d9bd814.scope\n",
        container("container", "45490e76e0878aaa4d9808f7d2eefba37f093c3efbba9838b6d8ab804d9bd814", "crio")),
    "minikube multinode: CRI-O pods under /docker/<node>/kubepods.slice": (
        "kubernetes/minikube#11280 (systemd-cgls of a node container), adapted",
        "0::/docker/d6701ec289c56e4391acb11d07474b3139466857a305490575508a8b7a9fcf22/kubepods.slice/"
        "kubepods-besteffort.slice/kubepods-besteffort-pod2ca4a155_3599_498d_bb9d_4446693fa3ea.slice/"
        "crio-358607a37e7ada357032e7f5729c9ae6a3efdb7962acbcbe47ff6a3c5506cb1c.scope\n",
        ctr_pod("2ca4a155-3599-498d-bb9d-4446693fa3ea",
                "358607a37e7ada357032e7f5729c9ae6a3efdb7962acbcbe47ff6a3c5506cb1c", "crio", "besteffort")),
    # --- Kubernetes + dockershim / cri-dockerd
    "k8s 1.8 dockershim cgroupfs cgroup v1": (SPIRE + "/testdata/cgroups_pid_in_pod.txt, adapted",
        v1(f"/kubepods/burstable/pod2c48913c-b29f-11e7-9350-020968147796/{SPIRE_DOCKER_CID}"),
        ctr_pod("2c48913c-b29f-11e7-9350-020968147796", SPIRE_DOCKER_CID, "", "burstable")),
    "dockershim systemd driver, slice with a dashed UID": (SPIRE + "/testdata/systemd_cgroups_pid_in_pod.txt, adapted",
        v1("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod2c48913c-b29f-11e7-9350-020968147796.slice/"
           f"docker-{SPIRE_DOCKER_CID}.scope"),
        ctr_pod("2c48913c-b29f-11e7-9350-020968147796", SPIRE_DOCKER_CID, "docker", "burstable")),
    "k8s 1.7 dockershim systemd driver cgroup v1 (CentOS)": (NV + " TestDockerIDKubepods2, adapted",
        v1("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod045b1e35_7f13_11e7_ac42_0050568ffca0"
           ".slice/docker-b5b6f2da8008be266864f896f93789762b2ce50792114a5c5f2cc3315af0bc70.scope"),
        ctr_pod("045b1e35-7f13-11e7-ac42-0050568ffca0",
                "b5b6f2da8008be266864f896f93789762b2ce50792114a5c5f2cc3315af0bc70", "docker", "besteffort")),
    "dockershim cgroupfs, a sub-cgroup below the container (kube-proxy)": (NV + " TestK8sProxyProcess, adapted",
        v1("/kubepods/besteffort/podf8a694f2-7c08-11e9-98da-000c29077430/"
           "c04e0a88a1de067f25bece337d4dbb897396e0b623c2a65330850fc9823f1903/kube-proxy"),
        ctr_pod("f8a694f2-7c08-11e9-98da-000c29077430",
                "c04e0a88a1de067f25bece337d4dbb897396e0b623c2a65330850fc9823f1903", "", "besteffort")),
    "dockershim cgroupfs, merged v1 controllers, rdma at the root": (NV + " TestDockerIDKubepods3",
        "".join(f"{n}:{c}:/kubepods/besteffort/pod1fe19bf5-e8ef-11e8-900c-52daee5a874d/"
                "da31e536c8d61304a6d5998d163d12400a7a9a1003e1d86369e8fadb022fc17d\n"
                for n, c in ((8, "pids"), (7, "blkio"), (2, "cpuset,cpu,cpuacct,memory,net_cls,net_prio,hugetlb"),
                             (1, "name=systemd"))) + "3:rdma:/\n",
        ctr_pod("1fe19bf5-e8ef-11e8-900c-52daee5a874d",
                "da31e536c8d61304a6d5998d163d12400a7a9a1003e1d86369e8fadb022fc17d", "", "besteffort")),
    "cri-dockerd systemd v2 seen through a cgroup namespace (/../../)": (
        NV + " TestDockerK8s_Ubuntu_Container_Cgroupv2",
        "0::/../../kubepods-besteffort-podfd698699_eabf_4c23_92ef_cf0bbdb78261.slice/"
        "docker-2cc65c162ca1388b6b8d5ccfb701d22fc96675ccf8b2f1590c490c2c4039547f.scope\n",
        ctr_pod("fd698699-eabf-4c23-92ef-cf0bbdb78261",
                "2cc65c162ca1388b6b8d5ccfb701d22fc96675ccf8b2f1590c490c2c4039547f", "docker", "besteffort")),
    # --- plain docker
    "docker systemd driver cgroup v1 (CentOS)": (NV + " TestDockerIDCentOS, adapted",
        v1("/system.slice/docker-9ec39b91f3d70e1beff50a308f77067065ea6be0d91a3378375056cd4422cf3d.scope"),
        container("docker", "9ec39b91f3d70e1beff50a308f77067065ea6be0d91a3378375056cd4422cf3d", "docker")),
    "docker cgroupfs cgroup v1 (Ubuntu)": (NV + " TestDockerIDUbuntu, adapted",
        v1("/docker/31cb02944da7a12196a193cf0e0f6c226d7c453a1db62e65ba98287593a2ee30"),
        container("docker", "31cb02944da7a12196a193cf0e0f6c226d7c453a1db62e65ba98287593a2ee30", "docker")),
    # the inner engine runs inside the outer container, whose tenant controls it: the outer one is the owner
    "docker-in-docker (RancherOS): the outer container": (NV + " TestDockerIDRancherOS, adapted",
        v1("/docker/a9a5ad238e59234193ee7ec3fcff5e735b3708ea1068826952255b69e3cfa413/docker/"
           "ec08435e04266c5ba381fccbb829f626d11d8ddf5f8f547263c7a2d79ab4787a"),
        container("docker", "a9a5ad238e59234193ee7ec3fcff5e735b3708ea1068826952255b69e3cfa413", "docker")),
    "docker 20.10 cgroup v2 through a cgroup namespace (openSUSE)": (NV + " TestDockerNative_Container_Cgroupv2",
        "0::/../docker-1f1d6e2d4940ddac13abd421a2617992bf89f0e0f9a902ed58278c5f843e9ae7.scope\n",
        container("docker", "1f1d6e2d4940ddac13abd421a2617992bf89f0e0f9a902ed58278c5f843e9ae7", "docker")),
    "docker cgroupfs v1 mountinfo roots": ("nginx/agent src/core/environment_test.go, adapted",
        v1("/docker/f244832c5a58377c3f1c7581b311c5bd8479808741f3e912d8bea8afe6431cb4") + "3:rdma:/\n",
        container("docker", "f244832c5a58377c3f1c7581b311c5bd8479808741f3e912d8bea8afe6431cb4", "docker")),
    # --- podman
    "rootless podman, crun /container (Gentoo, openSUSE)": (
        "a Rust crate's get_container_id_from_cgroup test: 'the standard cgroup pattern observed with podman'",
        "0::/user.slice/user-1000.slice/user@1000.service/user.slice/"
        "libpod-3f084b4c7b789c1a0f174da3fcd339e31125d3096b3ff46a0bef4fad71d09362.scope/container\n",
        container("podman", "3f084b4c7b789c1a0f174da3fcd339e31125d3096b3ff46a0bef4fad71d09362", "podman", "1000")),
    "rootless Quadlet --cgroups=split payload": ("a public systemctl --user status of a Quadlet unit",
        "0::/user.slice/user-1000.slice/user@1000.service/app.slice/redis.service/"
        "libpod-payload-e8c29da1a2f6c4bb032304f7dfbc5a767e026092c4a2fcbc830e58565f972f54\n",
        container("podman", "e8c29da1a2f6c4bb032304f7dfbc5a767e026092c4a2fcbc830e58565f972f54", "podman", "1000")),
    "rootless Quadlet template instance under app-<name>.slice": ("a public systemctl --user status, adapted",
        "0::/user.slice/user-1003.slice/user@1003.service/app.slice/app-kollektivkart.slice/kollektivkart@8000.service/"
        "libpod-payload-fdd0fbf5a81144fdfc6d8383debbd0808cd4a569dadba51e9273280bec5bab8b\n",
        container("podman", "fdd0fbf5a81144fdfc6d8383debbd0808cd4a569dadba51e9273280bec5bab8b", "podman", "1003")),
    "rootful podman cgroupfs manager (/libpod_parent)": ("podman libpod/container.go CgroupfsDefaultCgroupParent",
        "0::/libpod_parent/libpod-cf594798841275880f780c2aa55954b2d218b92a7c82df039aef02e2f4fe83f1\n",
        container("podman", "cf594798841275880f780c2aa55954b2d218b92a7c82df039aef02e2f4fe83f1", "podman")),
    # --- Slurm, systemd, users: no container
    "Slurm v1 task, interactive step": ("Slurm's task/cgroup v1 layout /slurm/uid_<uid>/job_<id>/step_<s>/task_<n>",
        "10:devices:/slurm/uid_2101171/job_280678/step_interactive/task_0\n",
        CgroupOwner(kind="slurm", name="job_280678/step_interactive")),
    "Slurm v2 srun step on an EPYC node": ("an HPC centre's user guide, cat /proc/$$/cgroup in an srun shell",
        "0::/system.slice/slurmstepd.scope/job_840392/step_0/user/task_0\n",
        CgroupOwner(kind="slurm", name="job_840392/step_0")),
    "Slurm v2 pam_slurm_adopt extern step": ("a public pam_slurm_adopt status check's test",
        "0::/system.slice/slurmstepd.scope/job_42/step_extern/user\n",
        CgroupOwner(kind="slurm", name="job_42/step_extern")),
    "a v1 host's PID 1 (every line at the root)": (NV + " TestHostProcess",
        "14:name=dsystemd:/\n13:name=systemd:/\n12:pids:/\n11:hugetlb:/\n5:memory:/\n1:cpuset:/\n",
        CgroupOwner(kind="host")),
    "nsenter into an old systemd's user session (/user/1000.user/c2.session)": (NV + " TestNsEnterProcess",
        "13:name=systemd:/user/1000.user/c2.session\n12:pids:/\n11:hugetlb:/user/1000.user/c2.session\n1:cpuset:/\n",
        CgroupOwner(kind="host")),
    "v1 host user session, controllers at user.slice": (SPIRE + "/testdata/cgroups_pid_not_in_pod.txt",
        "11:hugetlb:/\n10:devices:/user.slice\n9:pids:/user.slice/user-1000.slice\n8:perf_event:/\n"
        "7:net_cls,net_prio:/\n6:cpuset:/\n5:memory:/user.slice\n4:cpu,cpuacct:/user.slice\n3:freezer:/\n"
        "2:blkio:/user.slice\n1:name=systemd:/user.slice/user-1000.slice/session-2.scope\n",
        CgroupOwner(kind="host", name="user-1000")),
    "hybrid: user's app service, pids at the user manager": ("snapcore/snapd userd/helpers_test.go mockCgroup",
        "5:pids:/user.slice/user-1000.slice/user@1000.service\n"
        "1:name=systemd:/user.slice/user-1000.slice/user@1000.service/gnome-terminal-server.service\n"
        "0::/user.slice/user-1000.slice/user@1000.service/gnome-terminal-server.service\n",
        CgroupOwner(kind="host", name="user-1000")),
    "PID 1 of a container's cgroup namespace (/../../init.scope)": (NV + " TestDocker_Host_Proc1_Cgroupv2",
        "0::/../../init.scope\n", CgroupOwner(kind="host")),
    # --- negatives: UUID-like strings in the wrong place, truncated ids, ids outside a runtime's tree
    "pod UUID and id outside any kubepods tree": (SPIRE + "/k8s_posix_test.go (no pod expected)",
        f"4:memory:/something/pod{SPIRE_UID}/{SPIRE_CID}\n", CgroupOwner(kind="host")),
    "bare 64-hex under an unknown parent": ("open-telemetry/opentelemetry-go container_test.go 'no prefix and suffix'",
        "13:name=systemd:/pod/d86d75589bf6cc254f3e2cc29debdf85dde404998aa128997a819ff991827356\n",
        CgroupOwner(kind="host")),
    "35-hex id with a suffix": ("open-telemetry/opentelemetry-go container_test.go 'with suffix'",
        "13:name=systemd:/podruntime/docker/kubepods/ac679f8a8319c8cf7d38e1adf263bc08d23.aaaa\n",
        CgroupOwner(kind="host")),
    "truncated docker id": ("open-telemetry/opentelemetry-go container_test.go 'multiple lines'",
        "1:name=systemd:/podruntime/docker/kubepods/docker-dc579f8a8319c8cf7d38e1adf263bc08d23\n",
        CgroupOwner(kind="host")),
    "no container id": ("open-telemetry/opentelemetry-go container_test.go 'no container id - 1'",
        "pids: /\n", CgroupOwner(kind="host")),
    "container id directly under kubepods, no pod": (SPIRE + "/k8s_posix_test.go",
        f"4:memory:/kubepods/{SPIRE_CID}\n", container("container", SPIRE_CID, "")),
    "a pod UUID in a systemd unit's name": ("constructed",
        f"0::/system.slice/pod{UID}.service\n", CgroupOwner(kind="systemd", name=f"pod{UID}.service")),
    "a 65-hex leaf is no container id": ("constructed",
        f"0::/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}a.scope\n",
        pod(cid="", runtime="", qos="guaranteed")),
    "upper-case hex is no container id": ("constructed",
        f"0::/system.slice/docker-{CID.upper()}.scope\n", CgroupOwner(kind="host")),
    "a UUID one character short in the pod slice": ("constructed",
        f"0::/kubepods.slice/kubepods-pod{UID_[:-1]}.slice\n", CgroupOwner(kind="host")),
}


# Nested kubelets (kind, minikube) under their node container's cgroup: pods only where the operator names the node
# containers as cgroup roots (cgroup_roots); "/docker/*" names every docker container.
NESTED = {"kind node: v1 lines under /docker/<node>/kubepods, unified at containerd.service",
          "kind node in docker, single v1 line", "minikube multinode: CRI-O pods under /docker/<node>/kubepods.slice"}
DOCKER_ROOTS = parse_roots(("/docker/*",))


@pytest.mark.parametrize(("name", "text", "expected"), [(n, t, e) for n, (_, t, e) in REAL_HOSTS.items()],
                         ids=list(REAL_HOSTS))
def test_real_host_layouts(name: str, text: str, expected: CgroupOwner) -> None:
    got = parse_cgroup(text, DOCKER_ROOTS if name in NESTED else ())
    assert owner_fields(got) == owner_fields(expected)


@pytest.mark.parametrize("name", sorted(NESTED))
def test_nested_kubelet_without_its_root_is_the_node_container(name: str) -> None:
    """Without the node container named as a cgroup root, a kubepods tree below it is what any container with a
    writable cgroupfs can make: the owner is the node container, and the pod name a conflict."""
    _, text, expected = REAL_HOSTS[name]
    got = parse_cgroup(text)
    assert (got.kind, got.pod_uid, got.conflict) == (OwnerKind.DOCKER, "", "nested_below_container")
    assert got.container_id != expected.container_id


def test_a_root_matches_whole_segments_only() -> None:
    text = f"0::/docker/{SPIRE_CID}x/kubepods/besteffort/pod{SPIRE_UID}/{SPIRE_CID}\n"
    assert parse_cgroup(text, parse_roots((f"/docker/{SPIRE_CID}",))).kind != OwnerKind.POD
    assert parse_cgroup(text, parse_roots((f"/docker/{SPIRE_CID}x",))).pod_uid == SPIRE_UID


def test_at_least_forty_real_host_files() -> None:
    assert len(REAL_HOSTS) >= 40


# ---------------------------------------------------------------------------------------------------------------
# Properties

_VALID_UID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32}")
_CONTAINER_ID = re.compile(r"[0-9a-f]{64}")
_TOKENS = ["/", "/", ":", "-", "_", ".", "\n", "0::", "1:name=systemd:", "4:memory:", "/..", "kubepods",
           "kubepods.slice", "-burstable", "/besteffort", "-pod", "/pod", "pod", UID, UID_, STATIC, UID[:-1], CID,
           CID[:-1], CID + "0", ".slice", ".scope", ":cri-containerd:", "cri-containerd-", "crio-", "crio-conmon-",
           "docker-", "/docker/", "libpod-", "libpod-payload-", "/container", "system.slice", "containerd.service",
           "user.slice", "user-1000.slice", "user@1000.service", "session-2.scope", "slurmstepd.scope", "/job_7",
           "/step_0", "/slurm/uid_1", "é", "\x00"]


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.sampled_from(_TOKENS), max_size=30).map("".join))
def test_cgroup_like_text_never_raises_nor_makes_up_a_pod_or_container(text: str) -> None:
    owner = parse_cgroup(text)
    assert owner.kind in OWNER_KINDS
    if owner.kind == OwnerKind.POD:
        assert _VALID_UID.fullmatch(owner.pod_uid), owner
        assert owner.pod_uid in text or owner.pod_uid.replace("-", "_") in text
    else:
        assert owner.pod_uid == ""
    if owner.kind in (OwnerKind.DOCKER, OwnerKind.PODMAN, OwnerKind.CONTAINER):
        assert _CONTAINER_ID.fullmatch(owner.container_id), owner
    if owner.container_id:
        assert owner.container_id in text


def test_owner_kinds_are_one_set_of_constants() -> None:
    assert set(OWNER_KINDS) == {v for k, v in vars(OwnerKind).items() if k.isupper()}
    assert {parse_cgroup(t).kind for t, _ in CASES.values()} <= set(OWNER_KINDS)


# ---------------------------------------------------------------------------------------------------------------
# Trust: a name counts only where kubelet and the runtimes put it (docs/runtimes-and-cgroups.md, "Trust")

A_SCOPE = f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope"
FORGED = {  # names a tenant can give a cgroup it may create, to pass as pod UID2's container CID2
    "verbatim": f"kubepods-besteffort-pod{UID2_}.slice:cri-containerd:{CID2}",
    "conmon": f"kubepods-besteffort-pod{UID2_}.slice/crio-conmon-{CID2}.scope",
    "slices": f"kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID2_}.slice/crio-{CID2}.scope",
    "cgroupfs": f"kubepods/besteffort/pod{UID2}/{CID2}",
    "docker": f"docker-{CID2}.scope",
    "podman": f"libpod-{CID2}.scope",
}


@pytest.mark.parametrize("form", list(FORGED))
def test_a_name_below_a_container_is_the_container(form: str) -> None:
    got = parse_cgroup(f"0::{A_SCOPE}/{FORGED[form]}\n")
    assert (got.kind, got.pod_uid, got.container_id, got.conflict) == ("pod", UID, CID, "nested_below_container")


@pytest.mark.parametrize("form", list(FORGED))
@pytest.mark.parametrize(("parent", "kind", "name"), [
    ("/user.slice/user-1000.slice/user@1000.service", "host", "user-1000"),
    ("/user.slice/user-1000.slice/user@1000.service/app.slice/x.service", "host", "user-1000"),
    ("/user.slice/user-1000.slice/session-4.scope", "host", "user-1000"),
    ("/system.slice/any.service", "systemd", "any.service"),
    ("/system.slice/slurmstepd.scope/job_7/step_0/user", "slurm", "job_7/step_0"),
    ("/machine.slice/machine-qemu-1-vm.scope", "host", ""),
    (f"/docker/{CID}", "docker", ""),
    ("/lxc.payload.tenant", "host", ""),
])
def test_a_name_below_a_delegated_cgroup_is_that_cgroup(form: str, parent: str, kind: str, name: str) -> None:
    got = parse_cgroup(f"0::{parent}/{FORGED[form]}\n")
    assert (got.kind, got.name, got.pod_uid) == (kind, name, "")
    assert got.container_id in ("", CID)
    assert got.conflict in ("untrusted_position", "nested_below_container")


def test_rootless_names_count_only_where_rootless_podman_puts_them() -> None:
    manager = "/user.slice/user-1000.slice/user@1000.service"
    assert parse_cgroup(f"0::{manager}/user.slice/libpod-{CID2}.scope\n").kind == "podman"
    assert parse_cgroup(f"0::{manager}/user.slice/docker-{CID2}.scope\n").user_uid == "1000"
    for elsewhere in (f"app.slice/x.service/libpod-{CID2}.scope", f"user.slice/cri-containerd-{CID2}.scope",
                      f"user.slice/x.slice:libpod:{CID2}", f"user.slice/libpod-{CID}.scope/libpod-{CID2}.scope"):
        got = parse_cgroup(f"0::{manager}/{elsewhere}\n")
        assert got.container_id != CID2, elsewhere


def test_the_user_manager_of_another_uid_is_not_a_rootless_position() -> None:
    got = parse_cgroup(f"0::/user.slice/user-1000.slice/user@1001.service/user.slice/libpod-{CID2}.scope\n")
    assert (got.kind, got.container_id, got.conflict) == ("systemd", "", "untrusted_position")


def test_a_verbatim_name_counts_only_under_slices_or_a_runtime_s_own_cgroup() -> None:
    verbatim = FORGED["verbatim"]
    for parent in ("", "/system.slice", "/system.slice/containerd.service", "/system.slice/crio.service",
                   "/kuberuntime/containerd"):
        assert parse_cgroup(f"0::{parent}/{verbatim}\n").pod_uid == UID2, parent
    for parent in ("/system.slice/any.service", "/tenant", "/system.slice/containerd.service/x"):
        assert parse_cgroup(f"0::{parent}/{verbatim}\n").pod_uid == "", parent


def test_slurm_names_count_only_at_slurm_s_own_position() -> None:
    assert parse_cgroup(f"0::{A_SCOPE}/slurmstepd.scope/job_7/step_0\n").kind == "pod"
    assert parse_cgroup("0::/system.slice/any.service/slurm/uid_1/job_7/step_0\n").kind == "systemd"
    assert parse_cgroup("0::/system.slice/any.service/slurmstepd.scope/job_7/step_0\n").kind == "systemd"
    assert parse_cgroup("0::/user.slice/user-1000.slice/user@1000.service/x.slice/slurmstepd.scope/job_7\n"
                        ).name == "user-1000"


def test_bare_ids_below_an_owner_are_no_conflict() -> None:
    """Runtimes make such sub-cgroups themselves (`ctr run` with cgroupfs, an engine inside a container)."""
    assert parse_cgroup(f"0::/default/{CID}\n").conflict == ""
    assert parse_cgroup(f"0::/docker/{CID}/docker/{CID2}\n").conflict == ""
    assert parse_cgroup(f"0::/docker/{CID}/docker-{CID2}.scope\n").conflict == "nested_below_container"


def test_a_conflict_on_any_line_of_a_hybrid_file_is_reported() -> None:
    text = f"4:memory:/system.slice/any.service/{FORGED['verbatim']}\n0::{A_SCOPE}\n"
    got = parse_cgroup(text)
    assert (got.pod_uid, got.conflict) == (UID, "untrusted_position")


@pytest.mark.parametrize(("recorded", "path", "expected"), [
    # containerd, systemd driver: the recorded form expands to the scope
    (f"kubepods-burstable-pod{UID_}.slice:cri-containerd:{CID}", A_SCOPE, True),
    (f"kubepods-burstable-pod{UID_}.slice:cri-containerd:{CID}", A_SCOPE + "/container", True),
    (f"kubepods-besteffort-pod{UID_}.slice:cri-containerd:{CID}", A_SCOPE, False),
    (f"kubepods-burstable-pod{UID2_}.slice:cri-containerd:{CID}", A_SCOPE, False),
    # cgroupfs driver: the recorded path itself
    (f"/kubepods/burstable/pod{UID}/{CID}", f"/kubepods/burstable/pod{UID}/{CID}", True),
    (f"/kubepods/burstable/pod{UID2}/{CID}", f"/kubepods/burstable/pod{UID}/{CID}", False),
    (f"/kubepods/burstable/pod{UID}/{CID}", f"/kubepods/kubepods/burstable/pod{UID}/{CID}", False),  # elsewhere
    # verbatim: the directory is the recorded string, under the runtime's cgroup
    (f"kubepods-burstable-pod{UID_}.slice:cri-containerd:{CID}",
     f"/system.slice/containerd.service/kubepods-burstable-pod{UID_}.slice:cri-containerd:{CID}", True),
    (f"kubepods-burstable-pod{UID2_}.slice:cri-containerd:{CID}",
     f"/system.slice/containerd.service/kubepods-burstable-pod{UID_}.slice:cri-containerd:{CID}", False),
    # through a cgroup namespace: a tail of the recorded path starts the path
    (f"kubepods-burstable-pod{UID_}.slice:cri-containerd:{CID}",
     f"/../../kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope", True),
    (f"kubepods-burstable-pod{UID2_}.slice:cri-containerd:{CID}",
     f"/../../kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope", False),
    # CRI-O's conmon beside its container
    (f"kubepods-burstable-pod{UID_}.slice:crio:{CID}",
     f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-conmon-{CID}.scope", True),
    (f"/kubepods/burstable/pod{UID}/crio-{CID}", f"/kubepods/burstable/pod{UID}/crio-conmon-{CID}", True),
    (f"/kubepods/burstable/pod{UID2}/crio-{CID}", f"/kubepods/burstable/pod{UID}/crio-conmon-{CID}", False),
    # cri-dockerd: CgroupParent with docker's leaf
    (f"kubepods-burstable-pod{UID_}.slice:docker:{CID}",
     f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/docker-{CID}.scope", True),
    ("", A_SCOPE, False),
])
def test_a_recorded_cgroup_agrees_only_with_its_own_place(recorded: str, path: str, expected: bool) -> None:
    assert agrees(recorded, parse_cgroup(f"0::{path}\n")) is expected


def test_systemd_path_expands_slices_as_runc_does() -> None:
    assert systemd_path("a-b-c.slice:p:x") == "/a.slice/a-b.slice/a-b-c.slice/p-x.scope"
    assert systemd_path("-.slice:p:x") == "/p-x.scope"
    for bad in ("a--b.slice:p:x", "a/b.slice:p:x", "a.scope:p:x", "a.slice:p", "a.slice:p:"):
        assert systemd_path(bad) == "", bad
