"""A cgroup v1 (legacy or hybrid host): one directory per controller, read into
`io.containerd.cgroups.v1.Metrics`."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Final

from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

from trioshim.api.cgroups.v1 import metrics_pb2 as v1
from trioshim.shim.cgroups.files import (
    V1_METRICS_TYPE_URL,
    Cgroup,
    pagesize_bytes,
    parse_kv,
    parse_uint,
    rdma_entries,
    read_file,
    read_kv,
    read_uint,
)

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
        for size in sorted(sizes, key=pagesize_bytes):
            values = {
                name: read_uint(os.path.join(path, f"hugetlb.{size}.{name}"))
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
        current = read_uint(os.path.join(path, "pids.current"))
        limit_text = read_file(os.path.join(path, "pids.max"))
        if current is None or limit_text is None:
            return
        limit_text = limit_text.strip()
        # v1 reports an unlimited pids.max as 0 (v2 as 2^64-1)
        limit = 0 if limit_text == "max" else parse_uint(limit_text)
        m.pids.current = current
        m.pids.limit = limit

    def _cpu(self, path: str, m: v1.Metrics) -> None:
        stat = read_kv(os.path.join(path, "cpu.stat"))
        if stat is None:
            return
        throttling = m.cpu.throttling
        throttling.periods = stat.get("nr_periods", 0)
        throttling.throttled_periods = stat.get("nr_throttled", 0)
        throttling.throttled_time = stat.get("throttled_time", 0)

    def _cpuacct(self, path: str, m: v1.Metrics) -> None:
        usage = m.cpu.usage
        total = read_uint(os.path.join(path, "cpuacct.usage"))
        if total is not None:
            usage.total = total
        percpu = read_file(os.path.join(path, "cpuacct.usage_percpu"))
        if percpu is not None:
            usage.per_cpu[:] = [parse_uint(v) for v in percpu.split()]
        stat = read_file(os.path.join(path, "cpuacct.stat"))
        if stat is not None:
            # "user <ticks>\nsystem <ticks>" in USER_HZ; reported in nanoseconds
            fields = parse_kv(stat)
            usage.user = fields.get("user", 0) * 1_000_000_000 // self._clock_ticks
            usage.kernel = fields.get("system", 0) * 1_000_000_000 // self._clock_ticks

    def _memory(self, path: str, m: v1.Metrics) -> None:
        stat = read_kv(os.path.join(path, "memory.stat"))
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
                value = read_uint(os.path.join(path, f"memory.{infix}{suffix}"))
                if value is not None:
                    setattr(entry, attr, value)
        oom = read_kv(os.path.join(path, "memory.oom_control"))
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
        text = read_file(os.path.join(path, f"blkio.{name}"))
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
                value=parse_uint(value),
            )
            count += 1
        return count

    def _devices(self) -> dict[tuple[int, int], str]:
        """major:minor -> /dev/<name> from /proc/partitions (first occurrence wins)."""
        text = read_file(os.path.join(self._proc, "partitions"))
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
        current = read_file(os.path.join(path, "rdma.current"))
        limit = read_file(os.path.join(path, "rdma.max"))
        if current is None or limit is None:
            return
        if len(current.split("\n")) != len(limit.split("\n")):
            return
        m.rdma.SetInParent()
        for device, handles, objects in rdma_entries(current):
            m.rdma.current.add(device=device, hca_handles=handles, hca_objects=objects)
        for device, handles, objects in rdma_entries(limit):
            m.rdma.limit.add(device=device, hca_handles=handles, hca_objects=objects)
