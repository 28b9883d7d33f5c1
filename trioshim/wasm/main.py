"""containerd-shim-triowasm-v2: the task kit over the wasm Engine.

The console script is :mod:`trioshim.wasm.launcher` (import-light, with the fork server);
:func:`main` here is the plain entry, everything imported in-process.
"""

from typing import Final, NoReturn

import trioshim.task as task
from trioshim.shim.manager import Manager
from trioshim.shim.plugin import Registry
from trioshim.wasm.engine import WasmEngine

RUNTIME_NAME: Final = "io.containerd.triowasm.v2"


def shim_app(name: str = RUNTIME_NAME) -> tuple[Manager, Registry]:
    """The manager and plugins of the wasm shim."""
    return task.app(name, WasmEngine())


def main() -> NoReturn:
    task.main(RUNTIME_NAME, WasmEngine())


if __name__ == "__main__":
    main()
