"""Failpoints of the kit's Task service: tests make its RPCs fail, stall or raise.

A container whose spec annotates ``io.containerd.runtime.v2.shim.failpoint.<point>`` has the
RPCs naming it fail, stall or raise at :data:`FAILPOINTS`: ``<Method>`` before the RPC does
anything (as containerd's failpoint shim), ``<Method>.after`` once its work is done, before
the reply. Any backend gets them; without the annotation the only cost is a look for the
prefix in ``config.json`` on Create and a ``None`` test in the RPCs that have points
(``docs/failpoints.md`` says how to write them).
"""

from __future__ import annotations

from typing import Final

from trioshim.shim.failpoint import Failpoints, FailpointSyntaxError
from trioshim.shim.inject import InjectedError, bundle_failpoints, trigger
from trioshim.task.errors import InvalidArgumentError, UnknownError

__all__ = ["FAILPOINTS", "hit", "read_failpoints"]

FAILPOINTS: Final = frozenset(
    {"Create", "Create.after", "Start", "Start.after", "Exec", "Exec.after", "Kill", "Delete"}
)
"""The failpoints of the service. The ``.after`` points sit where undoing is hardest: Create
after the backend made the container (all of it is undone: the instance is deleted), Exec with
the exec made but not yet added (it is deleted, its id released), Start after the process runs
and its event is out (it keeps running: the caller cleans up, as after a lost reply)."""


def read_failpoints(bundle: str) -> Failpoints | None:
    """The failpoints ``bundle``'s spec annotates (None: none); InvalidArgument for a bad one."""
    try:
        return bundle_failpoints(bundle, FAILPOINTS)
    except FailpointSyntaxError as exc:
        raise InvalidArgumentError.wrapping(str(exc)) from exc


async def hit(failpoints: Failpoints | None, point: str) -> None:
    """Hit ``point``: an injected error is a bare-text error (Unknown) like any runtime
    failure; a panic escapes as the unexpected exception it stands for (the ttrpc server
    answers Unknown)."""
    if failpoints is None:
        return
    try:
        await trigger(point, failpoints.evaluate(point))
    except InjectedError as exc:
        raise UnknownError(exc.message) from exc
