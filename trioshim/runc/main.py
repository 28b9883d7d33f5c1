"""Entry point of ``containerd-shim-trioshim-v2`` (runtime ``io.containerd.trioshim.v2``).

The shim is the framework's ``run`` with :class:`~trioshim.runc.manager.RuncManager` (grouping,
``delete`` clean-up, ``-info``) and one plugin, the runc task service (:data:`REGISTRATION`:
it gets the framework's reaper, event publisher and shutdown service).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Final, NoReturn

from trioshim.runc.manager import RuncManager
from trioshim.runc.service import TaskService
from trioshim.shim.main import main as shim_main
from trioshim.shim.main import run as shim_run
from trioshim.shim.plugin import (
    EVENT_PLUGIN,
    INTERNAL_PLUGIN,
    REAPER_PLUGIN,
    TTRPC_PLUGIN,
    InitContext,
    Registration,
    Registry,
)


async def init_plugin(ctx: InitContext) -> TaskService:
    """Plugin init: the service over the framework's reaper, publisher and shutdown service."""
    service = TaskService(
        namespace=ctx.namespace,
        reaper=ctx.get(REAPER_PLUGIN),
        publisher=ctx.get(EVENT_PLUGIN),
        shutdown=ctx.get(INTERNAL_PLUGIN, "shutdown"),
        nursery=ctx.nursery,
        bundle_dir=os.path.dirname(ctx.bundle),
    )
    await ctx.nursery.start(service.run)
    return service


REGISTRATION: Final = Registration(
    type=TTRPC_PLUGIN,
    id="task",
    init=init_plugin,
    requires=(EVENT_PLUGIN, INTERNAL_PLUGIN, REAPER_PLUGIN),
)
"""The runc task service as a plugin of :func:`trioshim.shim.run`."""


def registry() -> Registry:
    """The daemon's plugins (the framework adds its reaper, publisher and shutdown service)."""
    return Registry([REGISTRATION])


def run(argv: Sequence[str] | None = None) -> int:
    """Run one shim action in-process and return its exit status (for tests)."""
    return shim_run(RuncManager(), argv, registry())


def main() -> NoReturn:
    """The ``containerd-shim-trioshim-v2`` console script."""
    shim_main(RuncManager(), registry())


if __name__ == "__main__":
    main()
