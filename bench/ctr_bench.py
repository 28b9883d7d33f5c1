"""Benchmarks driven through `ctr` against the private containerd, one runtime after the other
(interleaved where the order could bias the result):

- ``run``: `ctr run --rm ... /bin/true`, median latency over N runs.
- ``exec``: `ctr task exec --exec-id X ID /bin/true` on a running container, median latency.
- ``stdout``: 1 GB through a container's stdout (`head -c N /dev/zero`) to a reader here, MB/s.
- ``rss``: RSS and PSS of the shim processes: one idle container; 50 containers grouped into
  one shim (each runtime's group annotation) and one shim each, per container.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.env import BenchEnv
from bench.procs import memory_kb, wait_until
from bench.results import BenchResult, Row, log, percentile, short_error, summary
from bench.runtimes import Runtime
from tests.support.containerd import ContainerdError


def _available(env: BenchEnv) -> list[Runtime]:
    return [rt for rt in (env.reference, env.ours) if not rt.unavailable]


def _unavailable_rows(env: BenchEnv, rows: Sequence[Row]) -> None:
    for rt in (env.reference, env.ours):
        if rt.unavailable:
            for row in rows:
                row.set(rt.key, error=rt.unavailable)


def _timed_loop(
    env: BenchEnv,
    n: int,
    one: Callable[[Runtime, int], float],
    label: str,
) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Call ``one(rt, i)`` for i in 0..n (0 is a warm-up, not recorded), alternating runtimes
    each iteration; a runtime that fails once is dropped with its error."""
    samples: dict[str, list[float]] = {rt.key: [] for rt in _available(env)}
    errors: dict[str, str] = {}
    for i in range(n + 1):
        for rt in _available(env):
            if rt.key in errors:
                continue
            try:
                dt = one(rt, i)
            except Exception as exc:
                errors[rt.key] = short_error(exc)
                log(f"{label}: {rt.key} failed: {errors[rt.key]}")
                env.reset(rt)
                continue
            if i > 0:
                samples[rt.key].append(dt)
    return samples, errors


def _fill_latency_rows(
    env: BenchEnv,
    result: BenchResult,
    rows: tuple[Row, Row],
    samples: dict[str, list[float]],
    errors: dict[str, str],
) -> None:
    _unavailable_rows(env, rows)
    for key, values in samples.items():
        if key in errors:
            for row in rows:
                row.set(key, error=errors[key])
        elif values:
            rows[0].set(key, percentile(values, 50))
            rows[1].set(key, percentile(values, 90))
            result.raw[key] = summary(values) | {"samples_ms": values}
    result.rows += rows


# ------------------------------------------------------------------------------- run


def bench_run(env: BenchEnv, args: Any, result: BenchResult) -> None:
    n: int = args.runs

    def one(rt: Runtime, i: int) -> float:
        cid = env.new_id(rt, "run")
        argv = env.run_argv(rt, cid, "/bin/true", rm=True)
        t0 = time.perf_counter()
        r = env.ctr(*argv, timeout=60)
        dt = (time.perf_counter() - t0) * 1000
        if r.returncode != 0:
            raise RuntimeError(f"ctr run --rm failed (rc {r.returncode}): {r.stderr}")
        return dt

    log(f"run: ctr run --rm /bin/true x {n} per runtime (+1 warm-up)")
    samples, errors = _timed_loop(env, n, one, "run")
    rows = (
        Row(
            "run",
            "ctr run --rm /bin/true, median",
            "ms",
            "lower",
            aim="<= 1.0x" if env.shared else "<= 1.2x",
        ),
        Row("run", "ctr run --rm /bin/true, p90", "ms", "lower"),
    )
    _fill_latency_rows(env, result, rows, samples, errors)
    result.notes.append(f"run: {n} runs per runtime after one warm-up, runtimes interleaved.")


# ------------------------------------------------------------------------------- exec


def bench_exec(env: BenchEnv, args: Any, result: BenchResult) -> None:
    n: int = args.execs
    targets: dict[str, str] = {}
    errors: dict[str, str] = {}
    try:
        for rt in _available(env):
            cid = env.new_id(rt, "exec")
            try:
                env.run_detached(rt, cid, "/bin/sleep", "1000000")
                targets[rt.key] = cid
            except Exception as exc:
                errors[rt.key] = short_error(exc)
                env.reset(rt)

        def one(rt: Runtime, i: int) -> float:
            if rt.key in errors:
                raise RuntimeError(errors[rt.key])
            argv = ["task", "exec", "--exec-id", f"x{i}", targets[rt.key], "/bin/true"]
            t0 = time.perf_counter()
            r = env.ctr(*argv, timeout=60)
            dt = (time.perf_counter() - t0) * 1000
            if r.returncode != 0:
                raise RuntimeError(f"ctr task exec failed (rc {r.returncode}): {r.stderr}")
            return dt

        log(f"exec: ctr task exec /bin/true x {n} per runtime (+1 warm-up)")
        samples, loop_errors = _timed_loop(env, n, one, "exec")
        errors.update(loop_errors)
    finally:
        with contextlib.suppress(ContainerdError):
            env.remove(targets.values())
    rows = (
        Row("exec", "ctr task exec /bin/true, median", "ms", "lower"),
        Row("exec", "ctr task exec /bin/true, p90", "ms", "lower"),
    )
    _fill_latency_rows(env, result, rows, samples, errors)
    result.notes.append(f"exec: {n} execs per runtime into one running container each.")


# ------------------------------------------------------------------------------- stdout


def producer_command(producer: str, nbytes: int) -> str:
    """The shell command writing ``nbytes`` zero bytes to stdout inside the container.

    busybox's `head -c` copies through a small buffer and manages only ~70 MB/s on this
    class of machine even outside a container, so it measures busybox rather than the shim;
    `dd` with 1 MB blocks (the default) is not the bottleneck."""
    if producer == "head":
        return f"head -c {nbytes} /dev/zero"
    block = 1_000_000 if nbytes % 1_000_000 == 0 else 65536
    count, rest = divmod(nbytes, block)
    cmd = f"dd if=/dev/zero bs={block} count={count} 2>/dev/null"
    if rest:
        cmd = f"{{ {cmd}; head -c {rest} /dev/zero; }}"
    return cmd


def _read_stdout(
    env: BenchEnv, rt: Runtime, nbytes: int, producer: str, timeout: float
) -> dict[str, float]:
    cid = env.new_id(rt, "stdout")
    argv = env.run_argv(rt, cid, "/bin/sh", "-c", producer_command(producer, nbytes), rm=True)
    err_path = env.base / f"{cid}.stderr"
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    total = 0
    first: float | None = None
    with open(err_path, "wb") as err:
        t0 = time.perf_counter()
        proc = env.containerd.ctr_popen(
            *argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err
        )
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"stdout not finished after {timeout}s ({total} bytes read)")
            ready, _, _ = select.select([fd], [], [], min(left, 1.0))
            if not ready:
                continue
            got = os.readv(fd, [view])
            if not got:
                break
            if first is None:
                first = time.perf_counter()
            total += got
        end = time.perf_counter()
        rc = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stdout.close()
    stderr = err_path.read_text(errors="replace")
    err_path.unlink()
    if rc != 0:
        raise RuntimeError(f"ctr run failed (rc {rc}): {stderr}")
    if total != nbytes:
        raise RuntimeError(f"read {total} bytes, expected {nbytes}")
    assert first is not None
    return {
        "bytes": total,
        "seconds_first_byte_to_eof": end - first,
        "seconds_total": end - t0,
        "mb_per_s": total / (end - first) / 1e6,
        "mb_per_s_total": total / (end - t0) / 1e6,
    }


def bench_stdout(env: BenchEnv, args: Any, result: BenchResult) -> None:
    nbytes: int = args.stdout_bytes
    runs: int = args.stdout_runs
    rows = (
        Row(
            "stdout",
            f"stdout {nbytes / 1e9:g} GB, first byte to EOF",
            "MB/s",
            "higher",
            aim=">= 1.0x",
        ),
        Row("stdout", f"stdout {nbytes / 1e9:g} GB, whole ctr run", "MB/s", "higher"),
    )
    _unavailable_rows(env, rows)
    per_rt: dict[str, list[dict[str, float]]] = {rt.key: [] for rt in _available(env)}
    errors: dict[str, str] = {}
    for i in range(runs):
        for rt in _available(env):
            if rt.key in errors:
                continue
            log(f"stdout: {rt.key} run {i + 1}/{runs}, {nbytes} bytes")
            try:
                m = _read_stdout(
                    env, rt, nbytes, args.stdout_producer, timeout=max(60.0, nbytes / 10e6)
                )
                per_rt[rt.key].append(m)
                log(f"stdout: {rt.key}: {m['mb_per_s']:.0f} MB/s")
            except Exception as exc:
                errors[rt.key] = short_error(exc)
                log(f"stdout: {rt.key} failed: {errors[rt.key]}")
                env.reset(rt)
    for key, ms in per_rt.items():
        if key in errors:
            for row in rows:
                row.set(key, error=errors[key])
            continue
        rows[0].set(key, percentile([m["mb_per_s"] for m in ms], 50))
        rows[1].set(key, percentile([m["mb_per_s_total"] for m in ms], 50))
        result.raw[key] = ms
    result.rows += rows
    result.notes.append(
        f"stdout: `ctr run --rm ... sh -c '{producer_command(args.stdout_producer, nbytes)}'` "
        f"read here through a pipe from ctr; median of {runs} run(s) per runtime."
    )


# ------------------------------------------------------------------------------- rss


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
    _unavailable_rows(env, list(rows.values()))

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

    for rt in _available(env):
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
