"""A sandbox ("pause") image built locally, since nothing can be pulled here.

`build_pause_image(dest)` writes an OCI image-layout tarball (oci-layout, index.json,
blobs/sha256/...) whose single gzip layer is a busybox root filesystem (tests.support.rootfs,
from Debian's busybox-static), with entrypoint `/bin/sleep 2147483647` (about 68 years: the
sandbox process only has to exist; StopPodSandbox SIGKILLs it). Every busybox applet is in the
image, so the same image also serves as the image of the pod's containers (which set their own
command). Import: `ctr -n k8s.io images import --snapshotter native DEST`; the index entry
carries `io.containerd.image.name`, so it lands as PAUSE_IMAGE whatever the ctr version.

Deterministic: the same busybox gives the same digests. `build_image` makes any such image from
a directory (the wasm CRI test puts a module in one).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import platform
import tarfile
import tempfile
from pathlib import Path

from tests.support.rootfs import build_busybox_rootfs

PAUSE_IMAGE = "localhost/trioshim/pause:busybox"
PAUSE_ENTRYPOINT = ["/bin/sleep", "2147483647"]

_ARCH = {
    "x86_64": "amd64",
    "aarch64": "arm64",
    "armv7l": "arm",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}


def oci_arch() -> str:
    m = platform.machine()
    return _ARCH.get(m, m)


def _layer_tar(root: Path) -> bytes:
    """An uncompressed tar of `root`, sorted, owned by root, mtime 0."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        paths = sorted(p for p in root.rglob("*"))
        for p in paths:
            rel = p.relative_to(root).as_posix()
            info = tar.gettarinfo(str(p), arcname=rel)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = 0
            if info.isfile():
                with open(p, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    return buf.getvalue()


def _blob(blobs: dict[str, bytes], data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blobs[digest] = data
    return digest


def build_pause_image(dest: Path | str, ref: str = PAUSE_IMAGE) -> Path:
    """Write the image tarball to `dest` and return it."""
    with tempfile.TemporaryDirectory(prefix="pause-rootfs-") as tmp:
        root = build_busybox_rootfs(Path(tmp) / "rootfs")
        return build_image(dest, ref, root, PAUSE_ENTRYPOINT, what="busybox-static rootfs")


def build_image(
    dest: Path | str, ref: str, root: Path, entrypoint: list[str], *, what: str
) -> Path:
    """Write an OCI image-layout tarball to `dest`: one layer holding the tree at `root`,
    `entrypoint` as the config's Entrypoint, named `ref`; `what` goes into its history."""
    dest = Path(dest)
    layer = _layer_tar(root)
    gz = gzip.compress(layer, compresslevel=6, mtime=0)
    blobs: dict[str, bytes] = {}
    layer_digest = _blob(blobs, gz)
    config = {
        "architecture": oci_arch(),
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Entrypoint": entrypoint,
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]},
        "history": [
            {
                "created_by": f"trioshim tests: {what}",
                "created": "1970-01-01T00:00:00Z",
            }
        ],
        "created": "1970-01-01T00:00:00Z",
    }
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    config_digest = _blob(blobs, config_bytes)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": len(config_bytes),
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": layer_digest,
                "size": len(gz),
            }
        ],
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    manifest_digest = _blob(blobs, manifest_bytes)
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": len(manifest_bytes),
                "platform": {"architecture": oci_arch(), "os": "linux"},
                "annotations": {
                    "io.containerd.image.name": ref,
                    "org.opencontainers.image.ref.name": ref.rsplit(":", 1)[-1],
                },
            }
        ],
    }
    files: list[tuple[str, bytes]] = [
        ("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
        ("index.json", json.dumps(index, sort_keys=True, separators=(",", ":")).encode()),
    ]
    files += [(f"blobs/sha256/{d.removeprefix('sha256:')}", b) for d, b in sorted(blobs.items())]
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp_dest = dest.with_name(dest.name + f".tmp{os.getpid()}")
    with tarfile.open(tmp_dest, "w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    tmp_dest.rename(dest)
    return dest
