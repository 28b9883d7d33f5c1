"""The :class:`Reaper`: one task waits for every child of the process and hands each exit to
whoever asked for it (see the package docstring)."""

from __future__ import annotations

import collections
import math
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from typing import Final

import trio

from trioshim.shim.reaper.child import Child, Completed, Exit, decode_status
from trioshim.shim.reaper.spawn import DEVNULL, PIPE, start_process
from trioshim.shim.reaper.subreaper import set_child_subreaper

__all__ = ["Reaper", "open_reaper"]

_PARKED_MAX: Final = 1024


class Reaper:
    """The only waiter of children in the process. Run :meth:`serve` (or use :func:`open_reaper`)
    in a nursery before spawning; the reaper must outlive every :class:`Child` it hands out.
    """

    def __init__(self, *, parked_max: int = _PARKED_MAX) -> None:
        self._children: dict[int, Child] = {}
        self._parked: collections.OrderedDict[int, Exit] = collections.OrderedDict()
        self._parked_max = parked_max
        self._waiters: dict[int, list[_Slot]] = {}
        self._subscribers: set[trio.MemorySendChannel[Exit]] = set()
        self._serving = False

    # -- serving --------------------------------------------------------------------------

    @property
    def serving(self) -> bool:
        return self._serving

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Reap on every SIGCHLD until cancelled. Reports started once the receiver is in place
        and exits that happened before are collected."""
        if self._serving:
            raise RuntimeError("this reaper is already serving")
        with trio.open_signal_receiver(signal.SIGCHLD) as signals:
            self._serving = True
            try:
                self.reap_now()
                task_status.started()
                async for _ in signals:
                    self.reap_now()
            finally:
                self._serving = False

    def reap_now(self) -> int:
        """Collect every exited child without blocking; returns how many were reaped."""
        count = 0
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG)
            except ChildProcessError:
                break
            except InterruptedError:  # pragma: no cover - PEP 475 retries, belt and braces
                continue
            if info is None or info.si_pid == 0:
                break
            count += 1
            self._dispatch(
                Exit(info.si_pid, decode_status(info.si_code, info.si_status), time.time_ns())
            )
        return count

    def _dispatch(self, exit_: Exit) -> None:
        for send in list(self._subscribers):
            try:
                send.send_nowait(exit_)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                self._subscribers.discard(send)
        child = self._children.pop(exit_.pid, None)
        if child is not None:
            child._set_exit(exit_)
            return
        slots = self._waiters.pop(exit_.pid, None)
        if slots:
            for slot in slots:
                slot.set(exit_)
            return
        self._parked[exit_.pid] = exit_
        self._parked.move_to_end(exit_.pid)
        while len(self._parked) > self._parked_max:
            self._parked.popitem(last=False)

    # -- observing ------------------------------------------------------------------------

    @contextmanager
    def subscribe(self) -> Iterator[trio.MemoryReceiveChannel[Exit]]:
        """A channel of every :class:`Exit` reaped while the block runs (unbounded: an exit is
        never dropped, so keep up with it)."""
        send, receive = trio.open_memory_channel[Exit](math.inf)
        self._subscribers.add(send)
        try:
            with receive:
                yield receive
        finally:
            self._subscribers.discard(send)
            send.close()

    async def wait_for(self, pid: int) -> Exit:
        """Wait for the exit of ``pid``, typically a process we did not spawn (a container init
        reparented to us). An exit reaped before the call, and not claimed since, is returned at
        once (and consumed); at most ``parked_max`` such exits are kept."""
        child = self._children.get(pid)
        if child is not None:
            await child.wait()
            assert child.exit is not None
            return child.exit
        parked = self._parked.pop(pid, None)
        if parked is not None:
            return parked
        slot = _Slot()
        self._waiters.setdefault(pid, []).append(slot)
        try:
            return await slot.wait()
        finally:
            slots = self._waiters.get(pid)
            if slots is not None and slot in slots:
                slots.remove(slot)
                if not slots:
                    del self._waiters[pid]

    def take_parked(self, pid: int) -> Exit | None:
        """Claim a parked exit of ``pid`` without waiting (``None`` if there is none)."""
        return self._parked.pop(pid, None)

    # -- spawning -------------------------------------------------------------------------

    def spawn(
        self,
        argv: Sequence[str],
        *,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        stdin: int | None = None,
        stdout: int | None = None,
        stderr: int | None = None,
        extra_fds: Mapping[int, int] | None = None,
        process_group: int | None = None,
        new_session: bool = False,
    ) -> Child:
        """Start ``argv`` and return its handle; synchronous, so the pid is registered before
        the caller's next checkpoint.

        ``stdin``/``stdout``/``stderr``: ``None`` inherits ours, an int is our descriptor to
        give the child, :data:`PIPE` makes a pipe (our end on the :class:`Child`),
        :data:`DEVNULL` is ``/dev/null``. ``extra_fds`` maps child fd (>= 3) to our fd; no
        other descriptor is passed (ours are close-on-exec). ``process_group``: ``0`` puts the
        child in a new group of its own, ``n`` joins group ``n``. ``new_session``: ``setsid``.
        ``argv[0]`` without a slash is looked up in ``PATH``. Exec failures raise ``OSError``.
        The child starts with SIGPIPE/SIGXFSZ at their default and an empty signal mask.
        """
        if not self._serving:
            raise RuntimeError("Reaper.spawn() needs the reaper to be serving (see open_reaper)")
        args = tuple(os.fspath(a) for a in argv)
        if not args:
            raise ValueError("empty argv")
        if new_session and process_group is not None:
            raise ValueError("new_session and process_group are exclusive")
        environ = dict(os.environ if env is None else env)

        pid, ours = start_process(
            args,
            cwd=None if cwd is None else os.fspath(cwd),
            environ=environ,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            extra_fds=extra_fds,
            process_group=process_group,
            new_session=new_session,
        )
        child = Child(pid=pid, argv=args)
        self._children[pid] = child
        if 0 in ours:
            child.stdin = trio.lowlevel.FdStream(ours[0])
        if 1 in ours:
            child.stdout = trio.lowlevel.FdStream(ours[1])
        if 2 in ours:
            child.stderr = trio.lowlevel.FdStream(ours[2])
        return child

    async def run(
        self,
        argv: Sequence[str],
        *,
        input: bytes | None = None,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        stdin: int | None = None,
        stdout: int | None = PIPE,
        stderr: int | None = PIPE,
        extra_fds: Mapping[int, int] | None = None,
        process_group: int | None = None,
        new_session: bool = False,
        output_grace: float = 2.0,
    ) -> Completed:
        """Spawn, feed ``input``, collect ``PIPE`` output until EOF, and wait for the exit.

        ``stdin`` defaults to ``/dev/null`` (a pipe when ``input`` is given). A grandchild can
        keep a pipe open after the child exits (a daemon that forgot to close stdout); the
        output is then collected for at most ``output_grace`` seconds after the exit (Go's
        ``Cmd.WaitDelay``), and what arrived is returned. If the caller is
        cancelled (an RPC deadline, shutdown), the child is SIGKILLed and reaped before the
        cancellation propagates. A non-zero status is not an error: use
        :meth:`Completed.check`.
        """
        if input is not None and stdin is not None:
            raise ValueError("give input or stdin, not both")
        child = self.spawn(
            argv,
            cwd=cwd,
            env=env,
            stdin=PIPE if input is not None else (DEVNULL if stdin is None else stdin),
            stdout=stdout,
            stderr=stderr,
            extra_fds=extra_fds,
            process_group=process_group,
            new_session=new_session,
        )
        out = bytearray()
        err = bytearray()
        try:
            async with trio.open_nursery() as nursery:
                if child.stdin is not None:
                    nursery.start_soon(_feed, child.stdin, input or b"")
                if child.stdout is not None:
                    nursery.start_soon(_drain, child.stdout, out)
                if child.stderr is not None:
                    nursery.start_soon(_drain, child.stderr, err)
                await child.wait()
                nursery.cancel_scope.deadline = trio.current_time() + output_grace
        except BaseException:
            child.kill()
            with trio.CancelScope(shield=True):
                await child.wait()
            raise
        finally:
            for stream in (child.stdin, child.stdout, child.stderr):
                if stream is not None:
                    _close_quietly(stream)
        assert child.exit is not None
        return Completed(
            argv=child.argv,
            pid=child.pid,
            status=child.exit.status,
            stdout=bytes(out),
            stderr=bytes(err),
            exited_at_ns=child.exit.exited_at_ns,
        )


class _Slot:
    """One wait_for() caller."""

    def __init__(self) -> None:
        self._event = trio.Event()
        self._exit: Exit | None = None

    def set(self, exit_: Exit) -> None:
        self._exit = exit_
        self._event.set()

    async def wait(self) -> Exit:
        await self._event.wait()
        assert self._exit is not None
        return self._exit


@asynccontextmanager
async def open_reaper(*, subreaper: bool = False) -> AsyncIterator[Reaper]:
    """A serving :class:`Reaper` for the block (optionally making this process a subreaper).
    Leaving the block stops reaping; children still running are not killed."""
    if subreaper:
        set_child_subreaper()
    reaper = Reaper()
    async with trio.open_nursery() as nursery:
        await nursery.start(reaper.serve)
        try:
            yield reaper
        finally:
            nursery.cancel_scope.cancel()


async def _feed(stream: trio.lowlevel.FdStream, data: bytes) -> None:
    try:
        if data:
            await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the child closed its stdin or exited: like subprocess, not an error
    finally:
        _close_quietly(stream)


async def _drain(stream: trio.lowlevel.FdStream, into: bytearray) -> None:
    with suppress(trio.ClosedResourceError):
        while chunk := await stream.receive_some(65536):
            into += chunk


def _close_quietly(stream: trio.lowlevel.FdStream) -> None:
    with suppress(OSError):
        stream.close()
