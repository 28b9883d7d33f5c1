"""The runc shim refuses ids and bundles containerd would never send, through its socket.

The Go shim (containerd-shim-runc-v2) accepts a Create whose bundle is ``../../x`` and writes
``init.pid``, ``log.json`` and ``options.json`` there, and accepts exec ids such as
``../../../../x``. Ours answers InvalidArgument before anything is written or run: the daemon
runs in-process (trioshim.testing.open_shim) with its bundle in ``<tmp>/state/<ns>/c0``, and
every check below goes over ttrpc, as containerd's requests do.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from trioshim.api.containerd.runtime.task.v2 import shim_pb2 as api
from trioshim.runc import main as runc_main
from trioshim.runc.manager import RuncManager
from trioshim.testing import TASK_SERVICE, ShimHandle, open_shim
from trioshim.ttrpc.errors import Code, TTRPCError

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("runc") is None, reason="needs root and runc"
)

NAMESPACE = f"tsh-ids-{os.getpid()}"
BAD_IDS = ["../x", "../../../../x", "a/b", "..", "a b", "x" * 77]
EXEC_RPCS = ["State", "Start", "Delete", "Kill", "ResizePty", "CloseIO", "Wait", "Exec"]


@pytest.fixture
async def shim(tmp_path: Path) -> AsyncIterator[ShimHandle]:
    bundle = tmp_path / "state" / NAMESPACE / "c0"
    bundle.mkdir(parents=True)
    async with open_shim(
        RuncManager(), runc_main.registry(), namespace=NAMESPACE, id="c0", bundle=str(bundle)
    ) as handle:
        yield handle
    assert not await trio.Path(f"/run/containerd/runc/{NAMESPACE}").exists()  # runc never ran


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _request(rpc: str, **fields: str) -> Message:
    cls = GetMessageClass(TASK_SERVICE.methods_by_name[rpc].input_type)
    return cls(**fields)


async def _refused(shim: ShimHandle, rpc: str, request: Message) -> str:
    with pytest.raises(TTRPCError) as info:
        await getattr(shim.task, rpc)(request)
    assert info.value.code == Code.INVALID_ARGUMENT, info.value
    assert info.value.message.endswith(": invalid argument")
    return info.value.message


@pytest.mark.parametrize(
    ("bundle", "message"),
    [
        ("{state}/../../x", "is not a clean path"),
        ("../../x", "is not an absolute path"),
        ("{tmp}/elsewhere/c1", "is not in the shim's bundle directory"),
        ("{state}/c0", "is not named after its container 'c1'"),  # another container's bundle
        ("{state}/c1/../../../x", "is not a clean path"),
    ],
)
async def test_create_with_a_bundle_outside_is_refused_and_writes_nothing(
    shim: ShimHandle, tmp_path: Path, bundle: str, message: str
) -> None:
    state = tmp_path / "state" / NAMESPACE
    (tmp_path / "elsewhere" / "c1").mkdir(parents=True)
    (state / "c1").mkdir()
    before = _tree(tmp_path)
    path = bundle.format(state=state, tmp=tmp_path)
    text = await _refused(shim, "Create", api.CreateTaskRequest(id="c1", bundle=path))
    assert message in text and path in text
    assert _tree(tmp_path) == before  # no init.pid, log.json, options.json anywhere
    assert shim.containerd.envelopes == []  # no /tasks/create
    assert (await shim.task.Connect(api.ConnectRequest(id="c1"))).task_pid == 0


@pytest.mark.parametrize("bad", BAD_IDS)
async def test_create_with_a_bad_id_is_refused(shim: ShimHandle, tmp_path: Path, bad: str) -> None:
    before = _tree(tmp_path)
    bundle = f"{tmp_path}/state/{NAMESPACE}/{bad}"
    text = await _refused(shim, "Create", api.CreateTaskRequest(id=bad, bundle=bundle))
    assert text.startswith("container id")
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("rpc", [m.name for m in TASK_SERVICE.methods])
async def test_every_rpc_refuses_a_bad_container_id(shim: ShimHandle, rpc: str) -> None:
    text = await _refused(shim, rpc, _request(rpc, id="../x"))
    assert text == (
        "container id '../x' must match ^[A-Za-z0-9]+(?:[._-](?:[A-Za-z0-9]+))*$: invalid argument"
    )
    assert not shim.config.shutdown.is_shutdown  # not even Shutdown acts on it


@pytest.mark.parametrize("rpc", EXEC_RPCS)
@pytest.mark.parametrize("bad", ["../../../../x", "a/b", "x" * 77])
async def test_every_exec_rpc_refuses_a_bad_exec_id(shim: ShimHandle, rpc: str, bad: str) -> None:
    # The container does not exist: the id is refused before it is even looked up.
    text = await _refused(shim, rpc, _request(rpc, id="c1", exec_id=bad))
    assert text.startswith("exec id")


async def test_exec_needs_an_exec_id_and_valid_ids_pass(shim: ShimHandle) -> None:
    text = await _refused(shim, "Exec", api.ExecProcessRequest(id="c1"))
    assert text == "exec id must not be empty: invalid argument"
    # valid ids reach the service, which answers for an unknown container as before
    for request in (api.StateRequest(id="c1"), api.StateRequest(id="c1", exec_id="e.1-x_2")):
        with pytest.raises(TTRPCError) as info:
            await shim.task.State(request)
        assert info.value.code == Code.NOT_FOUND
