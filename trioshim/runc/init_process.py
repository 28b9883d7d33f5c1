"""A container's init process: ``runc create/start/kill/pause/resume/update/checkpoint/delete``,
and a restore from a checkpoint in place of create + start."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
from collections.abc import Awaitable, Callable

import trio

from trioshim.runc import runc_cli
from trioshim.runc.process import (
    DELETE_DRAIN_TIMEOUT,
    IOOpener,
    Process,
    read_pid_file,
    runc_stdio,
)
from trioshim.runc.runc_args import CheckpointOpts
from trioshim.runc.runc_cli import Runc
from trioshim.runc.runc_errors import RuncError
from trioshim.runc.states import unknown
from trioshim.runc.stdio_modes import StdioConfig
from trioshim.task.errors import (
    NotFoundError,
    TaskError,
)

_INIT_PID_ERROR = "failed to retrieve OCI runtime container pid"


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
        super().__init__(container_id, container_id, stdio)
        self.bundle = bundle
        self.runc = runc
        self.no_pivot = no_pivot
        self.no_new_keyring = no_new_keyring
        self.work_dir = os.path.join(bundle, "work")
        self.criu_work_path = criu_work_path or self.work_dir
        self._restore_flags = restore or CheckpointOpts()
        self._restore: CheckpointOpts | None = None
        """Set while created from a checkpoint: Start runs ``runc restore``."""
        self.paused = False

    @property
    def pid_file(self) -> str:
        return os.path.join(self.bundle, runc_cli.INIT_PID_FILE)

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
                self.pid = read_pid_file(self.pid_file, _INIT_PID_ERROR)
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

    async def start(self) -> None:
        async with self.lock:
            if self._restore is not None:
                await self._restore_checkpoint()
                self._restore = None
            else:
                try:
                    await self.runc.start(self.id)
                except RuncError as exc:
                    raise self.runtime_error("OCI runtime start failed", exc) from exc

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
        self.pid = read_pid_file(self.pid_file, _INIT_PID_ERROR)

    # -- delete --------------------------------------------------------------------------------

    async def delete(self, unmount: Callable[[], Awaitable[None]] | None = None) -> None:
        """Delete the container in runc, close stdio, ``unmount`` the rootfs; only when all
        of it worked is the process ``deleted`` (a failed Delete can be retried)."""
        async with self.lock:
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

    # -- signals -------------------------------------------------------------------------------

    async def kill(self, sig: int, *, all: bool = False) -> None:
        async with self.lock:
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
            try:
                await self.runc.pause(self.id)
            except RuncError as exc:
                raise self.runtime_error("OCI runtime pause failed", exc) from exc
            self.paused = True

    async def resume(self) -> None:
        async with self.lock:
            try:
                await self.runc.resume(self.id)
            except RuncError as exc:
                raise self.runtime_error("OCI runtime resume failed", exc) from exc
            self.paused = False

    async def thaw_after_exit(self) -> None:
        """``runc resume`` for a container that exited while paused (leftovers frozen)."""
        await self.runc.resume(self.id)

    # -- update / checkpoint / exec ------------------------------------------------------------

    async def update(self, resources_json: bytes) -> None:
        async with self.lock:
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
        if self._restore is not None:  # the kit allows it in a created container
            raise unknown("cannot exec in a created state")
