"""Shared mode: the ``start`` and ``delete`` actions, run inside the shared process.

A start or delete helper of a shared runtime (:mod:`trioshim.shim.sharedlaunch`) asks the
runtime's live shared process to run its action: it sends its argv, environment, cwd, parent
pid and what containerd wrote on its stdin, and gets back the exit status and what to write on
stdout and stderr. The process has everything imported already and serves the new daemon
itself, so a start costs no fork server, no worker and no hand-over between processes; a
delete runs the manager's clean-up with the process's one reaper.

What it cannot stand in for, it declines (:class:`Declined`, before doing anything): the helper
then runs the action itself, the way it always could. Those are an invocation that is not a
plain ``start`` or ``delete`` (``-info``, ``-v``, ``-help``), and a start that asks for a core
scheduling cookie (``SCHED_CORE``), which belongs to the helper's own process group.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from trioshim.shim import address as addr
from trioshim.shim.flags import FlagError, Flags, parse_flags
from trioshim.shim.log import LOG_NAME, LogrusFormatter, StreamHandler
from trioshim.shim.main import action_flags, delete_bundle
from trioshim.shim.manager import StopContext
from trioshim.shim.startplan import adjust_oom_score, bind_socket, plan_start

if TYPE_CHECKING:
    from trioshim.shim.shared import SharedShims

__all__ = ["ACTIONS", "ActionRequest", "Declined", "run_action"]

ACTIONS = ("start", "delete")
_SCHED_CORE_ENV = "SCHED_CORE"


class Declined(Exception):
    """The helper must run this action itself (nothing was done here)."""


@dataclass(frozen=True)
class ActionRequest:
    """One helper's invocation, as it sent it."""

    argv: list[str]
    env: dict[str, str]
    cwd: str
    ppid: int
    stdin: bytes

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> ActionRequest:
        argv, env, cwd = data.get("argv"), data.get("env"), data.get("cwd")
        ppid, stdin = data.get("ppid"), data.get("stdin")
        if (
            not isinstance(argv, list)
            or not all(isinstance(a, str) for a in argv)
            or not isinstance(env, dict)
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
            or not isinstance(cwd, str)
            or not os.path.isabs(cwd)
            or not isinstance(ppid, int)
            or not isinstance(stdin, bytes)
        ):
            raise ValueError("malformed action request")
        return cls(argv, env, cwd, ppid, stdin)


@dataclass
class _Output:
    status: int = 0
    stdout: bytes = b""
    stderr: io.BytesIO | None = None

    def wire(self) -> dict[str, object]:
        err = self.stderr.getvalue() if self.stderr is not None else b""
        return {"ok": True, "status": self.status, "stdout": self.stdout, "stderr": err}


def _flags(request: ActionRequest) -> Flags:
    """The invocation's flags, its bundle made absolute against the helper's cwd."""
    try:
        flags = parse_flags(request.argv)
    except FlagError as exc:
        raise Declined(str(exc)) from exc  # the helper prints usage and the status itself
    if flags.help or flags.version or flags.info or flags.action not in ACTIONS:
        raise Declined(f"not a plain start or delete: {request.argv!r}")
    if flags.action == "start" and request.env.get(_SCHED_CORE_ENV):
        raise Declined("a core scheduling cookie is the helper's own")
    flags = action_flags(flags, request.env)
    return replace(flags, bundle=os.path.join(request.cwd, flags.bundle or request.cwd))


async def run_action(shims: SharedShims, request: ActionRequest) -> dict[str, object]:
    """Run the helper's action here; the reply carries its status and output."""
    out = _Output()
    try:
        flags = _flags(request)
        if flags.action == "start":
            out.stdout = await _start(shims, flags, request)
        else:
            out.stderr = io.BytesIO()
            out.stdout = await _delete(shims, flags, out.stderr)
    except Declined:
        raise
    except Exception as exc:  # what the helper's own run() does with a failed action
        out.status = 1
        message = f"{shims.manager.name}: {exc}\n".encode()
        out.stderr = out.stderr or io.BytesIO()
        out.stderr.write(message)
    return out.wire()


async def _start(shims: SharedShims, flags: Flags, request: ActionRequest) -> bytes:
    manager = shims.manager
    plan = plan_start(manager, flags, request.stdin, request.env, request.ppid)
    sock = bind_socket(plan.address)
    if sock is None:  # a live daemon serves that address already (a group's next container)
        addr.write_address(plan.address_file, plan.address)
        return plan.reply
    try:
        addr.write_address(plan.address_file, plan.address)
        adjust_oom_score(os.getpid(), request.ppid)
    except BaseException:
        sock.close()
        _undo_start(plan.address, plan.address_file)
        raise
    # From here the socket is the daemon's; a daemon whose start fails removes its socket.
    try:
        status = await shims.add(plan.spec(), sock)
    except Exception:  # refused before any daemon took the socket
        _undo_start(plan.address, plan.address_file)
        raise
    if status is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(plan.address_file)
        raise RuntimeError(f"shim {flags.id} failed to start (see its log)")
    return plan.reply


def _undo_start(address: str, address_file: str) -> None:
    addr.remove_socket(address)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(address_file)


async def _delete(shims: SharedShims, flags: Flags, stderr: io.BytesIO) -> bytes:
    from trioshim.shim.shared import current_log

    log = logging.Logger(LOG_NAME + ".delete")  # not registered: gone with this request
    log.propagate = False
    log.setLevel(logging.DEBUG if flags.debug else logging.INFO)
    handler = StreamHandler(stderr)
    handler.setFormatter(LogrusFormatter({"runtime": shims.manager.name}))
    log.addHandler(handler)
    ctx = StopContext(flags, flags.bundle, shims.reaper, log)
    with current_log(log):
        return await delete_bundle(shims.manager, ctx)
