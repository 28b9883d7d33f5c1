"""A container's cgroup (v1 or v2) and its metrics for the Stats RPC.

`load_cgroup(pid)` finds the cgroup of a container's init process from
`/proc/<pid>/cgroup`; `Cgroup.metrics()` reads the controller files and returns
an `Any` holding `io.containerd.cgroups.v1.Metrics` or `io.containerd.cgroups.v2.Metrics`
under the bare type URL, as containerd-shim-runc-v2 does.

File names and field meanings follow containerd/cgroups v1.0.4 (the library the
reference shim vendors), with these deliberate differences:

- a missing (or unreadable) file costs only the fields it would have filled (the
  reference drops the rest of the controller after the first missing file, e.g. all
  kernel memory entries when swap accounting is off);
- v2 `cpu.stat` is read even when the cpu controller is not enabled (the kernel
  always provides usage_usec/user_usec/system_usec there);
- v2 also fills the newer fields of the message (memory.peak, memory.swap.peak,
  nr_bursts, oom_group_kill, the hugetlb failcnt and the pressure stall information);
- a cgroup that has vanished is reported as NotFound instead of an empty message.

The reads are done synchronously: they are a few dozen reads of small
kernel-generated pseudo-files (cgroupfs, procfs) that never touch a disk and never
block for long, so a thread hop per file would cost more than the read itself.
"""

from __future__ import annotations

import abc
import errno
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping
from typing import ClassVar, Final, TypeVar

from google.protobuf import any_pb2
from google.protobuf.internal.containers import RepeatedCompositeFieldContainer
from google.protobuf.message import Message

from trioshim.api.cgroups.v1 import metrics_pb2 as v1
from trioshim.api.cgroups.v2 import metrics_pb2 as v2
from trioshim.ttrpc.errors import Code, NotFound, TTRPCError

__all__ = [
    "DEFAULT_ROOT",
    "V1_METRICS_TYPE_URL",
    "V2_METRICS_TYPE_URL",
    "Cgroup",
    "CgroupV1",
    "CgroupV2",
    "cgroup_at",
    "is_unified",
    "load_cgroup",
]

DEFAULT_ROOT: Final = "/sys/fs/cgroup"
V1_METRICS_TYPE_URL: Final = "io.containerd.cgroups.v1.Metrics"
V2_METRICS_TYPE_URL: Final = "io.containerd.cgroups.v2.Metrics"

_MAX_UINT64: Final = (1 << 64) - 1
_MAX_UINT32: Final = (1 << 32) - 1

# errnos that mean "this file (or the whole cgroup) is not there": ENODEV is what a
# read returns on a cgroupfs file whose cgroup was removed after the open.
_GONE_ERRNOS: Final = frozenset({errno.ENOENT, errno.ENODEV, errno.ENOTDIR})
# a file we may not read is skipped like a missing one (its fields stay zero)
_SKIPPED_ERRNOS: Final = _GONE_ERRNOS | {errno.EACCES, errno.EPERM}


# --------------------------------------------------------------------------- helpers


def _read(path: str) -> str | None:
    """The text of a pseudo-file, or None when it (or its cgroup) is absent or unreadable."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError as exc:
        if exc.errno in _SKIPPED_ERRNOS:
            return None
        raise


def _parse_uint(text: str) -> int:
    """A uint64 the way containerd/cgroups parses it: negative values become 0."""
    value = int(text.strip(), 10)
    if value < 0:
        return 0
    return min(value, _MAX_UINT64)


def _parse_uint_or_max(text: str, max_value: int = _MAX_UINT64) -> int:
    text = text.strip()
    if text == "max":
        return max_value
    return _parse_uint(text)


def _read_uint(path: str) -> int | None:
    text = _read(path)
    if text is None:
        return None
    return _parse_uint(text)


def _read_uint_or_max(path: str) -> int | None:
    text = _read(path)
    if text is None:
        return None
    return _parse_uint_or_max(text)


def _parse_kv(text: str) -> dict[str, int]:
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
            out[parts[0]] = _parse_uint(parts[1])
        except ValueError:
            continue
    return out


def _read_kv(path: str) -> dict[str, int] | None:
    text = _read(path)
    if text is None:
        return None
    return _parse_kv(text)


def _pagesize_bytes(size: str) -> int:
    """'2MB' -> 2097152, for ordering hugetlb entries by page size."""
    m = re.fullmatch(r"(\d+)([KMGTP]?)B", size)
    if m is None:
        return _MAX_UINT64
    return int(m.group(1)) << (10 * " KMGTP".index(m.group(2) or " "))


def _rdma_entries(text: str) -> list[tuple[str, int, int]]:
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
                value = _parse_uint_or_max(raw, _MAX_UINT32)
            except ValueError:
                continue
            if value > _MAX_UINT32:
                continue
            values[key] = value
        out.append((parts[0], values["hca_handle"], values["hca_object"]))
    return out


_M = TypeVar("_M", bound=Message)


def _pack(message: Message, type_url: str) -> any_pb2.Any:
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
        return _pack(self.collect(), self.type_url)

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


# v1 memory.stat key -> v1.MemoryStat field
_V1_MEMORY_STAT_FIELDS: Final[Mapping[str, str]] = {
    "cache": "cache",
    "rss": "rss",
    "rss_huge": "rss_huge",
    "mapped_file": "mapped_file",
    "dirty": "dirty",
    "writeback": "writeback",
    "pgpgin": "pg_pg_in",
    "pgpgout": "pg_pg_out",
    "pgfault": "pg_fault",
    "pgmajfault": "pg_maj_fault",
    "inactive_anon": "inactive_anon",
    "active_anon": "active_anon",
    "inactive_file": "inactive_file",
    "active_file": "active_file",
    "unevictable": "unevictable",
    "hierarchical_memory_limit": "hierarchical_memory_limit",
    "hierarchical_memsw_limit": "hierarchical_swap_limit",
    "total_cache": "total_cache",
    "total_rss": "total_rss",
    "total_rss_huge": "total_rss_huge",
    "total_mapped_file": "total_mapped_file",
    "total_dirty": "total_dirty",
    "total_writeback": "total_writeback",
    "total_pgpgin": "total_pg_pg_in",
    "total_pgpgout": "total_pg_pg_out",
    "total_pgfault": "total_pg_fault",
    "total_pgmajfault": "total_pg_maj_fault",
    "total_inactive_anon": "total_inactive_anon",
    "total_active_anon": "total_active_anon",
    "total_inactive_file": "total_inactive_file",
    "total_active_file": "total_active_file",
    "total_unevictable": "total_unevictable",
}

# (file infix, v1.MemoryStat entry field)
_V1_MEMORY_ENTRIES: Final = (
    ("", "usage"),
    ("memsw.", "swap"),
    ("kmem.", "kernel"),
    ("kmem.tcp.", "kernel_tcp"),
)

# blkio.<name> -> v1.BlkIOStat field, the CFQ/BFQ-era recursive files first
_V1_BLKIO_RECURSIVE: Final = (
    ("sectors_recursive", "sectors_recursive"),
    ("io_service_bytes_recursive", "io_service_bytes_recursive"),
    ("io_serviced_recursive", "io_serviced_recursive"),
    ("io_queued_recursive", "io_queued_recursive"),
    ("io_service_time_recursive", "io_service_time_recursive"),
    ("io_wait_time_recursive", "io_wait_time_recursive"),
    ("io_merged_recursive", "io_merged_recursive"),
    ("time_recursive", "io_time_recursive"),
)
_V1_BLKIO_THROTTLE: Final = (
    ("throttle.io_serviced", "io_serviced_recursive"),
    ("throttle.io_service_bytes", "io_service_bytes_recursive"),
)

_V1_HUGETLB_RE: Final = re.compile(r"hugetlb\.([^.]+)\.usage_in_bytes")


class CgroupV1(Cgroup):
    """A legacy (or hybrid) cgroup: one directory per controller.

    `paths` maps a controller name as it appears in /proc/<pid>/cgroup ("memory",
    "cpuacct", "name=systemd", ...) to its directory.
    """

    version = 1
    type_url = V1_METRICS_TYPE_URL

    def __init__(self, paths: Mapping[str, str], *, proc: str = "/proc") -> None:
        self.paths: dict[str, str] = dict(paths)
        self._proc = proc
        self._clock_ticks = os.sysconf("SC_CLK_TCK")

    def __repr__(self) -> str:
        return f"CgroupV1({self.paths!r})"

    @property
    def memory_path(self) -> str | None:
        """The memory controller's directory (what the v1 OOM watcher needs)."""
        return self.paths.get("memory")

    def exists(self) -> bool:
        # The reference treats the group as deleted once any controller directory is
        # gone (runc removes them all together); "none left" is the robust reading.
        return any(os.path.isdir(p) for p in self.paths.values())

    def collect(self) -> v1.Metrics:
        return self._collect_guarded(self._fill)

    def _fill(self) -> v1.Metrics:
        m = v1.Metrics()
        m.cpu.usage.SetInParent()
        m.cpu.throttling.SetInParent()
        for name, fill in (
            ("hugetlb", self._hugetlb),
            ("pids", self._pids),
            ("cpu", self._cpu),
            ("cpuacct", self._cpuacct),
            ("memory", self._memory),
            ("blkio", self._blkio),
            ("rdma", self._rdma),
        ):
            path = self.paths.get(name)
            # a controller that is not mounted (or not in this process's view) is skipped
            if path is not None and os.path.isdir(path):
                fill(path, m)
        return m

    def _hugetlb(self, path: str, m: v1.Metrics) -> None:
        sizes = []
        with os.scandir(path) as it:
            for entry in it:
                match = _V1_HUGETLB_RE.fullmatch(entry.name)
                if match:
                    sizes.append(match.group(1))
        for size in sorted(sizes, key=_pagesize_bytes):
            values = {
                name: _read_uint(os.path.join(path, f"hugetlb.{size}.{name}"))
                for name in ("usage_in_bytes", "max_usage_in_bytes", "failcnt")
            }
            if all(v is None for v in values.values()):
                continue
            m.hugetlb.add(
                pagesize=size,
                usage=values["usage_in_bytes"] or 0,
                max=values["max_usage_in_bytes"] or 0,
                failcnt=values["failcnt"] or 0,
            )

    def _pids(self, path: str, m: v1.Metrics) -> None:
        current = _read_uint(os.path.join(path, "pids.current"))
        limit_text = _read(os.path.join(path, "pids.max"))
        if current is None or limit_text is None:
            return
        limit_text = limit_text.strip()
        # v1 reports an unlimited pids.max as 0 (v2 as 2^64-1)
        limit = 0 if limit_text == "max" else _parse_uint(limit_text)
        m.pids.current = current
        m.pids.limit = limit

    def _cpu(self, path: str, m: v1.Metrics) -> None:
        stat = _read_kv(os.path.join(path, "cpu.stat"))
        if stat is None:
            return
        throttling = m.cpu.throttling
        throttling.periods = stat.get("nr_periods", 0)
        throttling.throttled_periods = stat.get("nr_throttled", 0)
        throttling.throttled_time = stat.get("throttled_time", 0)

    def _cpuacct(self, path: str, m: v1.Metrics) -> None:
        usage = m.cpu.usage
        total = _read_uint(os.path.join(path, "cpuacct.usage"))
        if total is not None:
            usage.total = total
        percpu = _read(os.path.join(path, "cpuacct.usage_percpu"))
        if percpu is not None:
            usage.per_cpu[:] = [_parse_uint(v) for v in percpu.split()]
        stat = _read(os.path.join(path, "cpuacct.stat"))
        if stat is not None:
            # "user <ticks>\nsystem <ticks>" in USER_HZ; reported in nanoseconds
            fields = _parse_kv(stat)
            usage.user = fields.get("user", 0) * 1_000_000_000 // self._clock_ticks
            usage.kernel = fields.get("system", 0) * 1_000_000_000 // self._clock_ticks

    def _memory(self, path: str, m: v1.Metrics) -> None:
        stat = _read_kv(os.path.join(path, "memory.stat"))
        if stat is None:
            return
        memory = m.memory
        for key, field in _V1_MEMORY_STAT_FIELDS.items():
            setattr(memory, field, stat.get(key, 0))
        for infix, entry_field in _V1_MEMORY_ENTRIES:
            entry = getattr(memory, entry_field)
            entry.SetInParent()
            for suffix, attr in (
                ("usage_in_bytes", "usage"),
                ("max_usage_in_bytes", "max"),
                ("failcnt", "failcnt"),
                ("limit_in_bytes", "limit"),
            ):
                value = _read_uint(os.path.join(path, f"memory.{infix}{suffix}"))
                if value is not None:
                    setattr(entry, attr, value)
        oom = _read_kv(os.path.join(path, "memory.oom_control"))
        if oom is not None:
            m.memory_oom_control.oom_kill_disable = oom.get("oom_kill_disable", 0)
            m.memory_oom_control.under_oom = oom.get("under_oom", 0)
            m.memory_oom_control.oom_kill = oom.get("oom_kill", 0)

    def _blkio(self, path: str, m: v1.Metrics) -> None:
        blkio = m.blkio
        blkio.SetInParent()
        devices = self._devices()
        count = 0
        if os.path.lexists(os.path.join(path, "blkio.io_serviced_recursive")):
            for name, field in _V1_BLKIO_RECURSIVE:
                count += self._blkio_entries(path, name, getattr(blkio, field), devices)
        if count > 0:
            return
        # no CFQ/BFQ stats for this group's devices: fall back to the throttle files
        for name, field in _V1_BLKIO_THROTTLE:
            self._blkio_entries(path, name, getattr(blkio, field), devices)

    def _blkio_entries(
        self,
        path: str,
        name: str,
        entries: RepeatedCompositeFieldContainer[v1.BlkIOEntry],
        devices: Mapping[tuple[int, int], str],
    ) -> int:
        text = _read(os.path.join(path, f"blkio.{name}"))
        if text is None:
            return 0
        count = 0
        for line in text.splitlines():
            # "8:0 Read 4096", "8:0 4096" (no op) or "Total 4096"
            fields = line.replace(":", " ").split()
            if len(fields) < 3:
                if not fields or (len(fields) == 2 and fields[0] == "Total"):
                    continue
                raise ValueError(f"invalid line in {path}/blkio.{name}: {line!r}")
            major, minor = int(fields[0]), int(fields[1])
            op, value = ("", fields[2]) if len(fields) == 3 else (fields[2], fields[3])
            entries.add(
                device=devices.get((major, minor), ""),
                major=major,
                minor=minor,
                op=op,
                value=_parse_uint(value),
            )
            count += 1
        return count

    def _devices(self) -> dict[tuple[int, int], str]:
        """major:minor -> /dev/<name> from /proc/partitions (first occurrence wins)."""
        text = _read(os.path.join(self._proc, "partitions"))
        devices: dict[tuple[int, int], str] = {}
        if text is None:
            return devices
        for line in text.splitlines()[2:]:
            fields = line.split()
            if len(fields) < 4:
                continue
            try:
                key = (int(fields[0]), int(fields[1]))
            except ValueError:
                continue
            devices.setdefault(key, os.path.join("/dev", fields[3]))
        return devices

    def _rdma(self, path: str, m: v1.Metrics) -> None:
        current = _read(os.path.join(path, "rdma.current"))
        limit = _read(os.path.join(path, "rdma.max"))
        if current is None or limit is None:
            return
        if len(current.split("\n")) != len(limit.split("\n")):
            return
        m.rdma.SetInParent()
        for device, handles, objects in _rdma_entries(current):
            m.rdma.current.add(device=device, hca_handles=handles, hca_objects=objects)
        for device, handles, objects in _rdma_entries(limit):
            m.rdma.limit.add(device=device, hca_handles=handles, hca_objects=objects)


# v2 memory.* single files -> v2.MemoryStat field
_V2_MEMORY_FILES: Final = (
    ("memory.current", "usage"),
    ("memory.max", "usage_limit"),
    ("memory.swap.current", "swap_usage"),
    ("memory.swap.max", "swap_limit"),
    ("memory.peak", "max_usage"),
    ("memory.swap.peak", "swap_max_usage"),
)
# every other uint64 field of v2.MemoryStat is the memory.stat key of the same name
_V2_MEMORY_STAT_FIELDS: Final = tuple(
    f.name
    for f in v2.MemoryStat.DESCRIPTOR.fields
    if f.type == f.TYPE_UINT64 and f.name not in {name for _, name in _V2_MEMORY_FILES}
)
_V2_CPU_STAT_FIELDS: Final = (
    "usage_usec",
    "user_usec",
    "system_usec",
    "nr_periods",
    "nr_throttled",
    "throttled_usec",
    "nr_bursts",
    "burst_usec",
)
_V2_MEMORY_EVENT_FIELDS: Final = ("low", "high", "max", "oom", "oom_kill", "oom_group_kill")
_V2_HUGETLB_RE: Final = re.compile(r"hugetlb\.([^.]+)\.(current|max|events)")


def _parse_psi(text: str, psi: v2.PSIStats) -> None:
    """`some avg10=0.00 avg60=0.00 avg300=0.00 total=0` (and a `full` line)."""
    for line in text.splitlines():
        kind, *pairs = line.split()
        if kind not in ("some", "full"):
            continue
        data = getattr(psi, kind)
        data.SetInParent()
        for pair in pairs:
            key, _, raw = pair.partition("=")
            try:
                if key == "total":
                    data.total = _parse_uint(raw)
                elif key in ("avg10", "avg60", "avg300"):
                    value = float(raw)
                    if math.isfinite(value):
                        setattr(data, key, value)
            except ValueError:
                continue


class CgroupV2(Cgroup):
    """A cgroup on the unified hierarchy: one directory."""

    version = 2
    type_url = V2_METRICS_TYPE_URL

    def __init__(self, path: str) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f"CgroupV2({self.path!r})"

    def exists(self) -> bool:
        return os.path.exists(os.path.join(self.path, "cgroup.controllers"))

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def collect(self) -> v2.Metrics:
        return self._collect_guarded(self._fill)

    def _fill(self) -> v2.Metrics:
        m = v2.Metrics()
        self._pids(m)
        self._cpu(m)
        self._memory(m)
        self._io(m)
        self._rdma(m)
        self._hugetlb(m)
        return m

    def _pids(self, m: v2.Metrics) -> None:
        m.pids.SetInParent()
        m.pids.current = _read_uint(self.file("pids.current")) or 0
        m.pids.limit = _read_uint_or_max(self.file("pids.max")) or 0

    def _cpu(self, m: v2.Metrics) -> None:
        m.cpu.SetInParent()
        stat = _read_kv(self.file("cpu.stat")) or {}
        for field in _V2_CPU_STAT_FIELDS:
            setattr(m.cpu, field, stat.get(field, 0))
        pressure = _read(self.file("cpu.pressure"))
        if pressure is not None:
            _parse_psi(pressure, m.cpu.psi)

    def _memory(self, m: v2.Metrics) -> None:
        memory = m.memory
        memory.SetInParent()
        stat = _read_kv(self.file("memory.stat")) or {}
        for field in _V2_MEMORY_STAT_FIELDS:
            setattr(memory, field, stat.get(field, 0))
        for name, field in _V2_MEMORY_FILES:
            setattr(memory, field, _read_uint_or_max(self.file(name)) or 0)
        pressure = _read(self.file("memory.pressure"))
        if pressure is not None:
            _parse_psi(pressure, memory.psi)
        events = _read_kv(self.file("memory.events"))
        if events:
            m.memory_events.SetInParent()
            for field in _V2_MEMORY_EVENT_FIELDS:
                setattr(m.memory_events, field, events.get(field, 0))

    def _io(self, m: v2.Metrics) -> None:
        m.io.SetInParent()
        text = _read(self.file("io.stat")) or ""
        for line in text.split("\n"):
            # "8:0 rbytes=90112 wbytes=0 rios=3 wios=0 dbytes=0 dios=0"
            parts = line.split()
            if len(parts) < 2:
                continue
            major, sep, minor = parts[0].partition(":")
            if not sep or not major.isdigit() or not minor.isdigit():
                continue
            values: dict[str, int] = {}
            for pair in parts[1:]:
                key, sep, raw = pair.partition("=")
                if sep and raw.isdigit():
                    values[key] = min(int(raw), _MAX_UINT64)
            m.io.usage.add(
                major=int(major),
                minor=int(minor),
                rbytes=values.get("rbytes", 0),
                wbytes=values.get("wbytes", 0),
                rios=values.get("rios", 0),
                wios=values.get("wios", 0),
            )
        pressure = _read(self.file("io.pressure"))
        if pressure is not None:
            _parse_psi(pressure, m.io.psi)

    def _rdma(self, m: v2.Metrics) -> None:
        m.rdma.SetInParent()
        for name, entries in (("rdma.current", m.rdma.current), ("rdma.max", m.rdma.limit)):
            text = _read(self.file(name))
            if text is None:
                continue
            for device, handles, objects in _rdma_entries(text):
                entries.add(device=device, hca_handles=handles, hca_objects=objects)

    def _hugetlb(self, m: v2.Metrics) -> None:
        sizes: set[str] = set()
        with os.scandir(self.path) as it:
            for entry in it:
                match = _V2_HUGETLB_RE.fullmatch(entry.name)
                if match:
                    sizes.add(match.group(1))
        for size in sorted(sizes, key=_pagesize_bytes):
            current = _read_uint_or_max(self.file(f"hugetlb.{size}.current"))
            limit = _read_uint_or_max(self.file(f"hugetlb.{size}.max"))
            events = _read_kv(self.file(f"hugetlb.{size}.events"))
            if current is None and limit is None:
                continue
            m.hugetlb.add(
                pagesize=size,
                current=current or 0,
                max=limit or 0,
                failcnt=(events or {}).get("max", 0),
            )


# ---------------------------------------------------------------------------- loading


def is_unified(root: str = DEFAULT_ROOT) -> bool:
    """Whether `root` is a cgroup v2 (unified) mount.

    A hybrid host (v1 controllers plus a v2 mount at <root>/unified) is not unified:
    the reference shim uses v1 there.
    """
    return os.path.exists(os.path.join(root, "cgroup.controllers"))


def _parse_proc_cgroup(text: str) -> Iterator[tuple[list[str], str]]:
    """(controller names, path) per line of /proc/<pid>/cgroup; [] names for v2."""
    for line in text.splitlines():
        if not line:
            continue
        parts = line.split(":", 2)
        if len(parts) != 3:
            raise ValueError(f"invalid cgroup entry: {line!r}")
        _, controllers, path = parts
        yield ([c for c in controllers.split(",") if c], path)


def _v1_mount_roots() -> dict[str, str]:
    """Mount point -> root inside the hierarchy, for every v1 cgroup mount we can see.

    /proc/<pid>/cgroup paths are relative to the hierarchy's root; when the mount
    itself shows a subtree (a nested setup) the mount's root must be stripped.
    """
    text = _read("/proc/self/mountinfo")
    out: dict[str, str] = {}
    for line in (text or "").splitlines():
        fields = line.split(" ")
        try:
            sep = fields.index("-")
        except ValueError:
            continue
        if sep + 1 < len(fields) and fields[sep + 1] == "cgroup" and len(fields) > 4:
            out[_unescape_mountinfo(fields[4])] = _unescape_mountinfo(fields[3])
    return out


def _unescape_mountinfo(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _join(base: str, path: str) -> str | None:
    """`base`/`path`, or None when `path` climbs out of `base` (e.g. "/../x" seen from
    inside a cgroup namespace for a process outside it)."""
    joined = os.path.normpath(os.path.join(base, path.lstrip("/")))
    base = os.path.normpath(base)
    if joined != base and not joined.startswith(base.rstrip("/") + "/"):
        return None
    return joined


def load_cgroup(pid: int, root: str = DEFAULT_ROOT, *, proc: str = "/proc") -> Cgroup | None:
    """The cgroup of process `pid`, or None when it cannot be found.

    On a unified host the `0::<path>` line gives one directory under `root`. On a
    legacy/hybrid host every controller line gives a directory under
    `root/<controller>` (falling back to the combined mount name, e.g.
    `root/cpu,cpuacct`, when there is no per-controller link); `name=systemd` maps
    to `root/systemd`; the v2 line of a hybrid host is ignored; directories that do
    not exist (controller not mounted) are left out.
    """
    text = _read(os.path.join(proc, str(pid), "cgroup"))
    if text is None:
        return None
    entries = list(_parse_proc_cgroup(text))
    if is_unified(root):
        for controllers, path in entries:
            if not controllers:
                directory = _join(root, path)
                if directory is None:
                    return None
                cg = CgroupV2(directory)
                return cg if cg.exists() else None
        return None

    mount_roots = _v1_mount_roots() if root == DEFAULT_ROOT else {}
    paths: dict[str, str] = {}
    for controllers, path in entries:
        if not controllers:
            continue
        mount_names = [c.removeprefix("name=") for c in controllers]
        for controller, mount_name in zip(controllers, mount_names, strict=True):
            for candidate in (
                os.path.join(root, mount_name),
                os.path.join(root, ",".join(mount_names)),
            ):
                if os.path.isdir(candidate):
                    break
            else:
                continue
            mount_root = mount_roots.get(candidate) or mount_roots.get(os.path.realpath(candidate))
            rel = path
            if mount_root and mount_root != "/" and (path + "/").startswith(mount_root + "/"):
                rel = path[len(mount_root) :]
            directory = _join(candidate, rel)
            if directory is not None and os.path.isdir(directory):
                paths[controller] = directory
    if not paths:
        return None
    return CgroupV1(paths, proc=proc)


def cgroup_at(path: str, root: str = DEFAULT_ROOT) -> Cgroup | None:
    """The cgroup at `path` (a cgroupfs path such as ``/default/c1``), or None when it does
    not exist: for a container whose cgroup is known by its spec rather than by a live pid.

    On a unified host one directory under `root`; otherwise `path` in every v1 hierarchy
    mounted under `root` (a combined mount such as ``cpu,cpuacct`` serves each of its
    controllers; the v2 tree of a hybrid host is ignored, as in :func:`load_cgroup`).
    """
    if is_unified(root):
        directory = _join(root, path)
        if directory is None or not os.path.isdir(directory):
            return None
        return CgroupV2(directory)
    paths: dict[str, str] = {}
    for mount_name in sorted(os.listdir(root)):
        hierarchy = os.path.join(root, mount_name)
        if os.path.islink(hierarchy) or os.path.exists(
            os.path.join(hierarchy, "cgroup.controllers")
        ):
            continue  # a link to a combined mount, or the hybrid host's v2 tree
        directory = _join(hierarchy, path)
        if directory is None or not os.path.isdir(directory):
            continue
        for controller in mount_name.split(","):
            paths["name=" + controller if controller == "systemd" else controller] = directory
    return CgroupV1(paths) if paths else None
