"""The ``rss`` benchmark: RSS, PSS and private dirty memory of the shim processes (from
``/proc/<pid>/smaps_rollup``), one runtime after the other: one idle container; 50 containers
grouped into one shim (each runtime's group annotation) and 50 with one shim each, reported
per container. Ours counts its fork server, when it has one.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.ctr_bench import available, unavailable_rows
from bench.env import BenchEnv
from bench.procs import memory_kb, wait_until
from bench.results import BenchResult, Row, log, short_error
from bench.runtimes import Runtime


def _shim_memory(env: BenchEnv, rt: Runtime) -> dict[str, Any]:
    pids = env.shim_pids(rt, servers=True)
    servers = env.fork_server_pids() if rt.key == "ours" else []
    per = {pid: memory_kb(pid) for pid in pids}
    shims = [per[p] for p in pids if p not in servers]
    return {
        "pids": pids,
        "processes": len(pids),
        "fork_servers": len(servers),
        "fork_server_pss_kb": sum(per.get(p, {}).get("Pss", 0) for p in servers),
        "rss_kb": sum(m.get("Rss", 0) for m in per.values()),
        "pss_kb": sum(m.get("Pss", 0) for m in per.values()),
        "private_dirty_kb": sum(m.get("Private_Dirty", 0) for m in per.values()),
        # What each shim process (not the fork server) has written and so owns alone.
        "shim_private_dirty_kb": (
            sum(m.get("Private_Dirty", 0) for m in shims) / len(shims) if shims else 0.0
        ),
        "per_process": {str(p): m for p, m in per.items()},
    }


def _start_many(env: BenchEnv, rt: Runtime, count: int, grouped: bool, parallel: int) -> list[str]:
    group = f"bench-{env.namespace}"
    opts = ["--annotation", f"{rt.group_annotation}={group}"] if grouped else []
    ids = [env.new_id(rt, "rss") for _ in range(count)]
    started: list[str] = []
    # The first one alone, so a grouped shim exists before the others race to it.
    env.run_detached(rt, ids[0], "/bin/sleep", "1000000", opts=opts)
    started.append(ids[0])
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        futures = [
            pool.submit(env.run_detached, rt, cid, "/bin/sleep", "1000000", opts=opts)
            for cid in ids[1:]
        ]
        errors = []
        for cid, f in zip(ids[1:], futures, strict=True):
            try:
                f.result()
                started.append(cid)
            except Exception as exc:
                errors.append(short_error(exc))
    if errors:
        env.reset(rt)
        raise RuntimeError(f"{len(errors)} of {count} containers failed to start: {errors[0]}")
    return started


def _remove_many(env: BenchEnv, rt: Runtime, ids: list[str], parallel: int) -> None:
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        list(pool.map(lambda cid: env.remove([cid]), ids))
    left = env.reset(rt)
    if left:
        log(f"rss: {rt.key}: cleaned up by force: {left[:5]}")


def bench_rss(env: BenchEnv, args: Any, result: BenchResult) -> None:
    count: int = args.containers
    settle: float = args.settle
    parallel: int = args.parallel
    mb = 1024.0
    rows = {
        "idle_rss": Row("rss", "shim RSS, 1 idle container", "MB", "lower"),
        "idle_pss": Row("rss", "shim PSS, 1 idle container", "MB", "lower"),
        "grouped_rss": Row("rss", f"RSS per container, {count} grouped", "MB", "lower"),
        "grouped_pss": Row("rss", f"PSS per container, {count} grouped", "MB", "lower"),
        "single_rss": Row("rss", f"RSS per container, {count} one shim each", "MB", "lower"),
        "single_pss": Row(
            "rss",
            f"PSS per container, {count} one shim each",
            "MB",
            "lower",
            aim="<= 0.2x" if env.shared else "<= 1.5x",
        ),
        "single_pd": Row(
            "rss", f"private dirty per shim process, {count} one shim each", "MB", "lower"
        ),
        "dropin_pss": Row(
            "rss",
            f"PSS per container, {count}: ours grouped / ref one shim each",
            "MB",
            "lower",
            aim="well under ref",
        ),
    }
    unavailable_rows(env, list(rows.values()))

    counts: list[str] = []

    def phase(rt: Runtime, name: str, n: int, grouped: bool) -> dict[str, Any]:
        log(f"rss: {rt.key}: {name}: {n} container(s){' grouped' if grouped else ''}")
        ids: list[str] = []
        try:
            ids = _start_many(env, rt, n, grouped, parallel)
            time.sleep(settle)
            mem = _shim_memory(env, rt)
        finally:
            _remove_many(env, rt, ids, parallel)
        mem["containers"] = n
        counts.append(
            f"{rt.key} {name}: {mem['processes']}"
            + (
                f" (fork server PSS {mem['fork_server_pss_kb'] / mb:.1f} MB included)"
                if mem["fork_servers"]
                else ""
            )
        )
        log(
            f"rss: {rt.key}: {name}: {mem['processes']} shim process(es), "
            f"RSS {mem['rss_kb'] / mb:.1f} MB, PSS {mem['pss_kb'] / mb:.1f} MB"
        )
        return mem

    for rt in available(env):
        raw: dict[str, Any] = {}
        result.raw[rt.key] = raw
        plan: list[tuple[str, int, bool, tuple[str, str]]] = [
            ("idle", 1, False, ("idle_rss", "idle_pss")),
            ("grouped", count, True, ("grouped_rss", "grouped_pss")),
            ("single", count, False, ("single_rss", "single_pss")),
        ]
        if args.rss_skip_single:
            plan = plan[:2]
        for name, n, grouped, (rss_key, pss_key) in plan:
            try:
                mem = phase(rt, name, n, grouped)
            except Exception as exc:
                err = short_error(exc)
                log(f"rss: {rt.key}: {name} failed: {err}")
                rows[rss_key].set(rt.key, error=err)
                rows[pss_key].set(rt.key, error=err)
                raw[name] = {"error": err}
                continue
            raw[name] = mem
            if mem["processes"] == 0:
                err = "no shim process found"
                rows[rss_key].set(rt.key, error=err)
                rows[pss_key].set(rt.key, error=err)
                continue
            rows[rss_key].set(rt.key, mem["rss_kb"] / mb / n)
            rows[pss_key].set(rt.key, mem["pss_kb"] / mb / n)
            if name == "single":
                rows["single_pd"].set(rt.key, mem["shim_private_dirty_kb"] / mb)
    ref_single = rows["single_pss"].reference
    ours_grouped = rows["grouped_pss"].ours
    drop = rows["dropin_pss"]
    if ref_single is not None:
        drop.set("ref", ref_single)
    elif not env.reference.unavailable:
        drop.set("ref", error=rows["single_pss"].reference_error or "not measured")
    if ours_grouped is not None:
        drop.set("ours", ours_grouped)
    elif not env.ours.unavailable:
        drop.set("ours", error=rows["grouped_pss"].ours_error or "not measured")
    result.rows += list(rows.values())
    result.notes.append(
        f"rss: sums over every shim process of the runtime (daemons and any forking parent), "
        f"from /proc/<pid>/smaps_rollup, {settle:g}s after the last start; grouped = the "
        f"runtime's group annotation (io.containerd.runc.v2.group / "
        f"io.containerd.trioshim.v2.group) set with `ctr run --annotation`; ours includes "
        f"its fork server when it has one. Processes counted: {'; '.join(counts)}."
    )


def wait_no_shims(env: BenchEnv, rt: Runtime, timeout: float = 10.0) -> bool:
    return bool(wait_until(lambda: not env.shim_pids(rt), timeout))
