"""What every cgroup reader shares: the pseudo-file readers and parsers, and the `Cgroup` base.

The reads are done synchronously: they are a few dozen reads of small kernel-generated
pseudo-files (cgroupfs, procfs) that never touch a disk and never block for long, so a thread
hop per file would cost more than the read itself.
"""

from __future__ import annotations

import abc
import errno
import re
from collections.abc import Callable
from typing import ClassVar, Final, TypeVar

from google.protobuf import any_pb2
from google.protobuf.message import Message

from trioshim.ttrpc.errors import Code, NotFound, TTRPCError

DEFAULT_ROOT: Final = "/sys/fs/cgroup"
V1_METRICS_TYPE_URL: Final = "io.containerd.cgroups.v1.Metrics"
V2_METRICS_TYPE_URL: Final = "io.containerd.cgroups.v2.Metrics"

MAX_UINT64: Final = (1 << 64) - 1
MAX_UINT32: Final = (1 << 32) - 1

# errnos that mean "this file (or the whole cgroup) is not there": ENODEV is what a
# read returns on a cgroupfs file whose cgroup was removed after the open.
GONE_ERRNOS: Final = frozenset({errno.ENOENT, errno.ENODEV, errno.ENOTDIR})
# a file we may not read is skipped like a missing one (its fields stay zero)
SKIPPED_ERRNOS: Final = GONE_ERRNOS | {errno.EACCES, errno.EPERM}


# --------------------------------------------------------------------------- helpers


def read_file(path: str) -> str | None:
    """The text of a pseudo-file, or None when it (or its cgroup) is absent or unreadable."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError as exc:
        if exc.errno in SKIPPED_ERRNOS:
            return None
        raise


def parse_uint(text: str) -> int:
    """A uint64 the way containerd/cgroups parses it: negative values become 0."""
    value = int(text.strip(), 10)
    if value < 0:
        return 0
    return min(value, MAX_UINT64)


def parse_uint_or_max(text: str, max_value: int = MAX_UINT64) -> int:
    text = text.strip()
    if text == "max":
        return max_value
    return parse_uint(text)


def read_uint(path: str) -> int | None:
    text = read_file(path)
    if text is None:
        return None
    return parse_uint(text)


def read_uint_or_max(path: str) -> int | None:
    text = read_file(path)
    if text is None:
        return None
    return parse_uint_or_max(text)


def parse_kv(text: str) -> dict[str, int]:
    """`key value` lines (memory.stat, cpu.stat, memory.events, ...).

    Lines that are not two fields or whose value is not an integer are skipped
    (containerd/cgroups v2 keeps such values as strings, which then read as 0).
    """
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 2:
            continue
        try:
            out[parts[0]] = parse_uint(parts[1])
        except ValueError:
            continue
    return out


def read_kv(path: str) -> dict[str, int] | None:
    text = read_file(path)
    if text is None:
        return None
    return parse_kv(text)


def pagesize_bytes(size: str) -> int:
    """'2MB' -> 2097152, for ordering hugetlb entries by page size."""
    m = re.fullmatch(r"(\d+)([KMGTP]?)B", size)
    if m is None:
        return MAX_UINT64
    return int(m.group(1)) << (10 * " KMGTP".index(m.group(2) or " "))


def rdma_entries(text: str) -> list[tuple[str, int, int]]:
    """`mlx4_0 hca_handle=2 hca_object=2000` lines; "max" is 2^32-1."""
    out: list[tuple[str, int, int]] = []
    for line in text.split("\n"):
        parts = line.split()
        if len(parts) != 3:
            continue
        values = {"hca_handle": 0, "hca_object": 0}
        for kv in parts[1:]:
            key, sep, raw = kv.partition("=")
            if not sep or key not in values:
                continue
            try:
                value = parse_uint_or_max(raw, MAX_UINT32)
            except ValueError:
                continue
            if value > MAX_UINT32:
                continue
            values[key] = value
        out.append((parts[0], values["hca_handle"], values["hca_object"]))
    return out


_M = TypeVar("_M", bound=Message)


def pack(message: Message, type_url: str) -> any_pb2.Any:
    return any_pb2.Any(type_url=type_url, value=message.SerializeToString())


# ---------------------------------------------------------------------- the cgroups


class Cgroup(abc.ABC):
    """A container's cgroup: a v1 set of per-controller directories or a v2 directory."""

    version: ClassVar[int]
    type_url: ClassVar[str]

    @abc.abstractmethod
    def exists(self) -> bool:
        """Whether the cgroup is still there."""

    @abc.abstractmethod
    def collect(self) -> Message:
        """The metrics message (v1.Metrics or v2.Metrics), NotFound when the cgroup is gone."""

    def metrics(self) -> any_pb2.Any:
        """The metrics as `Any` with the bare type URL; NotFound when the cgroup is gone."""
        return pack(self.collect(), self.type_url)

    def _collect_guarded(self, fill: Callable[[], _M]) -> _M:
        if not self.exists():
            raise NotFound("cgroup does not exist")
        try:
            message = fill()
        except (OSError, ValueError) as exc:
            if not self.exists():
                raise NotFound("cgroup does not exist") from exc
            # like the reference, other collection errors reach the caller raw (Unknown)
            raise TTRPCError.from_status(Code.UNKNOWN, f"cgroups: {exc}") from exc
        # A cgroup removed while we read reads as zeros: report it gone instead.
        if not self.exists():
            raise NotFound("cgroup does not exist")
        return message
