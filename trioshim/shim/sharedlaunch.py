"""The start and delete helpers of a shared runtime: an import-light launcher.

containerd execs the shim for every container start and every clean-up. In shared mode a live
shared process (:mod:`trioshim.shim.shared`) already has the shim imported, so the helper asks
it to run the action (:mod:`trioshim.shim.sharedactions`): one ``SOCK_SEQPACKET`` message
each way on its control socket (``marshal``: argv, environment, cwd, parent pid, the bytes
containerd wrote on stdin; back: exit status, stdout, stderr). This module imports only
modules built into the interpreter, not even ``os`` (plus :mod:`trioshim.shim.forkserver`'s
helper side, which does the same): every millisecond here is on containerd's critical path.

With no live process (the first start for this containerd and build, or after the process
idled out or was killed), when the process declines (``-info``, ``-v``, ``SCHED_CORE``) or goes
away unanswered (nothing done), the helper runs the action itself with the full shim
imported; a start then forks the shared process (:mod:`trioshim.shim.sharedclient`). No fork
server is involved: in shared mode the shared process is the one that stays warm.
``TRIOSHIM_FORKSERVER=0`` also disables asking the shared process.
"""

import _socket
import marshal
import posix
import sys

from trioshim.shim.forkserver import (
    ENV_DISABLE,
    action,
    containerd_address,
    environ,
    server_path,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

__all__ = ["control_path", "main"]

REQUEST_TIMEOUT = 60.0  # a start waits for the daemon's plugins; a delete for runc
_MAX_REPLY = 4 << 20
_ACTIONS = ("start", "delete")


def control_path(runtime: str, containerd: str) -> str:
    """The control socket of the shared process for this runtime, build, uid and containerd
    (its address; empty: the one the environment names, so that a helper's flags, checked
    or not, lead to the same process)."""
    address = containerd or containerd_address([])
    return server_path("shared:" + runtime, address, prefix="shared-")


def main(app: str, runtime: str) -> "NoReturn":
    """Console-script entry of a shared runtime whose manager is named ``runtime``."""
    args = sys.argv[1:]
    verb = action(args)
    stdin: bytes | None = None
    if verb in _ACTIONS and environ().get(ENV_DISABLE) != "0":
        if verb == "start":
            stdin = _read_all(0)
        reply = _ask(control_path(runtime, containerd_address(args)), verb, args, stdin or b"")
        if reply is not None:
            _write_all(1, reply[1])
            _write_all(2, reply[2])
            posix._exit(reply[0])  # nothing buffered, nothing to tear down
    sys.exit(_run_here(app, args, stdin))


def _ask(path: str, verb: str, args: list[str], stdin: bytes) -> "tuple[int, bytes, bytes] | None":
    """(status, stdout, stderr) of the action the shared process at ``path`` ran; ``None``
    when it did nothing (no process, declined, gone before answering)."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET | _socket.SOCK_CLOEXEC)
    try:
        try:
            sock.connect(path)
            request = {
                "op": verb,
                "argv": args,
                "env": dict(environ()),
                "cwd": posix.getcwd(),
                "ppid": posix.getppid(),
                "stdin": stdin,
            }
            sock.send(marshal.dumps(request))  # one message: all or EMSGSIZE
        except OSError:  # no process, a killed one's socket, or a request too large
            return None
        sock.settimeout(REQUEST_TIMEOUT)
        try:
            data = sock.recv(_MAX_REPLY)
        except TimeoutError:
            return 1, b"", b"trioshim: the shared shim process did not answer in time\n"
        except OSError:
            return None  # reset: it went away unanswered
    finally:
        sock.close()
    if not data:
        return None
    reply = marshal.loads(data)
    if not isinstance(reply, dict) or not reply.get("ok"):
        return None  # declined (or refused the request): nothing was done
    return int(reply["status"]), bytes(reply["stdout"]), bytes(reply["stderr"])


def _run_here(app: str, args: list[str], stdin: bytes | None) -> int:
    """The action in this process, the full shim imported (what a start does without a
    shared process: it forks one, already serving the new daemon)."""
    from trioshim.shim.forkserver import load_app, prepare_full_import

    prepare_full_import()
    import io

    from trioshim.shim.main import run

    manager, registry = load_app(app)
    return run(manager, args, registry, stdin=None if stdin is None else io.BytesIO(stdin))


def _read_all(fd: int) -> bytes:
    chunks = []
    try:
        while chunk := posix.read(fd, 65536):
            chunks.append(chunk)
    except OSError:
        pass  # no stdin (closed): no options, as for the shim's own read
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[posix.write(fd, view) :]
        except OSError:
            return  # containerd stopped reading: nothing else to tell it
