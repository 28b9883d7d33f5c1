"""Failpoints in the task service, in-process with real runc (tests/runc/service_harness.py).

Each failure must leave the service as if the failing call had never come, or (Start.after)
in a state the caller can clean up with the usual Kill and Delete.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from tests.runc.service_harness import Harness, exec_request, is_mounted, runc_container
from trioshim.api.containerd.runtime.task.v2 import shim_pb2 as api
from trioshim.api.containerd.types.task import task_pb2 as task_types
from trioshim.shim import inject
from trioshim.shim.failpoint import ANNOTATION_PREFIX, Action, Term
from trioshim.shim.inject import InjectedPanic
from trioshim.task import failpoints
from trioshim.ttrpc.errors import Code


def _annotate(**points: str) -> Any:
    def edit(spec: dict[str, Any]) -> None:
        spec["annotations"] = {
            ANNOTATION_PREFIX + name.replace("_", "."): value for name, value in points.items()
        }

    return edit


async def _runc_ids(h: Harness) -> list[str]:
    listed = await h.reaper.run(["runc", "--root", str(h.runc_root / "testns"), "list", "-q"])
    return listed.stdout.decode().split()


async def _gone(h: Harness, container_id: str) -> None:
    """Nothing of the container is left in the service, in runc or in the mount table."""
    assert container_id not in h.service.containers
    assert not h.service._reserved
    assert container_id not in await _runc_ids(h)
    assert not is_mounted(h.tmp / container_id / "rootfs")
    assert not h.events.topics(container_id)


async def _still_serves(h: Harness, name: str = "ok") -> None:
    waited = await h.run_to_exit(name, ["true"])
    assert waited.exit_status == 0


async def test_bad_annotation_is_invalid_argument(harness: Harness) -> None:
    h = harness
    for n, edit in enumerate(
        [_annotate(Create="1*eror(x)"), _annotate(State="1*off"), _annotate(Start="")]
    ):
        bundle = await h.bundle(f"bad{n}", ["true"], edit=edit)
        err = await h.fails("Create", h.create_request(f"bad{n}", bundle))
        assert err.code == Code.INVALID_ARGUMENT, err
        assert ANNOTATION_PREFIX in err.message
        await _gone(h, f"bad{n}")
    await _still_serves(h)


@pytest.mark.parametrize("point", ["Create", "Create_after"])
async def test_create_error(harness: Harness, point: str) -> None:
    h = harness
    bundle = await h.bundle("c1", ["sleep", "1000"], edit=_annotate(**{point: "1*error(boom)"}))
    err = await h.fails("Create", h.create_request("c1", bundle))
    assert (err.code, err.message) == (Code.UNKNOWN, "boom")
    await _gone(h, "c1")
    await _still_serves(h)


async def test_create_after_panic_and_cancelled_delay(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = harness
    delaying = trio.Event()

    async def trigger(point: str, term: Term | None) -> None:
        if term is not None and term.action is Action.DELAY:
            delaying.set()
        await inject.trigger(point, term)

    monkeypatch.setattr(failpoints, "trigger", trigger)
    bundle = await h.bundle("p1", ["sleep", "1000"], edit=_annotate(Create_after="1*panic(oops)"))
    with pytest.raises(InjectedPanic, match="oops"):
        await h.call("Create", h.create_request("p1", bundle))
    await _gone(h, "p1")
    bundle = await h.bundle("d1", ["sleep", "1000"], edit=_annotate(Create_after="1*delay(600000)"))
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(h.call, "Create", h.create_request("d1", bundle))
            await delaying.wait()
            assert "d1" in await _runc_ids(h)  # the delay sits after `runc create`
            scope.cancel()
    await _gone(h, "d1")
    await _still_serves(h)


async def test_start_exec_kill_delete_points(harness: Harness) -> None:
    h = harness
    points = _annotate(
        Start="1*off->1*error(start)",
        Exec="1*error(exec)",
        Exec_after="1*error(exec after)",
        Kill="1*error(kill)",
        Delete="1*off->1*error(delete)",  # the exec's Delete passes, the init's fails
    )
    await h.create("s1", ["sleep", "1000"], edit=points)
    await h.call("Start", api.StartRequest(id="s1"))  # 1*off: through
    for message in ("exec", "exec after"):
        err = await h.fails("Exec", exec_request("s1", "e1", ["true"]))
        assert (err.code, err.message) == (Code.UNKNOWN, message)
        assert "e1" not in h.service.containers["s1"].execs
    await h.call("Exec", exec_request("s1", "e1", ["true"]))  # the id was released
    err = await h.fails("Start", api.StartRequest(id="s1", exec_id="e1"))
    assert err.message == "start"
    state = await h.call("State", api.StateRequest(id="s1", exec_id="e1"))
    assert state.status == task_types.CREATED
    await h.call("Delete", api.DeleteRequest(id="s1", exec_id="e1"))
    err = await h.fails("Kill", api.KillRequest(id="s1", signal=9))
    assert err.message == "kill"
    await h.call("Kill", api.KillRequest(id="s1", signal=9))
    with trio.fail_after(20):
        await h.call("Wait", api.WaitRequest(id="s1"))
    err = await h.fails("Delete", api.DeleteRequest(id="s1"))
    assert err.message == "delete"
    await h.call("Delete", api.DeleteRequest(id="s1"))
    assert "s1" not in await _runc_ids(h)
    assert not is_mounted(h.tmp / "s1" / "rootfs")


async def test_start_after_leaves_it_running_for_the_caller(harness: Harness) -> None:
    h = harness
    await h.create("a1", ["sleep", "1000"], edit=_annotate(Start_after="1*error(lost reply)"))
    err = await h.fails("Start", api.StartRequest(id="a1"))
    assert err.message == "lost reply"
    state = await h.call("State", api.StateRequest(id="a1"))
    assert state.status == task_types.RUNNING
    assert h.events.topics("a1") == ["/tasks/create", "/tasks/start"]
    await h.call("Kill", api.KillRequest(id="a1", signal=9))
    with trio.fail_after(20):
        await h.call("Wait", api.WaitRequest(id="a1"))
    await h.call("Delete", api.DeleteRequest(id="a1"))
    assert "a1" not in await _runc_ids(h)
    assert not is_mounted(Path(h.tmp / "a1" / "rootfs"))


async def test_exec_after_of_a_container_deleted_meanwhile(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = harness
    reached, release = trio.Event(), trio.Event()

    async def trigger(point: str, term: Term | None) -> None:
        if point == "Exec.after":  # hold the Exec there until the container is gone
            reached.set()
            await release.wait()
        await inject.trigger(point, term)

    monkeypatch.setattr(failpoints, "trigger", trigger)
    await h.create("g1", ["sleep", "1000"], edit=_annotate(Exec_after="1*off"))
    container = runc_container(h, "g1")
    async with trio.open_nursery() as nursery:

        async def exec_() -> None:
            err = await h.fails("Exec", exec_request("g1", "e1", ["true"]))
            assert (err.code, err.message) == (Code.NOT_FOUND, "container not created: not found")

        nursery.start_soon(exec_)
        await reached.wait()
        await h.call("Delete", api.DeleteRequest(id="g1"))
        release.set()
    assert not container.execs
    assert "g1" not in await _runc_ids(h)
    assert not is_mounted(h.tmp / "g1" / "rootfs")
