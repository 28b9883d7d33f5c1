"""Fixtures for the ttrpc tests: a served test service on a unix socket in a short temp dir."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio
from ttrpc_testing import TEST_SERVICE, RawPeer, TestService

from trioshim.ttrpc import Server, open_unix_listener


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # Short path: sun_path holds 108 bytes, pytest's tmp_path can be longer.
    path = Path(tempfile.mkdtemp(prefix="ttrpc-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def sock_path(sock_dir: Path) -> Path:
    return sock_dir / "s"


@pytest.fixture
def service() -> TestService:
    return TestService()


@pytest.fixture
async def server(
    nursery: trio.Nursery, sock_path: Path, service: TestService
) -> AsyncIterator[Server]:
    server = Server()
    server.register(TEST_SERVICE, service)
    await nursery.start(server.serve, await open_unix_listener(sock_path))
    yield server
    server.close()


@pytest.fixture
async def peer(server: Server, sock_path: Path) -> AsyncIterator[RawPeer]:
    """A hand-driven client connection to the served test service."""
    peer = RawPeer(await trio.open_unix_socket(str(sock_path)))
    yield peer
    await peer.aclose()
