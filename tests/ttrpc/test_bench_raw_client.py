"""The benchmark's raw pipelined client counts what our server answers (bench/ttrpc_raw.py)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import REPO
from bench.ttrpc_raw import pipelined_calls, state_request_body


@pytest.fixture
def bench_server(sock_dir: Path) -> Iterator[str]:
    path = str(sock_dir / "bench.sock")
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.ttrpc_server", path],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=str(REPO),
    )
    assert server.stdout is not None and server.stdin is not None
    try:
        assert server.stdout.readline().strip() == b"ready"
        yield path
    finally:
        server.stdin.close()  # it exits on stdin EOF
        server.wait(30)
        server.stdout.close()


@pytest.mark.parametrize(("concurrency", "burst"), [(1, False), (7, False), (8, True)])
def test_every_call_answered_and_timed(bench_server: str, concurrency: int, burst: bool) -> None:
    body = state_request_body("c1", "default")
    result = pipelined_calls(bench_server, body, concurrency, calls=40, burst=burst)
    assert result.calls == 40 == len(result.latencies_ns)
    assert all(ns > 0 for ns in result.latencies_ns)
