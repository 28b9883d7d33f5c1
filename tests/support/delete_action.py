"""Run a shim's ``delete`` action in this process, with no event loop allowed: for the bundles
:meth:`~trioshim.shim.manager.Manager.stop_at_once` answers."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import trio

from trioshim.api.containerd.runtime.task.v2 import shim_pb2
from trioshim.shim.main import run as shim_run
from trioshim.shim.manager import Manager


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
