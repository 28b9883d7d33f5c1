#!/usr/bin/env python3
"""A minimal containerd shim on trioshim: runs the container's process on the host, without
isolation (an example; see README.md). RPCs not written here answer Unimplemented."""

import json
import os

import trio
from google.protobuf.empty_pb2 import Empty

import trioshim.shim as shim
from trioshim.api.containerd.events import task_pb2 as ev
from trioshim.api.containerd.runtime.task.v2 import shim_pb2 as pb


class Proc:
    def __init__(self, request):
        self.request, self.child, self.done = request, None, trio.Event()


class Task:  # the containerd.task.v2.Task service: one method per RPC
    def __init__(self, ctx):  # ctx: shim.InitContext
        self.ctx, self.procs = ctx, {}
        self.publish, self.reaper = ctx.get(shim.EVENT_PLUGIN).publish, ctx.get(shim.REAPER_PLUGIN)

    def ttrpc_services(self):
        return [(pb.DESCRIPTOR.services_by_name["Task"], self)]

    async def Create(self, ctx, req):
        self.procs[req.id] = Proc(req)
        self.publish("/tasks/create", ev.TaskCreate(container_id=req.id, bundle=req.bundle))
        return pb.CreateTaskResponse()

    async def Start(self, ctx, req):
        p = self.procs[req.id]
        spec = json.loads(await trio.Path(p.request.bundle, "config.json").read_text())
        out = [
            os.open(f, os.O_WRONLY) if f else shim.DEVNULL
            for f in (p.request.stdout, p.request.stderr)
        ]
        p.child = self.reaper.spawn(spec["process"]["args"], stdout=out[0], stderr=out[1])
        _ = [os.close(fd) for fd in out if fd != shim.DEVNULL]
        self.publish("/tasks/start", ev.TaskStart(container_id=req.id, pid=p.child.pid))
        self.ctx.nursery.start_soon(self.exited, req.id, p)
        return pb.StartResponse(pid=p.child.pid)

    async def exited(self, id, p):
        status = await p.child.wait()
        self.publish(
            "/tasks/exit", ev.TaskExit(container_id=id, id=id, pid=p.child.pid, exit_status=status)
        )
        p.done.set()  # Wait replies once the exit event is queued (create < start < exit)

    async def Wait(self, ctx, req):
        await self.procs[req.id].done.wait()
        return pb.WaitResponse(exit_status=self.procs[req.id].child.returncode)

    async def State(self, ctx, req):
        c = self.procs[req.id].child
        status = 1 if c is None else 2 if c.returncode is None else 3  # created, running, stopped
        return pb.StateResponse(
            id=req.id, pid=c and c.pid, status=status, exit_status=c and c.returncode
        )

    async def Kill(self, ctx, req):
        self.procs[req.id].child.send_signal(req.signal)
        return Empty()

    async def Delete(self, ctx, req):
        c = self.procs.pop(req.id).child
        self.publish("/tasks/delete", ev.TaskDelete(container_id=req.id, pid=c and c.pid))
        return pb.DeleteResponse(pid=c and c.pid, exit_status=c and c.returncode)

    async def Connect(self, ctx, req):
        c = self.procs[req.id].child if req.id in self.procs else None
        return pb.ConnectResponse(shim_pid=os.getpid(), task_pid=c and c.pid)

    async def Shutdown(self, ctx, req):
        if not self.procs:  # still serving containers: ignore
            self.ctx.get(shim.INTERNAL_PLUGIN).shutdown()
        return Empty()

    async def CloseIO(self, ctx, req):
        return Empty()


async def new_task(ctx):
    return Task(ctx)


REGISTRY = shim.Registry([shim.Registration(shim.TTRPC_PLUGIN, "task", new_task)])


def app():  # for the fork-server launcher (minimal_shim_fast)
    return shim.Manager("io.containerd.minimal.v2"), REGISTRY


if __name__ == "__main__":
    shim.main(*app())
