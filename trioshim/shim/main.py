"""The entry point: ``run(manager, argv, registry) -> int`` and the three processes.

- ``start`` (synchronous, no Trio): read the options on stdin, compute the grouping key and
  the address, bind the socket (reuse a live one, replace a stale one), write the ``address``
  file, **fork** the daemon (imports are already paid: no second interpreter start-up on the
  critical path; ``gc.freeze()`` first so the daemon shares pages copy-on-write), move it to
  its own process group with stdio on ``/dev/null`` (containerd waits for EOF on the helper's
  output) and its argv in the shape of Go's daemon (``<shim> -namespace N -id ID -address A
  [-debug]``, rewritten in place: :mod:`trioshim.shim.cmdline`), set its OOM score to
  containerd's + 1, print the address and nothing else. A fork server's worker (a fresh
  process that exits once it has reported) passes a ``fork`` that defers instead, and then
  becomes the daemon itself: one fork less on containerd's critical path.
- ``delete``: the manager's :meth:`~trioshim.shim.manager.Manager.stop_at_once`, else (it had
  something to run or wait for) its :meth:`~trioshim.shim.manager.Manager.stop` in
  ``trio.run`` with a reaper; then the raw ``DeleteResponse`` on stdout; removes a socket a
  dead daemon leaked.
- no action: the daemon, on fd 3 or ``-socket`` (the forked daemon gets its socket directly).
- ``-info``: ``RuntimeInfo`` on stdout; ``-v``: version text.

Nothing here calls ``sys.exit``; :func:`main` (the console-script entry) is the only place.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import signal
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import BinaryIO, NoReturn

import trio
from google.protobuf import timestamp_pb2

from trioshim.api.containerd.runtime.task.v2 import shim_pb2
from trioshim.shim import address as addr
from trioshim.shim.cmdline import daemon_argv, program_path
from trioshim.shim.daemon import DaemonConfig, serve_daemon
from trioshim.shim.flags import (
    USAGE,
    FlagError,
    Flags,
    parse_flags,
    validate_bundle_flag,
    validate_identifier,
)
from trioshim.shim.forking import Fork, fork_process
from trioshim.shim.log import open_log_fifo, setup_logger
from trioshim.shim.manager import Manager, StopContext, StopStatus, answer_at_once
from trioshim.shim.plugin import Registry, default_registry
from trioshim.shim.reaper import open_reaper, set_child_subreaper
from trioshim.shim.sharedclient import hand_over, remove_stale_control
from trioshim.shim.startplan import (
    StartError,
    StartPlan,
    adjust_oom_score,
    bind_socket,
    plan_start,
    sched_core_create,
    ttrpc_address_of,
)

__all__ = [
    "StartError",
    "StartPlan",
    "action_flags",
    "adjust_oom_score",
    "bind_socket",
    "daemon_main",
    "delete_bundle",
    "delete_response",
    "main",
    "plan_start",
    "run",
]

_SCHED_CORE_ENV = "SCHED_CORE"
_DELETE_LOG = "trioshim.delete"


@dataclass(frozen=True)
class _IO:
    stdin: BinaryIO
    stdout: BinaryIO
    stderr: BinaryIO


def run(
    manager: Manager,
    argv: Sequence[str] | None = None,
    registry: Registry | None = None,
    *,
    stdin: BinaryIO | None = None,
    stdout: BinaryIO | None = None,
    stderr: BinaryIO | None = None,
    environ: Mapping[str, str] | None = None,
    containerd_pid: int | None = None,
    fork: Fork = fork_process,
) -> int:
    """Run the shim action ``argv`` (default ``sys.argv[1:]``) and return the exit status.

    ``registry`` holds the daemon's plugins (default :data:`default_registry`). The streams
    and ``environ`` default to the process's; tests pass their own. ``containerd_pid`` is the
    process whose OOM score the daemon's is based on (default: our parent, as containerd
    execs the helper; the fork server passes the helper's parent). ``fork`` makes the daemon
    in ``start``; one that returns this process's own pid promises that this process becomes
    the daemon once ``run`` returns 0 (the listener then stays open here).
    """
    io = _IO(
        stdin or sys.stdin.buffer,
        stdout or sys.stdout.buffer,
        stderr or sys.stderr.buffer,
    )
    env = os.environ if environ is None else environ
    registry = default_registry if registry is None else registry
    try:
        flags = parse_flags(sys.argv[1:] if argv is None else argv)
    except FlagError as exc:
        _say(io.stderr, f"{exc}\n" + (USAGE if exc.usage else ""))
        return 2 if exc.usage else 1
    if flags.help:
        _say(io.stderr, USAGE)
        return 0
    if flags.version:
        _say(
            io.stdout,
            f"{sys.argv[0] if sys.argv else manager.name}:\n"
            f"  Version:  {manager.version}\n"
            f"  Revision: {manager.revision}\n"
            f"  Python version: {platform.python_version()}\n\n",
        )
        return 0
    try:
        if flags.info:
            return _info(manager, io)
        flags = action_flags(flags, env)
        if flags.action == "start":
            return _start(manager, flags, registry, io, env, containerd_pid or os.getppid(), fork)
        if flags.action == "delete":
            return _delete(manager, flags, io)
        if flags.action == "":
            return daemon_main(manager, flags, registry, ttrpc_address=ttrpc_address_of(flags, env))
        raise FlagError(f"unknown action {flags.action!r} (start, delete, or none for the daemon)")
    except Exception as exc:
        _say(io.stderr, f"{manager.name}: {exc}\n")
        return 1


def main(manager: Manager, registry: Registry | None = None) -> NoReturn:
    """Console-script entry: ``sys.exit(run(manager, registry=registry))``."""
    sys.exit(run(manager, registry=registry))


def _say(stream: BinaryIO, text: str) -> None:
    _write(stream, text.encode())


def _write(stream: BinaryIO, data: bytes) -> None:
    with contextlib.suppress(OSError, ValueError):
        stream.write(data)
        stream.flush()


def _flags_from_env(flags: Flags, env: Mapping[str, str]) -> Flags:
    """1.7+ also pass ``-namespace`` and ``-address`` as ``NAMESPACE`` and ``GRPC_ADDRESS``:
    the flags win, the variables fill in a flag that is missing."""
    namespace = flags.namespace or env.get("NAMESPACE", "")
    address = flags.address or env.get("GRPC_ADDRESS", "").removeprefix("unix://")
    if (namespace, address) == (flags.namespace, flags.address):
        return flags
    return dataclasses.replace(flags, namespace=namespace, address=address)


def action_flags(flags: Flags, env: Mapping[str, str]) -> Flags:
    """The flags of a ``start``/``delete``/daemon invocation, completed from ``env`` and
    checked (ValueError/FlagError on bad input)."""
    flags = _flags_from_env(flags, env)
    validate_identifier("namespace", flags.namespace)
    validate_identifier("id", flags.id)
    validate_bundle_flag(flags)
    return flags


# ---------------------------------------------------------------------------------------------
# -info


def _info(manager: Manager, io: _IO) -> int:
    data = io.stdin.read()
    info = manager.info(data)
    io.stdout.write(info.SerializeToString())
    io.stdout.flush()
    return 0


# ---------------------------------------------------------------------------------------------
# start


def _start(
    manager: Manager,
    flags: Flags,
    registry: Registry,
    io: _IO,
    env: Mapping[str, str],
    containerd_pid: int,
    fork: Fork,
) -> int:
    plan = plan_start(manager, flags, io.stdin.read(), env, containerd_pid)
    ctx, address, address_file, reply = plan.ctx, plan.address, plan.address_file, plan.reply
    flags, bundle, ttrpc_address = ctx.flags, ctx.bundle, ctx.ttrpc_address

    sock = bind_socket(address)
    if sock is None:
        addr.write_address(address_file, address)
        _write(io.stdout, reply)
        return 0

    pid = 0
    in_place = False  # this process becomes the daemon (see run's fork)
    try:
        addr.write_address(address_file, address)
        if env.get(_SCHED_CORE_ENV):
            sched_core_create()
        if manager.shared:
            # Served by the runtime's shared process: its placement is that of the start
            # that forked it (no per-daemon shim cgroup), and it is never ours to kill.
            shared_pid = hand_over(manager, registry, plan.spec(), sock)
            sock.close()
            adjust_oom_score(shared_pid, containerd_pid)
        else:
            pid = _fork_daemon(manager, flags, registry, sock, address, bundle, ttrpc_address, fork)
            in_place = pid == os.getpid()
            if not in_place:
                sock.close()
            manager.after_spawn(ctx, pid)
            adjust_oom_score(pid, containerd_pid)
    except BaseException:
        sock.close()
        addr.remove_socket(address)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(address_file)
        if pid and not in_place:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        raise
    _write(io.stdout, reply)
    return 0


def _fork_daemon(
    manager: Manager,
    flags: Flags,
    registry: Registry,
    sock: socket.socket,
    address: str,
    bundle: str,
    ttrpc_address: str,
    fork: Fork,
) -> int:
    """Fork the daemon (no exec). The child never returns into the caller."""
    # ps, monitoring and leak checks tell a daemon from a `start` helper by its argv: the
    # shape Go's daemon is exec'd with, no action word.
    argv = daemon_argv(
        program_path() or manager.name,
        namespace=flags.namespace,
        id=flags.id,
        address=flags.address,
        debug=flags.debug,
    )

    def body() -> int:
        return daemon_main(
            manager,
            flags,
            registry,
            ttrpc_address=ttrpc_address,
            listener=sock,
            socket_address=address,
            bundle=bundle,
        )

    return fork(argv, bundle, body)


# ---------------------------------------------------------------------------------------------
# the daemon


def daemon_main(
    manager: Manager,
    flags: Flags,
    registry: Registry,
    *,
    ttrpc_address: str,
    listener: socket.socket | None = None,
    socket_address: str | None = None,
    bundle: str | None = None,
    subreaper: bool = True,
) -> int:
    """Set up the process (log FIFO as fd 2, subreaper, SIGPIPE ignored) and ``trio.run``
    the daemon. Returns its exit status."""
    bundle = os.path.abspath(bundle or flags.bundle or os.getcwd())
    log_fd = open_log_fifo(os.path.join(bundle, "log"))
    log = setup_logger(log_fd, debug=flags.debug, static={"runtime": manager.name})
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    if subreaper:
        set_child_subreaper()
    config = DaemonConfig(
        flags=flags,
        manager=manager,
        registry=registry,
        bundle=bundle,
        ttrpc_address=ttrpc_address,
        log=log,
        listener=listener,
        socket_address=socket_address,
        abandon_timeout=manager.abandon_timeout,
    )
    return trio.run(serve_daemon, config)


# ---------------------------------------------------------------------------------------------
# delete


def _delete(manager: Manager, flags: Flags, io: _IO) -> int:
    bundle = os.path.abspath(flags.bundle or os.getcwd())
    log = setup_logger(
        stream=io.stderr, debug=flags.debug, static={"runtime": manager.name}, name=_DELETE_LOG
    )

    if manager.shared:
        remove_stale_control(manager.name, flags.address)

    status = answer_at_once(manager, flags, bundle, log)
    if status is not None:
        response = delete_response(status, bundle)
    else:

        async def stop() -> bytes:
            # SIGTERM/SIGINT are held (ignored) while cleaning up, like the Go library.
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT):
                async with open_reaper() as reaper:
                    ctx = StopContext(flags, bundle, reaper, log)
                    return delete_response(await manager.stop(ctx), bundle)

        response = trio.run(stop)
    io.stdout.write(response)
    io.stdout.flush()
    return 0


async def delete_bundle(manager: Manager, ctx: StopContext) -> bytes:
    """The delete action's work in a running event loop (shared mode's process):
    :meth:`Manager.stop_at_once`, else :meth:`Manager.stop`; see :func:`delete_response`."""
    status = answer_at_once(manager, ctx.flags, ctx.bundle, ctx.log)
    if status is None:
        status = await manager.stop(ctx)
    return delete_response(status, ctx.bundle)


def delete_response(status: StopStatus, bundle: str) -> bytes:
    """After the manager's clean-up: remove a socket a dead daemon leaked; the
    ``DeleteResponse`` for containerd."""
    _remove_leaked_socket(bundle)
    ns = status.exited_at_ns
    response = shim_pb2.DeleteResponse(
        pid=status.pid,
        exit_status=status.exit_status,
        exited_at=timestamp_pb2.Timestamp(seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000),
    )
    return response.SerializeToString()


def _remove_leaked_socket(bundle: str) -> None:
    """The socket named in ``address`` if nothing serves it any more (a SIGKILLed daemon)."""
    try:
        address = addr.read_address(os.path.join(bundle, "address"))
    except (OSError, ValueError):
        return
    with contextlib.suppress(OSError, ValueError):
        path = addr.socket_path(address)
        if os.path.exists(path) and not addr.can_connect(address):
            addr.remove_socket(address)
