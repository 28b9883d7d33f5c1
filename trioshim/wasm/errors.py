"""The wasm backend's domain errors; the service boundary turns them into ttrpc statuses."""

from __future__ import annotations

__all__ = ["CgroupError", "WasmError", "WasmLaunchError", "WasmLoadError"]


class WasmError(Exception):
    """A wasm container cannot be run; raised before any module code runs."""


class WasmLaunchError(WasmError):
    """The spec or rootfs does not describe a runnable WASI module (the caller's mistake)."""


class CgroupError(WasmError):
    """The container's cgroup cannot be made, limited or joined."""


class WasmLoadError(WasmError):
    """The module could not be compiled or instantiated (invalid binary, no ``_start``, an
    import no WASI host provides); raised by the Engine so that Start fails with the reason."""
