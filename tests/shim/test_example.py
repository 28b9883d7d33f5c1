"""The example shim, driven like containerd drives it (ctr run --rm), against the fake."""

from __future__ import annotations

import importlib.util
import json
import os
import tempfile
from pathlib import Path
from types import ModuleType

import trio

from trioshim.api.containerd.runtime.task.v2 import shim_pb2 as pb
from trioshim.shim import Manager
from trioshim.testing import open_shim
from trioshim.ttrpc import Unimplemented

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "minimal_shim.py"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("minimal_shim_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def touch(path: str) -> str:
    Path(path).touch()
    return path


def read(path: str) -> str:
    return Path(path).read_text()


def write_bundle(root: str, argv: list[str]) -> str:
    bundle = os.path.join(root, "c1")
    os.makedirs(bundle)
    Path(bundle, "config.json").write_text(json.dumps({"process": {"args": argv}}))
    return bundle


async def test_ctr_run_sequence() -> None:
    example = load_example()
    with tempfile.TemporaryDirectory(dir="/tmp") as root:
        bundle = write_bundle(root, ["/bin/sh", "-c", "echo hi; echo oops >&2; exit 3"])
        out, err = touch(os.path.join(root, "out")), touch(os.path.join(root, "err"))
        async with open_shim(Manager(), example.REGISTRY, bundle=bundle) as shim:
            task = shim.task
            await task.Create(pb.CreateTaskRequest(id="c1", bundle=bundle, stdout=out, stderr=err))
            assert (await task.State(pb.StateRequest(id="c1"))).status == 1  # CREATED
            async with trio.open_nursery() as nursery:
                waited: list[pb.WaitResponse] = []

                async def wait() -> None:
                    await task.Connect(pb.ConnectRequest(id="c1"))
                    waited.append(await task.Wait(pb.WaitRequest(id="c1")))

                nursery.start_soon(wait)  # ctr waits before it starts
                started = await task.Start(pb.StartRequest(id="c1"))
            assert waited[0].exit_status == 3
            state = await task.State(pb.StateRequest(id="c1"))
            assert (state.status, state.exit_status, state.pid) == (3, 3, started.pid)
            connect = await task.Connect(pb.ConnectRequest(id="c1"))
            assert (connect.shim_pid, connect.task_pid) == (os.getpid(), started.pid)
            try:
                await task.Pause(pb.PauseRequest(id="c1"))
                raise AssertionError("Pause should be unimplemented")
            except Unimplemented:
                pass
            deleted = await task.Delete(pb.DeleteRequest(id="c1"))
            assert (deleted.pid, deleted.exit_status) == (started.pid, 3)
            await task.Shutdown(pb.ShutdownRequest(id="c1"))
            assert await shim.wait() == 0
        assert read(out) == "hi\n" and read(err) == "oops\n"
        assert shim.containerd.topics == [
            "/tasks/create",
            "/tasks/start",
            "/tasks/exit",
            "/tasks/delete",
        ]
        exit_event = shim.containerd.events()[2][1]
        assert (exit_event.container_id, exit_event.id, exit_event.exit_status) == ("c1", "c1", 3)  # type: ignore[attr-defined]


async def test_shutdown_ignored_while_tasks_remain() -> None:
    example = load_example()
    with tempfile.TemporaryDirectory(dir="/tmp") as root:
        bundle = write_bundle(root, ["/bin/true"])
        async with open_shim(Manager(), example.REGISTRY, bundle=bundle) as shim:
            await shim.task.Create(pb.CreateTaskRequest(id="c1", bundle=bundle))
            await shim.task.Shutdown(pb.ShutdownRequest(id="c1"))
            assert (await shim.task.Connect(pb.ConnectRequest(id="c1"))).shim_pid == os.getpid()
            assert not shim.exited.is_set()
