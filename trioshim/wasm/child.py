"""The process a WASI module runs in: ``python -I child.py``, started by the shim's runner.

The child runs this file by path (the shim imports it only for its constants): it must need
nothing but the standard library and ``wasmtime`` (no trio, no trioshim), because every import
here is paid on each container start.

Protocol with the runner (trioshim/wasm/runner.py):

- fd 0/1/2 are the container's stdio, inherited by the module as they are;
- fd 3 (read) carries one JSON object, the launch request (module, args, env, preopens, and the
  compiled-module cache directory or null),
  and reaches EOF once the runner has placed this process in the container's cgroup: nothing of
  the module runs (or is even compiled) before that;
- fd 4 (write) is the diagnostics channel back to the shim: one JSON object per line,
  ``{"event": "running"}`` once the module is instantiated and ``_start`` is called, and
  ``{"event": "trap" | "error", "message": ...}`` when it fails. The container's stderr is not
  used for our own messages; it belongs to the module.

Exit status: the module's ``proc_exit`` code, 0 when ``_start`` returns, :data:`TRAP_STATUS`
after a trap, :data:`LOAD_FAILED_STATUS` when the module cannot be loaded or instantiated.
Signals take their default action (WASI preview 1 has no way to handle them), so SIGTERM ends
the process with 143 and SIGKILL with 137, as the kernel reports them.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from typing import Any, BinaryIO, Final

CONFIG_FD: Final = 3
DIAGNOSTICS_FD: Final = 4
TRAP_STATUS: Final = 134  # 128 + SIGABRT, what the wasmtime CLI exits with on a trap
LOAD_FAILED_STATUS: Final = 126  # the shell's "found but cannot execute"
MESSAGE_MAX: Final = 8000  # characters of a trap or error message sent to the shim


def _report(diag: BinaryIO, event: str, message: str | None = None) -> None:
    record: dict[str, str] = {"event": event}
    if message is not None:
        # Bounded so that everything we ever write fits in the pipe (64 KiB; JSON escapes
        # grow a character to 6 bytes at most): we can never block on a shim not reading.
        record["message"] = message[:MESSAGE_MAX]
    try:
        diag.write(json.dumps(record).encode() + b"\n")
        diag.flush()
    except OSError:
        pass  # the runner went away; the exit status still tells the story


def _load(wasmtime: Any, engine: Any, path: str, cache: str | None) -> Any:
    """The compiled module: from the cache when it holds this module, else compiled (and
    stored, best effort: a full disk costs the next start a compile, nothing more)."""
    if not cache:
        return wasmtime.Module.from_file(engine, path)
    import hashlib

    with open(path, "rb") as f:
        data = f.read()
    cached = os.path.join(cache, hashlib.sha256(data).hexdigest() + ".cwasm")
    try:
        return wasmtime.Module.deserialize_file(engine, cached)
    except wasmtime.WasmtimeError:
        pass  # not cached yet (or unusable): compile
    module = wasmtime.Module(engine, data)
    partial = f"{cached}.{os.getpid()}.partial"
    try:
        with open(partial, "wb") as f:
            f.write(module.serialize())
        os.replace(partial, cached)  # readers see all of it or nothing
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(partial)
    return module


def _run(request: dict[str, Any], diag: BinaryIO) -> int:
    try:
        import wasmtime
    except ImportError as exc:
        _report(diag, "error", f"cannot import wasmtime: {exc}")
        return LOAD_FAILED_STATUS

    try:
        engine = wasmtime.Engine()
        module = _load(wasmtime, engine, request["module"], request.get("cache"))
        wasi = wasmtime.WasiConfig()
        wasi.argv = request["args"]
        wasi.env = request["env"]
        wasi.inherit_stdin()
        wasi.inherit_stdout()
        wasi.inherit_stderr()
        for host, guest, writable in request["preopens"]:
            wasi.preopen_dir(host, guest, writable)
        store = wasmtime.Store(engine)
        store.set_wasi(wasi)
        linker = wasmtime.Linker(engine)
        linker.define_wasi()
        instance = linker.instantiate(store, module)
        start = instance.exports(store).get("_start")
        if not isinstance(start, wasmtime.Func):
            raise ValueError("the module exports no _start function (not a WASI command)")
    except (wasmtime.WasmtimeError, wasmtime.Trap, ValueError, OSError) as exc:
        if isinstance(exc, wasmtime.ExitTrap):  # proc_exit from a start section
            return exc.code & 0xFF
        _report(diag, "error", f"cannot load {request['module']}: {exc}")
        return LOAD_FAILED_STATUS

    _report(diag, "running")
    try:
        start(store)
    except wasmtime.ExitTrap as exc:
        return exc.code & 0xFF
    except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
        _report(diag, "trap", str(exc))
        return TRAP_STATUS
    return 0


def main() -> int:
    # CPython ignores SIGPIPE/SIGXFSZ and turns SIGINT into an exception that native code
    # never sees; give every signal its default action, like any process without handlers.
    for sig in (signal.SIGINT, signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    with open(DIAGNOSTICS_FD, "wb", buffering=0) as diag:
        try:
            with open(CONFIG_FD, "rb") as config:
                request = json.loads(config.read())  # EOF = we are in the cgroup: go
        except (OSError, ValueError) as exc:
            _report(diag, "error", f"bad launch request: {exc}")
            return LOAD_FAILED_STATUS
        return _run(request, diag)


if __name__ == "__main__":
    sys.exit(main())
