"""A private fork-server world for the shim tests: the example fast launcher, a temp dir for
the server's socket, log and the bundles, and fake containerds (a process that runs one helper
and stays alive until told to stop, as containerd outlives the helpers it execs)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trio

from trioshim.api.containerd.runtime.task.v2 import shim_pb2
from trioshim.shim import forkserver
from trioshim.testing import connect_task


def modules_loaded_by(imports: str, candidates: Sequence[str]) -> list[str]:
    """Which of ``candidates`` a fresh interpreter has in ``sys.modules`` after ``imports``
    (e.g. ``"trioshim.shim.forkserver"``): how an import-light entry point is checked."""
    wanted = list(candidates)
    code = f"import sys, {imports}; print(' '.join(m for m in {wanted!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.split()


LAUNCHER = Path(__file__).resolve().parents[2] / "examples" / "minimal_shim_fast"
APP = str(LAUNCHER.parent / "minimal_shim.py") + ":app"
ADDRESS = "/x.sock"  # the containerd address the helpers are given (-address)

# Runs one helper (argv), hands its output on and closes stdout, then lives until its stdin
# is closed: the helper's parent, so the fork server it spawns serves it.
_FAKE_CONTAINERD = """\
import os, subprocess, sys
done = subprocess.run(sys.argv[1:], stdin=subprocess.DEVNULL, capture_output=True)
sys.stderr.buffer.write(done.stderr)
sys.stdout.buffer.write(b"%d\\n" % done.returncode + done.stdout)
sys.stdout.flush()
os.close(1)
sys.stdin.read()
"""


@dataclass
class FakeContainerd:
    proc: subprocess.Popen[bytes]
    status: int
    out: bytes

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(60)


@dataclass
class Env:
    root: Path
    fakes: list[FakeContainerd] = field(default_factory=list)

    @property
    def server_dir(self) -> Path:
        return self.root / "fs"

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            forkserver.ENV_DIR: str(self.server_dir),
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

    def argv(self, id: str, action: str, address: str = ADDRESS) -> list[str]:
        flags = ["-namespace", "ns", "-address", address, "-publish-binary", "/c", "-id", id]
        return [sys.executable, str(LAUNCHER), *flags, action]

    def run(self, id: str, action: str) -> tuple[int, bytes]:
        """Run a helper as a child of this process: (its pid, its output)."""
        proc = subprocess.Popen(
            self.argv(id, action),
            cwd=self.root / id,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        return proc.pid, out

    def run_under(
        self, id: str, action: str, *, address: str = ADDRESS, wrap: Sequence[str] = ()
    ) -> FakeContainerd:
        """Run a helper as the child of a new fake containerd (``wrap``: how to start it)."""
        proc = subprocess.Popen(
            [*wrap, sys.executable, "-c", _FAKE_CONTAINERD, *self.argv(id, action, address)],
            cwd=self.root / id,
            env=self.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert proc.stdout is not None
        status, _, out = proc.stdout.read().partition(b"\n")  # until the helper is done
        fake = FakeContainerd(proc, int(status), out)
        self.fakes.append(fake)
        return fake

    def server_path(self, address: str = ADDRESS) -> str:
        """The socket the launcher's helpers look for (this interpreter, launcher, address)."""
        code = (
            "import os, sys; sys.argv[0] = os.environ['L']; "
            "from trioshim.shim.forkserver import server_path; "
            "print(server_path(os.environ['A'], os.environ['C']))"
        )
        return subprocess.run(
            [sys.executable, "-c", code],
            env={**self.env, "L": str(LAUNCHER), "A": APP, "C": address},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    def serve(self, path: str, containerd_pid: int) -> subprocess.Popen[bytes]:
        """A server on ``path`` started by hand, polling ``containerd_pid`` (no pidfd)."""
        argv = [sys.executable, "-m", "trioshim.shim.forkserver", "serve", APP, path]
        with open(self.root / "fs.log", "ab") as log:
            return subprocess.Popen(
                [*argv, str(LAUNCHER), str(containerd_pid), "0"],
                stdout=log,
                stderr=log,
                env=self.env,
            )

    def server_log(self) -> str:
        try:
            return (self.root / "fs.log").read_text()
        except FileNotFoundError:
            return ""

    def server_pids(self) -> list[int]:
        return [int(p) for p in re.findall(r"forkserver\[(\d+)\] serving", self.server_log())]

    def server_pid(self) -> int:
        found = self.server_pids()
        assert len(found) == 1, self.server_log()
        return found[0]

    def server_of(self, containerd: FakeContainerd) -> tuple[int, str]:
        """(pid, socket name) of the server that serves ``containerd``."""
        pattern = (
            rf"forkserver\[(\d+)\] serving \S+ on \S+/(\S+) for containerd {containerd.proc.pid}\n"
        )
        found = re.findall(pattern, self.server_log())
        assert len(found) == 1, self.server_log()
        return int(found[0][0]), found[0][1]

    def server_socket(self) -> str:
        found = re.findall(r"serving \S+ on (\S+)", self.server_log())
        assert found, self.server_log()
        return str(found[-1])

    def server_files(self) -> list[str]:
        try:
            return sorted(os.listdir(self.server_dir))
        except FileNotFoundError:
            return []

    def close(self) -> None:
        for fake in self.fakes:
            with contextlib.suppress(Exception):
                fake.proc.kill()
                fake.proc.wait(10)
        for pid in self.server_pids():
            signal_pid(pid, signal.SIGTERM)


@contextlib.contextmanager
def open_env() -> Iterator[Env]:
    """A new world in a temp dir; on the way out, its fake containerds and servers stop."""
    root = Path(tempfile.mkdtemp(prefix="fs-", dir="/tmp"))
    world = Env(root)
    try:
        yield world
    finally:
        world.close()
        shutil.rmtree(root, ignore_errors=True)


def signal_pid(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def alive(pid: int) -> bool:
    """Running (a zombie, or a pid that names nothing, is not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def poll(predicate: Callable[[], object], what: str) -> None:
    for _ in range(6000):
        if predicate():
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


def cmdline(pid: int) -> list[bytes]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]


def maps_library(pid: int, name: str) -> bool:
    """Whether process ``pid`` has a file whose name contains ``name`` mapped."""
    return any(
        name in line.rsplit(" ", 1)[-1]
        for line in Path(f"/proc/{pid}/maps").read_text().splitlines()
    )


def proc_ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def daemon_cmdline(id: str, address: str = ADDRESS) -> list[bytes]:
    """What Go's daemon shows (``newCommand``), with our launcher as the executable."""
    argv = [str(LAUNCHER), "-namespace", "ns", "-id", id, "-address", address]
    return [a.encode() for a in argv]
