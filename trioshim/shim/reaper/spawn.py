"""Process creation for :meth:`Reaper.spawn`: the child's descriptors wired up, then
``posix_spawn`` (or fork+exec when a working directory is asked for). Nothing here waits for
the child: the reaper does."""

from __future__ import annotations

import errno
import fcntl
import os
import signal
from collections.abc import Mapping
from contextlib import suppress
from typing import Any, Final

__all__ = ["DEVNULL", "PIPE", "start_process"]

PIPE: Final = -1
"""Give the child one end of a new pipe; the other end is on the :class:`Child`."""
DEVNULL: Final = -3
"""Connect the child's descriptor to ``/dev/null``."""

# Signals CPython ignores at start-up; an ignored disposition survives exec, so reset them.
_RESET_SIGNALS: Final = tuple(
    s for s in (getattr(signal, "SIGPIPE", None), getattr(signal, "SIGXFSZ", None)) if s
)


def start_process(
    args: tuple[str, ...],
    *,
    cwd: str | None,
    environ: dict[str, str],
    stdin: int | None,
    stdout: int | None,
    stderr: int | None,
    extra_fds: Mapping[int, int] | None,
    process_group: int | None,
    new_session: bool,
) -> tuple[int, dict[int, int]]:
    """Start ``args`` with its descriptors as :meth:`Reaper.spawn` documents them; returns the
    pid and our end of each ``PIPE`` (child fd -> our fd), which the caller then owns.
    Descriptors made only to pass to the child are closed before this returns."""
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
            pid = _fork_exec(args, environ, cwd, moves, process_group, new_session)
    except BaseException:
        for fd in ours.values():
            os.close(fd)
        raise
    finally:
        for fd in owned:
            os.close(fd)
    return pid, ours


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
    # posix_spawn refuses setpgroup and setsid together: pass the one that applies.
    placement: dict[str, Any] = (
        {"setpgroup": process_group} if process_group is not None else {"setsid": new_session}
    )
    return spawn(
        args[0],
        args,
        env,
        file_actions=file_actions,
        setsigdef=_RESET_SIGNALS,
        setsigmask=(),
        **placement,
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
