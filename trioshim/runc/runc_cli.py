"""Running the runc binary through the reaper.

Every call is ``<binary> --root <root>/<ns> --log <bundle>/log.json --log-format json
[--criu <path>] [--systemd-cgroup] <subcommand> <args>`` (as go-runc builds them): the
subcommands' own arguments come from :mod:`trioshim.runc.runc_args`, the error texts from
:mod:`trioshim.runc.runc_errors`; :class:`Runc` adds the global flags and runs them.

Children are spawned through the shim's reaper only (it is the one waiter of children in the
process); an awaiting caller that is cancelled SIGKILLs its runc child (the RPC went away).

Error text follows go-runc, because containerd users see it verbatim:
- output captured (everything but create/exec/restore with pipe IO):
  ``<binary> did not terminate successfully: exit status <N>: <stdout+stderr>``;
- stdio given to runc: ``<binary> did not terminate successfully: exit status <N>``;
- binary missing: ``exec: "<binary>": executable file not found in $PATH``.
:func:`~trioshim.runc.runc_errors.runtime_error` then prefers the last ``error`` entry of
``log.json``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from trioshim.runc.runc_args import (
    CheckpointOpts,
    checkpoint_args,
    create_args,
    delete_args,
    exec_args,
    kill_args,
    pause_args,
    ps_args,
    restore_args,
    resume_args,
    start_args,
    update_args,
)
from trioshim.runc.runc_errors import RuncError, go_errno_text, runtime_error
from trioshim.shim.reaper import DEVNULL, PIPE, Reaper

DEFAULT_ROOT = "/run/containerd/runc"
"""runc state root base when ``Options.root`` is empty; the namespace is appended."""

INIT_PID_FILE = "init.pid"
LOG_FILE = "log.json"


# --- running ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stdio:
    """runc's own stdin/stdout/stderr when it must not be captured (``None`` = /dev/null)."""

    stdin: int | None = None
    stdout: int | None = None
    stderr: int | None = None


def _runc_environment() -> dict[str, str]:
    # runc must not notify systemd on the shim's behalf.
    return {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}


def read_pid_file(path: str) -> int:
    """The pid runc wrote with ``--pid-file`` (decimal, no newline)."""
    with open(path, encoding="ascii") as f:
        text = f.read()
    try:
        return int(text)
    except ValueError:
        raise ValueError(f'strconv.Atoi: parsing "{text}": invalid syntax') from None


@dataclass
class Runc:
    """One runc configuration (a container's): binary, state root, log file, global flags."""

    reaper: Reaper
    binary: str = "runc"
    root: str = ""
    log: str = ""
    log_format: str = "json"
    criu: str = ""
    systemd_cgroup: bool = False
    # None: the shim's own environment, read at each spawn. A copy per container is a few KB
    # of strings kept for nothing (6 KB in the bench's; a shared process holds 50 of them).
    env: dict[str, str] | None = None

    def environment(self) -> dict[str, str]:
        """What runc runs with: ``env``, else the shim's environment without NOTIFY_SOCKET."""
        return self.env if self.env is not None else _runc_environment()

    @classmethod
    def for_container(
        cls,
        reaper: Reaper,
        *,
        bundle: str,
        namespace: str,
        binary: str = "",
        root: str = "",
        criu: str = "",
        systemd_cgroup: bool = False,
    ) -> Runc:
        return cls(
            reaper=reaper,
            binary=binary or "runc",
            root=cls.root_for(root, namespace),
            log=os.path.join(bundle, LOG_FILE),
            criu=criu,
            systemd_cgroup=systemd_cgroup,
        )

    @staticmethod
    def root_for(root: str, namespace: str) -> str:
        """runc's ``--root`` for a namespace: under the options' ``root``, else runc's default."""
        return os.path.join(root or DEFAULT_ROOT, namespace)

    def global_args(self) -> list[str]:
        out: list[str] = []
        if self.root:
            out += ["--root", self.root]
        if self.log:
            out += ["--log", self.log]
        if self.log_format:
            out += ["--log-format", self.log_format]
        if self.criu:
            out += ["--criu", self.criu]
        if self.systemd_cgroup:
            out.append("--systemd-cgroup")
        return out

    def command(self, args: Sequence[str]) -> list[str]:
        return [self.binary, *self.global_args(), *args]

    def runtime_error(self, prefix: str, err: BaseException) -> str:
        return runtime_error(self.log, prefix, err)

    # -- the subcommands -----------------------------------------------------------------------

    async def create(
        self,
        container_id: str,
        bundle: str,
        *,
        pid_file: str,
        stdio: Stdio | None,
        console_socket: str | None = None,
        no_pivot: bool = False,
        no_new_keyring: bool = False,
    ) -> None:
        """``runc create``; ``stdio=None`` captures runc's output (terminal mode)."""
        args = create_args(
            container_id,
            bundle,
            pid_file=pid_file,
            console_socket=console_socket,
            no_pivot=no_pivot,
            no_new_keyring=no_new_keyring,
        )
        await self._run(args, stdio=stdio)

    async def start(self, container_id: str) -> None:
        await self._run(start_args(container_id))

    async def exec(
        self,
        container_id: str,
        process_spec: Mapping[str, Any],
        *,
        pid_file: str,
        stdio: Stdio | None,
        console_socket: str | None = None,
    ) -> None:
        """``runc exec --detach`` of an OCI Process written to a ``runc-process*`` temp file."""
        directory = os.environ.get("XDG_RUNTIME_DIR") or None
        fd, path = tempfile.mkstemp(prefix="runc-process", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(process_spec, f, separators=(",", ":"))
                f.write("\n")
            args = exec_args(
                container_id, process_file=path, pid_file=pid_file, console_socket=console_socket
            )
            await self._run(args, stdio=stdio)
        finally:
            _remove(path)

    async def kill(self, container_id: str, sig: int, *, all: bool = False) -> None:
        await self._run(kill_args(container_id, sig, all=all))

    async def delete(self, container_id: str, *, force: bool = False) -> None:
        await self._run(delete_args(container_id, force=force))

    async def pause(self, container_id: str) -> None:
        await self._run(pause_args(container_id))

    async def resume(self, container_id: str) -> None:
        await self._run(resume_args(container_id))

    async def ps(self, container_id: str) -> list[int]:
        output = await self._run(ps_args(container_id))
        try:
            pids = json.loads(output)
        except ValueError as exc:
            raise RuncError(f"invalid character in runc ps output: {exc}", output=output) from None
        if not isinstance(pids, list) or not all(isinstance(p, int) for p in pids):
            raise RuncError("json: cannot unmarshal runc ps output into []int", output=output)
        return pids

    async def update(self, container_id: str, resources: Mapping[str, Any]) -> None:
        data = (json.dumps(resources, separators=(",", ":")) + "\n").encode()
        await self._run(update_args(container_id), input=data)

    async def checkpoint(
        self, container_id: str, opts: CheckpointOpts, *, leave_running: bool = False
    ) -> None:
        await self._run(checkpoint_args(container_id, opts, leave_running=leave_running))

    async def restore(
        self,
        container_id: str,
        bundle: str,
        opts: CheckpointOpts,
        *,
        pid_file: str,
        stdio: Stdio | None,
        console_socket: str | None = None,
        no_pivot: bool = False,
    ) -> None:
        args = restore_args(
            container_id,
            bundle,
            opts,
            pid_file=pid_file,
            console_socket=console_socket,
            no_pivot=no_pivot,
        )
        await self._run(args, stdio=stdio)

    async def version(self) -> str:
        """``runc --version`` output (no global flags, stdout only)."""
        return (await self._run_argv([self.binary, "--version"], combined=False)).decode()

    async def list_containers(self) -> list[dict[str, Any]]:
        """``runc list --format json`` under this root (``[]`` when the root is empty)."""
        output = await self._run(["list", "--format", "json"], combined=False)
        data = json.loads(output or b"null")
        return list(data or [])

    # -- plumbing ------------------------------------------------------------------------------

    async def _run(
        self,
        args: Sequence[str],
        *,
        stdio: Stdio | None = None,
        input: bytes | None = None,
        combined: bool = True,
    ) -> bytes:
        return await self._run_argv(self.command(args), stdio=stdio, input=input, combined=combined)

    async def _run_argv(
        self,
        argv: list[str],
        *,
        stdio: Stdio | None = None,
        input: bytes | None = None,
        combined: bool = True,
    ) -> bytes:
        """Run ``argv`` through the reaper; output captured unless ``stdio`` is given.

        Cancellation SIGKILLs the child (the reaper's ``run`` does it): the RPC is gone.
        """
        name = argv[0]
        env = self.environment()
        try:
            if stdio is not None:
                done = await self.reaper.run(
                    argv,
                    env=env,
                    stdin=DEVNULL if stdio.stdin is None else stdio.stdin,
                    stdout=DEVNULL if stdio.stdout is None else stdio.stdout,
                    stderr=DEVNULL if stdio.stderr is None else stdio.stderr,
                )
            else:
                done = await self.reaper.run(
                    argv,
                    env=env,
                    input=input,
                    stdout=PIPE,
                    stderr=PIPE if combined else DEVNULL,
                )
        except OSError as exc:
            raise RuncError(_spawn_error_text(name, exc)) from exc
        # go-runc captures stdout and stderr into one buffer; we keep them apart and join them
        # for the error text only, so a warning on stderr never breaks `ps` JSON.
        if done.status != 0:
            output = done.stdout + done.stderr
            text = f"{name} did not terminate successfully: exit status {done.status}"
            if stdio is None:
                text = f"{text}: {output.decode(errors='replace')}"
            raise RuncError(text, status=done.status, output=output)
        return done.stdout


def _spawn_error_text(name: str, exc: OSError) -> str:
    missing = exc.errno in (errno.ENOENT, errno.EACCES, None)
    if "/" not in name and missing and shutil.which(name) is None:
        return f'exec: "{name}": executable file not found in $PATH'
    return f"fork/exec {name}: {go_errno_text(exc.errno) if exc.errno else exc}"


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.remove(path)
