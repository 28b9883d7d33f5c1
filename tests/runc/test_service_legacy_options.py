"""The task service given containerd's legacy runc option types (containerd.linux.runc), as
containerd's Go client sends them to a runtime not named io.containerd.runc*: same meaning as
containerd.runc.v1's. Real runc and busybox, through tests/runc/service_harness.py."""

from __future__ import annotations

import json

from google.protobuf import any_pb2
from google.protobuf.message import Message

from tests.runc.service_harness import Harness, runc_container
from trioshim.api.containerd.runtime.linux.runctypes import runc_pb2 as runctypes
from trioshim.api.containerd.runtime.task.v2 import shim_pb2 as api
from trioshim.runc.runc_args import CheckpointOpts
from trioshim.ttrpc.errors import Code


def pack(message: Message) -> any_pb2.Any:
    return any_pb2.Any(
        type_url=f"type.googleapis.com/{message.DESCRIPTOR.full_name}",
        value=message.SerializeToString(),
    )


async def test_create_options_own_the_pipes_and_reach_runc(harness: Harness) -> None:
    h = harness
    log = h.tmp / "logs" / "owner.log"
    legacy = runctypes.CreateOptions(io_uid=1234, io_gid=4321, no_new_keyring=True)
    waited = await h.run_to_exit(
        "lg1",
        ["stat", "-L", "-c", "%u:%g", "/proc/self/fd/1", "/proc/self/fd/2"],
        options=pack(legacy),
        stdout=f"file://{log}",
        stderr=f"file://{log}",
    )
    assert waited.exit_status == 0
    container = runc_container(h, "lg1")
    assert container.init.no_new_keyring
    assert json.loads((h.tmp / "lg1" / "options.json").read_text()) == {
        "no_new_keyring": True,
        "io_uid": 1234,
        "io_gid": 4321,
    }
    await h.call("Delete", api.DeleteRequest(id="lg1"))
    # Our pipes were 1234:4321; runc's init then hands the owner (never the group) to the
    # container's user (runc fixStdioPermissions), so the group is what shows our io_gid.
    assert log.read_text().split() == ["0:4321", "0:4321"]


async def test_create_options_restore_flags(harness: Harness) -> None:
    h = harness
    image = h.tmp / "image"
    image.mkdir()
    legacy = runctypes.CreateOptions(
        open_tcp=True, terminal=True, empty_namespaces=["network"], cgroups_mode="soft"
    )
    await h.create("lg2", ["sleep", "1000"], options=pack(legacy), checkpoint=str(image))
    init = runc_container(h, "lg2").init
    assert init._restore == CheckpointOpts(
        image_path=str(image),
        work_path=str(h.tmp / "lg2" / "work"),
        tcp_established=True,
        shell_job=True,
        empty_namespaces=("network",),
        cgroups_mode="soft",
    )
    await h.call("Delete", api.DeleteRequest(id="lg2"))


async def test_checkpoint_options_are_understood(harness: Harness) -> None:
    h = harness
    await h.create("lg3", ["sleep", "1000"])
    await h.call("Start", api.StartRequest(id="lg3"))
    request = api.CheckpointTaskRequest(
        id="lg3",
        path=str(h.tmp / "img"),
        options=pack(runctypes.CheckpointOptions(exit=True, file_locks=True)),
    )
    err = await h.fails("Checkpoint", request)
    # past the options and into `runc checkpoint` (which fails: criu here is absent or
    # cannot dump): the options were understood
    assert err.code == Code.UNKNOWN
    assert err.message.startswith("runc did not terminate successfully"), err.message
    wrong = api.CheckpointTaskRequest(
        id="lg3", path=str(h.tmp / "img"), options=pack(runctypes.CreateOptions())
    )
    err = await h.fails("Checkpoint", wrong)
    assert err.message == (
        "type with url type.googleapis.com/containerd.linux.runc.CreateOptions: not found"
    )
