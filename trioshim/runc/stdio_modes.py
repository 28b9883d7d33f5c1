"""How containerd's request for a process's stdio becomes a mode, and the pipes runc is given.

This is the part of runc's stdio that is settled before runc runs and never changes after:
which mode the request selects, and, in the pipe modes, the pipes whose one end runc gets and
whose other end the shim copies from (:mod:`trioshim.runc.stdio` owns what follows: starting
the copies, CloseIO, the drain at the exit, closing). Keeping the choice here means the rules
of containerd's runc shim for picking a mode read in one place.

Modes, chosen by the scheme of ``stdout`` alone (stdin/stderr never select anything):

- null (all three empty, no terminal): runc's stdio is ``/dev/null``, nothing to copy.
- fifo (no scheme, or ``fifo``): one pipe per non-empty stream; runc's ends are fchown'ed to
  ``io_uid:io_gid`` and closed after start; the shim copies between the pipes and the
  FIFOs, which it opens as :mod:`trioshim.runc.stdio_fds` says (nothing is lost when a client
  goes away and comes back; stdin ends only after CloseIO and every client writer closed).
- file (``file:///abs/path``): parent dirs created (0755), the file created for appending
  (0644); stdout and stderr are copied into one shared append descriptor.
- binary (``binary:///abs/logger?k=v``): the logger (:mod:`trioshim.task.logger`) reads
  runc's output pipes directly; nothing is copied by the shim; stdin is not connected (as in
  containerd-shim-runc-v2).
- terminal: a console socket (see :mod:`trioshim.runc.console`); after start, the master is
  copied to the stdout FIFO (or a ``binary://`` logger's fd 3), stdin FIFO -> master; stderr is
  ignored. The output is drained once the console is shut down at the exit (a terminal with no
  slave open may be reopened, so its hang-up is not the end) and the client has read the FIFO.
  Stdin's end of file shuts the console down.
- any other scheme: ``StdioError("unknown STDIO scheme <s>")``.
"""

from __future__ import annotations

import enum
import os
from typing import NamedTuple, TypeAlias

from trioshim.runc.stdio_fds import Descriptors, StdioError, path_error
from trioshim.task.stdio import StdioSpec
from trioshim.task.uri import UriError, stdout_scheme, uri_path

__all__ = [
    "RuncStdio",
    "ShimEnds",
    "StdioConfig",
    "StdioMode",
    "create_log_file",
    "open_runc_pipes",
    "scheme_or_none",
    "select_mode",
]


StdioConfig: TypeAlias = StdioSpec
"""The stdio of a process as containerd sends it (``CreateTaskRequest`` /
``ExecProcessRequest``): the kit's own type, so the runc shim takes a request's streams as
they are. (Its ``is_null`` also counts a terminal; :func:`select_mode` looks at the terminal
first, so for the runc shim the two readings agree.)"""


class RuncStdio(NamedTuple):
    """Descriptors to give runc as its stdin/stdout/stderr; ``None`` = ``/dev/null``."""

    stdin: int | None
    stdout: int | None
    stderr: int | None


class ShimEnds(NamedTuple):
    """The shim's (non-blocking) ends of the pipes given to runc; ``None``: no such stream."""

    stdin_w: int | None
    stdout_r: int | None
    stderr_r: int | None


class StdioMode(enum.Enum):
    NULL = "null"
    FIFO = "fifo"
    FILE = "file"
    BINARY = "binary"
    TERMINAL = "terminal"


def select_mode(config: StdioConfig) -> StdioMode:
    """The mode ``config`` asks for; :class:`StdioError` for a ``stdout`` containerd's runc
    shim refuses (not a URI, or an unknown scheme)."""
    if config.terminal:
        return StdioMode.TERMINAL
    if config.is_null:
        return StdioMode.NULL
    try:
        scheme = stdout_scheme(config.stdout)
    except UriError as exc:
        raise StdioError(str(exc)) from None
    if scheme in ("", "fifo"):
        return StdioMode.FIFO
    if scheme == "file":
        return StdioMode.FILE
    if scheme == "binary":
        return StdioMode.BINARY
    raise StdioError(f"unknown STDIO scheme {scheme}")


def scheme_or_none(uri: str) -> str | None:
    """The scheme of ``uri``, or None where :func:`select_mode` would refuse it."""
    try:
        return stdout_scheme(uri)
    except UriError:
        return None


def create_log_file(uri: str) -> str:
    """File mode: create the ``file://`` log (and its parents) if missing; returns its path."""
    path = uri_path(uri)
    try:
        os.makedirs(os.path.dirname(path) or "/", mode=0o755, exist_ok=True)
        os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644))
    except OSError as exc:
        raise StdioError(path_error("open", path, exc)) from exc
    return path


def open_runc_pipes(
    fds: Descriptors, config: StdioConfig, *, uid: int, gid: int
) -> tuple[RuncStdio, ShimEnds]:
    """Pipe modes: one pipe per non-empty stream, runc's ends owned by ``uid:gid``; every
    descriptor is owned by ``fds`` as soon as it exists, so a failure part-way leaks none."""

    def pipe(wanted: str, *, runc_reads: bool, name: str) -> tuple[int | None, int | None]:
        if not wanted:
            return None, None
        return fds.runc_pipe(runc_reads=runc_reads, name=name, uid=uid, gid=gid)

    stdin, stdin_w = pipe(config.stdin, runc_reads=True, name="stdin")
    stdout, stdout_r = pipe(config.stdout, runc_reads=False, name="stdout")
    stderr, stderr_r = pipe(config.stderr, runc_reads=False, name="stderr")
    return RuncStdio(stdin, stdout, stderr), ShimEnds(stdin_w, stdout_r, stderr_r)
