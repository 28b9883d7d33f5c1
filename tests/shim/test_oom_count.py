"""OOMCount on a fake v2 cgroup (memory.events written by the test); the v1 eventfd is counted
on a real cgroup in tests/wasm/test_cgroup_limits.py."""

from __future__ import annotations

from pathlib import Path

from trioshim.shim.cgroups.oom import OOMCount


def _events(directory: Path, oom: int, oom_kill: int) -> None:
    (directory / "memory.events").write_text(
        f"low 0\nhigh 0\nmax 9\noom {oom}\noom_kill {oom_kill}\noom_group_kill 0\n"
    )


def test_v2_counts_oom_events_since_it_was_opened(tmp_path: Path) -> None:
    _events(tmp_path, oom=2, oom_kill=1)  # before: not ours
    count = OOMCount.open(str(tmp_path), unified=True)
    try:
        assert count.take() == 0
        _events(tmp_path, oom=5, oom_kill=2)  # three OOMs, one killing
        assert count.take() == 3
        assert count.take() == 0  # taken once
        (tmp_path / "memory.events").unlink()  # the cgroup went away
        assert count.take() == 0
    finally:
        count.close()
    assert count.take() == 0  # closed: nothing more, no error
