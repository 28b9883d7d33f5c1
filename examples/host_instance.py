#!/usr/bin/env python3
"""An instance-level shim on the task kit: one object per process (the container's init and
its execs), each a plain host process (no isolation; an example). Operations not written here
(Pause, Stats, Checkpoint...) answer Unimplemented naming the RPC."""

from collections.abc import Sequence

import trioshim.task as task
from trioshim.shim import Child


class HostProcess:
    def __init__(self, host: task.Host, args: Sequence[str], stdio: task.Stdio) -> None:
        self.host, self.args, self.stdio = host, args, stdio
        self.child: Child | None = None
        self.unstarted_exit = task.Exit(0)

    async def start(self) -> int:
        io = self.stdio
        self.child = self.host.reaper.spawn(
            self.args, stdin=io.stdin, stdout=io.stdout, stderr=io.stderr
        )
        return self.child.pid

    async def kill(self, signal: int, all: bool) -> None:
        if self.child is None:  # killed before Start: it never runs
            self.unstarted_exit = task.Exit(128 + signal)
        else:
            self.child.send_signal(signal)

    async def wait(self) -> task.Exit:
        status = self.unstarted_exit.status if self.child is None else await self.child.wait()
        await self.stdio.aclose()
        return task.Exit(status)

    async def delete(self) -> None:
        await self.stdio.aclose()

    async def close_stdin(self) -> None:
        self.stdio.close_stdin()

    async def pids(self) -> list[task.ProcessInfo]:
        return [task.ProcessInfo(self.child.pid)] if self.child else []

    async def exec(self, request: task.ExecRequest) -> task.Instance:
        return HostProcess(request.host, request.process["args"], await request.open_stdio())


class HostBackend:
    async def create(self, request: task.CreateRequest) -> task.Instance:
        args = request.spec["process"]["args"]
        return HostProcess(request.host, args, await request.open_stdio())


if __name__ == "__main__":
    task.main("io.containerd.hostinstance.v2", HostBackend())
