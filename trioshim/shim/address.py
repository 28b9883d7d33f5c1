"""Shim socket addresses, the socket itself, and the bundle's ``address`` file.

Address = ``unix://<socket dir>/<hex sha256 of filepath.Join(grpc address, ns, key)>``. The
socket dir defaults to ``/run/containerd/s`` (what containerd 1.6-2.2 hard-code); tests and
unprivileged runs point it elsewhere (``Manager.socket_dir`` or ``$TRIOSHIM_SOCKET_DIR``).
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Final

from trioshim.shim.digest import sha256_hex
from trioshim.ttrpc.server import listen_backlog

__all__ = [
    "DEFAULT_SOCKET_DIR",
    "SOCKET_DIR_ENV",
    "SOCKET_PATH_LIMIT",
    "AddressError",
    "can_connect",
    "go_clean",
    "go_join",
    "new_socket",
    "read_address",
    "remove_socket",
    "socket_address",
    "socket_path",
    "write_address",
]

DEFAULT_SOCKET_DIR: Final = "/run/containerd/s"
SOCKET_DIR_ENV: Final = "TRIOSHIM_SOCKET_DIR"
SOCKET_PATH_LIMIT: Final = 106
_UNIX: Final = "unix://"


class AddressError(ValueError):
    """An address we cannot use (abstract, too long for a unix socket, empty file)."""


def go_clean(path: str) -> str:
    """Go's ``path.Clean``: lexical, no filesystem access."""
    if not path:
        return "."
    rooted = path.startswith("/")
    out: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if out and out[-1] != "..":
                out.pop()
            elif not rooted:
                out.append("..")
            continue
        out.append(part)
    cleaned = "/".join(out)
    if rooted:
        return "/" + cleaned
    return cleaned or "."


def go_join(*elems: str) -> str:
    """Go's ``filepath.Join`` on Linux: empty elements dropped, then cleaned."""
    kept = [e for e in elems if e]
    return go_clean("/".join(kept)) if kept else ""


def socket_address(
    grpc_address: str, namespace: str, key: str, *, socket_dir: str = DEFAULT_SOCKET_DIR
) -> str:
    """The shim address for a grouping ``key`` (``unix://...``, containerd-compatible)."""
    digest = sha256_hex(go_join(grpc_address, namespace, key).encode())
    return f"{_UNIX}{go_join(socket_dir, digest)}"


def socket_path(address: str) -> str:
    """The filesystem path of a ``unix://`` address (we never use abstract sockets)."""
    if not address.startswith(_UNIX):
        raise AddressError(f"{address!r}: not a unix:// address (abstract sockets are not used)")
    return address[len(_UNIX) :]


def _check_length(path: str) -> None:
    if len(path.encode()) > SOCKET_PATH_LIMIT:
        raise AddressError(f"{path!r}: unix socket path too long (> {SOCKET_PATH_LIMIT})")


def new_socket(address_or_path: str, *, backlog: int | None = None) -> socket.socket:
    """Create the directory (0700), bind and listen, chmod the socket 0600.

    ``backlog`` defaults to the system's maximum (:func:`~trioshim.ttrpc.listen_backlog`,
    like Go's listener): containerd opens one connection per container it starts or
    recovers, and a burst of them must not be refused.

    ``OSError(EADDRINUSE)`` propagates so the caller can decide between reuse and removal.
    The returned socket is blocking and close-on-exec.
    """
    path = socket_path(address_or_path) if address_or_path.startswith(_UNIX) else address_or_path
    _check_length(path)
    os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
    except BaseException:
        sock.close()
        raise
    try:
        os.chmod(path, 0o600)
        sock.listen(listen_backlog() if backlog is None else backlog)
    except BaseException:
        sock.close()
        remove_socket(path)
        raise
    return sock


def can_connect(address_or_path: str, timeout: float = 0.1) -> bool:
    """Whether something accepts connections on the socket (100 ms, like Go)."""
    path = socket_path(address_or_path) if address_or_path.startswith(_UNIX) else address_or_path
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError:
            return False
        return True


def remove_socket(address_or_path: str) -> bool:
    """Unlink the socket file; ``False`` if it was already gone. Never raises for a missing
    file or a non-unix address."""
    if not address_or_path.startswith(_UNIX) and not address_or_path.startswith("/"):
        return False
    path = socket_path(address_or_path) if address_or_path.startswith(_UNIX) else address_or_path
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def write_address(path: str, address: str) -> None:
    """Write ``address`` to ``path`` atomically, without a newline (Go's ``WriteAddress``:
    ``.<name>`` created O_EXCL|O_SYNC mode 0666, then renamed). A temporary file left by a
    crashed writer is removed and the write retried once."""
    path = os.path.abspath(path)
    tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path))
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_SYNC | os.O_CLOEXEC
    try:
        fd = os.open(tmp, flags, 0o666)
    except FileExistsError:
        os.unlink(tmp)
        fd = os.open(tmp, flags, 0o666)
    try:
        data = address.encode()
        while data:
            data = data[os.write(fd, data) :]
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.rename(tmp, path)


def read_address(path: str) -> str:
    """Read an ``address`` file verbatim (no trimming, like containerd 1.6/1.7)."""
    with open(path, "rb") as f:
        data = f.read()
    if not data:
        raise AddressError(f"{path}: no shim address")
    return data.decode()


def is_addr_in_use(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE
