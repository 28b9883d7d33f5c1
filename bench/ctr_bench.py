"""Benchmarks driven through `ctr` against the private containerd, one runtime after the other
(interleaved where the order could bias the result):

- ``run``: `ctr run --rm ... /bin/true`, median latency over N runs.
- ``exec``: `ctr task exec --exec-id X ID /bin/true` on a running container, median latency.
- ``stdout``: 1 GB through a container's stdout (`head -c N /dev/zero`) to a reader here, MB/s.

``rss`` (the shims' memory) is in :mod:`bench.rss_bench`.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any

from bench.env import BenchEnv
from bench.results import BenchResult, Row, log, percentile, short_error, summary
from bench.runtimes import Runtime
from tests.support.containerd import ContainerdError


def available(env: BenchEnv) -> list[Runtime]:
    return [rt for rt in (env.reference, env.ours) if not rt.unavailable]


def unavailable_rows(env: BenchEnv, rows: Sequence[Row]) -> None:
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
    samples: dict[str, list[float]] = {rt.key: [] for rt in available(env)}
    errors: dict[str, str] = {}
    for i in range(n + 1):
        for rt in available(env):
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
    unavailable_rows(env, rows)
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
        for rt in available(env):
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
    unavailable_rows(env, rows)
    per_rt: dict[str, list[dict[str, float]]] = {rt.key: [] for rt in available(env)}
    errors: dict[str, str] = {}
    for i in range(runs):
        for rt in available(env):
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
