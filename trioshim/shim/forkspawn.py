"""Starting a fork server (:mod:`trioshim.shim.forkserver`): what a helper that found none does
after it ran its action itself (the cold path, which has imported the full shim anyway).

The server is spawned detached (its own session, stdio on ``/dev/null`` or
``$TRIOSHIM_FORKSERVER_LOG``), without the environment containerd sets for one invocation, with
room in its argv for the workers' and daemons' command lines, and with a pidfd on its
containerd (the helper's parent) as fd :data:`PIDFD_FD` where the kernel has pidfds.
"""

import os
import signal
import sys

from trioshim.shim.forkserver import ENV_LOG

__all__ = ["PIDFD_FD", "spawn_server"]

PIDFD_FD = 3  # where the server finds the pidfd of its containerd, when the helper has one
# Set by containerd for one shim invocation; never part of the server's own.
_PER_CALL_ENV = frozenset(
    ("TTRPC_ADDRESS", "GRPC_ADDRESS", "NAMESPACE", "MAX_SHIM_VERSION", "SCHED_CORE", "GOMAXPROCS")
)
_CMDLINE_ROOM = 2048  # bytes of blank argv the server starts with (see spawn_server)


def spawn_server(app: str, path: str) -> None:
    """Start a fork server for ``app`` on ``path`` in the background, detached from us and
    from containerd's pipe."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    log = os.environ.get(ENV_LOG) or os.devnull
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
    # The server lives as long as our containerd (our parent): a pidfd on it, handed over as
    # fd 3, where the kernel has them (no pid-reuse race); else the server polls the pid.
    containerd = os.getppid()
    try:
        pidfd = os.pidfd_open(containerd)
    except (AttributeError, OSError):
        pidfd = -1
    argv = [sys.executable, "-m", "trioshim.shim.forkserver", "serve", app, path]
    argv += [sys.argv[0] if sys.argv else "", str(containerd), "1" if pidfd >= 0 else "0"]
    # Room in the argv area: a worker rewrites it in place with the helper's argv (truncated
    # to its size), and containerd 1.7/2.x's `start` argv (long -publish-binary and -address
    # paths, a 64-char pod id) must fit whole, `-id` included, in /proc/<daemon>/cmdline.
    argv.append(" " * _CMDLINE_ROOM)
    # The server serves every containerd of this uid: it must not carry the environment of the
    # one whose start happened to spawn it (workers take each request's own environment).
    env = {k: v for k, v in os.environ.items() if k not in _PER_CALL_ENV}
    actions: list[tuple[object, ...]] = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, log, flags, 0o600),
        (os.POSIX_SPAWN_OPEN, 2, log, flags, 0o600),
    ]
    if pidfd >= 0:
        # Inheritable: a dup2 onto itself (pidfd == 3) would keep its close-on-exec flag.
        os.set_inheritable(pidfd, True)
        actions.append((os.POSIX_SPAWN_DUP2, pidfd, PIDFD_FD))
    try:
        os.posix_spawn(
            sys.executable,
            argv,
            env,
            file_actions=actions,
            setsid=True,
            setsigdef=(signal.SIGPIPE,),  # CPython ignores it; the server's children want it
        )
    finally:
        if pidfd >= 0:
            os.close(pidfd)
