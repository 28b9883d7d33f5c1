"""The fork server's side of :mod:`trioshim.shim.forkserver` (imported only by the server).

``serve(app, path)`` imports the shim, binds ``path`` (under an exclusive ``flock`` on
``path + ".lock"``, so exactly one server owns a path), and forks one worker per request. A
worker becomes the helper that asked (its stdin/stdout/stderr, cwd, environment, argv as seen
in ``/proc/<pid>/cmdline``, its own process group), runs :func:`trioshim.shim.main.run`, sends
``b"S" + status`` back and exits; the daemon it forks is never the server's child.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import marshal
import os
import select
import signal
import socket
import struct
import sys
import time
from typing import Any, NoReturn

from trioshim.shim.forkserver import (
    _MAX_REQUEST,
    _REQUEST_TIMEOUT,
    _STATUS,
    ENV_IDLE,
    IDLE_TIMEOUT,
    PROTOCOL,
    load_app,
)
from trioshim.shim.manager import Manager
from trioshim.shim.plugin import Registry
from trioshim.ttrpc.server import listen_backlog

__all__ = ["serve"]


def _log(message: str) -> None:
    with contextlib.suppress(OSError):
        os.write(
            2,
            f"{time.strftime('%Y-%m-%dT%H:%M:%S')} forkserver[{os.getpid()}] {message}\n".encode(),
        )


def serve(app: str, path: str, argv0: str = "", *, idle_timeout: float | None = None) -> int:
    """Run a fork server for ``app`` on ``path`` until idle or SIGTERM; returns the status
    (0 too when another server already owns ``path``)."""
    import gc

    from trioshim.shim.main import run as shim_run

    if idle_timeout is None:
        idle_timeout = float(os.environ.get(ENV_IDLE) or IDLE_TIMEOUT)
    manager, registry = load_app(app)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    lock = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(lock)
        _log(f"another server owns {path}")
        return 0
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    os.chmod(path, 0o600)
    listener.listen(listen_backlog())  # a burst of helpers at once must not be refused
    inode = os.stat(path).st_ino

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    gc.collect()
    gc.freeze()
    _log(f"serving {app} on {path}")
    last = time.monotonic()
    try:
        while True:
            _reap_workers()
            left = idle_timeout - (time.monotonic() - last)
            if left <= 0:
                _log("idle, exiting")
                return 0
            ready, _, _ = select.select([listener], [], [], min(left, 5.0))
            if not ready:
                continue
            try:
                conn, _ = listener.accept()
            except OSError as exc:
                if exc.errno in (errno.EINTR, errno.ECONNABORTED, errno.EAGAIN):
                    continue
                raise
            last = time.monotonic()
            with conn:
                peer_pid, peer_uid = _peer(conn)
                if peer_uid != os.getuid():
                    _log(f"refused pid {peer_pid}: uid {peer_uid}")
                    continue
                pid = os.fork()
                if pid == 0:
                    _worker(conn, listener, lock, manager, registry, argv0, shim_run)
                _log(f"worker {pid} for pid {peer_pid}")
    finally:
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == inode:
                os.unlink(path)
        listener.close()
        os.close(lock)


def _peer(conn: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the connected peer (``SO_PEERCRED``)."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _ = struct.unpack("3i", creds)
    return int(pid), int(uid)


def _reap_workers() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _receive(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    conn.settimeout(_REQUEST_TIMEOUT)
    data, fds, _, _ = socket.recv_fds(conn, 65536, 3)
    if len(data) < 4:
        raise ValueError("short request")
    (size,) = struct.unpack("!I", data[:4])
    if size > _MAX_REQUEST:
        raise ValueError("request too large")
    body = data[4:]
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        if not chunk:
            raise ValueError("truncated request")
        body += chunk
    request = marshal.loads(body)
    if request.get("protocol") != PROTOCOL or len(fds) != 3:
        raise ValueError("bad request")
    return request, fds


def _worker(
    conn: socket.socket,
    listener: socket.socket,
    lock: int,
    manager: Manager,
    registry: Registry,
    argv0: str,
    run: Any,
) -> NoReturn:
    """Become the helper that asked, run the action, report the status (never returns)."""
    status = 1
    try:
        listener.close()
        os.close(lock)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        request, fds = _receive(conn)
        conn.settimeout(None)
        # The daemon must not keep the helper's connection (or anything else of ours) open.
        conn_fd = conn.fileno()
        os.register_at_fork(after_in_child=lambda: _close(conn_fd))
        os.setpgid(0, 0)  # like the helper, which containerd puts in its own group
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        for fd in fds:
            if fd > 2:
                os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = [request.get("argv0") or argv0, *request["argv"]]
        _set_cmdline(sys.argv)
        status = run(manager, request["argv"], registry, containerd_pid=int(request["ppid"]))
    except BaseException as exc:
        with contextlib.suppress(BaseException):
            os.write(2, f"trioshim fork server worker: {exc!r}\n".encode())
    finally:
        with contextlib.suppress(BaseException):
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            conn.sendall(_STATUS.pack(b"S", status))
        os._exit(0)


def _set_cmdline(args: list[str]) -> None:
    """Show ``args`` in ``/proc/self/cmdline`` (and ``ps``), like the helper this worker stands
    for, by rewriting the original argv area in place (truncated to its size). The daemon
    forked from here inherits it, so tools that find a shim by ``-id`` keep working."""
    import ctypes

    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        start, end = int(fields[48 - 3]), int(fields[49 - 3])  # arg_start, arg_end
    except (OSError, IndexError, ValueError):
        return
    size = end - start
    if size <= 1:
        return
    data = b"\0".join(a.encode(errors="replace") for a in args)[: size - 1]
    ctypes.memmove(start, data.ljust(size, b"\0"), size)


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
