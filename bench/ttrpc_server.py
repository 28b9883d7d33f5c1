"""A trivial containerd.task.v2.Task server on trioshim.ttrpc, for the ttrpc benchmark.

Runs in a process of its own (``python -m bench.ttrpc_server SOCKET``) so that the client and
the server do not share one event loop or CPU. State answers what the Go runc shim answers for a
running container (same fields filled, so the reply sizes are comparable); Connect answers with
our pid. Prints ``ready`` on stdout once listening; exits on SIGTERM/SIGINT or stdin EOF, and
removes its socket.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys

import bench  # noqa: F401  (puts the repo on sys.path)


def main(argv: list[str]) -> int:
    import trio

    from trioshim.api.containerd.runtime.task.v2 import shim_pb2
    from trioshim.api.containerd.types.task import task_pb2
    from trioshim.ttrpc import Server, nonblocking, open_unix_listener

    path = argv[0]

    class Task:
        async def State(self, ctx: object, request: shim_pb2.StateRequest) -> object:
            return shim_pb2.StateResponse(
                id=request.id,
                bundle=f"/run/containerd/io.containerd.runtime.v2.task/bench/{request.id}",
                pid=4242,
                status=task_pb2.RUNNING,
                stdin="",
                stdout="",
                stderr="",
                terminal=False,
                exec_id=request.exec_id,
            )

        async def Connect(self, ctx: object, request: shim_pb2.ConnectRequest) -> object:
            return shim_pb2.ConnectResponse(shim_pid=os.getpid(), task_pid=4242)

        if not os.environ.get("TTRPC_BENCH_SPAWN"):
            # Like the runc shim's State; TTRPC_BENCH_SPAWN=1 measures a task per request.
            State = nonblocking(State)

    async def serve() -> None:
        server = Server()
        server.register(shim_pb2.DESCRIPTOR.services_by_name["Task"], Task())
        listener = await open_unix_listener(path)
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve, listener)
            sys.stdout.write("ready\n")
            sys.stdout.flush()
            nursery.start_soon(stop_on_stdin_eof, nursery.cancel_scope)
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    break
            server.close()
            nursery.cancel_scope.cancel()

    async def stop_on_stdin_eof(scope: trio.CancelScope) -> None:
        # The benchmark holds our stdin open: if it dies, so do we.
        async with trio.lowlevel.FdStream(os.dup(0)) as stdin:
            while await stdin.receive_some(4096):
                pass
        scope.cancel()

    try:
        trio.run(serve)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
