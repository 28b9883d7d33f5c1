"""Fast ``start``/``delete``: an import-light helper and a pre-imported fork server.

``import trio`` and protobuf cost ~0.2 s (much more on a loaded host), and containerd runs the
shim binary for every container start and every clean-up. A shim whose console script calls
:func:`main` (instead of :func:`trioshim.shim.main`) pays that only once per shim build:

- the **helper** (the process containerd execs) imports nothing but the standard library. For
  ``start`` and ``delete`` it connects to the fork server of this build, hands over its argv,
  environment, cwd, parent pid and its stdin/stdout/stderr (``SCM_RIGHTS``), and exits with
  the status the server's worker reports. Everything else (``-info``, ``-v``, the daemon
  mode) runs in-process as usual;
- the **fork server** (one per shim build and user; its socket is ``<dir>/fs-<hash>`` where
  ``<dir>`` is ``$TRIOSHIM_FORKSERVER_DIR`` or ``/run/trioshim``) has imported the shim (the
  ``module:function`` *app* returning ``(manager, registry)``), then forks one **worker** per
  request; the worker becomes the helper (descriptors, cwd, environment, its own process
  group) and runs :func:`trioshim.shim.main.run`, which forks the daemon as usual. The worker
  then exits, so a daemon is never the server's child: a server crash touches no container,
  and each daemon is still one process per container (group), sharing the server's pages
  copy-on-write;
- **no server yet** (the first start after boot or upgrade, or a server that idled out): the
  helper runs the action in-process (the cold path costs what the plain entry costs) and then
  spawns a server, detached (own session, stdio on ``/dev/null``), for the next start.

The server trusts only peers with its own uid (``SO_PEERCRED``), lives in a 0700 directory
with a 0600 socket, exits after ``$TRIOSHIM_FORKSERVER_IDLE`` seconds without requests
(default 600) or on SIGTERM, and is keyed by the app, the interpreter, the shim executable
(path and mtime), the trioshim version and the uid, so an upgraded shim never talks to a stale
server. ``TRIOSHIM_FORKSERVER=0`` disables delegation. This module must stay import-light.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import select
import signal
import socket
import struct
import sys
import time
from typing import TYPE_CHECKING, Any, NoReturn

import trioshim

if TYPE_CHECKING:
    from trioshim.shim.manager import Manager
    from trioshim.shim.plugin import Registry

__all__ = ["launch", "load_app", "main", "serve", "server_path"]

ENV_DISABLE = "TRIOSHIM_FORKSERVER"
ENV_DIR = "TRIOSHIM_FORKSERVER_DIR"
ENV_IDLE = "TRIOSHIM_FORKSERVER_IDLE"
ENV_LOG = "TRIOSHIM_FORKSERVER_LOG"
DEFAULT_DIR = "/run/trioshim"
IDLE_TIMEOUT = 600.0
PROTOCOL = 1
_DELEGATED = ("start", "delete")
_STRING_FLAGS = {"namespace", "id", "address", "publish-binary", "bundle", "socket"}
_STATUS = struct.Struct("!ci")  # b"S" + exit status
_REQUEST_TIMEOUT = 10.0  # to receive a request once connected
_MAX_REQUEST = 4 << 20


# ---------------------------------------------------------------------------------------------
# helper side (stdlib only)


def main(app: str, argv: list[str] | None = None) -> NoReturn:
    """Console-script entry of a fast shim: ``sys.exit(launch(app))``."""
    sys.exit(launch(app, argv))


def launch(app: str, argv: list[str] | None = None) -> int:
    """Run one shim invocation, through the fork server when it can; returns the status."""
    args = sys.argv[1:] if argv is None else list(argv)
    if _action(args) not in _DELEGATED or os.environ.get(ENV_DISABLE) == "0":
        return _run_local(app, args)
    path = server_path(app)
    status = _delegate(path, args)
    if status is not None:
        return status
    status = _run_local(app, args)
    with contextlib.suppress(OSError):
        _spawn_server(app, path)
    return status


def _action(args: list[str]) -> str:
    """The action word, by Go's flag rules (enough of them to find it)."""
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            return args[i + 1] if i + 1 < len(args) else ""
        if len(arg) < 2 or not arg.startswith("-"):
            return arg
        name = arg.lstrip("-")
        i += 2 if name in _STRING_FLAGS else 1
    return ""


def server_path(app: str) -> str:
    """The fork server's socket for this app, interpreter, shim build and user."""
    exe = os.path.realpath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    try:
        mtime = os.stat(exe).st_mtime_ns if exe else 0
    except OSError:
        mtime = 0
    key = json.dumps([PROTOCOL, app, sys.executable, exe, mtime, trioshim.__version__, os.getuid()])
    directory = os.environ.get(ENV_DIR) or DEFAULT_DIR
    return os.path.join(directory, "fs-" + hashlib.sha256(key.encode()).hexdigest()[:24])


def _delegate(path: str, args: list[str]) -> int | None:
    """The worker's exit status, or ``None`` when there is no server to ask."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            sock.connect(path)
        except OSError:
            return None
        request = json.dumps(
            {
                "protocol": PROTOCOL,
                "argv0": sys.argv[0] if sys.argv else "",
                "argv": args,
                "env": dict(os.environ),
                "cwd": os.getcwd(),
                "ppid": os.getppid(),
            }
        ).encode()
        try:
            socket.send_fds(sock, [struct.pack("!I", len(request)) + request], [0, 1, 2])
        except OSError:
            return None  # the server went away between connect and send: nothing ran
        data = b""
        while len(data) < _STATUS.size:
            chunk = sock.recv(_STATUS.size - len(data))
            if not chunk:
                break
            data += chunk
    finally:
        sock.close()
    if len(data) == _STATUS.size:
        tag, status = _STATUS.unpack(data)
        if tag == b"S":
            return int(status)
    os.write(2, b"trioshim: the fork server's worker died without a status\n")
    return 1


def _spawn_server(app: str, path: str) -> None:
    """Start a fork server in the background, detached from us and from containerd's pipe."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    log = os.environ.get(ENV_LOG) or os.devnull
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
    argv = [sys.executable, "-m", "trioshim.shim.forkserver", "serve", app, path]
    if sys.argv and sys.argv[0]:
        argv.append(sys.argv[0])
    os.posix_spawn(
        sys.executable,
        argv,
        dict(os.environ),
        file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, log, flags, 0o600),
            (os.POSIX_SPAWN_OPEN, 2, log, flags, 0o600),
        ],
        setsid=True,
        setsigdef=(signal.SIGPIPE,),
    )


def _run_local(app: str, args: list[str], *, containerd_pid: int | None = None) -> int:
    from trioshim.shim.main import run

    manager, registry = load_app(app)
    return run(manager, args, registry, containerd_pid=containerd_pid)


def load_app(app: str) -> tuple[Manager, Registry]:
    """``module:function`` or ``/path/file.py:function``; the function returns
    ``(manager, registry)``."""
    import importlib
    import importlib.util

    target, _, attr = app.rpartition(":")
    if not target or not attr:
        raise ValueError(f"app {app!r}: expected module:function or /path/file.py:function")
    if target.endswith(".py") or "/" in target:
        name = "_trioshim_app_" + hashlib.sha256(target.encode()).hexdigest()[:12]
        module = sys.modules.get(name)
        if module is None:
            spec = importlib.util.spec_from_file_location(name, target)
            if spec is None or spec.loader is None:
                raise ImportError(f"cannot load {target}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    manager, registry = getattr(module, attr)()
    return manager, registry


# ---------------------------------------------------------------------------------------------
# server side


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
    listener.listen(128)
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
    request = json.loads(body)
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


if __name__ == "__main__":
    # Inherit nothing but stdio from whoever spawned us (workers and daemons fork from here).
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    if len(sys.argv) >= 4 and sys.argv[1] == "serve":
        sys.exit(serve(sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else ""))
    sys.exit("usage: python -m trioshim.shim.forkserver serve APP SOCKET [ARGV0]")
