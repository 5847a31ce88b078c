"""Container images without a registry: an OCI image layout archive (index.json, manifest, config, one layer) made
from the host's static busybox, which `ctr images import`, `podman load` and `docker load` all read.

The tests that start real container runtimes need a workload image and containerd's pause image, and must not
depend on a registry, so both are built here from Debian's `busybox-static` (/bin/busybox).
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
import struct
import tarfile
from pathlib import Path
from typing import Any

BUSYBOX = Path("/bin/busybox")
APPLETS = ("sh", "sleep", "cat", "ls", "ps")
OCI_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "ppc64le": "ppc64le", "s390x": "s390x"}


def is_static(path: Path) -> bool:
    """Whether the ELF executable at path needs no dynamic loader (no PT_INTERP program header): the only kind of
    binary that runs alone in an image with nothing else in it."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2:  # ELFCLASS64
        return False
    order = "<" if data[5] == 1 else ">"
    phoff, = struct.unpack_from(order + "Q", data, 0x20)
    phentsize, phnum = struct.unpack_from(order + "HH", data, 0x36)
    return all(struct.unpack_from(order + "I", data, phoff + i * phentsize)[0] != 3 for i in range(phnum))


def _layer() -> bytes:
    """An uncompressed layer: /bin/busybox and its applets as links, and the empty mount points runc expects."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory in ("bin", "dev", "proc", "sys", "tmp", "etc"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            tar.addfile(info)
        body = BUSYBOX.read_bytes()
        info = tarfile.TarInfo("bin/busybox")
        info.size, info.mode, info.mtime = len(body), 0o755, 0
        tar.addfile(info, io.BytesIO(body))
        for applet in APPLETS:
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname, info.mode, info.mtime = tarfile.SYMTYPE, "busybox", 0o777, 0
            tar.addfile(info)
    return out.getvalue()


def _descriptor(media_type: str, blob: bytes, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": "sha256:" + hashlib.sha256(blob).hexdigest(), "size": len(blob),
            **extra}


def build_archive(path: Path, name: str, cmd: list[str]) -> Path:
    """Writes an OCI image layout tar at path holding one image, `name` (a full reference such as
    localhost/gpc-busybox:test, in the index's io.containerd.image.name annotation for ctr, the tag in
    org.opencontainers.image.ref.name for podman), whose default command is cmd. Fails when /bin/busybox is
    missing or not static (the `busybox` package's is dynamic; `busybox-static` replaces it)."""
    if not BUSYBOX.exists() or not is_static(BUSYBOX):
        raise RuntimeError(f"{BUSYBOX} is missing or not statically linked (install busybox-static)")
    arch = OCI_ARCH.get(platform.machine(), platform.machine())
    layer = _layer()
    config = json.dumps({
        "architecture": arch, "os": "linux",
        "config": {"Cmd": cmd, "Env": ["PATH=/bin"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]},
    }, sort_keys=True).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": _descriptor("application/vnd.oci.image.config.v1+json", config),
        "layers": [_descriptor("application/vnd.oci.image.layer.v1.tar", layer)],
    }, sort_keys=True).encode()
    tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else "latest"
    index = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [_descriptor("application/vnd.oci.image.manifest.v1+json", manifest,
                                  annotations={"io.containerd.image.name": name,
                                               "org.opencontainers.image.ref.name": tag},
                                  platform={"architecture": arch, "os": "linux"})],
    }, sort_keys=True).encode()
    files = {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}', "index.json": index}
    for blob in (layer, config, manifest):
        files["blobs/sha256/" + hashlib.sha256(blob).hexdigest()] = blob
    with tarfile.open(path, mode="w") as tar:
        for directory in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for member, blob in files.items():
            info = tarfile.TarInfo(member)
            info.size, info.mode = len(blob), 0o644
            tar.addfile(info, io.BytesIO(blob))
    return path
