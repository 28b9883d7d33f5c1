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

One job per module: `files` (pseudo-file reading, the `Cgroup` base), `v1` and `v2` (the
metrics of each hierarchy), `find` (which cgroup a pid or a path names), `oom` (OOM
notifications, live, for TaskOOM).
"""

from trioshim.shim.cgroups.files import (
    DEFAULT_ROOT,
    V1_METRICS_TYPE_URL,
    V2_METRICS_TYPE_URL,
    Cgroup,
)
from trioshim.shim.cgroups.find import cgroup_at, is_unified, load_cgroup
from trioshim.shim.cgroups.v1 import CgroupV1
from trioshim.shim.cgroups.v2 import CgroupV2

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
