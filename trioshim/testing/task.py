"""Test a task-kit shim (an engine or an instance backend) in-process, like containerd would.

:func:`open_task_shim` runs the kit's Task service over ``backend`` in the current Trio run
(a real shim daemon: reaper, publisher, ttrpc server), wired to a fake containerd that records
every event. It works on ``trio.testing.MockClock``: nothing in it sleeps. Example::

    async def test_exit_code(mock_clock):
        async with open_task_shim(MyEngine()) as shim:
            assert await shim.run("c1", ["/bin/sh", "-c", "exit 3"]) == 3
        assert shim.topics("c1") == ["/tasks/create", "/tasks/start", "/tasks/exit",
                                     "/tasks/delete"]
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio
from google.protobuf.message import Message

from trioshim.api.containerd.runtime.task.v2 import shim_pb2 as pb
from trioshim.task.engine import Engine
from trioshim.task.instance import Backend
from trioshim.task.main import app
from trioshim.testing import ShimHandle, open_shim

__all__ = ["TaskShim", "open_task_shim"]


@dataclass(eq=False)
class TaskShim:
    """A running kit shim: :attr:`shim` (the daemon, its Task client and fake containerd)
    plus shortcuts for the usual sequences."""

    shim: ShimHandle
    bundles: str
    """containerd's bundle directory: each container's bundle is ``<bundles>/<id>``."""

    @property
    def task(self) -> Any:
        """The ``containerd.task.v2.Task`` client."""
        return self.shim.task

    def bundle(self, id: str, args: Sequence[str], *, spec: Mapping[str, Any] | None = None) -> str:
        """Write ``<bundles>/<id>/config.json`` (``spec``, else a minimal one running
        ``args``) with an empty ``rootfs``; the bundle path."""
        path = os.path.join(self.bundles, id)
        os.makedirs(os.path.join(path, "rootfs"), exist_ok=True)
        config = dict(spec or {"root": {"path": "rootfs"}, "process": {"cwd": "/", "env": []}})
        config["process"] = {**config.get("process", {}), "args": list(args)}
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump(config, f)
        return path

    async def create(self, id: str, args: Sequence[str], **stdio: Any) -> None:
        """Create ``id`` running ``args``; ``stdio``: ``stdin``/``stdout``/``stderr``/``terminal``
        as containerd sends them."""
        bundle = self.bundle(id, args)
        await self.task.Create(pb.CreateTaskRequest(id=id, bundle=bundle, **stdio))

    async def run(self, id: str, args: Sequence[str], **stdio: Any) -> int:
        """``ctr run --rm``: Create, Wait (before Start), Start, Delete; the exit status."""
        await self.create(id, args, **stdio)
        async with trio.open_nursery() as nursery:
            exited: list[int] = []

            async def wait() -> None:
                exited.append((await self.task.Wait(pb.WaitRequest(id=id))).exit_status)

            nursery.start_soon(wait)
            await self.task.Start(pb.StartRequest(id=id))
        await self.task.Delete(pb.DeleteRequest(id=id))
        return exited[0]

    def events(self, container_id: str | None = None) -> list[tuple[str, Message]]:
        """``(topic, event)`` recorded so far (of ``container_id``, if given), in order."""
        return [
            (topic, event)
            for topic, event in self.shim.containerd.events()
            if container_id is None or getattr(event, "container_id", None) == container_id
        ]

    def topics(self, container_id: str | None = None) -> list[str]:
        return [topic for topic, _ in self.events(container_id)]

    async def wait_for_events(self, count: int) -> None:
        """Until at least ``count`` events are recorded (the publisher is asynchronous)."""
        await self.shim.containerd.wait_for(count)


@asynccontextmanager
async def open_task_shim(
    backend: Engine | Backend, *, name: str = "io.containerd.test.v2", namespace: str = "default"
) -> AsyncIterator[TaskShim]:
    """A shim serving ``backend`` in this Trio run (see the module's docstring)."""
    manager, registry = app(name, backend)
    manager.abandon_timeout = None
    # containerd's <state>/<namespace>: the daemon's bundle and every container's are in it.
    # "_daemon" is no container id (ids start with a letter or digit).
    with tempfile.TemporaryDirectory(prefix="taskshim-", dir="/tmp") as bundles:
        daemon_bundle = os.path.join(bundles, "_daemon")
        os.mkdir(daemon_bundle)
        async with open_shim(manager, registry, namespace=namespace, bundle=daemon_bundle) as shim:
            yield TaskShim(shim, bundles)
