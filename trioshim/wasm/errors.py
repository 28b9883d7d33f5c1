"""The wasm backend's domain errors; the service boundary turns them into ttrpc statuses."""

from __future__ import annotations

__all__ = ["CgroupError", "WasmError", "WasmLaunchError"]


class WasmError(Exception):
    """A wasm container cannot be run; raised before any module code runs."""


class WasmLaunchError(WasmError):
    """The spec or rootfs does not describe a runnable WASI module (the caller's mistake)."""


class CgroupError(WasmError):
    """The container's cgroup cannot be made, limited or joined."""
