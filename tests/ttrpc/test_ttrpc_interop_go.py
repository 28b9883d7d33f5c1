"""Interop with Go's ttrpc (each containerd line's ctr and runc v2 shim), both directions.

containerd 2.x and its runc shim speak `containerd.task.v3.Task` (and the shim serves nothing
else); 1.x speak `containerd.task.v2.Task`. The messages are field-identical.

* Python client -> Go server: a busybox task run with the stock runc v2 shim; our client calls
  State, Pids and Connect on the shim's socket and the answers must match `ctr task ls/ps`. The
  Go server's texts for an unknown service and method must equal ours.
* Go client -> Python server: `ctr shim --id ID state` dials the socket address it computes for
  ID (shim-v2 rule); we serve a test Task implementation there. ctr must print what we
  returned, and an rpc we do not implement must reach ctr as Unimplemented.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

import pytest
import trio
from ttrpc_testing import RawPeer

from tests.support.containerd import PrivateContainerd
from trioshim.api.containerd.runtime.task.v2 import shim_pb2
from trioshim.api.containerd.runtime.task.v3 import shim_pb2 as shim_v3_pb2
from trioshim.api.containerd.types.task import task_pb2
from trioshim.ttrpc import (
    NAMESPACE_KEY,
    RequestContext,
    Server,
    Stub,
    open_unix_client,
    open_unix_listener,
)

pytestmark = pytest.mark.e2e


def task_api(containerd: PrivateContainerd) -> Any:
    """The task API module of the line: v3 on 2.x, v2 on 1.x."""
    return shim_v3_pb2 if containerd.major >= 2 else shim_pb2


def task_service(containerd: PrivateContainerd) -> Any:
    return task_api(containerd).DESCRIPTOR.services_by_name["Task"]


async def ctr(containerd: PrivateContainerd, *args: str) -> Any:
    return await trio.to_thread.run_sync(lambda: containerd.ctr(*args, timeout=60))


async def task_rows(containerd: PrivateContainerd) -> dict[str, list[str]]:
    """`ctr task ls` as {id: [pid, status]}."""
    ls = await ctr(containerd, "task", "ls")
    assert ls.returncode == 0, ls.stderr
    return {f[0]: f[1:] for f in (line.split() for line in ls.stdout.splitlines()[1:]) if f}


async def test_python_client_to_go_shim(
    containerd: PrivateContainerd, busybox_rootfs: Path
) -> None:
    cid = f"ttrpc-interop-{secrets.token_hex(3)}"
    command = ["/bin/sh", "-c", "/bin/sleep 1000 & exec /bin/sleep 1000"]  # two processes
    r = await ctr(
        containerd,
        "run", "-d", "--null-io", "--runtime", "io.containerd.runc.v2",
        "--rootfs", str(busybox_rootfs), cid, *command,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    try:
        # The shell starts the background sleep after `ctr run -d` returned: wait for it (no
        # event announces a process in the container; a poll with a deadline).
        for _ in range(400):
            if len((await ctr(containerd, "task", "ps", cid)).stdout.splitlines()) >= 3:
                break
            await trio.sleep(0.05)
        else:
            raise AssertionError("the container's background sleep never started")
        address = containerd.shim_address(cid)
        api = task_api(containerd)
        async with open_unix_client(address) as client:
            task = Stub(
                client,
                task_service(containerd),
                metadata=[(NAMESPACE_KEY, containerd.namespace)],
                timeout=10,
            )
            state = await task.State(api.StateRequest(id=cid))
            pids = await task.Pids(api.PidsRequest(id=cid))
            connect = await task.Connect(api.ConnectRequest(id=cid))

            # What ctr (Go client, through containerd) says.
            assert (await task_rows(containerd))[cid] == [str(state.pid), "RUNNING"]
            assert state.id == cid
            assert state.status == task_pb2.RUNNING
            assert state.bundle == str(containerd.bundle(cid))
            ps = await ctr(containerd, "task", "ps", cid)
            ctr_pids = sorted(int(line.split()[0]) for line in ps.stdout.splitlines()[1:])
            assert sorted(p.pid for p in pids.processes) == ctr_pids
            assert len(ctr_pids) == 2 and state.pid in ctr_pids
            assert connect.task_pid == state.pid
            cmdline = (await trio.Path(f"/proc/{connect.shim_pid}/cmdline").read_bytes()).split(
                b"\0"
            )
            assert os.path.basename(cmdline[0]) == b"containerd-shim-runc-v2"

        # The Go server's rejections, byte-compared with what our server would say.
        peer = RawPeer(await trio.open_unix_socket(address))
        try:
            served = task_service(containerd).full_name
            other = (
                "containerd.task.v2.Task" if containerd.major >= 2 else "containerd.task.v3.Task"
            )
            await peer.request(1, "Create", service=other)
            assert await peer.status() == (1, 12, f"service {other}")
            await peer.request(3, "Nope", service=served)
            assert await peer.status() == (3, 12, "method Nope")
        finally:
            await peer.aclose()
    finally:
        # --force kills the task and waits for its exit before deleting it
        await ctr(containerd, "task", "delete", "--force", cid)
        await ctr(containerd, "container", "delete", cid)


class StateOnly:
    """A Task implementation with State only: every other rpc answers Unimplemented."""

    def __init__(self, api: Any) -> None:
        self.api = api  # the shim_pb2 module of the task API served
        self.contexts: list[RequestContext] = []

    async def State(self, ctx: RequestContext, req: Any) -> Any:
        self.contexts.append(ctx)
        return self.api.StateResponse(
            id=req.id,
            bundle="/run/bundle/" + req.id,
            pid=4242,
            status=task_pb2.PAUSED,
            stdout="/dev/null",
            terminal=True,
            exit_status=7,
            exec_id="",
        )


async def test_go_client_to_python_server(
    containerd: PrivateContainerd, nursery: trio.Nursery
) -> None:
    sid = f"ttrpc-py-{secrets.token_hex(3)}"
    path = containerd.shim_socket(sid)
    path.parent.mkdir(parents=True, exist_ok=True)
    impl = StateOnly(task_api(containerd))
    server = Server()
    service = task_service(containerd)
    server.register(service, impl)
    await nursery.start(server.serve, await open_unix_listener(path))
    try:
        r = await ctr(containerd, "shim", "--id", sid, "state")
        assert r.returncode == 0, r.stderr
        printed = json.loads(r.stdout)
        assert printed["id"] == sid
        assert printed["bundle"] == f"/run/bundle/{sid}"
        assert printed["pid"] == 4242
        assert printed["status"] == task_pb2.PAUSED
        assert printed["terminal"] is True
        assert printed["exit_status"] == 7
        (ctx,) = impl.contexts
        assert (ctx.service, ctx.method) == (service.full_name, "State")

        r = await ctr(containerd, "shim", "--id", sid, "start")
        assert r.returncode != 0
        assert "code = Unimplemented" in r.stderr, r.stderr
        assert f"/{service.full_name}/Start: not implemented" in r.stderr
    finally:
        await server.shutdown(grace=5)
        path.unlink(missing_ok=True)
