"""What a ``start`` works out before it binds anything: the options containerd sent on stdin
(an ``Any``, or 2.3's ``BootstrapParams``), the daemon's grouping key, socket address and the
reply to print; then binding that address (reusing a live daemon's) and the daemon's OOM
score. Shared by the start helper (:mod:`trioshim.shim.main`) and the shared process, which
runs starts in-process (:mod:`trioshim.shim.sharedactions`)."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from google.protobuf import any_pb2
from google.protobuf.message import DecodeError

from trioshim.api.containerd.runtime.bootstrap.v1 import bootstrap_pb2
from trioshim.shim import address as addr
from trioshim.shim.flags import Flags
from trioshim.shim.manager import Manager, StartContext
from trioshim.shim.peer import start_reply
from trioshim.shim.sharedclient import ShimSpec

__all__ = [
    "StartError",
    "StartPlan",
    "adjust_oom_score",
    "bind_socket",
    "parse_stdin",
    "plan_start",
    "sched_core_create",
    "ttrpc_address_of",
]

_BOOTSTRAP_PREFIX = "type.googleapis.com/"


class StartError(Exception):
    """The start action failed (message goes to containerd through the combined output)."""


def ttrpc_address_of(flags: Flags, env: Mapping[str, str]) -> str:
    value = env.get("TTRPC_ADDRESS") or (flags.address + ".ttrpc" if flags.address else "")
    return value.removeprefix("unix://")


def parse_stdin(
    data: bytes, flags: Flags
) -> tuple[any_pb2.Any | None, bootstrap_pb2.BootstrapParams | None]:
    """Options ``Any`` (pre-2.3) or ``BootstrapParams`` (2.3+; told apart by its instance id
    and namespace matching our flags: containerd 2.3 sends it, earlier lines an ``Any``)."""
    if not data:
        return None, None
    params = bootstrap_pb2.BootstrapParams()
    with contextlib.suppress(DecodeError):
        params.ParseFromString(data)
        if params.instance_id == flags.id and params.namespace == flags.namespace:
            options = next(
                (
                    ext.value
                    for ext in params.extensions
                    if not ext.value.type_url.startswith(_BOOTSTRAP_PREFIX)
                ),
                None,
            )
            return options, params
    options = any_pb2.Any()
    try:
        options.ParseFromString(data)
    except DecodeError as exc:
        raise StartError(f"unreadable options on stdin ({len(data)} bytes): {exc}") from exc
    if not options.type_url:
        raise StartError(f"unreadable options on stdin ({len(data)} bytes): no type URL")
    return options, None


def adjust_oom_score(pid: int, containerd_pid: int) -> None:
    """Daemon's ``oom_score_adj`` = containerd's + 1 (clamped); permission errors ignored."""
    try:
        with open(f"/proc/{containerd_pid}/oom_score_adj") as f:
            score = int(f.read().strip())
        value = max(-1000, min(1000, score + 1))
        with open(f"/proc/{pid}/oom_score_adj", "w") as f:
            f.write(str(value))
    except PermissionError:
        return
    except OSError as exc:
        if exc.errno in (errno.EPERM, errno.EACCES, errno.EROFS):
            return
        raise StartError(f"failed to adjust OOM score for shim: {exc}") from exc


def sched_core_create() -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)  # the interpreter's libc; no ldconfig child
    # PR_SCHED_CORE=62, PR_SCHED_CORE_CREATE=1, pid 0, PIDTYPE_PGID=2
    if libc.prctl(62, 1, 0, 2, 0) != 0:
        err = ctypes.get_errno()
        raise StartError(f"enable sched core support: {os.strerror(err)}")


def bind_socket(address: str) -> socket.socket | None:
    """Bind the address; ``None`` when a live daemon already serves it (reuse)."""
    try:
        return addr.new_socket(address)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise StartError(f"create new shim socket: {exc}") from exc
    if addr.can_connect(address):
        return None
    addr.remove_socket(address)
    try:
        return addr.new_socket(address)
    except OSError as exc:
        raise StartError(f"try create new shim socket 2x: {exc}") from exc


@dataclass(frozen=True)
class StartPlan:
    """What a start computes before it binds: the daemon's identity, its address, the reply."""

    ctx: StartContext
    address: str
    reply: bytes

    @property
    def address_file(self) -> str:
        return os.path.join(self.ctx.bundle, "address")

    def spec(self) -> ShimSpec:
        ctx = self.ctx
        return ShimSpec(ctx.flags, ctx.bundle, ctx.ttrpc_address, self.address)


def plan_start(
    manager: Manager, flags: Flags, stdin: bytes, env: Mapping[str, str], containerd_pid: int
) -> StartPlan:
    """Read the options (``stdin``), compute the grouping key, address and reply."""
    bundle = os.path.abspath(flags.bundle or os.getcwd())
    options, bootstrap = parse_stdin(stdin, flags)
    ttrpc_address = ttrpc_address_of(flags, env)
    debug = flags.debug
    if bootstrap is not None:
        if bootstrap.containerd_ttrpc_address:
            ttrpc_address = bootstrap.containerd_ttrpc_address.removeprefix("unix://")
        debug = debug or bootstrap.log_level <= bootstrap_pb2.LOG_LEVEL_DEBUG
    if debug != flags.debug:
        flags = dataclasses.replace(flags, debug=debug)
    ctx = StartContext(
        flags=flags,
        bundle=bundle,
        ttrpc_address=ttrpc_address,
        options=options,
        bootstrap=bootstrap,
    )
    key = manager.grouping_key(ctx)
    socket_dir = manager.socket_dir_in(env)
    if bootstrap is not None and bootstrap.HasField("socket_dir") and bootstrap.socket_dir:
        socket_dir = bootstrap.socket_dir
    address = addr.socket_address(flags.address, flags.namespace, key, socket_dir=socket_dir)
    # The address file keeps the plain address whatever the reply: 1.6/1.7 read it verbatim
    # on restart, 2.x reads the bootstrap.json it wrote from the reply.
    reply = start_reply(
        address,
        max_task_api=manager.max_task_api,
        environ=env,
        publish_binary=flags.publish_binary,
        containerd_pid=containerd_pid,
        bootstrap=bootstrap is not None,
    )
    return StartPlan(ctx, address, reply)
