"""WASI modules as containers, on wasmtime: the backend of ``containerd-shim-triowasm-v2``.

Each container's module runs in a child process of its own (``child.py``, which imports only
wasmtime), started through the shim's reaper and placed in the container's cgroup, so Kill,
memory limits and Stats behave as they do for any container. See docs/wasm.md.
"""

# Imported on first use, so that the console script (trioshim.wasm.launcher) stays import-light:
# containerd runs it for every container start, and the fork server does the heavy imports.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from trioshim.wasm.cgroup import CgroupLimits, ContainerCgroup, cgroup_path
    from trioshim.wasm.engine import (
        DEFAULT_CACHE_DIR,
        ENGINE_NAME,
        EngineContext,
        StdioDescriptors,
        WasmEngine,
        run_module,
    )
    from trioshim.wasm.errors import CgroupError, WasmError, WasmLaunchError, WasmLoadError
    from trioshim.wasm.launch import LaunchRequest, resolve_in_root, resolve_launch
    from trioshim.wasm.runner import (
        LOAD_FAILED_STATUS,
        TRAP_STATUS,
        SignalSource,
        WasmProcess,
        open_wasm_process,
    )

_LAZY: dict[str, str] = {
    "CgroupLimits": "trioshim.wasm.cgroup",
    "ContainerCgroup": "trioshim.wasm.cgroup",
    "cgroup_path": "trioshim.wasm.cgroup",
    "DEFAULT_CACHE_DIR": "trioshim.wasm.engine",
    "ENGINE_NAME": "trioshim.wasm.engine",
    "EngineContext": "trioshim.wasm.engine",
    "StdioDescriptors": "trioshim.wasm.engine",
    "WasmEngine": "trioshim.wasm.engine",
    "run_module": "trioshim.wasm.engine",
    "CgroupError": "trioshim.wasm.errors",
    "WasmError": "trioshim.wasm.errors",
    "WasmLaunchError": "trioshim.wasm.errors",
    "WasmLoadError": "trioshim.wasm.errors",
    "LaunchRequest": "trioshim.wasm.launch",
    "resolve_in_root": "trioshim.wasm.launch",
    "resolve_launch": "trioshim.wasm.launch",
    "LOAD_FAILED_STATUS": "trioshim.wasm.runner",
    "TRAP_STATUS": "trioshim.wasm.runner",
    "SignalSource": "trioshim.wasm.runner",
    "WasmProcess": "trioshim.wasm.runner",
    "open_wasm_process": "trioshim.wasm.runner",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "DEFAULT_CACHE_DIR",
    "ENGINE_NAME",
    "LOAD_FAILED_STATUS",
    "TRAP_STATUS",
    "CgroupError",
    "CgroupLimits",
    "ContainerCgroup",
    "EngineContext",
    "LaunchRequest",
    "SignalSource",
    "StdioDescriptors",
    "WasmEngine",
    "WasmError",
    "WasmLaunchError",
    "WasmLoadError",
    "WasmProcess",
    "cgroup_path",
    "open_wasm_process",
    "resolve_in_root",
    "resolve_launch",
    "run_module",
]
