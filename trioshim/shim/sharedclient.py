"""The start/delete helpers' side of shared mode (:mod:`trioshim.shim.shared`).

A runtime whose :class:`~trioshim.shim.manager.Manager` has ``shared = True`` serves all its
daemons for one containerd from one process. ``start`` still binds the daemon's socket and
writes its ``address`` file; then, instead of forking a daemon, it hands the listening socket
and the daemon's identity (:class:`ShimSpec`) to that process over its control socket
(``<dir>/shared-<hash>``, ``<dir>`` as for the fork server, keyed like it by runtime, shim
build, uid and containerd). With no process there yet it forks one, already serving this
first daemon, which watches the helper's parent (its containerd) to end with it. ``delete``
cleans up as it does for any shim and leaves a live process alone; a dead one's control
socket and lock file it removes.

The exchange is one ``SOCK_SEQPACKET`` message each way (a ``marshal`` dict, the socket as
``SCM_RIGHTS``), under an exclusive ``flock`` on ``<control>.lock``: the process takes the
same lock before it exits for want of daemons, so a daemon is never handed to a process that
is going away, and two helpers never fork two processes.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import marshal
import os
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from trioshim.shim.cmdline import program_path
from trioshim.shim.flags import Flags, validate_identifier
from trioshim.shim.forking import fork_process
from trioshim.shim.manager import Manager
from trioshim.shim.plugin import Registry
from trioshim.shim.sharedcontainerd import Containerd
from trioshim.shim.sharedlaunch import control_path

__all__ = ["SharedError", "ShimSpec", "ask", "control_path", "hand_over", "remove_stale_control"]

MAX_MESSAGE = 1 << 16
REQUEST_TIMEOUT = 30.0  # a hand-over starts one daemon (its plugins' init)


class SharedError(Exception):
    """The shared process refused or failed a request (its message is for containerd)."""


@dataclass(frozen=True)
class ShimSpec:
    """One daemon as containerd sees it: its flags, bundle, event address and socket."""

    flags: Flags
    bundle: str
    ttrpc_address: str
    address: str

    def to_wire(self) -> dict[str, Any]:
        f = self.flags
        return {
            "namespace": f.namespace,
            "id": f.id,
            "address": f.address,
            "publish_binary": f.publish_binary,
            "debug": f.debug,
            "bundle": self.bundle,
            "ttrpc_address": self.ttrpc_address,
            "socket_address": self.address,
        }

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> ShimSpec:
        """Checks what it takes like the command line does (ValueError on bad input)."""
        text = {k: data.get(k) for k in ("namespace", "id", "address", "publish_binary")}
        text |= {k: data.get(k) for k in ("bundle", "ttrpc_address", "socket_address")}
        if not all(isinstance(v, str) for v in text.values()):
            raise ValueError("malformed shim spec")
        validate_identifier("namespace", str(text["namespace"]))
        validate_identifier("id", str(text["id"]))
        if not os.path.isabs(str(text["bundle"])):
            raise ValueError(f"bundle {text['bundle']!r} is not absolute")
        flags = Flags(
            namespace=str(text["namespace"]),
            id=str(text["id"]),
            address=str(text["address"]),
            publish_binary=str(text["publish_binary"]),
            bundle=str(text["bundle"]),
            debug=bool(data.get("debug")),
        )
        return cls(
            flags, str(text["bundle"]), str(text["ttrpc_address"]), str(text["socket_address"])
        )


@contextlib.contextmanager
def locked(path: str) -> Iterator[int]:
    """Hold the exclusive ``flock`` of ``path`` (a lock file that is removed when its holder
    is done with it: relock until the file we hold is the one at ``path``)."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                yield fd
                return
        finally:
            os.close(fd)


def _send(sock: socket.socket, message: Mapping[str, Any], fds: tuple[int, ...] = ()) -> None:
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    sock.sendmsg([marshal.dumps(dict(message))], ancillary)


def decode_message(data: bytes) -> dict[str, Any]:
    if not data:
        raise EOFError("closed without a message")
    message = marshal.loads(data)
    if not isinstance(message, dict):
        raise ValueError("malformed message")
    return message


def ask(path: str, message: Mapping[str, Any], fds: tuple[int, ...] = ()) -> dict[str, Any] | None:
    """One request to the shared process at ``path`` (``fds`` passed along); its reply, or
    ``None`` when no process serves ``path`` or it went away unanswered."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC) as sock:
        sock.settimeout(REQUEST_TIMEOUT)
        try:
            sock.connect(path)
            _send(sock, message, fds)
            return decode_message(sock.recv(MAX_MESSAGE))
        except (ConnectionError, FileNotFoundError, EOFError):
            return None  # refused (a killed process's socket), gone, or closed unanswered


def hand_over(manager: Manager, registry: Registry, spec: ShimSpec, sock: socket.socket) -> int:
    """Have the shared process serve ``spec`` on the listening ``sock`` (forking the process
    if there is none); returns its pid."""
    path = control_path(manager.name, spec.flags.address)
    with locked(path + ".lock") as lock_fd:
        reply = ask(path, {"op": "serve", **spec.to_wire()}, (sock.fileno(),))
        if reply is not None:
            if not reply.get("ok"):
                raise SharedError(str(reply.get("error") or "the shared shim process refused"))
            return int(reply["pid"])
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        control = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            control.bind(path)
            os.chmod(path, 0o600)
            control.listen(64)
            return _fork_shared(manager, registry, control, path, spec, sock, lock_fd)
        finally:
            control.close()


def remove_stale_control(runtime: str, containerd: str) -> None:
    """What ``delete`` does in shared mode beyond the runc clean-up (which, as Go's, leaves a
    live shim alone: containerd 1.x runs ``delete`` for every container of a group when its
    connection closes, while the group's shim still serves the others): when the process is
    dead (killed: containerd runs ``delete`` for each of its shims), its control socket and
    lock file go."""
    path = control_path(runtime, containerd)
    if os.path.lexists(path) and ask(path, {"op": "ping"}) is None:
        _remove_stale(path)


def _remove_stale(path: str) -> None:
    """Unless a live process answers at ``path`` by the time we hold the lock (a helper
    forking a new one holds it until the socket is live)."""
    with locked(path + ".lock"):
        if ask(path, {"op": "ping"}) is not None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path + ".lock")


def _fork_shared(
    manager: Manager,
    registry: Registry,
    control: socket.socket,
    path: str,
    spec: ShimSpec,
    sock: socket.socket,
    lock_fd: int,
) -> int:
    """Fork the shared process, already serving ``spec``, for our containerd (our parent:
    containerd execs the helper); the helper keeps the lock (the child's copy is closed)
    until it has let go of the control socket."""
    containerd = Containerd.parent_of(os.getpid())

    def body() -> int:
        from trioshim.shim.shared import run_shared

        first = (spec, sock)
        return run_shared(manager, registry, control, path, first=first, containerd=containerd)

    argv = [program_path() or manager.name, "-address", spec.flags.address]
    try:
        return fork_process(argv, "/", body, close_fds=(lock_fd,))
    finally:
        containerd.close()  # the child's copy of the pidfd is its own
