"""README.md's "Write your own shim" runs as written (in-process, on MockClock)."""

from __future__ import annotations

from pathlib import Path

import trio.testing

from tests.task.readme_shim import load_readme_shim, readme_shim_source
from trioshim.testing.task import open_task_shim


def test_the_block_is_a_complete_program() -> None:
    source = readme_shim_source()
    assert "task.main(" in source and "import trioshim.task" in source


async def test_the_readme_shim_runs_a_container(
    mock_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    readme = load_readme_shim()
    log = tmp_path / "log"
    async with open_task_shim(readme.HostProcess()) as kit:
        status = await kit.run(
            "c1", ["/bin/sh", "-c", "echo from-readme; exit 5"], stdout=f"file://{log}"
        )
        await kit.wait_for_events(4)
    assert (status, log.read_text()) == (5, "from-readme\n")
    assert kit.topics("c1") == ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"]
