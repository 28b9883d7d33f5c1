"""The boundary: v3 served like v2, ids and bundles checked, domain errors as statuses."""

from __future__ import annotations

import gc
import os
import tracemalloc

import pytest
import trio.testing

from tests.task.scripted import ScriptedBackend
from trioshim.api.containerd.runtime.task.v2 import shim_pb2 as v2
from trioshim.api.containerd.runtime.task.v3 import shim_pb2 as v3
from trioshim.task.boundary import task_services
from trioshim.task.service import TaskService
from trioshim.testing.task import open_task_shim
from trioshim.ttrpc import NAMESPACE_KEY, InvalidArgument, NotFound, Stub
from trioshim.ttrpc.registry import ServiceRegistry


async def test_v3_is_served_by_the_same_service(mock_clock: trio.testing.MockClock) -> None:
    async with open_task_shim(ScriptedBackend()) as kit:
        task3 = Stub(
            kit.shim.client,
            v3.DESCRIPTOR.services_by_name["Task"],
            metadata=[(NAMESPACE_KEY, "default")],
        )
        bundle = kit.bundle("c1", ["x"])
        await task3.Create(v3.CreateTaskRequest(id="c1", bundle=bundle))
        started = await task3.Start(v3.StartRequest(id="c1"))
        assert isinstance(started, v3.StartResponse) and started.pid > 0
        state = await kit.task.State(v2.StateRequest(id="c1"))  # and v2 sees it
        assert state.pid == started.pid
        with pytest.raises(NotFound, match="container c9 not created"):
            await task3.State(v3.StateRequest(id="c9"))


async def test_ids_and_bundles_containerd_never_sends_are_invalid(
    mock_clock: trio.testing.MockClock,
) -> None:
    backend = ScriptedBackend()
    async with open_task_shim(backend) as kit:
        with pytest.raises(InvalidArgument, match="container id"):
            await kit.task.State(v2.StateRequest(id="../../x"))
        with pytest.raises(InvalidArgument, match="exec id"):
            await kit.task.Exec(v2.ExecProcessRequest(id="c1", exec_id=""))
        elsewhere = kit.bundle("c2", ["x"])
        with pytest.raises(InvalidArgument, match="not named after"):
            await kit.task.Create(v2.CreateTaskRequest(id="c1", bundle=elsewhere))
        with pytest.raises(InvalidArgument, match="bundle directory"):
            await kit.task.Create(v2.CreateTaskRequest(id="c1", bundle="/tmp/c1"))
        missing = f"{kit.bundles}/c3"
        with pytest.raises(InvalidArgument, match="read OCI spec"):
            await kit.task.Create(v2.CreateTaskRequest(id="c3", bundle=missing))
        # A FIFO where config.json belongs: refused at once, never waited on (the read is
        # in the event loop, which a blocking open would stall for good).
        fifo = f"{kit.bundles}/c4"
        os.mkdir(fifo)
        os.mkfifo(f"{fifo}/config.json")
        with pytest.raises(InvalidArgument, match="not a regular file"):
            await kit.task.Create(v2.CreateTaskRequest(id="c4", bundle=fifo))
    assert backend.calls == []


def test_a_shim_registered_on_both_versions_costs_no_handler_per_rpc() -> None:
    """Shared mode holds many shims in one process: the boundary is one object per API
    version, over the service class's own table (a closure per RPC and version cost ~45 KiB
    a shim)."""

    class Service(TaskService):
        def __init__(self) -> None:  # the lookups are never made here: nothing to set up
            pass

    def register(service: TaskService) -> None:
        registry = ServiceRegistry()
        for descriptor, implementation in task_services(service):
            registry.register(descriptor, implementation)
        kept.append(registry)

    kept: list[ServiceRegistry] = []
    register(Service())  # the class's tables, made once
    services = [Service() for _ in range(50)]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for service in services:
            register(service)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # Measured ~1.2 KiB a shim (two registries, two boundaries); ~42 KiB with a closure per RPC.
    assert grown / len(services) < 8 * 1024
