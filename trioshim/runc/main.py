"""Entry point of ``containerd-shim-trioshim-v2`` (runtime ``io.containerd.trioshim.v2``).

The shim is the framework's ``run`` with :class:`~trioshim.runc.manager.RuncManager` (grouping,
``delete`` clean-up, ``-info``) and one plugin, the task kit's Task service over runc
(:func:`plugin`: it gets the framework's reaper, event publisher and shutdown service).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

from trioshim.runc.backend import RuncBackend
from trioshim.runc.manager import RuncManager
from trioshim.shim.main import main as shim_main
from trioshim.shim.main import run as shim_run
from trioshim.shim.plugin import Registration, Registry
from trioshim.task.main import registration


def plugin() -> Registration:
    """The kit's Task service over runc (:class:`~trioshim.runc.backend.RuncBackend`), as a
    plugin of :func:`trioshim.shim.run`."""
    return registration(RuncBackend())


def registry() -> Registry:
    """The daemon's plugins (the framework adds its reaper, publisher and shutdown service)."""
    return Registry([plugin()])


def run(argv: Sequence[str] | None = None) -> int:
    """Run one shim action in-process and return its exit status (for tests)."""
    return shim_run(RuncManager(), argv, registry())


def main() -> NoReturn:
    """The ``containerd-shim-trioshim-v2`` console script."""
    shim_main(RuncManager(), registry())


if __name__ == "__main__":
    main()
