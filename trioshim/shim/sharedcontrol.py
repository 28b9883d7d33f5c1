"""The shared process's control socket: what start and delete helpers ask of it.

One ``SOCK_SEQPACKET`` message each way (``marshal``), only from peers with our uid:

- ``start``/``delete``: a helper's action, run here (:mod:`trioshim.shim.sharedactions`);
- ``serve``: a socket (``SCM_RIGHTS``) and :class:`~trioshim.shim.sharedclient.ShimSpec`
  from a helper that ran ``start`` itself;
- ``ping``: whether the process is alive.

A ``start`` or ``serve`` also tells the process which containerd the helper belongs to (its
parent, found through ``SO_PEERCRED``): :meth:`SharedShims.adopt`. A bad request gets a clear
error and costs nothing but itself; while one is served the process does not end.
"""

from __future__ import annotations

import contextlib
import errno
import marshal
import os
import socket
import struct
from typing import TYPE_CHECKING

import trio

from trioshim.shim.sharedactions import ACTIONS, ActionRequest, Declined, run_action
from trioshim.shim.sharedclient import MAX_MESSAGE, ShimSpec, decode_message

if TYPE_CHECKING:
    from trioshim.shim.shared import SharedShims

__all__ = ["serve_control"]

_CREDENTIALS = struct.Struct("3i")
_ACCEPT_RESOURCE_ERRORS = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))
_ACCEPT_RETRY = 0.1
_RECEIVE_TIMEOUT = 10.0


async def serve_control(shims: SharedShims, control: trio.socket.SocketType) -> None:
    """Answer every helper that connects to ``control`` (until cancelled)."""
    async with trio.open_nursery() as nursery:
        while True:
            try:
                conn, _ = await control.accept()
            except OSError as exc:
                if exc.errno not in _ACCEPT_RESOURCE_ERRORS:
                    raise
                # Out of descriptors or memory: the daemons must not die of it; retry
                # once some are freed (what trio's own listeners do).
                await trio.sleep(_ACCEPT_RETRY)
                continue
            nursery.start_soon(_answer, shims, conn)


async def _answer(shims: SharedShims, conn: trio.socket.SocketType) -> None:
    with shims.request(), conn:
        fds: list[int] = []
        try:
            pid, uid, _ = _CREDENTIALS.unpack(
                conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDENTIALS.size)
            )
            if uid != os.getuid():
                raise PermissionError(f"uid {uid} may not use this shared shim process")
            with trio.fail_after(_RECEIVE_TIMEOUT):
                # Close-on-exec as they arrive: a listener must not leak into what we spawn.
                data, ancdata, _, _ = await conn.recvmsg(
                    MAX_MESSAGE, socket.CMSG_SPACE(16), socket.MSG_CMSG_CLOEXEC
                )
            fds = _received_fds(ancdata)
            reply = await _handle(shims, decode_message(data), fds, pid)
        except Exception as exc:
            reply = {"ok": False, "error": str(exc) or type(exc).__name__}
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
        with contextlib.suppress(OSError):
            await conn.send(marshal.dumps(reply))


async def _handle(
    shims: SharedShims, message: dict[str, object], fds: list[int], peer: int
) -> dict[str, object]:
    op = message.get("op")
    if op == "ping":
        return {"ok": True, "pid": os.getpid()}
    if op in ("start", "serve"):
        shims.adopt(peer)
    if op in ACTIONS:
        try:
            return await run_action(shims, ActionRequest.from_wire(message))
        except Declined as exc:
            return {"ok": False, "declined": True, "error": str(exc)}
    if op != "serve":
        raise ValueError(f"unknown request {op!r}")
    spec = ShimSpec.from_wire(message)
    if len(fds) != 1:
        raise ValueError("a serve request carries exactly one socket")
    listener = socket.socket(fileno=fds.pop())
    status = await shims.add(spec, listener)
    if status is not None:
        return {"ok": False, "error": f"shim {spec.flags.id} failed to start (see its log)"}
    return {"ok": True, "pid": os.getpid()}


def _received_fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(data) - len(data) % 4
            fds.extend(struct.unpack(f"{usable // 4}i", data[:usable]))
    return fds
