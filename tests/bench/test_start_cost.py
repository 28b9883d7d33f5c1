"""bench.start_cost's driver lets go of what it started, also when no fork server came."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from bench import start_cost


def test_closing_without_a_server_does_not_wait_for_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    waits: list[Any] = []
    monkeypatch.setattr(start_cost, "wait_until", lambda *args, **kw: waits.append(args) or [])
    driver = start_cost.Driver("/bin/false", tmp_path)
    fifo = driver.bundle("c0") / "log"
    driver.close()
    assert waits == []  # an error path must not wait two minutes for a server that never came
    assert driver.fifos == []
    assert not any(os.path.realpath(f"/proc/self/fd/{fd}") == str(fifo) for fd in _fds())


def _fds() -> list[int]:
    return [int(fd) for fd in os.listdir("/proc/self/fd")]
