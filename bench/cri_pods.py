"""Shim memory per Kubernetes pod, through CRI: the Go shim (handler ``runc``,
``containerd-shim-runc-v2``: one process per pod) against shared mode (handler
``trioshim-shared``: one process for every pod).

    .venv/bin/python -m bench.cri_pods [--pods 20] [--line 1.6] [--settle 2] [--json out.json]

One private containerd of the line with its CRI plugin (``tests.support.cri.CRIContainerd``:
host-network pods, the busybox sandbox image). For each handler in turn: ``--pods`` pods, each
a sandbox and one ``sleep`` container, started through CRI's gRPC API (RunPodSandbox,
CreateContainer, StartContainer, as the kubelet does); ``--settle`` seconds later, RSS, PSS and
private dirty memory (``/proc/<pid>/smaps_rollup``) summed over the handler's shim processes;
then every pod is stopped and removed through CRI. Reported per pod, with the ratio ours/Go.
Like the other benchmarks it reports numbers and fails nothing; PSS splits a page among the
processes that map it, so other Go shims on the machine lower the Go side's figure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench.procs import all_pids, memory_kb, proc_argv
from tests.support.containerd_lines import get_line
from tests.support.cri import SHIM_BINARIES, CRIContainerd

HANDLERS = {"ref": "runc", "ours": "trioshim-shared"}
SLEEP = ["/bin/sh", "-c", "exec sleep 100000"]


def _log(message: str) -> None:
    print(f"[cri_pods] {message}", file=sys.stderr, flush=True)


def shim_pids(containerd: CRIContainerd, handler: str) -> list[int]:
    """This containerd's shim processes of ``handler`` (its binary in the first arguments)."""
    binary = SHIM_BINARIES[handler]
    mine = set(containerd.shim_pids())
    return [
        pid
        for pid in all_pids()
        if pid in mine and any(os.path.basename(a) == binary for a in proc_argv(pid)[:3])
    ]


def run_pods(containerd: CRIContainerd, handler: str, count: int) -> list[str]:
    client = containerd.client()
    pb = client.pb
    pods = []
    for n in range(count):
        name = f"bench-{handler}-{n}"
        log_dir = containerd.pods_dir / name
        log_dir.mkdir(parents=True, exist_ok=True)
        config = client.pod_config(name, log_dir=log_dir, cgroup_parent=containerd.cgroup_parent)
        pod_id = client.runtime.RunPodSandbox(
            pb.RunPodSandboxRequest(config=config, runtime_handler=handler), timeout=60
        ).pod_sandbox_id
        pods.append(pod_id)
        container = client.container_config("sleeper", SLEEP, log_path="sleeper.log")
        container_id = client.runtime.CreateContainer(
            pb.CreateContainerRequest(
                pod_sandbox_id=pod_id, config=container, sandbox_config=config
            ),
            timeout=60,
        ).container_id
        client.runtime.StartContainer(
            pb.StartContainerRequest(container_id=container_id), timeout=60
        )
    return pods


def measure(containerd: CRIContainerd, handler: str, pods: int, settle: float) -> dict[str, Any]:
    _log(f"{handler}: {pods} pods")
    t0 = time.monotonic()
    run_pods(containerd, handler, pods)
    started = time.monotonic() - t0
    time.sleep(settle)
    pids = shim_pids(containerd, handler)
    per = {pid: memory_kb(pid) for pid in pids}
    _log(f"{handler}: {len(pids)} shim process(es); removing the pods")
    containerd.remove_all_pods()
    return {
        "pods": pods,
        "processes": len(pids),
        "seconds_to_start": started,
        **{
            key: sum(m.get(field, 0) for m in per.values())
            for key, field in (("rss_kb", "Rss"), ("pss_kb", "Pss"), ("pd_kb", "Private_Dirty"))
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cri_pods", description=__doc__)
    p.add_argument("--pods", type=int, default=20)
    p.add_argument("--line", default="1.6", help="containerd line (tests.support)")
    p.add_argument("--settle", type=float, default=2.0)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    containerd = CRIContainerd(get_line(args.line))
    results: dict[str, dict[str, Any]] = {}
    try:
        containerd.start()
        for key, handler in HANDLERS.items():
            results[key] = measure(containerd, handler, args.pods, args.settle)
    finally:
        forced = containerd.stop()
        if forced:
            _log(f"cleaned up by force: {forced}")

    ref, ours = results["ref"], results["ours"]
    print(f"\nshim memory per pod through CRI, containerd {args.line}, {args.pods} pods each")
    print(f"{'metric':34} {'Go (runc)':>10} {'shared':>10} {'ours/Go':>8}")
    for label, key in (("RSS per pod, MB", "rss_kb"), ("PSS per pod, MB", "pss_kb")):
        go, mine = ref[key] / 1024 / ref["pods"], ours[key] / 1024 / ours["pods"]
        print(f"{label:34} {go:10.3f} {mine:10.3f} {mine / go if go else float('nan'):7.2f}x")
    go_pd, our_pd = ref["pd_kb"] / 1024 / ref["pods"], ours["pd_kb"] / 1024 / ours["pods"]
    print(f"{'private dirty per pod, MB':34} {go_pd:10.3f} {our_pd:10.3f}")
    print(f"{'shim processes':34} {ref['processes']:10d} {ours['processes']:10d}")
    if args.json:
        args.json.write_text(json.dumps({"line": args.line, **results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
