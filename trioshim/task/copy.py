"""Data pumps between file descriptors, as close to the hardware as Python allows.

:func:`pump` moves bytes from one descriptor to another until the source ends. When both ends
are pipes (anonymous pipes or FIFOs) it uses ``splice(2)``: the kernel moves page references
from one pipe to the other and no byte enters Python. Otherwise (a regular file opened for
appending, where ``splice`` is refused, a pty master, a character device) it falls back to
``readv``/``write`` through one reusable buffer.

Every descriptor handed to a pump is switched to ``O_NONBLOCK`` for the open file description
we hold (the peer's end of a pipe is a different description and keeps blocking). A pump never
blocks the Trio thread: ``EAGAIN`` parks the task in ``trio.lowlevel.wait_readable`` /
``wait_writable``. ``splice`` reports ``EAGAIN`` without saying which end would block, so the
pump asks ``poll(2)`` (zero timeout) and waits on the end that is not ready.

How a pump ends (:class:`PumpEnd`):

- ``EOF``: the source reached end of file (every writer of the source pipe is gone).
- ``HANGUP``: the source is a pty master that reads ``EIO`` and no :class:`StopSignal` was
  given (nothing else could tell the pump when the terminal's output is over).
- ``BROKEN``: the destination is gone: ``EPIPE`` (no reader left) or, without a stop signal,
  ``EIO`` (a pty master whose terminal hung up). Bytes read but not written are dropped, as
  ``io.Copy`` does.
- ``STOPPED``: the stop signal was set; the pump copied whatever the source still had without
  waiting (a final drain) and returned.

Other ``OSError`` (``ENOSPC`` on a log file, ``EBADF``) propagate to the caller.

A pty master reads ``EIO`` whenever no slave descriptor is open *at that moment* (only once
everything the slave side wrote has been read), and reads again as soon as a slave is reopened:
a process may close its terminal and reopen ``/dev/tty`` later (systemd as PID 1, agetty). So
with a stop signal ``EIO`` is not the end: like containerd/console's epoll console, the pump
waits for the master's next edge-triggered epoll event (a hung-up master is readable forever,
so a level-triggered wait would spin) or the stop signal, whichever comes first. ``EIO`` writing
to a master is retried the same way, bounded by a backoff timer since a reopened slave that only
reads makes no event on the master.
"""

from __future__ import annotations

import enum
import errno
import fcntl
import os
import select
import stat
from dataclasses import dataclass
from typing import Final, NamedTuple

import trio

__all__ = [
    "CHUNK",
    "PIPE_SIZE",
    "PumpEnd",
    "PumpResult",
    "StopSignal",
    "errno_text",
    "is_pipe",
    "pump",
    "set_blocking",
    "set_nonblocking",
    "set_pipe_size",
]

CHUNK: Final = 1 << 20
"""Most bytes asked of one ``splice`` call (the pipes' capacity bounds each call anyway)."""
PIPE_SIZE: Final = 1 << 20
"""Capacity we ask for the pipes we create (``F_SETPIPE_SZ``; the system default is 64 KiB)."""
_RW_BUFFER: Final = 1 << 16
"""Buffer of the read/write fallback (pty reads return at most a few KiB anyway)."""

_SPLICE_FLAGS: Final = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
_POLL_IN: Final = select.POLLIN | select.POLLHUP | select.POLLERR
_POLL_OUT: Final = select.POLLOUT | select.POLLERR | select.POLLHUP


class PumpEnd(enum.Enum):
    """Why :func:`pump` returned."""

    EOF = "eof"
    HANGUP = "hangup"
    BROKEN = "broken"
    STOPPED = "stopped"


class PumpResult(NamedTuple):
    end: PumpEnd
    copied: int
    """Bytes written to the destination."""


# ---------------------------------------------------------------------------------------------
# descriptor helpers


def set_nonblocking(fd: int) -> None:
    """Set ``O_NONBLOCK`` on ``fd``'s open file description."""
    os.set_blocking(fd, False)


def set_blocking(fd: int) -> None:
    """Clear ``O_NONBLOCK`` on ``fd``'s open file description."""
    os.set_blocking(fd, True)


def is_pipe(fd: int) -> bool:
    """Whether ``fd`` is a pipe or a FIFO (the ends ``splice`` accepts on both sides)."""
    return stat.S_ISFIFO(os.fstat(fd).st_mode)


def set_pipe_size(fd: int, size: int = PIPE_SIZE) -> int | None:
    """Ask for a pipe capacity of ``size`` bytes; returns the capacity now in force, or ``None``
    if the kernel refused (over ``/proc/sys/fs/pipe-max-size`` or the per-user page limit for an
    unprivileged user, or not a pipe). Never shrinks a pipe."""
    try:
        current = fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)
        if current >= size:
            return int(current)
        return int(fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, size))
    except OSError:
        return None


def errno_text(exc: OSError) -> str:
    """The errno message the way Go prints it (``no such file or directory``)."""
    if exc.errno is None:
        return str(exc)
    text = os.strerror(exc.errno)
    return text[:1].lower() + text[1:] if text[1:2].islower() else text


# ---------------------------------------------------------------------------------------------
# stop signal


class StopSignal:
    """A one-shot flag that tells pumps to stop waiting for their source.

    After :meth:`set`, a pump copies what its source holds right now and returns ``STOPPED``
    where it would otherwise wait (``EAGAIN``, or ``EIO`` on a pty master); end of file ends it
    as usual. Used for a console at process exit: the output copier drains the master and
    finishes instead of waiting for more (a background process may still hold the terminal).
    """

    def __init__(self) -> None:
        self._event = trio.Event()
        self._scopes: set[trio.CancelScope] = set()

    def set(self) -> None:
        self._event.set()
        for scope in self._scopes:
            scope.cancel()
        self._scopes.clear()

    def is_set(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> None:
        await self._event.wait()

    async def wait_readable(self, fd: int) -> None:
        """Wait until ``fd`` is readable or the signal is set (whichever comes first)."""
        if self._event.is_set():
            await trio.lowlevel.checkpoint()
            return
        with trio.CancelScope() as scope:
            self._scopes.add(scope)
            try:
                await trio.lowlevel.wait_readable(fd)
            finally:
                self._scopes.discard(scope)


class _SlaveWatch:
    """Edge-triggered epoll on a pty master that reads (or writes) ``EIO``: its descriptor
    becomes readable at the master's next wake-up (the slave reopened and wrote), not while the
    master merely stays hung up."""

    def __init__(self, master: int) -> None:
        self._epoll = select.epoll()
        try:
            self._epoll.register(master, select.EPOLLIN | select.EPOLLOUT | select.EPOLLET)
        except BaseException:
            self._epoll.close()
            raise

    def woke(self) -> bool:
        """Consume the pending events: whether the master woke since the last call (the
        registration itself counts as one, so the first ``EIO`` is always retried once)."""
        return bool(self._epoll.poll(0))

    async def wait(self, stop: StopSignal) -> None:
        """Until the master's next wake-up or ``stop``."""
        await stop.wait_readable(self._epoll.fileno())

    def close(self) -> None:
        self._epoll.close()


_WRITE_RETRY_FIRST: Final = 0.01
_WRITE_RETRY_MAX: Final = 1.0
"""Backoff bounds of a write to a pty master that fails with ``EIO`` (seconds)."""


async def _wait_source(fd: int, stop: StopSignal | None) -> None:
    if stop is None:
        await trio.lowlevel.wait_readable(fd)
    else:
        await stop.wait_readable(fd)


# ---------------------------------------------------------------------------------------------
# the pump


@dataclass
class _Counter:
    copied: int = 0


async def pump(
    src: int,
    dst: int,
    *,
    stop: StopSignal | None = None,
    chunk: int = CHUNK,
) -> PumpResult:
    """Copy from ``src`` to ``dst`` until the source ends, the destination breaks or ``stop``.

    Both descriptors are set non-blocking. Neither is closed: the caller owns them. Splices
    when both are pipes, else reads and writes (see the module docstring for the ends).
    """
    set_nonblocking(src)
    set_nonblocking(dst)
    counter = _Counter()
    if is_pipe(src) and is_pipe(dst):
        end = await _splice_loop(src, dst, stop, chunk, counter)
        if end is not None:
            return PumpResult(end, counter.copied)
    end = await _rw_loop(src, dst, stop, min(chunk, _RW_BUFFER), counter)
    return PumpResult(end, counter.copied)


async def _splice_loop(
    src: int, dst: int, stop: StopSignal | None, chunk: int, counter: _Counter
) -> PumpEnd | None:
    """Splice until done; ``None`` means splice is not supported here (fall back)."""
    poller = select.poll()
    poller.register(src, select.POLLIN)
    poller.register(dst, select.POLLOUT)
    spliced_since_checkpoint = 0
    while True:
        try:
            n = os.splice(src, dst, chunk, flags=_SPLICE_FLAGS)
        except BlockingIOError:
            ready = dict(poller.poll(0))
            src_ready = bool(ready.get(src, 0) & _POLL_IN)
            dst_ready = bool(ready.get(dst, 0) & _POLL_OUT)
            if not src_ready:
                if stop is not None and stop.is_set():
                    return PumpEnd.STOPPED
                await _wait_source(src, stop)
            elif not dst_ready:
                await trio.lowlevel.wait_writable(dst)
            else:
                await trio.lowlevel.checkpoint()  # both ready now: a race, just retry
            spliced_since_checkpoint = 0
            continue
        except BrokenPipeError:
            return PumpEnd.BROKEN
        except OSError as exc:
            if exc.errno == errno.EINVAL and counter.copied == 0:
                return None
            raise
        if n == 0:
            return PumpEnd.EOF
        counter.copied += n
        # A fast producer could keep both pipes ready forever: let other tasks run now and then.
        spliced_since_checkpoint += n
        if spliced_since_checkpoint >= 8 * CHUNK:
            spliced_since_checkpoint = 0
            await trio.lowlevel.checkpoint()


async def _rw_loop(
    src: int, dst: int, stop: StopSignal | None, size: int, counter: _Counter
) -> PumpEnd:
    buf = bytearray(size)
    view = memoryview(buf)
    moved_since_checkpoint = 0
    watches: dict[int, _SlaveWatch] = {}

    def watch(fd: int) -> _SlaveWatch:
        if fd not in watches:
            watches[fd] = _SlaveWatch(fd)
        return watches[fd]

    try:
        while True:
            try:
                n = os.readv(src, [buf])
            except BlockingIOError:
                if stop is not None and stop.is_set():
                    return PumpEnd.STOPPED
                await _wait_source(src, stop)
                moved_since_checkpoint = 0
                continue
            except OSError as exc:
                if exc.errno != errno.EIO:
                    raise
                # A pty master with no slave open right now; one may be opened again.
                if stop is None:
                    return PumpEnd.HANGUP
                if stop.is_set():
                    return PumpEnd.STOPPED  # everything the slave wrote was read
                if not watch(src).woke():
                    await watch(src).wait(stop)
                moved_since_checkpoint = 0
                continue
            if n == 0:
                return PumpEnd.EOF
            done = 0
            retry_delay = _WRITE_RETRY_FIRST
            while done < n:
                try:
                    done += os.write(dst, view[done:n])
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(dst)
                    moved_since_checkpoint = 0
                except BrokenPipeError:
                    return PumpEnd.BROKEN
                except OSError as exc:
                    if exc.errno != errno.EIO:
                        raise
                    if stop is None or stop.is_set():
                        return PumpEnd.BROKEN
                    if not watch(dst).woke():
                        with trio.move_on_after(retry_delay):
                            await watch(dst).wait(stop)
                    retry_delay = min(2 * retry_delay, _WRITE_RETRY_MAX)
                    moved_since_checkpoint = 0
            counter.copied += n
            moved_since_checkpoint += n
            if moved_since_checkpoint >= 8 * CHUNK:
                moved_since_checkpoint = 0
                await trio.lowlevel.checkpoint()
    finally:
        for slave_watch in watches.values():
            slave_watch.close()
