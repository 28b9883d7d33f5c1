"""Cgroup discovery and the metrics Task.Stats returns: v2 and v1 from fake trees written
into tmp_path with exact values, and v1 from a real cgroup on this (cgroup v1) machine."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio

from tests.support.cgroupdirs import rmdir_cgroup
from trioshim.api.cgroups.v1 import metrics_pb2 as v1
from trioshim.api.cgroups.v2 import metrics_pb2 as v2
from trioshim.shim.cgroups import (
    V1_METRICS_TYPE_URL,
    V2_METRICS_TYPE_URL,
    CgroupV1,
    CgroupV2,
    is_unified,
    load_cgroup,
)
from trioshim.ttrpc.errors import Code, NotFound

MAX64 = (1 << 64) - 1
PID = 4242


def _write(directory: Path, files: dict[str, str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)


def _proc(tmp_path: Path, text: str, pid: int = PID) -> Path:
    proc = tmp_path / "proc"
    _write(proc / str(pid), {"cgroup": text})
    return proc


# --- cgroup v2 (unified) ----------------------------------------------------------------------

V2_MEMORY_STAT = """\
anon 1000
file 2000
kernel 99
kernel_stack 16384
pagetables 77
sec_pagetables 0
percpu 88
sock 4
vmalloc 0
shmem 5
zswap 0
file_mapped 6
file_dirty 7
file_writeback 8
swapcached 0
anon_thp 9
file_thp 0
shmem_thp 0
inactive_anon 10
active_anon 11
inactive_file 12
active_file 13
unevictable 14
slab_reclaimable 15
slab_unreclaimable 16
slab 31
workingset_refault_anon 17
workingset_refault_file 18
workingset_activate_anon 19
workingset_activate_file 20
workingset_restore_anon 0
workingset_restore_file 0
workingset_nodereclaim 21
pgscan 22
pgsteal 23
pgscan_kswapd 0
pgrefill 24
pgactivate 25
pgdeactivate 26
pglazyfree 27
pglazyfreed 28
pgfault 29
pgmajfault 30
thp_fault_alloc 32
thp_collapse_alloc 33
"""

V2_CPU_STAT = """\
usage_usec 123456
user_usec 100000
system_usec 23456
core_sched.force_idle_usec 0
nr_periods 50
nr_throttled 3
throttled_usec 7000
nr_bursts 2
burst_usec 900
"""

V2_IO_STAT = """\
8:0 rbytes=90112 wbytes=4096 rios=3 wios=1 dbytes=0 dios=0
253:1 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=5 dios=6
"""

V2_FILES = {
    "cgroup.controllers": "cpuset cpu io memory hugetlb pids rdma\n",
    "cgroup.events": "populated 1\nfrozen 0\n",
    "memory.stat": V2_MEMORY_STAT,
    "memory.current": "3145728\n",
    "memory.max": "max\n",
    "memory.swap.current": "0\n",
    "memory.swap.max": "1048576\n",
    "memory.peak": "4194304\n",
    "memory.events": "low 1\nhigh 2\nmax 3\noom 4\noom_kill 5\noom_group_kill 6\n",
    "memory.pressure": (
        "some avg10=1.50 avg60=0.25 avg300=0.00 total=1234\n"
        "full avg10=0.00 avg60=0.00 avg300=0.00 total=56\n"
    ),
    "cpu.stat": V2_CPU_STAT,
    "cpu.pressure": "some avg10=0.10 avg60=0.20 avg300=0.30 total=99\n",
    "io.stat": V2_IO_STAT,
    "pids.current": "3\n",
    "pids.max": "max\n",
    "hugetlb.2MB.current": "4194304\n",
    "hugetlb.2MB.max": "max\n",
    "hugetlb.2MB.events": "max 7\n",
    "hugetlb.2MB.rsvd.current": "0\n",
    "hugetlb.2MB.rsvd.max": "max\n",
    "hugetlb.1GB.current": "0\n",
    "hugetlb.1GB.max": "1073741824\n",
    "rdma.current": "mlx4_0 hca_handle=2 hca_object=2000\n",
    "rdma.max": "mlx4_0 hca_handle=max hca_object=10000\n",
}


def _v2_expected() -> v2.Metrics:
    expected = v2.Metrics(
        pids=v2.PidsStat(current=3, limit=MAX64),
        cpu=v2.CPUStat(
            usage_usec=123456,
            user_usec=100000,
            system_usec=23456,
            nr_periods=50,
            nr_throttled=3,
            throttled_usec=7000,
            nr_bursts=2,
            burst_usec=900,
            psi=v2.PSIStats(some=v2.PSIData(avg10=0.10, avg60=0.20, avg300=0.30, total=99)),
        ),
        memory=v2.MemoryStat(
            anon=1000,
            file=2000,
            kernel_stack=16384,
            slab=31,
            sock=4,
            shmem=5,
            file_mapped=6,
            file_dirty=7,
            file_writeback=8,
            anon_thp=9,
            inactive_anon=10,
            active_anon=11,
            inactive_file=12,
            active_file=13,
            unevictable=14,
            slab_reclaimable=15,
            slab_unreclaimable=16,
            pgfault=29,
            pgmajfault=30,
            workingset_nodereclaim=21,
            pgrefill=24,
            pgscan=22,
            pgsteal=23,
            pgactivate=25,
            pgdeactivate=26,
            pglazyfree=27,
            pglazyfreed=28,
            thp_fault_alloc=32,
            thp_collapse_alloc=33,
            workingset_refault_anon=17,
            workingset_refault_file=18,
            workingset_activate_anon=19,
            workingset_activate_file=20,
            usage=3145728,
            usage_limit=MAX64,
            swap_usage=0,
            swap_limit=1048576,
            max_usage=4194304,
            swap_max_usage=0,
            psi=v2.PSIStats(
                some=v2.PSIData(avg10=1.5, avg60=0.25, avg300=0.0, total=1234),
                full=v2.PSIData(total=56),
            ),
        ),
        memory_events=v2.MemoryEvents(low=1, high=2, max=3, oom=4, oom_kill=5, oom_group_kill=6),
        io=v2.IOStat(
            usage=[
                v2.IOEntry(major=8, minor=0, rbytes=90112, wbytes=4096, rios=3, wios=1),
                v2.IOEntry(major=253, minor=1, rbytes=1, wbytes=2, rios=3, wios=4),
            ]
        ),
        rdma=v2.RdmaStat(
            current=[v2.RdmaEntry(device="mlx4_0", hca_handles=2, hca_objects=2000)],
            limit=[v2.RdmaEntry(device="mlx4_0", hca_handles=(1 << 32) - 1, hca_objects=10000)],
        ),
        hugetlb=[
            v2.HugeTlbStat(pagesize="2MB", current=4194304, max=MAX64, failcnt=7),
            v2.HugeTlbStat(pagesize="1GB", current=0, max=1073741824, failcnt=0),
        ],
    )
    return expected


@pytest.fixture
def v2_tree(tmp_path: Path) -> tuple[Path, Path, Path]:
    root = tmp_path / "cgroup"
    _write(root, {"cgroup.controllers": "cpuset cpu io memory hugetlb pids rdma misc\n"})
    group = root / "kubepods.slice" / "ctr-1"
    _write(group, V2_FILES)
    proc = _proc(tmp_path, "0::/kubepods.slice/ctr-1\n")
    return root, group, proc


def test_v2_detect_and_load(v2_tree: tuple[Path, Path, Path]) -> None:
    root, group, proc = v2_tree
    assert is_unified(str(root))
    cg = load_cgroup(PID, str(root), proc=str(proc))
    assert isinstance(cg, CgroupV2)
    assert cg.path == str(group)
    assert cg.version == 2


def test_v2_metrics_exact(v2_tree: tuple[Path, Path, Path]) -> None:
    root, _, proc = v2_tree
    cg = load_cgroup(PID, str(root), proc=str(proc))
    assert cg is not None
    any_msg = cg.metrics()
    assert any_msg.type_url == V2_METRICS_TYPE_URL == "io.containerd.cgroups.v2.Metrics"
    got = v2.Metrics.FromString(any_msg.value)
    assert got == _v2_expected()


def test_v2_minimal_group_defaults(tmp_path: Path) -> None:
    """Only the core files: every controller reads as zero, no memory_events, no failure."""
    group = tmp_path / "g"
    _write(
        group,
        {
            "cgroup.controllers": "",
            "cpu.stat": "usage_usec 10\nuser_usec 6\nsystem_usec 4\n",
            "memory.events": "",
        },
    )
    got = CgroupV2(str(group)).collect()
    assert got == v2.Metrics(
        pids=v2.PidsStat(),
        cpu=v2.CPUStat(usage_usec=10, user_usec=6, system_usec=4),
        memory=v2.MemoryStat(),
        io=v2.IOStat(),
        rdma=v2.RdmaStat(),
    )
    assert not got.HasField("memory_events")


def test_v2_gone_is_not_found(v2_tree: tuple[Path, Path, Path]) -> None:
    root, group, proc = v2_tree
    cg = load_cgroup(PID, str(root), proc=str(proc))
    assert cg is not None
    shutil.rmtree(group)
    assert not cg.exists()
    with pytest.raises(NotFound) as info:
        cg.metrics()
    assert info.value.code == Code.NOT_FOUND
    assert info.value.message == "cgroup does not exist: not found"


def test_v2_load_missing(tmp_path: Path, v2_tree: tuple[Path, Path, Path]) -> None:
    root, group, proc = v2_tree
    assert load_cgroup(PID + 1, str(root), proc=str(proc)) is None  # no such process
    shutil.rmtree(group)
    assert load_cgroup(PID, str(root), proc=str(proc)) is None  # no such group
    proc2 = _proc(tmp_path / "other", "1:name=systemd:/x\n")
    assert load_cgroup(PID, str(root), proc=str(proc2)) is None  # no 0:: line
    proc3 = _proc(tmp_path / "ns", "0::/../../outside\n")
    assert load_cgroup(PID, str(root), proc=str(proc3)) is None  # outside our namespace


def test_v2_unreadable_file_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    group = tmp_path / "g"
    _write(group, {"cgroup.controllers": "", "pids.current": "5\n", "memory.current": "9\n"})
    real_open = open

    def deny_pids(path: str, *args: object, **kwargs: object) -> object:
        if str(path).endswith("pids.current"):
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr("builtins.open", deny_pids)
    got = CgroupV2(str(group)).collect()
    assert got.pids.current == 0
    assert got.memory.usage == 9


def test_v2_parse_error_is_unknown(tmp_path: Path) -> None:
    group = tmp_path / "g"
    _write(group, {"cgroup.controllers": "", "memory.current": "lots\n"})
    with pytest.raises(Exception) as info:
        CgroupV2(str(group)).metrics()
    assert getattr(info.value, "code", None) == Code.UNKNOWN
    assert "lots" in str(info.value)


# --- cgroup v1 (legacy / hybrid) from a fake tree ---------------------------------------------

V1_MEMORY_STAT = """\
cache 100
rss 200
rss_huge 300
shmem 0
mapped_file 400
dirty 500
writeback 600
swap 0
pgpgin 700
pgpgout 800
pgfault 900
pgmajfault 1000
inactive_anon 1100
active_anon 1200
inactive_file 1300
active_file 1400
unevictable 1500
hierarchical_memory_limit 9223372036854771712
hierarchical_memsw_limit 9223372036854771712
total_cache 101
total_rss 201
total_rss_huge 301
total_shmem 0
total_mapped_file 401
total_dirty 501
total_writeback 601
total_swap 0
total_pgpgin 701
total_pgpgout 801
total_pgfault 901
total_pgmajfault 1001
total_inactive_anon 1101
total_active_anon 1201
total_inactive_file 1301
total_active_file 1401
total_unevictable 1501
"""

V1_PROC_CGROUP = """\
12:rdma:/
11:hugetlb:/ctr
10:name=systemd:/system.slice/ctr
9:pids:/ctr
7:blkio:/ctr
6:freezer:/ctr
4:memory:/ctr
2:cpu,cpuacct:/ctr
1:net_cls,net_prio:/ctr
0::/system.slice/containerd.service
"""


@pytest.fixture
def v1_tree(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    # memory: no memsw files (swap accounting off) and a negative failcnt-style value
    _write(
        root / "memory" / "ctr",
        {
            "memory.stat": V1_MEMORY_STAT,
            "memory.usage_in_bytes": "4096\n",
            "memory.max_usage_in_bytes": "8192\n",
            "memory.failcnt": "2\n",
            "memory.limit_in_bytes": "8388608\n",
            "memory.kmem.usage_in_bytes": "11\n",
            "memory.kmem.max_usage_in_bytes": "12\n",
            "memory.kmem.failcnt": "-1\n",
            "memory.kmem.limit_in_bytes": "9223372036854771712\n",
            "memory.kmem.tcp.usage_in_bytes": "21\n",
            "memory.kmem.tcp.max_usage_in_bytes": "22\n",
            "memory.kmem.tcp.failcnt": "0\n",
            "memory.kmem.tcp.limit_in_bytes": "23\n",
            "memory.oom_control": "oom_kill_disable 0\nunder_oom 1\noom_kill 3\n",
        },
    )
    # cpu and cpuacct co-mounted, with no per-controller links
    _write(
        root / "cpu,cpuacct" / "ctr",
        {
            "cpu.stat": "nr_periods 10\nnr_throttled 4\nthrottled_time 5000\n",
            "cpuacct.usage": "987654321\n",
            "cpuacct.usage_percpu": "500000000 487654321 0 0 \n",
            "cpuacct.stat": "user 150\nsystem 25\n",
        },
    )
    _write(root / "pids" / "ctr", {"pids.current": "7\n", "pids.max": "max\n"})
    _write(
        root / "blkio" / "ctr",
        {
            "blkio.io_serviced_recursive": "Total 0\n",
            "blkio.io_service_bytes_recursive": "Total 0\n",
            "blkio.throttle.io_serviced": (
                "8:0 Read 10\n8:0 Write 20\n8:0 Sync 30\n8:0 Async 0\n8:0 Total 30\n"
                "8:16 Read 1\nTotal 31\n"
            ),
            "blkio.throttle.io_service_bytes": "8:0 Read 4096\n8:0 Write 8192\nTotal 12288\n",
        },
    )
    _write(
        root / "hugetlb" / "ctr",
        {
            "hugetlb.2MB.usage_in_bytes": "2097152\n",
            "hugetlb.2MB.max_usage_in_bytes": "4194304\n",
            "hugetlb.2MB.failcnt": "1\n",
            "hugetlb.2MB.limit_in_bytes": "9223372036854771712\n",
            "hugetlb.1GB.usage_in_bytes": "0\n",
            "hugetlb.1GB.max_usage_in_bytes": "0\n",
            "hugetlb.1GB.failcnt": "0\n",
        },
    )
    _write(
        root / "rdma",
        {
            "rdma.current": "mlx4_0 hca_handle=1 hca_object=20\n",
            "rdma.max": "mlx4_0 hca_handle=max hca_object=max\n",
        },
    )
    _write(root / "systemd" / "system.slice" / "ctr", {})
    _write(root / "freezer" / "ctr", {})
    # net_cls,net_prio is not mounted at all
    proc = _proc(tmp_path, V1_PROC_CGROUP)
    _write(
        proc,
        {
            "partitions": (
                "major minor  #blocks  name\n\n   8        0  1000 sda\n   8       16  1000 sdb\n"
            )
        },
    )
    return root, proc


def test_v1_load_paths(v1_tree: tuple[Path, Path]) -> None:
    root, proc = v1_tree
    assert not is_unified(str(root))
    cg = load_cgroup(PID, str(root), proc=str(proc))
    assert isinstance(cg, CgroupV1)
    assert cg.version == 1
    assert cg.paths == {
        "rdma": str(root / "rdma"),
        "hugetlb": str(root / "hugetlb" / "ctr"),
        "name=systemd": str(root / "systemd" / "system.slice" / "ctr"),
        "pids": str(root / "pids" / "ctr"),
        "blkio": str(root / "blkio" / "ctr"),
        "freezer": str(root / "freezer" / "ctr"),
        "memory": str(root / "memory" / "ctr"),
        "cpu": str(root / "cpu,cpuacct" / "ctr"),
        "cpuacct": str(root / "cpu,cpuacct" / "ctr"),
    }
    assert cg.memory_path == str(root / "memory" / "ctr")


def test_v1_metrics_exact(v1_tree: tuple[Path, Path]) -> None:
    root, proc = v1_tree
    cg = load_cgroup(PID, str(root), proc=str(proc))
    assert cg is not None
    any_msg = cg.metrics()
    assert any_msg.type_url == V1_METRICS_TYPE_URL == "io.containerd.cgroups.v1.Metrics"
    got = v1.Metrics.FromString(any_msg.value)
    ticks = os.sysconf("SC_CLK_TCK")
    limit = 9223372036854771712
    expected = v1.Metrics(
        hugetlb=[
            v1.HugetlbStat(pagesize="2MB", usage=2097152, max=4194304, failcnt=1),
            v1.HugetlbStat(pagesize="1GB"),
        ],
        pids=v1.PidsStat(current=7, limit=0),
        cpu=v1.CPUStat(
            usage=v1.CPUUsage(
                total=987654321,
                per_cpu=[500000000, 487654321, 0, 0],
                user=150 * 1_000_000_000 // ticks,
                kernel=25 * 1_000_000_000 // ticks,
            ),
            throttling=v1.Throttle(periods=10, throttled_periods=4, throttled_time=5000),
        ),
        memory=v1.MemoryStat(
            cache=100,
            rss=200,
            rss_huge=300,
            mapped_file=400,
            dirty=500,
            writeback=600,
            pg_pg_in=700,
            pg_pg_out=800,
            pg_fault=900,
            pg_maj_fault=1000,
            inactive_anon=1100,
            active_anon=1200,
            inactive_file=1300,
            active_file=1400,
            unevictable=1500,
            hierarchical_memory_limit=limit,
            hierarchical_swap_limit=limit,
            total_cache=101,
            total_rss=201,
            total_rss_huge=301,
            total_mapped_file=401,
            total_dirty=501,
            total_writeback=601,
            total_pg_pg_in=701,
            total_pg_pg_out=801,
            total_pg_fault=901,
            total_pg_maj_fault=1001,
            total_inactive_anon=1101,
            total_active_anon=1201,
            total_inactive_file=1301,
            total_active_file=1401,
            total_unevictable=1501,
            usage=v1.MemoryEntry(limit=8388608, usage=4096, max=8192, failcnt=2),
            swap=v1.MemoryEntry(),
            kernel=v1.MemoryEntry(limit=limit, usage=11, max=12, failcnt=0),
            kernel_tcp=v1.MemoryEntry(limit=23, usage=21, max=22, failcnt=0),
        ),
        memory_oom_control=v1.MemoryOomControl(oom_kill_disable=0, under_oom=1, oom_kill=3),
        blkio=v1.BlkIOStat(
            io_serviced_recursive=[
                v1.BlkIOEntry(device="/dev/sda", major=8, minor=0, op="Read", value=10),
                v1.BlkIOEntry(device="/dev/sda", major=8, minor=0, op="Write", value=20),
                v1.BlkIOEntry(device="/dev/sda", major=8, minor=0, op="Sync", value=30),
                v1.BlkIOEntry(device="/dev/sda", major=8, minor=0, op="Async", value=0),
                v1.BlkIOEntry(device="/dev/sda", major=8, minor=0, op="Total", value=30),
                v1.BlkIOEntry(device="/dev/sdb", major=8, minor=16, op="Read", value=1),
            ],
            io_service_bytes_recursive=[
                v1.BlkIOEntry(device="/dev/sda", major=8, minor=0, op="Read", value=4096),
                v1.BlkIOEntry(device="/dev/sda", major=8, minor=0, op="Write", value=8192),
            ],
        ),
        rdma=v1.RdmaStat(
            current=[v1.RdmaEntry(device="mlx4_0", hca_handles=1, hca_objects=20)],
            limit=[
                v1.RdmaEntry(device="mlx4_0", hca_handles=(1 << 32) - 1, hca_objects=(1 << 32) - 1)
            ],
        ),
    )
    assert got == expected


def test_v1_recursive_blkio_preferred(tmp_path: Path) -> None:
    group = tmp_path / "blkio" / "ctr"
    _write(
        group,
        {
            "blkio.io_serviced_recursive": "8:0 Read 5\n8:0 Write 6\nTotal 11\n",
            "blkio.time_recursive": "8:0 77\n",
            "blkio.throttle.io_serviced": "8:0 Read 999\n",
        },
    )
    proc = tmp_path / "proc"
    _write(proc, {"partitions": "major minor  #blocks  name\n\n 8 0 1 vda\n"})
    got = CgroupV1({"blkio": str(group)}, proc=str(proc)).collect()
    assert got.blkio == v1.BlkIOStat(
        io_serviced_recursive=[
            v1.BlkIOEntry(device="/dev/vda", major=8, minor=0, op="Read", value=5),
            v1.BlkIOEntry(device="/dev/vda", major=8, minor=0, op="Write", value=6),
        ],
        io_time_recursive=[v1.BlkIOEntry(device="/dev/vda", major=8, minor=0, value=77)],
    )


def test_v1_gone_is_not_found(v1_tree: tuple[Path, Path]) -> None:
    root, proc = v1_tree
    cg = load_cgroup(PID, str(root), proc=str(proc))
    assert isinstance(cg, CgroupV1)
    for path in set(cg.paths.values()):
        if path != str(root / "rdma"):
            shutil.rmtree(path)
    cg.metrics()  # one controller (rdma, at its root) is still there
    shutil.rmtree(root / "rdma")
    with pytest.raises(NotFound):
        cg.metrics()


def test_v1_load_none(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    root.mkdir()
    proc = _proc(tmp_path, V1_PROC_CGROUP)
    assert load_cgroup(PID, str(root), proc=str(proc)) is None  # nothing mounted
    assert load_cgroup(PID + 1, str(root), proc=str(proc)) is None  # no such process


# --- cgroup v1 for real -----------------------------------------------------------------------

REAL_ROOT = "/sys/fs/cgroup"
needs_real_v1 = pytest.mark.skipif(
    os.geteuid() != 0
    or is_unified(REAL_ROOT)
    or not os.path.isdir(os.path.join(REAL_ROOT, "memory")),
    reason="needs root on a cgroup v1 host",
)

# A child that moves itself into the cgroups named on its command line, then allocates and
# touches 4 MiB (charged to the new memory cgroup), says "ready" and waits for stdin to close.
CHILD = """
import os, sys
for procs in sys.argv[1:]:
    with open(procs, "w") as f:
        f.write(str(os.getpid()))
data = bytearray(b"x" * (4 << 20))
sys.stdout.write("ready\\n")
sys.stdout.flush()
sys.stdin.read()
"""


@pytest.fixture
def real_v1_dirs() -> Iterator[dict[str, str]]:
    name = f"trioshim-test-{uuid.uuid4().hex[:12]}"
    dirs: dict[str, str] = {}
    try:
        for controller in ("memory", "cpu", "cpuacct", "pids", "blkio"):
            mount = os.path.join(REAL_ROOT, controller)
            if not os.path.isdir(mount):
                continue
            path = os.path.join(mount, name)
            os.mkdir(path)
            dirs[controller] = path
        yield dirs
    finally:
        for path in dirs.values():
            rmdir_cgroup(path)


def _spawn(argv: list[str]) -> tuple[int, int, int]:
    """posix_spawn with pipes on stdin/stdout; returns (pid, stdin writer, stdout reader)."""
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    try:
        pid = os.posix_spawn(
            argv[0],
            argv,
            dict(os.environ),
            file_actions=[
                (os.POSIX_SPAWN_DUP2, in_r, 0),
                (os.POSIX_SPAWN_DUP2, out_w, 1),
            ],
        )
    except BaseException:
        for fd in (in_w, out_r):
            os.close(fd)
        raise
    finally:
        os.close(in_r)
        os.close(out_w)
    return pid, in_w, out_r


async def _reap(pid: int) -> int | None:
    try:
        _, status = await trio.to_thread.run_sync(os.waitpid, pid, 0)
    except ChildProcessError:
        return None  # reaped elsewhere
    return status


@pytest.fixture
async def sleeping_child(real_v1_dirs: dict[str, str]) -> AsyncIterator[int]:
    procs = [os.path.join(d, "cgroup.procs") for d in real_v1_dirs.values()]
    pid, stdin_w, stdout_r = _spawn([sys.executable, "-c", CHILD, *procs])
    try:
        stream = trio.lowlevel.FdStream(stdout_r)
        stdout_r = -1
        with trio.fail_after(30):
            line = b""
            while not line.endswith(b"\n"):
                chunk = await stream.receive_some()
                assert chunk, "child died before it was ready"
                line += chunk
        await stream.aclose()
        assert line == b"ready\n"
        yield pid
    finally:
        if stdout_r >= 0:
            os.close(stdout_r)
        os.close(stdin_w)  # the child's stdin.read() returns: it exits
        with trio.move_on_after(10) as scope:
            await _reap(pid)
        if scope.cancelled_caught:
            os.kill(pid, signal.SIGKILL)
            await _reap(pid)
        # the fixture above removes the (now empty) cgroups


@needs_real_v1
async def test_v1_real_metrics(real_v1_dirs: dict[str, str], sleeping_child: int) -> None:
    cg = load_cgroup(sleeping_child)
    assert isinstance(cg, CgroupV1)
    for controller, path in real_v1_dirs.items():
        assert cg.paths[controller] == path
    got = v1.Metrics.FromString(cg.metrics().value)
    assert got.memory.usage.usage > 0
    assert got.memory.usage.max >= got.memory.usage.usage
    assert got.memory.usage.limit > 0
    assert got.memory.total_rss + got.memory.total_cache > 0
    assert got.HasField("memory_oom_control")
    if "pids" in real_v1_dirs:
        assert got.pids.current == 1
        assert got.pids.limit == 0  # "max"
    if "cpuacct" in real_v1_dirs:
        assert got.cpu.usage.total > 0
        assert len(got.cpu.usage.per_cpu) >= 1
        assert sum(got.cpu.usage.per_cpu) == got.cpu.usage.total
    assert got.HasField("blkio")


@needs_real_v1
async def test_v1_real_gone_is_not_found(real_v1_dirs: dict[str, str]) -> None:
    cg = CgroupV1(real_v1_dirs)
    cg.metrics()
    for path in real_v1_dirs.values():
        os.rmdir(path)
    with pytest.raises(NotFound):
        cg.metrics()
