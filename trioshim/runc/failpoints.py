"""Failpoints of runc's task service: tests make its RPCs fail, stall or raise.

A container whose spec annotates
``io.containerd.runtime.v2.shim.failpoint.<point>`` has the RPCs naming it fail, stall or raise
at :data:`FAILPOINTS`; ``<Method>`` before the RPC does anything (as containerd's failpoint
shim), ``<Method>.after`` once its work is done, before the reply. Without the annotation the
only cost is a look for the prefix in ``config.json`` on Create and a ``None`` test in the
RPCs that have points.
(``docs/failpoints.md`` says how to write them.)
"""

from __future__ import annotations

from typing import Final

from trioshim.runc.states import unknown
from trioshim.shim.failpoint import Failpoints, FailpointSyntaxError
from trioshim.shim.inject import InjectedError, bundle_failpoints, trigger
from trioshim.task.errors import InvalidArgumentError

__all__ = ["FAILPOINTS", "hit", "read_failpoints"]

FAILPOINTS: Final = frozenset(
    {"Create", "Create.after", "Start", "Start.after", "Exec", "Exec.after", "Kill", "Delete"}
)
"""The failpoints of this service. The ``.after`` points sit where undoing is hardest: Create
after ``runc create`` (rootfs mounted, stdio open: all of it is undone), Exec with the exec
built but not yet added (its id is released), Start after the process runs and its event is
out (it keeps running: the caller cleans up, as after a lost reply)."""


def read_failpoints(bundle: str) -> Failpoints | None:
    """The failpoints ``bundle``'s spec annotates (None: none); InvalidArgument for a bad one."""
    try:
        return bundle_failpoints(bundle, FAILPOINTS)
    except FailpointSyntaxError as exc:
        raise InvalidArgumentError.wrapping(str(exc)) from exc


async def hit(failpoints: Failpoints, point: str) -> None:
    """Hit ``point``: an injected error is a bare-text error like any runc failure; a panic
    escapes as the unexpected exception it stands for (the ttrpc server answers Unknown)."""
    try:
        await trigger(point, failpoints.evaluate(point))
    except InjectedError as exc:
        raise unknown(exc.message) from exc
