"""Fixtures for the containerd-lines and CRI suites (all `e2e`: root, real binaries; the e2e
requirements are checked by tests/conftest.py's setup hook before these fixtures run).

- `line_containerd`: a private containerd of one fetched line (1.7, 2.1), module-scoped, for
  plain `ctr` tests.
- `cri_containerd`: a private containerd of each line (1.6, 1.7, 2.1) with the CRI plugin
  configured (tests.support.cri.CRIContainerd), module-scoped: tests are grouped per line.
- `pause_image_tar`: the busybox sandbox image, built once per session.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.containerd_lines import FETCHED_LINE_NAMES, LINE_NAMES, get_line
from tests.support.cri import CRIContainerd
from tests.support.line_containerd import LineContainerd
from tests.support.pause_image import build_pause_image

# "containerd-1.7 runc" -> what test_one_shim_serves_the_pod saw; printed at the end of the run.
_SHIMS_PER_POD: dict[str, str] = {}


@pytest.fixture(scope="session")
def shims_per_pod() -> dict[str, str]:
    return _SHIMS_PER_POD


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _SHIMS_PER_POD:
        terminalreporter.section("CRI: shim daemons per pod (observed)")
        for key, value in sorted(_SHIMS_PER_POD.items()):
            terminalreporter.write_line(f"{key}: {value}")


@pytest.fixture(scope="session")
def pause_image_tar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_pause_image(tmp_path_factory.mktemp("pause") / "pause.tar")


@pytest.fixture(scope="module", params=FETCHED_LINE_NAMES, ids=lambda n: f"containerd-{n}")
def line_containerd(request: pytest.FixtureRequest) -> Iterator[LineContainerd]:
    daemon = LineContainerd(get_line(request.param))
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="module", params=LINE_NAMES, ids=lambda n: f"containerd-{n}")
def cri_containerd(
    request: pytest.FixtureRequest, pause_image_tar: Path
) -> Iterator[CRIContainerd]:
    daemon = CRIContainerd(get_line(request.param), image_tar=pause_image_tar)
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.stop()
