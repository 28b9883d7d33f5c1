"""Start latency of a WASI module through the wasm runner (no containerd involved).

    .venv/bin/python -m bench.wasm_start [--iterations 20]

Each row runs a module with :func:`trioshim.wasm.run_module` in this process (a real child
through the reaper, stdout a pipe) and times, from the call: the first byte on stdout (the
module is running) and the exit being reported. Rows, interleaved round by round so that load
drifts hit all of them alike:

- ``python -I`` and ``import wasmtime``: what any child pays before the module (floor);
- ``hello``: a 12-byte fd_write module;
- ``big, no cache`` / ``big, cached``: a generated 4000-function module (~170 KB), compiled on
  every start vs. loaded from the compiled-module cache (trioshim/wasm/cache.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from bench.results import summary
from tests.wasm import modules
from trioshim.shim.reaper import DEVNULL, Reaper, open_reaper
from trioshim.wasm import run_module


def _big_module(functions: int = 4000) -> str:
    body = []
    for i in range(functions):
        callee = max(i - 1, 0)
        body.append(
            f"(func $f{i} (param i32) (result i32) (local i32)"
            f" (local.set 1 (i32.mul (local.get 0) (i32.const {i})))"
            f" (if (i32.gt_u (local.get 1) (i32.const 100)) (then (local.set 1"
            f" (i32.add (local.get 1) (call $f{callee} (i32.const 1))))))"
            " (local.get 1))"
        )
    return (
        '(module (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32)'
        ' (result i32))) (memory (export "memory") 1) (data (i32.const 16) "x")'
        + " ".join(body)
        + ' (func (export "_start") (drop (call $f3999 (i32.const 0)))'
        " (i32.store (i32.const 0) (i32.const 16)) (i32.store (i32.const 4) (i32.const 1))"
        " (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"
    )


async def _timed(start: Callable[[int], Awaitable[int]]) -> tuple[float, float]:
    """(first stdout byte, exit) in seconds from the call; ``start(stdout_fd)`` runs it."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    began = time.perf_counter()
    first = 0.0
    async with trio.open_nursery() as nursery:

        async def first_byte() -> None:
            nonlocal first
            async with trio.lowlevel.FdStream(read_end) as stream:
                if await stream.receive_some(1):
                    first = time.perf_counter() - began
                while await stream.receive_some(65536):
                    pass

        nursery.start_soon(first_byte)
        try:
            status = await start(write_end)
        finally:
            os.close(write_end)
    if status != 0:
        raise RuntimeError(f"exit status {status}")
    return first, time.perf_counter() - began


def _python(reaper: Reaper, code: str) -> Callable[[int], Awaitable[int]]:
    async def start(stdout: int) -> int:
        child = reaper.spawn([sys.executable, "-I", "-c", code], stdin=DEVNULL, stdout=stdout)
        return await child.wait()

    return start


def _module(
    reaper: Reaper, rootfs: Path, name: str, cache: str | None
) -> Callable[[int], Awaitable[int]]:
    async def start(stdout: int) -> int:
        _, signals = trio.open_memory_channel[int](0)
        return await run_module(
            reaper,
            spec={},
            rootfs=str(rootfs),
            args=[name],
            env=[],
            cwd="/",
            stdin=None,
            stdout=stdout,
            stderr=None,
            signals=signals,
            cache_dir=cache,
        )

    return start


async def _measure(
    rootfs: Path, cache: str, iterations: int
) -> dict[str, list[tuple[float, float]]]:
    async with open_reaper() as reaper:
        rows = {
            "python -I (exit only)": _python(reaper, "import os; os.write(1, b'x')"),
            "python -I, import wasmtime": _python(reaper, "import os, wasmtime; os.write(1, b'x')"),
            "hello": _module(reaper, rootfs, "/hello.wasm", None),
            "hello, cached": _module(reaper, rootfs, "/hello.wasm", cache),
            "big, no cache": _module(reaper, rootfs, "/big.wasm", None),
            "big, cached": _module(reaper, rootfs, "/big.wasm", cache),
        }
        await _timed(rows["big, cached"])  # fill the cache (and warm the page cache)
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in rows}
        for _ in range(iterations):
            for name, start in rows.items():
                results[name].append(await _timed(start))
    return results


def main(iterations: int) -> None:
    with tempfile.TemporaryDirectory(prefix="wasm-bench-") as tmp:
        rootfs = Path(tmp, "rootfs")
        rootfs.mkdir()
        modules.install(rootfs, "hello.wasm", modules.HELLO)
        modules.install(rootfs, "big.wasm", _big_module())
        results = trio.run(_measure, rootfs, os.path.join(tmp, "cache"), iterations)
    print(f"{'row':28} {'first byte ms: min / median / p90':>34} {'exit ms, median':>16}")
    for name, samples in results.items():
        first = summary([s[0] * 1e3 for s in samples])
        done = summary([s[1] * 1e3 for s in samples])
        print(
            f"{name:28} {first['min']:11.1f} / {first['median']:7.1f} / {first['p90']:7.1f}"
            f" {done['median']:16.1f}"
        )
    print(f"{iterations} rounds; load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20)
    main(parser.parse_args().iterations)
