"""unmount_all's first look: is anything mounted on the target (mountinfo's escaped fields)?"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import trio

from trioshim.shim import mounts

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="bind mounts need root")


@needs_root
def test_a_mount_point_is_told_from_a_plain_directory(tmp_path: Path) -> None:
    target = tmp_path / "a dir\twith\\escapes"  # written as octal escapes in mountinfo
    target.mkdir()
    assert not mounts._is_mount_point(str(target))
    subprocess.run(["mount", "--bind", str(tmp_path), str(target)], check=True)
    try:
        assert mounts._is_mount_point(str(target))
        assert not mounts._is_mount_point(str(tmp_path))
    finally:
        trio.run(mounts.unmount_all, str(target))
    assert not mounts._is_mount_point(str(target))
