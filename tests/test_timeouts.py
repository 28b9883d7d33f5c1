"""The suite-wide limit (tests/support/timeouts.py): a hanging unit test fails, the run goes on.

A generated test file runs in a separate pytest process with the plugin loaded and a 1 s
limit; its hangs (Trio ones under autojump, a blocking call inside a Trio test, a plain
blocking call) must each fail with the timeout, unwind through their ``finally`` blocks, and
leave the following tests (Trio ones included) to pass.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.timeouts import UNIT_TIMEOUT_ENV

REPO = str(Path(__file__).resolve().parent.parent)

HANGS = """
import os
import threading
import time

import pytest
import trio
import trio.testing

UNWOUND = os.environ["UNWOUND"]

def unwound(name):
    with open(UNWOUND, "a") as f:
        f.write(name + "\\n")

@pytest.fixture
def autojump_clock():
    return trio.testing.MockClock(autojump_threshold=0)

async def test_trio_hang_under_autojump(autojump_clock):
    r, w = os.pipe()
    try:
        # Trio's clock is virtual here and nothing is scheduled: only a wall-clock guard
        # ends this wait (a trio.fail_after would only jump the virtual clock)
        await trio.lowlevel.wait_readable(r)
    finally:
        unwound("trio_hang")

async def test_trio_blocking_call():
    try:
        time.sleep(3600)  # blocks Trio itself
    finally:
        unwound("trio_blocking")

async def test_trio_nursery_child_hangs():
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.sleep_forever)

def test_sync_hang():
    try:
        threading.Event().wait()
    finally:
        unwound("sync")

@pytest.mark.e2e
def test_e2e_is_not_limited():
    threading.Event().wait(1.5)

async def test_trio_still_works_after(autojump_clock):
    await trio.sleep(10)

def test_fast():
    pass
"""


def test_hanging_tests_fail_and_the_run_goes_on(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    unwound = pytester.path / "unwound"
    # the child pytest imports the plugin from this checkout, whatever its working directory
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv(UNIT_TIMEOUT_ENV, "1")
    monkeypatch.setenv("UNWOUND", str(unwound))
    pytester.makepyfile(test_hangs=HANGS)
    pytester.makeini("[pytest]\ntrio_mode = true\nmarkers = e2e: not limited\n")
    result = pytester.runpytest_subprocess("-p", "tests.support.timeouts", "-rA", timeout=300)

    result.assert_outcomes(passed=3, failed=4)
    out = result.stdout.str()
    for name in ("trio_hang_under_autojump", "trio_blocking_call", "trio_nursery_child_hangs"):
        assert f"FAILED test_hangs.py::test_{name} - Failed: Timeout (>1.0s)" in out
    assert "FAILED test_hangs.py::test_sync_hang - Failed: Timeout (>1.0s)" in out
    for name in ("e2e_is_not_limited", "trio_still_works_after", "fast"):
        assert f"PASSED test_hangs.py::test_{name}" in out
    assert sorted(unwound.read_text().split()) == ["sync", "trio_blocking", "trio_hang"]
    assert "INTERNALERROR" not in out and "Warning" not in out
