"""A cgroup v2 (unified host): one directory, read into `io.containerd.cgroups.v2.Metrics`."""

from __future__ import annotations

import math
import os
import re
from typing import Final

from trioshim.api.cgroups.v2 import metrics_pb2 as v2
from trioshim.shim.cgroups.files import (
    MAX_UINT64,
    V2_METRICS_TYPE_URL,
    Cgroup,
    pagesize_bytes,
    parse_uint,
    rdma_entries,
    read_file,
    read_kv,
    read_uint,
    read_uint_or_max,
)

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
                    data.total = parse_uint(raw)
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
        m.pids.current = read_uint(self.file("pids.current")) or 0
        m.pids.limit = read_uint_or_max(self.file("pids.max")) or 0

    def _cpu(self, m: v2.Metrics) -> None:
        m.cpu.SetInParent()
        stat = read_kv(self.file("cpu.stat")) or {}
        for field in _V2_CPU_STAT_FIELDS:
            setattr(m.cpu, field, stat.get(field, 0))
        pressure = read_file(self.file("cpu.pressure"))
        if pressure is not None:
            _parse_psi(pressure, m.cpu.psi)

    def _memory(self, m: v2.Metrics) -> None:
        memory = m.memory
        memory.SetInParent()
        stat = read_kv(self.file("memory.stat")) or {}
        for field in _V2_MEMORY_STAT_FIELDS:
            setattr(memory, field, stat.get(field, 0))
        for name, field in _V2_MEMORY_FILES:
            setattr(memory, field, read_uint_or_max(self.file(name)) or 0)
        pressure = read_file(self.file("memory.pressure"))
        if pressure is not None:
            _parse_psi(pressure, memory.psi)
        events = read_kv(self.file("memory.events"))
        if events:
            m.memory_events.SetInParent()
            for field in _V2_MEMORY_EVENT_FIELDS:
                setattr(m.memory_events, field, events.get(field, 0))

    def _io(self, m: v2.Metrics) -> None:
        m.io.SetInParent()
        text = read_file(self.file("io.stat")) or ""
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
                    values[key] = min(int(raw), MAX_UINT64)
            m.io.usage.add(
                major=int(major),
                minor=int(minor),
                rbytes=values.get("rbytes", 0),
                wbytes=values.get("wbytes", 0),
                rios=values.get("rios", 0),
                wios=values.get("wios", 0),
            )
        pressure = read_file(self.file("io.pressure"))
        if pressure is not None:
            _parse_psi(pressure, m.io.psi)

    def _rdma(self, m: v2.Metrics) -> None:
        m.rdma.SetInParent()
        for name, entries in (("rdma.current", m.rdma.current), ("rdma.max", m.rdma.limit)):
            text = read_file(self.file(name))
            if text is None:
                continue
            for device, handles, objects in rdma_entries(text):
                entries.add(device=device, hca_handles=handles, hca_objects=objects)

    def _hugetlb(self, m: v2.Metrics) -> None:
        sizes: set[str] = set()
        with os.scandir(self.path) as it:
            for entry in it:
                match = _V2_HUGETLB_RE.fullmatch(entry.name)
                if match:
                    sizes.add(match.group(1))
        for size in sorted(sizes, key=pagesize_bytes):
            current = read_uint_or_max(self.file(f"hugetlb.{size}.current"))
            limit = read_uint_or_max(self.file(f"hugetlb.{size}.max"))
            events = read_kv(self.file(f"hugetlb.{size}.events"))
            if current is None and limit is None:
                continue
            m.hugetlb.add(
                pagesize=size,
                current=current or 0,
                max=limit or 0,
                failcnt=(events or {}).get("max", 0),
            )
