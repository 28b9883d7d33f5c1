"""Where the WASI child keeps compiled modules, so a module is compiled once, not per start.

Compiling is most of a module's start-up (a 170 KB module: ~0.5 s with Cranelift here) while
loading wasmtime's serialized artifact is a ~1 ms mmap. The child does the caching (see
child.py); the shim only picks and checks the directory, because what is in it is machine code
that wasmtime maps and runs without verification: the directory must be ours alone (owned by
the shim's user, no group/other write), or it is refused.

Entries are named by the SHA-256 of the module's bytes inside a directory per wasmtime version
(artifacts of another version are incompatible); nothing is evicted, an operator may empty the
directory at any time.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import stat

from trioshim.wasm.errors import WasmError

__all__ = ["prepare_cache_dir"]


@functools.cache
def _wasmtime_version() -> str:
    return importlib.metadata.version("wasmtime")


def _private_dir(path: str) -> None:
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.lstat(path)
    except OSError as exc:
        raise WasmError(f"module cache {path}: {exc.strerror}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise WasmError(f"module cache {path} is not a directory")
    if st.st_uid != os.geteuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise WasmError(
            f"module cache {path} must be owned by uid {os.geteuid()} and writable by it alone"
        )


def prepare_cache_dir(base: str) -> str:
    """Make (or check) ``base`` and its directory for this wasmtime; return the latter."""
    _private_dir(base)
    versioned = os.path.join(base, f"wasmtime-{_wasmtime_version()}")
    _private_dir(versioned)
    return versioned
