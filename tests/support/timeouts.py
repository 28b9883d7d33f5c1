"""A wall-clock limit on every test that is not e2e, so a hang fails instead of stalling the run.

A Trio deadline (``trio.fail_after``) cannot be that guard: under ``trio.testing.MockClock``
with autojump it is virtual time, and a test blocked in a system call or a busy loop never
returns to Trio at all. pytest-timeout's ``signal`` method is wall-clock (SIGALRM), but its
handler raises wherever the main thread happens to be: inside Trio's scheduler that abandons
the run half-way, and the abandoned coroutines' finalizers later break unrelated tests (seen
here: an INTERNALERROR in the next test's report). So this plugin keeps pytest-timeout's
marker, options and SIGALRM, and changes what the alarm does:

- during a Trio run (every async test: pytest-trio runs the test and its async fixtures in
  one ``trio.run``) it hands the alarm to Trio's own KeyboardInterrupt delivery, which raises
  in the test at a safe point; the test unwinds through its ``finally`` blocks and nurseries,
  and the interrupt is reported as the test's timeout failure;
- otherwise it fails the test where it is, as pytest-timeout does.

e2e tests are left alone: they drive real daemons with their own per-command limits, and
``scripts/test`` bounds the whole run. A test (or module) that sets its own
``@pytest.mark.timeout`` keeps it. ``$TRIOSHIM_UNIT_TIMEOUT`` (seconds) overrides the default.
"""

from __future__ import annotations

import os
import signal
import threading
import types
from collections.abc import Generator
from typing import Any

import pytest
import pytest_timeout
import trio

UNIT_TIMEOUT_ENV = "TRIOSHIM_UNIT_TIMEOUT"
# Unit tests take well under a second; the slowest (real runc, a busybox rootfs built by the
# first one) take a few seconds, more on a loaded 2-core machine. A hang is caught after this.
DEFAULT_UNIT_TIMEOUT = 60.0

_TIMED_OUT = pytest.StashKey[float]()


def unit_timeout() -> float:
    return float(os.environ.get(UNIT_TIMEOUT_ENV, DEFAULT_UNIT_TIMEOUT))


@pytest.hookimpl(trylast=True)  # after tests/conftest.py has marked tests/e2e as e2e
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    limit = pytest.mark.timeout(unit_timeout(), method="signal")
    for item in items:
        if item.get_closest_marker("e2e") is None and item.get_closest_marker("timeout") is None:
            item.add_marker(limit)


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> bool | None:
    if settings.method != "signal" or threading.current_thread() is not threading.main_thread():
        return None  # pytest-timeout's own timer

    def on_alarm(signum: int, frame: types.FrameType | None) -> None:
        item.stash[_TIMED_OUT] = settings.timeout
        deliver = signal.getsignal(signal.SIGINT)
        if trio.lowlevel.in_trio_run() and deliver is not signal.default_int_handler:
            assert callable(deliver)  # Trio's KeyboardInterrupt handler, installed by trio.run
            deliver(signal.SIGINT, frame)
            return
        pytest_timeout.timeout_sigalrm(item, settings)

    def cancel() -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)

    item.cancel_timeout = cancel  # type: ignore[attr-defined]  # pytest-timeout's cancel hook
    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, settings.timeout)
    return True


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    try:
        return (yield)
    except BaseException as exc:
        timeout = item.stash.get(_TIMED_OUT, None)
        if timeout is None or not _is_interrupt(exc):
            raise
        # A KeyboardInterrupt would end the whole session: it is this test's timeout.
        raise pytest.fail.Exception(pytest_timeout.PYTEST_FAILURE_MESSAGE % timeout) from exc


def _is_interrupt(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return any(_is_interrupt(e) for e in exc.exceptions)
    return isinstance(exc, KeyboardInterrupt)
