"""Fake cgroup and /proc trees written into a test's tmp_path, so the cgroup readers can be
checked against files whose every value the test chose."""

from __future__ import annotations

from pathlib import Path

PID = 4242  # the pid whose /proc/PID/cgroup the fake trees describe


def write_files(directory: Path, files: dict[str, str]) -> None:
    """Create directory (and parents) holding one file per name with the given text."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)


def fake_proc(tmp_path: Path, text: str, pid: int = PID) -> Path:
    """A fake /proc under tmp_path whose pid/cgroup holds text; returns that /proc."""
    proc = tmp_path / "proc"
    write_files(proc / str(pid), {"cgroup": text})
    return proc
