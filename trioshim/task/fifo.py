"""Handing output to containerd through its FIFOs without losing the tail.

containerd 1.6's client closes its FIFO readers as soon as it learns of the exit (``task.Delete``
calls ``io.Close()`` before waiting for its copiers), so output still in the FIFO when the exit
is reported is lost. Both shims therefore report an exit only once its output FIFOs are empty
(:func:`wait_fifo_read`) or :data:`OUTPUT_FLUSH_TIMEOUT` passed: a reader that went away
(containerd restarting) must not hold the exit forever.
"""

from __future__ import annotations

import fcntl
import sys
import termios
from typing import Final

import trio

__all__ = ["FIFO_POLL_MAX", "OUTPUT_FLUSH_TIMEOUT", "wait_fifo_read"]

OUTPUT_FLUSH_TIMEOUT: Final = 2.0
"""How long a finished output waits for the client to read what it left in the FIFO."""
FIFO_POLL_MAX: Final = 0.05
"""Longest pause between two looks at a FIFO (no readiness event exists for what is polled)."""


async def wait_fifo_read(reader: int, timeout: float = OUTPUT_FLUSH_TIMEOUT) -> None:  # noqa: ASYNC109
    """Wait until the FIFO ``reader`` is open on (for reading: a keeper, or read-write) holds no
    unread bytes, or ``timeout`` seconds. ``FIONREAD`` counts what the client has not read yet;
    there is no readiness event for "the other reader emptied the pipe", so this polls, briefly
    at first."""
    buf = bytearray(4)
    delay = 0.0005
    with trio.move_on_after(timeout):
        while True:
            try:
                fcntl.ioctl(reader, termios.FIONREAD, buf)
            except OSError:
                return
            if int.from_bytes(buf, sys.byteorder) == 0:
                return
            await trio.sleep(delay)
            delay = min(delay * 2, FIFO_POLL_MAX)
