"""The `harness` fixture: the task service in-process (tests/runc/service_harness.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.runc.service_harness import Harness, open_harness


@pytest.fixture
async def harness(tmp_path: Path, busybox_rootfs: Path) -> AsyncIterator[Harness]:
    async with open_harness(tmp_path, busybox_rootfs) as h:
        yield h
