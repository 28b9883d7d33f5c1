"""The task service with real runc: odd lifecycles and failed Creates (see test_service.py)."""

from __future__ import annotations

import os
import shutil

import pytest
import trio
import trio.testing
from google.protobuf import any_pb2

from tests.runc.service_harness import Harness, is_mounted
from trioshim.api.containerd.runtime.task.v2 import shim_pb2 as api
from trioshim.api.containerd.types import mount_pb2
from trioshim.api.containerd.types.runc.options import oci_pb2
from trioshim.task.events import GO_ZERO_TIME_SECONDS
from trioshim.ttrpc.errors import Code

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("runc") is None, reason="needs root and runc"
)

# --- odd lifecycles and failures --------------------------------------------------------------


async def test_delete_of_never_started_container(harness: Harness) -> None:
    h = harness
    await h.create("n1", ["sleep", "1000"])
    waiter_done = trio.Event()

    async def waiter() -> None:
        # Deleted without an exit: a pending Wait is answered NotFound (containerd's runc shim
        # leaves it waiting until the client gives up).
        err = await h.fails("Wait", api.WaitRequest(id="n1"))
        assert err.code == Code.NOT_FOUND
        waiter_done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        deleted = await h.call("Delete", api.DeleteRequest(id="n1"))
        assert deleted.exit_status == 0
        assert deleted.exited_at.seconds == GO_ZERO_TIME_SECONDS
        nursery.cancel_scope.cancel()
    await trio.testing.wait_all_tasks_blocked()
    assert h.events.topics("n1") == ["/tasks/create", "/tasks/delete"]
    assert not is_mounted(h.tmp / "n1" / "rootfs")


async def test_quick_exit_still_one_exit_after_start(harness: Harness) -> None:
    h = harness
    for n in range(5):
        waited = await h.run_to_exit(f"q{n}", ["true"])
        assert waited.exit_status == 0
        await h.events.wait_for("/tasks/exit", n + 1)
        assert h.events.topics(f"q{n}") == ["/tasks/create", "/tasks/start", "/tasks/exit"]


async def test_create_failures_unmount_and_report(harness: Harness) -> None:
    h = harness
    # invalid config.json
    bundle = await h.bundle("f1", ["true"])
    (bundle / "config.json").write_text("{not json")
    err = await h.fails("Create", h.create_request("f1", bundle))
    assert err.code == Code.UNKNOWN
    assert err.message.startswith("OCI runtime create failed: "), err.message
    assert not is_mounted(bundle / "rootfs")
    assert "f1" not in h.service.containers
    # runc missing
    bundle = await h.bundle("f2", ["true"])
    options = any_pb2.Any(
        type_url="containerd.runc.v1.Options",
        value=oci_pb2.Options(binary_name="no-such-runc").SerializeToString(),
    )
    err = await h.fails("Create", h.create_request("f2", bundle, options=options))
    assert err.message.startswith(
        "OCI runtime create failed: unable to retrieve OCI runtime error ("
    ), err.message
    assert err.message.endswith('exec: "no-such-runc": executable file not found in $PATH')
    assert (bundle / "runtime").read_text() == "no-such-runc"
    assert not is_mounted(bundle / "rootfs")
    # a mount that fails
    bundle = await h.bundle("f3", ["true"])
    mounts = [
        mount_pb2.Mount(type="bind", source=str(h.rootfs), options=["rbind", "ro"]),
        mount_pb2.Mount(type="bind", source=str(h.tmp / "missing"), options=["bind"]),
    ]
    err = await h.fails("Create", h.create_request("f3", bundle, rootfs=mounts))
    assert err.message.startswith("failed to mount rootfs component &{bind "), err.message
    assert not is_mounted(bundle / "rootfs")
    # unknown stdout scheme
    bundle = await h.bundle("f4", ["true"])
    err = await h.fails("Create", h.create_request("f4", bundle, stdout="http://x/y"))
    assert err.message == "failed to create init process I/O: unknown STDIO scheme http"
    assert not is_mounted(bundle / "rootfs")
    # the service keeps working
    waited = await h.run_to_exit("ok", ["true"])
    assert waited.exit_status == 0


async def test_duplicate_create_keeps_the_live_container(harness: Harness) -> None:
    h = harness
    await h.create("d1", ["sleep", "1000"])
    bundle = h.tmp / "d1"
    err = await h.fails("Create", h.create_request("d1", bundle))
    assert err.code == Code.ALREADY_EXISTS
    assert is_mounted(bundle / "rootfs")
    await h.call("Start", api.StartRequest(id="d1"))


async def test_file_stdout(harness: Harness) -> None:
    h = harness
    log = h.tmp / "logs" / "f.log"
    uri = f"file://{log}"
    waited = await h.run_to_exit(
        "o1", ["sh", "-c", "echo out; echo err >&2"], stdout=uri, stderr=uri
    )
    assert waited.exit_status == 0
    await h.call("Delete", api.DeleteRequest(id="o1"))
    assert sorted(log.read_text().split()) == ["err", "out"]
