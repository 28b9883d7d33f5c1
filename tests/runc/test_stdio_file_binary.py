"""runc's stdio in file:// and binary:// modes (the helpers are test_stdio.py's)."""

from __future__ import annotations

import json
import stat
import sys
import textwrap
from pathlib import Path

import pytest
import trio
import trio.testing

from tests.runc.stdio_helpers import process_io, spawn_container
from trioshim.runc.stdio import ProcessIO, StdioError
from trioshim.runc.stdio_modes import StdioConfig, StdioMode
from trioshim.shim.reaper import open_reaper

# ---------------------------------------------------------------------------------------------
# file mode


async def test_file_uri_appends_both_streams(tmp_path: Path) -> None:
    log = tmp_path / "a" / "b" / "c.log"
    log.parent.mkdir(parents=True)
    log.write_bytes(b"old\n")
    uri = f"file://{log}"
    with trio.fail_after(10):
        async with (
            open_reaper() as reaper,
            trio.open_nursery() as nursery,
            process_io(reaper, nursery, StdioConfig("", uri, uri)) as io,
        ):
            assert io.mode is StdioMode.FILE
            child = spawn_container(reaper, io, ["sh", "-c", "echo out; echo err >&2"])
            await io.after_start()
            assert await child.wait() == 0
            assert await io.wait_drained(5)
    content = log.read_bytes()
    assert content.startswith(b"old\n")
    assert sorted(content[4:].splitlines()) == [b"err", b"out"]


async def test_file_uri_creates_parents(tmp_path: Path) -> None:
    log = tmp_path / "x" / "y" / "z.log"
    uri = f"file://{log}"
    with trio.fail_after(10):
        async with (
            open_reaper() as reaper,
            trio.open_nursery() as nursery,
            process_io(reaper, nursery, StdioConfig("", uri, "")) as io,
        ):
            child = spawn_container(reaper, io, ["echo", "hi"])
            await io.after_start()
            assert await child.wait() == 0
            assert await io.wait_drained(5)
    assert log.read_bytes() == b"hi\n"
    assert stat.S_IMODE(log.stat().st_mode) & 0o644 == stat.S_IMODE(log.stat().st_mode)


# ---------------------------------------------------------------------------------------------
# binary mode

LOGGER = textwrap.dedent(
    """\
    #!{python}
    import json, os, signal, stat, sys
    out = sys.argv[sys.argv.index("out") + 1]
    wait_term = "term" in sys.argv
    # SIGTERM stays pending until sigwait takes it: none can slip past unseen
    signal.pthread_sigmask(signal.SIG_BLOCK, {{signal.SIGTERM}})
    environ = open("/proc/self/environ", "rb").read().split(b"\\0")
    info = {{
        "argv": sys.argv[1:],
        "env": sorted(e.decode() for e in environ if e),
        "fds": {{n: stat.S_ISFIFO(os.fstat(n).st_mode) for n in (3, 4, 5)}},
    }}
    with open(out + "/info.json", "w") as f:
        json.dump(info, f)
    os.write(5, b"R")
    os.close(5)
    for fd, name in ((3, "stdout"), (4, "stderr")):
        with open(out + "/" + name, "wb") as f:
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                f.write(chunk)
    if wait_term:
        signal.sigwait({{signal.SIGTERM}})
        open(out + "/terminated", "w").close()
    """
)


@pytest.fixture
def logger(tmp_path: Path) -> Path:
    path = tmp_path / "logger"
    path.write_text(LOGGER.format(python=sys.executable))
    path.chmod(0o755)
    return path


async def test_binary_logger(logger: Path, tmp_path: Path) -> None:
    out = tmp_path / "logged"
    out.mkdir()
    uri = f"binary://{logger}?out={out}&term"
    with trio.fail_after(20):
        async with open_reaper() as reaper, trio.open_nursery() as nursery:
            cfg = StdioConfig("", uri, uri)
            io = await ProcessIO.open(
                cfg,
                nursery=nursery,
                reaper=reaper,
                container_id="c1",
                process_id="exec7",
                namespace="k8s.io",
            )
            # The logger was awaited: it is up, saw its fds and wrote its info.
            info = json.loads((out / "info.json").read_text())
            assert io.mode is StdioMode.BINARY
            assert io.runc_stdio is not None
            assert io.runc_stdio.stdin is None
            assert io.logger is not None and io.logger.returncode is None
            child = spawn_container(reaper, io, ["sh", "-c", "printf O; printf E >&2"])
            await io.after_start()
            assert await child.wait() == 0
            assert await io.wait_drained(1)  # the shim copies nothing itself
            await io.aclose()  # SIGTERM, then the logger exits
            assert io.logger is None
    assert info["env"] == ["CONTAINER_ID=exec7", "CONTAINER_NAMESPACE=k8s.io"]
    assert info["fds"] == {"3": True, "4": True, "5": True}
    assert info["argv"] == ["out", str(out), "term", ""]
    assert (out / "stdout").read_bytes() == b"O"
    assert (out / "stderr").read_bytes() == b"E"
    assert (out / "terminated").exists()


async def test_binary_logger_missing() -> None:
    uri = "binary:///nonexistent/logger"
    async with open_reaper() as reaper, trio.open_nursery() as nursery:
        with pytest.raises(StdioError, match=r"^failed to start binary process: fork/exec"):
            await ProcessIO.open(
                StdioConfig("", uri, uri),
                nursery=nursery,
                reaper=reaper,
                container_id="c",
                process_id="c",
                namespace="ns",
            )
