"""Each real host's cgroup file of tests/test_cgroups.py (REAL_HOSTS) as the collector reports its owner: the
owner kind, the pod UID, the container id (its first 12 characters, which name a container that no runtime's
metadata names) and the owner name where it is not one of those. Written out per entry from the layout its
source shows, not from what the code returns: a change in how cgroup paths are read must keep these.

The process is attributed on a host root with no runtime metadata and no kubelet, so the owner is what the cgroup
path alone tells.
"""

from __future__ import annotations

import pytest

from collector.attribution.join import AttributionSettings, Attributor
from collector.model import Device, HostProcess
from tests.test_cgroups import NESTED, REAL_HOSTS

GPU = Device(label="0", index=0, uuid="GPU-0", name="H100", memory_total=1, memory_used=0)

# entry -> (owner kind, pod UID, container id[:12], owner name beyond those). Where the process sits in a pod of a
# nested kubelet (kind, minikube: a node container's kubepods tree), the owner is that pod, with the node
# containers named as cgroup roots (NESTED); in docker-in-docker, the outer container, whose tenant runs the inner
# engine (docs/runtimes-and-cgroups.md).
OWNERS: dict[str, tuple[str, str, str, str]] = {
    'k8s 1.24 containerd 1.6 systemd driver cgroup v2':
        ('pod', '9493223b-520e-4a97-a45f-359dcf967006', '25d057a4c6c9', ''),
    'Bottlerocket containerd systemd driver cgroup v1':
        ('pod', 'dd1bf9d1-241d-47f5-8e25-12de83135812', 'f45298cd514d', ''),
    'containerd 1.2.13 cgroupfs driver cgroup v1': ('pod', 'a36d0c1d-0b26-4451-8d80-9c195e004afa', '5dd96d5394ca', ''),
    'containerd systemd driver, runc cgroupfs: verbatim, Ubuntu v1 node':
        ('pod', '214f3ba8-4b69-4bdb-a7d5-5ecc73f04ae9', 'd4e8e05a546c', ''),
    'containerd verbatim slice:prefix:id at the cgroup root':
        ('pod', '72f7f152-440c-66ac-9084-e0fc1d8a910c', 'b2a102854b49', ''),
    'kind node: v1 lines under /docker/<node>/kubepods, unified at containerd.service':
        ('pod', 'a2830d0d-b0f0-4ff0-81b5-0ee4e299cf80', '09bc3d7ade83', ''),
    'kubepods nested twice, cgroupfs': ('pod', '6bd2a4d3-a55a-4450-b6fd-2a7ecc72c904', 'a55d9ac3b312', ''),
    "static pod's own cgroup, cgroupfs, Guaranteed": ('pod', '2732ca68f6358eba7703fb6f82a25c94', '', ''),
    "a pod's own cgroup, cgroupfs": ('pod', 'a2830d0d-b0f0-4ff0-81b5-0ee4e299cf80', '', ''),
    'kind node in docker, single v1 line': ('pod', 'a2830d0d-b0f0-4ff0-81b5-0ee4e299cf80', '09bc3d7ade83', ''),
    'containerd verbatim without .slice, /kuberuntime/containerd parent':
        ('pod', '872d2066-00ef-48ea-a7d8-51b18b72d739', 'e857a4bf05a6', ''),
    'OpenShift 4.6 CRI-O 1.19 systemd driver cgroup v1':
        ('pod', '8ca306fa-3c03-47fa-97dd-19979c345572', 'd6d725b909f3', ''),
    'OpenShift 4.4 CRI-O 1.17 static pod, 32-hex UID': ('pod', '487a0dc6dccaeefbcfedba7a7ce1ca18', '7a1fd6fe8cdf', ''),
    "CRI-O systemd v1, unified line at crio.service, 'systemd' not 'name=systemd'":
        ('pod', 'a2830d0d-b0f0-4ff0-81b5-0ee4e299cf80', '09bc3d7ade83', ''),
    'CRI-O systemd driver cgroup v2': ('pod', '042efd86-1f3b-4f2f-8736-f31c58e95bbc', 'f33f47b0db74', ''),
    'CRI-O v1 devices line, systemd driver': ('pod', '561fd272-d131-47ef-a01b-46a997a778f3', '030ded69d4c9', ''),
    "CRI-O seen from inside the pod's cgroup namespace: no pod in the path": ('container', '', '45490e76e087', ''),
    'minikube multinode: CRI-O pods under /docker/<node>/kubepods.slice':
        ('pod', '2ca4a155-3599-498d-bb9d-4446693fa3ea', '358607a37e7a', ''),
    'k8s 1.8 dockershim cgroupfs cgroup v1': ('pod', '2c48913c-b29f-11e7-9350-020968147796', '9bca8d63d5fa', ''),
    'dockershim systemd driver, slice with a dashed UID':
        ('pod', '2c48913c-b29f-11e7-9350-020968147796', '9bca8d63d5fa', ''),
    'k8s 1.7 dockershim systemd driver cgroup v1 (CentOS)':
        ('pod', '045b1e35-7f13-11e7-ac42-0050568ffca0', 'b5b6f2da8008', ''),
    'dockershim cgroupfs, a sub-cgroup below the container (kube-proxy)':
        ('pod', 'f8a694f2-7c08-11e9-98da-000c29077430', 'c04e0a88a1de', ''),
    'dockershim cgroupfs, merged v1 controllers, rdma at the root':
        ('pod', '1fe19bf5-e8ef-11e8-900c-52daee5a874d', 'da31e536c8d6', ''),
    'cri-dockerd systemd v2 seen through a cgroup namespace (/../../)':
        ('pod', 'fd698699-eabf-4c23-92ef-cf0bbdb78261', '2cc65c162ca1', ''),
    'docker systemd driver cgroup v1 (CentOS)': ('docker', '', '9ec39b91f3d7', ''),
    'docker cgroupfs cgroup v1 (Ubuntu)': ('docker', '', '31cb02944da7', ''),
    'docker-in-docker (RancherOS): the outer container': ('docker', '', 'a9a5ad238e59', ''),
    'docker 20.10 cgroup v2 through a cgroup namespace (openSUSE)': ('docker', '', '1f1d6e2d4940', ''),
    'docker cgroupfs v1 mountinfo roots': ('docker', '', 'f244832c5a58', ''),
    'rootless podman, crun /container (Gentoo, openSUSE)': ('podman', '', '3f084b4c7b78', ''),
    'rootless Quadlet --cgroups=split payload': ('podman', '', 'e8c29da1a2f6', ''),
    'rootless Quadlet template instance under app-<name>.slice': ('podman', '', 'fdd0fbf5a811', ''),
    'rootful podman cgroupfs manager (/libpod_parent)': ('podman', '', 'cf5947988412', ''),
    'Slurm v1 task, interactive step': ('slurm', '', '', 'job_280678/step_interactive'),
    'Slurm v2 srun step on an EPYC node': ('slurm', '', '', 'job_840392/step_0'),
    'Slurm v2 pam_slurm_adopt extern step': ('slurm', '', '', 'job_42/step_extern'),
    "a v1 host's PID 1 (every line at the root)": ('host', '', '', ''),
    "nsenter into an old systemd's user session (/user/1000.user/c2.session)": ('host', '', '', ''),
    'v1 host user session, controllers at user.slice': ('host', '', '', 'user-1000'),
    "hybrid: user's app service, pids at the user manager": ('host', '', '', 'user-1000'),
    "PID 1 of a container's cgroup namespace (/../../init.scope)": ('host', '', '', ''),
    'pod UUID and id outside any kubepods tree': ('host', '', '', ''),
    'bare 64-hex under an unknown parent': ('host', '', '', ''),
    '35-hex id with a suffix': ('host', '', '', ''),
    'truncated docker id': ('host', '', '', ''),
    'no container id': ('host', '', '', ''),
    'container id directly under kubepods, no pod': ('container', '', '09bc3d7ade83', ''),
    "a pod UUID in a systemd unit's name": ('systemd', '', '', 'pod1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901.service'),
    'a 65-hex leaf is no container id': ('pod', '1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901', '', ''),
    'upper-case hex is no container id': ('host', '', '', ''),
    'a UUID one character short in the pod slice': ('host', '', '', ''),
}


def test_every_real_host_file_has_its_owner_written_out() -> None:
    assert set(OWNERS) == set(REAL_HOSTS)


@pytest.mark.parametrize("name", list(REAL_HOSTS))
def test_the_owner_of_each_real_host_file(name: str, tmp_path: object) -> None:
    _, text, _ = REAL_HOSTS[name]
    attributor = Attributor(AttributionSettings(host_root=str(tmp_path), pod_resources_socket="",
                                                pod_resources_timeout=1.0,
                                                cgroup_roots=("/docker/*",) if name in NESTED else ()), [GPU])
    owner, _ = attributor.attribute(HostProcess(pid=4000, name="python3", start_time=0.0, cgroup=text), GPU)
    kind, pod_uid, container, other_name = OWNERS[name]
    assert (owner.kind, owner.pod_uid, owner.container_id[:12]) == (kind, pod_uid, container)
    assert len(owner.container_id) == (64 if container else 0)
    assert owner.name == (other_name or pod_uid or container)
