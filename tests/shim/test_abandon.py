"""A daemon containerd abandoned before its first request shuts down; a claimed one never
does because of it (virtual time)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from tests.shim.test_daemon import Quick, exists, quiet_shutdown, registry, stages
from trioshim.api.containerd.runtime.task.v2 import shim_pb2
from trioshim.shim.abandon import BUNDLE_CHECK_INTERVAL, Claim
from trioshim.testing import connect_task, open_shim
from trioshim.ttrpc import Server
from trioshim.ttrpc.errors import Unavailable

BOUND = 30.0


@pytest.fixture
def bundle() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="bundle-", dir="/tmp")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def test_no_request_within_the_bound(
    autojump_clock: trio.testing.MockClock, bundle: str
) -> None:
    # A connection that sends nothing (what containerd 1.6 leaves when it gives up) does not
    # claim the daemon.
    async with open_shim(Quick(), registry([]), bundle=bundle, abandon_timeout=BOUND) as shim:
        started = trio.current_time()
        with trio.fail_after(10 * BOUND):
            assert await shim.wait() == 0
        assert trio.current_time() - started == BOUND
        assert not exists(shim.socket_path)
    assert stages(shim.trace) == quiet_shutdown(f"abandoned: no request within {BOUND:g}s of start")
    assert any("containerd abandoned this daemon" in line for line in shim.log)


@pytest.mark.parametrize("how", ["removed", "replaced"])
async def test_bundle_removed_before_any_request(
    autojump_clock: trio.testing.MockClock, bundle: str, how: str
) -> None:
    async with open_shim(Quick(), registry([]), bundle=bundle, abandon_timeout=BOUND) as shim:
        shutil.rmtree(bundle)
        if how == "replaced":  # same path, another bundle: not ours
            os.mkdir(bundle)
        removed = trio.current_time()
        with trio.fail_after(10 * BOUND):
            assert await shim.wait() == 0
        assert trio.current_time() - removed <= BUNDLE_CHECK_INTERVAL
        assert not exists(shim.socket_path)
    assert stages(shim.trace) == quiet_shutdown("abandoned: bundle removed before any request")


async def test_claimed_daemon_outlives_its_bundle_and_silence(
    autojump_clock: trio.testing.MockClock, bundle: str
) -> None:
    # Grouping (the first container's bundle goes while others run) and containerd restarts
    # (no client for a long time): once a request came, neither ends the daemon.
    async with open_shim(Quick(), registry([]), bundle=bundle, abandon_timeout=BOUND) as shim:
        assert (await shim.task.Connect(shim_pb2.ConnectRequest(id="t"))).shim_pid
        shutil.rmtree(bundle)
        await shim.client.aclose()
        await trio.sleep(100 * BOUND)
        assert not shim.exited.is_set()
        assert not any(stage.startswith("shutdown:") for stage in shim.trace)
        async with connect_task(shim.address) as task:
            assert (await task.Connect(shim_pb2.ConnectRequest(id="t"))).shim_pid


async def test_off_by_default(autojump_clock: trio.testing.MockClock, bundle: str) -> None:
    async with open_shim(Quick(), registry([]), bundle=bundle) as shim:
        shutil.rmtree(bundle)
        await trio.sleep(100 * BOUND)
        assert not shim.exited.is_set()


async def test_a_request_read_once_the_daemon_is_given_up_is_refused() -> None:
    # The watcher's decision and the first request race; exactly one wins, with no
    # checkpoint between the check and the decision.
    late = Claim()
    assert late.abandon()
    with pytest.raises(Unavailable, match="abandoned"):
        late.claim()
    assert not late.claimed.is_set()

    early = Claim()
    early.claim()
    assert not early.abandon()
    assert early.claimed.is_set() and not early.abandoned


class _Misspelt:
    async def Creat(self, ctx: object, request: object) -> object:
        raise AssertionError("never called")


async def test_a_misspelt_handler_is_refused_by_a_claiming_server() -> None:
    service = shim_pb2.DESCRIPTOR.services_by_name["Task"]
    with pytest.raises(TypeError, match="Creat is not an rpc"):
        Server(interceptor=Claim().intercept).register(service, _Misspelt())
