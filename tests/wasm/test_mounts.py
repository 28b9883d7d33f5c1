"""What a module sees of the filesystem: the rootfs (read-only if the spec says so) and the
spec's directory bind mounts (a pod's volumes) at their destinations."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.wasm import modules
from tests.wasm.harness import Run, run
from trioshim.shim.reaper import open_reaper
from trioshim.wasm import resolve_launch


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    root.mkdir()
    return root


def _bind(source: Path, destination: str, *options: str) -> dict[str, object]:
    return {
        "type": "bind",
        "source": str(source),
        "destination": destination,
        "options": ["rbind", *options],
    }


def test_directory_binds_become_preopens_and_the_rest_is_left_out(
    rootfs: Path, tmp_path: Path
) -> None:
    modules.install(rootfs, "hello.wasm", modules.HELLO)
    volume = tmp_path / "volume"
    volume.mkdir()
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")
    mounts = [
        {"type": "proc", "source": "proc", "destination": "/proc"},
        {"type": "tmpfs", "source": "tmpfs", "destination": "/dev", "options": ["nosuid"]},
        _bind(volume, "/data/"),
        {"source": str(volume), "destination": "/cache", "options": ["bind", "ro"]},
        _bind(hosts, "/etc/hosts"),  # a file: WASI preopens directories only
    ]
    request = resolve_launch(str(rootfs), ["/hello.wasm"], [], "/", mounts=mounts)
    assert request.preopens == (
        (str(rootfs), "/", True),
        (str(volume), "/data", True),
        (str(volume), "/cache", False),
    )


async def test_a_module_writes_into_a_volume(rootfs: Path, tmp_path: Path) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    module = modules.install(rootfs, "write.wasm", modules.write_file(dirfd=4))  # 2nd preopen
    spec = {"mounts": [_bind(volume, "/data", "rw")]}
    async with open_reaper() as reaper:
        outcome = await run(reaper, Run(str(rootfs), [module], spec=spec))
    assert outcome.status == 0
    assert (volume / "written.txt").read_bytes() == b"from wasm\n"
    assert not (rootfs / "written.txt").exists()


@pytest.mark.parametrize("where", ["readonly root", "ro volume"])
async def test_read_only_filesystems_refuse_the_write(
    rootfs: Path, tmp_path: Path, where: str
) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    if where == "readonly root":
        module = modules.install(rootfs, "write.wasm", modules.WRITE_FILE)
        spec: dict[str, object] = {"root": {"path": "rootfs", "readonly": True}}
        target = rootfs / "written.txt"
    else:
        module = modules.install(rootfs, "write.wasm", modules.write_file(dirfd=4))
        spec = {"mounts": [_bind(volume, "/data", "ro")]}
        target = volume / "written.txt"
    async with open_reaper() as reaper:
        outcome = await run(reaper, Run(str(rootfs), [module], spec=spec))
    assert outcome.status == 63  # WASI's EPERM from path_open, passed to proc_exit
    assert not target.exists()
