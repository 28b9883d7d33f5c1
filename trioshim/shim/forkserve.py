"""The fork server's side of :mod:`trioshim.shim.forkserver` (imported only by the server).

``serve(app, path, argv0, containerd_pid=...)`` imports the shim, binds ``path`` (under an
exclusive ``flock`` on ``path + ".lock"``, so exactly one server owns a path), and forks one
worker per request until its containerd exits, it idles out, or SIGTERM; then it removes the
socket and the lock file. A worker puts itself where the helper that asked is
(:mod:`trioshim.shim.placement`; if it cannot, it answers ``b"L"`` and the helper runs the
action itself), becomes that helper (its stdin/stdout/stderr, cwd, environment, argv as seen
in ``/proc/<pid>/cmdline``, its own process group), runs :func:`trioshim.shim.main.run` and
sends ``b"S" + status`` back. After a ``start`` that made a daemon, the worker then becomes
that daemon itself (one fork of a server-sized process less before the address is printed,
and the helper's output ends as soon as the status is sent); after anything else it exits.
A daemon is therefore the server's child: the server reaps it (``SIGCHLD`` wakes its loop),
and when the server goes the daemon is re-parented like any orphan and goes on serving.
"""

from __future__ import annotations

import contextlib
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

from trioshim.shim.cmdline import prime as prime_cmdline
from trioshim.shim.cmdline import set_cmdline
from trioshim.shim.forking import DeferredDaemon, close_in_next_child, detach_stdio
from trioshim.shim.forkserver import (
    _MAX_REQUEST,
    _REQUEST_TIMEOUT,
    ENV_IDLE,
    IDLE_TIMEOUT,
    PROTOCOL,
    load_app,
    status_message,
)
from trioshim.shim.manager import Manager
from trioshim.shim.placement import Placement, PlacementError
from trioshim.shim.plugin import Registry
from trioshim.shim.procstat import running_since
from trioshim.ttrpc.server import listen_backlog

__all__ = ["serve"]

_STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})

# Without a pidfd the server looks at its containerd this often (it must be gone within a
# second of containerd).
_POLL_INTERVAL = 0.25


def _log(message: str) -> None:
    with contextlib.suppress(OSError):
        os.write(
            2,
            f"{time.strftime('%Y-%m-%dT%H:%M:%S')} forkserver[{os.getpid()}] {message}\n".encode(),
        )


class _Containerd:
    """The containerd a server serves (pid 0: none): gone once its pidfd is readable or,
    without one, once its pid is a zombie, gone, or names another process (its start time)."""

    def __init__(self, pid: int, pidfd: int | None) -> None:
        self.pid = pid
        self.pidfd = pidfd
        self._start_time = running_since(pid) if pidfd is None and pid > 0 else None

    def fds(self) -> list[int]:
        return [] if self.pidfd is None else [self.pidfd]

    def poll_interval(self) -> float | None:
        return _POLL_INTERVAL if self.pidfd is None and self.pid > 0 else None

    def gone(self, readable: list[int]) -> bool:
        if self.pidfd is not None:
            return self.pidfd in readable
        if self.pid <= 0:
            return False
        now = running_since(self.pid)
        return now is None or now != self._start_time


def _lock(path: str) -> int | None:
    """Own ``path + ".lock"``; ``None`` when another server does. A lock file its owner
    removed on the way out (we opened it just before) is not a lock: open the new one."""
    lock_path = path + ".lock"
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None
        mine = os.fstat(fd)
        with contextlib.suppress(FileNotFoundError):
            named = os.stat(lock_path)
            if (named.st_dev, named.st_ino) == (mine.st_dev, mine.st_ino):
                return fd
        os.close(fd)


def serve(
    app: str,
    path: str,
    argv0: str = "",
    *,
    containerd_pid: int = 0,
    containerd_pidfd: int | None = None,
    idle_timeout: float | None = None,
) -> int:
    """Run a fork server for ``app`` on ``path`` until its containerd (``containerd_pidfd``,
    else ``containerd_pid`` polled; 0: none) exits, it is idle or SIGTERM; returns the status
    (0 too when another server already owns ``path``)."""
    from trioshim.shim.main import run as shim_run
    from trioshim.shim.prefork import prepare_heap

    if idle_timeout is None:
        idle_timeout = float(os.environ.get(ENV_IDLE) or IDLE_TIMEOUT)
    containerd = _Containerd(containerd_pid, containerd_pidfd)
    manager, registry = load_app(app)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    lock = _lock(path)
    if lock is None:
        if containerd_pidfd is not None:
            _close(containerd_pidfd)
        _log(f"another server owns {path}")
        return 0
    listener: socket.socket | None = None
    inode = None
    wake_fds: list[int] = []  # the SIGCHLD wake-up pipe (read end first)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        os.chmod(path, 0o600)
        listener.listen(listen_backlog())  # a burst of helpers at once must not be refused
        listener.setblocking(False)  # select says when; accept never waits (see _accept)
        inode = os.stat(path).st_ino

        def stop(signum: int, frame: Any) -> None:
            raise SystemExit(0)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        prime_cmdline()  # for the workers' and daemons' set_cmdline (before the heap is frozen)
        problem = prepare_heap(manager, registry)  # see prefork.py
        if problem:
            _log(f"heap preparation incomplete (daemons will take more memory): {problem}")
        # Daemons are our children (workers become them): reap them as they exit, not at the
        # next request or timeout. The handler does nothing; the wake-up fd ends the select.
        # Set after the warm-up, whose trio.run sets (and restores) a wake-up fd of its own.
        wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        wake_fds.extend((wake_read, wake_write))
        signal.set_wakeup_fd(wake_write)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        _log(f"serving {app} on {path} for containerd {containerd_pid}")

        def fork_worker(conn: socket.socket) -> None:
            assert listener is not None and lock is not None
            with conn:
                peer_pid, peer_uid = _peer(conn)
                if peer_uid != os.getuid():
                    _log(f"refused pid {peer_pid}: uid {peer_uid}")
                    return
                # Logged before the fork: the worker may finish the helper's action before
                # this process runs again, and the log must already say who served it.
                _log(f"worker for pid {peer_pid}")
                # SIGTERM/SIGINT stay blocked until the worker has its own handlers: the
                # server's would run its clean-up in the worker (removing the live socket).
                mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
                try:
                    pid = os.fork()
                except OSError as exc:  # EAGAIN under a pids limit, ENOMEM: nothing ran
                    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
                    _decline(conn, f"cannot fork a worker for pid {peer_pid}: {exc}")
                    return
                if pid == 0:
                    fds = (listener.fileno(), lock, *containerd.fds(), *wake_fds)
                    _worker(conn, fds, manager, registry, argv0, shim_run, mask)
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)

        last = time.monotonic()
        while True:
            _reap_children()
            left = idle_timeout - (time.monotonic() - last)
            if left <= 0:
                _log("idle, exiting")
                break
            timeout = min(left, containerd.poll_interval() or 5.0)
            waited = [listener.fileno(), *containerd.fds(), *wake_fds[:1]]
            ready, _, _ = select.select(waited, [], [], timeout)
            if wake_fds and wake_fds[0] in ready:
                _drain(wake_fds[0])
            if containerd.gone(ready):
                _log(f"containerd {containerd_pid} exited, exiting")
                break
            if listener.fileno() in ready and (conn := _accept(listener)) is not None:
                last = time.monotonic()
                fork_worker(conn)
        # Helpers that connected before we decided to go are served, not dropped: the socket
        # goes first, so no more can arrive, then whatever is queued is taken.
        _unlink_socket(path, inode)
        while (conn := _accept(listener)) is not None:
            fork_worker(conn)
        return 0
    finally:
        # Socket first, lock file last, while we still hold the lock (see _lock).
        _unlink_socket(path, inode)
        if listener is not None:
            listener.close()
        with contextlib.suppress(OSError):
            os.unlink(path + ".lock")
        os.close(lock)
        if containerd_pidfd is not None:
            _close(containerd_pidfd)
        if wake_fds:
            signal.set_wakeup_fd(-1)
            for fd in wake_fds:
                _close(fd)


def _drain(fd: int) -> None:
    with contextlib.suppress(OSError):
        while os.read(fd, 4096):
            pass


def _unlink_socket(path: str, inode: int | None) -> None:
    """Remove our socket (not one a newer server bound at the same path)."""
    with contextlib.suppress(OSError):
        if inode is not None and os.stat(path).st_ino == inode:
            os.unlink(path)


def _accept(listener: socket.socket) -> socket.socket | None:
    """A queued connection from the (non-blocking) listener, ``None`` when none is left."""
    while True:
        try:
            conn, _ = listener.accept()
        except (InterruptedError, ConnectionAbortedError):
            continue  # that one went away: the next one, if any
        except BlockingIOError:
            return None
        conn.setblocking(True)
        return conn


def _peer(conn: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the connected peer (``SO_PEERCRED``)."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _ = struct.unpack("3i", creds)
    return int(pid), int(uid)


def _reap_children() -> None:
    """Workers that exited, and daemons (workers that became one) that did."""
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
    server_fds: tuple[int, ...],
    manager: Manager,
    registry: Registry,
    argv0: str,
    run: Any,
    mask: set[int | signal.Signals],
) -> NoReturn:
    """Become the helper that asked, run the action, report the status (never returns).
    ``mask`` is the signal mask to restore once the server's handlers are replaced."""
    status = 1
    daemon = DeferredDaemon()
    try:
        for fd in server_fds:
            _close(fd)
        signal.set_wakeup_fd(-1)  # the daemon's Trio sets its own
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        request, fds = _receive(conn)
        conn.settimeout(None)
        try:
            Placement.from_request(request.get("placement")).apply()
        except PlacementError as exc:
            _log(f"worker for pid {_peer(conn)[0]}: {exc}; the helper runs it itself")
            _exit(conn, b"L", 0)
        # A daemon forked from here (shared mode's process) must not keep the helper's
        # connection (or anything else of ours) open.
        closing = close_in_next_child(conn.fileno())
        os.setpgid(0, 0)  # like the helper, which containerd puts in its own group
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        for fd in fds:
            if fd > 2:
                os.close(fd)
        os.chdir(request["cwd"])
        _take_environment(request["env"])
        sys.argv = [request.get("argv0") or argv0, *request["argv"]]
        # Like the helper this worker stands for (the daemon forked from here rewrites it to
        # its own argv); room left for that, so no exact trim.
        set_cmdline(sys.argv)
        status = run(
            manager,
            request["argv"],
            registry,
            containerd_pid=int(request["ppid"]),
            fork=daemon,
        )
    except BaseException as exc:
        with contextlib.suppress(BaseException):
            os.write(2, f"trioshim fork server worker: {exc!r}\n".encode())
    if status != 0 or daemon.pending is None:
        _exit(conn, b"S", status)
    _report(conn, b"S", status)
    closing.clear()  # nothing was forked; the daemon's own children must keep that number
    conn.close()
    daemon.become()


def _take_environment(env: dict[str, str]) -> None:
    """Make ``os.environ`` the helper's ``env``, changing only what differs from ours (each
    change is a ``putenv``/``unsetenv``; a helper's environment is mostly the server's)."""
    for key in [key for key in os.environ if key not in env]:
        del os.environ[key]
    for key, value in env.items():
        if os.environ.get(key) != value:
            os.environ[key] = value


def _decline(conn: socket.socket, why: str) -> None:
    """Tell the helper that nothing ran and it must run the action itself. Its request is
    read first (and its descriptors closed): closing a unix socket with unread data would
    reset the helper's end before it reads the answer."""
    _log(f"{why}; the helper runs it itself")
    with contextlib.suppress(OSError, ValueError):
        _, fds = _receive(conn)
        for fd in fds:
            _close(fd)
    with contextlib.suppress(OSError):
        conn.sendall(status_message(b"L", 0))


def _exit(conn: socket.socket, tag: bytes, status: int) -> NoReturn:
    _report(conn, tag, status)
    os._exit(0)


def _report(conn: socket.socket, tag: bytes, status: int) -> None:
    with contextlib.suppress(BaseException):
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        # containerd reads the helper's output to EOF: our copies of its pipes go before the
        # helper learns the status, not when this process's teardown is done.
        detach_stdio()
        conn.sendall(status_message(tag, status))


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
