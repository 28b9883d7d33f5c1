"""The Task service written once: the 17 RPCs over any :class:`~trioshim.task.instance.Backend`.

What the kit guarantees, whatever the backend:

- per process, events in the order create < start < exit < delete (execs: exec-added <
  exec-started < exit); the init's TaskExit is its container's last: execs still running when
  the init exits are SIGKILLed and their exits published first;
- an :class:`~trioshim.task.instance.Exit` with ``oom`` set publishes TaskOOM just before its
  TaskExit;
- Wait is released exactly once per exit, for any number of waiters, whether they came
  before or after Start, and only once the TaskExit is queued;
- a process is started at most once, deleted only when created or stopped, and two Starts or
  Deletes of one process never overlap (FailedPrecondition);
- errors are domain errors (:mod:`trioshim.task.errors`), turned into ttrpc statuses at the
  boundary (:mod:`trioshim.task.boundary`), which also checks every id and bundle.

Requests and replies are the ``containerd.task.v2`` messages; the boundary converts v3.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from google.protobuf import empty_pb2

from trioshim.api.containerd.runtime.task.v2 import shim_pb2 as pb
from trioshim.api.containerd.types.task import task_pb2 as task_types
from trioshim.shim.bundlefile import read_bundle_file
from trioshim.task.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
)
from trioshim.task.events import Publish, TaskEvents, timestamp
from trioshim.task.failpoints import hit, read_failpoints
from trioshim.task.instance import (
    Backend,
    CreateRequest,
    ExecRequest,
    Exit,
    HasCreatedPid,
    Host,
    Instance,
    ReadsOwnSpec,
    SupportsExec,
)
from trioshim.task.optional import Container, OptionalRPCs, unimplemented
from trioshim.task.process import Action, Process, State
from trioshim.task.states import KIT_REFUSALS, HasRefusals
from trioshim.task.stdio import StdioSpec
from trioshim.ttrpc.server import RequestContext

__all__ = ["Container", "TaskService"]

log = logging.getLogger(__name__)

_STATUS = {
    State.CREATED: task_types.CREATED,
    State.RUNNING: task_types.RUNNING,
    State.PAUSED: task_types.PAUSED,
    State.STOPPED: task_types.STOPPED,
    State.DELETED: task_types.STOPPED,
}
_SIGKILL = 9
_FAILED_WAIT_STATUS = 255


class TaskService(OptionalRPCs):
    """Every container of one shim daemon, served over ``backend``."""

    def __init__(
        self,
        backend: Backend,
        *,
        host: Host,
        publish: Publish,
        shutdown: Callable[[str], None],
    ) -> None:
        self.backend = backend
        self.refusals = backend.refusals if isinstance(backend, HasRefusals) else KIT_REFUSALS
        self.events = TaskEvents(publish)
        self.host = dataclasses.replace(host, report_oom=self.events.oom)
        self._shutdown = shutdown
        self.containers: dict[str, Container] = {}
        self._reserved: set[tuple[str, str]] = set()  # ids being created or exec'd
        self._busy: set[Process] = set()  # a Start or Delete in progress

    def _claim(self, process: Process) -> None:
        if process in self._busy:
            raise FailedPreconditionError(f"another request is already changing {process.name}")
        self._busy.add(process)

    # -- creating --------------------------------------------------------------------------

    async def Create(self, ctx: RequestContext, req: pb.CreateTaskRequest) -> pb.CreateTaskResponse:
        key = (req.id, "")
        if req.id in self.containers or key in self._reserved:
            raise AlreadyExistsError(f"container {req.id}: already exists")
        stdio = StdioSpec(req.stdin, req.stdout, req.stderr, req.terminal)
        self._reserved.add(key)
        try:
            spec = _read_spec(req.bundle, lenient=isinstance(self.backend, ReadsOwnSpec))
            failpoints = read_failpoints(req.bundle)
            await hit(failpoints, "Create")
            instance = await self.backend.create(
                CreateRequest(
                    id=req.id,
                    bundle=req.bundle,
                    stdio=stdio,
                    host=self.host,
                    spec=spec,
                    rootfs_mounts=tuple(req.rootfs),
                    options=req.options if req.HasField("options") else None,
                    checkpoint=req.checkpoint,
                    parent_checkpoint=req.parent_checkpoint,
                )
            )
            await _undo_on_failure(instance, hit(failpoints, "Create.after"))
            init = Process(req.id, "", instance, stdio, refusals=self.refusals)
            init.pid = instance.created_pid if isinstance(instance, HasCreatedPid) else 0
            self.containers[req.id] = Container(req.id, req.bundle, init, failpoints=failpoints)
        finally:
            self._reserved.discard(key)
        self.events.create(
            req.id, req.bundle, stdio, init.pid, rootfs=req.rootfs, checkpoint=req.checkpoint
        )
        return pb.CreateTaskResponse(pid=init.pid)

    async def Exec(self, ctx: RequestContext, req: pb.ExecProcessRequest) -> empty_pb2.Empty:
        container = self.container(req.id)
        await hit(container.failpoints, "Exec")
        key = (req.id, req.exec_id)
        if req.exec_id in container.execs or key in self._reserved:
            raise AlreadyExistsError(f"id {req.exec_id}: already exists")
        container.init.check_exec()
        init = container.init.instance
        if not isinstance(init, SupportsExec):
            raise unimplemented("Exec")
        stdio = StdioSpec(req.stdin, req.stdout, req.stderr, req.terminal)
        try:
            process_spec = json.loads(req.spec.value or b"{}")
        except ValueError as exc:
            raise InvalidArgumentError(f"exec {req.exec_id}: process spec: {exc}") from None
        self._reserved.add(key)
        try:
            instance = await init.exec(
                ExecRequest(req.id, req.exec_id, stdio, self.host, process_spec)
            )
            await _undo_on_failure(instance, hit(container.failpoints, "Exec.after"))
            if self.containers.get(req.id) is not container:  # deleted meanwhile
                await _undo_on_failure(instance, _raise(self.refusals.no_container(req.id)))
            container.execs[req.exec_id] = Process(
                req.id, req.exec_id, instance, stdio, refusals=self.refusals
            )
        finally:
            self._reserved.discard(key)
        self.events.exec_added(req.id, req.exec_id)
        return empty_pb2.Empty()

    # -- running ---------------------------------------------------------------------------

    async def Start(self, ctx: RequestContext, req: pb.StartRequest) -> pb.StartResponse:
        container = self.container(req.id)
        await hit(container.failpoints, "Start")
        process = self.process(req.id, req.exec_id)
        process.check_start()
        if process.is_init:
            pid = await self._start(container, process)
        else:
            if container.init_exited:
                raise self.refusals.refuse(Action.START_EXEC, container.init)
            container.init.check_running(Action.START_EXEC)
            # Counted until it is watched: the init's exit waits for it (its exit comes first).
            container.exec_start_begins()
            try:
                pid = await self._start(container, process)
            finally:
                container.exec_start_ends()
        await hit(container.failpoints, "Start.after")
        return pb.StartResponse(pid=pid)

    async def _start(self, container: Container, process: Process) -> int:
        """Start the instance; publish its start and begin watching for its exit."""
        self._claim(process)
        try:
            pid = await process.instance.start()
        except Exception:
            if not process.is_init:
                process.start_failed()
            raise
        finally:
            self._busy.discard(process)
        process.started(pid)
        if process.is_init:
            self.events.start(container.id, pid)
        else:
            self.events.exec_started(container.id, process.exec_id, pid)
        self.host.nursery.start_soon(self._watch, container, process)
        return pid

    async def _watch(self, container: Container, process: Process) -> None:
        """The one caller of ``instance.wait()``: records the exit, in the guaranteed order."""
        try:
            exit = await process.instance.wait()
        except Exception:
            log.exception("waiting for %s failed; reporting it as exited", process.name)
            exit = Exit(_FAILED_WAIT_STATUS)
        if process.is_init:
            await self._end_execs(container)
        if exit.oom:
            self.events.oom(container.id)
        self.events.exit(container.id, process.exec_id or container.id, process.pid, exit)
        process.exited(exit)

    async def _end_execs(self, container: Container) -> None:
        """The init is gone: its execs go too, and their exits come before the init's (an exec
        whose Start is in progress is waited for, and then ended too)."""
        container.init_exited = True
        await container.exec_starts_ended()
        for exec_process in list(container.execs.values()):
            if exec_process.state in (State.RUNNING, State.PAUSED):
                try:
                    await exec_process.instance.kill(_SIGKILL, False)
                except Exception:
                    log.exception("killing exec %s after its init exited", exec_process.name)
                await exec_process.wait()

    async def Kill(self, ctx: RequestContext, req: pb.KillRequest) -> empty_pb2.Empty:
        container = self.container(req.id)
        await hit(container.failpoints, "Kill")
        process = self.process(req.id, req.exec_id)
        process.check_kill()
        never_started = process.state is State.CREATED and process not in self._busy
        await process.instance.kill(req.signal, req.all)
        if never_started and not process.watched and process.state is State.CREATED:
            # Killed before Start: the instance exits without running; record that exit.
            process.watched = True
            self.host.nursery.start_soon(self._watch, container, process)
        return empty_pb2.Empty()

    async def Wait(self, ctx: RequestContext, req: pb.WaitRequest) -> pb.WaitResponse:
        exit = await self.process(req.id, req.exec_id).wait()
        return pb.WaitResponse(exit_status=exit.status, exited_at=timestamp(exit.exited_at_ns))

    async def Delete(self, ctx: RequestContext, req: pb.DeleteRequest) -> pb.DeleteResponse:
        container = self.container(req.id)
        await hit(container.failpoints, "Delete")
        process = self.process(req.id, req.exec_id)
        process.check_delete()
        self._claim(process)
        try:
            doomed = list(container.execs.values()) if process.is_init else []
            for exec_process in doomed:
                exec_process.check_delete()
            for exec_process in [*doomed, process]:
                await exec_process.instance.delete()
                exec_process.deleted()
        finally:
            self._busy.discard(process)
        exit = process.exit
        if process.is_init:
            del self.containers[req.id]
            self.events.delete(req.id, process.pid, exit, process_id=req.id)
        else:
            del container.execs[req.exec_id]
        return pb.DeleteResponse(
            pid=process.pid,
            exit_status=exit.status if exit else 0,
            exited_at=timestamp(exit.exited_at_ns if exit else None),
        )

    # -- looking -------------------------------------------------------------------------

    async def State(self, ctx: RequestContext, req: pb.StateRequest) -> pb.StateResponse:
        container = self.container(req.id)
        process = self.process(req.id, req.exec_id)
        exit = process.exit
        # An exec of a paused container is paused too (containerd's runc shim says so), and an
        # init being paused is PAUSING until its Pause returns.
        if process.pausing:
            status = task_types.PAUSING
        elif container.init.state is State.PAUSED:
            status = task_types.PAUSED
        else:
            status = _STATUS[process.state]
        return pb.StateResponse(
            id=process.exec_id or req.id,
            bundle=container.bundle,
            pid=process.pid,
            status=status,
            stdin=process.stdio.stdin,
            stdout=process.stdio.stdout,
            stderr=process.stdio.stderr,
            terminal=process.stdio.terminal,
            exit_status=exit.status if exit else 0,
            exited_at=timestamp(exit.exited_at_ns if exit else None),
            exec_id=req.exec_id,
        )

    async def Connect(self, ctx: RequestContext, req: pb.ConnectRequest) -> pb.ConnectResponse:
        container = self.containers.get(req.id)
        return pb.ConnectResponse(
            shim_pid=os.getpid(), task_pid=container.init.pid if container else 0
        )

    async def Shutdown(self, ctx: RequestContext, req: pb.ShutdownRequest) -> empty_pb2.Empty:
        if not self.containers and not self._reserved:
            self._shutdown("no task left")
        return empty_pb2.Empty()


async def _undo_on_failure(instance: Instance, step: Awaitable[None]) -> None:
    """Run ``step``; if it fails, the instance (made, not yet the service's) is deleted."""
    try:
        await step
    except BaseException:
        with trio.CancelScope(shield=True):
            try:
                await instance.delete()
            except Exception:
                log.exception("deleting an instance whose request failed")
        raise


async def _raise(error: Exception) -> None:
    raise error


def _read_spec(bundle: str, *, lenient: bool) -> dict[str, Any]:
    """``<bundle>/config.json``; a bad one is InvalidArgument, or (``lenient``) ``{}``, for a
    backend whose runtime reads and reports it itself.

    Read in the event loop, not in a worker thread: it is a few kB on a local disk, and
    Create is the first request of a fresh daemon, whose first worker thread would cost
    more than the read (a thread and its stack set up, ~130 copy-on-write page faults in a
    daemon forked from the fork server: about a millisecond before ``runc create``); see
    :mod:`trioshim.shim.bundlefile`, which never lets it wait."""
    path = os.path.join(bundle, "config.json")
    try:
        spec = json.loads(read_bundle_file(path))
        if not isinstance(spec, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        if lenient:
            return {}
        raise InvalidArgumentError(f"read OCI spec {path}: {exc}") from None
    return spec
