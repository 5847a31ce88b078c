"""kubelet pod-resources v1 client: which GPUs and MIG instances kubelet allocated to which container.

One `List` call per run over the local unix socket, with a deadline and a 16 MiB receive limit. The socket being
absent, refusing, slow or unimplemented is an answer too (`PodResourcesUnavailable`): the run goes on with
cgroup and runtime attribution, and a self metric says the API was unavailable. grpc is imported only when a
socket is there to call: it is the heaviest import of the collector.
"""

# No `from __future__ import annotations`: a NamedTuple's string annotations cost a compile() each at
# import (docs/performance.md).

import logging
import os
import re
import stat
from collections.abc import Iterable
from typing import Any, NamedTuple, Optional

log = logging.getLogger(__name__)

MAX_RECEIVE_BYTES = 16 << 20  # kubelet's own e2e client's limit; gRPC's default of 4 MiB is too small for big nodes
LIST_METHOD = "/v1.PodResourcesLister/List"
GPU_RESOURCES = ("nvidia.com/gpu", "nvidia.com/gpu.shared")
MIG_RESOURCE_PREFIX = "nvidia.com/mig-"
_GKE = r"^nvidia(?P<index>[0-9]+)(?:/gi(?P<gi>[0-9]+))?(?:/vgpu[0-9]+)?$"
_OLD_MIG = r"^MIG-(?P<parent>GPU-[0-9a-fA-F-]+)/(?P<gi>[0-9]+)/(?P<ci>[0-9]+)$"
_SHARED_SUFFIX = r"/vgpu[0-9]+$"
GPU_DRA_DRIVERS = ("gpu.nvidia.com",)  # NVIDIA's DRA driver (k8s-dra-driver-gpu cmd/gpu-kubelet-plugin)


class PodResourcesUnavailable(Exception):
    """The API could not be used this run; the message says why in one line."""


class DeviceRef(NamedTuple):
    """A device id as kubelet lists it, in the shapes NVIDIA's device plugin and GKE write.

    uuid: a GPU- or MIG- UUID; or index (+ gpu_instance) for GKE's nvidia<N>[/gi<M>], where N is the GPU's
    /dev/nvidia<N> minor number (GKE's device plugin names devices after their device files); replica: the
    time-slicing or MPS replica number of `<id>::<n>`, None otherwise. resource: the extended resource it was
    allocated as ("" when parsed on its own). An id of no known shape has only raw (and resource).
    """

    raw: str
    uuid: str = ""
    index: Optional[int] = None  # type: ignore[assignment]  # shadows tuple.index, as meant
    gpu_instance: Optional[int] = None
    compute_instance: Optional[int] = None
    replica: Optional[int] = None
    resource: str = ""

    @property
    def device(self) -> str:
        """The underlying device: the id without its sharing suffix (`::<n>`, GKE's `/vgpu<n>`). Replicas of
        one GPU are one device."""
        return re.sub(_SHARED_SUFFIX, "", self.raw.partition("::")[0])


def parse_device_id(raw: str) -> Optional[DeviceRef]:
    base, _, replica_text = raw.partition("::")
    replica = int(replica_text) if replica_text.isdigit() else None
    old = re.match(_OLD_MIG, base)
    if old:  # R450/R460 MIG ids: MIG-GPU-<uuid>/<gi>/<ci>
        return DeviceRef(raw=raw, uuid=old["parent"], gpu_instance=int(old["gi"]), compute_instance=int(old["ci"]),
                         replica=replica)
    if base.startswith(("GPU-", "MIG-")):
        return DeviceRef(raw=raw, uuid=base, replica=replica)
    gke = re.match(_GKE, base)
    if gke:
        return DeviceRef(raw=raw, index=int(gke["index"]), gpu_instance=int(gke["gi"]) if gke["gi"] else None,
                         replica=replica)
    return None


def is_gpu_resource(name: str, extra: Iterable[str] = ()) -> bool:
    return name in GPU_RESOURCES or name.startswith(MIG_RESOURCE_PREFIX) or name in set(extra)


class ClaimDevice(NamedTuple):
    """One device of a DRA claim as kubelet lists it (ClaimResource): the driver/pool/device triplet (empty
    before Kubernetes 1.31) and the CDI device names the runtime applied."""

    claim: str  # "<claim namespace>/<claim name>"
    driver: str
    pool: str
    device: str
    cdi_devices: tuple[str, ...]

    @property
    def key(self) -> tuple[str, ...]:
        """What makes it one device: the triplet, or its CDI names where kubelet gives no triplet. Shares of
        one device (share_id, consumable capacity) are one device."""
        return (self.driver, self.pool, self.device) if self.device else self.cdi_devices


class ContainerAllocation(NamedTuple):
    namespace: str
    pod: str
    container: str
    devices: tuple[DeviceRef, ...]  # device-plugin ids of GPU resources
    claims: tuple[ClaimDevice, ...] = ()  # devices of DRA claims, whatever their driver


def allocations(response: Any, resource_names: Iterable[str] = ()) -> list[ContainerAllocation]:
    """The GPU device-plugin devices and the DRA claim devices of every container in a
    ListPodResourcesResponse."""
    extra = tuple(resource_names)
    found = []
    for pod in response.pod_resources:
        for container in pod.containers:
            refs = []
            for devices in container.devices:
                if not is_gpu_resource(devices.resource_name, extra):
                    continue
                for device_id in devices.device_ids:
                    if not device_id:
                        continue
                    ref = parse_device_id(device_id)
                    if ref is None:
                        log.info("pod %s/%s: device id %r of %s has no known shape (its container's allocation is "
                                 "not fully known)", pod.namespace, pod.name, device_id, devices.resource_name)
                        ref = DeviceRef(raw=device_id)
                    refs.append(ref._replace(resource=devices.resource_name))
            claims = [ClaimDevice(claim=f"{dynamic.claim_namespace}/{dynamic.claim_name}", driver=r.driver_name,
                                  pool=r.pool_name, device=r.device_name,
                                  cdi_devices=tuple(d.name for d in r.cdi_devices))
                      for dynamic in container.dynamic_resources for r in dynamic.claim_resources]
            if refs or claims:
                found.append(ContainerAllocation(pod.namespace, pod.name, container.name, tuple(refs),
                                                 tuple(claims)))
    return found


def list_pod_resources(socket_path: str, timeout: float) -> Any:
    """One List call. Raises PodResourcesUnavailable with a one-line reason."""
    try:
        mode = os.stat(socket_path).st_mode
    except FileNotFoundError:
        raise PodResourcesUnavailable(f"no socket at {socket_path} (not a Kubernetes node, or kubelet is down)") \
            from None
    except OSError as err:
        raise PodResourcesUnavailable(f"cannot reach {socket_path}: {err.strerror}") from None
    if not stat.S_ISSOCK(mode):
        raise PodResourcesUnavailable(f"{socket_path} is not a socket")

    # Imported here: grpc costs ~60 ms and ~14 MiB, paid only on nodes that have a socket to call.
    import grpc  # noqa: PLC0415

    from collector.attribution import podresources_v1_pb2 as api  # noqa: PLC0415

    channel = grpc.insecure_channel(
        "unix://" + os.path.abspath(socket_path),
        options=[("grpc.max_receive_message_length", MAX_RECEIVE_BYTES), ("grpc.enable_retries", 0)],
    )
    try:
        call = channel.unary_unary(
            LIST_METHOD,
            request_serializer=api.ListPodResourcesRequest.SerializeToString,
            response_deserializer=api.ListPodResourcesResponse.FromString,
        )
        return call(api.ListPodResourcesRequest(), timeout=timeout)
    except grpc.RpcError as err:
        code = err.code().name if hasattr(err, "code") else "UNKNOWN"
        details = err.details() if hasattr(err, "details") else str(err)
        raise PodResourcesUnavailable(f"List failed: {code}: {details}") from None
    finally:
        channel.close()
