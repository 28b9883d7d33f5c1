"""The WASI runner with real child processes: output, args, env, files, exit codes, signals."""

from __future__ import annotations

import logging
import signal
from pathlib import Path

import pytest
import trio
import trio.testing

from tests.wasm import modules
from tests.wasm.harness import Run, run, run_detached
from trioshim.shim.reaper import open_reaper
from trioshim.wasm import (
    LOAD_FAILED_STATUS,
    TRAP_STATUS,
    WasmLaunchError,
    WasmProcess,
)
from trioshim.wasm.child import MESSAGE_MAX


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    root.mkdir()
    return root


async def test_hello_writes_to_the_containers_stdout(rootfs: Path) -> None:
    module = modules.install(rootfs, "hello.wasm", modules.HELLO)
    async with open_reaper() as reaper:
        outcome = await run(reaper, Run(str(rootfs), [module]))
    assert (outcome.status, outcome.stdout, outcome.stderr) == (0, b"hello, wasm\n", b"")
    assert outcome.process.running.is_set()
    assert outcome.process.failure is None


async def test_output_is_intact_to_the_last_byte(rootfs: Path) -> None:
    module = modules.install(rootfs, "bulk.wasm", modules.BULK_OUTPUT)
    async with open_reaper() as reaper:
        outcome = await run(reaper, Run(str(rootfs), [module]))
    assert outcome.status == 0
    assert outcome.stdout == b"abc"  # no newline, then proc_exit: still all there
    assert outcome.stderr == bytes(range(256)) * 1024 * 16  # 4 MiB through a 64 KiB pipe


async def test_args_and_env_are_passed_through(rootfs: Path) -> None:
    module = modules.install(rootfs, "args.wasm", modules.ARGS_ENV)
    job = Run(str(rootfs), [module, "one", "two words", ""], env=["A=1", "EMPTY=", "B=x=y"])
    async with open_reaper() as reaper:
        outcome = await run(reaper, job)
    assert outcome.status == 0
    assert outcome.stdout == b"/args.wasm\0one\0two words\0\0"
    assert outcome.stderr == b"A=1\0EMPTY=\0B=x=y\0"


async def test_a_module_writes_a_file_into_the_rootfs(rootfs: Path) -> None:
    module = modules.install(rootfs, "write.wasm", modules.WRITE_FILE)
    async with open_reaper() as reaper:
        outcome = await run(reaper, Run(str(rootfs), [module]))
    assert outcome.status == 0
    assert (rootfs / "written.txt").read_bytes() == b"from wasm\n"


async def test_module_path_is_relative_to_cwd_and_resolved_in_the_rootfs(rootfs: Path) -> None:
    (rootfs / "app").mkdir()
    modules.install(rootfs / "app", "hello.wasm", modules.HELLO)
    (rootfs / "link.wasm").symlink_to("/app/hello.wasm")  # absolute: means the rootfs' /app
    async with open_reaper() as reaper:
        relative = await run(reaper, Run(str(rootfs), ["hello.wasm"], cwd="/app"))
        linked = await run(reaper, Run(str(rootfs), ["/link.wasm"]))
    assert (relative.status, relative.stdout) == (0, b"hello, wasm\n")
    assert (linked.status, linked.stdout) == (0, b"hello, wasm\n")


async def test_proc_exit_code_is_the_exit_status(rootfs: Path) -> None:
    module = modules.install(rootfs, "exit7.wasm", modules.EXIT_7)
    async with open_reaper() as reaper:
        outcome = await run(reaper, Run(str(rootfs), [module]))
    assert outcome.status == 7
    assert outcome.process.failure is None


async def test_a_trap_exits_134_and_its_message_goes_to_the_shim_log(
    rootfs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    module = modules.install(rootfs, "trap.wasm", modules.TRAP)
    caplog.set_level(logging.WARNING, logger="trioshim.wasm")
    async with open_reaper() as reaper:
        outcome = await run(reaper, Run(str(rootfs), [module]))
    assert outcome.status == TRAP_STATUS == 134
    assert outcome.stdout == outcome.stderr == b""  # the container's stdio is the module's only
    assert outcome.process.failure is not None
    assert "unreachable" in outcome.process.failure
    assert any(
        "trapped" in r.getMessage() and "unreachable" in r.getMessage() for r in caplog.records
    )


async def test_stack_exhaustion_is_a_trap(rootfs: Path) -> None:
    module = modules.install(rootfs, "recurse.wasm", modules.RECURSE)
    async with open_reaper() as reaper:
        outcome = await run(reaper, Run(str(rootfs), [module]))
    assert outcome.status == TRAP_STATUS
    assert outcome.process.failure is not None
    assert "call stack exhausted" in outcome.process.failure


async def test_a_huge_error_message_is_cut_not_a_hang(rootfs: Path) -> None:
    # 99 000 characters (near the longest name wasmtime parses) quoted in the load error: more
    # than a pipe holds, so the child must cut it or block on a full pipe
    module = modules.install(rootfs, "long.wasm", modules.long_import(99_000))
    async with open_reaper() as reaper:
        outcome = await run(reaper, Run(str(rootfs), [module]))
    assert outcome.status == LOAD_FAILED_STATUS
    assert outcome.process.failure is not None
    assert outcome.process.failure.startswith("cannot load")
    assert len(outcome.process.failure) == MESSAGE_MAX


@pytest.mark.parametrize(
    ("wat", "reason"),
    [(modules.NO_START, "no _start"), (modules.BAD_IMPORT, "missing")],
)
async def test_a_module_that_cannot_load_exits_126_with_the_reason(
    rootfs: Path, wat: str, reason: str
) -> None:
    module = modules.install(rootfs, "bad.wasm", wat)
    async with open_reaper() as reaper:
        outcome = await run(reaper, Run(str(rootfs), [module]))
    assert outcome.status == LOAD_FAILED_STATUS == 126
    assert not outcome.process.running.is_set()
    assert outcome.process.failure is not None and reason in outcome.process.failure
    assert outcome.stderr == b""


@pytest.mark.parametrize(
    ("sig", "status"), [(signal.SIGKILL, 137), (signal.SIGTERM, 143), (signal.SIGINT, 130)]
)
async def test_a_signal_ends_a_looping_module_with_128_plus_its_number(
    rootfs: Path, sig: int, status: int
) -> None:
    module = modules.install(rootfs, "loop.wasm", modules.LOOP)
    send, receive = trio.open_memory_channel[int](1)

    async def kill_once_running(process: WasmProcess) -> None:
        await process.running.wait()
        await send.send(sig)

    async with open_reaper() as reaper, trio.open_nursery() as nursery:
        outcome = await run(
            reaper,
            Run(str(rootfs), [module]),
            signals=receive,
            on_start=lambda process: nursery.start_soon(kill_once_running, process),
        )
    assert outcome.status == status
    assert outcome.process.failure is None


async def test_cancelling_the_run_kills_and_reaps_the_child(rootfs: Path) -> None:
    module = modules.install(rootfs, "loop.wasm", modules.LOOP)
    started: list[WasmProcess] = []

    async def cancel_once_running(process: WasmProcess, scope: trio.CancelScope) -> None:
        await process.running.wait()
        scope.cancel()

    async with open_reaper() as reaper, trio.open_nursery() as nursery:
        with trio.CancelScope() as scope:

            def on_start(process: WasmProcess) -> None:
                started.append(process)
                nursery.start_soon(cancel_once_running, process, scope)

            await run(reaper, Run(str(rootfs), [module]), on_start=on_start)
    assert scope.cancelled_caught
    assert started[0].child.returncode == 137


async def test_a_deadline_on_the_run_kills_and_reaps_in_virtual_time(
    rootfs: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # An hour of virtual time passes as soon as every task waits (on the looping child): the
    # deadline is a cancel scope like any RPC's, and leaving it must leave no process behind.
    module = modules.install(rootfs, "loop.wasm", modules.LOOP)
    started: list[WasmProcess] = []
    async with open_reaper() as reaper:
        with trio.move_on_after(3600) as scope:
            await run(reaper, Run(str(rootfs), [module]), on_start=started.append)
    assert scope.cancelled_caught
    assert trio.current_time() >= 3600
    assert started[0].child.returncode == 137


@pytest.mark.parametrize(
    ("args", "cwd", "message"),
    [
        ([], "/", "args is empty"),
        (["/missing.wasm"], "/", "No such file"),
        (["/"], "/", "not a regular file"),
        (["/text.wasm"], "/", "bad magic"),
        (["/hello.wasm"], "relative", "absolute"),
        (["/hello.wasm"], "/nowhere", "not a directory"),
    ],
)
async def test_bad_launch_fails_before_anything_runs(
    rootfs: Path, args: list[str], cwd: str, message: str
) -> None:
    modules.install(rootfs, "hello.wasm", modules.HELLO)
    (rootfs / "text.wasm").write_text("#!/bin/sh\necho not wasm\n")
    started: list[WasmProcess] = []
    async with open_reaper() as reaper:
        with pytest.raises(WasmLaunchError, match=message):
            await run_detached(reaper, Run(str(rootfs), args, cwd=cwd), on_start=started.append)
    assert started == []
