"""Cgroup v2 (unified) discovery and metrics, from fake trees written into tmp_path with
exact values: what load_cgroup finds and every field Task.Stats reports."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.support.fake_cgroupfs import PID, fake_proc, write_files
from trioshim.api.cgroups.v2 import metrics_pb2 as v2
from trioshim.shim.cgroups import V2_METRICS_TYPE_URL, CgroupV2, is_unified, load_cgroup
from trioshim.ttrpc.errors import Code, NotFound

MAX64 = (1 << 64) - 1

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
    write_files(root, {"cgroup.controllers": "cpuset cpu io memory hugetlb pids rdma misc\n"})
    group = root / "kubepods.slice" / "ctr-1"
    write_files(group, V2_FILES)
    proc = fake_proc(tmp_path, "0::/kubepods.slice/ctr-1\n")
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
    write_files(
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
    proc2 = fake_proc(tmp_path / "other", "1:name=systemd:/x\n")
    assert load_cgroup(PID, str(root), proc=str(proc2)) is None  # no 0:: line
    proc3 = fake_proc(tmp_path / "ns", "0::/../../outside\n")
    assert load_cgroup(PID, str(root), proc=str(proc3)) is None  # outside our namespace


def test_v2_unreadable_file_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    group = tmp_path / "g"
    write_files(group, {"cgroup.controllers": "", "pids.current": "5\n", "memory.current": "9\n"})
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
    write_files(group, {"cgroup.controllers": "", "memory.current": "lots\n"})
    with pytest.raises(Exception) as info:
        CgroupV2(str(group)).metrics()
    assert getattr(info.value, "code", None) == Code.UNKNOWN
    assert "lots" in str(info.value)
