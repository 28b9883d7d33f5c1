"""The compiled-module cache: filled on the first start, used on the next, never trusted blindly
from a directory others could write."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
from pathlib import Path

import pytest
import wasmtime

from tests.wasm import modules
from tests.wasm.harness import Run, run, run_detached
from trioshim.shim.reaper import open_reaper
from trioshim.wasm import WasmError


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    root.mkdir()
    return root


def _hello(rootfs: Path, cache: Path) -> tuple[Run, Path]:
    """A hello job using ``cache``, and where its compiled form goes once it ran."""
    module = modules.install(rootfs, "hello.wasm", modules.HELLO)
    key = hashlib.sha256((rootfs / "hello.wasm").read_bytes()).hexdigest()
    version = importlib.metadata.version("wasmtime")
    entry = cache / f"wasmtime-{version}" / f"{key}.cwasm"
    return Run(str(rootfs), [module], cache_dir=str(cache)), entry


async def test_the_first_start_fills_the_cache_and_the_next_uses_it(
    rootfs: Path, tmp_path: Path
) -> None:
    job, entry = _hello(rootfs, tmp_path / "cache")
    async with open_reaper() as reaper:
        first = await run(reaper, job)
        assert entry.is_file()
        # Swap in the compiled form of another module under hello's name: a start that reads
        # the cache runs *that* one (which is also why the directory must be ours alone).
        engine = wasmtime.Engine()
        entry.write_bytes(wasmtime.Module(engine, wasmtime.wat2wasm(modules.EXIT_7)).serialize())
        second = await run(reaper, job)
    assert (first.status, first.stdout) == (0, b"hello, wasm\n")
    assert (second.status, second.stdout) == (7, b"")
    assert sorted(p.name for p in entry.parent.iterdir()) == [entry.name]  # no partial files


async def test_an_unusable_entry_is_compiled_again_and_replaced(
    rootfs: Path, tmp_path: Path
) -> None:
    job, entry = _hello(rootfs, tmp_path / "cache")
    async with open_reaper() as reaper:
        await run(reaper, job)
        entry.write_bytes(b"not a compiled module")
        outcome = await run(reaper, job)
    assert (outcome.status, outcome.stdout) == (0, b"hello, wasm\n")
    assert entry.read_bytes() != b"not a compiled module"


@pytest.mark.parametrize("mode", [0o770, 0o707])
async def test_a_cache_others_can_write_is_refused(rootfs: Path, tmp_path: Path, mode: int) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    os.chmod(cache, mode)
    module = modules.install(rootfs, "hello.wasm", modules.HELLO)
    async with open_reaper() as reaper:
        with pytest.raises(WasmError, match="writable by it alone"):
            await run_detached(reaper, Run(str(rootfs), [module], cache_dir=str(cache)))
