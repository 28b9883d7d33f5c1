"""The runc shim's apps and the ``containerd-shim-trioshim-v2`` and
``containerd-shim-trioshim-shared-v2`` entry points: import-light launchers. The installed
launcher script (``launcher/containerd-shim-trioshim-v2``) names :data:`APP`,
:data:`SHARED_APP` and :data:`SHARED_RUNTIME` itself and calls the helper sides directly;
:func:`main` and :func:`shared_main` are the same for a console script.

containerd execs the shim for every container start and every clean-up, so this module imports
nothing but the fork-server helper (standard-library built-ins only). ``start`` and ``delete``
run in a worker forked from a server that has :func:`app` imported already; everything else
(the daemon mode, ``-info``, ``-v``) and the very first start run in-process. See
:mod:`trioshim.shim.forkserver`. The shared runtime's helpers ask its shared process instead
(:mod:`trioshim.shim.sharedlaunch`).
"""

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

    from trioshim.shim.manager import Manager
    from trioshim.shim.plugin import Registry

APP = "trioshim.runc.launcher:app"
SHARED_APP = "trioshim.runc.launcher:shared_app"
# SharedRuncManager.name, which keys the shared process's control socket (spelled out here:
# importing the manager would cost every helper the shim's imports).
SHARED_RUNTIME = "io.containerd.trioshim-shared.v2"


def app() -> "tuple[Manager, Registry]":
    """What the fork server imports and runs: the runc manager and the daemon's plugins."""
    from trioshim.runc.main import registry
    from trioshim.runc.manager import RuncManager

    return RuncManager(), registry()


def shared_app() -> "tuple[Manager, Registry]":
    """The shared-mode runtime: the same plugins, one process serving every daemon."""
    from trioshim.runc.main import registry
    from trioshim.runc.manager import SharedRuncManager

    return SharedRuncManager(), registry()


def main() -> "NoReturn":
    from trioshim.shim.forkserver import main as forkserver_main

    forkserver_main(APP)


def shared_main() -> "NoReturn":
    from trioshim.shim.sharedlaunch import main as shared_launch

    shared_launch(SHARED_APP, SHARED_RUNTIME)


if __name__ == "__main__":
    main()
