"""The reaper: the one place in the process that waits for children.

A shim is a *subreaper* (``prctl(PR_SET_CHILD_SUBREAPER)``): a container's init, started by
``runc`` which then exits, is reparented to the shim, so its exit reaches us as SIGCHLD although
we never spawned it. One task owns ``waitid(P_ALL, WEXITED | WNOHANG)``, driven by SIGCHLD, and
dispatches every status:

- to the :class:`Child` handle when we spawned the pid (the status is kept on the handle, so a
  child that exits before anyone awaits it is never lost);
- to every :meth:`Reaper.subscribe` channel (all exits, ours and reparented ones);
- to :meth:`Reaper.wait_for` callers for pids we did not spawn; an unclaimed exit of such a pid
  is *parked* (bounded) so a caller that learns the pid late (from a pid file) still finds it.

Nothing else may wait for children: no ``trio.run_process``, no ``subprocess`` waiting (CPython's
``Popen`` turns a status stolen by another waiter into exit code 0 silently). Children are spawned
synchronously by :meth:`Reaper.spawn` and registered before the caller reaches a checkpoint, so
the reaper task (which only runs at checkpoints) can never reap an unregistered pid of ours.

Resource handling: a :class:`Child` made with ``PIPE`` owns the parent's pipe ends as
``trio.lowlevel.FdStream`` objects; the caller closes them (``Reaper.run`` does it for you).
Temporary descriptors used to pass fds are closed before ``spawn`` returns.
"""

from __future__ import annotations

import collections
import ctypes
import errno
import fcntl
import math
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from typing import Final

import trio

__all__ = [
    "DEVNULL",
    "PIPE",
    "Child",
    "Completed",
    "Exit",
    "ProcessFailed",
    "Reaper",
    "is_child_subreaper",
    "open_reaper",
    "set_child_subreaper",
]

PIPE: Final = -1
"""Give the child one end of a new pipe; the other end is on the :class:`Child`."""
DEVNULL: Final = -3
"""Connect the child's descriptor to ``/dev/null``."""

_PR_SET_CHILD_SUBREAPER: Final = 36
_PR_GET_CHILD_SUBREAPER: Final = 37
# Signals CPython ignores at start-up; an ignored disposition survives exec, so reset them.
_RESET_SIGNALS: Final = tuple(
    s for s in (getattr(signal, "SIGPIPE", None), getattr(signal, "SIGXFSZ", None)) if s
)
_PARKED_MAX: Final = 1024


# ---------------------------------------------------------------------------------------------
# subreaper


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)  # the interpreter's libc; no ldconfig child


def set_child_subreaper(enable: bool = True) -> None:
    """Make this process the subreaper of its descendants (Linux ``PR_SET_CHILD_SUBREAPER``)."""
    if _libc().prctl(_PR_SET_CHILD_SUBREAPER, int(enable), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def is_child_subreaper() -> bool:
    """Whether this process is a subreaper (``PR_GET_CHILD_SUBREAPER``)."""
    value = ctypes.c_int(0)
    if _libc().prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(value), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return value.value != 0


# ---------------------------------------------------------------------------------------------
# values


@dataclass(frozen=True, slots=True)
class Exit:
    """One reaped process: ``status`` is the exit code, or 128 + signal if it was killed."""

    pid: int
    status: int
    exited_at_ns: int  # wall clock (time.time_ns()) when the status was collected


@dataclass(frozen=True, slots=True)
class Completed:
    """The result of :meth:`Reaper.run`. Output not captured (not ``PIPE``) is ``b""``."""

    argv: tuple[str, ...]
    pid: int
    status: int
    stdout: bytes
    stderr: bytes
    exited_at_ns: int

    def check(self) -> Completed:
        """Return self if the status is 0, else raise :class:`ProcessFailed`."""
        if self.status != 0:
            raise ProcessFailed(self)
        return self


class ProcessFailed(Exception):
    """A :meth:`Reaper.run` child exited non-zero (raised by :meth:`Completed.check`)."""

    def __init__(self, completed: Completed) -> None:
        self.completed = completed
        detail = (completed.stderr or completed.stdout).decode(errors="replace").strip()
        text = f"{completed.argv[0] if completed.argv else '?'}: exit status {completed.status}"
        super().__init__(f"{text}: {detail}" if detail else text)


def _decode_status(code: int, status: int) -> int:
    if code == os.CLD_EXITED:
        return status
    return 128 + status  # CLD_KILLED / CLD_DUMPED: si_status is the signal number


# ---------------------------------------------------------------------------------------------
# child handle


@dataclass(eq=False)
class Child:
    """A process spawned by :meth:`Reaper.spawn`."""

    pid: int
    argv: tuple[str, ...]
    stdin: trio.lowlevel.FdStream | None = None
    stdout: trio.lowlevel.FdStream | None = None
    stderr: trio.lowlevel.FdStream | None = None
    _exit: Exit | None = field(default=None, repr=False)
    _done: trio.Event = field(default_factory=trio.Event, repr=False)

    @property
    def returncode(self) -> int | None:
        """The status once reaped (code or 128 + signal), else ``None``."""
        return None if self._exit is None else self._exit.status

    @property
    def exit(self) -> Exit | None:
        """The :class:`Exit` once reaped (with its time), else ``None``."""
        return self._exit

    async def wait(self) -> int:
        """Wait for the exit and return its status; any number of callers may wait.

        Cancelling a waiter does not touch the process (see :meth:`Reaper.run` for
        kill-on-cancel).
        """
        await self._done.wait()
        assert self._exit is not None
        return self._exit.status

    def send_signal(self, sig: int) -> None:
        """Signal the child unless it has been reaped (so a reused pid is never hit)."""
        if self._exit is None:
            with suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def _set_exit(self, exit_: Exit) -> None:
        self._exit = exit_
        self._done.set()


# ---------------------------------------------------------------------------------------------
# the reaper


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
                Exit(info.si_pid, _decode_status(info.si_code, info.si_status), time.time_ns())
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

        owned: list[int] = []  # descriptors we created and must close in any case
        fdmap: dict[int, int] = {}  # child fd -> our fd
        ours: dict[int, int] = {}  # child fd -> our end of a PIPE
        try:
            for target, spec in ((0, stdin), (1, stdout), (2, stderr)):
                if spec is None:
                    continue
                if spec == PIPE:
                    r, w = os.pipe()
                    owned.append(r if target == 0 else w)
                    ours[target] = w if target == 0 else r
                    fdmap[target] = r if target == 0 else w
                elif spec == DEVNULL:
                    fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
                    owned.append(fd)
                    fdmap[target] = fd
                elif spec >= 0:
                    fdmap[target] = spec
                else:
                    raise ValueError(f"bad descriptor spec {spec} for fd {target}")
            for target, fd in (extra_fds or {}).items():
                if target < 3:
                    raise ValueError("extra_fds targets must be >= 3 (use stdin/stdout/stderr)")
                fdmap[target] = fd

            # Copy every source above every target first, so the dup2 sequence in the child
            # can never overwrite a source it still needs ({3: 4, 4: 3} works).
            low = max(fdmap, default=2) + 1
            moves: list[tuple[int, int]] = []
            for target, fd in fdmap.items():
                tmp = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, low)
                owned.append(tmp)
                moves.append((tmp, target))

            if cwd is None:
                pid = _posix_spawn(args, environ, moves, process_group, new_session)
            else:
                pid = _fork_exec(args, environ, os.fspath(cwd), moves, process_group, new_session)
        except BaseException:
            for fd in ours.values():
                os.close(fd)
            raise
        finally:
            for fd in owned:
                os.close(fd)

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


# ---------------------------------------------------------------------------------------------
# process creation


def _posix_spawn(
    args: tuple[str, ...],
    env: dict[str, str],
    moves: list[tuple[int, int]],
    process_group: int | None,
    new_session: bool,
) -> int:
    # glibc implements posix_spawn with clone(CLONE_VM | CLONE_VFORK): cheap even for a big
    # parent, async-signal-safe in the child, exec errors reported here (and that child reaped
    # by glibc itself before we return).
    file_actions = [(os.POSIX_SPAWN_DUP2, tmp, target) for tmp, target in moves]
    spawn = os.posix_spawn if "/" in args[0] else os.posix_spawnp
    if process_group is not None:
        return spawn(
            args[0],
            args,
            env,
            file_actions=file_actions,
            setsigdef=_RESET_SIGNALS,
            setsigmask=(),
            setpgroup=process_group,
        )
    return spawn(
        args[0],
        args,
        env,
        file_actions=file_actions,
        setsigdef=_RESET_SIGNALS,
        setsigmask=(),
        setsid=new_session,
    )


def _fork_exec(
    args: tuple[str, ...],
    env: dict[str, str],
    cwd: str,
    moves: list[tuple[int, int]],
    process_group: int | None,
    new_session: bool,
) -> int:
    # posix_spawn has no chdir in Python 3.11; fork and do the few steps by hand. The exec
    # error (errno) comes back through a close-on-exec pipe, like subprocess does.
    errr, errw = os.pipe()
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 0
            try:
                os.chdir(cwd)
                for tmp, target in moves:
                    os.dup2(tmp, target)
                for sig in _RESET_SIGNALS:
                    signal.signal(sig, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_SETMASK, ())
                if new_session:
                    os.setsid()
                elif process_group is not None:
                    os.setpgid(0, process_group)
                if "/" in args[0]:
                    os.execve(args[0], args, env)
                else:
                    os.execvpe(args[0], args, env)
            except OSError as exc:
                code = exc.errno or errno.EINVAL
            except BaseException:
                code = errno.EINVAL
            with suppress(BaseException):
                os.write(errw, code.to_bytes(4, "little"))
            os._exit(127)
        os.close(errw)
        errw = -1
        data = b""
        while chunk := os.read(errr, 4):
            data += chunk
        if data:
            # The child failed before exec; nobody else can reap it (we run in the reaper's
            # thread, between its checkpoints), so collect it here.
            os.waitpid(pid, 0)
            code = int.from_bytes(data[:4].ljust(4, b"\0"), "little")
            raise OSError(code, f"{os.strerror(code)}: {args[0]!r} (cwd {cwd!r})")
        return pid
    finally:
        os.close(errr)
        if errw >= 0:
            os.close(errw)


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
