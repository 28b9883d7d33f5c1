"""The task service with real runc: stdio through FIFOs and terminals, as ctr does it (see
test_service.py)."""

from __future__ import annotations

import os
import shutil
from typing import Any

import pytest
import trio
import trio.testing

from tests.runc.service_harness import Harness, add_exec, is_mounted
from trioshim.api.containerd.runtime.task.v2 import shim_pb2 as api
from trioshim.api.containerd.types.task import task_pb2 as task_types
from trioshim.ttrpc.errors import Code

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("runc") is None, reason="needs root and runc"
)

# --- stdio through FIFOs, as ctr does it ------------------------------------------------------


async def _read_until(fd: int, expected: bytes) -> bytes:
    data = b""
    with trio.fail_after(20):
        while expected not in data:
            await trio.lowlevel.wait_readable(fd)
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                break
            data += chunk
    return data


async def test_stdin_needs_closeio_and_writer_gone(harness: Harness) -> None:
    h = harness
    fifos = h.tmp / "fifos"
    fifos.mkdir()
    stdin, stdout = fifos / "in", fifos / "out"
    os.mkfifo(stdin)
    os.mkfifo(stdout)
    out_r = os.open(stdout, os.O_RDONLY | os.O_NONBLOCK)
    in_w = os.open(stdin, os.O_RDWR | os.O_NONBLOCK)  # a client writer that never blocks
    try:
        await h.create("s1", ["cat"], stdin=str(stdin), stdout=str(stdout))
        await h.call("Start", api.StartRequest(id="s1"))
        os.write(in_w, b"hello\n")
        assert await _read_until(out_r, b"hello\n") == b"hello\n"
        os.close(in_w)
        in_w = -1
        # The client's writer is gone but the shim keeps stdin open until CloseIO: its own
        # writer still holds the FIFO, so a reader finds no end of file there (EAGAIN, not
        # b""), and a later client's line still reaches cat.
        probe = os.open(stdin, os.O_RDONLY | os.O_NONBLOCK)
        try:
            with pytest.raises(BlockingIOError):
                os.read(probe, 1)
        finally:
            os.close(probe)
        in_w = os.open(stdin, os.O_WRONLY | os.O_NONBLOCK)
        os.write(in_w, b"again\n")
        os.close(in_w)
        in_w = -1
        assert await _read_until(out_r, b"again\n") == b"again\n"
        state = await h.call("State", api.StateRequest(id="s1"))
        assert state.status == task_types.RUNNING
        assert (state.stdin, state.stdout) == (str(stdin), str(stdout))
        await h.call("CloseIO", api.CloseIORequest(id="s1", stdin=True))
        await h.call("CloseIO", api.CloseIORequest(id="s1", stdin=True))  # idempotent
        with trio.fail_after(20):
            waited = await h.call("Wait", api.WaitRequest(id="s1"))
        assert waited.exit_status == 0
        await h.call("Delete", api.DeleteRequest(id="s1"))
        assert await _read_until(out_r, b"\0") == b""  # EOF once the shim closed its side
    finally:
        os.close(out_r)
        if in_w >= 0:
            os.close(in_w)


async def test_terminal_and_resize(harness: Harness) -> None:
    h = harness
    stdout = h.tmp / "tty-out"
    os.mkfifo(stdout)
    out_r = os.open(stdout, os.O_RDONLY | os.O_NONBLOCK)

    def tty(spec: dict[str, Any]) -> None:
        spec["process"]["terminal"] = True

    try:
        await h.create(
            "t1", ["sh", "-c", "stty size; exit 6"], terminal=True, stdout=str(stdout), edit=tty
        )
        await h.call("ResizePty", api.ResizePtyRequest(id="t1", width=123, height=45))
        await h.call("Start", api.StartRequest(id="t1"))
        output = await _read_until(out_r, b"45 123")
        assert b"45 123" in output
        with trio.fail_after(20):
            waited = await h.call("Wait", api.WaitRequest(id="t1"))
        assert waited.exit_status == 6
        await h.call("Delete", api.DeleteRequest(id="t1"))
    finally:
        os.close(out_r)


async def test_exec_with_terminal(harness: Harness) -> None:
    h = harness
    stdout = h.tmp / "exec-tty-out"
    os.mkfifo(stdout)
    out_r = os.open(stdout, os.O_RDONLY | os.O_NONBLOCK)
    try:
        await h.create("t2", ["sleep", "1000"])
        await h.call("Start", api.StartRequest(id="t2"))
        await add_exec(h, "t2", "e1", ["echo", "hi"], terminal=True, stdout=str(stdout))
        await h.call("Start", api.StartRequest(id="t2", exec_id="e1"))
        assert b"hi\r\n" in await _read_until(out_r, b"hi\r\n")  # through a pty
        with trio.fail_after(20):
            waited = await h.call("Wait", api.WaitRequest(id="t2", exec_id="e1"))
        assert waited.exit_status == 0
        state = await h.call("State", api.StateRequest(id="t2", exec_id="e1"))
        assert state.terminal
        await h.call("Delete", api.DeleteRequest(id="t2", exec_id="e1"))
    finally:
        os.close(out_r)


async def test_stdout_fifo_without_reader_times_out(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trioshim.runc import process

    monkeypatch.setattr(process, "IO_SETUP_TIMEOUT", 0.5)
    h = harness
    stdout = h.tmp / "nobody-reads"
    os.mkfifo(stdout)
    bundle = await h.bundle("dl", ["true"])
    err = await h.fails("Create", h.create_request("dl", bundle, stdout=str(stdout)))
    assert err.code == Code.DEADLINE_EXCEEDED
    assert err.message.startswith("failed to start io pipe copy: "), err.message
    assert err.message.endswith("context deadline exceeded"), err.message
    assert not is_mounted(bundle / "rootfs")
    runc_list = await h.reaper.run(["runc", "--root", str(h.runc_root / "testns"), "list", "-q"])
    assert runc_list.stdout.strip() == b""  # not left behind in runc either
    assert "dl" not in h.service.containers
