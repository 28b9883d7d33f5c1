"""Init and exec processes: their state machines (those of
containerd-shim-runc-v2, which refuses each operation per state with a fixed error) and
operations.

A process is in exactly one state object at a time. A state says, for every operation, whether
it is allowed and, if not, which error the caller gets (the reference's exact texts); a process
method checks its current state, does the work (a runc call, a signal), and moves to the next
state only if the state did not change meanwhile (an exit may land while runc runs).

Operations of one process are serialised by its ``lock`` (the Go shim's per-process mutex).
Exits never take the lock: :meth:`Process.set_exited` is synchronous, so an exit is recorded the
moment the exit bookkeeping (``exits.py``) hands it over.

Init::

    created ------start------> running <--resume-- paused
    created(ckpt) --restore--> running ---pause---> paused
    created, created(ckpt), running, paused --exit--> stopped      (paused: also thawed)
    created, created(ckpt), stopped --delete--> deleted

Exec::

    created --start--> running --exit--> stopped --delete--> deleted
    created --start fails--> start-failed (reports "created"; Wait released with status 0)
    created, start-failed --delete--> deleted

Status strings are containerd's: ``created running paused pausing stopped``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import shutil
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ClassVar

import trio

from trioshim.runc import runc_cli
from trioshim.runc.runc_cli import CheckpointOpts, Runc, RuncError
from trioshim.runc.stdio import ProcessIO, StdioConfig, StdioDeadlineExceeded, StdioError
from trioshim.task.errors import (
    DeadlineExceededError,
    FailedPreconditionError,
    NotFoundError,
    TaskError,
    UnknownError,
)

IO_SETUP_TIMEOUT = 30.0
"""Seconds the stdio setup after runc create/exec may take (a FIFO reader must appear)."""
DELETE_DRAIN_TIMEOUT = 2.0
"""Seconds Delete waits for a process's output copiers before closing its stdio."""
_INIT_PID_ERROR = "failed to retrieve OCI runtime container pid"


def unknown(message: str) -> UnknownError:
    """A bare-text error (code Unknown, message verbatim), like Go's ``errors.New``."""
    return UnknownError(message)


# --- state machines ---------------------------------------------------------------------------

START = "start"
DELETE = "delete"
KILL = "kill"
PAUSE = "pause"
RESUME = "resume"
UPDATE = "update"
CHECKPOINT = "checkpoint"
EXEC = "exec"
RESIZE = "resize"

Refusal = Callable[[], TaskError]


def _bare(message: str) -> Refusal:
    return lambda: unknown(message)


def _not_found(message: str) -> Refusal:
    return lambda: NotFoundError.wrapping(message)


class State:
    """One state of a process: its name, what State reports, and the refused operations."""

    name: ClassVar[str]
    status: ClassVar[str]
    #: operation -> the error it gets in this state; operations not listed are allowed
    refused: ClassVar[Mapping[str, Refusal]]
    #: an exit seen in this state moves the process to stopped (False: the exit is ignored)
    exits: ClassVar[bool] = True

    def check(self, operation: str) -> None:
        refusal = self.refused.get(operation)
        if refusal is not None:
            raise refusal()

    def allows(self, operation: str) -> bool:
        return operation not in self.refused

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"


class InitCreated(State):
    name = status = "created"
    refused: ClassVar[Mapping[str, Refusal]] = {
        PAUSE: _bare("cannot pause task in created state"),
        RESUME: _bare("cannot resume task in created state"),
        CHECKPOINT: _bare("cannot checkpoint a task in created state"),
    }


class InitCreatedCheckpoint(State):
    """Created from a checkpoint: ``runc restore`` runs at Start."""

    name = "created-checkpoint"
    status = "created"
    refused: ClassVar[Mapping[str, Refusal]] = {
        PAUSE: _bare("cannot pause task in created state"),
        RESUME: _bare("cannot resume task in created state"),
        CHECKPOINT: _bare("cannot checkpoint a task in created state"),
        EXEC: _bare("cannot exec in a created state"),
    }


class InitRunning(State):
    name = status = "running"
    refused: ClassVar[Mapping[str, Refusal]] = {
        START: _bare("cannot start a running process"),
        DELETE: _bare("cannot delete a running process"),
        RESUME: _bare("cannot resume a running process"),
    }


class InitPaused(State):
    name = status = "paused"
    refused: ClassVar[Mapping[str, Refusal]] = {
        START: _bare("cannot start a paused process"),
        DELETE: _bare("cannot delete a paused process"),
        PAUSE: _bare("cannot pause a paused container"),
        EXEC: _bare("cannot exec in a paused state"),
    }


class InitStopped(State):
    name = status = "stopped"
    exits = False
    refused: ClassVar[Mapping[str, Refusal]] = {
        START: _bare("cannot start a stopped process"),
        PAUSE: _bare("cannot pause a stopped container"),
        RESUME: _bare("cannot resume a stopped container"),
        UPDATE: _bare("cannot update a stopped container"),
        CHECKPOINT: _bare("cannot checkpoint a stopped container"),
        EXEC: _bare("cannot exec in a stopped state"),
    }


class InitDeleted(State):
    name = "deleted"
    status = "stopped"
    exits = False
    refused: ClassVar[Mapping[str, Refusal]] = {
        START: _bare("cannot start a deleted process"),
        DELETE: _not_found("cannot delete a deleted process"),
        KILL: _not_found("cannot kill a deleted process"),
        PAUSE: _bare("cannot pause a deleted process"),
        RESUME: _bare("cannot resume a deleted process"),
        UPDATE: _bare("cannot update a deleted process"),
        CHECKPOINT: _bare("cannot checkpoint a deleted process"),
        EXEC: _bare("cannot exec in a deleted state"),
    }


class ExecCreated(State):
    name = status = "created"
    refused: ClassVar[Mapping[str, Refusal]] = {
        KILL: lambda: FailedPreconditionError.wrapping("process not created"),
    }


class ExecStartFailed(State):
    """``runc exec`` failed: the exec stays "created", its Wait is released, no retry."""

    name = "start-failed"
    status = "created"
    exits = False
    refused: ClassVar[Mapping[str, Refusal]] = {
        START: _bare("cannot start an exec process whose start failed"),
        KILL: lambda: FailedPreconditionError.wrapping("process not created"),
    }


class ExecRunning(State):
    name = status = "running"
    refused: ClassVar[Mapping[str, Refusal]] = {
        START: _bare("cannot start a running process"),
        DELETE: _bare("cannot delete a running process"),
    }


class ExecStopped(State):
    name = status = "stopped"
    exits = False
    refused: ClassVar[Mapping[str, Refusal]] = {
        START: _bare("cannot start a stopped process"),
        KILL: _not_found("process already finished"),
        RESIZE: _bare("cannot resize a stopped container"),
    }


class ExecDeleted(State):
    name = "deleted"
    status = "stopped"
    exits = False
    refused: ClassVar[Mapping[str, Refusal]] = {
        START: _bare("cannot start a deleted process"),
        DELETE: _not_found("cannot delete a deleted process"),
        KILL: _not_found("cannot kill a deleted process"),
        RESIZE: _bare("cannot resize a deleted process"),
    }


# --- stdio as the processes see it ------------------------------------------------------------


IOOpener = Callable[["Process"], Awaitable[ProcessIO]]
"""Opens the stdio of a process (its ``id`` and ``stdio`` say what to open)."""


def runc_stdio(io: ProcessIO) -> runc_cli.Stdio | None:
    """runc's own stdio for ``io``: its pipes, or ``None`` (captured) in terminal mode."""
    if io.console_socket is not None:
        return None
    if io.runc_stdio is None:
        return runc_cli.Stdio()
    stdin, stdout, stderr = io.runc_stdio
    return runc_cli.Stdio(stdin=stdin, stdout=stdout, stderr=stderr)


# --- processes --------------------------------------------------------------------------------


class Process:
    """What init and exec processes share: identity, stdio, exit record, the Wait latch."""

    def __init__(
        self, process_id: str, container_id: str, stdio: StdioConfig, state: State
    ) -> None:
        self.id = process_id
        self.container_id = container_id
        self.stdio = stdio
        self.state: State = state
        self.pid = 0
        self.exit_status = 0
        #: wall-clock ns of the exit; None while it has not exited (the Go zero time)
        self.exited_at_ns: int | None = None
        self.io: ProcessIO | None = None
        self.lock = trio.Lock()
        self._exited = trio.Event()
        # Reaped but not recorded yet (the exit waits for the output to be delivered): the pid
        # may already belong to another process, so it must never be signalled again.
        self.reaped = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} pid={self.pid} {self.state.name}>"

    def status(self) -> str:
        return self.state.status

    def _move(self, expected: State, new: State) -> bool:
        """Go to ``new`` if still in ``expected`` (an exit may have moved us meanwhile)."""
        if self.state is not expected:
            return False
        self.state = new
        return True

    def _record_exit(self, status: int, exited_at_ns: int) -> None:
        self.exit_status = status
        self.exited_at_ns = exited_at_ns
        self._exited.set()

    def set_exited(self, status: int, exited_at_ns: int) -> bool:
        """Record an exit: stopped, Wait released. False if the state ignores exits."""
        if not self.state.exits:
            return False
        self._record_exit(status, exited_at_ns)
        self.state = self._stopped_state()
        return True

    def _stopped_state(self) -> State:
        raise NotImplementedError

    @property
    def has_exited(self) -> bool:
        return self._exited.is_set()

    async def wait(self) -> None:
        """Block until the Wait latch is released (once, for every waiter, before or after)."""
        await self._exited.wait()

    async def close_stdin(self) -> None:
        if self.io is not None:
            await self.io.close_stdin()

    async def on_exit_io(self) -> None:
        """Tell the stdio the process is gone (a console stops waiting for more output)."""
        if self.io is not None:
            await self.io.process_exited()

    def resize(self, width: int, height: int) -> None:
        self.state.check(RESIZE)
        if self.io is not None and self.stdio.terminal:
            self.io.resize(width & 0xFFFF, height & 0xFFFF)

    async def release_io(self) -> None:
        """Close the stdio for good (the container is gone)."""
        await self._close_io()

    async def _close_io(self) -> None:
        io, self.io = self.io, None
        if io is not None:
            with trio.CancelScope(shield=True):
                await io.aclose()

    async def _start_io(self, io: ProcessIO, *, bounded: bool) -> None:
        """``io.after_start()``: 30 s for FIFO readers / the pty master (none for a restore)."""
        try:
            if bounded:
                await io.after_start(timeout=IO_SETUP_TIMEOUT)
            else:
                await io.after_start(timeout=None)
        except StdioDeadlineExceeded as exc:
            raise DeadlineExceededError(str(exc)) from exc
        except StdioError as exc:
            raise unknown(str(exc)) from exc

    async def _open_io(self, open_io: IOOpener, console_what: str) -> ProcessIO:
        try:
            return await open_io(self)
        except TaskError:
            raise
        except (StdioError, OSError) as exc:
            what = console_what if self.stdio.terminal else "failed to create init process I/O"
            raise unknown(f"{what}: {exc}") from exc


class InitProcess(Process):
    """A container's init: driven by ``runc create/start/kill/pause/...``."""

    def __init__(
        self,
        container_id: str,
        bundle: str,
        runc: Runc,
        stdio: StdioConfig,
        *,
        no_pivot: bool = False,
        no_new_keyring: bool = False,
        criu_work_path: str = "",
        restore: CheckpointOpts | None = None,
    ) -> None:
        """``restore``: the flags of ``runc restore`` when created from a checkpoint (its
        paths come from the Create)."""
        super().__init__(container_id, container_id, stdio, InitCreated())
        self.bundle = bundle
        self.runc = runc
        self.no_pivot = no_pivot
        self.no_new_keyring = no_new_keyring
        self.work_dir = os.path.join(bundle, "work")
        self.criu_work_path = criu_work_path or self.work_dir
        self.pausing = False
        self._restore_flags = restore or CheckpointOpts()
        self._restore: CheckpointOpts | None = None

    @property
    def pid_file(self) -> str:
        return os.path.join(self.bundle, runc_cli.INIT_PID_FILE)

    def status(self) -> str:
        return "pausing" if self.pausing else self.state.status

    def _stopped_state(self) -> State:
        return InitStopped()

    def runtime_error(self, prefix: str, err: BaseException) -> TaskError:
        return unknown(self.runc.runtime_error(prefix, err))

    # -- create / start ------------------------------------------------------------------------

    async def create(self, open_io: IOOpener, *, checkpoint: str = "", parent: str = "") -> None:
        """``runc create`` (or prepare a restore); stdio set up; pid read. Unlocked: the
        process is not visible to anybody else yet. On failure everything opened is closed
        and the container may remain in runc (the caller force-deletes it)."""
        self.io = await self._open_io(open_io, "failed to create OCI runtime console socket")
        try:
            if checkpoint:
                self._restore = dataclasses.replace(
                    self._restore_flags,
                    image_path=checkpoint,
                    work_path=self.criu_work_path,
                    parent_path=parent,
                )
                self.state = InitCreatedCheckpoint()
                return
            try:
                await self.runc.create(
                    self.id,
                    self.bundle,
                    pid_file=self.pid_file,
                    stdio=runc_stdio(self.io),
                    console_socket=self.io.console_socket,
                    no_pivot=self.no_pivot,
                    no_new_keyring=self.no_new_keyring,
                )
            except RuncError as exc:
                raise self.runtime_error("OCI runtime create failed", exc) from exc
            try:
                await self._start_io(self.io, bounded=True)
                self.pid = self._read_pid_file(self.pid_file, _INIT_PID_ERROR)
            except BaseException:
                await self.abandon()  # ours now: leave no created container behind in runc
                raise
        except BaseException:
            await self._close_io()
            raise

    async def abandon(self) -> None:
        """Undo :meth:`create`: ``runc delete --force`` (it kills the init), stdio closed.
        Shielded, for it runs while the failing request may be cancelled; a runc failure is
        ignored (nothing better to do: the caller reports the Create's own error)."""
        with trio.CancelScope(shield=True):
            with contextlib.suppress(RuncError):
                await self.runc.delete(self.id, force=True)
            await self._close_io()

    @staticmethod
    def _read_pid_file(path: str, what: str) -> int:
        try:
            return runc_cli.read_pid_file(path)
        except OSError as exc:
            raise unknown(f"{what}: {runc_cli.go_os_error('open', exc)}") from exc
        except ValueError as exc:
            raise unknown(f"{what}: {exc}") from exc

    async def start(self) -> None:
        async with self.lock:
            state = self.state
            state.check(START)
            if isinstance(state, InitCreatedCheckpoint):
                await self._restore_checkpoint()
            else:
                try:
                    await self.runc.start(self.id)
                except RuncError as exc:
                    raise self.runtime_error("OCI runtime start failed", exc) from exc
            self._move(state, InitRunning())

    async def _restore_checkpoint(self) -> None:
        assert self._restore is not None and self.io is not None
        try:
            await self.runc.restore(
                self.id,
                self.bundle,
                self._restore,
                pid_file=self.pid_file,
                stdio=runc_stdio(self.io),
                console_socket=self.io.console_socket,
                no_pivot=self.no_pivot,
            )
        except RuncError as exc:
            raise self.runtime_error("OCI runtime restore failed", exc) from exc
        await self._start_io(self.io, bounded=False)
        self.pid = self._read_pid_file(self.pid_file, _INIT_PID_ERROR)

    # -- delete --------------------------------------------------------------------------------

    async def delete(self, unmount: Callable[[], Awaitable[None]] | None = None) -> None:
        """Delete the container in runc, close stdio, ``unmount`` the rootfs; only when all
        of it worked is the process ``deleted`` (a failed Delete can be retried)."""
        async with self.lock:
            state = self.state
            state.check(DELETE)
            if self.io is not None:
                await self.io.wait_drained(DELETE_DRAIN_TIMEOUT)
            error: TaskError | None = None
            try:
                await self.runc.delete(self.id)
            except RuncError as exc:
                # Normal after a checkpoint with exit: runc no longer knows the container.
                if "does not exist" not in str(exc):
                    error = self.runtime_error("failed to delete task", exc)
            await self._close_io()
            if unmount is not None:
                try:
                    await unmount()
                except OSError as exc:
                    if error is None:
                        error = unknown(f"failed rootfs umount: {exc}")
            if error is not None:
                raise error
            self._move(state, InitDeleted())

    # -- signals -------------------------------------------------------------------------------

    async def kill(self, sig: int, *, all: bool = False) -> None:
        async with self.lock:
            self.state.check(KILL)
            try:
                await self.runc.kill(self.id, sig, all=all)
            except RuncError as exc:
                raise kill_error(str(exc)) from exc

    async def kill_all(self) -> None:
        """``runc kill --all <id> 9``: what remains of a container whose init exited."""
        try:
            await self.runc.kill(self.id, 9, all=True)
        except RuncError as exc:
            raise self.runtime_error("OCI runtime killall failed", exc) from exc

    # -- pause / resume ------------------------------------------------------------------------

    async def pause(self) -> None:
        async with self.lock:
            state = self.state
            state.check(PAUSE)
            self.pausing = True
            try:
                await self.runc.pause(self.id)
            except RuncError as exc:
                raise self.runtime_error("OCI runtime pause failed", exc) from exc
            finally:
                self.pausing = False
            self._move(state, InitPaused())

    async def resume(self) -> None:
        async with self.lock:
            state = self.state
            state.check(RESUME)
            try:
                await self.runc.resume(self.id)
            except RuncError as exc:
                raise self.runtime_error("OCI runtime resume failed", exc) from exc
            self._move(state, InitRunning())

    async def thaw_after_exit(self) -> None:
        """``runc resume`` for a container that exited while paused (leftovers frozen)."""
        await self.runc.resume(self.id)

    # -- update / checkpoint / exec ------------------------------------------------------------

    async def update(self, resources_json: bytes) -> None:
        async with self.lock:
            self.state.check(UPDATE)
            try:
                resources = json.loads(resources_json)
            except ValueError as exc:
                raise unknown(str(exc)) from exc
            if not isinstance(resources, dict):
                raise unknown("json: cannot unmarshal into Go value of type specs.LinuxResources")
            try:
                await self.runc.update(self.id, resources)
            except RuncError as exc:
                raise unknown(str(exc)) from exc

    async def checkpoint(self, image_path: str, opts: CheckpointOpts, *, exit: bool) -> None:
        """``runc checkpoint``; criu's failure comes back naming ``<bundle>/criu-dump.log``."""
        async with self.lock:
            self.state.check(CHECKPOINT)
            work = opts.work_path
            temporary = not work
            if temporary:
                work = os.path.join(self.work_dir, "criu-work")
            opts = CheckpointOpts(
                image_path=image_path,
                work_path=work,
                tcp_established=opts.tcp_established,
                ext_unix_sk=opts.ext_unix_sk,
                shell_job=opts.shell_job,
                file_locks=opts.file_locks,
                empty_namespaces=opts.empty_namespaces,
            )
            try:
                await self.runc.checkpoint(self.id, opts, leave_running=not exit)
            except RuncError as exc:
                dump_log = os.path.join(self.bundle, "criu-dump.log")
                with contextlib.suppress(OSError):
                    shutil.copyfile(os.path.join(work, "dump.log"), dump_log)
                first_line = str(exc).split("\n", 1)[0]
                raise unknown(f"{first_line} path= {dump_log}") from exc
            finally:
                if temporary:
                    shutil.rmtree(work, ignore_errors=True)

    def check_exec(self) -> None:
        """Whether an exec may be added now (Exec RPC)."""
        self.state.check(EXEC)


def kill_error(text: str) -> TaskError:
    """A failed ``runc kill`` (or kill(2)) as containerd's runc shim reports it."""
    if (
        "os: process already finished" in text
        or "container not running" in text
        or "no such process" in text.lower()
    ):
        return NotFoundError.wrapping("process already finished")
    if "does not exist" in text:
        return NotFoundError.wrapping("no such container")
    return unknown(f"unknown error after kill: {text}")


class ExecProcess(Process):
    """An additional process run in a container with ``runc exec --detach``."""

    def __init__(
        self,
        exec_id: str,
        init: InitProcess,
        spec: dict[str, Any],
        stdio: StdioConfig,
    ) -> None:
        super().__init__(exec_id, init.id, stdio, ExecCreated())
        self.init = init
        self.spec = dict(spec)
        self.spec["terminal"] = stdio.terminal

    def _stopped_state(self) -> State:
        return ExecStopped()

    @property
    def pid_file(self) -> str:
        return os.path.join(self.init.bundle, f"{self.id}.pid")

    def status(self) -> str:
        parent = self.init.status()
        if parent in ("paused", "pausing"):
            return parent
        return self.state.status

    async def start(self, open_io: IOOpener) -> None:
        async with self.lock:
            state = self.state
            state.check(START)
            self.io = await self._open_io(open_io, "failed to create runc console socket")
            try:
                try:
                    await self.init.runc.exec(
                        self.init.id,
                        self.spec,
                        pid_file=self.pid_file,
                        stdio=runc_stdio(self.io),
                        console_socket=self.io.console_socket,
                    )
                except RuncError as exc:
                    # Wait returns at once (status 0, no exit time); the exec cannot be retried.
                    self.state = ExecStartFailed()
                    self._exited.set()
                    raise self.init.runtime_error("OCI runtime exec failed", exc) from exc
                await self._start_io(self.io, bounded=True)
                self.pid = InitProcess._read_pid_file(
                    self.pid_file, "failed to retrieve OCI runtime exec pid"
                )
            except BaseException:
                await self._close_io()
                raise
            self._move(state, ExecRunning())

    async def kill(self, sig: int) -> None:
        async with self.lock:
            self.state.check(KILL)
            if self.pid == 0:
                raise FailedPreconditionError.wrapping("process not created")
            if self.has_exited or self.reaped:
                raise NotFoundError.wrapping("process already finished")
            try:
                os.kill(self.pid, sig)
            except OSError as exc:
                if exc.errno == errno.ESRCH:
                    raise NotFoundError.wrapping(
                        "exec kill error: process already finished"
                    ) from exc
                text = runc_cli.go_errno_text(exc.errno or errno.EINVAL)
                raise unknown(f"exec kill error: unknown error after kill: {text}") from exc

    async def delete(self) -> None:
        async with self.lock:
            state = self.state
            state.check(DELETE)
            if self.io is not None:
                await self.io.wait_drained(DELETE_DRAIN_TIMEOUT)
            await self._close_io()
            with contextlib.suppress(OSError):
                os.remove(self.pid_file)
            self._move(state, ExecDeleted())
