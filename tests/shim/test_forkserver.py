"""The fork server: an import-light helper, start/delete run by a pre-imported server's worker."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from trioshim.api.containerd.runtime.task.v2 import shim_pb2
from trioshim.shim import forkserver
from trioshim.testing import connect_task
from trioshim.ttrpc import listen_backlog

LAUNCHER = Path(__file__).resolve().parents[2] / "examples" / "minimal_shim_fast"
APP = str(LAUNCHER.parent / "minimal_shim.py") + ":app"


def test_action_word_by_go_flag_rules() -> None:
    assert forkserver._action(["-namespace", "ns", "-id", "start", "-debug", "delete"]) == "delete"
    assert forkserver._action(["-debug", "start"]) == "start"
    assert forkserver._action(["-id=x", "start"]) == "start"
    assert forkserver._action(["-info"]) == ""
    assert forkserver._action(["--", "start"]) == "start"


def test_server_path_is_keyed_and_short(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(forkserver.ENV_DIR, "/run/trioshim")
    a, b = forkserver.server_path("x:app"), forkserver.server_path("y:app")
    assert a != b and a == forkserver.server_path("x:app")
    assert a.startswith("/run/trioshim/fs-") and len(a) < 106


def test_importing_the_helper_side_is_light() -> None:
    code = (
        "import sys, trioshim.shim.forkserver, trioshim.shim; "
        "print(sorted(m for m in ('trio', 'google.protobuf', 'typing', 'socket', 'json', 're')"
        " if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@dataclass
class Env:
    root: Path

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            forkserver.ENV_DIR: str(self.root / "fs"),
            forkserver.ENV_LOG: str(self.root / "fs.log"),
            "TRIOSHIM_SOCKET_DIR": str(self.root / "s"),
            "TTRPC_ADDRESS": str(self.root / "no-containerd"),
        }

    def bundle(self, id: str) -> Path:
        path = self.root / id
        path.mkdir()
        (path / "config.json").write_text("{}")
        (path / "log").touch()
        return path

    def shim(self, id: str, action: str, **kwargs: object) -> subprocess.Popen[bytes]:
        argv = ["-namespace", "ns", "-address", "/x.sock", "-publish-binary", "/c", "-id", id]
        return subprocess.Popen(
            [sys.executable, str(LAUNCHER), *argv, action],
            cwd=self.root / id,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            **kwargs,  # type: ignore[call-overload]
        )

    def run(self, id: str, action: str) -> tuple[int, int, bytes]:
        proc = self.shim(id, action)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        return proc.pid, proc.returncode, out

    def server_log(self) -> str:
        try:
            return (self.root / "fs.log").read_text()
        except FileNotFoundError:
            return ""

    def server_pid(self) -> int:
        found = re.findall(r"forkserver\[(\d+)\] serving", self.server_log())
        assert len(found) == 1, self.server_log()
        return int(found[0])


@pytest.fixture
def env() -> Iterator[Env]:
    root = Path(tempfile.mkdtemp(prefix="fs-", dir="/tmp"))
    try:
        yield Env(root)
    finally:
        log = (root / "fs.log").read_text() if (root / "fs.log").exists() else ""
        for pid in re.findall(r"forkserver\[(\d+)\] serving", log):
            signal_pid(int(pid), signal.SIGTERM)
        shutil.rmtree(root, ignore_errors=True)


def signal_pid(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def poll(predicate: object, what: str) -> None:
    for _ in range(6000):
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.01)
    raise AssertionError(f"gave up waiting for {what}")


def shim_pid(address: str) -> int:
    async def go() -> int:
        async with connect_task(address, "ns") as task:
            pid: int = (await task.Connect(shim_pb2.ConnectRequest(id="x"))).shim_pid
            return pid

    return trio.run(go)


def shutdown(address: str) -> None:
    async def go() -> None:
        async with connect_task(address, "ns") as task:
            await task.Shutdown(shim_pb2.ShutdownRequest(id="x"))

    trio.run(go)


def test_cold_start_spawns_server_then_warm_starts_are_delegated(env: Env) -> None:
    env.bundle("c1")
    env.bundle("c2")
    _, _, out1 = env.run("c1", "start")  # cold: runs in-process, then spawns the server
    poll(lambda: "serving" in env.server_log(), "the fork server")
    server_pid = env.server_pid()
    assert "worker" not in env.server_log()
    # The server serves every containerd: it keeps none of the spawning call's environment.
    assert not any(
        v.startswith(b"TTRPC_ADDRESS=")
        for v in Path(f"/proc/{server_pid}/environ").read_bytes().split(b"\0")
    )

    # A burst of helpers at once is queued, not refused: the system's maximum backlog.
    assert listen_queue_size(forkserver_socket(env)) == listen_backlog()

    helper_pid, _, out2 = env.run("c2", "start")  # warm: a worker of the server does it
    assert f"for pid {helper_pid}" in env.server_log()
    daemon1, daemon2 = shim_pid(out1.decode()), shim_pid(out2.decode())
    try:
        cmdline = Path(f"/proc/{daemon2}/cmdline").read_bytes().split(b"\0")
        assert cmdline[cmdline.index(b"-id") + 1] == b"c2"  # looks like the helper it replaced
        with open(f"/proc/{daemon2}/stat") as f:
            ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        assert ppid != server_pid  # never the server's child
        assert os.getpgid(daemon2) == daemon2
        for fd in (0, 1):
            assert os.readlink(f"/proc/{daemon2}/fd/{fd}") == "/dev/null"
        assert "starting signal loop" in (env.root / "c2" / "log").read_text()
    finally:
        shutdown(out1.decode())
        shutdown(out2.decode())
    poll(lambda: not os.path.exists(out2.decode().removeprefix("unix://")), "daemon 2 exit")

    helper_pid, _, data = env.run("c2", "delete")
    assert f"for pid {helper_pid}" in env.server_log()
    assert shim_pb2.DeleteResponse.FromString(data).exit_status == 137

    os.kill(server_pid, signal.SIGTERM)
    path = forkserver_socket(env)
    poll(lambda: not os.path.exists(path), "the server to remove its socket")
    assert daemon1 != daemon2


def listen_queue_size(path: str) -> int:
    """The backlog a unix socket listens with (``ss`` shows it as the Send-Q of LISTEN)."""
    out = subprocess.run(["ss", "-xlH", "src", path], capture_output=True, text=True, check=True)
    fields = out.stdout.split()
    assert fields[:2] == ["u_str", "LISTEN"], out.stdout
    return int(fields[3])


def forkserver_socket(env: Env) -> str:
    found = re.findall(r"serving \S+ on (\S+)", env.server_log())
    assert found, env.server_log()
    return found[-1]


def test_stale_server_socket_and_disabled_server(env: Env) -> None:
    env.bundle("c1")
    # What the launcher will compute for this interpreter and launcher path.
    code = (
        "import os, sys; sys.argv[0] = os.environ['L']; "
        "from trioshim.shim.forkserver import server_path; print(server_path(os.environ['A']))"
    )
    path = subprocess.run(
        [sys.executable, "-c", code],
        env={**env.env, "L": str(LAUNCHER), "A": APP},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    os.makedirs(os.path.dirname(path), mode=0o700)
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(path)  # a dead server's socket: connect is refused, the helper runs locally
    _, _, out = env.run("c1", "start")
    poll(lambda: "serving" in env.server_log(), "a new fork server")
    assert forkserver_socket(env) == path and stat_is_listening(path)
    shutdown(out.decode())


def stat_is_listening(path: str) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(path)
        except OSError:
            return False
        return True


def test_disabled_runs_locally_and_spawns_nothing(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    env.bundle("c1")
    monkeypatch.setenv(forkserver.ENV_DISABLE, "0")
    proc = subprocess.Popen(
        [sys.executable, str(LAUNCHER), "-namespace", "ns", "-address", "/x", "-id", "c1", "start"],
        cwd=env.root / "c1",
        env={**env.env, forkserver.ENV_DISABLE: "0"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
    )
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and out.startswith(b"unix://")
    shutdown(out.decode())
    assert not (env.root / "fs").exists() and env.server_log() == ""
