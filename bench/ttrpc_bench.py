"""ttrpc: unary calls/s and p50/p99 latency of Task.State, our client against two servers.

- reference: the Go runc v2 shim's own ttrpc server, State on a running busybox container
  (`ctr run -d --runtime io.containerd.runc.v2`); its address is in the bundle's `address` file.
- ours: ``trioshim.ttrpc.Server`` serving a trivial Task.State in a separate process
  (bench/ttrpc_server.py).

The client is always ours (``trioshim.ttrpc.open_unix_client``, one connection, calls
multiplexed on it from `concurrency` tasks), in this process; with ``--ttrpc-client raw`` it is
the raw pipelined client of bench/ttrpc_raw.py instead (pre-encoded frames, a blocking socket),
which costs so little per call that the server alone sets the pace. Besides throughput and
latency it reports the CPU time each server spent per call (utime+stime of the server
process), which does not depend on how fast the client is.
"""

from __future__ import annotations

import contextlib
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import REPO
from bench.env import BenchEnv
from bench.results import BenchResult, Row, log, percentile, short_error

NAME = "ttrpc"
# Calls/s against Go's server at each closed-loop concurrency (issue 9; issue 2 asked 0.5x).
_RATE_AIMS = {1: ">= 0.9x", 64: ">= 1.0x"}
_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Measurement:
    concurrency: int
    calls: int
    seconds: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    server_cpu_us: float  # per call
    client_cpu_us: float  # per call

    @property
    def rate(self) -> float:
        return self.calls / self.seconds


def _cpu_seconds(pid: int) -> float:
    """CPU time of a process, all its threads: the sum of /proc/<pid>/task/*/schedstat (ns
    resolution), or utime+stime from /proc/<pid>/stat (clock ticks) without schedstat."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
    except OSError:
        total = 0
    if total:
        return total / 1e9
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # Fields 14 and 15 (utime, stime), counted from 1 with pid and comm first.
    return (int(stat[11]) + int(stat[12])) / _TCK


def _self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def measure(
    address: str,
    container_id: str,
    namespace: str,
    server_pid: int,
    concurrency: int,
    duration: float,
    warmup: float,
    rate: float | None = None,
    client_kind: str = "trio",
) -> Sample:
    """Closed loop (``rate`` None): ``concurrency`` tasks each calling back to back.
    Open loop (``rate`` calls/s): one call started every 1/rate s, at most ``concurrency`` in
    flight; latency counted from the scheduled start, so waiting for a free slot counts too."""
    import trio

    from trioshim.api.containerd.runtime.task.v2 import shim_pb2
    from trioshim.ttrpc import open_unix_client

    if client_kind == "raw":
        from bench.ttrpc_raw import state_request_body

        body = state_request_body(container_id, namespace)
        return _measure_raw(address, body, server_pid, concurrency, (warmup, duration))
    request = shim_pb2.StateRequest(id=container_id)
    metadata = [("containerd-namespace-ttrpc", namespace)]
    service = "containerd.task.v2.Task"
    latencies: list[int] = []

    async def run() -> tuple[float, float, float]:
        async with open_unix_client(address) as client:

            async def worker(until: float, record: bool) -> None:
                while trio.current_time() < until:
                    t = time.perf_counter_ns()
                    await client.call(
                        service, "State", request, shim_pb2.StateResponse, metadata=metadata
                    )
                    if record:
                        latencies.append(time.perf_counter_ns() - t)

            async def one_paced(scheduled: float, limiter: trio.CapacityLimiter) -> None:
                try:
                    await client.call(
                        service, "State", request, shim_pb2.StateResponse, metadata=metadata
                    )
                    latencies.append(int((trio.current_time() - scheduled) * 1e9))
                finally:
                    limiter.release_on_behalf_of(scheduled)

            async def paced(until: float, rate: float) -> None:
                limiter = trio.CapacityLimiter(concurrency)
                interval = 1 / rate
                next_start = trio.current_time()
                async with trio.open_nursery() as nursery:
                    while next_start < until:
                        await trio.sleep_until(next_start)
                        await limiter.acquire_on_behalf_of(next_start)
                        nursery.start_soon(one_paced, next_start, limiter)
                        next_start += interval

            with trio.fail_after(warmup + duration + 60):
                async with trio.open_nursery() as nursery:
                    for _ in range(concurrency):
                        nursery.start_soon(worker, trio.current_time() + warmup, False)
                server0, client0, t0 = _cpu_seconds(server_pid), _self_cpu(), time.perf_counter()
                async with trio.open_nursery() as nursery:
                    until = trio.current_time() + duration
                    if rate is None:
                        for _ in range(concurrency):
                            nursery.start_soon(worker, until, True)
                    else:
                        nursery.start_soon(paced, until, rate)
                elapsed = time.perf_counter() - t0
                return elapsed, _cpu_seconds(server_pid) - server0, _self_cpu() - client0

    elapsed, server_cpu, client_cpu = trio.run(run)
    return Sample([v / 1e6 for v in latencies], elapsed, server_cpu, client_cpu)


def _measure_raw(
    address: str, body: bytes, server_pid: int, concurrency: int, times: tuple[float, float]
) -> Sample:
    """:func:`measure` with the raw pipelined client; ``times``: warm-up and measured seconds."""
    from bench.ttrpc_raw import pipelined_calls

    warmup, duration = times
    pipelined_calls(address, body, concurrency, seconds=warmup)
    server0, client0 = _cpu_seconds(server_pid), _self_cpu()
    res = pipelined_calls(address, body, concurrency, seconds=duration)
    server_cpu, client_cpu = _cpu_seconds(server_pid) - server0, _self_cpu() - client0
    return Sample([v / 1e6 for v in res.latencies_ns], res.seconds, server_cpu, client_cpu)


@dataclass
class Sample:
    latencies_ms: list[float]
    seconds: float
    server_cpu: float
    client_cpu: float


def combine(concurrency: int, samples: list[Sample]) -> Measurement:
    ms = [v for s in samples for v in s.latencies_ms]
    n = len(ms)
    if n == 0:
        raise RuntimeError("no call completed")
    return Measurement(
        concurrency=concurrency,
        calls=n,
        seconds=sum(s.seconds for s in samples),
        p50_ms=percentile(ms, 50),
        p99_ms=percentile(ms, 99),
        max_ms=max(ms),
        server_cpu_us=sum(s.server_cpu for s in samples) / n * 1e6,
        client_cpu_us=sum(s.client_cpu for s in samples) / n * 1e6,
    )


def connect_pid(address: str, namespace: str) -> int:
    import trio

    from trioshim.api.containerd.runtime.task.v2 import shim_pb2
    from trioshim.ttrpc import open_unix_client

    async def run() -> int:
        with trio.fail_after(10):
            async with open_unix_client(address) as client:
                r = await client.call(
                    "containerd.task.v2.Task",
                    "Connect",
                    shim_pb2.ConnectRequest(),
                    shim_pb2.ConnectResponse,
                    metadata=[("containerd-namespace-ttrpc", namespace)],
                )
                return int(r.shim_pid)

    return trio.run(run)


class OurServer:
    """bench/ttrpc_server.py in a child process; ``close()`` stops it and removes its socket."""

    def __init__(self, base: Path) -> None:
        self.socket = str(base / "ttrpc-bench.sock")
        self.log_path = base / "ttrpc-server.log"
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + (f":{env['PYTHONPATH']}" if env.get("PYTHONPATH") else "")
        with open(self.log_path, "wb") as errors:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bench.ttrpc_server", self.socket],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=errors,
                cwd=str(REPO),
                env=env,
            )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != b"ready":
            self.close()
            tail = self.log_path.read_text(errors="replace").strip().splitlines()[-3:]
            raise RuntimeError(f"our ttrpc server did not start: {' | '.join(tail)}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()
        with contextlib.suppress(OSError):
            os.unlink(self.socket)


def run(env: BenchEnv, args: Any, result: BenchResult) -> None:
    duration: float = args.ttrpc_seconds
    rounds: int = max(1, args.ttrpc_rounds)
    warmup: float = min(0.3, duration / rounds / 3)
    client_kind: str = args.ttrpc_client
    paced_rate: float = args.ttrpc_paced_rate if client_kind == "trio" else 0
    # (label, concurrency, paced rate or None for closed loop)
    levels: list[tuple[str, int, float | None]] = [("c=1", 1, None), ("c=64", 64, None)]
    if paced_rate > 0:
        levels.append((f"{paced_rate:g}/s paced, <=64 in flight", 64, paced_rate))
    servers: dict[str, tuple[str, str, int] | str] = {}

    # Reference: the Go shim of a running container.
    ref = env.reference
    ref_cid = env.new_id(ref, "ttrpc")
    ours_server: OurServer | None = None
    try:
        if ref.unavailable:
            servers["ref"] = ref.unavailable
        else:
            try:
                env.run_detached(ref, ref_cid, "/bin/sleep", "1000000")
                address = env.containerd.shim_address(ref_cid)
                servers["ref"] = (address, ref_cid, connect_pid(address, env.namespace))
            except Exception as exc:
                servers["ref"] = short_error(exc)
        try:
            ours_server = OurServer(env.base)
            servers["ours"] = (ours_server.socket, "bench", ours_server.pid)
        except Exception as exc:
            servers["ours"] = short_error(exc)

        results: dict[str, dict[str, Measurement | str]] = {"ref": {}, "ours": {}}
        for level, concurrency, level_rate in levels:
            samples: dict[str, list[Sample]] = {"ref": [], "ours": []}
            for key in ("ref", "ours"):
                if isinstance(servers[key], str):
                    results[key][level] = str(servers[key])
            # Short rounds, alternating servers, so that a change in the machine's load
            # during the benchmark hits both sides alike.
            log(f"ttrpc: {level}: {rounds} rounds of {duration / rounds:.1f}s each")
            for _ in range(rounds):
                for key in ("ref", "ours"):
                    target = servers[key]
                    if isinstance(target, str) or level in results[key]:
                        continue
                    address, cid, pid = target
                    try:
                        samples[key].append(
                            measure(
                                address,
                                cid,
                                env.namespace,
                                pid,
                                concurrency,
                                duration / rounds,
                                warmup,
                                level_rate,
                                client_kind,
                            )
                        )
                    except Exception as exc:
                        results[key][level] = short_error(exc)
            for key in ("ref", "ours"):
                if level in results[key]:
                    continue
                m = combine(concurrency, samples[key])
                results[key][level] = m
                log(
                    f"ttrpc: {key} {level}: {m.rate:.0f} calls/s p50 {m.p50_ms:.3f} ms "
                    f"p99 {m.p99_ms:.3f} ms server {m.server_cpu_us:.0f} us/call"
                )
    finally:
        if ours_server is not None:
            ours_server.close()
        if not ref.unavailable:
            env.remove([ref_cid])

    for level, concurrency, level_rate in levels:
        rows = [
            Row(
                NAME,
                f"State calls/s, {level}",
                "calls/s",
                "higher",
                aim=_RATE_AIMS.get(concurrency, "") if level_rate is None else "",
            ),
            Row(NAME, f"State p50 latency, {level}", "ms", "lower"),
            Row(
                NAME,
                f"State p99 latency, {level}",
                "ms",
                "lower",
                aim="<= 5 ms (ours)" if concurrency == 64 else "",
            ),
            Row(NAME, f"server CPU per call, {level}", "us", "lower"),
            Row(NAME, f"client CPU per call, {level}", "us", "lower", note="same client"),
        ]
        for key in ("ref", "ours"):
            m = results[key][level]
            if isinstance(m, str):
                for row in rows:
                    row.set(key, error=m)
                continue
            for row, value in zip(
                rows,
                (m.rate, m.p50_ms, m.p99_ms, m.server_cpu_us, m.client_cpu_us),
                strict=True,
            ):
                row.set(key, value)
            result.raw.setdefault(key, {})[level] = {
                "calls": m.calls,
                "seconds": m.seconds,
                "calls_per_s": m.rate,
                "p50_ms": m.p50_ms,
                "p99_ms": m.p99_ms,
                "max_ms": m.max_ms,
                "server_cpu_us_per_call": m.server_cpu_us,
                "client_cpu_us_per_call": m.client_cpu_us,
            }
        result.rows += rows
    result.notes.append(
        "ttrpc: reference = Go runc-v2 shim's server (State on a running container), "
        "ours = trioshim.ttrpc.Server in its own process; the client is the same in both cases "
        f"({'the raw pipelined client' if client_kind == 'raw' else 'trioshim.ttrpc'}, "
        f"one connection, {rounds} alternating rounds, {duration:g}s per point). At "
        "concurrency 64 (closed loop) the latency is queueing behind the client: p50 ~ 64 / "
        "(calls/s); the paced row offers a fixed rate instead (open loop, latency from the "
        "scheduled start)."
    )
