"""One end-to-end test's view of a private containerd: the runtime names under test, the
:class:`E2E` handle (container ids, `ctr` shortcuts, direct shim calls, leftover checks),
polling, and a test run on a daemon of its own. The event stream is in event_log.py, the
terminal in terminal.py; the fixtures are in conftest.py."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import trio

from tests.e2e.event_log import EventLog
from tests.support.containerd import PrivateContainerd
from tests.support.containerd_layout import RUNC_ROOT
from trioshim.api.containerd.runtime.task.v2 import shim_pb2 as task_v2
from trioshim.api.containerd.runtime.task.v3 import shim_pb2 as task_v3
from trioshim.ttrpc import NAMESPACE_KEY
from trioshim.ttrpc.client import Stub, open_unix_client
from trioshim.ttrpc.errors import TTRPCError

REFERENCE = "io.containerd.runc.v2"
TRIOSHIM = "io.containerd.trioshim.v2"
RUNTIMES = {"runc": REFERENCE, "trioshim": TRIOSHIM}


# Every container id a test ever used, per containerd: for the final "nothing left" check.
USED_IDS: dict[str, list[str]] = {}


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for(
    predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05, what: str = ""
) -> Any:
    """Poll until predicate() is truthy and return its value; AssertionError on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


class E2E:
    """One test's view of containerd: runtime, rootfs, container ids and `ctr` shortcuts."""

    def __init__(
        self,
        containerd: PrivateContainerd,
        rootfs: Path,
        runtime: str,
        test_name: str,
        *,
        short: str | None = None,
    ) -> None:
        self.containerd = containerd
        self.rootfs = str(rootfs)
        self.runtime = runtime
        # In container ids: which shim runs them (given when the runtime name does not tell).
        self.short = short or ("ts" if runtime == TRIOSHIM else "rc")
        stem = test_name.split("[")[0].removeprefix("test_").replace("_", "-")[:24]
        self.stem = "-".join(part for part in stem.split("-") if part)
        self.ids: list[str] = []
        self._n = 0

    @property
    def namespace(self) -> str:
        return self.containerd.namespace

    @property
    def major(self) -> int:
        """containerd's major version (1 for the machine's own daemon, else its line's)."""
        return self.containerd.major

    @property
    def task_api(self) -> ModuleType:
        """The task API module containerd itself uses with this runtime's shims: v3 on 2.x
        (containerd-shim-runc-v2 2.x serves only v3; ours serves both and is told to use v3),
        else v2 (the messages are field-identical)."""
        return task_v3 if self.major >= 2 else task_v2

    def call_shim(self, cid: str, method: str, request: Any) -> Any:
        """Call ``method`` of the Task service on the socket of ``cid``'s shim directly, with
        the API version containerd uses (:attr:`task_api`); a TTRPCError is raised as is."""
        address = self.containerd.shim_address(cid)
        service = self.task_api.DESCRIPTOR.services_by_name["Task"]

        async def call() -> Any:
            with trio.fail_after(30):
                async with open_unix_client(address) as client:
                    task = Stub(
                        client, service, metadata=[(NAMESPACE_KEY, self.namespace)], timeout=20
                    )
                    try:
                        return await getattr(task, method)(request)
                    except TTRPCError as e:  # returned, so no nursery wraps it in a group
                        return e

        result = trio.run(call)
        if isinstance(result, TTRPCError):
            raise result
        return result

    def new_id(self, tag: str = "") -> str:
        self._n += 1
        cid = f"{self.stem}{'-' + tag if tag else ''}-{self.short}-{self._n}"
        self.ids.append(cid)
        USED_IDS.setdefault(self.containerd.address, []).append(cid)
        return cid

    # -------------------------------------------------------------- ctr shortcuts

    def ctr(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        return self.containerd.ctr(*args, **kwargs)

    def run_argv(self, cid: str, *cmd: str, opts: tuple[str, ...] = ()) -> list[str]:
        return ["run", "--runtime", self.runtime, *opts, "--rootfs", self.rootfs, cid, *cmd]

    def run(
        self,
        *cmd: str,
        cid: str | None = None,
        opts: tuple[str, ...] = (),
        input: bytes | str | None = None,
        timeout: float = 60.0,
        text: bool = True,
    ) -> subprocess.CompletedProcess[Any]:
        """`ctr run --rm --runtime R [opts] --rootfs DIR ID CMD...` (foreground)."""
        cid = cid or self.new_id()
        return self.ctr(
            *self.run_argv(cid, *cmd, opts=("--rm", *opts)),
            input=input,
            timeout=timeout,
            text=text,
        )

    def run_detached(
        self, *cmd: str, cid: str | None = None, opts: tuple[str, ...] = (), null_io: bool = True
    ) -> str:
        """`ctr run -d [--null-io] ...`; returns the container id once the task is RUNNING."""
        cid = cid or self.new_id()
        io = ("--null-io",) if null_io else ()
        r = self.ctr(*self.run_argv(cid, *cmd, opts=("-d", *io, *opts)), timeout=60)
        assert r.returncode == 0, f"ctr run -d failed: {r.stderr}"
        self.wait_status(cid, "RUNNING")
        return cid

    def tasks(self) -> dict[str, tuple[int, str]]:
        """`ctr task ls` as {id: (pid, status)}."""
        r = self.ctr("task", "ls", timeout=30)
        assert r.returncode == 0, r.stderr
        out = {}
        for line in r.stdout.splitlines()[1:]:
            fields = line.split()
            if len(fields) == 3:
                out[fields[0]] = (int(fields[1]), fields[2])
        return out

    def status(self, cid: str) -> str | None:
        entry = self.tasks().get(cid)
        return entry[1] if entry else None

    def wait_status(self, cid: str, status: str | None, timeout: float = 15.0) -> None:
        wait_for(
            lambda: self.status(cid) == status,
            timeout,
            what=f"task {cid} to be {status} (is {self.status(cid)})",
        )

    def pids(self, cid: str) -> list[int]:
        r = self.ctr("task", "ps", cid, timeout=30)
        assert r.returncode == 0, r.stderr
        return [int(line.split()[0]) for line in r.stdout.splitlines()[1:] if line.strip()]

    def exec(
        self,
        cid: str,
        *cmd: str,
        exec_id: str,
        opts: tuple[str, ...] = (),
        input: bytes | str | None = None,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[Any]:
        return self.ctr(
            "task", "exec", *opts, "--exec-id", exec_id, cid, *cmd, input=input, timeout=timeout
        )

    def delete_task(self, cid: str, *opts: str) -> int:
        """`ctr task delete`; returns the task's exit status (ctr 1.6 exits 0 and only logs
        `task ID exit with non-zero exit code N`)."""
        r = self.ctr("task", "delete", *opts, cid, timeout=60)
        assert r.returncode == 0, f"ctr task delete {cid} failed: {r.stderr}"
        m = re.search(r"exit with non-zero exit code (\d+)", r.stderr)
        return int(m.group(1)) if m else 0

    def kill_and_delete(self, cid: str) -> int:
        """SIGKILL the task, wait until STOPPED, delete it and the container; returns the
        task's exit status."""
        r = self.ctr("task", "kill", "-s", "SIGKILL", cid, timeout=30)
        assert r.returncode == 0, r.stderr
        self.wait_status(cid, "STOPPED")
        status = self.delete_task(cid)
        c = self.ctr("container", "delete", cid, timeout=60)
        assert c.returncode == 0, c.stderr
        return status

    def spec(self, cid: str, args: list[str]) -> dict[str, Any]:
        """ctr's default OCI spec (`ctr oci spec`) for `ctr run --config`: our rootfs, `args`,
        cgroup `/<namespace>/<cid>`."""
        r = self.ctr("oci", "spec")
        assert r.returncode == 0, r.stderr
        spec: dict[str, Any] = json.loads(r.stdout)
        spec["root"] = {"path": self.rootfs, "readonly": False}
        spec["process"]["args"] = args
        spec["linux"]["cgroupsPath"] = f"/{self.namespace}/{cid}"
        return spec

    def events(self) -> EventLog:
        return EventLog(self.containerd)

    # -------------------------------------------------------------- leftovers

    def shim_pids_for(self, cid: str) -> list[int]:
        found = []
        for pid in self.containerd.shim_pids():
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            for i, a in enumerate(argv[:-1]):
                if a in (b"-id", b"--id") and argv[i + 1] == cid.encode():
                    found.append(pid)
        return found

    def leftovers(self, ids: list[str] | None = None) -> list[str]:
        """Everything still present for `ids` (default: this test's ids)."""
        ids = self.ids if ids is None else ids
        c = self.containerd
        left: list[str] = []
        tasks = self.tasks()
        r = self.ctr("container", "ls", "-q", timeout=30)
        containers = set(r.stdout.split())
        for cid in ids:
            if cid in tasks:
                left.append(f"task {cid} ({tasks[cid][1]})")
            if cid in containers:
                left.append(f"container {cid}")
            left += [f"shim process {p} for {cid}" for p in self.shim_pids_for(cid)]
            left += [f"shim socket {s} for {cid}" for s in c.shim_sockets([cid])]
            if c.bundle(cid).exists():
                left.append(f"bundle {c.bundle(cid)}")
            if (RUNC_ROOT / c.namespace / cid).exists():
                left.append(f"runc state {RUNC_ROOT / c.namespace / cid}")
        for m in c.mounts():
            if any(f"/{cid}/" in m + "/" for cid in ids):
                left.append(f"mount {m}")
        return left

    def force_cleanup(self) -> None:
        tasks = self.tasks()
        for cid in self.ids:
            if cid in tasks:
                self.ctr("task", "kill", "-a", "-s", "SIGKILL", cid, timeout=30)
                self.ctr("task", "delete", "-f", cid, timeout=60)
        r = self.ctr("container", "ls", "-q", timeout=30)
        for cid in self.ids:
            if cid in r.stdout.split():
                self.ctr("container", "delete", cid, timeout=60)
        for cid in self.ids:
            for pid in self.shim_pids_for(cid):
                os.kill(pid, 9)


# ------------------------------------------------------------------------------- daemons


@contextlib.contextmanager
def on_own_containerd(
    request: pytest.FixtureRequest,
    daemon: PrivateContainerd,
    rootfs: Path,
    runtime: str,
    *,
    short: str | None = None,
) -> Iterator[E2E]:
    """Start `daemon`, yield an E2E on it, then check that the test left nothing behind (and
    needed no forced clean-up) and stop it."""
    daemon.start()
    env = E2E(daemon, rootfs, runtime, request.node.name, short=short)
    try:
        yield env
        if daemon.running:
            try:
                wait_for(lambda: not env.leftovers(), timeout=10, interval=0.1)
            except AssertionError:
                rep = getattr(request.node, "rep_call", None)
                if rep is None or not rep.failed:
                    pytest.fail(f"left behind after the test: {env.leftovers()}", pytrace=False)
    finally:
        forced = daemon.stop()
        rep = getattr(request.node, "rep_call", None)
        if forced and rep is not None and not rep.failed:
            pytest.fail(f"had to clean up by force: {forced}", pytrace=False)
