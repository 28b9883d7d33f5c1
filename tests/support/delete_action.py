"""Run a shim's ``delete`` action in this process, with no event loop allowed: for the bundles
:meth:`~trioshim.shim.manager.Manager.stop_at_once` answers."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TypeVar

import pytest
import trio

from trioshim.api.containerd.runtime.task.v2 import shim_pb2
from trioshim.shim.main import run as shim_run
from trioshim.shim.manager import Manager, StopContext, StopStatus

M = TypeVar("M", bound=Manager)


def delete_without_event_loop(
    manager: Manager, bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> shim_pb2.DeleteResponse:
    """The action's reply for ``bundle`` (its name is the container id); fails the test if
    the action starts ``trio.run`` or writes anything to stderr."""

    def no_loop(*args: object) -> None:
        raise AssertionError("trio.run called")

    monkeypatch.setattr(trio, "run", no_loop)
    out, err = io.BytesIO(), io.BytesIO()
    argv = ["-namespace", "ns", "-id", bundle.name, "-bundle", str(bundle), "delete"]
    rc = shim_run(manager, argv, stdin=io.BytesIO(b""), stdout=out, stderr=err)
    assert (rc, err.getvalue()) == (0, b"")
    return shim_pb2.DeleteResponse.FromString(out.getvalue())


def with_own_stop(base: type[M]) -> tuple[type[M], list[str]]:
    """A subclass of ``base`` that overrides only ``stop`` (recording the ids it ran for in
    the list returned beside it, then doing what ``base`` does)."""
    ran: list[str] = []

    class CleansMore(base):  # type: ignore[valid-type, misc]
        async def stop(self, ctx: StopContext) -> StopStatus:
            ran.append(ctx.flags.id)
            return await super().stop(ctx)

    return CleansMore, ran


def run_delete(manager: Manager, bundle: Path) -> shim_pb2.DeleteResponse:
    """The delete action's reply for ``bundle`` (named after the container id)."""
    out = io.BytesIO()
    argv = ["-namespace", "ns", "-id", bundle.name, "-bundle", str(bundle), "delete"]
    assert shim_run(manager, argv, stdin=io.BytesIO(b""), stdout=out) == 0
    return shim_pb2.DeleteResponse.FromString(out.getvalue())
