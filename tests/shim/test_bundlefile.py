"""Bundle files read in the event loop: never a wait, never an unbounded read."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from trioshim.shim.bundlefile import read_bundle_file


def test_a_regular_file_is_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    data = os.urandom(3 << 20)  # over one read's chunk
    path.write_bytes(data)
    assert read_bundle_file(str(path)) == data


def test_a_fifo_without_a_writer_is_refused_not_waited_on(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    os.mkfifo(path)
    with pytest.raises(OSError) as raised:
        read_bundle_file(str(path))  # a blocking open would never return: no writer
    assert raised.value.errno == errno.EINVAL


def test_a_directory_and_a_missing_file_are_oserrors(tmp_path: Path) -> None:
    with pytest.raises(OSError) as raised:
        read_bundle_file(str(tmp_path))
    assert raised.value.errno == errno.EINVAL
    with pytest.raises(FileNotFoundError):
        read_bundle_file(str(tmp_path / "missing"))


def test_a_file_over_the_limit_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(b"x" * 1001)
    with pytest.raises(OSError) as raised:
        read_bundle_file(str(path), limit=1000)
    assert raised.value.errno == errno.EFBIG
    assert read_bundle_file(str(path), limit=1001) == b"x" * 1001


def test_no_descriptor_is_left_open(tmp_path: Path) -> None:
    before = len(os.listdir("/proc/self/fd"))
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "file").write_bytes(b"{}")
    with pytest.raises(OSError):
        read_bundle_file(str(tmp_path / "fifo"))
    assert read_bundle_file(str(tmp_path / "file")) == b"{}"
    assert len(os.listdir("/proc/self/fd")) == before
