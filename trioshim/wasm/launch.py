"""What the WASI child is asked to run: the module, args, env and preopens, checked up front.

The OCI process of a wasm container names its module as ``process.args[0]``, a ``.wasm`` file in
the container's rootfs (absolute, or relative to ``process.cwd``). Everything is resolved inside
the rootfs the way a container would see it (symlinks included, ``..`` never leaves the root), so
a bad spec fails here with a clear :class:`WasmLaunchError` instead of a child that dies later.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from trioshim.wasm.errors import WasmLaunchError

__all__ = ["WASM_MAGIC", "LaunchRequest", "resolve_in_root", "resolve_launch"]

WASM_MAGIC: Final = b"\0asm"
_MAX_SYMLINKS: Final = 40  # what the kernel allows in one path walk


@dataclass(frozen=True, slots=True)
class LaunchRequest:
    """One module run, as the child receives it (see trioshim/wasm/child.py)."""

    module: str  # host path of the .wasm file
    args: tuple[str, ...]  # argv as the module sees it (args[0] as the spec wrote it)
    env: tuple[tuple[str, str], ...]
    preopens: tuple[tuple[str, str, bool], ...]  # (host directory, guest path, writable)
    cache: str | None = None  # compiled-module cache directory (see trioshim/wasm/cache.py)

    def to_json(self) -> dict[str, Any]:
        return {
            "module": self.module,
            "args": list(self.args),
            "env": [list(pair) for pair in self.env],
            "preopens": [list(pair) for pair in self.preopens],
            "cache": self.cache,
        }


def resolve_in_root(root: str, path: str) -> str:
    """The host path of ``path`` as seen by a process chrooted at ``root``.

    Symlinks are followed with ``root`` as their ``/``; ``..`` stops at the root. The result
    need not exist (its missing tail is kept lexically).
    """
    root = os.path.realpath(root)
    pending = [p for p in path.split("/") if p]
    pending.reverse()
    current = ""  # guest path so far, "" for "/"
    links = 0
    while pending:
        part = pending.pop()
        if part == ".":
            continue
        if part == "..":
            current = current.rpartition("/")[0]  # "/a/b" -> "/a", "/a" -> ""
            continue
        candidate = f"{current}/{part}"
        host = root + candidate
        try:
            target = os.readlink(host)
        except OSError:  # not a symlink, or missing: keep it as it is
            current = candidate
            continue
        links += 1
        if links > _MAX_SYMLINKS:
            raise WasmLaunchError(f"too many levels of symbolic links in {path!r}")
        if target.startswith("/"):
            current = ""
        pending.extend(reversed([p for p in target.split("/") if p]))
    return root + current


def _split_env(env: Mapping[str, str] | Sequence[str]) -> tuple[tuple[str, str], ...]:
    if isinstance(env, Mapping):
        return tuple((str(name), str(value)) for name, value in env.items())
    pairs = []
    for entry in env:
        name, sep, value = entry.partition("=")
        if not name or not sep:
            raise WasmLaunchError(f"bad environment entry {entry!r} (want NAME=value)")
        pairs.append((name, value))
    return tuple(pairs)


def _bind_preopens(mounts: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, bool]]:
    """The spec's directory bind mounts (volumes) as preopens at their destinations.

    Other mounts (proc, tmpfs, ...) mean nothing to a WASI module, and a file bind mount (CRI's
    /etc/hosts, /etc/resolv.conf) cannot be preopened: WASI preopens directories only.
    """
    preopens = []
    for mount in mounts:
        options = mount.get("options") or []
        if mount.get("type") != "bind" and not {"bind", "rbind"} & set(options):
            continue
        source, destination = mount.get("source"), mount.get("destination")
        if not isinstance(source, str) or not isinstance(destination, str):
            raise WasmLaunchError(f"bind mount without source or destination: {dict(mount)}")
        if not destination.startswith("/"):
            raise WasmLaunchError(f"mount destination {destination!r} must be absolute")
        if os.path.isdir(source):
            preopens.append((source, posixpath.normpath(destination), "ro" not in options))
    return preopens


def resolve_launch(
    rootfs: str,
    args: Sequence[str],
    env: Mapping[str, str] | Sequence[str],
    cwd: str = "/",
    *,
    readonly: bool = False,
    mounts: Sequence[Mapping[str, Any]] = (),
) -> LaunchRequest:
    """Check the module and directories and build the child's request.

    The rootfs is preopened as ``/`` (read-only with ``readonly``, the spec's ``root.readonly``)
    and each directory bind mount at its destination. WASI preview 1 has no working directory
    of its own, so a ``cwd`` other than ``/`` is also preopened as ``.``: modules that resolve
    relative paths through a ``.`` preopen (hand-written ones, older wasi-libc) then see it;
    current wasi-libc starts at ``/`` whatever we do.
    """
    if not os.path.isdir(rootfs):
        raise WasmLaunchError(f"rootfs {rootfs!r} is not a directory")
    if not args:
        raise WasmLaunchError("process.args is empty: args[0] must name the .wasm module")
    guest_cwd = cwd or "/"
    if not guest_cwd.startswith("/"):
        raise WasmLaunchError(f"process.cwd {cwd!r} must be an absolute path")
    host_cwd = resolve_in_root(rootfs, guest_cwd)
    if not os.path.isdir(host_cwd):
        raise WasmLaunchError(f"process.cwd {cwd!r} is not a directory in the rootfs")
    module_guest = posixpath.join(guest_cwd, args[0])
    module = resolve_in_root(rootfs, module_guest)
    try:
        st = os.stat(module)
        if not stat.S_ISREG(st.st_mode):
            raise WasmLaunchError(f"module {args[0]!r} is not a regular file in the rootfs")
        with open(module, "rb") as f:
            magic = f.read(len(WASM_MAGIC))
    except OSError as exc:
        raise WasmLaunchError(f"module {args[0]!r}: {exc.strerror} in the rootfs") from exc
    if magic != WASM_MAGIC:
        raise WasmLaunchError(f"module {args[0]!r} is not a WebAssembly binary (bad magic)")
    preopens = [(os.path.realpath(rootfs), "/", not readonly), *_bind_preopens(mounts)]
    if guest_cwd.rstrip("/"):
        preopens.append((host_cwd, ".", not readonly))
    return LaunchRequest(module, tuple(args), _split_env(env), tuple(preopens))
