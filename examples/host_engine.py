#!/usr/bin/env python3
"""An engine-level shim on the task kit: the container's args run as a plain host process
(no isolation; an example). The kit does the rest: states, events, Wait, stdio, errors."""

import trio

import trioshim.task as task


class HostProcess:
    name = "host-process"

    async def run(self, ctx: task.RunContext) -> int:
        io = ctx.stdio
        child = ctx.reaper.spawn(ctx.args, stdin=io.stdin, stdout=io.stdout, stderr=io.stderr)
        ctx.started(child.pid)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ctx.signals.forward, child.send_signal)  # Kill -> the child
            status = await child.wait()
            nursery.cancel_scope.cancel()
        return status


if __name__ == "__main__":
    task.main("io.containerd.hostengine.v2", HostProcess())
