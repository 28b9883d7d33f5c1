"""Who may talk to a ttrpc server: peer credentials of a unix socket and the handshakes that
check them on each accepted connection, before anything is read from it."""

from __future__ import annotations

import os
import socket as _stdlib_socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import trio

__all__ = [
    "Handshake",
    "HandshakeError",
    "PeerCredentials",
    "peer_credentials",
    "require_root",
    "require_same_user",
    "require_uid_gid",
]


@dataclass(frozen=True, slots=True)
class PeerCredentials:
    """``SO_PEERCRED`` of a unix socket: the peer's pid and effective ids at ``connect()``."""

    pid: int
    uid: int
    gid: int


_UCRED: Final = struct.Struct("iII")


def peer_credentials(sock: trio.socket.SocketType) -> PeerCredentials:
    """Read ``SO_PEERCRED`` (Linux) from a connected unix socket."""
    raw = sock.getsockopt(_stdlib_socket.SOL_SOCKET, _stdlib_socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return PeerCredentials(pid, uid, gid)


class HandshakeError(Exception):
    """Raised by a handshake to refuse a connection (it is closed without a frame)."""


#: Runs on each accepted socket before anything is read; raises HandshakeError to refuse it.
#: Returns the peer's credentials (made available as ``RequestContext.peer``) or None.
Handshake = Callable[[trio.socket.SocketType], PeerCredentials | None]


def require_uid_gid(uid: int, gid: int) -> Handshake:
    """Accept only peers with this effective uid and gid (-1: any)."""

    def handshake(sock: trio.socket.SocketType) -> PeerCredentials:
        if sock.family != _stdlib_socket.AF_UNIX:
            raise HandshakeError("peer credentials need a unix socket")
        try:
            cred = peer_credentials(sock)
        except OSError as exc:
            raise HandshakeError(f"reading peer credentials: {exc}") from exc
        if (uid != -1 and cred.uid != uid) or (gid != -1 and cred.gid != gid):
            raise HandshakeError(
                f"ttrpc: peer uid/gid {cred.uid}/{cred.gid} does not match {uid}/{gid}"
            )
        return cred

    return handshake


def require_same_user() -> Handshake:
    """Accept only peers with our effective uid and gid, as read now (containerd's default)."""
    return require_uid_gid(os.geteuid(), os.getegid())


def require_root() -> Handshake:
    return require_uid_gid(0, 0)
