"""A raw pipelined ttrpc client, and the server's instruction count per request.

The client (:func:`pipelined_calls`) is a blocking socket and pre-encoded Task.State frames: it
spends a few microseconds per call, so the server alone sets the pace. It keeps ``concurrency``
requests in flight: as replies come in, the same number of new requests go out in one write.
``burst=True`` instead writes ``concurrency`` requests at once and waits for all their replies
before the next burst, so that the server sees the same reads every time (for counting).

``python -m bench.ttrpc_raw cost`` counts the instructions our server
(bench/ttrpc_server.py) executes per State call under ``valgrind --tool=callgrind``: the
server runs once serving ``--calls`` requests and once serving three times as many, and the
difference divided by the difference in calls is the cost per call, start-up excluded. The
count does not depend on the machine's load, unlike wall-clock rates; it moves by a fraction
of a percent between runs (hash seeds are fixed). Needs valgrind (not a project dependency).
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench import REPO

_HEADER_SIZE = 10
_REQUEST = 1
_RESPONSE = 2


def state_request_body(container_id: str, namespace: str) -> bytes:
    """The serialized ttrpc Request of a Task.State call, as containerd sends it."""
    from trioshim.api.containerd.runtime.task.v2 import shim_pb2
    from trioshim.api.ttrpc.request_pb2 import KeyValue, Request

    return Request(
        service="containerd.task.v2.Task",
        method="State",
        payload=shim_pb2.StateRequest(id=container_id).SerializeToString(),
        metadata=[KeyValue(key="containerd-namespace-ttrpc", value=namespace)],
    ).SerializeToString()


@dataclass
class RawResult:
    calls: int
    seconds: float
    latencies_ns: list[int]


class _Replies:
    """Counts whole Response frames in the bytes read; checks the first one succeeded."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.checked = False

    def feed(self, data: bytes) -> list[int]:
        """Stream ids of the replies completed by ``data``."""
        from trioshim.api.ttrpc.request_pb2 import Response

        buf = self._buf
        buf += data
        done = []
        pos = 0
        while len(buf) - pos >= _HEADER_SIZE:
            length = int.from_bytes(buf[pos : pos + 4], "big")
            end = pos + _HEADER_SIZE + length
            if len(buf) < end:
                break
            if buf[pos + 8] != _RESPONSE:
                raise RuntimeError(f"unexpected frame type {buf[pos + 8]}")
            if not self.checked:
                response = Response.FromString(bytes(buf[pos + _HEADER_SIZE : end]))
                if response.status.code:
                    raise RuntimeError(f"call failed: {response.status}")
                self.checked = True
            done.append(int.from_bytes(buf[pos + 4 : pos + 8], "big"))
            pos = end
        del buf[:pos]
        return done


def pipelined_calls(
    address: str,
    body: bytes,
    concurrency: int,
    *,
    calls: int | None = None,
    seconds: float | None = None,
    burst: bool = False,
) -> RawResult:
    """Send State requests (``body``) on one connection until ``calls`` are answered or
    ``seconds`` have passed, with ``concurrency`` in flight; latency of each call recorded."""
    header = len(body).to_bytes(4, "big")
    tail = bytes([_REQUEST, 0]) + body
    sent_at: dict[int, int] = {}
    latencies: list[int] = []
    replies = _Replies()
    next_id = 1
    started = 0

    def frames(n: int) -> bytes:
        nonlocal next_id, started
        now = time.perf_counter_ns()
        out = []
        for _ in range(n):
            out.append(header + next_id.to_bytes(4, "big") + tail)
            sent_at[next_id] = now
            next_id += 2
        started += n
        return b"".join(out)

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(address)
        t0 = time.perf_counter()
        until = None if seconds is None else t0 + seconds

        def want(n: int) -> int:
            if until is not None and time.perf_counter() >= until:
                return 0
            if calls is not None:
                n = min(n, calls - started)
            return max(n, 0)

        sock.sendall(frames(want(concurrency)))
        while sent_at:
            data = sock.recv(65536)
            if not data:
                raise RuntimeError("server closed the connection")
            done = replies.feed(data)
            now = time.perf_counter_ns()
            for stream_id in done:
                latencies.append(now - sent_at.pop(stream_id))
            more = want(concurrency if not sent_at else 0) if burst else want(len(done))
            if more:
                sock.sendall(frames(more))
        elapsed = time.perf_counter() - t0
    return RawResult(len(latencies), elapsed, latencies)


# ------------------------------------------------------------------------ instruction counts


def _callgrind_instructions(calls: int, concurrency: int, out_dir: Path) -> int:
    """Instructions (Ir) of one server process that served ``calls`` State calls."""
    sock = str(out_dir / "raw.sock")
    out = out_dir / f"callgrind.{calls}.{concurrency}.out"
    env = dict(os.environ, PYTHONHASHSEED="0", PYTHONPATH=str(REPO))
    server = subprocess.Popen(
        [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            sys.executable,
            "-m",
            "bench.ttrpc_server",
            sock,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=str(REPO),
        env=env,
    )
    assert server.stdout is not None and server.stdin is not None
    try:
        if server.stdout.readline().strip() != b"ready":
            raise RuntimeError("server did not start under valgrind")
        body = state_request_body("bench", "bench")
        pipelined_calls(sock, body, concurrency, calls=calls, burst=True)
    finally:
        server.stdin.close()  # the server exits on stdin EOF
        assert server.stderr is not None
        err = server.stderr.read()
        server.wait(600)
    match = re.search(rb"Collected : (\d+)", err)
    if match is None:
        raise RuntimeError(f"no instruction count from valgrind: {err[-500:]!r}")
    return int(match.group(1))


def cost(calls: int, concurrency: int) -> float:
    """Server instructions per State call, start-up and shutdown excluded (see module doc)."""
    with tempfile.TemporaryDirectory(prefix="ttrpc-cost") as tmp:
        small = _callgrind_instructions(calls, concurrency, Path(tmp))
        large = _callgrind_instructions(3 * calls, concurrency, Path(tmp))
    return (large - small) / (2 * calls)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ttrpc_raw", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("cost", help="server instructions per State call, under callgrind")
    c.add_argument("--calls", type=int, default=2048, help="calls in the smaller run (2048)")
    c.add_argument(
        "--concurrency", type=int, action="append", help="in flight per burst (1 and 64)"
    )
    r = sub.add_parser("rate", help="calls/s of a server at ADDRESS, no valgrind")
    r.add_argument("address")
    r.add_argument("--concurrency", type=int, default=64)
    r.add_argument("--seconds", type=float, default=3.0)
    r.add_argument("--id", default="bench", help="container id to ask about (bench)")
    r.add_argument("--namespace", default="bench")
    args = p.parse_args(argv)
    if args.command == "cost":
        for concurrency in args.concurrency or [1, 64]:
            per_call = cost(args.calls, concurrency)
            print(f"c={concurrency}: {per_call:,.0f} instructions per call")
    else:
        body = state_request_body(args.id, args.namespace)
        res = pipelined_calls(args.address, body, args.concurrency, seconds=args.seconds)
        print(f"{res.calls / res.seconds:,.0f} calls/s over {res.calls} calls")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
