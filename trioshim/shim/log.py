"""The daemon's log: logrus text records into the bundle's ``log`` FIFO.

containerd holds ``<bundle>/log`` open and copies what it reads into its own log, so records
use logrus' text format (``time="..." level=info msg="..." key=value``) and show up in
containerd's journal like the Go shim's.

Two descriptors on the FIFO, two open file descriptions:

- fd 2 (``dup2``), blocking, so stray writes to stderr (ours, and children's that inherit it)
  land in containerd's log as Go's shim arranges;
- a private non-blocking one for :class:`FdHandler`, so a log record can never stall the Trio
  loop: with no reader (containerd restarting) a write fails ``EPIPE``, with a full pipe
  ``EAGAIN``; the record is dropped (counted) and the same descriptor works again once
  containerd reopens the FIFO.

Neither open blocks: the FIFO is opened ``O_NONBLOCK`` (``ENXIO`` = no reader, then logging
goes to the current fd 2), and the fd-2 copy is switched to blocking afterwards.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import time
import traceback
from collections.abc import Mapping
from typing import Any, BinaryIO, Final

__all__ = [
    "LOG_NAME",
    "FdHandler",
    "LogrusFormatter",
    "StreamHandler",
    "go_quote",
    "open_log_fifo",
    "setup_logger",
]

LOG_NAME: Final = "trioshim"

_LEVELS: Final = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warning",
    logging.ERROR: "error",
    logging.CRITICAL: "fatal",
}
_PLAIN: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._/@^+")
_ESCAPES: Final = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
    "\\": "\\\\",
    '"': '\\"',
}


def go_quote(text: str) -> str:
    """Go's ``%q`` for the characters that occur in practice."""
    out = ['"']
    for ch in text:
        esc = _ESCAPES.get(ch)
        if esc is not None:
            out.append(esc)
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x100:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    out.append('"')
    return "".join(out)


def _value(value: object) -> str:
    text = str(value)
    if text and all(ch in _PLAIN for ch in text):
        return text
    return go_quote(text) if text else ""


def rfc3339_nano(ns: int) -> str:
    """logrus' ``RFC3339NanoFixed``: always 9 fractional digits, ``Z`` for UTC."""
    secs, frac = divmod(ns, 1_000_000_000)
    tm = time.localtime(secs)
    offset = tm.tm_gmtoff or 0
    zone = "Z"
    if offset:
        sign = "+" if offset > 0 else "-"
        hours, minutes = divmod(abs(offset) // 60, 60)
        zone = f"{sign}{hours:02d}:{minutes:02d}"
    return time.strftime("%Y-%m-%dT%H:%M:%S", tm) + f".{frac:09d}{zone}"


class LogrusFormatter(logging.Formatter):
    """``time="..." level=... msg=... k=v``; fields come from ``static`` and from
    ``extra={"fields": {...}}`` on the call; an exception adds ``error`` and ``stack``."""

    def __init__(self, static: Mapping[str, object] | None = None) -> None:
        super().__init__()
        self.static = dict(static or {})

    def format(self, record: logging.LogRecord) -> str:
        ns = getattr(record, "created_ns", None) or int(record.created * 1e9)
        parts = [
            f"time={go_quote(rfc3339_nano(ns))}",
            f"level={_LEVELS.get(record.levelno, record.levelname.lower())}",
            f"msg={_value(record.getMessage())}",
        ]
        fields: dict[str, Any] = dict(self.static)
        extra = getattr(record, "fields", None)
        if isinstance(extra, Mapping):
            fields.update(extra)
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            fields.setdefault("error", str(exc) or type(exc).__name__)
            fields["stack"] = "".join(traceback.format_exception(exc)).rstrip()
        for key in sorted(fields):
            parts.append(f"{key}={_value(fields[key])}")
        return " ".join(parts)


class FdHandler(logging.Handler):
    """Write each record as one line to a descriptor, never blocking and never raising:
    ``EPIPE``/``EAGAIN``/``EBADF`` drop the record (counted in :attr:`dropped`)."""

    def __init__(self, fd: int, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.fd = fd
        self.dropped = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = (self.format(record) + "\n").encode(errors="replace")
        except Exception:
            self.handleError(record)
            return
        self.write(data)

    def write(self, data: bytes) -> None:
        try:
            while data:
                data = data[os.write(self.fd, data) :]
        except OSError as exc:
            if exc.errno in (errno.EPIPE, errno.EAGAIN, errno.EBADF, errno.EINVAL):
                self.dropped += 1
                return
            raise


def open_log_fifo(path: str, *, stderr: bool = True) -> int | None:
    """Open the log FIFO for our handler (non-blocking) and, if ``stderr``, make fd 2 a
    blocking copy. ``None`` (and fd 2 untouched) when there is no FIFO or no reader."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ENXIO, errno.ENOENT):
            return None
        raise
    if stderr:
        try:
            blocking = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return fd
        flags = fcntl.fcntl(blocking, fcntl.F_GETFL)
        fcntl.fcntl(blocking, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
        os.dup2(blocking, 2)  # fd 2 is inheritable, like Go's dup2 of the FIFO
        os.close(blocking)
    return fd


class StreamHandler(logging.Handler):
    """One logrus line per record to a binary stream (the delete helper's stderr); write
    errors are swallowed."""

    def __init__(self, stream: BinaryIO, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write((self.format(record) + "\n").encode(errors="replace"))
            self.stream.flush()
        except (OSError, ValueError):
            pass
        except Exception:
            self.handleError(record)


def setup_logger(
    fd: int | None = None,
    *,
    stream: BinaryIO | None = None,
    debug: bool = False,
    static: Mapping[str, object] | None = None,
    name: str = LOG_NAME,
) -> logging.Logger:
    """The ``trioshim`` logger writing logrus records to ``stream``, else to ``fd`` (fd 2 when
    ``None``). Replaces the logger's handlers; does not propagate to the root logger."""
    logger = logging.getLogger(name)
    for old in list(logger.handlers):
        logger.removeHandler(old)
    handler: logging.Handler
    handler = StreamHandler(stream) if stream is not None else FdHandler(2 if fd is None else fd)
    handler.setFormatter(LogrusFormatter(static))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    logger.propagate = False
    return logger
