"""The start / delete / -info actions, run in-process (start forks a real daemon)."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
import trio

from trioshim.api.containerd.runtime.bootstrap.v1 import bootstrap_pb2
from trioshim.api.containerd.runtime.task.v2 import shim_pb2
from trioshim.api.containerd.types import introspection_pb2
from trioshim.shim import Manager, StopContext, StopStatus, run
from trioshim.shim.address import socket_address, socket_path, write_address
from trioshim.shim.reaper import DEVNULL, Exit, open_reaper
from trioshim.testing import connect_task
from trioshim.ttrpc import Stub

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "minimal_shim.py"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("minimal_shim_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class CleanupManager(Manager):
    name = "io.containerd.test.v2"
    version = "9.9"
    stopped: list[StopContext]

    def __init__(self, socket_dir: str) -> None:
        super().__init__(socket_dir=socket_dir)
        self.stopped = []

    async def stop(self, ctx: StopContext) -> StopStatus:
        self.stopped.append(ctx)
        done = await ctx.reaper.run(["/bin/sh", "-c", "echo cleaned"])
        assert done.stdout == b"cleaned\n"
        return StopStatus(pid=1234, exit_status=137, exited_at_ns=1_700_000_000_123_456_789)


@dataclass
class Env:
    root: str
    socket_dir: str
    manager: CleanupManager

    def bundle(self, id: str, annotations: dict[str, str] | None = None) -> str:
        path = os.path.join(self.root, "bundles", id)
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump({"annotations": annotations or {}}, f)
        Path(path, "log").touch()  # a plain file stands in for containerd's FIFO
        return path

    def argv(self, id: str, action: str, *extra: str, namespace: str = "testns") -> list[str]:
        return [
            "-namespace",
            namespace,
            "-address",
            "/run/test/containerd.sock",
            "-publish-binary",
            "/usr/bin/containerd",
            "-id",
            id,
            "-bundle",
            os.path.join(self.root, "bundles", id),
            *extra,
            action,
        ]

    def run(self, argv: list[str], stdin: bytes = b"") -> tuple[int, bytes, bytes]:
        out, err = io.BytesIO(), io.BytesIO()
        status = run(
            self.manager,
            argv,
            load_example().REGISTRY,
            stdin=io.BytesIO(stdin),
            stdout=out,
            stderr=err,
            environ={"TTRPC_ADDRESS": os.path.join(self.root, "no-containerd.ttrpc")},
        )
        return status, out.getvalue(), err.getvalue()


@pytest.fixture
def env() -> Iterator[Env]:
    root = tempfile.mkdtemp(prefix="act-", dir="/tmp")
    try:
        yield Env(root, os.path.join(root, "s"), CleanupManager(os.path.join(root, "s")))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def connect(address: str, id: str) -> shim_pb2.ConnectResponse:
    async def go() -> shim_pb2.ConnectResponse:
        async with connect_task(address, "testns") as task:
            reply: shim_pb2.ConnectResponse = await task.Connect(shim_pb2.ConnectRequest(id=id))
            return reply

    return trio.run(go)


def shutdown(address: str) -> None:
    async def go() -> None:
        async with connect_task(address, "testns") as task:
            await task.Shutdown(shim_pb2.ShutdownRequest(id="x"))

    trio.run(go)


def reap(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_start_forks_a_detached_daemon_and_reuses_it_for_the_group(env: Env) -> None:
    group = {"io.kubernetes.cri.sandbox-id": "pod1"}
    bundle = env.bundle("c1", group)
    status, out, err = env.run(env.argv("c1", "start"))
    assert (status, err) == (0, b"")
    address = socket_address(
        "/run/test/containerd.sock", "testns", "pod1", socket_dir=env.socket_dir
    )
    assert out == address.encode()  # the address and nothing else, no newline
    assert Path(bundle, "address").read_bytes() == out

    pid = connect(address, "c1").shim_pid
    try:
        assert pid != os.getpid() and os.getpgid(pid) == pid  # its own process group
        for fd in (0, 1):
            assert os.readlink(f"/proc/{pid}/fd/{fd}") == "/dev/null"
        assert os.readlink(f"/proc/{pid}/fd/2") == os.path.join(bundle, "log")
        with open(f"/proc/{os.getppid()}/oom_score_adj") as f:
            parent_score = int(f.read())
        with open(f"/proc/{pid}/oom_score_adj") as f:
            assert int(f.read()) == min(1000, parent_score + 1)

        # A second container of the same pod: same address, no second daemon.
        bundle2 = env.bundle("c2", group)
        status, out2, _ = env.run(env.argv("c2", "start"))
        assert (status, out2) == (0, out)
        assert Path(bundle2, "address").read_bytes() == out
        assert connect(address, "c2").shim_pid == pid
    finally:
        shutdown(address)
        assert reap(pid) == 0
    assert not os.path.exists(socket_path(address))
    assert "starting signal loop" in Path(bundle, "log").read_text()


def test_start_replaces_a_stale_socket(env: Env) -> None:
    env.bundle("c1")
    address = socket_address("/run/test/containerd.sock", "testns", "c1", socket_dir=env.socket_dir)
    os.makedirs(env.socket_dir)
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(socket_path(address))  # bound, never listening: a dead daemon's leftover
    status, out, _ = env.run(env.argv("c1", "start"))
    assert (status, out) == (0, address.encode())
    pid = connect(address, "c1").shim_pid
    shutdown(address)
    assert reap(pid) == 0


def test_delete_after_sigkill_removes_leaked_socket_and_is_idempotent(env: Env) -> None:
    bundle = env.bundle("c1")
    status, out, _ = env.run(env.argv("c1", "start"))
    assert status == 0
    pid = connect(out.decode(), "c1").shim_pid
    os.kill(pid, signal.SIGKILL)
    assert reap(pid) == -signal.SIGKILL
    path = socket_path(out.decode())
    assert os.path.exists(path)  # leaked by the dead daemon

    for _ in range(2):
        status, data, err = env.run(env.argv("c1", "delete"))
        assert status == 0, err
        response = shim_pb2.DeleteResponse.FromString(data)
        assert (response.pid, response.exit_status) == (1234, 137)
        assert (response.exited_at.seconds, response.exited_at.nanos) == (1_700_000_000, 123456789)
        assert not os.path.exists(path)
    assert [c.bundle for c in env.manager.stopped] == [bundle, bundle]
    # Delete with nothing at all in the bundle still succeeds.
    shutil.rmtree(bundle)
    os.makedirs(bundle)
    assert env.run(env.argv("c1", "delete"))[0] == 0


def test_delete_response_bytes_match_the_spec_example(env: Env) -> None:
    env.bundle("c1")
    _, data, _ = env.run(env.argv("c1", "delete"))
    assert data == bytes.fromhex("08d209108901 1a0b0880e2cfaa061095 9aef3a".replace(" ", ""))


def test_info_and_version(env: Env) -> None:
    status, data, _ = env.run(["-info"])
    info = introspection_pb2.RuntimeInfo.FromString(data)
    assert (status, info.name, info.version.version) == (0, "io.containerd.test.v2", "9.9")
    status, text, _ = env.run(["-v"])
    assert status == 0 and b"Version:  9.9" in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-namespace", "", "-id", "c1", "start"], b"shim namespace must not be empty"),
        (["-namespace", "ns", "-id", "../c1", "start"], b"shim id '../c1' must match"),
        (["-namespace", "a/b", "-id", "c1", "delete"], b"shim namespace 'a/b' must match"),
        (
            ["-namespace", "ns", "-id", "c1", "-bundle", "/state/ns/../../c1", "delete"],
            b"shim bundle '/state/ns/../../c1' is not a clean path",
        ),
        (
            ["-namespace", "ns", "-id", "c1", "-bundle", "../../c1", "start"],
            b"shim bundle '../../c1' is not an absolute path",
        ),
        (["-namespace", "ns", "-id", "c1", "explode"], b"unknown action 'explode'"),
    ],
)
def test_bad_command_lines(env: Env, argv: list[str], message: bytes) -> None:
    status, out, err = env.run(argv)
    assert (status, out) == (1, b"")
    assert message in err and err.startswith(b"io.containerd.test.v2: ")
    assert not os.path.exists(env.socket_dir)


def test_unknown_flag_is_a_usage_error(env: Env) -> None:
    status, _, err = env.run(["-bogus", "start"])
    assert status == 2 and b"flag provided but not defined: -bogus" in err and b"Usage" in err


def test_bad_start_input_leaves_nothing_behind(env: Env) -> None:
    bundle = env.bundle("c1")
    status, out, err = env.run(env.argv("c1", "start"), stdin=b"\xff\xff\xff\xff")
    assert (status, out) == (1, b"") and b"unreadable options on stdin" in err
    long = CleanupManager("/tmp/" + "x" * 60)
    env.manager = long
    status, out, err = env.run(env.argv("c1", "start"))
    assert (status, out) == (1, b"") and b"unix socket path too long (> 106)" in err
    assert not os.path.exists("/tmp/" + "x" * 60)
    assert not os.path.exists(os.path.join(bundle, "address"))
    assert not os.path.exists(env.socket_dir)


def test_start_reads_bootstrap_params(env: Env) -> None:
    """containerd 2.3 sends BootstrapParams: its socket_dir and log level are honoured."""
    env.bundle("c1")
    other_dir = os.path.join(env.root, "s2")
    params = bootstrap_pb2.BootstrapParams(
        instance_id="c1",
        namespace="testns",
        log_level=bootstrap_pb2.LOG_LEVEL_DEBUG,
        socket_dir=other_dir,
    )
    status, out, err = env.run(env.argv("c1", "start"), stdin=params.SerializeToString())
    assert status == 0, err
    assert out.decode().startswith(f"unix://{other_dir}/")
    pid = connect(out.decode(), "c1").shim_pid
    shutdown(out.decode())
    assert reap(pid) == 0
    assert "level=debug" in Path(env.root, "bundles", "c1", "log").read_text()


DAEMON_SCRIPT = """
import sys
sys.path.insert(0, {examples!r})
import minimal_shim
from trioshim.shim import Manager, run
sys.exit(run(Manager("io.containerd.test.v2"), sys.argv[1:], minimal_shim.REGISTRY))
"""


@pytest.mark.parametrize("how", ["-socket", "fd3"])
async def test_daemon_mode_on_socket_flag_or_fd3(env: Env, how: str) -> None:
    """The daemon as Go's start helper would exec it: no action, `-socket PATH` or fd 3."""
    bundle = env.bundle("c1")
    path = os.path.join(env.root, "d.sock")
    argv = ["-namespace", "testns", "-id", "c1", "-address", "/run/test/containerd.sock"]
    script = DAEMON_SCRIPT.format(examples=str(EXAMPLE.parent))
    environ = {**os.environ, "TTRPC_ADDRESS": os.path.join(env.root, "none.ttrpc")}
    with socket.socket(socket.AF_UNIX) as listener:
        extra_fds = {}
        if how == "-socket":
            argv += ["-socket", path]
        else:
            listener.bind(path)
            listener.listen()
            extra_fds = {3: listener.fileno()}
            # Written by the start helper; the daemon removes the socket it names at exit.
            write_address(os.path.join(bundle, "address"), f"unix://{path}")
        async with open_reaper() as reaper:
            with reaper.subscribe() as exits:
                child = reaper.spawn(
                    [sys.executable, "-c", script, *argv],
                    cwd=bundle,
                    env=environ,
                    stdin=DEVNULL,
                    extra_fds=extra_fds,
                )
                listener.close()
                try:
                    async with connect_task_when_ready(path, exits) as task:
                        reply = await task.Connect(shim_pb2.ConnectRequest(id="c1"))
                        assert reply.shim_pid == child.pid
                        await task.Shutdown(shim_pb2.ShutdownRequest(id="c1"))
                    assert await child.wait() == 0
                finally:
                    child.kill()
    assert not exists(path)
    assert "starting signal loop" in read_text(Path(bundle, "log"))


def exists(path: str) -> bool:
    return os.path.exists(path)


def read_text(path: Path) -> str:
    return path.read_text()


@asynccontextmanager
async def connect_task_when_ready(
    path: str, exits: trio.MemoryReceiveChannel[Exit]
) -> AsyncIterator[Stub]:
    """Connect once the daemon listens (it binds `-socket` itself, after its imports, and
    listens just after binding: the socket file alone does not mean it accepts yet)."""
    while not _listening(path):
        with trio.move_on_after(0.01):
            exit_ = await exits.receive()
            raise AssertionError(f"the daemon exited early: {exit_}")
    async with connect_task(path, "testns") as task:
        yield task


def _listening(path: str) -> bool:
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            return False
    return True
