"""Fast ``start``/``delete``: an import-light helper and a pre-imported fork server.

``import trio`` and protobuf cost ~0.2 s (much more on a loaded host), and containerd runs the
shim binary for every container start and every clean-up. A shim whose console script calls
:func:`main` (instead of :func:`trioshim.shim.main`) pays that only once per shim build and
containerd:

- the **helper** (the process containerd execs) imports nothing but the standard library. For
  ``start`` and ``delete`` it connects to the fork server of this build, hands over its argv,
  environment, cwd, parent pid and its stdin/stdout/stderr (``SCM_RIGHTS``), and exits with
  the status the server's worker reports. Everything else (``-info``, ``-v``, the daemon
  mode) runs in-process as usual;
- the **fork server** (one per containerd, shim build and user; its socket is
  ``<dir>/fs-<hash>`` where ``<dir>`` is ``$TRIOSHIM_FORKSERVER_DIR`` or ``/run/trioshim``) has
  imported the shim (the ``module:function`` *app* returning ``(manager, registry)``), then
  forks one **worker** per request; the worker first puts itself where the helper is (cgroups,
  resource limits, umask, ``oom_score_adj``: :mod:`trioshim.shim.placement`; when it cannot,
  the helper runs the action itself), then becomes the helper (descriptors, cwd, environment,
  its own process group) and runs :func:`trioshim.shim.main.run`. Where an exec'd helper
  forks the daemon, a worker, once the helper has its status, becomes the daemon itself (a
  fork less before the address is printed); after ``delete`` it exits. So a daemon is the
  server's child, reaped by it, but nothing more: a server crash or exit touches no container
  (the daemon is re-parented like any orphan), and each daemon is still one process per
  container (group), sharing the server's pages copy-on-write;
- **no server yet** (the first start after boot, upgrade or containerd start, or a server
  that idled out): the helper runs the action in-process (the cold path costs what the plain
  entry costs) and then spawns a server, detached (own session, stdio on ``/dev/null``;
  :mod:`trioshim.shim.forkspawn`), for the next start.

The server is keyed by the app, the interpreter, the shim executable (path and mtime), the
trioshim version, the uid and containerd's address (``-address``, else ``$GRPC_ADDRESS`` or
``$TTRPC_ADDRESS``), so an upgraded shim never talks to a stale server and two containerds
never share one. It ends with the containerd that started it (the helper's parent: a pidfd,
else polling), after ``$TRIOSHIM_FORKSERVER_IDLE`` seconds without requests (default 600), or
on SIGTERM, and removes its socket and lock file as it goes. It trusts only peers with its own
uid (``SO_PEERCRED``) and lives in a 0700 directory with a 0600 socket.
``TRIOSHIM_FORKSERVER=0`` disables delegation. This module must stay import-light.
"""

# The helper side imports only modules built into the interpreter (no typing, socket, enum,
# json, re, hashlib, not even os: its import runs _collections_abc, over 1 ms of a helper
# started with -S, which does not import os otherwise): every millisecond here is on
# containerd's critical path. The cold path and the server import os where they need it.
import _socket
import marshal
import posix
import sys

import trioshim
from trioshim.shim.digest import sha256_hex

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import NoReturn

    from trioshim.shim.manager import Manager
    from trioshim.shim.plugin import Registry

__all__ = ["action", "containerd_address", "environ", "launch", "load_app", "main", "server_path"]

ENV_DISABLE = "TRIOSHIM_FORKSERVER"
ENV_DIR = "TRIOSHIM_FORKSERVER_DIR"
ENV_IDLE = "TRIOSHIM_FORKSERVER_IDLE"
ENV_LOG = "TRIOSHIM_FORKSERVER_LOG"
DEFAULT_DIR = "/run/trioshim"
IDLE_TIMEOUT = 600.0
PROTOCOL = 2
_DELEGATED = ("start", "delete")
_STRING_FLAGS = {"namespace", "id", "address", "publish-binary", "bundle", "socket"}
# The worker's answer: b"S" + the exit status, or b"L" + 0 ("run it yourself"); the status a
# 4-byte big-endian signed int (no struct module: it costs the helper an import).
_STATUS_SIZE = 5
_DECLINED = -1  # what _delegate returns for b"L" (the worker could not stand in for us)
_REQUEST_TIMEOUT = 10.0  # to receive a request once connected
_MAX_REQUEST = 4 << 20
_SCM_RIGHTS = 1
_SOL_SOCKET = 1


# ---------------------------------------------------------------------------------------------
# helper side (interpreter built-ins only)


def main(app: str, argv: list[str] | None = None) -> "NoReturn":
    """Console-script entry of a fast shim: ``sys.exit(launch(app))``."""
    status, ran_here = _launch(app, argv)
    if not ran_here:
        # A worker did it all: nothing buffered, no exit handlers; the interpreter's teardown
        # would only delay our exit, which containerd waits for.
        posix._exit(status)
    sys.exit(status)


def launch(app: str, argv: list[str] | None = None) -> int:
    """Run one shim invocation, through the fork server when it can; returns the status."""
    return _launch(app, argv)[0]


def _launch(app: str, argv: list[str] | None) -> tuple[int, bool]:
    """The status, and whether the action ran in this process."""
    args = sys.argv[1:] if argv is None else list(argv)
    if action(args) not in _DELEGATED or environ().get(ENV_DISABLE) == "0":
        return _run_local(app, args), True
    path = server_path(app, containerd_address(args))
    delegated = _delegate(path, args)
    if delegated is not None and delegated != _DECLINED:
        return delegated, False
    status = _run_local(app, args)  # everything is imported now anyway
    if delegated is None:  # the cold path: no server (yet) for this containerd
        import contextlib

        from trioshim.shim.forkspawn import spawn_server

        with contextlib.suppress(OSError):
            spawn_server(app, path)
    return status, True


def _scan(args: list[str]) -> tuple[str, dict[str, str]]:
    """The action word and the string flags, by Go's flag rules (enough of them for us)."""
    values: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            return (args[i + 1] if i + 1 < len(args) else ""), values
        if len(arg) < 2 or not arg.startswith("-"):
            return arg, values
        name, eq, value = arg.lstrip("-").partition("=")
        if name in _STRING_FLAGS and not eq:
            value = args[i + 1] if i + 1 < len(args) else ""
            i += 1
        if name in _STRING_FLAGS:
            values[name] = value
        i += 1
    return "", values


def action(args: list[str]) -> str:
    """The action word of a shim invocation (``start``, ``delete``, or none)."""
    return _scan(args)[0]


_posix_environ: "dict[str, str] | None" = None


def environ() -> "Mapping[str, str]":
    """``os.environ`` once ``os`` is imported (whoever imported it may have changed it);
    before that, the environment the process started with, decoded as ``os`` decodes it."""
    global _posix_environ
    os = sys.modules.get("os")
    if os is not None:
        return os.environ  # type: ignore[no-any-return]
    if _posix_environ is None:
        encoding, errors = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()
        _posix_environ = {
            key.decode(encoding, errors): value.decode(encoding, errors)
            for key, value in posix.environ.items()
        }
    return _posix_environ


def containerd_address(args: list[str]) -> str:
    """The containerd this invocation is for: ``-address``, else what 1.7+ put in the
    environment (the same fallback as the shim's own flag handling)."""
    address = _scan(args)[1].get("address", "")
    env = environ()
    return (
        address
        or env.get("GRPC_ADDRESS", "").removeprefix("unix://")
        or env.get("TTRPC_ADDRESS", "").removeprefix("unix://")
    )


def server_path(app: str, address: str, *, prefix: str = "fs-") -> str:
    """The fork server's socket for this app, interpreter, shim build, user and containerd
    (``prefix`` names another per-containerd process of the build, e.g. shared mode's)."""
    exe, mtime = _resolved(sys.argv[0] if sys.argv else "")
    key = repr(
        (PROTOCOL, app, sys.executable, exe, mtime, trioshim.__version__, posix.getuid(), address)
    )
    directory = environ().get(ENV_DIR) or DEFAULT_DIR
    name = prefix + sha256_hex(key.encode())[:24]
    return directory + name if directory.endswith("/") else f"{directory}/{name}"


def _resolved(path: str) -> tuple[str, int]:
    """The canonical path of the file ``path`` names (symlinks resolved, as the kernel names
    it: ``os.path.realpath`` without ``os``) and its mtime; ``path`` and 0 when it cannot be
    opened."""
    if not path:
        return "", 0
    try:
        fd = posix.open(path, posix.O_PATH | posix.O_CLOEXEC)
    except OSError:
        return path, 0
    try:
        return posix.readlink(f"/proc/self/fd/{fd}"), posix.fstat(fd).st_mtime_ns
    except OSError:
        return path, 0
    finally:
        posix.close(fd)


def _delegate(path: str, args: list[str]) -> int | None:
    """The worker's exit status; ``None`` when there is no server to ask, ``_DECLINED`` when
    the worker could not take our place (nothing ran: the caller runs the action)."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        try:
            sock.connect(path)
        except OSError:
            return None
        request = marshal.dumps(
            {
                "protocol": PROTOCOL,
                "argv0": sys.argv[0] if sys.argv else "",
                "argv": args,
                "env": dict(environ()),
                "cwd": posix.getcwd(),
                "ppid": posix.getppid(),
                "placement": _placement(),
            }
        )
        fds = b"".join(fd.to_bytes(4, sys.byteorder) for fd in (0, 1, 2))  # C ints
        try:
            sock.sendmsg(
                [len(request).to_bytes(4, "big"), request], [(_SOL_SOCKET, _SCM_RIGHTS, fds)]
            )
        except OSError:
            return None  # the server went away between connect and send: nothing ran
        data = b""
        while len(data) < _STATUS_SIZE:
            try:
                chunk = sock.recv(_STATUS_SIZE - len(data))
            except OSError:  # reset: as good as no answer
                break
            if not chunk:
                break
            data += chunk
    finally:
        sock.close()
    if len(data) == _STATUS_SIZE:
        tag, status = data[:1], int.from_bytes(data[1:], "big", signed=True)
        if tag == b"S":
            return int(status)
        if tag == b"L":
            return _DECLINED
    posix.write(2, b"trioshim: the fork server's worker died without a status\n")
    return 1


def status_message(tag: bytes, status: int) -> bytes:
    """What a worker sends back (see ``_STATUS_SIZE``)."""
    return tag + status.to_bytes(4, "big", signed=True)


def _placement() -> dict[str, object]:
    """What puts a process where we are, as the kernel shows it (the worker parses it: only
    reads and two ``umask`` calls here, no ``resource`` import)."""
    umask = posix.umask(0o022)
    posix.umask(umask)
    place: dict[str, object] = {"umask": umask}
    for name in ("cgroup", "limits", "oom_score_adj"):
        place[name] = _read_proc("/proc/self/" + name)
    return place


def _read_proc(path: str) -> bytes | None:
    """A small /proc file, without a file object's cost; ``None`` if it cannot be read."""
    try:
        fd = posix.open(path, posix.O_RDONLY | posix.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = b""
        while chunk := posix.read(fd, 65536):
            data += chunk
        return data
    except OSError:
        return None
    finally:
        posix.close(fd)


def _run_local(app: str, args: list[str], *, containerd_pid: int | None = None) -> int:
    prepare_full_import()
    from trioshim.shim.main import run

    manager, registry = load_app(app)
    return run(manager, args, registry, containerd_pid=containerd_pid)


def prepare_full_import() -> None:
    """Ready this process to import the full shim: run ``site`` if the launcher started the
    interpreter without it (``-S``, see ``launcher/containerd-shim-trioshim-v2``; the full
    shim may need every ``.pth`` file), and defer the standard-library modules trio imports
    that a shim never uses (:mod:`trioshim.shim.deferimport`)."""
    if sys.flags.no_site and "site" not in sys.modules:
        import site

        site.main()
    from trioshim.shim.deferimport import defer_unused_modules

    defer_unused_modules()


def load_app(app: str) -> "tuple[Manager, Registry]":
    """``module:function`` or ``/path/file.py:function``; the function returns
    ``(manager, registry)``."""
    import importlib
    import importlib.util

    target, _, attr = app.rpartition(":")
    if not target or not attr:
        raise ValueError(f"app {app!r}: expected module:function or /path/file.py:function")
    if target.endswith(".py") or "/" in target:
        name = "_trioshim_app_" + sha256_hex(target.encode())[:12]
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


if __name__ == "__main__":
    import os

    from trioshim.shim.forkspawn import PIDFD_FD

    # serve APP SOCKET ARGV0 CONTAINERD_PID HAS_PIDFD [ROOM]
    if len(sys.argv) >= 7 and sys.argv[1] == "serve" and sys.argv[5].isdigit():
        has_pidfd = sys.argv[6] == "1"
        # Inherit nothing but stdio (and the pidfd) from whoever spawned us: workers and
        # daemons fork from here.
        os.closerange(PIDFD_FD + 1 if has_pidfd else PIDFD_FD, os.sysconf("SC_OPEN_MAX"))
        prepare_full_import()
        from trioshim.shim.forkserve import serve

        sys.exit(
            serve(
                sys.argv[2],
                sys.argv[3],
                sys.argv[4],
                containerd_pid=int(sys.argv[5]),
                containerd_pidfd=PIDFD_FD if has_pidfd else None,
            )
        )
    sys.exit("usage: python -m trioshim.shim.forkserver serve APP SOCKET ARGV0 PID 0|1 [ROOM]")
