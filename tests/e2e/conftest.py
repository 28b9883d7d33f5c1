"""End-to-end fixtures: every test runs once per runtime (the Go reference and ours).

The `e2e` fixture wraps the session's private containerd for one test and one runtime: it hands
out container ids, runs `ctr` with timeouts, and after the test checks that nothing the test
created is left behind (task, container, shim process, shim socket, bundle, mount), cleaning up
by force if something is, and failing the test then.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.containerd import PrivateContainerd
from tests.support.containerd_lines import ContainerdLine
from tests.support.line_containerd import LineContainerd

from .helpers import E2E, RUNTIMES, on_own_containerd, wait_for


@pytest.fixture(params=list(RUNTIMES.values()), ids=list(RUNTIMES))
def runtime(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def e2e(
    request: pytest.FixtureRequest,
    containerd: PrivateContainerd,
    busybox_rootfs: Path,
    runtime: str,
) -> Iterator[E2E]:
    env = E2E(containerd, busybox_rootfs, runtime, request.node.name)
    yield env
    if not containerd.running:
        return
    # Shims exit shortly after their last Delete/Shutdown: give them a moment.
    try:
        wait_for(lambda: not env.leftovers(), timeout=10, interval=0.1)
        return
    except AssertionError:
        left = env.leftovers()
    env.force_cleanup()
    failed = getattr(request.node, "rep_call", None)
    if failed is None or not failed.failed:
        pytest.fail(f"left behind after the test: {left}", pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call":
        item.rep_call = rep  # type: ignore[attr-defined]


@pytest.fixture
def make_containerd(containerd_line: ContainerdLine) -> Callable[..., LineContainerd]:
    """A factory for extra private daemons of the line under test (not started)."""

    def make(**kwargs: Any) -> LineContainerd:
        return LineContainerd(containerd_line, **kwargs)

    return make


@pytest.fixture
def private_e2e(
    request: pytest.FixtureRequest,
    busybox_rootfs: Path,
    runtime: str,
    make_containerd: Callable[..., LineContainerd],
) -> Iterator[E2E]:
    """Like `e2e`, on a containerd of its own (for tests that restart or break containerd)."""
    with on_own_containerd(request, make_containerd(), busybox_rootfs, runtime) as env:
        yield env
