"""Which task API the containerd that runs ``start`` speaks, and the start reply that picks it.

containerd reads the start helper's output as the shim's address, each line in its own way:

- 1.6 takes it verbatim (JSON would be dialled as an abstract socket);
- 1.7 also accepts JSON ``{"version":2,"address":…,"protocol":"ttrpc"}`` and rejects version 3;
- 2.x accepts version 3, which makes it call ``containerd.task.v3.Task``;
- 2.3+ first tries a ``BootstrapResult`` protobuf.

``MAX_SHIM_VERSION`` is ``2`` on every line, so it cannot tell 1.7 from 2.x. What can: the
containerd binary itself. Every line passes its own executable as ``-publish-binary`` (else
``/proc/<containerd>/exe``), and a Go binary carries its main package path in the
``.go.buildinfo`` ELF section: ``github.com/containerd/containerd/cmd/containerd`` for 1.x,
``github.com/containerd/containerd/v2/cmd/containerd`` for 2.x (Debian's and upstream's builds
alike). Reading it takes the ELF header, the section headers, the section-name table and the
first bytes of that section: four small reads, ~0.1 ms, so nothing is cached. Anything else
(no binary, not ELF, a pre-1.18 Go layout, another main module such as an embedding
distribution) answers "2", which every line understands.

Built-ins only (``struct`` is one): this runs on the start path.
"""

from __future__ import annotations

import json
import struct

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import BinaryIO

__all__ = [
    "TASK_API_ENV",
    "containerd_binary",
    "containerd_task_api",
    "go_build_info",
    "start_reply",
]

TASK_API_ENV = "TRIOSHIM_TASK_API"
"""Set to ``2`` or ``3`` to force the task API version of the start reply (no probing)."""

_BUILDINFO_MAGIC = b"\xff Go buildinf:"
_BUILDINFO_SECTION = b".go.buildinfo"
_CONTAINERD_MODULE = "github.com/containerd/containerd"
_MAX_READ = 1 << 16


def go_build_info(path: str) -> tuple[str, str] | None:
    """``(go version, modinfo)`` of the Go ELF binary at ``path`` (the text ``go version -m``
    prints), or ``None`` if it is not one with an inline-string (Go 1.18+) build info."""
    try:
        with open(path, "rb") as f:
            return _read_build_info(f)
    except (OSError, ValueError, struct.error, IndexError):
        return None


def _read_build_info(f: BinaryIO) -> tuple[str, str] | None:
    read, seek = f.read, f.seek
    header = read(64)
    if len(header) < 64 or header[:4] != b"\x7fELF":
        return None
    cls, data = header[4], header[5]
    if data == 1:
        end = "<"
    elif data == 2:
        end = ">"
    else:
        return None
    if cls == 2:  # ELF64
        shoff = struct.unpack_from(end + "Q", header, 0x28)[0]
        shentsize, shnum, shstrndx = struct.unpack_from(end + "HHH", header, 0x3A)
        sh_fmt, off_i, size_i = end + "IIQQQQ", 4, 5
    elif cls == 1:  # ELF32
        shoff = struct.unpack_from(end + "I", header, 0x20)[0]
        shentsize, shnum, shstrndx = struct.unpack_from(end + "HHH", header, 0x2E)
        sh_fmt, off_i, size_i = end + "IIIIII", 4, 5
    else:
        return None
    if not shoff or not shnum or shnum > 4096 or shstrndx >= shnum:
        return None
    seek(shoff)
    table = read(shentsize * shnum)
    sections = [struct.unpack_from(sh_fmt, table, i * shentsize) for i in range(shnum)]
    names_sec = sections[shstrndx]
    seek(names_sec[off_i])
    names = read(min(names_sec[size_i], _MAX_READ))
    for sec in sections:
        start = sec[0]
        if names[start : start + len(_BUILDINFO_SECTION) + 1] == _BUILDINFO_SECTION + b"\0":
            seek(sec[off_i])
            blob = read(min(sec[size_i], _MAX_READ))
            break
    else:
        return None
    # Go 1.18+: 14-byte magic, pointer size, flags (bit 1: strings inline), padding to 32,
    # then two varint-length-prefixed strings: the Go version and the modinfo.
    if blob[:14] != _BUILDINFO_MAGIC or not blob[15] & 2:
        return None
    pos = 32
    out = []
    for _ in range(2):
        n = shift = 0
        while True:
            b = blob[pos]
            pos += 1
            n |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                break
        if pos + n > len(blob):
            return None
        out.append(blob[pos : pos + n])
        pos += n
    modinfo = out[1]
    if len(modinfo) >= 32:  # 16-byte sentinels around the text
        modinfo = modinfo[16:-16]
    return out[0].decode(errors="replace"), modinfo.decode(errors="replace")


def _module_major(path: str) -> int:
    """``github.com/containerd/containerd[/vN][/...]`` → N (1 without a suffix), else 0."""
    if path != _CONTAINERD_MODULE and not path.startswith(_CONTAINERD_MODULE + "/"):
        return 0
    rest = path[len(_CONTAINERD_MODULE) + 1 :].split("/", 1)[0]
    if len(rest) > 1 and rest[0] == "v" and rest[1:].isdigit():
        return int(rest[1:])
    return 1


def containerd_task_api(binary: str) -> int:
    """The highest task API (2 or 3) the containerd at ``binary`` accepts in a start reply."""
    info = go_build_info(binary)
    if info is None:
        return 2
    for line in info[1].splitlines():
        kind, _, rest = line.partition("\t")
        if kind in ("path", "mod"):
            major = _module_major(rest.split("\t", 1)[0])
            if major:
                return 3 if major >= 2 else 2
    return 2


def containerd_binary(publish_binary: str, containerd_pid: int) -> str:
    """The containerd executable: ``-publish-binary``, else ``/proc/<pid>/exe``."""
    if publish_binary:
        return publish_binary
    return f"/proc/{containerd_pid}/exe" if containerd_pid > 0 else ""


def start_reply(
    address: str,
    *,
    max_task_api: int,
    environ: Mapping[str, str],
    publish_binary: str = "",
    containerd_pid: int = 0,
    bootstrap: bool = False,
) -> bytes:
    """What ``start`` prints: ``address`` (task API 2 everywhere), or, when both the shim
    (``max_task_api``) and the containerd that runs us speak task API 3, the JSON reply that
    selects it (a ``BootstrapResult`` protobuf for 2.3+, which sent ``BootstrapParams``)."""
    env = environ
    version = 2
    if max_task_api >= 3:
        forced = env.get(TASK_API_ENV, "")
        if forced in ("2", "3"):
            version = int(forced)
        elif bootstrap:
            version = 3
        elif env.get("MAX_SHIM_VERSION"):  # 1.7+ (1.6 sets none of the new variables)
            binary = containerd_binary(publish_binary, containerd_pid)
            if binary:
                version = containerd_task_api(binary)
    if version < 3:
        return address.encode()
    if bootstrap:
        from trioshim.api.containerd.runtime.bootstrap.v1 import bootstrap_pb2

        result = bootstrap_pb2.BootstrapResult(version=3, address=address, protocol="ttrpc")
        return result.SerializeToString()
    # "version" first: the text must not parse as a BootstrapResult protobuf either.
    reply = {"version": 3, "address": address, "protocol": "ttrpc"}
    return json.dumps(reply, separators=(",", ":")).encode()
