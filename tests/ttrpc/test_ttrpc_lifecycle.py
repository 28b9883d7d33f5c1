"""Shutdown, close, listeners and peer credentials."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest
import trio
import trio.testing
from google.protobuf import empty_pb2, wrappers_pb2
from ttrpc_testing import SERVICE, TEST_SERVICE, TestService

from trioshim.api.ttrpc.request_pb2 import Request, Response
from trioshim.ttrpc import (
    ClosedError,
    Server,
    ServerClosedError,
    Stub,
    open_unix_client,
    open_unix_listener,
    peer_credentials,
    require_uid_gid,
)
from trioshim.ttrpc.codec import FrameType, encode_frame

Sleep = wrappers_pb2.DoubleValue


async def start_server(
    nursery: trio.Nursery, path: Path, service: TestService, **kw: object
) -> tuple[Server, trio.Event]:
    server = Server(**kw)  # type: ignore[arg-type]
    server.register(TEST_SERVICE, service)
    served = trio.Event()

    async def run(task_status: trio.TaskStatus[None]) -> None:
        try:
            await server.serve(await open_unix_listener(path), task_status=task_status)
        finally:
            served.set()

    await nursery.start(run)
    return server, served


async def test_shutdown_idle_and_active(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, sock_path: Path
) -> None:
    service = TestService()
    server, served = await start_server(nursery, sock_path, service)
    closes: list[str] = []
    results: list[str] = []
    async with (
        open_unix_client(sock_path, on_close=lambda: closes.append("idle")) as idle,
        open_unix_client(sock_path, on_close=lambda: closes.append("busy")) as busy,
    ):
        assert (await Stub(idle, TEST_SERVICE).Echo(wrappers_pb2.StringValue(value="x"))).value
        stub = Stub(busy, TEST_SERVICE)

        async def slow() -> None:
            await stub.Sleep(Sleep(value=10))
            results.append(f"slow done at {trio.current_time():.0f}")

        nursery.start_soon(slow)
        await service.sleep_started.wait()
        async with trio.open_nursery() as inner:

            async def shutdown() -> None:
                await server.shutdown()
                results.append(f"shutdown done at {trio.current_time():.0f}")

            inner.start_soon(shutdown)
            await idle.wait_closed()
            assert closes == ["idle"]
            assert trio.current_time() < 1
            # The busy connection still serves new requests while draining.
            assert (await stub.Echo(wrappers_pb2.StringValue(value="y"))).value == "y"
            await busy.wait_closed()
        assert closes == ["idle", "busy"]
        with pytest.raises(ClosedError):
            await stub.Echo(wrappers_pb2.StringValue(value="z"))
    assert results == ["slow done at 10", "shutdown done at 10"]
    await served.wait()
    # The listener is closed.
    with pytest.raises(OSError):
        await trio.open_unix_socket(str(sock_path))
    with pytest.raises(ServerClosedError, match="ttrpc: server closed"):
        await server.serve(await open_unix_listener(sock_path.with_name("t")))


async def test_shutdown_grace_expires(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, sock_path: Path
) -> None:
    service = TestService()
    server, served = await start_server(nursery, sock_path, service)
    async with open_unix_client(sock_path) as client:
        async with trio.open_nursery() as inner:

            async def call() -> None:
                with pytest.raises(ClosedError):
                    await Stub(client, TEST_SERVICE).Sleep(Sleep(value=10))

            inner.start_soon(call)
            await service.sleep_started.wait()
            await server.shutdown(grace=2)
            assert trio.current_time() == pytest.approx(2)
        await served.wait()
        assert service.cancelled == ["sleep 10.0"]
        assert service.finished == []


async def test_close_is_immediate(nursery: trio.Nursery, sock_path: Path) -> None:
    service = TestService()
    server, served = await start_server(nursery, sock_path, service)
    async with open_unix_client(sock_path) as client:
        async with trio.open_nursery() as inner:

            async def call() -> None:
                with pytest.raises(ClosedError):
                    await Stub(client, TEST_SERVICE).Sleep(Sleep(value=1e6))

            inner.start_soon(call)
            await service.sleep_started.wait()
            server.close()
        await client.wait_closed()
    await served.wait()
    assert service.cancelled == ["sleep 1000000.0"]
    await server.wait_closed()


async def test_shutdown_without_connections(nursery: trio.Nursery, sock_path: Path) -> None:
    server, served = await start_server(nursery, sock_path, TestService())
    await server.shutdown()
    await served.wait()


async def test_unix_listener_from_fd(nursery: trio.Nursery, sock_path: Path) -> None:
    import socket

    from trioshim.ttrpc import unix_listener_from_fd

    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.bind(str(sock_path))
    raw.listen()
    server = Server()
    server.register(TEST_SERVICE, TestService())
    await nursery.start(server.serve, unix_listener_from_fd(raw.detach()))
    async with open_unix_client(sock_path) as client:
        reply = await Stub(client, TEST_SERVICE).Echo(wrappers_pb2.StringValue(value="fd"))
        assert reply.value == "fd"
    server.close()


# --- peer credentials -----------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import os, socket, sys
    uid, gid, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    request = bytes.fromhex(sys.argv[4])
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    try:
        s.sendall(request)
        data = s.recv(65536)
    except (ConnectionResetError, BrokenPipeError) as exc:
        print("closed", type(exc).__name__)
    else:
        print("closed EOF" if data == b"" else "data " + data.hex())
    """
)


async def run_child(path: Path, uid: int, gid: int) -> str:
    request = encode_frame(
        1, FrameType.REQUEST, 0, Request(service=SERVICE, method="Nil").SerializeToString()
    )
    result = await trio.run_process(
        [sys.executable, "-I", "-c", CHILD, str(uid), str(gid), str(path), request.hex()],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode().strip()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a child as another user")
@pytest.mark.parametrize(
    ("uid", "gid", "accepted"),
    [(0, 0, True), (65534, 0, False), (0, 65534, False), (65534, 65534, False)],
)
async def test_peer_credentials(
    nursery: trio.Nursery, sock_dir: Path, sock_path: Path, uid: int, gid: int, accepted: bool
) -> None:
    os.chmod(sock_dir, 0o755)
    service = TestService()
    server = Server()  # default: require_same_user(), here root:root
    server.register(TEST_SERVICE, service)
    await nursery.start(server.serve, await open_unix_listener(sock_path))
    os.chmod(sock_path, 0o777)
    out = await run_child(sock_path, uid, gid)
    if accepted:
        assert out.startswith("data ")
        frame = bytes.fromhex(out[5:])
        assert frame[4:10] == bytes.fromhex("00000001 0200")
        status = Response.FromString(frame[10:]).status
        assert (status.code, status.message) == (2, "ttrpc: marshal called with nil")
    else:
        # EOF, or a reset / EPIPE (Linux resets a unix peer closed with unread data).
        assert out in ("closed EOF", "closed ConnectionResetError", "closed BrokenPipeError")
    server.close()


async def test_require_uid_gid_and_credentials(nursery: trio.Nursery, sock_path: Path) -> None:
    # A check that our own process cannot pass: closed with no frame, the client sees ClosedError.
    server = Server(handshake=require_uid_gid(os.geteuid() + 1, -1))
    server.register(TEST_SERVICE, TestService())
    await nursery.start(server.serve, await open_unix_listener(sock_path))
    async with open_unix_client(sock_path) as client:
        with pytest.raises(ClosedError):
            await Stub(client, TEST_SERVICE).Nil(empty_pb2.Empty())
    server.close()
    a, b = trio.socket.socketpair()
    with a, b:
        cred = peer_credentials(a)
        assert (cred.pid, cred.uid, cred.gid) == (os.getpid(), os.geteuid(), os.getegid())


class FlakyListener(trio.abc.Listener[trio.abc.Stream]):
    """A listener whose accept fails with the given errors, then waits to be closed."""

    def __init__(self, errors: list[OSError]) -> None:
        self.errors = errors
        self.attempts: list[float] = []
        self.closed = trio.Event()
        self.errors_used = trio.Event()  # the accept after the last error is waiting

    async def accept(self) -> trio.abc.Stream:
        self.attempts.append(trio.current_time())
        if self.errors:
            raise self.errors.pop(0)
        self.errors_used.set()
        await self.closed.wait()
        raise trio.ClosedResourceError

    async def aclose(self) -> None:
        self.closed.set()


async def test_accept_capacity_errors_back_off(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    import errno

    listener = FlakyListener([OSError(errno.EMFILE, "too many"), OSError(errno.ENFILE, "x")])
    server = Server(handshake=None)
    await nursery.start(server.serve, listener)
    await listener.errors_used.wait()  # (virtual time: the retries happen at 1 ms and 3 ms)
    assert listener.attempts == [0, pytest.approx(0.001), pytest.approx(0.003)]
    assert "accept failed" in caplog.text
    await server.shutdown()
    assert listener.closed.is_set()


async def test_other_accept_errors_propagate() -> None:
    import errno

    server = Server(handshake=None)
    with pytest.raises(OSError, match="bad fd"):
        await server.serve(FlakyListener([OSError(errno.EBADF, "bad fd")]))
