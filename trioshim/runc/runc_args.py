"""runc command lines, as go-runc builds them: pure functions of their inputs, so they are
testable without runc. The global flags (``--root``, ``--log``...) are added by
:class:`trioshim.runc.runc_cli.Runc`."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class CheckpointOpts:
    """Options of ``runc checkpoint`` / ``runc restore`` (go-runc ``CheckpointOpts`` order)."""

    image_path: str = ""
    work_path: str = ""
    parent_path: str = ""
    tcp_established: bool = False
    ext_unix_sk: bool = False
    shell_job: bool = False
    file_locks: bool = False
    empty_namespaces: tuple[str, ...] = ()
    cgroups_mode: str = ""  # --manage-cgroups-mode: soft, full, strict or ignore

    def args(self) -> list[str]:
        out: list[str] = []
        if self.image_path:
            out += ["--image-path", self.image_path]
        if self.work_path:
            out += ["--work-path", self.work_path]
        if self.parent_path:
            out += ["--parent-path", self.parent_path]
        if self.tcp_established:
            out.append("--tcp-established")
        if self.ext_unix_sk:
            out.append("--ext-unix-sk")
        if self.shell_job:
            out.append("--shell-job")
        if self.file_locks:
            out.append("--file-locks")
        if self.cgroups_mode:
            out += ["--manage-cgroups-mode", self.cgroups_mode]
        for ns in self.empty_namespaces:
            out += ["--empty-ns", ns]
        return out


def create_args(
    container_id: str,
    bundle: str,
    *,
    pid_file: str,
    console_socket: str | None = None,
    no_pivot: bool = False,
    no_new_keyring: bool = False,
) -> list[str]:
    args = ["create", "--bundle", bundle, "--pid-file", os.path.abspath(pid_file)]
    if console_socket:
        args += ["--console-socket", console_socket]
    if no_pivot:
        args.append("--no-pivot")
    if no_new_keyring:
        args.append("--no-new-keyring")
    return [*args, container_id]


def start_args(container_id: str) -> list[str]:
    return ["start", container_id]


def exec_args(
    container_id: str, *, process_file: str, pid_file: str, console_socket: str | None = None
) -> list[str]:
    args = ["exec", "--process", process_file]
    if console_socket:
        args += ["--console-socket", console_socket]
    return [*args, "--detach", "--pid-file", os.path.abspath(pid_file), container_id]


def kill_args(container_id: str, sig: int, *, all: bool = False) -> list[str]:
    return ["kill", *(["--all"] if all else []), container_id, str(sig)]


def delete_args(container_id: str, *, force: bool = False) -> list[str]:
    return ["delete", *(["--force"] if force else []), container_id]


def pause_args(container_id: str) -> list[str]:
    return ["pause", container_id]


def resume_args(container_id: str) -> list[str]:
    return ["resume", container_id]


def ps_args(container_id: str) -> list[str]:
    return ["ps", "--format", "json", container_id]


def update_args(container_id: str) -> list[str]:
    return ["update", "--resources", "-", container_id]


def checkpoint_args(
    container_id: str, opts: CheckpointOpts, *, leave_running: bool = False
) -> list[str]:
    args = ["checkpoint", *opts.args()]
    if leave_running:
        args.append("--leave-running")
    return [*args, container_id]


def restore_args(
    container_id: str,
    bundle: str,
    opts: CheckpointOpts,
    *,
    pid_file: str,
    console_socket: str | None = None,
    no_pivot: bool = False,
) -> list[str]:
    args = ["restore", *opts.args(), "--detach", "--pid-file", os.path.abspath(pid_file)]
    if console_socket:
        args += ["--console-socket", console_socket]
    if no_pivot:
        args.append("--no-pivot")
    # Single dash, exactly as go-runc spells it; runc's flag parser accepts both forms.
    args.append("-no-subreaper")
    return [*args, "--bundle", bundle, container_id]
