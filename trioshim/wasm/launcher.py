"""The ``containerd-shim-triowasm-v2`` console script: an import-light launcher.

Like the runc shim's (:mod:`trioshim.runc.launcher`): this module imports nothing but the
fork-server helper, so ``start`` and ``delete`` run in a worker forked from a server that has
the task kit, trio and the wasm engine imported already; the daemon mode, ``-info``, ``-v``
and the very first start run in-process. See :mod:`trioshim.shim.forkserver`. (Importing the
package ``trioshim.wasm`` is light too: its names are loaded on first use.)
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

    from trioshim.shim.manager import Manager
    from trioshim.shim.plugin import Registry

APP = "trioshim.wasm.launcher:app"


def app() -> tuple[Manager, Registry]:
    """What the fork server imports and runs: the kit's manager and plugins over the engine."""
    from trioshim.wasm.main import RUNTIME_NAME, shim_app

    return shim_app(RUNTIME_NAME)


def main() -> NoReturn:
    from trioshim.shim.forkserver import main as forkserver_main

    forkserver_main(APP)


if __name__ == "__main__":
    main()
