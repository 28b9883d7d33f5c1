"""WASI modules as containers, on wasmtime: the backend of ``containerd-shim-triowasm-v2``.

Each container's module runs in a child process of its own (``child.py``, which imports only
wasmtime), started through the shim's reaper and placed in the container's cgroup, so Kill,
memory limits and Stats behave as they do for any container. See docs/wasm.md.
"""

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
