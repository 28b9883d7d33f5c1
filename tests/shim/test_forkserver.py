"""The fork server: an import-light helper, start/delete run by a pre-imported server's worker,
one server per containerd that ends with it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.forkserver_env import (
    Env,
    alive,
    cmdline,
    daemon_cmdline,
    maps_library,
    modules_loaded_by,
    open_env,
    poll,
    proc_ppid,
    shim_pid,
    shutdown,
)
from trioshim.api.containerd.runtime.task.v2 import shim_pb2
from trioshim.shim import forkserver
from trioshim.ttrpc import listen_backlog


def test_action_word_by_go_flag_rules() -> None:
    assert forkserver.action(["-namespace", "ns", "-id", "start", "-debug", "delete"]) == "delete"
    assert forkserver.action(["-debug", "start"]) == "start"
    assert forkserver.action(["-id=x", "start"]) == "start"
    assert forkserver.action(["-info"]) == ""
    assert forkserver.action(["--", "start"]) == "start"


def test_containerd_address_flag_first_then_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRPC_ADDRESS", "unix:///g.sock")
    monkeypatch.setenv("TTRPC_ADDRESS", "/t.sock.ttrpc")
    assert forkserver.containerd_address(["-address", "/a.sock", "start"]) == "/a.sock"
    assert forkserver.containerd_address(["--address=/b.sock", "start"]) == "/b.sock"
    assert forkserver.containerd_address(["-id", "x", "start"]) == "/g.sock"
    monkeypatch.delenv("GRPC_ADDRESS")
    assert forkserver.containerd_address(["start"]) == "/t.sock.ttrpc"


def test_server_path_is_keyed_by_containerd_and_short(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(forkserver.ENV_DIR, "/run/trioshim")
    a, b = forkserver.server_path("x:app", "/c.sock"), forkserver.server_path("y:app", "/c.sock")
    assert a != b and a == forkserver.server_path("x:app", "/c.sock")
    assert forkserver.server_path("x:app", "/other/c.sock") != a
    assert a.startswith("/run/trioshim/fs-") and len(a) < 106


@pytest.mark.parametrize("helper", ["trioshim.shim.forkserver", "trioshim.shim.sharedlaunch"])
def test_importing_the_helper_side_is_light(helper: str) -> None:
    """The isolated runtime's helper side and the shared runtime's."""
    heavy = ("trio", "google.protobuf", "typing", "socket", "json", "re", "resource")
    assert modules_loaded_by(f"{helper}, trioshim.shim", heavy) == []


@pytest.mark.parametrize("helper", ["forkserver", "sharedlaunch"])
def test_without_site_the_helper_side_leaves_os_alone_and_keys_alike(helper: str) -> None:
    """Under ``-S`` (how the launcher starts the helper) nothing imports ``os``, and neither
    runtime's helper side does; the server's socket path is the same before and after ``os``
    is imported (by then read from ``os.environ``, which the process may have changed)."""
    root = str(Path(forkserver.__file__).resolve().parents[2])
    code = (
        f"import sys; sys.path.insert(0, {root!r}); sys.argv = [{sys.executable!r}]\n"
        f"import trioshim.runc.launcher, trioshim.shim.{helper}\n"
        "from trioshim.shim import forkserver as f\n"
        "before = 'os' in sys.modules, f.server_path('a:b', f.containerd_address([]))\n"
        "import os\n"
        "print(before == (False, f.server_path('a:b', f.containerd_address([]))))\n"
        "os.environ['TTRPC_ADDRESS'] = '/elsewhere'\n"
        "print(f.server_path('a:b', f.containerd_address([])) != before[1])\n"
    )
    env = {"TRIOSHIM_FORKSERVER_DIR": "/run/x", "TTRPC_ADDRESS": "/c.sock.ttrpc"}
    out = subprocess.run(
        [sys.executable, "-S", "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["True", "True"]


@pytest.fixture
def env() -> Iterator[Env]:
    with open_env() as world:
        yield world


def test_cold_start_spawns_server_then_warm_starts_are_delegated(env: Env) -> None:
    env.bundle("c1")
    env.bundle("c2")
    _, out1 = env.run("c1", "start")  # cold: runs in-process, then spawns the server
    poll(lambda: "serving" in env.server_log(), "the fork server")
    server_pid = env.server_pid()
    assert "worker" not in env.server_log()
    # The server serves every start of its containerd: it keeps none of the spawning call's
    # environment (workers take each request's own).
    assert not any(
        v.startswith(b"TTRPC_ADDRESS=")
        for v in Path(f"/proc/{server_pid}/environ").read_bytes().split(b"\0")
    )

    # A burst of helpers at once is queued, not refused: the system's maximum backlog.
    assert listening(env.server_socket())[1] == listen_backlog()

    helper_pid, out2 = env.run("c2", "start")  # warm: a worker of the server does it
    assert f"for pid {helper_pid}" in env.server_log()
    # trio imports ssl and hmac, the server defers them: no OpenSSL in it or its daemons.
    assert not maps_library(server_pid, "libcrypto")
    daemon1, daemon2 = shim_pid(out1.decode()), shim_pid(out2.decode())
    try:
        # Both daemons, forked by the exec'd helper and become by a worker, show Go's daemon
        # argv.
        assert cmdline(daemon1) == daemon_cmdline("c1")
        assert cmdline(daemon2) == daemon_cmdline("c2")
        assert proc_ppid(daemon2) == server_pid  # the worker it was
        assert proc_ppid(daemon1) != server_pid
        assert os.getpgid(daemon2) == daemon2
        for fd in (0, 1):
            assert os.readlink(f"/proc/{daemon2}/fd/{fd}") == "/dev/null"
        assert "starting signal loop" in (env.root / "c2" / "log").read_text()
        assert not maps_library(daemon2, "libcrypto")
    finally:
        shutdown(out1.decode())
        shutdown(out2.decode())
    poll(lambda: not os.path.exists(out2.decode().removeprefix("unix://")), "daemon 2 exit")
    poll(lambda: not os.path.exists(f"/proc/{daemon2}"), "the server to reap daemon 2")

    helper_pid, data = env.run("c2", "delete")
    assert f"for pid {helper_pid}" in env.server_log()
    assert shim_pb2.DeleteResponse.FromString(data).exit_status == 137

    os.kill(server_pid, signal.SIGTERM)
    poll(lambda: not alive(server_pid), "the server to exit on SIGTERM")
    assert env.server_files() == []  # socket and lock file
    assert daemon1 != daemon2


def test_server_ends_with_its_containerd_and_its_daemons_do_not(env: Env) -> None:
    env.bundle("c1")
    env.bundle("c2")
    containerd = env.run_under("c1", "start")  # cold: spawns the server for this containerd
    assert containerd.status == 0
    poll(lambda: "serving" in env.server_log(), "the fork server")
    server_pid = env.server_pid()
    assert f"for containerd {containerd.proc.pid}" in env.server_log()
    _, out2 = env.run("c2", "start")  # same address: the same server (any parent)
    assert "worker" in env.server_log()
    socket_name = Path(env.server_socket()).name
    assert env.server_files() == [socket_name, socket_name + ".lock"]
    daemons = [shim_pid(out) for out in (containerd.out.decode(), out2.decode())]

    containerd.stop()
    poll(lambda: not alive(server_pid), "the server to end with its containerd")
    assert f"containerd {containerd.proc.pid} exited" in env.server_log()  # not idle, not a crash
    assert env.server_files() == []
    try:
        assert all(alive(pid) for pid in daemons)  # containers outlive a containerd restart
        assert [shim_pid(out) for out in (containerd.out.decode(), out2.decode())] == daemons
    finally:
        shutdown(containerd.out.decode())
        shutdown(out2.decode())


def test_one_server_per_containerd_address(env: Env) -> None:
    env.bundle("c1")
    env.bundle("c2")
    first = env.run_under("c1", "start", address="/first.sock")
    second = env.run_under("c2", "start", address="/second.sock")
    poll(lambda: len(env.server_pids()) == 2, "a server for each containerd")
    (first_pid, first_socket), (second_pid, second_socket) = map(env.server_of, (first, second))
    assert first_socket != second_socket
    assert env.server_files() == sorted(
        [first_socket, first_socket + ".lock", second_socket, second_socket + ".lock"]
    )
    first.stop()
    poll(lambda: not alive(first_pid), "the first containerd's server to go")
    assert alive(second_pid)
    assert env.server_files() == [second_socket, second_socket + ".lock"]
    second.stop()
    poll(lambda: not alive(second_pid), "the second containerd's server to go")
    assert env.server_files() == []
    for fake in (first, second):
        shutdown(fake.out.decode())


def test_without_a_pidfd_the_server_polls_its_containerd(env: Env) -> None:
    containerd = subprocess.Popen(["sleep", "1000"])
    server = env.serve(str(env.server_dir / "fs-polling"), containerd.pid)
    try:
        poll(lambda: "serving" in env.server_log(), "the fork server")
        assert env.server_files() == ["fs-polling", "fs-polling.lock"]
        containerd.kill()
        containerd.wait(10)
        assert server.wait(60) == 0
        assert f"containerd {containerd.pid} exited" in env.server_log()
        assert env.server_files() == []
    finally:
        containerd.kill()
        server.kill()
        server.wait(10)


def test_a_helper_queued_when_the_server_goes_is_served(env: Env) -> None:
    env.bundle("c1")
    containerd = subprocess.Popen(["sleep", "1000"])
    path = env.server_path()
    server = env.serve(path, containerd.pid)
    try:
        poll(lambda: "serving" in env.server_log(), "the fork server")
        server.send_signal(signal.SIGSTOP)  # a helper connects, then containerd goes
        helper = subprocess.Popen(
            env.argv("c1", "start"),
            cwd=env.root / "c1",
            env=env.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
        )
        poll(lambda: listening(path)[0] == 1, "the helper's connection to be queued")
        containerd.kill()
        containerd.wait(10)
        server.send_signal(signal.SIGCONT)
        out, _ = helper.communicate(timeout=60)
        assert helper.returncode == 0 and f"for pid {helper.pid}" in env.server_log()
        assert server.wait(60) == 0 and env.server_files() == []
        shutdown(out.decode())
    finally:
        containerd.kill()
        server.send_signal(signal.SIGCONT)  # (nothing once it is reaped)
        server.kill()
        server.wait(10)


def listening(path: str) -> tuple[int, int]:
    """(connections queued, backlog) of a listening unix socket: ``ss`` shows them as its
    Recv-Q and Send-Q."""
    out = subprocess.run(["ss", "-xlH", "src", path], capture_output=True, text=True, check=True)
    fields = out.stdout.split()
    assert fields[:2] == ["u_str", "LISTEN"], out.stdout
    return int(fields[2]), int(fields[3])


def test_stale_server_files_are_replaced(env: Env) -> None:
    env.bundle("c1")
    path = env.server_path()  # what the launcher will look for
    os.makedirs(os.path.dirname(path), mode=0o700)
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(path)  # a dead server's socket: connect is refused, the helper runs locally
    Path(path + ".lock").touch()  # and its lock file, which nobody holds
    _, out = env.run("c1", "start")
    poll(lambda: "serving" in env.server_log(), "a new fork server")
    assert env.server_socket() == path and is_listening(path)
    shutdown(out.decode())


def is_listening(path: str) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(path)
        except OSError:
            return False
        return True


def test_disabled_runs_locally_and_spawns_nothing(env: Env) -> None:
    env.bundle("c1")
    proc = subprocess.Popen(
        env.argv("c1", "start"),
        cwd=env.root / "c1",
        env={**env.env, forkserver.ENV_DISABLE: "0"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
    )
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and out.startswith(b"unix://")
    try:
        assert cmdline(shim_pid(out.decode())) == daemon_cmdline("c1")
    finally:
        shutdown(out.decode())
    assert not env.server_dir.exists() and env.server_log() == ""


def test_a_worker_takes_the_helpers_environment_whole() -> None:
    """Only what differs is changed, but the result is the helper's environment exactly: what
    the server has and the helper lacks is gone, in ``os.environ`` and in what children get."""
    from trioshim.shim.forkserve import _take_environment

    before = dict(os.environ)
    helper = {k: v for k, v in before.items() if k != "HOME"}
    helper.update(TRIOSHIM_TEST_NEW="new", PATH=before.get("PATH", "") + ":/helper/bin")
    os.environ["TRIOSHIM_TEST_SERVERS_OWN"] = "server"
    try:
        _take_environment(helper)
        assert dict(os.environ) == helper
        seen = subprocess.run(["/usr/bin/env", "-0"], capture_output=True, check=True).stdout
        child = dict(v.decode().split("=", 1) for v in seen.split(b"\0") if v)
        assert "TRIOSHIM_TEST_SERVERS_OWN" not in child and "HOME" not in child
        assert (child["TRIOSHIM_TEST_NEW"], child["PATH"]) == ("new", helper["PATH"])
    finally:
        _take_environment(before)
