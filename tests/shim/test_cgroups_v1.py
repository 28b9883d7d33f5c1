"""Cgroup v1 (legacy or hybrid) discovery and metrics, from fake trees written into tmp_path
with exact values: which controller paths load_cgroup finds and every field Task.Stats
reports."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.support.fake_cgroupfs import PID, fake_proc, write_files
from trioshim.api.cgroups.v1 import metrics_pb2 as v1
from trioshim.shim.cgroups import V1_METRICS_TYPE_URL, CgroupV1, is_unified, load_cgroup
from trioshim.ttrpc.errors import NotFound

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
    write_files(
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
    write_files(
        root / "cpu,cpuacct" / "ctr",
        {
            "cpu.stat": "nr_periods 10\nnr_throttled 4\nthrottled_time 5000\n",
            "cpuacct.usage": "987654321\n",
            "cpuacct.usage_percpu": "500000000 487654321 0 0 \n",
            "cpuacct.stat": "user 150\nsystem 25\n",
        },
    )
    write_files(root / "pids" / "ctr", {"pids.current": "7\n", "pids.max": "max\n"})
    write_files(
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
    write_files(
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
    write_files(
        root / "rdma",
        {
            "rdma.current": "mlx4_0 hca_handle=1 hca_object=20\n",
            "rdma.max": "mlx4_0 hca_handle=max hca_object=max\n",
        },
    )
    write_files(root / "systemd" / "system.slice" / "ctr", {})
    write_files(root / "freezer" / "ctr", {})
    # net_cls,net_prio is not mounted at all
    proc = fake_proc(tmp_path, V1_PROC_CGROUP)
    write_files(
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
    write_files(
        group,
        {
            "blkio.io_serviced_recursive": "8:0 Read 5\n8:0 Write 6\nTotal 11\n",
            "blkio.time_recursive": "8:0 77\n",
            "blkio.throttle.io_serviced": "8:0 Read 999\n",
        },
    )
    proc = tmp_path / "proc"
    write_files(proc, {"partitions": "major minor  #blocks  name\n\n 8 0 1 vda\n"})
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
    proc = fake_proc(tmp_path, V1_PROC_CGROUP)
    assert load_cgroup(PID, str(root), proc=str(proc)) is None  # nothing mounted
    assert load_cgroup(PID + 1, str(root), proc=str(proc)) is None  # no such process
