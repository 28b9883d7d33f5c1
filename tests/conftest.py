"""Suite-wide fixtures: a private containerd, a busybox rootfs, and the `e2e` marker policy.

Tests marked `e2e` (every test under tests/e2e is marked automatically) need root, containerd,
ctr, runc and busybox-static. Without them they FAIL, loudly; set TRIOSHIM_ALLOW_SKIP_E2E=1 to
turn that into a skip (for a developer laptop, never in CI).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# Make `tests.support` importable whatever pytest's rootdir/import mode did with sys.path.
_REPO = str(Path(__file__).resolve().parent.parent)
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

from tests.support.containerd import CONTAINERD, CTR, PrivateContainerd  # noqa: E402
from tests.support.containerd_lines import LINE_NAMES, ContainerdLine, get_line  # noqa: E402
from tests.support.criu import criu_binary, criu_check  # noqa: E402
from tests.support.line_containerd import LineContainerd  # noqa: E402
from tests.support.rootfs import BUSYBOX, build_busybox_rootfs  # noqa: E402

# pytester: tests/test_timeouts.py runs pytest on generated tests.
pytest_plugins = ["pytester", "tests.support.timeouts"]

_E2E_DIR = Path(__file__).resolve().parent / "e2e"
ALLOW_SKIP_ENV = "TRIOSHIM_ALLOW_SKIP_E2E"
LINES_ENV = "TRIOSHIM_CONTAINERD_LINES"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--containerd-lines",
        default=os.environ.get(LINES_ENV, ",".join(LINE_NAMES)),
        help=(
            "comma-separated containerd lines the `containerd` fixture runs on "
            f"(default ${LINES_ENV}, else all: {','.join(LINE_NAMES)})"
        ),
    )


def selected_lines(config: pytest.Config) -> list[str]:
    value = str(config.getoption("--containerd-lines"))
    names = [n.strip().removeprefix("containerd-") for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in LINE_NAMES]
    if unknown:
        raise pytest.UsageError(f"--containerd-lines: unknown {unknown}; known {LINE_NAMES}")
    return names


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test that uses the `containerd_line` fixture (directly or through `containerd`)
    runs once per selected line; tests are grouped by line (one daemon at a time)."""
    if "containerd_line" in metafunc.fixturenames:
        names = selected_lines(metafunc.config)
        metafunc.parametrize(
            "containerd_line",
            names,
            indirect=True,
            scope="session",
            ids=[f"containerd-{n}" for n in names],
        )


def e2e_missing() -> str | None:
    """Why e2e tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "e2e tests need root (containerd, runc and mounts)"
    for tool in (CONTAINERD, CTR, str(BUSYBOX)):
        if not os.access(tool, os.X_OK):
            return f"{tool} is missing (apt-get install containerd runc busybox-static)"
    if shutil.which("runc") is None:
        return "runc is missing (apt-get install runc)"
    return None


def require_e2e() -> None:
    why = e2e_missing()
    if why is None:
        return
    if os.environ.get(ALLOW_SKIP_ENV) == "1":
        pytest.skip(f"{why} ({ALLOW_SKIP_ENV}=1)")
    pytest.fail(f"{why}; set {ALLOW_SKIP_ENV}=1 to skip e2e tests instead", pytrace=False)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _E2E_DIR in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("e2e") is not None:
        require_e2e()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        funcargs = getattr(item, "funcargs", {})
        seen: set[int] = set()
        for value in funcargs.values():
            # The daemon itself, or a helper object that carries one as `.containerd`.
            daemon = value if isinstance(value, PrivateContainerd) else None
            if daemon is None and isinstance(getattr(value, "containerd", None), PrivateContainerd):
                daemon = value.containerd
            if daemon is not None and id(daemon) not in seen:
                seen.add(id(daemon))
                report.sections.append(
                    (f"containerd log tail ({daemon.log_path})", daemon.log_tail())
                )


@pytest.fixture(scope="session")
def containerd_line(request: pytest.FixtureRequest) -> ContainerdLine:
    """The containerd line under test (parametrized by pytest_generate_tests); fetched into
    the cache on first use (tests.support.containerd_lines)."""
    require_e2e()
    return get_line(str(request.param))


@pytest.fixture(scope="session")
def containerd(containerd_line: ContainerdLine) -> Iterator[LineContainerd]:
    """A private containerd of the line under test for the whole session (own root, state,
    sockets, unique namespace)."""
    daemon = LineContainerd(containerd_line)
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="session")
def namespace(containerd: PrivateContainerd) -> str:
    """The containerd namespace every test of this run uses (unique to the run)."""
    return containerd.namespace


@pytest.fixture(scope="session")
def criu() -> Path:
    """criu 4.x as scripts/setup builds it (tests.support.criu; built now if the cache has none).
    Fails, never skips, when `criu check` fails on this machine."""
    binary = criu_binary()
    problem = criu_check(binary)
    if problem:
        pytest.fail(f"{binary} cannot checkpoint on this machine: criu check: {problem}")
    return binary


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A busybox root filesystem directory (for `ctr run --rootfs DIR`)."""
    require_e2e()
    return build_busybox_rootfs(tmp_path_factory.mktemp("rootfs") / "busybox")
