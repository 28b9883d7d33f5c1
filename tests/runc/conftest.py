"""Fixtures of the runc tests: `harness` (the task service in-process, see
tests/runc/service_harness.py) and `fifos` (containerd's FIFOs for one process)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.runc.service_harness import Harness, open_harness
from tests.runc.stdio_helpers import Fifos


@pytest.fixture
async def harness(tmp_path: Path, busybox_rootfs: Path) -> AsyncIterator[Harness]:
    async with open_harness(tmp_path, busybox_rootfs) as h:
        yield h


@pytest.fixture
def fifos(tmp_path: Path) -> Fifos:
    """containerd's three FIFOs for one process, in ``tmp_path``."""
    return Fifos(tmp_path)
