"""The task service in-process, with real runc and a busybox rootfs, for tests/runc/test_service.py
and test_checkpoint.py (the `harness` fixture is in tests/runc/conftest.py).

The service runs in the test's Trio run with a real reaper (this process is made a child
subreaper, so container inits are reaped here) and records the events it publishes. RPC
handlers are called directly; the ttrpc layer has its own tests.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
from google.protobuf import any_pb2
from google.protobuf.message import Message

from trioshim.api.containerd.runtime.task.v2 import shim_pb2 as api
from trioshim.api.containerd.types import mount_pb2
from trioshim.api.containerd.types.runc.options import oci_pb2
from trioshim.runc.backend import RuncBackend, RuncInit
from trioshim.runc.container import Container
from trioshim.shim.reaper import Reaper, open_reaper, set_child_subreaper
from trioshim.shim.shutdown import ShutdownService
from trioshim.task.boundary import task_services
from trioshim.task.instance import Host
from trioshim.task.service import TaskService
from trioshim.ttrpc.errors import TTRPCError
from trioshim.ttrpc.registry import Intercepted
from trioshim.ttrpc.server import RequestContext

CTX = RequestContext(service="containerd.task.v2.Task", method="test")


@dataclass
class Recorder:
    """The events the service publishes, in order."""

    events: list[tuple[str, Message]] = field(default_factory=list)
    changed: trio.Event = field(default_factory=trio.Event)

    def publish(self, topic: str, message: Message) -> None:
        self.events.append((topic, message))
        self.changed.set()
        self.changed = trio.Event()

    def topics(self, container_id: str | None = None) -> list[str]:
        return [
            t
            for t, m in self.events
            if container_id is None or getattr(m, "container_id", None) == container_id
        ]

    def of(self, topic: str) -> list[Any]:
        return [m for t, m in self.events if t == topic]

    async def wait_for(self, topic: str, count: int = 1) -> None:
        with trio.fail_after(20):
            while len(self.of(topic)) < count:
                await self.changed.wait()


@dataclass
class Harness:
    service: TaskService
    events: Recorder
    shutdown: ShutdownService
    reaper: Reaper
    tmp: Path
    rootfs: Path
    runc_root: Path

    async def bundle(
        self,
        container_id: str,
        args: Sequence[str],
        *,
        pid_namespace: bool = True,
        edit: Any = None,
    ) -> Path:
        bundle = self.tmp / container_id
        bundle.mkdir()
        (bundle / "work").mkdir()  # containerd links it to the task's work dir
        (await self.reaper.run(["runc", "spec", "--bundle", str(bundle)])).check()
        spec = json.loads((bundle / "config.json").read_text())
        spec["process"]["terminal"] = False
        spec["process"]["args"] = list(args)
        spec["root"] = {"path": "rootfs", "readonly": True}
        if not pid_namespace:
            spec["linux"]["namespaces"] = [
                ns for ns in spec["linux"]["namespaces"] if ns["type"] != "pid"
            ]
        if edit is not None:
            edit(spec)
        (bundle / "config.json").write_text(json.dumps(spec))
        return bundle

    def create_request(
        self, container_id: str, bundle: Path, *, criu_path: str = "", **kwargs: Any
    ) -> Any:
        """CreateTaskRequest with runc options (our runc root, `criu_path` when given)."""
        runc_options = oci_pb2.Options(root=str(self.runc_root), criu_path=criu_path)
        options = any_pb2.Any(
            type_url="containerd.runc.v1.Options", value=runc_options.SerializeToString()
        )
        fields: dict[str, Any] = {
            "id": container_id,
            "bundle": str(bundle),
            "rootfs": [
                mount_pb2.Mount(type="bind", source=str(self.rootfs), options=["rbind", "ro"])
            ],
            "options": options,
        }
        fields.update(kwargs)
        return api.CreateTaskRequest(**fields)

    async def create(self, container_id: str, args: Sequence[str], **kwargs: Any) -> Any:
        bundle = await self.bundle(
            container_id,
            args,
            pid_namespace=kwargs.pop("pid_namespace", True),
            edit=kwargs.pop("edit", None),
        )
        return await self.call("Create", self.create_request(container_id, bundle, **kwargs))

    async def call(self, rpc: str, request: Message) -> Any:
        """``rpc`` as containerd calls it: through the service's boundary (ids checked,
        domain errors turned into ttrpc statuses)."""
        served = task_services(self.service)[0][1]  # containerd.task.v2.Task's
        assert isinstance(served, Intercepted)
        handler = getattr(served.implementation, rpc)
        return await served.interceptor(CTX, request, handler)

    async def fails(self, rpc: str, request: Message) -> TTRPCError:
        with pytest.raises(TTRPCError) as info:
            await self.call(rpc, request)
        return info.value

    async def run_to_exit(self, container_id: str, args: Sequence[str], **kwargs: Any) -> Any:
        await self.create(container_id, args, **kwargs)
        await self.call("Start", api.StartRequest(id=container_id))
        with trio.fail_after(20):
            return await self.call("Wait", api.WaitRequest(id=container_id))


@contextlib.asynccontextmanager
async def open_harness(tmp_path: Path, busybox_rootfs: Path) -> AsyncIterator[Harness]:
    set_child_subreaper(True)
    recorder = Recorder()
    shutdown = ShutdownService()
    runc_root = tmp_path / "runc-root"
    try:
        async with open_reaper() as reaper, trio.open_nursery() as nursery:
            service = TaskService(
                RuncBackend(),
                host=Host(namespace="testns", reaper=reaper, nursery=nursery),
                publish=recorder.publish,
                shutdown=shutdown.shutdown,
            )
            h = Harness(service, recorder, shutdown, reaper, tmp_path, busybox_rootfs, runc_root)
            try:
                yield h
            finally:
                with trio.CancelScope(shield=True):
                    await _cleanup(h)
                nursery.cancel_scope.cancel()
    finally:
        set_child_subreaper(False)


async def _cleanup(h: Harness) -> None:
    for container in runc_containers(h):
        runc = container.init.runc
        for cmd in (["kill", "--all", container.id, "9"], ["delete", "--force", container.id]):
            await h.reaper.run(runc.command(cmd))
        await container.unmount_rootfs()


def runc_container(h: Harness, container_id: str) -> Container:
    """The runc side of one of the service's containers."""
    init = h.service.containers[container_id].init.instance
    assert isinstance(init, RuncInit)
    return init.container


def runc_containers(h: Harness) -> list[Container]:
    """The runc side of the service's containers."""
    inits = [c.init.instance for c in h.service.containers.values()]
    return [init.container for init in inits if isinstance(init, RuncInit)]


def is_mounted(path: Path) -> bool:
    return any(
        line.split()[4] == str(path)
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
    )


def exec_request(container_id: str, exec_id: str, args: Sequence[str]) -> Any:
    spec = {"args": list(args), "cwd": "/", "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0}}
    return api.ExecProcessRequest(
        id=container_id,
        exec_id=exec_id,
        spec=any_pb2.Any(type_url="x", value=json.dumps(spec).encode()),
    )


async def add_exec(
    h: Harness, container_id: str, exec_id: str, args: Sequence[str], **kw: Any
) -> None:
    """Exec ``args`` in ``container_id`` as ``exec_id`` (``kw``: the request's stdio)."""
    spec = {
        "args": list(args),
        "cwd": "/",
        "env": ["PATH=/bin:/usr/bin"],
        "user": {"uid": 0, "gid": 0},
    }
    await h.call(
        "Exec",
        api.ExecProcessRequest(
            id=container_id,
            exec_id=exec_id,
            spec=any_pb2.Any(
                type_url="types.containerd.io/opencontainers/runtime-spec/1/Process",
                value=json.dumps(spec).encode(),
            ),
            **kw,
        ),
    )
