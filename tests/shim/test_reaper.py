from __future__ import annotations

import os
import signal
import sys
import textwrap

import pytest
import trio
import trio.testing

from trioshim.shim.reaper import (
    DEVNULL,
    PIPE,
    Exit,
    ProcessFailed,
    Reaper,
    is_child_subreaper,
    open_reaper,
)

SH = "/bin/sh"


async def test_exit_codes_and_signals() -> None:
    async with open_reaper() as reaper:
        assert await reaper.spawn(["/bin/true"]).wait() == 0
        assert await reaper.spawn([SH, "-c", "exit 3"]).wait() == 3
        assert await reaper.spawn([SH, "-c", "kill -9 $$"]).wait() == 137
        assert await reaper.spawn([SH, "-c", "kill -TERM $$"]).wait() == 128 + signal.SIGTERM


async def test_path_lookup_and_exec_failure() -> None:
    async with open_reaper() as reaper:
        assert await reaper.spawn(["true"]).wait() == 0
        with pytest.raises(FileNotFoundError):
            reaper.spawn(["/nonexistent/binary"])
        with pytest.raises(FileNotFoundError):
            reaper.spawn(["/nonexistent/binary"], cwd="/")
        with pytest.raises(FileNotFoundError):
            reaper.spawn(["/bin/true"], cwd="/nonexistent-dir")


async def test_spawn_requires_serving_reaper() -> None:
    with pytest.raises(RuntimeError, match="serving"):
        Reaper().spawn(["/bin/true"])


async def test_early_exit_kept_and_many_waiters() -> None:
    async with open_reaper() as reaper:
        with reaper.subscribe() as exits:
            child = reaper.spawn([SH, "-c", "exit 7"])
            # Let it exit and be reaped before anyone waits.
            assert (await exits.receive()).pid == child.pid
        assert child.returncode == 7
        results: list[int] = []

        async def waiter() -> None:
            results.append(await child.wait())

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(waiter)
        assert results == [7] * 5
        assert child.exit is not None and child.exit.pid == child.pid
        assert child.exit.exited_at_ns > 0


async def test_many_concurrent_children_no_status_lost() -> None:
    statuses: dict[int, int] = {}
    async with open_reaper() as reaper:
        children = [(i, reaper.spawn([SH, "-c", f"exit {i % 256}"])) for i in range(300)]

        async def wait_one(i: int, child_: object) -> None:
            assert hasattr(child_, "wait")
            statuses[i] = await child_.wait()

        async with trio.open_nursery() as nursery:
            for i, child in children:
                nursery.start_soon(wait_one, i, child)
    assert statuses == {i: i % 256 for i in range(300)}


async def test_run_captures_output_and_input() -> None:
    async with open_reaper() as reaper:
        done = await reaper.run([SH, "-c", "cat; echo err >&2; exit 2"], input=b"hello\n")
        assert (done.status, done.stdout, done.stderr) == (2, b"hello\n", b"err\n")
        with pytest.raises(ProcessFailed, match="exit status 2: err"):
            done.check()
        big = b"x" * 1_000_000
        done = await reaper.run(["cat"], input=big)
        assert done.stdout == big and done.check() is done
        # stdin defaults to /dev/null: cat sees EOF at once.
        assert (await reaper.run(["cat"])).stdout == b""


async def test_run_cwd_env_process_group_and_session(tmp_path: object) -> None:
    async with open_reaper() as reaper:
        done = await reaper.run([SH, "-c", "pwd; echo $FOO"], cwd=str(tmp_path), env={"FOO": "b"})
        assert done.stdout.decode().split() == [str(tmp_path), "b"]
        done = await reaper.run([SH, "-c", "ps -o pgid= -p $$; echo $$"], process_group=0)
        pgid, pid = done.stdout.split()
        assert pgid == pid and int(pgid) != os.getpgrp()
        done = await reaper.run([SH, "-c", "ps -o sid= -p $$; echo $$"], new_session=True)
        sid, pid = done.stdout.split()
        assert sid == pid


async def test_extra_fds_swapped_and_signal_defaults() -> None:
    async with open_reaper() as reaper:
        r1, w1 = os.pipe()
        r2, w2 = os.pipe()
        try:
            # Child fd 3 gets w2 and fd 4 gets w1: a naive dup2 order would clobber one.
            child = reaper.spawn(
                [SH, "-c", "echo three >&3; echo four >&4"],
                extra_fds={3: w2, 4: w1},
                stdin=DEVNULL,
            )
            assert await child.wait() == 0
            os.close(w1)
            os.close(w2)
            assert os.read(r2, 100) == b"three\n"
            assert os.read(r1, 100) == b"four\n"
        finally:
            os.close(r1)
            os.close(r2)
        # Python ignores SIGPIPE; the child must start with it at its default again.
        done = await reaper.run([SH, "-c", "grep SigIgn /proc/self/status"])
        ignored = int(done.stdout.split()[1], 16)
        assert not ignored & (1 << (signal.SIGPIPE - 1))


async def test_run_does_not_hang_on_inherited_pipe() -> None:
    async with open_reaper() as reaper:
        # The background sleep keeps stdout open after the shell exits.
        done = await reaper.run([SH, "-c", "sleep 1000 & echo $!"], output_grace=0.05)
        assert done.status == 0
        os.kill(int(done.stdout), signal.SIGKILL)


async def test_spawn_with_pipe_streams() -> None:
    async with open_reaper() as reaper:
        child = reaper.spawn(["cat"], stdin=PIPE, stdout=PIPE)
        assert child.stdin is not None and child.stdout is not None
        await child.stdin.send_all(b"ping")
        await child.stdin.aclose()
        data = b""
        while chunk := await child.stdout.receive_some():
            data += chunk
        await child.stdout.aclose()
        assert data == b"ping"
        assert await child.wait() == 0


async def test_cancelled_run_kills_child() -> None:
    async with open_reaper() as reaper:
        with reaper.subscribe() as exits:
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(reaper.run, ["sleep", "1000"])
                    await trio.testing.wait_all_tasks_blocked()
                    scope.cancel()
            exit_ = exits.receive_nowait()
        assert exit_.status == 128 + signal.SIGKILL


async def test_kill_after_reap_is_a_no_op() -> None:
    async with open_reaper() as reaper:
        child = reaper.spawn(["/bin/true"])
        await child.wait()
        child.kill()  # must not raise, must not signal a reused pid
        assert child.returncode == 0


async def test_subscribe_and_wait_for_parked_exit() -> None:
    async with open_reaper() as reaper:
        with reaper.subscribe() as exits:
            child = reaper.spawn([SH, "-c", "exit 4"])
            await child.wait()
            got = await exits.receive()
        assert got == Exit(child.pid, 4, got.exited_at_ns)
        # A pid nobody waits for is parked and handed to a later wait_for().
        reaper._dispatch(Exit(999_999_001, 9, 1))
        assert await reaper.wait_for(999_999_001) == Exit(999_999_001, 9, 1)
        assert reaper.take_parked(999_999_001) is None  # consumed

        # A wait_for() parked before the exit receives it, as do concurrent ones.
        seen: list[Exit] = []

        async def waiter() -> None:
            seen.append(await reaper.wait_for(999_999_002))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            reaper._dispatch(Exit(999_999_002, 1, 2))
        assert seen == [Exit(999_999_002, 1, 2)] * 2


async def test_parked_exits_bounded() -> None:
    reaper = Reaper(parked_max=3)
    for pid in range(10, 20):
        reaper._dispatch(Exit(pid, 0, 0))
    assert [reaper.take_parked(p) is not None for p in (16, 17, 18, 19)] == [
        False,
        True,
        True,
        True,
    ]


ORPHAN_SCRIPT = textwrap.dedent(
    """
    import os, signal
    import trio, trio.testing
    from trioshim.shim.reaper import open_reaper, is_child_subreaper

    async def orphan(reaper):
        # The shell exits at once; its background sleep is reparented to us.
        done = await reaper.run(["/bin/sh", "-c", "sleep 1000 >/dev/null 2>&1 & echo $!"])
        return int(done.stdout)

    async def main():
        async with open_reaper(subreaper=True) as reaper:
            assert is_child_subreaper()
            early, late = await orphan(reaper), await orphan(reaper)
            with reaper.subscribe() as exits:
                # The early orphan dies (and is parked) before anyone asks for it.
                os.kill(early, signal.SIGTERM)
                while (await exits.receive()).pid != early:
                    pass
            got = {}
            async def wait(pid):
                got[pid] = (await reaper.wait_for(pid)).status
            async with trio.open_nursery() as nursery:
                # The late one dies while wait_for() is parked on it.
                nursery.start_soon(wait, late)
                await trio.testing.wait_all_tasks_blocked()
                os.kill(late, signal.SIGKILL)
            await wait(early)
            print(got[early], got[late])

    trio.run(main)
    """
)


async def test_orphans_reaped_as_subreaper() -> None:
    # In a child interpreter, so the test runner itself does not become a subreaper.
    assert not is_child_subreaper()
    async with open_reaper() as reaper:
        done = await reaper.run([sys.executable, "-c", ORPHAN_SCRIPT])
    assert done.status == 0, done.stderr.decode()
    assert done.stdout.split() == [b"143", b"137"]
